#!/usr/bin/env bash
# The kill -9 campaign (docs/reliability.md).
#   bash scripts/kill_campaign.sh [KILLS] [SWEEP_KILLS]      (default 20 and 8)
# 1. Training: a small run is killed with SIGKILL KILLS times at random moments (every
#    other kill waits for a checkpoint write to start, so it lands inside one) and restarted
#    each time (--resume once a checkpoint exists); its final weights, resume file and log
#    losses must equal an uninterrupted run's byte for byte.
# 2. A kill before the first checkpoint: --resume must explain in one line (exit 2) that
#    there is nothing to continue, and the plain command must then work.
# 3. A sweep killed SWEEP_KILLS times and rerun gives the same samples and scores.
# Deterministic for a seed (KILL_SEED, default 1); one thread per process. Needs build/guidiff
# (bash scripts/build.sh). Prints a summary; exits 1 if any check fails.
set -euo pipefail
cd "$(dirname "$0")/.."
KILLS="${1:-20}"
SWEEP_KILLS="${2:-8}"
RANDOM="${KILL_SEED:-1}"
source scripts/campaign_setup.sh
campaign_setup kill_campaign

cat >"$W/tiny.json" <<'JSON'
{"kind": "mlp_denoiser", "hidden_channels": 64, "num_blocks": 2}
JSON
BASE=(train diffusion --data mixture --mixture-size 512 --config "$W/tiny.json" --steps 400 --batch-size 32
      --log-every 4 --ema-rate 0.99 --seed 7 --threads 1)
TRAIN=("${BASE[@]}" --save-every 4)
# Checkpoints change nothing in the trajectory, so a run with only the final one ends with the
# same weights; it makes "killed before the first checkpoint" certain.
LATE=("${BASE[@]}" --save-every 1000)

# Seconds as a decimal, e.g. 0.734: a random moment in [0, max) (max in ms).
random_delay() { awk -v r="$RANDOM$RANDOM" -v max="$1" 'BEGIN { srand(r); printf "%.3f", rand() * max / 1000 }'; }
# A kill can land before the run has made its directory: find then fails, which under pipefail
# would end the campaign.
temporaries() { { find "$1" -name '.*.tmp-*' 2>/dev/null || true; } | wc -l; }
temporary_bytes() { { find "$1" -name '.*.tmp-*' -printf '%s\n' 2>/dev/null || true; } | awk '{ s += $1 } END { print s + 0 }'; }
step_of() { head -c 65536 "$1/resume.safetensors" 2>/dev/null | grep -ao '\\"step\\":[0-9]*' | grep -o '[0-9]*$' || echo none; }
log_losses() { sed -E 's/"images_per_sec":[^,}]*,?//' "$1/log.jsonl"; }
same_files() {  # same_files DIR_A DIR_B FILE...
  local a=$1 b=$2 ok=0
  shift 2
  for f in "$@"; do cmp -s "$a/$f" "$b/$f" || { echo "  differs: $f"; ok=1; }; done
  return $ok
}

echo "== reference training run (uninterrupted)"
start=$(date +%s%N)
"$GUIDIFF" "${TRAIN[@]}" --out-dir "$W/reference" 2>/dev/null
reference_ms=$(( ($(date +%s%N) - start) / 1000000 ))
echo "   $reference_ms ms"

echo "== training killed $KILLS times"
RUN="$W/killed"
kills=0; in_write=0; before_first=0; left_files=0; left_bytes=0; restarts=0
while [ "$kills" -lt "$KILLS" ]; do
  args=("${TRAIN[@]}" --out-dir "$RUN")
  [ -f "$RUN/resume.safetensors" ] && args+=(--resume)
  "$GUIDIFF" "${args[@]}" 2>"$W/stderr" &
  pid=$!
  restarts=$((restarts + 1))
  if [ $((kills % 2)) -eq 1 ]; then
    # Wait for a checkpoint write to begin (its temporary appears), then kill inside it.
    while kill -0 "$pid" 2>/dev/null && ! compgen -G "$RUN/.*.tmp-*" >/dev/null; do :; done
  else
    sleep "$(random_delay "$reference_ms")"
  fi
  if kill -9 "$pid" 2>/dev/null; then
    wait "$pid" 2>/dev/null || true
    kills=$((kills + 1))
    n=$(temporaries "$RUN")
    [ "$n" -gt 0 ] && in_write=$((in_write + 1))
    left_files=$((left_files + n)); left_bytes=$((left_bytes + $(temporary_bytes "$RUN")))
    [ -f "$RUN/resume.safetensors" ] || before_first=$((before_first + 1))
    echo "   kill $kills: checkpoint at step $(step_of "$RUN"), $n temporary file(s) left by the kill"
  else
    # The run ended before the kill: it must have ended well, and it is started again
    # (with --resume it then has nothing left to do; the campaign starts a fresh copy).
    wait "$pid" && code=0 || code=$?
    [ "$code" -eq 0 ] || { fail "a resumed run exited with $code: $(cat "$W/stderr")"; break; }
    echo "   the run finished before kill $((kills + 1)); starting over in a fresh directory"
    rm -rf "$RUN"
  fi
done
"$GUIDIFF" "${TRAIN[@]}" --out-dir "$RUN" $([ -f "$RUN/resume.safetensors" ] && echo --resume) 2>"$W/stderr" ||
  fail "the final resume failed: $(cat "$W/stderr")"
if same_files "$W/reference" "$RUN" model.safetensors model.json raw.safetensors raw.json resume.safetensors; then
  echo "   final weights, resume file: identical to the uninterrupted run"
