"""benchmarks/validate_memory.py's arithmetic against independent references: transformers' own models for the
parameter counts, peft for the LoRA trainable count, torch's saved-tensor hooks for the activation bytes, and the
published model sizes. No model is downloaded; every model here is a few thousand parameters built from a config.
"""

import contextlib
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _load_script():
    spec = importlib.util.spec_from_file_location("validate_memory", ROOT / "benchmarks" / "validate_memory.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("validate_memory", module)
    spec.loader.exec_module(module)
    return module


vm = _load_script()

HIDDEN, INTERMEDIATE, HEADS, VOCAB = 64, 160, 4, 128


def llama(layers: int = 2, kv_heads: int = 2, tied: bool = False, dtype=torch.float32):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=layers,
                         num_attention_heads=HEADS, num_key_value_heads=kv_heads, vocab_size=VOCAB,
                         tie_word_embeddings=tied, attn_implementation="sdpa")
    torch.manual_seed(0)
    return LlamaForCausalLM(config).to(dtype)


def olmo(layers: int = 2, dtype=torch.float32):
    from transformers import OlmoConfig, OlmoForCausalLM

    config = OlmoConfig(hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=layers,
                        num_attention_heads=HEADS, num_key_value_heads=HEADS, vocab_size=VOCAB,
                        tie_word_embeddings=True, attn_implementation="sdpa")
    torch.manual_seed(0)
    return OlmoForCausalLM(config).to(dtype)


def shape_of(model, norm_weights: bool) -> "vm.Shape":
    """The script's Shape of a transformers model, read from its config."""
    c = model.config
    return vm.Shape(hidden=c.hidden_size, layers=c.num_hidden_layers, heads=c.num_attention_heads,
                    kv_heads=c.num_key_value_heads, intermediate=c.intermediate_size, vocab=c.vocab_size,
                    tied=c.tie_word_embeddings, norm_weights=norm_weights)


@pytest.mark.parametrize("kv_heads,tied", [(2, False), (2, True), (4, False), (1, True)])
def test_parameter_count_equals_transformers_llama(kv_heads, tied):
    model = llama(kv_heads=kv_heads, tied=tied)
    assert vm.parameter_count(shape_of(model, norm_weights=True))["total"] == sum(p.numel() for p in model.parameters())


def test_parameter_count_equals_transformers_olmo_whose_norms_have_no_weights():
    model = olmo()
    assert vm.parameter_count(shape_of(model, norm_weights=False))["total"] == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("kv_heads,tied", [(2, False), (4, True)])
def test_lora_trainable_count_equals_peft_all_linear(kv_heads, tied):
    from peft import LoraConfig, get_peft_model

    model = llama(kv_heads=kv_heads, tied=tied)
    shape = shape_of(model, norm_weights=True)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    assert vm.lora_parameter_count(shape, 8) == peft_model.get_nb_trainable_parameters()[0]


@pytest.mark.parametrize("name", list(vm.SHAPES))
def test_published_totals_within_one_percent(name):
    shape = vm.shape(name)
    assert abs(vm.parameter_count(shape)["total"] / shape.published - 1) < 0.01


def test_the_published_shapes_exact_counts():
    # hand arithmetic, independent of the script: OLMo-1B = V h + L (4 h^2 + 3 h I); Llama-3-8B adds GQA k/v,
    # RMSNorm weights and an untied lm_head
    olmo_1b = 50304 * 2048 + 16 * (4 * 2048 ** 2 + 3 * 2048 * 8192)
    llama_8b = (2 * 128256 * 4096 + 32 * (2 * 4096 ** 2 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 2 * 4096) + 4096)
    assert vm.parameter_count(vm.shape("OLMo-1B"))["total"] == olmo_1b == 1_176_764_416
    assert vm.parameter_count(vm.shape("Llama-3-8B"))["total"] == llama_8b == 8_030_261_248


def _saved_bytes(model, tokens: int, autocast: bool) -> int:
    """Bytes of the distinct non-parameter storages autograd saves in a forward of the decoder body."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor):
        pointer = tensor.untyped_storage().data_ptr()
        if pointer not in parameters:
            saved[pointer] = tensor.untyped_storage().nbytes()
        return tensor

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cast = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    torch.manual_seed(1)
    ids = torch.randint(0, VOCAB, (2, tokens))
    with cast, torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        base.model(input_ids=ids)
    return sum(saved.values())


def _measured_per_token_layer(build, lora_r: int | None, autocast: bool) -> float:
    """Saved bytes per token per decoder layer: the second difference over 1 vs 3 layers and 32 vs 64 tokens
    (removes what does not grow with both: the first layer's frozen input, the final norm, cached weight casts)."""
    def measure(layers, tokens):
        model = build(layers)
        if lora_r is not None:
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(r=lora_r, lora_alpha=2 * lora_r, target_modules="all-linear"))
        return _saved_bytes(model, tokens, autocast)

    second = measure(3, 64) - measure(3, 32) - measure(1, 64) + measure(1, 32)
    return second / (2 * 2 * 32)   # 2 more layers x batch 2 x 32 more tokens


@pytest.mark.parametrize("lora_r,autocast,saved", [(None, False, 2), (8, False, 4), (8, True, 2)])
def test_activation_bytes_equal_the_tensors_autograd_saves_llama(lora_r, autocast, saved):
    measured = _measured_per_token_layer(lambda layers: llama(layers, dtype=torch.bfloat16), lora_r, autocast)
    shape = shape_of(llama(1), norm_weights=True)
    assert measured == vm.activation_bytes_per_token_layer(shape, lora_r, lora_saved_bytes=saved)


def test_activation_bytes_equal_the_tensors_autograd_saves_olmo():
    measured = _measured_per_token_layer(lambda layers: olmo(layers, dtype=torch.bfloat16), None, False)
    assert measured == vm.activation_bytes_per_token_layer(shape_of(olmo(1), norm_weights=False), None)


def test_table_rows_and_json(tmp_path):
    output = tmp_path / "memory.json"
    assert vm.main(["--json", str(output)]) == 0
    import json

    result = json.loads(output.read_text())
    assert len(result["rows"]) == 2 * 2 * 2
    row = next(r for r in result["rows"] if r["setting"] == {"model": "Llama-3-8B", "method": "lora",
                                                              "checkpointing": True, "lora_r": 8,
                                                              "batch_pairs": 8, "max_length": 512})
    terms = row["bytes"]
    parts = ("weights", "adapters", "gradients", "adamw", "activations", "lm_head", "backward_workspace", "overhead")
    assert terms["total"] == pytest.approx(sum(terms[p] for p in parts))
    assert terms["weights"] == 2 * 8_030_261_248 and row["fits_80gb"]
    # LoRA: float32 adapters, their gradients and two AdamW moments, 4 + 4 + 8 bytes each
    assert terms["gradients"] == 4 * 20_971_520 and terms["adamw"] == 8 * 20_971_520
