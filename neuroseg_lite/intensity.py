"""The intensity normalisation a network was trained with, stored in its model file and re-applied to new stacks.

Introduced in chapter 1 (``01_data``: why percentiles); every model file carries one
(:mod:`neuroseg_lite.checkpoint`), and training and prediction apply it themselves, so a model and its
preprocessing cannot be mismatched.

Not to be confused with the *loss* normalisation of :func:`neuroseg_lite.losses.weighted_bce`
(``TrainConfig.loss_normalization``), which decides what the weighted loss is divided by.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from neuroseg_lite._checks import NeurosegInputError, check_image_values, check_volume
from neuroseg_lite.io import normalize_percentile

__all__ = ["IntensityNormalization", "DEFAULT_INTENSITY_NORMALIZATION", "METHODS"]

METHODS = ("percentile", "none")


@dataclass(frozen=True)
class IntensityNormalization:
    """How raw intensities are mapped to what a network sees.

    Parameters
    ----------
    method : {"percentile", "none"}
        ``"percentile"``: map the ``low`` and ``high`` percentiles of each stack to 0 and 1
        (:func:`neuroseg_lite.io.normalize_percentile`). ``"none"``: the caller normalises; the input must
        then be floating point (an integer stack is refused, since it is almost surely raw detector counts).
    low, high : float
        Percentiles in [0, 100], ``low < high``.
    clip : bool
        Clip the normalised values to [0, 1].

    Examples
    --------
    >>> import numpy as np
    >>> raw = np.arange(1000, dtype=np.uint16).reshape(10, 10, 10)
    >>> out = IntensityNormalization(low=0.0, high=100.0).apply(raw)
    >>> out.dtype, float(out.min()), float(out.max())
    (dtype('float32'), 0.0, 1.0)
    """

    method: str = "percentile"
    low: float = 1.0
    high: float = 99.8
    clip: bool = False

    def __post_init__(self):
        if self.method not in METHODS:
            raise NeurosegInputError(f"intensity normalisation method must be one of {METHODS}, got "
                                     f"{self.method!r}.")
        if not 0.0 <= self.low < self.high <= 100.0:
            raise NeurosegInputError(f"percentiles must satisfy 0 <= low < high <= 100, got low={self.low}, "
                                     f"high={self.high}.")

    def apply(self, image, *, name: str = "image") -> np.ndarray:
        """Return the normalised float32 copy of ``image`` (Z, Y, X); the input is never modified."""
        image = check_volume(image, name=name)
        if self.method == "percentile":
            return normalize_percentile(image, low=self.low, high=self.high, clip=self.clip, name=name)
        if not np.issubdtype(image.dtype, np.floating):
            raise NeurosegInputError(
                f"{name} has dtype {image.dtype} (raw detector counts?), but this model was trained on images "
                "its user normalised (intensity normalisation 'none'). Normalise it the same way first, e.g. "
                "neuroseg_lite.io.normalize_percentile(image).")
        check_image_values(image, name=name)
        out = image.astype(np.float32, copy=True)
        return np.clip(out, 0.0, 1.0, out=out) if self.clip else out

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict | None) -> IntensityNormalization:
        """Rebuild from :meth:`to_dict`; None gives the default."""
        if values is None:
            return cls()
        known = {"method", "low", "high", "clip"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise NeurosegInputError(f"unknown intensity normalisation field(s) {unknown}; known: {sorted(known)}.")
        return cls(**values)


DEFAULT_INTENSITY_NORMALIZATION = IntensityNormalization()
