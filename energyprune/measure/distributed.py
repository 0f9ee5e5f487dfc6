"""Measuring a model run by several processes (`torchrun`): every rank meters its own devices,
rank 0 gathers the figures with torch.distributed, adds them up and writes the report.

    torchrun --nproc-per-node 2 examples/torchrun_measure.py

What the sum means, and why (README, "Several GPUs and torchrun"):

* **One inference is one global step**: every rank makes one call of its model (its replica or
  its shard) on its own batch. Each rank's `measure()` gives the energy of one call on the devices
  it meters, so the energy of a step is the sum over ranks. Per sample, the step processed the sum
  of the ranks' batch sizes (data parallel) unless `global_batch_size` says otherwise (tensor or
  pipeline parallel, where the ranks share one batch).
* **Host-wide domains count once per host.** A CPU package (RAPL) or the estimated CPU and RAM are
  seen by every rank on a host, and each rank's reading includes the other ranks' work. A domain is
  identified by the GPU's UUID for NVML domains (a container may number its one GPU 0), else by
  (host, domain name); when several ranks report the same one, the lowest rank's reading counts
  and the others are kept in the report, marked `counted: false`. Normally that is local rank 0.
* **Intervals add linearly.** The ranks are not independent: they start together, share the host's
  CPU and memory bus, and a slow window on one host slows every domain it meters. The half-width of
  a sum is at most the sum of the half-widths whatever the correlation, so the combined 95%
  interval is the sum of the intervals; the narrower quadrature sum (valid only if the errors
  were independent) is reported beside it, labelled as such.
* Provenance is ESTIMATED as soon as one counted domain is (the rule of
  `measurement.combined_provenance`: a sum is only as good as its worst term).

Each rank runs its own meter loop: by default warm-up length and calls per window follow that
rank's latency, which suits models whose calls run without talking to other ranks (data parallel
replicas, independent shards, offline pipelines). A model whose forward pass itself communicates
(tensor parallel: collectives in `forward`) would deadlock when the ranks' call counts differ:
measure it with `lockstep=True` (`energyprune measure --lockstep`), and the ranks agree, by an
all_reduce on the gloo group, on every decision that sets how often the model is called (warm-up
ends when every rank is warm, each window takes the most calls any rank needs, the measurement
stops when every rank is done), so every rank calls it equally often.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import math
import os
import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from energyprune import errors
from energyprune.errors import EnergyPruneError, MeasurementError, UsageError
from energyprune.measure.results import SCHEMA as MEASUREMENT_SCHEMA
from energyprune.backends.base import is_estimated, Provenance

if TYPE_CHECKING:  # torch is imported lazily: `combine` works on plain dicts without it
    import torch
    from torch import nn
    from torch.distributed import ProcessGroup

    from energyprune.measure.results import Measurement
    from energyprune.torch_io import Inputs

logger = logging.getLogger(__name__)

SCHEMA = "energyprune.distributed_measurement/1"
#: Ranks whose measured time, window count or latency differ by more than this fraction are
#: flagged: their windows did not line up, or a lock-step run would make the fast ones wait.
DEFAULT_TOLERANCE = 0.10
#: The process group this module creates when none exists waits this long for a slow rank.
DEFAULT_TIMEOUT_S = 1800.0
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")

INFERENCE_MEANING = (
    "one global step: every rank makes one call of its model (replica or shard) on its own batch; "
    "the energy of a step is the sum over ranks of each rank's energy per call"
)
HOST_DOMAIN_RULE = (
    "a domain seen by several ranks is counted once: NVML GPUs are identified by UUID, other "
    "domains by (host, name); the lowest rank's reading counts (host-wide CPU/RAM domains: "
    "normally local rank 0), the others are listed with counted=false"
)
INTERVAL_METHOD = (
    "linear sum of the counted domains' 95% intervals (a bound whatever their correlation: the "
    "ranks start together and share the host); ci95_if_independent_j is the quadrature sum"
)


# ---- the torchrun environment ------------------------------------------------------------------


@dataclass(frozen=True)
class RankInfo:
    """Where this process sits in a multi-process job (torchrun's environment variables)."""

    rank: int  # global rank, 0 .. world_size - 1
    world_size: int
    local_rank: int | None  # rank on this host; torchrun sets it, other launchers may not
    local_world_size: int | None
    node_rank: int | None = None  # torchrun's GROUP_RANK

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(environ: Mapping[str, str], name: str) -> int | None:
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise UsageError(f"the environment variable {name}={raw!r} is not a whole number "
                         "(it is set by torchrun; do not set it by hand)") from None


def distributed_context(environ: Mapping[str, str] | None = None) -> RankInfo | None:
    """This process's rank from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK,
    LOCAL_WORLD_SIZE, GROUP_RANK); None when not launched that way (RANK and WORLD_SIZE unset).

    A world of one is still returned (torchrun --nproc-per-node 1): callers decide with
    `world_size > 1` whether there is anything to gather."""
    env = os.environ if environ is None else environ
    rank, world_size = _env_int(env, "RANK"), _env_int(env, "WORLD_SIZE")
    if rank is None and world_size is None:
        return None
    if rank is None or world_size is None:
        present, missing = ("RANK", "WORLD_SIZE") if world_size is None else ("WORLD_SIZE", "RANK")
        raise UsageError(f"{present} is set but {missing} is not: launch with torchrun, or set "
                         "both (and LOCAL_RANK) for every process")
    if world_size < 1 or not 0 <= rank < world_size:
        raise UsageError(f"RANK={rank} does not fit WORLD_SIZE={world_size}: RANK must be in "
                         f"0..WORLD_SIZE-1")
    local_rank = _env_int(env, "LOCAL_RANK")
    local_world_size = _env_int(env, "LOCAL_WORLD_SIZE")
    if local_rank is not None and local_world_size is not None and not 0 <= local_rank < local_world_size:
        raise UsageError(f"LOCAL_RANK={local_rank} does not fit LOCAL_WORLD_SIZE={local_world_size}")
    return RankInfo(rank, world_size, local_rank, local_world_size, _env_int(env, "GROUP_RANK"))


def local_device(info: RankInfo | None = None) -> torch.device:
    """The device this rank should run on: `cuda:LOCAL_RANK` where torch sees GPUs (`cuda:0`
    when the launcher gives each rank one GPU through CUDA_VISIBLE_DEVICES), else the CPU, which
    every rank on a host then shares."""
    import torch

    info = distributed_context() if info is None else info
    if not torch.cuda.is_available():
        return torch.device("cpu")
    count = torch.cuda.device_count()
    if count == 1:
        return torch.device("cuda", 0)
    local_rank = 0 if info is None or info.local_rank is None else info.local_rank
    if local_rank >= count:
        raise UsageError(f"LOCAL_RANK={local_rank} but only {count} GPU(s) are visible: start "
                         f"at most {count} processes per node (torchrun --nproc-per-node {count})")
    return torch.device("cuda", local_rank)


def host_identity() -> tuple[str, str]:
    """(host name, host id). The id adds the kernel's boot id to the name, so two machines that
    share a container's default host name are still told apart; processes that share both share
    the CPUs and RAM that host-wide domains meter."""
    name = socket.gethostname()
    try:
        boot = _BOOT_ID.read_text(encoding="ascii").strip()
    except OSError:
        boot = ""
    return name, f"{name}/{boot}" if boot else name


# ---- one rank's record -------------------------------------------------------------------------


def rank_record(
    measurement: Measurement,
    info: RankInfo,
    *,
    devices: Sequence[str] = (),
    started_unix_s: float | None = None,
    ended_unix_s: float | None = None,
    keep_trace: bool = False,
) -> dict[str, Any]:
    """What one rank sends to rank 0: who it is, where it ran, and its full measurement.

    The power trace is left out unless asked for: a trace per rank multiplies the report's size by
    the world size and nothing in the sum depends on it."""
    data = measurement.to_dict()
    if not keep_trace:
        data["power_trace"] = None
    host, host_id = host_identity()
    return {
        "rank": info.rank,
        "world_size": info.world_size,
        "local_rank": info.local_rank,
        "local_world_size": info.local_world_size,
        "node_rank": info.node_rank,
        "host": host,
        "host_id": host_id,
        "devices": list(devices),
        "started_unix_s": started_unix_s,
        "ended_unix_s": ended_unix_s,
        "measurement": data,
    }


def _failure_record(info: RankInfo, error: BaseException) -> dict[str, Any]:
    host, host_id = host_identity()
    return {"rank": info.rank, "world_size": info.world_size, "host": host, "host_id": host_id,
            "error": str(error), "error_type": type(error).__name__}


# ---- combining ---------------------------------------------------------------------------------


def _check_records(rank_results: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    if not rank_results:
        raise UsageError("combine() needs at least one rank's result")
    for i, record in enumerate(rank_results):
        if not isinstance(record, Mapping) or "rank" not in record:
            raise UsageError(f"rank result #{i} is not a record made by energyprune.measure.distributed "
                             "(no 'rank' key)")
    failed = sorted((r for r in rank_results if r.get("error") is not None), key=lambda r: r["rank"])
    # Ranks that stopped only because another failed in lockstep say nothing the failing one doesn't.
    failed = [r for r in failed if r.get("error_type") != LockstepAborted.__name__] or failed
    if failed:
        # The failing ranks' own error class when they agree (BackendUnavailable stays that).
        kinds = {str(r.get("error_type")) for r in failed}
        kind = kinds.pop() if len(kinds) == 1 else "MeasurementError"
        raise _error_from((kind, "; ".join(f"rank {r['rank']} failed: {r['error']}" for r in failed)))
    ranks = [r["rank"] for r in rank_results]
    if len(set(ranks)) != len(ranks):
        raise UsageError(f"two results claim the same rank: {sorted(ranks)}")
    for record in rank_results:
        m = record.get("measurement")
        if not isinstance(m, Mapping) or m.get("schema") != MEASUREMENT_SCHEMA:
            raise UsageError(f"rank {record['rank']}'s result holds no {MEASUREMENT_SCHEMA} "
                             "measurement")
        for key in ("host_id", "host"):
            if not record.get(key):
                raise UsageError(f"rank {record['rank']}'s result does not say which host it "
                                 f"ran on (no {key!r})")
    return sorted(rank_results, key=lambda r: r["rank"])


def _identity(record: Mapping[str, Any], domain: Mapping[str, Any]) -> tuple[str, str]:
    """What physical thing a domain meters: a device with an id the backend says is unique
    everywhere (a GPU's UUID) by that id, anything else by its name on its host."""
    if domain.get("device_id"):
        return ("device-id", str(domain["device_id"]))
    facts = record["measurement"].get("device", {}).get(str(domain.get("backend")), {})
    uuid = facts.get(domain["name"], {}).get("uuid") if isinstance(facts, Mapping) else None  # results before 0.2
    if uuid:
        return ("device-id", str(uuid))
    return (str(record["host_id"]), str(domain["name"]))


def _spread(values: Sequence[float]) -> float:
    """max / min - 1: how far apart a set of positive figures are."""
    low, high = min(values), max(values)
    if low <= 0:
        return math.inf if high > 0 else 0.0
    return high / low - 1.0


def _ranks_text(ranks: Sequence[int]) -> str:
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(map(str, ranks))


def combine(
    rank_results: Sequence[Mapping[str, Any]],
    *,
    global_batch_size: int | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> dict[str, Any]:
    """The energy of one global step from every rank's record (see the module docstring).

    A pure function of the records (`rank_record` dicts, in any order), so it can be tested and
    re-run on a saved report's `rank_measurements` without processes. Raises MeasurementError
    naming the ranks that failed, UsageError for records it cannot read."""
    if global_batch_size is not None and global_batch_size < 1:
        raise UsageError(f"global_batch_size must be at least 1 (got {global_batch_size})")
    if not tolerance > 0:
        raise UsageError(f"the mismatch tolerance must be positive (got {tolerance})")
    records = _check_records(rank_results)
    host_names = {r["host_id"]: r["host"] for r in records}

    counted_from: dict[tuple[str, str], int] = {}
    domains: list[dict[str, Any]] = []
    warnings: list[str] = []
    shared_gpus: dict[tuple[str, str], list[int]] = {}
    for record in records:
        m = record["measurement"]
        for d in m["domains"]:
            key = _identity(record, d)
            first = counted_from.setdefault(key, record["rank"])
            counted = first == record["rank"]
            if not counted and key[0] == "device-id":
                shared_gpus.setdefault(key, [first]).append(record["rank"])
            domains.append({
                "rank": record["rank"],
                "host": record["host"],
                "name": d["name"],
                "backend": d["backend"],
                "provenance": d["provenance"],
                "method": d.get("method"),
                "device": d.get("device"),
                "per_inference_j": d["per_inference_j"],
                "per_inference_dynamic_j": d["per_inference_dynamic_j"],
                "ci95_j": list(d["ci95_j"]),
                "idle_power_w": d.get("idle_power_w", 0.0),
                "mean_power_w": d.get("mean_power_w"),
                "model_relative_uncertainty": d.get("model_relative_uncertainty", 0.0),
                "assumptions": list(d.get("assumptions", [])),
                "counted": counted,
                "counted_from_rank": first,
            })
    for (where, what), ranks in shared_gpus.items():
        gpu = what if where == "device-id" else f"{what} of host {host_names[where]}"
        warnings.append(
            f"GPU {gpu} is metered by {_ranks_text(ranks)}: counted once, from rank {ranks[0]}; "
            "give each rank its own GPU (model.to(local_device()))")
    # Two CPU backends on one host would count its CPUs twice under different names.
    host_of = {r["rank"]: (r["host_id"], r["host"]) for r in records}
    cpu_backends: dict[tuple[str, str], set[str]] = {}
    for d in domains:
        if d["backend"] in ("rapl", "estimated"):
            cpu_backends.setdefault(host_of[d["rank"]], set()).add(d["backend"])
    for (_, host), backends in cpu_backends.items():
        if len(backends) > 1:
            warnings.append(
                f"host {host}: its CPUs are metered by different backends on different ranks "
                f"({', '.join(sorted(backends))}), so they are counted more than once; pass "
                "the same backend to every rank")

    counted = [d for d in domains if d["counted"]]
    total_j = sum(d["per_inference_j"] for d in counted)
    dynamic_j = sum(d["per_inference_dynamic_j"] for d in counted)
    low_j = sum(d["ci95_j"][0] for d in counted)
    high_j = sum(d["ci95_j"][1] for d in counted)
    centre_j = (low_j + high_j) / 2
    quadrature_j = math.sqrt(sum(((d["ci95_j"][1] - d["ci95_j"][0]) / 2) ** 2 for d in counted))
    estimated = [d for d in counted if is_estimated(d["provenance"])]
    provenance = Provenance.ESTIMATED if estimated else Provenance.MEASURED
    band_j = None
    if estimated:
        spread_j = sum(d["per_inference_j"] * d["model_relative_uncertainty"] for d in estimated)
        band_j = [total_j - spread_j, total_j + spread_j]

    rank_rows = []
    for record in records:
        m = record["measurement"]
        mine = [d for d in domains if d["rank"] == record["rank"]]
        rank_rows.append({
            "rank": record["rank"],
            "local_rank": record.get("local_rank"),
            "node_rank": record.get("node_rank"),
            "host": record["host"],
            "devices": list(record.get("devices", [])),
            "provenance": m["provenance"],
            "per_inference_j": sum(d["per_inference_j"] for d in mine if d["counted"]),
            "per_inference_j_all_domains": m["per_inference_j"],
            "batch_size": m["batch_size"],
            "n_windows": m["n_windows"],
            "n_inferences": m["n_inferences"],
            "duration_s": m["duration_s"],
            "latency_median_s": m["latency_s"]["median"],
            "stop_reason": m["stop_reason"],
            "started_unix_s": record.get("started_unix_s"),
            "ended_unix_s": record.get("ended_unix_s"),
        })
    warnings += _mismatch_warnings(rank_rows, tolerance)
    warnings += _rank_warnings(records)

    samples = global_batch_size if global_batch_size is not None else sum(r["batch_size"] for r in rank_rows)
    hosts = []
    for host_id in dict.fromkeys(r["host_id"] for r in records):
        ranks = [r["rank"] for r in records if r["host_id"] == host_id]
        hosts.append({
            "host": next(r["host"] for r in records if r["host_id"] == host_id),
            "host_id": host_id,
            "ranks": ranks,
            "per_inference_j": sum(d["per_inference_j"] for d in counted if d["rank"] in ranks),
        })
    return {
        "schema": SCHEMA,
        "provenance": provenance.value,
        "per_inference_j": total_j,
        "per_inference_dynamic_j": dynamic_j,
        "per_sample_j": total_j / samples,
        "per_sample_dynamic_j": dynamic_j / samples,
        "ci95_j": [low_j, high_j],
        "ci95_if_independent_j": [centre_j - quadrature_j, centre_j + quadrature_j],
        "estimate_band_j": band_j,
        "global_batch_size": samples,
        "global_batch_size_source": ("given" if global_batch_size is not None
                                     else "sum of the ranks' batch sizes (data parallel)"),
        "idle_power_w": sum(d["idle_power_w"] for d in counted),
        "mean_power_w": sum(d["mean_power_w"] or 0.0 for d in counted),
        "step_latency_s": max(r["latency_median_s"] for r in rank_rows),
        "world_size": len(records),
        "n_hosts": len(hosts),
        "method": {"inference": INFERENCE_MEANING, "shared_domains": HOST_DOMAIN_RULE,
                   "interval": INTERVAL_METHOD},
        "hosts": hosts,
        "ranks": rank_rows,
        "domains": domains,
        "warnings": warnings,
        "rank_measurements": [dict(r) for r in records],
    }


def _mismatch_warnings(rank_rows: Sequence[Mapping[str, Any]], tolerance: float) -> list[str]:
    if len(rank_rows) < 2:
        return []
    warnings = []
    counts = [r["n_windows"] for r in rank_rows]
    durations = [r["duration_s"] for r in rank_rows]
    if len(set(counts)) > 1 or _spread(durations) > tolerance:
        detail = ", ".join(f"rank {r['rank']}: {r['n_windows']} windows in {r['duration_s']:.3g} s"
                           for r in rank_rows)
        warnings.append(
            f"the ranks' measurements did not line up ({detail}): a host-wide domain (CPU, RAM) "
            "counted from one rank saw the other ranks' work only in part; use the same window "
            "settings and --precision 0 so every rank runs the same number of windows")
    latencies = [r["latency_median_s"] for r in rank_rows]
    spread = _spread(latencies)
    if spread > tolerance:
        slow = max(rank_rows, key=lambda r: r["latency_median_s"])
        fast = min(rank_rows, key=lambda r: r["latency_median_s"])
        warnings.append(
            f"the ranks' latency per call differs by {spread * 100:.0f}% (rank {fast['rank']} "
            f"{fast['latency_median_s']:.3g} s, rank {slow['rank']} {slow['latency_median_s']:.3g} s): "
            "in a lock-step run the faster ranks would wait for the slowest, and the energy they "
            "spend waiting is not in this figure")
    return warnings


def _rank_warnings(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Each rank's own warnings, once per distinct text, with the ranks that raised it."""
    by_text: dict[str, list[int]] = {}
    for record in records:
        for text in record["measurement"].get("warnings", []):
            by_text.setdefault(text, []).append(record["rank"])
    return [f"{_ranks_text(ranks)}: {text}" for text, ranks in by_text.items()]


@dataclass(frozen=True)
class DistributedMeasurement:
    """The figures of a multi-process measurement, held as every rank's record; the combined
    figures are derived by `combine` once, at construction (which validates the records)."""

    rank_results: tuple[Mapping[str, Any], ...]
    global_batch_size: int | None = None
    tolerance: float = DEFAULT_TOLERANCE
    _combined: dict[str, Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rank_results", tuple(self.rank_results))
        object.__setattr__(self, "_combined", combine(
            self.rank_results, global_batch_size=self.global_batch_size, tolerance=self.tolerance))

    @property
    def provenance(self) -> Provenance:
        return Provenance(self._combined["provenance"])

    @property
    def per_inference_j(self) -> float:
        """Energy of one global step (one call on every rank), all counted domains."""
        return float(self._combined["per_inference_j"])

    @property
    def per_inference_dynamic_j(self) -> float:
        return float(self._combined["per_inference_dynamic_j"])

    @property
    def per_sample_j(self) -> float:
        return float(self._combined["per_sample_j"])

    @property
    def ci95_j(self) -> tuple[float, float]:
        low, high = self._combined["ci95_j"]
        return (float(low), float(high))

    @property
    def estimate_band_j(self) -> tuple[float, float] | None:
        band = self._combined["estimate_band_j"]
        return None if band is None else (float(band[0]), float(band[1]))

    @property
    def world_size(self) -> int:
        return int(self._combined["world_size"])

    @property
    def warnings(self) -> tuple[str, ...]:
        return tuple(self._combined["warnings"])

    def to_dict(self) -> dict[str, Any]:
        import copy

        return copy.deepcopy(self._combined)


# ---- the collective part -----------------------------------------------------------------------


def gather_measurements(local: Mapping[str, Any],
                        group: ProcessGroup | None = None) -> list[dict[str, Any]] | None:
    """Every rank's record at the group's rank 0 (`torch.distributed.gather_object`): rank 0 gets
    the list in rank order, the others None. Every rank of `group` must call it.

    On an NCCL group, objects travel through the current CUDA device, so each rank must have
    called `torch.cuda.set_device` first; `measure_distributed` uses a gloo group instead."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise UsageError("gather_measurements needs an initialised process group: call "
                         "torch.distributed.init_process_group first, or use measure_distributed")
    me = dist.get_rank(group)
    world = dist.get_world_size(group)
    gathered: list[Any] | None = [None] * world if me == 0 else None
    dist.gather_object(dict(local), gathered, dst=_group_root(group), group=group)
    return gathered


def _group_root(group: ProcessGroup | None) -> int:
    """The global rank of `group`'s rank 0 (gather/broadcast take global ranks)."""
    import torch.distributed as dist

    return 0 if group is None else int(dist.get_process_group_ranks(group)[0])


def _broadcast(value: Any, group: ProcessGroup | None) -> Any:
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=_group_root(group), group=group)
    return box[0]


@contextlib.contextmanager
def _process_group(info: RankInfo | None, group: ProcessGroup | None,
                   timeout_s: float) -> Iterator[ProcessGroup | None]:
    """A gloo group to exchange the records on: the caller's, or one made from torchrun's
    environment, destroyed afterwards. Only what is created here is destroyed.

    Gloo even on GPUs: the exchange is a few kilobytes of Python objects, and an NCCL communicator
    would allocate memory and launch kernels on the very GPUs being metered, and needs each rank's
    current CUDA device set correctly or it hangs."""
    import torch.distributed as dist

    if not dist.is_available():
        raise UsageError("this torch build has no torch.distributed: install a build with it")
    created = False
    side = None
    timeout = datetime.timedelta(seconds=timeout_s)
    if not dist.is_initialized():
        if group is not None:
            raise UsageError("a process group was passed but torch.distributed is not initialised")
        if info is None:
            raise UsageError("not launched by torchrun (RANK and WORLD_SIZE are unset) and no "
                             "process group is initialised: run under torchrun, or call "
                             "torch.distributed.init_process_group first")
        missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
        if missing:
            raise UsageError(f"{' and '.join(missing)} unset: torchrun sets them; when launching "
                             "by hand, set them to rank 0's address and a free port")
        try:
            dist.init_process_group("gloo", init_method="env://", rank=info.rank,
                                    world_size=info.world_size, timeout=timeout)
        except RuntimeError as error:  # torch's DistNetworkError / DistStoreError: the rendezvous
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise MeasurementError(
                f"rank {info.rank} could not join the others at {os.environ['MASTER_ADDR']}:"
                f"{os.environ['MASTER_PORT']}: {first} (is every rank started, and the port free?)"
            ) from error
        created = True
        logger.debug("rank %d: created a gloo process group of %d", info.rank, info.world_size)
    pg = group
    try:
        if "gloo" not in str(dist.get_backend(pg)).lower():
            if group is not None:
                raise UsageError(f"the group passed uses {dist.get_backend(pg)}: pass a gloo "
                                 "group (torch.distributed.new_group(ranks, backend='gloo'))")
            # Every rank of the default group is inside measure_distributed, so all reach this.
            side = dist.new_group(backend="gloo", timeout=timeout)
            pg = side
            logger.debug("the default process group uses %s: exchanging records on a gloo group",
                         dist.get_backend())
        yield pg
    finally:
        if side is not None:
            dist.destroy_process_group(side)
        if created:
            dist.destroy_process_group()


class LockstepAborted(MeasurementError):
    """Another rank failed during a lockstep measurement: this rank stopped with it. The failing
    rank's own error is the one reported."""


class _Agreement:
    """A `meter.Agree` over a gloo group that can also carry an abort.

    Every exchange is one all_reduce (MAX) of [value, abort] as float64 on the CPU ("min" sends
    −value), so an agreement, the closing `finish` and a failing rank's `abort` all match one
    another: a rank that fails sends `abort` once, the others meet it in whatever agreement they
    are waiting in, raise LockstepAborted, and every rank goes on to the gather of the records.
    Without it they would wait in their agreement until the group's timeout."""

    def __init__(self, group: ProcessGroup | None) -> None:
        self.group = group

    def _exchange(self, value: float, abort: bool) -> float:
        import torch
        import torch.distributed as dist

        box = torch.tensor([value, 1.0 if abort else 0.0], dtype=torch.float64)
        dist.all_reduce(box, op=dist.ReduceOp.MAX, group=self.group)
        if not abort and float(box[1]) > 0:
            raise LockstepAborted("stopped because another rank failed during the lockstep measurement")
        return float(box[0])

    def __call__(self, value: float, op: str) -> float:
        return self._exchange(value, False) if op == "max" else -self._exchange(-value, False)

    def finish(self) -> None:
        """The closing exchange after a measurement: a rank that failed after the last agreement
        is met here."""
        self._exchange(0.0, False)

    def abort(self) -> None:
        """Tell the other ranks that this one failed (once, from the failing rank)."""
        try:
            self._exchange(0.0, True)
        except RuntimeError:  # the group itself is broken: nothing left to tell anyone
            logger.debug("could not send the lockstep abort", exc_info=True)


def _group_rank_info(info: RankInfo | None, group: ProcessGroup | None) -> RankInfo:
    """Rank and world size as the group sees them (the order of the gathered list); the
    host-local facts from torchrun's variables, which describe this process whatever the group."""
    import torch.distributed as dist

    rank, world = dist.get_rank(group), dist.get_world_size(group)
    if info is None:
        return RankInfo(rank, world, None, None, None)
    return RankInfo(rank, world, info.local_rank, info.local_world_size, info.node_rank)


def _on_every_rank(error: EnergyPruneError) -> EnergyPruneError:
    """Mark an error that every rank raises with the same message, so that a launcher's ranks
    other than 0 can stay quiet instead of printing it world_size times."""
    error.all_ranks = True  # type: ignore[attr-defined]
    return error


def _error_from(record: tuple[str, str]) -> EnergyPruneError:
    name, message = record
    cls = getattr(errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, EnergyPruneError)):
        cls = MeasurementError
    return cls(message)


def measure_distributed(
    model: nn.Module,
    inputs: Inputs,
    *,
    out: str | os.PathLike[str] | None = None,
    force: bool = False,
    group: ProcessGroup | None = None,
    global_batch_size: int | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    keep_traces: bool = False,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    lockstep: bool = False,
    **measure_kwargs: Any,
) -> DistributedMeasurement | None:
    """Measure `model(inputs)` on every rank at once and sum at rank 0. Every rank must call it.

    Each rank runs `energyprune.measure.api.measure(model, inputs, **measure_kwargs)` on the devices its
    model is on (put it on `local_device()` first) after a barrier, so the ranks' idle baselines
    and windows start together. Rank 0 gathers the records, combines them (`combine`), writes the
    JSON report to `out` if given (refusing to replace a file unless `force`) and returns a
    `DistributedMeasurement`; the other ranks return None. A failure on any rank is raised on
    every rank, as one line naming the rank, with `error.all_ranks = True` (print it on rank 0
    only).

    Uses the process group already initialised (or `group`, which must be gloo), else creates a
    gloo group from torchrun's environment and destroys it before returning.

    lockstep: every rank calls the model equally often (see the module note); needed when the
    model's forward communicates with the other ranks. A rank that fails tells the others through
    the agreement they are waiting in (`_Agreement`), so every rank still ends with its error. A
    rank whose model hangs inside a collective cannot be helped: the others wait until `timeout_s`."""
    from energyprune.measure.api import measure
    from energyprune.torch_io import check_inputs, cuda_devices_of
    from energyprune.files import check_output_file, to_json, write_atomic

    if out is not None and not str(out).lower().endswith(".json"):
        raise UsageError(f"--out {out}: a distributed measurement is written as JSON; use a .json name")
    if global_batch_size is not None and global_batch_size < 1:
        raise UsageError(f"global_batch_size must be at least 1 (got {global_batch_size})")
    env_info = distributed_context()
    with _process_group(env_info, group, timeout_s) as pg:
        info = _group_rank_info(env_info, group)
        # Rank 0 owns the output; everyone learns whether it is usable before measuring anything.
        problem = None
        if info.rank == 0 and out is not None:
            try:
                check_output_file(out, force=force)
            except UsageError as error:
                problem = (type(error).__name__, str(error))
        problem = _broadcast(problem, pg)
        if problem is not None:
            raise _on_every_rank(_error_from(problem))

        import torch.distributed as dist

        devices = [f"cuda:{i}" for i in cuda_devices_of(model)] or ["cpu"]
        own_error: BaseException | None = None
        # One call before the barrier: a first call (allocation, compilation) can take long, and
        # if one rank made it after the barrier, it would fall into the other ranks' idle window,
        # which meters the same host CPU. A failure is kept to send, never raised here: the other
        # ranks would wait at the barrier for ever.
        try:
            check_inputs(model, inputs)
        except Exception as error:
            own_error = error
        dist.barrier(group=pg)
        started = time.time()
        local: dict[str, Any] = {}
        agreement = _Agreement(pg) if lockstep else None
        if own_error is None:
            result = None
            try:
                result = measure(model, inputs, agree=agreement, **measure_kwargs)
                if agreement is not None:
                    agreement.finish()
            except LockstepAborted as error:  # another rank failed: already told, nothing to send
                own_error = error
            except Exception as error:  # sent to rank 0 and raised below, on every rank
                own_error = error
                if agreement is not None and result is None:
                    agreement.abort()  # the others wait in an agreement (or in `finish`)
            if own_error is None:
                try:
                    local = rank_record(result, info, devices=devices, started_unix_s=started,
                                        ended_unix_s=time.time(), keep_trace=keep_traces)
                except Exception as error:
                    own_error = error
        elif agreement is not None:
            agreement.abort()  # the others are in their first agreement of the warm-up
        if own_error is not None:
            local = _failure_record(info, own_error)
        gathered = gather_measurements(local, group=pg)

        verdict: tuple[str, str] | None = None
        combined: DistributedMeasurement | None = None
        if gathered is not None:
            try:
                combined = DistributedMeasurement(tuple(gathered), global_batch_size, tolerance)
                if out is not None:
                    write_atomic(out, to_json(combined.to_dict()))
            except EnergyPruneError as error:
                verdict = (type(error).__name__, str(error))
            except OSError as error:
                verdict = ("UsageError", f"--out {out} could not be written: {error}")
        verdict = _broadcast(verdict, pg)
    if own_error is not None and not isinstance(own_error, EnergyPruneError):
        raise own_error  # a bug on this rank: keep its traceback
    if verdict is not None:
        raise _on_every_rank(_error_from(verdict))
    return combined


# ---- rendering ---------------------------------------------------------------------------------


def render_text(result: Mapping[str, Any]) -> str:
    """The terminal summary of a combined result (what `combine` returns)."""
    from energyprune.units import format_energy, format_time

    estimated = is_estimated(result["provenance"])
    tag = " (ESTIMATED)" if estimated else ""
    low, high = result["ci95_j"]
    lines = [
        f"energyprune: {result['world_size']} ranks on {result['n_hosts']} host(s); one inference "
        "= one global step (one call on every rank)",
        f"  per global step{tag}: {format_energy(result['per_inference_j'])}   95% interval "
        f"{format_energy(low)} .. {format_energy(high)} (intervals summed)",
        f"  above idle{tag}: {format_energy(result['per_inference_dynamic_j'])}",
        f"  per sample{tag}: {format_energy(result['per_sample_j'])} "
        f"(global batch {result['global_batch_size']}: {result['global_batch_size_source']})",
        f"  provenance: {result['provenance'].upper()}",
    ]
    if result.get("estimate_band_j"):
        b_low, b_high = result["estimate_band_j"]
        lines.append(f"  estimate band: {format_energy(b_low)} .. {format_energy(b_high)} "
                     "(the power model's own uncertainty)")
    lines.append(f"  step latency: {format_time(result['step_latency_s'])} (slowest rank's median)")
    rows = [["rank", "host", "domain", "provenance", "J/inference", "counted"]]
    for d in result["domains"]:
        rows.append([str(d["rank"]), d["host"], d["name"], d["provenance"],
                     format_energy(d["per_inference_j"]),
                     "yes" if d["counted"] else f"no (rank {d['counted_from_rank']})"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines += [""] + ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    if result["warnings"]:
        lines += ["", "  warnings:"] + [f"    ! {w}" for w in result["warnings"]]
    return "\n".join(lines) + "\n"


__all__ = [
    "DEFAULT_TOLERANCE",
    "SCHEMA",
    "DistributedMeasurement",
    "RankInfo",
    "combine",
    "distributed_context",
    "gather_measurements",
    "host_identity",
    "local_device",
    "measure_distributed",
    "rank_record",
    "render_text",
]
