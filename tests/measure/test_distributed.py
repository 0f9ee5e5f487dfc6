"""Measuring under torchrun: the rank environment, `combine` on hand-made per-rank records, and a
real two-process run over gloo on the CPU whose replayed traces give known energies.

Machine shapes of the hand-made records: two GPUs on one host sharing its estimated CPU; two
hosts with a RAPL package each; two containers on one host whose single GPU is each "gpu:0";
one GPU metered by two ranks by mistake; a rank that failed.
"""

from __future__ import annotations

import json
import os
import socket
import time
import traceback
from pathlib import Path
from typing import Any

import pytest

from energyprune.measure.distributed import (
    SCHEMA,
    DistributedMeasurement,
    RankInfo,
    combine,
    distributed_context,
    gather_measurements,
    measure_distributed,
    rank_record,
    render_text,
)
from energyprune.errors import BackendUnavailable, MeasurementError, UsageError
from energyprune.backends.base import DomainInfo, Provenance
from energyprune.measure.results import Measurement, Window

# ---- hand-made records ---------------------------------------------------------------------------


def dom(name: str, backend: str, j: float, half: float = 0.0, provenance: str = "measured",
        model_uncertainty: float = 0.0, idle_w: float = 0.0) -> dict[str, Any]:
    """One domain as Measurement.to_dict() writes it (the keys combine reads)."""
    return {"name": name, "backend": backend, "provenance": provenance, "method": "m",
            "device": name, "per_inference_j": j, "per_inference_dynamic_j": j / 2,
            "ci95_j": [j - half, j + half], "idle_power_w": idle_w, "mean_power_w": 1.0,
            "model_relative_uncertainty": model_uncertainty, "assumptions": []}


def rec(rank: int, host: str, domains: list[dict[str, Any]], *, uuids: dict[str, str] | None = None,
        n_windows: int = 5, duration_s: float = 10.0, latency_s: float = 0.01, batch_size: int = 4,
        warnings: tuple[str, ...] = ()) -> dict[str, Any]:
    """One rank's record as rank_record() writes it."""
    provenance = ("estimated" if any(d["provenance"] == "estimated" for d in domains) else "measured")
    device: dict[str, Any] = {"host": host}
    if uuids:
        device["nvml"] = {name: {"uuid": uuid} for name, uuid in uuids.items()}
    return {
        "rank": rank, "world_size": 2, "local_rank": rank, "local_world_size": 2, "node_rank": 0,
        "host": host, "host_id": f"{host}/boot", "devices": [f"cuda:{rank}"],
        "started_unix_s": 100.0, "ended_unix_s": 110.0,
        "measurement": {
            "schema": "energyprune.measurement/1", "provenance": provenance,
            "per_inference_j": sum(d["per_inference_j"] for d in domains),
            "batch_size": batch_size, "n_windows": n_windows, "n_inferences": 100 * n_windows,
            "duration_s": duration_s, "latency_s": {"median": latency_s},
            "stop_reason": "repeats-done", "domains": domains, "warnings": list(warnings),
            "device": device,
        },
    }


def one_host_two_gpus() -> list[dict[str, Any]]:
    """torchrun on one host: each rank meters its GPU, and both see the host's estimated CPU."""
    cpu = dict(provenance="estimated", model_uncertainty=0.35)
    return [
        rec(0, "node-a", [dom("gpu:0", "nvml", 2.0, 0.1, idle_w=80.0),
                          dom("estimated:cpu", "estimated", 0.5, 0.05, **cpu)],
            uuids={"gpu:0": "GPU-0"}),
        rec(1, "node-a", [dom("gpu:1", "nvml", 3.0, 0.2, idle_w=90.0),
                          dom("estimated:cpu", "estimated", 0.6, 0.05, **cpu)],
            uuids={"gpu:1": "GPU-1"}),
    ]


