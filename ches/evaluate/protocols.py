"""The two protocols of ``ches.validate`` (one class each, :data:`PROTOCOLS`): how each gathers its evidence from
a scored :class:`Pool` -- ``subsets``, DPO runs through TRL on the lowest and highest pairs of each measure and on
random ones, each subset once per seed (:func:`subsets_protocol`); ``probes``, single-pair DPO probes spread over
the CHES range (:func:`probes_protocol`) -- and how each turns its runs into evidence per measure, with every
seed's own verdict (:meth:`Protocol.evidence`), into the table ``ches validate`` prints and into the cost and
benefit the advice states.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..data.columns import MEASURES
from ..data.formats import to_pairs
from ..data.inputs import Reading, column, pair_columns
from ..data.tokens import SequencePair, Skip, to_sequences, tokenize_pairs
from ..errors import ChesError
from ..options import DEFAULT_QUANTILE, VALIDATE_PROTOCOLS, ValidateOptions
from ..run.quiet import library_bars_off
from ..scores.select import similarity
from ..scores.stats import bootstrap_interval, difference_interval, partial_spearman, pearson, spearman
from .advice import DISPLAYED, MIN_PAIRS_FOR_VERDICT, pairs_for_gap, pairs_for_spearman, status
from .auditing import AUDIT_MEASURES, LENGTH_BASELINE
from .probes import DPOProbe
from .training import Training, train_and_audit, training_of

#: the probes protocol's DPO settings where not given (its own RMSprop steps; the subsets runs take TRL's config)
PROBE_SETTINGS = {"learning_rate": 1e-6, "beta": 0.1}
#: where the probes protocol truncates, where max_length is not given
PROBE_MAX_LENGTH = 512

def correlation_table(measures: dict[str, np.ndarray], displacement: np.ndarray, chosen_tokens: np.ndarray,
                      rejected_tokens: np.ndarray, resamples: int = 1000, seed: int = 0) -> dict:
    """Spearman/Pearson of each measure (sign: higher = more similar) with displacement, with 95 % bootstrap
    intervals, for total and per-token displacement, and the Spearman correlation controlling for both
    completion lengths.

    Args:
        measures: name -> ``[N]`` sign-adjusted values.
        displacement: ``[N]`` drop of ``log pi(y+|x)`` (positive = the preferred response lost probability).
        chosen_tokens, rejected_tokens: ``[N]`` completion lengths.
    """
    per_token = displacement / chosen_tokens
    lengths = np.column_stack([chosen_tokens, rejected_tokens])
    table = {}
    for name, values in measures.items():
        entry = {}
        for label, target in (("total", displacement), ("per_token", per_token)):
            for stat_name, statistic in (("spearman", spearman), ("pearson", pearson)):
                entry[f"{stat_name}_{label}"] = statistic(values, target)
                entry[f"{stat_name}_{label}_ci95"] = bootstrap_interval(statistic, values, target,
                                                                        resamples=resamples, seed=seed)
        entry["spearman_total_given_lengths"] = partial_spearman(values, displacement, lengths)
        table[name] = entry
    return table



@dataclass(frozen=True)
class Pool:
    """The scored rows :func:`validate` chooses its pairs from (what every protocol's runs read).

    Attributes:
        candidates: the pooled rows as given.
        scored: them, scored with ``logps=True`` (the reference log-probs of the subset runs).
        usable: the positions of the rows that could be scored.
        rows: each pooled row's number in the data.
    """

    candidates: Any
    scored: Any
    usable: np.ndarray
    rows: np.ndarray



def subsets_protocol(pool: Pool, loaded, options: ValidateOptions, training: Training, owned: bool = False) -> dict:
    """The ``subsets`` runs (see :func:`validate`): ``{"subsets": [one entry per subset]}``. Each subset is
    trained once per seed (``options.seeds`` of them: ``seed``, ``seed + 1``, ...), each run a run of
    :class:`ches.trl.DPOTrainer` from the model's weights (:func:`ches.evaluate.training.train_and_audit`); a
    subset two measures share is trained once. An entry keeps its runs (``runs``: each seed's changes, audit and
    TRL log) and, over the seeds, each pair's mean change (``chosen_change``) and the runs' ``audit``."""
    n, scored, usable = options.n, pool.scored, pool.usable
    plan = []  # (name, measure, side, positions in usable)
    for name in (*AUDIT_MEASURES, LENGTH_BASELINE):
        values = _values(scored, name)[usable]
        order = np.argsort(values, kind="stable")
        plan += [(f"{name} lowest", name, "lowest", np.sort(order[:n])), (f"{name} highest", name, "highest",
                                                                          np.sort(order[-n:]))]
    random_rows = np.sort(np.random.default_rng(options.seed).choice(len(usable), size=n, replace=False))
    plan.append(("random", None, "random", random_rows))
    unique = list(dict.fromkeys(tuple(rows.tolist()) for *_, rows in plan))
    seeds = [options.seed + step for step in range(options.seeds)]
    bar = None
    if options.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(unique) * len(seeds), desc="DPO runs", unit="run")
    model = loaded.model
    if owned and training.peft is None and loaded.device.type != "cpu":
        model = model.to("cpu")  # validate's own copy: each run trains a copy of it on the device, so keep it off there
    trained: dict[tuple, dict] = {}
    with tempfile.TemporaryDirectory(prefix="ches-validate-") as folder, library_bars_off(), loggers_at(RUN_LOG_LEVELS):
        for key in unique:
            rows = scored.select(usable[list(key)])
            runs = []
            for seed in seeds:
                runs.append(train_and_audit(model, rows, loaded.tokenizer, training, seed=seed, output_dir=folder,
                                            device=loaded.device, resamples=options.resamples,
                                            num_threads=options.num_threads))
                if bar is not None:
                    bar.update()
            trained[key] = {"runs": runs, **_over_seeds(runs, options)}
    if bar is not None:
        bar.close()
    subsets = []
    for name, measure, side, rows in plan:
        entry = {"name": name, "measure": measure, "side": side, "rows": pool.rows[usable[rows]].tolist(),
                 **trained[tuple(rows.tolist())]}
        if measure is not None:
            values = _values(scored, measure)[usable[rows]]
            entry["scores"] = [float(values.min()), float(values.max())]
        subsets.append(entry)
    return {"subsets": subsets}


def _over_seeds(runs: list[dict], options: ValidateOptions) -> dict:
    """A subset's numbers over its runs: each pair's mean change of log pi(y+|x) and log pi(y-|x) (``chosen_change``,
    ``rejected_change``) and ``audit``: the mean fraction displaced (and each run's), the mean change with its
    bootstrap interval."""
    chosen = np.mean([run["chosen_change"] for run in runs], axis=0)
    rejected = np.mean([run["rejected_change"] for run in runs], axis=0)
    fractions = [run["audit"]["fraction_displaced"] for run in runs]
    audit = {"fraction_displaced": float(np.mean(fractions)), "fraction_displaced_by_seed": fractions,
             "mean_chosen_change": float(chosen.mean()),
             "mean_chosen_change_ci95": list(bootstrap_interval(np.mean, chosen, resamples=options.resamples,
                                                                seed=options.seed)),
             "mean_rejected_change": float(rejected.mean())}
    return {"chosen_change": chosen.tolist(), "rejected_change": rejected.tolist(), "audit": audit}


#: the loggers validate's runs quiet, and how far: ches' per-run audits (the pool's scoring line said it all), and
#: TRL's per-trainer notes (its "prompt is not a prefix" note repeats what the scoring pass reported once)
RUN_LOG_LEVELS = {"ches": logging.WARNING, "trl": logging.ERROR}


@contextlib.contextmanager
def loggers_at(levels: dict[str, int]):
    """Each named logger at its level inside the block, as it was after."""
    before = {name: logging.getLogger(name).level for name in levels}
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    try:
        yield
    finally:
        for name, level in before.items():
            logging.getLogger(name).setLevel(level)


def _values(scored, name: str) -> np.ndarray:
    """A measure's sign-adjusted values (higher = more similar), or the length baseline ``|y+| - |y-|``."""
    if name == LENGTH_BASELINE:
        return (np.asarray(column(scored, "chosen_tokens"), dtype=np.float64)
                - np.asarray(column(scored, "rejected_tokens"), dtype=np.float64))
    return similarity(np.asarray(column(scored, name), dtype=np.float64), name)


def probed_positions(values: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` positions of ``values`` spread over their range: the sorted positions cut into ``n`` runs of equal
    length, one position drawn at random (``seed``) from each, so that two seeds probe different pairs at the same
    ranks.

    >>> probed_positions(np.arange(100.0), 4, seed=0).tolist() == sorted(probed_positions(np.arange(100.0), 4, 0))
    True
    """
    order = np.argsort(values, kind="stable")
    edges = np.linspace(0, len(values), n + 1).round().astype(int)
    generator = np.random.default_rng(seed)
    return np.sort(order[[generator.integers(low, max(high, low + 1)) for low, high in zip(edges[:-1], edges[1:])]])


def probes_protocol(pool: Pool, loaded, options: ValidateOptions, training=None, owned: bool = False) -> dict:
    """The ``probes`` runs (see :func:`validate`): for each seed, ``n`` pairs spread over the CHES range
    (:func:`probed_positions`), each probed alone; ``{"rows", "correlations", "summary", "seeds"}``, the
    correlations over every probed pair and (``seeds``) each seed's own."""
    n, scored, usable = options.n, pool.scored, pool.usable
    learning_rate = PROBE_SETTINGS["learning_rate"] if options.learning_rate is None else options.learning_rate
    beta = PROBE_SETTINGS["beta"] if options.beta is None else options.beta
    probe = DPOProbe(loaded.model, steps=options.steps, learning_rate=learning_rate, beta=beta,
                     pad_id=loaded.tokenizer.pad_token_id or 0)
    ches_values = np.asarray(column(scored, "ches"))[usable]
    rows, per_seed = [], []
    for step in range(options.seeds):
        seed = options.seed + step
        picked = usable[probed_positions(ches_values, n, seed)]
        sequences = probe_sequences(pool.candidates.select(picked), loaded.tokenizer, options.max_length or
                                    PROBE_MAX_LENGTH, Reading(options.columns, options.format))
        changes = run_probes(probe, sequences, options.progress)
        found = _probe_rows(scored.select(picked), pool.rows[picked], changes, seed)
        per_seed.append({"seed": seed, "correlations": _correlations(found, options)})
        rows += found
    changes = np.asarray([[row["chosen_change"], row["rejected_change"]] for row in rows])
    return {"rows": rows, "correlations": _correlations(rows, options), "seeds": per_seed,
            "summary": {"mean_chosen_change": float(changes[:, 0].mean()),
                        "mean_rejected_change": float(changes[:, 1].mean()),
                        "fraction_displaced": float((changes[:, 0] < 0).mean())}}


def _probe_rows(picked_scores, row_numbers, changes: np.ndarray, seed: int) -> list[dict]:
    """One entry per probed pair: its row, seed, changes, measures (sign-adjusted) and lengths."""
    measures = {name: similarity(column(picked_scores, name), name) for name in MEASURES}
    chosen_tokens, rejected_tokens = column(picked_scores, "chosen_tokens"), column(picked_scores, "rejected_tokens")
    return [{"row": int(row), "seed": seed, "displacement": float(-change[0]), "chosen_change": float(change[0]),
             "rejected_change": float(change[1]), **{name: float(measures[name][i]) for name in MEASURES},
             "chosen_tokens": int(chosen_tokens[i]), "rejected_tokens": int(rejected_tokens[i])}
            for i, (row, change) in enumerate(zip(row_numbers, changes))]


def _correlations(rows: list[dict], options: ValidateOptions) -> dict:
    """:func:`correlation_table` of probed pairs (:func:`_probe_rows`)."""
    def values(name: str) -> np.ndarray:
        return np.asarray([row[name] for row in rows], dtype=np.float64)

    return correlation_table({name: values(name) for name in MEASURES}, values("displacement"), values("chosen_tokens"),
                             values("rejected_tokens"), options.resamples, options.seed)


class Protocol:
    """One way :func:`validate` gathers its evidence (one subclass per protocol; :data:`PROTOCOLS` names them,
    and a saved result's ``settings["protocol"]`` is looked up there once, by :func:`protocol_of`).

    Attributes:
        name: as :data:`ches.options.VALIDATE_PROTOCOLS` and the saved result's settings name it.
        statistic: what the evidence measures, as the advice names it (``gap``, ``Spearman``).
        heading: the statistic's column heading in ``ches report``.
        baselines: the measures measured beside :data:`~ches.evaluate.auditing.AUDIT_MEASURES`, never
            recommended (the length baseline).
        pairs_per_n: scored rows needed per pair of :attr:`ches.options.ValidateOptions.n`.
        trains_on_text, held_text: what it trains on and what its pool must hold, in words (``{n}``: ``n``).
    """

    name: ClassVar[str]
    statistic: ClassVar[str]
    heading: ClassVar[str]
    baselines: ClassVar[tuple[str, ...]] = ()
    pairs_per_n: ClassVar[int]
    trains_on_text: ClassVar[str]
    held_text: ClassVar[str]

    def pairs_needed(self, n: int) -> int:
        """Scored rows the protocol needs for ``n`` (:attr:`ches.options.ValidateOptions.n`)."""
        return self.pairs_per_n * n

    def trains_on(self, n: int) -> str:
        """What the protocol trains on, as the error for too small a pool says it."""
        return self.trains_on_text.format(n=n)

    def check(self, options: ValidateOptions) -> None:
        """Refuse a ``pool`` too small for this protocol, before any work."""
        needed = self.pairs_needed(options.n)
        if options.pool is not None and options.pool < needed:
            raise ChesError(f"pool={options.pool} must hold {self.held(options.n)} (at least {needed} rows) for "
                            f"protocol={self.name!r}; raise pool or lower n.")

    def held(self, n: int) -> str:
        """The pairs the pool must hold, as :meth:`check` says it."""
        return self.held_text.format(n=n)

    def training(self, options: ValidateOptions) -> Training | None:
        """How the protocol's runs train with TRL (checked before any work), or None: they do not."""
        return None

    def run(self, pool: Pool, loaded, options: ValidateOptions, training: Training | None = None,
            owned: bool = False) -> dict:
        """The protocol's DPO runs: the part of the result that is its own (``owned``: validate loaded the model)."""
        raise NotImplementedError

    def settings(self, options: ValidateOptions, training: Training | None, device) -> dict:
        """The protocol's own entries of the result's ``settings`` (how its runs trained)."""
        raise NotImplementedError

    def cut_quantile(self, n: int, scored: int) -> float:
        """The quantile to keep when a measure predicts (:func:`ches.evaluate.advice.recommend`)."""
        raise NotImplementedError

    def evidence(self, result: dict, name: str) -> dict:
        """``{"statistic", "ci95", "status", "pairs", "seeds", "seeds_agree", "pairs_needed", ...}`` of measure
        ``name`` (:func:`evidence_of`): the statistic over every seed's runs, each seed's own, and whether their
        verdicts agree (if not, the status is ``"no evidence"``)."""
        raise NotImplementedError

    def benefit(self, result: dict, pool: Pool, measure: str, threshold: float) -> dict:
        """What filtering by ``measure`` at ``threshold`` bought in the runs: how often the kind of pairs it drops
        was displaced, against random pairs (for the advice's cost and benefit)."""
        raise NotImplementedError

    def displacement_seen(self, result: dict) -> dict:
        """Whether DPO lowered any preferred response in the runs, and what the runs showed (for the advice)."""
        raise NotImplementedError

    def lines(self, result: dict) -> list[str]:
        """The protocol's table in what ``ches validate`` prints, with what it means."""
        raise NotImplementedError

    def verdict_evidence(self, result: dict, measure: str) -> tuple[float, float, int, str, str] | str:
        """``(low, high, pairs, stated, few)`` of ``measure`` for :func:`verdict` (``stated``: the statistic with
        its interval; ``few``: the pairs it rests on, as said when they are too few), or why there is none."""
        entry = result["evidence"].get(measure) if "evidence" in result else None
        if entry is None:
            return "it was not measured"
        (low, high), pairs = entry["ci95"], entry["pairs"]
        stated = f"{self.statistic} {entry['statistic']:+.3f}{self.unit}, 95% CI [{low:+.2f}, {high:+.2f}]"
        if entry.get("seeds_agree") is False:
            stated += f"; the seeds disagree ({seeds_stated(entry)})"
        return low, high, pairs, stated, f"{pairs} {self.pairs_word}"

    unit: ClassVar[str] = ""
    pairs_word: ClassVar[str] = "pairs"


def seeds_stated(entry: dict) -> str:
    """Each seed's verdict on a measure, in words (``seed 0: predicts, seed 1: no evidence``)."""
    return ", ".join(f"seed {item['seed']}: {item['status']}" for item in entry.get("seeds", []))


def agreed(combined: str, per_seed: list[dict]) -> tuple[str, bool]:
    """The status of a measure over its seeds: ``combined`` (the status of the statistic over every run) when each
    seed's own verdict is the same, else ``"no evidence"``; and whether they agree.

    >>> agreed("predicts", [{"status": "predicts"}, {"status": "predicts"}])
    ('predicts', True)
    >>> agreed("predicts", [{"status": "predicts"}, {"status": "no evidence"}])
    ('no evidence', False)
    """
    agree = all(item["status"] == combined for item in per_seed)
    return (combined if agree else "no evidence"), agree


def _runs_of(item: dict) -> list[dict]:
    """A subset's runs, one per seed (a result written before seeds: the entry itself, its one run)."""
    return item.get("runs") or [item]


class Subsets(Protocol):
    """DPO runs through TRL on the lowest and the highest ``n`` pairs of each measure and on ``n`` random ones,
    each trained once per seed (:func:`subsets_protocol`); the evidence is the gap between the lowest and the
    highest subset."""

    name: ClassVar[str] = "subsets"
    statistic: ClassVar[str] = "gap"
    heading: ClassVar[str] = "gap (nats)"
    unit: ClassVar[str] = " nats"
    pairs_word: ClassVar[str] = "pairs per subset"
    baselines: ClassVar[tuple[str, ...]] = (LENGTH_BASELINE,)
    pairs_per_n: ClassVar[int] = 2
    trains_on_text: ClassVar[str] = "trains on the {n} lowest and the {n} highest pairs of each measure"
    held_text: ClassVar[str] = "the n={n} lowest and the n highest pairs of each measure"

    def training(self, options):
        return training_of(options.dpo_config, options.peft_config, options.lora_r, **options.shorthands())

    def run(self, pool, loaded, options, training=None, owned=False):
        return subsets_protocol(pool, loaded, options, training, owned)

    def settings(self, options, training, device):
        record = training.record(device)
        config = record["dpo_config"]
        return {"learning_rate": config["learning_rate"], "beta": config["beta"], "epochs": config["num_train_epochs"],
                "batch_size": config["per_device_train_batch_size"], "loss_type": config["loss_type"],
                "lora": None if training.peft is None else {key: record["peft_config"].get(key) for key in
                                                            ("r", "lora_alpha", "lora_dropout", "target_modules")},
                "optimizer": config["optim"], "trainer": record}

    def cut_quantile(self, n, scored):
        return round(1 - n / scored, 4)  # drop the top n of the scored pool: the rows the evidence is about

    def evidence(self, result, name):
        settings = result["settings"]
        resamples, seed = settings.get("resamples", 1000), settings["seed"]
        lowest, highest = (next(item for item in result["subsets"] if item["measure"] == name and item["side"] == side)
                           for side in ("lowest", "highest"))
        per_seed = []
        for low_run, high_run in zip(_runs_of(lowest), _runs_of(highest)):
            low, high = np.asarray(low_run["chosen_change"]), np.asarray(high_run["chosen_change"])
            interval = list(difference_interval(low, high, resamples=resamples, seed=seed))
            per_seed.append({"seed": low_run.get("seed", seed), "statistic": float(low.mean() - high.mean()),
                             "ci95": interval, "status": status(*interval, min(len(low), len(high)))})
        low, high = np.asarray(lowest["chosen_change"]), np.asarray(highest["chosen_change"])
        interval = list(difference_interval(low, high, resamples=resamples, seed=seed))
        pairs = min(len(low), len(high))
        found, agree = agreed(status(*interval, pairs), per_seed)
        spread = float(np.sqrt((low.var(ddof=1) + high.var(ddof=1)) / 2)) if pairs > 1 else float("nan")
        gap = float(low.mean() - high.mean())
        return {"statistic": gap, "ci95": interval, "status": found, "pairs": pairs, "seeds": per_seed,
                "seeds_agree": agree, "sd": spread, "pairs_needed": pairs_for_gap(gap, spread),
                "lowest_fraction_displaced": lowest["audit"]["fraction_displaced"],
                "highest_fraction_displaced": highest["audit"]["fraction_displaced"]}

    def benefit(self, result, pool, measure, threshold):
        dropped = next((item for item in result["subsets"] if item["measure"] == measure and item["side"] == "highest"),
                       None)
        random_run = next((item for item in result["subsets"] if item["side"] == "random"), None)
        if dropped is None or random_run is None:  # a result without those runs: no benefit to state
            return None
        return {"dropped_kind": f"the {len(dropped['rows'])} pairs {measure} scores highest",
                "displaced_dropped": dropped["audit"]["fraction_displaced"],
                "displaced_random": random_run["audit"]["fraction_displaced"],
                "mean_change_dropped": dropped["audit"]["mean_chosen_change"],
                "mean_change_random": random_run["audit"]["mean_chosen_change"]}

    def displacement_seen(self, result):
        fractions = [item["audit"]["fraction_displaced"] for item in result["subsets"]]
        random_run = next(item for item in result["subsets"] if item["side"] == "random")["audit"]
        return {"displaced_at_all": max(fractions) > 0,
                "displacement_note": f"no pair displaced in any of the {len(fractions)} runs; on random pairs the mean "
                                     f"change of log pi(y+|x) was {random_run['mean_chosen_change']:+.3f} nats"}

    def lines(self, result):
        settings = result["settings"]
        epochs = f"{settings['epochs']:g} epoch" + ("s" if settings["epochs"] != 1 else "")
        seeds = settings.get("seeds", 1)
        lora = f", LoRA r={settings['lora']['r']}" if settings.get("lora") else ""
        how = (f"{'TRL ' if 'trainer' in settings else ''}DPO runs ({_losses(settings)}{epochs}, batch "
               f"{settings['batch_size']}, {settings.get('optimizer', 'AdamW')} lr {settings['learning_rate']:g}, beta "
               f"{settings['beta']:g}{lora})")
        lines = [f"{how}, each on {settings['n']} pairs of the {settings['scored']} scored: the lowest and the highest of "
                 f"each measure, and random ones; {seeds} seed{'s' if seeds != 1 else ''} each. Change of log pi(y+|x) "
                 "after the run (negative = the preferred response lost probability), over the seeds.", "",
                 f"{'run':42s} {'displaced':>9s} {'mean change of log pi(y+|x) (95% CI)':>40s}"]
        for item in result["subsets"]:
            audit = item["audit"]
            low, high = audit["mean_chosen_change_ci95"]
            name = item["name"] if item["measure"] is None else f"{DISPLAYED.get(item['measure'], item['measure'])} {item['side']}"
            lines.append(f"{name:42s} {audit['fraction_displaced']:>9.0%} "
                         f"{audit['mean_chosen_change']:>+14.4f} [{low:+.4f}, {high:+.4f}]")
        lines += ["", "gap = mean change on the lowest - on the highest (positive = the highest-scored pairs lost more: "
                  "the measure predicts displacement; the length baseline ranks by |y+| - |y-|); a status needs every "
                  "seed's verdict to agree:"]
        for name, entry in result["evidence"].items():
            low, high = entry["ci95"]
            each = f"  ({seeds_stated(entry)})" if len(entry.get("seeds", [])) > 1 else ""
            lines.append(f"  {DISPLAYED.get(name, name) + (' (baseline)' if name == LENGTH_BASELINE else ''):40s} gap "
                         f"{entry['statistic']:+.4f} [{low:+.4f}, {high:+.4f}]  {entry['status']}{each}")
        return lines


def _losses(settings: dict) -> str:
    """The loss of the runs, as the table names it (nothing for TRL's default, sigmoid)."""
    losses = settings.get("loss_type") or ["sigmoid"]
    losses = losses if isinstance(losses, list) else [losses]
    return "" if losses == ["sigmoid"] else f"loss {'+'.join(losses)}, "


class Probes(Protocol):
    """``n`` single-pair DPO probes spread over the CHES range per seed (:func:`probes_protocol`); the evidence
    is each measure's Spearman correlation with the displacement."""

    name: ClassVar[str] = "probes"
    statistic: ClassVar[str] = "Spearman"
    heading: ClassVar[str] = "Spearman"
    pairs_word: ClassVar[str] = "probed pairs per seed"
    pairs_per_n: ClassVar[int] = 1
    trains_on_text: ClassVar[str] = "probes {n} pairs"
    held_text: ClassVar[str] = "the n={n} pairs probed"

    def run(self, pool, loaded, options, training=None, owned=False):
        return probes_protocol(pool, loaded, options)

    def settings(self, options, training, device):
        return {"steps": options.steps, "optimizer": "RMSprop",
                **{name: PROBE_SETTINGS[name] if getattr(options, name) is None else getattr(options, name)
                   for name in PROBE_SETTINGS}}

    def cut_quantile(self, n, scored):
        return DEFAULT_QUANTILE  # the filter's default

    def evidence(self, result, name):
        entry = result["correlations"][name]
        statistic, interval = entry["spearman_total"], list(entry["spearman_total_ci95"])
        seeds = result.get("seeds") or [{"seed": result.get("settings", {}).get("seed", 0),
                                         "correlations": result["correlations"]}]
        pairs = len(result["rows"]) // len(seeds)
        per_seed = [{"seed": item["seed"], "statistic": item["correlations"][name]["spearman_total"],
                     "ci95": list(item["correlations"][name]["spearman_total_ci95"]),
                     "status": status(*item["correlations"][name]["spearman_total_ci95"], pairs)} for item in seeds]
        found, agree = agreed(status(*interval, pairs), per_seed)
        return {"statistic": statistic, "ci95": interval, "status": found, "pairs": pairs, "seeds": per_seed,
                "seeds_agree": agree, "pairs_needed": pairs_for_spearman(statistic)}

    def benefit(self, result, pool, measure, threshold):
        rows = result["rows"]
        above = [row for row in rows if row[measure] > threshold]
        return {"dropped_kind": f"the {len(above)} probed pairs above the cut",
                "displaced_dropped": float(np.mean([row["chosen_change"] < 0 for row in above])) if above else float("nan"),
                "displaced_random": result["summary"]["fraction_displaced"],
                "mean_change_dropped": float(np.mean([row["chosen_change"] for row in above])) if above else float("nan"),
                "mean_change_random": result["summary"]["mean_chosen_change"]}

    def displacement_seen(self, result):
        fraction = result["summary"]["fraction_displaced"]
        return {"displaced_at_all": fraction > 0, "displacement_note": f"{fraction:.0%} of the probed pairs displaced"}

    def lines(self, result):
        lines = ["Spearman correlation of each measure (sign-adjusted: higher = more similar pair) with the displacement",
                 "it caused (drop of log pi(y+|x) after the probe's DPO steps; positive = the preferred response lost",
                 "probability). Positive = the measure predicts displacement, which is what CHES claims; per-token divides",
                 "the displacement by |y+|; 'given lengths' controls for both completion lengths.", "",
                 f"{'measure':32s} {'Spearman (95% CI)':>24s} {'per-token (95% CI)':>24s} {'given lengths':>14s}"]
        constant = []
        for name, entry in result["correlations"].items():
            shown = DISPLAYED.get(name, name)
            if not np.isfinite(entry["spearman_total"]):
                constant.append(shown)
            lines.append(f"{shown:32s} {_interval(entry, 'spearman_total'):>24s} {_interval(entry, 'spearman_per_token'):>24s} "
                         f"{_number(entry['spearman_total_given_lengths'], '+14.3f'):>14s}")
        if constant:
            lines.append(f"n/a: {', '.join(constant)} had the same value on every probed pair, so it cannot be correlated.")
        summary = result["summary"]
        lines.append(f"mean change of log pi(y+|x): {summary['mean_chosen_change']:+.4f} nats; of log pi(y-|x): "
                     f"{summary['mean_rejected_change']:+.4f}; pairs displaced (y+ lost probability): "
                     f"{summary['fraction_displaced']:.0%}")
        for name, entry in result.get("evidence", {}).items():
            if len(entry.get("seeds", [])) > 1:
                lines.append(f"  {DISPLAYED.get(name, name)}: {seeds_stated(entry)}")
        return lines

    def verdict_evidence(self, result, measure):
        entry = result["correlations"].get(measure)
        if entry is None or not np.isfinite(entry["spearman_total"]):
            return "it was not measured, or constant over the probed pairs"
        if "evidence" not in result:  # a bare table (the docstring's): its correlations alone
            low, high = entry["spearman_total_ci95"]
            pairs = len(result["rows"]) if "rows" in result else MIN_PAIRS_FOR_VERDICT
            return (low, high, pairs, f"Spearman {entry['spearman_total']:+.3f}, 95% CI [{low:+.2f}, {high:+.2f}]",
                    f"{pairs} probed pairs" if "rows" in result else "the probed pairs")
        return super().verdict_evidence(result, measure)


#: the protocols by name, in the order of :data:`ches.options.VALIDATE_PROTOCOLS`
PROTOCOLS: dict[str, type[Protocol]] = {cls.name: cls for cls in (Subsets, Probes)}
assert tuple(PROTOCOLS) == VALIDATE_PROTOCOLS


def protocol_of(name: str) -> Protocol:
    """The protocol called ``name`` (``settings["protocol"]`` of a result, or :attr:`ValidateOptions.protocol`).

    >>> protocol_of("subsets").pairs_needed(16), protocol_of("probes").cut_quantile(16, 320)
    (32, 0.95)
    """
    if name not in PROTOCOLS:
        raise ChesError(f"unknown protocol {name!r}; use one of {', '.join(PROTOCOLS)}.")
    return PROTOCOLS[name]()


def _protocol_of_result(result: dict) -> Protocol:
    """The protocol of a result (a result with no settings, as the table's tests build it: ``probes``)."""
    return protocol_of(result.get("settings", {}).get("protocol", Probes.name))


def evidence_of(result: dict) -> dict[str, dict]:
    """Per measure of :data:`~ches.evaluate.auditing.AUDIT_MEASURES`: the statistic that says whether it predicts
    displacement, its 95 % interval and :func:`ches.evaluate.advice.status` (module docstring of :mod:`ches.evaluate.advice`).

    ``subsets``: ``gap = mean change of log pi(y+|x) on the lowest subset - on the highest`` (bootstrap over
    both runs' pairs), and the same for the length-only baseline (``|y+| - |y-|``, never recommended: it
    says how much of a gap length alone explains); ``probes``: the Spearman correlation with the
    displacement.
    """
    protocol = protocol_of(result["settings"]["protocol"])
    return {name: protocol.evidence(result, name) for name in (*AUDIT_MEASURES, *protocol.baselines)}


def probe_sequences(dataset, tokenizer, max_length: int | None,
                    columns: Reading | dict[str, str] | None = None) -> list[SequencePair]:
    """The token sequences of a dataset's pairs (``prompt``/``chosen``/``rejected`` columns, or those ``columns``
    maps them to, or a layout's rows: a :class:`~ches.data.inputs.Reading`) as ``ches.score`` runs them, for :func:`run_probes`; a row that cannot be scored raises
    :class:`ChesError`."""
    plans = [to_sequences(pair, max_length) for pair in tokenize_pairs(to_pairs(pair_columns(dataset, columns)), tokenizer)]
    skipped = [(row, plan.reason) for row, plan in enumerate(plans) if isinstance(plan, Skip)]
    if skipped:
        raise ChesError(f"row {skipped[0][0]} cannot be probed: {skipped[0][1]}")
    return plans


def run_probes(probe: DPOProbe, sequences: list[SequencePair], progress: bool = False) -> np.ndarray:
    """``[N, 2]`` changes of log pi(y+|x) and log pi(y-|x), one single-pair DPO probe per pair."""
    iterator = sequences
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(sequences, desc="DPO probes", unit="pair")
    changes = []
    for pair in iterator:
        result = probe.run([pair])
        changes.append([result.chosen_change.item(), result.rejected_change.item()])
    return np.asarray(changes)


def _interval(entry: dict, key: str) -> str:
    value, (low, high) = entry[key], entry[f"{key}_ci95"]
    if not np.isfinite(value):
        return "n/a"
    return f"{value:+.3f} [{low:+.2f}, {high:+.2f}]"


def _number(value: float, form: str) -> str:
    return format(value, form) if np.isfinite(value) else "n/a"


