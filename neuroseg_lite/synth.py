"""Synthetic two-photon stacks of cortex with a dense ground truth of neuronal bodies: the renderer.

Introduced in chapter 1 (``01_data``). The generator stands in for the paper's annotated human neocortex
volumes, which are not public: every knob of :class:`~neuroseg_lite.synthconfig.SynthConfig` is a physical
quantity (micrometres, cells per mm^3, photons) taken from the literature or stated as an assumption, and
nothing is tuned to favour a segmentation method. The configuration and its presets live in
:mod:`neuroseg_lite.synthconfig` (re-exported here: ``synth.SynthConfig``, ``synth.PRESETS``,
``synth.make_config``); where the objects go, and which voxels each covers, is decided in
``neuroseg_lite._synthgeometry``.

Image model, in order:

1. Objects are placed at random (rejection sampling, no overlaps): capillaries first, then neuronal somata
   (ellipsoids and tapered "pyramidal" bodies with an apical dendrite stub), then glial nuclei.
2. Each object is rendered inside its own bounding box as a stain density with partial-volume edges
   (the fraction of each voxel it covers), so sub-voxel positions survive the anisotropic sampling.
   Neurons carry a Nissl-like cytoplasmic stain: bright granular cytoplasm, a pale nucleus, a nucleolus.
3. Neuropil background (smooth autofluorescence plus fine texture) fills the space no cell occupies;
   vessel lumens are dark. Lipofuscin puncta are added as bright Gaussian granules.
4. A Gaussian PSF (wider in z), exponential attenuation with depth, Poisson photon noise, Gaussian read
   noise and a detector offset give the uint16 image.

The labels are the somata only (voxel centres inside a soma, before any blur): dendrite stubs, glia,
vessels and lipofuscin outside somata are not neuronal bodies.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from neuroseg_lite import synthconfig
from neuroseg_lite._checks import NeurosegInputError
from neuroseg_lite._synthgeometry import (
    _UM3_PER_MM3,
    _body,
    _box,
    _max_bound_factor,
    _partial_volume,
    _place_glia,
    _place_somata,
    _random_unit,
    _segment_distance,
    _vessel_paths,
)
from neuroseg_lite.synthconfig import SynthConfig, make_config, resolve_config

__all__ = ["SynthConfig", "SynthVolume", "SynthDataset", "PRESETS", "make_config", "make_volume", "make_dataset"]

#: The named configurations, the same dict as :data:`neuroseg_lite.synthconfig.PRESETS`.
PRESETS = synthconfig.PRESETS


@dataclass(repr=False)
class SynthVolume:
    """One synthetic stack and everything known about it.

    Attributes
    ----------
    image : ndarray of shape (Z, Y, X), uint16
    labels : ndarray of shape (Z, Y, X), bool
        Dense ground truth of neuronal bodies (somata; dendrites excluded).
    spacing : tuple of 3 floats, micrometres (z, y, x)
    instances : ndarray of shape (Z, Y, X), int32
        Soma ``i`` (row ``i - 1`` of ``soma_centers_um``) has value ``i``; 0 elsewhere.
    nucleus_mask, glia_mask, vessel_mask : ndarray of shape (Z, Y, X), bool
        Neuronal nuclei, glial nuclei and vessel lumens (for teaching and for tests).
    soma_centers_um : ndarray of shape (N, 3)
        Centres in micrometres from voxel (0, 0, 0); may lie just outside the volume for cut cells.
    soma_diameters_um : ndarray of shape (N,)
        Volume-equivalent diameters.
    soma_kinds : tuple of str
        "ellipsoid" or "pyramidal" per soma.
    config : SynthConfig
    seed : int
    """

    image: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]
    instances: np.ndarray
    nucleus_mask: np.ndarray
    glia_mask: np.ndarray
    vessel_mask: np.ndarray
    soma_centers_um: np.ndarray
    soma_diameters_um: np.ndarray
    soma_kinds: tuple[str, ...]
    config: SynthConfig
    seed: int

    @property
    def n_somata(self) -> int:
        return len(self.soma_diameters_um)

    @property
    def foreground_fraction(self) -> float:
        return float(self.labels.mean())

    def __repr__(self) -> str:
        return (f"SynthVolume(shape={self.image.shape}, spacing={self.spacing} µm, n_somata={self.n_somata}, "
                f"foreground_fraction={self.foreground_fraction:.3f}, seed={self.seed})")


@dataclass(repr=False)
class SynthDataset:
    """Training and held-out test volumes, as in the paper (3 train + 1 test), and optional validation volumes.

    ``seeds[i]`` rebuilds volume i of ``volumes``: the training volumes, the test volume, then the validation
    volumes.
    """

    train_images: list[np.ndarray]
    train_labels: list[np.ndarray]
    test_image: np.ndarray
    test_labels: np.ndarray
    spacing: tuple[float, float, float]
    config: SynthConfig
    seeds: list[int] = field(default_factory=list)
    volumes: list[SynthVolume] = field(default_factory=list)
    val_images: list[np.ndarray] = field(default_factory=list)
    val_labels: list[np.ndarray] = field(default_factory=list)

    def __repr__(self) -> str:
        return (f"SynthDataset(n_train={len(self.train_images)}, shape={self.test_image.shape}, "
                f"spacing={self.spacing} µm, seeds={self.seeds})")


# ---------------------------------------------------------------------------------------------- rendering
class _Canvas:
    """Accumulates the noise-free stain density of one volume, object by object, inside bounding boxes."""

    def __init__(self, shape, spacing, origin=(0, 0, 0)):
        self.shape = shape
        self.spacing = np.asarray(spacing)
        self.origin = origin  # volume index of voxel (0, 0, 0): a canvas may cover one block of a sample
        self.signal = np.zeros(shape, np.float32)  # stain of cells and granules
        self.occupied = np.zeros(shape, np.float32)  # where cells displace the neuropil background
        self.instances = np.zeros(shape, np.int32)
        self.nucleus = np.zeros(shape, bool)
        self.glia = np.zeros(shape, bool)

    def box(self, center_um, radius_um):
        return _box(center_um, radius_um, self.shape, self.spacing, self.origin)

    def paint(self, slices, occupancy, intensity):
        """Add stain where this object covers voxels no earlier object covers (objects never double up)."""
        covered = self.occupied[slices]
        self.signal[slices] += np.maximum(occupancy - covered, 0.0) * intensity
        np.maximum(covered, occupancy, out=covered)

    def splat(self, center_um, sigma_um, amplitude):
        """Add a Gaussian granule; each axis' sigma grows by the voxel's own variance h^2/12, which the
        PSF filter later leaves out, so the rendered granule ends up exactly granule (x) PSF."""
        sigma_um = np.asarray(sigma_um, dtype=float)
        sampled = np.sqrt(sigma_um ** 2 + self.spacing ** 2 / 12.0)
        slices, offsets = self.box(center_um, 3.0 * sampled)
        if slices is None:
            return
        peak = amplitude * np.prod(sigma_um / sampled)  # keep the granule's integrated brightness
        g = [np.exp(-0.5 * (offsets[i] / sampled[i]) ** 2) for i in range(3)]
        self.signal[slices] += (peak * g[0] * g[1] * g[2]).astype(np.float32)


def _smooth_field(rng, shape, spacing, scale_um):
    """Unit-variance random field varying over about ``scale_um``: coarse noise, linearly interpolated."""
    cell = scale_um / 2.0
    coarse_shape = [int(math.ceil((n - 1) * h / cell)) + 4 for n, h in zip(shape, spacing)]
    coarse = ndimage.gaussian_filter(rng.standard_normal(coarse_shape), 1.0, mode="wrap")
    coarse /= coarse.std() + 1e-12
    out = coarse
    for axis, (n, h, m) in enumerate(zip(shape, spacing, coarse_shape)):
        position = 1.5 + np.arange(n) * h / cell
        weights = np.zeros((n, m))
        low = np.floor(position).astype(int)
        frac = position - low
        weights[np.arange(n), low] = 1.0 - frac
        weights[np.arange(n), low + 1] = frac
        out = np.moveaxis(np.tensordot(weights, np.moveaxis(out, axis, 0), axes=(1, 0)), 0, axis)
    return out.astype(np.float32)


def _render_neuron(canvas, cell, index, cfg, texture):
    """Soma with pale nucleus, nucleolus and apical dendrite stub; the soma alone enters the labels."""
    slices, offsets = canvas.box(cell["center"], cell["bound"] + canvas.spacing.max())
    if slices is not None:
        occupancy, inside = _body(offsets, cell["rotation"], cell["semi_axes"], cell["taper"], canvas.spacing)
        nuc_offsets = [offsets[i] - cell["nucleus_center"][i] + cell["center"][i] for i in range(3)]
        nuc_occ, nuc_inside = _body(nuc_offsets, cell["rotation"], cell["nucleus_axes"], 0.0, canvas.spacing)
        stain = cell["brightness"] * (1.0 + cfg.stain_granularity * texture[slices])
        stain *= 1.0 - (1.0 - cfg.nucleus_brightness) * nuc_occ  # pale nucleus: Nissl stains cytoplasmic RNA
        canvas.paint(slices, occupancy, stain)
        canvas.instances[slices][inside] = index
        canvas.nucleus[slices] |= nuc_inside & inside
    if cfg.nucleolus_diameter_um > 0 and cfg.nucleolus_brightness > 0:
        canvas.splat(cell["nucleolus_center"], [cfg.nucleolus_diameter_um / 2.5] * 3,
                     cfg.nucleolus_brightness * cell["brightness"])
    if cell["dendrite_length"] > 0:
        # The apical dendrite stub leaves the apex; drawn after the soma, so it only adds stain outside it.
        axis = cell["rotation"][:, 0]
        start = cell["center"] + axis * cell["semi_axes"][0] * 0.8
        length = cell["dendrite_length"]
        slices, offsets = canvas.box(start + axis * length / 2, length / 2 + cfg.dendrite_radius_um + 2.0)
        if slices is not None:
            distance, t, diff = _segment_distance(offsets, -axis * length / 2, axis, length)
            radius = cfg.dendrite_radius_um * (1.0 - 0.5 * t)
            occupancy = _partial_volume(distance - radius, diff, canvas.spacing)
            canvas.paint(slices, occupancy, cell["brightness"] * (1.0 - 0.6 * t) *
                         (1.0 + cfg.stain_granularity * texture[slices]))


def _draw_cell_attributes(rng, cfg, cell, granules):
    """Draw a placed soma's nucleus, nucleolus, brightness and dendrite stub; append its lipofuscin granules."""
    fraction = rng.uniform(*cfg.nucleus_fraction)
    shift = -0.15 * cell["semi_axes"][0] if cell["taper"] > 0 else 0.0  # pyramid nuclei sit towards the base
    cell["nucleus_center"] = cell["center"] + cell["rotation"][:, 0] * shift
    cell["nucleus_axes"] = fraction * (cell["diameter"] / 2.0) * np.exp(rng.uniform(-0.1, 0.1, 3))
    cell["nucleolus_center"] = cell["nucleus_center"] + rng.normal(0.0, 0.3, 3) * cell["nucleus_axes"]
    cell["brightness"] = rng.lognormal(-0.5 * math.log1p(cfg.soma_brightness_cv ** 2),
                                       math.sqrt(math.log1p(cfg.soma_brightness_cv ** 2)))
    cell["dendrite_length"] = rng.uniform(*cfg.dendrite_length_um) if cell["kind"] == "pyramidal" else 0.0
    if rng.random() < cfg.lipofuscin_cell_fraction:
        # Lipofuscin gathers in one pole of the perikaryon; 0.8 of the semi-axes keeps it inside.
        pole = cell["center"] + cell["rotation"] @ (0.8 * _random_unit(rng) * cell["semi_axes"] *
                                                    np.array([1.0, 1 - cell["taper"], 1 - cell["taper"]]))
        for _ in range(rng.integers(cfg.lipofuscin_granules_per_cell[0], cfg.lipofuscin_granules_per_cell[1] + 1)):
            granules.append((pole + rng.normal(0.0, 1.0, 3), rng.uniform(*cfg.lipofuscin_sigma_um)))


