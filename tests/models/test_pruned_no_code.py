"""Opening a pruned folder never runs code: not from the folder, not from a path it names."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from torch import nn

from energyprune.budget import save_pruned
from energyprune.errors import ModelLoadError
from energyprune.models import load_model
from energyprune.pruning import prune

FACTORY = """
import pathlib
pathlib.Path({marker!r}).write_text("ran")
from torch import nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(8, 8) for _ in range(3))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x

def build():
    return Net()
"""


@pytest.fixture
def factory_folder(tmp_path, monkeypatch):
    """A pruned folder whose original came from a factory module, as `prune` writes it."""
    marker = tmp_path / "marker"
    code = tmp_path / "code"
    code.mkdir()
    (code / "evil_factory.py").write_text(FACTORY.format(marker=str(marker)))
    loaded = load_model(f"{code / 'evil_factory.py'}:build")
    pruned, record = prune(loaded.module, "magnitude", 1, unit_kind="block")
    out = tmp_path / "shared"
    save_pruned(out, pruned, record, loaded)
    marker.unlink()  # building it ran the factory once, as asked; from now on nothing may run it
    # The folder also carries a module named like the factory, and the description names a cwd.
    (out / "evil_factory.py").write_text(FACTORY.format(marker=str(marker)))
    meta = json.loads((out / "pruned.json").read_text())
    meta["original"]["cwd"] = str(out)
    (out / "pruned.json").write_text(json.dumps(meta))
    sys.modules.pop("evil_factory", None)
    return out, marker, pruned


def test_a_factory_folder_is_refused_without_trust_code(factory_folder):
    out, marker, _ = factory_folder
    with pytest.raises(ModelLoadError, match="--trust-code"):
        load_model(str(out))
    assert not marker.exists()
    assert str(out) not in sys.path


def test_trust_code_runs_the_factory_it_names_and_nothing_else(factory_folder):
    out, marker, pruned = factory_folder
    loaded = load_model(str(out), trust_code=True)
    assert marker.exists()  # the factory ran, because the user said so
    x = torch.randn(2, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), pruned(x))
    assert str(out) not in sys.path


def test_the_cli_refuses_a_factory_folder_with_one_line(factory_folder, capsys):
    from energyprune.cli.main import main

    out, marker, _ = factory_folder
    code = main(["measure", str(out), "--input-shape", "8", "--duration", "0.05", "--idle", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "--trust-code" in err and "Traceback" not in err
    assert not marker.exists()


def test_weights_named_outside_the_folder_or_as_a_pickle_are_refused(tmp_path):
    loaded = load_model(None)
    pruned, record = prune(loaded.module, "magnitude", 1, unit_kind="block")
    out = tmp_path / "demo"
    save_pruned(out, pruned, record, loaded)
    assert load_model(str(out)).kind == "pruned"  # the demo base needs no code
    meta = json.loads((out / "pruned.json").read_text())
    for weights in ("state_dict.pt", "../elsewhere.safetensors"):
        meta["weights"] = weights
        (out / "pruned.json").write_text(json.dumps(meta))
        with pytest.raises(ModelLoadError, match="only a .safetensors"):
            load_model(str(out))


def test_a_remote_code_class_is_never_built(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=32, vocab_size=64)
    model = transformers.LlamaForCausalLM(config).eval()
    (tmp_path / "hf").mkdir()
    model.save_pretrained(tmp_path / "hf")
    loaded = load_model(str(tmp_path / "hf"))
    pruned, record = prune(loaded.module, "magnitude", 1, unit_kind="block")
    out = tmp_path / "out"
    save_pruned(out, pruned, record, loaded, huggingface=False)
    meta = json.loads((out / "pruned.json").read_text())
    meta["base"]["model_class"] = "os.system"
    (out / "pruned.json").write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match="never runs remote code"):
        load_model(str(out))


def test_nothing_written_is_a_pickle(tmp_path):
    loaded = load_model(None)
    pruned, record = prune(loaded.module, "magnitude", 1, unit_kind="block")
    written = save_pruned(tmp_path / "d", pruned, record, loaded)
    for path in written:
        assert not path.read_bytes().startswith(b"\x80"), path  # the pickle protocol marker
        assert path.suffix in (".json", ".safetensors"), path
    assert isinstance(pruned, nn.Module)
