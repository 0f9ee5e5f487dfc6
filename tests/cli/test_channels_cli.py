"""`energyprune score` and `energyprune prune --unit-kind channel` on a CNN built by code (ResNet-18,
small), with a scripted judge so the run is fast and certain; and the pruned folder reloads."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from energyprune.models import load_model
from tests.cli.test_prune_cli import cli, judges  # noqa: F401 - the fixture

pytest.importorskip("torch_pruning")

RESNET = "tests.vision_models:small_resnet18"


def test_score_lists_channels_of_a_cnn(capsys):
    code = cli(["score", RESNET, "--criterion", "taylor", "--unit-kind", "channel", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(captured.out)
    assert result["unit_kind"] == "channel"
    paths = {r["path"] for r in result["scores"]}
    assert "layer1.0.conv1" in paths and "fc" not in paths


def test_prune_channels_of_a_cnn_writes_a_folder_that_reloads_by_replay(tmp_path, judges, capsys):  # noqa: F811
    out = tmp_path / "resnet"
    code = cli(["prune", RESNET, "--unit-kind", "channel", "--criterion", "magnitude", "--target", "-20%",
                "--backend", "estimated", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    meta = json.loads((out / "pruned.json").read_text())
    ops = meta["record"]["ops"]
    assert ops and all(op["kind"] == "prune_channel_groups" for op in ops)
    assert ops[0]["detail"]["inputs"]["tensor"] == [1, 3, 32, 32]
    loaded = load_model(str(out), trust_code=True)  # the factory is user code: loading it asks for trust
    assert sum(p.numel() for p in loaded.module.parameters()) == meta["n_params"] < 177_362
    with torch.inference_mode():
        assert loaded.module(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_without_torch_pruning_channel_pruning_of_a_cnn_says_how_to_install_it(tmp_path, judges, monkeypatch,  # noqa: F811
                                                                                capsys):
    monkeypatch.setitem(sys.modules, "torch_pruning", None)
    code = cli(["prune", RESNET, "--unit-kind", "channel", "--criterion", "magnitude", "--target", "-20%",
                "--backend", "estimated", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "pip install 'energyprune[cnn]'" in lines[0]
    assert not (tmp_path / "x").exists()
