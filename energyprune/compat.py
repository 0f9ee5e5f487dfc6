"""The versions of optional dependencies energyprune was tested with, and a check against them.

`pyproject.toml` declares the same range for the `hf` extra (a test keeps the two in step), so a
fresh install never picks a transformers release we have not run the test suite on. Someone who
installs another version anyway (an existing environment, `--no-deps`) gets one warning, not a
silent failure deep inside `generate`.
"""

from __future__ import annotations

import logging
import re
from functools import lru_cache

logger = logging.getLogger(__name__)

#: The oldest and newest transformers releases the whole test suite passed on (README, "Install").
TRANSFORMERS_TESTED = ("4.57.6", "5.25.0")
#: The range `pyproject.toml` declares: from the oldest tested release to before the next minor
#: release after the newest one.
TRANSFORMERS_REQUIREMENT = "transformers>=4.57.6,<5.26"


def version_tuple(text: str) -> tuple[int, ...]:
    """(5, 25, 0) from "5.25.0", "5.25.0.dev0" or "5.25.0rc1"; the numeric release part only."""
    parts = []
    for piece in text.split("."):
        match = re.match(r"\d+", piece)
        if not match:
            break
        parts.append(int(match.group()))
        if match.group() != piece:
            break
    return tuple(parts)


def transformers_outside_tested_range(version: str) -> str | None:
    """A one-line explanation when `version` is outside the tested range, else None."""
    low, high = TRANSFORMERS_TESTED
    v = version_tuple(version)
    if v < version_tuple(low):
        return (f"transformers {version} is older than the oldest release energyprune was tested with ({low}): "
                f"pip install '{TRANSFORMERS_REQUIREMENT}'")
    if v[:2] > version_tuple(high)[:2]:
        return (f"transformers {version} is newer than the releases energyprune was tested with ({low} to "
                f"{high}): pruning and generation may break; pip install '{TRANSFORMERS_REQUIREMENT}'")
    return None


@lru_cache(maxsize=None)
def check_transformers() -> None:
    """Warn once per process when the installed transformers is outside the tested range."""
    try:
        import transformers
    except ImportError:
        return
    problem = transformers_outside_tested_range(transformers.__version__)
    if problem:
        logger.warning("%s", problem)
