"""ches: CHES scores for preference data, on the exact tokens DPO trains on.

CHES (Razin et al., "Unintentional Unalignment: Likelihood Displacement in Direct Preference
Optimization", ICLR 2025) measures how similar the hidden embeddings of a pair's preferred and
dispreferred responses are; high-CHES pairs make DPO lower the likelihood of the preferred response.

>>> import ches
>>> scored = ches.score("examples/data/hh-sample.jsonl", "examples/tiny-hh-model", progress=False)
>>> len(scored), "ln_ches" in scored.column_names
(64, True)
"""

__version__ = "0.1.0"

from .api import score  # noqa: E402
from .embeddings import load_embeddings  # noqa: E402
from .errors import ChesError  # noqa: E402
from .filtering import filter, rank, summary  # noqa: E402,A004
from .formats import extract_prompt  # noqa: E402
from .validate import validate  # noqa: E402

__all__ = ["score", "filter", "rank", "summary", "validate", "load_embeddings", "extract_prompt", "ChesError",
           "__version__"]
