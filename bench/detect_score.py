#!/usr/bin/env python3
"""Scores Ferrite's rule detectors on the simulator's labelled faults (bench/detect runs it).

    bench/detect_score.py --ferrite BIN --work DIR [--devices 100] [--hours 48] [--interval 10s]
                          [--seed 1] [--warmup 24h] [--json FILE]

1. Data: the `smart_building` scenario (rooms: temperature, humidity, co2, occupancy) with its
   own data model and fault rates raised so a run holds a few dozen episodes of each kind
   (clock skew off: truth windows are then on true time and nothing needs mapping back), as
   `ferrite simulate --out --format ndjson --truth`, turned into `ferrite rule test` messages
   (topic `devices/{id}/telemetry/room`, payload = the fields and `ts`), in arrival order.
   A second, fault-free fleet (another seed) calibrates the thresholds that are in the
   field's units (rate of change, plausible range): what commissioning on healthy sensors
   would give.
2. One rule per detector over every numeric field, run offline with `ferrite rule test`,
   keeping only flagged readings (SELECT device, timestamp and one flag or score per field;
   scores are flagged above a threshold here, so one run gives a sweep of thresholds).
3. Scoring, from the end of the warm-up on (every detector sees all the data from the start;
   only episodes that start after the warm-up count for recall, only flags after it for
   precision). See the notes the script prints for the exact rules.

Python 3.11+ standard library only (tomllib).
"""

import argparse
import bisect
import json
import math
import os
import re
import subprocess
import sys
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from figures import Figures, now  # noqa: E402

NS = 1_000_000_000
BASE = "smart_building"
# Fault rates for the benchmark: per device per day (episodes), per reading (spike) — enough
# for a few dozen episodes of each kind on 100 devices over the scored day. Duplicates and
# delays as in the built-in scenario (they are noise no detector is meant to flag); no clock
# skew.
FAULTS = """[faults]
offline = { per_day = 0.5, duration_mean = "15m", abrupt = 0.5, will = true }
duplicate = { probability = 0.002, retry_after = "5s" }
delay = { probability = 0.005, distribution = "exponential", mean = "20s" }
stuck = { per_day = 0.8, duration_mean = "1h" }
noise_burst = { per_day = 0.8, duration_mean = "15m", factor = 3.0 }
spike = { probability = 0.00005, magnitude = 6.0 }
level_shift = { per_day = 0.5, duration_mean = "2h", magnitude = 3.0 }
"""
VALUE_KINDS = ("spike", "level_shift", "noise_burst")

# Detector parameters that are not in the field's units.
Z_THRESHOLD = 6.0           # |zscore| and |seasonal| above this flag
HST_THRESHOLD = 14.0        # hst() above this flags (HstConfig's own threshold)
STUCK_N = 10                # identical readings in a row
FLATLINE_READINGS = 18      # flatline span, in intervals
GAP_INTERVALS = 3.5         # gap threshold, in intervals: 3 readings missing in a row
RATE_MARGIN = 1.5           # rate limit = this × the fastest rate of the healthy fleet
RANGE_MARGIN = 0.05         # plausible range = healthy fleet's [min, max] ± this × width
GRACE_INTERVALS = 2         # a flag up to this many intervals after an episode still counts


def parse_duration(text):
    """'10s', '1m 30s', '500ms', '24h' → seconds."""
    units = {"ms": 1e-3, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(ms|min|s|m|h|d)", text)
    if not parts or re.sub(r"[\d.\s]|ms|min|s|m|h|d", "", text):
        raise SystemExit(f"bad duration {text!r} (e.g. 10s, 1m, 500ms)")
    return sum(float(n) * units[u] for n, u in parts)


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} ... failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return r


def percentile(xs, q):
    """Nearest-rank percentile of a sorted list, None if empty."""
    if not xs:
        return None
    k = max(0, min(len(xs) - 1, math.ceil(q / 100 * len(xs)) - 1))
    return xs[k]


# --- data -----------------------------------------------------------------------------------

