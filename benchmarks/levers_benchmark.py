"""Levers before pruning: `advise` on real models, and `prune --levers auto` against `prune` alone.

    python benchmarks/levers_benchmark.py                           # CPU: demo, SmolLM2-135M, MiniLM
    python benchmarks/levers_benchmark.py --models demo --prune demo
    python benchmarks/levers_benchmark.py --device cuda --models llama-config --prune llama-config  # GPU recipe

Writes `benchmarks/results/<device>/levers.{json,md}` (or under --out-dir). On a machine without
an energy counter (this project's CPU machines) every energy figure is ESTIMATED by the
utilisation model, and the tables say so on every row. Fidelity is checked on real text (gensim's
Lee corpus) for SmolLM2 and MiniLM, on random token ids for the demo and for `llama-config` (a
Llama-shaped model built from its config with random weights: no checkpoint travels to the GPU
machine). The prune comparison asks both runs for the same target and reports the fidelity each
keeps there, with the share of the saving that came from levers.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from energyprune.bench.session import device_record, results_dir, save  # noqa: E402
from energyprune.levers import candidate_levers  # noqa: E402
from energyprune.levers.advise import advise  # noqa: E402
from energyprune.measure.meter import MeterConfig  # noqa: E402

MODELS = ("demo", "smollm2", "minilm", "llama-config")


def build(name: str, device: torch.device, seq_len: int) -> dict[str, Any]:
    """The model, one call's inputs, a way to build other batch sizes, and fidelity batches."""
    if name == "demo":
        from energyprune.models.demo import build_demo_model

        model = build_demo_model().to(device).eval()
        vocab = model.embed.num_embeddings if hasattr(model, "embed") else 1000
        make = lambda n, seed=0: torch.randint(0, vocab, (n, seq_len), generator=torch.Generator().manual_seed(seed)).to(device)  # noqa: E731
        return {"model": model, "make": make, "fidelity": [make(4, 1), make(4, 2)], "fidelity_data": "random token ids",
                "criterion": "magnitude", "unit_kind": "block", "calibration": [make(4, 3)]}
    if name == "llama-config":
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(hidden_size=1024, intermediate_size=2816, num_hidden_layers=12, num_attention_heads=16,
                             num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048)
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).to(device).eval()
        make = lambda n, seed=0: {"input_ids": torch.randint(0, 32000, (n, seq_len), generator=torch.Generator().manual_seed(seed)).to(device)}  # noqa: E731
        return {"model": model, "make": make, "fidelity": [make(2, 1)], "fidelity_data": "random token ids (random weights)",
                "criterion": "cosine-block", "unit_kind": "block", "calibration": [make(2, 3), make(2, 4)]}
    from energyprune.models.zoo import calibration_batches, load_minilm, load_smollm2, text_corpus

    texts = text_corpus("lee_background")
    if name == "smollm2":
        model, tokenizer = load_smollm2()
    elif name == "minilm":
        model, tokenizer = load_minilm()
    else:
        raise SystemExit(f"unknown model {name!r}: {', '.join(MODELS)}")
    model = model.to(device).eval()
    batches = [{k: v.to(device) for k, v in b.items()} for b in calibration_batches(tokenizer, texts, seq_len, 8, 6)]

    def make(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
        rows = torch.cat([b["input_ids"] for b in batches])[:n]
        return {"input_ids": rows, "attention_mask": torch.ones_like(rows)}

    return {"model": model, "make": make, "fidelity": [batches[-1], batches[-2]],
            "fidelity_data": f"gensim lee_background text, 2 x 8 x {seq_len} tokens",
            "criterion": "cosine-block", "unit_kind": "block", "calibration": batches[:4]}


def advise_row(name: str, built: dict[str, Any], device: torch.device, config: MeterConfig,
               backend: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    levers = candidate_levers(device.type, 1)
    advice = advise(built["model"], built["make"](1), levers=levers, make_inputs=built["make"], backend=backend,
                    config=config, fidelity_batches=built["fidelity"], label=name,
                    on_lever=lambda lever, status, why: print(f"  {name} {lever}: {why or status}", flush=True))
    data = advice.to_dict()
    data["fidelity_data"] = built["fidelity_data"]
    data["duration_s"] = time.perf_counter() - t0
    return data


def prune_pair(name: str, built: dict[str, Any], target: str, config: MeterConfig, backend: str) -> dict[str, Any]:
    """The same target with `levers="auto"` and without levers: what each keeps."""
    from energyprune.budget import prune_to_energy

    out = {}
    inputs = built["make"](1)
    for label, levers in (("pruning alone", None), ("levers auto, then pruning", "auto")):
        t0 = time.perf_counter()
        result = prune_to_energy(built["model"], target, built["criterion"], unit_kind=built["unit_kind"],
                                 inputs=inputs, calibration=built["calibration"], backend=backend, config=config,
                                 levers=levers, max_steps=12,
                                 progress=lambda phase, f, msg: print(f"  {name} [{label}] {msg}", flush=True)
                                 if phase in ("step", "levers", "final") else None)
        out[label] = {"outcome": result.outcome, "energy_ratio": result.final.energy_ratio,
                      "energy_ratio_ci95": list(result.final.energy_ratio_ci95), "fidelity": result.final.fidelity,
                      "n_params": result.final.n_params, "n_params_original": result.original.n_params,
                      "levers": result.applied_levers, "ratio_from_levers": (result.levers or {}).get("ratio"),
                      "ratio_from_pruning": result.pruning_ratio, "steps": len(result.accepted_steps),
                      "provenance": result.provenance, "message": result.message,
                      "duration_s": time.perf_counter() - t0,
                      "levers_tried": (result.levers or {}).get("tried")}
    return out


def markdown(doc: dict[str, Any]) -> str:
    est = doc["estimated"]
    tag = " (ESTIMATED)" if est else ""
    lines = [f"# Levers before pruning ({doc['device']['device_name']})", "",
             f"Made {doc['date']} with `{doc['command']}` (commit {doc['commit']}).", ""]
    if est:
        lines += ["**ESTIMATED**: no energy counter on this machine; every joule below comes from energyprune's "
                  "utilisation model (CPU time of this process x power model), not a measurement. Ratios between "
                  "two runs on the same model are what the model can defend; a shared 2-core machine makes "
                  "thread levers especially noisy.", ""]
    for name, data in doc["advice"].items():
        base = data["baseline"]
        anatomy = base["anatomy"]
        lines += [f"## advise {name}", "",
                  f"Original: {base['per_sample_j']:.4g} J/sample{tag}, latency {base['latency_s']['median'] * 1e3:.3g} ms "
                  f"per call (batch {base['batch_size']}); {anatomy['statement']}. Fidelity on "
                  f"{data['fidelity_data']}.", "",
                  "| lever | J/sample" + tag + " | original alongside | ratio | 95% interval | fidelity | max abs diff "
                  "| verdict |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        rows = [r for r in data["levers"] if r["status"] == "measured"]
        if data.get("combined") and data["combined"]["status"] == "measured":
            rows.append(data["combined"])
        for r in rows:
            fid = r.get("fidelity") or {}
            value = fid.get("fidelity")
            alongside = r.get("original_per_sample_j")
            lines.append(f"| {r['name']}{' (lossy)' if r['lossy'] else ''} | {r['per_sample_j']:.4g} | "
                         f"{'n/a' if alongside is None else f'{alongside:.4g}'} | {r['ratio']:.3f} | "
                         f"{r['ratio_ci95'][0]:.3f} .. {r['ratio_ci95'][1]:.3f} | "
                         f"{'n/a' if value is None else f'{value:.5f}'} | {fid.get('max_abs_error', float('nan')):.2g} | "
                         f"{r['verdict']} |")
        skipped = [r for r in data["levers"] if r["status"] == "skipped"]
        if skipped:
            lines += ["", "Skipped: " + "; ".join(f"{r['name']} ({r['reason']})" for r in skipped) + "."]
        lines += ["", f"Worth it: {', '.join(data['worth_it']) or 'none'} ({data['duration_s']:.0f} s).", ""]
    for name, pair in doc["prune"].items():
        lines += [f"## prune {name} to {doc['target']}: levers first against pruning alone", "",
                  "| run | outcome | energy ratio" + tag + " | 95% interval | from levers | from pruning | fidelity | "
                  "params kept | steps | levers |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for label, r in pair.items():
            def f(v: Any, spec: str = ".3f") -> str:
                return "n/a" if v is None else format(v, spec)
            lines.append(f"| {label} | {r['outcome']} | {f(r['energy_ratio'])} | {f(r['energy_ratio_ci95'][0])} .. "
                         f"{f(r['energy_ratio_ci95'][1])} | {f(r['ratio_from_levers'])} | {f(r['ratio_from_pruning'])} | "
                         f"{f(r['fidelity'], '.4f')} | {r['n_params'] / r['n_params_original']:.1%} | {r['steps']} | "
                         f"{', '.join(r['levers']) or '-'} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", default="demo,smollm2,minilm", help=f"comma-separated: {', '.join(MODELS)}")
    parser.add_argument("--prune", default="demo", help="models to prune with and without levers ('' for none)")
    parser.add_argument("--target", default="-30%")
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--window-s", type=float, default=None)
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--out-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    window = args.window_s or (2.0 if device.type == "cuda" else 0.4)
    config = MeterConfig(window_s=window, repeats=args.repeats, precision=0.0, idle_s=1.0 if device.type == "cuda" else 0.5,
                         max_duration_s=60.0, min_warmup_s=0.2, max_warmup_s=2.0 if device.type == "cuda" else 0.6)
    out_dir = args.out_dir or results_dir(device)
    out_dir.mkdir(parents=True, exist_ok=True)
    import datetime
    import subprocess

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    doc: dict[str, Any] = {"schema": "energyprune.levers-benchmark/1", "device": device_record(device),
                           "date": datetime.date.today().isoformat(), "commit": commit or "unknown",
                           "command": "python benchmarks/levers_benchmark.py " + " ".join(argv or sys.argv[1:]),
                           "target": args.target, "advice": {}, "prune": {}, "estimated": None}
    names = [n for n in args.models.split(",") if n]
    pruned = [n for n in args.prune.split(",") if n]
    built_cache: dict[str, Any] = {}
    for name in dict.fromkeys(names + pruned):
        print(f"== {name}", flush=True)
        built_cache[name] = build(name, device, args.seq_len)
        if name in names:
            doc["advice"][name] = advise_row(name, built_cache[name], device, config, args.backend)
            doc["estimated"] = doc["advice"][name]["provenance"] == "estimated"
        if name in pruned:
            doc["prune"][name] = prune_pair(name, built_cache[name], args.target, config, args.backend)
            doc["estimated"] = any(r["provenance"] == "estimated" for r in doc["prune"][name].values())
        save(out_dir / "levers.json", doc, markdown(doc))  # after every model: a cut run keeps what it did
        del built_cache[name]
    print(f"wrote {out_dir / 'levers.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
