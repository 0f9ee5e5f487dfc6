"""Held-out real text for quality: the second half of the Lee corpus through the folder's tokenizer."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from energyprune.models import load_model
from energyprune.models.calibration_data import calibration_for, heldout_text_for

SMOLLM2_CACHE = Path.home() / ".cache" / "energyprune" / "smollm2-135m-instruct"


@pytest.fixture
def folder_with_tokenizer(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("gensim")
    if not (SMOLLM2_CACHE / "tokenizer.json").is_file():
        pytest.skip("no cached SmolLM2 tokenizer (energyprune.models.zoo.load_smollm2 writes it)")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                      num_key_value_heads=1, intermediate_size=32, vocab_size=49152)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(SMOLLM2_CACHE / name, tmp_path / name)
    return tmp_path


def test_heldout_text_comes_from_the_half_calibration_does_not_use(folder_with_tokenizer):
    loaded = load_model(str(folder_with_tokenizer))
    heldout = heldout_text_for(loaded, 32, 3, "cpu")
    assert heldout is not None
    batches, description = heldout
    assert len(batches) == 3 and batches[0]["input_ids"].shape == (1, 32)
    assert description.startswith("held-out text: gensim lee_background documents 150-299")
    calibration, source = calibration_for(loaded, loaded.module, 2, 32, 2, "auto", "cpu")
    assert "documents 0-149" in source
    seen = {tuple(row.tolist()) for b in calibration for row in b["input_ids"]}
    assert not any(tuple(b["input_ids"][0].tolist()) in seen for b in batches)


def test_no_tokenizer_means_no_heldout_text(tmp_path):
    from energyprune.models import load_model as load

    assert heldout_text_for(load(None), 32, 2, "cpu") is None  # the built-in demo
