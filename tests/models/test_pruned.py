"""A pruned model directory: written by save_pruned, read back by load_model(DIR)."""

from __future__ import annotations

import json

import pytest
import torch

from energyprune.budget import load_pruned, save_pruned
from energyprune.errors import ModelLoadError
from energyprune.models import load_model
from energyprune.pruning import prune

transformers = pytest.importorskip("transformers")


@pytest.fixture
def llama_dir(tmp_path):
    config = transformers.LlamaConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                                      num_key_value_heads=2, intermediate_size=64, vocab_size=128)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    path = tmp_path / "llama"
    model.save_pretrained(path)
    return path


def logits(model, ids):
    with torch.inference_mode():
        return model(input_ids=ids).logits


def test_a_config_that_describes_the_pruned_model_gives_a_hugging_face_copy(llama_dir, tmp_path):
    loaded = load_model(str(llama_dir))
    pruned, record = prune(loaded.module, "magnitude", 0.25, unit_kind="neuron", scope="per-layer")
    out = tmp_path / "out"
    save_pruned(out, pruned, record, loaded)
    meta = json.loads((out / "pruned.json").read_text())
    assert meta["huggingface_copy"] and (out / "config.json").is_file()
    assert meta["original"]["spec"] == str(llama_dir)
    assert meta["base"]["kind"] == "huggingface" and meta["base"]["model_class"] == "LlamaForCausalLM"
    ids = torch.randint(0, 128, (1, 6), generator=torch.Generator().manual_seed(0))
    again = load_model(str(out))
    assert torch.allclose(logits(again.module, ids), logits(pruned, ids), atol=1e-6)
    plain = transformers.LlamaForCausalLM.from_pretrained(out)  # without energyprune
    assert torch.allclose(logits(plain.eval(), ids), logits(pruned, ids), atol=1e-6)


def test_removed_attention_has_no_hugging_face_copy_but_reloads(llama_dir, tmp_path):
    loaded = load_model(str(llama_dir))
    pruned, record = prune(loaded.module, "magnitude", 1, unit_kind="attention")
    out = tmp_path / "out"
    save_pruned(out, pruned, record, loaded)
    assert not (out / "config.json").exists()  # the config cannot say "no attention in block i"
    ids = torch.randint(0, 128, (1, 6), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(logits(load_pruned(out).module, ids), logits(pruned, ids), atol=1e-6)


def test_the_folder_is_self_contained_and_a_damaged_description_is_a_load_error(llama_dir, tmp_path):
    loaded = load_model(str(llama_dir))
    pruned, record = prune(loaded.module, "magnitude", 1, unit_kind="attention")
    out = tmp_path / "out"
    save_pruned(out, pruned, record, loaded)
    for name in list(llama_dir.iterdir()):
        name.unlink()
    llama_dir.rmdir()
    ids = torch.randint(0, 128, (1, 6), generator=torch.Generator().manual_seed(0))
    # The original is gone: the stored config rebuilds it.
    assert torch.allclose(logits(load_model(str(out)).module, ids), logits(pruned, ids), atol=1e-6)
    (out / "pruned.json").write_text("{")
    with pytest.raises(ModelLoadError, match="cannot be read"):
        load_model(str(out))


def test_pruning_a_pruned_folder_keeps_the_whole_record(llama_dir, tmp_path):
    loaded = load_model(str(llama_dir))
    first, record = prune(loaded.module, "magnitude", 1, unit_kind="block")
    save_pruned(tmp_path / "one", first, record, loaded)
    again = load_model(str(tmp_path / "one"))
    second, record2 = prune(again.module, "magnitude", 1, unit_kind="block")
    save_pruned(tmp_path / "two", second, record2, again)
    meta = json.loads((tmp_path / "two" / "pruned.json").read_text())
    assert len(meta["record"]["ops"]) == 2 and meta["base"]["kind"] == "huggingface"
    ids = torch.randint(0, 128, (1, 6), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(logits(load_model(str(tmp_path / "two")).module, ids), logits(second, ids), atol=1e-6)
