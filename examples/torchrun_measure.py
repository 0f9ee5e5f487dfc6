"""Joules per global step of a model run by several processes, one GPU each.

    torchrun --nproc-per-node 2 examples/torchrun_measure.py --out torchrun.json
    torchrun --nproc-per-node 2 examples/torchrun_measure.py --backend estimated --quick  # no GPU

Every rank puts its replica on its own GPU (`cuda:LOCAL_RANK`; on a machine without GPUs all
ranks share the CPU), meters it, and rank 0 adds the ranks up, prints the result and writes the
JSON report. One inference is one global step: one call of the model on every rank. The CPU seen
by all the ranks of a host is counted once (from the lowest rank), not once per rank.
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch import nn

from energyprune.measure.distributed import distributed_context, local_device, measure_distributed, render_text
from energyprune.errors import EnergyPruneError
from energyprune.measure.meter import MeterConfig


def build_model(width: int = 1024, depth: int = 4) -> nn.Module:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.GELU()]
    return nn.Sequential(*layers)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="auto", help="auto, nvml, rapl, estimated, replay:PATH")
    parser.add_argument("--batch-size", type=int, default=32, help="samples per call on each rank")
    parser.add_argument("--out", help="write the combined JSON report here (rank 0)")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    parser.add_argument("--quick", action="store_true", help="short windows: a smoke test, not a figure to quote")
    args = parser.parse_args(argv)

    info = distributed_context()
    if info is None:
        print("run me under torchrun: torchrun --nproc-per-node 2 examples/torchrun_measure.py",
              file=sys.stderr)
        return 2
    device = local_device(info)
    torch.manual_seed(info.rank)  # each rank its own batch, as in data-parallel inference
    model = build_model().to(device).eval()
    inputs = torch.randn(args.batch_size, 1024, device=device)
    config = (MeterConfig(window_s=0.2, repeats=3, precision=0.0, idle_s=0.2, min_warmup_s=0.0,
                          max_warmup_s=1.0) if args.quick else MeterConfig())
    try:
        result = measure_distributed(model, inputs, backend=args.backend, config=config,
                                     out=args.out, force=args.force, label="mlp")
    except EnergyPruneError as error:
        if info.is_main:  # every rank raises the same line; print it once
            print(f"energyprune: error: {error}", file=sys.stderr)
        return error.exit_code
    if result is not None:
        sys.stdout.write(render_text(result.to_dict()))
        if args.out:
            print(f"energyprune: wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
