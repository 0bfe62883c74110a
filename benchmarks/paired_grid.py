"""The powered, paired comparison of chapter 7: every sparse method on many synthetic data sets (issue #9).

For each data seed (a new synthetic data set of the "tall" preset: 3 training volumes, 1 test volume and
1 validation volume of 128 x 128 x 128 voxels), each training seed and each number k of annotated planes per
training volume, it trains and scores the 2D model, the 3D U-Net on the annotated planes only and the 3D U-Net
with pseudo-labels, and once per training seed the dense upper bound, all with the "sweep_curves" budgets
(the "sweep" budgets of chapter 7 plus learning curves on the validation volume). Pairs of runs share the data
set, the annotated planes and the training seed.

Resumable: every run is cached in the working folder and every finished row is in the results table, so the
same command continues an interrupted grid (on any machine: rows keep the machine they came from). The tables
are small and committed, in ``neuroseg_lite/data/paired_grid/`` (package data, so chapter 7 reads them on Colab):

- ``results.csv``: one row per run, the columns of :meth:`neuroseg_lite.experiment.Pipeline.evaluate` plus
  ``data_seed`` and ``machine``;
- ``curves.csv``: validation Dice against step and training seconds of every 3D run (``key`` joins it);
- ``pseudo.csv``: per data set, k and seed, the pseudo-labels' scores on the unannotated training voxels and
  the neurons crossed by an annotated plane;
- ``ablations.csv``: at the sparsest k, on the first data sets, the pseudo-label model with other lambdas, soft
  pseudo-labels, the "global" loss normalisation and the prior-corrected 2D model (same columns as results);
- ``blur.csv``: one realism knob, the axial blur: at the sparsest k, on the first data sets and the first
  training seed, the 2D, 3D-sparse and pseudo-label models on the same data set made with other axial PSF
  sigmas (results columns + ``data_seed``, ``sigma_z_um``, ``machine``; the default sigma's runs are the main
  grid's, whose data the stage checks to be the very same);
- ``grid.json``: the command, package and torch versions, machines and times.

It runs k by k (the sparsest first, on every data set), so a grid stopped early has complete pairs at the
sparsest budgets; the ablations follow the sparsest k, the axial-blur stage comes last. ``--estimate`` prints
the hours it takes on 2 CPU cores and on one GPU (:func:`neuroseg_lite.paired.estimate_grid_hours`, from the
stage times of the stored rows and an assumed GPU factor) and exits. ``--device cuda`` runs the same budgets
on a GPU (on Colab: clone the repository, install it, pick a GPU runtime); rows record the machine, the GPU's
name included, and keys do not depend on the device, so a GPU extends the grid (new ``--data-seeds``) rather
than redoing its rows. Usage::

    .venv/bin/python benchmarks/paired_grid.py                      # the default grid
    .venv/bin/python benchmarks/paired_grid.py --estimate           # its hours, on 2 CPU cores and on a GPU
    .venv/bin/python benchmarks/paired_grid.py --data-seeds 0 1 --threads 1
    python benchmarks/paired_grid.py --device cuda --data-seeds 8 9 10 11   # on a GPU
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from neuroseg_lite import __version__, experiment, gridtables, paired, sparse, synth
from neuroseg_lite.utils import select_device

OUT = Path(__file__).resolve().parents[1] / "neuroseg_lite" / "data" / "paired_grid"
DATA_PRESET = "tall"
PRESET = "sweep_curves"
LAM = 0.5
METHODS = ("2d", "3d_sparse", "3d_pseudo", "3d_dense")
ABLATION_LAMS = [0.25, 1.0]  # besides LAM, in the main grid
BLUR_METHODS = ("2d", "3d_sparse", "3d_pseudo")
BLUR_SIGMAS_Z = [1.0, 2.5]  # axial PSF sigmas (um) besides the preset's; 2.5 is the "hard" preset's


def working_results(data, *, workdir: Path, stored_name: str, prefix: str) -> tuple[Path, pd.DataFrame]:
    """The sweep's results file in the working folder (seeded from the committed table on a new machine)."""
    results_file = workdir / "results" / f"{prefix}_{data.name}.csv"
    stored = gridtables.read_table(OUT / stored_name)
    gridtables.seed_working_file(results_file, stored, data_name=data.name)
    return results_file, stored


