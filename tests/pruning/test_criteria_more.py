"""NEPENTHE, MIPP, thermodynamic and energy-aware criteria on tiny models with planted units.

Planted units are exact: a bias of −100 makes a unit never ON; +100 on every unit of a layer makes
its ReLU the identity on the data; a zero consumer column makes a unit's output vanish (so its
gradient is exactly zero on every batch); an equal producer row duplicates a unit.
"""

from __future__ import annotations

import inspect
import logging
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from energyprune.errors import UsageError
from energyprune.backends.base import Provenance
from energyprune.measure.meter import MeterConfig
from energyprune.pruning.base import Unit
from energyprune.pruning.criteria import (
    CRITERIA,
    MippCriterion,
    activation_units,
    block_units,
    dead_neurons,
    get_criterion,
    neuron_units,
)
from energyprune.pruning.criteria.energy_aware import damage_per_joule
from energyprune.pruning.criteria.mipp import eliminate
from energyprune.pruning.criteria.nepenthe import on_off_statistics, onoff_entropy
from energyprune.pruning.criteria.thermodynamic import default_loss
from energyprune.pruning.surgery import fold_activation, remove_dead_neurons

VOCAB = 128
QUICK = MeterConfig(window_s=0.05, repeats=2, precision=0, idle_s=0.05, min_warmup_s=0, max_warmup_s=0.02)


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a small shared machine, OpenMP threads waiting for a busy core turn
    a 1 ms call into 40 ms (and the energy-aware windows grow with it); tiny models gain nothing
    from more threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Stack(nn.Module):
    """Residual stack of plain Sequential MLPs (d -> h -> d), then a linear head."""

    def __init__(self, layers: int = 3, d: int = 8, h: int = 16, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.layers = nn.ModuleList([nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, d)) for _ in range(layers)])
        self.head = nn.Linear(d, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = x + layer(x)
        return self.head(x)


def tensors(n: int = 4, rows: int = 64, width: int = 8, seed: int = 1) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(rows, width, generator=generator) for _ in range(n)]


def token_batches(n: int = 3, batch: int = 4, length: int = 16, pad: int = 0) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(2)
    out = []
    for _ in range(n):
        mask = torch.ones(batch, length, dtype=torch.long)
        mask[0, :pad] = 0
        out.append({"input_ids": torch.randint(3, VOCAB, (batch, length), generator=generator), "attention_mask": mask})
    return out


def gpt2(layers: int = 3) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_embd=32, n_layer=layers, n_head=4, vocab_size=VOCAB, bos_token_id=0, eos_token_id=0)).eval()


def llama(layers: int = 2) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=32, num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, vocab_size=VOCAB)).eval()


def lowest(scores: dict[Unit, float]) -> Unit:
    return min(scores, key=scores.get)


# ---------------------------------------------------------------------------------- registry
NEW = ("nepenthe", "mipp", "thermodynamic", "energy-aware")


@pytest.mark.parametrize("name", NEW)
def test_new_criteria_are_registered_and_unknown_options_list_the_accepted_ones(name):
    assert name in CRITERIA
    accepted = [p for p in inspect.signature(CRITERIA[name].__init__).parameters if p != "self"]
    with pytest.raises(UsageError, match="options are") as error:
        get_criterion(name, bogus_option=1)
    assert "bogus_option" in str(error.value)
    for option in accepted:
        assert option in str(error.value)
    with pytest.raises(UsageError, match="unit_kind must be one of"):
        get_criterion(name, unit_kind="head")


# ---------------------------------------------------------------------------------- nepenthe
def test_onoff_entropy_known_values():
    h = onoff_entropy(torch.tensor([0.0, 1.0, 0.5, 0.25]))
    assert h.tolist() == pytest.approx([0.0, 0.0, 1.0, 0.25 * 2 + 0.75 * math.log2(4 / 3)])


def test_nepenthe_finds_the_dead_unit_and_scores_the_linear_layer_lowest():
    model = gpt2()
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.bias[5] = -100.0  # never ON
        model.transformer.h[2].mlp.c_fc.bias += 100.0  # every unit always ON: GELU is the identity here
    data = token_batches(pad=4)
    assert dead_neurons(model, data) == {"transformer.h.0.mlp": [5]}
    units = activation_units(model)
    assert units == [Unit("activation", f"transformer.h.{i}.mlp", 0) for i in range(3)]
    criterion = get_criterion("nepenthe")
    scores = criterion.score(model, units, data)
    assert scores[units[2]] == 0.0 and lowest(scores) == units[2]
    assert min(scores[units[0]], scores[units[1]]) > 0.5
    stats = criterion.last_stats["transformer.h.0.mlp"]
    assert stats.tokens == 3 * 4 * 16 - 3 * 4  # padding tokens are not counted
    assert stats.p[5] == 0.0 and stats.producer == "transformer.h.0.mlp.c_fc"
    neuron_scores = get_criterion("nepenthe", unit_kind="neuron").score(model, neuron_units(model), data)
    assert neuron_scores[Unit("neuron", "transformer.h.0.mlp", 5)] == 0.0
    assert all(v == 0.0 for u, v in neuron_scores.items() if u.path == "transformer.h.2.mlp")


