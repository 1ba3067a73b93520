"""Chunk shards (ches.run.cache): a shard gives back exactly what was saved, and only for the chunk, rows and
tensors it holds; anything else (another chunk's key, fewer rows, a missing tensor, a damaged file) is
recomputed with a warning naming the file. Keys follow the tokens and settings, and nothing else."""

from __future__ import annotations

import copy
import hashlib
import logging

import pytest
import torch
from edges import ROWS

import ches
from ches import ChesError
from ches.data.tokens import SequencePair, Skip, TokenSequence
from ches.model.models import load_model
from ches.run.cache import ShardCache, chunk_key, model_fingerprint, open_cache, shard_key

PAIR = SequencePair(TokenSequence([1, 2, 3], 1, 2), TokenSequence([1, 2, 4, 5], 1, 3))


def tensors(rows: int = 3) -> dict[str, torch.Tensor]:
    return {"ches": torch.arange(rows, dtype=torch.float64), "chosen_sum": torch.ones(rows, 4)}


def test_a_shard_gives_back_what_was_saved(tmp_path):
    cache = ShardCache(tmp_path, "settings")
    cache.save("abc", tensors())
    loaded = cache.load("abc", rows=3, names=("ches", "chosen_sum"))
    for name, tensor in tensors().items():
        torch.testing.assert_close(loaded[name], tensor, rtol=0, atol=0)
    assert cache.load("abc", rows=3, names=("ches",)).keys() == {"ches"}  # only what is asked for
    assert shard_key(tmp_path / "settings" / "chunk-abc.safetensors") == "abc"
    assert cache.load("other", rows=3, names=("ches",)) is None  # never written: no warning, just absent


@pytest.mark.parametrize("rows, names, why", [(4, ("ches",), "expected ches of 4 rows"),
                                              (3, ("ches", "chosen_logps"), "expected ches, chosen_logps of 3 rows")])
def test_a_shard_of_other_rows_or_lacking_a_tensor_is_recomputed(tmp_path, caplog, rows, names, why):
    cache = ShardCache(tmp_path, "settings")
    cache.save("abc", tensors())
    with caplog.at_level(logging.WARNING, logger="ches"):
        assert cache.load("abc", rows=rows, names=names) is None
    path = tmp_path / "settings" / "chunk-abc.safetensors"
    assert f"cache shard {path} is unreadable or incomplete (ValueError: {why}); recomputing it" in caplog.text


def test_a_damaged_or_renamed_shard_is_recomputed(tmp_path, caplog):
    cache = ShardCache(tmp_path, "settings")
    cache.save("abc", tensors())
    folder = tmp_path / "settings"
    (folder / "chunk-abc.safetensors").rename(folder / "chunk-xyz.safetensors")  # another chunk's name
    with caplog.at_level(logging.WARNING, logger="ches"):
        assert cache.load("xyz", rows=3, names=("ches",)) is None
    assert "it records the key 'abc', not 'xyz'" in caplog.text
    (folder / "chunk-def.safetensors").write_bytes(b"not a safetensors file")
    with caplog.at_level(logging.WARNING, logger="ches"):
        assert cache.load("def", rows=3, names=("ches",)) is None
    assert f"cache shard {folder / 'chunk-def.safetensors'} is unreadable or incomplete" in caplog.text


def test_a_file_in_the_way_of_the_cache_folder_is_named(tmp_path):

    (tmp_path / "taken").write_text("")
    with pytest.raises(ChesError, match=r"^cache_dir .*taken is not a folder \(a file is in the way\)\.$"):
        ShardCache(tmp_path / "taken", "settings")


def hand_key(plans) -> str:
    """The key written out: per row its skip reason, or per sequence its summed span and its ids as int64 bytes."""
    digest = hashlib.sha256()
    for plan in plans:
        if isinstance(plan, Skip):
            digest.update(f"skip:{plan.reason}\0".encode())
            continue
        for sequence in (plan.chosen, plan.rejected):
            digest.update(f"{sequence.start},{sequence.end}:".encode())
            digest.update(b"".join(token.to_bytes(8, "little", signed=True) for token in sequence.input_ids))
    return digest.hexdigest()[:32]


