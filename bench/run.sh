#!/usr/bin/env bash
# Reproduces BENCHMARKS.md: builds the release binaries, installs the pinned Node.js peers if
# they are missing, and runs every scenario against every available target side by side
# (balint-room, balint-room with sealed rooms in the group and many-groups scenarios,
# balint-room on Redis, two balint-room nodes on Redis, the two floors (the bare relay and the
# lean relay, also as two nodes and as a relay that applies each edit to a yrs board),
# y-websocket 1.5.4, @y/websocket-server, Hocuspocus, and y-sweet when `y-sweet`
# is on PATH; `BENCH_INSTALL_Y_SWEET=1` installs it first with `cargo install y-sweet --locked`,
# which takes a while). The report ends with a summary of issue 16's targets. Extra arguments
# go to balint-bench, e.g. `bench/run.sh --rooms 1000 --idle 10000` for the issue's full
# shapes. Everything runs on loopback; the Redis targets use a redis-server of their own on a
# free port. The report is printed and written to target/bench/results.md.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -p balint-server --bin balint-room -p balint-bench --bins

# Two npm projects, each installed exactly as its lock file says (their .npmrc keeps registry
# hosts out of the lock files): bench/peers (y-websocket 1.5.4, Hocuspocus) and
# bench/peers/y-websocket-server (@y/websocket-server, which needs yjs 14).
if [ ! -f bench/peers/node_modules/y-websocket/bin/server.js ] ||
    [ ! -f bench/peers/node_modules/@hocuspocus/server/package.json ]; then
    if command -v npm >/dev/null; then
        (cd bench/peers && npm ci --no-audit --no-fund)
    else
        echo "npm not found: the y-websocket and Hocuspocus peers will be skipped" >&2
    fi
fi
if [ ! -f bench/peers/y-websocket-server/node_modules/@y/websocket-server/src/server.js ]; then
    if command -v npm >/dev/null; then
        (cd bench/peers/y-websocket-server && npm ci --no-audit --no-fund)
    else
        echo "npm not found: the @y/websocket-server peer will be skipped" >&2
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
