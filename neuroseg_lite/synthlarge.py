"""A synthetic sample larger than memory: rendered block by block, written straight to OME-Zarr.

Introduced in chapter 10 (``10_whole_sample``). :func:`neuroseg_lite.synth.make_volume` renders a whole stack in
memory; a whole-sample pipeline needs a test sample as large as a real one, with its ground truth, so this
module renders the same image model one block at a time and the sample's size is bounded by disk only.

1. :func:`plan_sample` places every object once, globally, with the same draws as ``make_volume`` for the
   same seed and shape, and the per-soma attributes (nucleus, brightness, dendrite stub, lipofuscin). The
   plan is small even for large samples. It holds the truth table too: each soma's voxels in the volume,
   from the soma alone (somata never overlap, so these are exactly the labels).
2. The random fields (fine texture, the smooth background's coarse grid, the detector's Poisson and read
   noise) come from a fixed global grid of noise tiles, each seeded from ``(seed, field, tile index)``, so
   any region reads the same values whichever block asks for them.
3. :func:`render_block` renders the region grown to whole detector tiles plus the Gaussian filters' reach
   (``int(4 sigma + 0.5)`` voxels, scipy's truncation) on a canvas indexed like the sample, then crops.
   Each voxel is computed from the same inputs with the same arithmetic in every block: any two blockings
   give identical arrays, and somata crossing block borders are whole (tested).
4. :func:`write_sample` writes image (uint16) and ``labels/neurons`` (int32 ids) with
   :func:`neuroseg_lite.zarrio.create_image` / ``create_labels``, block by block (optionally on a
   dask.distributed client), and the neuron list as ``<path>/neurons.csv`` (:func:`read_truth`).

Versus ``make_volume`` with the same seed and preset the placement and so the labels are identical (tested),
the intensities agree statistically but not voxel by voxel: the noise fields and the per-soma attributes are
other draws (make_volume draws its texture between placement and attributes), texture and background are
normalised by their analytic standard deviation instead of the empirical one, and fields run on past the
volume's borders instead of being reflected there. Placement is make_volume's random sequential addition,
quadratic in the number of cells (about 6 s for 1,700 somata and 3,200 glia), and capillaries stop at 500
paths (enough up to about 0.5 mm^3).
"""
from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from neuroseg_lite._checks import NeurosegInputError
from neuroseg_lite._synthgeometry import (
    _UM3_PER_MM3,
    _body,
    _box,
    _max_bound_factor,
    _place_glia,
    _place_somata,
    _vessel_paths,
)
from neuroseg_lite.synth import _Canvas, _draw_cell_attributes, _render_glia, _render_neuron, _render_vessels
from neuroseg_lite.synthconfig import SynthConfig, make_config

__all__ = ["SamplePlan", "plan_sample", "render_block", "write_sample", "ensure_sample", "read_truth"]

_TILE = (8, 32, 32)  # noise tile (voxels); small, so a block's halo costs few extra draws
_COARSE_TILE = (8, 8, 8)  # tiles of the background's coarse grid (grid points)
_KEY_OFFSET = 1 << 31  # tile indices go negative in the halo before voxel 0; SeedSequence keys may not
_TEXTURE, _BACKGROUND, _DETECTOR = 0, 1, 2  # the random fields, part of each tile's seed
_TRUTH_FILE = "neurons.csv"


def _radius(sigma: float) -> int:
    """Reach of scipy's Gaussian filter (truncate=4) in voxels; 0 where the axis is not filtered."""
    return int(4.0 * float(sigma) + 0.5) if sigma > 1e-15 else 0


def _filtered_std(sigmas) -> float:
    """Standard deviation of unit white noise after scipy's separable, truncated Gaussian filter."""
    std = 1.0
    for sigma in sigmas:
        r = _radius(sigma)
        if r:
            weights = np.exp(-0.5 * np.arange(-r, r + 1) ** 2 / sigma ** 2)
            std *= math.sqrt(np.sum((weights / weights.sum()) ** 2))
    return std


