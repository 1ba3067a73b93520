#!/usr/bin/env bash
# Score -> report -> filter from the command line, on the bundled data and model.
#   bash examples/cli_pipeline.sh [OUTPUT_FOLDER]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-/tmp/ches-cli}"
mkdir -p "$out"
# --overwrite: this script replaces the files it wrote on an earlier run (ches refuses to replace
# anything unless asked in so many words)

# 1. score once; --save-embeddings keeps S+ and S- so other scores need no new model pass
ches score "$here/data/hh-rlhf-harmless-base-test.jsonl.gz" --model "$here/tiny-hh-model" \
    --output "$out/scores.parquet" --save-embeddings "$out/embeddings.safetensors" --overwrite

# 2. look at the distribution and the extreme pairs
ches report "$out/scores.parquet" --output "$out/report.html" --overwrite

# 3. drop the most displacement-prone 5 % (by ln_ches) and write a TRL-ready file with the input's columns
ches filter "$out/scores.parquet" --quantile 0.95 --no-scores --output "$out/clean.jsonl" --overwrite

# every file has a .meta.json sidecar saying how it was made
ls -l "$out"
