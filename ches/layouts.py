"""Which layout runs the pairs: the cheapest by an estimate from the tokenized lengths, if the model runs it exactly.

The layouts (how sequences meet the model; every one gives the same hidden states, to float rounding):

- ``padded``: one sequence per row, length-sorted, right-padded (to a multiple of 64 on CUDA);
- ``packed``: sequences back to back, position ids restarting at 0, padding-free attention;
- ``prefix_shared``: each pair as ``prompt | chosen | rejected`` with the prompt written once (the
  rejected tokens attend to the prompt and to themselves), pairs packed back to back;
- ``shared_prompt``: pair by pair through a KV cache cut back to the prompt (batch size one).

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
import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .attention import packed_attention
from .batches import padded_length
from .engine import packing_is_exact, prefix_sharing_is_exact, shared_prompt_is_exact
from .options import LAYOUTS
from .tokens import TokenSequence

logger = logging.getLogger("ches")

FALLBACK = {"prefix_shared": "packed", "packed": "padded", "shared_prompt": "padded"}
PASS_OVERHEAD = {"cuda": 6000, "cpu": 72}  # tokens' worth of work per forward pass (fitted: module docstring)


@dataclass(frozen=True)
class LayoutChoice:
    """The layout a run uses and why (``reason`` goes into the run metadata)."""

    layout: str
    reason: str
    padding_free: bool = False  # rows run on ches' padding-free kernel (:mod:`ches.attention`), switched on for the run


@dataclass(frozen=True)
class LayoutWork:
    """What a layout makes each decoder layer compute: token slots (padding included), the query-key
    products of attention, and the number of forward passes."""

    token_slots: float
    attended: float
    passes: float


def layout_work(pairs: Sequence[tuple[TokenSequence, TokenSequence]], *, device_type: str,
                batch_tokens: int) -> dict[str, LayoutWork]:
    """:class:`LayoutWork` of each layout for ``pairs``, from their lengths alone.

    >>> pair = (TokenSequence(list(range(8)), 5, 7), TokenSequence(list(range(9)), 5, 8))  # prompt: 6 tokens
    >>> work = layout_work([pair], device_type="cpu", batch_tokens=64)
    >>> work["packed"].token_slots, work["prefix_shared"].token_slots
    (17.0, 11.0)
    """
    if not pairs:
        return {layout: LayoutWork(0.0, 0.0, 0.0) for layout in LAYOUTS}
    prompt = np.array([chosen.start + 1 for chosen, _ in pairs], dtype=np.float64)
    lengths = np.array([[len(chosen.input_ids), len(rejected.input_ids)] for chosen, rejected in pairs], dtype=np.float64)
    causal = lengths * (lengths + 1) / 2  # query-key products of causal attention over each whole sequence
    tails = lengths[:, 1] - prompt  # the rejected sequence past the prompt attends to the prompt and itself
    shared_tokens = float(lengths.sum() - prompt.sum())
    shared_attended = float(causal[:, 0].sum() + (tails * prompt + tails * (tails + 1) / 2).sum())
    padded = _padded_slots(lengths.reshape(-1), batch_tokens, 64 if device_type == "cuda" else 1)
    return {"prefix_shared": LayoutWork(shared_tokens, shared_attended, np.ceil(shared_tokens / batch_tokens)),
            "packed": LayoutWork(float(lengths.sum()), float(causal.sum()), np.ceil(lengths.sum() / batch_tokens)),
            "padded": padded,
            "shared_prompt": LayoutWork(shared_tokens, shared_attended, 2.0 * len(pairs))}  # two passes a pair


def layout_costs(pairs: Sequence[tuple[TokenSequence, TokenSequence]], *, hidden_size: int, intermediate_size: int,
                 device_type: str, batch_tokens: int) -> dict[str, float]:
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


def _padded_slots(lengths: np.ndarray, batch_tokens: int, multiple: int) -> LayoutWork:
    """:class:`LayoutWork` of length-sorted, right-padded batches."""
    ordered = np.sort(lengths)[::-1]
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


def by_cost(costs: dict[str, float]) -> list[str]:
    """Layouts from cheapest to dearest (ties in the order of :data:`LAYOUTS`).

    >>> by_cost({"prefix_shared": 2.0, "packed": 2.0, "padded": 3.0, "shared_prompt": 1.0})
    ['shared_prompt', 'prefix_shared', 'packed', 'padded']
    """
    return sorted(LAYOUTS, key=lambda layout: (costs[layout], LAYOUTS.index(layout)))


def describe(costs: dict[str, float], pairs: Sequence[tuple[TokenSequence, TokenSequence]], device_type: str) -> str:
    """One line: each layout's estimated cost relative to the cheapest, and the prompt's share of the tokens."""
    cheapest = min(costs.values()) or 1.0
    prompt = sum(chosen.start + 1 for chosen, _ in pairs)
    tokens = sum(len(chosen.input_ids) + len(rejected.input_ids) for chosen, rejected in pairs) or 1
    relative = ", ".join(f"{layout} {costs[layout] / cheapest:.2f}" for layout in sorted(costs, key=costs.get))
    return (f"estimated cost on {device_type} relative to the cheapest: {relative} (prompts are "
            f"{2 * prompt / tokens:.0%} of the tokens of padded/packed rows)")


def resolve_layout(requested: str | None, loaded, pairs: Sequence[tuple[TokenSequence, TokenSequence]],
                   batch_tokens: int, scope: contextlib.ExitStack) -> LayoutChoice:
    """The layout to run: ``requested``, or the cheapest by :func:`layout_costs`; in either case only
    if a probe on the model shows it gives the same hidden states as ``padded``, else the next one
    (logged as a warning for a requested layout). ``packed`` and ``prefix_shared`` switch the model to
    the padding-free kernel of :mod:`ches.attention` until ``scope`` closes (``packed`` can also run
    on the model's own masked kernel).
    """
    from .models import text_config

    config = text_config(loaded.model)
    device_type = loaded.device.type
    costs = layout_costs(pairs, hidden_size=loaded.hidden_size,
                         intermediate_size=getattr(config, "intermediate_size", None) or 4 * loaded.hidden_size,
                         device_type=device_type, batch_tokens=batch_tokens)
    estimate = describe(costs, pairs, device_type)
    if requested is None:
        for layout in by_cost(costs):
            padding_free = _runs_exactly(layout, loaded, scope)
            if padding_free is not None:
                return LayoutChoice(layout, f"chosen by estimated cost; {estimate}", padding_free)
            logger.info("layout %r does not give this model the same hidden states; trying the next cheapest", layout)
    layout = requested
    while (padding_free := _runs_exactly(layout, loaded, scope)) is None:
        logger.warning("%s does not give the same hidden states with layout %r; scoring with %r instead",
                       loaded.name, layout, FALLBACK[layout])
        layout = FALLBACK[layout]
    how = "requested" if layout == requested else f"fallback for {requested!r}, which this model cannot run exactly"
    return LayoutChoice(layout, f"{how}; {estimate}", padding_free)


def _runs_exactly(layout: str, loaded, scope: contextlib.ExitStack) -> bool | None:
    """Whether the model gives ``layout`` the same hidden states as ``padded``: ``None`` if not, else
    whether it runs on ches' padding-free kernel (switched on until ``scope`` closes)."""
    if layout == "padded":
        return False
    if layout == "shared_prompt":
        return False if shared_prompt_is_exact(loaded.body, loaded.device, loaded.vocab_size) else None
    attempt = contextlib.ExitStack()
    probe = prefix_sharing_is_exact if layout == "prefix_shared" else functools.partial(packing_is_exact, padding_free=True)
    if attempt.enter_context(packed_attention(loaded.model)) and probe(loaded.body, loaded.device, loaded.vocab_size):
        scope.enter_context(attempt.pop_all())
        return True
    attempt.close()
    own_kernel = layout == "packed" and packing_is_exact(loaded.body, loaded.device, loaded.vocab_size)
    return False if own_kernel else None
