"""The TDP of a CPU from its model name: codecarbon's CPU power database, else a small table.

codecarbon ships `data/hardware/cpu_power.csv` (`Name,TDP`, about 4,900 models). It is read as a
file (`energyprune.codecarbon_data`; codecarbon is never imported) and matched the way codecarbon
matches it, without its rapidfuzz dependency:

1. the model name equals a database name, ignoring case;
2. the same after removing "(R)", everything from " CPU @ " on, " CPU" and "@ 2.30GHz";
3. otherwise the name's words (lower case, split at anything not a letter or digit) and one database
   name's words are a subset of one another, and exactly one name in the database is (codecarbon's
   `token_set_ratio` of 100, non-greedy: two such names is no match).

"AMD EPYC 7763 64-Core Processor" -> "AMD EPYC 7763" (280 W) by rule 3; "Intel(R) Xeon(R) Platinum
8380 CPU @ 2.30GHz" -> "Intel Xeon Platinum 8380" (270 W) by rule 2. `tests/backends/test_cpu_database.py`
checks the matcher against codecarbon's own on hundreds of names.

`TDP_TABLE` is energyprune's own table of 26 common CPUs. It is kept for two reasons: it is the
fallback when codecarbon is not installed (or knows a model it lacks: the i9-14900K, the Xeon 8480C),
and it knows what codecarbon's database does not: how many logical CPUs one package has, which the
estimate needs to charge a virtual machine its share of a package (2 vCPUs of a 128-thread EPYC
are 2/128 of its TDP).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from energyprune.codecarbon_data import CodecarbonData, installed

logger = logging.getLogger(__name__)

CPU_POWER_FILE = "hardware/cpu_power.csv"
TABLE_SOURCE = "energyprune's table of vendor specification sheets"


@dataclass(frozen=True)
class CpuTdp:
    """The TDP found for a CPU model, under the name its source gives, and from which source."""

    matched_name: str
    tdp_w: float
    source: str
    from_database: bool  # True: codecarbon's CPU power database; False: energyprune's table
    threads_per_package: int | None = None  # logical CPUs of one package, where the source knows it


# ---- energyprune's table -----------------------------------------------------------------------
@dataclass(frozen=True)
class TdpEntry:
    """One row of the built-in TDP table: a CPU recognised by its `model name` in /proc/cpuinfo."""

    keys: tuple[str, ...]  # substrings of the model name, each matched as a whole token
    tdp_w: float  # rated TDP of one package (Intel: Processor Base Power)
    threads_per_package: int  # logical CPUs of one package with SMT on

    def matches(self, model: str) -> bool:
        # A key must not run on into letters or digits, so "Platinum 8380" does not match the
        # (different) "Platinum 8380H" and "Ryzen 9 7950X" does not match "Ryzen 9 7950X3D".
        return any(re.search(re.escape(k) + r"(?![0-9A-Za-z])", model) for k in self.keys)


#: TDP of common server and desktop CPUs, from the vendors' specification sheets.
TDP_TABLE: tuple[TdpEntry, ...] = (
    # AMD EPYC 7003 (Milan)
    TdpEntry(("EPYC 7763",), 280.0, 128),
    TdpEntry(("EPYC 7713",), 225.0, 128),
    TdpEntry(("EPYC 7543",), 225.0, 64),
    TdpEntry(("EPYC 7443",), 200.0, 48),
    TdpEntry(("EPYC 7313",), 155.0, 32),
    # AMD EPYC 9004 (Genoa)
    TdpEntry(("EPYC 9654",), 360.0, 192),
    TdpEntry(("EPYC 9554",), 360.0, 128),
    TdpEntry(("EPYC 9454",), 290.0, 96),
    TdpEntry(("EPYC 9354",), 280.0, 64),
    # Intel Xeon Scalable 4th gen (Sapphire Rapids)
    TdpEntry(("Platinum 8480+", "Platinum 8480C"), 350.0, 112),
    TdpEntry(("Platinum 8468",), 350.0, 96),
    TdpEntry(("Gold 6430",), 270.0, 64),
    # Intel Xeon Scalable 3rd gen (Ice Lake)
    TdpEntry(("Platinum 8380",), 270.0, 80),
    TdpEntry(("Platinum 8358",), 250.0, 64),
    TdpEntry(("Gold 6338",), 205.0, 64),
    # Intel Core 12th-14th gen (Processor Base Power; turbo goes well above it)
    TdpEntry(("i9-14900K", "i9-14900KF"), 125.0, 32),
    TdpEntry(("i9-13900K", "i9-13900KF"), 125.0, 32),
    TdpEntry(("i9-12900K", "i9-12900KF"), 125.0, 24),
    TdpEntry(("i7-14700K", "i7-14700KF"), 125.0, 28),
    TdpEntry(("i7-13700K", "i7-13700KF"), 125.0, 24),
    TdpEntry(("i7-12700K", "i7-12700KF"), 125.0, 20),
    # AMD Ryzen 5000 / 7000
    TdpEntry(("Ryzen 9 7950X",), 170.0, 32),
    TdpEntry(("Ryzen 9 7900X",), 170.0, 24),
    TdpEntry(("Ryzen 9 5950X",), 105.0, 32),
    TdpEntry(("Ryzen 9 5900X",), 105.0, 24),
    TdpEntry(("Ryzen 7 7700X",), 105.0, 16),
    TdpEntry(("Ryzen 7 5800X",), 105.0, 16),
)


def lookup_tdp(model: str) -> TdpEntry | None:
    """The table entry for a `model name` from /proc/cpuinfo, or None when it is not known."""
    for entry in TDP_TABLE:
        if entry.matches(model):
            return entry
    return None


# ---- codecarbon's database ----------------------------------------------------------------------
def words(text: str) -> frozenset[str]:
    """The words rapidfuzz's default processing leaves: lower case, split at non-alphanumerics."""
    return frozenset("".join(c if c.isalnum() else " " for c in text).lower().split())


