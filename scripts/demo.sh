#!/usr/bin/env bash
# A real job end to end: local nats-server (file store under .data/), two
# workers, a generated sample clip, a progress bar, verified outputs.
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

NATS_PID=""
WORKER_PIDS=()
# Stop what we started, workers first: a worker drains through NATS, so the
# server goes last. Each wait is bounded; whatever outlives it is killed.
stop_and_wait() { # <seconds> <pid>...
  local limit=$1; shift
  local pids=("$@") end=$((SECONDS + limit))
  [ ${#pids[@]} -gt 0 ] || return 0
  kill -TERM "${pids[@]}" 2>/dev/null || true
  while [ $SECONDS -lt $end ]; do
    local alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive -eq 0 ] && break
    sleep 0.2
  done
  for p in "${pids[@]}"; do
    if kill -0 "$p" 2>/dev/null; then
      say "process $p did not stop within ${limit}s: killing it"
      kill -KILL "$p" 2>/dev/null || true
    fi
    wait "$p" 2>/dev/null || true
  done
}
cleanup() {
  # The workers' bound: --drain-timeout (5 s here) + 10 s.
  stop_and_wait 20 "${WORKER_PIDS[@]}"
  [ -z "$NATS_PID" ] || stop_and_wait 10 "$NATS_PID"
}
trap cleanup EXIT

if [ -z "${NATS_URL:-}" ]; then
  PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  export NATS_URL="nats://127.0.0.1:$PORT"
  say "starting nats-server $(nats-server --version | awk '{print $2}') on $NATS_URL (store: .data/nats)"
  nats-server -js -a 127.0.0.1 -p "$PORT" -sd "$DATA/nats" >"$LOGS/nats.log" 2>&1 &
  NATS_PID=$!
  for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/"$PORT") 2>/dev/null && break; sleep 0.1; done
else
  say "using external NATS at $NATS_URL"
fi

"$BIN" streams apply

SRC="$MEDIA/in/sample.mp4"
if [ ! -s "$SRC" ]; then
  say "generating a 40 s sample clip (640x360, 25 fps, H.264 + AAC) with GStreamer test sources"
  "$BIN" testclip "$SRC" --seconds 40 --width 640 --height 360 --fps 25 >/dev/null
fi

for n in 1 2; do
  "$BIN" worker --id "demo-worker-$n" --slots 1 --file-root "$MEDIA" --drain-timeout 5 \
    >"$LOGS/worker-$n.log" 2>&1 &
  WORKER_PIDS+=($!)
done
say "started 2 workers (logs: .data/logs/worker-*.log)"

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
exit $status
