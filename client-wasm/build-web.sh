#!/usr/bin/env bash
# Builds the browser client into web/assets/pkg: the wasm32 module of balint-client and its
# wasm-bindgen JavaScript glue, which web/assets/room.js imports. Installs what is missing
# first: the wasm32 target, and the `wasm-bindgen` command at exactly the version of the
# `wasm-bindgen` crate in Cargo.lock (the two must match, or the glue will not load).
set -euo pipefail
cd "$(dirname "$0")/.."

target_dir="${CARGO_TARGET_DIR:-target}"
version=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
if [ -z "$version" ]; then
  echo "build-web.sh: no wasm-bindgen in Cargo.lock" >&2
  exit 1
fi

if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  echo "build-web.sh: adding the wasm32-unknown-unknown target"
  rustup target add wasm32-unknown-unknown
fi

if [ "$(wasm-bindgen --version 2>/dev/null)" != "wasm-bindgen $version" ]; then
  echo "build-web.sh: installing wasm-bindgen-cli $version (once; this takes a few minutes)"
  # The CLI's own lockfile may pin a dependency that the registry no longer offers; then
  # resolve its dependencies afresh rather than fail.
  cargo install --locked wasm-bindgen-cli --version "$version" ||
    cargo install wasm-bindgen-cli --version "$version"
fi

cargo build --locked --release -p balint-client --target wasm32-unknown-unknown
wasm-bindgen --target web --no-typescript --out-dir web/assets/pkg \
  "$target_dir/wasm32-unknown-unknown/release/balint_client.wasm"
echo "build-web.sh: web/assets/pkg is up to date"
