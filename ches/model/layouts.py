"""How sequences meet the model: four layouts, one class each, and the choice of one by estimated cost.

Every layout gives the same hidden states, to float rounding; they differ in what the model computes:

- :class:`Padded`: one sequence per row, length-sorted, right-padded (to a multiple of 64 on CUDA);
- :class:`Packed`: sequences back to back, position ids restarting at 0, padding-free attention;
- :class:`PrefixShared`: each pair as ``prompt | chosen | rejected`` with the prompt written once (the
  rejected tokens attend to the prompt and to themselves), pairs packed back to back;
- :class:`SharedPrompt`: pair by pair through a KV cache cut back to the prompt (batch size one).

Each class has its cost estimate (:meth:`Layout.work`), its probe on the model (:meth:`Layout.exact`: does
the model give the same hidden states this way; :meth:`Layout.on`: the layout set up to run on this model,
or None when it would not), its run (:meth:`Layout.run`), the layout to fall back to
(:attr:`Layout.fallback`) and what callers need to know of it (:attr:`Layout.runs_alone`,
:attr:`Layout.any_group`). A new layout is one new class in :data:`LAYOUT_CLASSES`.

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
import inspect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from ..data.tokens import TokenSequence
from ..options import LAYOUTS, PAIR_LAYOUTS
from .attention import packed_attention
from .batches import collate, group_length, pack, pack_groups, pad_multiple, padded_length, shared_positions
from .engine import HiddenSums, OneRow, PackedRows, PaddedRows, hidden_sums, run_body
from .logps import LMHead, sequence_logp_parts
from .models import has_sliding_window

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
        runs_alone: (of the class) every sequence has rows of its own, so one sequence's overflow cannot reach
            another's sums (:func:`ches.run.runner.run_sequences` then has nothing to run again alone).
        any_group: (of the class) groups may hold any number of sequences, as :func:`ches.pairs` gives all of a
            prompt's responses (:data:`ches.options.PAIR_LAYOUTS` names these layouts).
    """

    name: ClassVar[str]
    fallback: ClassVar[str | None]  # the layout to try when the model cannot run this one exactly
    runs_alone: ClassVar[bool] = False
    any_group: ClassVar[bool] = True
    padding_free: bool = False

    def work(self, pairs: Pairs, *, device_type: str, batch_tokens: int) -> LayoutWork:
        """What this layout makes each decoder layer compute for ``pairs``, from their lengths alone."""
        raise NotImplementedError

    def exact(self, body: torch.nn.Module, device: torch.device, vocab_size: int) -> bool:
        """The probe: whether this layout gives ``body`` the same hidden states as each sequence run alone, on
        a few short random sequences (a probe that raises, for a kernel or cache this model cannot use,
        counts as a mismatch, logged with the reason)."""
        raise NotImplementedError

    def on(self, loaded, scope: contextlib.ExitStack) -> Layout | None:
        """This layout set up for ``loaded`` (an attention kernel it needs is switched on until ``scope``
        closes), if its probe (:meth:`exact`) passes on the model; else None."""
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
    runs_alone: ClassVar[bool] = True

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

    def exact(self, body, device, vocab_size):
        return True  # the reference the other layouts are probed against

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

    def exact(self, body, device, vocab_size):
        """Two short random sequences packed into one row and run one at a time: a model whose attention
        ignores restarting position ids would let the second see the first. Padding-free, the row carries
        its segments, as rows do for ches' padding-free kernel."""
        generator = torch.Generator().manual_seed(0)
        first = torch.randint(0, vocab_size, (7,), generator=generator).tolist()
        second = torch.randint(0, vocab_size, (9,), generator=generator).tolist()
        probe = [TokenSequence(first, 0, 7), TokenSequence(second, 0, 9)]

        def both_ways():
            row = pack(probe, 0, 16)
            packed, _ = run_body(body, (row.with_segments() if self.padding_free else row).to(device))
            return packed, torch.cat([run_body(body, collate([sequence], 0).to(device))[0] for sequence in probe])

        return _agrees(self.name, body, both_ways)

    def on(self, loaded, scope):
        if _switched(loaded, scope, Packed(padding_free=True)):
            return Packed(padding_free=True)
        return Packed() if Packed().exact(loaded.body, loaded.device, loaded.vocab_size) else None

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

    def exact(self, body, device, vocab_size):
        """Two random pairs and a lone sequence packed into one row (:func:`ches.model.batches.pack_groups`)
        against each sequence run alone: a model whose attention lets the rejected tokens see the chosen ones,
        or ignores the continuing position ids, disagrees."""
        generator = torch.Generator().manual_seed(2)

        def tokens(count):
            return torch.randint(0, vocab_size, (count,), generator=generator).tolist()

        first, second = tokens(5), tokens(3)
        groups = [[TokenSequence(first + tokens(4), 4, 8), TokenSequence(first + tokens(6), 4, 10)],
                  [TokenSequence(tokens(6), 0, 5)],
                  [TokenSequence(second + tokens(2), 2, 4), TokenSequence(second + tokens(5), 2, 7)]]
        alone = [sequence for group in groups for sequence in group]

        def both_ways():
            row = pack_groups(groups, 0, sum(map(group_length, groups)) + 3).with_segments()
            shared = run_body(body, row.to(device))
            separate = [run_body(body, collate([sequence], 0).to(device)) for sequence in alone]
            return torch.cat(shared), torch.cat([torch.cat([sums for sums, _ in separate]),
                                                 torch.cat([last for _, last in separate])])

        return _agrees(self.name, body, both_ways)

    def on(self, loaded, scope):
        return PrefixShared(padding_free=True) if _switched(loaded, scope, PrefixShared(padding_free=True)) else None

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
    any_group: ClassVar[bool] = False  # (chosen, rejected) pairs: one cache cut back to the prompt

    def work(self, pairs, *, device_type, batch_tokens):
        shared = PrefixShared().work(pairs, device_type=device_type, batch_tokens=batch_tokens)
        return LayoutWork(shared.token_slots, shared.attended, 2.0 * len(pairs))  # two passes a pair

    def exact(self, body, device, vocab_size):
        """The rejected completion run on the chosen pass's cut-back cache against a full pass. Sliding-window
        models are refused outright: their cache forgets what lies beyond the window, so it cannot be cut
        back to the prompt once a sequence is longer than the window (which the short probe would not show)."""
        if has_sliding_window(body):
            logger.info("%s layout unavailable (sliding-window attention: the KV cache cannot be cut back)", self.name)
            return False
        generator = torch.Generator().manual_seed(1)
        prompt = torch.randint(0, vocab_size, (5,), generator=generator).tolist()
        chosen = TokenSequence(prompt + torch.randint(0, vocab_size, (4,), generator=generator).tolist(), 4, 8)
        rejected = TokenSequence(prompt + torch.randint(0, vocab_size, (6,), generator=generator).tolist(), 4, 10)

        def both_ways():
            _, shared = self.cached_pass(body, chosen, rejected, device)
            alone = body(input_ids=torch.tensor([rejected.input_ids], device=device),
                         use_cache=False).last_hidden_state[0, rejected.start : rejected.end]
            return shared[: len(alone)], alone

        return _agrees(self.name, body, both_ways)

    def on(self, loaded, scope):
        return self if self.exact(loaded.body, loaded.device, loaded.vocab_size) else None

    def run(self, sequences, groups, loaded, *, batch_tokens, on_done=None, head=None):
        if all(len(group) == 1 for group in groups):
            return Padded().run(sequences, groups, loaded, batch_tokens=batch_tokens, on_done=on_done, head=head)
        return self.cached_sums(loaded.body, sequences, groups=groups, hidden_size=loaded.hidden_size,
                                device=loaded.device, on_done=on_done, head=head)

    def cached_sums(self, body: torch.nn.Module, sequences: Sequence[TokenSequence], *,
                    groups: Sequence[tuple[int, int]], hidden_size: int, device: torch.device,
                    on_done: Callable[[list[int]], None] | None = None, head: LMHead | None = None) -> HiddenSums:
        """:class:`~ches.model.engine.HiddenSums` computed pair by pair, running each prompt once (with
        ``head``, log-probabilities too).

        ``groups`` are the ``(chosen, rejected)`` index pairs of ``sequences`` that share a prompt. The chosen
        sequence runs whole with a KV cache; the cache is cut back to the prompt, and only the rejected
        completion runs on top of it (:meth:`cached_pass`). This saves the prompt's share of the work for
        one of the two sequences (batch size one).
        """
        sums = torch.empty(len(sequences), hidden_size, dtype=torch.float32)
        last = torch.empty(len(sequences), hidden_size, dtype=torch.float32)
        logps = torch.empty(len(sequences), dtype=torch.float64) if head is not None else None
        shared_logps = torch.empty(len(sequences), dtype=torch.float64) if head is not None else None
        with torch.inference_mode():
            for chosen, rejected in groups:
                hidden_states = self.cached_pass(body, sequences[chosen], sequences[rejected], device)
                for index, hidden in zip((chosen, rejected), hidden_states):
                    positions = hidden[: sequences[index].end - sequences[index].start]
                    summed = positions.float()
                    sums[index] = summed.sum(0).cpu()
                    last[index] = summed[-1].cpu()
                    if logps is not None:
                        targets = torch.tensor(sequences[index].completion_ids, device=positions.device)
                        total, part = sequence_logp_parts(head, positions, targets, torch.zeros_like(targets), 1,
                                                          shared_positions([sequences[index]]))
                        logps[index], shared_logps[index] = total[0], part[0]
                if on_done is not None:
                    on_done([chosen, rejected])
        return HiddenSums(sums=sums, last=last, logps=logps, shared_logps=shared_logps)

    @staticmethod
    def cached_pass(body: torch.nn.Module, chosen: TokenSequence, rejected: TokenSequence,
                    device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states at the summed positions of both sequences, from positions ``start`` on: the chosen
        sequence whole with a KV cache, then the rejected completion on that cache cut back to the prompt
        (the hidden state that predicts the first rejected token is the prompt's last, from the chosen pass)."""
        prompt_length = chosen.start + 1
        output = body(input_ids=torch.tensor([chosen.input_ids], device=device), use_cache=True)
        chosen_hidden = output.last_hidden_state[0]
        cache = output.cache if "cache" in output else output.past_key_values  # renamed in newer transformers
        cache.crop(-(len(chosen.input_ids) - prompt_length))  # negative: remove that many tokens from the end
        rest = torch.tensor([rejected.input_ids[prompt_length:]], device=device)
        rejected_tail = body(input_ids=rest, use_cache=True, **{_cache_argument(body): cache}).last_hidden_state[0]
        rejected_hidden = torch.cat([chosen_hidden[prompt_length - 1 : prompt_length], rejected_tail])
        return chosen_hidden[chosen.start :], rejected_hidden

    def token_slots(self, sequences, groups):
        return PrefixShared().token_slots(sequences, groups)


#: the layouts, in the order of preference at equal estimated cost (:data:`ches.options.LAYOUTS` names them)
LAYOUT_CLASSES: dict[str, type[Layout]] = {cls.name: cls for cls in (PrefixShared, Packed, Padded, SharedPrompt)}
assert tuple(LAYOUT_CLASSES) == LAYOUTS
assert PAIR_LAYOUTS == tuple(name for name, cls in LAYOUT_CLASSES.items() if cls.any_group)


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


def _switched(loaded, scope: contextlib.ExitStack, layout: Layout) -> bool:
    """Switch the model to ches' padding-free kernel and probe ``layout`` there; keep the switch (until
    ``scope`` closes) if the probe passes, else switch back."""
    attempt = contextlib.ExitStack()
    if attempt.enter_context(packed_attention(loaded.model)) and layout.exact(loaded.body, loaded.device,
                                                                              loaded.vocab_size):
        scope.enter_context(attempt.pop_all())
        return True
    attempt.close()
    return False


def _agrees(layout: str, body: torch.nn.Module, both_ways: Callable) -> bool:
    """Run a probe's ``(candidate, reference)`` hidden states and compare them, relative to their scale
    (looser in half precision); a probe that raises counts as a mismatch, logged with the reason."""
    try:
        with torch.inference_mode():
            candidate, reference = both_ways()
    except Exception as error:
        logger.info("%s layout unavailable (%s: %s)", layout, type(error).__name__, error)
        return False
    scale = reference.abs().max().clamp_min(1e-6)
    tolerance = 1e-4 if next(body.parameters()).dtype == torch.float32 else 3e-2
    return bool(((candidate - reference).abs().max() / scale) <= tolerance)


def _cache_argument(body: torch.nn.Module) -> str:
    """The keyword a model body takes its KV cache by (``cache`` in newer transformers)."""
    module = getattr(body, "_orig_mod", body)  # a torch.compile'd body: ask the module it wraps
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


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
