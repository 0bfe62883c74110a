"""Sliding-window prediction of a whole 3D stack with a patch-trained network.

Introduced in chapter 6 (``06_evaluation``).

A 3D U-Net is trained on small patches, but a microscope stack is far larger than a patch and rarely a
multiple of the network's pooling factors. :func:`predict_volume` covers the stack with overlapping tiles,
runs them through the network a batch at a time, and blends the overlaps with a Gaussian importance window
so that voxels near a tile border (where the network sees little context) count less and no seams appear.

Memory stays bounded by the output plus one batch of tiles: the Gaussian window is separable and the tiles
form a Cartesian grid of per-axis start positions, so the total weight received by a voxel is the product of
three 1D sums, and the final normalisation needs three 1D arrays instead of a second full-size volume.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import torch

from neuroseg_lite._checks import NeurosegInputError, check_image_values, check_volume
from neuroseg_lite.checkpoint import TrainedModel
from neuroseg_lite.utils import memory_format_for, select_device

__all__ = ["DEFAULT_TILE", "predict_volume", "tile_positions", "gaussian_window"]

# Chosen by benchmarks/bench_infer3d.py and a whole-volume reference on 2 CPU cores with the default UNet3D:
# twice the (16, 64, 64) training patch in z, because the network's receptive field reaches ~30 planes in z
# and short tiles left visible z seams; 64 in y and x, because on the CPU small tiles run faster per voxel
# (cache) and pool-grid-aligned 64-wide tiles already match the whole-volume output to ~1e-3; a batch of
# two such tiles ran about twice as fast per voxel as one tile and still needs less memory than MONAI's
# sliding_window_inference with the training patch as window.
DEFAULT_TILE = (32, 64, 64)

# Floor of the 1D window relative to its peak. Voxels at the volume border are covered only by tile
# borders, where an unclamped Gaussian (4 sigma out) would leave a weight near 3e-4 per axis.
MIN_WINDOW = 1e-3

# Voxels read at a time by the input scan (NaN / constant check) so a memory-mapped stack is never
# loaded whole.
_SCAN_VOXELS = 1 << 23


def tile_positions(length: int, tile: int, overlap: float = 0.25, *, align: int = 1) -> list[int]:
    """Start indices of tiles of size ``tile`` that cover ``[0, length)`` with at least ``overlap``.

    Starts are multiples of ``align`` and spread evenly, so neighbours overlap by about the same amount:
    at least ``overlap * tile`` voxels (more when the length does not divide evenly), as far as a stride
    of at least ``align`` allows. A U-Net is shift-equivariant only for shifts by multiples of its pooling
    factors, so aligned tiles see the pooling grid of a whole-volume pass and reproduce its output away
    from their borders; unaligned tiles compute a slightly different function.

    Parameters
    ----------
    length : int
        Size of the axis to cover (>= 1).
    tile : int
        Tile size along the axis (>= 1). A tile at least as long as the axis gives the single start 0.
    overlap : float
        Requested fraction of a tile shared with its neighbour, in [0, 1).
    align : int
        Every start is a multiple of this (the model's divisor along the axis).

    Returns
    -------
    list of int
        Increasing start indices; the first is 0, and the last tile reaches ``length``: its start is
        ``length - tile`` rounded up to a multiple of ``align``, so it may overhang the end by fewer than
        ``align`` voxels (:func:`predict_volume` fills the overhang by reflection).
    """
    length, tile, align = int(length), int(tile), int(align)
    if length < 1 or tile < 1 or align < 1:
        raise NeurosegInputError(
            f"tile_positions needs length, tile and align >= 1, got length={length}, tile={tile}, align={align}.")
    if not 0.0 <= overlap < 1.0:
        raise NeurosegInputError(f"overlap must be in [0, 1) (a fraction of the tile), got {overlap!r}; "
                                 "0.25 is typical.")
    if tile >= length:
        return [0]
    last = -(-(length - tile) // align) * align
    stride = max(align, int(tile * (1.0 - overlap)) // align * align)
    n_tiles = -(-last // stride) + 1
    # Spread in units of align: rounding integers keeps every gap <= stride (stride is a multiple of align).
    units = np.round(np.linspace(0, last // align, n_tiles)).astype(int)
    return [int(u) * align for u in units]


def gaussian_window(size: int, *, sigma_scale: float = 0.125) -> np.ndarray:
    """1D Gaussian importance window of length ``size``, peak 1, floored at ``MIN_WINDOW``.

    Parameters
    ----------
    size : int
    sigma_scale : float
        Standard deviation as a fraction of ``size``.

    Returns
    -------
    ndarray of shape (size,), float64
    """
    centre = (size - 1) / 2.0
    sigma = sigma_scale * size
    offsets = np.arange(size, dtype=np.float64) - centre
    return np.maximum(np.exp(-0.5 * (offsets / sigma) ** 2), MIN_WINDOW)


@dataclass(frozen=True)
class _AxisPlan:
    """Tiling of one axis: for each tile, which volume voxels it holds and where they sit in the tile."""

    tile: int  # tile size fed to the network
    sources: tuple[tuple[int, int, int], ...]  # per tile: (first volume voxel, voxel count, offset in the tile)
    weight_sum: np.ndarray  # (length,) sum over tiles of the window weights each voxel receives


def _plan_axis(length: int, tile: int, divisor: int, overlap: float, window: np.ndarray) -> _AxisPlan:
    if tile >= length:
        # One tile holding the whole axis, centred so that both borders get the same (mirrored) context.
        sources = ((0, length, (tile - length) // 2),)
    else:
        starts = tile_positions(length, tile, overlap, align=divisor)
        sources = tuple((start, min(tile, length - start), 0) for start in starts)
    weight_sum = np.zeros(length, dtype=np.float64)
    for start, count, offset in sources:
        weight_sum[start:start + count] += window[offset:offset + count]
    return _AxisPlan(tile, sources, weight_sum)


def _as_triple(value, *, what: str) -> tuple[int, int, int]:
    try:
        triple = tuple(int(v) for v in value)
    except TypeError as err:
        raise NeurosegInputError(f"{what} must be three positive integers (z, y, x), got {value!r}.") from err
    if len(triple) != 3 or min(triple) < 1 or any(int(v) != v for v in value):
        raise NeurosegInputError(f"{what} must be three positive integers (z, y, x), got {value!r}.")
    return triple


def _resolve_divisor(model, divisor) -> tuple[int, int, int]:
    if divisor is not None:
        return _as_triple(divisor, what="divisor")
    method = getattr(model, "required_divisor", None)
    if callable(method):
        return _as_triple(method(), what="model.required_divisor()")
    attribute = getattr(model, "divisor", None)  # unet3d.UNet3D stores required_divisor(config) here
    if attribute is not None:
        return _as_triple(attribute, what="model.divisor")
    return (1, 1, 1)


def _resolve_tile(tile, shape, divisor) -> tuple[int, int, int]:
    if tile is None:
        # Round the default down to the divisor (at least one divisor) so any model accepts it.
        wanted = tuple(max(d, t // d * d) for t, d in zip(DEFAULT_TILE, divisor))
    else:
        wanted = _as_triple(tile, what="tile")
        bad = [axis for axis, t, d in zip("zyx", wanted, divisor) if t % d]
        if bad:
            raise NeurosegInputError(
                f"tile {wanted} is not a multiple of the model's required divisor {divisor} along "
                f"{', '.join(bad)}; pick a tile whose (z, y, x) sizes are multiples of {divisor}, or tile=None.")
    # An axis shorter than the tile gets a tile just big enough (rounded up to the divisor); the gap is
    # filled by reflection padding, which needs at most divisor - 1 extra voxels.
    return tuple(min(t, -(-n // d) * d) for t, n, d in zip(wanted, shape, divisor))


def _validate_image(image, name: str):
    """Check shape, dtype and values without loading a memory-mapped or lazy stack whole."""
    if isinstance(image, np.ndarray):
        volume = check_volume(image, name=name)
    else:
        try:
            dtype, shape = np.dtype(image.dtype), tuple(image.shape)
            image[0:0]
        except (AttributeError, TypeError):
            volume = check_volume(image, name=name)
        else:
            # A zero-stride stand-in lets check_volume judge shape and dtype of a lazy array-like
            # (e.g. io.LazyStack) without reading it.
            check_volume(np.broadcast_to(np.zeros((), dtype=dtype), shape), name=name)
            volume = image
    depth = volume.shape[0]
    planes = max(1, _SCAN_VOXELS // max(1, volume.shape[1] * volume.shape[2]))
    floating = np.issubdtype(volume.dtype, np.floating)
    low, high = math.inf, -math.inf
    for z0 in range(0, depth, planes):
        chunk = np.asarray(volume[z0:z0 + planes])
        if floating and not np.isfinite(chunk).all():
            check_image_values(np.asarray(volume), name=name)  # raises with the full NaN/Inf count
        low, high = min(low, chunk.min()), max(high, chunk.max())
    if low == high:
        check_image_values(np.asarray(volume[:1]), name=name)  # raises the "constant image" error
    return volume


def predict_volume(model, image, *, tile=None, overlap: float = 0.25, batch_size: int = 2,
                   device="auto", progress: bool = False, sigma_scale: float = 0.125,
                   divisor=None, channels_last: bool = True) -> np.ndarray:
    """Foreground probability of a whole stack by Gaussian-blended sliding-window inference.

    Parameters
    ----------
    model : TrainedModel or torch.nn.Module
        A 3D model from :func:`neuroseg_lite.train.train_3d` or :func:`neuroseg_lite.checkpoint.load_model`:
        the raw image is normalised by the model's own stored intensity normalisation (which reads the whole
        stack into memory). Or a bare network that maps (N, 1, z, y, x) float tensors to logits of the same
        shape (e.g. ``unet3d.UNet3D``): the image must then be normalised floats as in training (integer
        images are refused), and memory-mapped arrays and lazy array-likes (``io.read_stack(..., lazy=True)``)
        are read tile by tile. The network is moved to ``device`` and run in eval mode; its train/eval mode
        is restored afterwards.
    image : ndarray of shape (Z, Y, X)
        Any size; never modified.
    tile : tuple of 3 int, optional
        Tile size (z, y, x), multiples of the divisor. Default ``DEFAULT_TILE`` = (32, 64, 64). Each axis
        is clipped to the volume (rounded up to the divisor and filled by reflection padding). Tile starts
        are multiples of the divisor (see :func:`tile_positions`).
    overlap : float
        Minimum fraction of a tile shared with each neighbour, in [0, 1).
    batch_size : int
        Tiles per forward pass.
    device : {"auto", "cpu", "cuda", "mps"} or torch.device
    progress : bool
        Show a tqdm progress bar over tiles.
    sigma_scale : float
        Gaussian window standard deviation as a fraction of the tile size, per axis.
    divisor : tuple of 3 int, optional
        Factors every tile size must be a multiple of. Default: ``model.required_divisor()`` when the
        model has that method, else its ``divisor`` attribute (as ``UNet3D`` has), else (1, 1, 1).
    channels_last : bool
        Run the network in the channels-last 3D layout where :func:`neuroseg_lite.utils.memory_format_for`
        chooses it (CUDA and the CPU); False keeps the network's own layout (e.g. if a kernel is slow in it).

    Returns
    -------
    ndarray of shape (Z, Y, X), float32
        Sigmoid of the blended logits' tiles, in [0, 1].

    Notes
    -----
    Peak memory is the float32 output plus one batch of tiles and the network's activations for it
    (plus one tile-deep slab of the input for lazy array-likes). On CUDA the forward pass runs under
    bf16 (or fp16) autocast, where larger tiles and batches usually pay off; on the CPU it runs in float32.
    On both, the weights and tiles are in the channels-last 3D layout during the call (``channels_last``);
    a network that was not is converted back afterwards.
    """
    if isinstance(model, TrainedModel):
        if model.kind != "unet3d":
            raise NeurosegInputError(f"predict_volume needs a 3D U-Net, got a {model.kind!r} model; use "
                                     "neuroseg_lite.pseudolabel.predict_2d for a 2D model.")
        image, model = model.preprocess(np.asarray(image)), model.network
    elif not isinstance(model, torch.nn.Module):
        raise NeurosegInputError(f"model must be a TrainedModel or a torch.nn.Module, got {type(model).__name__}; "
                                 "pass e.g. the model returned by train_3d or checkpoint.load_model.")
    elif not np.issubdtype(np.dtype(getattr(image, "dtype", np.float32)), np.floating):
        raise NeurosegInputError(
            f"image has dtype {image.dtype} (raw detector counts?) and a bare network carries no intensity "
            "normalisation; pass the TrainedModel (train_3d / checkpoint.load_model), which normalises raw "
            "stacks itself, or normalise the image first (neuroseg_lite.io.normalize_percentile).")
    volume = _validate_image(image, "image")
    if not (isinstance(batch_size, (int, np.integer)) and batch_size >= 1):
        raise NeurosegInputError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if not 0.0 <= overlap < 1.0:
        raise NeurosegInputError(f"overlap must be in [0, 1) (a fraction of the tile), got {overlap!r}; "
                                 "0.25 is typical.")
    if not (np.isfinite(sigma_scale) and sigma_scale > 0):
        raise NeurosegInputError(f"sigma_scale must be a positive number (0.125 is typical), got {sigma_scale!r}.")
    shape = tuple(int(n) for n in volume.shape)
    divisor = _resolve_divisor(model, divisor)
    tile = _resolve_tile(tile, shape, divisor)
    windows = [gaussian_window(t, sigma_scale=sigma_scale) for t in tile]
    plans = [_plan_axis(n, t, d, overlap, w) for n, t, d, w in zip(shape, tile, divisor, windows)]
    pz, py, px = plans

    device = select_device(device)
    model.to(device)
    param = next(model.parameters(), None)
    input_dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    if device.type == "cuda":
        half = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        autocast = torch.autocast("cuda", dtype=half)
    else:
        autocast = contextlib.nullcontext()
    wz, wy, wx = windows
    window = torch.from_numpy((wz[:, None, None] * wy[None, :, None] * wx[None, None, :]).astype(np.float32))
    window = window.to(device)

    output = np.zeros(shape, dtype=np.float32)
    batch = np.empty((batch_size, 1) + tile, dtype=np.float32)
    pending: list[tuple[tuple[slice, ...], tuple[slice, ...]]] = []  # (volume region, tile region) per tile
    n_tiles = len(pz.sources) * len(py.sources) * len(px.sources)

    def flush():
        n = len(pending)
        inputs = torch.from_numpy(batch[:n]).to(device=device, dtype=input_dtype).contiguous(
            memory_format=memory_format)
        with autocast:
            logits = model(inputs)
        expected = (n, 1) + tile
        if tuple(logits.shape) != expected:
            raise NeurosegInputError(
                f"the model returned shape {tuple(logits.shape)} for input {expected}; predict_volume needs a "
                "network that maps (N, 1, z, y, x) to one logit channel of the same size (like UNet3D).")
        weighted = torch.sigmoid(logits[:, 0].float()).mul_(window).cpu().numpy()
        for i, (region, inside) in enumerate(pending):
            output[region] += weighted[i][inside]
        pending.clear()

    from tqdm.auto import tqdm

    # On the CPU, channels-last 3D weights let oneDNN run the U-Net's convolutions about twice as fast
    # (benchmarks/bench_infer3d.py), on CUDA they suit the tensor cores under autocast; the input alone is not
    # enough, since a 1-channel tensor already counts as channels-last. The weights are converted back
    # afterwards so the caller's model keeps its layout.
    memory_format = memory_format_for(device, channels_last=channels_last)
    to_channels_last = memory_format == torch.channels_last_3d and any(
        p.dim() == 5 and not p.is_contiguous(memory_format=torch.channels_last_3d) for p in model.parameters())
    was_training = model.training
    model.eval()
    if to_channels_last:
        model.to(memory_format=torch.channels_last_3d)
    try:
        with torch.inference_mode(), tqdm(total=n_tiles, disable=not progress, desc="predict_volume",
                                          unit="tile") as bar:
            for z0, nz, oz in pz.sources:
                # One tile-deep slab: a view for ndarrays and memmaps, a bounded read for lazy stacks.
                slab = volume[z0:z0 + nz]
                if not isinstance(slab, np.ndarray):
                    slab = np.asarray(slab)
                for y0, ny, oy in py.sources:
                    for x0, nx, ox in px.sources:
                        block = slab[:, y0:y0 + ny, x0:x0 + nx]
                        pads = [(o, t - o - n) for o, t, n in zip((oz, oy, ox), tile, (nz, ny, nx))]
                        slot = batch[len(pending), 0]
                        if any(before or after for before, after in pads):
                            slot[...] = np.pad(block.astype(np.float32), pads, mode="reflect")
                        else:
                            slot[...] = block  # the float32 conversion happens here, tile by tile
                        pending.append(((slice(z0, z0 + nz), slice(y0, y0 + ny), slice(x0, x0 + nx)),
                                        (slice(oz, oz + nz), slice(oy, oy + ny), slice(ox, ox + nx))))
                        if len(pending) == batch_size:
                            flush()
                            bar.update(batch_size)
            if pending:
                bar.update(len(pending))
                flush()
    finally:
        model.train(was_training)
        if to_channels_last:
            model.to(memory_format=torch.contiguous_format)

    # Divide by the summed weights: separable, so three 1D broadcasts in place, no full-size weight volume.
    for axis, plan in enumerate(plans):
        inverse = (1.0 / plan.weight_sum).astype(np.float32)
        output *= inverse.reshape([-1 if a == axis else 1 for a in range(3)])
    np.clip(output, 0.0, 1.0, out=output)  # rounding can leave values a few ULP outside [0, 1]
    return output
