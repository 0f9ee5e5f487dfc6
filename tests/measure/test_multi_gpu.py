"""A model spread over two GPUs is metered on both, per GPU and summed (DESIGN §3.8, §7).

No GPU here, so the machine shape is: two fake H100s behind a fake `pynvml` installed in
`sys.modules` (what `import pynvml` inside the backend's probe finds), and a model whose
parameters report cuda:0 and cuda:1 while its forward pass runs on the CPU. What is tested is the
chain the real run goes through: the model's CUDA devices -> the backend selection -> one NVML
domain per GPU -> the meter's per-domain windows -> the sum.
"""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from energyprune.measure import api
from energyprune.measure.api import resolve_backends, measure
from energyprune.measure.meter import MeterConfig
from energyprune.torch_io import cuda_devices_of
from tests.fakes.fake_pynvml import FakeGpu, make_fake_pynvml

# Fake counters tick every 10 ms (an H100's tick is 100 ms) so that short windows span many ticks.
CONFIG = MeterConfig(window_s=0.1, repeats=3, precision=0.0, idle_s=0.05, min_warmup_s=0.0,
                     max_warmup_s=0.1, sample_interval_s=0.002)


class SpanningModel(nn.Module):
    """Computes on the CPU but reports its parameters on the given CUDA devices, as a model
    split with `layer.to("cuda:1")` (or device_map="auto") would."""

    def __init__(self, devices: list[torch.device]) -> None:
        super().__init__()
        self.first = nn.Linear(8, 16)
        self.second = nn.Linear(16, 4)
        self._devices = devices

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(torch.relu(self.first(x)))

    def parameters(self, recurse: bool = True):  # type: ignore[override]
        return iter([SimpleNamespace(device=d) for d in self._devices])

    def buffers(self, recurse: bool = True):  # type: ignore[override]
        return iter([])


@pytest.fixture
def two_gpus(monkeypatch):
    """Two fake GPUs (100 W and 60 W, constant) as `import pynvml` will find them."""
    gpus = [FakeGpu(load_w=100.0, uuid="GPU-aaaaaaaa-0000-0000-0000-000000000000"),
            FakeGpu(load_w=60.0, uuid="GPU-bbbbbbbb-0000-0000-0000-000000000001")]
    fake = make_fake_pynvml(gpus, tick_s=0.01)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    return fake


def spanning_model(monkeypatch, indices=(0, 1)) -> SpanningModel:
    model = SpanningModel([torch.device("cuda", i) for i in indices])
    # make_sync would call torch.cuda.synchronize(i), which a CPU build cannot; the fake GPUs have
    # nothing queued, so waiting for nothing is the honest stand-in.
    monkeypatch.setattr(api, "make_sync", lambda model: lambda: None)
    return model


def test_cuda_devices_of_lists_every_gpu_the_parameters_span():
    model = SpanningModel([torch.device("cuda", 1), torch.device("cuda", 0), torch.device("cuda", 1)])
    assert cuda_devices_of(model) == [0, 1]
    assert cuda_devices_of(nn.Linear(2, 2)) == []  # a CPU model meters no GPU


def test_backend_selection_meters_both_gpus(two_gpus):
    backends, notes = resolve_backends("nvml", [0, 1], None)
    assert notes == ()
    (nvml,) = backends
    nvml.open()
    try:
        assert [d.name for d in nvml.domains()] == ["gpu:0", "gpu:1"]
        assert ["cuda:0" in d.device for d in nvml.domains()] == [True, False]
    finally:
        nvml.close()


def test_auto_backend_includes_nvml_for_both_gpus(two_gpus):
    backends, _ = resolve_backends("auto", [0, 1], None)
    nvml = [b for b in backends if b.name == "nvml"]
    assert len(nvml) == 1  # one backend, two domains: each GPU once
    nvml[0].open()
    try:
        assert {d.name for d in nvml[0].domains()} == {"gpu:0", "gpu:1"}
    finally:
        nvml[0].close()


def test_measure_sums_both_gpus_and_keeps_each_one(two_gpus, monkeypatch):
    model = spanning_model(monkeypatch)
    m = measure(model, torch.randn(2, 8), backend="nvml", config=CONFIG)
    data = m.to_dict()
    by_name = {d["name"]: d for d in data["domains"]}
    assert set(by_name) == {"gpu:0", "gpu:1"}
    assert all(d["provenance"] == "measured" for d in by_name.values())
    latency = m.latency_s["median"]
    # Constant loads: each GPU's energy per call is its power times the time of one call.
    assert by_name["gpu:0"]["per_inference_j"] == pytest.approx(100.0 * latency, rel=0.1)
    assert by_name["gpu:1"]["per_inference_j"] == pytest.approx(60.0 * latency, rel=0.1)
    assert m.per_inference_j == pytest.approx(
        by_name["gpu:0"]["per_inference_j"] + by_name["gpu:1"]["per_inference_j"], rel=0.02)
    # Each window carries both GPUs' energy, and the facts name both boards.
    assert all(set(w["energy_j"]) == {"gpu:0", "gpu:1"} for w in data["windows"])
    assert set(data["device"]["nvml"]) == {"gpu:0", "gpu:1"}
    assert data["device"]["nvml"]["gpu:1"]["uuid"].startswith("GPU-bbbbbbbb")


def test_cuda_visible_devices_maps_the_spanned_gpus_to_nvml_indices(monkeypatch):
    gpus = [FakeGpu(load_w=w) for w in (10.0, 20.0, 100.0, 60.0)]
    monkeypatch.setitem(sys.modules, "pynvml", make_fake_pynvml(gpus, tick_s=0.01))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")  # cuda:0 = NVML 2, cuda:1 = NVML 3
    model = spanning_model(monkeypatch)
    m = measure(model, torch.randn(2, 8), backend="nvml", config=CONFIG)
    by_name = {d["name"]: d for d in m.to_dict()["domains"]}
    assert set(by_name) == {"gpu:2", "gpu:3"}
    latency = m.latency_s["median"]
    assert by_name["gpu:2"]["per_inference_j"] == pytest.approx(100.0 * latency, rel=0.1)
    assert by_name["gpu:3"]["per_inference_j"] == pytest.approx(60.0 * latency, rel=0.1)


def test_a_model_on_one_of_two_gpus_meters_only_that_one(two_gpus, monkeypatch):
    model = spanning_model(monkeypatch, indices=(1,))
    m = measure(model, torch.randn(2, 8), backend="nvml", config=CONFIG)
    assert [d.name for d in m.domains] == ["gpu:1"]
    assert m.per_inference_j == pytest.approx(60.0 * m.latency_s["median"], rel=0.1)
