"""Padding-free attention for packed rows: each packed sequence attends to itself only, with no mask.

Packed rows (:func:`ches.model.batches.pack`) hold several sequences whose position ids restart at 0.
With SDPA or eager attention, transformers turns those restarts into a block-diagonal mask over
the whole row: every row pays ``row_length ** 2`` attention work, and a masked kernel. The kernel
here reads the sequence boundaries off the position ids instead and attends within each sequence,
``sum(length ** 2)`` work and no mask.

The same reading covers prefix-shared rows (:func:`ches.model.batches.pack_groups`: ``prompt | chosen |
rejected``, the prompt written once). A segment begins wherever a position id does not continue the
one before it; a segment beginning at position ``p > 0`` continues the first ``p`` tokens (the prompt)
of the last segment that began at 0. Its queries attend to those ``p`` keys and, causally, to its own:
query ``i`` sees keys ``0 .. p + i``, a causal mask aligned to the bottom-right corner.

- on CUDA in bf16/fp16: PyTorch's FlashAttention varlen kernel (``torch.nn.attention.varlen``),
  every segment of the batch in one call (each segment's keys gathered behind its prompt's);
- elsewhere (CPUs, float32): SDPA once per segment.

The engine reads the segments once per batch, on the host (:meth:`ches.model.batches.Batch.with_segments`),
and hands them to every layer with the forward's keyword arguments (:data:`SEGMENTS_KEYWORD`): no layer
waits on the device to learn its bounds. A kernel called without them reads them off the position ids.

The attention itself is a ``torch.library`` custom operator (:func:`segment_attention`): opaque to
``torch.compile``, which then keeps a whole forward pass in one graph instead of breaking it in every layer.

It is registered with transformers' attention registry under :data:`VARLEN` and switched on only for
the duration of a packed run (:func:`packed_attention`); the engine's probes check it on the model
itself before any scoring, and a model it does not fit (sliding windows, soft-capping, no position ids
reaching attention) keeps its own kernel.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional

import torch

VARLEN = "ches_varlen"
MASKED_KERNELS = ("sdpa", "eager")  # kernels that would build a block-diagonal mask for packed rows
SEGMENTS_KEYWORD = "ches_segments"  # the forward keyword that hands a batch's :class:`Segments` to the kernel


@dataclass(frozen=True)
class Segments:
    """The attention segments of flattened packed rows, read off their position ids.

    Only tensors, so that a compiled model takes them as inputs instead of specializing on their values.

    Attributes:
        query_bounds: ``[S + 1]`` int32 cumulative starts of the segments (queries, in the flat rows).
        key_bounds: ``[S + 1]`` int32 cumulative starts of each segment's keys in ``key_index``.
        key_index: ``[K]`` flat position of every key, segment by segment: a continuing segment's shared
            prefix first, then its own tokens; ``None`` when no segment continues another (keys = queries).
        spans: ``[S, 4]`` int64 on the host: each segment's ``begin, end, prefix_begin, prefix_length`` in the
            flat rows (``prefix_length`` 0 for a segment that continues none).
    """

    query_bounds: torch.Tensor
    key_bounds: torch.Tensor
    key_index: torch.Tensor | None
    spans: torch.Tensor

    def apply(self, function: Callable[[torch.Tensor], torch.Tensor]) -> "Segments":
        """The same segments with ``function`` applied to each of their device tensors (e.g. a move to a
        device); ``spans`` stays on the host."""
        return Segments(function(self.query_bounds), function(self.key_bounds),
                        None if self.key_index is None else function(self.key_index), self.spans)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Segments":
        """The same segments on ``device`` (what accelerate's hooks call when a ``device_map`` spreads the
        layers over devices)."""
        return self.apply(lambda tensor: tensor.to(device, non_blocking=non_blocking))


def segments(position_ids: torch.Tensor) -> Segments:
    """:class:`Segments` of packed rows: a segment starts wherever a position id does not continue the
    previous one; one starting at ``p > 0`` also attends to the first ``p`` tokens of the last segment
    that started at 0.

    The engine computes them once per batch on the host and passes them to every layer's kernel
    (keyword :data:`SEGMENTS_KEYWORD`); a kernel that receives none reads them off its position ids.

    >>> found = segments(torch.tensor([[0, 1, 2, 3, 2, 3, 0, 1]]))  # prompt [0, 1], two completions; a sequence
    >>> found.query_bounds.tolist(), found.key_bounds.tolist(), found.key_index.tolist()
    ([0, 4, 6, 8], [0, 4, 8, 10], [0, 1, 2, 3, 0, 1, 4, 5, 6, 7])
    >>> found.spans.tolist()
    [[0, 4, 0, 0], [4, 6, 0, 2], [6, 8, 6, 0]]
    """
    flat = position_ids.reshape(-1)
    breaks = torch.ones_like(flat, dtype=torch.bool)
    breaks[1:] = flat[1:] != flat[:-1] + 1
    starts = torch.nonzero(breaks).reshape(-1)
    lengths = torch.diff(starts, append=starts.new_tensor([flat.numel()]))
    prefix = flat[starts]  # tokens of the root segment a segment continues (0 for a root)
    root_start = torch.cummax(torch.where(prefix == 0, starts, torch.zeros_like(starts)), 0).values
    query_bounds = torch.nn.functional.pad(torch.cumsum(lengths, 0), (1, 0)).to(torch.int32)
    key_lengths = lengths + prefix
    key_bounds = torch.nn.functional.pad(torch.cumsum(key_lengths, 0), (1, 0)).to(torch.int32)
    spans = torch.stack([starts, starts + lengths, root_start, prefix], dim=1).cpu()  # one copy to the host
    if not bool(spans[:, 3].any()):  # no segment continues another: the keys are the queries
        return Segments(query_bounds, query_bounds, None, spans)
    segment = torch.repeat_interleave(torch.arange(len(starts), device=flat.device), key_lengths)
    total_keys = int((spans[:, 1] - spans[:, 0] + spans[:, 3]).sum())
    offset = torch.arange(total_keys, device=flat.device) - key_bounds[:-1].long()[segment]
    key_index = torch.where(offset < prefix[segment], root_start[segment] + offset,
                            starts[segment] + offset - prefix[segment])
    return Segments(query_bounds, key_bounds, key_index, spans)


def varlen_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                     **kwargs) -> tuple[torch.Tensor, None]:
    """Causal attention within each packed sequence (transformers' attention-function signature).

    Under ``torch.compile`` the attention itself is one opaque operator (:func:`segment_attention`), so
    a compiled model keeps the whole forward pass in one graph.

    Args:
        query: ``[rows, heads, length, head_dim]``; key, value: ``[rows, kv_heads, length, head_dim]``.
        kwargs: must hold ``position_ids`` ``[rows, length]``; may hold the rows' :class:`Segments` under
            :data:`SEGMENTS_KEYWORD` (computed once per batch), else they are read off the position ids.

    Returns:
        ``([rows, length, heads, head_dim], None)``.
    """
    position_ids = kwargs.get("position_ids")
    unsupported = {
        "no position ids reach the attention": position_ids is None,
        "an attention mask was passed": attention_mask is not None,
        "a KV cache is in use": key.shape[2] != query.shape[2],
        "sliding-window attention": kwargs.get("sliding_window") or getattr(module, "sliding_window", None),
        "soft-capped attention": kwargs.get("softcap"),
        "non-causal attention": not getattr(module, "is_causal", True),
    }
    reasons = [reason for reason, present in unsupported.items() if present]
    if reasons:
        raise ValueError(f"{VARLEN} cannot run this attention: {', '.join(reasons)}")
    rows, heads, length, head_dim = query.shape
    found = kwargs.get(SEGMENTS_KEYWORD)
    if found is None:  # none handed down: read them here (data-dependent: a graph break under torch.compile)
        found = _read_segments(position_ids)
    flat_query, flat_key, flat_value = (
        tensor.transpose(1, 2).reshape(rows * length, tensor.shape[1], tensor.shape[3])
        for tensor in (query, key, value)
    )
    output = segment_attention(flat_query, flat_key, flat_value, found.query_bounds, found.key_bounds,
                               found.key_index, found.spans,
                               head_dim**-0.5 if scaling is None else float(scaling))
    return output.reshape(rows, length, heads, head_dim), None


_read_segments = torch.compiler.disable(segments)


@torch.library.custom_op("ches::segment_attention", mutates_args=())
def segment_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, query_bounds: torch.Tensor,
                      key_bounds: torch.Tensor, key_index: Optional[torch.Tensor], spans: torch.Tensor,
                      scale: float) -> torch.Tensor:
    """Causal attention of flat ``[tokens, heads, head_dim]`` queries within their segments (the tensors of
    :class:`Segments`); keys and values ``[tokens, kv_heads, head_dim]``. Returns ``[tokens, heads, head_dim]``.

    - on CUDA in bf16/fp16: PyTorch's FlashAttention varlen kernel, every segment in one call;
    - elsewhere: SDPA once per segment, with a bottom-right-aligned causal mask where it continues a prompt.
    """
    if int(spans[-1, 1]) != query.shape[0]:
        raise ValueError(f"{VARLEN}: the segments cover {int(spans[-1, 1])} tokens but the rows hold {query.shape[0]}; "
                         "pass the segments of these rows (Batch.with_segments)")
    heads, head_dim = query.shape[1], query.shape[2]
    grouped = key.shape[1] != heads
    if fused_kernel_applies(query):
        from torch.nn.attention.varlen import varlen_attn

        query_bounds, key_bounds = query_bounds.to(query.device), key_bounds.to(query.device)  # no-ops on one device
        if key_index is not None:  # each continuing segment's keys: its prompt's, then its own
            key_index = key_index.to(query.device)
            key, value = key[key_index], value[key_index]
        parameters = _parameters(varlen_attn)
        if grouped and "enable_gqa" not in parameters:  # older torch: give every query head its key/value head
            key, value = (tensor.repeat_interleave(heads // tensor.shape[1], dim=1) for tensor in (key, value))
        lengths = spans[:, 1] - spans[:, 0]
        longest_query, longest_key = int(lengths.max()), int((lengths + spans[:, 3]).max())
        return varlen_attn(query, key, value, query_bounds, key_bounds, longest_query, longest_key,
                           **_varlen_options(parameters, scale, head_dim, grouped))
    output = torch.empty_like(query)
    for begin, end, prefix_begin, prefix_length in spans.tolist():
        q, k, v = (tensor[begin:end].transpose(0, 1).unsqueeze(0)  # 4-D: SDPA's fused CPU kernel
                   for tensor in (query, key, value))
        mask = None
        if prefix_length:  # keys of the prompt this segment continues, then its own
            k, v = (torch.cat([tensor[prefix_begin : prefix_begin + prefix_length].transpose(0, 1).unsqueeze(0),
                               own], dim=2) for tensor, own in ((key, k), (value, v)))
            mask = _lower_right_causal(end - begin, prefix_length + end - begin, query.device)
        output[begin:end] = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None, scale=scale, enable_gqa=grouped,
        )[0].transpose(0, 1)
    return output


@segment_attention.register_fake
def _segment_attention_shape(query, key, value, query_bounds, key_bounds, key_index, spans, scale):
    return torch.empty_like(query)


def _lower_right_causal(queries: int, keys: int, device: torch.device) -> torch.Tensor:
    """``[queries, keys]`` boolean mask: query ``i`` sees keys ``0 .. keys - queries + i``.

    >>> _lower_right_causal(2, 4, torch.device("cpu")).int().tolist()
    [[1, 1, 1, 0], [1, 1, 1, 1]]
    """
    shift = keys - queries
    return torch.arange(keys, device=device)[None, :] <= torch.arange(queries, device=device)[:, None] + shift


def fused_kernel_applies(query: torch.Tensor) -> bool:
    """Whether PyTorch's FlashAttention varlen kernel can take these queries (CUDA, half precision)."""
    return query.is_cuda and query.dtype in (torch.bfloat16, torch.float16)


@functools.lru_cache(maxsize=4)
def _parameters(function) -> frozenset[str]:
    """Names ``function`` takes (looked up once, not on every layer of every batch)."""
    return frozenset(inspect.signature(function).parameters)


def _varlen_options(parameters, scaling: float, head_dim: int, grouped: bool) -> dict:
    """Keyword arguments for this torch's ``varlen_attn``: causal masking was ``is_causal=True`` in
    torch 2.10 and is ``window_size=(-1, 0)`` after; ``scale`` and ``enable_gqa`` came later."""
    options = {"window_size": (-1, 0)} if "window_size" in parameters else {"is_causal": True}
    if "scale" in parameters:
        options["scale"] = scaling
    elif abs(scaling - head_dim**-0.5) > 1e-6 * scaling:
        raise ValueError(f"this torch's varlen_attn has no scale argument; the model scales by {scaling}")
    if grouped and "enable_gqa" in parameters:
        options["enable_gqa"] = True
    return options


def _no_mask(*args, attention_mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor | None:
    """The mask builder registered with :data:`VARLEN`: sequence bounds come from the position ids, so
    no mask is built; a padding mask that hides tokens is passed on (and refused by the kernel)."""
    if attention_mask is None or bool(attention_mask.all()):
        return None
    return attention_mask


def register() -> None:
    """Make :data:`VARLEN` known to transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(VARLEN, varlen_attention)
    AttentionMaskInterface.register(VARLEN, _no_mask)


@contextmanager
def packed_attention(model: torch.nn.Module) -> Iterator[bool]:
    """Run ``model`` with :data:`VARLEN` attention inside the block, restoring its own kernel after.

    Yields whether the switch happened: only models on a masked kernel (SDPA, eager) that can switch
    kernels after loading are switched; flash-attention models already run packed rows unpadded.
    """
    config = getattr(model, "config", None)
    original = getattr(config, "_attn_implementation", None)
    if original not in MASKED_KERNELS or not hasattr(model, "set_attn_implementation"):
        yield False
        return
    register()
    try:
        model.set_attn_implementation(VARLEN)
    except (ValueError, ImportError, AttributeError):
        yield False
        return
    try:
        yield config._attn_implementation == VARLEN
    finally:
        model.set_attn_implementation(original)
