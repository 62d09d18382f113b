#!/usr/bin/env bash
# Generates a lecture-like 1080p30 source with a 440 Hz tone, for the content-adaptive ladder
# benchmark (bench/src/bin/cae.rs). Encoded at x264 crf 16, so what a ladder
# costs is the ladder's. Usage: testdata/lectures/generate.sh KIND SECONDS OUT.mp4, KIND one of
#   slides  slides held 20, 40 then 60 s (title, bullets, a figure) with a 384x216 webcam inset
#           (moving picture plus sensor noise), as a recorded talk over slides looks;
#   screen  a screen recording: a code editor whose text is typed line by line and scrolls,
#           with a ticking clock;
#   motion  the control: a camera pan over a detailed frame with grain (every pixel moves).
set -euo pipefail
kind="$1" secs="$2" out="$3"
font=/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf
mono=/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf
[ -f "$font" ] || { echo "needs fonts-dejavu-core (apt-get install fonts-dejavu-core)" >&2; exit 1; }
# Slide k: its durations cycle 20, 40, 60 s.
slide="3*floor(t/120)+gte(mod(t\,120)\,20)+gte(mod(t\,120)\,60)+1"
case "$kind" in
  slides)
    bullets=$(mktemp)
    # A text file is not unescaped as the filter graph is: its expressions take plain commas.
    k=${slide//\\/}
    printf '%s\n' "• Definition %{eif:$k:d}.1: a group is a set with an operation" \
      '• Closure, associativity, identity, inverses' \
      "• Example %{eif:($k)*7:d}: integers under addition" \
      "• Exercise %{eif:$k:d}: show the inverse is unique" >"$bullets"
    graph="color=c=0xf4f1ea:s=1920x1080:r=30:d=$secs,
      drawtext=fontfile=$font:fontsize=64:fontcolor=0x1a237e:x=120:y=90:text='Week 3 · Slide %{eif\:$slide\:d}',
      drawtext=fontfile=$font:fontsize=40:fontcolor=0x222222:x=140:y=260:line_spacing=28:textfile=$bullets[slides];
      testsrc2=s=720x405:r=30:d=$secs,select='not(mod(n\,600))',fps=30,tpad=stop_mode=clone:stop_duration=$secs[fig];
      testsrc2=s=384x216:r=30:d=$secs,noise=alls=10:allf=t[head];
      [slides][fig]overlay=x=1080:y=520:shortest=1[s2];
      [s2][head]overlay=x=W-w-40:y=40:shortest=1,format=yuv420p[v]"
    ;;
  screen)
    code=$(mktemp)
    for i in $(seq 1 400); do
      printf 'fn step_%03d(state: &mut State, input: &[u8]) -> Result<usize, Error> {  // line %d\n' "$i" "$i"
    done >"$code"
    graph="color=c=0x1e1e1e:s=1920x1080:r=30:d=$secs,
      drawbox=x=0:y=0:w=1920:h=48:color=0x333333:t=fill,
      drawtext=fontfile=$font:fontsize=24:fontcolor=0xcccccc:x=20:y=12:text='editor — src/lib.rs   %{pts\:hms}',
      drawtext=fontfile=$mono:fontsize=26:fontcolor=0x9cdcfe:x=40:y=1040-34*floor(t*1.4):line_spacing=8:textfile=$code,
      format=yuv420p[v]"
    ;;
  motion)
    # A pan across a detailed frame (every pixel moves every frame) with light sensor grain.
    graph="testsrc2=s=1920x1080:r=30:d=$secs,scroll=horizontal=0.004:vertical=0.002,noise=alls=6:allf=t,format=yuv420p[v]"
    ;;
  *) echo "unknown kind $kind" >&2; exit 2 ;;
esac
graph=$(echo "$graph" | tr -d '\n' | sed 's/;  */;/g')
tmp="$out.part.mp4"
ffmpeg -v error -y -filter_complex "$graph" -f lavfi -i "sine=frequency=440:duration=$secs" \
  -map '[v]' -map 0:a -t "$secs" -c:v libx264 -preset fast -crf 16 -c:a aac -b:a 128k "$tmp"
mv "$tmp" "$out"
rm -f "${code:-}" "${bullets:-}"
echo "generated $out"
