"""Whole-stack 3D prediction: ``neuroseg_lite.infer.predict_volume`` against MONAI's sliding-window inferer.

Run from the repository root:  .venv/bin/python benchmarks/bench_infer3d.py [--steps 100] [--threads 2]
MONAI is a benchmark-only extra (``.venv/bin/pip install monai``); the package never imports it.

1. Trains a 3D U-Net briefly (``train_3d`` on the raw stacks with its default intensity normalisation, "cpu"
   preset shortened to ``--steps``, dense labels of three synthetic "small" stacks) so that both sides blend the
   outputs of a real model, not of random weights, and saves it (``checkpoint.save_model``) in a temporary folder.
2. Builds a 64 x 512 x 512 test stack from four synthetic "tutorial" stacks (64 x 256 x 256, each normalised
   with ``normalize_percentile``) laid side by side, saved as .npy.
3. Runs each side in its own subprocess, so each peak memory is its own:
   (a) ours: ``predict_volume(network, volume)`` at its defaults, with the bare network (``TrainedModel.network``)
       on the already normalised volume, so that both sides get the very same input and no normalisation is timed;
   (b) MONAI used the usual way: ``sliding_window_inference`` on the whole volume as a (1, 1, Z, Y, X) tensor,
       roi_size = the training patch (16, 64, 64), sw_batch_size=4, overlap=0.5, mode="gaussian", under
       ``torch.inference_mode``, then ``torch.sigmoid``.
   Both load the same model file with ``checkpoint.load_model`` and the whole volume with ``np.load`` before
   timing.
4. Computes an exact reference: one forward pass of the untiled central 64 x 256 x 256 block (a third
   subprocess). The default U-Net's receptive field reaches 46 voxels in y and x, so on the central
   64 x 128 x 128 of that block this equals a whole-volume pass (no tiles, no blending) up to float rounding.
5. Prints one JSON line: voxels/s of each side, speedup (ours over MONAI), peak memory, agreement Dice of the
   two outputs thresholded at 0.5, each side's Dice against the exact reference on the central block and
   against the synthetic ground truth.

Memory keys: ``*_peak_mb`` is the peak resident memory (VmHWM, reset through /proc/self/clear_refs just
before the call) minus the resident memory just before the call, i.e. what the inference itself needed on
top of the loaded model and input volume; ``*_peak_abs_mb`` is the process's absolute peak (VmHWM; not
ru_maxrss, which a child inherits from its parent through fork), which also counts the Python/torch runtime,
the model, the float32 input volume (64 MiB) and, for MONAI, MONAI's import.
Timings on a shared machine vary with its load; the two sides run one after the other (``--repeats`` > 1
alternates them and keeps each side's fastest run).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TEST_SHAPE = (64, 512, 512)
MONAI_SW_BATCH = 4
MONAI_OVERLAP = 0.5
# Untiled reference block (all of z) and, inside it, the part at least 64 voxels from its y/x sides.
EXACT_BLOCK = (slice(None), slice(128, 384), slice(128, 384))
EXACT_CORE = (slice(None), slice(64, 192), slice(64, 192))  # within the block
CORE_IN_VOLUME = (slice(None), slice(192, 320), slice(192, 320))


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not found in /proc/self/status")


def _reset_peak() -> bool:
    """Reset the VmHWM high-water mark (Linux >= 4.0); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def worker(side: str, workdir: Path, threads: int) -> None:
    """Run one side in this (fresh) process and print its JSON result."""
    import gc

    import torch

    from neuroseg_lite.checkpoint import load_model

    torch.set_num_threads(threads)
    if side == "monai":
        from monai.inferers import sliding_window_inference
    else:
        from neuroseg_lite.infer import predict_volume
    trained = load_model(workdir / "model.pt", kind="unet3d", device="cpu")
    model, patch = trained.network, tuple(trained.train_config.patch_size)
    volume = np.load(workdir / "volume.npy")
    gc.collect()
    peak_so_far = _status_mb("VmHWM")
    peak_reset = _reset_peak()
    before = _status_mb("VmRSS")
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    if side == "ours":
        probability = predict_volume(model, volume, device="cpu")
    elif side == "exact":
        with torch.inference_mode():
            block = np.ascontiguousarray(volume[EXACT_BLOCK])
            probability = torch.sigmoid(model(torch.from_numpy(block)[None, None]))[0, 0].numpy()
    else:
        with torch.inference_mode():
            inputs = torch.from_numpy(volume)[None, None]
            logits = sliding_window_inference(inputs, roi_size=patch, sw_batch_size=MONAI_SW_BATCH, predictor=model,
                                              overlap=MONAI_OVERLAP, mode="gaussian")
            probability = torch.sigmoid(logits)[0, 0].numpy()
    seconds = time.perf_counter() - start
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu_seconds = (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime)
    peak_call = _status_mb("VmHWM")
    peak_above = peak_call - before if peak_reset else float("nan")
    # Not ru_maxrss: after fork + exec it starts from the parent's resident size (the parent holds the
    # training data), so it would report the parent's peak; VmHWM belongs to this process image alone.
    peak_abs = max(peak_so_far, peak_call)
    np.save(workdir / f"{side}.npy", np.asarray(probability, dtype=np.float32))
    print(json.dumps({"side": side, "seconds": seconds, "cpu_seconds": cpu_seconds, "peak_mb": peak_above,
                      "peak_abs_mb": peak_abs}))


