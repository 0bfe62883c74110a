"""Out-of-core prediction: ``neuroseg_lite.scale.predict_large`` against whole-stack ``predict_volume``.

Run from the repository root:  .venv/bin/python benchmarks/bench_scale.py [--sizes 16x128x128 32x256x256]

Everything is measured side by side in one run, on a small random-weight 3D U-Net (``--base-channels``,
depth 2; the tiling, blending and I/O do not depend on what the weights learned) and synthetic uint16 stacks
(Poisson background plus bright ellipsoids) written block by block to OME-Zarr:

1. ``vox_per_s_by_size`` / ``peak_mb_by_size``: predict_large from the OME-Zarr input to an OME-Zarr output
   (uint8 probability, mask, pyramid), one subprocess per size, with one in-process worker using every core
   for torch; the peak is the subprocess's peak resident memory (VmHWM), runtime included.
2. ``overhead_vs_in_memory``: wall time of predict_large over predict_volume on the smallest size (same
   threads), i.e. the cost of blocks, halo recomputation, the intensity pass and Zarr I/O.
3. ``agreement_dice`` / ``max_abs_diff``: predict_large (float16 output) against predict_volume with a
   *trained* 3D U-Net (``train.train_3d`` on a synthetic "tiny" volume, ``--train-steps`` steps) on another
   synthetic volume, blocks that divide none of its axes: Dice of the masks at 0.5 and the largest absolute
   probability difference.
4. ``workers_speedup``: on the largest size, wall time with one worker process over two (``local_cluster``,
   one torch thread each): the parallel speedup of the block tasks.
5. ``largest_voxels``: the voxels of a stack predicted by predict_large in a subprocess whose address space
   is capped (RLIMIT_AS) below what predict_volume needs for the same stack; ``in_memory_under_cap`` says
   whether predict_volume failed (MemoryError) under that cap, as it should.

Prints one JSON line.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SPACING = (2.0, 1.0, 1.0)


def _peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _model(base_channels: int):
    import torch

    from neuroseg_lite.checkpoint import TrainedModel
    from neuroseg_lite.unet3d import UNet3D, UNet3DConfig

    torch.manual_seed(0)
    config = UNet3DConfig(base_channels=base_channels, depth=2)
    return TrainedModel(network=UNet3D(config).eval(), kind="unet3d", model_config=config, spacing=SPACING)


def _trained_model(steps: int):
    """A 3D U-Net trained briefly on one synthetic volume, and another volume to predict."""
    from neuroseg_lite import sparse, synth, train

    first = synth.make_volume(preset="tiny", seed=0, shape=(32, 96, 96))
    annotation = sparse.simulate_sparse(first.labels, n_slices=first.labels.shape[0])  # dense: learns fast
    config = train.make_train_config("smoke", steps=steps, val_every=steps)
    model = train.train_3d([first.image], [annotation], config=config, spacing=first.spacing, progress=False)
    return model, synth.make_volume(preset="tiny", seed=1, shape=(48, 160, 160))


def _write_input(path: Path, shape, seed=0) -> Path:
    """A synthetic uint16 stack, generated and written one z-slab at a time (never whole in memory)."""
    from neuroseg_lite import zarrio

    array = zarrio.create_image(path, shape=shape, dtype=np.uint16, chunks=(32, 256, 256), spacing=SPACING)
    rng = np.random.default_rng(seed)
    n_cells = max(1, int(np.prod(shape) / 40_000))
    centres = rng.uniform(0, 1, size=(n_cells, 3)) * np.array(shape)
    for z0 in range(0, shape[0], 32):
        z1 = min(z0 + 32, shape[0])
        slab = rng.poisson(100, size=(z1 - z0,) + tuple(shape[1:])).astype(np.uint16)
        zz, yy, xx = np.ogrid[z0:z1, :shape[1], :shape[2]]
        for cz, cy, cx in centres:
            if abs(cz - (z0 + z1) / 2) < 40:
                slab[(zz - cz) ** 2 / 16 + (yy - cy) ** 2 / 49 + (xx - cx) ** 2 / 49 <= 1] += 300
        array[z0:z1] = slab
    return path


def _client(workers: int, torch_threads: int, processes: bool):
    from distributed import Client, LocalCluster

    if processes:
        from neuroseg_lite.scale import local_cluster

        cluster = local_cluster(n_workers=workers, threads_per_worker=torch_threads, memory_limit=0)
    else:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=False, dashboard_address=":0",
                               resources={"torch_threads": torch_threads})
    return cluster, Client(cluster)


def _predict_large(model, source, output, client, **kwargs) -> float:
    from neuroseg_lite.scale import predict_large

    start = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # the dashboard link: stdout holds only the JSON line
        predict_large(model, source, output, client=client, progress=False, overwrite=True, **kwargs)
    return time.perf_counter() - start


def row(args) -> dict:
    """One subprocess measurement: throughput and peak memory of one size, or the capped run."""
    import torch

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    model = work / "model.pt"
    if args.row == "capped":
        cluster, client = _client(1, args.threads, processes=False)
        # The cap leaves room for the runtime already mapped plus a budget far below the float32 stack.
        baseline = int(Path("/proc/self/status").read_text().split("VmSize:")[1].split()[0]) * 1024
        cap = baseline + args.cap_mb * (1 << 20)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        # predict_large first: a failed whole-stack attempt can leave the address space fragmented.
        seconds = _predict_large(model, args.source, work / "capped.ome.zarr", client, block=tuple(args.block))
        try:
            from neuroseg_lite.checkpoint import load_model
            from neuroseg_lite.infer import predict_volume
            from neuroseg_lite.zarrio import open_stack

            predict_volume(load_model(model, kind="unet3d", device="cpu"), np.asarray(open_stack(args.source).data))
            in_memory = True
        except MemoryError:
            in_memory = False
        client.close()
        cluster.close()
        return {"cap_mb": args.cap_mb, "in_memory_under_cap": in_memory, "seconds": seconds}
    cluster, client = _client(1, args.threads, processes=False)
    seconds = _predict_large(model, args.source, work / "row.ome.zarr", client, block=tuple(args.block))
    client.close()
    cluster.close()
    return {"seconds": seconds, "peak_mb": _peak_mb()}


def _subprocess(args, *extra) -> dict:
    command = [sys.executable, __file__, "--work", str(args.work), "--threads", str(args.threads),
               "--block", *map(str, args.block), "--cap-mb", str(args.cap_mb), *extra]
    env = {**os.environ, "MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": str(args.threads)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(args) -> dict:
    import torch

    from neuroseg_lite.checkpoint import save_model
    from neuroseg_lite.infer import predict_volume
    from neuroseg_lite.zarrio import open_stack

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    model = _model(args.base_channels)
    save_model(work / "model.pt", model)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes]
    sources = {s: _write_input(work / f"in_{'x'.join(map(str, s))}.ome.zarr", s) for s in sizes}
    result = {"vox_per_s_by_size": {}, "peak_mb_by_size": {}}
    for size, source in sources.items():
        measured = _subprocess(args, "--row", "size", "--source", str(source))
        label = "x".join(map(str, size))
        result["vox_per_s_by_size"][label] = round(float(np.prod(size)) / measured["seconds"])
        result["peak_mb_by_size"][label] = round(measured["peak_mb"], 1)

    smallest = sizes[0]
    image = np.asarray(open_stack(sources[smallest]).data)
    start = time.perf_counter()
    predict_volume(model, image)
    in_memory_s = time.perf_counter() - start
    cluster, client = _client(1, args.threads, processes=False)
    large_s = _predict_large(work / "model.pt", sources[smallest], work / "overhead.ome.zarr", client,
                             block=tuple(args.block), pyramid=False)
    result["overhead_vs_in_memory"] = round(large_s / in_memory_s, 3)

    trained, volume = _trained_model(args.train_steps)
    save_model(work / "trained.pt", trained)
    reference = predict_volume(trained, volume.image)
    odd_block = tuple(int(n * 0.7) for n in volume.image.shape)  # divides no axis, >= the halo here
    _predict_large(work / "trained.pt", volume.image, work / "agree.ome.zarr", client, block=odd_block,
                   probability_dtype="float16", pyramid=False, spacing=volume.spacing)
    client.close()
    cluster.close()
    found = np.asarray(open_stack(work / "agree.ome.zarr").data).astype(np.float32)
    a, b = found >= 0.5, reference >= 0.5
    result["agreement_dice"] = round(float(2 * (a & b).sum() / max(1, a.sum() + b.sum())), 6)
    result["max_abs_diff"] = float(np.abs(found - reference).max())
    result["agreement_shape"], result["agreement_block"] = list(volume.image.shape), list(odd_block)
    result["agreement_foreground"] = round(float(b.mean()), 4)

    times = {}
    for workers in (1, 2):
        cluster, client = _client(workers, 1, processes=True)
        times[workers] = _predict_large(work / "model.pt", sources[sizes[-1]], work / "workers.ome.zarr", client,
                                        block=tuple(args.block))
        client.close()
        cluster.close()
    result["workers_speedup"] = round(times[1] / times[2], 3)

    capped_shape = tuple(int(v) for v in args.capped_size.split("x"))
    capped_source = _write_input(work / "in_capped.ome.zarr", capped_shape, seed=1)
    capped = _subprocess(args, "--row", "capped", "--source", str(capped_source))
    result["largest_voxels"] = int(np.prod(capped_shape))
    result["largest_float32_mb"] = round(np.prod(capped_shape) * 4 / (1 << 20), 1)
    result.update({k: capped[k] for k in ("cap_mb", "in_memory_under_cap")})
    result["largest_vox_per_s"] = round(float(np.prod(capped_shape)) / capped["seconds"])
    result.update(threads=args.threads, block=list(args.block), base_channels=args.base_channels,
                  in_memory_s=round(in_memory_s, 2), large_s=round(large_s, 2))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["16x128x128", "16x256x256", "64x256x256"],
                        help="ZxYxX stacks to time (default: three, growing 4x each)")
    parser.add_argument("--train-steps", type=int, default=80, help="training steps of the agreement model")
    parser.add_argument("--capped-size", default="64x1024x1024", help="stack predicted under the memory cap")
    parser.add_argument("--cap-mb", type=int, default=512, help="address space allowed beyond the runtime (MiB)")
    parser.add_argument("--block", type=int, nargs=3, default=[32, 128, 128])
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--base-channels", type=int, default=8)
    parser.add_argument("--work", default=None)
    parser.add_argument("--row", choices=["size", "capped"], default=None)
    parser.add_argument("--source", default=None)
    arguments = parser.parse_args()
    if arguments.row:
        print(json.dumps(row(arguments)))
    else:
        with tempfile.TemporaryDirectory(prefix="bench_scale_") as tmp:
            arguments.work = arguments.work or tmp
            print(json.dumps(main(arguments)))
