"""Loading a model from a spec, and building inputs that fit it.

A spec is one of: nothing (the built-in demo), a local Hugging Face directory (config.json beside
the weights; never a hub download), or `module:factory` / `path/to/file.py:factory`, a callable
returning an `nn.Module` (or a `(module, example_inputs)` pair).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from energyprune.errors import InputShapeError, ModelLoadError, UsageError

logger = logging.getLogger(__name__)

Inputs = torch.Tensor | tuple[Any, ...] | Mapping[str, Any]

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
          "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class LoadedModel:
    module: nn.Module
    spec: str  # what the user gave ("demo" for none)
    kind: str  # "demo", "factory", "huggingface" or "pruned"
    description: str
    factory_inputs: Inputs | None = None  # inputs a factory returned with its model
    #: How to rebuild the unpruned architecture without running code from a file we load (see
    #: `budget.saved`): {"kind": "huggingface", "model_class", "config"}, {"kind": "demo"} or
    #: {"kind": "factory", "spec"}.
    base: Mapping[str, Any] | None = None
    #: For a pruned folder: the pruning applied to `base` to get `module`.
    record: Any = None


def load_model(spec: str | None, *, trust_code: bool = False) -> LoadedModel:
    """The model a spec names. A `module:factory` spec runs that factory (the user asked for it by
    name); a pruned folder whose base is a factory runs it only with `trust_code` (`--trust-code`),
    since opening a folder must never run code. Hugging Face folders load with
    `trust_remote_code=False` and never download."""
    if spec is None or spec in ("", "demo"):
        from energyprune.demo import build_demo_model

        model = build_demo_model()
        n_params = sum(p.numel() for p in model.parameters())
        return LoadedModel(model, "demo", "demo", f"built-in demo transformer (4 blocks, d=256, {n_params / 1e6:.1f} M params)",
                           base={"kind": "demo"})
    path = Path(spec)
    if path.is_dir() and (path / "pruned.json").is_file():  # written by `energyprune prune --out DIR`
        from energyprune.budget.saved import load_pruned

        return load_pruned(path, trust_code=trust_code)
    if path.is_dir():
        return _load_huggingface(path)
    if ":" in spec and not path.exists():
        return _load_factory(spec)
    if path.exists():
        raise ModelLoadError(
            f"{spec} is a file, not a model directory: give the folder that holds config.json, "
            "or `file.py:factory` for a model built in code"
        )
    raise ModelLoadError(
        f"no model at {spec!r}: give a local Hugging Face folder (with config.json), "
        "`package.module:factory`, or nothing for the built-in demo"
    )


def _load_huggingface(path: Path) -> LoadedModel:
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path} holds no config.json: it is not a saved Hugging Face model")
    try:
        import transformers
    except ImportError as error:
        raise ModelLoadError(
            "loading a Hugging Face model needs transformers: pip install 'energyprune[hf]'"
        ) from error
    from energyprune.compat import check_transformers

    check_transformers()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder must never trigger a download
    try:
        # trust_remote_code=False: a folder's `auto_map` must never run code shipped with it.
        config = transformers.AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
        architectures = getattr(config, "architectures", None) or []
        model = None
        for name in architectures:
            cls = getattr(transformers, name, None)
            if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
                model = cls.from_pretrained(path, local_files_only=True, trust_remote_code=False)
                break
        if model is None:
            model = transformers.AutoModel.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except Exception as error:  # transformers raises many types; all mean "could not load"
        raise ModelLoadError(f"could not load the Hugging Face model in {path}: {_first_line(error)}") from error
    model.eval()
    n_params = sum(p.numel() for p in model.parameters())
    base = {"kind": "huggingface", "model_class": type(model).__name__, "config": model.config.to_dict()}
    return LoadedModel(model, str(path), "huggingface", f"{type(model).__name__} from {path} ({n_params / 1e6:.1f} M params)",
                       base=base)


def _load_factory(spec: str) -> LoadedModel:
    module_name, _, attr = spec.rpartition(":")
    if not module_name or not attr:
        raise ModelLoadError(f"{spec!r} is not `module:factory`")
    try:
        if module_name.endswith(".py"):
            file = Path(module_name)
            if not file.is_file():
                raise ModelLoadError(f"no such file: {file}")
            import_spec = importlib.util.spec_from_file_location(file.stem, file)
            assert import_spec is not None and import_spec.loader is not None
            module = importlib.util.module_from_spec(import_spec)
            sys.modules.setdefault(file.stem, module)
            import_spec.loader.exec_module(module)
        else:
            with _cwd_on_path():
                module = importlib.import_module(module_name)
    except ModelLoadError:
        raise
    except Exception as error:
        raise ModelLoadError(f"could not import {module_name!r}: {_first_line(error)}") from error
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ModelLoadError(f"{module_name!r} has no callable {attr!r}")
    try:
        built = factory()
    except Exception as error:
        raise ModelLoadError(f"{spec} raised {type(error).__name__}: {_first_line(error)}") from error
    inputs = None
    if isinstance(built, tuple) and len(built) == 2 and isinstance(built[0], nn.Module):
        built, inputs = built
    if not isinstance(built, nn.Module):
        raise ModelLoadError(f"{spec} returned {type(built).__name__}, not a torch.nn.Module")
    built.eval()
    n_params = sum(p.numel() for p in built.parameters())
    module_name, _, attr = spec.rpartition(":")
    stored = f"{Path(module_name).resolve()}:{attr}" if module_name.endswith(".py") else spec
    return LoadedModel(built, spec, "factory", f"{type(built).__name__} from {spec} ({n_params / 1e6:.2f} M params)", inputs,
                       base={"kind": "factory", "spec": stored})


@contextlib.contextmanager
def _cwd_on_path():
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(cwd)


def prepare(model: nn.Module, device: str | None, dtype: str | None) -> tuple[nn.Module, torch.device]:
    """Move the model to the device and dtype asked for; clear errors for impossible asks."""
    try:
        target = torch.device(device) if device else _model_device(model)
    except (RuntimeError, TypeError, ValueError):
        raise UsageError(f"unknown --device {device!r}: use cpu, cuda or cuda:N") from None
    if target.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device} asked for a GPU but torch sees none "
                             "(torch.cuda.is_available() is False); use --device cpu")
        if target.index is not None and target.index >= torch.cuda.device_count():
            raise UsageError(f"--device {device}: only {torch.cuda.device_count()} GPU(s) are visible")
    elif target.type not in ("cpu", "mps", "xpu"):
        raise UsageError(f"unsupported --device {device!r}: use cpu, cuda or cuda:N")
    if dtype and dtype not in DTYPES:
        raise UsageError(f"unknown --dtype {dtype!r}: choose float32, float16 or bfloat16")
    try:
        model = model.to(target)
        if dtype:
            model = model.to(DTYPES[dtype])
    except (RuntimeError, MemoryError) as error:  # torch.OutOfMemoryError is a RuntimeError
        raise UsageError(f"the model does not fit on {target}: {_first_line(error)}") from None
    return model, target


def _model_device(model: nn.Module) -> torch.device:
    for parameter in model.parameters():
        return parameter.device
    return torch.device("cpu")


def cuda_devices_of(model: nn.Module) -> list[int]:
    """Framework CUDA indices holding the model's parameters and buffers (sharded models span
    several)."""
    devices = {t.device for t in list(model.parameters()) + list(model.buffers())}
    return sorted(d.index if d.index is not None else torch.cuda.current_device()
                  for d in devices if d.type == "cuda")


def make_sync(model: nn.Module):
    """A function that waits for all work queued on the model's GPUs (a no-op on CPU)."""
    indices = cuda_devices_of(model)
    if not indices:
        return lambda: None

    def sync() -> None:
        for index in indices:
            torch.cuda.synchronize(index)

    return sync