def _render_glia(canvas, glia, cfg, texture):
    """Glial nuclei: stained, displacing the neuropil, never labelled."""
    for cell in glia:
        slices, offsets = canvas.box(cell["center"], cell["semi_axes"].max() + canvas.spacing.max())
        if slices is None:
            continue
        occupancy, inside = _body(offsets, cell["rotation"], cell["semi_axes"], 0.0, canvas.spacing)
        # Glial nuclei show clumped chromatin: twice the granularity of neuronal cytoplasm.
        canvas.paint(slices, occupancy, cell["brightness"] * (1.0 + 2.0 * cfg.stain_granularity * texture[slices]))
        canvas.glia[slices] |= inside


def _render_vessels(paths, cfg, shape, spacing, origin=(0, 0, 0)):
    """Multiplicative factor on the neuropil background (dark lumen, faint wall) and the lumen mask.

    ``shape`` voxels from volume index ``origin`` (the whole volume, or one block of a larger sample).
    """
    lumen = np.zeros(shape, np.float32)
    outer = np.zeros(shape, np.float32)
    mask = np.zeros(shape, bool)
    spacing = np.asarray(spacing)
    chunk = 6
    for points, radius in paths:
        reach = radius + cfg.vessel_wall_um + spacing[0]
        for first in range(0, len(points) - 1, chunk):
            piece = points[first:first + chunk + 1]
            slices, offsets = _box(piece.mean(axis=0), np.ptp(piece, axis=0) / 2 + reach, shape, spacing, origin)
            if slices is None:
                continue
            best, best_diff = None, None
            for a, b in zip(piece[:-1], piece[1:]):
                length = np.linalg.norm(b - a)
                distance, _, diff = _segment_distance(offsets, a - piece.mean(axis=0), (b - a) / length, length)
                if best is None:
                    best, best_diff = distance, diff
                else:
                    closer = distance < best
                    best = np.where(closer, distance, best)
                    best_diff = [np.where(closer, d, e) for d, e in zip(diff, best_diff)]
            np.maximum(lumen[slices], _partial_volume(best - radius, best_diff, spacing), out=lumen[slices])
            np.maximum(outer[slices], _partial_volume(best - radius - cfg.vessel_wall_um, best_diff, spacing),
                       out=outer[slices])
            mask[slices] |= best <= radius
    factor = 1.0 - (1.0 - cfg.vessel_lumen_level) * lumen + (cfg.vessel_wall_level - 1.0) * (outer - lumen)
    return factor, mask


