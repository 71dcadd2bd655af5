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
   keeping only flagged readings (SELECT device, timestamp and one flag per field).
3. Scoring, from the end of the warm-up on (every detector sees all the data from the start;
   only episodes that start after the warm-up count for recall, only flags after it for
   precision). See the notes the script prints for the exact rules.

Python 3 standard library only.
"""

import argparse
import bisect
import json
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
    k = max(0, min(len(xs) - 1, int(round(q / 100 * len(xs) + 0.5)) - 1))
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


def to_messages(src, dst, id_tag):
    """Simulator NDJSON rows → `rule test` messages, same order."""
    n = 0
    with open(src) as f, open(dst, "w") as o:
        for line in f:
            r = json.loads(line)
            payload = dict(ts=r["ts"], **r["fields"])
            o.write('{"topic":"devices/%s/telemetry/%s","payload":%s}\n' % (
                r["tags"][id_tag], r["measurement"], json.dumps(payload, separators=(",", ":"))))
            n += 1
    return n


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
    """(name, kinds, per_field, {flag column: SQL predicate}, note) per detector."""
    lo, hi, rate = cal
    dec = lambda f: spec[f].get("decimals", 0) if spec[f].get("type", "float") == "float" else 0  # noqa: E731

    def unclamped(f):
        # A reading at the sensor's clamp (co2 = 380 ppm at night) legitimately repeats.
        s, c = spec[f], []
        if "min" in s:
            c.append(f"{f} > {num(s['min'])}")
        if "max" in s:
            c.append(f"{f} < {num(s['max'])}")
        return "".join(f" AND {x}" for x in c)

    span = f"{int(FLATLINE_READINGS * interval_s * 1000)}ms"
    band = {f: (lo[f] - RANGE_MARGIN * (hi[f] - lo[f]), hi[f] + RANGE_MARGIN * (hi[f] - lo[f]))
            for f in fields}
    per = lambda make: {f: make(f) for f in fields}  # noqa: E731
    return [
        ("zscore", VALUE_KINDS, True, per(lambda f: f"abs(zscore({f})) > {num(Z_THRESHOLD)}"),
         f"|z| > {num(Z_THRESHOLD)} (default alpha 0.05, warm-up 30)"),
        ("seasonal", VALUE_KINDS, True,
         per(lambda f: f"abs(seasonal({f}, '1d', 24)) > {num(Z_THRESHOLD)}"),
         f"hour-of-day slots, |z| > {num(Z_THRESHOLD)}"),
        ("hst", VALUE_KINDS, False,
         {"any": f"hst({', '.join(fields)}) > {num(HST_THRESHOLD)}"},
         f"one point per reading of all numeric fields, score > {num(HST_THRESHOLD)}; "
         "matched to an episode on any field of the device"),
        ("stuck", ("stuck",), True, per(lambda f: f"stuck({f}, {STUCK_N}){unclamped(f)}"),
         f"{STUCK_N} identical readings, not at the field's clamp"),
        ("flatline", ("stuck",), True,
         per(lambda f: f"flatline({f}, '{span}', {num(2 * 10 ** -dec(f))}){unclamped(f)}"),
         f"{FLATLINE_READINGS} intervals within 2 units of the last digit, not at the clamp"),
        ("out_of_range", VALUE_KINDS, True,
         per(lambda f: f"out_of_range({f}, {num(band[f][0])}, {num(band[f][1])})"),
         f"healthy fleet's [min, max] ± {RANGE_MARGIN:.0%} of its width"),
        ("gap", ("offline",), False,
         {"any": f"gap('{int(GAP_INTERVALS * interval_s * 1000)}ms')"},
         f"> {num(GAP_INTERVALS)} intervals without a reading; flags the first reading after"),
        ("rate_of_change", VALUE_KINDS, True,
         per(lambda f: f"rate_of_change({f}, {num(RATE_MARGIN * rate[f], 4)})"),
         f"{num(RATE_MARGIN)} × the healthy fleet's fastest rate"),
    ]


def rule_sql(preds, measurement):
    cols = ", ".join(f"({p}) AS flag_{c}" for c, p in preds.items())
    where = " OR ".join(f"({p})" for p in preds.values())
    return (f"SELECT device_id() AS device, timestamp() AS ts, {cols} "
            f"FROM 'devices/+/telemetry/{measurement}' WHERE {where}")


def run_rule(ferrite, sql, messages, expected):
    """Flagged readings as (device, column, ts); the rule's stats."""
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
                if k.startswith("flag_") and v is True:
                    flags.append((row["device"], k[5:], int(row["ts"])))
    err = p.stderr.read()
    if p.wait() != 0 or stats is None:
        raise SystemExit(f"ferrite rule test failed ({p.returncode}) for {sql}:\n{err[-3000:]}")
    if stats["messages"] != expected:
        raise SystemExit(f"rule test saw {stats['messages']} messages, the file has {expected}")
    return flags, stats, time.monotonic() - t0


