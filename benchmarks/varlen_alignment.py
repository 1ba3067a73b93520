"""Does this torch's FlashAttention varlen kernel align causal masks bottom-right when queries are fewer than keys?

    python benchmarks/varlen_alignment.py        # needs CUDA

The prefix-shared layout gives each completion after the first its own query segment and a key segment
of ``prompt + completion``: query ``i`` must see keys ``0 .. prompt + i`` (the causal mask aligned to the
bottom-right corner). This runs ``varlen_attn`` on such segments and compares with SDPA under an explicit
lower-right mask, in float32 on upcast inputs. Prints the signature and the largest relative error.
"""

from __future__ import annotations

import inspect
import sys

import torch


def main() -> None:
    if not torch.cuda.is_available():
        sys.exit("no CUDA device")
    from torch.nn.attention.varlen import varlen_attn

    parameters = inspect.signature(varlen_attn).parameters
    print(f"torch {torch.__version__}; varlen_attn{inspect.signature(varlen_attn)}")
    causal = {"window_size": (-1, 0)} if "window_size" in parameters else {"is_causal": True}
    generator = torch.Generator(device="cuda").manual_seed(0)
    heads, head_dim = 4, 64
    segments = [(37, 37), (12, 37 + 12), (50, 50), (9, 50 + 9), (3, 3 + 20)]  # (queries, keys) per segment
    q_total, k_total = sum(q for q, _ in segments), sum(k for _, k in segments)
    query = torch.randn(q_total, heads, head_dim, device="cuda", generator=generator, dtype=torch.bfloat16)
    key = torch.randn(k_total, heads, head_dim, device="cuda", generator=generator, dtype=torch.bfloat16)
    value = torch.randn(k_total, heads, head_dim, device="cuda", generator=generator, dtype=torch.bfloat16)
    cu_q = torch.tensor([0] + [q for q, _ in segments], device="cuda").cumsum(0).to(torch.int32)
    cu_k = torch.tensor([0] + [k for _, k in segments], device="cuda").cumsum(0).to(torch.int32)
    output = varlen_attn(query, key, value, cu_q, cu_k, max(q for q, _ in segments), max(k for _, k in segments),
                         **causal)
    worst = 0.0
    for index, (q_len, k_len) in enumerate(segments):
        q = query[cu_q[index] : cu_q[index + 1]].double().transpose(0, 1)
        k = key[cu_k[index] : cu_k[index + 1]].double().transpose(0, 1)
        v = value[cu_k[index] : cu_k[index + 1]].double().transpose(0, 1)
        allowed = torch.arange(k_len, device="cuda")[None, :] <= torch.arange(q_len, device="cuda")[:, None] + (k_len - q_len)
        reference = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed).transpose(0, 1)
        got = output[cu_q[index] : cu_q[index + 1]].double()
        worst = max(worst, float((got - reference).norm() / reference.norm()))
    print(f"bottom-right causal alignment: max relative error {worst:.2e} ({'OK' if worst < 1e-2 else 'MISMATCH'})")
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401

        print("flex_attention: importable")
    except ImportError as error:
        print(f"flex_attention: {error}")


if __name__ == "__main__":
    main()
