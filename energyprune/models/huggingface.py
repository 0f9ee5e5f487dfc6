"""Loading a local Hugging Face folder: never a download, never remote code."""

from __future__ import annotations

import os
from pathlib import Path

from energyprune.errors import ModelLoadError
from energyprune.models.loaded import LoadedModel
from energyprune.torch_io import first_line as _first_line


def load_huggingface(path: Path) -> LoadedModel:
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


