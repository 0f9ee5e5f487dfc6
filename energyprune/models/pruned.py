"""A pruned model on disk, as `energyprune prune --out DIR` writes it, and loading it back.

DIR holds `pruned.json` and the pruned weights, `pruned.safetensors` (never a pickle). `pruned.json`
says how to rebuild the architecture **without running any code from DIR or from a path it
names**: its `base` is either

* `{"kind": "huggingface", "model_class": ..., "config": {...}}`: the original Hugging Face config,
  stored in the file; the model class must be one transformers itself defines (no remote code);
* `{"kind": "demo"}`: the built-in demo, which this package builds;
* `{"kind": "factory", "spec": "pkg.module:build"}`: a model built by user code. Loading it runs
  that code, so it is refused unless the caller passes `trust_code=True` (`--trust-code`): a
  folder someone shared must not run code just by being opened. The factory is imported the way a
  spec typed by the user would be; neither DIR nor any directory named in it is put on sys.path.

and `record` is every pruning operation from that base to these weights (pruning a pruned model
extends the record). `load_pruned(DIR)` builds the base, replays the record (`apply_record`) and
loads the weights, strictly. For a Hugging Face model whose config describes the pruned shapes,
DIR is also a plain Hugging Face folder (`save_pretrained`, plus the original's tokenizer files), so
`from_pretrained(DIR)` works without energyprune.

Folders written before the base was stored (format 1) name the original by path; they still
load where the original is a Hugging Face folder or the demo (data, read with
`trust_remote_code=False`), and a factory only with `trust_code=True`.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from energyprune.errors import EnergyPruneError, ModelLoadError
from energyprune.models.loaded import LoadedModel
from energyprune.pruning.surgery.record import PruneRecord
from energyprune.pruning.surgery.replay import apply_record
from energyprune.files import to_json, write_atomic

logger = logging.getLogger(__name__)

FORMAT = "energyprune.pruned-model/2"
FORMAT_1 = "energyprune.pruned-model/1"
PRUNED_FILE = "pruned.json"
SAFETENSORS_FILE = "pruned.safetensors"
#: Files of a Hugging Face tokenizer, copied beside a save_pretrained copy.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "vocab.txt", "merges.txt", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model", "chat_template.jinja", "chat_template.json")


def is_pruned_dir(path: str | os.PathLike[str]) -> bool:
    return (Path(path) / PRUNED_FILE).is_file()


def source_of(loaded: LoadedModel) -> dict[str, Any]:
    """What a report says about the original (informational: loading never uses it)."""
    return {"spec": loaded.spec, "kind": loaded.kind, "description": loaded.description}


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
                loaded: LoadedModel, *, huggingface: bool = True, levers: Sequence[str] = ()) -> list[Path]:
    """Write the pruned model into `directory` (created when missing); returns the files written.
    `loaded` is the model the run started from (its base and any earlier record are kept).
    `levers` are the names of the levers the model is to run with (`energyprune.levers`): a
    compiled model cannot be saved, so its recipe is, and the loader's caller re-applies it.
    Files are replaced one by one atomically; the caller decides whether replacing is allowed."""
    from safetensors.torch import save_model

    if loaded.base is None:
        raise ModelLoadError(f"{loaded.spec} has no description from which it can be rebuilt: it cannot be saved "
                             "as a pruned folder")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    target = directory / SAFETENSORS_FILE
    tmp = directory / f".{SAFETENSORS_FILE}.tmp"
    try:
        save_model(model, str(tmp))  # de-duplicates tied weights, which save_file refuses
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
        model.save_pretrained(directory, safe_serialization=True)  # type: ignore[operator]
        written.append(directory / "config.json")
    original = Path(loaded.spec)
    if loaded.kind == "huggingface" and original.is_dir():
        # The tokenizer travels with the model: calibration text and users need it beside the weights.
        for name in TOKENIZER_FILES:
            if (original / name).is_file() and original.resolve() != directory.resolve():
                shutil.copy2(original / name, directory / name)
                written.append(directory / name)
    full_record = (loaded.record + record) if loaded.record is not None else record
    meta = {
        "format": FORMAT,
        "base": dict(loaded.base),
        "original": source_of(loaded),
        "model_class": type(model).__name__,
        "n_params": sum(p.numel() for p in model.parameters()),
        "dtype": _dtype_of(model),
        "weights": SAFETENSORS_FILE,
        "huggingface_copy": hf_copy,
        "record": full_record.to_dict(),
        "levers": [str(name) for name in levers],
    }
    write_atomic(directory / PRUNED_FILE, to_json(meta))
    written.append(directory / PRUNED_FILE)
    return written


def read_meta(directory: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(directory) / PRUNED_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelLoadError(f"{path} cannot be read ({type(error).__name__}: {error})") from None
    if not isinstance(meta, dict) or meta.get("format") not in (FORMAT, FORMAT_1):
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ModelLoadError(f"{path} is not a pruned-model description (format {found!r}, expected {FORMAT!r})")
    for key in ("base" if meta["format"] == FORMAT else "original", "record", "weights"):
        if key not in meta:
            raise ModelLoadError(f"{path} lacks {key!r}: it is damaged")
    return meta


def _build_huggingface(base: Mapping[str, Any], where: Path) -> nn.Module:
    """The original architecture from a stored config, with transformers' own classes only."""
    try:
        import transformers
    except ImportError as error:
        raise ModelLoadError(f"{where} holds a Hugging Face model: pip install 'energyprune[hf]'") from error
    config_dict = dict(base.get("config") or {})
    model_type = config_dict.get("model_type")
    class_name = str(base.get("model_class", ""))
    model_class = getattr(transformers, class_name, None)
    if not (isinstance(model_class, type) and issubclass(model_class, transformers.PreTrainedModel)):
        raise ModelLoadError(f"{where}: {class_name!r} is not a model class of transformers "
                             f"{transformers.__version__}; energyprune never runs remote code")
    try:
        config_class = transformers.CONFIG_MAPPING[model_type]
    except KeyError:
        raise ModelLoadError(f"{where}: model type {model_type!r} is unknown to transformers "
                             f"{transformers.__version__}; energyprune never runs remote code") from None
    config_dict.pop("auto_map", None)  # remote code: never used
    try:
        config = config_class.from_dict(config_dict)
        with torch.no_grad():
            return model_class(config).eval()
    except Exception as error:  # transformers raises many types; all mean "cannot rebuild"
        raise ModelLoadError(f"{where}: the stored {class_name} config does not build with transformers "
                             f"{transformers.__version__}: {_first_line(error)}") from None


