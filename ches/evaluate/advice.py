"""From a validation to a decision: which measure to filter by on this model, and where to cut.

Pure functions of what :func:`ches.validate` measured (no model, no I/O). Each measure gets a status from
its 95 % interval:

- ``"predicts"``: the interval lies above 0 (the measure ranks displacement the paper's way);
- ``"wrong way"``: the interval lies below 0 (higher-scored pairs were displaced *less*);
- ``"no evidence"``: the interval includes 0, or too few pairs were measured to have one, or the seeds' own
  verdicts differ (each measure is measured once per seed, and a status needs all of them to agree).

The evidence is, per protocol:

- ``subsets`` (the paper's Section 5, trained the way users train): one DPO run on the ``n`` pairs a measure
  scores lowest and one on the ``n`` it scores highest. ``gap = mean change of log pi(y+|x) on the lowest -
  the same on the highest``; positive = the highest-scored pairs lost more, which is what CHES claims.
- ``probes``: the Spearman correlation of the measure with the displacement of single-pair probes.

:func:`recommend` turns the statuses into one recommendation, ``{"action", "measure", "quantile",
"threshold", "reason"}``:

- some measure predicts, from at least :data:`MIN_N` pairs (per subset, or probed per seed) and
  :data:`MIN_SEEDS` seeds that agree: filter by the one whose interval has the largest lower bound (with a caveat when a
  baseline, the length difference, separates displacement about as strongly), dropping the rows
  the evidence is about (``subsets``: the top ``n`` of the scored pool, ``quantile = 1 - n / scored``;
  ``probes``: the filter's default, 0.95); ``threshold`` is that cut's score value on the scored pool, in
  ``max_score`` units. The threshold is the recommendation: ``ches filter --max-score`` applies it to the
  full data and to new data; ``kept`` is the number of pool rows at or below it (ties included) and
  ``quantile`` is then ``kept / scored``, the fraction of the pool it keeps, so the two agree on the pool (on
  other data a quantile cuts at another value: use the threshold);
- DPO did not lower the preferred responses at all: do not filter, there is nothing to prevent;
- a measure ranks displacement the wrong way and none predicts: do not filter;
- every interval includes 0, or a measure predicts from fewer pairs or seeds than that: not enough evidence
  to act on, with the ``n`` that would resolve the largest effect measured (:func:`pairs_for_gap`,
  :func:`pairs_for_spearman`).

A recommendation to filter states its cost next to its benefit: the rows the cut drops (``cost``), and how
often the pairs of the kind it drops were displaced in the runs against random pairs (``benefit``).

How many pairs. With ``n`` pairs per subset and a per-pair standard deviation ``sd`` of the change of log
pi(y+|x), the gap's standard error is ``sd * sqrt(2 / n)``; its 95 % interval excludes 0 four times in five
(80 % power) when the gap is at least ``(1.96 + 0.84) * sd * sqrt(2 / n)`` (:func:`resolvable_gap`): 0.99 sd
at n = 16, 0.70 sd at 32, 0.50 sd at 64 (the default), 0.35 sd at 128. A difference in the fraction
displaced between two subsets has a standard error of at most ``sqrt(0.5 / n)``: at n = 16 only a difference
of about 50 points is resolved, at 64 about 25. Filtering on less than a large effect (0.7 sd) is not acted
on: :data:`MIN_N` = 32. For a Spearman correlation over ``n`` probes (Fisher z, standard error
``1 / sqrt(n - 3)``): ``tanh(2.8 / sqrt(n - 3))``, 0.48 at 32 and 0.34 at 64.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Callable

import numpy as np

from ..scores.select import keep_quantile

#: fewer measured pairs than this give no usable interval (for ``subsets``: pairs per subset)
MIN_PAIRS_FOR_VERDICT = 10
#: the fewest pairs (per subset, or probed per seed) from which a recommendation to filter is made (module docstring)
MIN_N = 32
#: the fewest seeds, their verdicts agreeing, from which a recommendation to filter is made
MIN_SEEDS = 2
#: standard normal quantiles: a two-sided 95 % interval, and 80 % power
Z_95, Z_POWER = 1.959964, 0.841621
DISPLAYED = {"edit_distance": "edit similarity (-edit_distance)"}  # the sign-adjusted measures, as shown


def status(low: float, high: float, pairs: int) -> str:
    """``"predicts"``, ``"wrong way"`` or ``"no evidence"`` from a 95 % interval (positive = predicts).

    >>> status(0.1, 0.5, 64), status(-0.5, -0.1, 64), status(-0.1, 0.5, 64), status(0.1, 0.5, 4)
    ('predicts', 'wrong way', 'no evidence', 'no evidence')
    """
    if pairs < MIN_PAIRS_FOR_VERDICT or not (math.isfinite(low) and math.isfinite(high)) or low == high:
        return "no evidence"
    return "predicts" if low > 0 else "wrong way" if high < 0 else "no evidence"


def resolvable_gap(n: int, sd: float) -> float:
    """The smallest gap between two subsets of ``n`` pairs each (per-pair standard deviation ``sd``) whose 95 %
    interval excludes 0 with 80 % probability (module docstring).

    >>> [round(resolvable_gap(n, 1.0), 2) for n in (16, 32, 64, 128)]
    [0.99, 0.7, 0.5, 0.35]
    """
    return (Z_95 + Z_POWER) * sd * math.sqrt(2 / n)


def pairs_for_gap(gap: float, sd: float) -> int | None:
    """Pairs per subset that resolve a gap of ``gap`` (:func:`resolvable_gap` solved for ``n``), at least
    :data:`MIN_N`; None when there is no gap to resolve.

    >>> pairs_for_gap(0.5, 1.0), pairs_for_gap(0.1, 1.0), pairs_for_gap(0.0, 1.0)
    (63, 1570, None)
    """
    if not (math.isfinite(gap) and math.isfinite(sd)) or gap == 0:
        return None
    return max(MIN_N, math.ceil(2 * ((Z_95 + Z_POWER) * sd / gap) ** 2))


def pairs_for_spearman(rho: float) -> int | None:
    """Probed pairs that resolve a Spearman correlation of ``rho`` (Fisher z), at least :data:`MIN_N`; None
    when there is none.

    >>> pairs_for_spearman(0.35), pairs_for_spearman(0.1), pairs_for_spearman(0.0)
    (62, 783, None)
    """
    if not math.isfinite(rho) or rho == 0 or abs(rho) >= 1:
        return None
    return max(MIN_N, math.ceil(((Z_95 + Z_POWER) / math.atanh(abs(rho))) ** 2 + 3))


def cut(similarity: np.ndarray, quantile: float) -> float:
    """The score value at which ``ches.filter(quantile=...)`` cuts ``similarity`` (the largest kept value).

    >>> cut(np.array([4.0, 1.0, 3.0, 2.0]), 0.75)
    3.0
    """
    kept = keep_quantile(similarity, quantile)
    return float(similarity[kept].max()) if len(kept) else float("nan")


def recommend(evidence: dict[str, dict], *, protocol: str, statistic: str, cut_quantile: float,
              pool_scores: dict[str, np.ndarray], displaced_at_all: bool, displacement_note: str,
              seeds: int = MIN_SEEDS, largest_n: int | None = None,
              benefit: Callable[[str, float], dict] | None = None) -> dict:
    """One recommendation from per-measure evidence (see the module docstring).

    Args:
        evidence: measure -> ``{"statistic", "ci95", "status", "pairs", ...}`` (statistic: ``gap`` or Spearman;
            ``pairs_needed``, if there, the ``n`` that would resolve it); entries not in ``pool_scores`` are
            baselines: stated in the reason, never recommended.
        protocol: ``"subsets"`` or ``"probes"`` (named in the reason).
        statistic: the statistic's name in the reason (``"gap"``, ``"Spearman"``: the protocol's ``statistic``).
        cut_quantile: the quantile to keep when a measure predicts.
        pool_scores: measure -> sign-adjusted scores of the scored pool (where the threshold is read).
        displaced_at_all: whether DPO lowered the preferred responses' likelihood in the runs at all.
        displacement_note: what the runs showed about that, for the reason.
        seeds: the seeds each measure was measured with (their verdicts agree where the status says so).
        largest_n: the largest ``n`` the pool allows (said where more pairs are needed).
        benefit: ``(measure, threshold) -> {"dropped_kind", "displaced_dropped", "displaced_random",
            "mean_change_dropped", "mean_change_random"}``: what the runs showed of the pairs the cut drops.

    >>> evidence = {"ln_ches": {"statistic": -0.3, "ci95": [-0.5, -0.1], "status": "wrong way", "pairs": 64},
    ...             "ches": {"statistic": 0.9, "ci95": [0.4, 1.3], "status": "predicts", "pairs": 64}}
    >>> pools = {"ln_ches": np.arange(8.0), "ches": np.arange(8.0)}
    >>> advice = recommend(evidence, protocol="subsets", statistic="gap", cut_quantile=0.75, pool_scores=pools,
    ...                    displaced_at_all=True, displacement_note="")
    >>> advice["action"], advice["measure"], advice["quantile"], advice["threshold"], advice["kept"], advice["cost"]
    ('filter', 'ches', 0.75, 5.0, 6, {'rows_dropped': 2, 'fraction_dropped': 0.25})
    >>> recommend(evidence, protocol="subsets", statistic="gap", cut_quantile=0.75, pool_scores=pools, seeds=1,
    ...           displaced_at_all=True, displacement_note="")["action"]
    'not enough evidence'
    """
    def stated(name: str) -> str:
        entry = evidence[name]
        low, high = entry["ci95"]
        return f"{name} {statistic} {entry['statistic']:+.3f} [{low:+.2f}, {high:+.2f}]"

    nothing = {"measure": None, "quantile": None, "threshold": None}
    measures = [name for name in evidence if name in pool_scores]  # the others are baselines, never recommended
    predicting = [name for name in measures if evidence[name]["status"] == "predicts"]
    wrong = [name for name in measures if evidence[name]["status"] == "wrong way"]
    if predicting:
        best = max(predicting, key=lambda name: evidence[name]["ci95"][0])
        pairs = evidence[best]["pairs"]
        if pairs < MIN_N or seeds < MIN_SEEDS:
            short = (f"{pairs} pairs (n; at least {MIN_N} are needed to act on it)" if pairs < MIN_N else
                     f"one seed (at least {MIN_SEEDS}, whose verdicts agree, are needed to act on it: --seeds {MIN_SEEDS})")
            return {"action": "not enough evidence", **nothing, "pairs_needed": max(MIN_N, pairs),
                    "reason": f"{stated(best)} ({protocol} protocol) says {best} predicts displacement, but from {short}; "
                              f"rerun with --n {max(MIN_N, pairs)} --seeds {max(MIN_SEEDS, seeds)} before filtering on it."}
        threshold = cut(pool_scores[best], cut_quantile)
        kept = int(np.count_nonzero(pool_scores[best] <= threshold))  # what --max-score keeps: ties too
        scored = len(pool_scores[best])
        others = [stated(name) for name in evidence if name != best]
        reason = (f"{stated(best)} (95% CI above 0 in each of {seeds} seeds: {best} predicts displacement on this "
                  f"model; {protocol} protocol, {pairs} pairs)" + (f"; the others: {'; '.join(others)}" if others else "") + ".")
        baselines = [name for name in evidence if name not in pool_scores and evidence[name]["status"] != "no evidence"
                     and abs(evidence[name]["statistic"]) >= 0.5 * evidence[best]["statistic"]]
        if baselines:
            reason += (f" Caveat: {', '.join(baselines)} alone separates displacement about as strongly "
                       f"({'; '.join(stated(name) for name in baselines)}; its sign only says which way it ranks), so "
                       f"{best} may be tracking the completions' lengths here; the audit after training "
                       "(ches audit) tells the two apart with lengths held fixed.")
        advice = {"action": "filter", "measure": best, "quantile": kept / scored, "threshold": threshold,
                  "kept": kept, "cost": {"rows_dropped": scored - kept, "fraction_dropped": (scored - kept) / scored},
                  "reason": reason}
        measured = benefit(best, threshold) if benefit is not None else None
        if measured is not None:
            advice["benefit"] = measured
        return advice
    if not displaced_at_all:
        return {"action": "do not filter", **nothing,
                "reason": f"DPO did not lower the preferred responses' likelihood here ({displacement_note}): there is "
                          "no displacement for a filter to prevent."}
    listed = "; ".join(stated(name) for name in evidence)
    if wrong:
        return {"action": "do not filter", **nothing,
                "reason": f"no measure predicts displacement here ({', '.join(wrong)} ranks it the wrong way; "
                          f"{protocol} protocol): {listed}."}
    strongest = max(measures, key=lambda name: evidence[name]["statistic"], default=None)
    needed = evidence[strongest].get("pairs_needed") if strongest is not None else None
    if needed is not None and evidence[strongest]["statistic"] > 0:
        allowed = f"; this pool allows n up to {largest_n}" if largest_n is not None else ""
        more = (f"the largest effect, {stated(strongest)}, would take about n={needed} pairs to resolve (80 % power"
                f"{allowed})")
    else:
        more = "no measure showed an effect in the paper's direction to size a larger run by"
        needed = None
    return {"action": "not enough evidence", **nothing, "pairs_needed": needed,
            "reason": f"no measure's 95% interval is clear of 0 in every seed ({protocol} protocol): {listed}; {more}."}


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
    if "cost" in advice:
        lines.append(f"  {cost_and_benefit(advice)}")
    if advice.get("command"):
        lines.append(f"  {advice['command']}")
        kept = f" (it keeps {advice['kept']} pool rows, ties included)" if "kept" in advice else ""
        lines.append(f"  (--max-score is the threshold read on the scored pool{kept}; it cuts the full data, and new "
                     "data scored with this model, at the same score; every digit keeps the row at the cut)")
    return "\n".join(lines)


def cost_and_benefit(advice: dict) -> str:
    """A filter recommendation's cost (rows dropped) next to its benefit (how often the kind of pairs it drops
    was displaced in the runs, against random pairs), in one line.

    >>> print(cost_and_benefit({"cost": {"rows_dropped": 64, "fraction_dropped": 0.05}, "benefit": {
    ...     "dropped_kind": "the 64 pairs ches scores highest", "displaced_dropped": 0.88, "displaced_random": 0.28,
    ...     "mean_change_dropped": -27.0, "mean_change_random": 6.8}}))
    cost: drops 64 rows of the pool (5.0%). benefit: in the runs, 88% of the 64 pairs ches scores highest were displaced (mean change of log pi(y+|x) -27.00 nats) against 28% of random pairs (+6.80): about 38 fewer displaced pairs per 64 dropped than dropping at random.
    """
    cost = advice["cost"]
    text = f"cost: drops {cost['rows_dropped']} rows of the pool ({cost['fraction_dropped']:.1%})."
    benefit = advice.get("benefit")
    if not benefit or not math.isfinite(benefit["displaced_dropped"]):
        return text
    avoided = (benefit["displaced_dropped"] - benefit["displaced_random"]) * cost["rows_dropped"]
    return (f"{text} benefit: in the runs, {benefit['displaced_dropped']:.0%} of {benefit['dropped_kind']} were displaced "
            f"(mean change of log pi(y+|x) {benefit['mean_change_dropped']:+.2f} nats) against "
            f"{benefit['displaced_random']:.0%} of random pairs ({benefit['mean_change_random']:+.2f}): about "
            f"{avoided:.0f} {'fewer' if avoided >= 0 else 'more'} displaced pairs per {cost['rows_dropped']} dropped "
            "than dropping at random.")
