"""How the "cpu" preset of chapters 3-6 and 10 was chosen: the 3D U-Net's width and budget, on the baselines only.

Run from the repository root::

    .venv/bin/python benchmarks/calibrate_cpu_preset.py                 # every candidate, seeds 0-2
    .venv/bin/python benchmarks/calibrate_cpu_preset.py --candidates ref-16ch-600-lr1e-3 --seeds 1
    .venv/bin/python benchmarks/calibrate_cpu_preset.py --choose         # only print the choice

The book's default run must fit 30 minutes on 2 CPU cores (issue #9), and the 3D models of chapters 5 and 6 were
its largest cost: about 6 minutes each on a 2-core AMD EPYC with the earlier "cpu" preset, a U-Net with 16 base
channels trained for 600 steps at lr 1e-3 (the reference below). A step of a U-Net with 8 base channels costs
about a third as much (``benchmarks/bench_train3d.py``). Candidates, cheapest first (``cost_rank``):

    0  8ch-400-lr3e-3       8 base channels, 400 steps, lr 3e-3 (the "sweep" budget of chapter 7)
    1  8ch-600-lr3e-3       8 base channels, 600 steps, lr 3e-3
    2  16ch-400-lr1e-3      16 base channels, 400 steps, lr 1e-3 (added after 0 and 1 failed)
    3  ref-16ch-600-lr1e-3  16 base channels, 600 steps, lr 1e-3 (the earlier "cpu" preset)

The cost order is the step count times the step cost of the width; the measured seconds in the table are wall
times on a machine that other jobs shared, so they do not rank the candidates.

For each candidate and training seed, the dense 3D model and the sparse one at k = 2 (the chapters' ``N_SLICES``)
are trained on the chapters' data ("tutorial", data seed 0) and scored on its test volume. Pseudo-label models
are deliberately not run, so the choice cannot favour the method under test. Rule, fixed before any run (chapter
8's, :func:`neuroseg_lite.calibration.choose_budget`): the cheapest candidate whose mean dense Dice is above its
mean sparse Dice and within 0.01 of the reference's mean dense Dice; if none qualifies, the reference.
``runs.PRESETS["cpu"]`` is set to the choice by hand, and ``tests/test_calibrate_cpu_preset.py`` checks it
against the committed table.

Resumable, and several processes may share the work (e.g. one per seed): each finished run is a row of
``neuroseg_lite/data/cpu_calibration/calibration.csv``, runs already there are skipped, and ``grid.json`` keeps
the commands, versions, machines and times. ``--workdir`` may point at a book build's working folder: runs whose
models are cached there (same data, annotation, configs and seed) are only scored.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from neuroseg_lite import __version__, calibration, experiment, gridtables, runs

OUT = Path(__file__).resolve().parents[1] / "neuroseg_lite" / "data" / "cpu_calibration"
DATA_PRESET = "tutorial"
DATA_SEED = 0
K = 2
TRAIN_2D = TRAIN_3D = "cpu"  # the 2D and 3D training presets every candidate starts from
METHODS = ("3d_dense", "3d_sparse")
#: name -> (U-Net overrides, 3D training overrides), cheapest first; the last is the reference
CANDIDATES = {
    "8ch-400-lr3e-3": ({"base_channels": 8}, {"steps": 400, "lr": 3e-3}),
    "8ch-600-lr3e-3": ({"base_channels": 8}, {"steps": 600, "lr": 3e-3}),
    "16ch-400-lr1e-3": ({"base_channels": 16}, {"steps": 400, "lr": 1e-3}),
    "ref-16ch-600-lr1e-3": ({"base_channels": 16}, {"steps": 600, "lr": 1e-3}),
}


def candidate_preset(name: str) -> runs.ExperimentPreset:
    """The experiment preset of candidate ``name``."""
    model_3d, overrides_3d = CANDIDATES[name]
    return runs.ExperimentPreset(f"cpu-calibration-{name}", train_2d=TRAIN_2D, train_3d=TRAIN_3D,
                                 model_3d=dict(model_3d), overrides_3d=dict(overrides_3d))


def ranked(table: pd.DataFrame) -> pd.DataFrame:
    """The calibration rows of known candidates with their ``cost_rank`` (0: cheapest; the last: the reference)."""
    table = table[table["candidate"].isin(list(CANDIDATES))]
    return table.assign(cost_rank=table["candidate"].map(list(CANDIDATES).index))


def chosen_candidate(table: pd.DataFrame) -> str:
    """The candidate that the rule picks from the calibration rows ``table``."""
    rank = calibration.choose_budget(ranked(table), group="data", budget="cost_rank")
    return list(CANDIDATES)[rank]


def run_candidates(names, *, seeds, methods, workdir: Path, meta: dict, device: str) -> None:
    data = experiment.synthetic_data(preset=DATA_PRESET, seed=DATA_SEED, workdir=workdir)
    for name in names:
        pipeline = experiment.Pipeline(data, preset=candidate_preset(name), workdir=workdir, device=device,
                                       progress=False)
        for seed in seeds:
            for method in methods:
                done = gridtables.read_table(OUT / "calibration.csv", columns=["candidate", "method", "seed"])
                if ((done["candidate"] == name) & (done["method"] == method) & (done["seed"] == seed)).any():
                    continue
                started = time.perf_counter()
                row = pipeline.evaluate(experiment.Run(method, n_slices=K, seed=seed))
                row.update(candidate=name, machine=meta["this_machine"])
                gridtables.merge_into(OUT / "calibration.csv", pd.DataFrame([row]), ["key", "candidate"])
                gridtables.record_stage(meta, OUT / "grid.json", f"{name}, {method}, seed {seed}",
                                        seconds=time.perf_counter() - started, new_runs=1, runs=1)


def report() -> None:
    table = gridtables.read_table(OUT / "calibration.csv")
    if table.empty:
        print("no calibration rows yet")
        return
    table = ranked(table)
    budgets = calibration.budget_table(table, group="data", budget="cost_rank")
    for (_, rank), row in budgets.iterrows():
        seconds = table.loc[table["cost_rank"] == rank, "train_3d_seconds"].mean()
        print(json.dumps({"candidate": list(CANDIDATES)[rank], "dense": round(row["dense"], 3),
                          "sparse": round(row["sparse"], 3), "seeds": int(row["seeds"]),
                          "train_3d_seconds": round(float(seconds), 1), "passes": bool(row["passes"])}))
    complete = table.groupby("cost_rank")["seed"].nunique()
    if len(complete) == len(CANDIDATES) or budgets["passes"].any():
        print(json.dumps({"chosen": chosen_candidate(table)}))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", nargs="+", choices=list(CANDIDATES), default=list(CANDIDATES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="working folder for data and models (default: a temporary one)")
    parser.add_argument("--choose", action="store_true", help="only print the table's summary and choice")
    args = parser.parse_args(argv)
    if not args.choose:
        torch.set_num_threads(args.threads)
        meta = gridtables.open_meta(
            OUT / "grid.json", script="benchmarks/calibrate_cpu_preset.py", argv=argv,
            this_machine=gridtables.describe_machine(args.device),
            design={"candidates": args.candidates, "seeds": args.seeds},
            data_preset=DATA_PRESET, data_seed=DATA_SEED, k=K, package=__version__, torch=torch.__version__,
            numpy=np.__version__, threads=args.threads, device=args.device)
        with tempfile.TemporaryDirectory() as scratch:
            run_candidates(args.candidates, seeds=args.seeds, methods=args.methods,
                           workdir=args.workdir or Path(scratch), meta=meta, device=args.device)
    report()


if __name__ == "__main__":
    main()
