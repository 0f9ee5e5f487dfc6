"""A backend that plays a recorded CSV trace against the wall clock: a test double users can ship.

The file has a header row with a `t_s` column (seconds since the backend was opened, non-decreasing,
from >= 0) and, per domain, a cumulative counter column `<domain>_energy_j` and/or an
instantaneous power column `<domain>_power_w`; other columns are ignored. An optional comment line
`# provenance: estimated` before the header marks the trace as estimated (it is measured otherwise).

    # provenance: measured
    t_s,gpu0_energy_j,gpu0_power_w,cpu_power_w
    0.0,1000.0,80.0,20.0
    0.1,1000.0,81.0,21.0
    0.2,1016.0,82.0,20.5

A counter reads as a hardware counter would: the value of the last row at or before now, so a
coarse counter stays coarse, relative to its value at open. A power column is sample-and-hold.
"""

from __future__ import annotations

import bisect
import csv
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from energyprune import stats
from energyprune.backends.base import Availability, DomainInfo, EnergyReading, Provenance
from energyprune.clock import sleep_on
from energyprune.errors import BackendError, BackendUnavailable

logger = logging.getLogger(__name__)

ENERGY_SUFFIX = "_energy_j"
POWER_SUFFIX = "_power_w"
DOMAIN_PREFIX = "replay:"
_FIX = "correct the trace file, or record a new one"
#: Times closer than this are the same time: `clock() - t_open` on a perf_counter hours into a
#: run loses ~1e-12 s to rounding, which must not move a read to the row before (or past the end).
TIME_TOLERANCE_S = 1e-9


class TraceFormatError(Exception):
    """A replay trace could not be parsed; the message says where and why."""


@dataclass(frozen=True)
class Trace:
    """A parsed, validated trace: tuples of plain floats, one per column, indexed by row."""

    path: Path
    provenance: Provenance
    domains: tuple[str, ...]  # in the order they first appear in the header
    t_s: tuple[float, ...]
    energy_j: Mapping[str, tuple[float, ...]]  # by domain name (without the "replay:" prefix)
    power_w: Mapping[str, tuple[float, ...]]

    def index_at(self, t: float) -> int:
        """The index of the last row at or before `t`; raises BackendError outside the trace."""
        if t > self.t_s[-1] + TIME_TOLERANCE_S:
            end, reached = _times(self.t_s[-1], t)
            raise BackendError(
                f"the replay trace {self.path} ends at t={end} s but the measurement reached "
                f"t={reached} s: record a longer trace or measure for less time"
            )
        if t < self.t_s[0] - TIME_TOLERANCE_S:
            start, reached = _times(self.t_s[0], t)
            raise BackendError(
                f"the replay trace {self.path} starts at t={start} s but was read at "
                f"t={reached} s: a trace must start at t=0 (the moment the backend is opened)"
            )
        return max(0, bisect.bisect_right(self.t_s, t + TIME_TOLERANCE_S) - 1)


def _times(a: float, b: float) -> tuple[str, str]:
    """Two times rounded so that they read apart (12.0 vs 12.3; more digits when closer)."""
    for digits in (3, 6, 9):
        sa, sb = str(round(a, digits)), str(round(b, digits))
        if sa != sb:
            return sa, sb
    return repr(a), repr(b)


def _counter_resolution_s(t_s: Sequence[float], values: Sequence[float]) -> float:
    """The median interval between the rows where a counter changes.

    With fewer than two changes there is no such interval: the first row stands in for one, and
    a counter that never changes has a resolution at least as long as the trace.
    """
    changes = [t_s[i] for i in range(1, len(values)) if values[i] != values[i - 1]]
    if len(changes) < 2:
        changes = [t_s[0], *changes] if changes else [t_s[0], t_s[-1]]
    intervals = [b - a for a, b in zip(changes, changes[1:])]
    return stats.median(intervals)


def _max_power_w(trace: Trace, domain: str) -> float | None:
    """What the replayed device is taken to draw at most: 1.5 times the highest power the trace
    shows (its power column, or its counter over one update period), for honest window bounds."""
    peaks: list[float] = []
    if domain in trace.power_w:
        peaks.append(max(trace.power_w[domain]))
    if domain in trace.energy_j:
        values = trace.energy_j[domain]
        changes = [i for i in range(1, len(values)) if values[i] != values[i - 1]]
        for a, b in zip(changes, changes[1:]):
            dt = trace.t_s[b] - trace.t_s[a]
            if dt > 0:
                peaks.append((values[b] - values[a]) / dt)
    return 1.5 * max(peaks) if peaks and max(peaks) > 0 else None


def _parse_provenance(comment: str, line_no: int, path: Path) -> Provenance | None:
    key, sep, value = comment.lstrip("#").partition(":")
    if not sep or key.strip().lower() != "provenance":
        return None
    value = value.strip().lower()
    try:
        return Provenance(value)
    except ValueError:
        raise TraceFormatError(
            f"the replay trace {path}, line {line_no}: provenance must be 'measured' or "
            f"'estimated', not {value!r}"
        ) from None