# --- scoring --------------------------------------------------------------------------------

def score(name, kinds, per_field, flags, episodes, scored_from, grace_ns, interval_ns):
    """Recall, precision (readings and events) and delays of one detector."""
    mine = [e for e in episodes if e["kind"] in kinds]
    by_dev = {}
    for e in mine:
        by_dev.setdefault(e["device"], []).append(e)

    def matches(e, dev, col, t):
        return (e["device"] == dev and e["start_ns"] <= t <= e["end_ns"] + grace_ns
                and (not per_field or e.get("field") == col))

    flags = sorted(f for f in flags if f[2] >= scored_from)
    true_flags = 0
    for dev, col, t in flags:
        if any(matches(e, dev, col, t) for e in by_dev.get(dev, ())):
            true_flags += 1
    # Events: a device's (field's) flags with no gap over the grace between them; an event is
    # right when its first flag falls in a matching episode.
    events = true_events = 0
    last = {}
    for dev, col, t in flags:
        key = (dev, col)
        if key not in last or t - last[key] > grace_ns:
            events += 1
            if any(matches(e, dev, col, t) for e in by_dev.get(dev, ())):
                true_events += 1
        last[key] = t
    # Recall and delay over the episodes that start after the warm-up.
    times = {}
    for dev, col, t in flags:
        times.setdefault((dev, col if per_field else None), []).append(t)
    scored = [e for e in mine if e["start_ns"] >= scored_from]
    delays, detected, per_kind = [], 0, {}
    for e in scored:
        ts = times.get((e["device"], e.get("field") if per_field else None), [])
        i = bisect.bisect_left(ts, e["start_ns"])
        hit = i < len(ts) and ts[i] <= e["end_ns"] + grace_ns
        k = per_kind.setdefault(e["kind"], [0, 0])
        k[0] += 1
        if hit:
            detected += 1
            k[1] += 1
            delays.append((ts[i] - e["start_ns"]) / NS)
    delays.sort()
    return {"detector": name, "kinds": list(kinds), "episodes": len(scored), "detected": detected,
            "recall": detected / len(scored) if scored else None,
            "flags": len(flags), "true_flags": true_flags,
            "precision": true_flags / len(flags) if flags else None,
            "events": events, "true_events": true_events,
            "event_precision": true_events / events if events else None,
            "false_events": events - true_events,
            "delay_p50_s": percentile(delays, 50), "delay_p90_s": percentile(delays, 90),
            "per_kind": per_kind}


def pct(x):
    return "–" if x is None else f"{100 * x:.1f}%"


