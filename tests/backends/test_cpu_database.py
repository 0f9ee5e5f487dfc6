"""The CPU power database matcher against codecarbon's own (`TDP._get_matching_cpu`), on the
names /proc/cpuinfo prints for the database's own models."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap

import pytest

from energyprune.backends.cpu_database import CpuPowerDatabase, codecarbon_database, lookup_cpu_tdp, words


def cpuinfo_names(names: list[str]) -> list[str]:
    """Each name, and the way /proc/cpuinfo spells such a model."""
    out = []
    for name in names:
        out.append(name)
        if name.startswith("Intel "):
            out.append(name.replace("Intel ", "Intel(R) ").replace("Xeon ", "Xeon(R) ").replace("Core ", "Core(TM) ")
                       + " CPU @ 2.30GHz")
        if name.startswith("AMD "):
            out.append(name + " 64-Core Processor")
    return out + ["Intel(R) Xeon(R) Processor", "Frobnicator 9000", "", "AMD EPYC", "intel core i5-750s",
                  "13th Gen Intel(R) Core(TM) i9-13900KF", "Intel(R) Xeon(R) Platinum 8480+"]


def test_matching_equals_codecarbons_on_hundreds_of_names(tmp_path):
    database = codecarbon_database()
    if database is None:
        pytest.skip("codecarbon (the carbon extra) is not installed")
    names = cpuinfo_names(random.Random(14).sample(database._names, 250))
    (tmp_path / "names.json").write_text(json.dumps(names))
    script = textwrap.dedent(f"""
        import json, logging
        logging.disable(logging.CRITICAL)
        from codecarbon.core.cpu import TDP
        from codecarbon.input import DataSource
        table, tdp = DataSource().get_cpu_power_data(), TDP.__new__(TDP)  # no __init__: no CPU detection
        names = json.load(open({str(tmp_path / "names.json")!r}))
        print(json.dumps([tdp._get_matching_cpu(name, table) for name in names]))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    theirs = json.loads(done.stdout.strip().splitlines()[-1])
    ours = [database.match_name(name) for name in names]
    assert [(n, o, t) for n, o, t in zip(names, ours, theirs) if o != t] == []
    assert sum(t is not None for t in theirs) > 250  # most of them match: the comparison means something


def test_the_three_rules_on_a_small_database():
    db = CpuPowerDatabase([("AMD EPYC 7763", "280"), ("Intel Xeon Platinum 8380", "270"),
                           ("Intel Xeon Platinum 8380H", "250"), ("Intel Core i5-750S", "82"),
                           ("Intel Core i5-750S", "82")], "test")
    assert db.match_name("amd epyc 7763") == "AMD EPYC 7763"  # 1: equal, ignoring case
    assert db.match_name("Intel(R) Xeon(R) Platinum 8380 CPU @ 2.30GHz") == "Intel Xeon Platinum 8380"  # 2
    assert db.match_name("AMD EPYC 7763 64-Core Processor") == "AMD EPYC 7763"  # 3: its words are a subset
    assert db.match_name("Intel(R) Core(TM) i5-750S processor") is None  # 3: two rows at 100 is no match
    assert db.match_name("Intel Xeon") is None  # a subset of three names: ambiguous
    assert words("Intel(R) Core(TM) i9-13900K") == {"intel", "r", "core", "tm", "i9", "13900k"}


def test_the_table_is_the_fallback_and_knows_threads_per_package():
    db = CpuPowerDatabase([("AMD EPYC 7763", "281")], "test")
    hit = lookup_cpu_tdp("AMD EPYC 7763 64-Core Processor", db)
    assert (hit.tdp_w, hit.from_database, hit.threads_per_package) == (281.0, True, 128)
    table = lookup_cpu_tdp("13th Gen Intel(R) Core(TM) i9-14900K", db)  # not in the database
    assert (table.tdp_w, table.from_database, table.matched_name) == (125.0, False, "i9-14900K")
    assert lookup_cpu_tdp("AMD EPYC 7763 64-Core Processor", None).from_database is False
    assert lookup_cpu_tdp("Frobnicator 9000", db) is None