def parse_trace(path: str | os.PathLike[str]) -> Trace:
    """Read and validate a replay trace; raises TraceFormatError naming the problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TraceFormatError(f"the replay trace {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TraceFormatError(f"the replay trace {path} cannot be read: {e}") from None

    lines = text.splitlines()
    provenance = Provenance.MEASURED
    first = 0  # index of the header line
    while first < len(lines):  # blank lines and `#` comments before the header
        line = lines[first].strip()
        if line and not line.startswith("#"):
            break
        if line:
            found = _parse_provenance(line, first + 1, path)
            if found is not None:
                provenance = found
        first += 1
    if first == len(lines):
        raise TraceFormatError(f"the replay trace {path} is empty (no header row)")

    reader = csv.reader(lines[first:])
    header = [name.strip() for name in next(reader)]
    header_line = first + 1
    seen: set[str] = set()
    for name in header:
        if name in seen:
            raise TraceFormatError(
                f"the replay trace {path}, line {header_line}: column {name!r} appears twice"
            )
        seen.add(name)
    if "t_s" not in header:
        raise TraceFormatError(
            f"the replay trace {path} has no t_s column (header: {', '.join(header)})"
        )
    energy_cols = {n[: -len(ENERGY_SUFFIX)]: i for i, n in enumerate(header)
                   if n.endswith(ENERGY_SUFFIX)}
    power_cols = {n[: -len(POWER_SUFFIX)]: i for i, n in enumerate(header)
                  if n.endswith(POWER_SUFFIX)}
    if not energy_cols and not power_cols:
        raise TraceFormatError(
            f"the replay trace {path} has no <domain>{ENERGY_SUFFIX} or <domain>{POWER_SUFFIX} "
            f"column (header: {', '.join(header)})"
        )
    if "" in energy_cols or "" in power_cols:
        raise TraceFormatError(
            f"the replay trace {path}, line {header_line}: a column {ENERGY_SUFFIX!r} or "
            f"{POWER_SUFFIX!r} needs a domain name before the suffix"
        )
    t_col = header.index("t_s")
    wanted = {t_col, *energy_cols.values(), *power_cols.values()}

    t_s: list[float] = []
    columns: dict[int, list[float]] = {i: [] for i in wanted}
    for row in reader:
        line_no = first + reader.line_num
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise TraceFormatError(
                f"the replay trace {path}, line {line_no}: {len(row)} cells, but the header has "
                f"{len(header)} columns"
            )
        for i in sorted(wanted):
            cell = row[i].strip()
            try:
                value = float(cell)
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                raise TraceFormatError(
                    f"the replay trace {path}, line {line_no}, column {header[i]}: {cell!r} is "
                    f"not a finite number"
                )
            prev = columns[i][-1] if columns[i] else None
            if i == t_col:
                if prev is None and value < 0:
                    raise TraceFormatError(
                        f"the replay trace {path}, line {line_no}: t_s starts at {value:g}, "
                        f"below 0"
                    )
                if prev is not None and value < prev:
                    raise TraceFormatError(
                        f"the replay trace {path}, line {line_no}: t_s decreases ({prev:g} then "
                        f"{value:g}); rows must be in time order"
                    )
            elif header[i].endswith(ENERGY_SUFFIX):
                if prev is not None and value < prev:
                    raise TraceFormatError(
                        f"the replay trace {path}, line {line_no}, column {header[i]}: the "
                        f"counter decreases ({prev:g} then {value:g}); unwrap it before recording"
                    )
            elif value < 0:
                raise TraceFormatError(
                    f"the replay trace {path}, line {line_no}, column {header[i]}: a power of "
                    f"{value:g} W is negative"
                )
            columns[i].append(value)
        t_s.append(columns[t_col][-1])
    if not t_s:
        raise TraceFormatError(f"the replay trace {path} has a header but no data rows")
    return Trace(
        path=path,
        provenance=provenance,
        domains=tuple(dict.fromkeys(
            n[: -len(ENERGY_SUFFIX if n.endswith(ENERGY_SUFFIX) else POWER_SUFFIX)]
            for n in header if n.endswith((ENERGY_SUFFIX, POWER_SUFFIX))
        )),
        t_s=tuple(t_s),
        energy_j={d: tuple(columns[i]) for d, i in energy_cols.items()},
        power_w={d: tuple(columns[i]) for d, i in power_cols.items()},
    )


class ReplayBackend:
    """Plays a recorded trace against `clock`; t_s = 0 is the moment open() is called.

    Provenance is MEASURED unless the file's comment says `# provenance: estimated`. Counters are
    reported relative to the first row, which stands for the moment of open(); reading before the
    first row's t_s, or after the last one's, raises BackendError.
    """

    name = "replay"

    def __init__(
        self, path: str | os.PathLike[str], clock: Callable[[], float] = time.perf_counter, *,
        start_s: float | None = None, read_cost_s: float = 0.0,
    ) -> None:
        self.path = Path(path)
        self._clock = clock
        #: The trace time that the moment of open() stands for (default: its first row), so a
        #: trace recorded from t_s = 2.68 s replays as it is.
        self._start_s = start_s
        #: What one counter read costs on the clock (an NVML read takes ~3 ms): a simulated clock
        #: advances by it, so polling behaves as it did on the hardware.
        self._read_cost_s = read_cost_s
        self._availability: Availability | None = None
        self._trace: Trace | None = None
        self._t_open: float | None = None
        self._energy_at_open: dict[str, float] = {}

    @property
    def provenance(self) -> Provenance:
        """As the trace says; MEASURED until a valid trace has been probed."""
        self.probe()
        return self._trace.provenance if self._trace is not None else Provenance.MEASURED

    # ---- probing ----------------------------------------------------------------------------
    def probe(self) -> Availability:
        if self._availability is None:
            try:
                self._trace = parse_trace(self.path)
            except TraceFormatError as e:
                self._availability = Availability(False, str(e), fix=_FIX)
            else:
                frozen = [d for d, values in self._trace.energy_j.items() if len(set(values)) == 1]
                if frozen:
                    self._availability = Availability(
                        False, f"the replay trace {self.path}: the counter {frozen[0]}{ENERGY_SUFFIX} never changes "
                               f"in {self._trace.t_s[-1]:g} s, so no window could measure anything", fix=_FIX)
                    logger.debug("replay backend: %s", self._availability.reason)
                    return self._availability
                n = len(self._trace.t_s)
                self._availability = Availability(
                    True, f"replays {self.path} ({n} rows, {self._trace.t_s[-1]:g} s, "
                          f"{self._trace.provenance.value})"
                )
            logger.debug("replay backend: %s", self._availability.reason)
        return self._availability

    # ---- the backend protocol ---------------------------------------------------------------
    def open(self) -> None:
        availability = self.probe()
        if not availability.ok or self._trace is None:
            raise BackendUnavailable(f"{availability.reason}: {availability.fix}")
        at_open = self._trace_time(0.0)
        # The counters' zero: the row at open (the first row where open() comes before the trace).
        first = self._trace.index_at(at_open) if at_open >= self._trace.t_s[0] else 0
        self._energy_at_open = {d: v[first] for d, v in self._trace.energy_j.items()}
        self._t_open = self._clock()

    def domains(self) -> Sequence[DomainInfo]:
        trace = self._require_trace()
        result = []
        for d in trace.domains:
            has_counter = d in trace.energy_j
            result.append(DomainInfo(
                name=DOMAIN_PREFIX + d,
                backend=self.name,
                provenance=trace.provenance,
                method="replay-counter" if has_counter else "replay-power",
                device=f"{d} replayed from {trace.path.name}",
                has_counter=has_counter,
                resolution_s=(_counter_resolution_s(trace.t_s, trace.energy_j[d])
                              if has_counter else 0.0),
                max_power_w=_max_power_w(trace, d),
            ))
        return tuple(result)

    def read(self) -> EnergyReading:
        """Joules since open per counter domain: the last row at or before now, so a coarse
        counter stays coarse, minus the first row's value (the counter's value at open)."""
        trace, t_open, now = self._now()
        i = trace.index_at(self._trace_time(now - t_open))
        energy = {DOMAIN_PREFIX + d: v[i] - self._energy_at_open[d]
                  for d, v in trace.energy_j.items()}
        if self._read_cost_s > 0:
            sleep_on(self._clock, self._read_cost_s)
        return EnergyReading(t_s=self._clock(), energy_j=energy)

    def power_w(self) -> Mapping[str, float]:
        """Power per domain with a power column: the last row at or before now (sample-and-hold)."""
        trace, t_open, now = self._now()
        i = trace.index_at(self._trace_time(now - t_open))
        return {DOMAIN_PREFIX + d: v[i] for d, v in trace.power_w.items()}

    def close(self) -> None:
        self._t_open = None

    # ---- helpers ----------------------------------------------------------------------------
    def _trace_time(self, since_open_s: float) -> float:
        assert self._trace is not None
        start = self._trace.t_s[0] if self._start_s is None else self._start_s
        return start + since_open_s

    def _require_trace(self) -> Trace:
        availability = self.probe()
        if self._trace is None:
            raise BackendUnavailable(f"{availability.reason}: {availability.fix}")
        return self._trace

    def _now(self) -> tuple[Trace, float, float]:
        """The trace, the clock at open and the clock now."""
        if self._t_open is None or self._trace is None:
            raise BackendError(f"the replay backend for {self.path} was read before open() "
                               f"(or after close())")
        return self._trace, self._t_open, self._clock()
