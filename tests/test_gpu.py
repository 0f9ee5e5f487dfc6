"""Real-hardware tests of the NVML path; they run on the GPU machine and skip elsewhere."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.gpu


def _matmul_workload(size: int = 4096):
    import torch

    a = torch.randn(size, size, device="cuda", dtype=torch.float16)
    b = torch.randn(size, size, device="cuda", dtype=torch.float16)
    return lambda: a @ b


def test_nvml_probes_and_reads_a_rising_counter():
    import time

    from energyprune.backends.nvml import NvmlBackend

    backend = NvmlBackend(cuda_devices=[0])
    assert backend.probe().ok, backend.probe().reason
    backend.open()
    try:
        first = backend.read()
        time.sleep(0.35)  # more than three 100 ms ticks
        second = backend.read()
        (name,) = [d.name for d in backend.domains()]
        assert second.energy_j[name] > first.energy_j[name] > -1e-9
        power = backend.power_w()[name]
        assert 10.0 < power < 2000.0
    finally:
        backend.close()


def test_measure_matmul_on_the_gpu_is_measured_and_tight():
    import torch

    from energyprune.measure.meter import Meter, MeterConfig

    from energyprune.backends.nvml import NvmlBackend

    config = MeterConfig(window_s=1.0, repeats=3, precision=0.0, idle_s=0.5)
    m = Meter([NvmlBackend(cuda_devices=[0])], config, sync=torch.cuda.synchronize).measure(_matmul_workload())
    assert m.provenance.value == "measured"
    assert m.per_inference_dynamic_j > 0
    assert m.per_inference_j > m.per_inference_dynamic_j
    assert m.cov < 0.2
    assert all(s.sm_clock_mhz for w in m.windows for s in w.states)


def test_counter_agrees_with_integrated_instant_power():
    import torch

    from energyprune.measure.api import EnergyMeter

    work = _matmul_workload()
    with EnergyMeter("nvml", sync=torch.cuda.synchronize, cuda_devices=[0]) as meter:
        for _ in range(5000):
            work()
    span = meter.result
    assert span is not None and span.duration_s > 0.5
    trace = span.power_trace
    assert trace is not None and len(trace.t_s) > 50
    (name,) = list(span.energy_j)
    samples = trace.power_w[name]
    integrated = sum((samples[i] + samples[i + 1]) / 2 * (trace.t_s[i + 1] - trace.t_s[i])
                     for i in range(len(samples) - 1))
    assert integrated == pytest.approx(span.energy_j[name], rel=0.10)


def test_anatomy_of_a_launch_bound_call_has_a_measured_busy_share():
    """The demo at batch 1 launches many tiny kernels: the GPU idles between them."""
    import torch

    from energyprune.measure.api import measure
    from energyprune.measure.meter import MeterConfig
    from energyprune.models.demo import build_demo_model

    model = build_demo_model().cuda().eval()
    tokens = torch.randint(0, 1000, (1, 16), device="cuda")
    m = measure(model, tokens, backend="nvml", config=MeterConfig(window_s=1.0, repeats=6, precision=0.0, idle_s=1.0))
    anatomy = m.anatomy
    assert anatomy.busy is not None, m.busy_note
    assert 0.0 < anatomy.busy.share <= 1.0 and anatomy.busy.n_calls == 20
    assert anatomy.idle_j > 0 and anatomy.bound in ("launch-bound", "partly launch-bound", "compute-bound")
    big = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
    busy = measure(lambda: big @ big, backend="nvml", config=MeterConfig(window_s=1.0, repeats=6, precision=0.0,
                                                                       idle_s=1.0)).anatomy.busy
    assert busy is not None and busy.share > anatomy.busy.share  # large matmuls keep it busier


def test_a_bridge_fits_and_folds_for_a_model_on_the_gpu():
    """The fit runs on the CPU in float64; the fold must land on the model's own device."""
    import torch

    from energyprune.pruning.surgery.bridge import remove_blocks_bridged
    from tests.pruning.test_bridge import batches
    from tests.pruning.test_surgery import tiny

    model = tiny("llama").cuda()
    calibration = [{k: v.cuda() for k, v in b.items()} for b in batches(2)]
    bridged, record = remove_blocks_bridged(model, [1, 2], calibration)
    assert record.ops[0].detail["bridge"]["runs"][0]["bridged"]
    assert all(p.device.type == "cuda" for p in bridged.parameters())
    with torch.no_grad():
        assert torch.isfinite(bridged(**calibration[0]).logits).all()