def prepare(workdir: Path, steps: int, threads: int) -> float:
    """Train and save the model, build the test volume; return the training time in seconds."""
    import torch

    from neuroseg_lite.checkpoint import save_model
    from neuroseg_lite.io import normalize_percentile
    from neuroseg_lite.sparse import from_planes
    from neuroseg_lite.synth import make_volume
    from neuroseg_lite.train import make_train_config, train_3d
    from neuroseg_lite.unet3d import UNet3DConfig

    torch.set_num_threads(threads)
    train = [make_volume(seed=seed, preset="small") for seed in (1, 2, 3)]
    images = [v.image for v in train]  # raw: train_3d normalises them (percentiles 1 and 99.8 by default)
    dense = [from_planes(v.labels, planes=range(v.labels.shape[0])) for v in train]
    config = make_train_config("cpu", steps=steps, val_every=0, seed=0)
    start = time.perf_counter()
    model = train_3d(images, dense, config=config, model_config=UNet3DConfig(), device="cpu", progress=False)
    train_seconds = time.perf_counter() - start
    save_model(workdir / "model.pt", model)

    half_y, half_x = TEST_SHAPE[1] // 2, TEST_SHAPE[2] // 2
    volume = np.empty(TEST_SHAPE, np.float32)
    truth = np.empty(TEST_SHAPE, bool)
    for index, seed in enumerate((100, 101, 102, 103)):
        part = make_volume(seed=seed, preset="tutorial", shape=(TEST_SHAPE[0], half_y, half_x))
        y0, x0 = (index // 2) * half_y, (index % 2) * half_x
        volume[:, y0:y0 + half_y, x0:x0 + half_x] = normalize_percentile(part.image)
        truth[:, y0:y0 + half_y, x0:x0 + half_x] = part.labels
    np.save(workdir / "volume.npy", volume)
    np.save(workdir / "truth.npy", truth)
    return train_seconds


def run_side(side: str, workdir: Path, threads: int) -> dict:
    command = [sys.executable, __file__, "--worker", side, "--workdir", str(workdir), "--threads", str(threads)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{side} worker failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="training steps of the benchmarked model")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--repeats", type=int, default=1, help="alternating runs per side; the fastest counts")
    parser.add_argument("--worker", choices=("ours", "monai", "exact"), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.workdir, args.threads)
        return
    with tempfile.TemporaryDirectory(prefix="bench_infer3d_") as folder:
        workdir = Path(folder)
        train_seconds = prepare(workdir, args.steps, args.threads)
        runs = {"ours": [], "monai": []}
        for repeat in range(args.repeats):
            order = ("ours", "monai") if repeat % 2 == 0 else ("monai", "ours")
            for side in order:
                runs[side].append(run_side(side, workdir, args.threads))
                print(f"# {side}: {runs[side][-1]}", file=sys.stderr, flush=True)
        run_side("exact", workdir, args.threads)
        best = {side: min(results, key=lambda r: r["seconds"]) for side, results in runs.items()}
        ours_prob = np.load(workdir / "ours.npy")
        monai_prob = np.load(workdir / "monai.npy")
        exact = np.load(workdir / "exact.npy")[EXACT_CORE]
        truth = np.load(workdir / "truth.npy")
    ours, theirs = ours_prob > 0.5, monai_prob > 0.5
    exact_scores = {}
    for side, prob in (("ours", ours_prob), ("monai", monai_prob)):
        core = prob[CORE_IN_VOLUME]
        exact_scores[f"{side}_dice_vs_exact"] = round(dice(core > 0.5, exact > 0.5), 4)
        exact_scores[f"{side}_max_abs_err_vs_exact"] = round(float(np.abs(core - exact).max()), 4)
    n_voxels = int(np.prod(TEST_SHAPE))
    ours_rate = n_voxels / best["ours"]["seconds"]
    monai_rate = n_voxels / best["monai"]["seconds"]
    result = {
        "ours_vox_per_s": round(ours_rate),
        "monai_vox_per_s": round(monai_rate),
        "speedup": round(ours_rate / monai_rate, 2),
        # CPU seconds are less sensitive than wall time to other jobs on a shared machine (not immune).
        "speedup_cpu_time": round(best["monai"]["cpu_seconds"] / best["ours"]["cpu_seconds"], 2),
        "ours_peak_mb": round(best["ours"]["peak_mb"], 1),  # peak RSS during the call minus RSS before it
        "monai_peak_mb": round(best["monai"]["peak_mb"], 1),
        "ours_peak_abs_mb": round(best["ours"]["peak_abs_mb"], 1),  # absolute process peak (VmHWM)
        "monai_peak_abs_mb": round(best["monai"]["peak_abs_mb"], 1),
        "agreement_dice": round(dice(ours, theirs), 4),
        **exact_scores,
        "ours_dice_vs_truth": round(dice(ours, truth), 4),
        "monai_dice_vs_truth": round(dice(theirs, truth), 4),
        "shape": list(TEST_SHAPE),
        "train_steps": args.steps,
        "train_seconds": round(train_seconds, 1),
        "threads": args.threads,
        "repeats": args.repeats,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
