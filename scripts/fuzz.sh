#!/usr/bin/env bash
# Runs every fuzz target under fuzz/ for a few seconds each: scripts/fuzz.sh [seconds] (20 by
# default). Installs the nightly toolchain and cargo-fuzz first if they are missing.
#
# The targets run side by side, starting from fuzz/seeds/<target> and a local corpus in
# fuzz/corpus/<target> (not committed). A crash, a timeout or a memory blow-up fails the run;
# its input is left in fuzz/artifacts/<target>/. Save it under fuzz/regressions/<target>/ so
# that `cargo test --workspace` replays it (server/tests/fuzz_regressions.rs).
#
# BALINT_FUZZ_SANITIZER=address builds with AddressSanitizer (slower to build and to run; the
# default, none, keeps a CI run within about two minutes).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${1:-20}"
sanitizer="${BALINT_FUZZ_SANITIZER:-none}"
targets=(sync_frame room_message token sealed_frame)

if ! rustup toolchain list | grep -q '^nightly'; then
  echo "fuzz.sh: installing the nightly toolchain"
  rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz"
  cargo install --locked cargo-fuzz
fi

# Release builds without debug assertions, as the server ships; see fuzz/Cargo.toml for what is
# optimized.
flags=(-O --codegen-units 16 --sanitizer "$sanitizer")
echo "fuzz.sh: building the targets"
cargo +nightly fuzz build "${flags[@]}"

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
pids=()
for target in "${targets[@]}"; do
  mkdir -p "corpus/$target"
  cargo +nightly fuzz run "${flags[@]}" "$target" "corpus/$target" "seeds/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    >"$logs/$target.log" 2>&1 &
  pids+=($!)
done

failed=0
for i in "${!targets[@]}"; do
  target=${targets[$i]}
  if wait "${pids[$i]}"; then
    runs=$(grep -o '^stat::number_of_executed_units: *[0-9]*' "$logs/$target.log" | grep -o '[0-9]*$' || true)
    echo "fuzz.sh: $target: no crash in ${runs:-?} runs"
  else
    failed=1
    echo "fuzz.sh: $target FAILED"
    # From the first report (a panic or a sanitizer's error), else the end of the log.
    first=$(grep -a -n -m1 -E 'panicked at|==ERROR: ' "$logs/$target.log" | cut -d: -f1 || true)
    if [ -n "$first" ]; then
      sed -n "${first},$((first + 80))p" "$logs/$target.log"
    else
      grep -a -v '^\(#\|INFO\|MERGE\)' "$logs/$target.log" | tail -n 60
    fi
    ls -1 "artifacts/$target" 2>/dev/null | sed "s|^|fuzz.sh: input saved as fuzz/artifacts/$target/|" || true
  fi
done
exit "$failed"
