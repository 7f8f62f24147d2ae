#!/usr/bin/env bash
# A real job end to end: `jetcode local` (nats-server with its file store
# under .data/, the topology, autoscaled workers), a generated sample clip,
# a progress bar, verified outputs.
# Set NATS_URL to use an external server instead of the embedded one.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BIN="$ROOT/target/release/jetcode"
DATA="$ROOT/.data"
MEDIA="$DATA/media"
LOGS="$DATA/logs"
mkdir -p "$MEDIA/in" "$MEDIA/out" "$LOGS" "$DATA/nats"
say() { printf '\033[1m[demo]\033[0m %s\n' "$*" >&2; }

LOCAL_PID=""
# `jetcode local` drains its workers, then stops the nats-server it started:
# its own bound is --stop-bound (30 s here) + 10 s for the server. Whatever
# outlives ours is killed (its workers die with it: PDEATHSIG).
cleanup() {
  [ -n "$LOCAL_PID" ] || return 0
  kill -TERM "$LOCAL_PID" 2>/dev/null || true
  local end=$((SECONDS + 45))
  while kill -0 "$LOCAL_PID" 2>/dev/null && [ $SECONDS -lt $end ]; do sleep 0.2; done
  if kill -0 "$LOCAL_PID" 2>/dev/null; then
    say "jetcode local did not stop within 45 s: killing it"
    kill -KILL "$LOCAL_PID" 2>/dev/null || true
  fi
  wait "$LOCAL_PID" 2>/dev/null || true
}
trap cleanup EXIT

if [ -z "${NATS_URL:-}" ]; then
  PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  export NATS_URL="nats://127.0.0.1:$PORT"
  say "jetcode local: nats-server $(nats-server --version | awk '{print $2}') on $NATS_URL (store: .data/nats), autoscaled workers"
else
  say "jetcode local: using the NATS server at NATS_URL, autoscaled workers"
fi

# The single-machine fleet: nats-server (unless NATS_URL answers), the
# topology, and the scaler running 1 to 3 local workers of one slot each.
# A short interval and window so the demo shows the fleet grow and shrink.
"$BIN" local --store "$DATA/nats" --min 1 --max 3 --interval 1 --target-tasks-per-worker 2 \
  --scale-down-window 8 --stop-bound 30 -- --slots 1 --file-root "$MEDIA" --drain-timeout 5 \
  >"$LOGS/local.log" 2>&1 &
LOCAL_PID=$!
say "jetcode local started (log: .data/logs/local.log)"
end=$((SECONDS + 60))
until [ -n "$("$BIN" workers --json 2>/dev/null)" ]; do
  if ! kill -0 "$LOCAL_PID" 2>/dev/null || [ $SECONDS -ge $end ]; then
    say "no worker came up within 60 s; the log says:"
    tail -n 20 "$LOGS/local.log" >&2
    exit 1
  fi
  sleep 0.3
done

SRC="$MEDIA/in/sample.mp4"
if [ ! -s "$SRC" ]; then
  say "generating a 40 s sample clip (640x360, 25 fps, H.264 + AAC) with GStreamer test sources"
  "$BIN" testclip "$SRC" --seconds 40 --width 640 --height 360 --fps 25 >/dev/null
fi

JOB="demo-$(date +%Y%m%d-%H%M%S)"
OUT="$MEDIA/out/$JOB/"
cat >"$DATA/$JOB.json" <<JSON
{
  "id": "$JOB",
  "source": "file://$SRC",
  "output": "file://$OUT",
  "renditions": ["h264-360p", "h264-240p"],
  "formats": ["mp4", "hls"],
  "segment_seconds": 8
}
JSON
say "submitting $JOB: 2 renditions, 8 s segments"
"$BIN" submit --wait "$DATA/$JOB.json"

say "verifying with ffprobe"
want="$(ffprobe -v error -select_streams v:0 -count_packets -show_entries stream=nb_read_packets -of csv=p=0 "$SRC")"
status=0
for mp4 in "$OUT"*.mp4; do
  got="$(ffprobe -v error -select_streams v:0 -count_packets -show_entries stream=nb_read_packets -of csv=p=0 "$mp4")"
  dur="$(ffprobe -v error -show_entries format=duration -of csv=p=0 "$mp4")"
  if [ "$got" = "$want" ]; then mark=ok; else mark=MISMATCH; status=1; fi
  printf '  %-60s %s frames (source %s) %ss  %s\n' "$mp4" "$got" "$want" "$dur" "$mark"
done
ffprobe -v error -show_entries program=program_id -of csv=p=0 "$OUT/hls/master.m3u8" >/dev/null && \
  printf '  %-60s plays (ffprobe read every rendition)\n' "$OUT"hls/master.m3u8
"$BIN" workers
say "what the scaler decided (from .data/logs/local.log):"
grep -E "scaling|worker started|worker draining" "$LOGS/local.log" | sed -E 's/\x1b\[[0-9;]*m//g; s/^/  /' | cut -c1-200 || true
exit $status