def write_scenario(ferrite, work):
    text = run([ferrite, "simulate", "--print-scenario", BASE]).stdout
    text = text[: text.index("\n[faults]")] + "\n\n" + FAULTS
    text = text.replace(f'name = "{BASE}"', 'name = "detect_bench"', 1)
    path = os.path.join(work, "detect_bench.toml")
    with open(path, "w") as f:
        f.write(text)
    return path, tomllib.loads(text)


def simulate(ferrite, scenario, out, args, seed, hours, devices, truth=None, faults=True):
    start = 1767571200  # 2026-01-05T00:00:00Z, a Monday
    fmt = lambda s: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(s))  # noqa: E731
    cmd = [ferrite, "simulate", "--scenario", scenario, "--devices", str(devices),
           "--out", out, "--format", "ndjson", "--from", fmt(start),
           "--to", fmt(start + int(hours * 3600)), "--interval", args.interval,
           "--seed", str(seed)]
    cmd += ["--truth", truth] if truth else []
    cmd += [] if faults else ["--no-faults"]
    report = json.loads(run(cmd).stdout)
    return start * NS, report


def to_messages(src, dst, id_tag, silence_ns):
    """Simulator NDJSON rows → `rule test` messages, same order. Also returns the readings
    that end a silence longer than `silence_ns` of their device, as {(device, ts)}."""
    n, newest, after_silence = 0, {}, set()
    with open(src) as f, open(dst, "w") as o:
        for line in f:
            r = json.loads(line)
            dev, ts = r["tags"][id_tag], r["ts"]
            payload = dict(ts=ts, **r["fields"])
            o.write('{"topic":"devices/%s/telemetry/%s","payload":%s}\n' % (
                dev, r["measurement"], json.dumps(payload, separators=(",", ":"))))
            n += 1
            last = newest.get(dev)
            if last is not None and ts - last > silence_ns:
                after_silence.add((dev, ts))
            newest[dev] = ts if last is None else max(last, ts)
    return n, after_silence


def calibrate(path, fields, id_tag):
    """Per field of a fault-free fleet: min, max and the fastest |Δvalue/Δt| of one device."""
    lo, hi, rate, last = {}, {}, {f: 0.0 for f in fields}, {}
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            dev, t = r["tags"][id_tag], r["ts"]
            for k in fields:
                v = r["fields"].get(k)
                if v is None or isinstance(v, bool):
                    continue
                lo[k] = min(lo.get(k, v), v)
                hi[k] = max(hi.get(k, v), v)
                p = last.get((dev, k))
                if p and t > p[0]:
                    rate[k] = max(rate[k], abs(v - p[1]) / ((t - p[0]) / NS))
                last[(dev, k)] = (t, v)
    return lo, hi, rate


# --- rules ----------------------------------------------------------------------------------

def num(x, digits=6):
    return f"{x:.{digits}g}"