@dataclass(repr=False)
class SamplePlan:
    """Everything placed in a sample, globally; :func:`render_block` turns any region of it into arrays.

    Attributes
    ----------
    config : SynthConfig
        ``config.shape`` is the sample's (Z, Y, X) shape.
    seed : int
    cells, glia : list of dict
        Placed somata (with every per-cell attribute; ``"id"`` is the label value, 0 for somata with no
        voxel in the volume) and glial nuclei.
    granules : tuple of 3 ndarrays
        Lipofuscin centres (G, 3) um, Gaussian radii (G,) um and peak brightnesses (G,).
    paths : list of (ndarray of shape (P, 3), float)
        Capillary centre lines (um) and radii.
    bounds : dict
        Per kind of object, (lo, hi) arrays of shape (N, 3): the um box each object can paint.
    neurons : pandas.DataFrame
        The truth table (see :func:`read_truth`).
    """

    config: SynthConfig
    seed: int
    cells: list
    glia: list
    granules: tuple
    paths: list
    bounds: dict
    neurons: object

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.config.shape

    @property
    def spacing(self) -> np.ndarray:
        return np.asarray(self.config.spacing)

    @property
    def psf_sigma(self) -> np.ndarray:
        """What the filter adds to the partial-volume edges (see make_volume), in voxels (z, y, x)."""
        var = np.asarray(self.config.psf_sigma_um) ** 2 - self.spacing ** 2 / 12.0
        return np.sqrt(np.clip(var, 0.0, None)) / self.spacing

    def __repr__(self) -> str:
        return (f"SamplePlan(shape={self.shape}, spacing={self.config.spacing} µm, n_somata={len(self.neurons)}, "
                f"n_glia={len(self.glia)}, n_vessels={len(self.paths)}, seed={self.seed})")


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise NeurosegInputError(f"seed must be a non-negative integer, got {seed!r}; pass e.g. seed=0.")
    return int(seed)


