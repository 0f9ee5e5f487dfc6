"""Several backends at once: two GPUs through NVML and two CPU sockets through RAPL, summed."""

from __future__ import annotations

import pytest

from energyprune.measure.api import EnergyMeter
from energyprune.backends.nvml import NvmlBackend
from energyprune.backends.rapl import RaplBackend
from energyprune.clock import SimulatedClock
from energyprune.measure.meter import Meter, MeterConfig
from tests.fakes.fake_pynvml import FakeGpu, make_fake_pynvml
from tests.fakes.powercap import add_energy, two_sockets_with_dram

CONFIG = MeterConfig(window_s=0.2, repeats=3, precision=0.0, idle_s=0.25, max_warmup_s=0.05,
                     sample_interval_s=0.002)




def test_domains_of_all_backends_are_kept_apart_and_summed(tmp_path):
    clock = SimulatedClock()
    gpus = [FakeGpu(load_w=100.0), FakeGpu(load_w=60.0)]
    nvml = NvmlBackend(cuda_devices=[0, 1], nvml=make_fake_pynvml(gpus, tick_s=0.1, clock=clock), environ={},
                       clock=clock)
    zones = two_sockets_with_dram(tmp_path / "powercap")
    rapl = RaplBackend(tmp_path / "powercap", cpuinfo_path=tmp_path / "none", clock=clock)

    def call() -> None:
        add_energy(zones["package-0"], 10_000)  # 10 mJ on socket 0's package per call
        clock.sleep(0.002)

    m = Meter([nvml, rapl], CONFIG, clock=clock).measure(call)
    names = {d.name for d in m.domains}
    assert {"gpu:0", "gpu:1", "rapl:package-0", "rapl:package-1", "rapl:dram-0", "rapl:dram-1"} == names
    summary = {d["name"]: d for d in m.to_dict()["domains"]}
    assert summary["rapl:package-0"]["per_inference_j"] == pytest.approx(0.010, rel=1e-6)
    assert summary["rapl:package-1"]["per_inference_j"] == 0.0
    latency = m.latency_s["median"]
    assert summary["gpu:0"]["per_inference_j"] == pytest.approx(100.0 * latency, rel=0.1)
    assert summary["gpu:1"]["per_inference_j"] == pytest.approx(60.0 * latency, rel=0.1)
    total = sum(d["per_inference_j"] for d in summary.values())
    assert m.per_inference_j == pytest.approx(total, rel=0.05)


def test_energy_meter_span_with_idle_baseline(tmp_path):
    clock = SimulatedClock()
    gpu = FakeGpu(load_w=50.0)
    nvml = NvmlBackend(cuda_devices=[0], nvml=make_fake_pynvml([gpu], tick_s=0.1, clock=clock), environ={},
                       clock=clock)
    with EnergyMeter([nvml], idle_s=0.3, clock=clock) as meter:
        gpu.load_w = 250.0
        clock.sleep(0.2)
        gpu.load_w = 50.0
    span = meter.result
    assert span is not None
    assert span.idle_power_w["gpu:0"] == pytest.approx(50.0, rel=0.02)
    assert span.dynamic_energy_j == pytest.approx(200.0 * 0.2, rel=0.1)
    assert span.to_dict()["provenance"] == "measured"


def test_huggingface_folder_measures_through_the_cli(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    import json

    from energyprune.cli.main import main
    from tests.cli.test_cli import QUICK, write_trace

    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=64)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / "tiny-gpt2")
    trace = write_trace(tmp_path / "trace.csv")
    code = main(["measure", str(tmp_path / "tiny-gpt2"), "--seq-len", "16", "--batch-size", "2",
                 "--backend", f"replay:{trace}", "--json", *QUICK])
    out = capsys.readouterr()
    assert code == 0, out.err
    data = json.loads(out.out)
    assert data["inputs"] == "input_ids=2x16, attention_mask=2x16"
    assert "GPT2LMHeadModel" in data["model"]
    code = main(["measure", str(tmp_path / "tiny-gpt2"), "--seq-len", "65", *QUICK])
    assert code == 2 and "max_position_embeddings" in capsys.readouterr().err
