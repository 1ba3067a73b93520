#!/usr/bin/env bash
# Score -> report -> filter from the command line, on the bundled data and model.
#   bash examples/cli_pipeline.sh [OUTPUT_FOLDER]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-/tmp/ches-cli}"
mkdir -p "$out"

# 1. score once; --save-embeddings keeps S+ and S- so other scores need no new model pass
ches score "$here/data/hh-rlhf-harmless-base-test.jsonl.gz" --model "$here/tiny-hh-model" \
    --output "$out/scores.parquet" --save-embeddings "$out/embeddings.safetensors"

# 2. look at the distribution and the extreme pairs
ches report "$out/scores.parquet" --output "$out/report.html"

# 3. drop the most displacement-prone 5 % (by ln_ches) and write a TRL-ready file with the input's columns
ches filter "$out/scores.parquet" --quantile 0.95 --no-scores --output "$out/clean.jsonl"

# every file has a .meta.json sidecar saying how it was made
ls -l "$out"
