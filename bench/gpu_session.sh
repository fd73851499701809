#!/usr/bin/env bash
# The GPU checks of one leased-device session, as one command (run from the repository root):
#   1. CUDA tests: the quantization methods on CUDA vs CPU, the TensorRT plugin kernels (CuPy,
#      through bench/gpu_check.py; run that script alone for the timings);
#   2. the MPQ benchmark at the 2,000-sample protocol (2000 samples x 2 seeds, all W2A4 rows) on the
#      GPU, rows as parallel processes, merged into $OUT/mpq_gpu_2000.json.
# Needs python3 with torch (CUDA), CuPy and pytest; diffusers comes from .whl/ when present
# (here: `pip download --no-deps --only-binary=:all: -d .whl diffusers==0.42.1 importlib_metadata`,
# then carry .whl). Override the benchmark with MPQ_ARGS and its time limit with MPQ_DEADLINE (s).
# Measured on an H100: tests about 45 s, the 10 W2A4 rows 203 s.
set -u
OUT=${OUT:-/tmp/edgediff_gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
fi
export PYTHONPATH="/tmp/site:$PWD:$PWD/export:$PWD/runtime${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'cuda', torch.cuda.is_available())" || exit 3

echo "== 1. CUDA tests"
timeout "${TEST_TIMEOUT:-240}" python3 -m pytest -q -m gpu -p no:cacheprovider \
  tests/edgediff/methods/test_methods_gpu.py tests/export/trt/test_gpu_kernels.py 2>&1 | tee "$OUT/pytest_gpu.log"
tests_rc=${PIPESTATUS[0]}

echo "== 2. MPQ benchmark"
# shellcheck disable=SC2086
timeout $(( ${MPQ_DEADLINE:-330} + 60 )) python3 -m bench.mpq_parallel \
  ${MPQ_ARGS:---device cuda --samples 2000 --bits W2A4 --jobs 10 --threads 1} \
  --deadline "${MPQ_DEADLINE:-330}" --out "$OUT/mpq_gpu_2000.json" --no-docs 2>&1 | tee "$OUT/mpq.log"
bench_rc=${PIPESTATUS[0]}
echo "tests rc=$tests_rc bench rc=$bench_rc"
exit $(( tests_rc || bench_rc ))
