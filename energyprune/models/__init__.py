"""Models: loading them from a spec (demo, Hugging Face folder, factory, pruned folder), the
reference models shipped in packages (`zoo`), and building inputs that fit them.

    from energyprune.models import build_inputs, load_model, prepare
    loaded = load_model("path/to/hf-folder")
"""

from __future__ import annotations

from energyprune.models.inputs import DTYPES, build_inputs, prepare
from energyprune.models.load import load_model
from energyprune.models.loaded import LoadedModel

__all__ = ["DTYPES", "LoadedModel", "build_inputs", "load_model", "prepare"]
