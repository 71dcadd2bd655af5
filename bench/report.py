#!/usr/bin/env python3
"""One report from the suites' figures (bench/figures.py): a markdown table of every figure
with Ferrite's advantage over each peer, the targets and whether they are met, the run's
checks, and a PNG chart per group of figures.

    bench/report.py OUT_DIR SUITE.json... [--command "bench/run ..."]

writes OUT_DIR/report.md and OUT_DIR/<chart>.png and prints the report.
"""

import argparse
import json
import math
import os
import sys

NAMES = {"ferrite": "Ferrite", "mosquitto": "Mosquitto", "influxdb": "InfluxDB 1.x",
         "victoria-metrics": "VictoriaMetrics", "postgresql": "PostgreSQL", "duckdb": "DuckDB"}
COLOURS = {"ferrite": "#c0392b", "mosquitto": "#2c3e50", "influxdb": "#8e44ad",
           "victoria-metrics": "#16a085", "postgresql": "#2980b9", "duckdb": "#d4ac0d"}
TITLES = {"mqtt-throughput": "MQTT pub/sub throughput (delivered msg/s, higher is better)",
          "mqtt-latency": "MQTT QoS 1 publish → deliver latency at 1,000 msg/s (µs, lower is better)",
          "mqtt-telemetry": "Telemetry over MQTT QoS 1 (acked msg/s, higher is better)",
          "ingest-rate": "Line-protocol ingest (field values/s, higher is better)",
          "ingest-bytes": "Bytes on disk per value (lower is better)",
          "ingest-memory": "Peak resident memory during ingest (MiB, lower is better)",
          "query-latency": "TSBS iot queries, median latency (ms, log scale, lower is better)"}


def name(system):
    return NAMES.get(system, system)


def number(v):
    if v is None:
        return "–"
    if v == 0 or abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def advantage(row, peer):
    """Ferrite's figure against a peer's, > 1 when Ferrite does better whichever way is better."""
    f, p = row["values"].get("ferrite"), row["values"].get(peer)
    if f is None or p is None or f == 0 or p == 0:
        return None
    return f / p if row["better"] == "higher" else p / f


def table(suites, command):
    out = []
    first = suites[0]
    m = first["machine"]
    when = sorted({s["measured"] for s in suites})
    out.append("# Ferrite benchmarks\n")
    out.append(f"Measured {when[0]}{' to ' + when[-1] if len(when) > 1 else ''} on this machine: "
               f"{m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB RAM, {m['os']}. Every system ran "
               "alone, one after the other, with its load generator on the same machine; the figures "
               "hold for this machine at this time, not in general.\n")
    if command:
        out.append(f"Command: `{command}`\n")
    versions = {}
    for s in suites:
        versions.update(s["versions"])
    out.append("Versions: " + "; ".join(f"{name(k)}: {v}" for k, v in versions.items()) + ".\n")
    for s in suites:
        if s.get("setup"):
            out.append(f"- {s['title']}: {s['setup']}")
    out.append("")
    out.append("| suite | measure | unit | Ferrite | peer | peer's figure | Ferrite's advantage | target | met |")
    out.append("|---|---|---|---:|---|---:|---:|---|---|")
    met = total = 0
    for s in suites:
        for r in s["rows"]:
            peers = [k for k in r["values"] if k != "ferrite"] or [None]
            # A figure's target (and whether it is met) is shown once, on its first line.
            for p in peers:
                shown_target = (r.get("target") or "") if p == peers[0] else ""
                ok = r.get("met")
                mark = "" if ok is None or not shown_target else ("yes" if ok else "**no**")
                if shown_target and ok is not None:
                    total += 1
                    met += bool(ok)
                adv = advantage(r, p) if p else None
                out.append(f"| {s['suite']} | {r['measure']} | {r['unit']} | {number(r['values'].get('ferrite'))} | "
                           f"{name(p) if p else '–'} | {number(r['values'].get(p)) if p else '–'} | "
                           f"{f'{adv:.2f}×' if adv else '–'} | {shown_target} | {mark} |")
    out.append("")
    out.append("Ferrite's advantage is Ferrite's figure over the peer's where higher is better and the peer's "
               "over Ferrite's where lower is better: above 1× Ferrite does better.\n")
    out.append(f"Targets met: {met} of {total}.\n")
    checks = [(s["suite"], c) for s in suites for c in s.get("checks", [])]
    if checks:
        out.append("Checks:\n")
        for suite, c in checks:
            out.append(f"- {suite}: {'passed' if c['ok'] else '**FAILED**'} — {c['what']}")
        out.append("")
    return out


def charts(suites, out_dir):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no charts (python3 -m pip install matplotlib)", file=sys.stderr)
        return []
    groups = {}
    for s in suites:
        for r in s["rows"]:
            if r.get("chart"):
                groups.setdefault(r["chart"], []).append(r)
    written = []
    for chart, rows in groups.items():
        systems = []
        for r in rows:
            for k in r["values"]:
                if k not in systems:
                    systems.append(k)
        systems.sort(key=lambda k: (k != "ferrite", list(NAMES).index(k) if k in NAMES else 99))
        labels = [r["measure"].replace(" p50", "").replace("trucks: ", "") for r in rows]
        width = 0.8 / len(systems)
        fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(rows) + 2), 4.5))
        values = [v for r in rows for v in r["values"].values() if v > 0]
        log = bool(values) and max(values) / min(values) > 50
        for i, system in enumerate(systems):
            xs = [j + (i - (len(systems) - 1) / 2) * width for j in range(len(rows))]
            ys = [r["values"].get(system, 0) for r in rows]
            bars = ax.bar(xs, ys, width, label=name(system), color=COLOURS.get(system))
            if len(rows) <= 8:
                ax.bar_label(bars, labels=[number(y) if y else "" for y in ys], fontsize=7, rotation=90,
                             padding=2)
        if log:
            ax.set_yscale("log")
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels(labels, rotation=30 if len(rows) > 3 else 0, ha="right" if len(rows) > 3 else "center",
                           fontsize=8)
        ax.set_ylabel(rows[0]["unit"])
        ax.set_title(TITLES.get(chart, chart), fontsize=10)
        ax.margins(y=0.25)
        ax.legend(fontsize=8)
        m = suites[0]["machine"]
        fig.text(0.99, 0.01, f"{suites[0]['measured']}, {m['cores']} cores, {m['memory_gib']} GiB",
                 ha="right", fontsize=6, color="grey")
        fig.tight_layout()
        path = os.path.join(out_dir, f"{chart}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append((chart, path))
    return written


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir")
    ap.add_argument("files", nargs="+")
    ap.add_argument("--command", default="")
    args = ap.parse_args()
    suites = []
    for f in args.files:
        try:
            with open(f) as fh:
                suites.append(json.load(fh))
        except (OSError, json.JSONDecodeError) as e:
            print(f"skipping {f}: {e}", file=sys.stderr)
    if not suites:
        sys.exit("no suite figures to report")
    order = ["mqtt", "ingest", "query"]
    suites.sort(key=lambda s: order.index(s["suite"]) if s["suite"] in order else len(order))
    lines = table(suites, args.command)
    written = charts(suites, args.out_dir)
    if written:
        lines.append("Charts:\n")
        for chart, path in written:
            lines.append(f"![{TITLES.get(chart, chart)}]({os.path.basename(path)})")
        lines.append("")
    text = "\n".join(lines)
    with open(os.path.join(args.out_dir, "report.md"), "w") as f:
        f.write(text)
    print(text)
    failed = any(not c["ok"] for s in suites for c in s.get("checks", []))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
