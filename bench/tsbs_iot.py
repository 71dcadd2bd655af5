#!/usr/bin/env python3
"""The TSBS `iot` query suite for Ferrite, InfluxDB 1.x, PostgreSQL 15 and DuckDB.

Used by `bench/query`, which loads the same trucks dataset into each system. This module
holds the twelve queries in each system's dialect, runs one system's suite
(`run SYSTEM ...`: every query `--runs` times with seeded parameters, after one warm-up run,
answers and latencies to a JSON file) and prints the comparison (`report FILES...`: median
and p95 per query and system, ratios, whether the answers agree).

Each query states its meaning below, which is what every dialect computes. Where a TSBS
reference query does not compute what its name says, the suite computes the intended meaning:

- last-loc: TSBS's InfluxQL takes `ORDER BY time LIMIT 1`, the *first* location; here the
  latest, as its SQL does.
- low-fuel: TSBS's InfluxQL filters readings below 10% and then takes the latest of those
  (the last time a truck was ever low); here trucks whose *latest* fuel state is below 10%.
- high-load: latest load ≥ 90% of the truck's capacity.
- breakdown-frequency: TSBS's SQL tests `count(status = 0) / count(*) >= 0.5`, but count() of
  a boolean counts rows, so the ratio is always 1 and every bucket is "broken down"; here a
  10-minute bucket is broken down when at least half its readings have status 0, and a
  breakdown is a bucket broken down right after one that was not.
- daily-activity: TSBS's SQL sums readings rather than 10-minute buckets; here the number of
  active 10-minute buckets (mean status < 1) of all trucks of a fleet and model in a day,
  divided by 144 (truck-days of activity).
- avg-daily-driving-duration: TSBS's SQL divides integers (whole hours) and its InfluxQL
  counts every bucket, driving or not; here driving buckets (mean velocity > 1) / 6, in
  hours, averaged over the days a truck drove.
- avg-daily-driving-session: a session is a run of consecutive 10-minute buckets with mean
  velocity > 5; its duration is 10 minutes per bucket and it counts on the day it starts.
  TSBS's InfluxQL writes a measurement (SELECT INTO); here nothing is written.

InfluxQL has no joins, no arithmetic on tags and no window functions over buckets, so four
queries (high-load, avg-vs-projected, avg-daily-driving-session, breakdown-frequency) let the
client finish from per-series results an InfluxQL query returns; the client's time is part of
the measured latency. Every other query runs entirely in the server.
"""

import argparse
import datetime as dt
import json
import math
import os
import random
import statistics
import sys
import time
import urllib.parse
import urllib.request

FLEETS = ["East", "West", "North", "South"]
TEN_MIN = 600