def test_sum_over_ranks_counts_the_shared_cpu_once():
    result = combine(one_host_two_gpus())
    assert result["schema"] == SCHEMA
    # gpu:0 + gpu:1 + the host's CPU from rank 0 (rank 1's reading of the same CPU is not added)
    assert result["per_inference_j"] == pytest.approx(2.0 + 3.0 + 0.5)
    assert result["per_inference_dynamic_j"] == pytest.approx((2.0 + 3.0 + 0.5) / 2)
    cpu_rows = [d for d in result["domains"] if d["name"] == "estimated:cpu"]
    assert [(d["rank"], d["counted"], d["counted_from_rank"]) for d in cpu_rows] == [(0, True, 0), (1, False, 0)]
    assert result["idle_power_w"] == pytest.approx(80.0 + 90.0)
    assert [r["per_inference_j"] for r in result["ranks"]] == pytest.approx([2.5, 3.0])
    assert [r["per_inference_j_all_domains"] for r in result["ranks"]] == pytest.approx([2.5, 3.6])
    assert result["hosts"] == [{"host": "node-a", "host_id": "node-a/boot", "ranks": [0, 1],
                                "per_inference_j": pytest.approx(5.5)}]
    assert result["warnings"] == []


def test_any_estimated_part_makes_the_sum_estimated_with_a_band():
    result = combine(one_host_two_gpus())
    assert result["provenance"] == "estimated"
    # Only the counted estimated domain's model uncertainty widens the band: 0.5 J x 35%.
    assert result["estimate_band_j"] == pytest.approx([5.5 - 0.175, 5.5 + 0.175])
    assert "ESTIMATED" in render_text(result)


def test_all_measured_sum_is_measured_without_a_band():
    records = [rec(r, "node-a", [dom(f"gpu:{r}", "nvml", 1.0 + r, 0.1)], uuids={f"gpu:{r}": f"GPU-{r}"})
               for r in range(2)]
    result = combine(records)
    assert result["provenance"] == "measured" and result["estimate_band_j"] is None
    assert "ESTIMATED" not in render_text(result)


def test_intervals_add_linearly_and_quadrature_is_reported_beside():
    result = combine(one_host_two_gpus())
    # Counted half-widths 0.1 (gpu:0), 0.05 (CPU from rank 0), 0.2 (gpu:1).
    assert result["ci95_j"] == pytest.approx([5.5 - 0.35, 5.5 + 0.35])
    half = (0.1**2 + 0.05**2 + 0.2**2) ** 0.5
    assert result["ci95_if_independent_j"] == pytest.approx([5.5 - half, 5.5 + half])
    assert "linear" in result["method"]["interval"]


def test_host_wide_domains_on_two_hosts_are_both_counted():
    records = [rec(r, f"node-{r}", [dom("rapl:package-0", "rapl", 1.5), dom("gpu:0", "nvml", 2.0)],
                   uuids={"gpu:0": f"GPU-{r}"}) for r in range(2)]
    result = combine(records)
    assert result["per_inference_j"] == pytest.approx(2 * (1.5 + 2.0))
    assert all(d["counted"] for d in result["domains"])
    assert result["n_hosts"] == 2


def test_gpus_are_told_apart_by_uuid_not_by_their_index():
    """Two containers on one host, each given one GPU: both call it gpu:0."""
    records = [rec(r, "node-a", [dom("gpu:0", "nvml", 2.0)], uuids={"gpu:0": f"GPU-{r}"})
               for r in range(2)]
    assert combine(records)["per_inference_j"] == pytest.approx(4.0)


def test_one_gpu_metered_by_two_ranks_is_counted_once_and_flagged():
    records = [rec(r, f"node-{r}", [dom("gpu:0", "nvml", 2.0)], uuids={"gpu:0": "GPU-same"})
               for r in range(2)]
    result = combine(records)
    assert result["per_inference_j"] == pytest.approx(2.0)
    (warning,) = result["warnings"]
    assert "GPU-same" in warning and "ranks 0, 1" in warning


def test_two_cpu_backends_on_one_host_are_flagged():
    records = [rec(0, "node-a", [dom("rapl:package-0", "rapl", 1.0)]),
               rec(1, "node-a", [dom("estimated:cpu", "estimated", 1.0, provenance="estimated")])]
    result = combine(records)
    assert any("different backends" in w and "estimated, rapl" in w for w in result["warnings"])


def test_mismatched_windows_are_warned():
    records = one_host_two_gpus()
    records[1]["measurement"]["n_windows"] = 7
    records[1]["measurement"]["duration_s"] = 14.0
    (warning,) = combine(records)["warnings"]
    assert "did not line up" in warning and "rank 1: 7 windows in 14 s" in warning


