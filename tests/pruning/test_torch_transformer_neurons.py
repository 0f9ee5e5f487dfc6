"""Neuron pruning and folding of PyTorch's own nn.TransformerEncoderLayer (the built-in demo).

Its MLP is linear1 -> activation -> linear2. In eval mode under inference mode PyTorch runs the
whole layer in one fused kernel (the "fast path"), which reads linear1 / linear2's weights itself:
pruned weights must work there, hooks inside the layer do not fire there (criteria switch it off
while observing), and a folded layer must leave it.
"""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch

from energyprune.models.demo import build_demo_model
from energyprune.metrics.flops import fused_kernels_visible
from energyprune.pruning import prune, units_for
from energyprune.pruning.surgery.neurons import find_mlps
from energyprune.pruning.surgery import fold_activation, prune_mlp_neurons


@pytest.fixture(scope="module")
def demo() -> torch.nn.Module:
    return build_demo_model(seed=0)


@pytest.fixture(scope="module")
def tokens(demo) -> torch.Tensor:
    return demo.example_inputs(2, seq_len=16, seed=1)


FUSED_OP = "aten::_transformer_encoder_layer_fwd"


def _run(model: torch.nn.Module, x: torch.Tensor, fast: bool) -> torch.Tensor:
    """The model's output on the fused fast path (checked: the fused op ran) or the unfused one."""
    model.eval()
    context = contextlib.nullcontext() if fast else fused_kernels_visible()
    with context, torch.inference_mode(), torch.autograd.profiler.profile() as profile:
        out = model(x).clone()
    assert (FUSED_OP in {e.name for e in profile.function_events}) == fast
    return out


def test_the_demo_mlps_are_found(demo):
    specs = find_mlps(demo)
    layer = demo.layers[0]
    assert [s.path for s in specs] == [f"layers.{i}" for i in range(len(demo.layers))]
    assert all(s.producers == ("linear1",) and s.consumer == "linear2" for s in specs)
    assert specs[0].hidden_size == layer.linear1.out_features
    assert len(units_for(demo, "neuron")) == sum(s.hidden_size for s in specs)


@pytest.mark.parametrize("fast", [True, False], ids=["fused fast path", "unfused"])
def test_pruned_neurons_equal_zeroed_neurons_on_both_paths(demo, tokens, fast):
    spec = find_mlps(demo)[1]
    removed = list(range(0, spec.hidden_size, 4))  # a quarter of layer 1's neurons
    pruned, record = prune_mlp_neurons(demo, {spec.path: removed})
    assert pruned.layers[1].linear1.out_features == spec.hidden_size - len(removed)
    assert record.ops[0].params_after < record.ops[0].params_before

    # The reference: the original with those neurons' activations zeroed before linear2.
    def zero(module, args):
        hidden = args[0].clone()
        hidden[..., removed] = 0
        return (hidden,)

    handle = demo.layers[1].linear2.register_forward_pre_hook(zero)
    try:
        expected = _run(demo, tokens, fast=False)  # hooks fire on the unfused path only
    finally:
        handle.remove()
    torch.testing.assert_close(_run(pruned, tokens, fast), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("criterion", ["magnitude", "mipp", "thermodynamic", "nepenthe", "random"])
def test_every_neuron_criterion_scores_the_demo(demo, tokens, criterion):
    calibration = [demo.example_inputs(2, seq_len=16, seed=s) for s in range(2)]
    outcome = prune(demo, criterion, 0.25, calibration, unit_kind="neuron", scope="per-layer")
    specs = find_mlps(outcome.model)
    assert all(s.hidden_size == find_mlps(demo)[0].hidden_size * 3 // 4 for s in specs)
    out = _run(outcome.model, tokens, fast=True)
    assert out.shape == _run(demo, tokens, fast=True).shape and torch.isfinite(out).all()


def test_a_folded_layer_leaves_the_fast_path_and_computes_the_folded_map(demo, tokens):
    folded, _ = fold_activation(demo, "layers.2")
    layer = folded.layers[2]
    assert layer.activation_relu_or_gelu == 0  # the fused kernel would apply ReLU and read linear2
    # The same layer with its activation replaced by the identity, unfolded: what folding promises.
    reference = build_demo_model(seed=0)
    reference.layers[2].activation = torch.nn.Identity()
    reference.layers[2].activation_relu_or_gelu = 0
    expected = _run(reference, tokens, fast=False)
    torch.testing.assert_close(_run(folded, tokens, fast=True), expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(_run(folded, tokens, fast=False), expected, rtol=1e-4, atol=1e-4)


def test_folding_the_first_layer_of_a_transformer_encoder_keeps_padding_masks_working():
    """nn.TransformerEncoder has its own nested-tensor fast path, which reads layers[0].linear2:
    after folding layer 0 it must be off, and the masked forward must equal the unfused reference."""
    torch.manual_seed(0)
    encoder = torch.nn.TransformerEncoder(
        torch.nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 3, enable_nested_tensor=True).eval()
    x = torch.randn(2, 5, 16)
    mask = torch.tensor([[False] * 5, [False, False, False, True, True]])
    folded, _ = fold_activation(encoder, "layers.0")
    assert folded.use_nested_tensor is False
    reference = copy.deepcopy(encoder)
    reference.layers[0].activation = torch.nn.Identity()
    reference.layers[0].activation_relu_or_gelu = 0
    reference.use_nested_tensor = False
    with fused_kernels_visible(), torch.inference_mode():
        expected = reference(x, src_key_padding_mask=mask)
    with torch.inference_mode():
        got = folded(x, src_key_padding_mask=mask)
    keep = ~mask  # padded positions carry no meaning (the nested path returns zeros there)
    torch.testing.assert_close(got[keep], expected[keep], rtol=1e-4, atol=1e-4)
