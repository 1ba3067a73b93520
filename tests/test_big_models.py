"""Models larger than one device (device_map / max_memory with offload) and PEFT adapters give the same
scores as the plain model."""

import json

import pytest
import torch
from conftest import MODEL_DIR, hh_rows

import ches
from ches.cli import main
from ches.data.inputs import load_data


def test_device_map_with_offload_gives_the_same_scores(tmp_path):
    rows = hh_rows(6)
    plain = ches.score(rows, str(MODEL_DIR), progress=False)
    split = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
             "model.layers.2": "disk", "model.layers.3": "cpu", "model.norm": "cpu", "lm_head": "cpu"}
    offloaded = ches.score(rows, str(MODEL_DIR), device_map=split, offload_folder=tmp_path / "offload", progress=False)
    assert list(offloaded["ches"]) == pytest.approx(list(plain["ches"]), rel=1e-6)
    auto = ches.score(rows, str(MODEL_DIR), device_map="auto", max_memory={"cpu": "3MB"},
                      offload_folder=tmp_path / "offload2", progress=False)  # forces most layers to disk
    assert list(auto["ln_ches"]) == pytest.approx(list(plain["ln_ches"]), rel=1e-6)


def test_cli_max_memory(tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text("\n".join(json.dumps(row) for row in hh_rows(4)) + "\n")
    assert main(["score", str(data), "--model", str(MODEL_DIR), "--device-map", "auto", "--max-memory",
                 '{"cpu": "3MB"}', "--offload-folder", str(tmp_path / "off"), "--output", str(tmp_path / "s.jsonl"),
                 "--no-progress"]) == 0
    assert list(load_data(tmp_path / "s.jsonl")["ches"]) == pytest.approx(
        list(ches.score(str(data), str(MODEL_DIR), progress=False)["ches"]), rel=1e-6)


def test_peft_adapter_is_merged(tmp_path, tokenizer, tiny_model):
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    tiny_model("llama").save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base")  # the adapter records this path as its base
    config = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj", "up_proj"], init_lora_weights=False)
    torch.manual_seed(1)
    adapted = peft.get_peft_model(copy_of(base), config)
    adapted.save_pretrained(tmp_path / "adapter")
    merged = adapted.merge_and_unload()
    rows = hh_rows(5)
    expected = ches.score(rows, merged, tokenizer, progress=False)
    via_adapter = ches.score(rows, str(tmp_path / "adapter"), progress=False)  # tokenizer from the base folder
    assert list(via_adapter["ches"]) == pytest.approx(list(expected["ches"]), rel=1e-5)
    assert list(via_adapter["ches"]) != pytest.approx(list(ches.score(rows, base, tokenizer, progress=False)["ches"]),
                                                      rel=1e-3)


def copy_of(model):
    import copy

    return copy.deepcopy(model)
