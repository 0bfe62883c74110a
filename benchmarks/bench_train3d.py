"""Cost of one 3D training step: the whole loop step against a bare forward/backward/step, and GFLOP/s.

Run from the repository root:  .venv/bin/python benchmarks/bench_train3d.py [--preset cpu] [--threads 2]

"step" is exactly what ``train_3d`` does per iteration (``train.learning_rate`` and ``Trainer3D.step``: learning-rate
update, patch sampling, augmentation, host-to-device copy, forward, weighted loss, backward, Adam step, weight-average
update); "bare" is ``Trainer3D.optimize`` on pre-made batches (forward, loss, backward, Adam step). Both are timed
interleaved, in alternating order, on the same model, so machine load affects them alike; medians are reported.
The step index is taken inside the weight-averaging window, the dearer part of training. The achieved rate counts
the U-Net forward FLOPs with ``torch.utils.flop_counter.FlopCounterMode`` and multiplies by 3 for forward +
backward; the peak is the best of 20 timed float32 ``torch.mm`` of two 2048x2048 matrices. On a CPU the matmul
goes to MKL and the convolutions to oneDNN, so the "peak" is a reference point, not a ceiling: on AMD CPUs MKL's
sgemm can run slower than oneDNN's convolutions. Besides the five requested figures the line has overhead_min
(ratio of the fastest step to the fastest bare step, less sensitive to other jobs on a shared machine) and
loop_extra_s (sampling, augmentation, copy and weight averaging timed alone). Prints one JSON line.
The training volumes are raw float stacks, normalised by the trainer itself (``IntensityNormalization()``, as
``train_3d`` does by default). A quick check that it runs::

    .venv/bin/python benchmarks/bench_train3d.py --preset smoke --shape 16 64 64 --base-channels 4 --repeats 2 \
        --warmup 1

``--compare-devices`` measures, in one run, the 3D step of an experiment preset's budget (``--experiment-preset``,
default "sweep", the budget of chapter 7's grid) on the CPU and, where CUDA exists, on the GPU with the
channels-last 3D layout and without (AMP as the preset says), and prints one JSON object with each figure and the
measured GPU/CPU factor of a step, the figure that replaces ``neuroseg_lite.paired.ASSUMED_GPU_SPEEDUP`` for the 3D
training (on a machine without a GPU it gives the CPU figure and says so)::

    .venv/bin/python benchmarks/bench_train3d.py --compare-devices --shape 64 128 128 --threads 2
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from neuroseg_lite import paired
from neuroseg_lite.intensity import IntensityNormalization
from neuroseg_lite.runs import resolve_preset
from neuroseg_lite.sparse import from_planes
from neuroseg_lite.train import _build_trainer, learning_rate, make_train_config
from neuroseg_lite.unet3d import UNet3DConfig
from neuroseg_lite.utils import select_device


def synthetic_volume(shape, seed):
    """Bright blobs on noise, their sparse annotation (one plane in 8) and noisy pseudo-label probabilities."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.indices(shape, sparse=True)
    labels = np.zeros(shape, bool)
    for _ in range(40):
        cz, cy, cx = (rng.integers(s) for s in shape)
        labels |= ((zz - cz) * 2.0) ** 2 + (yy - cy) ** 2 + (xx - cx) ** 2 < rng.uniform(6, 12) ** 2
    image = (labels + rng.normal(0, 0.4, shape)).astype(np.float32)
    annotation = from_planes(labels, planes=range(4, shape[0], 8))
    pseudo = np.clip(labels * 0.8 + rng.uniform(0, 0.3, shape), 0, 1).astype(np.float32)
    return image, annotation, pseudo


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak_gflops(device, n=2048, repeats=20):
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    torch.mm(a, b)
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def measure(volumes, *, config, model_config, device, repeats: int, warmup: int) -> dict:
    """Time the loop step and the bare step of ``config`` on ``device``; the figures of one JSON line."""
    images, annotations, pseudo = (list(v) for v in zip(*volumes, strict=True))
    trainer = _build_trainer(images, annotations, pseudo=pseudo, config=config, model_config=model_config,
                             intensity=IntensityNormalization(), device=device)
    # Pre-made batches drawn by the same sampler, so both timings see the same data distribution.
    premade = [trainer.next_batch() for _ in range(warmup + repeats)]
    lam = config.lam
    step_index = trainer.average_start  # inside the averaging window

    def loop_step():  # one iteration of train_3d's loop
        return trainer.step(step_index, learning_rate(step_index, config))

    for batch in premade[:warmup]:
        loop_step()
        trainer.optimize(batch, lam)
    sync(device)

    def timed(run):
        start = time.perf_counter()
        run()
        sync(device)
        return time.perf_counter() - start

    step_times, bare_times = [], []
    for i, batch in enumerate(premade[warmup:]):
        # Alternate which of the two goes first so that neither always follows the other.
        if i % 2:
            bare_times.append(timed(lambda batch=batch: trainer.optimize(batch, lam)))
        step_times.append(timed(loop_step))
        if not i % 2:
            bare_times.append(timed(lambda batch=batch: trainer.optimize(batch, lam)))

    # The loop's own work, timed alone: it is small, so contention noise in step_s - bare_step_s can hide it.
    def extra():
        trainer.next_batch()
        if trainer.average is not None:  # average="none" has no weight averaging
            trainer.average.update(trainer.model)

    extra_s = statistics.median(timed(extra) for _ in range(repeats))

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        trainer.model(premade[0]["image"])
    train_flops = 3 * counter.get_total_flops()
    step_s = statistics.median(step_times)
    bare_s = statistics.median(bare_times)
    return {
        "step_s": round(step_s, 4),
        "bare_step_s": round(bare_s, 4),
        "overhead": round(step_s / bare_s - 1, 4),
        "achieved_gflops": round(train_flops / step_s / 1e9, 2),
        "matmul_peak_gflops": round(matmul_peak_gflops(device), 2),
        "overhead_min": round(min(step_times) / min(bare_times) - 1, 4),
        "loop_extra_s": round(extra_s, 4),
        "train_gflop_per_step": round(train_flops / 1e9, 2),
        "patch_size": list(config.patch_size), "batch_size": config.batch_size, "steps": config.steps,
        "base_channels": model_config.base_channels, "channels_last": config.channels_last,
        "amp": trainer.use_amp, "device": str(device), "threads": torch.get_num_threads(),
    }