def make_volume(*, seed=0, preset: str = "tutorial", config: SynthConfig | None = None, **overrides) -> SynthVolume:
    """Generate one synthetic two-photon stack of cortex with its dense soma ground truth.

    Parameters
    ----------
    seed : int or numpy.random.SeedSequence
        Same seed and config give identical arrays.
    preset : str
        Name in ``PRESETS``; ignored when ``config`` is given.
    config : SynthConfig, optional
    **overrides
        Any :class:`~neuroseg_lite.synthconfig.SynthConfig` field, applied on top of the preset or config.

    Returns
    -------
    SynthVolume
        ``image`` uint16 of shape (Z, Y, X), ``labels`` bool of shape (Z, Y, X), spacing and extras.

    Examples
    --------
    >>> volume = make_volume(seed=0, preset="tiny")
    >>> volume.image.shape, volume.image.dtype, volume.labels.dtype, volume.spacing
    ((16, 64, 64), dtype('uint16'), dtype('bool'), (2.0, 0.9, 0.9))
    >>> volume
    SynthVolume(shape=(16, 64, 64), spacing=(2.0, 0.9, 0.9) µm, n_somata=..., seed=0)
    >>> again = make_volume(seed=0, preset="tiny")  # same seed, same stack
    >>> bool((again.image == volume.image).all())
    True
    """
    cfg = resolve_config(preset, config, overrides)
    if not isinstance(seed, np.random.SeedSequence) and not (isinstance(seed, (int, np.integer)) and seed >= 0):
        raise NeurosegInputError(f"seed must be a non-negative integer, got {seed!r}.")
    rng = np.random.default_rng(seed)
    shape, spacing = cfg.shape, np.asarray(cfg.spacing)
    extent = (np.asarray(shape) - 1) * spacing
    # Centres are drawn in a margin around the volume too, so cells cut by the borders appear at the same
    # density as inside; the margin is the largest body radius any cell can have.
    margin = cfg.soma_diameter_um[1] / 2.0 * _max_bound_factor(cfg)
    lo, hi = -np.full(3, margin), extent + margin

    paths = _vessel_paths(rng, cfg, lo, hi) if cfg.vessel_length_density_mm_per_mm3 > 0 else []
    vessel_tree, vessel_reach = None, 0.0
    if paths:
        vessel_tree = cKDTree(np.concatenate([p for p, _ in paths]))
        vessel_reach = max(r for _, r in paths) + cfg.vessel_wall_um + 1.0  # + half a walk step
    cells, soma_centers, soma_reach = _place_somata(rng, cfg, lo, hi, vessel_tree, vessel_reach)
    glia = _place_glia(rng, cfg, lo, hi, soma_centers, soma_reach, vessel_tree, vessel_reach)

    texture = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), 0.6 / spacing)
    texture /= texture.std() + 1e-12
    canvas = _Canvas(shape, spacing)
    granules = []
    for index, cell in enumerate(cells, start=1):
        _draw_cell_attributes(rng, cfg, cell, granules)
        _render_neuron(canvas, cell, index, cfg, texture)
    _render_glia(canvas, glia, cfg, texture)
    n_free = rng.poisson(cfg.lipofuscin_density_per_mm3 * np.prod(hi - lo) / _UM3_PER_MM3)
    granules += [(rng.uniform(lo, hi), rng.uniform(*cfg.lipofuscin_sigma_um)) for _ in range(n_free)]
    for center, sigma in granules:
        canvas.splat(center, [sigma] * 3, cfg.lipofuscin_brightness * rng.lognormal(0.0, 0.4))

    background = cfg.background_level * np.clip(
        1.0 + cfg.background_variation * _smooth_field(rng, shape, spacing, cfg.background_scale_um), 0.0, None)
    background *= np.clip(1.0 + cfg.neuropil_texture * texture, 0.0, None)
    vessel_mask = np.zeros(shape, bool)
    if paths:
        factor, vessel_mask = _render_vessels(paths, cfg, shape, spacing)
        background *= factor
    fluorescence = background * (1.0 - canvas.occupied) + canvas.signal

    # Partial-volume rendering already spread each edge over one voxel (variance h^2/12); the filter adds
    # only the rest, so the total blur per axis equals the configured PSF.
    psf_var = np.asarray(cfg.psf_sigma_um) ** 2 - spacing ** 2 / 12.0
    sigma_vox = np.sqrt(np.clip(psf_var, 0.0, None)) / spacing
    fluorescence = ndimage.gaussian_filter(fluorescence, sigma_vox, mode="reflect")
    if cfg.attenuation_length_um is not None:
        depth = np.arange(shape[0]) * spacing[0]
        fluorescence *= np.exp(-depth / cfg.attenuation_length_um).astype(np.float32)[:, None, None]
    expected = cfg.photons_per_unit * np.clip(fluorescence, 0.0, None)
    if cfg.noise:
        counts = rng.poisson(expected).astype(np.float32)
        adu = cfg.offset_adu + cfg.gain_adu_per_photon * counts
        adu += rng.normal(0.0, cfg.read_noise_adu, shape).astype(np.float32)
    else:
        adu = cfg.offset_adu + cfg.gain_adu_per_photon * expected
    image = np.clip(np.rint(adu), 0, np.iinfo(np.uint16).max).astype(np.uint16)

    # Keep only somata with voxels in the volume and renumber them 1..N in placement order.
    present = np.flatnonzero(np.bincount(canvas.instances.ravel(), minlength=len(cells) + 1)[1:]) + 1
    relabel = np.zeros(len(cells) + 1, np.int32)
    relabel[present] = np.arange(1, len(present) + 1)
    instances = relabel[canvas.instances]
    kept = [cells[i - 1] for i in present]
    return SynthVolume(
        image=image, labels=instances > 0, spacing=tuple(float(s) for s in spacing), instances=instances,
        nucleus_mask=canvas.nucleus, glia_mask=canvas.glia, vessel_mask=vessel_mask,
        soma_centers_um=np.array([c["center"] for c in kept]).reshape(-1, 3),
        soma_diameters_um=np.array([c["diameter"] for c in kept]), soma_kinds=tuple(c["kind"] for c in kept),
        config=cfg, seed=seed if isinstance(seed, np.random.SeedSequence) else int(seed))


