"""codecarbon's offline data (grid carbon intensities, the CPU power database), read as files.

codecarbon is an optional extra (`pip install 'energyprune[carbon]'`). Its package is never
imported here: importing any part of it runs `codecarbon/__init__.py`, which initialises NVML,
may start `nvidia-smi` / `rocm-smi` and adds a logging handler. `importlib.util.find_spec` finds
the installed package's folder without running it, and the JSON / CSV files under its `data/`
folder are read directly (data never runs code). What is read from them, and the arithmetic done
with it, is checked against codecarbon's own API in `tests/metrics/test_carbon.py`.

The data folder is injectable (`CodecarbonData(root, version)`), so tests build a small tree in a
temporary folder.
"""

from __future__ import annotations

import csv
import importlib.metadata
import importlib.util
import json
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from energyprune.compat import version_tuple
from energyprune.errors import UsageError

logger = logging.getLogger(__name__)

#: The codecarbon releases whose data files energyprune was tested with, and the range
#: `pyproject.toml` declares for the `carbon` extra (a test keeps the two in step).
CODECARBON_TESTED = ("3.3.2", "3.3.2")
CODECARBON_REQUIREMENT = "codecarbon>=3.3,<3.4"
INSTALL_HINT = f"pip install 'energyprune[carbon]' (or pip install '{CODECARBON_REQUIREMENT}')"


class CodecarbonMissing(UsageError):
    """codecarbon's data is needed and codecarbon is not installed."""


class CodecarbonDataError(UsageError):
    """A codecarbon data file is missing or not in the format energyprune was tested with."""


@dataclass(frozen=True)
class CodecarbonData:
    """The `data/` folder of an installed codecarbon, and its version."""

    root: Path
    version: str

    def path(self, relative: str) -> Path:
        return self.root / relative

    def read_json(self, relative: str) -> Any:
        path = self.path(relative)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CodecarbonDataError(f"codecarbon {self.version} has no data file {relative}: energyprune was "
                                      f"tested with codecarbon {CODECARBON_TESTED[1]}; "
                                      f"pip install '{CODECARBON_REQUIREMENT}'") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise CodecarbonDataError(f"codecarbon's {relative} cannot be read ({type(error).__name__}: {error}): "
                                      f"reinstall it with pip install --force-reinstall "
                                      f"'{CODECARBON_REQUIREMENT}'") from None

    def read_csv(self, relative: str) -> list[dict[str, str]]:
        path = self.path(relative)
        try:
            # utf-8-sig: some of codecarbon's CSV files start with a byte-order mark.
            with path.open(encoding="utf-8-sig", newline="") as handle:
                return list(csv.DictReader(handle))
        except FileNotFoundError:
            raise CodecarbonDataError(f"codecarbon {self.version} has no data file {relative}: energyprune was "
                                      f"tested with codecarbon {CODECARBON_TESTED[1]}; "
                                      f"pip install '{CODECARBON_REQUIREMENT}'") from None
        except (OSError, UnicodeDecodeError, csv.Error) as error:
            raise CodecarbonDataError(f"codecarbon's {relative} cannot be read ({type(error).__name__}: {error}): "
                                      f"reinstall it with pip install --force-reinstall "
                                      f"'{CODECARBON_REQUIREMENT}'") from None

    def format_error(self, relative: str, detail: str) -> CodecarbonDataError:
        """The one-line error for a data file whose content is not what this version expects."""
        return CodecarbonDataError(f"codecarbon {self.version}'s {relative} is not in the format energyprune knows "
                                   f"({detail}; tested with codecarbon {CODECARBON_TESTED[1]}): "
                                   f"pip install '{CODECARBON_REQUIREMENT}'")


def outside_tested_range(version: str) -> str | None:
    """A one-line explanation when `version` is outside the tested range, else None."""
    low, high = CODECARBON_TESTED
    v = version_tuple(version)
    if v < version_tuple(low) or v[:2] > version_tuple(high)[:2]:
        return (f"codecarbon {version} is outside the releases energyprune was tested with ({low} to {high}): its "
                f"data files may have changed; pip install '{CODECARBON_REQUIREMENT}'")
    return None


@lru_cache(maxsize=1)
def installed() -> CodecarbonData | None:
    """The installed codecarbon's data folder, found without importing codecarbon; None when it
    is not installed. Warns once when its version is outside the tested range."""
    try:
        spec = importlib.util.find_spec("codecarbon")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0]) / "data"
    if not root.is_dir():
        return None
    try:
        version = importlib.metadata.version("codecarbon")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    problem = outside_tested_range(version) if version != "unknown" else None
    if problem:
        logger.warning("%s", problem)
    return CodecarbonData(root, version)


def require(what: str, data: CodecarbonData | None = None) -> CodecarbonData:
    """`data`, or the installed codecarbon's; one line on how to install it when there is none."""
    found = data if data is not None else installed()
    if found is None:
        raise CodecarbonMissing(f"{what} needs codecarbon's offline data, and codecarbon is not installed: "
                                f"{INSTALL_HINT}")
    return found