def detectors(fields, spec, cal, interval_s):
    """The detectors and their rules: per detector the fault kinds it is meant to catch,
    whether flags and episodes are matched per field, and its SQL columns — boolean flags, or
    scores flagged above a threshold (swept over `thresholds`, `threshold` in the main table)."""
    lo, hi, rate = cal
    dec = lambda f: spec[f].get("decimals", 0) if spec[f].get("type", "float") == "float" else 0  # noqa: E731

    def clamps(f):
        return [spec[f][k] for k in ("min", "max") if k in spec[f]]

    def off_clamp(f, tol=0.0):
        # A sensor pinned at its clamp (co2 at its 380 ppm floor for hours at night) repeats
        # one value legitimately: not stuck, and no baseline for a z-score either.
        if tol == 0:
            return " AND ".join(f"{f} <> {num(c)}" for c in clamps(f))
        return " AND ".join(f"abs({f} - {num(c)}) > {num(tol)}" for c in clamps(f))

    def fed(f):
        # The value, or NULL at the clamp: a NULL input leaves a detector's state as it was.
        return f"CASE WHEN {off_clamp(f)} THEN {f} END" if clamps(f) else f

    def guard(f, tol=0.0):
        return f" AND {off_clamp(f, tol)}" if clamps(f) else ""

    tol = {f: 2 * 10 ** -dec(f) for f in fields}
    span = f"{int(FLATLINE_READINGS * interval_s * 1000)}ms"
    band = {f: (lo[f] - RANGE_MARGIN * (hi[f] - lo[f]), hi[f] + RANGE_MARGIN * (hi[f] - lo[f]))
            for f in fields}
    per = lambda make: {f: make(f) for f in fields}  # noqa: E731
    z_sweep = [4.0, 5.0, 6.0, 8.0, 10.0]
    return [
        dict(name="zscore", kinds=VALUE_KINDS, per_field=True, score=True,
             cols=per(lambda f: f"abs(zscore({fed(f)}))"), thresholds=z_sweep, threshold=Z_THRESHOLD,
             note=f"|z| > {num(Z_THRESHOLD)} (defaults: alpha 0.05, warm-up 30 readings), "
                  "fed the readings off the field's clamp"),
        dict(name="seasonal", kinds=VALUE_KINDS, per_field=True, score=True,
             cols=per(lambda f: f"abs(seasonal({fed(f)}, '1d', 24))"), thresholds=z_sweep,
             threshold=Z_THRESHOLD,
             note=f"24 hour-of-day slots, |z| > {num(Z_THRESHOLD)}, fed the readings off the clamp"),
        dict(name="hst", kinds=VALUE_KINDS, per_field=False, score=True,
             cols={"any": f"hst({', '.join(fields)})"}, thresholds=[4.0, 6.0, 8.0, 10.0, 14.0],
             threshold=HST_THRESHOLD,
             note=f"one point of all numeric fields per reading, score > {num(HST_THRESHOLD)} "
                  "(the detector's own threshold); matched to an episode on any field"),
        dict(name="stuck", kinds=("stuck",), per_field=True, score=False,
             cols=per(lambda f: f"stuck({f}, {STUCK_N}){guard(f)}"),
             note=f"{STUCK_N} identical readings in a row, not at the field's clamp"),
        dict(name="flatline", kinds=("stuck",), per_field=True, score=False,
             cols=per(lambda f: f"flatline({f}, '{span}', {num(tol[f])}){guard(f, tol[f])}"),
             note=f"{FLATLINE_READINGS} intervals within 2 units of the last digit, "
                  "not within that of the clamp"),
        dict(name="out_of_range", kinds=VALUE_KINDS, per_field=True, score=False,
             cols=per(lambda f: f"out_of_range({f}, {num(band[f][0])}, {num(band[f][1])})"),
             note=f"the healthy fleet's [min, max] ± {RANGE_MARGIN:.0%} of its width"),
        dict(name="gap", kinds=("offline",), per_field=False, score=False,
             cols={"any": f"gap('{int(GAP_INTERVALS * interval_s * 1000)}ms')"},
             note=f"more than {num(GAP_INTERVALS)} intervals without a reading "
                  "(flags the first reading after)"),
        dict(name="rate_of_change", kinds=VALUE_KINDS, per_field=True, score=False,
             cols=per(lambda f: f"rate_of_change({f}, {num(RATE_MARGIN * rate[f], 4)})"),
             note=f"{num(RATE_MARGIN)} × the healthy fleet's fastest rate"),
    ]


def rule_sql(det, measurement):
    cols = ", ".join(f"({e}) AS c_{c}" for c, e in det["cols"].items())
    if det["score"]:
        low = num(min(det["thresholds"]))
        where = " OR ".join(f"{e} > {low}" for e in det["cols"].values())
    else:
        where = " OR ".join(f"({e})" for e in det["cols"].values())
    return (f"SELECT device_id() AS device, timestamp() AS ts, {cols} "
            f"FROM 'devices/+/telemetry/{measurement}' WHERE {where}")


