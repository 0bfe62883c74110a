"""How the "sweep" preset of neuroseg_lite.experiment was chosen: 3D budgets against seeds, on a CPU.

Run from the repository root:  .venv/bin/python benchmarks/calibrate_sweep_preset.py [--seeds 0 1 2] [--threads 2]

Chapter 7 trains dozens of 3D U-Nets, so each must cost about half a minute on 2 CPU cores. For every candidate
budget this script trains the dense 3D model and the sparse one (k = 1 annotated plane per volume) on the "small"
synthetic data with each seed and scores them on the test volume. Pseudo-label models are deliberately not run:
the budget is chosen on the two baselines only, so that it cannot favour the method under test.

Rule: the cheapest candidate whose dense and sparse models reach Dice >= 0.7 on every seed
(no collapsed run) and whose mean dense Dice is within 0.01 of the slow reference (600 steps at lr 1e-3 with 8 base
channels). Measured on 2026-11-24 (2 cores, Dice for seeds 0, 1, 2, ~s per model):

    reference 600 steps, lr 1e-3   dense 0.917 0.948 0.947   sparse 0.885 0.887 0.913   45 s
    300 steps, lr 1e-3             dense 0.238 0.927 0.929   sparse 0.386 0.413 0.865   23 s  (collapses)
    300 steps, lr 3e-3             dense 0.912 0.890 0.938   sparse 0.825 0.846 0.875   24 s  (dense -0.025)
    400 steps, lr 3e-3             dense 0.921 0.944 0.927   sparse 0.849 0.895 0.901   31 s  -> "sweep"

The earlier "quick" preset (16 base channels, 250 steps, lr 1e-3) collapsed the same way as the second line.
Prints one JSON line per (candidate, method, seed), then a summary line per candidate. Takes ~12 min on 2 cores.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time

import numpy as np
import torch

from neuroseg_lite import experiment

CANDIDATES = {
    "ref-600-lr1e-3": {"steps": 600, "lr": 1e-3},
    "300-lr1e-3": {"steps": 300, "lr": 1e-3},
    "300-lr3e-3": {"steps": 300, "lr": 3e-3},
    "400-lr3e-3": {"steps": 400, "lr": 3e-3},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sweep_preset = experiment.PRESETS["sweep"]
    with tempfile.TemporaryDirectory() as workdir:
        data = experiment.synthetic_data(preset="small", seed=0, workdir=workdir)
        summary = {}
        for name, budget in CANDIDATES.items():
            preset = dataclasses.replace(sweep_preset, name=f"calib-{name}",
                                         overrides_3d={**sweep_preset.overrides_3d, **budget})
            pipeline = experiment.Pipeline(data, preset=preset, workdir=workdir, progress=False)
            scores = {"3d_dense": [], "3d_sparse": []}
            for seed in args.seeds:
                for method in scores:
                    start = time.perf_counter()
                    row = pipeline.evaluate(experiment.Run(method, n_slices=1, seed=seed))
                    scores[method].append(row["dice"])
                    print(json.dumps({"candidate": name, "method": method, "seed": seed, "dice": round(row["dice"], 3),
                                      "seconds": round(time.perf_counter() - start, 1)}), flush=True)
            summary[name] = {"dense_mean": round(float(np.mean(scores["3d_dense"])), 3),
                             "min_dice": round(float(min(scores["3d_dense"] + scores["3d_sparse"])), 3)}
        reference = summary["ref-600-lr1e-3"]["dense_mean"]
        for name, figures in summary.items():
            figures["passes_rule"] = figures["min_dice"] >= 0.7 and figures["dense_mean"] >= reference - 0.01
            print(json.dumps({"candidate": name, **figures}))


if __name__ == "__main__":
    main()
