#!/usr/bin/env bash
# One prepared GPU check: the gpu-marked tests, then the GPU benchmark.
#
#   bash scripts/gpu_check.sh [OUTDIR]
#
# Runs from the repository root on a machine with a CUDA GPU, numba-cuda and
# (for the torch/CuPy tests and baselines) PyTorch / CuPy. Nothing is installed:
# the package is imported from src/. Logs go to OUTDIR (default: $OUT if set,
# else ./gpu_check_out).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu_check_out}}"
mkdir -p "$out"
py="${PYTHON:-python3}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
unset NUMBA_ENABLE_CUDASIM

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee "$out/gpu.txt"
"$py" -c "import numba, numba_cuda, numpy; print('numba', numba.__version__, 'numba-cuda', numba_cuda.__version__, 'numpy', numpy.__version__)" 2>&1 | tee -a "$out/gpu.txt"

"$py" -m pytest tests/test_gpu.py tests/test_gpu_inputs.py tests/test_sdim_gpu.py -m gpu -p no:cacheprovider -q -rs --durations=10 2>&1 | tee "$out/test_gpu.log"
tests=${PIPESTATUS[0]}

"$py" -m etaretrieval.bench --device cuda 2>&1 | tee "$out/bench_cuda.log"
bench=${PIPESTATUS[0]}

echo "gpu tests exit $tests, benchmark exit $bench"
exit $(( tests != 0 ? tests : bench ))