def run_rule(ferrite, sql, messages, expected):
    """Flagged readings as (device, column, ts, value); the rule's stats; seconds taken."""
    flags, stats = [], None
    t0 = time.monotonic()
    p = subprocess.Popen([ferrite, "rule", "test", "--sql", sql, "--input", messages],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in p.stdout:
        if '"emitted":[]' in line:
            continue
        o = json.loads(line)
        if "stats" in o:
            stats = o["stats"]
            continue
        for e in o["emitted"]:
            row = e["row"]
            for k, v in row.items():
                if k.startswith("c_") and v is not None and v is not False:
                    flags.append((row["device"], k[2:], int(row["ts"]), v))
    err = p.stderr.read()
    if p.wait() != 0 or stats is None:
        raise SystemExit(f"ferrite rule test failed ({p.returncode}) for {sql}:\n{err[-3000:]}")
    if stats["messages"] != expected:
        raise SystemExit(f"rule test saw {stats['messages']} messages, the file has {expected}")
    return flags, stats, time.monotonic() - t0


def flagged(det, raw, threshold=None):
    """(device, column, ts) of the readings the detector flags (at `threshold` for scores)."""
    if det["score"]:
        t = det["threshold"] if threshold is None else threshold
        return [(d, c, ts) for d, c, ts, v in raw if isinstance(v, (int, float)) and v > t]
    return [(d, c, ts) for d, c, ts, v in raw if v is True]


# --- scoring --------------------------------------------------------------------------------

class Truth:
    """The labelled episodes, indexed for matching flags against them."""

    def __init__(self, records, fields, scored_from, run_end_ns, interval_ns, grace_ns):
        self.grace = grace_ns
        self.skewed = {r["device"] for r in records if r["kind"] == "clock_skew"}
        ok = [r for r in records if r["device"] not in self.skewed]
        # Episodes a rule can see: on a numeric field (stuck occupancy, a boolean, is out of
        # scope) or of the whole device (offline).
        self.episodes = [r for r in ok if r["kind"] in ("offline", "stuck") + VALUE_KINDS
                         and (r.get("field") is None or r["field"] in fields)]
        self.unwatched = sum(1 for r in ok if r.get("field") and r["field"] not in fields
                             and r["kind"] in ("stuck",) + VALUE_KINDS)
        # An outage the run ends in has no reading after it: nothing on the messages can
        # tell it from the end of the data.
        self.cut = [r for r in self.episodes if r["kind"] == "offline"
                    and r["end_ns"] + interval_ns >= run_end_ns and r["start_ns"] >= scored_from]
        cut = {id(r) for r in self.cut}
        self.scored = [r for r in self.episodes if r["start_ns"] >= scored_from and id(r) not in cut]
        self.by_device = {}
        for r in self.episodes:
            self.by_device.setdefault(r["device"], []).append(r)
        self.any_by_device = {}
        for r in ok:
            if r["kind"] != "clock_skew":
                self.any_by_device.setdefault(r["device"], []).append(r)

    def match(self, kinds, per_field, dev, col, t):
        """Whether a flag falls in an episode of `kinds` (of its field, if per_field)."""
        return any(e["kind"] in kinds and e["start_ns"] <= t <= e["end_ns"] + self.grace
                   and (not per_field or e.get("field") == col)
                   for e in self.by_device.get(dev, ()))

    def other(self, dev, t):
        """Whether a flag falls in the window of any injected fault of its device."""
        return any(e["start_ns"] <= t <= e["end_ns"] + self.grace
                   for e in self.any_by_device.get(dev, ()))


def score(det, flags, truth, scored_from, after_silence):
    """Recall, precision (flags and events), delays and the causes of false events."""
    kinds, per_field, grace = det["kinds"], det["per_field"], truth.grace
    flags = sorted(f for f in flags if f[2] >= scored_from and f[0] not in truth.skewed)
    true_flags = sum(1 for d, c, t in flags if truth.match(kinds, per_field, d, c, t))
    # Events: one device's (field's) flags no more than the grace apart; an event is right
    # when its first flag falls in a matching episode.
    events = true_events = 0
    causes = {"after a silence": 0, "in another fault": 0, "on healthy data": 0}
    last = {}
    for d, c, t in flags:
        if (d, c) not in last or t - last[(d, c)] > grace:
            events += 1
            if truth.match(kinds, per_field, d, c, t):
                true_events += 1
            elif (d, t) in after_silence:
                causes["after a silence"] += 1
            elif truth.other(d, t):
                causes["in another fault"] += 1
            else:
                causes["on healthy data"] += 1
        last[(d, c)] = t
    times = {}
    for d, c, t in flags:
        times.setdefault((d, c if per_field else None), []).append(t)
    delays, detected, per_kind = [], 0, {}
    scored = [e for e in truth.scored if e["kind"] in kinds]
    for e in scored:
        ts = times.get((e["device"], e.get("field") if per_field else None), [])
        i = bisect.bisect_left(ts, e["start_ns"])
        hit = i < len(ts) and ts[i] <= e["end_ns"] + grace
        k = per_kind.setdefault(e["kind"], [0, 0])
        k[0] += 1
        if hit:
            detected += 1
            k[1] += 1
            delays.append((ts[i] - e["start_ns"]) / NS)
    delays.sort()
    return {"detector": det["name"], "kinds": list(kinds), "episodes": len(scored),
            "detected": detected, "recall": detected / len(scored) if scored else None,
            "flags": len(flags), "true_flags": true_flags,
            "precision": true_flags / len(flags) if flags else None,
            "events": events, "true_events": true_events,
            "event_precision": true_events / events if events else None,
            "false_events": events - true_events, "false_event_causes": causes,
            "delay_p50_s": percentile(delays, 50), "delay_p90_s": percentile(delays, 90),
            "per_kind": per_kind}


def pct(x):
    return "–" if x is None else f"{100 * x:.1f}%"


def secs(x):
    return "–" if x is None else f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ferrite", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--hours", type=float, default=48)
    ap.add_argument("--interval", default="10s")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--warmup", default="24h")
    ap.add_argument("--json", default="")
    ap.add_argument("--command", default="bench/detect")
    args = ap.parse_args()
    began = time.monotonic()
    interval_s = parse_duration(args.interval)
    warmup_s = parse_duration(args.warmup)
    if args.devices < 1 or interval_s <= 0:
        raise SystemExit("--devices and --interval must be positive")
    if warmup_s >= args.hours * 3600:
        raise SystemExit(f"--warmup {args.warmup} leaves nothing of --hours {args.hours:g} to score")
    interval_ns, grace_ns = int(interval_s * NS), int(GRACE_INTERVALS * interval_s * NS)
    ferrite, work = args.ferrite, args.work
    version = run([ferrite, "--version"]).stdout.strip()

    scenario, spec = write_scenario(ferrite, work)
    assert len(spec["measurements"]) == 1, "one measurement expected"
    measurement = spec["measurements"][0]
    field_spec = {f["name"]: f for f in measurement["fields"]}
    fields = [f["name"] for f in measurement["fields"] if f.get("type", "float") != "bool"]
    id_tag = spec["devices"].get("id_tag", "device_id")

    log(f"simulating {args.devices} devices × {args.hours:g} h every {args.interval} "
        f"(seed {args.seed})...")
    data, truth_path = os.path.join(work, "data.ndjson"), os.path.join(work, "truth.ndjson")
    start_ns, report = simulate(ferrite, scenario, data, args, args.seed, args.hours,
                                args.devices, truth=truth_path)
    run_end_ns = start_ns + int(args.hours * 3600) * NS
    clean = os.path.join(work, "clean.ndjson")
    # The healthy fleet: a fixed size, so small runs get the same thresholds as large ones.
    cal_devices, cal_hours = 50, 24
    simulate(ferrite, scenario, clean, args, args.seed + 1000, cal_hours, cal_devices, faults=False)
    messages = os.path.join(work, "messages.ndjson")
    n_messages, after_silence = to_messages(data, messages, id_tag,
                                            int(GAP_INTERVALS * interval_s * NS))
    cal = calibrate(clean, fields, id_tag)
    os.remove(clean)
    log(f"{n_messages} readings, faults {report['faults']}; thresholds calibrated on a healthy "
        f"fleet ({cal_devices} devices × {cal_hours:g} h, seed {args.seed + 1000})")

    records = [json.loads(l) for l in open(truth_path) if l.strip()]
    scored_from = start_ns + int(warmup_s * NS)
    truth = Truth(records, fields, scored_from, run_end_ns, interval_ns, grace_ns)

    dets = detectors(fields, field_spec, cal, interval_s)
    for d in dets:
        d["sql"] = rule_sql(d, measurement["name"])
    workers = max(1, os.cpu_count() or 1)
    log(f"running {len(dets)} rules with ferrite rule test ({workers} at a time)...")
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(run_rule, ferrite, d["sql"], messages, n_messages) for d in dets]
        outputs = [f.result() for f in futures]

    results, sweeps = [], []
    for d, (raw, stats, took) in zip(dets, outputs):
        r = score(d, flagged(d, raw), truth, scored_from, after_silence)
        r.update(note=d["note"], sql=d["sql"], rule_seconds=round(took, 1))
        if d["score"]:
            r["threshold"] = d["threshold"]
            for t in d["thresholds"]:
                s = score(d, flagged(d, raw, t), truth, scored_from, after_silence)
                s["threshold"] = t
                sweeps.append(s)
        if d["name"] == "seasonal":
            hour = 3600 * NS
            fl = [f for f in flagged(d, raw) if f[2] >= scored_from]
            r["flags_on_slot_entry"] = sum(1 for f in fl if f[2] % hour < interval_ns)
        results.append(r)
    elapsed = time.monotonic() - began
    scored_days = args.devices * (args.hours * 3600 - warmup_s) / 86400

    # --- the tables
    kinds_all = ("offline", "stuck") + VALUE_KINDS
    counts = {k: sum(1 for e in truth.scored if e["kind"] == k) for k in kinds_all}
    print("## Detectors on the simulator's labelled faults\n")
    print(f"Measured {now()} with {version}, in {elapsed:.0f} s on {os.cpu_count()} cores. "
          f"Command: `{args.command}`.\n")
    print(f"Data: scenario `{BASE}` with raised fault rates, {args.devices} devices × "
          f"{args.hours:g} h every {args.interval}, seed {args.seed}: {n_messages:,} readings of "
          f"{', '.join(fields)}. Scored after a {args.warmup} warm-up: {scored_days:g} "
          "device-days; labelled episodes " + ", ".join(f"{k} {v}" for k, v in counts.items())
          + ".\n")
    print("| detector | fault kinds | episodes | detected | recall | flags | precision (flags) "
          "| events | precision (events) | false events / device-day | delay p50 s | delay p90 s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['detector']} | {', '.join(r['kinds'])} | {r['episodes']} | {r['detected']} | "
              f"{pct(r['recall'])} | {r['flags']:,} | {pct(r['precision'])} | {r['events']:,} | "
              f"{pct(r['event_precision'])} | {r['false_events'] / scored_days:.2f} | "
              f"{secs(r['delay_p50_s'])} | {secs(r['delay_p90_s'])} |")
    print("\nRecall by fault kind (detected / episodes), and where the false events are:\n")
    causes = list(results[0]["false_event_causes"])
    print("| detector | " + " | ".join(kinds_all) + " | false events: "
          + " | ".join(causes) + " |")
    print("|---|" + "---:|" * (len(kinds_all) + len(causes)))
    for r in results:
        cells = []
        for k in kinds_all:
            d = r["per_kind"].get(k)
            cells.append(f"{d[1]}/{d[0]} ({pct(d[1] / d[0] if d[0] else None)})" if d else "")
        cells += [str(r["false_event_causes"][c]) for c in causes]
        print(f"| {r['detector']} | " + " | ".join(cells) + " |")
    print("\nScore detectors at other thresholds (the main table uses the one marked *):\n")
    print("| detector | threshold | recall | flags | precision (flags) | precision (events) "
          "| false events / device-day |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    main_thr = {r["detector"]: r.get("threshold") for r in results}
    for s in sweeps:
        mark = "*" if s["threshold"] == main_thr[s["detector"]] else ""
        print(f"| {s['detector']} | {num(s['threshold'])}{mark} | {pct(s['recall'])} | "
              f"{s['flags']:,} | {pct(s['precision'])} | {pct(s['event_precision'])} | "
              f"{s['false_events'] / scored_days:.2f} |")
    print("\nRules (`ferrite rule test`, one per detector over every numeric field; each "
          "`c_<field>` column is that field's flag or score):\n")
    for r in results:
        print(f"- {r['detector']}: {r['note']}. `{r['sql']}`")
    seasonal = next((r for r in results if r["detector"] == "seasonal"), None)
    print("\nScoring:")
    for line in [
        "An episode (a truth record of a kind the detector is meant to catch) is detected when a "
        "flag of its device, and of its field (not for hst: one point of all fields; nor gap: no "
        f"field), falls in [start, end + {GRACE_INTERVALS} intervals]: the grace takes the flag "
        "on the reading right after a spike, a level shift's end or an outage (where gap flags).",
        "Recall = detected / episodes that start after the warm-up. Delay = first such flag − "
        "episode start; for gap that is the outage's length plus up to one interval, by "
        "construction.",
        "Precision (flags) = flagged readings after the warm-up that fall in the window of an "
        "episode of a matching kind (episodes begun in the warm-up included) / all flagged "
        f"readings. Events group a device's (field's) flags no more than {GRACE_INTERVALS} "
        "intervals apart; an event is right when its first flag is. A false event is \"after a "
        "silence\" when its first flag is on the first reading after more than "
        f"{num(GAP_INTERVALS)} intervals without one, else \"in another fault\" when it falls in "
        "the window of any other injected fault of the device (a duplicate or delayed reading "
        "included), else \"on healthy data\".",
        "Left out: clock skew is off in this scenario, so truth windows are true time (devices "
        f"with a clock_skew record would be left out: {len(truth.skewed)}); {truth.unwatched} "
        "episodes on fields no rule watches (stuck occupancy, a boolean); "
        f"{len(truth.cut)} outages the run ends in (no reading after them). Duplicates and "
        "delays are injected as in the built-in scenario and are no detector's target.",
    ]:
        print(f"- {line}")
    if seasonal is not None and seasonal["flags"]:
        print(f"- seasonal: {seasonal['flags_on_slot_entry']:,} of its {seasonal['flags']:,} flags "
              "are on the first reading of an hour slot.")
    print()

    figs = Figures("detect", "Anomaly and sensor-fault detectors on labelled faults",
                   {"ferrite": version},
                   f"scenario {BASE} with raised fault rates, {args.devices} devices × "
                   f"{args.hours:g} h every {args.interval}, seed {args.seed}, scored after "
                   f"{args.warmup}; rules run offline with ferrite rule test")
    for r in results:
        d = r["detector"]
        if r["recall"] is not None:
            figs.add(f"{d}: recall ({', '.join(r['kinds'])})", "%", "higher",
                     {"ferrite": 100 * r["recall"]}, chart="detect-recall")
        if r["precision"] is not None:
            figs.add(f"{d}: precision (flagged readings)", "%", "higher",
                     {"ferrite": 100 * r["precision"]}, chart="detect-precision")
        if r["event_precision"] is not None:
            figs.add(f"{d}: precision (events)", "%", "higher",
                     {"ferrite": 100 * r["event_precision"]})
        figs.add(f"{d}: false events per device-day", "events", "lower",
                 {"ferrite": r["false_events"] / scored_days})
        if r["delay_p50_s"] is not None:
            figs.add(f"{d}: detection delay p50", "s", "lower", {"ferrite": r["delay_p50_s"]},
                     chart="detect-delay")
            figs.add(f"{d}: detection delay p90", "s", "lower", {"ferrite": r["delay_p90_s"]})
    figs.check("every labelled fault kind has episodes to score", all(counts.values()))
    figs.check("no clock-skewed device in the truth", not truth.skewed)
    figs.doc["detectors"] = results
    figs.doc["threshold_sweep"] = sweeps
    figs.write(args.json)
    log(f"done in {elapsed:.0f} s")


if __name__ == "__main__":
    main()
