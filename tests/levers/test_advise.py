"""`advise` against a scripted counter on a simulated clock: each lever is judged by its ratio's
interval and its fidelity, never by how fast the machine running the test is."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from energyprune.clock import SimulatedClock
from energyprune.levers import lever_named
from energyprune.levers.advise import advise, best_levers
from energyprune.measure.meter import MeterConfig
from tests.fakes.scripted import SensingScriptedBackend

FAST = MeterConfig(window_s=0.1, repeats=6, precision=0.0, max_duration_s=2.0, idle_s=0.1,
                   max_warmup_s=0.02, sample_interval_s=0.002)


class Pulsing(nn.Module):
    """A linear layer whose every call costs `pulses` impulses of the fake counter and 2 ms."""

    def __init__(self, fake: SensingScriptedBackend, clock: SimulatedClock, pulses: int = 2) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 4)
        self.fake, self.clock, self.pulses = fake, clock, pulses

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.pulses):
            self.fake.call()
        self.clock.sleep(0.002)
        return self.linear(x)

    def __deepcopy__(self, memo):  # the fake and the clock are shared, the weights copied
        twin = Pulsing(self.fake, self.clock, self.pulses)
        twin.linear.load_state_dict(self.linear.state_dict())
        return twin


class Lever:
    """A user's lever, as the protocol asks: name, lossy, applies_to, apply, recipe."""

    def __init__(self, name, pulses=None, noise=0.0, reason=None, fails=False):
        self.name, self.pulses, self.noise, self.reason, self.fails = name, pulses, noise, reason, fails
        self.lossy = noise > 0

    def applies_to(self, model, context):
        return self.reason

    def apply(self, model, context):
        if self.fails:
            raise RuntimeError("graph break in forward")
        twin = copy.deepcopy(model)
        if self.pulses is not None:
            twin.pulses = self.pulses
        if self.noise:
            with torch.no_grad():
                twin.linear.weight.add_(self.noise * torch.randn_like(twin.linear.weight))
        return twin

    def recipe(self):
        return {"lever": self.name}


def setup():
    clock = SimulatedClock()
    fake = SensingScriptedBackend(idle_w=10.0, call_energy_j=0.5, tick_s=0.01, clock=clock)
    torch.manual_seed(0)
    return clock, fake, Pulsing(fake, clock).eval(), torch.randn(2, 8)


def test_each_lever_is_judged_by_its_interval_and_its_fidelity():
    clock, fake, model, x = setup()
    levers = [Lever("half", pulses=1), Lever("same"), Lever("noisy", pulses=1, noise=5.0),
              Lever("elsewhere", reason="needs a GPU"), Lever("breaks", fails=True), Lever("quarter", pulses=0)]
    advice = advise(model, x, levers=levers, backend=[fake], config=FAST, clock=clock)
    by = {o.name: o for o in advice.outcomes}
    # half the impulses: the energy above idle halves, idle power x time is unchanged
    assert by["half"].status == "measured" and by["half"].worth_it
    high = by["half"].ratio_ci95[1]
    assert by["half"].ratio < 1 and high < 1
    assert by["half"].fidelity["fidelity"] == pytest.approx(1.0) and by["half"].fidelity["max_abs_error"] == 0.0
    assert not by["same"].worth_it and "no saving" in by["same"].verdict
    assert by["same"].ratio_ci95[0] <= 1.0 <= by["same"].ratio_ci95[1]
    assert not by["noisy"].worth_it and by["noisy"].verdict.startswith("refused: fidelity")
    assert by["elsewhere"].status == "skipped" and by["elsewhere"].reason == "needs a GPU"
    assert by["breaks"].status == "skipped" and "graph break in forward" in by["breaks"].reason
    # two levers worth it: measured together, and the better of the two kept
    assert advice.worth_it == ["half", "quarter"]
    assert advice.combined is not None and advice.combined.status == "measured"
    assert best_levers(advice) in (["quarter"], ["half", "quarter"])
    data = advice.to_dict()
    assert data["schema"] == "energyprune.advice/1" and len(data["levers"]) == 6
    assert data["baseline"]["anatomy"]["idle_share"] > 0


def test_a_batch_lever_is_compared_per_sample():
    clock, fake, model, x = setup()
    advice = advise(model, x, levers=[lever_named("batch:8")], make_inputs=lambda n: torch.randn(n, 8),
                    backend=[fake], config=FAST, clock=clock)
    (outcome,) = advice.outcomes
    # the same energy per call for 8 samples instead of 2: a quarter per sample
    assert outcome.batch_size == 8 and outcome.workload
    assert outcome.ratio == pytest.approx(0.25, rel=0.05)
    # the original's J/sample from the same interleaved windows stands beside the lever's: their
    # quotient is the ratio (to the interleaving's pairing of windows)
    assert outcome.original_per_sample_j == pytest.approx(outcome.per_sample_j / outcome.ratio, rel=0.05)
    assert outcome.fidelity["max_abs_error"] < 1e-5
    assert advice.worth_it == []  # the batch is the deployment's choice, not a lever the loop picks


def test_without_a_way_to_build_inputs_the_batch_lever_says_why():
    clock, fake, model, x = setup()
    advice = advise(model, x, levers=[lever_named("batch:8")], backend=[fake], config=FAST, clock=clock)
    assert advice.outcomes[0].status == "skipped" and "--input-shape" in advice.outcomes[0].reason


def test_the_advice_renders_as_text_markdown_and_html():
    from energyprune.reporting import render
    from energyprune.reporting.advice_doc import render_advice_text

    clock, fake, model, x = setup()
    advice = advise(model, x, levers=[Lever("half", pulses=1), Lever("elsewhere", reason="needs a GPU")],
                    backend=[fake], config=FAST, clock=clock)
    data = advice.to_dict()
    text = render_advice_text(data)
    assert "half" in text and "worth it" in text and "elsewhere: needs a GPU" in text
    assert "where it goes" in text
    markdown = render(data, "md")
    assert "| half" in markdown and "Skipped" in markdown and "original alongside" in markdown
    pytest.importorskip("matplotlib")
    assert "data:image/png" in render(data, "html")
