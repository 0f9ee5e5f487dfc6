"""Hardware floor, information concentration, efficiency, semantic entropy and the physics summary,
on tiny inputs where the right answer is known (energies from the real meter on the estimated backend)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import random

import pytest
import torch
from torch import nn

from energyprune.measure.api import measure
from energyprune.errors import EnergyPruneError, MeasurementError, UsageError
from energyprune.backends.base import DeviceState, Provenance
from energyprune.measure.meter import MeterConfig
from energyprune.metrics.efficiency import efficiency, efficiency_from_measurements
from energyprune.metrics.flops import count_flops
from energyprune.metrics.hardware_floor import (
    SCHEMA,
    FloorPoint,
    FloorResult,
    MatmulWorkload,
    floor_cache_path,
    hardware_floor_ratio,
    load_floor,
    measure_floor,
)
from energyprune.metrics.information import information_concentration, weight_rank
from energyprune.metrics.landauer import landauer_j_per_bit
from energyprune.metrics.physics import physics_summary
from energyprune.metrics.semantic_entropy import (
    entropy_bits,
    entropy_from_generations,
    sample_generations,
    semantic_entropy,
)
from energyprune.metrics.entropy import bucket_entropy

SHORT = MeterConfig(window_s=0.05, repeats=3, precision=0, idle_s=0.05, min_warmup_s=0, max_warmup_s=0.2,
                    keep_trace=False)


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("ENERGYPRUNE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _floor(j_per_flop_by_size: dict[int, float], provenance: str = "measured") -> FloorResult:
    """A floor assembled from given per-FLOP figures, to test the arithmetic that uses one."""
    points = tuple(
        FloorPoint(dtype="float32", size=s, flops=2 * s**3, per_call_j=j * 2 * s**3, per_call_dynamic_j=0.5 * j * 2 * s**3,
                   ci95_j=(0.9 * j * 2 * s**3, 1.1 * j * 2 * s**3), latency_s=1e-3, provenance=provenance, n_windows=3)
        for s, j in j_per_flop_by_size.items())
    return FloorResult(device="cpu", device_name="cpu-test", points=points, backend="estimated",
                       backends=("estimated",), date="2026-01-01T00:00:00+00:00", torch_version=torch.__version__,
                       meter_config={})


# ---- hardware floor -----------------------------------------------------------------------------
def test_matmul_workload_costs_two_flops_per_multiply_accumulate():
    workload = MatmulWorkload(torch.randn(24, 40))
    assert count_flops(workload, torch.randn(16, 24)) == 2 * 16 * 40 * 24


def test_floor_on_cpu_keeps_every_point_and_the_lowest_j_per_flop(cache_dir):
    floor = measure_floor("cpu", sizes=(16, 48), backend="estimated", config=SHORT)
    assert [(p.dtype, p.size) for p in floor.points] == [("float32", 16), ("float32", 48)]
    assert [p.flops for p in floor.points] == [2 * 16**3, 2 * 48**3]
    for point in floor.points:
        assert point.per_call_j > 0 and point.n_windows >= 3
        assert point.j_per_flop == pytest.approx(point.per_call_j / point.flops)
    assert floor.j_per_flop == min(p.j_per_flop for p in floor.points)
    # No counter on this machine class: the estimate must say so, and carry its power model.
    assert floor.provenance == "estimated" and floor.backends == ("estimated",)
    assert floor.energy_assumptions and any("2·m·n·k" in a for a in floor.assumptions)
    data = floor.to_dict()
    assert data["schema"] == SCHEMA and data["torch_version"] == torch.__version__ and data["date"]
    json.dumps(data, allow_nan=False)


def test_floor_cache_round_trip(cache_dir):
    assert load_floor("cpu") is None  # nothing cached yet
    floor = measure_floor("cpu", sizes=(16,), backend="estimated", config=SHORT)
    path = floor_cache_path("cpu")
    assert path.parent == cache_dir and path.name.startswith("floor-cpu") and path.is_file()
    loaded = load_floor("cpu")
    assert loaded is not None and loaded.points == floor.points
    assert loaded.j_per_flop == floor.j_per_flop and loaded.date == floor.date
    assert loaded.source.startswith("cache ") and str(path) in loaded.source
    assert not list(cache_dir.glob(".*.tmp"))  # the atomic write left no temporary file


def test_not_caching_leaves_no_file(cache_dir):
    measure_floor("cpu", sizes=(16,), backend="estimated", config=SHORT, cache=False)
    assert load_floor("cpu") is None


@pytest.mark.parametrize("text", ["{not json", json.dumps({"schema": "other/1"}),
                                  json.dumps({"schema": SCHEMA, "points": [{"dtype": "float32"}]})])
def test_a_corrupt_floor_cache_is_one_clear_error(cache_dir, text):
    path = floor_cache_path("cpu")
    path.parent.mkdir(parents=True)
    path.write_text(text)
    with pytest.raises(MeasurementError, match="corrupt") as caught:
        load_floor("cpu")
    assert str(path) in str(caught.value) and "delete it" in str(caught.value)


def test_floor_rejects_impossible_grids(cache_dir):
    with pytest.raises(UsageError, match="tf32"):
        measure_floor("cpu", dtypes=("tf32",), sizes=(16,), backend="estimated", config=SHORT)
    with pytest.raises(UsageError, match="unknown floor dtype"):
        measure_floor("cpu", dtypes=("int8",), sizes=(16,), backend="estimated", config=SHORT)
    with pytest.raises(UsageError, match="positive"):
        measure_floor("cpu", sizes=(0,), backend="estimated", config=SHORT)


def test_hardware_floor_ratio_is_energy_over_flops_times_best_j_per_flop():
    floor = _floor({16: 4e-10, 32: 1e-10})
    out = hardware_floor_ratio(0.5, 1e9, floor, energy_provenance="measured")
    assert out["j_per_flop"] == 1e-10 and out["floor"]["size"] == 32
    assert out["floor_j"] == pytest.approx(0.1)
    assert out["ratio"] == pytest.approx(5.0) and out["log10_ratio"] == pytest.approx(math.log10(5.0))
    assert out["provenance"] == "measured" and out["assumptions"]
    assert hardware_floor_ratio(0.5, 1e9, floor, energy_provenance="estimated")["provenance"] == "estimated"
    assert hardware_floor_ratio(0.5, 0, floor)["ratio"] is None
    assert "below the floor" in hardware_floor_ratio(0.05, 1e9, floor)["note"]
    with pytest.raises(UsageError):
        hardware_floor_ratio(-1.0, 10, floor)


# ---- information concentration -----------------------------------------------------------------
def test_ic_finds_a_planted_rank_and_counts_nonzero_weights():
    torch.manual_seed(0)
    layer = nn.Linear(32, 64)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(64, 5) @ torch.randn(5, 32))  # rank 5 by construction
        layer.weight[:3] = 0.0  # 3 rows of 32 zeros: ‖W‖₀ = 61·32, the rank is still 5
    model = nn.Sequential(layer, nn.ReLU(), nn.Linear(64, 8))
    batches = [torch.randn(100, 32) for _ in range(4)]
    result = information_concentration(model, batches, max_rows=128)
    first = result.by_name()["0"]
    assert first.rank == 5 and first.max_rank == 32
    assert first.nonzero_weights == 61 * 32 and first.n_weights == 64 * 32
    assert first.rows_seen == 400 and first.n_rows == 128  # bounded: a reservoir of 128 rows
    assert 0 < first.activation_entropy_bits <= 64 * math.log2(20)
    assert first.information_concentration == pytest.approx(5 * first.activation_entropy_bits / (61 * 32))
    assert result.by_name()["2"].rank == 8
    assert result.estimator == "bucket" and any("rtol" in a for a in result.assumptions)
    json.dumps(result.to_dict(), allow_nan=False)


def test_ic_entropy_is_the_bucket_estimate_of_every_row_in_bits():
    layer = nn.Linear(4, 3)
    x = torch.randn(50, 4)
    result = information_concentration(layer, [x], max_rows=1000)
    with torch.no_grad():
        expected = bucket_entropy(layer(x), bins=20) / math.log(2)
    assert result.layers[0].activation_entropy_bits == pytest.approx(expected)


def test_ic_of_a_convolution_flattens_its_kernel_and_planted_rank():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, kernel_size=3)
    with torch.no_grad():
        conv.weight.copy_((torch.randn(8, 2) @ torch.randn(2, 27)).reshape(8, 3, 3, 3))
    record = information_concentration(conv, [torch.randn(2, 3, 6, 6)]).layers[0]
    assert record.rank == 2 and record.max_rank == 8 and record.n_features == 8
    assert record.rows_seen == 2 * 4 * 4  # one row per output position


def test_ic_leaves_padding_out():
    class Tagger(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(10, 6)
            self.proj = nn.Linear(6, 4)

        def forward(self, input_ids, attention_mask=None):
            return self.proj(self.embed(input_ids))

    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]])
    batch = {"input_ids": torch.randint(0, 10, (2, 5)), "attention_mask": mask}
    record = information_concentration(Tagger(), [batch]).by_name()["proj"]
    assert record.rows_seen == 7


def test_weight_rank_tolerance_is_stated_and_used():
    weight = torch.diag(torch.tensor([1.0, 1e-3, 1e-9]))
    assert weight_rank(weight) == (2, pytest.approx(3 * torch.finfo(torch.float32).eps))
    assert weight_rank(weight, rtol=1e-2)[0] == 1


def test_ic_bad_input_is_a_usage_error():
    with pytest.raises(UsageError, match="estimator"):
        information_concentration(nn.Linear(2, 2), [torch.randn(4, 2)], estimator="nope")
    with pytest.raises(UsageError, match="no nn.Linear"):
        information_concentration(nn.ReLU(), [torch.randn(4, 2)])
    with pytest.raises(UsageError, match="calibration"):
        information_concentration(nn.Linear(2, 2), [])


# ---- efficiency ---------------------------------------------------------------------------------
def test_efficiency_arithmetic_absolute_and_relative():
    result = efficiency(0.9, 100, 50, 2.0, 4.0, energy_provenance="measured")
    assert result.compression_ratio == 2.0
    assert result.efficiency_per_j == pytest.approx(0.9 * 2.0 / 2.0)
    assert result.original_efficiency_per_j == pytest.approx(1 / 4.0)
    assert result.relative == pytest.approx(0.9 * 2.0 * 4.0 / 2.0)
    assert result.energy_ratio == 0.5 and result.provenance is Provenance.MEASURED
    data = result.to_dict()
    assert data["relative"] == pytest.approx(3.6) and data["provenance"] == "measured"
    mixed = efficiency(1.0, 10, 10, 1.0, 1.0, energy_provenance="measured", original_energy_provenance="estimated")
    assert mixed.provenance is Provenance.ESTIMATED and mixed.relative == 1.0


@pytest.mark.parametrize("args", [(1.5, 10, 5, 1.0, 1.0), (0.5, 0, 5, 1.0, 1.0), (0.5, 10, 5, 0.0, 1.0),
                                  (0.5, 10, 5, 1.0, math.inf)])
def test_efficiency_rejects_bad_numbers(args):
    with pytest.raises(UsageError):
        efficiency(*args, energy_provenance="measured")
    with pytest.raises(UsageError, match="provenance"):
        efficiency(0.5, 10, 5, 1.0, 1.0, energy_provenance="guessed")


def test_efficiency_from_two_meter_results_keeps_their_provenance():
    big, small = nn.Linear(64, 64), nn.Linear(64, 16)
    x = torch.randn(8, 64)
    a = measure(big, x, backend="estimated", config=SHORT)
    b = measure(small, x, backend="estimated", config=SHORT)
    result = efficiency_from_measurements(0.8, 64 * 64 + 64, 64 * 16 + 16, b, a)
    assert result.energy_j == b.per_inference_j and result.original_energy_j == a.per_inference_j
    assert result.provenance is Provenance.ESTIMATED and "estimated" in result.energy_source


# ---- semantic entropy ---------------------------------------------------------------------------
VECTORS = {"paris": [1.0, 0.0, 0.0], "Paris.": [0.99, 0.14, 0.0], "lyon": [0.0, 1.0, 0.0], "rome": [0.0, 0.0, 1.0]}


def fake_encoder(texts):
    return torch.tensor([VECTORS[t] for t in texts])


def test_semantic_entropy_of_known_generations():
    generations = ["paris", "paris", "Paris.", "lyon", "lyon", "lyon"]
    result = entropy_from_generations(generations, fake_encoder, threshold=0.9)
    # sequences: paris 2, Paris. 1, lyon 3 -> H = H(1/3, 1/6, 1/2); meanings: {paris, Paris.} 3, {lyon} 3 -> 1 bit
    expected_h = -(2 / 6 * math.log2(2 / 6) + 1 / 6 * math.log2(1 / 6) + 3 / 6 * math.log2(3 / 6))
    assert result.entropy_bits == pytest.approx(expected_h)
    assert result.semantic_entropy_bits == pytest.approx(1.0)
    assert result.n_clusters == 2 and len(result.distinct) == 3 and result.n_samples == 6
    # A threshold above their cosine (0.99) keeps every sequence its own meaning: H_s = H.
    strict = entropy_from_generations(generations, fake_encoder, threshold=0.999)
    assert strict.semantic_entropy_bits == pytest.approx(strict.entropy_bits)


def test_identical_texts_from_different_token_sequences_share_a_meaning():
    result = entropy_from_generations(["rome", "rome"], fake_encoder, keys=[(1, 2), (1, 3)])
    assert result.entropy_bits == pytest.approx(1.0) and result.semantic_entropy_bits == 0.0


def test_semantic_entropy_never_exceeds_token_entropy():
    rng = random.Random(0)
    for trial in range(200):
        n_texts = rng.randint(1, 8)
        texts = [f"t{i}" for i in range(n_texts)]
        vectors = {t: [rng.gauss(0, 1) for _ in range(3)] for t in texts}
        generations = [rng.choice(texts) for _ in range(rng.randint(1, 20))]
        threshold = rng.random()
        result = entropy_from_generations(generations, lambda ts: torch.tensor([vectors[t] for t in ts]),
                                          threshold=threshold)
        assert result.semantic_entropy_bits <= result.entropy_bits + 1e-12
        assert result.n_clusters <= len(result.distinct)


def test_entropy_of_a_coarsening_is_never_larger():
    # The grouping property the estimator relies on, on every partition of a small distribution.
    counts = [5, 3, 2, 1]
    for labels in itertools.product(range(4), repeat=4):
        merged: dict[int, int] = {}
        for label, count in zip(labels, counts):
            merged[label] = merged.get(label, 0) + count
        assert entropy_bits(list(merged.values())) <= entropy_bits(counts) + 1e-12


def test_semantic_entropy_bad_input():
    with pytest.raises(UsageError):
        entropy_from_generations([], fake_encoder)
    with pytest.raises(UsageError):
        entropy_from_generations(["paris"], fake_encoder, threshold=1.5)
    with pytest.raises(EnergyPruneError, match="embeddings"):
        entropy_from_generations(["paris", "lyon"], lambda ts: torch.zeros(1, 3))


class CharTokenizer:
    """The few tokenizer calls sampling needs: ids 3.. are letters, 1 is EOS, 0 is padding."""

    eos_token_id = 1
    pad_token_id = 0
    chat_template = None

    def __call__(self, text, return_tensors=None):
        ids = torch.tensor([[3 + (ord(c) % 20) for c in text]])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(ord("a") + i - 3) for i in ids if i >= 3)


def tiny_lm():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                      num_key_value_heads=1, intermediate_size=32, vocab_size=23,
                                      bos_token_id=2, eos_token_id=1, pad_token_id=0)
    return transformers.LlamaForCausalLM(config).eval()


def test_sampling_is_seeded_and_the_entropies_are_ordered():
    model, tokenizer = tiny_lm(), CharTokenizer()
    state = torch.random.get_rng_state()
    texts, ids = sample_generations(model, tokenizer, "hello", n_samples=6, max_new_tokens=4, seed=3)
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's random state is left alone
    again, _ = sample_generations(model, tokenizer, "hello", n_samples=6, max_new_tokens=4, seed=3)
    assert texts == again and len(texts) == 6 and all(len(row) <= 4 for row in ids)
    encoder = lambda ts: torch.tensor([[len(t) + 1.0, sum(map(ord, t)) % 7 + 1.0] for t in ts])  # noqa: E731
    report = semantic_entropy(model, tokenizer, ["hello", "bye"], n_samples=6, max_new_tokens=4, encoder=encoder)
    assert len(report.prompts) == 2
    for prompt in report.prompts:
        assert prompt.n_samples == 6 and prompt.semantic_entropy_bits <= prompt.entropy_bits <= math.log2(6) + 1e-12
    data = report.to_dict()
    assert data["threshold"] == 0.85 and data["assumptions"] and data["seed"] == 0
    json.dumps(data, allow_nan=False)


# ---- physics summary ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def measured():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8)).eval()
    x = torch.randn(4, 32)
    return model, x, measure(model, x, backend="estimated", config=SHORT)


def test_physics_summary_keys_and_provenance(measured):
    model, x, result = measured
    summary = physics_summary(model, x, result)
    json.dumps(summary, allow_nan=False)  # strict JSON: no Infinity or NaN anywhere
    assert summary["energy"]["per_inference_j"] == result.per_inference_j
    assert summary["energy"]["provenance"] == "estimated" and summary["energy"]["assumptions"]
    assert summary["temperature"] == {"temperature_k": 300.0, "source": summary["temperature"]["source"],
                                      "j_per_bit": landauer_j_per_bit(300.0)}
    assert "300 K" in summary["temperature"]["source"]
    assert summary["flops"]["value"] == 2 * 4 * (32 * 64 + 64 * 8)
    op = summary["landauer"]["operational"]
    assert op["n_bits"] == 4 * (32 * 64 + 64 * 8) * 32
    assert op["times_above"] == pytest.approx(result.per_inference_j / op["energy_j"])
    assert op["log10_times_above"] == pytest.approx(math.log10(op["times_above"]))
    assert "estimated" in op["provenance"] and op["bit_assumption"]
    assert summary["landauer"]["informational"]["bit_count"] == "informational"
    assert summary["hardware_floor"] is None and "floor" in summary["hardware_floor_note"]
    assert summary["assumptions"]


def test_physics_summary_with_a_floor_and_a_given_temperature(measured):
    model, x, result = measured
    floor = _floor({16: 1e-10})
    summary = physics_summary(model, x, result, floor=floor, temperature_k=350.0)
    assert summary["temperature"]["temperature_k"] == 350.0 and summary["temperature"]["source"] == "given by the caller"
    hw = summary["hardware_floor"]
    assert hw["ratio"] == pytest.approx(result.per_inference_j / (summary["flops"]["value"] * 1e-10))
    assert hw["provenance"] == "estimated"  # the energy was estimated, even though this floor says measured
    with pytest.raises(UsageError):
        physics_summary(model, x, result, temperature_k=-5.0)


def test_physics_temperature_comes_from_the_device_sensor(measured):
    model, x, result = measured
    windows = tuple(dataclasses.replace(w, states=(DeviceState("gpu:0", temperature_c=50.0),)) for w in result.windows)
    summary = physics_summary(model, x, dataclasses.replace(result, windows=windows))
    assert summary["temperature"]["temperature_k"] == pytest.approx(323.15)
    assert "sensor" in summary["temperature"]["source"] and "gpu:0" in summary["temperature"]["source"]


def test_physics_counts_the_flops_of_fused_transformer_layers():
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True).eval()
    x = torch.randn(1, 8, 16)
    result = measure(layer, x, backend="estimated", config=SHORT)
    summary = physics_summary(layer, x, result)
    # For 8 tokens: the q, k, v and out projections and the 16-32-16 MLP are always counted (the fused
    # path counted none of them); the two attention matmuls too where FlopCounterMode knows the
    # device's attention kernel (PyTorch 2.13 does not count the CPU flash-attention op).
    linear = 2 * (4 * 8 * 16 * 16 + 2 * 8 * 16 * 32)
    attention = 2 * (2 * 8 * 8 * 16)
    assert summary["flops"]["value"] in (linear, linear + attention)
    assert torch.backends.mha.get_fastpath_enabled()  # the setting is given back


# ---- FLOPs of attention, grouped-query included ----------------------------------------------------
def test_grouped_query_attention_is_counted():
    """16 query heads over 4 KV heads (a modern LLM's shape): FlopCounterMode alone counts 0 on the
    CPU and asserts on CUDA; counted as the matrix products it is, QK^T and AV."""
    import torch.nn.functional as F
    from torch import nn

    from energyprune.metrics.flops import count_flops

    class Attention(nn.Module):
        def forward(self, q, k, v):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

    b, hq, hkv, length, d = 2, 16, 4, 32, 64
    q, k, v = torch.randn(b, hq, length, d), torch.randn(b, hkv, length, d), torch.randn(b, hkv, length, d)
    assert count_flops(Attention(), (q, k, v)) == 2 * (2 * b * hq * length * length * d)


def test_a_gqa_llama_counts_its_attention():
    transformers = pytest.importorskip("transformers")
    from energyprune.metrics.flops import count_flops

    def llama(kv_heads):
        config = transformers.LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=8,
                                          num_key_value_heads=kv_heads, intermediate_size=128, vocab_size=100,
                                          attn_implementation="sdpa")
        return transformers.LlamaForCausalLM(config).eval()

    ids = torch.randint(0, 100, (1, 16))
    gqa, mha = count_flops(llama(2), ids), count_flops(llama(8), ids)
    # The same attention products; only the K and V projections are smaller with 2 KV heads.
    projection_saving = 2 * 2 * 16 * 64 * (64 - 16) * 2  # 2 layers x (K and V) x 2 FLOP/MAC x tokens x d x (d - d_kv)
    assert mha - gqa == projection_saving
    attention = 2 * 2 * (2 * 1 * 8 * 16 * 16 * 8)  # 2 layers x (QK^T + AV) x 2*B*H*L*L*d_head
    assert gqa > attention
