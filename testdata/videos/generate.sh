#!/usr/bin/env bash
# Generates the small test clips (3 s each, with audio) with GStreamer. Idempotent: existing
# clips are kept. Usage: testdata/videos/generate.sh [OUT_DIR]   (default: this folder)
set -euo pipefail
out="${1:-$(dirname "$0")}"
mkdir -p "$out"

clip() { # name width height fps seconds [audio=yes|no]
  local name="$1" w="$2" h="$3" fps="$4" secs="$5" audio="${6:-yes}"
  local file="$out/$name.mp4"
  [ -s "$file" ] && return 0
  local frames=$((fps * secs))
  local tmp="$file.part"
  local apipe=""
  if [ "$audio" = yes ]; then
    # 1600 samples per buffer at 48 kHz: 30 buffers a second.
    apipe="audiotestsrc wave=sine freq=440 samplesperbuffer=1600 num-buffers=$((30 * secs)) ! audio/x-raw,rate=48000,channels=2 ! audioconvert ! avenc_aac bitrate=128000 ! aacparse ! mux."
  fi
  # shellcheck disable=SC2086
  gst-launch-1.0 -q -e \
    videotestsrc pattern=ball num-buffers="$frames" ! "video/x-raw,width=$w,height=$h,framerate=$fps/1" \
    ! videoconvert ! x264enc speed-preset=ultrafast key-int-max="$fps" bitrate=2000 ! h264parse \
    ! mp4mux name=mux faststart=true ! filesink location="$tmp" $apipe
  mv "$tmp" "$file"
  echo "generated $file"
}

clip clip-1080p 1920 1080 30 3
clip clip-720p 1280 720 30 3
clip clip-360p 640 360 30 3
clip clip-noaudio-720p 1280 720 30 2 no