def record_done(meta: dict, done: str, *, started: float, rows: pd.DataFrame, stored: pd.DataFrame) -> None:
    new_runs = int((~rows["key"].isin(stored.get("key", pd.Series(dtype=str)))).sum())
    gridtables.record_stage(meta, OUT / "grid.json", done, seconds=time.perf_counter() - started,
                            new_runs=new_runs, runs=len(rows))


def run_data_set(data_seed: int, *, seeds, k_values, workdir: Path, meta: dict, device: str = "cpu") -> None:
    data = experiment.synthetic_data(preset=DATA_PRESET, seed=data_seed, n_val=1, workdir=workdir)
    results_file, stored = working_results(data, workdir=workdir, stored_name="results.csv", prefix="paired_grid")
    started = time.perf_counter()
    rows = experiment.sweep(data, n_slices=k_values, seeds=seeds, lams=[LAM], methods=METHODS, preset=PRESET,
                            workdir=workdir, results_file=results_file, device=device)
    pipe = experiment.Pipeline(data, preset=PRESET, workdir=workdir, device=device, progress=False)
    rows = rows.assign(data_seed=data_seed)
    rows["machine"] = gridtables.machines_of(rows["key"], stored, meta["this_machine"])
    gridtables.merge_into(OUT / "results.csv", rows, ["key"])

    # curves and pseudo-label scores of committed rows are committed too (recomputing them would retrain)
    have_curves = set(gridtables.read_table(OUT / "curves.csv").get("key", []))
    runs = experiment.grid(methods=METHODS, n_slices=k_values, seeds=seeds, lams=[LAM])
    curves = [pipe.learning_curve(run) for run in runs
              if run.spec.network == "unet3d" and pipe.row_key(run) not in have_curves]
    if curves:
        curves = pd.concat(curves, ignore_index=True).assign(data_seed=data_seed)
        gridtables.merge_into(OUT / "curves.csv", curves, ["key", "step"])

    have_pseudo = {(row["data"], row["n_slices"], row["seed"])
                   for row in gridtables.read_table(OUT / "pseudo.csv").to_dict("records")}
    quality = []
    for k in k_values:
        crossed = [sparse.objects_crossed(labels, annotation)
                   for labels, annotation in zip(data.train_labels, pipe.sparse_labels(k))]
        for seed in seeds:
            if (data.name, k, seed) in have_pseudo:
                continue
            scores = pipe.pseudo_label_scores(n_slices=k, seed=seed)
            quality.append({"data": data.name, "data_seed": data_seed, "n_slices": k, "seed": seed,
                            "annotated_fraction": float(np.mean([a.fraction for a in pipe.sparse_labels(k)])),
                            "neurons_crossed": sum(c for c, _ in crossed), "neurons": sum(n for _, n in crossed),
                            **{f"pseudo_{name}": scores[name] for name in ("dice", "precision", "recall")}})
    if quality:
        gridtables.merge_into(OUT / "pseudo.csv", pd.DataFrame(quality), ["data", "n_slices", "seed"])
    record_done(meta, f"data seed {data_seed}, k {k_values}", started=started, rows=rows, stored=stored)


def run_ablations(data_seed: int, *, seeds, k: int, workdir: Path, meta: dict, device: str = "cpu") -> None:
    """The pseudo-label method's knobs at one k, paired with its default (lambda 0.5, hard, "paper")."""
    data = experiment.synthetic_data(preset=DATA_PRESET, seed=data_seed, n_val=1, workdir=workdir)
    results_file, stored = working_results(data, workdir=workdir, stored_name="ablations.csv",
                                           prefix="paired_grid_ablations")
    started = time.perf_counter()
    common = {"n_slices": [k], "seeds": seeds, "workdir": workdir, "results_file": results_file, "device": device}
    parts = [
        experiment.sweep(data, lams=ABLATION_LAMS, methods=["3d_pseudo"], preset=PRESET, **common),
        experiment.sweep(data, lams=[LAM], pseudo_modes=["soft"], methods=["3d_pseudo"], preset=PRESET, **common),
        experiment.sweep(data, lams=[LAM], loss_normalizations=["global"], methods=["3d_pseudo"], preset=PRESET,
                         **common),
        experiment.sweep(data, lams=[LAM], methods=["2d", "3d_pseudo"],
                         preset=experiment.preset_variant(PRESET, prior_correction=True), **common),
    ]
    rows = pd.concat(parts, ignore_index=True).drop_duplicates("key").assign(data_seed=data_seed)
    rows["machine"] = gridtables.machines_of(rows["key"], stored, meta["this_machine"])
    gridtables.merge_into(OUT / "ablations.csv", rows, ["key"])
    record_done(meta, f"ablations: data seed {data_seed}, k {k}", started=started, rows=rows, stored=stored)


