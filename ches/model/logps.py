"""Completion log-probabilities from the hidden states the scoring pass already has: DPO's reference log-probs.

For a completion ``y`` after a prompt ``x``, TRL's ``DPOTrainer`` trains against (``ref_chosen_logps`` /
``ref_rejected_logps``, the frozen reference model being the SFT model ches scores with):

``log pi(y | x) = sum_t log softmax(head(h_t))[y_t]``

over the completion's tokens ``y_t`` (EOS or end-of-turn included, after TRL's truncation), ``h_t`` the
last hidden state at the position before ``y_t``: exactly the positions whose hidden states CHES sums
(:class:`ches.data.tokens.TokenSequence`: ``[start, end)``, predicting ``input_ids[start + 1 : end + 1]``).
So the LM head runs only there, never over the prompt, in pieces of :data:`PIECE_LOGITS` logits, so that
no ``[tokens, vocab]`` tensor for a whole batch exists; the log-softmax is taken in float32 whatever the
model's dtype (``logit[y] - max - log sum exp(logits - max)``, the exponentials taken in place in the
piece's logits, so no second ``[piece, vocab]`` tensor exists: 12 % faster than ``torch.logsumexp`` on CPU). A model's own
processing of its logits (Gemma's soft-capping ``cap * tanh(z / cap)``, Cohere's ``logit_scale``) is
applied as its forward applies it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: logits computed at a time (positions x vocabulary): 2**24 float32 logits are 64 MiB
PIECE_LOGITS = 2**24


@dataclass(frozen=True)
class LMHead:
    """A causal LM's output layer and what its forward does to the logits after it.

    Attributes:
        module: the output embedding (``model.get_output_embeddings()``), called as a module so that
            ``device_map`` hooks move its weights where they must.
        softcap: ``final_logit_softcapping`` (Gemma 2/3): logits become ``cap * tanh(logits / cap)``.
        scale: ``logit_scale`` (Cohere): logits are multiplied by it.
    """

    module: torch.nn.Module
    softcap: float | None = None
    scale: float | None = None

    @classmethod
    def of(cls, model: torch.nn.Module) -> LMHead:
        """The head of a loaded causal LM.

        >>> import transformers
        >>> tiny = transformers.LlamaForCausalLM(transformers.LlamaConfig(hidden_size=8, intermediate_size=8,
        ...     num_hidden_layers=1, num_attention_heads=2, vocab_size=16))
        >>> LMHead.of(tiny).module.out_features
        16
        """
        from ..errors import ChesError
        from .models import text_config

        module = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if module is None:
            raise ChesError(f"{type(model).__name__} has no output layer (get_output_embeddings() is None), so it "
                            "gives no log-probabilities; drop logps, or load the model as a causal LM.")
        config = text_config(model)
        softcap = getattr(config, "final_logit_softcapping", None)
        scale = getattr(config, "logit_scale", None)
        return cls(module, float(softcap) if softcap else None, float(scale) if scale not in (None, 1, 1.0) else None)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[n, vocab]`` float32 logits of ``[n, H]`` hidden states, processed as the model's forward does."""
        logits = self.module(hidden.to(_weight(self.module).dtype)).float()
        if self.scale is not None:
            logits = logits * self.scale
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


def token_logps(head: LMHead, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``[n]`` float32 ``log softmax(head(hidden[i]))[targets[i]]``, the head applied :data:`PIECE_LOGITS`
    logits at a time.

    >>> head = LMHead(torch.nn.Linear(2, 3, bias=False))
    >>> with torch.no_grad():
    ...     _ = head.module.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
    >>> round(token_logps(head, torch.tensor([[2.0, 0.0]]), torch.tensor([0])).item(), 4)  # log(e^2 / (e^2 + 1 + 1))
    -0.2395
    """
    vocab = _weight(head.module).shape[0]
    piece = max(1, PIECE_LOGITS // vocab)
    out = torch.empty(len(hidden), dtype=torch.float32, device=hidden.device)
    for begin in range(0, len(hidden), piece):
        logits = head.logits(hidden[begin : begin + piece])
        chosen = targets[begin : begin + piece].to(logits.device)
        picked = logits.gather(1, chosen[:, None])[:, 0]
        top = logits.amax(dim=-1, keepdim=True)
        total = logits.sub_(top).exp_().sum(dim=-1)  # in place: the piece's logits are not needed again
        out[begin : begin + piece] = (picked - top[:, 0] - total.log()).to(out.device)
    return out


def sequence_logps(head: LMHead, hidden: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor,
                   count: int) -> torch.Tensor:
    """``[count]`` float64 sums of :func:`token_logps` per sequence (``rows[i]``: the sequence of position ``i``).

    >>> head = LMHead(torch.nn.Linear(2, 3, bias=False))
    >>> hidden = torch.randn(4, 2)
    >>> both = sequence_logps(head, hidden, torch.tensor([0, 1, 2, 0]), torch.tensor([0, 0, 1, 1]), 2)
    >>> bool(torch.allclose(both[0], token_logps(head, hidden[:2], torch.tensor([0, 1])).double().sum()))
    True
    """
    values = token_logps(head, hidden, targets).double()
    sums = torch.zeros(count, dtype=torch.float64, device=values.device)
    sums.index_add_(0, rows.to(values.device), values)
    return sums.cpu()


def sequence_logp_parts(head: LMHead, hidden: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor, count: int,
                        shared: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``([count], [count])`` float64: :func:`sequence_logps`, and the same sums over the positions ``shared``
    marks only (LD-DPO's part of a completion shared in length with its pair's other one), the head run once.

    >>> head = LMHead(torch.nn.Linear(2, 3, bias=False))
    >>> hidden, targets, rows = torch.randn(3, 2), torch.tensor([0, 1, 2]), torch.tensor([0, 0, 1])
    >>> total, part = sequence_logp_parts(head, hidden, targets, rows, 2, torch.tensor([True, False, True]))
    >>> bool(torch.allclose(part, torch.stack([token_logps(head, hidden[:1], targets[:1]).double().sum(),
    ...                                        token_logps(head, hidden[2:], targets[2:]).double().sum()])))
    True
    """
    values = token_logps(head, hidden, targets).double()
    rows = rows.to(values.device)
    sums = torch.zeros(count, dtype=torch.float64, device=values.device).index_add_(0, rows, values)
    part = torch.zeros(count, dtype=torch.float64, device=values.device).index_add_(
        0, rows, values * shared.to(values.device))
    return sums.cpu(), part.cpu()


def _weight(module: torch.nn.Module) -> torch.Tensor:
    return module.weight
