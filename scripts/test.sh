#!/usr/bin/env bash
# The whole test suite, for a fresh machine with only the Rust toolchain and apt:
# installs what the tests need, then format check, clippy (-D warnings), every test,
# doc tests, the README's user path with real MQTT clients (scripts/smoke.sh), and the cold
# tier on an S3-compatible bucket (scripts/smoke_cold.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v mosquitto_pub >/dev/null 2>&1 || need+=(mosquitto-clients)
command -v psql >/dev/null 2>&1 || need+=(postgresql-client)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "installing ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v cargo-nextest >/dev/null 2>&1 || cargo install cargo-nextest --locked
# Eclipse Paho for the MQTT interop suite (scripts/interop_paho.py).
python3 -c 'import paho.mqtt' 2>/dev/null || python3 -m pip install --quiet --disable-pip-version-check 'paho-mqtt>=2,<3'
# pyarrow, the smoke test's second Parquet reader for exports and the store's data files.
python3 -c 'import pyarrow.parquet' 2>/dev/null || python3 -m pip install --quiet --disable-pip-version-check 'pyarrow>=15'
# moto's S3 server, the S3-compatible bucket of the cold-tier smoke test (scripts/smoke_cold.sh).
command -v moto_server >/dev/null 2>&1 || python3 -m pip install --quiet --disable-pip-version-check 'moto[server]>=5,<6'

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== tests"
cargo nextest run --workspace --no-fail-fast
echo "== doc tests"
cargo test --workspace --doc --quiet
echo "== smoke: the README's user path"
scripts/smoke.sh
echo "== smoke: the cold tier on an S3-compatible bucket"
scripts/smoke_cold.sh