def test_nepenthe_counts_equal_a_direct_computation_and_fold_is_exact_on_the_all_on_layer():
    model = Stack().eval()
    with torch.no_grad():
        model.layers[1][0].bias += 100.0
    data = tensors()
    stats = on_off_statistics(model, data)
    x = torch.cat(data)
    with torch.no_grad():  # the pre-activation of layer 0 is its first Linear on the stack input
        expected = (model.layers[0][0](x) > 0).double().mean(dim=0)
    assert torch.equal(stats["layers.0"].p, expected)
    scores = get_criterion("nepenthe").score(model, activation_units(model), data)
    assert lowest(scores) == Unit("activation", "layers.1", 0) and scores[lowest(scores)] == 0.0
    folded, _ = fold_activation(model, "layers.1")
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), rtol=1e-4, atol=1e-3)


def test_nepenthe_layer_mean_skips_dead_units_and_an_all_dead_layer_scores_inf(caplog):
    model = Stack().eval()
    with torch.no_grad():
        model.layers[0][0].bias[:4] = -100.0  # four dead units in layer 0
        model.layers[2][0].bias[:] = -100.0  # layer 2 entirely dead
    data = tensors()
    units = activation_units(model)
    with caplog.at_level(logging.WARNING):
        scores = get_criterion("nepenthe").score(model, units, data)
    stats = on_off_statistics(model, data)["layers.0"]
    assert scores[units[0]] == pytest.approx(float(stats.entropy_bits[4:].mean()))
    with_dead = get_criterion("nepenthe", exclude_dead=False).score(model, units[:1], data)
    assert with_dead[units[0]] == pytest.approx(float(stats.entropy_bits.mean()))
    assert scores[units[2]] == math.inf and "always OFF" in caplog.text
    assert dead_neurons(model, data)["layers.0"] == [0, 1, 2, 3]
    assert dead_neurons(model, data, threshold=0.999)["layers.2"] == list(range(16))


def test_nepenthe_gated_mlps_use_the_gate_and_are_not_offered_for_folding():
    model = llama()
    with torch.no_grad():
        model.model.layers[1].mlp.gate_proj.weight[9] = 0.0  # gate pre-activation 0: never > 0, SiLU(0) = 0
    data = token_batches(n=2)
    assert activation_units(model) == []
    with pytest.raises(UsageError, match="gated MLP"):
        get_criterion("nepenthe").score(model, [Unit("activation", "model.layers.0.mlp", 0)], data)
    dead = dead_neurons(model, data)
    assert dead == {"model.layers.1.mlp": [9]}
    scores = get_criterion("nepenthe", unit_kind="neuron").score(model, neuron_units(model), data)
    assert scores[Unit("neuron", "model.layers.1.mlp", 9)] == 0.0
    pruned, _ = remove_dead_neurons(model, dead)  # removing a truly dead SiLU unit changes nothing
    with torch.no_grad():
        batch = data[0]
        assert torch.allclose(pruned(**batch).logits, model(**batch).logits, atol=1e-5)


# -------------------------------------------------------------------------------------- mipp
def planted_mlp() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8))
    with torch.no_grad():
        net[0].weight[3] = net[0].weight[5]  # unit 3 duplicates unit 5
        net[0].bias[3] = net[0].bias[5]
        net[2].weight[:, 7] = 0.0  # unit 7 reaches nothing
        net[2].weight[:, 10] *= 10.0  # unit 10 carries most of the output
    return net.eval()


def test_mipp_eliminates_the_zero_output_and_duplicate_units_first_and_keeps_the_informative_one():
    net = planted_mlp()
    units = [Unit("neuron", "", j) for j in range(16)]
    criterion = get_criterion("mipp")
    scores = criterion.score(net, units, tensors(n=8, rows=256))
    result = criterion.last_results[""]
    assert set(result.order) == set(range(16)) and result.tokens == 2048
    assert result.order[0] == 7 and result.order[1] in (3, 5)
    assert criterion.last_prunable[""] == sorted(result.order[:2])
    assert result.order[-1] == 10 and 10 not in result.prunable
    assert result.losses[-1] > 1.0 > 1e-4 > result.losses[0]
    assert {u.index for u, v in scores.items() if v < 1.0} == set(result.prunable)
    assert lowest(scores).index == 7


