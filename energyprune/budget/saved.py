"""A pruned model on disk, as `energyprune prune --out DIR` writes it, and loading it back.

DIR holds `pruned.json` (the original model's spec, the PruneRecord, the dtype and the name of
the weights file) and the pruned weights (`pruned.safetensors`, or `state_dict.pt` where
safetensors is not installed). `energyprune.models.load_model(DIR)` rebuilds the model as

    original = load_model(spec); model = apply_record(original, record); model.load_state_dict(weights)

which works for every architecture the surgery handles, including those a Hugging Face config
cannot describe (attention removed from some blocks, MLPs of different widths). For a Hugging Face
model whose config does describe the pruned shapes, DIR is also a plain Hugging Face folder
(`save_pretrained`, plus the original's tokenizer files), so `from_pretrained(DIR)` works without
energyprune - at the price of the weights stored twice. When the original has moved away, such a
DIR still loads from its own Hugging Face copy.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import shutil
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from energyprune.errors import EnergyPruneError, ModelLoadError
from energyprune.models import LoadedModel
from energyprune.pruning.record import PruneRecord, apply_record
from energyprune.report import to_json, write_atomic

logger = logging.getLogger(__name__)

FORMAT = "energyprune.pruned-model/1"
PRUNED_FILE = "pruned.json"
SAFETENSORS_FILE = "pruned.safetensors"
TORCH_FILE = "state_dict.pt"
#: Files of a Hugging Face tokenizer, copied beside a save_pretrained copy.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "vocab.txt", "merges.txt", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model", "chat_template.jinja", "chat_template.json")


def is_pruned_dir(path: str | os.PathLike[str]) -> bool:
    return (Path(path) / PRUNED_FILE).is_file()


def source_of(loaded: LoadedModel) -> dict[str, Any]:
    """How to load the original again from another working directory."""
    spec = loaded.spec
    if loaded.kind == "huggingface" or is_pruned_dir(spec):
        spec = str(Path(spec).resolve())
    elif loaded.kind == "factory":
        module, _, attr = spec.rpartition(":")
        if module.endswith(".py"):
            spec = f"{Path(module).resolve()}:{attr}"
    return {"spec": spec, "kind": loaded.kind, "description": loaded.description, "cwd": os.getcwd()}


def _dtype_of(model: nn.Module) -> str | None:
    for parameter in model.parameters():
        if parameter.is_floating_point():
            return str(parameter.dtype).removeprefix("torch.")
    return None


def _config_describes(model: nn.Module) -> bool:
    """Whether `type(model)(model.config)` builds the pruned shapes (so save_pretrained reloads as
    this model): built on the meta device, so it costs no memory."""
    config = getattr(model, "config", None)
    if config is None or not callable(getattr(model, "save_pretrained", None)):
        return False
    try:
        with torch.device("meta"):
            fresh = type(model)(copy.deepcopy(config))
    except Exception as error:  # any failure means "cannot tell": keep the energyprune format only
        logger.info("not saving a Hugging Face copy: %s cannot be rebuilt from its config (%s)",
                    type(model).__name__, error)
        return False
    mine = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in fresh.state_dict().items()}
    return mine == theirs


def save_pruned(directory: str | os.PathLike[str], model: nn.Module, record: PruneRecord,
                source: Mapping[str, Any], *, huggingface: bool = True) -> list[Path]:
    """Write the pruned model into `directory` (created when missing); returns the files written.
    Files are replaced one by one atomically; the caller decides whether replacing is allowed."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    weights_name = SAFETENSORS_FILE
    try:
        from safetensors.torch import save_model
    except ImportError:
        weights_name = TORCH_FILE
    target = directory / weights_name
    tmp = directory / f".{weights_name}.tmp"
    try:
        if weights_name == SAFETENSORS_FILE:
            save_model(model, str(tmp))  # de-duplicates tied weights, which save_file refuses
        else:
            torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # the mode an ordinary write gives, not the writer's private 0600
        tmp.replace(target)
    finally:
        if tmp.exists():
            tmp.unlink()
    written.append(target)
    hf_copy = huggingface and _config_describes(model)
    if hf_copy:
        model.save_pretrained(directory)  # type: ignore[operator]
        written.append(directory / "config.json")
    original = Path(str(source.get("spec", "")))
    if source.get("kind") == "huggingface" and original.is_dir():
        # The tokenizer travels with the model: calibration text and users need it beside the weights.
        for name in TOKENIZER_FILES:
            if (original / name).is_file() and original.resolve() != directory.resolve():
                shutil.copy2(original / name, directory / name)
                written.append(directory / name)
    meta = {
        "format": FORMAT,
        "original": dict(source),
        "model_class": type(model).__name__,
        "n_params": sum(p.numel() for p in model.parameters()),
        "dtype": _dtype_of(model),
        "weights": weights_name,
        "huggingface_copy": hf_copy,
        "record": record.to_dict(),
    }
    write_atomic(directory / PRUNED_FILE, to_json(meta))
    written.append(directory / PRUNED_FILE)
    return written