def blur_data(data_seed: int, sigma_z: float) -> experiment.Data:
    """Data set ``data_seed`` of the grid made with the axial PSF sigma ``sigma_z`` (y and x: the preset's)."""
    default = synth.make_config(DATA_PRESET).psf_sigma_um
    dataset = synth.make_dataset(n_train=3, seed=data_seed, preset=DATA_PRESET, n_val=1,
                                 psf_sigma_um=(float(sigma_z), default[1], default[2]))
    name = f"synth-{DATA_PRESET}-seed{data_seed}-psfz{sigma_z:.1f}".replace(".", "p")
    return experiment.prepare_data(dataset.train_images, dataset.train_labels, dataset.test_image,
                                   dataset.test_labels, dataset.spacing, name=name,
                                   val_image=dataset.val_images[0], val_labels=dataset.val_labels[0])


def same_data(made: experiment.Data, stored: experiment.Data) -> bool:
    """Whether two data sets hold the very same volumes, labels and spacing (their content digests)."""
    return all(getattr(made, d) == getattr(stored, d) for d in ("train_digest", "test_digest", "val_digest"))


def run_blur(data_seed: int, *, sigmas_z, seeds, k: int, workdir: Path, meta: dict, device: str = "cpu") -> None:
    """The sparse methods at one k on data set ``data_seed`` made with each axial blur in ``sigmas_z``.

    The preset's own sigma is the main grid's cell when this code path makes the main grid's data exactly
    (checked by content digest); otherwise it is run here too.
    """
    default = synth.make_config(DATA_PRESET).psf_sigma_um[0]
    main = experiment.synthetic_data(preset=DATA_PRESET, seed=data_seed, n_val=1, workdir=workdir)
    pipe = experiment.Pipeline(main, preset=PRESET, workdir=workdir, device=device, progress=False)
    cell = experiment.grid(methods=BLUR_METHODS, n_slices=[k], seeds=seeds, lams=[LAM])
    done = set(gridtables.read_table(OUT / "results.csv").get("key", []))
    # the main grid's cell stands for the default sigma only if its data is exactly this path's and it is done
    identical = same_data(blur_data(data_seed, default), main) and all(pipe.row_key(run) in done for run in cell)
    meta.setdefault("blur", {}).update(default_sigma_z_um=default, methods=list(BLUR_METHODS), k=k)
    meta["blur"].setdefault("default_is_main_grid", {})[str(data_seed)] = identical
    started, parts = time.perf_counter(), []
    stored_before = gridtables.read_table(OUT / "blur.csv")
    for sigma_z in sorted({float(s) for s in sigmas_z} | (set() if identical else {default})):
        data = blur_data(data_seed, sigma_z)
        results_file, stored = working_results(data, workdir=workdir, stored_name="blur.csv",
                                               prefix="paired_grid_blur")
        rows = experiment.sweep(data, n_slices=[k], seeds=seeds, lams=[LAM], methods=BLUR_METHODS, preset=PRESET,
                                workdir=workdir, results_file=results_file, device=device)
        rows = rows.assign(data_seed=data_seed, sigma_z_um=sigma_z,
                           machine=gridtables.machines_of(rows["key"], stored, meta["this_machine"]))
        parts.append(rows)
    rows = pd.concat(parts, ignore_index=True)
    gridtables.merge_into(OUT / "blur.csv", rows, ["key"])
    record_done(meta, f"axial blur: data seed {data_seed}, k {k}, sigma_z {sorted(set(rows['sigma_z_um']))}",
                started=started, rows=rows, stored=stored_before)


