#!/usr/bin/env bash
# Every GPU check of the project, most important first (for a session with a GPU machine).
#   bash benchmarks/gpu_session.sh [OUTPUT_FOLDER] [next|validate|core|hh|levers|engine|prefix|all]  (all: core, hh, levers, prefix)
# next   (run this first; about 8 minutes on an H200): what is still unmeasured. ches validate on the OLMo-1B shape
#        (n=64, 2 seeds, LoRA then full fine-tuning, bf16: wall time and peak memory for docs/validation.md's table;
#        estimated 0.2-1.1 min of compute each plus each run's setup), then the default on all 2,312 hh-rlhf
#        rows (the streamed pipeline after the sample-read fix, with per-layer device syncs removed: does the whole
#        call now sit close to the engine?), then the engine's kernel time by kind on hh-rlhf and real-like rows,
#        and with --compile (its recompilations logged: why was it 2.8x slower?)
# core   (about 3 minutes on an H200): the varlen kernel's causal alignment, bf16-vs-fp32 agreement, OLMo-1B default, Llama-8B long context
# levers (more than 2 minutes; --compile did not finish in the time left of a 400 s call on an H200): OLMo-1B packed, OLMo-1B padded with torch.compile, packed with flex attention
# hh     (about 3 minutes): OLMo-1B on hh-rlhf rows (long shared prompts) in every layout
# engine (about 5 minutes): the default on hh-rlhf and real-like lengths with the engine's share of the time, then --compile on hh-rlhf rows
# prefix (about a minute): the default (chosen by cost: prefix_shared) on hh-rlhf rows (core runs it on the other shapes)
# Needs torch with CUDA, transformers, and the package's other dependencies (datasets and its
# dependencies can be installed from wheels in .whl/ first: see benchmarks/README.md).
set -uo pipefail
out="${1:-${OUT:-benchmarks/results}}"
part="${2:-all}"
mkdir -p "$out"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:.
fi
export PYTHONPATH="${PYTHONPATH:-.}" PYTHONUNBUFFERED=1
run() {  # run NAME ARGS...: one benchmark, its log and JSON under $out, a failure noted and the rest still run
  local name="$1"; shift
  echo "=== $name: $*" | tee -a "$out/session.log"
  "$@" 2>&1 | tee "$out/$name.log" | tail -n 12
  echo "=== $name exit ${PIPESTATUS[0]}" | tee -a "$out/session.log"
}
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"
olmo=(python3 benchmarks/throughput.py --device cuda --official-pairs 256)
if [ "$part" = core ] || [ "$part" = all ]; then
  run varlen-alignment python3 benchmarks/varlen_alignment.py
  run gpu-agreement python3 benchmarks/gpu_agreement.py --output "$out/gpu-agreement.json"
  run gpu-olmo1b "${olmo[@]}" --output "$out/gpu-olmo1b.json"
  run gpu-llama8b-long python3 benchmarks/throughput.py --device cuda --shape llama-8b --lengths long --pairs 128 \
      --official-pairs 16 --output "$out/gpu-llama8b-long.json"
fi
if [ "$part" = hh ] || [ "$part" = all ]; then
  hh=(python3 benchmarks/throughput.py --device cuda --lengths hh --pairs 1024 --official-pairs 128)
  for layout in padded packed shared_prompt; do
    run "gpu-olmo1b-hh-$layout" "${hh[@]}" --layout "$layout" --output "$out/gpu-olmo1b-hh-$layout.json"
  done
fi
if [ "$part" = levers ] || [ "$part" = all ]; then
  run gpu-olmo1b-packed "${olmo[@]}" --official-pairs 64 --layout packed --output "$out/gpu-olmo1b-packed.json"
  run gpu-olmo1b-compile "${olmo[@]}" --official-pairs 64 --compile --output "$out/gpu-olmo1b-compile.json"
  run gpu-olmo1b-packed-flex "${olmo[@]}" --official-pairs 64 --layout packed --attn-implementation flex_attention \
      --output "$out/gpu-olmo1b-packed-flex.json"
fi
if [ "$part" = next ] || [ "$part" = validate ]; then
  run gpu-validate-olmo1b timeout 420 python3 benchmarks/validate_gpu.py --shape olmo-1b \
      --output "$out/gpu-validate-olmo1b.json"
fi
if [ "$part" = next ]; then
  run gpu-olmo1b-hh2312-next python3 benchmarks/throughput.py --device cuda --lengths hh --pairs 2312 --official-pairs 64 \
      --repeats 2 --output "$out/gpu-olmo1b-hh2312-next.json"
  run gpu-profile-hh python3 benchmarks/engine_profile.py --device cuda --lengths hh --pairs 1024 \
      --output "$out/gpu-profile-hh.json"
  run gpu-profile-real python3 benchmarks/engine_profile.py --device cuda --lengths real --pairs 1024 \
      --output "$out/gpu-profile-real.json"
  TORCH_LOGS=recompiles run gpu-profile-hh-compile timeout 200 python3 benchmarks/engine_profile.py --device cuda \
      --lengths hh --pairs 1024 --compile --output "$out/gpu-profile-hh-compile.json"
fi
if [ "$part" = engine ]; then
  hh=(python3 benchmarks/throughput.py --device cuda --lengths hh --pairs 1024 --official-pairs 64 --repeats 2)
  run gpu-olmo1b-hh-engine "${hh[@]}" --output "$out/gpu-olmo1b-hh-engine.json"
  run gpu-olmo1b-real-engine "${olmo[@]}" --official-pairs 64 --repeats 2 --output "$out/gpu-olmo1b-real-engine.json"
  run gpu-olmo1b-hh-compile timeout 240 "${hh[@]}" --compile --output "$out/gpu-olmo1b-hh-compile.json"
fi
if [ "$part" = prefix ] || [ "$part" = all ]; then
  run gpu-olmo1b-hh-auto python3 benchmarks/throughput.py --device cuda --lengths hh --pairs 1024 --official-pairs 128 \
      --output "$out/gpu-olmo1b-hh-auto.json"
fi
