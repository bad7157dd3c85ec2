#!/usr/bin/env bash
# Runs the whole test suite. On a machine that has only the Rust toolchain it first installs
# what the tests need: Redis, PostgreSQL, Node.js and the JavaScript Yjs client used by the
# interop test, Chromium and playwright-core for the browser test, and builds the wasm client into
# web/assets/pkg (installing the wasm32 target and wasm-bindgen-cli if missing).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_updated=
apt_install() {
  if [ -z "$apt_updated" ]; then as_root apt-get update -qq; apt_updated=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# What to undo at exit, last started first stopped.
cleanup=()
run_cleanup() { for ((i = ${#cleanup[@]} - 1; i >= 0; i--)); do eval "${cleanup[$i]}"; done; }
trap run_cleanup EXIT

if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
  echo "test.sh: installing Redis"
  apt_install redis-server
fi
# The failover test runs three of Debian's redis-sentinel.
if ! command -v redis-sentinel >/dev/null; then
  echo "test.sh: installing Redis Sentinel"
  apt_install redis-sentinel
fi

# The backend suite needs a running Redis: use the one on 6379 if it answers, else start one
# of our own on a free port, keeping nothing on disk. Cluster tests start their own as well.
export BALINT_TEST_REDIS_URL="${BALINT_TEST_REDIS_URL:-redis://127.0.0.1:6379}"
redis_port="${BALINT_TEST_REDIS_URL##*:}"
if ! redis-cli -p "$redis_port" ping >/dev/null 2>&1; then
  redis_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo 16379)
  redis_dir=$(mktemp -d)
  echo "test.sh: starting redis-server on port $redis_port"
  redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$redis_dir" --daemonize yes \
    --pidfile "$redis_dir/redis.pid" >/dev/null
  cleanup+=("kill \"\$(cat '$redis_dir/redis.pid' 2>/dev/null)\" 2>/dev/null || true; rm -rf '$redis_dir'")
  for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  export BALINT_TEST_REDIS_URL="redis://127.0.0.1:$redis_port"
fi

# PostgreSQL, the durable board store: its programs (the failure tests start private
# clusters with them) and a server for the store suite. Use the one at
# BALINT_TEST_POSTGRES_URL (default: trust authentication on 5432, database `test`) if it
# answers, else start a throw-away cluster on a free port, in a temp dir, stopped at exit.
# PostgreSQL refuses to run as root: as root, its programs run as the `postgres` user.
pg_bin_dir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
if [ -z "$(pg_bin_dir)" ] || ! command -v psql >/dev/null; then
  echo "test.sh: installing PostgreSQL"
  apt_install postgresql
fi
as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
export BALINT_TEST_POSTGRES_URL="${BALINT_TEST_POSTGRES_URL:-postgresql://postgres@127.0.0.1:5432/test}"
if ! psql "$BALINT_TEST_POSTGRES_URL" -Atqc 'SELECT 1' >/dev/null 2>&1; then
  pg_bin=$(pg_bin_dir)
  pg_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo 15432)
  pg_dir=$(mktemp -d)
  if [ "$(id -u)" = 0 ]; then chown postgres:postgres "$pg_dir"; fi
  echo "test.sh: starting PostgreSQL on port $pg_port"
  as_postgres "$pg_bin/initdb" -D "$pg_dir/data" -A trust -U postgres -E UTF8 --no-sync >/dev/null
  as_postgres "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/server.log" -w -t 60 \
    -o "-p $pg_port -c listen_addresses=127.0.0.1 -k $pg_dir -c fsync=off" start >/dev/null
  cleanup+=("as_postgres '$pg_bin/pg_ctl' -D '$pg_dir/data' -m immediate -w stop >/dev/null 2>&1 || true; rm -rf '$pg_dir'")
  psql "postgresql://postgres@127.0.0.1:$pg_port/postgres" -qc 'CREATE DATABASE test' >/dev/null
  export BALINT_TEST_POSTGRES_URL="postgresql://postgres@127.0.0.1:$pg_port/test"
fi

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "test.sh: installing Node.js"
  apt_install nodejs npm
fi

# The JavaScript peers of the interop test, pinned by tests/js/package-lock.json: both stock
# clients (y-websocket 1.5.4, and 3.1.0 under the alias y-websocket-v3), yjs and ws. Installed
# again when the lock is newer than the install, or a pinned package is missing from it.
js_missing() {
  local package
  for package in $(node -p 'Object.keys(require("./tests/js/package.json").dependencies).join(" ")'); do
    [ -d "tests/js/node_modules/$package" ] || return 0
  done
  return 1
}
if [ ! -d tests/js/node_modules ] || [ tests/js/package-lock.json -nt tests/js/node_modules ] || js_missing; then
  echo "test.sh: installing the JavaScript test packages"
  (cd tests/js && npm ci --omit=optional --ignore-scripts --no-audit --no-fund --loglevel=error)
fi

# The browser test drives Debian's Chromium with playwright-core and checks every screen with
# axe-core (both pinned by tests/browser/package-lock.json); it never downloads a browser of its own.
if [ ! -x /usr/bin/chromium ] && [ -z "${BALINT_CHROMIUM:-}" ]; then
  echo "test.sh: installing Chromium"
  apt_install chromium
fi
if [ ! -d tests/browser/node_modules/axe-core ] || [ tests/browser/package-lock.json -nt tests/browser/node_modules ]; then
  echo "test.sh: installing the browser test packages"
  (cd tests/browser && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
fi

# The web UI's wasm client, which the browser test loads from web/assets/pkg.
client-wasm/build-web.sh

# Formatting and lints first: they take seconds and say the most specific things.
if cargo fmt --version >/dev/null 2>&1; then
  cargo fmt --all -- --check
fi
if cargo clippy --version >/dev/null 2>&1; then
  cargo clippy --workspace --all-targets --locked -- -D warnings
fi

# A short fuzz run of the decoders (y-sync frames, sealed frames, room messages, tokens): a crash fails it.
bash scripts/fuzz.sh 20

cargo test --workspace --locked

# Valkey, where it is installed (Debian bookworm has no package for it): the backend suite on
# a valkey-server of its own, and the cluster and failover tests on valkey-server and
# valkey-sentinel. Skipped, and said so, when valkey-server is not on PATH.
if command -v valkey-server >/dev/null; then
  valkey_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo 16380)
  valkey_dir=$(mktemp -d)
  echo "test.sh: $(valkey-server --version | head -n 1); running the backend suite, cluster and failover tests on it"
  valkey-server --port "$valkey_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$valkey_dir" --daemonize yes \
    --pidfile "$valkey_dir/valkey.pid" >/dev/null
  cleanup+=("kill \"\$(cat '$valkey_dir/valkey.pid' 2>/dev/null)\" 2>/dev/null || true; rm -rf '$valkey_dir'")
  for _ in $(seq 50); do redis-cli -p "$valkey_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  BALINT_TEST_REDIS_URL="redis://127.0.0.1:$valkey_port" cargo test --locked -p balint-server --lib backend::
  sentinel=$(command -v valkey-sentinel || echo redis-sentinel)
  BALINT_TEST_REDIS_SERVER=valkey-server BALINT_TEST_REDIS_SENTINEL="$sentinel" \
    cargo test --locked -p balint-e2e --test cluster --test failover
else
  echo "test.sh: valkey-server is not installed; the tests ran on $(redis-server --version | cut -d' ' -f1-3) only"
fi