def compare_devices(volumes, args) -> dict:
    """The experiment preset's 3D step on the CPU and, where CUDA exists, on the GPU with and without channels-last."""
    preset = resolve_preset(args.experiment_preset)
    config = make_train_config(preset.train_3d, **preset.overrides_3d)
    model_config = UNet3DConfig(**preset.model_3d)
    timing = {"repeats": args.repeats, "warmup": args.warmup}
    found = {"experiment_preset": preset.name,
             "cpu": measure(volumes, config=config, model_config=model_config, device=torch.device("cpu"), **timing)}
    if not torch.cuda.is_available():
        return {**found, "gpu": None, "gpu_cpu_factor": None,
                "note": "no CUDA GPU is visible here: the grid's GPU estimate still uses the assumed factor "
                        f"paired.ASSUMED_GPU_SPEEDUP = {paired.ASSUMED_GPU_SPEEDUP:g}"}
    gpu = torch.device("cuda")
    for name, channels_last in (("cuda_channels_last", True), ("cuda_contiguous", False)):
        found[name] = measure(volumes, config=dataclasses.replace(config, channels_last=channels_last),
                              model_config=model_config, device=gpu, **timing)
    cpu_s = found["cpu"]["step_s"]
    return {**found, "gpu": torch.cuda.get_device_name(gpu),
            "gpu_cpu_factor": round(cpu_s / found["cuda_channels_last"]["step_s"], 2),
            "gpu_cpu_factor_contiguous": round(cpu_s / found["cuda_contiguous"]["step_s"], 2),
            "note": f"measured; the grid's estimate assumes {paired.ASSUMED_GPU_SPEEDUP:g} for every stage"}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--shape", type=int, nargs=3, default=(64, 256, 256))
    parser.add_argument("--base-channels", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compare-devices", action="store_true",
                        help="the experiment preset's 3D step on the CPU and the GPU, with and without channels-last")
    parser.add_argument("--experiment-preset", default="sweep", help="for --compare-devices")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    volumes = [synthetic_volume(tuple(args.shape), seed) for seed in range(2)]
    if args.compare_devices:
        print(json.dumps(compare_devices(volumes, args)))
        return
    config = make_train_config(args.preset)
    model_config = UNet3DConfig(base_channels=args.base_channels)
    print(json.dumps({"preset": args.preset, **measure(volumes, config=config, model_config=model_config,
                                                       device=select_device(args.device), repeats=args.repeats,
                                                       warmup=args.warmup)}))


if __name__ == "__main__":
    main()