@contextlib.contextmanager
def _on_path(directory: str | None) -> Iterator[None]:
    """A `module:factory` spec was importable from the directory `prune` ran in."""
    added = bool(directory) and directory not in sys.path
    if added:
        sys.path.insert(0, str(directory))
    try:
        yield
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(str(directory))


def read_meta(directory: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(directory) / PRUNED_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelLoadError(f"{path} cannot be read ({type(error).__name__}: {error})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ModelLoadError(f"{path} is not a pruned-model description (format {found!r}, expected {FORMAT!r})")
    for key in ("original", "record", "weights"):
        if key not in meta:
            raise ModelLoadError(f"{path} lacks {key!r}: it is damaged")
    return meta


def load_pruned(directory: str | os.PathLike[str]) -> LoadedModel:
    """The pruned model in `directory`: original + record + the pruned weights."""
    from energyprune.models import _load_huggingface, load_model

    directory = Path(directory)
    meta = read_meta(directory)
    source = meta["original"]
    weights = directory / str(meta["weights"])
    if not weights.is_file():
        raise ModelLoadError(f"{directory} lacks its weights file {meta['weights']}: it is incomplete")
    try:
        record = PruneRecord.from_dict(meta["record"])
    except EnergyPruneError as error:
        raise ModelLoadError(f"{directory / PRUNED_FILE}: {error}") from None
    try:
        with _on_path(source.get("cwd")):
            original = load_model(str(source["spec"]))
    except ModelLoadError as error:
        if meta.get("huggingface_copy") and (directory / "config.json").is_file():
            logger.warning("the original %s cannot be loaded (%s): loading the Hugging Face copy in %s",
                           source.get("spec"), error, directory)
            loaded = _load_huggingface(directory)
            return LoadedModel(loaded.module, str(directory), "huggingface",
                               f"pruned {loaded.description}")
        raise ModelLoadError(f"{directory} was pruned from {source.get('spec')!r}, which cannot be loaded any more "
                             f"({error}): put the original back where it was") from None
    try:
        model = apply_record(original.module, record, inplace=True)
    except EnergyPruneError as error:
        raise ModelLoadError(f"the record in {directory / PRUNED_FILE} does not fit {source.get('spec')}: "
                             f"{error}") from None
    dtype = meta.get("dtype")
    if dtype and hasattr(torch, dtype):
        model = model.to(getattr(torch, dtype))
    try:
        if weights.suffix == ".safetensors":
            from safetensors.torch import load_model as load_safetensors

            load_safetensors(model, str(weights), strict=True)
        else:
            model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
    except ImportError as error:
        raise ModelLoadError(f"{weights.name} needs safetensors: pip install safetensors") from error
    except Exception as error:  # shape or key mismatch, damaged file: all mean "cannot load"
        raise ModelLoadError(f"the weights in {weights} do not fit the rebuilt model: "
                             f"{str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__}"
                             ) from None
    model.eval()
    n_params = sum(p.numel() for p in model.parameters())
    description = (f"{type(model).__name__} pruned from {source.get('spec')} ({len(record)} operation(s), "
                   f"{n_params / 1e6:.2f} M params)")
    return LoadedModel(model, str(directory), str(original.kind), description, original.factory_inputs)