else
  fail "the killed run's files differ from the uninterrupted run's"
fi
cmp -s <(log_losses "$W/reference") <(log_losses "$RUN") && echo "   log losses: identical" || fail "the log differs"
remaining=$(temporaries "$RUN")
[ "$remaining" -eq 0 ] || fail "$remaining temporary files remain after the final run"

echo "== a kill before the first checkpoint"
EARLY="$W/early"
"$GUIDIFF" "${LATE[@]}" --out-dir "$EARLY" 2>/dev/null &
pid=$!
while kill -0 "$pid" 2>/dev/null && [ ! -e "$EARLY/log.jsonl" ]; do :; done  # the run has started
kill -9 "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
if [ -f "$EARLY/resume.safetensors" ]; then
  fail "the kill came after the first checkpoint"
else
  set +e
  "$GUIDIFF" "${LATE[@]}" --out-dir "$EARLY" --resume 2>"$W/stderr"
  code=$?
  set -e
  lines=$(wc -l <"$W/stderr")
  echo "   --resume: exit $code: $(cat "$W/stderr")"
  [ "$code" -eq 2 ] && [ "$lines" -eq 1 ] || fail "--resume before the first checkpoint: exit $code, $lines lines"
  "$GUIDIFF" "${LATE[@]}" --out-dir "$EARLY" 2>"$W/stderr" || fail "the plain command failed: $(cat "$W/stderr")"
  same_files "$W/reference" "$EARLY" model.safetensors raw.safetensors &&
    echo "   the plain command then trains to the same weights" || fail "the restarted run differs"
fi

echo "== sweep killed $SWEEP_KILLS times"
SWEEP=(sweep --model models/fashion-mnist/cfg_unet --cfg-scales 0,2 --steps 3,6 --num-samples 20 --batch-size 20
       --no-real-baseline --cache-dir "$W/cache" --seed 3 --threads 1)
start=$(date +%s%N)
"$GUIDIFF" "${SWEEP[@]}" --out-dir "$W/sweep-warm" >/dev/null 2>&1  # computes the reference statistics once
"$GUIDIFF" "${SWEEP[@]}" --out-dir "$W/sweep-reference" >/dev/null 2>&1
sweep_ms=$(( ($(date +%s%N) - start) / 2000000 ))
sweep_kills=0; sweep_left=0
while [ "$sweep_kills" -lt "$SWEEP_KILLS" ]; do
  "$GUIDIFF" "${SWEEP[@]}" --out-dir "$W/sweep" >/dev/null 2>"$W/stderr" &
  pid=$!
  if [ $((sweep_kills % 2)) -eq 1 ]; then
    while kill -0 "$pid" 2>/dev/null && ! compgen -G "$W/sweep/settings/*/.*.tmp-*" >/dev/null; do :; done
  else
    sleep "$(random_delay "$sweep_ms")"
  fi
  if kill -9 "$pid" 2>/dev/null; then
    wait "$pid" 2>/dev/null || true
    sweep_kills=$((sweep_kills + 1))
    n=$(temporaries "$W/sweep"); sweep_left=$((sweep_left + n))
    echo "   kill $sweep_kills: $(find "$W/sweep/settings" -name scores.json 2>/dev/null | wc -l) settings done, $n temporary file(s) left"
  else
    wait "$pid" || fail "a resumed sweep failed: $(cat "$W/stderr")"
    echo "   the sweep finished before kill $((sweep_kills + 1)); starting over"
    rm -rf "$W/sweep"
  fi
done
"$GUIDIFF" "${SWEEP[@]}" --out-dir "$W/sweep" >/dev/null 2>"$W/stderr" || fail "the final sweep failed: $(cat "$W/stderr")"
sweep_same=yes
for setting in "$W/sweep-reference"/settings/*; do
  id=$(basename "$setting")
  cmp -s "$setting/samples.npz" "$W/sweep/settings/$id/samples.npz" || { sweep_same=no; echo "  differs: $id/samples.npz"; }
  cmp -s <(grep -v '"seconds"' "$setting/scores.json") <(grep -v '"seconds"' "$W/sweep/settings/$id/scores.json") ||
    { sweep_same=no; echo "  differs: $id/scores.json"; }
done
cut_seconds() { awk -F, '{ NF = NF - 1; print }' OFS=, "$1"; }
cmp -s <(cut_seconds "$W/sweep-reference/results.csv") <(cut_seconds "$W/sweep/results.csv") || { sweep_same=no; echo "  differs: results.csv"; }
[ "$sweep_same" = yes ] && echo "   samples, scores and results.csv: identical to the uninterrupted sweep" || fail "the killed sweep differs"
sweep_remaining=$(temporaries "$W/sweep")
[ "$sweep_remaining" -eq 0 ] || fail "$sweep_remaining temporary files remain after the final sweep"

echo
echo "summary: training $kills kills ($in_write inside a checkpoint write, $before_first before the first checkpoint),"
echo "         $restarts starts, every resume succeeded: $([ "$failures" -eq 0 ] && echo yes || echo no);"
echo "         temporaries left by kills: $left_files files, $left_bytes bytes (removed by the next start; $remaining at the end);"
echo "         sweep $sweep_kills kills, $sweep_left temporaries left by kills ($sweep_remaining at the end); results identical: $sweep_same"
[ "$failures" -eq 0 ] && echo "kill campaign: all checks passed" || echo "kill campaign: $failures check(s) failed"
[ "$failures" -eq 0 ]
