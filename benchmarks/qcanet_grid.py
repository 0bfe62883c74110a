"""Chapter 8's real-data comparison held to chapter 7's standard: a calibrated budget, 3 seeds, 2 folds (issue #9).

The QCANet embryo stacks (:func:`neuroseg_lite.datasets.load_qcanet`) give two folds: train on the 8-cell embryo
and test on the 16-cell one ("qcanet-8to16", chapter 8's default), and the other way round ("qcanet-16to8").

Stage 1, ``calibrate``: the 3D training budget. The "sweep" budget (400 steps) of chapter 7 was chosen on
synthetic data; on these stacks its dense model scored below a sparse one, so it is no upper bound. Candidate
budgets (3D steps, everything else as "sweep") are tried on the dense and the sparse 3D model only (k = 3, the
largest k of chapter 8), on both folds and seeds 0 and 1; pseudo-label models are deliberately not run, so the
budget cannot favour the method under test. The dense model runs at every candidate; the sparse one from the
cheapest candidate up, stopping at the first that passes (a candidate without sparse rows cannot pass, so the
choice is the same as with every row). Rule, fixed before any run: the cheapest candidate whose mean dense
Dice is above the mean sparse Dice on each fold and within 0.01 of the longest candidate's mean dense Dice (on
each fold); if none qualifies, the longest. The chosen budget is ``runs.PRESETS["qcanet"]``
(a test checks that the preset matches the calibration table).

Stage 2, ``grid``: with that preset, on both folds, seeds 0-2 and k in {1, 3}: the 2D model, the 3D U-Net on the
annotated planes only, the 3D U-Net with pseudo-labels (lambda 0.5) and the dense bound once per seed. Pairs
share the fold, the annotated planes and the seed.

Resumable like ``paired_grid.py``: runs are cached in the working folder, finished rows are in the tables, and
on a new machine the committed rows count as done. Tables (small, committed, package data so chapter 8 reads
them on Colab) in ``neuroseg_lite/data/qcanet_grid/``: ``calibration.csv`` (rows + ``fold``, ``candidate``,
``steps_3d``), ``results.csv`` (rows + ``fold``) and ``grid.json`` (command, versions, machines, times).

Usage (2 CPU cores shared with another grid: about 100 s per 400 steps of a 3D model, so about 1.5 hours for
the calibration and 1 hour for the grid)::

    .venv/bin/python benchmarks/qcanet_grid.py                       # both stages
    .venv/bin/python benchmarks/qcanet_grid.py --stages calibrate --calibration-seeds 0 1 2
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from neuroseg_lite import __version__, calibration, experiment, gridtables, runs

OUT = Path(__file__).resolve().parents[1] / "neuroseg_lite" / "data" / "qcanet_grid"
FOLDS = calibration.QCANET_FOLDS
BASE_PRESET = "sweep"
CANDIDATE_STEPS = (400, 800, 1600)  # 3D steps; 400 is "sweep" itself
CALIBRATION_K = 3
K_VALUES = calibration.QCANET_K_VALUES
LAM = 0.5


def candidate_preset(steps: int) -> runs.ExperimentPreset:
    """The "sweep" preset with ``steps`` 3D training steps (the one knob calibrated here)."""
    base = runs.resolve_preset(BASE_PRESET)
    return dataclasses.replace(base, name=f"qcanet-calibration-{steps}",
                               overrides_3d={**base.overrides_3d, "steps": steps})


def store(name: str, rows: pd.DataFrame) -> None:
    """Add ``rows`` to the committed table ``name`` (rows with the same key and candidate are replaced)."""
    gridtables.merge_into(OUT / name, rows, ["key", "candidate"] if "candidate" in rows else ["key"])


def run_sweep(data, *, stored_name: str, workdir: Path, meta: dict, reuse: pd.DataFrame | None = None,
              **sweep_options) -> tuple[pd.DataFrame, int]:
    """``experiment.sweep`` whose working results file starts from the committed rows (a new machine).

    ``reuse`` holds more committed rows that count as done (their keys say whether a run matches them).
    Returns the rows (with ``fold`` and ``machine``) and how many of them are not in the committed tables.
    """
    results_file = workdir / "results" / f"qcanet_{Path(stored_name).stem}_{data.name}.csv"
    stored = pd.concat([gridtables.read_table(OUT / stored_name), reuse], ignore_index=True)
    gridtables.seed_working_file(results_file, stored, data_name=data.name,
                                 drop=["fold", "candidate", "steps_3d", "machine"])
    table = experiment.sweep(data, workdir=workdir, results_file=results_file, **sweep_options)
    new_runs = int((~table["key"].isin(stored.get("key", pd.Series(dtype=str)))).sum())
    machines = gridtables.machines_of(table["key"], stored, meta["this_machine"])
    return table.assign(fold=data.name, machine=machines), new_runs


def record_done(meta: dict, done: str, *, started: float, runs_made: int, new_runs: int) -> None:
    gridtables.record_stage(meta, OUT / "grid.json", done, seconds=time.perf_counter() - started,
                            new_runs=new_runs, runs=runs_made)


def calibrate(*, seeds, steps_list, workdir: Path, meta: dict, device: str, folds=tuple(FOLDS)):
    """The calibration stage: the dense model at every candidate, then the sparse one from the cheapest up.

    Sparse models stop at the first candidate that passes the rule on every fold of ``folds``: a candidate
    without sparse rows cannot pass, so the costlier candidates are then not needed to make the same choice.
    With one process per fold, a last run on both folds fills in what the rule then still needs.
    """
    steps_list = sorted(steps_list)
    data = {fold: calibration.qcanet_fold(fold) for fold in folds}

    def run(method: str, steps: int) -> None:
        started = time.perf_counter()
        preset = candidate_preset(steps)
        new_runs = 0
        for fold_data in data.values():
            rows, new = run_sweep(fold_data, stored_name="calibration.csv", workdir=workdir, meta=meta,
                                  n_slices=[CALIBRATION_K], seeds=seeds, lams=[LAM], methods=[method],
                                  preset=preset, device=device)
            store("calibration.csv", rows.assign(candidate=preset.name, steps_3d=steps))
            new_runs += new
        record_done(meta, f"calibration: {method}, {steps} steps", started=started,
                    runs_made=len(folds) * len(seeds), new_runs=new_runs)

    for steps in steps_list:
        run("3d_dense", steps)
    for steps in steps_list:
        run("3d_sparse", steps)
        table = pd.read_csv(OUT / "calibration.csv")
        table = table[table["seed"].isin(seeds) & table["steps_3d"].isin(steps_list) & table["fold"].isin(folds)]
        at = calibration.budget_table(table).xs(steps, level="steps_3d")
        if len(at) == len(folds) and at["passes"].all():
            break
    if set(folds) != set(FOLDS):
        print(f"calibrated {list(folds)} only: run the stage on every fold to choose the budget", flush=True)
        return None
    table = pd.read_csv(OUT / "calibration.csv")
    chosen = calibration.choose_budget(table[table["seed"].isin(seeds)])
    meta.update(chosen_steps_3d=chosen, calibration_seeds=list(seeds))
    gridtables.write_meta(OUT / "grid.json", meta)
    print(json.dumps({"chosen_steps_3d": chosen}), flush=True)
    return chosen


def run_grid(*, seeds, workdir: Path, meta: dict, device: str, folds=tuple(FOLDS)) -> None:
    chosen = meta.get("chosen_steps_3d")
    preset = runs.PRESETS.get("qcanet")
    if preset is None or preset.overrides_3d.get("steps") != chosen:
        raise SystemExit(f"runs.PRESETS['qcanet'] must be the calibrated budget ({chosen} 3D steps, "
                         f"{BASE_PRESET!r} otherwise); it is {preset}. Run the calibrate stage, then set it.")
    # The calibration's runs at the chosen budget are grid runs too: equal row keys mean equal data, annotation,
    # configs, seed and scoring (the preset's name is not part of a key), so they are not trained again.
    calibrated = gridtables.read_table(OUT / "calibration.csv")
    if len(calibrated):
        calibrated = calibrated[calibrated["candidate"] == candidate_preset(chosen).name]
        calibrated = calibrated.drop(columns=["candidate", "steps_3d"]).assign(preset="qcanet")
    data = {fold: calibration.qcanet_fold(fold) for fold in folds}
    # One seed at a time, so that a stopped session leaves complete pairs (all methods of a seed) committed.
    for seed in seeds:
        for fold in folds:
            started = time.perf_counter()
            rows, new_runs = run_sweep(data[fold], stored_name="results.csv", workdir=workdir, meta=meta,
                                       reuse=calibrated, n_slices=list(K_VALUES), seeds=[seed], lams=[LAM],
                                       preset="qcanet", device=device)
            store("results.csv", rows)
            record_done(meta, f"grid: {fold}, seed {seed}", started=started, runs_made=len(rows),
                        new_runs=new_runs)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", nargs="+", choices=["calibrate", "grid"], default=["calibrate", "grid"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds of the grid")
    parser.add_argument("--calibration-seeds", type=int, nargs="+", default=[0, 1],
                        help="training seeds of the calibration")
    parser.add_argument("--steps", type=int, nargs="+", default=list(CANDIDATE_STEPS),
                        help="candidate 3D budgets (steps) of the calibration")
    parser.add_argument("--folds", nargs="+", choices=list(FOLDS), default=list(FOLDS),
                        help="folds (one process per fold can share the tables; the budget is chosen by a "
                             "calibrate stage on every fold)")
    parser.add_argument("--workdir", type=Path, default=Path("neuroseg_work"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    # the grid's design is the union of its commands' (e.g. one process per fold)
    meta = gridtables.open_meta(
        OUT / "grid.json", script="benchmarks/qcanet_grid.py", argv=argv,
        this_machine=gridtables.describe_machine(args.device),
        design={"candidate_steps": args.steps, "seeds": args.seeds, "folds": args.folds},
        base_preset=BASE_PRESET, calibration_k=CALIBRATION_K, k_values=list(K_VALUES), lam=LAM,
        package=__version__, torch=torch.__version__, numpy=np.__version__, threads=args.threads)
    if "calibrate" in args.stages:
        calibrate(seeds=args.calibration_seeds, steps_list=args.steps, workdir=args.workdir, meta=meta,
                  device=args.device, folds=args.folds)
    if "grid" in args.stages:
        run_grid(seeds=args.seeds, workdir=args.workdir, meta=meta, device=args.device, folds=args.folds)


if __name__ == "__main__":
    main()
