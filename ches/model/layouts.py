"""How sequences meet the model: four layouts, one class each, and the choice of one by estimated cost.

Every layout gives the same hidden states, to float rounding; they differ in what the model computes:

- :class:`Padded`: one sequence per row, length-sorted, right-padded (to a multiple of 64 on CUDA);
- :class:`Packed`: sequences back to back, position ids restarting at 0, padding-free attention;
- :class:`PrefixShared`: each pair as ``prompt | chosen | rejected`` with the prompt written once (the
  rejected tokens attend to the prompt and to themselves), pairs packed back to back;
- :class:`SharedPrompt`: pair by pair through a KV cache cut back to the prompt (batch size one).

Each class has its cost estimate (:meth:`Layout.work`), its probe on the model (:meth:`Layout.on`: the
layout set up to run on this model, or None when the model would not give the same hidden states), its
run (:meth:`Layout.run`) and the layout to fall back to (:attr:`Layout.fallback`). A new layout is one
new class in :data:`LAYOUT_CLASSES`.

The estimate counts what each layout makes the model compute, per decoder layer:
``cost = 2 * (4 * H**2 + 3 * H * I) * (token_slots + passes * PASS_OVERHEAD) + 4 * H * attended_pairs``:
the projections and MLP of every token slot, padding included, plus the query-key products of
attention (``H`` the hidden size, ``I`` the MLP width), plus a fixed cost per forward pass, in tokens'
worth of work, for what does not grow with the batch (kernel launches, Python, weights read from
memory). :data:`PASS_OVERHEAD` was fitted to the batch-one ``shared_prompt`` layout against
``prefix_shared`` on the same hh-rlhf rows: 72 tokens on a 2-core CPU (7,942 vs 13,306 tokens/s),
6,000 on an H200 (3,826 vs 198,748 tokens/s; docs/performance.md). The cheapest layout whose probe
passes on the model runs; the choice, the estimates and any fallback are recorded in the run's metadata.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..data.tokens import TokenSequence
from ..options import LAYOUTS
from .attention import packed_attention
from .batches import group_length, pad_multiple, padded_length
from .engine import (
    HiddenSums,
    OneRow,
    PackedRows,
    PaddedRows,
    hidden_sums,
    packing_is_exact,
    prefix_sharing_is_exact,
    shared_prompt_is_exact,
    shared_prompt_sums,
)
from .logps import LMHead

logger = logging.getLogger("ches")

PASS_OVERHEAD = {"cuda": 6000, "cpu": 72}  # tokens' worth of work per forward pass (fitted: module docstring)
Pairs = Sequence[tuple[TokenSequence, TokenSequence]]


@dataclass(frozen=True)
class LayoutWork:
    """What a layout makes each decoder layer compute: token slots (padding included), the query-key
    products of attention, and the number of forward passes."""

    token_slots: float
    attended: float
    passes: float


@dataclass(frozen=True)
class Layout:
    """One way to run sequences through the model (see the module docstring for the four).

    Attributes:
        padding_free: the rows run on ches' padding-free kernel (:mod:`ches.model.attention`), switched on for
            the run by :meth:`on`.
    """

    name: ClassVar[str]
    fallback: ClassVar[str | None]  # the layout to try when the model cannot run this one exactly
    padding_free: bool = False

    def work(self, pairs: Pairs, *, device_type: str, batch_tokens: int) -> LayoutWork:
        """What this layout makes each decoder layer compute for ``pairs``, from their lengths alone."""
        raise NotImplementedError

    def on(self, loaded, scope: contextlib.ExitStack) -> Layout | None:
        """This layout set up for ``loaded`` (an attention kernel it needs is switched on until ``scope``
        closes), if a probe on the model gives the same hidden states as :class:`Padded`; else None."""
        raise NotImplementedError

    def run(self, sequences: Sequence[TokenSequence], groups: Sequence[Sequence[int]], loaded, *, batch_tokens: int,
            on_done: Callable[[list[int]], None] | None = None, head: LMHead | None = None) -> HiddenSums:
        """The hidden sums of ``sequences`` (with ``head``: their completions' log-probabilities too);
        ``groups`` are the indices of sequences sharing a prompt."""
        raise NotImplementedError

    def token_slots(self, sequences: Sequence[TokenSequence], groups: Sequence[Sequence[int]]) -> int:
        """Token slots this layout sends to the model for ``sequences`` (padding aside)."""
        return sum(len(sequence.input_ids) for sequence in sequences)


@dataclass(frozen=True)
class Padded(Layout):
    """One sequence per row, length-sorted, right-padded: runs on any model."""

    name: ClassVar[str] = "padded"
    fallback: ClassVar[str | None] = None

    def work(self, pairs, *, device_type, batch_tokens):
        ordered, multiple = np.sort(_lengths(pairs).reshape(-1))[::-1], pad_multiple(device_type)
        slots = attended = passes = 0.0
        start = 0
        while start < len(ordered):
            width = padded_length(int(ordered[start]), multiple)
            rows = min(max(1, batch_tokens // width), len(ordered) - start)
            slots += rows * width
            attended += rows * width * (width + 1) / 2
            start += rows
            passes += 1
        return LayoutWork(slots, attended, passes)

    def on(self, loaded, scope):
        return self

    def run(self, sequences, groups, loaded, *, batch_tokens, on_done=None, head=None):
        return _engine(sequences, None, loaded, PaddedRows(), batch_tokens, on_done, head)


@dataclass(frozen=True)
class Packed(Layout):
    """Sequences back to back in rows, each attending to itself only: on ches' padding-free kernel where
    the probe passes, else on the model's own (masked) kernel in rows as long as the longest sequence."""

    name: ClassVar[str] = "packed"
    fallback: ClassVar[str | None] = "padded"

    def work(self, pairs, *, device_type, batch_tokens):
        lengths = _lengths(pairs)
        tokens = float(lengths.sum())
        return LayoutWork(tokens, float(_causal(lengths).sum()), np.ceil(tokens / batch_tokens))

    def on(self, loaded, scope):
        if _switched(loaded, scope, packing_is_exact, padding_free=True):
            return Packed(padding_free=True)
        return Packed() if packing_is_exact(loaded.body, loaded.device, loaded.vocab_size) else None

    def run(self, sequences, groups, loaded, *, batch_tokens, on_done=None, head=None):
        return _engine(sequences, None, loaded, OneRow() if self.padding_free else PackedRows(), batch_tokens, on_done,
                       head)


@dataclass(frozen=True)
class PrefixShared(Layout):
    """Each group (a pair, or all responses of a prompt) as ``prompt | rest 1 | rest 2 | ...``, groups back
    to back: the prompt is written once. Runs on ches' padding-free kernel only."""

    name: ClassVar[str] = "prefix_shared"
    fallback: ClassVar[str | None] = "packed"

    def work(self, pairs, *, device_type, batch_tokens):
        lengths, prompt = _lengths(pairs), _prompts(pairs)
        tails = lengths[:, 1] - prompt  # the rejected sequence past the prompt attends to the prompt and itself
        tokens = float(lengths.sum() - prompt.sum())
        attended = float(_causal(lengths)[:, 0].sum() + (tails * prompt + tails * (tails + 1) / 2).sum())
        return LayoutWork(tokens, attended, np.ceil(tokens / batch_tokens))

    def on(self, loaded, scope):
        return PrefixShared(padding_free=True) if _switched(loaded, scope, prefix_sharing_is_exact) else None

    def run(self, sequences, groups, loaded, *, batch_tokens, on_done=None, head=None):
        return _engine(sequences, groups, loaded, OneRow(), batch_tokens, on_done, head)

    def token_slots(self, sequences, groups):
        return sum(group_length([sequences[index] for index in group]) for group in groups)


@dataclass(frozen=True)
class SharedPrompt(Layout):
    """Pair by pair: the chosen sequence with a KV cache, cut back to the prompt for the rejected one (batch
    size one). Groups are ``(chosen, rejected)`` pairs; a sequence on its own runs as a padded row."""

    name: ClassVar[str] = "shared_prompt"
    fallback: ClassVar[str | None] = "padded"

    def work(self, pairs, *, device_type, batch_tokens):
        shared = PrefixShared().work(pairs, device_type=device_type, batch_tokens=batch_tokens)
        return LayoutWork(shared.token_slots, shared.attended, 2.0 * len(pairs))  # two passes a pair

    def on(self, loaded, scope):
        return self if shared_prompt_is_exact(loaded.body, loaded.device, loaded.vocab_size) else None

    def run(self, sequences, groups, loaded, *, batch_tokens, on_done=None, head=None):
        if all(len(group) == 1 for group in groups):
            return Padded().run(sequences, groups, loaded, batch_tokens=batch_tokens, on_done=on_done, head=head)
        return shared_prompt_sums(loaded.body, sequences, groups=groups, hidden_size=loaded.hidden_size,
                                  device=loaded.device, on_done=on_done, head=head)

    def token_slots(self, sequences, groups):
        return PrefixShared().token_slots(sequences, groups)


#: the layouts, in the order of preference at equal estimated cost (:data:`ches.options.LAYOUTS` names them)
LAYOUT_CLASSES: dict[str, type[Layout]] = {cls.name: cls for cls in (PrefixShared, Packed, Padded, SharedPrompt)}
assert tuple(LAYOUT_CLASSES) == LAYOUTS


def layout_of(name: str) -> Layout:
    """The layout called ``name``, not yet set up for a model.

    >>> layout_of("packed")
    Packed(padding_free=False)
    """
    return LAYOUT_CLASSES[name]()


@dataclass(frozen=True)
class LayoutChoice:
    """The layout a run uses, set up for its model, and why (``reason`` goes into the run metadata).

    Attributes:
        strategy: the :class:`Layout`, as :meth:`Layout.on` set it up.
        how: how it was chosen (by estimated cost, requested, or as a fallback).
        estimate: each layout's estimated cost relative to the cheapest.
    """

    strategy: Layout
    how: str
    estimate: str = ""

    @property
    def layout(self) -> str:
        return self.strategy.name

    @property
    def padding_free(self) -> bool:
        return self.strategy.padding_free

    @property
    def reason(self) -> str:
        return f"{self.how}; {self.estimate}" if self.estimate else self.how


def layout_work(pairs: Pairs, *, device_type: str, batch_tokens: int) -> dict[str, LayoutWork]:
    """:class:`LayoutWork` of each layout for ``pairs``, from their lengths alone.

    >>> pair = (TokenSequence(list(range(8)), 5, 7), TokenSequence(list(range(9)), 5, 8))  # prompt: 6 tokens
    >>> work = layout_work([pair], device_type="cpu", batch_tokens=64)
    >>> work["packed"].token_slots, work["prefix_shared"].token_slots
    (17.0, 11.0)
    """
    if not pairs:
        return {name: LayoutWork(0.0, 0.0, 0.0) for name in LAYOUTS}
    return {name: cls().work(pairs, device_type=device_type, batch_tokens=batch_tokens)
            for name, cls in LAYOUT_CLASSES.items()}


def layout_costs(pairs: Pairs, *, hidden_size: int, intermediate_size: int, device_type: str,
                 batch_tokens: int) -> dict[str, float]:
    """Estimated cost of each layout for ``pairs`` (see the module docstring), in FLOPs per decoder layer.

    >>> pair = (TokenSequence(list(range(8)), 5, 7), TokenSequence(list(range(9)), 5, 8))
    >>> costs = layout_costs([pair] * 4, hidden_size=8, intermediate_size=16, device_type="cpu", batch_tokens=64)
    >>> bool(costs["prefix_shared"] < costs["packed"] <= costs["padded"])
    True
    """
    per_token = 2 * (4 * hidden_size**2 + 3 * hidden_size * intermediate_size)
    per_attended = 4 * hidden_size
    overhead = PASS_OVERHEAD.get(device_type, PASS_OVERHEAD["cuda"])
    return {layout: per_token * (work.token_slots + work.passes * overhead) + per_attended * work.attended
            for layout, work in layout_work(pairs, device_type=device_type, batch_tokens=batch_tokens).items()}


def by_cost(costs: dict[str, float]) -> list[str]:
    """Layouts from cheapest to dearest (ties in the order of :data:`LAYOUTS`).

    >>> by_cost({"prefix_shared": 2.0, "packed": 2.0, "padded": 3.0, "shared_prompt": 1.0})
    ['shared_prompt', 'prefix_shared', 'packed', 'padded']
    """
    return sorted(LAYOUTS, key=lambda layout: (costs[layout], LAYOUTS.index(layout)))


def describe(costs: dict[str, float], pairs: Pairs, device_type: str) -> str:
    """One line: each layout's estimated cost relative to the cheapest, and the prompt's share of the tokens."""
    cheapest = min(costs.values()) or 1.0
    prompt = sum(chosen.start + 1 for chosen, _ in pairs)
    tokens = sum(len(chosen.input_ids) + len(rejected.input_ids) for chosen, rejected in pairs) or 1
    relative = ", ".join(f"{layout} {costs[layout] / cheapest:.2f}" for layout in sorted(costs, key=costs.get))
    return (f"estimated cost on {device_type} relative to the cheapest: {relative} (prompts are "
            f"{2 * prompt / tokens:.0%} of the tokens of padded/packed rows)")


def resolve_layout(requested: str | None, loaded, pairs: Pairs, batch_tokens: int, scope: contextlib.ExitStack, *,
                   estimate: str | None = None, asked: str = "requested") -> LayoutChoice:
    """The layout to run, set up for ``loaded``: ``requested``, or the cheapest by :func:`layout_costs` of
    ``pairs``; in either case only if a probe on the model shows it gives the same hidden states as
    ``padded``, else the next one (logged as a warning for a requested layout). An attention kernel the
    layout needs stays switched on until ``scope`` closes. ``estimate`` replaces the cost line in the
    reason (for callers whose work is not pairs); ``asked`` says how ``requested`` was asked for (the
    reason's first words: ``"requested"``, or ``"default"`` for a caller's own default layout).
    """
    from .models import text_config

    config = text_config(loaded.model)
    device_type = loaded.device.type
    costs = layout_costs(pairs, hidden_size=loaded.hidden_size,
                         intermediate_size=getattr(config, "intermediate_size", None) or 4 * loaded.hidden_size,
                         device_type=device_type, batch_tokens=batch_tokens)
    estimate = describe(costs, pairs, device_type) if estimate is None else estimate
    if requested is None:
        for name in by_cost(costs):
            strategy = layout_of(name).on(loaded, scope)
            if strategy is not None:
                return LayoutChoice(strategy, "chosen by estimated cost", estimate)
            logger.info("layout %r does not give this model the same hidden states; trying the next cheapest", name)
    name = requested
    while (strategy := layout_of(name).on(loaded, scope)) is None:
        fallback = LAYOUT_CLASSES[name].fallback
        logger.warning("%s does not give the same hidden states with layout %r; scoring with %r instead",
                       loaded.name, name, fallback)
        name = fallback
    how = asked if name == requested else f"fallback for {requested!r}, which this model cannot run exactly"
    return LayoutChoice(strategy, how, estimate)


def _switched(loaded, scope: contextlib.ExitStack, probe, **options) -> bool:
    """Switch the model to ches' padding-free kernel and probe it there; keep the switch (until ``scope``
    closes) if the probe passes, else switch back."""
    attempt = contextlib.ExitStack()
    if attempt.enter_context(packed_attention(loaded.model)) and probe(loaded.body, loaded.device, loaded.vocab_size,
                                                                       **options):
        scope.enter_context(attempt.pop_all())
        return True
    attempt.close()
    return False


def _engine(sequences, groups, loaded, batching, batch_tokens: int, on_done, head) -> HiddenSums:
    """:func:`ches.model.engine.hidden_sums` with the run's model, device and padding."""
    pad_id = loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else 0
    return hidden_sums(loaded.body, sequences, hidden_size=loaded.hidden_size, batch_tokens=batch_tokens,
                       device=loaded.device, pad_id=pad_id, pad_multiple=pad_multiple(loaded.device.type),
                       batching=batching, groups=groups, on_done=on_done, head=head)


def _lengths(pairs: Pairs) -> np.ndarray:
    return np.array([[len(chosen.input_ids), len(rejected.input_ids)] for chosen, rejected in pairs], dtype=np.float64)


def _prompts(pairs: Pairs) -> np.ndarray:
    return np.array([chosen.start + 1 for chosen, _ in pairs], dtype=np.float64)


def _causal(lengths: np.ndarray) -> np.ndarray:
    """Query-key products of causal attention over each whole sequence."""
    return lengths * (lengths + 1) / 2