def plan_sample(*, shape=None, seed=0, preset: str = "tutorial", **overrides) -> SamplePlan:
    """Place every object of a sample once; small data even for a large sample.

    Parameters
    ----------
    shape : tuple of 3 ints, optional
        The sample's (Z, Y, X) size in voxels; None: the preset's.
    seed : int
        Same seed, shape and config give the same sample (and the same placement as ``make_volume``).
    preset : str
        Name in :data:`neuroseg_lite.synth.PRESETS`; ``shape`` replaces its shape.
    **overrides
        Any :class:`~neuroseg_lite.synthconfig.SynthConfig` field but ``shape``.

    Returns
    -------
    SamplePlan

    Examples
    --------
    >>> plan = plan_sample(shape=(16, 64, 64), seed=0, preset="tiny")
    >>> plan
    SamplePlan(shape=(16, 64, 64), spacing=(2.0, 0.9, 0.9) µm, n_somata=..., seed=0)
    """
    import pandas as pd

    seed = _check_seed(seed)
    cfg = make_config(preset, **overrides if shape is None else {**overrides, "shape": shape})
    rng = np.random.default_rng(seed)
    shape, spacing = cfg.shape, np.asarray(cfg.spacing)
    # The same draws in the same order as make_volume, so the placement (and the labels) are its own.
    margin = cfg.soma_diameter_um[1] / 2.0 * _max_bound_factor(cfg)
    lo, hi = -np.full(3, margin), (np.asarray(shape) - 1) * spacing + margin
    paths = _vessel_paths(rng, cfg, lo, hi) if cfg.vessel_length_density_mm_per_mm3 > 0 else []
    vessel_tree, vessel_reach = None, 0.0
    if paths:
        vessel_tree = cKDTree(np.concatenate([p for p, _ in paths]))
        vessel_reach = max(r for _, r in paths) + cfg.vessel_wall_um + 1.0
    cells, soma_centers, soma_reach = _place_somata(rng, cfg, lo, hi, vessel_tree, vessel_reach)
    glia = _place_glia(rng, cfg, lo, hi, soma_centers, soma_reach, vessel_tree, vessel_reach)
    granules = []
    for cell in cells:
        _draw_cell_attributes(rng, cfg, cell, granules)
    n_free = rng.poisson(cfg.lipofuscin_density_per_mm3 * np.prod(hi - lo) / _UM3_PER_MM3)
    granules += [(rng.uniform(lo, hi), rng.uniform(*cfg.lipofuscin_sigma_um)) for _ in range(n_free)]
    g_centers = np.array([c for c, _ in granules]).reshape(-1, 3)
    g_sigmas = np.array([s for _, s in granules])
    g_peaks = cfg.lipofuscin_brightness * rng.lognormal(0.0, 0.4, len(granules))

    # Label ids: somata with voxels in the volume, 1..N in placement order (as make_volume numbers them).
    rows = []
    for cell in cells:
        cell["id"] = 0
        slices, offsets = _box(cell["center"], cell["bound"] + spacing.max(), shape, spacing)
        if slices is None:
            continue
        inside = _body(offsets, cell["rotation"], cell["semi_axes"], cell["taper"], spacing)[1]
        where = np.nonzero(inside)
        if len(where[0]) == 0:
            continue
        cell["id"] = len(rows) + 1
        centroid = [(where[a].mean() + slices[a].start) * spacing[a] for a in range(3)]
        rows.append(dict(id=cell["id"], z_um=centroid[0], y_um=centroid[1], x_um=centroid[2],
                         diameter_um=cell["diameter"], kind=cell["kind"], n_voxels=len(where[0]),
                         volume_um3=len(where[0]) * float(np.prod(spacing)), center_z_um=cell["center"][0],
                         center_y_um=cell["center"][1], center_x_um=cell["center"][2]))
    columns = ["id", "z_um", "y_um", "x_um", "diameter_um", "kind", "n_voxels", "volume_um3",
               "center_z_um", "center_y_um", "center_x_um"]
    neurons = pd.DataFrame(rows, columns=columns)

    # The um box each object can paint (a voxel more than each renderer's own box), for culling per block.
    h = spacing.max()
    reach = [_cell_reach(c, cfg) + h for c in cells]
    bounds = {"cells": _around([c["center"] for c in cells], reach),
              "glia": _around([g["center"] for g in glia], [g["semi_axes"].max() + 2 * h for g in glia]),
              "granules": _around(g_centers, 3.0 * np.sqrt(g_sigmas ** 2 + h ** 2 / 12.0) + h)}
    wall = cfg.vessel_wall_um + spacing[0] + h
    bounds["paths"] = (np.array([p.min(axis=0) - r - wall for p, r in paths]).reshape(-1, 3),
                       np.array([p.max(axis=0) + r + wall for p, r in paths]).reshape(-1, 3))
    return SamplePlan(config=cfg, seed=seed, cells=cells, glia=glia, granules=(g_centers, g_sigmas, g_peaks),
                      paths=paths, bounds=bounds, neurons=neurons)


def _cell_reach(cell, cfg) -> float:
    """Largest distance from a soma's centre at which its soma, nucleolus or dendrite stub paints (um)."""
    sampled = math.sqrt((cfg.nucleolus_diameter_um / 2.5) ** 2 + max(cfg.spacing) ** 2 / 12.0)
    reach = max(cell["bound"], np.linalg.norm(cell["nucleolus_center"] - cell["center"]) + 3.0 * sampled)
    if cell["dendrite_length"] > 0:
        reach = max(reach, cell["semi_axes"][0] * 0.8 + cell["dendrite_length"] + cfg.dendrite_radius_um + 2.0)
    return float(reach) + max(cfg.spacing)


def _around(centers, reach):
    centers = np.asarray(centers, dtype=float).reshape(-1, 3)
    reach = np.asarray(reach, dtype=float).reshape(-1, 1)
    return centers - reach, centers + reach


def _select(bounds, lo_um, hi_um) -> np.ndarray:
    """Indices (in placement order, which painting depends on) of the objects reaching into a box."""
    lo, hi = bounds
    return np.flatnonzero(np.all((hi >= lo_um) & (lo <= hi_um), axis=1))


