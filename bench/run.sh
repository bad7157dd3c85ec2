#!/usr/bin/env bash
# Reproduces BENCHMARKS.md: builds the release binaries, installs the y-websocket peer if it is
# missing, and runs every scenario against every available target side by side (balint-room,
# the bare relay, y-websocket, and y-sweet when `y-sweet` is on PATH). Extra arguments go to
# balint-bench, e.g. `bench/run.sh --rooms 1000 --idle 10000` for the issue's full shapes.
# Everything runs on loopback. The report is printed and written to target/bench/results.md.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -p balint-server --bin balint-room -p balint-bench --bins

if [ ! -f bench/peers/node_modules/y-websocket/bin/server.js ]; then
    if command -v npm >/dev/null; then
        # bench/peers/.npmrc keeps registry hosts out of the lock file.
        (cd bench/peers && npm install --no-audit --no-fund)
    else
        echo "npm not found: the y-websocket peer will be skipped" >&2
    fi
fi

if ! command -v y-sweet >/dev/null; then
    echo "y-sweet not on PATH: skipped (install it with: cargo install y-sweet --locked)" >&2
fi

# 10,000 idle members need 10,000 descriptors in the generator and as many in the server.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

exec target/release/balint-bench "$@"
