#!/usr/bin/env bash
# The autoscaler under a sawtooth load: `jetcode local` (its own nats-server
# and 1..4 local workers) while bursts of small jobs arrive and stop, for
# MINUTES minutes (default 10). Prints worker starts and stops, each burst's
# reaction (first job submitted -> next worker started) and each quiet
# spell's (last job done -> first worker drained), and checks every job
# ended done.
#   scripts/sawtooth.sh [MINUTES] [PERIOD_SECONDS]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MINUTES="${1:-10}"
PERIOD="${2:-120}"
BIN="$ROOT/target/release/jetcode"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/jetcode-sawtooth.XXXXXX")"
MEDIA="$WORK/media"
mkdir -p "$MEDIA/in" "$MEDIA/out"
say() { printf '[sawtooth] %s\n' "$*" >&2; }
now() { date +%s.%N; }

PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
export NATS_URL="nats://127.0.0.1:$PORT"
LOCAL_PID=""
cleanup() {
  [ -n "$LOCAL_PID" ] || return 0
  kill -TERM "$LOCAL_PID" 2>/dev/null || true
  local end=$((SECONDS + 60))
  while kill -0 "$LOCAL_PID" 2>/dev/null && [ $SECONDS -lt $end ]; do sleep 0.2; done
  kill -KILL "$LOCAL_PID" 2>/dev/null || true
  wait "$LOCAL_PID" 2>/dev/null || true
}
trap cleanup EXIT

"$BIN" testclip "$MEDIA/in/clip.mp4" --seconds 12 --width 320 --height 180 --fps 25 >/dev/null
# Scaler settings: the defaults but a 30 s quiet window, so a 2-minute
# sawtooth has room to scale down and up again in each period.
"$BIN" local --store "$WORK/nats" --min 1 --max 4 --interval 2 --scale-down-window 30 \
  --stop-bound 40 -- --slots 1 --file-root "$MEDIA" --drain-timeout 5 >"$WORK/local.log" 2>&1 &
LOCAL_PID=$!
end=$((SECONDS + 60))
until [ -n "$("$BIN" workers --json 2>/dev/null)" ]; do
  [ $SECONDS -lt $end ] || { say "no worker within 60 s"; tail "$WORK/local.log"; exit 1; }
  sleep 0.3
done

say "sawtooth for $MINUTES min: bursts of jobs for half of every ${PERIOD} s, quiet for the other half"
jobs=()
finish=$((SECONDS + MINUTES * 60))
n=0
while [ $SECONDS -lt $finish ]; do
  burst_end=$((SECONDS + PERIOD / 2))
  echo "burst $(now)" >>"$WORK/marks"
  while [ $SECONDS -lt $burst_end ] && [ $SECONDS -lt $finish ]; do
    n=$((n + 1))
    id="saw-$n"
    cat >"$WORK/$id.json" <<JSON
{"id": "$id", "source": "file://$MEDIA/in/clip.mp4", "output": "file://$MEDIA/out/$id/",
 "renditions": ["h264-240p"], "formats": ["mp4"], "segment_seconds": 2}
JSON
    "$BIN" submit "$WORK/$id.json" >/dev/null
    jobs+=("$id")
    sleep 3
  done
  echo "quiet $(now)" >>"$WORK/marks"
  quiet_end=$((SECONDS + PERIOD / 2))
  while [ $SECONDS -lt $quiet_end ] && [ $SECONDS -lt $finish ]; do sleep 1; done
done

say "waiting for the ${#jobs[@]} jobs to end"
failed=0
for id in "${jobs[@]}"; do
  timeout 300 "$BIN" watch "$id" --json >/dev/null 2>&1 || { say "job $id did not end done"; failed=1; }
done
cleanup
LOCAL_PID=""

strip() { sed -E 's/\x1b\[[0-9;]*m//g' "$WORK/local.log"; }
starts=$(strip | grep -c "worker started" || true)
stops=$(strip | grep -c "worker draining" || true)
decisions=$(strip | grep -c " scaling " || true)
say "jobs: ${#jobs[@]} submitted, $([ $failed -eq 0 ] && echo 'all done' || echo 'SOME NOT DONE')"
say "workers started: $starts (1 at boot), drained: $stops, scaling decisions: $decisions"
# Reaction: a burst mark -> the first "worker started" after it; a quiet
# mark -> the first "worker draining" after it (which also waits out the
# queue and the scale-down window).
python3 - "$WORK/marks" "$WORK/local.log" <<'PY'
import sys, re, datetime
marks = [l.split() for l in open(sys.argv[1])]
ev = []
for l in open(sys.argv[2], errors="replace"):
    l = re.sub(r"\x1b\[[0-9;]*m", "", l)
    m = re.match(r"(\S+Z)\s+\w+\s+\S+\s+(worker started|worker draining)", l)
    if m:
        t = datetime.datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp()
        ev.append((t, m.group(2)))
for kind, t in marks:
    t = float(t)
    want = "worker started" if kind == "burst" else "worker draining"
    nxt = [e for e in ev if e[0] >= t and e[1] == want]
    print(f"  {kind:5} at +{t - float(marks[0][1]):6.1f}s -> {want:15} after " + (f"{nxt[0][0] - t:5.1f}s" if nxt else "  none"))
PY
say "log: $WORK/local.log"
exit $failed
