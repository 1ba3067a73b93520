"""Padding-free attention for packed rows: each packed sequence attends to itself only, with no mask.

Packed rows (:func:`ches.batches.pack`) hold several sequences whose position ids restart at 0.
With SDPA or eager attention, transformers turns those restarts into a block-diagonal mask over
the whole row: every row pays ``row_length ** 2`` attention work, and a masked kernel. The kernel
here reads the sequence boundaries off the position ids instead and attends within each sequence,
``sum(length ** 2)`` work and no mask:

- on CUDA in bf16/fp16: PyTorch's FlashAttention varlen kernel (``torch.nn.attention.varlen``),
  every sequence of the batch in one call;
- elsewhere (CPUs, float32): causal SDPA once per sequence.

It is registered with transformers' attention registry under :data:`VARLEN` and switched on only for
the duration of a packed run (:func:`packed_attention`); the engine's packing probe checks it on the
model itself before any scoring, and a model it does not fit (sliding windows, soft-capping, no
position ids reaching attention) keeps its own kernel.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Iterator
from contextlib import contextmanager

import torch

VARLEN = "ches_varlen"
MASKED_KERNELS = ("sdpa", "eager")  # kernels that would build a block-diagonal mask for packed rows


def sequence_bounds(position_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Cumulative start offsets of the sequences in the flattened rows, and the longest sequence.

    A sequence starts wherever the position id is 0; the rows are read one after the other.

    >>> sequence_bounds(torch.tensor([[0, 1, 2, 0, 1], [0, 1, 0, 1, 2]]))
    (tensor([ 0,  3,  5,  7, 10], dtype=torch.int32), 3)
    """
    flat = position_ids.reshape(-1)
    starts = torch.nonzero(flat == 0).reshape(-1)
    bounds = torch.cat([starts, starts.new_tensor([flat.numel()])]).to(torch.int32)
    return bounds, int((bounds[1:] - bounds[:-1]).max())


@torch.compiler.disable  # data-dependent bounds: under torch.compile this one call runs eagerly, quietly
def varlen_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                     **kwargs) -> tuple[torch.Tensor, None]:
    """Causal attention within each packed sequence (transformers' attention-function signature).

    Args:
        query: ``[rows, heads, length, head_dim]``; key, value: ``[rows, kv_heads, length, head_dim]``.
        kwargs: must hold ``position_ids`` ``[rows, length]``.

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
    bounds, longest = sequence_bounds(position_ids)
    flat_query, flat_key, flat_value = (
        tensor.transpose(1, 2).reshape(rows * length, tensor.shape[1], tensor.shape[3])
        for tensor in (query, key, value)
    )
    grouped = key.shape[1] != heads
    if fused_kernel_applies(query):
        from torch.nn.attention.varlen import varlen_attn

        parameters = _parameters(varlen_attn)
        if grouped and "enable_gqa" not in parameters:  # older torch: give every query head its key/value head
            flat_key, flat_value = (tensor.repeat_interleave(heads // key.shape[1], dim=1)
                                    for tensor in (flat_key, flat_value))
        output = varlen_attn(flat_query, flat_key, flat_value, bounds, bounds, longest, longest,
                             **_varlen_options(parameters, scaling, head_dim, grouped))
    else:
        output = torch.empty_like(flat_query)
        edges = bounds.tolist()
        for begin, end in zip(edges[:-1], edges[1:]):
            heads_first = [tensor[begin:end].transpose(0, 1).unsqueeze(0) for tensor in (flat_query, flat_key, flat_value)]
            output[begin:end] = torch.nn.functional.scaled_dot_product_attention(  # 4-D: SDPA's fused CPU kernel
                *heads_first, is_causal=True, scale=scaling, enable_gqa=grouped,
            )[0].transpose(0, 1)
    return output.reshape(rows, length, heads, head_dim), None


def fused_kernel_applies(query: torch.Tensor) -> bool:
    """Whether PyTorch's FlashAttention varlen kernel can take these queries (CUDA, half precision)."""
    return query.is_cuda and query.dtype in (torch.bfloat16, torch.float16)


@functools.lru_cache(maxsize=4)
def _parameters(function) -> frozenset[str]:
    """Names ``function`` takes (looked up once, not on every layer of every batch)."""
    return frozenset(inspect.signature(function).parameters)


def _varlen_options(parameters, scaling: float | None, head_dim: int, grouped: bool) -> dict:
    """Keyword arguments for this torch's ``varlen_attn``: causal masking was ``is_causal=True`` in
    torch 2.10 and is ``window_size=(-1, 0)`` after; ``scale`` and ``enable_gqa`` came later."""
    options = {"window_size": (-1, 0)} if "window_size" in parameters else {"is_causal": True}
    if "scale" in parameters:
        options["scale"] = scaling
    elif scaling is not None and abs(scaling - head_dim**-0.5) > 1e-6 * scaling:
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
