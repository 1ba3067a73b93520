"""From a validation to a decision: which measure to filter by on this model, and where to cut.

Pure functions of what :func:`ches.validate` measured (no model, no I/O). Each measure gets a status from
its 95 % interval:

- ``"predicts"``: the interval lies above 0 (the measure ranks displacement the paper's way);
- ``"wrong way"``: the interval lies below 0 (higher-scored pairs were displaced *less*);
- ``"no evidence"``: the interval includes 0, or too few pairs were measured to have one.

The evidence is, per protocol:

- ``subsets`` (the paper's Section 5, trained the way users train): one DPO run on the ``n`` pairs a measure
  scores lowest and one on the ``n`` it scores highest. ``gap = mean change of log pi(y+|x) on the lowest -
  the same on the highest``; positive = the highest-scored pairs lost more, which is what CHES claims.
- ``probes``: the Spearman correlation of the measure with the displacement of single-pair probes.

:func:`recommend` turns the statuses into one recommendation, ``{"action", "measure", "quantile",
"threshold", "reason"}``:

- some measure predicts: filter by the one whose interval has the largest lower bound (with a caveat when a
  baseline, the length difference, separates displacement about as strongly), dropping the rows
  the evidence is about (``subsets``: the top ``n`` of the scored pool, ``quantile = 1 - n / scored``;
  ``probes``: the filter's default, 0.95); ``threshold`` is that cut's score value on the scored pool, in
  ``max_score`` units. The threshold is the recommendation: ``ches filter --max-score`` applies it to the
  full data and to new data; ``kept`` is the number of pool rows at or below it (ties included) and
  ``quantile`` is then ``kept / scored``, the fraction of the pool it keeps, so the two agree on the pool (on
  other data a quantile cuts at another value: use the threshold);
- DPO did not lower the preferred responses at all: do not filter, there is nothing to prevent;
- a measure ranks displacement the wrong way and none predicts: do not filter;
- every interval includes 0: not enough evidence to say; measure more pairs.
"""

from __future__ import annotations

import math
import shlex

import numpy as np

from ..scores.select import keep_quantile

#: fewer measured pairs than this give no usable interval (for ``subsets``: pairs per subset)
MIN_PAIRS_FOR_VERDICT = 10
DISPLAYED = {"edit_distance": "edit similarity (-edit_distance)"}  # the sign-adjusted measures, as shown


def status(low: float, high: float, pairs: int) -> str:
    """``"predicts"``, ``"wrong way"`` or ``"no evidence"`` from a 95 % interval (positive = predicts).

    >>> status(0.1, 0.5, 64), status(-0.5, -0.1, 64), status(-0.1, 0.5, 64), status(0.1, 0.5, 4)
    ('predicts', 'wrong way', 'no evidence', 'no evidence')
    """
    if pairs < MIN_PAIRS_FOR_VERDICT or not (math.isfinite(low) and math.isfinite(high)) or low == high:
        return "no evidence"
    return "predicts" if low > 0 else "wrong way" if high < 0 else "no evidence"


def cut(similarity: np.ndarray, quantile: float) -> float:
    """The score value at which ``ches.filter(quantile=...)`` cuts ``similarity`` (the largest kept value).

    >>> cut(np.array([4.0, 1.0, 3.0, 2.0]), 0.75)
    3.0
    """
    kept = keep_quantile(similarity, quantile)
    return float(similarity[kept].max()) if len(kept) else float("nan")


