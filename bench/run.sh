#!/usr/bin/env bash
# Reproduces BENCHMARKS.md: builds the release binaries, installs the y-websocket peer if it is
# missing, and runs every scenario against every available target side by side (balint-room,
# balint-room with sealed rooms in the group and many-groups scenarios, balint-room on Redis,
# the bare relay, y-websocket, and y-sweet when `y-sweet` is on PATH;
# `BENCH_INSTALL_Y_SWEET=1` installs it first with `cargo install y-sweet --locked`, which takes
# a while). Extra arguments go to balint-bench, e.g. `bench/run.sh --rooms 1000 --idle 10000`
# for the issue's full shapes. Everything runs on loopback; the Redis target uses a
# redis-server of its own on a free port. The report is printed and written to
# target/bench/results.md.
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

if ! command -v y-sweet >/dev/null && [ "${BENCH_INSTALL_Y_SWEET:-0}" = 1 ]; then
    cargo install y-sweet --locked
fi
if ! command -v y-sweet >/dev/null; then
    echo "y-sweet not on PATH: skipped (install it with: cargo install y-sweet --locked)" >&2
fi

redis_args=()
if command -v redis-server >/dev/null; then
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no >/dev/null &
    redis_pid=$!
    trap 'kill $redis_pid 2>/dev/null' EXIT
    for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
    redis_args=(--redis-url "redis://127.0.0.1:$port")
else
    echo "redis-server not found: balint-room+redis skipped" >&2
fi

# 10,000 idle members need 10,000 descriptors in the generator and as many in the server.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

target/release/balint-bench "${redis_args[@]}" "$@"
