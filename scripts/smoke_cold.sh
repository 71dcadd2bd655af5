#!/usr/bin/env bash
# The cold tier as an operator runs it: `ferrite serve` with partitions older than two days
# moving to an S3-compatible bucket (moto's S3 server from PyPI, on 127.0.0.1), line protocol
# written over HTTP with old and new timestamps, the old partitions checked in the bucket and
# in `EXPLAIN`, then kill -9, the local cache deleted and a stray object put in the bucket,
# restart: the same answers (fetched back from the bucket), the stray object gone, a late
# rewrite of a cold row winning. Talks only to 127.0.0.1; every wait is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build -q --workspace --all-targets
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
bin="$target/debug/ferrite"
work=$(mktemp -d)
pid=""
s3pid=""
cleanup() {
  if [ -n "$pid" ]; then kill -9 "$pid" 2>/dev/null || true; fi
  if [ -n "$s3pid" ]; then kill "$s3pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "smoke_cold: FAILED: $*" >&2; echo "--- server output" >&2; cat "$work"/out "$work"/err >&2 || true; exit 1; }

s3port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
moto_server -H 127.0.0.1 -p "$s3port" >"$work/s3.log" 2>&1 &
s3pid=$!
s3="http://127.0.0.1:$s3port"
timeout 30 bash -c "until curl -sf '$s3/' >/dev/null; do sleep 0.2; done" || fail "the S3 server did not start"
curl -sf -X PUT "$s3/telemetry" >/dev/null || fail "creating the bucket"
objects() { curl -sf "$s3/telemetry?list-type=2&prefix=plant-1/" | grep -o '<Key>[^<]*</Key>' | sed 's/<[^>]*>//g' || true; }

export AWS_ENDPOINT="$s3" AWS_ALLOW_HTTP=true AWS_ACCESS_KEY_ID=smoke AWS_SECRET_ACCESS_KEY=smoke AWS_REGION=us-east-1
start() {
  "$bin" serve --data-dir "$work/data" --mqtt-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 \
    --pg-listen 127.0.0.1:0 --anonymous loopback --set store.flush_interval=1s \
    --set store.cold_after=2days --set store.cold_url=s3://telemetry/plant-1 >"$work/out" 2>"$work/err" &
  pid=$!
  timeout 30 bash -c "until grep -q 'HTTP API' '$work/out'; do sleep 0.1; done" || fail "server did not start"
  http=$(grep -o 'http://[0-9.:]*' "$work/out" | head -1 | sed 's|http://||')
}
query() { curl -sS --max-time 20 -X POST "http://$http/api/v1/query" -d "$1"; }

start
day=86400000000000
now=$(date +%s%N)
old=$(( (now / day - 10) * day + 3600000000000 ))
older=$(( (now / day - 5) * day + 3600000000000 ))
printf 'readings,device_id=t1 fuel=0.5 %s\nreadings,device_id=t2 fuel=0.75 %s\nreadings,device_id=t1 fuel=0.25 %s\nreadings,device_id=t1 fuel=0.125 %s\n' \
  "$old" "$old" "$older" "$now" >"$work/lines"
code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "http://$http/write?db=fleet" --data-binary @"$work/lines")
[ "$code" = 204 ] || fail "line protocol write gave HTTP $code"
timeout 30 bash -c "until [ \$(curl -sf '$s3/telemetry?list-type=2&prefix=plant-1/' | grep -o '<Key>' | wc -l) -ge 2 ]; do sleep 0.2; done" \
  || fail "the two old partitions did not reach the bucket: $(objects)"
objects | grep -q '^plant-1/tables/readings/.*\.parquet$' || fail "object keys: $(objects)"
expected='[{"device_id":"t1","n":3,"total":0.875},{"device_id":"t2","n":1,"total":0.75}]'
sql='SELECT device_id, count(*) AS n, sum(fuel) AS total FROM readings GROUP BY device_id ORDER BY device_id'
answer=$(query "$sql")
[ "$answer" = "$expected" ] || fail "answer over the cold tier: $answer"
query 'EXPLAIN SELECT * FROM readings' | grep -q 'files=3 of 3 (0 pruned by time, 2 cold)' \
  || fail "EXPLAIN: $(query 'EXPLAIN SELECT * FROM readings')"
stats=$(curl -sS --max-time 10 "http://$http/api/v1/store")
echo "$stats" | grep -q '"cold_files":2' || fail "store counters: $stats"
echo "$stats" | grep -q '"files_tiered":2' || fail "store counters: $stats"

# kill -9, lose the cache, leave a stray object as a crash between upload and commit would.
kill -9 "$pid"; wait "$pid" 2>/dev/null || true; pid=""
rm -rf "$work/data/store/cache"
stray="plant-1/tables/readings/19700101T000000Z/00000000000000099999.parquet"
curl -sf -X PUT "$s3/telemetry/$stray" --data-binary 'uploaded before a crash' >/dev/null || fail "putting the stray object"
start
answer=$(query "$sql")
[ "$answer" = "$expected" ] || fail "after kill -9 without the cache: $answer"
objects | grep -q 99999 && fail "the stray object is still in the bucket"
ls "$work/data/store/cache" | grep -q parquet || fail "nothing was fetched into the cache"
stats=$(curl -sS --max-time 10 "http://$http/api/v1/store")
echo "$stats" | grep -q '"cache_misses":2' || fail "store counters after the restart: $stats"

# A retry of a cold row rewrites it (last write wins), and the partition goes cold again.
printf 'readings,device_id=t2 fuel=1.5 %s\n' "$old" | curl -sf -X POST "http://$http/write?db=fleet" --data-binary @- \
  || fail "late write"
answer=$(query "SELECT fuel FROM readings WHERE device_id = 't2'")
[ "$answer" = '[{"fuel":1.5}]' ] || fail "late rewrite of a cold row: $answer"
kill -TERM "$pid"; wait "$pid" || fail "graceful shutdown exit code"; pid=""
echo "smoke_cold: 1 passed, 0 failed ($(objects | wc -l) objects in the bucket)"
