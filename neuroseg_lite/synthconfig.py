"""The synthetic cortex's configuration: every knob as a physical quantity, its checks, and the presets.

Introduced in chapter 1 (``01_data``). :class:`SynthConfig` holds the knobs (micrometres, cells per mm^3,
photons) with their sources or stated assumptions and checks them when it is built; ``PRESETS`` names the
configurations the book uses; :func:`make_config` and :func:`resolve_config` turn a preset name, a config and
field overrides into one checked :class:`SynthConfig`. The renderer that turns a config into a stack is
:mod:`neuroseg_lite.synth`.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass

import numpy as np

from neuroseg_lite._checks import NeurosegInputError, check_spacing

__all__ = ["SynthConfig", "PRESETS", "make_config", "resolve_config"]


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
#: The named configurations, by name. "tutorial" is the book's default (:class:`SynthConfig`'s defaults);
#: "small" and "tiny" are smaller crops ("tiny" with mouse-like density); "tall" is a narrow column twice as
#: deep as "tutorial" (128 planes, so that one annotated plane is under 1 % of a volume, as in real stacks of
#: hundreds of planes); "easy", "hard" and "mouse" vary the optics and the tissue.
PRESETS: dict[str, SynthConfig] = {
    "tutorial": SynthConfig(),
    "small": SynthConfig(shape=(32, 128, 128)),
    "tall": SynthConfig(shape=(128, 128, 128)),
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
        One of ``PRESETS`` ("tutorial", "small", "tall", "tiny", "easy", "hard", "mouse").
    **overrides
        Any :class:`SynthConfig` field, e.g. ``psf_sigma_um=(1.0, 0.34, 0.34)``.

    Returns
    -------
    SynthConfig

    Examples
    --------
    >>> config = make_config("tiny", noise=False)
    >>> config.shape, config.noise
    ((16, 64, 64), False)
    >>> make_config("tiny", colour="green")
    Traceback (most recent call last):
    ...
    neuroseg_lite._checks.NeurosegInputError: unknown SynthConfig field(s) ['colour']; ...
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


def resolve_config(preset: str, config, overrides: dict) -> SynthConfig:
    """The configuration a generator call asks for: ``config`` with ``overrides``, else the named preset's.

    Parameters
    ----------
    preset : str
        Name in ``PRESETS``; ignored when ``config`` is given.
    config : SynthConfig or None
    overrides : dict
        :class:`SynthConfig` fields to replace.

    Returns
    -------
    SynthConfig

    Examples
    --------
    >>> resolve_config("tiny", None, {"noise": False}).noise
    False
    >>> resolve_config("tutorial", make_config("small"), {}).shape
    (32, 128, 128)
    """
    if config is None:
        return make_config(preset, **overrides)
    if isinstance(config, SynthConfig):
        return _apply_overrides(config, overrides)
    raise NeurosegInputError(f"config must be a SynthConfig (see make_config), got {type(config).__name__}.")
