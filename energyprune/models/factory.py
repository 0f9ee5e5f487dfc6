"""Loading a model built by user code: `package.module:factory` or `path/to/file.py:factory`.

This runs the user's code: it is what the user asked for by naming it. A pruned folder whose
original came from a factory runs it only with `trust_code` (see `models.pruned`)."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path

from torch import nn

from energyprune.errors import ModelLoadError
from energyprune.models.loaded import LoadedModel
from energyprune.torch_io import first_line as _first_line


def load_factory(spec: str) -> LoadedModel:
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


