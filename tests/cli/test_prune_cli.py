"""`energyprune prune` on the built-in demo model, with a scripted judge (energy per parameter) so
the test is fast and its outcome certain; the real meter is exercised in test_meter_end_to_end."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest
import torch

import energyprune.budget
from energyprune.errors import EnergyPruneError
from energyprune.models import load_model
from tests.budget.scripted import FlopsJudge

DEMO = ["--seq-len", "8", "--backend", "estimated"]


def cli(argv):
    """`energyprune.cli.main.main` once `prune` is wired in; until then the same handling by hand."""
    from energyprune.cli import main as main_cli

    parser = main_cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if "prune" in sub.choices:
        return main_cli.main(argv)
    from energyprune.cli.prune import add_parser as add_prune_parser
    from energyprune.cli.prune import run as run_prune

    parser = argparse.ArgumentParser(prog="energyprune")
    add_prune_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    try:
        return run_prune(args)
    except EnergyPruneError as error:
        print(f"energyprune: error: {error}", file=__import__("sys").stderr)
        return error.exit_code


@pytest.fixture
def judges(monkeypatch):
    """The CLI builds MeterJudge(backend, config, ...): hand it scripted judges instead."""
    made = []

    def factory(*args, **kwargs):
        judge = FlopsJudge(by="params", interrupt_at=factory.interrupt_at, half_width=factory.half_width)
        made.append(judge)
        return judge

    factory.interrupt_at = None
    factory.half_width = 0.01
    monkeypatch.setattr(energyprune.budget, "MeterJudge", factory)
    return factory


def test_prune_writes_a_loadable_dir_and_refuses_to_overwrite_it(tmp_path, judges, capsys):
    out = tmp_path / "pruned"
    code = cli(["prune", "--target", "-30%", "--criterion", "magnitude", "--out", str(out), *DEMO])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "step 1:" in captured.err and "target -30% reached" in captured.err
    assert "REACHED" in captured.out
    for name in ("result.json", "record.json", "report.md", "pruned.json", "pruned.safetensors", "checkpoint.json"):
        assert (out / name).is_file(), name
    result = json.loads((out / "result.json").read_text())
    assert result["schema"] == "energyprune.prune_result/1" and result["reached"]
    assert result["model"].startswith("built-in demo")
    assert "# energyprune prune" in (out / "report.md").read_text()

    loaded = load_model(str(out))  # original + record + pruned weights
    assert sum(p.numel() for p in loaded.module.parameters()) == result["final"]["n_params"]
    assert len(loaded.module.layers) < 4
    ids = loaded.module.example_inputs(1, 8)
    with torch.inference_mode():
        assert loaded.module(ids).shape == (1, 8, 1000)

    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code = cli(["prune", "--target", "-30%", "--criterion", "magnitude", "--out", str(out), *DEMO])
    assert code == 2 and "already holds earlier results" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing overwritten

    code = cli(["prune", "--target", "-30%", "--criterion", "magnitude", "--out", str(out), "--force", "--json",
                *DEMO])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["schema"] == "energyprune.prune_result/1"


def test_unreachable_target_exits_3_and_still_saves_the_best_model(tmp_path, judges, capsys):
    out = tmp_path / "far"
    code = cli(["prune", "--target", "0.05x", "--criterion", "magnitude", "--out", str(out), *DEMO])
    err = capsys.readouterr().err
    assert code == 3
    assert "target 0.05x not reached" in err and "one block is left" in err
    result = json.loads((out / "result.json").read_text())
    assert result["stop_reason"] == "nothing-left" and not result["reached"]
    assert len(load_model(str(out)).module.layers) == 1


def test_interrupt_prints_how_to_resume_and_resume_finishes(tmp_path, judges, capsys):
    out = tmp_path / "run"
    judges.interrupt_at = 2
    argv = ["prune", "--target", "-60%", "--criterion", "magnitude", "--out", str(out), *DEMO]
    assert cli(argv) == 130
    err = capsys.readouterr().err
    assert "interrupted after step 1" in err and "--resume" in err and str(out) in err
    assert json.loads((out / "result.json").read_text())["stop_reason"] == "interrupted"
    judges.interrupt_at = None
    assert cli(argv + ["--resume"]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["reached"] and len(result["steps"]) >= 2


def test_usage_mistakes_exit_2_with_one_line(tmp_path, judges, capsys):
    assert cli(["prune", "--target", "30%", "--criterion", "magnitude", *DEMO]) == 2
    assert "needs its sign" in capsys.readouterr().err
    assert cli(["prune", "--target", "-30%", "--criterion", "cosine-block", "--unit-kind", "neuron", *DEMO]) == 2
    assert "unit_kind must be one of block, attention" in capsys.readouterr().err
    assert cli(["prune", "--target", "-30%", "--criterion", "magnitude", "--resume", *DEMO]) == 2
    assert "--resume needs --out" in capsys.readouterr().err
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert cli(["prune", "--target", "-30%", "--criterion", "magnitude", "--out", str(tmp_path / "other"),
                "--force", *DEMO]) == 2
    assert "not energyprune results" in capsys.readouterr().err
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_prune_with_recovery_steps_distils_each_candidate(tmp_path, judges, capsys):
    out = tmp_path / "pruned"
    code = cli(["prune", "--target", "-30%", "--criterion", "magnitude", "--recovery-steps", "2",
                "--out", str(out), *DEMO])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    # Recovered weights differ from a plain slice of the original: the checkpoint keeps them.
    assert (out / "checkpoint-weights.safetensors").is_file()
    loaded = load_model(str(out))
    assert sum(p.numel() for p in loaded.module.parameters()) == json.loads((out / "result.json").read_text())["final"]["n_params"]
    with pytest.raises(SystemExit):
        cli(["prune", "--target", "-30%", "--criterion", "magnitude", "--recovery-steps", "x", *DEMO])


class WideFinalJudge(FlopsJudge):
    """Exact steps, but the direct comparison with the original has a +-25% interval."""

    def measure(self, model, inputs):
        self.original = model
        return super().measure(model, inputs)

    def compare(self, a, b, inputs):
        comparison = super().compare(a, b, inputs)
        if a is self.original:
            comparison = dataclasses.replace(comparison, ratio_ci95=(comparison.ratio * 0.75, comparison.ratio * 1.25))
        return comparison


def test_a_target_met_by_the_median_only_exits_4_unless_accepted(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(energyprune.budget, "MeterJudge", lambda *args, **kwargs: WideFinalJudge(by="params"))
    args = ["prune", "--target", "-30%", "--criterion", "magnitude", *DEMO]
    code = cli([*args, "--out", str(tmp_path / "a")])
    captured = capsys.readouterr()
    result = json.loads((tmp_path / "a" / "result.json").read_text())
    assert result["final"]["energy_ratio"] <= 0.7 < result["final"]["energy_ratio_ci95"][1]
    assert code == 4 and result["outcome"] == "median-only" and not result["reached"]
    assert "UNCONFIRMED" in captured.out and (tmp_path / "a" / "pruned.safetensors").is_file()
    assert cli([*args, "--out", str(tmp_path / "b"), "--accept-median"]) == 0
    assert "accepted with --accept-median" in capsys.readouterr().out


def test_recovery_options_report_fidelity_before_and_after(tmp_path, judges, capsys):
    out = tmp_path / "recovered"
    code = cli(["prune", "--target", "-20%", "--criterion", "magnitude", "--unit-kind", "neuron", "--out", str(out),
                "--recovery-steps", "2", "--final-recovery-steps", "4", "--recovery-lora-rank", "4",
                "--recovery-lr", "1e-3", "--accept-median", *DEMO])
    captured = capsys.readouterr()
    assert code in (0, 3, 4), captured.err  # reaching the goal is not what this test is about
    result = json.loads((out / "result.json").read_text())
    assert all(s["fidelity_before_recovery"] is not None for s in result["steps"])
    assert result["final_recovery"]["fidelity_after"] == result["final"]["fidelity"]
    assert "fidelity before -> after recovery" in captured.out and "final recovery: fidelity" in captured.out
    assert load_model(str(out)).module is not None  # adapters merged: the folder reloads strictly
    assert cli(["prune", "--target", "-30%", "--criterion", "magnitude", "--final-recovery-steps", "-1",
                "--out", str(tmp_path / "x"), *DEMO]) == 2
    assert "--final-recovery-steps must be 0 or more" in capsys.readouterr().err


def test_prune_says_what_the_target_costs_before_pruning(tmp_path, judges, capsys):
    code = cli(["prune", "--target", "-60%", "--criterion", "magnitude", "--unit-kind", "neuron", "--max-steps", "1",
                *DEMO])
    err = capsys.readouterr().err
    assert code in (0, 3, 4), err
    first = err.index("cost preview")
    assert first < err.index("step 1:")  # before anything is pruned
    line = err[first:].splitlines()[0]
    assert "neuron units hold" in line and "Target -60% needs ~" in line and "expect a large loss of quality" in line
    # The demo's blocks hold ~93% of its FLOPs, one must stay: -60% needs ~86% of them, no better.
    assert "no single kind reaches it within that share" in line


def test_the_result_says_what_quality_was_measured_on(tmp_path, judges, capsys):
    out = tmp_path / "q"
    code = cli(["prune", "--target", "-20%", "--criterion", "magnitude", "--out", str(out), *DEMO])
    captured = capsys.readouterr()
    assert code in (0, 3, 4), captured.err
    result = json.loads((out / "result.json").read_text())
    # The demo has no tokenizer: quality is fidelity on the measurement inputs, and it says so.
    assert result["quality_measured_on"].startswith("the measurement inputs")
    assert "quality (fidelity to the original) measured on the measurement inputs" in captured.out
    assert "measured on the measurement inputs" in (out / "report.md").read_text()


def test_an_unknown_kind_in_a_list_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli(["prune", "--target", "-20%", "--criterion", "magnitude", "--unit", "neuron,bogus", *DEMO])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown unit kind bogus" in err and "Traceback" not in err


def test_prune_with_a_bridge_refuses_post_norm_blocks_before_measuring(tmp_path, judges, capsys):
    out = tmp_path / "bridged"
    code = cli(["prune", "--target", "-30%", "--criterion", "cosine-block", "--bridge", "--out", str(out), *DEMO])
    captured = capsys.readouterr()
    # The demo's blocks are post-norm (nn.TransformerEncoderLayer): refused in one line, before measuring.
    assert code == 2
    assert "cannot bridge over the blocks after layers.0" in captured.out + captured.err
    assert "post-norm" in captured.out + captured.err and "original:" not in captured.out
    assert not out.exists() or not any(out.iterdir())


def test_prune_help_names_every_registered_criterion():
    from energyprune.cli.main import build_parser
    from energyprune.pruning.criteria import CRITERIA

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    criterion = next(a for a in commands.choices["prune"]._actions if "--criterion" in a.option_strings)
    assert all(name in criterion.help for name in CRITERIA), sorted(n for n in CRITERIA if n not in criterion.help)