def print_estimate(args) -> None:
    """The grid's hours on 2 CPU cores and on one GPU as one JSON object (trains nothing)."""
    results = paired.load_stored_grid(OUT).results
    table = paired.estimate_grid_hours(results, speedup=args.speedup, data_seeds=len(args.data_seeds),
                                       seeds=len(args.seeds), k_values=args.k,
                                       ablation_data_seeds=len(args.ablation_data_seeds),
                                       blur_data_seeds=len(args.blur_data_seeds), blur_seeds=len(args.blur_seeds),
                                       blur_sigmas=len(args.blur_sigmas_z))
    parts = table.groupby("part", sort=False)[["cpu_hours", "gpu_hours"]].sum().round(2)
    print(json.dumps({"cpu_hours": round(float(table["cpu_hours"].sum()), 2),
                      "gpu_hours": round(float(table["gpu_hours"].sum()), 2),
                      "gpu_speedup": args.speedup,
                      "gpu_speedup_is": "assumed" if args.speedup == paired.ASSUMED_GPU_SPEEDUP else "given",
                      "parts": parts.to_dict("index"), "from_rows": len(results),
                      "cpu": "2 cores, the stored rows' median stage times"}, indent=2))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-seeds", type=int, nargs="+", default=list(range(8)))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training seeds")
    parser.add_argument("--k", type=int, nargs="+", default=[1, 2, 4], help="annotated planes per volume")
    parser.add_argument("--workdir", type=Path, default=Path("neuroseg_work"))
    parser.add_argument("--ablation-data-seeds", type=int, nargs="*", default=[0, 1, 2],
                        help="data sets of the ablations (at the sparsest k, after its main grid)")
    parser.add_argument("--blur-data-seeds", type=int, nargs="*", default=[0, 1, 2],
                        help="data sets of the axial-blur stage (at the sparsest k, after everything else)")
    parser.add_argument("--blur-seeds", type=int, nargs="+", default=[0], help="training seeds of the blur stage")
    parser.add_argument("--blur-sigmas-z", type=float, nargs="+", default=BLUR_SIGMAS_Z,
                        help="axial PSF sigmas in um, besides the preset's")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help='"cpu", or "cuda" for the same budgets on a GPU')
    parser.add_argument("--estimate", action="store_true",
                        help="print the grid's hours on 2 CPU cores and on one GPU as JSON and exit")
    parser.add_argument("--speedup", type=float, default=paired.ASSUMED_GPU_SPEEDUP,
                        help="GPU over 2 CPU cores, for --estimate (default: the assumed factor)")
    args = parser.parse_args(argv)
    if args.estimate:
        print_estimate(args)
        return
    args.device = str(select_device(args.device))  # a clear error at once when "cuda" is asked for and missing
    torch.set_num_threads(args.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    # the grid's design is the union of its commands' (e.g. one process per group of data seeds)
    meta = gridtables.open_meta(
        OUT / "grid.json", script="benchmarks/paired_grid.py", argv=argv,
        this_machine=gridtables.describe_machine(args.device),
        design={"seeds": args.seeds, "k_values": args.k, "data_seeds": args.data_seeds},
        data_preset=DATA_PRESET, preset=PRESET, lam=LAM, package=__version__, torch=torch.__version__,
        numpy=np.__version__, threads=args.threads, device=args.device)
    # the sparsest k on every data set first: a grid stopped early has its most important column complete
    common = {"workdir": args.workdir, "meta": meta, "device": args.device}
    for k in args.k:
        for data_seed in args.data_seeds:
            run_data_set(data_seed, seeds=args.seeds, k_values=[k], **common)
        if k == min(args.k):
            for data_seed in args.ablation_data_seeds:
                run_ablations(data_seed, seeds=args.seeds, k=k, **common)
    # last, so that it delays neither the main grid nor the ablations
    for data_seed in args.blur_data_seeds:
        run_blur(data_seed, sigmas_z=args.blur_sigmas_z, seeds=args.blur_seeds, k=min(args.k), **common)


if __name__ == "__main__":
    main()
