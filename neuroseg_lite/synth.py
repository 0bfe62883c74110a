"""Synthetic two-photon stacks of cortex with a dense ground truth of neuronal bodies.

Introduced in chapter 1 (``01_data``). The generator stands in for the paper's annotated human neocortex
volumes, which are not public: every knob of :class:`SynthConfig` is a physical quantity (micrometres,
cells per mm^3, photons) taken from the literature or stated as an assumption, and nothing is tuned to
favour a segmentation method.

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

import dataclasses
import math
import numbers
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from neuroseg_lite._checks import NeurosegInputError, check_spacing

__all__ = ["SynthConfig", "SynthVolume", "SynthDataset", "PRESETS", "make_config", "make_volume", "make_dataset"]

_UM3_PER_MM3 = 1e9


@dataclass(frozen=True)
class SynthConfig:
    """Every knob of the synthetic cortex, in physical units. Brightness is relative to a mean cytoplasm of 1.

    Defaults describe Nissl-like stained, cleared adult human neocortex imaged by two-photon microscopy.
    Ranges ``(low, high)`` are sampled uniformly (soma diameters log-uniformly: small cells are commoner).
    """

    shape: tuple[int, int, int] = (64, 256, 256)
    spacing: tuple[float, float, float] = (2.0, 0.9, 0.9)  # our assumption for the paper's TPFM stacks
    # Neurons. Human neocortex holds roughly 20-40k neurons/mm^3 (mouse ~90k); somata 10-25 um across.
    neuron_density_per_mm3: float = 30_000.0
    soma_diameter_um: tuple[float, float] = (10.0, 25.0)  # volume-equivalent diameter, log-uniform
    soma_aspect_max: float = 1.3  # longest / shortest axis of the rounder (non-pyramidal) somata
    pyramidal_fraction: float = 0.7  # about 70% of cortical neurons are excitatory pyramidal cells
    pyramid_taper: float = 0.6  # body narrows towards the apex (teardrop section)
    pyramid_elongation: float = 1.3  # apex-base axis over the volume-equivalent radius
    apical_direction: tuple[float, float, float] | None = (0.0, -1.0, 0.0)  # pia at y = 0; None: random
    apical_jitter_deg: float = 20.0  # apical dendrites run roughly parallel, radially through the cortex
    dendrite_length_um: tuple[float, float] = (8.0, 25.0)  # visible stub of the Nissl-stained apical dendrite
    dendrite_radius_um: float = 1.5  # at its base, tapering to half
    min_gap_um: float = 2.0  # between bounding spheres: somata may nearly touch but never overlap
    soma_brightness_cv: float = 0.3  # cell-to-cell variation of stain uptake (lognormal)
    stain_granularity: float = 0.2  # Nissl bodies make the cytoplasm granular (relative s.d. at ~0.6 um)
    nucleus_fraction: tuple[float, float] = (0.45, 0.6)  # nucleus semi-axes relative to the soma radius
    nucleus_brightness: float = 0.35  # Nissl dyes bind RNA: the nucleus is pale next to the cytoplasm
    nucleolus_diameter_um: float = 2.0
    nucleolus_brightness: float = 0.9  # the RNA-rich nucleolus stains strongly
    # Glial nuclei: not neurons, not labelled. About 1.5 glia per neuron in human grey matter, 5-8 um nuclei,
    # faint with a Nissl stain; some sit against a neuron as perineuronal satellite oligodendrocytes.
    glia_density_per_mm3: float = 45_000.0
    glia_diameter_um: tuple[float, float] = (5.0, 8.0)
    glia_brightness: float = 0.35
    glia_satellite_fraction: float = 0.2
    # Lipofuscin: bright, broadband autofluorescent granules (0.5-2 um) that accumulate with age, in
    # clusters inside many adult human neurons and scattered in glia and perivascular cells outside.
    lipofuscin_cell_fraction: float = 0.5
    lipofuscin_granules_per_cell: tuple[int, int] = (2, 8)
    lipofuscin_density_per_mm3: float = 60_000.0  # outside somata
    lipofuscin_sigma_um: tuple[float, float] = (0.3, 0.7)  # Gaussian radius of one granule
    lipofuscin_brightness: float = 3.0  # peak, before blur
    # Capillaries: a few hundred mm of capillary per mm^3 of human cortex (mouse ~900), 4-8 um wide.
    # A cytoplasmic stain leaves the lumen dark; the basal lamina gives a faint autofluorescent wall.
    # Red blood cells (left in unperfused post-mortem tissue) are not modelled.
    vessel_length_density_mm_per_mm3: float = 300.0
    vessel_diameter_um: tuple[float, float] = (4.0, 8.0)
    vessel_wall_um: float = 1.0
    vessel_persistence_um: float = 40.0  # how far a capillary runs before turning (random-walk persistence)
    vessel_lumen_level: float = 0.1  # times the local background
    vessel_wall_level: float = 1.5  # times the local background
    # Neuropil: unresolved dendrites and axons plus tissue autofluorescence, smooth at ~30 um.
    background_level: float = 0.25
    background_variation: float = 0.25  # relative s.d. of the slow component
    background_scale_um: float = 30.0
    neuropil_texture: float = 0.15  # relative s.d. of the fine (~0.6 um) component
    # Optics and detector. Signal decay with depth in cleared tissue (excitation + emission, effective);
    # two-photon PSF: lateral FWHM 0.8 um, axial FWHM 4 um (FWHM = 2.355 sigma) for a moderate-NA objective
    # deep in tissue; resonant scanning collects only tens of photons per voxel; PMT + digitiser noise.
    attenuation_length_um: float | None = 250.0  # None: no attenuation
    psf_sigma_um: tuple[float, float, float] = (1.70, 0.34, 0.34)
    photons_per_unit: float = 20.0  # expected photons for brightness 1 (a mean cytoplasm) at the top plane
    gain_adu_per_photon: float = 20.0
    read_noise_adu: float = 10.0  # Gaussian, s.d. (0.5 photon here)
    offset_adu: float = 100.0  # detector baseline, keeps noise from clipping at 0
    noise: bool = True  # False: the noise-free expected image (for teaching and tests)

    def __post_init__(self):
        _validate(self)


# scalar fields -> smallest allowed value
_SCALARS = {
    "neuron_density_per_mm3": 0.0, "soma_aspect_max": 1.0, "pyramid_elongation": 1.0, "apical_jitter_deg": 0.0,
    "dendrite_radius_um": 0.0, "min_gap_um": 0.0, "soma_brightness_cv": 0.0, "stain_granularity": 0.0,
    "nucleus_brightness": 0.0, "nucleolus_diameter_um": 0.0, "nucleolus_brightness": 0.0,
    "glia_density_per_mm3": 0.0, "glia_brightness": 0.0, "lipofuscin_density_per_mm3": 0.0,
    "lipofuscin_brightness": 0.0, "vessel_length_density_mm_per_mm3": 0.0, "vessel_wall_um": 0.0,
    "vessel_lumen_level": 0.0, "vessel_wall_level": 0.0, "background_level": 0.0, "background_variation": 0.0,
    "neuropil_texture": 0.0, "read_noise_adu": 0.0, "offset_adu": 0.0,
}
_POSITIVE = ("vessel_persistence_um", "background_scale_um", "photons_per_unit", "gain_adu_per_photon")
_FRACTIONS = ("pyramidal_fraction", "glia_satellite_fraction", "lipofuscin_cell_fraction")
_RANGES = {  # (low, high) fields -> whether low must be > 0 (else >= 0)
    "soma_diameter_um": True, "dendrite_length_um": False, "nucleus_fraction": True, "glia_diameter_um": True,
    "lipofuscin_granules_per_cell": False, "lipofuscin_sigma_um": True, "vessel_diameter_um": True,
}


def _bad(name, value, need):
    return NeurosegInputError(f"SynthConfig.{name} = {value!r} is invalid: {need}.")


def _validate(cfg: SynthConfig) -> None:
    setter = object.__setattr__  # frozen dataclass: normalise lists to tuples once, here
    try:
        shape = tuple(cfg.shape)
    except TypeError:
        raise _bad("shape", cfg.shape, "give three positive integers (Z, Y, X)") from None
    if len(shape) != 3 or not all(isinstance(n, numbers.Integral) and n >= 1 for n in shape):
        raise _bad("shape", cfg.shape, "give three positive integers (Z, Y, X), e.g. (64, 256, 256)")
    setter(cfg, "shape", tuple(int(n) for n in shape))
    if not isinstance(cfg.noise, (bool, np.bool_)):
        raise _bad("noise", cfg.noise, "use True (Poisson-Gaussian noise) or False (the expected image)")
    setter(cfg, "spacing", check_spacing(cfg.spacing))
    for name, low in _SCALARS.items():
        value = getattr(cfg, name)
        if not (isinstance(value, numbers.Real) and math.isfinite(value) and value >= low):
            raise _bad(name, value, f"it must be a finite number >= {low}")
    for name in _POSITIVE:
        value = getattr(cfg, name)
        if not (isinstance(value, numbers.Real) and math.isfinite(value) and value > 0):
            raise _bad(name, value, "it must be a finite number > 0")
    for name in _FRACTIONS:
        value = getattr(cfg, name)
        if not (isinstance(value, numbers.Real) and 0.0 <= value <= 1.0):
            raise _bad(name, value, "it is a fraction between 0 and 1")
    if not 0.0 <= cfg.pyramid_taper < 1.0:
        raise _bad("pyramid_taper", cfg.pyramid_taper, "use 0 (no taper) up to just below 1 (pointed apex)")
    for name, strict in _RANGES.items():
        value = getattr(cfg, name)
        try:
            low, high = (float(v) for v in value)
        except (TypeError, ValueError):
            raise _bad(name, value, "give a (low, high) pair of numbers") from None
        if not (math.isfinite(low) and math.isfinite(high) and (low > 0 if strict else low >= 0) and low <= high):
            sign = "> 0" if strict else ">= 0"
            raise _bad(name, value, f"give (low, high) with {sign} low <= high")
        if name == "lipofuscin_granules_per_cell":
            if low != int(low) or high != int(high):
                raise _bad(name, value, "give whole numbers of granules, e.g. (2, 8)")
            low, high = int(low), int(high)
        setter(cfg, name, (low, high))
    if cfg.nucleus_fraction[1] >= 1.0:
        raise _bad("nucleus_fraction", cfg.nucleus_fraction, "the nucleus must be smaller than its soma (< 1)")
    try:
        psf = tuple(float(s) for s in cfg.psf_sigma_um)
    except (TypeError, ValueError):
        raise _bad("psf_sigma_um", cfg.psf_sigma_um, "give three sigmas (z, y, x) in micrometres") from None
    if len(psf) != 3 or not all(math.isfinite(s) and s >= 0 for s in psf):
        raise _bad("psf_sigma_um", cfg.psf_sigma_um, "give three non-negative sigmas (z, y, x) in micrometres")
    setter(cfg, "psf_sigma_um", psf)
    if cfg.attenuation_length_um is not None and not cfg.attenuation_length_um > 0:
        raise _bad("attenuation_length_um", cfg.attenuation_length_um, "give a length > 0 um, or None for none")
    if cfg.apical_direction is not None:
        direction = np.asarray(cfg.apical_direction, dtype=float)
        if direction.shape != (3,) or not np.all(np.isfinite(direction)) or np.linalg.norm(direction) == 0:
            raise _bad("apical_direction", cfg.apical_direction, "give a non-zero (z, y, x) vector, or None")
        setter(cfg, "apical_direction", tuple(float(d) for d in direction))


_DISTRACTORS_OFF = dict(glia_density_per_mm3=0.0, lipofuscin_cell_fraction=0.0, lipofuscin_density_per_mm3=0.0,
                        vessel_length_density_mm_per_mm3=0.0, dendrite_length_um=(0.0, 0.0))
PRESETS: dict[str, SynthConfig] = {
    "tutorial": SynthConfig(),
    "small": SynthConfig(shape=(32, 128, 128)),
    # Mouse-like density and sizes so that a 32 x 58 x 58 um crop still holds several whole somata.
    "tiny": SynthConfig(shape=(16, 64, 64), neuron_density_per_mm3=90_000.0, soma_diameter_um=(8.0, 16.0)),
    # Shallow, bright, high-NA imaging of clean tissue: a sanity-check level, not a realistic one.
    "easy": SynthConfig(psf_sigma_um=(1.0, 0.3, 0.3), photons_per_unit=80.0, read_noise_adu=5.0,
                        neuropil_texture=0.05, background_variation=0.1, **_DISTRACTORS_OFF),
    # Deep imaging through aberrating tissue of an aged brain: wider PSF, fewer photons, more distractors.
    "hard": SynthConfig(psf_sigma_um=(2.5, 0.45, 0.45), photons_per_unit=6.0, read_noise_adu=15.0,
                        attenuation_length_um=150.0, soma_brightness_cv=0.45, glia_density_per_mm3=60_000.0,
                        glia_brightness=0.5, glia_satellite_fraction=0.3, lipofuscin_cell_fraction=0.8,
                        lipofuscin_density_per_mm3=150_000.0, vessel_length_density_mm_per_mm3=450.0,
                        background_variation=0.4),
    # Adult mouse cortex: denser, smaller neurons, little lipofuscin, denser capillaries.
    "mouse": SynthConfig(neuron_density_per_mm3=90_000.0, soma_diameter_um=(9.0, 16.0), glia_density_per_mm3=60_000.0,
                         lipofuscin_cell_fraction=0.05, lipofuscin_density_per_mm3=5_000.0,
                         vessel_length_density_mm_per_mm3=900.0),
}


def make_config(preset: str = "tutorial", **overrides) -> SynthConfig:
    """Return the config of a preset with some fields replaced.

    Parameters
    ----------
    preset : str
        One of ``PRESETS`` ("tutorial", "small", "tiny", "easy", "hard", "mouse").
    **overrides
        Any :class:`SynthConfig` field, e.g. ``psf_sigma_um=(1.0, 0.34, 0.34)``.

    Returns
    -------
    SynthConfig
    """
    if not isinstance(preset, str) or preset not in PRESETS:
        raise NeurosegInputError(f"unknown synth preset {preset!r}; choose one of {sorted(PRESETS)}.")
    return _apply_overrides(PRESETS[preset], overrides)


def _apply_overrides(config: SynthConfig, overrides: dict) -> SynthConfig:
    names = [f.name for f in dataclasses.fields(SynthConfig)]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise NeurosegInputError(f"unknown SynthConfig field(s) {unknown}; valid names are: {', '.join(names)}.")
    return dataclasses.replace(config, **overrides) if overrides else config


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
        return (f"SynthVolume(shape={self.image.shape}, spacing={self.spacing} um, n_somata={self.n_somata}, "
                f"foreground_fraction={self.foreground_fraction:.3f}, seed={self.seed})")


@dataclass(repr=False)
class SynthDataset:
    """Training and held-out test volumes, as in the paper (3 train + 1 test). ``seeds[i]`` rebuilds volume i."""

    train_images: list[np.ndarray]
    train_labels: list[np.ndarray]
    test_image: np.ndarray
    test_labels: np.ndarray
    spacing: tuple[float, float, float]
    config: SynthConfig
    seeds: list[int] = field(default_factory=list)
    volumes: list[SynthVolume] = field(default_factory=list)

    def __repr__(self) -> str:
        return (f"SynthDataset(n_train={len(self.train_images)}, shape={self.test_image.shape}, "
                f"spacing={self.spacing} um, seeds={self.seeds})")


# ----------------------------------------------------------------------------------------------- geometry
def _random_unit(rng) -> np.ndarray:
    v = rng.standard_normal(3)
    return v / np.linalg.norm(v)


def _frame_from_axis(axis, rng) -> np.ndarray:
    """Rotation matrix whose first column is ``axis`` (body axes as columns, world order z, y, x)."""
    helper = _random_unit(rng)
    second = helper - axis * (helper @ axis)
    if np.linalg.norm(second) < 1e-6:
        second = np.roll(axis, 1) - axis * (np.roll(axis, 1) @ axis)
    second /= np.linalg.norm(second)
    return np.stack([axis, second, np.cross(axis, second)], axis=1)


def _taper_volume_factor(taper: float) -> float:
    """Volume of the tapered body relative to the ellipsoid with the same semi-axes."""
    t = np.linspace(-1.0, 1.0, 2001)
    profile = (1.0 - taper * (t + 1.0) / 2.0) ** 2 * (1.0 - t * t)
    return float(np.sum(profile) * (t[1] - t[0]) / (4.0 / 3.0))


def _max_bound_factor(cfg: SynthConfig) -> float:
    """Largest semi-axis any soma can have, in units of its volume-equivalent radius."""
    lateral = math.sqrt(cfg.soma_aspect_max / cfg.pyramid_elongation / _taper_volume_factor(cfg.pyramid_taper))
    return max(cfg.soma_aspect_max, cfg.pyramid_elongation, lateral)


def _partial_volume(signed_distance, grad, spacing) -> np.ndarray:
    """Fraction of each voxel inside a surface, linear in the signed distance across the voxel's width.

    The width of a voxel box measured along the surface normal is sum_i |n_i| h_i, so the ramp spans
    exactly one voxel whichever way the surface faces (2 um across z, 0.9 um across x).
    """
    gz, gy, gx = grad
    norm = np.sqrt(gz * gz + gy * gy + gx * gx) + 1e-12
    width = (np.abs(gz) * spacing[0] + np.abs(gy) * spacing[1] + np.abs(gx) * spacing[2]) / norm
    return np.clip(0.5 - signed_distance / width, 0.0, 1.0).astype(np.float32)


def _body(offsets, rotation, semi_axes, taper, spacing):
    """Occupancy and inside-mask of a (tapered) ellipsoid evaluated on box offsets from its centre (um).

    The body is t^2 + lateral^2 / s(t)^2 <= 1 with t the coordinate along the first body axis in units
    of that semi-axis and s(t) shrinking linearly from 1 at the base (t = -1) to 1 - taper at the apex.
    """
    dz, dy, dx = offsets
    q = [rotation[0, k] * dz + rotation[1, k] * dy + rotation[2, k] * dx for k in range(3)]
    a0, a1, a2 = semi_axes
    t = q[0] / a0
    lateral = (q[1] / a1) ** 2 + (q[2] / a2) ** 2
    if taper > 0:
        s = np.clip(1.0 - taper * (t + 1.0) / 2.0, 1.0 - taper, 1.0)
        g0 = 2.0 * t / a0 + lateral * taper / (a0 * s ** 3)
    else:
        s = 1.0
        g0 = 2.0 * t / a0
    f = t * t + lateral / (s * s)
    g1 = 2.0 * q[1] / (a1 * a1 * s * s)
    g2 = 2.0 * q[2] / (a2 * a2 * s * s)
    grad = [rotation[i, 0] * g0 + rotation[i, 1] * g1 + rotation[i, 2] * g2 for i in range(3)]
    rho = np.sqrt(f)
    norm = np.sqrt(grad[0] ** 2 + grad[1] ** 2 + grad[2] ** 2) + 1e-12
    signed_distance = 2.0 * rho * (rho - 1.0) / norm  # first-order distance: (rho - 1) / |grad rho|
    return _partial_volume(signed_distance, grad, spacing), f <= 1.0


def _segment_distance(offsets, start, direction, length):
    """Distance from box points to a segment, the position t in [0, 1] along it, and the normal vector."""
    d = [offsets[i] - start[i] for i in range(3)]
    along = d[0] * direction[0] + d[1] * direction[1] + d[2] * direction[2]
    t = np.clip(along / length, 0.0, 1.0)
    diff = [d[i] - t * length * direction[i] for i in range(3)]
    return np.sqrt(diff[0] ** 2 + diff[1] ** 2 + diff[2] ** 2), t, diff


def _box(center_um, radius_um, shape, spacing):
    """Slices and per-axis offsets (um, broadcastable) of the voxels within ``radius_um`` of a point."""
    lo = np.maximum(np.floor((center_um - radius_um) / spacing).astype(int), 0)
    hi = np.minimum(np.ceil((center_um + radius_um) / spacing).astype(int) + 1, shape)
    if np.any(hi <= lo):
        return None, None
    slices = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    offsets = []
    for axis in range(3):
        axis_shape = [1, 1, 1]
        axis_shape[axis] = hi[axis] - lo[axis]
        offsets.append((np.arange(lo[axis], hi[axis]) * spacing[axis] - center_um[axis]).reshape(axis_shape))
    return slices, offsets


class _Canvas:
    """Accumulates the noise-free stain density of one volume, object by object, inside bounding boxes."""

    def __init__(self, shape, spacing):
        self.shape = shape
        self.spacing = np.asarray(spacing)
        self.signal = np.zeros(shape, np.float32)  # stain of cells and granules
        self.occupied = np.zeros(shape, np.float32)  # where cells displace the neuropil background
        self.instances = np.zeros(shape, np.int32)
        self.nucleus = np.zeros(shape, bool)
        self.glia = np.zeros(shape, bool)

    def box(self, center_um, radius_um):
        return _box(center_um, radius_um, self.shape, self.spacing)

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


# ---------------------------------------------------------------------------------------------- placement
def _vessel_paths(rng, cfg, lo, hi):
    """Persistent random walks (2 um steps) crossing the box until the capillary length density is reached.

    Each walk enters through a face (chosen by area) heading inwards with a cosine-weighted direction,
    which for straight lines gives the same length density everywhere in the box; walks started inside
    would crowd the centre.
    """
    size = hi - lo
    target_um = cfg.vessel_length_density_mm_per_mm3 * np.prod(size) / _UM3_PER_MM3 * 1000.0
    step, turn = 2.0, math.sqrt(2.0 * 2.0 / cfg.vessel_persistence_um)
    face_area = np.array([size[1] * size[2], size[0] * size[2], size[0] * size[1]])
    paths, total = [], 0.0
    while total < target_um and len(paths) < 500:
        axis = rng.choice(3, p=face_area / face_area.sum())
        inward = np.zeros(3)
        inward[axis] = 1.0 if rng.random() < 0.5 else -1.0
        point = rng.uniform(lo, hi)
        point[axis] = lo[axis] if inward[axis] > 0 else hi[axis]
        direction = inward + _random_unit(rng)  # normal + uniform unit vector: cosine-weighted around normal
        direction /= np.linalg.norm(direction)
        points = [point]
        for _ in range(2000):
            direction = direction + rng.normal(0.0, turn, 3)
            direction /= np.linalg.norm(direction)
            point = point + step * direction
            points.append(point)
            if np.any(point < lo) or np.any(point > hi):
                break
        paths.append((np.array(points), rng.uniform(*cfg.vessel_diameter_um) / 2.0))
        total += step * (len(points) - 1)
    return paths


def _periodic_distance(centers, point, size):
    """Distances on the torus of the sampling box, so that its walls do not crowd cells against them."""
    delta = centers - point
    delta -= size * np.round(delta / size)
    return np.sqrt(np.einsum("ij,ij->i", delta, delta))


def _place_somata(rng, cfg, lo, hi, vessel_tree, vessel_reach):
    """Random sequential addition: each soma is redrawn up to 50 places before it is given up.

    Somata are drawn in a box larger than the volume by the largest soma radius, so that cut cells at the
    borders are as frequent as real ones; distances wrap around that box (no crowding at its walls).
    """
    n_target = rng.poisson(cfg.neuron_density_per_mm3 * np.prod(hi - lo) / _UM3_PER_MM3)
    log_d = np.log(cfg.soma_diameter_um)
    taper_gain = 1.0 / math.sqrt(_taper_volume_factor(cfg.pyramid_taper))
    apical = None if cfg.apical_direction is None else np.asarray(cfg.apical_direction) / np.linalg.norm(
        cfg.apical_direction)
    cells = []
    centers = np.empty((n_target, 3))
    reach = np.empty(n_target)
    for _ in range(n_target):
        radius = math.exp(rng.uniform(*log_d)) / 2.0
        pyramidal = rng.random() < cfg.pyramidal_fraction
        aspect = np.exp(rng.uniform(-0.5, 0.5, 2) * math.log(cfg.soma_aspect_max))
        if pyramidal:
            axis = _random_unit(rng) if apical is None else apical + math.radians(
                cfg.apical_jitter_deg) * rng.standard_normal(3)
            rotation = _frame_from_axis(axis / np.linalg.norm(axis), rng)
            elong = cfg.pyramid_elongation
            lateral = radius * taper_gain / math.sqrt(elong)
            semi_axes = np.array([radius * elong, lateral * aspect[0], lateral / aspect[0]])
            taper = cfg.pyramid_taper
        else:
            rotation = _frame_from_axis(_random_unit(rng), rng)
            semi_axes = radius * np.array([aspect[0], aspect[1], 1.0 / (aspect[0] * aspect[1])])
            taper = 0.0
        bound = float(semi_axes.max())
        for _ in range(50):
            center = rng.uniform(lo, hi)
            if vessel_tree is not None and vessel_tree.query(center)[0] < bound + vessel_reach + cfg.min_gap_um:
                continue
            n = len(cells)
            if n and np.any(_periodic_distance(centers[:n], center, hi - lo) < reach[:n] + bound + cfg.min_gap_um):
                continue
            centers[n], reach[n] = center, bound
            cells.append(dict(center=center, rotation=rotation, semi_axes=semi_axes, taper=taper, bound=bound,
                              diameter=2.0 * radius, kind="pyramidal" if pyramidal else "ellipsoid"))
            break
    return cells, centers[:len(cells)], reach[:len(cells)]


def _place_glia(rng, cfg, lo, hi, soma_centers, soma_reach, vessel_tree, vessel_reach):
    """Glial nuclei between somata and vessels; a fraction sits against a soma as satellite cells do."""
    n_target = rng.poisson(cfg.glia_density_per_mm3 * np.prod(hi - lo) / _UM3_PER_MM3)
    glia, centers, reach = [], np.empty((n_target, 3)), np.empty(n_target)
    for _ in range(n_target):
        aspect = np.exp(rng.uniform(-0.5, 0.5, 2) * math.log(1.4))
        semi_axes = rng.uniform(*cfg.glia_diameter_um) / 2.0 * np.array(
            [aspect[0], aspect[1], 1.0 / (aspect[0] * aspect[1])])
        bound = float(semi_axes.max())
        satellite = len(soma_centers) > 0 and rng.random() < cfg.glia_satellite_fraction
        gap = 0.5 if satellite else cfg.min_gap_um  # satellite oligodendrocytes rest against the soma
        for _ in range(50):
            if satellite:
                host = rng.integers(len(soma_centers))
                center = soma_centers[host] + _random_unit(rng) * (soma_reach[host] + bound + gap + 0.1)
            else:
                center = rng.uniform(lo, hi)
            if len(soma_centers) and np.any(
                    _periodic_distance(soma_centers, center, hi - lo) < soma_reach + bound + gap):
                continue
            if vessel_tree is not None and vessel_tree.query(center)[0] < bound + vessel_reach:
                continue
            n = len(glia)
            if n and np.any(_periodic_distance(centers[:n], center, hi - lo) < reach[:n] + bound + 1.0):
                continue
            centers[n], reach[n] = center, bound
            glia.append(dict(center=center, rotation=_frame_from_axis(_random_unit(rng), rng), semi_axes=semi_axes,
                             brightness=cfg.glia_brightness * rng.lognormal(0.0, 0.3)))
            break
    return glia


# ---------------------------------------------------------------------------------------------- rendering
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


def _render_vessels(paths, cfg, shape, spacing):
    """Multiplicative factor on the neuropil background (dark lumen, faint wall) and the lumen mask."""
    lumen = np.zeros(shape, np.float32)
    outer = np.zeros(shape, np.float32)
    mask = np.zeros(shape, bool)
    spacing = np.asarray(spacing)
    chunk = 6
    for points, radius in paths:
        reach = radius + cfg.vessel_wall_um + spacing[0]
        for first in range(0, len(points) - 1, chunk):
            piece = points[first:first + chunk + 1]
            slices, offsets = _box(piece.mean(axis=0), np.ptp(piece, axis=0) / 2 + reach, shape, spacing)
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


def _resolve_config(preset: str, config, overrides: dict) -> SynthConfig:
    """The configuration a generator call asks for: ``config`` with ``overrides``, else the named preset's."""
    if config is None:
        return make_config(preset, **overrides)
    if isinstance(config, SynthConfig):
        return _apply_overrides(config, overrides)
    raise NeurosegInputError(f"config must be a SynthConfig (see make_config), got {type(config).__name__}.")


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
        Any :class:`SynthConfig` field, applied on top of the preset or config.

    Returns
    -------
    SynthVolume
        ``image`` uint16 of shape (Z, Y, X), ``labels`` bool of shape (Z, Y, X), spacing and extras.
    """
    cfg = _resolve_config(preset, config, overrides)
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
            for _ in range(rng.integers(cfg.lipofuscin_granules_per_cell[0],
                                        cfg.lipofuscin_granules_per_cell[1] + 1)):
                granules.append((pole + rng.normal(0.0, 1.0, 3), rng.uniform(*cfg.lipofuscin_sigma_um)))
        _render_neuron(canvas, cell, index, cfg, texture)
    for cell in glia:
        slices, offsets = canvas.box(cell["center"], cell["semi_axes"].max() + spacing.max())
        if slices is None:
            continue
        occupancy, inside = _body(offsets, cell["rotation"], cell["semi_axes"], 0.0, spacing)
        # Glial nuclei show clumped chromatin: twice the granularity of neuronal cytoplasm.
        canvas.paint(slices, occupancy, cell["brightness"] * (1.0 + 2.0 * cfg.stain_granularity * texture[slices]))
        canvas.glia[slices] |= inside
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
                 **overrides) -> SynthDataset:
    """Generate ``n_train`` training volumes and one held-out test volume (the paper used 3 + 1).

    Parameters
    ----------
    n_train : int
        Number of training volumes (>= 1).
    seed : int
        Master seed; volume ``i`` uses the i-th child of ``numpy.random.SeedSequence(seed)`` (the test
        volume is the last), so volumes are independent and each can be rebuilt from ``dataset.seeds[i]``.
    preset : str
        Name in ``PRESETS``; ignored when ``config`` is given.
    config : SynthConfig, optional
    **overrides
        Any :class:`SynthConfig` field, applied to every volume.

    Returns
    -------
    SynthDataset
        ``train_images`` / ``train_labels`` lists of (Z, Y, X) arrays, ``test_image``, ``test_labels``, spacing.
    """
    if isinstance(n_train, bool) or not isinstance(n_train, (int, np.integer)) or n_train < 1:
        raise NeurosegInputError(f"n_train must be a positive integer (the paper used 3), got {n_train!r}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise NeurosegInputError(f"seed must be a non-negative integer, got {seed!r}.")
    cfg = _resolve_config(preset, config, overrides)
    seeds = [int(child.generate_state(1)[0]) for child in np.random.SeedSequence(int(seed)).spawn(n_train + 1)]
    volumes = [make_volume(seed=s, config=cfg) for s in seeds]
    return SynthDataset(
        train_images=[v.image for v in volumes[:-1]], train_labels=[v.labels for v in volumes[:-1]],
        test_image=volumes[-1].image, test_labels=volumes[-1].labels, spacing=volumes[-1].spacing, config=cfg,
        seeds=seeds, volumes=volumes)
