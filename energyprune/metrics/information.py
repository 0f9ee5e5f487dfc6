"""Information concentration of a layer: IC = rank(W) · H(activations) / ‖W‖₀ (DESIGN §5).

How much information a layer carries per weight it keeps: the number of independent directions
its weight matrix spans, times the entropy of what it outputs, over the weights that are not zero.
A layer whose weights are low-rank or whose outputs carry little entropy concentrates little
information per weight, and is a candidate for compression.

Per ``nn.Linear``, convolution (``nn.Conv1d/2d/3d``) and transformers ``Conv1D`` layer:

- **rank(W)**: ``torch.linalg.matrix_rank`` of the weight as a matrix (out × in; a convolution's
  kernel flattened to out × (in/groups · kernel)), computed in float64 on the stored values, with
  relative tolerance ``rtol``: singular values below rtol · σ_max do not count. Default rtol =
  max(out, in) · eps(float32) ≈ 1.19e-7 · max(out, in), the NumPy/LAPACK convention for float32
  data: weights stored in float32 carry about that much rounding, so smaller singular values are
  noise. For bfloat16/float16 weights pass a larger ``rtol`` (eps is 7.8e-3 / 9.8e-4 there).
- **‖W‖₀**: the number of non-zero weights (the bias is not counted).
- **H(activations)**: the entropy, in **bits**, of the layer's output over the calibration data,
  estimated by an estimator of :mod:`energyprune.metrics.entropy` on a sample of output rows
  (one row per token for a Linear, per spatial position for a convolution; padding positions,
  where a dict batch's ``attention_mask`` is 0, are left out for (batch, tokens, features)
  outputs). Default ``bucket``: the sum over output features of the Shannon entropy of a 20-bin
  histogram spanning each feature's range (discrete, ≥ 0, invariant to each feature's scale; it
  ignores dependence between features). ``gaussian``, ``knn`` and ``renyi`` are differential or
  matrix entropies that may be negative; their IC is comparable only with itself.

Memory: at most ``max_rows`` output rows per layer are kept (a seeded reservoir sample, Vitter's
algorithm R, over every row of every batch), float32 on the CPU: Σ_layers max_rows × out_features
× 4 bytes. Pass ``layers`` to study a few layers of a large model.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from energyprune.errors import MeasurementError, UsageError
from energyprune.metrics.fidelity import evaluating
from energyprune.torch_io import call_model
from energyprune.metrics.entropy import ESTIMATORS
from energyprune.pruning.surgery.slicing import is_conv1d_hf

logger = logging.getLogger(__name__)

DEFAULT_MAX_ROWS = 512
DEFAULT_BINS = 20

__all__ = ["InformationConcentration", "LayerInformation", "information_concentration", "weight_rank"]


@dataclass(frozen=True)
class LayerInformation:
    """IC of one layer, with every quantity it was computed from."""

    name: str  # module path
    kind: str  # "Linear", "Conv2d", "Conv1D", ...
    weight_shape: tuple[int, ...]
    rank: int
    max_rank: int  # min(out, in) of the weight matrix
    rtol: float  # the relative tolerance the rank used
    nonzero_weights: int  # ‖W‖₀
    n_weights: int
    activation_entropy_bits: float
    n_rows: int  # output rows the entropy was estimated from (≤ max_rows)
    rows_seen: int  # output rows the calibration data produced
    n_features: int  # output features per row

    @property
    def information_concentration(self) -> float | None:
        """rank · H_bits / ‖W‖₀; None for an all-zero weight (no weight carries anything)."""
        if self.nonzero_weights == 0:
            return None
        return self.rank * self.activation_entropy_bits / self.nonzero_weights

    @property
    def rank_fraction(self) -> float:
        return self.rank / self.max_rank if self.max_rank else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "weight_shape": list(self.weight_shape),
            "rank": self.rank,
            "max_rank": self.max_rank,
            "rank_fraction": self.rank_fraction,
            "rtol": self.rtol,
            "nonzero_weights": self.nonzero_weights,
            "n_weights": self.n_weights,
            "activation_entropy_bits": self.activation_entropy_bits,
            "n_rows": self.n_rows,
            "rows_seen": self.rows_seen,
            "n_features": self.n_features,
            "information_concentration": self.information_concentration,
        }


@dataclass(frozen=True)
class InformationConcentration:
    """IC of every layer studied, with the estimator and tolerances that define the numbers."""

    layers: tuple[LayerInformation, ...]
    estimator: str
    estimator_options: Mapping[str, Any]
    max_rows: int
    n_batches: int
    assumptions: tuple[str, ...]
    skipped: tuple[str, ...] = field(default=())  # "name: why"

    def by_name(self) -> dict[str, LayerInformation]:
        return {layer.name: layer for layer in self.layers}

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": "energyprune.information_concentration/1",
            "formula": "IC = rank(W) * H(activations) [bits] / ||W||_0",
            "estimator": self.estimator,
            "estimator_options": dict(self.estimator_options),
            "max_rows": self.max_rows,
            "n_batches": self.n_batches,
            "layers": [layer.to_dict() for layer in self.layers],
            "assumptions": list(self.assumptions),
            "skipped": list(self.skipped),
        }


def _is_layer(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)) or is_conv1d_hf(module)


def _weight_matrix(module: nn.Module) -> torch.Tensor:
    weight = module.weight.detach()
    return weight.reshape(weight.shape[0], -1)  # Linear (out, in); conv (out, in/g·k); Conv1D (in, out)


def weight_rank(weight: torch.Tensor, rtol: float | None = None) -> tuple[int, float]:
    """(rank, rtol used) of a 2-D weight matrix, in float64; see the module note for the default."""
    if weight.dim() != 2:
        raise UsageError(f"weight_rank takes a matrix, got shape {tuple(weight.shape)}")
    if rtol is None:
        rtol = max(weight.shape) * torch.finfo(torch.float32).eps
    if not (rtol >= 0 and math.isfinite(rtol)):
        raise UsageError(f"rtol must be a finite number >= 0, got {rtol}")
    if weight.numel() == 0:
        return 0, float(rtol)
    rank = int(torch.linalg.matrix_rank(weight.detach().to(device="cpu", dtype=torch.float64), rtol=rtol))
    return rank, float(rtol)


class _Reservoir:
    """A uniform sample of at most `cap` rows of a stream (algorithm R), float32 on the CPU."""

    def __init__(self, cap: int, generator: torch.Generator) -> None:
        self.cap = cap
        self.generator = generator
        self.buffer: torch.Tensor | None = None
        self.seen = 0

    def add(self, rows: torch.Tensor) -> None:
        rows = rows.detach().to(device="cpu", dtype=torch.float32)
        n = rows.shape[0]
        if n == 0:
            return
        if self.buffer is None:
            self.buffer = torch.empty((self.cap, rows.shape[1]), dtype=torch.float32)
        elif rows.shape[1] != self.buffer.shape[1]:
            raise UsageError(f"a layer's output changed width between batches ({self.buffer.shape[1]} "
                             f"then {rows.shape[1]})")
        take = min(max(self.cap - self.seen, 0), n)
        if take:
            self.buffer[self.seen : self.seen + take] = rows[:take]
        if take < n:
            # Row t of the stream (0-based) replaces slot j ~ U{0..t} when j < cap; in stream
            # order, so a later row overwrites an earlier one as the sequential algorithm does.
            t = torch.arange(self.seen + take, self.seen + n, dtype=torch.float64)
            j = (torch.rand(t.shape, generator=self.generator, dtype=torch.float64) * (t + 1)).floor().long()
            for i in torch.nonzero(j < self.cap).flatten().tolist():
                self.buffer[j[i]] = rows[take + i]
        self.seen += n

    def rows(self) -> torch.Tensor:
        assert self.buffer is not None
        return self.buffer[: min(self.seen, self.cap)]


def _output_rows(module: nn.Module, output: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if isinstance(module, nn.modules.conv._ConvNd):
        # (N, C, *spatial) -> one row per position, the channels as features.
        return output.movedim(1, -1).reshape(-1, output.shape[1])
    if mask is not None and output.dim() == 3 and tuple(mask.shape) == tuple(output.shape[:2]):
        return output[mask.to(output.device).bool()]
    return output.reshape(-1, output.shape[-1])


def information_concentration(
    model: nn.Module,
    calibration: Iterable[Any],
    *,
    estimator: str = "bucket",
    estimator_options: Mapping[str, Any] | None = None,
    rtol: float | None = None,
    max_rows: int = DEFAULT_MAX_ROWS,
    layers: Sequence[str] | None = None,
    seed: int = 0,
) -> InformationConcentration:
    """IC = rank(W) · H(activations) / ‖W‖₀ for every Linear/conv layer of `model` (or those named
    in `layers`), the activations collected by forward hooks over the `calibration` batches
    (each called as ``model(**batch)``, ``model(*batch)`` or ``model(batch)``). See the module note
    for the rank tolerance, the entropy estimator and memory."""
    if estimator not in ESTIMATORS:
        raise UsageError(f"unknown entropy estimator {estimator!r}: choose one of {', '.join(ESTIMATORS)}")
    if max_rows < 2:
        raise UsageError(f"max_rows must be at least 2 (an entropy needs two samples), got {max_rows}")
    options = dict(estimator_options or {})
    if estimator == "bucket":
        options.setdefault("bins", DEFAULT_BINS)
    modules = {name: m for name, m in model.named_modules() if _is_layer(m)}
    if layers is not None:
        unknown = sorted(set(layers) - set(modules))
        if unknown:
            raise UsageError(f"no Linear/conv layer named {', '.join(unknown)} in the model")
        modules = {name: modules[name] for name in layers}
    if not modules:
        raise UsageError("the model has no nn.Linear, convolution or Conv1D layer to study")
    generator = torch.Generator().manual_seed(seed)
    reservoirs = {name: _Reservoir(max_rows, generator) for name in modules}
    current_mask: list[torch.Tensor | None] = [None]

    def hook_for(name: str, module: nn.Module):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            tensor = output[0] if isinstance(output, (tuple, list)) else output
            if isinstance(tensor, torch.Tensor) and tensor.dim() >= 2:
                reservoirs[name].add(_output_rows(module, tensor, current_mask[0]))
        return hook

    handles = [m.register_forward_hook(hook_for(name, m)) for name, m in modules.items()]
    n_batches = 0
    try:
        with evaluating(model):
            for batch in calibration:
                mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
                current_mask[0] = torch.as_tensor(mask) if mask is not None else None
                call_model(model, batch)
                n_batches += 1
    finally:
        for handle in handles:
            handle.remove()
    if n_batches == 0:
        raise UsageError("no calibration batch was given")

    entropy = ESTIMATORS[estimator]
    records: list[LayerInformation] = []
    skipped: list[str] = []
    for name, module in modules.items():
        reservoir = reservoirs[name]
        if reservoir.seen < 2:
            skipped.append(f"{name}: the calibration data produced {reservoir.seen} output row(s); "
                           "an entropy needs at least 2 (its forward was not called: unused, or its "
                           "weight is used directly, as nn.MultiheadAttention does with out_proj)")
            continue
        rows = reservoir.rows()
        matrix = _weight_matrix(module)
        rank, used_rtol = weight_rank(matrix, rtol)
        h_bits = entropy(rows, **options) / math.log(2)
        records.append(LayerInformation(
            name=name, kind=type(module).__name__, weight_shape=tuple(module.weight.shape),
            rank=rank, max_rank=min(matrix.shape), rtol=used_rtol,
            nonzero_weights=int(torch.count_nonzero(module.weight.detach())),
            n_weights=module.weight.numel(), activation_entropy_bits=float(h_bits),
            n_rows=rows.shape[0], rows_seen=reservoir.seen, n_features=rows.shape[1]))
    if not records:
        raise MeasurementError("no layer produced enough output rows to estimate an entropy: " + "; ".join(skipped))
    option_text = ", ".join(f"{k}={v}" for k, v in sorted(options.items())) or "defaults"
    assumptions = (
        "rank(W): torch.linalg.matrix_rank in float64 of the weight as an out × in matrix (conv "
        "kernels flattened), singular values below rtol · sigma_max ignored; rtol = "
        + (f"{rtol:g} (given)" if rtol is not None else "max(out, in) · eps(float32) (NumPy's convention for float32 data)"),
        "||W||_0: non-zero weights, bias excluded",
        f"H(activations): energyprune.metrics.entropy.{entropy.__name__} ({option_text}) of the layer's "
        "output rows (one per token / spatial position; padding excluded where an attention_mask is "
        "given), converted from nats to bits",
        f"at most {max_rows} rows per layer, a seeded (seed {seed}) uniform reservoir sample of every "
        f"row of {n_batches} calibration batch(es)",
    ) + (("bucket entropy sums per-feature histogram entropies: dependence between features is ignored, "
          "so it is an upper bound of the joint discrete entropy at that resolution",) if estimator == "bucket"
         else ("a differential/matrix entropy may be negative: compare IC values of this estimator only "
               "with each other",))
    return InformationConcentration(
        layers=tuple(records), estimator=estimator, estimator_options=options, max_rows=max_rows,
        n_batches=n_batches, assumptions=assumptions, skipped=tuple(skipped))
