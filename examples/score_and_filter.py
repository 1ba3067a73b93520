"""Score a preference dataset, look at it, and keep the pairs least likely to cause likelihood displacement.

    python examples/score_and_filter.py
"""

import json
from pathlib import Path

import ches

HERE = Path(__file__).resolve().parent
DATA = HERE / "data" / "hh-sample.jsonl"
MODEL = HERE / "tiny-hh-model"  # use the SFT checkpoint you will run DPO from

# 1. Score every pair once (the expensive step); keep the result, it has every original column.
scored = ches.score(str(DATA), str(MODEL), progress=False)
scored.to_parquet("/tmp/ches-scores.parquet")

# 2. Look: summary statistics and the most displacement-prone pairs.
print(json.dumps(ches.summary(scored)["measures"]["ln_ches"], indent=2))
ranked = ches.rank(scored, measure="ln_ches")
for row in ranked.select(range(3)):
    print(f"rank {row['ches_rank']}  ln_ches={row['ln_ches']:.2f}  {row['chosen'][-50:]!r} vs {row['rejected'][-50:]!r}")

# 3. Filter without re-scoring: drop the top 5 % by length-normalized CHES ...
clean = ches.filter(scored, quantile=0.95, keep_scores=False)
# ... or keep only the 5 % least similar pairs, the paper's Section 6 setting.
strict = ches.filter(scored, quantile=0.05)
print(f"kept {len(clean)} of {len(scored)} rows (quantile 0.95) and {len(strict)} (quantile 0.05)")

# 4. Hand the result to your trainer, or save it: it is a plain datasets.Dataset.
clean.to_json("/tmp/ches-clean.jsonl")