def simplified(model: str) -> str:
    """The model name without "(R)", the clock and " CPU", as codecarbon simplifies it."""
    model = model.replace("(R)", "")
    cut = model.find(" CPU @ ")
    if cut > 0:
        model = model[:cut]
    model = model.replace(" CPU", "")
    return re.sub(r" @\s*\d+\.\d+GHz", "", model)


class CpuPowerDatabase:
    """`Name,TDP` rows, matched as codecarbon matches them (see the module docstring)."""

    def __init__(self, rows: Sequence[tuple[str, str]], source: str) -> None:
        self.source = source
        self._names = [name for name, _ in rows]
        self._tdp = [_watts(value) for _, value in rows]
        self._lower: dict[str, int] = {}
        for i, name in enumerate(self._names):
            self._lower.setdefault(name.lower(), i)
        self._words = [words(name) for name in self._names]

    def __len__(self) -> int:
        return len(self._names)

    @classmethod
    def from_codecarbon(cls, data: CodecarbonData) -> CpuPowerDatabase:
        rows = data.read_csv(CPU_POWER_FILE)
        if not rows or not {"Name", "TDP"} <= set(rows[0]):
            raise data.format_error(CPU_POWER_FILE, "no Name and TDP columns")
        pairs = [(row["Name"], row["TDP"]) for row in rows if row.get("Name")]
        return cls(pairs, f"codecarbon {data.version}'s CPU power database (cpu_power.csv, {len(pairs):,} models)")

    def match_name(self, model: str) -> str | None:
        """The database name codecarbon would match `model` to, or None."""
        index = self._match(model)
        return None if index is None else self._names[index]

    def _match(self, model: str) -> int | None:
        for candidate in (model, simplified(model)):
            index = self._lower.get(candidate.lower())
            if index is not None:
                return index
        query = words(simplified(model))
        if not query:
            return None
        hits = [i for i, name_words in enumerate(self._words)
                if query & name_words and (query <= name_words or name_words <= query)]
        return hits[0] if len(hits) == 1 else None

    def match(self, model: str) -> CpuTdp | None:
        index = self._match(model)
        if index is None:
            return None
        tdp_w = self._tdp[index]
        if tdp_w is None:
            logger.debug("cpu database: %s matched %r, whose TDP is not a number", model, self._names[index])
            return None
        return CpuTdp(self._names[index], tdp_w, self.source, True)


def _watts(text: str) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None  # a few rows read "27.29.5": no figure rather than a guessed one
    return value if value > 0 else None


@lru_cache(maxsize=1)
def codecarbon_database() -> CpuPowerDatabase | None:
    """The installed codecarbon's CPU power database (read once); None when codecarbon is absent."""
    data = installed()
    return None if data is None else CpuPowerDatabase.from_codecarbon(data)


def lookup_cpu_tdp(model: str, database: CpuPowerDatabase | str | None = "auto") -> CpuTdp | None:
    """The TDP of `model`: from `database` ("auto": codecarbon's when installed; None: the table
    only) when it has the model, else from energyprune's table; None when neither knows it. A
    database match takes the number of logical CPUs per package from the table where it has one."""
    db = codecarbon_database() if database == "auto" else database
    entry = lookup_tdp(model)
    if isinstance(db, CpuPowerDatabase):
        hit = db.match(model)
        if hit is not None:
            threads = entry.threads_per_package if entry is not None else None
            return CpuTdp(hit.matched_name, hit.tdp_w, hit.source, True, threads)
    if entry is not None:
        return CpuTdp(next(k for k in entry.keys if re.search(re.escape(k) + r"(?![0-9A-Za-z])", model)),
                      entry.tdp_w, TABLE_SOURCE, False, entry.threads_per_package)
    return None
