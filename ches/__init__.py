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

#: public name -> the module that defines it (loaded the first time the name is asked for)
_PUBLIC = {
    # the calls
    "score": "api", "score_run": "api", "filter": "filtering", "filter_run": "filtering", "rank": "filtering",
    "summary": "filtering", "pairs": "builder.api", "pairs_run": "builder.api", "validate": "evaluate.validation",
    "audit": "evaluate.auditing", "load_data": "data.inputs", "load_embeddings": "run.embeddings",
    "extract_prompt": "data.formats", "with_reference": "data.columns", "reference_of": "data.columns",
    # their options
    "ScoreOptions": "options", "FilterOptions": "options", "PairOptions": "options", "ValidateOptions": "options",
    "AuditOptions": "options", "ReportOptions": "options",
    # what they return
    "RunInfo": "run.runs", "PairsInfo": "builder.plan", "FilterCut": "filtering", "AuditResult": "evaluate.auditing",
}

__all__ = [*_PUBLIC, "ChesError", "__version__"]

#: modules reached as attributes of ``ches`` without their own import: ``ches.trl.DPOTrainer`` (needs TRL) and
#: ``ches.report.write_report`` (the HTML report), as the docs write them
_MODULES = ("trl", "report")


def __getattr__(name: str):
    """Load a public name the first time it is asked for; anything else is an AttributeError that lists them."""
    if name in _MODULES:
        return importlib.import_module(f".{name}", __name__)
    if name not in _PUBLIC:
        raise AttributeError(f"module 'ches' has no attribute {name!r}; its public names are "
                             f"{', '.join(sorted(__all__))}, and the modules ches.trl and ches.report; import any other module by its "
                             "path (import ches.data.tokens)")
    value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC) | set(_MODULES))
