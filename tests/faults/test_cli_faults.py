"""Bad input and broken surroundings on the command line: each case ends with one line on standard
error and its documented exit code, never a traceback, never a silently wrong figure, and nothing
measured or owned is lost. The README's "Reliability" table lists these cases."""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path

import pytest

from energyprune.cli.main import main

QUICK = ["--duration", "0.05", "--repeats", "6", "--precision", "0", "--idle", "0.05"]


def write_trace(path: Path, power_w: float = 100.0, seconds: float = 60.0, step_s: float = 0.001,
                frozen: bool = False) -> Path:
    rows = ["t_s,cpu_energy_j"]
    n = int(seconds / step_s)
    rows += [f"{i * step_s:.6f},{0.0 if frozen else power_w * i * step_s:.9f}" for i in range(n + 1)]
    path.write_text("\n".join(rows) + "\n")
    return path


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own one-line errors
        code = int(exit_.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(code: int, err: str, expected_code: int = 2) -> str:
    assert code == expected_code, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("energyprune: error:")]
    assert len(lines) == 1, err
    return lines[0]


# ---- bad values -----------------------------------------------------------------------------------
@pytest.mark.parametrize("args, says", [
    (["--device", "banana"], "unknown --device"),
    (["--duration", "inf"], "finite"),
    (["--idle", "nan"], "finite"),
    (["--idle", "inf"], "finite"),
    (["--cpu-tdp-w", "1e308", "--backend", "estimated"], "--cpu-tdp-w"),
    (["--duration", "90", "--max-duration", "60"], "longer than --max-duration"),
    (["--batch-size", "100000000000"], "cannot be allocated"),
    (["--backend", "replay:missing.csv,nvml"], "missing.csv"),
    (["--backend", "auto,rapl"], "auto"),
    (["--backend", "replay"], "PATH"),
])
def test_bad_values_are_one_line_and_exit_2(args, says, capsys):
    code, _, err = run(["measure", *QUICK, *args], capsys)
    if code == 2 and "error: argument" in err:  # argparse's own one line (exit 2 as well)
        assert says in err or "finite" in err
        return
    assert says in one_line_error(code, err)


def test_a_replay_trace_whose_counter_never_changes_fails_fast(tmp_path, capsys):
    trace = write_trace(tmp_path / "frozen.csv", frozen=True)
    code, _, err = run(["measure", "--backend", f"replay:{trace}", *QUICK], capsys)
    assert "never changes" in one_line_error(code, err)


def test_a_factory_that_returns_its_inputs_sets_the_batch(tmp_path, capsys):
    factory = tmp_path / "eight.py"
    factory.write_text("import torch\n"
                       "def build():\n"
                       "    return torch.nn.Linear(4, 4), torch.randn(8, 4)\n")
    trace = write_trace(tmp_path / "trace.csv")
    code, out, err = run(["measure", f"{factory}:build", "--backend", f"replay:{trace}", "--json", *QUICK], capsys)
    assert code == 0, err
    data = json.loads(out)
    assert data["batch_size"] == 8
    assert data["per_sample_j"] == pytest.approx(data["per_inference_j"] / 8)
    code, _, err = run(["measure", f"{factory}:build", "--batch-size", "4", "--backend", f"replay:{trace}", *QUICK],
                       capsys)
    assert "batch of 8" in one_line_error(code, err)


# ---- output locations -------------------------------------------------------------------------------
def test_output_locations_are_checked_before_measuring(tmp_path, capsys, monkeypatch):
    trace = write_trace(tmp_path / "trace.csv")
    base = ["measure", "--backend", f"replay:{trace}", *QUICK]
    (tmp_path / "result.json").mkdir()
    code, _, err = run([*base, "--out", str(tmp_path / "result.json")], capsys)
    assert "is a folder" in one_line_error(code, err)
    code, _, err = run([*base, "--out", str(tmp_path / "nowhere" / "r.json")], capsys)
    assert "does not exist" in one_line_error(code, err)

    import shutil
    import tempfile

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    with monkeypatch.context() as patch:  # root writes through chmod 000: simulate the mount
        patch.setattr(tempfile, "mkstemp", read_only)
        code, _, err = run([*base, "--out", str(tmp_path / "r.json")], capsys)
    assert "read-only" in one_line_error(code, err)

    usage = shutil.disk_usage(tmp_path)
    with monkeypatch.context() as patch:
        patch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=1000))
        code, _, err = run([*base, "--out", str(tmp_path / "r.json")], capsys)
    assert "free" in one_line_error(code, err)
    assert not (tmp_path / "r.json").exists()


