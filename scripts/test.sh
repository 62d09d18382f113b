#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine (run as root): installs missing packages,
# starts PostgreSQL, Redis and an S3 server (moto) if none is running, generates the test clips,
# then runs fmt, clippy, a bounded fuzz run of the parsers (scripts/fuzz.sh) and every test (unit
# tests and end-to-end tests against the real binary on SQLite, PostgreSQL and S3, with nginx as
# the CDN and hls.js in headless Chromium).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

# ffmpeg is the independent HLS client the end-to-end tests play the output with; nginx is the
# CDN (proxy_cache) in front of the origin; Chromium runs hls.js.
# kubectl (kustomize), docker-compose and mmdebstrap validate and boot deploy/ (no Docker
# engine needed); iproute2 makes the multi-host test's network namespaces.
apt_install_missing "${LECTERN_PACKAGES[@]}" ffmpeg curl nginx-light chromium kubectl docker-compose mmdebstrap iproute2
require_cargo
ensure_postgres
ensure_redis
mkdir -p target
ensure_test_venv
ensure_deploy_venv
MOTO_PID=""
ensure_s3 5055
TESTS_SID=""
cleanup() {
  # (`|| true`: under `set -e` a failing last command here would become the script's status.)
  [ -n "$MOTO_PID" ] && kill "$MOTO_PID" 2>/dev/null || true
  # Ctrl-C does not reach the tests' own session, and a test may leave a process behind.
  [ -n "$TESTS_SID" ] && pkill -9 -s "$TESTS_SID" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM
bash testdata/videos/generate.sh
# The pages the binary embeds (web/dist, before cargo builds it).
build_web
# tus-js-client, hls.js, playwright-core and axe-core, pinned by lectern/tests/clients/package-lock.json.
for m in tus-js-client hls.js playwright-core axe-core; do
  [ -d "lectern/tests/clients/node_modules/$m" ] || { (cd lectern/tests/clients && npm ci --no-audit --no-fund); break; }
done
export LECTERN_TEST_PYTHON="$PWD/target/testenv/bin/python"
export LECTERN_TEST_DEPLOY_PYTHON="$PWD/target/deployenv/bin/python"

export SQLX_OFFLINE=true
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
# A DATABASE_URL at build time makes apalis's query macros go online; the tests use their own.
unset DATABASE_URL
export LECTERN_TEST_S3_ENDPOINT=http://127.0.0.1:5055
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-test}" AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-test}" AWS_REGION="${AWS_REGION:-us-east-1}"
export LECTERN_TEST_REDIS_URL="${LECTERN_TEST_REDIS_URL:-redis://127.0.0.1:6379}"
export LECTERN_TEST_POSTGRES_URL="${LECTERN_TEST_POSTGRES_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}"

echo "==> cargo fmt --check"
cargo fmt --all --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
# The binary without the LMS (a cargo feature, on by default) is a build of its own.
cargo clippy -p lectern --no-default-features --all-targets --locked -- -D warnings
# Every parser of untrusted input, fuzzed from the committed corpus for a bounded time.
LECTERN_FUZZ_SECONDS="${LECTERN_FUZZ_SECONDS:-20}" ./scripts/fuzz.sh
echo "==> cargo test"
log=target/test-output.log
# The tests run in a session of their own and write to a file that is followed here, so that a
# process a test leaves behind can neither hold this script's output open nor outlive the run.
set +e
# Then the binary without the LMS: the video pipeline alone, its API document and tus.
setsid bash -c 'cargo test --workspace --locked &&
  cargo test -p lectern --no-default-features --locked --test without_lms --test schema --test tus' \
  >"$log" 2>&1 </dev/null &
TESTS_SID=$!
tail -n +1 -f --pid="$TESTS_SID" "$log"
wait "$TESTS_SID"
status=$?
set -e
if pgrep -s "$TESTS_SID" >/dev/null; then
  echo "warning: the tests left these processes running; stopping them:"
  pgrep -a -s "$TESTS_SID" || true
fi
# One closing line for the whole suite (cargo prints one per test binary, the last often 0).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
