#!/usr/bin/env bash
# Builds everything (the wasm client of the web UI, then the server) and starts Balint Room on
# http://127.0.0.1:8080 with embedded in-memory state. Extra arguments go to the server (see
# `--help`).
set -euo pipefail
cd "$(dirname "$0")/.."
client-wasm/build-web.sh
exec cargo run --release --locked -p balint-server --bin balint-room -- "$@"