def test_durations_within_tolerance_are_not_warned():
    records = one_host_two_gpus()
    records[1]["measurement"]["duration_s"] = 10.5
    assert combine(records)["warnings"] == []
    assert combine(records, tolerance=0.01)["warnings"] != []


def test_mismatched_latency_is_warned():
    records = one_host_two_gpus()
    records[1]["measurement"]["latency_s"]["median"] = 0.02
    result = combine(records)
    (warning,) = result["warnings"]
    assert "latency" in warning and "100%" in warning and "wait" in warning
    assert result["step_latency_s"] == 0.02


def test_per_sample_uses_the_sum_of_batches_unless_told():
    records = one_host_two_gpus()
    data_parallel = combine(records)
    assert data_parallel["global_batch_size"] == 8
    assert data_parallel["per_sample_j"] == pytest.approx(5.5 / 8)
    shared_batch = combine(records, global_batch_size=4)  # tensor parallel: one batch, split
    assert shared_batch["per_sample_j"] == pytest.approx(5.5 / 4)
    assert shared_batch["global_batch_size_source"] == "given"
    with pytest.raises(UsageError, match="global_batch_size"):
        combine(records, global_batch_size=0)


def test_each_ranks_warnings_are_kept_once_with_their_ranks():
    records = one_host_two_gpus()
    records[0]["measurement"]["warnings"] = ["falling back to ESTIMATED", "only on 0"]
    records[1]["measurement"]["warnings"] = ["falling back to ESTIMATED"]
    warnings = combine(records)["warnings"]
    assert warnings == ["ranks 0, 1: falling back to ESTIMATED", "rank 0: only on 0"]


def test_order_of_the_records_does_not_matter():
    a = combine(one_host_two_gpus())
    b = combine(list(reversed(one_host_two_gpus())))
    assert a == b


def test_a_failed_rank_is_named_with_its_own_error_class():
    records = one_host_two_gpus()
    records[1] = {"rank": 1, "host": "node-a", "host_id": "node-a/boot",
                  "error": "backend 'nvml' is unavailable: no driver", "error_type": "BackendUnavailable"}
    with pytest.raises(BackendUnavailable, match="rank 1 failed: backend 'nvml' is unavailable"):
        combine(records)
    records[0] = {**records[1], "rank": 0, "error": "boom", "error_type": "ValueError"}
    with pytest.raises(MeasurementError, match="rank 0 failed: boom; rank 1 failed"):
        combine(records)


@pytest.mark.parametrize("records, match", [
    ([], "at least one"),
    ([{"no": "rank"}], "no 'rank' key"),
    ([{"rank": 0, "host": "h", "host_id": "h", "measurement": {"schema": "other"}}], "measurement"),
    ([{"rank": 0, "measurement": {"schema": "energyprune.measurement/1"}}], "which host"),
])
def test_unreadable_records_are_one_clear_line(records, match):
    with pytest.raises(UsageError, match=match):
        combine(records)


def test_duplicate_ranks_are_refused():
    records = one_host_two_gpus()
    records[1]["rank"] = 0
    with pytest.raises(UsageError, match="same rank"):
        combine(records)


def test_distributed_measurement_derives_its_figures_from_combine():
    result = DistributedMeasurement(tuple(one_host_two_gpus()), global_batch_size=2)
    assert result.provenance is Provenance.ESTIMATED
    assert result.per_inference_j == pytest.approx(5.5)
    assert result.per_sample_j == pytest.approx(5.5 / 2)
    assert result.ci95_j == pytest.approx((5.15, 5.85))
    assert result.world_size == 2 and result.warnings == ()
    data = result.to_dict()
    data["per_inference_j"] = 0.0  # a copy: the result cannot be changed through it
    assert result.per_inference_j == pytest.approx(5.5)
    with pytest.raises(UsageError):
        DistributedMeasurement(())


