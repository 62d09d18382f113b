#!/usr/bin/env bash
# Bounded fuzz run of the parsers of untrusted input (lectern-wire), for CI and for hunting:
# each target starts from its committed corpus in fuzz/corpus/ and runs LECTERN_FUZZ_SECONDS
# (default 20) seconds. A crash or a broken invariant fails the run and leaves the input in
# fuzz/artifacts/<target>/; `cargo fuzz run --fuzz-dir fuzz -s none <target> <file>` replays it.
# New interesting inputs land in a scratch directory, not in the committed corpus: to grow the
# corpus, run longer and then `cargo fuzz cmin` (see fuzz/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
require_cargo
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
seconds="${LECTERN_FUZZ_SECONDS:-20}"
# libFuzzer's runtime is C++, built by the libfuzzer-sys crate.
apt_install_missing g++
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz"
  cargo install --locked cargo-fuzz --version 0.13.2
fi
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list --fuzz-dir fuzz)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
# `-s none`: no sanitizer, so a stable toolchain builds it; the targets are safe Rust and check
# their own invariants, and libFuzzer's coverage instrumentation works without ASan.
echo "==> building fuzz targets"
cargo fuzz build --fuzz-dir fuzz -s none
for t in "${targets[@]}"; do
  echo "==> fuzz $t for ${seconds}s"
  mkdir -p "$scratch/$t"
  # The scratch directory comes first: libFuzzer writes new inputs into the first corpus given.
  cargo fuzz run --fuzz-dir fuzz -s none "$t" "$scratch/$t" "fuzz/corpus/$t" -- \
    -max_total_time="$seconds" -timeout=5 -rss_limit_mb=1024 -print_final_stats=1 2>"$scratch/$t.log" || {
    tail -n 60 "$scratch/$t.log"
    echo "error: fuzz target $t failed; the input is in fuzz/artifacts/$t/" >&2
    exit 1
  }
  grep -E '^stat::number_of_executed_units|^stat::new_units_added' "$scratch/$t.log" | tr '\n' ' '
  echo
done
