"""Block criteria on convolutional stacks: feature maps are read channels-first, the token stream
is split into resolution stages, and blocks that change the shape of the map are never offered
for removal (removing one would break the model).

The model is built in code: a stem, then an nn.ModuleList of residual blocks in the shape of
EfficientNet's MBConv stages — shape-preserving blocks (stride 1, same width, `x + f(x)`) and
blocks that halve the resolution or widen the map (no residual). One shape-preserving block is
planted as an exact identity (its branch's last weights zeroed), so its Block Influence is 0 and
its ΔH is 0.
"""

from __future__ import annotations

import logging
import math

import pytest
import torch
from torch import nn

from energyprune.pruning import prune, units_for
from energyprune.pruning.observe.calibration import collect_block_states, shape_changing_blocks, token_rows
from energyprune.pruning.criteria import get_criterion

IDENTITY = 3


class ConvBlock(nn.Module):
    """conv-BN-ReLU-conv-BN, with a residual when the shape is kept."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return x + y if self.residual else y


class TinyCNN(nn.Module):
    # (in, out, stride): blocks 0, 2 and 5 change the shape; 1, 3, 4 and 6 keep it.
    LAYOUT = ((8, 8, 2), (8, 8, 1), (8, 12, 1), (12, 12, 1), (12, 12, 1), (12, 16, 2), (16, 16, 1))

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = nn.ModuleList(ConvBlock(*spec) for spec in self.LAYOUT)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def cnn() -> nn.Module:
    torch.manual_seed(0)
    model = TinyCNN()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):  # not the identity: random statistics
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
        model.blocks[IDENTITY].bn2.weight.zero_()
        model.blocks[IDENTITY].bn2.bias.zero_()
    return model.eval()


@pytest.fixture(scope="module")
def images() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(2, 3, 16, 16, generator=generator) for _ in range(3)]


def test_token_rows_reads_channels_of_a_feature_map_and_the_last_axis_otherwise():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    rows = token_rows(x)
    assert rows.shape == (2 * 4 * 5, 3)
    assert torch.equal(rows[0], x[0, :, 0, 0]) and torch.equal(rows[-1], x[1, :, 3, 4])
    seq = torch.randn(2, 7, 6)
    assert token_rows(seq).shape == (14, 6)
    assert token_rows(seq, feature_axis=1).shape == (12, 7)  # an explicit axis wins


def test_calibration_stages_pair_the_shape_preserving_blocks(cnn, images):
    states = collect_block_states(cnn, images, max_tokens=100)
    assert states.shape_preserving == (False, True, False, True, True, False, True)
    widths = [x.shape[1] for x in states.boundaries()]
    assert widths == [8, 8, 8, 12, 12, 12, 16, 16]  # channels, not the image width
    # 16×16 maps → 8×8 after block 0 → 4×4 after block 5: 2·64 and 2·16 positions per batch.
    assert states.tokens_seen == 3 * 2 * 16 * 16
    assert states.outputs[0].shape[0] == 100  # 384 positions seen at 8×8, sample capped
    assert states.outputs[6].shape[0] == 3 * 2 * 16  # 96 positions at 4×4, all kept
    # The identity block: its input and output samples are the same positions, equal values.
    torch.testing.assert_close(states.inputs[IDENTITY], states.outputs[IDENTITY])
    assert states.cos_mean[IDENTITY] == pytest.approx(1.0, abs=1e-6)
    for i, preserving in enumerate(states.shape_preserving):
        assert math.isnan(states.cos_mean[i]) != preserving


def test_a_paired_sample_is_the_same_pixels_as_the_model_computed(cnn, images):
    """Row j entering and leaving a preserving block is one pixel of one image: check it against
    a direct computation of that block on the captured input."""
    states = collect_block_states(cnn, images[:1], max_tokens=10_000)
    block = cnn.blocks[4]
    x_in = states.inputs[4]  # (positions, 12): all 2·8·8 positions, in order (no reservoir draw)
    maps = x_in.reshape(2, 8, 8, 12).permute(0, 3, 1, 2)
    with torch.no_grad():
        expected = token_rows(block(maps))
    torch.testing.assert_close(states.outputs[4], expected, rtol=1e-5, atol=1e-5)


def test_shape_changing_blocks_are_not_units_and_score_inf(cnn, images, caplog):
    assert shape_changing_blocks(cnn, images[0]) == (0, 2, 5)
    offered = [u.index for u in units_for(cnn, "block", images)]
    assert offered == [1, 3, 4, 6]
    assert len(units_for(cnn, "block")) == 7  # without data nothing can be checked
    cosine = get_criterion("cosine-block")
    scores = cosine.score(cnn, units_for(cnn, "block"), images)
    assert [i for i, s in enumerate(scores.values()) if s == math.inf] == [0, 2, 5]
    assert min(scores, key=scores.get).index == IDENTITY
    with caplog.at_level(logging.WARNING):
        profile = get_criterion("entropy-block", stage="all", protect=(), k=5).profile(cnn, images)
    assert [i for i, d in enumerate(profile.delta) if math.isnan(d)] == [0, 2, 5]
    assert profile.candidates == (1, 3, 4, 6)
    assert profile.delta[IDENTITY] == pytest.approx(0.0, abs=1e-9)
    get_criterion("entropy-block", k=5).profile(cnn, images)
    assert "changes width along depth" in caplog.text


@pytest.mark.parametrize("criterion,options", [
    ("cosine-block", {}), ("entropy-block", {"stage": "all", "protect": (), "k": 5}),
    ("magnitude", {"unit_kind": "block"}), ("random", {"unit_kind": "block"}),
])
def test_prune_removes_only_removable_blocks_and_the_model_runs(cnn, images, criterion, options):
    before = [p.detach().clone() for p in cnn.parameters()]
    outcome = prune(cnn, criterion, 3, images, **options)
    assert {u.index for u in outcome.removed} <= {1, 3, 4, 6}
    assert len(outcome.model.blocks) == 4
    with torch.no_grad():
        assert outcome.model(images[0]).shape == (2, 5)
    assert all(torch.equal(a, b) for a, b in zip(before, cnn.parameters()))  # the original is untouched
    if criterion in ("cosine-block", "entropy-block"):
        assert IDENTITY in {u.index for u in outcome.removed}
        removed_identity, _ = prune(cnn, criterion, 1, images, **options)
        with torch.no_grad():  # removing an exact identity leaves the outputs unchanged
            torch.testing.assert_close(removed_identity(images[1]), cnn(images[1]))


class PooledCNN(nn.Module):
    """Residual blocks with a pooling layer between two of them, outside the blocks (ResNet-style
    loop): the state entering block 2 is not the one leaving block 1."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = nn.ModuleList(ConvBlock(8, 8, 1) for _ in range(4))
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i == 1:
                x = self.pool(x)
        return self.head(x.mean(dim=(2, 3)))


