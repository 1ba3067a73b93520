"""ches: CHES scores for preference data, on the exact tokens DPO trains on.

CHES (Razin et al., "Unintentional Unalignment: Likelihood Displacement in Direct Preference
Optimization", ICLR 2025) measures how similar the hidden embeddings of a pair's preferred and
dispreferred responses are; high-CHES pairs make DPO lower the likelihood of the preferred response.

The public functions load on first use, so ``import ches`` and ``ches --help`` start without torch.

>>> import ches
>>> scored = ches.score("examples/data/hh-sample.jsonl", "examples/tiny-hh-model", progress=False)
>>> len(scored), "ln_ches" in scored.column_names
(64, True)
"""

import importlib

from .errors import ChesError

__version__ = "0.1.0"

#: public name -> the module that defines it
_PUBLIC = {"score": "api", "filter": "filtering", "filter_run": "filtering", "rank": "filtering", "summary": "filtering",
           "validate": "validation", "load_embeddings": "embeddings", "extract_prompt": "formats",
           "pairs": "pair_builder", "pairs_run": "pair_builder", "audit": "auditing"}

__all__ = ["score", "filter", "filter_run", "rank", "summary", "validate", "load_embeddings", "extract_prompt", "pairs",
           "pairs_run", "audit", "ChesError", "__version__"]


def __getattr__(name: str):
    """Load a public function (or a submodule, e.g. ``ches.api``) the first time it is asked for."""
    if name in _PUBLIC:
        value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
        globals()[name] = value
        return value
    try:
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError as error:
        if error.name != f"{__name__}.{name}":  # a submodule whose own import failed: say so
            raise
        raise AttributeError(f"module 'ches' has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
