"""Does the axial blur, or the data set, decide whether pseudo-labels help? Chapter 7's k = 1 comparison.

Run from the repository root:  .venv/bin/python benchmarks/probe_axial_blur.py [--sigmas-z 1.0 1.7 2.5]
                                 [--data-seeds 0] [--seeds 0 1 2] [--threads 2]

The paper's argument is that single 2D planes are ambiguous at the tops and bottoms of neurons, where the
axial point-spread function smears each soma over neighbouring planes. This probe makes the "small" synthetic
data set (3 training volumes + 1 test volume, 32 planes) for each data seed (0 is chapter 7's) and axial PSF
sigma (1.7 um is the default, 2.5 um that of the "hard" preset), then runs the 2D model, the sparse 3D model
and the pseudo-label 3D model (lambda 0.5, hard pseudo-labels) at one annotated plane per volume with the
"sweep" budgets of chapter 7, for each seed. Nothing is tuned per method or per condition.

Measured on 2026-11-24 (2 cores; Dice mean over seeds 0-2 for 2D, 3D sparse, 3D pseudo): data seed 0 with
sigma_z 1.0 um: 0.838, 0.877, 0.912; 1.7 um: 0.861, 0.882, 0.878 (chapter 7 exactly); 2.5 um: 0.818, 0.831,
0.876. Data seed 1, 1.7 um: 0.471, 0.706, 0.787; data seed 2, 1.7 um: 0.874, 0.833, 0.841.

Prints one JSON line per (data seed, sigma_z, method, seed) with the test Dice, then one summary line per data
set with the mean and standard deviation of each method and the mean paired difference pseudo - sparse. About
4 min per data set with 3 seeds on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import json
import tempfile

import torch

from neuroseg_lite import experiment, synth

METHODS = ("2d", "3d_sparse", "3d_pseudo")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sigmas-z", type=float, nargs="+", default=[1.0, 1.7, 2.5])
    parser.add_argument("--data-seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    default = synth.make_config("small").psf_sigma_um
    with tempfile.TemporaryDirectory() as workdir:
        for data_seed in args.data_seeds:
            for sigma_z in args.sigmas_z:
                probe(data_seed, sigma_z, args.seeds, workdir, default)


def probe(data_seed: int, sigma_z: float, seeds, workdir, default_psf) -> None:
    """Run the three sparse-label methods on one synthetic data set for each training seed; print JSON lines."""
    dataset = synth.make_dataset(n_train=3, seed=data_seed, preset="small",
                                 psf_sigma_um=(sigma_z, default_psf[1], default_psf[2]))
    name = f"small-data{data_seed}-psfz{sigma_z:g}".replace(".", "p")
    data = experiment.prepare_data(dataset.train_images, dataset.train_labels, dataset.test_image,
                                   dataset.test_labels, dataset.spacing, name=name)
    table = experiment.sweep(data, n_slices=(1,), seeds=tuple(seeds), lams=(0.5,), methods=METHODS,
                             preset="sweep", workdir=workdir)
    condition = {"data_seed": data_seed, "sigma_z_um": sigma_z}
    for row in table.to_dict("records"):
        print(json.dumps({**condition, "method": row["method"], "seed": row["seed"],
                          "dice": round(row["dice"], 3), "precision": round(row["precision"], 3),
                          "recall": round(row["recall"], 3)}), flush=True)
    dice = table.pivot_table(index="seed", columns="method", values="dice")
    summary = {m: [round(float(dice[m].mean()), 3), round(float(dice[m].std()), 3)] for m in METHODS}
    gap = dice["3d_pseudo"] - dice["3d_sparse"]
    print(json.dumps({**condition, "dice_mean_std": summary, "pseudo_minus_sparse": round(float(gap.mean()), 3),
                      "pseudo_wins_every_seed": bool((gap > 0).all()),
                      "beyond_spread": bool(gap.mean() > max(dice["3d_pseudo"].std(), dice["3d_sparse"].std()))}),
          flush=True)


if __name__ == "__main__":
    main()
