"""benchmarks/front_benchmark.py: each family reaches its FLOPs goal with the smallest amount, and
the report labels estimated energy on every line that shows it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def front():
    pytest.importorskip("transformers")
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import front_benchmark
    finally:
        sys.path.remove(str(BENCHMARKS))
    return front_benchmark


@pytest.fixture(scope="module")
def setup(front):
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=64, num_hidden_layers=6, num_attention_heads=8,
                                      num_key_value_heads=4, intermediate_size=128, vocab_size=96)
    model = transformers.LlamaForCausalLM(config).eval()
    generator = torch.Generator().manual_seed(1)
    calibration = [{"input_ids": torch.randint(0, 96, (2, 16), generator=generator), "use_cache": False}
                   for _ in range(2)]
    flops = front.Flops(model, {"input_ids": calibration[0]["input_ids"][:1], "use_cache": False})
    return model, calibration, flops


def test_depth_removes_the_fewest_blocks_that_reach_the_goal(front, setup) -> None:
    model, calibration, flops = setup
    pruned, removed = front.depth_cut(model, calibration, flops, 0.75)
    assert flops.ratio(pruned) <= 0.75
    scores = front.block_scores(model, calibration)
    one_fewer = front.remove_blocks(model, scores, removed["blocks"] - 1, calibration) if removed["blocks"] > 1 else model
    assert flops.ratio(one_fewer) > 0.75
    assert len(pruned.model.layers) == 6 - removed["blocks"]


def test_width_takes_the_same_fraction_of_heads_neurons_and_hidden_and_no_more(front, setup) -> None:
    model, calibration, flops = setup
    pruned, removed = front.width_cut(model, calibration, flops, 0.8)
    fraction = removed["width_fraction"]
    assert flops.ratio(pruned) <= 0.8
    assert pruned.config.hidden_size < 64 and pruned.model.layers[0].mlp.gate_proj.out_features <= 128
    scores = front.width_scores(model, calibration)
    smaller = front.remove_width(model, scores, fraction - 1 / 256, calibration)
    assert flops.ratio(smaller) > 0.8  # the bisection stopped at the smallest fraction, to 1/256
    out = pruned(**calibration[0]).logits
    assert out.shape == (2, 16, 96) and torch.isfinite(out).all()


def test_width_without_hidden_keeps_the_residual_stream_and_an_unreachable_goal_is_said(front, setup) -> None:
    model, calibration, flops = setup
    pruned, removed = front.width_no_hidden_cut(model, calibration, flops, 0.9)
    assert flops.ratio(pruned) <= 0.9 and pruned.config.hidden_size == 64 and removed["width_fraction"] > 0
    with pytest.raises(front.Unreachable, match="does not reach a FLOPs ratio of 0.05"):
        front.width_no_hidden_cut(model, calibration, flops, 0.05)


def test_mixed_removes_blocks_to_half_the_cut_then_width(front, setup) -> None:
    model, calibration, flops = setup
    pruned, removed = front.mixed_cut(model, calibration, flops, 0.7)
    assert flops.ratio(pruned) <= 0.7
    assert removed["blocks"] >= 1 and removed["width_fraction"] > 0
    shallow = front.remove_blocks(model, front.block_scores(model, calibration), removed["blocks"], calibration)
    assert flops.ratio(shallow) <= 0.85 < flops.ratio(
        front.remove_blocks(model, front.block_scores(model, calibration), removed["blocks"] - 1, calibration)
        if removed["blocks"] > 1 else model)


def test_the_report_labels_every_estimated_energy_and_says_when_it_is_incomplete(front, tmp_path) -> None:
    row = {"family": "depth", "cut_percent": 30, "steps": 0, "removed": {"blocks": 2}, "flops_ratio": 0.69,
           "figures": {"exp_neg_kl": 0.4, "top1_agreement": 0.5, "perplexity_ratio": 2.0}, "answers": None,
           "seconds": 3.0, "energy": {"ratio": 0.71, "ratio_ci95": [0.65, 0.78], "provenance": "estimated"}}
    doc = {"schema": front.SCHEMA, "model": "smollm2", "title": "tiny", "device": {"device_name": "cpu-test"},
           "date": "2026-12-05",
           "commit": "abc", "command": "python benchmarks/front_benchmark.py", "recovery": "AdamW",
           "data": "random", "goal": "a goal", "metrics": [["exp_neg_kl", "held-out exp(-KL)", ".3f"],
                                                          ["top1_agreement", "top-1 agreement", ".3f"],
                                                          ["perplexity_ratio", "ppl ratio", ".2f"]],
           "original_answers": None, "rows": [row, {**row, "steps": 100, "figures": {**row["figures"], "exp_neg_kl": 0.6}}],
           "complete": False}
    text = front.markdown(doc)
    energy_lines = [line for line in text.splitlines() if "0.710 [0.650, 0.780]" in line]
    assert len(energy_lines) == 2 and all("ESTIMATED" in line for line in energy_lines)
    assert "Incomplete run" in text and "| 0.600 |" in text
    assert "2026-12-05 with `python benchmarks/front_benchmark.py` (commit abc)" in text
    assert text.rstrip().endswith("Reproduce: `python benchmarks/front_benchmark.py`")
    # Rows added later with --only: every run that made rows stays named.
    again = {**doc, "runs": front.runs_of(doc) + [{"date": "2026-12-06", "commit": "def",
                                                    "command": "python benchmarks/front_benchmark.py --only width:30"}]}
    assert "(commit abc); then 2026-12-06 with `python benchmarks/front_benchmark.py --only width:30` (commit def)" \
        in front.markdown(again)
    # A row re-run on another machine: the title and the runs name both, and every energy cell its machine.
    elsewhere = {**again, "runs": front.runs_of(doc) + [{**again["runs"][-1], "machine": "cpu-other"}],
                 "rows": [row, {**row, "family": "width", "energy": {**row["energy"], "ratio": 0.8,
                                                                    "machine": "cpu-other"}}]}
    text = front.markdown(elsewhere)
    assert text.startswith("# Fidelity-energy front: tiny (cpu-test, cpu-other)")
    assert "(commit abc, on cpu-test); then 2026-12-06" in text and "(commit def, on cpu-other)" in text
    assert text.rstrip().endswith("Reproduce: `python benchmarks/front_benchmark.py`, then "
                                  "`python benchmarks/front_benchmark.py --only width:30`")
    assert "0.710 [0.650, 0.780] ESTIMATED (cpu-test)" in text and "0.800 [0.650, 0.780] ESTIMATED (cpu-other)" in text
    pytest.importorskip("matplotlib")
    front.write_all(doc, tmp_path / "front-smollm2.json")
    page = (tmp_path / "front-smollm2.html").read_text()
    assert "ESTIMATED" in page and "data:image/png;base64," in page
    # A front's JSON brought back from another machine is rendered again here, and nothing else runs.
    returned = tmp_path / "gpu" / "front-smollm2.json"
    returned.parent.mkdir()
    returned.write_text((tmp_path / "front-smollm2.json").read_text())
    assert front.main(["--render", str(returned)]) == 0
    assert (returned.with_suffix(".md")).read_text() == (tmp_path / "front-smollm2.md").read_text()
    assert returned.with_suffix(".html").exists() and returned.with_suffix(".png").exists()
    with pytest.raises(SystemExit, match="no such file"):
        front.main(["--render", str(tmp_path / "missing.json")])
    (tmp_path / "other.json").write_text('{"schema": "energyprune.prune-benchmark/1"}')
    with pytest.raises(SystemExit, match="not a front"):
        front.main(["--render", str(tmp_path / "other.json")])


def test_width_of_a_cnn_is_its_coupled_channels_ranked_across_groups(front) -> None:
    pytest.importorskip("torch_pruning")
    from tests.vision_models import small_mobilenet_v3

    model, images = small_mobilenet_v3()
    calibration = [images]
    flops = front.Flops(model, images[:1])
    pruned, removed = front.width_cut(model, calibration, flops, 0.8, ("channel",))
    assert flops.ratio(pruned) <= 0.8
    smaller = front.remove_width(model, front.width_scores(model, calibration, ("channel",)),
                                 removed["width_fraction"] - 1 / 256, calibration)
    assert flops.ratio(smaller) > 0.8
    out = pruned(images)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    doc = {"date": "2026-12-05", "command": "x", "commit": "abc", "recovery": "AdamW", "data": "photos",
           "width_kinds": ["channel"]}
    assert "DependencyGraph" in front.intro(doc)[1] and "KV groups" not in front.intro(doc)[1]


def test_teacher_batches_continue_disjoint_training_prefixes_reproducibly(front, setup) -> None:
    model, calibration, _ = setup
    batches = front.teacher_batches(model, calibration, 5, seq_len=12, batch_size=2, prefix_tokens=4, chunk=3)
    assert [b["input_ids"].shape for b in batches] == [(2, 12), (2, 12), (1, 12)]
    rows = torch.cat([b["input_ids"] for b in batches])
    # Row i starts with the i-th 4-token window of the training rows (4 rows x 16 tokens: 16 windows).
    windows = torch.cat([b["input_ids"] for b in calibration]).reshape(-1, 4)
    assert torch.equal(rows[:, :4], windows[:5])
    assert all(b["use_cache"] is False and torch.equal(b["attention_mask"], torch.ones_like(b["input_ids"]))
               for b in batches)
    again = front.teacher_batches(model, calibration, 5, seq_len=12, batch_size=2, prefix_tokens=4, chunk=3)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(batches, again))
    with pytest.raises(ValueError, match="16 prefixes of 4 tokens, 17 asked"):
        front.teacher_batches(model, calibration, 17, seq_len=12, prefix_tokens=4)


def test_teacher_batches_are_read_back_from_their_cache_only_when_it_matches(front, setup, tmp_path,
                                                                              monkeypatch) -> None:
    model, calibration, _ = setup
    cache = tmp_path / "ids.pt"
    written = front.teacher_batches(model, calibration, 5, seq_len=12, batch_size=2, prefix_tokens=4, chunk=3,
                                    cache=cache)
    assert cache.exists()

    def no_generation(*args, **kwargs):
        raise AssertionError("the cache matched: nothing should be generated")

    monkeypatch.setattr(model, "generate", no_generation)
    read = front.teacher_batches(model, calibration, 5, seq_len=12, batch_size=2, prefix_tokens=4, cache=cache)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(written, read))
    # A file that is not what we wrote is not trusted: the text is written again.
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a tensor file")
    with pytest.raises(AssertionError, match="nothing should be generated"):
        front.teacher_batches(model, calibration, 5, seq_len=12, batch_size=2, prefix_tokens=4, cache=garbage)
    # Another seed, count or length is not what the file holds: the text is written again.
    for other in ({"seed": 1}, {"n_sequences": 4}, {"seq_len": 10}):
        arguments = {"n_sequences": 5, "seq_len": 12, **other}
        with pytest.raises(AssertionError, match="nothing should be generated"):
            front.teacher_batches(model, calibration, arguments.pop("n_sequences"), batch_size=2, prefix_tokens=4,
                                  cache=cache, **arguments)


def test_mixup_batches_are_made_on_demand_reproducibly_and_blend_pairs_of_crops(front) -> None:
    made = []

    def crops(sources, per_source, *, seed):
        made.append(seed)
        images = torch.stack([torch.full((3, 4, 4), float(100 * s + c)) for s in range(len(sources))
                              for c in range(per_source)])
        return images + seed, None

    batches = front.MixedCrops(("a", "b", "c"), batch_size=4, n_batches=5, seed=7, crops=crops)
    assert len(batches) == 5 and not made  # nothing is made before it is read
    first = batches[1]
    assert first.shape == (4, 3, 4, 4) and made == [7 * 1_000_003 + 1]
    assert torch.equal(batches[1], first) and torch.equal(batches[-4], first)
    assert not torch.equal(batches[2], first)
    # Each image is a blend of two crops of its batch: between the smallest and largest crop value.
    originals = crops(("a", "b", "c"), 2, seed=7 * 1_000_003 + 1)[0][:, 0, 0, 0]
    values = first[:, 0, 0, 0]
    assert (values >= originals.min()).all() and (values <= originals.max()).all()
    assert len(set(values.tolist()) - set(originals.tolist())) > 0  # not just the crops themselves
    assert [b.shape for b in batches[3:]] == [(4, 3, 4, 4)] * 2
    with pytest.raises(IndexError):
        batches[5]


def test_distillation_continues_where_it_stopped_without_copying_the_batches(front) -> None:
    rotated = front.Rotated([0, 1, 2, 3, 4], 7)
    assert len(rotated) == 5 and [rotated[i] for i in range(5)] == [2, 3, 4, 0, 1]
    assert rotated[1:3] == [3, 4] and rotated[6] == 3


def test_repack_recuts_token_batches_keeping_every_row_in_order(front) -> None:
    batches = [{"input_ids": torch.arange(i * 8, i * 8 + 8).reshape(2, 4), "use_cache": False} for i in range(3)]
    packed = front.repack(batches, 4)
    assert [b["input_ids"].shape for b in packed] == [(4, 4), (2, 4)]
    assert torch.equal(torch.cat([b["input_ids"] for b in packed]).flatten(), torch.arange(24))
    assert all(b["use_cache"] is False and torch.equal(b["attention_mask"], torch.ones(len(b["input_ids"]), 4,
                                                                                      dtype=torch.long))
               for b in packed)


@pytest.mark.parametrize("argv, message", [
    (["--distil-rows", "0"], "--distil-rows must be at least 1"),
    (["--model", "minilm", "--distil-rows", "8"], "--device and --distil-rows are for --model smollm2"),
    (["--model", "minilm", "--distil-data", "mixup"], "--distil-data mixup is for --model efficientnet"),
    (["--distil-data", "generated", "--generated-cache", "/"], "give a file in an existing folder"),
    (["--distil-data", "generated", "--generated-cache", "/no/such/folder/ids.pt"], "give a file in an existing folder"),
])
def test_options_that_do_not_apply_are_refused_before_any_model_loads(front, argv, message) -> None:
    with pytest.raises(SystemExit, match=message):
        front.main(argv)