def make_dataset(*, n_train: int = 3, seed: int = 0, preset: str = "tutorial", config: SynthConfig | None = None,
                 n_val: int = 0, **overrides) -> SynthDataset:
    """Generate ``n_train`` training volumes and one held-out test volume (the paper used 3 + 1).

    Parameters
    ----------
    n_train : int
        Number of training volumes (>= 1).
    seed : int
        Master seed; volume ``i`` uses the i-th child of ``numpy.random.SeedSequence(seed)`` (the training
        volumes, then the test volume, then the validation volumes), so volumes are independent, each can be
        rebuilt from ``dataset.seeds[i]``, and asking for validation volumes leaves the others unchanged.
    preset : str
        Name in ``PRESETS``; ignored when ``config`` is given.
    config : SynthConfig, optional
    n_val : int
        Validation volumes (>= 0): for learning curves and checkpoint choice, never for the test score
        (chapter 5).
    **overrides
        Any :class:`~neuroseg_lite.synthconfig.SynthConfig` field, applied to every volume.

    Returns
    -------
    SynthDataset
        ``train_images`` / ``train_labels`` lists of (Z, Y, X) arrays, ``test_image``, ``test_labels``,
        ``val_images`` / ``val_labels`` (empty unless ``n_val``), spacing.

    Examples
    --------
    >>> data = make_dataset(n_train=2, seed=0, preset="tiny", noise=False)
    >>> len(data.train_images), data.test_image.shape, len(data.seeds)
    (2, (16, 64, 64), 3)
    >>> # any volume can be rebuilt from its seed
    >>> rebuilt = make_volume(seed=data.seeds[0], preset="tiny", noise=False)
    >>> bool((rebuilt.image == data.train_images[0]).all())
    True
    """
    if isinstance(n_train, bool) or not isinstance(n_train, (int, np.integer)) or n_train < 1:
        raise NeurosegInputError(f"n_train must be a positive integer (the paper used 3), got {n_train!r}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise NeurosegInputError(f"seed must be a non-negative integer, got {seed!r}.")
    if isinstance(n_val, bool) or not isinstance(n_val, (int, np.integer)) or n_val < 0:
        raise NeurosegInputError(f"n_val must be a non-negative integer, got {n_val!r}.")
    cfg = resolve_config(preset, config, overrides)
    children = np.random.SeedSequence(int(seed)).spawn(n_train + 1 + n_val)
    seeds = [int(child.generate_state(1)[0]) for child in children]
    volumes = [make_volume(seed=s, config=cfg) for s in seeds]
    train, test, val = volumes[:n_train], volumes[n_train], volumes[n_train + 1:]
    return SynthDataset(
        train_images=[v.image for v in train], train_labels=[v.labels for v in train],
        test_image=test.image, test_labels=test.labels, spacing=test.spacing, config=cfg,
        seeds=seeds, volumes=volumes, val_images=[v.image for v in val], val_labels=[v.labels for v in val])
