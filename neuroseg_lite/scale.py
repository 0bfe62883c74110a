"""Predict a whole sample that does not fit in memory: block by block, in parallel, resumable, into OME-Zarr.

Introduced in chapter 10 (``10_whole_sample``). :func:`predict_large` gives the same probabilities as
:func:`neuroseg_lite.infer.predict_volume` on the whole stack (to float rounding) without ever holding it:
the output is cut into blocks aligned to the output Zarr chunks (so no two tasks write the same chunk), and
each block is one task on a ``dask.distributed`` cluster. A task runs only the tiles of the global tile plan
that intersect its block, on the input region those tiles read, normalised with the intensity range of the
whole stack (:mod:`neuroseg_lite.scaleplan` explains why this is exact).

A run can be interrupted at any time (killed, out of disk space) and started again with the same call:
each finished block leaves a marker in the output folder, a re-run skips those blocks, and the output is
marked complete only when every block and the multiscale pyramid are written. :func:`predict_2d_large` does
the same for the 2D pseudo-labeller, whose planes are independent, slab by slab.

Workers load the model from its file (``checkpoint.load_model``, weights only), so only a path travels to
them; a model that has no file yet is saved into the output folder first.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from neuroseg_lite import scaleplan, zarrio
from neuroseg_lite._checks import NeurosegInputError, check_spacing
from neuroseg_lite.checkpoint import TrainedModel, load_model, save_model
from neuroseg_lite.infer import _as_triple, _resolve_tile
from neuroseg_lite.utils import select_device

__all__ = ["predict_large", "predict_2d_large", "block_halo", "intensity_range", "local_cluster"]

intensity_range = scaleplan.intensity_range

_RECORD = "predict_large"  # key of the run record in the group's "neuroseg_lite" attributes
_MARKERS = ".blocks_done"  # folder of per-block done markers inside the output
_LOCAL = threading.local()  # per worker thread: loaded models (tasks in one process must not share a network)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def local_cluster(*, n_workers=None, threads_per_worker=None, memory_limit="auto"):
    """A ``distributed.LocalCluster`` sized to this machine: workers x torch threads <= cores.

    Parameters
    ----------
    n_workers : int, optional
        Worker processes, each running one block at a time. Default: cores // threads_per_worker.
    threads_per_worker : int, optional
        Torch threads of each worker (set inside the worker by every task). Default: up to 4: on the CPU
        a few processes with a few threads each beat one process with many.
    memory_limit : str or int
        Per worker, as LocalCluster takes it ("auto": the machine's memory split between workers).

    Returns
    -------
    distributed.LocalCluster
        With the dashboard on a free port; ``distributed.Client(cluster).dashboard_link`` says where.
    """
    from distributed import LocalCluster

    cores = _cores()
    threads = int(threads_per_worker or min(4, cores))
    workers = int(n_workers or max(1, cores // threads))
    if workers < 1 or threads < 1:
        raise NeurosegInputError(f"n_workers and threads_per_worker must be >= 1, got {n_workers}, "
                                 f"{threads_per_worker}.")
    threads = max(1, min(threads, cores // workers))
    # One dask thread per worker: a block is itself multi-threaded by torch, so two at once would oversubscribe.
    return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, memory_limit=memory_limit,
                        dashboard_address=":0", resources={"torch_threads": threads})


def block_halo(model, *, tile=None) -> tuple[int, int, int]:
    """Voxels (z, y, x) beyond a block that its tiles read: tile - 1 per axis, from the model's tiling.

    A block of output runs every tile of the global plan that touches it, and such a tile can reach
    ``tile - 1`` voxels past the block's edge.
    """
    network = model.network if isinstance(model, TrainedModel) else model
    divisor = scaleplan._resolve_divisor(network, None)
    return tuple(t - 1 for t in _resolve_tile(tile, (1 << 30,) * 3, divisor))


# ----------------------------------------------------------------------------- worker side

@dataclass(frozen=True)
class _Job:
    """Everything a block task needs besides its own input: small, so it is sent with every task."""

    kind: str  # "unet3d" or "model2d"
    model_file: str
    value_range: tuple | None
    output: str
    probability_dtype: str
    threshold: float
    batch_size: int
    device: str
    shape: tuple  # (Z, Y, X) of the whole stack
    plan: scaleplan.TilePlan | None  # 3D only


class _Planes:
    """The stack as predict_planes indexes it (whole planes by global z) backed by one slab's planes."""

    def __init__(self, planes: np.ndarray, first: int, shape):
        self.planes, self.first, self.shape = planes, first, tuple(shape)

    def __getitem__(self, index):
        return self.planes[np.asarray(index) - self.first]


def _model(path: str, kind: str) -> TrainedModel:
    cache = _LOCAL.__dict__.setdefault("models", {})
    key = (path, os.stat(path).st_mtime_ns)
    if key not in cache:
        cache.clear()
        cache[key] = load_model(path, kind=kind, device="cpu")
    return cache[key]


def _torch_threads() -> int:
    try:
        from distributed import get_worker

        worker = get_worker()
        threads = int(worker.state.total_resources.get("torch_threads", 0))
        return threads or max(1, _cores() // max(1, worker.state.nthreads))
    except (ImportError, ValueError, AttributeError):
        return max(1, _cores())


def _write_block(job: _Job, region, probability: np.ndarray, mask: np.ndarray, index: int) -> None:
    """Write one block's chunks, then its done marker (so a marker always means the chunks are on disk)."""
    import zarr

    zarr.open_array(os.path.join(job.output, "0"), mode="r+")[region] = probability
    zarr.open_array(os.path.join(job.output, "labels", "mask", "0"), mode="r+")[region] = mask
    Path(job.output, _MARKERS, f"{index}.done").touch()


def _disk_full(output, err) -> NeurosegInputError:
    return NeurosegInputError(
        f"the disk holding {output} is full ({err}); the blocks finished so far are kept. Free some space "
        "(probability_dtype='uint8' needs half the space of 'float16'), then run the same "
        "call again: it resumes where it stopped.")


def _run_block(raw, origin, region, index: int, job: _Job) -> int:
    torch.set_num_threads(_torch_threads())
    if hasattr(raw, "compute"):  # a lazy region of a file: this worker reads it
        raw = raw.compute(scheduler="synchronous")
    model = _model(job.model_file, job.kind)
    device = select_device(job.device)
    normalized = scaleplan.normalize_block(raw, model.intensity_normalization, job.value_range)
    if job.kind == "unet3d":
        with scaleplan.prepared_network(model.network, device) as network:
            p = scaleplan.predict_block(network, normalized, origin, region, job.plan, batch_size=job.batch_size,
                                        device=device)
    else:
        from neuroseg_lite.pseudolabel import predict_planes

        model.network.to(device)
        view = _Planes(normalized, origin[0], job.shape)
        p = predict_planes(model.network, view, np.arange(region[0].start, region[0].stop),
                           batch_size=job.batch_size, device=device)
    if job.probability_dtype == "uint8":
        probability = np.round(p * 255.0).astype(np.uint8)
    else:
        probability = p.astype(np.float16)
    try:
        _write_block(job, region, probability, (p >= job.threshold).astype(np.uint8), index)
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise _disk_full(job.output, err) from err
        raise
    return index


# ----------------------------------------------------------------------------- client side

def _source(source, spacing):
    """(data, spacing, description) of a Stack, a path (zarrio.open_stack) or an array (spacing= needed)."""
    if isinstance(source, (str, os.PathLike)):
        source = zarrio.open_stack(source, spacing=spacing)
    if isinstance(source, zarrio.Stack):
        data, spacing, where = source.data, spacing or source.spacing, str(Path(source.path).resolve())
    else:
        data, where = source, "array"
    if not (hasattr(data, "shape") and hasattr(data, "dtype") and len(data.shape) == 3):
        raise NeurosegInputError(f"source must be a (Z, Y, X) stack: a path, a zarrio.Stack, an ndarray, a dask or "
                                 f"zarr array; got {type(source).__name__} of shape {getattr(data, 'shape', None)}.")
    if np.dtype(data.dtype).kind not in "uif":
        raise NeurosegInputError(f"source has dtype {data.dtype}; pass a stack of integer or float intensities.")
    if spacing is None:
        raise NeurosegInputError("the source does not record its voxel spacing; pass spacing=(z, y, x) in "
                                 "micrometres (the output records it).")
    return data, check_spacing(spacing), where


def _digest(model: TrainedModel) -> str:
    h = hashlib.sha256(f"{model.kind}{model.model_config}{model.intensity_normalization}".encode())
    for key, value in model.network.state_dict().items():
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _model_and_file(model, kind: str):
    if isinstance(model, (str, os.PathLike)):
        model = load_model(model, kind=kind, device="cpu")
    if not isinstance(model, TrainedModel):
        raise NeurosegInputError(f"model must be a TrainedModel or the path of a model file, got "
                                 f"{type(model).__name__}; use checkpoint.load_model or train_2d/train_3d.")
    if model.kind != kind:
        other = "predict_2d_large" if kind == "unet3d" else "predict_large"
        raise NeurosegInputError(f"this needs a {kind!r} model, got a {model.kind!r} one; use {other} for it.")
    return model


def _prepare_output(output: Path, params: dict, *, shape, block, spacing, probability_dtype, overwrite) -> None:
    """Create the output, or check that an existing one is an unfinished run of this very call."""
    attrs = {}
    if (output / "zarr.json").is_file():
        import zarr

        attrs = dict(zarr.open_group(str(output), mode="r").attrs).get("neuroseg_lite", {}).get(_RECORD, {})
    if output.exists() and not overwrite:
        if not attrs:
            raise NeurosegInputError(f"{output} exists and is not an unfinished predict_large output; it was left "
                                     "untouched. Pass overwrite=True to replace it, or choose another output.")
        if attrs.get("complete"):
            raise NeurosegInputError(f"{output} already holds a complete prediction; pass overwrite=True to "
                                     "compute it again, or choose another output.")
        changed = sorted(k for k in set(params) | set(attrs.get("params", {}))
                         if params.get(k) != attrs["params"].get(k))
        if changed:
            raise NeurosegInputError(f"{output} holds an unfinished run with other {', '.join(changed)} (other "
                                     "model, input or parameters); re-run with the same arguments to resume it, or "
                                     "pass overwrite=True to start again.")
        return
    zarrio.create_image(output, shape=shape, dtype=probability_dtype, chunks=block, spacing=spacing,
                        name="probability", overwrite=overwrite,
                        attrs={_RECORD: {"params": params, "complete": False}})
    zarrio.create_labels(output, "mask", dtype=np.uint8, chunks=block)
    (output / _MARKERS).mkdir()


def _run(job_kind, model, source, output, *, block, tasks, client, overwrite, tile, overlap, batch_size, device,
         probability_dtype, threshold, pyramid, progress, spacing):
    """Shared driver: checks, output record, one task per block on the cluster, pyramid, complete mark."""
    model = _model_and_file(model, job_kind)
    data, spacing, where = _source(source, spacing)
    zarrio.check_spacing_match(spacing, model.spacing, name="the source")
    shape = tuple(int(n) for n in data.shape)
    if probability_dtype not in ("uint8", "float16"):
        raise NeurosegInputError(f"probability_dtype must be 'uint8' (0..255) or 'float16', got "
                                 f"{probability_dtype!r}.")
    if not 0.0 < float(threshold) < 1.0:
        raise NeurosegInputError(f"threshold must be between 0 and 1 (exclusive), got {threshold!r}.")
    if not (isinstance(batch_size, (int, np.integer)) and batch_size >= 1):
        raise NeurosegInputError(f"batch_size must be a positive integer, got {batch_size!r}.")
    block = tuple(min(b, n) for b, n in zip(_as_triple(block, what="block"), shape))
    plan = None
    if job_kind == "unet3d":
        plan = scaleplan.make_plan(shape, model.network, tile=tile, overlap=overlap)
        small = [f"{a}: {b} < {h}" for a, b, h, n in zip("zyx", block, plan.halo(), shape) if b < h and b < n]
        if small:
            raise NeurosegInputError(
                f"block {block} is smaller than the halo {plan.halo()} (the reach of a {plan.tile} tile) along "
                f"{', '.join(small)}: most of each task would be recomputed by its neighbours. Pass a block at "
                f"least {plan.halo()} (several tiles is faster), e.g. block=(64, 256, 256).")
    value_range = intensity_range(data, model.intensity_normalization, name="source")
    output = Path(output)
    params = json.loads(json.dumps({
        "function": "predict_large" if job_kind == "unet3d" else "predict_2d_large", "model": _digest(model),
        "source": where, "shape": shape, "dtype": str(np.dtype(data.dtype)), "intensity_range": value_range,
        "block": block, "tile": None if plan is None else plan.tile, "overlap": overlap,
        "probability_dtype": probability_dtype, "threshold": float(threshold)}))
    try:
        _prepare_output(output, params, shape=shape, block=block, spacing=spacing,
                        probability_dtype=probability_dtype, overwrite=overwrite)
        model_file = model.path
        if model_file is None or not Path(model_file).is_file():
            model_file = output / "model.pt"
            if not model_file.is_file():
                save_model(model_file, model)
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise _disk_full(output, err) from err
        raise
    job = _Job(job_kind, str(Path(model_file).resolve()), value_range, str(output.resolve()), probability_dtype,
               float(threshold), int(batch_size), str(device), shape, plan)
    regions = tasks(shape, block, plan, model)
    markers = output / _MARKERS
    todo = [(i, region, inputs) for i, (region, inputs) in enumerate(regions)
            if not (markers / f"{i}.done").exists()]
    if todo:
        _compute(todo, data, job, client=client, progress=progress, total=len(regions),
                 read_on_workers=where != "array" and hasattr(data, "compute"))
    if pyramid:
        zarrio.build_pyramid(output)
        zarrio.build_pyramid(output, label_name="mask")
    import zarr

    group = zarr.open_group(str(output), mode="r+")
    record = dict(group.attrs.get("neuroseg_lite", {}))
    record[_RECORD] = {"params": params, "complete": True}
    group.attrs["neuroseg_lite"] = record
    shutil.rmtree(markers, ignore_errors=True)
    return output


def _compute(todo, data, job: _Job, *, client, progress: bool, total: int, read_on_workers: bool) -> None:
    from distributed import Client, as_completed
    from tqdm.auto import tqdm

    own = client is None
    if own:
        cluster = local_cluster()
        client = Client(cluster)
    try:
        print(f"dask dashboard: {client.dashboard_link}")
        window = 2 * max(1, sum(client.nthreads().values()))
        queue = list(todo)

        def submit():
            index, region, inputs = queue.pop(0)
            # A file's region is read by the worker that predicts it (on a cluster the data never pass through
            # this process); an in-memory source is sliced here. Either way at most `window` regions are in
            # memory or in flight at any time.
            raw = data[inputs]
            if not read_on_workers:
                raw = raw.compute(scheduler="threads") if hasattr(raw, "compute") else np.asarray(raw)
            return client.submit(_run_block, raw, tuple(s.start for s in inputs), region, index, job,
                                 key=f"block-{index}-{uuid.uuid4().hex}")

        running = as_completed([submit() for _ in range(min(window, len(queue)))])
        with tqdm(total=total, initial=total - len(todo), disable=not progress, desc="blocks", unit="block") as bar:
            for future in running:
                try:
                    future.result()
                except BaseException:
                    for other in list(running.futures):
                        other.cancel()
                    raise
                bar.update(1)
                if queue:
                    running.add(submit())
    finally:
        if own:
            client.close()
            cluster.close()


def _tasks_3d(shape, block, plan, model):
    return [(region, plan.input_region(region)) for region in scaleplan.block_regions(shape, block)]


def _tasks_2d(shape, block, plan, model):
    from neuroseg_lite.models2d import reflect_positions

    context = (model.network.in_channels - 1) // 2
    out = []
    for z0 in range(0, shape[0], block[0]):
        z1 = min(z0 + block[0], shape[0])
        needed = reflect_positions(np.arange(z0, z1)[:, None] + np.arange(-context, context + 1), shape[0])
        out.append(((slice(z0, z1), slice(0, shape[1]), slice(0, shape[2])),
                    (slice(int(needed.min()), int(needed.max()) + 1), slice(0, shape[1]), slice(0, shape[2]))))
    return out


def predict_large(model, source, output, *, block=(64, 256, 256), client=None, overwrite: bool = False,
                  tile=None, overlap: float = 0.25, batch_size: int = 2, device="auto",
                  probability_dtype: str = "uint8", threshold: float = 0.5, pyramid: bool = True,
                  progress: bool = True, spacing=None) -> Path:
    """3D U-Net foreground probability and mask of a stack of any size, written block by block to OME-Zarr.

    Parameters
    ----------
    model : TrainedModel or str or Path
        A 3D U-Net (``kind="unet3d"``) or its model file. Workers load the file; a model without one is saved
        as ``<output>/model.pt``.
    source : zarrio.Stack, str, Path, ndarray, dask or zarr array of shape (Z, Y, X)
        A path is opened with :func:`neuroseg_lite.zarrio.open_stack` (OME-Zarr, Zarr, TIFF). Read one
        block's input region at a time; never modified.
    output : str or Path
        The OME-Zarr image to write: level ``0`` the probability, ``labels/mask`` the mask (uint8 0/1,
        ``probability >= threshold``), with a multiscale pyramid when ``pyramid``.
    block : tuple of 3 int
        Output block (z, y, x) computed by one task and the output chunk shape; need not divide the stack.
        At least :func:`block_halo` per axis; each block also runs the tiles reaching into it, so blocks
        several tiles wide waste less.
    client : distributed.Client, optional
        Default: a :func:`local_cluster` for this call. The dashboard link is printed.
    overwrite : bool
        Replace an existing output. Without it, an unfinished run of the same call is resumed, and a
        complete output or one from another model, input or parameters is refused.
    tile, overlap, batch_size, device
        As for :func:`neuroseg_lite.infer.predict_volume` (``device`` is resolved on each worker).
    probability_dtype : {"uint8", "float16"}
        uint8: round(255 * p); float16: p to 5e-4.
    threshold : float
    pyramid, progress : bool
    spacing : tuple of 3 float, optional
        Micrometres (z, y, x); needed when the source does not record it.

    Returns
    -------
    Path
        ``output``, marked complete in its ``neuroseg_lite`` group attributes.

    Notes
    -----
    The probability equals ``predict_volume(model, whole_stack)`` to float rounding (before the uint8 /
    float16 conversion): same global tile plan, same intensity range, same weights.
    """
    return _run("unet3d", model, source, output, block=block, tasks=_tasks_3d, client=client,
                overwrite=overwrite, tile=tile, overlap=overlap, batch_size=batch_size, device=device,
                probability_dtype=probability_dtype, threshold=threshold, pyramid=pyramid, progress=progress,
                spacing=spacing)


def predict_2d_large(model, source, output, *, block=(16, 512, 512), client=None, overwrite: bool = False,
                     batch_size: int = 8, device="auto", probability_dtype: str = "uint8", threshold: float = 0.5,
                     pyramid: bool = True, progress: bool = True, spacing=None) -> Path:
    """The 2D pseudo-labeller's :func:`~neuroseg_lite.pseudolabel.predict_2d` of a stack of any size, to OME-Zarr.

    Same output, resuming and refusals as :func:`predict_large`. Planes are independent (each sees its
    ``context_planes`` neighbours, reflected at the ends of the stack), so a task is a slab of ``block[0]``
    whole planes; ``block[1:]`` is the y/x chunk shape of the output. Equals predict_2d on the whole stack.
    """
    return _run("model2d", model, source, output, block=block, tasks=_tasks_2d, client=client,
                overwrite=overwrite, tile=None, overlap=0.0, batch_size=batch_size, device=device,
                probability_dtype=probability_dtype, threshold=threshold, pyramid=pyramid, progress=progress,
                spacing=spacing)