def recommend(evidence: dict[str, dict], *, protocol: str, statistic: str, cut_quantile: float,
              pool_scores: dict[str, np.ndarray], displaced_at_all: bool, displacement_note: str) -> dict:
    """One recommendation from per-measure evidence (see the module docstring).

    Args:
        evidence: measure -> ``{"statistic", "ci95", "status", "pairs"}`` (statistic: ``gap`` or Spearman);
            entries not in ``pool_scores`` are baselines: stated in the reason, never recommended.
        protocol: ``"subsets"`` or ``"probes"`` (named in the reason).
        statistic: the statistic's name in the reason (``"gap"``, ``"Spearman"``: the protocol's ``statistic``).
        cut_quantile: the quantile to keep when a measure predicts.
        pool_scores: measure -> sign-adjusted scores of the scored pool (where the threshold is read).
        displaced_at_all: whether DPO lowered the preferred responses' likelihood in the runs at all.
        displacement_note: what the runs showed about that, for the reason.

    >>> evidence = {"ln_ches": {"statistic": -0.3, "ci95": [-0.5, -0.1], "status": "wrong way", "pairs": 64},
    ...             "ches": {"statistic": 0.9, "ci95": [0.4, 1.3], "status": "predicts", "pairs": 64}}
    >>> pools = {"ln_ches": np.arange(8.0), "ches": np.arange(8.0)}
    >>> advice = recommend(evidence, protocol="subsets", statistic="gap", cut_quantile=0.75, pool_scores=pools,
    ...                    displaced_at_all=True, displacement_note="")
    >>> advice["action"], advice["measure"], advice["quantile"], advice["threshold"], advice["kept"]
    ('filter', 'ches', 0.75, 5.0, 6)
    """
    def stated(name: str) -> str:
        entry = evidence[name]
        low, high = entry["ci95"]
        return f"{name} {statistic} {entry['statistic']:+.3f} [{low:+.2f}, {high:+.2f}]"

    measures = [name for name in evidence if name in pool_scores]  # the others are baselines, never recommended
    predicting = [name for name in measures if evidence[name]["status"] == "predicts"]
    wrong = [name for name in measures if evidence[name]["status"] == "wrong way"]
    if predicting:
        best = max(predicting, key=lambda name: evidence[name]["ci95"][0])
        threshold = cut(pool_scores[best], cut_quantile)
        kept = int(np.count_nonzero(pool_scores[best] <= threshold))  # what --max-score keeps: ties too
        others = [stated(name) for name in evidence if name != best]
        reason = (f"{stated(best)} (95% CI above 0: {best} predicts displacement on this model; {protocol} "
                  f"protocol)" + (f"; the others: {'; '.join(others)}" if others else "") + ".")
        baselines = [name for name in evidence if name not in pool_scores and evidence[name]["status"] != "no evidence"
                     and abs(evidence[name]["statistic"]) >= 0.5 * evidence[best]["statistic"]]
        if baselines:
            reason += (f" Caveat: {', '.join(baselines)} alone separates displacement about as strongly "
                       f"({'; '.join(stated(name) for name in baselines)}; its sign only says which way it ranks), so "
                       f"{best} may be tracking the completions' lengths here; the audit after training "
                       "(ches audit) tells the two apart with lengths held fixed.")
        return {"action": "filter", "measure": best, "quantile": kept / len(pool_scores[best]), "threshold": threshold,
                "kept": kept, "reason": reason}
    if not displaced_at_all:
        return {"action": "do not filter", "measure": None, "quantile": None, "threshold": None,
                "reason": f"DPO did not lower the preferred responses' likelihood here ({displacement_note}): there is "
                          "no displacement for a filter to prevent."}
    listed = "; ".join(stated(name) for name in evidence)
    if wrong:
        return {"action": "do not filter", "measure": None, "quantile": None, "threshold": None,
                "reason": f"no measure predicts displacement here ({', '.join(wrong)} ranks it the wrong way; "
                          f"{protocol} protocol): {listed}."}
    return {"action": "not enough evidence", "measure": None, "quantile": None, "threshold": None,
            "reason": f"every interval includes 0 ({protocol} protocol): {listed}; measure more pairs (--n), or "
                      "train longer (--epochs) to say."}


def filter_command(data: str, model: str | None, advice: dict, output: str = "kept.jsonl",
                   scoring: tuple[str, ...] = (), reading: tuple[str, ...] = ()) -> str | None:
    """The ``ches filter`` command that applies a recommendation: ``--measure M --max-score T``, the threshold
    with every digit (so that the row at the cut stays); ``model`` and the ``scoring`` flags (e.g.
    ``--max-length 512``, so that the scores cut are the ones the threshold was read from) when ``data``'s
    score columns are not those scores (``model=None``: they are); ``reading``: flags that say how to read
    ``data`` (``--split``, ``--columns``), passed either way. None when the advice is not to filter.

    >>> filter_command("pairs.jsonl", "sft", {"action": "filter", "measure": "ches", "threshold": 0.1 + 0.2},
    ...                scoring=("--max-length", "512"))
    'ches filter pairs.jsonl --model sft --max-length 512 --measure ches --max-score 0.30000000000000004 --output kept.jsonl'
    """
    if advice["action"] != "filter":
        return None
    words = ["ches", "filter", data, *reading] + (["--model", model, *scoring] if model else [])
    words += ["--measure", advice["measure"], "--max-score", repr(float(advice["threshold"])), "--output", output]
    return shlex.join(words)


def format_recommendation(advice: dict) -> str:
    """The recommendation as the lines ``ches validate`` and ``ches report`` print.

    >>> print(format_recommendation({"action": "do not filter", "measure": None, "reason": "no measure predicts."}))
    recommendation: do not filter. no measure predicts.
    """
    if advice["action"] != "filter":
        return f"recommendation: {advice['action']}. {advice['reason']}"
    lines = [f"recommendation: filter by {advice['measure']}, keeping the {advice['quantile']:.0%} least similar pairs "
             f"(cut at {DISPLAYED.get(advice['measure'], advice['measure'])} <= {advice['threshold']:.6g}). "
             f"{advice['reason']}"]
    if advice.get("command"):
        lines.append(f"  {advice['command']}")
        kept = f" (it keeps {advice['kept']} pool rows, ties included)" if "kept" in advice else ""
        lines.append(f"  (--max-score is the threshold read on the scored pool{kept}; it cuts the full data, and new "
                     "data scored with this model, at the same score; every digit keeps the row at the cut)")
    return "\n".join(lines)
