"""Figures of one benchmark suite, in the form `bench/run` gathers into its report.

Each suite (bench/mqtt, bench/ingest, bench/query) prints its own markdown table and, given
`--json FILE`, also writes what it measured as JSON:

    {"suite": "mqtt", "title": ..., "measured": "2026-12-03 18:40 UTC",
     "machine": {"cores": 2, "cpu": ..., "memory_gib": 24, "os": ...},
     "versions": {"ferrite": ..., "mosquitto": ...}, "setup": "one line on the load",
     "rows": [{"measure": ..., "unit": "msg/s", "better": "higher" | "lower",
               "values": {"ferrite": 1.0, "mosquitto": 2.0}, "chart": "mqtt-throughput",
               "target": "≥ 1.5× mosquitto", "met": true}]}

`better` says which way is good, so the report can turn every comparison into one number,
Ferrite's advantage (> 1 means Ferrite does better), whatever the unit. `target` and `met`
are set where an issue names a target for the figure; `chart` groups figures that share a
PNG chart. `checks` holds pass/fail facts of the run: [{"what": ..., "ok": true}].
"""

import datetime
import json
import os
import platform
import subprocess


def machine():
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "")
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cores": os.cpu_count(), "cpu": cpu, "memory_gib": round(mem), "os": platform.platform()}


def now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def package_version(name):
    """The Debian package's version, or '' when it is not installed from a package."""
    r = subprocess.run(["dpkg-query", "-W", "-f=${Version}", name], capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else ""


class Figures:
    def __init__(self, suite, title, versions, setup=""):
        self.doc = {"suite": suite, "title": title, "measured": now(), "machine": machine(),
                    "versions": versions, "setup": setup, "rows": [], "checks": []}

    def add(self, measure, unit, better, values, chart=None, target=None, met=None):
        assert better in ("higher", "lower"), better
        self.doc["rows"].append({"measure": measure, "unit": unit, "better": better,
                                 "values": {k: float(v) for k, v in values.items() if v is not None},
                                 "chart": chart, "target": target, "met": met})

    def check(self, what, ok):
        """A pass/fail fact of the run (answers agree, nothing lost), shown beside the figures."""
        self.doc["checks"].append({"what": what, "ok": bool(ok)})

    def write(self, path):
        if not path:
            return
        with open(path, "w") as f:
            json.dump(self.doc, f, indent=1)
