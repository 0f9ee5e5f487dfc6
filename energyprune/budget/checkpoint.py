"""Checkpoints of the energy-budgeted loop, so that an interrupted run resumes where it stopped.

A checkpoint is one JSON file, `checkpoint.json`, written atomically after the original is
measured and after every step. It holds the trajectory (the steps, the PruneRecord, the running
ratios) but no model: the current model is rebuilt on resume as `apply_record(original, record)`,
so a checkpoint of a 7 B-parameter run is a few kilobytes. Only when a `recovery` hook changed
weights (fine-tuning) are the current weights saved beside it (`checkpoint-weights.safetensors`), since the
record alone cannot reproduce them. It is a safetensors file, like every weight file energyprune
writes: loading a checkpoint never unpickles anything.

The original model is identified by a fingerprint (class, parameter names and shapes, and a hash
of the first values of every tensor) so that resuming with another model - another checkpoint,
another dtype - is refused with a clear line instead of replaying a record on the wrong weights.
A checkpoint that cannot be read is never deleted: the error says where it is.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from energyprune.errors import UsageError
from energyprune.files import to_json, write_atomic

logger = logging.getLogger(__name__)

FORMAT = "energyprune.prune-checkpoint/1"
CHECKPOINT_FILE = "checkpoint.json"
WEIGHTS_FILE = "checkpoint-weights.safetensors"
#: Values hashed per tensor for the fingerprint: enough to tell two checkpoints of one
#: architecture apart, cheap enough for a model of billions of parameters.
_HASHED_VALUES = 4096


def fingerprint(model: nn.Module) -> dict[str, Any]:
    """What identifies the original model across processes."""
    shapes = hashlib.sha256()
    values = hashlib.sha256()
    n_params = 0
    for name, tensor in model.state_dict().items():
        shapes.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        flat = tensor.detach().reshape(-1)[:_HASHED_VALUES]
        if flat.is_floating_point():
            flat = flat.float()
        values.update(flat.cpu().contiguous().numpy().tobytes())
    for parameter in model.parameters():
        n_params += parameter.numel()
    return {"model_class": type(model).__name__, "n_params": n_params,
            "shapes_sha256": shapes.hexdigest(), "values_sha256": values.hexdigest()}


@dataclass(frozen=True)
class Checkpoint:
    """The saved state of a run. `state` is the loop's own JSON (see `loop._State`)."""

    fingerprint: Mapping[str, Any]
    target: Mapping[str, Any]
    criterion: str
    unit_kind: str
    status: str  # "running", "interrupted" or "done"
    state: Mapping[str, Any]
    result: Mapping[str, Any] | None = None  # the PruneResult dict, once the run has stopped
    has_weights: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "fingerprint": dict(self.fingerprint), "target": dict(self.target),
                "criterion": self.criterion, "unit_kind": self.unit_kind, "status": self.status,
                "has_weights": self.has_weights, "state": dict(self.state),
                "result": dict(self.result) if self.result is not None else None, "extra": dict(self.extra)}

    @classmethod
    def from_dict(cls, d: Any, where: str) -> Checkpoint:
        if not isinstance(d, Mapping):
            raise UsageError(f"{where} is not a checkpoint (it holds {type(d).__name__}, not an object)")
        if d.get("format") != FORMAT:
            raise UsageError(f"{where} is not a checkpoint of this version (format {d.get('format')!r}, "
                             f"expected {FORMAT!r})")
        try:
            status = str(d["status"])
            if status not in ("running", "interrupted", "done"):
                raise ValueError(f"status {status!r}")
            state = d["state"]
            if not isinstance(state, Mapping):
                raise TypeError("state is not an object")
            return cls(dict(d["fingerprint"]), dict(d["target"]), str(d["criterion"]), str(d["unit_kind"]),
                       status, dict(state), dict(d["result"]) if d.get("result") else None,
                       bool(d.get("has_weights", False)), dict(d.get("extra") or {}))
        except (KeyError, TypeError, ValueError) as error:
            raise UsageError(f"{where} is damaged ({type(error).__name__}: {error}): fix it, or start afresh "
                             "in another directory (nothing was deleted)") from None

    def check_matches(self, model_fingerprint: Mapping[str, Any], target: Mapping[str, Any], criterion: str,
                      unit_kind: str, where: str) -> None:
        """Refuse to resume with another model, target or criterion than the run was started with."""
        if dict(self.fingerprint) != dict(model_fingerprint):
            was, now = self.fingerprint, model_fingerprint
            why = ("another model class" if was.get("model_class") != now.get("model_class") else
                   "another architecture or dtype" if was.get("shapes_sha256") != now.get("shapes_sha256") else
                   "other weights")
            raise UsageError(
                f"{where} was made on {was.get('model_class')} ({was.get('n_params')} parameters); this model "
                f"({now.get('model_class')}, {now.get('n_params')} parameters) has {why}: resume with the same "
                "model, device dtype and options, or start afresh in another directory")
        if target.get("kind") != self.target.get("kind") or float(target.get("value", 0)) != float(
                self.target.get("value", -1)):
            raise UsageError(f"{where} was made for the target {self.target.get('text')!r}, not "
                             f"{target.get('text')!r}: resume with the same target, or start afresh elsewhere")
        if (criterion, unit_kind) != (self.criterion, self.unit_kind):
            raise UsageError(f"{where} was made with criterion {self.criterion} on {self.unit_kind} units, not "
                             f"{criterion} on {unit_kind}: resume with the same, or start afresh elsewhere")


class Checkpointer:
    """Reads and writes the checkpoint of one run in `directory` (created when missing)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        if self.directory.exists() and not self.directory.is_dir():
            raise UsageError(f"checkpoint directory {self.directory} is a file")

    @property
    def path(self) -> Path:
        return self.directory / CHECKPOINT_FILE

    @property
    def weights_path(self) -> Path:
        return self.directory / WEIGHTS_FILE

    def exists(self) -> bool:
        return self.path.exists()

    def save(self, checkpoint: Checkpoint, weights: Mapping[str, torch.Tensor] | None = None) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if weights is not None:
            # Weights first: a checkpoint that says has_weights never points at a missing file.
            from safetensors.torch import save_file

            tmp = self.weights_path.with_suffix(".safetensors.tmp")
            # Cloned: tied weights share memory, which save_file refuses; each is stored on its own.
            save_file({k: v.detach().cpu().clone().contiguous() for k, v in weights.items()}, str(tmp))
            tmp.replace(self.weights_path)
        write_atomic(self.path, to_json(checkpoint.to_dict()))

    def load(self) -> Checkpoint:
        if not self.path.exists():
            raise UsageError(f"there is no checkpoint to resume in {self.directory} (no {CHECKPOINT_FILE}): "
                             "start without resume")
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise UsageError(f"the checkpoint {self.path} cannot be read ({type(error).__name__}: {error}): fix it, "
                             "or start afresh in another directory (nothing was deleted)") from None
        checkpoint = Checkpoint.from_dict(data, str(self.path))
        if checkpoint.has_weights and not self.weights_path.exists():
            raise UsageError(f"the checkpoint {self.path} needs {WEIGHTS_FILE} beside it, which is missing: "
                             "start afresh in another directory (nothing was deleted)")
        return checkpoint

    def load_weights(self) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        try:
            return load_file(str(self.weights_path), device="cpu")
        except Exception as error:  # safetensors raises several types for a damaged file
            raise UsageError(f"the checkpoint weights {self.weights_path} cannot be read ({error}): start afresh "
                             "in another directory (nothing was deleted)") from None
