"""A pruned model directory: written by save_pruned, read back by load_model(DIR)."""

from __future__ import annotations

import json

import pytest
import torch

from energyprune.budget import load_pruned, save_pruned
from energyprune.budget.saved import source_of
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
    pruned, record = prune(loaded.module, "magnitude", 0.25, unit_kind="neuron")
    out = tmp_path / "out"
    save_pruned(out, pruned, record, source_of(loaded))
    meta = json.loads((out / "pruned.json").read_text())
    assert meta["huggingface_copy"] and (out / "config.json").is_file()
    assert meta["original"]["spec"] == str(llama_dir.resolve())
    ids = torch.randint(0, 128, (1, 6), generator=torch.Generator().manual_seed(0))
    again = load_model(str(out))
    assert torch.allclose(logits(again.module, ids), logits(pruned, ids), atol=1e-6)
    plain = transformers.LlamaForCausalLM.from_pretrained(out)  # without energyprune
    assert torch.allclose(logits(plain.eval(), ids), logits(pruned, ids), atol=1e-6)


def test_removed_attention_has_no_hugging_face_copy_but_reloads(llama_dir, tmp_path):
    loaded = load_model(str(llama_dir))
    pruned, record = prune(loaded.module, "magnitude", 1, unit_kind="attention")
    out = tmp_path / "out"
    save_pruned(out, pruned, record, source_of(loaded))
    assert not (out / "config.json").exists()  # the config cannot say "no attention in block i"
    ids = torch.randint(0, 128, (1, 6), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(logits(load_pruned(out).module, ids), logits(pruned, ids), atol=1e-6)


def test_a_missing_original_or_damaged_description_is_a_load_error(llama_dir, tmp_path):
    loaded = load_model(str(llama_dir))
    pruned, record = prune(loaded.module, "magnitude", 1, unit_kind="attention")
    out = tmp_path / "out"
    save_pruned(out, pruned, record, source_of(loaded))
    for name in list(llama_dir.iterdir()):
        name.unlink()
    llama_dir.rmdir()
    with pytest.raises(ModelLoadError, match="cannot be loaded any more"):
        load_model(str(out))
    (out / "pruned.json").write_text("{")
    with pytest.raises(ModelLoadError, match="cannot be read"):
        load_model(str(out))