def _load_original(spec: str) -> LoadedModel:
    """The original of a format-1 folder, named by path: a Hugging Face folder (data, read with
    trust_remote_code=False), the demo, or a factory (the caller checked trust_code)."""
    from energyprune.models.demo import build_demo_model
    from energyprune.models.factory import load_factory
    from energyprune.models.huggingface import load_huggingface

    if spec in ("", "demo"):
        return LoadedModel(build_demo_model(), "demo", "demo", "built-in demo transformer", base={"kind": "demo"})
    if Path(spec).is_dir():
        return load_huggingface(Path(spec))
    if ":" in spec:
        return load_factory(spec)
    raise ModelLoadError(f"no model at {spec!r}")


def _build_base(meta: Mapping[str, Any], directory: Path, trust_code: bool) -> tuple[nn.Module, LoadedModel | None]:
    """(the unpruned architecture, the LoadedModel it came from where it was loaded by spec)."""
    from energyprune.models.factory import load_factory

    if meta["format"] == FORMAT_1:  # the original named by path (see the module docstring)
        source = meta["original"]
        kind = str(source.get("kind"))
        if kind == "factory" and not trust_code:
            raise ModelLoadError(_refuse_factory(directory, source.get("spec")))
        if is_pruned_dir(str(source.get("spec"))):
            raise ModelLoadError(f"{directory} (an older format) names another pruned folder; prune again from "
                                 "the original to get a self-contained folder")
        try:
            original = _load_original(str(source["spec"]))
        except ModelLoadError as error:
            raise ModelLoadError(f"{directory} was pruned from {source.get('spec')!r}, which cannot be loaded "
                                 f"any more ({error}): put the original back where it was") from None
        return original.module, original
    base = meta["base"]
    kind = base.get("kind") if isinstance(base, Mapping) else None
    if kind == "huggingface":
        return _build_huggingface(base, directory), None
    if kind == "demo":
        from energyprune.models.demo import build_demo_model

        return build_demo_model(), None
    if kind == "factory":
        if not trust_code:
            raise ModelLoadError(_refuse_factory(directory, base.get("spec")))
        original = load_factory(str(base.get("spec")))
        return original.module, original
    raise ModelLoadError(f"{directory / PRUNED_FILE}: unknown base {kind!r}; it is damaged")