def test_a_pooling_layer_between_blocks_starts_a_state_of_its_own(images):
    torch.manual_seed(0)
    model = PooledCNN().eval()
    states = collect_block_states(model, images, max_tokens=10_000)
    assert states.shape_preserving == (True,) * 4
    assert states.outputs[1].shape[0] == 3 * 2 * 16 * 16  # before the pool
    assert states.inputs[2].shape[0] == 3 * 2 * 8 * 8  # after it: another stage, its own buffer
    profile = get_criterion("entropy-block", stage="all", protect=(), k=5).profile(model, images)
    assert all(math.isfinite(d) for d in profile.delta)
    outcome = prune(model, "entropy-block", 1, images, stage="all", protect=(), k=5)
    with torch.no_grad():
        assert outcome.model(images[0]).shape == (2, 5)


def test_units_for_refuses_a_one_shot_iterator(cnn, images):
    from energyprune.errors import UsageError

    with pytest.raises(UsageError, match="re-iterable"):
        units_for(cnn, "block", iter(images))
    assert [u.index for u in units_for(cnn, "block", images)] == [1, 3, 4, 6]  # a list is fine


class ChannelsLast(nn.Module):
    """The TinyCNN's blocks fed channels-last maps (B, H, W, C), as some vision transformers pass
    them: the default reads axis 1 (the height) as features, `feature_axis=-1` the channels."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(_Permuted(b) for b in inner.blocks)
        self.stem = inner.stem

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x).permute(0, 2, 3, 1)
        for block in self.blocks:
            x = block(x)
        return x.mean(dim=(1, 2))


class _Permuted(nn.Module):
    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


def test_feature_axis_option_reads_channels_last_maps(cnn, images):
    model = ChannelsLast(cnn).eval()
    cosine = get_criterion("cosine-block", feature_axis=-1)
    scores = cosine.score(model, units_for(model, "block", images), images)
    expected = get_criterion("cosine-block").score(cnn, units_for(cnn, "block", images), images)
    assert [round(s, 6) for s in scores.values()] == [round(s, 6) for s in expected.values()]
    entropy = get_criterion("entropy-block", stage="all", protect=(), k=5, feature_axis=-1)
    assert entropy.profile(model, images).delta[IDENTITY] == pytest.approx(0.0, abs=1e-9)