def secs(x):
    return "–" if x is None else f"{x:,.0f}"


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
    if warmup_s >= args.hours * 3600:
        raise SystemExit(f"--warmup {args.warmup} leaves nothing of --hours {args.hours:g} to score")
    interval_ns, grace_ns = int(interval_s * NS), int(GRACE_INTERVALS * interval_s * NS)
    ferrite, work = args.ferrite, args.work
    version = run([ferrite, "--version"]).stdout.strip()

    scenario, spec = write_scenario(ferrite, work)
    measurement = spec["measurements"][0]
    assert len(spec["measurements"]) == 1, "one measurement expected"
    field_spec = {f["name"]: f for f in measurement["fields"]}
    fields = [f["name"] for f in measurement["fields"] if f.get("type", "float") != "bool"]
    id_tag = spec["devices"].get("id_tag", "device_id")

    log(f"simulating {args.devices} devices × {args.hours:g} h every {args.interval} (seed {args.seed})...")
    data, truth = os.path.join(work, "data.ndjson"), os.path.join(work, "truth.ndjson")
    start_ns, report = simulate(ferrite, scenario, data, args, args.seed, args.hours,
                                args.devices, truth=truth)
    clean = os.path.join(work, "clean.ndjson")
    cal_devices, cal_hours = min(args.devices, 50), min(args.hours, 24)
    simulate(ferrite, scenario, clean, args, args.seed + 1000, cal_hours, cal_devices, faults=False)
    messages = os.path.join(work, "messages.ndjson")
    n_messages = to_messages(data, messages, id_tag)
    cal = calibrate(clean, fields, id_tag)
    os.remove(clean)
    log(f"{n_messages} readings, {report['faults']} faults; calibrated on a healthy fleet "
        f"({cal_devices} devices × {cal_hours:g} h, seed {args.seed + 1000})")

    records = [json.loads(l) for l in open(truth) if l.strip()]
    skewed = {r["device"] for r in records if r["kind"] == "clock_skew"}
    # Episodes a rule can see: on a numeric field (stuck occupancy is out of scope) or the
    # whole device (offline), of a device whose clock is right.
    episodes = [r for r in records if r["device"] not in skewed
                and r["kind"] in ("offline", "stuck") + VALUE_KINDS
                and (r.get("field") is None or r["field"] in fields)]
    unwatched = sum(1 for r in records if r.get("field") and r["field"] not in fields
                    and r["kind"] in ("stuck",) + VALUE_KINDS)
    scored_from = start_ns + int(warmup_s * NS)

    dets = detectors(fields, field_spec, cal, interval_s)
    sqls = {name: rule_sql(preds, measurement["name"]) for name, _, _, preds, _ in dets}
    log(f"running {len(dets)} rules with ferrite rule test ({os.cpu_count()} at a time)...")
    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        futures = {name: pool.submit(run_rule, ferrite, sqls[name], messages, n_messages)
                   for name in sqls}
        outputs = {name: f.result() for name, f in futures.items()}

    results = []
    for name, kinds, per_field, _, note in dets:
        flags, stats, took = outputs[name]
        flags = [f for f in flags if f[0] not in skewed]
        r = score(name, kinds, per_field, flags, episodes, scored_from, grace_ns, interval_ns)
        r.update(note=note, sql=sqls[name], seconds=took)
        results.append(r)
    elapsed = time.monotonic() - began
    scored_days = args.devices * (args.hours * 3600 - warmup_s) / 86400

    # --- the table
    kinds_all = ("offline", "stuck") + VALUE_KINDS
    counts = {k: sum(1 for e in episodes if e["kind"] == k and e["start_ns"] >= scored_from)
              for k in kinds_all}
    print("## Detectors on the simulator's labelled faults\n")
    print(f"Measured {now()} with {version}, in {elapsed:.0f} s "
          f"on {os.cpu_count()} cores. Command: `{args.command}`.\n")
    print(f"Data: scenario `{BASE}` with raised fault rates (faults below), {args.devices} devices × "
          f"{args.hours:g} h every {args.interval}, seed {args.seed}: {n_messages:,} readings of "
          f"{', '.join(fields)}. Scored after a {args.warmup} warm-up: {scored_days:.0f} device-days, "
          "labelled episodes " + ", ".join(f"{k} {v}" for k, v in counts.items()) + ".\n")
    print("| detector | fault kinds | episodes | detected | recall | flags | precision (flags) "
          "| events | precision (events) | false events / device-day | delay p50 s | delay p90 s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['detector']} | {', '.join(r['kinds'])} | {r['episodes']} | {r['detected']} | "
              f"{pct(r['recall'])} | {r['flags']:,} | {pct(r['precision'])} | {r['events']:,} | "
              f"{pct(r['event_precision'])} | {r['false_events'] / scored_days:.2f} | "
              f"{secs(r['delay_p50_s'])} | {secs(r['delay_p90_s'])} |")
    print("\nRecall by fault kind (detected / episodes):\n")
    print("| detector | " + " | ".join(kinds_all) + " |")
    print("|---|" + "---:|" * len(kinds_all))
    for r in results:
        cells = []
        for k in kinds_all:
            d = r["per_kind"].get(k)
            cells.append(f"{d[1]}/{d[0]} ({pct(d[1] / d[0] if d[0] else None)})" if d else "")
        print(f"| {r['detector']} | " + " | ".join(cells) + " |")
    print("\nRules (`ferrite rule test`, one per detector; each flag column is one field):\n")
    for r in results:
        print(f"- {r['detector']}: {r['note']} — `{r['sql']}`")
    print(f"""
Scoring:
- An episode (truth record of a kind the detector is meant to catch) is detected when a flag
  of its device — and of its field, except for hst (all fields in one point) and gap (no
  field) — falls in [start, end + {GRACE_INTERVALS} intervals]; the grace takes the flag on the
  reading right after a spike, a level shift's end or an outage (gap flags only then).
- Recall = detected / episodes that start after the warm-up. Delay = first such flag − episode
  start (for gap: the outage's length plus up to one interval, by construction).
- Precision (flags) = flagged readings after the warm-up that fall in the window of any episode
  of a matching kind (those that began in the warm-up included) / all flagged readings.
  Events group one device's (field's) flags no more than {GRACE_INTERVALS} intervals apart; an
  event is right when its first flag is; false events are counted per device-day scored.
- Truth: no clock skew in this scenario (so truth windows are true time); devices with a
  clock_skew record would be left out ({len(skewed)} here). Duplicates and delays are injected
  as in the built-in scenario and are not targets: flags they cause are false. Stuck
  occupancy (a boolean no rule watches) is left out ({unwatched} episodes on unwatched fields).
""")

    figs = Figures("detect", "Anomaly and sensor-fault detectors on labelled faults", {"ferrite": version},
                   f"scenario {BASE}, raised fault rates, {args.devices} devices × {args.hours:g} h every "
                   f"{args.interval}, seed {args.seed}, scored after {args.warmup}; ferrite rule test")
    for r in results:
        d = r["detector"]
        if r["recall"] is not None:
            figs.add(f"{d}: recall ({', '.join(r['kinds'])})", "%", "higher",
                     {"ferrite": 100 * r["recall"]}, chart="detect-recall")
        if r["precision"] is not None:
            figs.add(f"{d}: precision (flagged readings)", "%", "higher",
                     {"ferrite": 100 * r["precision"]}, chart="detect-precision")
        if r["event_precision"] is not None:
            figs.add(f"{d}: precision (events)", "%", "higher", {"ferrite": 100 * r["event_precision"]})
        if r["delay_p50_s"] is not None:
            figs.add(f"{d}: detection delay p50", "s", "lower", {"ferrite": r["delay_p50_s"]},
                     chart="detect-delay")
            figs.add(f"{d}: detection delay p90", "s", "lower", {"ferrite": r["delay_p90_s"]})
    figs.check("every labelled kind has episodes to score", all(v > 0 for v in counts.values()))
    figs.check("no clock-skewed device in the truth", not skewed)
    figs.doc["detectors"] = results
    figs.write(args.json)
    log(f"done in {elapsed:.0f} s")


if __name__ == "__main__":
    main()