def test_a_result_that_cannot_be_written_is_printed_and_exits_5(tmp_path, capsys, monkeypatch):
    import energyprune.files as files

    trace = write_trace(tmp_path / "trace.csv")
    real = files.write_bytes_atomic

    def disk_full(path, data):
        if str(path).endswith("r.json"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    monkeypatch.setattr(files, "write_bytes_atomic", disk_full)
    code, out, err = run(["measure", "--backend", f"replay:{trace}", "--out", str(tmp_path / "r.json"), *QUICK],
                         capsys)
    line = one_line_error(code, err, expected_code=5)
    assert "No space left" in line and "standard output" in line
    data = json.loads(out)  # nothing measured is lost
    assert data["schema"] == "energyprune.measurement/1" and data["per_inference_j"] > 0


def test_a_second_run_into_the_same_output_is_refused(tmp_path, capsys):
    from energyprune.files import OutputLock

    trace = write_trace(tmp_path / "trace.csv")
    out = tmp_path / "r.json"
    with OutputLock(out, folder=False):  # as a first run holds it
        code, _, err = run(["measure", "--backend", f"replay:{trace}", "--out", str(out), *QUICK], capsys)
    assert "another energyprune run is writing" in one_line_error(code, err)
    assert f"process {os.getpid()}" in err
    code, _, err = run(["measure", "--backend", f"replay:{trace}", "--out", str(out), *QUICK], capsys)
    assert code == 0, err  # released: the next run goes ahead
    assert not Path(str(out) + ".lock").exists()


def test_closed_standard_output_without_out_is_refused_before_measuring(tmp_path, capsys, monkeypatch):
    trace = write_trace(tmp_path / "trace.csv")
    monkeypatch.setattr(sys, "stdout", None)
    code = main(["measure", "--backend", f"replay:{trace}", *QUICK])
    err = capsys.readouterr().err
    assert "standard output is closed" in one_line_error(code, err)
    code = main(["measure", "--backend", f"replay:{trace}", "--out", str(tmp_path / "r.json"), *QUICK])
    assert code == 0 and json.loads((tmp_path / "r.json").read_text())["per_inference_j"] > 0


def test_a_reader_that_goes_away_is_exit_141_not_a_traceback(tmp_path, capsys, monkeypatch):
    class Gone:
        closed = False

        def write(self, text):
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")

        def flush(self):
            pass

        def fileno(self):
            return os.open(os.devnull, os.O_WRONLY)

    trace = write_trace(tmp_path / "trace.csv")
    monkeypatch.setattr(sys, "stdout", Gone())
    code = main(["measure", "--backend", f"replay:{trace}", *QUICK])
    assert code == 141 and "Traceback" not in capsys.readouterr().err


def test_markdown_reports_escape_what_users_named(tmp_path, capsys):
    factory = tmp_path / "weird.py"
    factory.write_text("import torch\n"
                       "class Evil(torch.nn.Linear):\n"
                       "    pass\n"
                       "def build():\n"
                       "    return Evil(4, 4)\n")
    name = tmp_path / "a|b <img src=x onerror=alert(1)>.py"
    factory.rename(name)
    trace = write_trace(tmp_path / "trace.csv")
    out = tmp_path / "r.md"
    code, _, err = run(["measure", f"{name}:build", "--input-shape", "4", "--backend", f"replay:{trace}",
                        "--out", str(out), *QUICK], capsys)
    assert code == 0, err
    import re

    text = out.read_text()
    assert "\\<img" in text and not re.search(r"(?<!\\)<img", text)  # shown as text, never as markup
    assert "a\\|b" in text
