#!/usr/bin/env bash
# The main job, from a fresh Debian 12 machine (run as root): installs what is missing, builds
# Lectern, starts `lectern serve` on its embedded defaults (SQLite + ./data), uploads a sample
# lecture through tus, waits until it is transcoded and prints the signed playback URL.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

apt_install_missing "${LECTERN_PACKAGES[@]}" curl
require_cargo
bash testdata/videos/generate.sh >/dev/null

export SQLX_OFFLINE=true CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
unset DATABASE_URL
build_web
echo "==> building (release)"
cargo build --release --locked --bin lectern
bin=target/release/lectern

listen="${LECTERN_LISTEN:-127.0.0.1:8080}"
mkdir -p data
if curl -fsS "http://$listen/healthz" >/dev/null 2>&1; then
  echo "==> Lectern already answers on $listen; using it"
else
  echo "==> starting lectern serve on $listen (log: data/lectern.log)"
  nohup "$bin" serve --listen "$listen" >data/lectern.log 2>&1 &
  echo $! >data/lectern.pid
  for _ in $(seq 1 50); do
    curl -fsS "http://$listen/healthz" >/dev/null 2>&1 && break
    sleep 0.2
  done
  curl -fsS "http://$listen/healthz" >/dev/null || { cat data/lectern.log; exit 1; }
fi

echo "==> uploading testdata/videos/clip-1080p.mp4"
out=$("$bin" upload testdata/videos/clip-1080p.mp4 --title "Sample lecture" --server "http://$listen" --data-dir data)
id=$(echo "$out" | sed -n 1p)
url=$(echo "$out" | sed -n 2p)
org=default
studio_token=$("$bin" token --role instructor --user instructor --org "$org" --ttl 12h --data-dir data)
admin_token=$("$bin" token --role admin --user admin --org "$org" --ttl 12h --data-dir data)
cat <<MSG

Video $id is ready.

  Studio (upload lectures, captions, embed snippets):
    http://$listen/studio#token=$studio_token
  Player (this lecture; the iframe an LMS embeds):
    http://$listen/embed/$id#token=$studio_token
  Admin (the transcode queue and workers):
    http://$listen/admin#token=$admin_token

The token travels in the URL fragment (#token=…), so it never reaches a server log. Tokens last
12 h; make new ones with: $bin token --role instructor --user you --org $org --data-dir data

Any HLS player (hls.js, Safari, VLC, ffplay) also plays the signed playlist:
  $url

Upload your own:  $bin upload LECTURE.mp4 --data-dir data
Stop the server:  kill \$(cat data/lectern.pid)
MSG