def _tile_rng(seed, field, index):
    key = (field, *(int(i) + _KEY_OFFSET for i in index))
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _tiled_normal(seed, field, lo, hi, tile, dtype):
    """Standard normal values at voxels lo..hi (end exclusive, any integers) of an endless tiled field."""
    lo, hi, tile = np.asarray(lo), np.asarray(hi), np.asarray(tile)
    out = np.empty(tuple(hi - lo), dtype)
    for index in itertools.product(*(range(a, b + 1) for a, b in zip(lo // tile, (hi - 1) // tile))):
        start = np.asarray(index) * tile
        a, b = np.maximum(start, lo), np.minimum(start + tile, hi)
        values = _tile_rng(seed, field, index).standard_normal(tuple(tile), dtype=dtype)
        out[tuple(slice(i - j, k - j) for i, j, k in zip(a, lo, b))] = values[
            tuple(slice(i - j, k - j) for i, j, k in zip(a, start, b))]
    return out


def _texture(plan, lo, hi):
    """Fine neuropil and stain texture at voxels lo..hi: white noise, Gaussian filter, unit s.d."""
    sigma = 0.6 / plan.spacing
    r = np.array([_radius(s) for s in sigma])
    noise = _tiled_normal(plan.seed, _TEXTURE, lo - r, hi + r, _TILE, np.float32)
    texture = ndimage.gaussian_filter(noise, sigma)[tuple(slice(a, n - a) for a, n in zip(r, noise.shape))]
    texture /= _filtered_std(sigma)
    return texture


def _background_field(plan, lo, hi):
    """Unit-variance smooth field at voxels lo..hi: a coarse random grid, filtered, interpolated linearly."""
    cell = plan.config.background_scale_um / 2.0
    positions = [1.5 + np.arange(a, b) * h / cell for a, b, h in zip(lo, hi, plan.spacing)]
    lows = [np.floor(p).astype(int) for p in positions]
    c_lo, c_hi = np.array([low.min() for low in lows]), np.array([low.max() + 2 for low in lows])
    r = _radius(1.0)
    noise = _tiled_normal(plan.seed, _BACKGROUND, c_lo - r, c_hi + r, _COARSE_TILE, np.float64)
    out = ndimage.gaussian_filter(noise, 1.0)[r:-r, r:-r, r:-r] / _filtered_std([1.0] * 3)
    for axis, (p, low) in enumerate(zip(positions, lows)):
        shape = [1, 1, 1]
        shape[axis] = len(p)
        frac = (p - low).reshape(shape)
        out = (np.take(out, low - c_lo[axis], axis=axis) * (1.0 - frac) +
               np.take(out, low + 1 - c_lo[axis], axis=axis) * frac)
    return out.astype(np.float32)


def _detect(plan, expected, lo):
    """Photon counts and detector noise, drawn tile by tile; ``expected`` covers whole tiles from ``lo``."""
    cfg = plan.config
    if not cfg.noise:
        adu = cfg.offset_adu + cfg.gain_adu_per_photon * expected
    else:
        tile = np.asarray(_TILE)
        adu = np.empty_like(expected)
        for local in itertools.product(*(range(0, n, t) for n, t in zip(expected.shape, tile))):
            part = tuple(slice(a, a + t) for a, t in zip(local, tile))
            rng = _tile_rng(plan.seed, _DETECTOR, (np.asarray(local) + lo) // tile)
            counts = rng.poisson(expected[part]).astype(np.float32)
            adu[part] = cfg.offset_adu + cfg.gain_adu_per_photon * counts
            adu[part] += rng.normal(0.0, cfg.read_noise_adu, tuple(tile)).astype(np.float32)
    return np.clip(np.rint(adu), 0, np.iinfo(np.uint16).max).astype(np.uint16)


def _check_region(region, shape):
    try:
        bounds = [(0 if s.start is None else s.start, n if s.stop is None else s.stop, s.step)
                  for s, n in zip(region, shape, strict=True)]
        if not all(isinstance(a, (int, np.integer)) and isinstance(b, (int, np.integer)) and 0 <= a < b <= n
                   and step in (None, 1) for (a, b, step), n in zip(bounds, shape)):
            raise ValueError
    except (TypeError, ValueError, AttributeError):
        raise NeurosegInputError(f"region must be three non-empty slices (Z, Y, X) with step 1 inside the sample "
                                 f"of shape {shape}, got {region!r}; e.g. (slice(0, 16), slice(0, 64), "
                                 f"slice(64, 128)).") from None
    return np.array([int(a) for a, _, _ in bounds]), np.array([int(b) for _, b, _ in bounds])


def render_block(plan: SamplePlan, region) -> tuple[np.ndarray, np.ndarray]:
    """Render one region of a planned sample: the same values whatever blocking it is part of.

    Parameters
    ----------
    plan : SamplePlan
        From :func:`plan_sample`.
    region : tuple of 3 slices
        (Z, Y, X) voxel ranges inside ``plan.shape``; any start and size.

    Returns
    -------
    image : ndarray of shape (z, y, x), uint16
    labels : ndarray of shape (z, y, x), int32
        Soma instance ids (``plan.neurons.id``), 0 elsewhere.

    Examples
    --------
    >>> plan = plan_sample(shape=(16, 64, 64), seed=0, preset="tiny")
    >>> image, labels = render_block(plan, (slice(0, 16), slice(10, 40), slice(0, 64)))
    >>> whole, _ = render_block(plan, (slice(0, 16), slice(0, 64), slice(0, 64)))
    >>> image.shape, image.dtype, labels.dtype, bool((whole[:, 10:40] == image).all())
    ((16, 30, 64), dtype('uint16'), dtype('int32'), True)
    """
    if not isinstance(plan, SamplePlan):
        raise NeurosegInputError(f"plan must be a SamplePlan from plan_sample(...), got {type(plan).__name__}.")
    start, stop = _check_region(region, plan.shape)
    cfg, spacing, tile = plan.config, plan.spacing, np.asarray(_TILE)
    # Noise is drawn per whole detector tile; the canvas adds the PSF filter's reach around those tiles.
    t_lo, t_hi = start // tile * tile, -(-stop // tile) * tile
    r = np.array([_radius(s) for s in plan.psf_sigma])
    c_lo, c_hi = t_lo - r, t_hi + r
    canvas = _Canvas(tuple(int(n) for n in c_hi - c_lo), spacing, origin=c_lo)
    texture = _texture(plan, c_lo, c_hi)
    lo_um, hi_um = c_lo * spacing, (c_hi - 1) * spacing
    for i in _select(plan.bounds["cells"], lo_um, hi_um):
        _render_neuron(canvas, plan.cells[i], plan.cells[i]["id"], cfg, texture)
    _render_glia(canvas, [plan.glia[i] for i in _select(plan.bounds["glia"], lo_um, hi_um)], cfg, texture)
    centers, sigmas, peaks = plan.granules
    for i in _select(plan.bounds["granules"], lo_um, hi_um):
        canvas.splat(centers[i], [sigmas[i]] * 3, peaks[i])

    background = cfg.background_level * np.clip(
        1.0 + cfg.background_variation * _background_field(plan, c_lo, c_hi), 0.0, None)
    background *= np.clip(1.0 + cfg.neuropil_texture * texture, 0.0, None)
    paths = [plan.paths[i] for i in _select(plan.bounds["paths"], lo_um, hi_um)]
    if paths:
        background *= _render_vessels(paths, cfg, canvas.shape, spacing, origin=c_lo)[0]
    fluorescence = background * (1.0 - canvas.occupied) + canvas.signal
    fluorescence = ndimage.gaussian_filter(fluorescence, plan.psf_sigma, mode="reflect")
    fluorescence = fluorescence[tuple(slice(a, n - a) for a, n in zip(r, canvas.shape))]
    if cfg.attenuation_length_um is not None:
        depth = np.arange(t_lo[0], t_hi[0]) * spacing[0]
        fluorescence *= np.exp(-depth / cfg.attenuation_length_um).astype(np.float32)[:, None, None]
    image = _detect(plan, cfg.photons_per_unit * np.clip(fluorescence, 0.0, None), t_lo)
    image = image[tuple(slice(a - t, b - t) for a, b, t in zip(start, stop, t_lo))]
    labels = canvas.instances[tuple(slice(a - c, b - c) for a, b, c in zip(start, stop, c_lo))]
    return image, labels


def _write_block(region, plan, image, labels):
    block_image, block_labels = render_block(plan, region)
    image[region] = block_image
    labels[region] = block_labels
    return int(np.count_nonzero(block_labels))


def _deciding_record(*, preset: str, seed: int, config: SynthConfig, overrides: dict) -> dict:
    """Everything that decides a sample's voxels, as JSON values; the blocking does not."""
    from neuroseg_lite import __version__

    return dict(generator="neuroseg_lite.synthlarge.write_sample", version=__version__, preset=preset, seed=seed,
                shape=list(config.shape), spacing=list(config.spacing),
                overrides=json.loads(json.dumps(overrides, default=lambda v: np.asarray(v).tolist())),
                noise_tile=list(_TILE))


def write_sample(path, *, shape=None, seed=0, preset: str = "tutorial", block=(64, 256, 256), overwrite: bool = False,
                 progress: bool = True, client=None, **overrides) -> Path:
    """Render a synthetic sample block by block straight into an OME-Zarr image with its ground truth.

    Memory holds one block (and the plan) at a time, so the size is bounded by disk. The result does not
    depend on ``block``: any blocking gives identical arrays.

    Parameters
    ----------
    path : str or Path
        The OME-Zarr folder to create (e.g. ``"sample.ome.zarr"``).
    shape : tuple of 3 ints, optional
        (Z, Y, X) voxels; None: the preset's.
    seed : int
    preset : str
        Name in :data:`neuroseg_lite.synth.PRESETS` (``shape`` replaces its shape).
    block : tuple of 3 ints
        Voxels rendered at once, also the Zarr chunk shape; multiples of (8, 32, 32) waste no noise draws.
    overwrite : bool
        Replace an existing ``path``; otherwise it is an error.
    progress : bool
        Show a progress bar over the blocks.
    client : dask.distributed.Client, optional
        Render the blocks as tasks on its workers (each writes its own chunks); None renders them here.
    **overrides
        Any :class:`~neuroseg_lite.synthconfig.SynthConfig` field but ``shape``.

    Returns
    -------
    Path
        ``path``: level ``0`` image uint16, ``labels/neurons/0`` int32 instance ids, ``neurons.csv``
        (:func:`read_truth`), and the generator record under ``attrs["neuroseg_lite"]["synthlarge"]``.

    Examples
    --------
    >>> out = write_sample("sample.ome.zarr", shape=(16, 64, 64), preset="tiny",
    ...                    block=(16, 32, 32), progress=False)
    >>> truth = read_truth(out)
    >>> list(truth.columns[:6])
    ['id', 'z_um', 'y_um', 'x_um', 'diameter_um', 'kind']
    """
    from tqdm.auto import tqdm

    from neuroseg_lite import zarrio
    from neuroseg_lite.cache import atomic_write

    path = Path(path)
    if path.exists() and not overwrite:
        raise NeurosegInputError(f"'{path}' already exists and was left untouched; pass overwrite=True to replace "
                                 "it, or choose another path.")
    try:
        block = tuple(int(b) for b in block)
        if len(block) != 3 or min(block) < 1:
            raise ValueError
    except (TypeError, ValueError):
        raise NeurosegInputError(f"block must be three positive integers (Z, Y, X), got {block!r}; e.g. "
                                 "block=(64, 256, 256).") from None
    plan = plan_sample(shape=shape, seed=seed, preset=preset, **overrides)
    shape, spacing = plan.shape, plan.config.spacing
    block = tuple(min(b, n) for b, n in zip(block, shape))
    record = dict(_deciding_record(preset=preset, seed=plan.seed, config=plan.config, overrides=overrides),
                  block=list(block), labels="labels/neurons", truth=_TRUTH_FILE, n_somata=len(plan.neurons))
    image = zarrio.create_image(path, shape=shape, dtype=np.uint16, chunks=block, spacing=spacing, name="image",
                                overwrite=overwrite, attrs={"synthlarge": record})
    labels = zarrio.create_labels(path, "neurons", dtype=np.int32, chunks=block)
    regions = [tuple(slice(a, min(a + b, n)) for a, b, n in zip(corner, block, shape))
               for corner in itertools.product(*(range(0, n, b) for n, b in zip(shape, block)))]
    bar = tqdm(total=len(regions), desc="synthetic sample", unit="block", disable=not progress)
    if client is None:
        for region in regions:
            _write_block(region, plan, image, labels)
            bar.update()
    else:
        from distributed import as_completed

        shared = client.scatter(plan, broadcast=True)
        futures = client.map(_write_block, regions, plan=shared, image=image, labels=labels, pure=False)
        for future in as_completed(futures):
            future.result()  # a worker's error surfaces here
            bar.update()
    bar.close()
    # Written last: a sample without its truth table is an interrupted one (read_truth says so).
    atomic_write(path / _TRUTH_FILE, lambda tmp: plan.neurons.to_csv(tmp, index=False))
    return path




def ensure_sample(path, *, shape=None, seed=0, preset: str = "tutorial", block=(64, 256, 256),
                  progress: bool = True, client=None, **overrides) -> Path:
    """Reuse the sample at ``path`` if it is the one asked for, else write it (:func:`write_sample`).

    A sample is reused only when it is complete (its truth table exists) and its generator record matches
    the request on everything that decides its voxels (preset, overrides, seed, shape, spacing, noise tiling,
    package version); ``block`` does not, since every blocking gives the same arrays. A sample from other
    settings, or an interrupted one, is written anew with a :class:`~neuroseg_lite.cache.StaleCacheWarning`;
    a folder that this module did not write is never replaced.

    Parameters
    ----------
    path, shape, seed, preset, block, progress, client, **overrides
        As in :func:`write_sample`.

    Returns
    -------
    Path
    """
    import warnings

    from neuroseg_lite import zarrio
    from neuroseg_lite.cache import StaleCacheWarning

    path = Path(path)
    if not path.exists():
        return write_sample(path, shape=shape, seed=seed, preset=preset, block=block, progress=progress,
                            client=client, **overrides)
    try:
        stored = (zarrio.describe(path).get("attrs") or {}).get("synthlarge")
    except NeurosegInputError:
        stored = None
    if stored is None:
        raise NeurosegInputError(f"'{path}' exists but is not a sample written by synthlarge.write_sample, so it is "
                                 "left untouched; choose another path.")
    config = make_config(preset, **overrides if shape is None else {**overrides, "shape": tuple(shape)})
    wanted = _deciding_record(preset=preset, seed=_check_seed(seed), config=config, overrides=overrides)
    differences = [key for key, value in wanted.items() if stored.get(key) != value]
    if not differences and (path / _TRUTH_FILE).is_file():
        return path
    reason = (f"it differs from the request in {', '.join(differences)}" if differences
              else "it was interrupted (no truth table)")
    warnings.warn(f"rewriting the sample {path}: {reason}.", StaleCacheWarning, stacklevel=2)
    return write_sample(path, shape=shape, seed=seed, preset=preset, block=block, overwrite=True,
                        progress=progress, client=client, **overrides)


def read_truth(path):
    """The neuron list of a sample written by :func:`write_sample`.

    Parameters
    ----------
    path : str or Path
        The sample's OME-Zarr folder (or its ``neurons.csv``).

    Returns
    -------
    pandas.DataFrame
        One row per soma with voxels in the volume: ``id`` (its value in ``labels/neurons``), ``z_um``,
        ``y_um``, ``x_um`` (centroid of its voxels, um from voxel (0, 0, 0)), ``diameter_um``
        (volume-equivalent, as generated), ``kind`` ("pyramidal"/"ellipsoid"), ``n_voxels``, ``volume_um3``,
        and ``center_z_um``, ``center_y_um``, ``center_x_um`` (the generator's centre, maybe outside).
    """
    import pandas as pd

    path = Path(path)
    table = path if path.suffix == ".csv" else path / _TRUTH_FILE
    if not table.is_file():
        hint = ("the sample was interrupted before it finished; write it again with write_sample(..., "
                "overwrite=True)" if path.is_dir() else "check the path (write_sample creates it)")
        raise NeurosegInputError(f"No neuron list at '{table}': {hint}.")
    return pd.read_csv(table, dtype={"kind": str})