def test_a_real_measurement_round_trips_through_rank_record():
    """rank_record writes what combine reads: no key drift from Measurement.to_dict()."""
    cpu = DomainInfo("estimated:cpu", "estimated", Provenance.ESTIMATED, "utilisation-model", "cpu",
                     model_relative_uncertainty=0.6)
    gpu = DomainInfo("gpu:0", "nvml", Provenance.MEASURED, "energy-counter", "H100")
    windows = tuple(Window(i, "m", 10, 1.0, {"gpu:0": 20.0 + i, "estimated:cpu": 5.0},
                           {"gpu:0": 0.1, "estimated:cpu": 0.0}) for i in range(3))
    m = Measurement("m", 2, (gpu, cpu), windows, {"gpu:0": 10.0, "estimated:cpu": 2.0},
                    "repeats-done", 0.0, device={"nvml": {"gpu:0": {"uuid": "GPU-x"}}})
    records = [rank_record(m, RankInfo(r, 2, r, 2)) for r in range(2)]
    assert records[0]["measurement"]["power_trace"] is None
    result = combine(records)
    # One GPU UUID and one host CPU: both ranks report the same hardware, counted once.
    assert result["per_inference_j"] == pytest.approx(m.per_inference_j)
    assert result["provenance"] == "estimated"
    assert any("GPU-x" in w for w in result["warnings"])


# ---- the torchrun environment ----------------------------------------------------------------


def test_not_under_torchrun():
    assert distributed_context({}) is None


def test_torchrun_environment():
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "1"}
    info = distributed_context(env)
    assert info == RankInfo(rank=3, world_size=4, local_rank=1, local_world_size=2, node_rank=1)
    assert not info.is_main
    # Other launchers may set only RANK and WORLD_SIZE: the host-local facts are then unknown.
    assert distributed_context({"RANK": "0", "WORLD_SIZE": "1"}) == RankInfo(0, 1, None, None)


@pytest.mark.parametrize("env, match", [
    ({"RANK": "0"}, "RANK is set but WORLD_SIZE is not"),
    ({"WORLD_SIZE": "2"}, "WORLD_SIZE is set but RANK is not"),
    ({"RANK": "two", "WORLD_SIZE": "2"}, "RANK='two' is not a whole number"),
    ({"RANK": "2", "WORLD_SIZE": "2"}, "does not fit"),
    ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "2"}, "LOCAL_RANK=2"),
])
def test_a_broken_environment_is_one_clear_line(env, match):
    with pytest.raises(UsageError, match=match):
        distributed_context(env)


def test_measure_distributed_outside_torchrun_says_how_to_launch(monkeypatch):
    import torch
    from torch import nn

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(UsageError, match="torchrun"):
        measure_distributed(nn.Linear(2, 2), torch.randn(1, 2), backend="estimated")
    with pytest.raises(UsageError, match="JSON"):
        measure_distributed(nn.Linear(2, 2), torch.randn(1, 2), out="report.md")
    with pytest.raises(UsageError, match="not initialised"):
        measure_distributed(nn.Linear(2, 2), torch.randn(1, 2), group=object())
    with pytest.raises(UsageError, match="init_process_group"):
        gather_measurements({"rank": 0})


# ---- two real processes over gloo ---------------------------------------------------------------

CONFIG_KWARGS = dict(window_s=0.05, repeats=3, precision=0.0, idle_s=0.05, min_warmup_s=0.0,
                     max_warmup_s=0.2)
GPU_W = 10.0  # each rank's own "GPU" domain in its replay trace
CPU_W = 4.0  # the host's "CPU", in both ranks' traces: the same hardware seen twice


def write_rank_trace(path: Path, rank: int, seconds: float = 30.0, step_s: float = 0.001) -> Path:
    rows = [f"t_s,gpu{rank}_energy_j,cpu_energy_j"]
    n = int(seconds / step_s)
    rows += [f"{i * step_s:.6f},{GPU_W * i * step_s:.9f},{CPU_W * i * step_s:.9f}" for i in range(n + 1)]
    path.write_text("\n".join(rows) + "\n")
    return path


