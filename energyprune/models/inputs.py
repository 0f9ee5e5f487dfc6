"""Where a model runs and what it is fed: moving it to a device and dtype, building inputs that
fit it, synchronising its GPUs, and one checked call before any measurement."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from energyprune.errors import UsageError
from energyprune.models.loaded import LoadedModel
from energyprune.torch_io import Inputs
from energyprune.torch_io import first_line as _first_line

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
          "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}



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
