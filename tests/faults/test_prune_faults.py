"""`energyprune prune` where things go wrong: nothing an earlier run wrote is lost to a typo, a
resume must be the same run, and damaged checkpoints and vendor exceptions are one clear line."""

from __future__ import annotations

import json

import pytest

import energyprune.budget
from energyprune.cli.main import main
from tests.budget.scripted import FlopsJudge

DEMO = ["--seq-len", "8", "--backend", "estimated"]


@pytest.fixture
def judge(monkeypatch):
    made = {"interrupt_at": None}

    def factory(*args, **kwargs):
        return FlopsJudge(by="params", interrupt_at=made["interrupt_at"])

    monkeypatch.setattr(energyprune.budget, "MeterJudge", factory)
    return made


def run(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out, captured.err


def test_force_with_a_typo_keeps_the_earlier_run(tmp_path, judge, capsys):
    out = tmp_path / "run"
    code, _, err = run(["prune", "--target", "-30%", "--criterion", "magnitude", "--out", str(out), *DEMO], capsys)
    assert code in (0, 4), err
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    for typo in (["--criterion", "magnitud"], ["--criterion", "magnitude", "--criterion-option", "nope=1"],
                 ["--criterion", "mipp", "--unit-kind", "activation"]):
        code, _, err = run(["prune", "--target", "-30%", *typo, "--out", str(out), "--force", *DEMO], capsys)
        assert code == 2 and "error:" in err, err
        after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
        assert after == before  # nothing deleted, nothing changed


def test_resume_must_be_the_same_run_and_the_printed_command_says_it_all(tmp_path, judge, capsys):
    out = tmp_path / "run"
    judge["interrupt_at"] = 2
    args = ["prune", "--target", "-45%", "--criterion", "magnitude", "--unit-kind", "neuron", "--batch-size", "2",
            "--duration", "0.3", "--repeats", "7", "--calibration-batches", "3", "--out", str(out), *DEMO]
    code, _, err = run(args, capsys)
    assert code == 130 and "Resume with:" in err
    command = err.split("Resume with:")[1].strip().splitlines()[0]
    for option in ("--unit-kind neuron", "--batch-size 2", "--duration 0.3", "--repeats 7", "--calibration-batches 3",
                   "--backend estimated", "--seq-len 8", "--resume"):
        assert option in command, (option, command)
    judge["interrupt_at"] = None
    code, _, err = run(["prune", "--target", "-45%", "--criterion", "magnitude", "--unit-kind", "neuron",
                        "--batch-size", "4", "--duration", "0.3", "--repeats", "7", "--calibration-batches", "3",
                        "--out", str(out), "--resume", *DEMO], capsys)
    assert code == 2 and "batch_size 4" in err and "(the run used 2)" in err
    import shlex

    code, _, err = run(shlex.split(command)[1:], capsys)  # the printed command, as a user would paste it
    assert code in (0, 3, 4), err


def test_checkpoint_weights_that_do_not_fit_are_one_line(tmp_path, judge, capsys):
    from safetensors.torch import save_file
    import torch

    out = tmp_path / "run"
    judge["interrupt_at"] = 2
    args = ["prune", "--target", "-45%", "--criterion", "magnitude", "--unit-kind", "neuron",
            "--recovery-steps", "1", "--out", str(out), *DEMO]
    assert run(args, capsys)[0] == 130
    save_file({"not.a.key": torch.zeros(2)}, str(out / "checkpoint-weights.safetensors"))
    judge["interrupt_at"] = None
    code, _, err = run([*args, "--resume"], capsys)
    assert code == 2 and "checkpoint" in err and "do not fit" in err


def test_a_counter_failing_with_a_vendor_exception_is_one_line(tmp_path, capsys, monkeypatch):
    from energyprune.backends.estimated import EstimatedBackend

    def broken(self):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(EstimatedBackend, "read", broken)
    code, _, err = run(["measure", "--backend", "estimated", "--duration", "0.05", "--idle", "0.05"], capsys)
    assert code == 2 and "failed to read its counters: OSError" in err
