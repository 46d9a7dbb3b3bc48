#!/usr/bin/env bash
# Disk full and file size limits (docs/reliability.md): a training checkpoint, an .npz of
# samples and a sweep's report written to a disk without room for them. Each must fail with
# one line and exit status 2, leave the files that were there before byte for byte, and leave
# no partial or temporary file; after room is made, the same command must succeed.
#   bash scripts/disk_full.sh
# Uses a small tmpfs (mount -t tmpfs, root) where permitted, else the file size limit
# (ulimit -f), which guidiff meets as a failed write too (it ignores SIGXFSZ). Needs
# build/guidiff (bash scripts/build.sh). GUIDIFF_DISK_FULL_MODE=ulimit tries the file size limit
# where mounting would work.
set -euo pipefail
cd "$(dirname "$0")/.."
GUIDIFF="$(pwd)/${GUIDIFF:-build/guidiff}"
[ -x "$GUIDIFF" ] || { echo "disk_full: $GUIDIFF not built (bash scripts/build.sh)" >&2; exit 2; }
W="$(mktemp -d /tmp/guidiff-disk-full-XXXXXX)"
D="$W/disk"
mkdir -p "$D"
MODE=ulimit
if [ "${GUIDIFF_DISK_FULL_MODE:-}" != ulimit ] && mount -t tmpfs -o size=8m tmpfs "$D" 2>/dev/null; then MODE=tmpfs; fi
cleanup() { [ "$MODE" = tmpfs ] && umount "$D" 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

# Leaves about $1 bytes free on the tmpfs (a filler file takes the rest).
leave_free() {
  rm -f "$D/filler"
  local free
  free=$(df --output=avail -B1 "$D" | tail -1)
  [ "$free" -gt "$1" ] && head -c $((free - $1)) /dev/zero >"$D/filler" 2>/dev/null || true
}
make_room() { rm -f "$D/filler"; }
# Runs guidiff where a write of more than $1 bytes cannot succeed: on the tmpfs by filling
# it, otherwise under ulimit -f. Its stderr goes to $W/stderr through a pipe (a file would
# fall under the limit too), its stdout nowhere; returns its exit status.
run_limited() {
  local room=$1 code
  shift
  if [ "$MODE" = tmpfs ]; then
    leave_free "$room"
    { "$GUIDIFF" "$@" 2>&1 >/dev/null; } | cat >"$W/stderr"
    code=${PIPESTATUS[0]}
  else
    { (ulimit -f $((room / 1024)); exec "$GUIDIFF" "$@" 2>&1 >/dev/null); } | cat >"$W/stderr"
    code=${PIPESTATUS[0]}
  fi
  return "$code"
}
snapshot() { (cd "$1" && find . -type f ! -name filler -exec sha256sum {} + | sort -k2); }
# check NAME DIR EXPECTED_SNAPSHOT: exit status 2, one error line and it is the last (progress
# lines such as training's banner may come before it), same files, no temporaries.
check() {
  local name=$1 dir=$2 before=$3 code=$4
  local errors
  errors=$(grep -c '^guidiff: error: ' "$W/stderr" || true)
  echo "   $name: exit $code: $(tail -1 "$W/stderr")"
  [ "$code" -eq 2 ] && [ "$errors" -eq 1 ] && tail -1 "$W/stderr" | grep -q '^guidiff: error: ' ||
    fail "$name: exit $code, $errors error lines"
  grep -q -e "No space left on device" -e "File too large" "$W/stderr" || fail "$name: the message does not say why"
  [ "$(snapshot "$dir")" = "$before" ] || fail "$name: the files that were there changed"
  [ -z "$(find "$dir" -name '.*.tmp-*')" ] || fail "$name: a temporary file was left behind"
}

echo "== mode: $MODE"
echo "== a training checkpoint"
cat >"$W/tiny.json" <<'JSON'
{"kind": "mlp_denoiser", "hidden_channels": 128, "num_blocks": 3}
JSON
TRAIN=(train diffusion --data mixture --mixture-size 256 --config "$W/tiny.json" --batch-size 32 --save-every 10 --threads 1)
make_room
"$GUIDIFF" "${TRAIN[@]}" --steps 10 --out-dir "$D/run" 2>/dev/null
resume_bytes=$(stat -c %s "$D/run/resume.safetensors")
before=$(snapshot "$D/run")
set +e
run_limited $((resume_bytes / 2)) "${TRAIN[@]}" --steps 20 --out-dir "$D/run" --resume
code=$?
set -e
check "checkpoint at step 20 (room for half the resume file)" "$D/run" "$before" "$code"
make_room
"$GUIDIFF" "${TRAIN[@]}" --steps 20 --out-dir "$D/run" --resume 2>/dev/null && echo "   with room again: resumed from step 10 and saved step 20" ||
  fail "the resume after making room failed"

# eval (next) needs more than 5 images: precision/recall and density/coverage take the 5th neighbour.
echo "== an .npz of samples"
SAMPLE=(sample --model models/fashion-mnist/cfg_unet --steps 2 --class 3 --threads 1)
make_room
"$GUIDIFF" "${SAMPLE[@]}" --num-samples 16 --npz "$D/npz/samples.npz" 2>/dev/null || { mkdir -p "$D/npz"; "$GUIDIFF" "${SAMPLE[@]}" --num-samples 16 --npz "$D/npz/samples.npz" 2>/dev/null; }
before=$(snapshot "$D/npz")
set +e
run_limited 16384 "${SAMPLE[@]}" --num-samples 64 --npz "$D/npz/samples.npz"
code=$?
set -e
check "64 samples (50 KB) with 16 KB of room" "$D/npz" "$before" "$code"

echo "== an evaluation report (eval --json)"
EVAL=(eval --samples "$D/npz/samples.npz" --cache-dir "$W/cache" --threads 1)
make_room
"$GUIDIFF" "${EVAL[@]}" --json "$D/report/scores.json" >/dev/null 2>&1 || { mkdir -p "$D/report"; "$GUIDIFF" "${EVAL[@]}" --json "$D/report/scores.json" >/dev/null 2>&1; }
before=$(snapshot "$D/report")
set +e
run_limited 256 "${EVAL[@]}" --json "$D/report/scores.json"
code=$?
set -e
check "scores.json with 256 bytes of room" "$D/report" "$before" "$code"

echo "== a sweep's samples, plots and report"
SWEEP=(sweep --model models/fashion-mnist/cfg_unet --cfg-scales 0,1 --steps 2 --num-samples 20 --batch-size 20
       --no-real-baseline --cache-dir "$W/cache" --threads 1)
make_room
"$GUIDIFF" "${SWEEP[@]}" --out-dir "$D/sweep" >/dev/null 2>&1 || fail "the sweep with room failed"
rm -rf "$D/sweep/settings/cfg_w1_steps2"  # one setting to redo: its samples.npz needs room
before=$(snapshot "$D/sweep" | grep -v -e results.json -e results.csv)
set +e
run_limited 4096 "${SWEEP[@]}" --out-dir "$D/sweep"
code=$?
set -e
errors=$(grep -c '^guidiff: error: ' "$W/stderr" || true)
echo "   sweep redoing one setting with 4 KB of room: exit $code: $(tail -1 "$W/stderr")"
[ "$code" -eq 2 ] && [ "$errors" -eq 1 ] || fail "sweep: exit $code, $errors error lines"
[ -z "$(find "$D/sweep" -name '.*.tmp-*')" ] || fail "sweep: a temporary file was left behind"
[ "$(snapshot "$D/sweep" | grep -v -e results.json -e results.csv)" = "$before" ] || fail "sweep: files that were there changed"
make_room
"$GUIDIFF" "${SWEEP[@]}" --out-dir "$D/sweep" >/dev/null 2>&1 && [ -f "$D/sweep/settings/cfg_w1_steps2/scores.json" ] &&
  echo "   with room again: the sweep redoes the setting and rewrites its report" || fail "the sweep after making room failed"

[ "$failures" -eq 0 ] && echo "disk-full checks: all passed ($MODE)" || echo "disk-full checks: $failures failed ($MODE)"
[ "$failures" -eq 0 ]
