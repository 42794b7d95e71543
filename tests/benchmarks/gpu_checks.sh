#!/usr/bin/env bash
# The GPU checks of docs/estimator.md and docs/benchmarks.md, as one prepared script.
#
#   tests/benchmarks/gpu_checks.sh wheels        here (with network to PyPI): the wheels a bare GPU machine lacks,
#                                                into .whl/ (git-ignored via .git/info/exclude), bitsandbytes
#                                                trimmed to its CUDA 13 libraries so the tree stays small
#   tests/benchmarks/gpu_checks.sh grid OUT      on the GPU machine: the estimator grid (about 6 minutes on an H200)
#   tests/benchmarks/gpu_checks.sh speed OUT     on the GPU machine: the trainer speed benchmark (about 6 minutes)
#   tests/benchmarks/gpu_checks.sh layout OUT    on the GPU machine: packed rows against TRL's flattened row, and the
#                                                plain script, on the 1B LoRA configuration (about 3 minutes)
set -euo pipefail
cd "$(dirname "$0")/../.."
WHEELS=(transformers==5.25.0 peft==0.21.2 trl==1.16.0 bitsandbytes==0.50.2 datasets==5.2.0 dill==0.4.1
        multiprocess==0.70.19 pydantic==2.14.4 pydantic_core==2.50.5 liger-kernel==0.8.5 typing-inspection
        annotated-types huggingface_hub==2.4.0 regex)
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)

setup_gpu_machine() {
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD/operator:$PWD/trainer:$PWD/tests/benchmarks" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, transformers, peft, trl, bitsandbytes; print(torch.__version__, transformers.__version__, \
peft.__version__, trl.__version__, bitsandbytes.__version__)"
}

case "${1:-}" in
  wheels)
    grep -qx '/.whl/' .git/info/exclude || echo '/.whl/' >> .git/info/exclude
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      "${PLATFORMS[@]}" -d .whl "${WHEELS[@]}"
    work=$(mktemp -d)
    (cd "$work" && unzip -q "$OLDPWD"/.whl/bitsandbytes-*.whl && rm -f bitsandbytes/libbitsandbytes_cuda1{18,21,24,26,28}.so \
      && sed -i '/libbitsandbytes_cuda1\(18\|21\|24\|26\|28\)/d' bitsandbytes-*.dist-info/RECORD \
      && rm "$OLDPWD"/.whl/bitsandbytes-*.whl && zip -q -r "$OLDPWD/.whl/bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl" .)
    du -sh .whl ;;
  grid)
    setup_gpu_machine
    python3 tests/benchmarks/estimator_gpu_grid.py --out "$2" --parallel 5 --deadline 300 ;;
  speed)
    setup_gpu_machine
    python3 tests/benchmarks/trainer_speed.py --out "$2" --warmup 3 --steps 10 ;;
  layout)
    setup_gpu_machine
    python3 tests/benchmarks/trainer_speed.py --out "$2" --warmup 3 --steps 10 --config llama-1b-lora \
      --sides kubetune plain kubetune-flat ;;
  *) echo "usage: $0 wheels | grid OUT | speed OUT | layout OUT" >&2; exit 2 ;;
esac
