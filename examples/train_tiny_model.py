"""Train the small bundled model (``examples/tiny-hh-model``) from scratch on the hh-rlhf text.

The model is a 4-layer Llama-architecture causal LM with a byte-level BPE tokenizer that this script
also trains. It exists so that the quickstart, the tests and the benchmarks run offline on a model
whose hidden states are learned rather than random. It is far too small to be a useful assistant.

The training text is every distinct transcript of the bundled hh-rlhf harmless-base test split, once
as raw text (the format the data set is stored in) and once rendered with the tokenizer's chat
template, so that both standard and conversational inputs see familiar tokens.

Run (about 10 minutes on 2 CPU cores; the result is deterministic for a given torch build)::

    python examples/train_tiny_model.py --output examples/tiny-hh-model
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import random
import re
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

HERE = Path(__file__).resolve().parent
DATA = HERE / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"

BOS, EOS, PAD = "<|bos|>", "<|endoftext|>", "<|pad|>"
TURN_START, TURN_END = "<|im_start|>", "<|im_end|>"
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TURN = re.compile(r"\n\n(Human|Assistant): ")


def transcripts() -> list[str]:
    """Every distinct chosen/rejected transcript of the bundled hh-rlhf file, in file order."""
    seen: dict[str, None] = {}
    with gzip.open(DATA, "rt", encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            seen.setdefault(row["chosen"], None)
            seen.setdefault(row["rejected"], None)
    return list(seen)


def as_messages(transcript: str) -> list[dict[str, str]]:
    """Split an hh-rlhf transcript into chat messages (Human -> user, Assistant -> assistant)."""
    parts = TURN.split(transcript)[1:]
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[who], "content": text} for who, text in zip(parts[::2], parts[1::2])]


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE with a BOS-adding post-processor (like Llama's) and a ChatML chat template."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS, TURN_START, TURN_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
            ),
        ]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[TURN_START, TURN_END],
        chat_template=CHAT_TEMPLATE,
        model_max_length=2048,
    )


def token_stream(tokenizer: PreTrainedTokenizerFast, texts: list[str]) -> torch.Tensor:
    """All documents as one long id stream: raw transcript + EOS, then its chat rendering."""
    ids: list[int] = []
    for text in texts:
        ids += tokenizer(text + EOS)["input_ids"]
        messages = as_messages(text)
        if messages:
            ids += tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=HERE / "tiny-hh-model")
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--minutes", type=float, default=10.0, help="wall-clock training budget")
    parser.add_argument("--max-steps", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    random.seed(args.seed)
    texts = transcripts()
    tokenizer = train_tokenizer(texts, args.vocab_size)
    stream = token_stream(tokenizer, texts)
    print(f"{len(texts)} transcripts, {stream.numel()} training tokens")

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01, betas=(0.9, 0.95))
    windows = stream.numel() // args.seq_len
    chunks = stream[: windows * args.seq_len].view(windows, args.seq_len)
    warmup, start = 50, time.monotonic()
    model.train()
    for step in range(args.max_steps):
        elapsed = time.monotonic() - start
        if elapsed > args.minutes * 60:
            break
        progress = min(1.0, elapsed / (args.minutes * 60))
        lr_scale = min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * progress))
        for group in optimizer.param_groups:
            group["lr"] = 3e-3 * max(lr_scale, 0.02)
        batch = chunks[torch.randint(0, windows, (args.batch_size,))]
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 50 == 0:
            print(f"step {step:5d}  loss {loss.item():.3f}  {elapsed:6.0f}s", flush=True)
    model.eval()
    args.output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.output)
    tokenizer.save_pretrained(args.output)
    print(f"final loss {loss.item():.3f} after {step} steps; saved to {args.output}")


if __name__ == "__main__":
    main()