def build_inputs(loaded: LoadedModel, model: nn.Module, batch_size: int, seq_len: int | None,
                 input_shape: Sequence[int] | None, device: torch.device, seed: int = 0) -> Inputs:
    """Inputs for one call: from --input-shape (per sample, batch prepended), else what the model
    says it takes (`example_inputs`, a Hugging Face config, a first Embedding/Linear layer)."""
    try:
        return _build_inputs(loaded, model, batch_size, seq_len, input_shape, device, seed)
    except (RuntimeError, MemoryError) as error:  # a batch too large to allocate
        if isinstance(error, MemoryError) or "memory" in str(error).lower() or "alloc" in str(error).lower():
            raise UsageError(f"inputs of batch {batch_size} cannot be allocated on {device}: {_first_line(error)} "
                             "(lower --batch-size or --seq-len)") from None
        raise


def _build_inputs(loaded: LoadedModel, model: nn.Module, batch_size: int, seq_len: int | None,
                  input_shape: Sequence[int] | None, device: torch.device, seed: int) -> Inputs:
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1 (got {batch_size})")
    if seq_len is not None and seq_len < 1:
        raise UsageError(f"--seq-len must be at least 1 (got {seq_len})")
    float_dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    generator = torch.Generator().manual_seed(seed)
    if input_shape is not None:
        if any(int(n) < 1 for n in input_shape):
            raise UsageError(f"--input-shape {','.join(map(str, input_shape))} has a size below 1")
        shape = (batch_size, *map(int, input_shape))
        return torch.randn(shape, generator=generator).to(device=device, dtype=float_dtype)
    if loaded.factory_inputs is not None:
        return loaded.factory_inputs
    example = getattr(model, "example_inputs", None)
    if callable(example):
        import inspect

        kwargs = {"seed": seed} if "seed" in inspect.signature(example).parameters else {}
        return example(batch_size, seq_len, **kwargs) if seq_len else example(batch_size, **kwargs)
    config = getattr(model, "config", None)
    if config is not None:
        if getattr(config, "vocab_size", None):
            length = seq_len or 128
            limit = getattr(config, "max_position_embeddings", None)
            if limit and length > limit:
                raise UsageError(f"--seq-len {length} exceeds the model's max_position_embeddings ({limit})")
            ids = torch.randint(0, config.vocab_size, (batch_size, length), generator=generator)
            return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}
        if getattr(config, "num_channels", None) and getattr(config, "image_size", None):
            size = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
            pixels = torch.randn((batch_size, config.num_channels, size, size), generator=generator)
            return {"pixel_values": pixels.to(device=device, dtype=float_dtype)}
    first = next((m for m in model.modules() if isinstance(m, (nn.Embedding, nn.Linear))), None)
    if isinstance(first, nn.Embedding):
        ids = torch.randint(0, first.num_embeddings, (batch_size, seq_len or 128), generator=generator)
        return ids.to(device)
    if isinstance(first, nn.Linear) and not any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules()):
        return torch.randn((batch_size, first.in_features), generator=generator).to(device=device, dtype=float_dtype)
    raise UsageError(
        f"cannot tell what inputs {loaded.spec} takes: pass --input-shape (per sample, without the "
        "batch dimension, e.g. --input-shape 3,224,224)"
    )