def test_the_chunk_key_follows_the_tokens_spans_and_skips():
    plans = [PAIR, Skip("empty prompt")]
    assert chunk_key(plans) == hand_key(plans)
    moved = SequencePair(TokenSequence([1, 2, 3], 0, 2), PAIR.rejected)  # same ids, other summed positions
    others = [[PAIR], [moved, Skip("empty prompt")], [PAIR, Skip("another reason")], [Skip("empty prompt"), PAIR]]
    assert len({chunk_key(plans), *(chunk_key(other) for other in others)}) == 1 + len(others)


def test_the_settings_key_changes_with_the_weights_and_layout_not_with_a_copy(tiny_model, tokenizer, tmp_path):
    model = tiny_model("llama")
    loaded = load_model(model, tokenizer)
    folder = open_cache(tmp_path, loaded, "padded").folder
    assert open_cache(tmp_path, load_model(copy.deepcopy(model), tokenizer), "padded").folder == folder
    assert open_cache(tmp_path, loaded, "packed").folder != folder
    assert open_cache(tmp_path, loaded, "padded", work="pairs").folder != folder
    changed = copy.deepcopy(model)
    with torch.no_grad():
        next(changed.parameters()).view(-1)[0] += 1e-3
    assert model_fingerprint(changed) != model_fingerprint(model)
    assert open_cache(tmp_path, load_model(changed, tokenizer), "padded").folder != folder


def test_cache_recomputes_after_one_weight_element_changes(workdir, tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(workdir / "model")
    first = ches.score(ROWS, model, tokenizer, cache_dir="cache", progress=False)
    with torch.no_grad():  # one element, far from where a strided sample would look
        parameter = model.model.layers[-1].mlp.down_proj.weight
        parameter.view(-1)[parameter.numel() // 2 + 7] += 0.5
    second = ches.score(ROWS, model, tokenizer, cache_dir="cache", progress=False)
    fresh = ches.score(ROWS, model, tokenizer, progress=False)
    assert list(second["ches"]) == pytest.approx(list(fresh["ches"]), rel=1e-9)
    assert list(second["ches"]) != pytest.approx(list(first["ches"]), rel=1e-9)
    assert len(list((workdir / "cache").iterdir())) == 2  # a second run key, the first left as it was


def test_cache_ignores_the_batch_budget_and_recomputes_a_corrupt_shard(workdir, tokenizer, caplog):
    import logging

    model = str(workdir / "model")
    first = ches.score(ROWS, model, cache_dir="cache", batch_tokens=4096, progress=False)
    [run] = list((workdir / "cache").iterdir())
    [shard] = list(run.glob("chunk-*.safetensors"))
    resumed_at = shard.stat().st_mtime_ns
    again = ches.score(ROWS, model, cache_dir="cache", batch_tokens=512, progress=False)  # another budget: same key
    assert shard.stat().st_mtime_ns == resumed_at and list(again["ches"]) == list(first["ches"])
    shard.write_bytes(shard.read_bytes()[:50])  # a shard cut short (e.g. a full disk)
    with caplog.at_level(logging.WARNING, logger="ches"):
        third = ches.score(ROWS, model, cache_dir="cache", progress=False)
    assert "is unreadable or incomplete" in caplog.text and list(third["ches"]) == pytest.approx(list(first["ches"]))


def test_cache_works_with_an_offloaded_model(workdir):
    offload = {"device_map": "auto", "max_memory": {"cpu": "150KB"}, "offload_folder": str(workdir / "offload")}
    reference = ches.score(ROWS, str(workdir / "model"), progress=False)
    scored = ches.score(ROWS, str(workdir / "model"), cache_dir="cache", progress=False, **offload)
    again = ches.score(ROWS, str(workdir / "model"), cache_dir="cache", progress=False, **offload)
    assert list(scored["ches"]) == pytest.approx(list(reference["ches"]), rel=1e-5)
    assert list(again["ches"]) == list(scored["ches"])
