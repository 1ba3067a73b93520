#!/usr/bin/env bash
# Every GPU check of the project in one run (for a session with a GPU machine; about 10 minutes on an H100).
#   bash benchmarks/gpu_session.sh [OUTPUT_FOLDER]
# Needs torch with CUDA, transformers, and the package's other dependencies (datasets and its
# dependencies can be installed from wheels in .whl/ first: see benchmarks/README.md).
set -uo pipefail
out="${1:-${OUT:-benchmarks/results}}"
mkdir -p "$out"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:.
fi
export PYTHONPATH="${PYTHONPATH:-.}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"
python3 benchmarks/gpu_agreement.py --output "$out/gpu-agreement.json" 2>&1 | tee "$out/gpu-agreement.log"
python3 benchmarks/throughput.py --device cuda --official-pairs 256 --output "$out/gpu-olmo1b.json" 2>&1 | tee "$out/gpu-olmo1b.log"
python3 benchmarks/throughput.py --device cuda --layout packed --official-pairs 64 --output "$out/gpu-olmo1b-packed.json" 2>&1 | tee "$out/gpu-olmo1b-packed.log"
python3 benchmarks/throughput.py --device cuda --shape llama-8b --lengths long --pairs 128 --official-pairs 16 \
    --output "$out/gpu-llama8b-long.json" 2>&1 | tee "$out/gpu-llama8b-long.log"