def _refuse_factory(directory: Path, spec: Any) -> str:
    return (f"{directory} was pruned from a model built by code ({spec}): loading it runs that code, so it is "
            "refused unless you trust it: pass --trust-code (trust_code=True in Python)")


def load_pruned(directory: str | os.PathLike[str], *, trust_code: bool = False) -> LoadedModel:
    """The pruned model in `directory`: its base architecture + the record + the pruned weights.
    Nothing from `directory` is imported or executed; a factory base runs only with `trust_code`."""
    directory = Path(directory)
    meta = read_meta(directory)
    weights = directory / str(meta["weights"])
    if Path(str(meta["weights"])).name != str(meta["weights"]) or weights.suffix != ".safetensors":
        raise ModelLoadError(f"{directory / PRUNED_FILE} names weights {meta['weights']!r}: only a .safetensors "
                             "file inside the folder is loaded (a pickle could run code)")
    if not weights.is_file():
        raise ModelLoadError(f"{directory} lacks its weights file {meta['weights']}: it is incomplete")
    try:
        record = PruneRecord.from_dict(meta["record"])
    except EnergyPruneError as error:
        raise ModelLoadError(f"{directory / PRUNED_FILE}: {error}") from None
    model, original = _build_base(meta, directory, trust_code)
    try:
        model = apply_record(model, record, inplace=True)
    except EnergyPruneError as error:
        raise ModelLoadError(f"the record in {directory / PRUNED_FILE} does not fit its base model: {error}") from None
    dtype = meta.get("dtype")
    if dtype and isinstance(getattr(torch, str(dtype), None), torch.dtype):
        model = model.to(getattr(torch, str(dtype)))
    try:
        from safetensors.torch import load_model as load_safetensors

        load_safetensors(model, str(weights), strict=True)
    except Exception as error:  # shape or key mismatch, damaged file: all mean "cannot load"
        raise ModelLoadError(f"the weights in {weights} do not fit the rebuilt model: {_first_line(error)}") from None
    model.eval()
    n_params = sum(p.numel() for p in model.parameters())
    source = meta.get("original") or {}
    description = (f"{type(model).__name__} pruned from {source.get('spec')} ({len(record)} operation(s), "
                   f"{n_params / 1e6:.2f} M params)")
    if meta["format"] == FORMAT:
        base = meta["base"]
    else:
        base = original.base if original is not None else None
    levers = meta.get("levers") or []
    if not isinstance(levers, list) or not all(isinstance(n, str) for n in levers):
        raise ModelLoadError(f"{directory / PRUNED_FILE}: 'levers' must be a list of lever names")
    if levers:
        description += f", to run with levers {', '.join(levers)}"
    return LoadedModel(model, str(directory), "pruned", description,
                       original.factory_inputs if original is not None else None, base=base, record=record,
                       levers=tuple(levers))


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
