"""Exact dense 2D pseudo-label map vs the naive one-patch-per-pixel loop (chapter 4, ``04_pseudo_labels``).

Run from the repository root::

    .venv/bin/python benchmarks/bench_pseudolabel2d.py [--size 256] [--pixels 2000] [--threads N]

Both methods run side by side in one process on the same 256x256 slice and the same random-weight
PatchCNN (speed does not depend on the weights). The naive loop cuts one reflected 32x32 patch per
pixel and classifies them in batches of 256, as a patch classifier is usually applied; it is timed on
a random subset of pixels and its rate extrapolated. Prints one JSON line: dense_px_per_s,
naive_px_per_s, speedup, max_abs_diff (largest logit difference on the subset), plus the set-up.
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from neuroseg_lite.models2d import PatchCNN, naive_logits


def best_time(function, repeats: int) -> float:
    # The minimum over repeats is the least disturbed by other processes on a shared machine.
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="side of the square test slice")
    parser.add_argument("--pixels", type=int, default=2000, help="pixels timed with the naive loop")
    parser.add_argument("--batch", type=int, default=256, help="patches per naive forward pass")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    model = PatchCNN().eval()
    image = torch.rand(1, 1, args.size, args.size)
    flat = rng.choice(args.size * args.size, size=min(args.pixels, args.size ** 2), replace=False)
    pixels = np.stack(np.unravel_index(flat, (args.size, args.size)), axis=1)

    with torch.inference_mode():
        model.dense_logits(image)  # warm-up: oneDNN picks and caches its kernels on the first call
        naive_logits(model, image[0], pixels=pixels[:args.batch], batch_size=args.batch)
        dense_s = best_time(lambda: model.dense_logits(image), args.repeats)
        naive_s = best_time(lambda: naive_logits(model, image[0], pixels=pixels, batch_size=args.batch),
                            args.repeats)
        dense = model.dense_logits(image)[0]
        naive = naive_logits(model, image[0], pixels=pixels, batch_size=args.batch)
    max_abs_diff = float((dense[:, pixels[:, 0], pixels[:, 1]].T - naive).abs().max())

    dense_rate = args.size ** 2 / dense_s
    naive_rate = len(pixels) / naive_s
    print(json.dumps({
        "dense_px_per_s": round(dense_rate),
        "naive_px_per_s": round(naive_rate),
        "speedup": round(dense_rate / naive_rate, 1),
        "max_abs_diff": max_abs_diff,
        "slice": [args.size, args.size],
        "naive_pixels": len(pixels),
        "naive_batch": args.batch,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
    }))


if __name__ == "__main__":
    main()