def call_model(model: nn.Module, inputs: Inputs) -> Any:
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, tuple):
        return model(*inputs)
    return model(inputs)


def check_inputs(model: nn.Module, inputs: Inputs) -> None:
    """One forward pass before any measurement, so a shape mistake is one clear line."""
    try:
        with torch.inference_mode():
            call_model(model, inputs)
    except MemoryError:
        raise InputShapeError(f"the model ran out of memory on inputs of shape {describe_inputs(inputs)}: "
                              "lower --batch-size or --seq-len") from None
    except Exception as error:
        if type(error).__name__ == "OutOfMemoryError" or "out of memory" in str(error).lower():
            raise InputShapeError(f"the model ran out of memory on inputs of shape {describe_inputs(inputs)} "
                                  f"({_first_line(error)}): lower --batch-size or --seq-len") from None
        raise InputShapeError(
            f"the model rejected inputs of shape {describe_inputs(inputs)}: {_first_line(error)} "
            "(fix --input-shape / --seq-len to what the model takes)"
        ) from error


def describe_inputs(inputs: Inputs) -> str:
    if isinstance(inputs, torch.Tensor):
        return "x".join(map(str, inputs.shape)) or "scalar"
    if isinstance(inputs, Mapping):
        return ", ".join(f"{k}={describe_inputs(v)}" for k, v in inputs.items())
    if isinstance(inputs, tuple):
        return "(" + ", ".join(describe_inputs(v) for v in inputs) + ")"
    return type(inputs).__name__


def batch_size_of(inputs: Inputs) -> int:
    if isinstance(inputs, torch.Tensor):
        return int(inputs.shape[0]) if inputs.dim() else 1
    values = list(inputs.values()) if isinstance(inputs, Mapping) else list(inputs)
    for value in values:
        if isinstance(value, torch.Tensor) and value.dim():
            return int(value.shape[0])
    return 1


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
