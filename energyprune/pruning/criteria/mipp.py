"""MIPP (Westphal et al., arXiv 2411.00147): keep the hidden units of an MLP that preserve mutual
information with the next layer, by greedy backward elimination against a random null unit.

For one MLP, A (n × h) are its hidden activations (the consumer's input: `act(gate x) * up x` for
a gated MLP) and Y (n × d) the next layer's output (the consumer's output), on a uniform sample of
at most `max_tokens` calibration tokens (padding excluded; bottom-k of seeded random keys, so the
sample does not favour early batches). MLPs that see the same number of rows per batch (every MLP
of a transformer) get the same tokens.

**Conv blocks** (the expansion channels of an MBConv block, `MLPSpec.feature_axis` 1): a row is
one position (n, y, x) of the feature map, A its hidden channels, Y the projection's output
channels there. That Y is a linear function of A row by row only when the consumer is a 1×1
convolution with stride 1, groups 1 and no padding, which it is in MBConv blocks; any other
consumer (a k×k conv mixes neighbouring positions) is refused with a UsageError. Two honest
limits: neighbouring positions are strongly correlated, so n positions carry less evidence than n
independent tokens (sample from many images rather than few); and with squeeze-and-excitation,
removing a channel also changes the SE gate of the others (it reads the channel's mean), which
the estimator - a function of the consumer's input only - does not see.

**Estimator** (Gaussian, regression residual). Y is an exact linear function of A, so the
information of a deterministic Gaussian channel is infinite; the estimator therefore measures what
is resolvable above an output noise floor N = `noise` · (tr Σ_Y / d) · I:

    I(A_S; Y) = ½ log det(Σ_Y + N) − ½ log det(Σ_{Y|A_S} + N)          (nats)
    Σ_{Y|A_S} = Σ_Y − Σ_{Y S} (Σ_{S S} + λ I)⁻¹ Σ_{S Y}                 (ridge regression residual)

with λ = `ridge` · (mean unit variance), a numerical stabiliser (dead and duplicate units make
Σ_SS singular). The information lost by removing unit j from the set S follows from the matrix
determinant lemma, with P = (Σ_SS + λI)⁻¹ and β = P Σ_SY the regression coefficients:

    loss_j = ½ log(1 + β_jᵀ (Σ_{Y|A_S} + N)⁻¹ β_j / P_jj)

(β_j β_jᵀ / P_jj is exactly how much the residual covariance grows without j), so one step scores
every remaining unit at once. The elimination never works in the output dimension d after the
start: it keeps the Gram matrix G = β (Σ_{Y|A_S} + N)⁻¹ βᵀ, whose diagonal gives every loss
(loss_j = ½ log(1 + G_jj / P_jj)), and removing units updates P by a Schur complement and G by a
Woodbury identity in the span of the removed units' rows (a full re-solve every 16 steps stops
rounding drift). A step therefore costs O(h² k), not O(h d² + d³).

**Null unit.** A column of Gaussian noise z (variance = the mean unit variance, seeded) is
appended to A and never eliminated. Each step also computes its loss: what removing a unit that
carries nothing but chance correlation would lose.

**Elimination.** Repeatedly remove the remaining real unit of smallest loss until every unit is
gone. For h ≤ `max_steps` this is exact one-by-one greedy elimination. Wider MLPs are eliminated in
chunks to bound the cost to `max_steps` full scorings: each step scores every remaining unit, takes
the k = ⌈h / max_steps⌉ of smallest loss (default 32 steps), and removes them one at a time in that order, each loss
recomputed exactly given the units already gone (so the only approximation is the order within a
chunk: two duplicates picked together do not both count as free - the second one's loss is its
real one). A unit is **prunable** when it is eliminated before the stop: walking the eliminations
in order, each unit whose loss is ≤ max(null unit's loss at that moment, `tolerance`) is prunable,
and the first one above stops the marking (MIPP's stopping rule; `tolerance`, default 1e-4 nats,
makes a loss that is zero up to the ridge count as zero, since at the start both a redundant
unit's and the null's loss are ≈ 0). Prunable units per MLP are in `last_prunable`, the full
record in `last_results`.

**Score** (lowest removed first) of the unit eliminated r-th (0-based) in an MLP of width h:
r / h for a prunable unit (in [0, 1)), 1 + r / h otherwise (in [1, 2)), so every MLP's prunable
units go before any unit that carries information above the null.

Cost: one calibration pass storing n × (h + d) float32 values per MLP (n ≤ `max_tokens`), then per
MLP O(n (h + d)²) for the covariances, O(h³ + h d² + h² d) per re-solve and O(max_steps · h² k)
for the elimination (k the chunk size), float64 on the model's device. Profiled on this project's
2-core CPU machine (shared, load ~5) for h = 2048, d = 640: the former per-step (B (R+N)⁻¹, a d×d
inverse per step, a d×d Sherman-Morrison per unit) took 70 s at 128 steps; the Gram form takes
28 s at 128 steps and ~9 s at the default 32 (`benchmarks/width_benchmark.py` times it on
SmolLM2). MLPs wider than `max_width` (default 4096) are refused.

**Sample size.** With n not well above h the in-sample regression overfits and every loss shrinks
toward the null's; the default `max_tokens=None` samples max(2048, 4 (h + 1)) tokens for the
widest MLP scored, and `calibration_tokens(model)` tells a caller (the CLI) how many to provide; fewer than
2 (h + 1) gets a warning.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from energyprune.errors import UsageError
from energyprune.pruning.base import Calibration, Unit
from energyprune.torch_io import call_model, model_device, to_device
from energyprune.pruning.observe.hooks import (
    attention_mask_of,
    batches_of,
    check_max_batches,
    mlp_specs,
    observing,
    specs_of_units,
    valid_rows,
)
from energyprune.pruning.criteria.units import check_units
from energyprune.pruning.surgery.neurons import MLPSpec
from energyprune.pruning.surgery.slicing import get_module

logger = logging.getLogger(__name__)

#: Full re-solve of the regression every this many elimination steps.
REFRESH_STEPS = 16


@dataclass(frozen=True)
class MippResult:
    """Greedy backward elimination of one MLP's units.

    order: unit indices in elimination order. losses[i]: information (nats) lost when order[i] was
    eliminated; null_losses[i]: the null unit's loss at that step. prunable: the units eliminated
    before the stop (sorted). information_nats: I(A; Y) of all units. tokens: sample size.
    """

    path: str
    order: tuple[int, ...]
    losses: tuple[float, ...]
    null_losses: tuple[float, ...]
    prunable: tuple[int, ...]
    information_nats: float
    tokens: int
    steps: int

    @property
    def width(self) -> int:
        return len(self.order)

    def scores(self) -> dict[int, float]:
        """The score of each unit index (see the module note)."""
        chosen = set(self.prunable)
        h = max(self.width, 1)
        return {j: (r / h if j in chosen else 1.0 + r / h) for r, j in enumerate(self.order)}


def _positive(value: float, name: str, criterion: str, allow_zero: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (value >= 0 if allow_zero else value > 0)
    if not ok or not math.isfinite(value):
        raise UsageError(f"{criterion}: {name} must be a {'non-negative' if allow_zero else 'positive'} number, got {value!r}")
    return float(value)


def _positive_int(value: int, name: str, criterion: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UsageError(f"{criterion}: {name} must be an integer >= {minimum}, got {value!r}")
    return value


def _inverse_spd(matrix: torch.Tensor) -> torch.Tensor:
    """Inverse of a symmetric positive definite matrix (Cholesky), symmetrised."""
    factor, info = torch.linalg.cholesky_ex(matrix)
    if int(info) != 0:
        inverse = torch.linalg.pinv(matrix, hermitian=True)
    else:
        inverse = torch.cholesky_inverse(factor)
    return (inverse + inverse.T) / 2


def _cholesky(matrix: torch.Tensor) -> torch.Tensor:
    """Lower Cholesky factor of a symmetric positive definite matrix; a tiny diagonal jitter,
    raised until it factors, where rounding made it indefinite."""
    factor, info = torch.linalg.cholesky_ex(matrix)
    jitter = 1e-12 * float(torch.diagonal(matrix).abs().mean().clamp_min(1e-300))
    while int(info) != 0:
        eye = torch.eye(matrix.shape[0], dtype=matrix.dtype, device=matrix.device)
        factor, info = torch.linalg.cholesky_ex(matrix + jitter * eye)
        jitter *= 10
    return factor


def _logdet(matrix: torch.Tensor) -> float:
    sign, value = torch.linalg.slogdet(matrix)
    return float(value) if float(sign) > 0 else -math.inf


def eliminate(
    A: torch.Tensor,
    Y: torch.Tensor,
    *,
    ridge: float = 1e-8,
    noise: float = 1e-3,
    tolerance: float = 1e-4,
    max_steps: int = 32,
    seed: int = 0,
    path: str = "",
) -> MippResult:
    """MIPP's greedy backward elimination of the columns of A (n × h) against Y (n × d); see the
    module note. Computed in float64 on A's device."""
    if A.ndim != 2 or Y.ndim != 2 or A.shape[0] != Y.shape[0]:
        raise UsageError(f"mipp: A and Y must be (n, h) and (n, d) with the same n, got {tuple(A.shape)}, {tuple(Y.shape)}")
    n, h = A.shape
    d = Y.shape[1]
    if n < 2 or h == 0:
        raise UsageError(f"mipp: need at least 2 tokens and 1 unit, got {n} tokens and {h} units")
    device = A.device
    A = A.double()
    Y = Y.double().to(device)
    A = A - A.mean(dim=0)
    Y = Y - Y.mean(dim=0)
    variances = A.square().mean(dim=0)
    live = variances[variances > 0]
    unit_var = float(live.mean()) if live.numel() else 1.0
    generator = torch.Generator(device="cpu").manual_seed(seed)
    z = torch.randn(n, 1, generator=generator, dtype=torch.float64).to(device) * math.sqrt(unit_var)
    z = z - z.mean()
    X = torch.cat([A, z], dim=1)  # the null unit is column h
    Sxx = X.T @ X / n
    Sxy = X.T @ Y / n
    Syy = Y.T @ Y / n
    Syy = (Syy + Syy.T) / 2
    lam = ridge * unit_var
    y_var = float(torch.trace(Syy)) / d
    floor = noise * y_var if y_var > 0 else 1.0
    N = floor * torch.eye(d, dtype=torch.float64, device=device)
    eye_cache: dict[int, torch.Tensor] = {}

    def solve(active: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """P, the Gram matrix G = B (R + N)⁻¹ Bᵀ of the regression coefficients, and R."""
        m = active.numel()
        if m not in eye_cache:
            eye_cache[m] = torch.eye(m, dtype=torch.float64, device=device)
        P = _inverse_spd(Sxx[active][:, active] + lam * eye_cache[m])
        B = P @ Sxy[active]
        R = Syy - Sxy[active].T @ B
        R = (R + R.T) / 2
        W = torch.linalg.solve_triangular(_cholesky(R + N), B.T, upper=False)  # L⁻¹ Bᵀ, (R + N) = L Lᵀ
        G = W.T @ W
        return P, (G + G.T) / 2, R

    active = torch.arange(h + 1, device=device)  # positions into X; the null unit stays last
    P, G, R = solve(active)
    information = 0.5 * (_logdet(Syy + N) - _logdet(R + N))
    chunk = max(1, math.ceil(h / max_steps))
    order: list[int] = []
    losses: list[float] = []
    null_losses: list[float] = []
    prunable: list[int] = []
    stopped = False
    step = 0

    while active.numel() > 1:
        if step and step % REFRESH_STEPS == 0:
            P, G, _ = solve(active)  # a full re-solve stops the rounding drift of the downdates
        # loss_j = ½ log(1 + b_jᵀ (R + N)⁻¹ b_j / P_jj) = ½ log(1 + G_jj / P_jj): every unit at once.
        q = torch.diagonal(G) / torch.diagonal(P)
        real = 0.5 * torch.log1p(q[:-1].clamp_min(0.0))
        k = min(chunk, real.numel())
        picked = torch.argsort(real, stable=True)[:k]  # positions in `active`, lowest loss first
        # Eliminate the chunk one unit at a time, in the order of the step's losses, each loss exact
        # given the units already gone (two duplicates in one chunk are not both free). Removing unit
        # t changes B by a combination of its rows and (R + N)⁻¹ by a rank-one update in their span,
        # so the chunk's and the null unit's (k+1)×(k+1) blocks of P and G carry everything needed.
        sub = torch.cat([picked, torch.tensor([active.numel() - 1], device=device)])
        Ps, Gs = P[sub][:, sub].clone(), G[sub][:, sub].clone()
        for t, position in enumerate(picked.tolist()):
            index = int(active[position])
            value = 0.5 * math.log1p(max(0.0, float(Gs[t, t] / Ps[t, t])))
            null_loss = 0.5 * math.log1p(max(0.0, float(Gs[-1, -1] / Ps[-1, -1])))
            order.append(index)
            losses.append(value)
            null_losses.append(null_loss)
            if not stopped and value <= max(null_loss, tolerance):
                prunable.append(index)
            else:
                stopped = True
            if t + 1 < k:
                p_col, p_tt = Ps[:, t].clone(), Ps[t, t].clone()
                g_col = Gs[:, t].clone()
                Gs -= torch.outer(g_col, g_col) / (p_tt + g_col[t])  # (R + N + b bᵀ/p)⁻¹, Sherman-Morrison
                lift = torch.eye(Gs.shape[0], dtype=torch.float64, device=device)
                lift[:, t] -= p_col / p_tt  # B ← B − p_col b_tᵀ / p_tt
                Gs = lift @ Gs @ lift.T
                Ps -= torch.outer(p_col, p_col) / p_tt
        # The whole chunk at once: Woodbury for (R + N + B_kᵀ P_kk⁻¹ B_k)⁻¹, Schur complement for P.
        keep_mask = torch.ones(active.numel(), dtype=torch.bool, device=device)
        keep_mask[picked] = False
        keep = torch.nonzero(keep_mask).flatten()
        P_k = P.index_select(1, picked)
        P_kk, P_rk = P_k.index_select(0, picked), P_k.index_select(0, keep)
        P_kk_inv = _inverse_spd(P_kk)
        coupling = P_rk @ P_kk_inv  # B_new = B[keep] − coupling B_k
        G_all_k = G[:, picked]
        G = G - G_all_k @ torch.linalg.solve(P_kk + G_all_k[picked], G_all_k.T)
        G_k = G.index_select(1, picked)
        G_kk, G_rk = G_k.index_select(0, picked), G_k.index_select(0, keep)
        mixed = coupling @ G_rk.T
        # Symmetric by construction; the re-solve every REFRESH_STEPS steps removes rounding drift.
        G = G.index_select(0, keep).index_select(1, keep) - mixed - mixed.T + coupling @ G_kk @ coupling.T
        P = P.index_select(0, keep).index_select(1, keep) - coupling @ P_rk.T
        active = active[keep]
        step += 1
    return MippResult(
        path=path,
        order=tuple(order),
        losses=tuple(losses),
        null_losses=tuple(null_losses),
        prunable=tuple(sorted(prunable)),
        information_nats=information,
        tokens=n,
        steps=step,
    )


def require_pointwise_consumer(model: nn.Module, spec: MLPSpec) -> None:
    """A UsageError unless the consumer of a conv-map MLP is a linear map per position (1×1,
    stride 1, groups 1, no padding): MIPP regresses its output on its input row by row."""
    if spec.feature_axis == -1:
        return
    name = spec.full(spec.consumer)
    consumer = get_module(model, name)
    if not isinstance(consumer, nn.modules.conv._ConvNd) or consumer.transposed:
        raise UsageError(f"mipp: {name} ({type(consumer).__name__}) reads conv channels but is not a convolution")
    padding = consumer.padding
    padded = any(int(v) != 0 for v in padding) if not isinstance(padding, str) else False  # 'same' adds none at 1×1
    static = getattr(consumer, "static_padding", None)  # efficientnet-pytorch's Conv2dStaticSamePadding
    padded = padded or any(int(v) != 0 for v in getattr(static, "padding", ()) or ())
    pointwise = all(k == 1 for k in consumer.kernel_size) and all(int(v) == 1 for v in consumer.stride)
    if not pointwise or consumer.groups != 1 or padded:
        raise UsageError(
            f"mipp: {name} is a convolution with kernel {tuple(consumer.kernel_size)}, stride "
            f"{tuple(consumer.stride)}, groups {consumer.groups}{' and padding' if padded else ''}: MIPP reconstructs "
            "the consumer's output from its input position by position, which is exact only for a 1×1 convolution "
            "with stride 1, groups 1 and no padding (a linear map per position); score these neurons with another "
            "criterion (magnitude, thermodynamic, nepenthe)")


def collect_mlp_io(
    model: nn.Module,
    calibration: Calibration,
    specs: Sequence[MLPSpec],
    *,
    max_tokens: int = 2048,
    max_batches: int | None = None,
    seed: int = 0,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{mlp_path: (A, Y)}: the consumer's input (hidden activations) and output on a uniform sample
    of at most `max_tokens` calibration rows per MLP (tokens, padding excluded; positions of a conv
    map), the same rows for MLPs that see equally many. float32, on the device the activations
    are on."""
    for spec in specs:
        require_pointwise_consumer(model, spec)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    keys: dict[str, torch.Tensor] = {}  # per MLP, the sort keys of its kept rows
    kept: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    current: dict[str, dict[str, torch.Tensor]] = {}  # this batch's {"A": rows, "Y": rows} per MLP
    mask_holder: list[torch.Tensor | None] = [None]
    handles = []

    def pre_hook(spec: MLPSpec):  # noqa: ANN202
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            if not args or not isinstance(args[0], torch.Tensor):
                raise UsageError(f"mipp: {spec.full(spec.consumer)} was called without a tensor input")
            current.setdefault(spec.path, {})["A"] = valid_rows(args[0], mask_holder[0], spec.feature_axis).float()
        return hook

    def post_hook(spec: MLPSpec):  # noqa: ANN202
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if not isinstance(output, torch.Tensor):
                raise UsageError(f"mipp: {spec.full(spec.consumer)} returned {type(output).__name__}, not a tensor")
            current.setdefault(spec.path, {})["Y"] = valid_rows(output, mask_holder[0], spec.feature_axis).float()
        return hook

    device = model_device(model)
    try:
        for spec in specs:
            consumer = get_module(model, spec.full(spec.consumer))
            handles.append(consumer.register_forward_pre_hook(pre_hook(spec)))
            handles.append(consumer.register_forward_hook(post_hook(spec)))
        with observing(model):
            for batch in batches_of(calibration, max_batches, "mipp"):
                batch = to_device(batch, device)
                mask_holder[0] = attention_mask_of(batch)
                current.clear()
                call_model(model, batch)
                missing = [s.path or "the model" for s in specs if len(current.get(s.path, {})) != 2]
                if missing:
                    raise UsageError(f"mipp: the MLP(s) {', '.join(missing)} did not run on a calibration batch")
                # One draw of keys per row count: MLPs with equally many rows (all of a transformer's)
                # share their keys, hence their sample; a CNN's blocks at another resolution get their own.
                draws: dict[int, torch.Tensor] = {}
                for spec in specs:
                    a_new, y_new = current[spec.path]["A"], current[spec.path]["Y"]
                    n_new = a_new.shape[0]
                    if y_new.shape[0] != n_new:
                        raise UsageError(
                            f"mipp: {spec.full(spec.consumer)} turned {n_new} input rows into {y_new.shape[0]} output "
                            "rows: its output is not a function of its input row by row")
                    if n_new not in draws:
                        draws[n_new] = torch.rand(n_new, generator=generator, dtype=torch.float64)
                    all_keys = draws[n_new] if spec.path not in keys else torch.cat([keys[spec.path], draws[n_new]])
                    if all_keys.numel() > max_tokens:
                        chosen = torch.topk(all_keys, max_tokens, largest=False).indices
                        chosen, _ = torch.sort(chosen)
                    else:
                        chosen = torch.arange(all_keys.numel())
                    if spec.path in kept:
                        a_new = torch.cat([kept[spec.path][0], a_new])
                        y_new = torch.cat([kept[spec.path][1], y_new])
                    index = chosen.to(a_new.device)
                    kept[spec.path] = (a_new.index_select(0, index), y_new.index_select(0, index))
                    keys[spec.path] = all_keys[chosen]
    finally:
        mask_holder[0] = None
        current.clear()
        for handle in handles:
            handle.remove()
    return {path: (a.clone(), y.clone()) for path, (a, y) in kept.items()}  # normal tensors, outside inference mode


#: Tokens sampled per unit of the widest MLP by default: enough that the regression does not overfit.
TOKENS_PER_UNIT = 4
#: ...and never fewer than this: conv positions and neighbouring tokens are correlated, so a narrow
#: MLP still needs a sample well above its width.
MIN_TOKENS = 2048


def tokens_for_width(width: int) -> int:
    return max(MIN_TOKENS, TOKENS_PER_UNIT * (width + 1))


class MippCriterion:
    """MIPP's information-preserving elimination of MLP neurons (see the module note); for conv
    blocks the consumer must be a 1×1 convolution (a UsageError otherwise).

    unit_kind: "neuron" (the only kind).
    max_tokens: tokens sampled for the estimator (default None: max(2048, 4 (h + 1)) for the widest MLP).
    ridge: regularisation of Σ_SS, relative to the mean unit variance (default 1e-8).
    noise: output noise floor, relative to the mean output variance (default 1e-3).
    tolerance: a loss up to this many nats counts as none (default 1e-4).
    max_steps: elimination steps at most (default 32); wider MLPs eliminate ⌈h / max_steps⌉ units per step.
    max_width: MLPs wider than this are refused (default 4096).
    max_batches, seed: calibration batches used; seeds the token sample and the null unit.
    """

    name = "mipp"

    def __init__(
        self,
        unit_kind: str = "neuron",
        *,
        max_tokens: int | None = None,
        ridge: float = 1e-8,
        noise: float = 1e-3,
        tolerance: float = 1e-4,
        max_steps: int = 32,
        max_width: int = 4096,
        max_batches: int | None = None,
        seed: int = 0,
    ) -> None:
        if unit_kind != "neuron":
            raise UsageError(f"{self.name}: unit_kind must be one of neuron, got {unit_kind!r}")
        self.unit_kind = unit_kind
        self.max_tokens = None if max_tokens is None else _positive_int(max_tokens, "max_tokens", self.name, minimum=2)
        self.ridge = _positive(ridge, "ridge", self.name)
        self.noise = _positive(noise, "noise", self.name)
        self.tolerance = _positive(tolerance, "tolerance", self.name, allow_zero=True)
        self.max_steps = _positive_int(max_steps, "max_steps", self.name)
        self.max_width = _positive_int(max_width, "max_width", self.name)
        self.max_batches = check_max_batches(max_batches, self.name)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise UsageError(f"{self.name}: seed must be an integer, got {seed!r}")
        self.seed = seed
        self.last_results: dict[str, MippResult] = {}
        self.last_prunable: dict[str, list[int]] = {}

    def __repr__(self) -> str:
        return f"MippCriterion(max_tokens={self.max_tokens}, noise={self.noise}, max_steps={self.max_steps})"

    def calibration_tokens(self, model: nn.Module) -> int:
        """Calibration tokens this criterion wants for `model`: `max_tokens`, or max(2048, 4 (h + 1))
        for its widest MLP (the CLI sizes its calibration data by this)."""
        if self.max_tokens is not None:
            return self.max_tokens
        specs = mlp_specs(model)
        return tokens_for_width(max((s.hidden_size for s in specs), default=1))

    def score(self, model: nn.Module, units: Sequence[Unit], calibration: Calibration) -> dict[Unit, float]:
        units = check_units(units, self.unit_kind, self.name)
        if not units:
            return {}
        specs = specs_of_units(model, units, self.name)
        wide = [f"{p or 'the model'} ({s.hidden_size})" for p, s in specs.items() if s.hidden_size > self.max_width]
        if wide:
            raise UsageError(
                f"{self.name}: MLP(s) wider than max_width={self.max_width}: {', '.join(wide)}; raise max_width "
                "(the elimination costs O(h^2) memory and O(max_steps * h * d^2) time per MLP)")
        max_tokens = self.max_tokens or tokens_for_width(max(s.hidden_size for s in specs.values()))
        data = collect_mlp_io(model, calibration, list(specs.values()), max_tokens=max_tokens,
                              max_batches=self.max_batches, seed=self.seed)
        results: dict[str, MippResult] = {}
        for number, (path, spec) in enumerate(specs.items()):
            A, Y = data.pop(path)
            if A.shape[0] < 2 * (spec.hidden_size + 1):
                logger.warning(
                    "%s: %d tokens for %d units of %s: the regression overfits and losses shrink toward the "
                    "null unit's; raise max_tokens or give more calibration data",
                    self.name, A.shape[0], spec.hidden_size, path or "the model")
            results[path] = eliminate(A, Y, ridge=self.ridge, noise=self.noise, tolerance=self.tolerance,
                                      max_steps=self.max_steps, seed=self.seed + number, path=path)
            del A, Y
        self.last_results = results
        self.last_prunable = {path: list(result.prunable) for path, result in results.items()}
        per_path = {path: result.scores() for path, result in results.items()}
        return {unit: per_path[unit.path][unit.index] for unit in units}