def test_mipp_losses_equal_a_brute_force_recomputation():
    generator = torch.Generator().manual_seed(3)
    n, h, d = 400, 6, 3
    A = torch.randn(n, h, generator=generator, dtype=torch.float64)
    Y = A @ torch.randn(h, d, generator=generator, dtype=torch.float64) + 0.5 * torch.randn(n, d, generator=generator, dtype=torch.float64)
    result = eliminate(A, Y, ridge=1e-8, noise=1e-3, seed=0)
    Ac, Yc = A - A.mean(0), Y - Y.mean(0)
    var = float(Ac.square().mean(0).mean())
    z = torch.randn(n, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * math.sqrt(var)
    X = torch.cat([Ac, z - z.mean()], dim=1)
    Sxx, Sxy, Syy = X.T @ X / n, X.T @ Yc / n, Yc.T @ Yc / n
    N = 1e-3 * float(torch.trace(Syy)) / d * torch.eye(d, dtype=torch.float64)

    def info(subset: list[int]) -> float:
        inner = Sxx[subset][:, subset] + 1e-8 * var * torch.eye(len(subset), dtype=torch.float64)
        R = Syy - Sxy[subset].T @ torch.linalg.solve(inner, Sxy[subset])
        return 0.5 * float(torch.logdet(Syy + N) - torch.logdet(R + N))

    remaining = list(range(h + 1))  # the null unit (column h) is never eliminated
    assert result.information_nats == pytest.approx(info(remaining), rel=1e-9)
    for unit, loss in zip(result.order, result.losses):
        assert loss == pytest.approx(info(remaining) - info([r for r in remaining if r != unit]), rel=1e-6, abs=1e-12)
        assert loss == pytest.approx(min(info(remaining) - info([r for r in remaining if r != u])
                                         for u in remaining if u != h), rel=1e-6, abs=1e-12)
        remaining.remove(unit)
    # in chunks (3 units per step) the order within a chunk comes from the step's losses, but each
    # recorded loss is still the exact loss given the units eliminated before it
    chunked = eliminate(A, Y, ridge=1e-8, noise=1e-3, seed=0, max_steps=2)
    assert chunked.steps == 2
    remaining = list(range(h + 1))
    for unit, loss in zip(chunked.order, chunked.losses):
        assert loss == pytest.approx(info(remaining) - info([r for r in remaining if r != unit]), rel=1e-6, abs=1e-12)
        remaining.remove(unit)


def test_mipp_chunked_elimination_and_limits():
    net = planted_mlp()
    units = [Unit("neuron", "", j) for j in range(16)]
    criterion = MippCriterion(max_steps=4)
    criterion.score(net, units, tensors(n=8, rows=256))
    result = criterion.last_results[""]
    assert result.steps == 4 and sorted(result.order) == list(range(16))
    assert set(result.order[:2]) == {7, result.order[1]} and result.order[1] in (3, 5)
    # 7 and 3 and 5 come in the first chunk; once one duplicate is gone the other's loss is real
    assert len(result.prunable) == 2 and result.losses[2] > 0.1
    with pytest.raises(UsageError, match="max_width"):
        MippCriterion(max_width=8).score(net, units, tensors())


def test_mipp_on_a_language_model_skips_padding():
    model = gpt2(layers=2)
    data = token_batches(n=2, pad=6)
    criterion = get_criterion("mipp", max_tokens=100)
    scores = criterion.score(model, neuron_units(model), data)
    assert len(scores) == 2 * 128 and all(math.isfinite(v) for v in scores.values())
    assert {r.tokens for r in criterion.last_results.values()} == {100}
    criterion = get_criterion("mipp", max_tokens=4096)
    criterion.score(model, neuron_units(model)[:1], data)
    assert criterion.last_results["transformer.h.0.mlp"].tokens == 2 * 4 * 16 - 2 * 6


# ----------------------------------------------------------------------------- thermodynamic
def test_thermodynamic_inert_unit_first_hot_unit_next_and_the_model_untouched():
    model = Stack(layers=2)
    with torch.no_grad():
        model.layers[0][2].weight[:, 4] = 0.0  # unit 4 of layer 0: its output is multiplied by 0
        model.layers[1][2].weight[:, 6] *= 10.0  # unit 6 of layer 1: 10x the gradient, 100x the variance
    model.layers[1][0].bias.requires_grad_(False)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    criterion = get_criterion("thermodynamic", t_anneal=10.0)
    with torch.no_grad():  # the criterion turns gradients on for itself
        scores = criterion.score(model, neuron_units(model), tensors(n=6))
    inert = Unit("neuron", "layers.0", 4)
    assert scores[inert] == -math.inf and criterion.last_inert == {"layers.0": [4]}
    layer = criterion.last_layers["layers.1"]
    assert int(layer.temperature.argmax()) == 6
    finite = {u: v for u, v in scores.items() if math.isfinite(v)}
    assert lowest(finite) == Unit("neuron", "layers.1", 6)  # the hottest goes first
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert model.training and all(m.training for m in model.modules())


def test_thermodynamic_without_annealing_is_the_weight_energy_and_channels_work():
    model = Stack(layers=2).eval()
    scores = get_criterion("thermodynamic", t_anneal=0.0).score(model, neuron_units(model), tensors())
    rows = model.layers[1][0].weight.detach().double().square().sum(dim=1)
    expected = rows / rows.mean()
    got = torch.tensor([scores[Unit("neuron", "layers.1", j)] for j in range(16)], dtype=torch.float64)
    assert torch.allclose(got, expected)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
    with torch.no_grad():
        net[2].weight[:, 2] = 0.0  # channel 2 of the first conv reaches nothing
    channels = [Unit("channel", "0", c) for c in range(8)]
    data = [torch.randn(2, 3, 10, 10, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    scores = get_criterion("thermodynamic", unit_kind="channel").score(net, channels, data)
    assert scores[channels[2]] == -math.inf
    assert all(math.isfinite(v) for u, v in scores.items() if u.index != 2)
    with pytest.raises(UsageError, match="at least 2"):
        get_criterion("thermodynamic").score(model, neuron_units(model), tensors(n=1))


def test_thermodynamic_language_model_loss_is_the_next_token_cross_entropy():
    model = llama()
    with torch.no_grad():
        batch = token_batches(n=1)[0]
        expected = model(**batch, labels=batch["input_ids"]).loss
        assert float(default_loss(model, batch)) == pytest.approx(float(expected), rel=1e-5)
        # padding (the first 3 positions of sequence 0) neither is predicted nor predicts: the
        # first real token, predicted from a padding position, is skipped as well
        batch = token_batches(n=1, pad=3)[0]
        labels = batch["input_ids"].clone()
        labels[0, :4] = -100
        expected = model(**batch, labels=labels).loss
        assert float(default_loss(model, batch)) == pytest.approx(float(expected), rel=1e-5)
    with torch.inference_mode():
        scores = get_criterion("thermodynamic").score(model, neuron_units(model), token_batches(n=3))
    assert len(scores) == 2 * 64 and all(math.isfinite(v) for v in scores.values())
    calls = []

    def loss_fn(m: nn.Module, b: dict[str, torch.Tensor]) -> torch.Tensor:
        calls.append(1)
        return m(**b).logits.float().pow(2).mean()

    get_criterion("thermodynamic", loss_fn=loss_fn).score(model, neuron_units(model)[:4], token_batches(n=2))
    assert len(calls) == 2


# ------------------------------------------------------------------------------ energy-aware
class Heavy(nn.Module):
    """x + scale · tanh(f(x)), f a chain of `depth` linear maps: scale 0 makes it an exact identity
    that still costs its compute."""

    def __init__(self, depth: int, scale: float) -> None:
        super().__init__()
        self.f = nn.Sequential(*[nn.Linear(128, 128) for _ in range(depth)])
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.scale * torch.tanh(self.f(x))


class Chain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        # block 0 hurts when removed; block 1 is a costly identity; block 2 hurts as well
        self.blocks = nn.ModuleList([Heavy(depth, scale) for depth, scale in ((1, 1.0), (12, 0.0), (1, 1.0))])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


def write_trace(path: Path, power_w: float = 100.0, seconds: float = 60.0, step_s: float = 0.001) -> Path:
    """A constant-power replay trace: energy is power times time, so joules saved track latency."""
    rows = ["t_s,cpu_energy_j"] + [f"{i * step_s:.6f},{power_w * i * step_s:.9f}" for i in range(int(seconds / step_s) + 1)]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_energy_aware_ranks_the_free_saving_ahead_of_the_damaging_one(tmp_path):
    model = Chain().eval()
    data = [torch.randn(64, 128, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    trace = write_trace(tmp_path / "trace.csv")
    criterion = get_criterion("energy-aware", backend=f"replay:{trace}", config=QUICK)
    units = block_units(model)
    scores = criterion.score(model, units, data)
    free, hurt = units[1], units[0]
    assert scores[free] == 0.0 and lowest(scores) == free
    assert scores[hurt] > 0.0 and scores[units[2]] > 0.0
    detail = criterion.last_details[free]
    assert detail.damage == 0.0 and detail.quality == 1.0
    assert detail.ratio < 0.6 and detail.energy_saved_j > 0
    assert detail.energy_saved_j == pytest.approx((1 - detail.ratio) * detail.energy_original_j)
    assert criterion.last_details[hurt].damage > 0.01
    assert criterion.last_provenance == Provenance.MEASURED
    assert {d.provenance for d in criterion.last_details.values()} == {"measured"}
    measurement = criterion.last_measurement
    assert measurement.per_inference_j == pytest.approx(100.0 * measurement.latency_s["median"], rel=0.25)
    assert len(model.blocks) == 3  # candidates are copies


def test_energy_aware_records_estimated_provenance_and_uses_the_callers_evaluate():
    model = Chain().eval()
    data = [torch.randn(64, 128)]
    seen = []

    def evaluate(candidate: nn.Module) -> float:
        seen.append(len(candidate.blocks))
        return 1.0

    criterion = get_criterion("energy-aware", backend="estimated", config=QUICK, evaluate=evaluate, protect=(0, 2))
    scores = criterion.score(model, block_units(model), data)
    assert scores[block_units(model)[0]] == math.inf and scores[block_units(model)[2]] == math.inf
    assert scores[block_units(model)[1]] == 0.0
    assert criterion.last_provenance == Provenance.ESTIMATED
    assert criterion.last_details[block_units(model)[1]].provenance == "estimated"
    assert seen == [3, 2]  # the model itself, then the one candidate measured
    bad = get_criterion("energy-aware", backend="estimated", config=QUICK, evaluate=lambda m: 1.5)
    with pytest.raises(UsageError, match=r"outside \[0, 1\]"):
        bad.score(model, block_units(model)[:1], data)


def test_damage_per_joule_refuses_savings_that_are_not_positive():
    assert damage_per_joule(0.2, 0.5) == (0.4, "")
    for saved in (0.0, -0.1, math.nan):
        value, note = damage_per_joule(0.2, saved)
        assert value == math.inf and "not positive" in note


def test_mipp_default_sample_fits_the_width_and_a_wide_mlp_matches_brute_force_order():
    from energyprune.pruning.criteria.mipp import tokens_for_width

    net = planted_mlp()
    assert MippCriterion().calibration_tokens(net) == tokens_for_width(16) == 2048
    assert tokens_for_width(2048) == 4 * 2049  # wide MLPs get 4 tokens per unit
    assert MippCriterion(max_tokens=500).calibration_tokens(net) == 500
    # The Gram-matrix elimination gives the losses of a direct re-solve after every removal.
    generator = torch.Generator().manual_seed(5)
    n, h, d = 300, 24, 10
    A = torch.randn(n, h, generator=generator, dtype=torch.float64).relu()
    Y = A @ torch.randn(h, d, generator=generator, dtype=torch.float64)
    result = eliminate(A, Y, max_steps=h)  # one unit per step: exact greedy order
    Ac, Yc = A - A.mean(0), Y - Y.mean(0)
    var = float(Ac.square().mean(0)[Ac.square().mean(0) > 0].mean())
    z = torch.randn(n, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * math.sqrt(var)
    X = torch.cat([Ac, z - z.mean()], dim=1)
    Sxx, Sxy, Syy = X.T @ X / n, X.T @ Yc / n, Yc.T @ Yc / n
    N = 1e-3 * float(torch.trace(Syy)) / d * torch.eye(d, dtype=torch.float64)

    def info(subset: list[int]) -> float:
        inner = Sxx[subset][:, subset] + 1e-8 * var * torch.eye(len(subset), dtype=torch.float64)
        R = Syy - Sxy[subset].T @ torch.linalg.solve(inner, Sxy[subset])
        return 0.5 * float(torch.logdet(Syy + N) - torch.logdet(R + N))

    remaining = list(range(h + 1))
    for unit, loss in zip(result.order[:12], result.losses[:12]):
        assert loss == pytest.approx(info(remaining) - info([r for r in remaining if r != unit]), rel=1e-5, abs=1e-10)
        remaining.remove(unit)
