#!/usr/bin/env bash
# The README's user path with real clients: start `ferrite serve` on a fresh data folder,
# register a device with `ferrite device add` (admin token from the banner) and publish with
# its token, publish with mosquitto_pub (MQTT 5, 3.1.1, over TLS with an openssl-made CA, and
# with a client certificate from the fleet's CA), enroll a device with a claim token, publish
# over HTTP with device credentials, watch a presence event, resume a persistent session,
# receive with mosquitto_sub, run the Paho (Python) interop suite, query with curl and with
# psql (PostgreSQL wire protocol),
# kill -9 right after the PUBACK, restart, and check the rows, a persistent session's queued
# message, a retained message and an owed will are still there; export the table with `ferrite export` and
# read the export and the store's data files with pyarrow.
# Talks only to 127.0.0.1; every wait is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."

# Same targets as the test run, so features unify the same way and nothing is rebuilt.
cargo build -q --workspace --all-targets
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
bin="$target/debug/ferrite"
work=$(mktemp -d)
pid=""
willer=""
cleanup() {
  if [ -n "$pid" ]; then kill -9 "$pid" 2>/dev/null || true; fi
  if [ -n "$willer" ]; then kill "$willer" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

fail() { echo "smoke: FAILED: $*" >&2; echo "--- server output" >&2; cat "$work"/out "$work"/err >&2 || true; exit 1; }

# A CA and a server certificate for MQTT over TLS, made with openssl as an operator would.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -keyout "$work/ca.key" -out "$work/ca.pem" -subj "/CN=smoke CA" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout "$work/server.key" -out "$work/server.csr" -subj "/CN=localhost" 2>/dev/null
printf 'subjectAltName=DNS:localhost\n' >"$work/ext.cnf"
openssl x509 -req -in "$work/server.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -CAcreateserial \
  -days 2 -extfile "$work/ext.cnf" -out "$work/server.pem" 2>/dev/null

start() {
  FERRITE_MQTT_TLS_CERT="$work/server.pem" FERRITE_MQTT_TLS_KEY="$work/server.key" \
    "$bin" serve --data-dir "$work/data" --mqtt-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 \
    --pg-listen 127.0.0.1:0 \
    --set mqtt.tls.listen=127.0.0.1:0 --set mqtt.tls.client_ca=fleet --set mqtt.tls.client_auth=optional \
    --set store.flush_interval=1s --anonymous loopback >"$work/out" 2>"$work/err" &
  pid=$!
  timeout 30 bash -c "until grep -q 'HTTP API' '$work/out'; do sleep 0.1; done" || fail "server did not start"
  mqtt=$(grep -o 'mqtt://[0-9.:]*' "$work/out" | head -1 | sed 's|mqtt://||')
  http=$(grep -o 'http://[0-9.:]*' "$work/out" | head -1 | sed 's|http://||')
  mport=${mqtt##*:}
  tport=$(grep -o 'mqtts://[0-9.:]*' "$work/out" | head -1 | sed 's|.*:||')
}

query() { curl -sS --max-time 10 -X POST "http://$http/api/v1/query" -d "$1"; }

start
admin=$(sed -n 's/^Admin API token (shown once; only its hash is kept): //p' "$work/out")
[ -n "$admin" ] || fail "no admin token in the banner"

# A registered device publishes with its token; a wrong token is refused.
FERRITE_TOKEN="$admin" "$bin" device add d5 --type meter --http "$http" >"$work/d5" || fail "device add"
d5=$(sed -n 's/^token (shown once): //p' "$work/d5")
mosquitto_pub -h 127.0.0.1 -p "$mport" -V mqttv5 -q 1 -i d5 -u d5 -P "$d5" -t devices/d5/telemetry \
  -m '{"temperature":7.25}' || fail "mosquitto_pub with a device token"
if mosquitto_pub -h 127.0.0.1 -p "$mport" -V mqttv5 -q 1 -i d5 -u d5 -P wrong -t devices/d5/telemetry -m '{"temperature":1}' 2>/dev/null; then
  fail "a wrong device token was accepted"
fi
code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Authorization: Bearer fa_nonsense' -X POST "http://$http/api/v1/query" -d 'SELECT 1')
[ "$code" = 401 ] || fail "a bad API token gave HTTP $code"

timeout 10 mosquitto_sub -h 127.0.0.1 -p "$mport" -V mqttv5 -t 'devices/+/telemetry' -C 1 >"$work/sub" &
sub=$!
curl -sS --max-time 10 "http://$http/healthz" | grep -q ok || fail "healthz"
# Retained, so the subscriber gets it whether its SUBSCRIBE lands before or after.
mosquitto_pub -h 127.0.0.1 -p "$mport" -V mqttv5 -q 1 -r -t devices/d1/telemetry -m '{"temperature":21.5}' || fail "mosquitto_pub v5"
mosquitto_pub -h 127.0.0.1 -p "$mport" -V mqttv311 -q 1 -t devices/d2/telemetry -m '{"temperature":19.25,"door":"open"}' || fail "mosquitto_pub v3.1.1"
wait "$sub" || fail "mosquitto_sub got nothing"
grep -q '"temperature":21.5' "$work/sub" || fail "subscriber got: $(cat "$work/sub")"

# Persistent sessions: subscribe with Clean Start = 0, go away, a message is queued for the
# session, and the returning client gets it without subscribing again (MQTT 5 and 3.1.1).
for v in mqttv5 mqttv311; do
  expiry=""; [ "$v" = mqttv5 ] && expiry="-x 300"
  mosquitto_sub -h 127.0.0.1 -p "$mport" -V "$v" -c $expiry -i "keeper-$v" -q 1 -t "smoke/queue/$v" -E \
    || fail "persistent subscribe ($v)"
  mosquitto_pub -h 127.0.0.1 -p "$mport" -V "$v" -q 1 -t "smoke/queue/$v" -m "queued-$v" || fail "publish to an offline session ($v)"
  got=$(timeout 15 mosquitto_sub -h 127.0.0.1 -p "$mport" -V "$v" -c $expiry -i "keeper-$v" -q 1 -t "smoke/queue/$v" -C 1 -W 10) \
    || fail "the returning client got nothing ($v)"
  [ "$got" = "queued-$v" ] || fail "the returning client got '$got' ($v)"
done

# MQTT over TLS with the operator's CA.
mosquitto_pub -h localhost -p "$tport" --cafile "$work/ca.pem" -V mqttv5 -q 1 -t devices/d4/telemetry \
  -m '{"temperature":5.5}' || fail "mosquitto_pub over TLS"

# Eclipse Paho for Python, MQTT 3.1.1 and 5: QoS 2, retained, will, persistent session,
# shared subscriptions, TLS and WebSocket.
timeout 180 python3 scripts/interop_paho.py --mqtt "$mqtt" --tls "$tport" --ca "$work/ca.pem" --http "$http" \
  || fail "Paho interop"

# Mutual TLS with the fleet's own CA, created while the server runs; presence is announced.
cli() { FERRITE_TOKEN="$admin" "$bin" "$@" --http "$http"; }
cli cert ca-init >/dev/null || fail "cert ca-init"
cli cert issue d5 --dir "$work" >/dev/null || fail "cert issue"
stdbuf -oL mosquitto_sub -d -h 127.0.0.1 -p "$mport" -V mqttv5 -t '$ferrite/events/presence/connected/d5' -C 1 -W 20 >"$work/presence" &
psub=$!
timeout 10 bash -c "until grep -q SUBACK '$work/presence'; do sleep 0.05; done" || fail "presence subscriber"
# The listener reloads the CA on the fleet's event; retry the handshake until it is trusted.
timeout 10 bash -c "until mosquitto_pub -h localhost -p '$tport' --cafile '$work/ca.pem' --cert '$work/d5.crt' \
  --key '$work/d5.key' -i d5 -V mqttv5 -q 1 -t devices/d5/telemetry/env -m '{\"temperature\":6.5}' 2>/dev/null; do sleep 0.1; done" \
  || fail "mosquitto_pub with a fleet-issued client certificate"
wait "$psub" || fail "no presence event"
grep -q '"event":"connected"' "$work/presence" || fail "presence event: $(cat "$work/presence")"

# A device enrolls itself with a claim token over HTTP, then publishes with its new token;
# devices without a connection publish over HTTP with Basic credentials.
claim=$(cli claim create --label smoke --max-uses 1 | sed -n 's/.*token (shown once): //p')
[ -n "$claim" ] || fail "claim create"
curl -sS --max-time 10 -H "Authorization: Bearer $claim" -H 'Content-Type: application/json' \
  -d '{"device_id":"claimed-1"}' "http://$http/api/v1/provision" >"$work/provisioned" || fail "provision"
ctoken=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["token"])' "$work/provisioned") \
  || fail "provision answer: $(cat "$work/provisioned")"
mosquitto_pub -h 127.0.0.1 -p "$mport" -V mqttv311 -q 1 -i claimed-1 -u claimed-1 -P "$ctoken" \
  -t devices/claimed-1/telemetry/env -m '{"temperature":3.5}' || fail "mosquitto_pub as the claimed device"
code=$(curl -s -o /dev/null -w '%{http_code}' -u "d5:$d5" --data-binary '{"temperature":8.5}' \
  "http://$http/api/v1/publish/devices/d5/telemetry/env")
[ "$code" = 204 ] || fail "HTTP publish with a device token gave $code"
code=$(curl -s -o /dev/null -w '%{http_code}' -u "d5:$d5" --data-binary '{"temperature":8.5}' \
  "http://$http/api/v1/publish/devices/d6/telemetry/env")
[ "$code" = 403 ] || fail "HTTP publish outside the device's namespace gave $code"
env_rows=$(query 'SELECT device_id, temperature FROM env ORDER BY temperature')
[ "$env_rows" = '[{"device_id":"claimed-1","temperature":3.5},{"device_id":"d5","temperature":6.5},{"device_id":"d5","temperature":8.5}]' ] \
  || fail "env rows: $env_rows"

# A bad payload is refused (MQTT 5 reason 0x99 reaches mosquitto_pub as an error).
if mosquitto_pub -h 127.0.0.1 -p "$mport" -V mqttv5 -q 1 -t devices/d1/telemetry -m '{"temperature":{"nested":1}}' 2>"$work/bad"; then
  grep -qi 'payload format invalid' "$work/bad" || fail "bad payload was accepted"
fi

answer=$(query 'SELECT device_id, temperature FROM telemetry ORDER BY device_id')
echo "$answer" | grep -q '"device_id":"d1","temperature":21.5' || fail "query: $answer"
echo "$answer" | grep -q '"device_id":"d2","temperature":19.25' || fail "query: $answer"
echo "$answer" | grep -q '"device_id":"d4","temperature":5.5' || fail "query (TLS row): $answer"
echo "$answer" | grep -q '"device_id":"d5","temperature":7.25' || fail "query (token row): $answer"

# SQL over the PostgreSQL wire protocol with psql, as the README shows it. (This server admits
# loopback clients anonymously, so the password is not asked for; token refusal (28P01) is
# covered by crates/ferrite-server/tests/pg.rs.)
pg=$(grep -o 'postgres://[0-9.:]*' "$work/out" | head -1 | sed 's|postgres://||')
pgport=${pg##*:}
psql_rows=$(PGPASSWORD="$admin" PGCONNECT_TIMEOUT=10 psql -h 127.0.0.1 -p "$pgport" -U ferrite -d ferrite -At -F ' ' \
  -c "SELECT device_id, temperature FROM telemetry WHERE device_id IN ('d1', 'd2') ORDER BY device_id") \
  || fail "psql query"
[ "$psql_rows" = $'d1 21.5\nd2 19.25' ] || fail "psql rows: $psql_rows"
# A syntax error is an ERROR and the same session answers the next statement.
psql_err=$(PGCONNECT_TIMEOUT=10 psql -h 127.0.0.1 -p "$pgport" -U ferrite -d ferrite -At \
  -c "SELEC 1" -c "SELECT count(*) FROM telemetry" 2>&1) || true
echo "$psql_err" | grep -q 'ERROR:.*ParserError' || fail "psql bad SQL: $psql_err"
echo "$psql_err" | tail -1 | grep -qx '[0-9][0-9]*' || fail "psql after an error: $psql_err"

# kill -9 right after a PUBACK, then restart: the row is still there, and so are a message
# queued for an offline persistent session, a retained message and a will.
mosquitto_sub -h 127.0.0.1 -p "$mport" -V mqttv5 -c -x 300 -i survivor -q 1 -t smoke/survive -E \
  || fail "persistent subscribe before kill"
mosquitto_pub -h 127.0.0.1 -p "$mport" -V mqttv5 -q 1 -t smoke/survive -m after-crash || fail "publish to an offline session before kill"
mosquitto_pub -h 127.0.0.1 -p "$mport" -V mqttv5 -q 1 -t devices/d3/telemetry -m '{"temperature":-4.5}' || fail "mosquitto_pub before kill"
# A client with a (retained) will is connected when the gateway is killed: the will is owed,
# and published after the restart.
mosquitto_sub -h 127.0.0.1 -p "$mport" -V mqttv5 -i willer -q 1 -t smoke/ping -C 2 \
  --will-topic smoke/will --will-payload gone --will-qos 1 --will-retain >"$work/willer.out" 2>&1 &
willer=$!
timeout 15 bash -c "until grep -q ping '$work/willer.out'; do
    mosquitto_pub -h 127.0.0.1 -p $mport -V mqttv5 -q 1 -t smoke/ping -m ping; sleep 0.2; done" \
  || fail "the client with a will did not connect"
kill -9 "$pid"; wait "$pid" 2>/dev/null || true; pid=""
# mosquitto_sub would reconnect (and, back within the will delay, cancel its will): stop it.
kill "$willer" 2>/dev/null || true; wait "$willer" 2>/dev/null || true; willer=""
start
got=$(timeout 15 mosquitto_sub -h 127.0.0.1 -p "$mport" -V mqttv5 -t smoke/will -C 1 -W 10) \
  || fail "the will owed at kill -9 was not published after the restart"
[ "$got" = gone ] || fail "after kill -9 the will is '$got'"
answer=$(query 'SELECT count(*) AS n FROM telemetry')
[ "$answer" = '[{"n":5}]' ] || fail "after kill -9 and restart: $answer"
got=$(timeout 15 mosquitto_sub -h 127.0.0.1 -p "$mport" -V mqttv5 -c -x 300 -i survivor -q 1 -t smoke/survive -C 1 -W 10) \
  || fail "the persistent session did not survive kill -9"
[ "$got" = after-crash ] || fail "after kill -9 the session got '$got'"
got=$(timeout 15 mosquitto_sub -h 127.0.0.1 -p "$mport" -V mqttv311 -t devices/d1/telemetry -C 1 -W 10) \
  || fail "the retained message did not survive kill -9"
[ "$got" = '{"temperature":21.5}' ] || fail "after kill -9 the retained message is '$got'"
# Export the table with `ferrite export`, and read both the export and the store's own data
# files with another Parquet reader (pyarrow).
"$bin" export --http "$http" --table telemetry --out "$work/telemetry.parquet" 2>"$work/export.err" \
  || fail "ferrite export: $(cat "$work/export.err")"
timeout 20 bash -c "until find '$work/data' -name '*.parquet' | grep -q .; do sleep 0.2; done" \
  || fail "no Parquet data files after the flush interval"
python3 - "$work/telemetry.parquet" "$work/data" <<'PY' || fail "pyarrow could not read the Parquet files"
import pathlib, sys
import pyarrow.parquet as pq
export = pq.read_table(sys.argv[1])
assert export.num_rows == 5, export.num_rows
assert -4.5 in export.column("temperature").to_pylist(), export
files = sorted(pathlib.Path(sys.argv[2]).rglob("*.parquet"))
rows = sum(pq.read_table(f).num_rows for f in files)
assert rows >= 1, files
print(f"pyarrow read the export (5 rows) and {len(files)} data file(s) ({rows} rows)")
PY
code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "http://$http/api/v1/query" -d 'SELEC nonsense')
[ "$code" = 400 ] || fail "bad SQL gave HTTP $code"
kill -TERM "$pid"; wait "$pid" || fail "graceful shutdown exit code"; pid=""
echo "smoke: 1 passed, 0 failed"
