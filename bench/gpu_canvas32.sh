#!/usr/bin/env bash
# Train the canvas32 reference on a leased GPU and evaluate it at the reference protocol, as one
# command run from the repository root:
#   1. `edgediff reference train --arch canvas32` for $STEPS steps (resumes from
#      $OUT/canvas32.ckpt when present; carry a CPU checkpoint there to continue it);
#   2. `edgediff eval --model $OUT/canvas32` at 1,000 samples, 50 DDIM steps, guidance 3, seeds 0-2.
# Needs python3 with torch (CUDA) and the project's dependencies (see bench/gpu_session.sh for
# bringing diffusers as wheels). Writes $OUT/canvas32/, $OUT/canvas32_eval_seed{0,1,2}.json.
set -u
OUT=${OUT:-/tmp/edgediff_gpu_out}
STEPS=${STEPS:-20000}
SAMPLES=${SAMPLES:-1000}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD:$PWD/export:$PWD/runtime${PYTHONPATH:+:$PYTHONPATH}"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" || exit 3
python3 -m edgediff_export.cli -v reference train --arch canvas32 --steps "$STEPS" --out "$OUT/canvas32" \
  2>&1 | tee "$OUT/canvas32_train.log" || exit 1
for seed in 0 1 2; do
  python3 -m edgediff_export.cli eval --model "$OUT/canvas32" --samples "$SAMPLES" --steps 50 --seed "$seed" \
    --json "$OUT/canvas32_eval_seed$seed.json" 2>&1 | tail -3
done
