"""The decoder pass: run only the model body and reduce its last hidden states to per-sequence sums.

This is the only module that touches the model and the device. For each sequence it returns

- ``sums[i]``: the float32 sum of the hidden states at the sequence's summed positions, and
- ``last[i]``: the hidden state at its last summed position (for ``last_hidden_ip``),

copying nothing else back from the device. The LM head never runs; ``output_hidden_states`` is never
requested. Half-precision hidden states are widened to float32 before summing, so 2,000-token
completions in bf16/fp16 give finite sums.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .batches import Batch, collate, longest_first, rows_that_fit
from .errors import ChesError
from .tokens import ScoredSequence

logger = logging.getLogger("ches")


@dataclass(frozen=True)
class HiddenSums:
    """Per-sequence reductions of the last hidden state.

    Attributes:
        sums: ``[N, H]`` float32, ``S`` for each sequence.
        last: ``[N, H]`` float32, the hidden state at each sequence's last summed position.
    """

    sums: torch.Tensor
    last: torch.Tensor


def run_body(body: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass of the decoder body; returns ``([B, H] sums, [B, H] last)`` in float32."""
    hidden = body(input_ids=batch.input_ids, use_cache=False).last_hidden_state
    flat = hidden.reshape(-1, hidden.shape[-1])
    sums = torch.zeros(batch.input_ids.shape[0], flat.shape[-1], dtype=torch.float32, device=flat.device)
    sums.index_add_(0, batch.sum_rows, flat.index_select(0, batch.sum_positions).float())
    return sums, flat.index_select(0, batch.last_positions).float()


def hidden_sums(
    body: torch.nn.Module,
    sequences: Sequence[ScoredSequence],
    *,
    hidden_size: int,
    batch_tokens: int,
    device: torch.device,
    pad_id: int,
    pad_multiple: int = 1,
    on_done: Callable[[list[int]], None] | None = None,
) -> HiddenSums:
    """Run ``body`` over ``sequences`` in token-budget batches and collect :class:`HiddenSums`.

    Sequences are processed longest first. On an out-of-memory error the token budget is halved and
    the batch retried (logged); a single sequence that does not fit raises :class:`ChesError`.

    Args:
        body: the decoder without its LM head (``model.base_model``), already on ``device``.
        sequences: what to run; ``sequences[i]`` fills row ``i`` of the result.
        hidden_size: width ``H`` of the last hidden state.
        batch_tokens: token slots per batch (rows x padded length).
        device: where ``body`` lives.
        pad_id: token id used for right padding (never attended to by real tokens).
        pad_multiple: pad each batch's length up to a multiple of this (helps kernel reuse on GPUs).
        on_done: called with the indices of the sequences of each finished batch.
    """
    sums = torch.empty(len(sequences), hidden_size, dtype=torch.float32)
    last = torch.empty(len(sequences), hidden_size, dtype=torch.float32)
    remaining = longest_first(sequences)
    budget = batch_tokens
    with torch.inference_mode():
        while remaining:
            longest = len(sequences[remaining[0]].input_ids)
            chosen = remaining[: rows_that_fit(longest, budget, pad_multiple)]
            batch = collate([sequences[index] for index in chosen], pad_id, pad_multiple).to(device)
            try:
                batch_sums, batch_last = run_body(body, batch)
            except torch.OutOfMemoryError:
                if len(chosen) == 1:
                    raise ChesError(
                        f"a single sequence of {longest} tokens does not fit in device memory; pass max_length= "
                        "to truncate, or a smaller dtype."
                    ) from None
                budget //= 2
                logger.warning("out of memory at %d sequences x %d tokens; halving batch_tokens to %d", len(chosen), longest, budget)
                del batch
                torch.cuda.empty_cache()
                continue
            index = torch.tensor(chosen)
            sums[index] = batch_sums.cpu()
            last[index] = batch_last.cpu()
            remaining = remaining[len(chosen):]
            if on_done is not None:
                on_done(chosen)
    return HiddenSums(sums=sums, last=last)