def ts(seconds):
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def params_for(seed, runs, start, end):
    """One parameter set per run: a fleet and windows aligned to 10 minutes (as TSBS's)."""
    rng = random.Random(seed)
    out = []
    for _ in range(runs):
        def window(length):
            last = max(start, end - length)
            s = start + rng.randrange(0, (last - start) // TEN_MIN + 1) * TEN_MIN
            return s, min(end, s + length)

        out.append({
            "fleet": rng.choice(FLEETS),
            "stationary": window(10 * 60),
            "long_driving": window(4 * 3600),
            "long_daily": window(24 * 3600),
            "from": start,
            "to": end,
        })
    return out


# ---------------------------------------------------------------------------------------
# The queries. Each entry: output column kinds (s string, f float, i integer, t time), then
# per system a function of the parameters giving SQL (or, for InfluxDB, a list of InfluxQL
# queries and a function finishing their rows into the answer).

def sql_window(p, key, lit):
    s, e = p[key]
    return f"time >= {lit(s)} AND time < {lit(e)}"


def ferrite_lit(s):
    return f"'{ts(s)}'"


def duck_lit(s):
    return f"TIMESTAMP '{ts(s)[:-1].replace('T', ' ')}'"


def pg_lit(s):
    return f"TIMESTAMPTZ '{ts(s)}'"


def influx_window(p, key):
    s, e = p[key]
    return f"time >= '{ts(s)}' AND time < '{ts(e)}'"


def influx_all(p):
    return f"time >= '{ts(p['from'])}' AND time < '{ts(p['to'])}'"


# Flat tables (Ferrite and DuckDB): the same SQL but for bucketing, latest values and literals.
def flat(dialect):
    if dialect == "ferrite":
        bucket = lambda width, col: f"time_bucket('{width}', {col})"  # noqa: E731
        last = "last"
        num = lambda col: f"CAST({col} AS DOUBLE)"  # noqa: E731
        lit = ferrite_lit
    else:
        bucket = lambda width, col: f"time_bucket(INTERVAL '{width}', {col})"  # noqa: E731
        last = "arg_max"
        num = lambda col: f"CAST({col} AS DOUBLE)"  # noqa: E731
        lit = duck_lit

    def driving_buckets(p, key, threshold):
        return (f"SELECT name, driver FROM (SELECT name, driver, {bucket('10 minutes', 'time')} AS b "
                f"FROM readings WHERE fleet = '{p['fleet']}' AND {sql_window(p, key, lit)} "
                f"GROUP BY name, driver, b HAVING avg(velocity) > 1) GROUP BY name, driver "
                f"HAVING count(*) > {threshold}")

    if dialect == "ferrite":
        # Ferrite keeps the latest row of every series (`latest.{table}`), so these cost in
        # proportion to the trucks, not the readings stored.
        latest = {
            "last-loc": lambda p: (
                f"SELECT name, driver, latitude, longitude FROM latest.readings WHERE fleet = '{p['fleet']}'"),
            "low-fuel": lambda p: (
                f"SELECT name, driver, fuel_state FROM latest.diagnostics "
                f"WHERE fleet = '{p['fleet']}' AND fuel_state < 0.1"),
            "high-load": lambda p: (
                f"SELECT name, driver, current_load, {num('load_capacity')} AS load_capacity "
                f"FROM latest.diagnostics WHERE fleet = '{p['fleet']}' "
                f"AND current_load >= 0.9 * {num('load_capacity')}"),
        }
    else:
        latest = {
            "last-loc": lambda p: (
                f"SELECT name, driver, {last}(latitude, time) AS latitude, {last}(longitude, time) AS longitude "
                f"FROM readings WHERE fleet = '{p['fleet']}' GROUP BY name, driver"),
            "low-fuel": lambda p: (
                f"SELECT name, driver, fuel_state FROM (SELECT name, driver, {last}(fuel_state, time) AS fuel_state "
                f"FROM diagnostics WHERE fleet = '{p['fleet']}' GROUP BY name, driver) WHERE fuel_state < 0.1"),
            "high-load": lambda p: (
                f"SELECT name, driver, current_load, {num('load_capacity')} AS load_capacity FROM ("
                f"SELECT name, driver, load_capacity, {last}(current_load, time) AS current_load "
                f"FROM diagnostics WHERE fleet = '{p['fleet']}' GROUP BY name, driver, load_capacity) "
                f"WHERE current_load >= 0.9 * {num('load_capacity')}"),
        }

    return {
        **latest,
        "stationary-trucks": lambda p: (
            f"SELECT name, driver FROM readings WHERE fleet = '{p['fleet']}' AND "
            f"{sql_window(p, 'stationary', lit)} GROUP BY name, driver HAVING avg(velocity) < 1"),
        "long-driving-sessions": lambda p: driving_buckets(p, "long_driving", 22),
        "long-daily-sessions": lambda p: driving_buckets(p, "long_daily", 60),
        "avg-vs-projected-fuel-consumption": lambda p: (
            f"SELECT fleet, avg(fuel_consumption), avg({num('nominal_fuel_consumption')}) "
            f"FROM readings WHERE velocity > 1 GROUP BY fleet"),
        "avg-daily-driving-duration": lambda p: (
            f"WITH b AS (SELECT fleet, name, driver, {bucket('10 minutes', 'time')} AS t FROM readings "
            f"GROUP BY fleet, name, driver, t HAVING avg(velocity) > 1), "
            f"d AS (SELECT fleet, name, driver, {bucket('1 day', 't')} AS day, count(*) / 6.0 AS hours "
            f"FROM b GROUP BY fleet, name, driver, day) "
            f"SELECT fleet, name, driver, avg(hours) FROM d GROUP BY fleet, name, driver"),
        "avg-daily-driving-session": lambda p: (
            f"WITH b AS (SELECT name, {bucket('10 minutes', 'time')} AS t, avg(velocity) > 5 AS driving "
            f"FROM readings GROUP BY name, t), "
            f"s AS (SELECT name, t, driving, CASE WHEN driving AND NOT coalesce(lag(driving) OVER "
            f"(PARTITION BY name ORDER BY t), false) THEN 1 ELSE 0 END AS starts FROM b), "
            f"g AS (SELECT name, t, sum(starts) OVER (PARTITION BY name ORDER BY t "
            f"ROWS UNBOUNDED PRECEDING) AS session FROM s WHERE driving), "
            f"sessions AS (SELECT name, session, min(t) AS start, count(*) * 10.0 AS minutes "
            f"FROM g GROUP BY name, session) "
            f"SELECT name, {bucket('1 day', 'start')} AS day, avg(minutes) FROM sessions GROUP BY name, day"),
        "avg-load": lambda p: (
            f"SELECT fleet, model, {num('load_capacity')}, avg(al / {num('load_capacity')}) FROM ("
            f"SELECT fleet, model, load_capacity, name, avg(current_load) AS al FROM diagnostics "
            f"GROUP BY fleet, model, load_capacity, name) GROUP BY fleet, model, load_capacity"),
        "daily-activity": lambda p: (
            f"SELECT fleet, model, day, count(*) / 144.0 FROM (SELECT fleet, model, name, "
            f"{bucket('1 day', 'time')} AS day, {bucket('10 minutes', 'time')} AS t FROM diagnostics "
            f"GROUP BY fleet, model, name, day, t HAVING avg(status) < 1) GROUP BY fleet, model, day"),
        "breakdown-frequency": lambda p: (
            f"WITH b AS (SELECT model, name, {bucket('10 minutes', 'time')} AS t, "
            f"avg(CASE WHEN status = 0 THEN 1.0 ELSE 0.0 END) >= 0.5 AS broken FROM diagnostics "
            f"GROUP BY model, name, t), "
            f"c AS (SELECT model, broken, lag(broken) OVER (PARTITION BY name ORDER BY t) AS prev FROM b) "
            f"SELECT model, count(*) FROM c WHERE broken AND NOT prev GROUP BY model"),
    }


# PostgreSQL: TSBS's normalised schema (a `tags` table, readings keyed by tags_id), indexed as
# a PostgreSQL user would: (tags_id, time DESC) and (time DESC) on both tables.
def pg_queries():
    b10 = "date_bin('10 minutes', {c}, TIMESTAMPTZ '2000-01-03')"
    day = "date_bin('1 day', {c}, TIMESTAMPTZ '2000-01-03')"

    def latest(cols, table, p, where=""):
        return (f"SELECT t.name, t.driver, {cols} FROM tags t CROSS JOIN LATERAL (SELECT * FROM {table} x "
                f"WHERE x.tags_id = t.id ORDER BY time DESC LIMIT 1) x WHERE t.fleet = '{p['fleet']}'{where}")

    def driving_buckets(p, key, threshold):
        return (f"SELECT t.name, t.driver FROM tags t JOIN (SELECT tags_id, {b10.format(c='time')} AS b "
                f"FROM readings WHERE {sql_window(p, key, pg_lit)} GROUP BY tags_id, b "
                f"HAVING avg(velocity) > 1) r ON r.tags_id = t.id WHERE t.fleet = '{p['fleet']}' "
                f"GROUP BY t.name, t.driver HAVING count(*) > {threshold}")

    return {
        "last-loc": lambda p: latest("x.latitude, x.longitude", "readings", p),
        "low-fuel": lambda p: latest("x.fuel_state", "diagnostics", p, " AND x.fuel_state < 0.1"),
        "high-load": lambda p: latest("x.current_load, t.load_capacity", "diagnostics", p,
                                      " AND x.current_load >= 0.9 * t.load_capacity"),
        "stationary-trucks": lambda p: (
            f"SELECT t.name, t.driver FROM tags t JOIN readings r ON r.tags_id = t.id "
            f"WHERE t.fleet = '{p['fleet']}' AND {sql_window(p, 'stationary', pg_lit)} "
            f"GROUP BY t.name, t.driver HAVING avg(r.velocity) < 1"),
        "long-driving-sessions": lambda p: driving_buckets(p, "long_driving", 22),
        "long-daily-sessions": lambda p: driving_buckets(p, "long_daily", 60),
        "avg-vs-projected-fuel-consumption": lambda p: (
            "SELECT t.fleet, avg(r.fuel_consumption), avg(t.nominal_fuel_consumption) "
            "FROM readings r JOIN tags t ON t.id = r.tags_id WHERE r.velocity > 1 GROUP BY t.fleet"),
        "avg-daily-driving-duration": lambda p: (
            f"WITH b AS (SELECT tags_id, {b10.format(c='time')} AS t FROM readings GROUP BY tags_id, t "
            f"HAVING avg(velocity) > 1), d AS (SELECT tags_id, {day.format(c='t')} AS day, "
            f"count(*) / 6.0 AS hours FROM b GROUP BY tags_id, day) "
            f"SELECT t.fleet, t.name, t.driver, avg(d.hours) FROM d JOIN tags t ON t.id = d.tags_id "
            f"GROUP BY t.fleet, t.name, t.driver"),
        "avg-daily-driving-session": lambda p: (
            f"WITH b AS (SELECT tags_id, {b10.format(c='time')} AS t, avg(velocity) > 5 AS driving "
            f"FROM readings GROUP BY tags_id, t), "
            f"s AS (SELECT tags_id, t, driving, CASE WHEN driving AND NOT coalesce(lag(driving) OVER "
            f"(PARTITION BY tags_id ORDER BY t), false) THEN 1 ELSE 0 END AS starts FROM b), "
            f"g AS (SELECT tags_id, t, sum(starts) OVER (PARTITION BY tags_id ORDER BY t "
            f"ROWS UNBOUNDED PRECEDING) AS session FROM s WHERE driving), "
            f"sessions AS (SELECT tags_id, session, min(t) AS start, count(*) * 10.0 AS minutes "
            f"FROM g GROUP BY tags_id, session) "
            f"SELECT t.name, {day.format(c='start')} AS day, avg(minutes) FROM sessions s "
            f"JOIN tags t ON t.id = s.tags_id GROUP BY t.name, day"),
        "avg-load": lambda p: (
            "SELECT t.fleet, t.model, t.load_capacity, avg(d.al / t.load_capacity) FROM tags t "
            "JOIN (SELECT tags_id, avg(current_load) AS al FROM diagnostics GROUP BY tags_id) d "
            "ON d.tags_id = t.id GROUP BY t.fleet, t.model, t.load_capacity"),
        "daily-activity": lambda p: (
            f"SELECT t.fleet, t.model, y.day, count(*) / 144.0 FROM tags t JOIN ("
            f"SELECT tags_id, {day.format(c='time')} AS day, {b10.format(c='time')} AS b "
            f"FROM diagnostics GROUP BY tags_id, day, b HAVING avg(status) < 1) y ON y.tags_id = t.id "
            f"GROUP BY t.fleet, t.model, y.day"),
        "breakdown-frequency": lambda p: (
            f"WITH b AS (SELECT tags_id, {b10.format(c='time')} AS t, "
            f"avg(CASE WHEN status = 0 THEN 1.0 ELSE 0.0 END) >= 0.5 AS broken FROM diagnostics "
            f"GROUP BY tags_id, t), "
            f"c AS (SELECT tags_id, broken, lag(broken) OVER (PARTITION BY tags_id ORDER BY t) AS prev FROM b) "
            f"SELECT t.model, count(*) FROM c JOIN tags t ON t.id = c.tags_id "
            f"WHERE broken AND NOT prev GROUP BY t.model"),
    }


# InfluxDB 1.x: InfluxQL queries, each answer a list of series {tags, columns, values}; the
# finisher turns them into rows. `rows(series, tag_names, value_columns)` flattens.
def rows_of(series, tags, cols):
    out = []
    for s in series:
        t = s.get("tags") or {}
        idx = [s["columns"].index(c) for c in cols]
        for v in s["values"]:
            out.append([t.get(k) for k in tags] + [v[i] for i in idx])
    return out


def sessions_by_day(points, length_min, threshold):
    """Per (name, day of start): mean duration of runs of consecutive buckets above threshold."""
    by_name = {}
    for name, t, v in points:
        by_name.setdefault(name, []).append((t, v))
    acc = {}
    for name, pts in by_name.items():
        pts.sort()
        start, n = None, 0
        for t, v in pts + [(None, None)]:
            driving = v is not None and v > threshold
            if driving:
                if start is None:
                    start, n = t, 0
                n += 1
            elif start is not None:
                day = start - start % 86400
                acc.setdefault((name, day), []).append(n * length_min)
                start = None
    return [[name, day, sum(d) / len(d)] for (name, day), d in acc.items()]


def influx_queries():
    def fl(p):
        return f"\"fleet\" = '{p['fleet']}'"

    def driving(p, key, threshold):
        q = (f"SELECT \"n\" FROM (SELECT count(\"mv\") AS \"n\" FROM (SELECT mean(\"velocity\") AS \"mv\" "
             f"FROM \"readings\" WHERE {fl(p)} AND {influx_window(p, key)} GROUP BY time(10m), \"name\", "
             f"\"driver\" fill(none)) WHERE \"mv\" > 1 GROUP BY \"name\", \"driver\") WHERE \"n\" > {threshold} "
             f"GROUP BY \"name\", \"driver\"")
        return [q], lambda r: rows_of(r[0], ["name", "driver"], [])

    def high_load(p):
        q = (f"SELECT last(\"current_load\") AS \"current_load\" FROM \"diagnostics\" WHERE {fl(p)} "
             f"GROUP BY \"name\", \"driver\", \"load_capacity\"")

        def finish(r):
            rows = rows_of(r[0], ["name", "driver", "load_capacity"], ["current_load"])
            return [[n, d, c, float(lc)] for n, d, lc, c in rows if c >= 0.9 * float(lc)]
        return [q], finish

    def projected(p):
        q = ("SELECT mean(\"fuel_consumption\") AS \"m\", count(\"fuel_consumption\") AS \"c\" "
             "FROM \"readings\" WHERE \"velocity\" > 1 GROUP BY \"fleet\", \"nominal_fuel_consumption\"")

        def finish(r):
            acc = {}
            for fleet, nominal, m, c in rows_of(r[0], ["fleet", "nominal_fuel_consumption"], ["m", "c"]):
                a = acc.setdefault(fleet, [0.0, 0.0, 0])
                a[0] += m * c
                a[1] += float(nominal) * c
                a[2] += c
            return [[f, s / n, nom / n] for f, (s, nom, n) in acc.items()]
        return [q], finish

    def session(p):
        q = (f"SELECT mean(\"velocity\") AS \"mv\" FROM \"readings\" WHERE {influx_all(p)} "
             f"GROUP BY time(10m), \"name\" fill(none)")

        def finish(r):
            pts = [(n, t // 10**9, v) for n, t, v in rows_of(r[0], ["name"], ["time", "mv"])]
            return sessions_by_day(pts, 10, 5)
        return [q], finish

    def avg_load(p):
        q = ("SELECT mean(\"al\") AS \"al\" FROM (SELECT mean(\"current_load\") AS \"al\" FROM \"diagnostics\" "
             "GROUP BY \"name\", \"fleet\", \"model\", \"load_capacity\") GROUP BY \"fleet\", \"model\", \"load_capacity\"")

        def finish(r):
            return [[f, m, float(lc), al / float(lc)]
                    for f, m, lc, al in rows_of(r[0], ["fleet", "model", "load_capacity"], ["al"])]
        return [q], finish

    def breakdown(p):
        zeros = (f"SELECT count(\"status\") AS \"z\" FROM \"diagnostics\" WHERE \"status\" = 0 AND {influx_all(p)} "
                 f"GROUP BY time(10m), \"name\", \"model\" fill(0)")
        total = (f"SELECT count(\"status\") AS \"n\" FROM \"diagnostics\" WHERE {influx_all(p)} "
                 f"GROUP BY time(10m), \"name\", \"model\" fill(none)")

        def finish(r):
            z = {(n, m, t): v for n, m, t, v in rows_of(r[0], ["name", "model"], ["time", "z"])}
            per = {}
            for n, m, t, c in rows_of(r[1], ["name", "model"], ["time", "n"]):
                per.setdefault((n, m), []).append((t, z.get((n, m, t), 0) / c >= 0.5))
            counts = {}
            for (n, m), buckets in per.items():
                buckets.sort()
                for (_, prev), (_, cur) in zip(buckets, buckets[1:]):
                    if cur and not prev:
                        counts[m] = counts.get(m, 0) + 1
            return [[m, c] for m, c in counts.items()]
        return [zeros, total], finish

    return {
        "last-loc": lambda p: (
            [f"SELECT last(\"latitude\") AS \"latitude\", \"longitude\" FROM \"readings\" WHERE {fl(p)} "
             f"GROUP BY \"name\", \"driver\""],
            lambda r: rows_of(r[0], ["name", "driver"], ["latitude", "longitude"])),
        "low-fuel": lambda p: (
            [f"SELECT \"fuel_state\" FROM (SELECT last(\"fuel_state\") AS \"fuel_state\" FROM \"diagnostics\" "
             f"WHERE {fl(p)} GROUP BY \"name\", \"driver\") WHERE \"fuel_state\" < 0.1 GROUP BY \"name\", \"driver\""],
            lambda r: rows_of(r[0], ["name", "driver"], ["fuel_state"])),
        "high-load": high_load,
        "stationary-trucks": lambda p: (
            [f"SELECT \"mv\" FROM (SELECT mean(\"velocity\") AS \"mv\" FROM \"readings\" WHERE {fl(p)} AND "
             f"{influx_window(p, 'stationary')} GROUP BY \"name\", \"driver\") WHERE \"mv\" < 1 "
             f"GROUP BY \"name\", \"driver\""],
            lambda r: rows_of(r[0], ["name", "driver"], [])),
        "long-driving-sessions": lambda p: driving(p, "long_driving", 22),
        "long-daily-sessions": lambda p: driving(p, "long_daily", 60),
        "avg-vs-projected-fuel-consumption": projected,
        "avg-daily-driving-duration": lambda p: (
            [f"SELECT mean(\"h\") AS \"h\" FROM (SELECT count(\"mv\") / 6.0 AS \"h\" FROM (SELECT mean(\"velocity\") "
             f"AS \"mv\" FROM \"readings\" WHERE {influx_all(p)} GROUP BY time(10m), \"fleet\", \"name\", "
             f"\"driver\" fill(none)) WHERE \"mv\" > 1 AND {influx_all(p)} GROUP BY time(1d), \"fleet\", "
             f"\"name\", \"driver\" fill(none)) GROUP BY \"fleet\", \"name\", \"driver\""],
            lambda r: rows_of(r[0], ["fleet", "name", "driver"], ["h"])),
        "avg-daily-driving-session": session,
        "avg-load": avg_load,
        "daily-activity": lambda p: (
            [f"SELECT count(\"ms\") / 144.0 AS \"a\" FROM (SELECT mean(\"status\") AS \"ms\" FROM \"diagnostics\" "
             f"WHERE {influx_all(p)} GROUP BY time(10m), \"name\", \"model\", \"fleet\" fill(none)) "
             f"WHERE \"ms\" < 1 AND {influx_all(p)} GROUP BY time(1d), \"model\", \"fleet\" fill(none)"],
            lambda r: [[f, m, t // 10**9, a] for m, f, t, a in rows_of(r[0], ["model", "fleet"], ["time", "a"])]),
        "breakdown-frequency": breakdown,
    }


KINDS = {
    "last-loc": "ssff",
    "low-fuel": "ssf",
    "high-load": "ssff",
    "stationary-trucks": "ss",
    "long-driving-sessions": "ss",
    "long-daily-sessions": "ss",
    "avg-vs-projected-fuel-consumption": "sff",
    "avg-daily-driving-duration": "sssf",
    "avg-daily-driving-session": "stf",
    "avg-load": "ssff",
    "daily-activity": "sstf",
    "breakdown-frequency": "si",
}
LATEST = ["last-loc", "low-fuel", "high-load"]


def to_epoch(v):
    """A time in any system's answer (epoch seconds or ns, ISO string, datetime) → epoch s."""
    if isinstance(v, (int, float)):
        return int(v // 10**9) if v > 10**12 else int(v)
    if isinstance(v, dt.datetime):
        if v.tzinfo is None:
            v = v.replace(tzinfo=dt.timezone.utc)
        return int(v.timestamp())
    s = str(v).replace("Z", "+00:00").replace(" ", "T")
    d = dt.datetime.fromisoformat(s)
    if d.tzinfo is None:
        d = d.replace(tzinfo=dt.timezone.utc)
    return int(d.timestamp())


def normalise(query, rows):
    kinds = KINDS[query]
    out = []
    for r in rows:
        r = list(r)
        if len(r) != len(kinds):
            raise ValueError(f"{query}: row {r} has {len(r)} columns, expected {len(kinds)}")
        row = []
        for k, v in zip(kinds, r):
            if v is None:
                row.append(None)
            elif k == "s":
                row.append(str(v))
            elif k == "f":
                row.append(float(v))
            elif k == "i":
                row.append(int(v))
            else:
                row.append(to_epoch(v))
        out.append(row)
    out.sort(key=lambda r: [("" if x is None else x) if not isinstance(x, float) else round(x, 6) for x in r])
    return out


def same(a, b):
    if len(a) != len(b):
        return False
    for ra, rb in zip(a, b):
        for x, y in zip(ra, rb):
            if isinstance(x, float) or isinstance(y, float):
                if x is None or y is None or not math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-9):
                    return False
            elif x != y:
                return False
    return True


# ---------------------------------------------------------------------------------------
# Clients.

def http_json(url, data=None, headers=None, timeout=600):
    req = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"{url}: HTTP {e.code}: {e.read().decode(errors='replace')[:500]}") from None


class Ferrite:
    def __init__(self, url, token=None):
        self.url = url.rstrip("/") + "/api/v1/query"
        self.headers = {"Content-Type": "text/plain", "Accept": "application/json"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self.q = flat("ferrite")

    def run(self, query, p):
        rows = http_json(self.url, self.q[query](p).encode(), self.headers)
        return [list(r.values()) for r in rows]


class Duck:
    def __init__(self, path):
        import duckdb
        self.con = duckdb.connect(path, read_only=True)
        self.q = flat("duckdb")

    def run(self, query, p):
        return self.con.execute(self.q[query](p)).fetchall()


class Postgres:
    def __init__(self, dsn):
        import psycopg
        self.con = psycopg.connect(dsn, autocommit=True)
        self.q = pg_queries()

    def run(self, query, p):
        with self.con.cursor() as cur:
            cur.execute(self.q[query](p))
            return cur.fetchall()


class Influx:
    def __init__(self, url, db):
        self.url = url.rstrip("/") + "/query"
        self.db = db
        self.q = influx_queries()

    def run(self, query, p):
        queries, finish = self.q[query](p)
        answers = []
        for q in queries:
            body = urllib.parse.urlencode({"db": self.db, "q": q, "epoch": "ns"}).encode()
            res = http_json(self.url, body, {"Content-Type": "application/x-www-form-urlencoded"})
            r = res["results"][0]
            if "error" in r:
                raise RuntimeError(f"InfluxQL error: {r['error']}\n{q}")
            answers.append(r.get("series", []))
        return finish(answers)


def run_suite(args):
    start, end = to_epoch(args.start), to_epoch(args.end)
    runs = params_for(args.seed, args.runs, start, end)
    if args.system == "ferrite":
        client = Ferrite(args.target, os.environ.get("BENCH_TOKEN"))
    elif args.system == "duckdb":
        client = Duck(args.target)
    elif args.system == "postgresql":
        client = Postgres(args.target)
    elif args.system == "influxdb":
        client = Influx(args.target, args.db)
    else:
        sys.exit(f"unknown system {args.system}")
    only = set(args.only.split(",")) if args.only else None
    result = {"system": args.system, "version": args.version, "queries": {}}
    for query in KINDS:
        if only and query not in only:
            continue
        entry = {"ms": [], "answers": []}
        try:
            client.run(query, runs[0])  # warm-up
            for p in runs:
                t0 = time.perf_counter()
                rows = client.run(query, p)
                entry["ms"].append((time.perf_counter() - t0) * 1000)
                entry["answers"].append(normalise(query, rows))
        except Exception as e:  # a failing query is reported, the suite goes on
            entry["error"] = str(e)[:2000]
        ms = entry["ms"]
        shown = f"median {statistics.median(ms):9.1f} ms" if ms else f"ERROR {entry['error'][:200]}"
        print(f"{args.system:10} {query:34} {shown}", file=sys.stderr, flush=True)
        result["queries"][query] = entry
    with open(args.out, "w") as f:
        json.dump(result, f)


def pct(values, q):
    v = sorted(values)
    return v[min(len(v) - 1, math.ceil(q * len(v)) - 1)]


def report(args):
    results = [json.load(open(f)) for f in args.files]
    by = {r["system"]: r for r in results}
    order = [s for s in ["ferrite", "influxdb", "postgresql", "duckdb"] if s in by]
    print(args.title + "\n")
    if args.context:
        print(args.context + "\n")
    print("Versions: " + "; ".join(f"{s}: {by[s]['version']}" for s in order) + ".\n")
    head = "| query | " + " | ".join(f"{s} p50 / p95 ms" for s in order) + " | " + \
        " | ".join(f"{s} ÷ ferrite" for s in order if s != "ferrite") + " | answers |"
    print(head)
    print("|---|" + "---:|" * (len(order) + len(order) - 1) + "---|")
    ratios = {s: [] for s in order}
    medians = {s: [] for s in order}
    disagreements = 0
    for query in KINDS:
        cells, med = [], {}
        for s in order:
            e = by[s]["queries"].get(query)
            if not e or not e["ms"]:
                cells.append("error" if e else "–")
                continue
            med[s] = statistics.median(e["ms"])
            medians[s].append(med[s])
            cells.append(f"{med[s]:.1f} / {pct(e['ms'], 0.95):.1f}")
        rcells = []
        for s in order:
            if s == "ferrite":
                continue
            if s in med and "ferrite" in med:
                r = med[s] / med["ferrite"]
                ratios[s].append(r)
                rcells.append(f"{r:.2f}×")
            else:
                rcells.append("–")
        # Answers: every system's answer to every run against the first system's.
        ref = next((by[s]["queries"][query] for s in order if by[s]["queries"].get(query, {}).get("answers")), None)
        agree = []
        for s in order:
            e = by[s]["queries"].get(query)
            if not e or not e.get("answers") or ref is None:
                continue
            ok = all(same(a, b) for a, b in zip(e["answers"], ref["answers"]))
            if not ok:
                agree.append(f"{s} differs")
                disagreements += 1
        rows = len(ref["answers"][0]) if ref else 0
        status = ", ".join(agree) if agree else f"agree ({rows} rows)"
        print(f"| {query} | " + " | ".join(cells) + " | " + " | ".join(rcells) + f" | {status} |")
    print()
    if args.json:
        write_figures(args, by, order, medians, disagreements)
    for s in order:
        if s == "ferrite" or not ratios[s]:
            continue
        print(f"- {s} ÷ ferrite, median over the suite's queries: {statistics.median(ratios[s]):.2f}× "
              f"(geometric mean {math.exp(statistics.mean(math.log(r) for r in ratios[s])):.2f}×; "
              f"> 1 means Ferrite is faster)")
    for s in order:
        if medians[s]:
            print(f"- {s}: median query latency over the suite {statistics.median(medians[s]):.1f} ms")
    if args.details and disagreements:
        for query in KINDS:
            answers = {s: by[s]["queries"].get(query, {}).get("answers") for s in order}
            first = next((a for a in answers.values() if a), None)
            for s, a in answers.items():
                if a and first and not all(same(x, y) for x, y in zip(a, first)):
                    print(f"\n{query}: {s} answered {a[0][:5]} ... ({len(a[0])} rows); "
                          f"reference {first[0][:5]} ... ({len(first[0])} rows)", file=sys.stderr)
    return 1 if disagreements else 0


def write_figures(args, by, order, medians, disagreements):
    """The suite's figures in bench/figures.py's form, for bench/run's report."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from figures import Figures
    figs = Figures("query", "Queries: the TSBS iot suite", {s: by[s]["version"] for s in order},
                   args.context.replace("\n", " "))
    for query in KINDS:
        vals = {s: statistics.median(by[s]["queries"][query]["ms"]) for s in order
                if by[s]["queries"].get(query, {}).get("ms")}
        figs.add(f"{query} p50", "ms", "lower", vals, chart="query-latency")
    suite = {s: statistics.median(medians[s]) for s in order if medians[s]}
    targets = {"influxdb": 3.0, "postgresql": 3.0, "duckdb": 1.0}
    for s, want in targets.items():
        if s in suite and "ferrite" in suite:
            ratio = suite[s] / suite["ferrite"]
            figs.add(f"suite median latency, ferrite vs {s}", "ms", "lower",
                     {"ferrite": suite["ferrite"], s: suite[s]},
                     target=f"≥ {want:g}× faster than {s}", met=ratio >= want)
    figs.check("every system gives the same answers to every query" if not disagreements else
               f"answers differ between systems in {disagreements} cases", disagreements == 0)
    figs.write(args.json)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the suite against one system")
    r.add_argument("system", choices=["ferrite", "influxdb", "postgresql", "duckdb"])
    r.add_argument("target", help="URL (ferrite, influxdb), DSN (postgresql) or database file (duckdb)")
    r.add_argument("--db", default="bench", help="InfluxDB database")
    r.add_argument("--start", required=True)
    r.add_argument("--end", required=True)
    r.add_argument("--runs", type=int, default=5)
    r.add_argument("--seed", type=int, default=7)
    r.add_argument("--version", default="")
    r.add_argument("--only", help="comma-separated query names")
    r.add_argument("--out", required=True)
    p = sub.add_parser("report", help="compare the results of several systems")
    p.add_argument("files", nargs="+")
    p.add_argument("--title", default="## Queries: the TSBS iot suite")
    p.add_argument("--context", default="")
    p.add_argument("--details", action="store_true")
    p.add_argument("--json", help="also write the figures as JSON (bench/figures.py)")
    args = ap.parse_args()
    if args.cmd == "run":
        run_suite(args)
    else:
        sys.exit(report(args))


if __name__ == "__main__":
    main()
