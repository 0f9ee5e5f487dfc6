"""Loading a model from a spec.

A spec is one of: nothing (the built-in demo), a local Hugging Face directory (config.json beside
the weights; never a hub download), a pruned folder written by `energyprune prune --out DIR`, or
`module:factory` / `path/to/file.py:factory`, a callable returning an `nn.Module` (or a
`(module, example_inputs)` pair).
"""

from __future__ import annotations

from pathlib import Path

from energyprune.errors import ModelLoadError
from energyprune.models.factory import load_factory
from energyprune.models.huggingface import load_huggingface
from energyprune.models.loaded import LoadedModel


def load_model(spec: str | None, *, trust_code: bool = False) -> LoadedModel:
    """The model a spec names. A `module:factory` spec runs that factory (the user asked for it by
    name); a pruned folder whose base is a factory runs it only with `trust_code` (`--trust-code`),
    since opening a folder must never run code. Hugging Face folders load with
    `trust_remote_code=False` and never download."""
    if spec is None or spec in ("", "demo"):
        from energyprune.models.demo import build_demo_model

        model = build_demo_model()
        n_params = sum(p.numel() for p in model.parameters())
        return LoadedModel(model, "demo", "demo", f"built-in demo transformer (4 blocks, d=256, {n_params / 1e6:.1f} M params)",
                           base={"kind": "demo"})
    path = Path(spec)
    if path.is_dir() and (path / "pruned.json").is_file():  # written by `energyprune prune --out DIR`
        from energyprune.models.pruned import load_pruned

        return load_pruned(path, trust_code=trust_code)
    if path.is_dir():
        return load_huggingface(path)
    if ":" in spec and not path.exists():
        return load_factory(spec)
    if path.exists():
        raise ModelLoadError(
            f"{spec} is a file, not a model directory: give the folder that holds config.json, "
            "or `file.py:factory` for a model built in code"
        )
    raise ModelLoadError(
        f"no model at {spec!r}: give a local Hugging Face folder (with config.json), "
        "`package.module:factory`, or nothing for the built-in demo"
    )