def _free_ports(n: int) -> list[int]:
    """Ports the OS just handed out, all held at once so they differ from one another."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _worker(rank: int, tmp: str, ports: list[int]) -> None:
    """One rank: (A) measure_distributed creating its own group from torchrun-like variables,
    (B) with a group the "user" initialised, (C) with a rank whose backend is unavailable."""
    import torch
    import torch.distributed as dist
    from torch import nn

    from energyprune.measure.meter import MeterConfig

    outcome: dict[str, Any] = {}
    try:
        torch.set_num_threads(1)  # two ranks on two shared cores
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(ports[0]), RANK=str(rank),
                          WORLD_SIZE="2", LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2",
                          GLOO_SOCKET_IFNAME="lo")
        torch.manual_seed(0)
        model, x = nn.Linear(8, 8), torch.randn(4, 8)
        config = MeterConfig(**CONFIG_KWARGS)
        trace = Path(tmp) / f"trace{rank}.csv"

        result = measure_distributed(model, x, backend=f"replay:{trace}", config=config,
                                     out=Path(tmp) / "report.json", timeout_s=120)
        outcome["a_returned"] = result is not None
        outcome["a_initialised_after"] = dist.is_initialized()

        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{ports[1]}", rank=rank,
                                world_size=2)
        result = measure_distributed(model, x, backend="estimated", config=config)
        outcome["b_initialised_after"] = dist.is_initialized()
        if result is not None:
            outcome["b"] = result.to_dict()

        bad = trace if rank == 0 else Path(tmp) / "missing.csv"
        try:
            measure_distributed(model, x, backend=f"replay:{bad}", config=config)
        except Exception as error:  # every rank must end here, with the same line
            outcome["c_error"] = [type(error).__name__, str(error), getattr(error, "all_ranks", False)]

        class Talking(nn.Module):
            """Tensor-parallel style: every call sums over the ranks, so the ranks must call it
            equally often. Alone, rank 1 would be twice as slow as rank 0."""

            def __init__(self) -> None:
                super().__init__()
                self.linear = nn.Linear(8, 8)
                self.calls = 0

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                self.calls += 1
                time.sleep(0.002 * (rank + 1))
                y = self.linear(x)
                dist.all_reduce(y)
                return y

        talking = Talking()
        result = measure_distributed(talking, x, backend=f"replay:{trace}", config=config, lockstep=True,
                                     timeout_s=120)
        outcome["d_calls"] = talking.calls
        if result is not None:
            outcome["d"] = [{"warmup": r["measurement"]["warmup_inferences"],
                             "windows": [w["n_inferences"] for w in r["measurement"]["windows"]]}
                            for r in result.to_dict()["rank_measurements"]]

        # (E) lockstep with a failing rank: it tells the other one, which is waiting in an agreement.
        started = time.monotonic()
        try:
            measure_distributed(nn.Linear(8, 8), x, backend=f"replay:{bad}", config=config, lockstep=True,
                                timeout_s=120)
        except Exception as error:
            outcome["e_error"] = [type(error).__name__, str(error), getattr(error, "all_ranks", False)]
        outcome["e_seconds"] = time.monotonic() - started
        dist.destroy_process_group()
    except BaseException:
        outcome["crash"] = traceback.format_exc()
    (Path(tmp) / f"outcome{rank}.json").write_text(json.dumps(outcome))


def test_two_ranks_over_gloo_gather_at_rank_0(tmp_path):
    import torch.multiprocessing as mp

    for rank in range(2):
        write_rank_trace(tmp_path / f"trace{rank}.csv", rank)
    context = mp.start_processes(_worker, args=(str(tmp_path), _free_ports(2)), nprocs=2,
                                 join=False, start_method="spawn")
    deadline = time.monotonic() + 180  # generous: two interpreters importing torch on 2 busy cores
    try:
        while not context.join(timeout=1.0):
            if time.monotonic() > deadline:
                pytest.fail("the two ranks did not finish within 180 s (a collective hung?)")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()  # only the two processes this test started
    outcomes = [json.loads((tmp_path / f"outcome{r}.json").read_text()) for r in range(2)]
    for rank, outcome in enumerate(outcomes):
        assert "crash" not in outcome, f"rank {rank}:\n{outcome['crash']}"

    # (A) rank 0 returns and writes; rank 1 returns None; the group made for it is gone again.
    assert [o["a_returned"] for o in outcomes] == [True, False]
    assert [o["a_initialised_after"] for o in outcomes] == [False, False]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["schema"] == SCHEMA and report["world_size"] == 2
    assert report["provenance"] == "measured"
    rows = {(d["rank"], d["name"]): d for d in report["domains"]}
    assert set(rows) == {(0, "replay:gpu0"), (0, "replay:cpu"), (1, "replay:gpu1"), (1, "replay:cpu")}
    assert rows[(1, "replay:cpu")]["counted"] is False  # the same host CPU, seen by rank 0 too
    latency = {r["rank"]: r["latency_median_s"] for r in report["ranks"]}
    # The traces' constant power times each rank's time per call gives the energy per call.
    assert rows[(0, "replay:gpu0")]["per_inference_j"] == pytest.approx(GPU_W * latency[0], rel=0.05)
    assert rows[(1, "replay:gpu1")]["per_inference_j"] == pytest.approx(GPU_W * latency[1], rel=0.05)
    expected = GPU_W * latency[0] + GPU_W * latency[1] + CPU_W * latency[0]
    assert report["per_inference_j"] == pytest.approx(expected, rel=0.05)
    assert report["per_inference_j"] == pytest.approx(
        sum(d["per_inference_j"] for d in report["domains"] if d["counted"]), rel=1e-12)
    assert report["global_batch_size"] == 8
    assert [r["rank"] for r in report["rank_measurements"]] == [0, 1]
    assert len({r["host_id"] for r in report["rank_measurements"]}) == 1

    # (B) the user's group is used and left initialised; estimated CPU and RAM counted once.
    assert [o["b_initialised_after"] for o in outcomes] == [True, True]
    assert "b" not in outcomes[1]
    b = outcomes[0]["b"]
    assert b["provenance"] == "estimated" and b["estimate_band_j"] is not None
    assert [(d["rank"], d["counted"]) for d in b["domains"]] == [(0, True), (0, True), (1, False), (1, False)]
    rank0 = b["rank_measurements"][0]["measurement"]
    assert b["per_inference_j"] == pytest.approx(sum(d["per_inference_j"] for d in rank0["domains"]))

    # (C) one rank's unavailable backend ends every rank with the same line, naming that rank.
    assert outcomes[0]["c_error"] == outcomes[1]["c_error"]
    kind, message, all_ranks = outcomes[0]["c_error"]
    assert kind == "BackendUnavailable" and message.startswith("rank 1 failed:") and all_ranks
    assert "missing.csv" in message

    # (D) lockstep: a model that talks to the other rank in forward finishes, and both ranks made
    # the same calls (warm-up, and every window) although rank 1 is twice as slow alone.
    assert outcomes[0]["d_calls"] == outcomes[1]["d_calls"]
    first, second = outcomes[0]["d"]
    assert first == second and len(first["windows"]) >= CONFIG_KWARGS["repeats"]

    # (E) a rank that fails in lockstep ends every rank with its own error, without a timeout.
    assert outcomes[0]["e_error"] == outcomes[1]["e_error"]
    kind, message, all_ranks = outcomes[0]["e_error"]
    assert kind == "BackendUnavailable" and message.startswith("rank 1 failed:") and all_ranks
    assert "rank 0" not in message  # rank 0 only stopped because of rank 1: not reported as a failure
    assert max(o["e_seconds"] for o in outcomes) < 60  # the group's timeout is 120 s


@pytest.mark.slow
def test_the_example_under_torchrun(tmp_path):
    """The real launcher: torchrun sets RANK, LOCAL_RANK, GROUP_RANK... and measure_distributed
    builds its own group from them. --standalone picks a free port, so parallel runs cannot
    collide on torchrun's default 29500."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    out = tmp_path / "torchrun.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               str(root / "examples" / "torchrun_measure.py"), "--backend", "estimated", "--quick",
               "--batch-size", "2", "--out", str(out)]
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "per global step (ESTIMATED)" in done.stdout  # printed once, by rank 0
    assert done.stdout.count("per global step") == 1
    report = json.loads(out.read_text())
    assert [(r["rank"], r["local_rank"], r["node_rank"]) for r in report["ranks"]] == [(0, 0, 0), (1, 1, 0)]
    assert report["provenance"] == "estimated"
    assert [d["counted"] for d in report["domains"] if d["rank"] == 1] == [False, False]
