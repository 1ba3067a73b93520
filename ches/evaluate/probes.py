"""DPO probes: train a copy of the model with DPO on a few pairs and measure how log-probabilities move.

Likelihood displacement is a drop of ``log pi(y+|x)`` under DPO. A probe starts from the model as
given (also the DPO reference model), runs ``steps`` full-batch DPO steps with RMSprop on the given
pairs (:class:`DPOProbe`, the paper's Section 5 probes; ``ches validate --protocol probes``), and reports
the change of ``log pi(y+|x)`` and ``log pi(y-|x)`` on exactly the token sequences ``ches.score`` uses.
The model's weights are restored afterwards. (Training the way users train, mini-batches with their
``DPOConfig``, is TRL's: :mod:`ches.evaluate.training`.) The loss is the DPO loss (Rafailov et al., 2023)::

    loss = -log sigmoid(beta * ((log pi(y+) - log ref(y+)) - (log pi(y-) - log ref(y-))))

averaged over the pairs. Only this module trains; the score math never sees it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange

from ..data.tokens import TokenSequence
from ..model.batches import collate


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
             reference_rejected: torch.Tensor, beta: float) -> torch.Tensor:
    """Mean DPO loss over ``[N]`` sequence log-probabilities.

    >>> round(dpo_loss(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([0.0]), 0.1).item(), 4)
    0.6931
    """
    margin = (policy_chosen - reference_chosen) - (policy_rejected - reference_rejected)
    return -F.logsigmoid(beta * margin).mean()


def sequence_logps(model: torch.nn.Module, sequences: Sequence[TokenSequence], pad_id: int = 0) -> torch.Tensor:
    """``[N]`` sums of ``log pi(token)`` over each sequence's completion tokens (gradients flow).

    The logits at positions ``[start, end)`` predict tokens ``start + 1 .. end``: the completion.
    """
    batch = collate(sequences, pad_id)
    device = next(model.parameters()).device
    input_ids = batch.input_ids.to(device)
    logits = model(input_ids=input_ids, use_cache=False).logits.float()
    flat = rearrange(logits, "rows tokens vocab -> (rows tokens) vocab")
    positions = batch.sum_positions.to(device)
    targets = rearrange(input_ids, "rows tokens -> (rows tokens)")[positions + 1]
    token_logps = torch.log_softmax(flat.index_select(0, positions), dim=-1).gather(1, targets[:, None])[:, 0]
    return torch.zeros(len(sequences), device=device).index_add(0, batch.sum_rows.to(device), token_logps)


@dataclass(frozen=True)
class ProbeResult:
    """Log-probabilities of the probed pairs before and after DPO (``[N]`` each, in nats).

    ``chosen_change = chosen_after - chosen_before``; displacement is ``-chosen_change`` (> 0: the
    preferred response became less likely).
    """

    chosen_before: torch.Tensor
    chosen_after: torch.Tensor
    rejected_before: torch.Tensor
    rejected_after: torch.Tensor
    inspected: Any = None  # what ``inspect`` returned for the trained model, if given

    @property
    def chosen_change(self) -> torch.Tensor:
        return self.chosen_after - self.chosen_before

    @property
    def rejected_change(self) -> torch.Tensor:
        return self.rejected_after - self.rejected_before


class DPOProbe:
    """Runs DPO from one fixed starting point, as often as needed.

    >>> import copy, torch
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> torch.manual_seed(0) and None
    >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32,
    ...                          num_hidden_layers=1, num_attention_heads=2))
    >>> pair = (TokenSequence([1, 2, 3, 4], 1, 3), TokenSequence([1, 2, 5, 6], 1, 3))
    >>> result = DPOProbe(model, steps=3, learning_rate=1e-2).run([pair])
    >>> bool(result.chosen_change[0] - result.rejected_change[0] > 0)  # the margin grows
    True
    """

    def __init__(self, model: torch.nn.Module, *, steps: int = 5, learning_rate: float = 1e-4, beta: float = 0.1,
                 pad_id: int = 0):
        self.model, self.steps, self.learning_rate, self.beta, self.pad_id = model, steps, learning_rate, beta, pad_id
        self.start = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}

    def run(self, pairs: Sequence[tuple[TokenSequence, TokenSequence]],
            inspect: Callable[[torch.nn.Module], Any] | None = None,
            on_step: Callable[[int, torch.nn.Module], None] | None = None) -> ProbeResult:
        """DPO on ``pairs`` (full batch) from the starting weights; the model is restored afterwards.

        ``on_step(step, model)`` is called after every optimizer step and ``inspect(model)`` once after
        training (both under ``torch.no_grad``), before the weights are restored.
        """
        model = self.model
        sequences = [sequence for pair in pairs for sequence in pair]
        with restored(model, self.start):
            with torch.no_grad():
                before = sequence_logps(model, sequences, self.pad_id)
            optimizer = torch.optim.RMSprop(model.parameters(), lr=self.learning_rate)
            for step in range(self.steps):
                logps = sequence_logps(model, sequences, self.pad_id)
                loss = dpo_loss(logps[0::2], logps[1::2], before[0::2], before[1::2], self.beta)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if on_step is not None:
                    with torch.no_grad():
                        on_step(step, model)
            with torch.no_grad():
                after = sequence_logps(model, sequences, self.pad_id)
                inspected = inspect(model) if inspect is not None else None
        return ProbeResult(before[0::2].cpu(), after[0::2].cpu(), before[1::2].cpu(), after[1::2].cpu(), inspected)


@contextlib.contextmanager
def restored(model: torch.nn.Module, start: dict[str, torch.Tensor] | None = None) -> Iterator[None]:
    """Train ``model`` inside the block (in eval mode: no dropout, deterministic); its weights are ``start``
    (default: the weights on entry) again afterwards, whatever happened inside."""
    if start is None:
        start = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    model.eval()
    try:
        yield
    finally:
        model.load_state_dict(start)
