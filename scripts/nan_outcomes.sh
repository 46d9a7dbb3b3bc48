#!/usr/bin/env bash
# NaN and divergence from the command line (docs/reliability.md):
# 1. training that diverges (--lr 100) stops with the step, keeps the last checkpoint byte for
#    byte (compared with a run that stops there); resumed with --skip-nonfinite it skips
#    such batches, and stops as diverged at the 10th in a row, the weights unchanged;
# 2. sampling from weights holding one NaN names the step and the sample.
# Needs build/guidiff (bash scripts/build.sh). Prints each outcome; exits 1 if a check fails.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/campaign_setup.sh
campaign_setup nan_outcomes
# expect_error CODE COMMAND...: the command must exit with CODE, and its error must be one line,
# the last on stderr (progress lines such as training's banner may precede it).
expect_error() {
  local want=$1 code=0
  shift
  "$@" >/dev/null 2>"$W/stderr" || code=$?
  echo "   exit $code: $(tail -n 1 "$W/stderr")"
  [ "$code" -eq "$want" ] || fail "exit $code, not $want"
  [ "$(grep -c 'error' "$W/stderr")" -eq 1 ] && tail -n 1 "$W/stderr" | grep -q '^guidiff: error: ' ||
    fail "the error is not one last line"
}

echo '{"kind": "mlp_denoiser", "hidden_channels": 64, "num_blocks": 2}' >"$W/tiny.json"
TRAIN=(train diffusion --data mixture --mixture-size 512 --config "$W/tiny.json" --batch-size 32 --seed 7
       --threads 1 --save-every 1 --lr 100)

echo "== training that diverges (lr 100, a checkpoint every step)"
expect_error 2 "$GUIDIFF" "${TRAIN[@]}" --steps 50 --out-dir "$W/diverged"
"$GUIDIFF" "${TRAIN[@]}" --steps 2 --out-dir "$W/two-steps" >/dev/null 2>&1
for f in model.safetensors raw.safetensors; do
  cmp -s "$W/diverged/$f" "$W/two-steps/$f" && echo "   $f: the step-2 checkpoint, byte for byte" ||
    fail "$f differs from a run stopped at step 2"
done
[ -z "$(find "$W/diverged" -name '.*.tmp-*')" ] || fail "temporary files left"

echo "== the same run resumed with --skip-nonfinite: every batch is skipped, so it stops as diverged"
expect_error 2 "$GUIDIFF" "${TRAIN[@]}" --steps 50 --out-dir "$W/diverged" --resume --skip-nonfinite
cmp -s "$W/diverged/model.safetensors" "$W/two-steps/model.safetensors" && echo "   the step-2 checkpoint still" ||
  fail "the checkpoint changed"


echo "== sampling from weights with one NaN"
"$GUIDIFF" train diffusion --data mixture --mixture-size 512 --config "$W/tiny.json" --batch-size 32 --seed 7 \
  --threads 1 --steps 20 --out-dir "$W/good" >/dev/null 2>&1
mkdir "$W/poisoned"
cp "$W/good/model.json" "$W/good/model.safetensors" "$W/poisoned/"
# safetensors: 8-byte little-endian header length, the JSON header, then the data; the first
# float of input.bias becomes a quiet NaN.
header_bytes=$(head -c 8 "$W/poisoned/model.safetensors" | od -An -tu8 | tr -d ' ')
offset=$(head -c $((8 + header_bytes)) "$W/poisoned/model.safetensors" | tail -c "$header_bytes" |
  grep -o '"input.bias":{[^}]*}' | sed -E 's/.*"data_offsets":\[([0-9]+),.*/\1/')
printf '\x00\x00\xc0\x7f' | dd of="$W/poisoned/model.safetensors" bs=1 seek=$((8 + header_bytes + offset)) \
  conv=notrunc status=none
expect_error 2 "$GUIDIFF" sample --model "$W/poisoned/model" --num-samples 16 --steps 50 --out "$W/x.npy" --threads 1
[ ! -e "$W/x.npy" ] || fail "an output was written"

[ "$failures" -eq 0 ] && echo "nan outcomes: all checks passed" || echo "nan outcomes: $failures check(s) failed"
[ "$failures" -eq 0 ]
