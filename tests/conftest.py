"""Shared fixtures: the project's BPE tokenizer, real hh-rlhf rows in three formats, tiny models."""

from __future__ import annotations

import gzip
import json
import os
import re
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# The tests' own tensor work (reference forwards, DPO probes) is on models a few thousand weights wide: one
# thread runs it fastest, and it never waits for a core another process holds (docs/performance.md#cpu-threads).
torch.set_num_threads(int(os.environ.get("CHES_TEST_THREADS", "1")))

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / "examples" / "tiny-hh-model"
HH_FILE = ROOT / "examples" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"
TURN = re.compile(r"\n\n(Human|Assistant): ")


def hh_rows(count: int, start: int = 0) -> list[dict]:
    """Real implicit-prompt pairs from the bundled hh-rlhf harmless-base test split."""
    with gzip.open(HH_FILE, "rt", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    return rows[start : start + count]


def as_messages(transcript: str) -> list[dict]:
    parts = TURN.split(transcript)[1:]
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[who], "content": text} for who, text in zip(parts[::2], parts[1::2])]


def standard_rows(rows: list[dict]) -> list[dict]:
    """Explicit prompt: split each transcript at its last 'Assistant:' turn."""
    out = []
    for row in rows:
        cut = row["chosen"].rfind("\n\nAssistant:") + len("\n\nAssistant:")
        out.append({"prompt": row["chosen"][:cut], "chosen": row["chosen"][cut:],
                    "rejected": row["rejected"][row["rejected"].rfind("\n\nAssistant:") + len("\n\nAssistant:"):]})
    return out


def conversational_rows(rows: list[dict]) -> list[dict]:
    out = []
    for row in rows:
        chosen, rejected = as_messages(row["chosen"]), as_messages(row["rejected"])
        out.append({"prompt": chosen[:-1], "chosen": chosen[-1:], "rejected": rejected[-1:]})
    return out


def levenshtein(a, b) -> int:
    """Textbook O(len(a) * len(b)) edit distance, the independent reference for ches.scores.edit_distance."""
    table = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            table[i][j] = min(table[i - 1][j] + 1, table[i][j - 1] + 1, table[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
    return table[-1][-1]


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(MODEL_DIR)


ARCHITECTURES = ["llama", "qwen2", "gemma", "gpt2", "olmo2", "gpt_neox"]


def tiny_config(architecture: str, vocab_size: int, tokenizer):
    """A 2-layer, 32-wide random model of the given architecture, sized for the project's tokenizer."""
    from transformers import AutoConfig

    common = dict(vocab_size=vocab_size, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.pad_token_id)
    if architecture == "gpt2":
        return AutoConfig.for_model("gpt2", n_embd=32, n_layer=2, n_head=4, n_positions=1024, **common)
    extra = {"gemma": dict(head_dim=8, num_key_value_heads=1), "qwen2": dict(num_key_value_heads=2),
             "llama": dict(num_key_value_heads=2)}.get(architecture, {})
    return AutoConfig.for_model(architecture, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=4, max_position_embeddings=4096, **extra, **common)


@pytest.fixture(scope="session")
def tiny_model(tokenizer):
    """Factory: a tiny randomly initialized causal LM of an architecture, fixed seed, float32, eval mode."""
    from transformers import AutoModelForCausalLM

    cache = {}

    def build(architecture: str = "llama"):
        if architecture not in cache:
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(tiny_config(architecture, len(tokenizer), tokenizer))
            # random init gives near-identical hidden states; widen the spread so scores are informative
            with torch.no_grad():
                for parameter in model.parameters():
                    if parameter.dim() > 1:
                        parameter.normal_(0, 0.2)
            cache[architecture] = model.eval()
        return cache[architecture]

    return build


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A working folder holding a small data file, a scored Parquet file, a model copy and an unrelated file
    (the edge-case tests: tests/edges.py); the test runs in it."""
    import shutil

    from edges import ROWS, scored_rows

    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    scored_rows(tmp_path)
    shutil.copytree(MODEL_DIR, tmp_path / "model")
    (tmp_path / "notes.txt").write_text("my notes")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "keep-me.txt").write_text("unrelated work")
    monkeypatch.chdir(tmp_path)
    return tmp_path
