#!/usr/bin/env bash
# GPU check of issue #27, one script: an estimated 3-5 minutes on one H100 (never run on one yet),
# stopped at 470 s (GPU_CHECK_TIMEOUT) so that it stays within 8:
#   build the ops extension with its CUDA kernels, run the op tests on CUDA, benchmark the CUDA
#   ops against the PyTorch reference, train paper-size ReBind and GTMGC in bf16 autocast, run
#   the shipped prediction networks on the GPU, and time ours against the model written directly.
# Results: markdown per stage in --out (default $OUT, else runs/gpu_check): gpu_summary.md,
# gpu_build.md, gpu_op_tests.md, gpu_ops.md, gpu_train.md, gpu_predict.md, gpu_direct.md, and
# gpu_check.json (8 files). Exit code 0 only if every stage passed.
#
# The GPU machine has no RDKit and no package registry: make the pre-featurised molecules first,
# on a machine with RDKit (about 15 s, 3 MB, under the git-ignored runs/):
#   .venv/bin/python benchmarks/gpu_inputs.py
# then, on the GPU machine, from the repository root (carry runs/gpu_inputs there):
#   bash benchmarks/gpu_check.sh
# The plumbing on a CPU, tiny sizes, in well under a minute (tests/test_gpu_check.py runs this):
#   bash benchmarks/gpu_check.sh --device cpu --dry-run --out /tmp/gpu_check
# Other options: see `python benchmarks/gpu_check.py --help` (--stages, --inputs, --threads); relative
# paths are taken from the repository root.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ -n "${PYTHON:-}" ]]; then py=$PYTHON
elif [[ -x .venv/bin/python ]]; then py=.venv/bin/python
else py=python3
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"  # H100 / H200: one architecture keeps nvcc short
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"

inputs=runs/gpu_inputs/gpu_inputs.pt
for ((i = 1; i <= $#; i++)); do
  if [[ "${!i}" == --inputs ]]; then j=$((i + 1)); inputs="${!j}"; fi
  if [[ "${!i}" == --inputs=* ]]; then inputs="${!i#--inputs=}"; fi
done
if [[ ! -f "$inputs" ]]; then
  if "$py" -c "import rdkit" 2>/dev/null; then
    "$py" benchmarks/gpu_inputs.py --out "$inputs"
  else
    echo "gpu_check: $inputs is missing and RDKit is not installed here to featurise molecules." >&2
    echo "Make it where RDKit is (.venv/bin/python benchmarks/gpu_inputs.py) and bring runs/gpu_inputs along." >&2
    exit 2
  fi
fi

# SIGINT at the limit: the Python side still writes its summary of the stages that ran.
exec timeout --signal=INT --kill-after=20 "${GPU_CHECK_TIMEOUT:-470}" "$py" benchmarks/gpu_check.py "$@"
