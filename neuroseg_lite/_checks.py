"""Input validation shared by every module.

Each check raises :class:`NeurosegInputError` with a message that names the problem *and* the fix,
because most users meet these errors in a notebook cell, far from the code that raised them.
"""
from __future__ import annotations

import numpy as np

__all__ = [
    "NeurosegInputError",
    "check_volume",
    "check_image_values",
    "check_same_shape",
    "check_spacing",
    "check_mask",
]


class NeurosegInputError(ValueError):
    """Raised when user-supplied data or options are unusable; the message says how to fix it."""


def check_volume(array, *, name: str = "image") -> np.ndarray:
    """Return ``array`` as a numpy array after checking it is a non-empty 3D (Z, Y, X) volume.

    Parameters
    ----------
    array : array_like of shape (Z, Y, X)
    name : str
        How the array is called in error messages.

    Returns
    -------
    ndarray of shape (Z, Y, X)
        A view of the input (never a copy made to be modified).
    """
    arr = np.asarray(array)
    if arr.ndim != 3:
        hint = ""
        if arr.ndim == 2:
            hint = f" For a single 2D slice use {name}[np.newaxis] to make a (1, Y, X) stack."
        elif arr.ndim == 4:
            hint = (f" For a multi-channel stack select one channel first, e.g. {name}[:, 0] for (Z, C, Y, X)"
                    " data; a trailing RGB axis needs converting to one channel.")
        raise NeurosegInputError(
            f"{name} must be a 3D array in (Z, Y, X) order, got {arr.ndim}D with shape {arr.shape}.{hint}")
    if arr.size == 0:
        raise NeurosegInputError(f"{name} is empty (shape {arr.shape}); every axis needs at least one voxel.")
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise NeurosegInputError(f"{name} has dtype {arr.dtype}; pass a numeric (integer or float) array.")
    return arr


def check_image_values(image: np.ndarray, *, name: str = "image") -> None:
    """Check an intensity volume has only finite values and is not constant."""
    if np.issubdtype(image.dtype, np.floating):
        finite = np.isfinite(image)
        if not finite.all():
            n_bad = int(image.size - np.count_nonzero(finite))
            raise NeurosegInputError(
                f"{name} contains {n_bad} NaN or Inf voxel(s). Replace them first, e.g. "
                f"np.nan_to_num({name}, nan=0.0, posinf=0.0, neginf=0.0), or crop them away.")
    lo, hi = image.min(), image.max()
    if lo == hi:
        raise NeurosegInputError(
            f"{name} is constant (every voxel equals {lo!r}); it holds no signal to segment. "
            "Check that the right file or channel was loaded.")


def check_same_shape(a: np.ndarray, b: np.ndarray, *, names: tuple[str, str] = ("image", "labels")) -> None:
    """Check two volumes have the same (Z, Y, X) shape."""
    if a.shape != b.shape:
        raise NeurosegInputError(
            f"{names[0]} has shape {a.shape} but {names[1]} has shape {b.shape}; they must match voxel for voxel "
            "(Z, Y, X). Check the axis order (transpose if one is (Y, X, Z)) and that both come from the same stack.")


def check_spacing(spacing) -> tuple[float, float, float]:
    """Return voxel spacing as three positive floats in micrometres, (z, y, x)."""
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError) as err:
        raise NeurosegInputError(
            f"spacing must be three numbers (z, y, x) in micrometres, got {spacing!r}.") from err
    if len(values) != 3:
        raise NeurosegInputError(
            f"spacing must have three values (z, y, x) in micrometres, got {len(values)}: {spacing!r}.")
    if not all(np.isfinite(v) and v > 0 for v in values):
        raise NeurosegInputError(f"spacing values must be positive and finite micrometres, got {values}.")
    return values


def check_mask(array, *, name: str = "mask") -> np.ndarray:
    """Return a (Z, Y, X) boolean mask; 0/1 integers are accepted, any other value is refused.

    Examples
    --------
    >>> check_mask(np.ones((1, 2, 2), np.uint8)).dtype
    dtype('bool')
    """
    arr = check_volume(array, name=name)
    if arr.dtype == bool:
        return arr
    values = np.unique(arr)
    if not np.isin(values, (0, 1)).all():
        raise NeurosegInputError(
            f"{name} must be a boolean mask (or 0/1), got values such as {values[:5].tolist()}. For instance "
            f"labels use neuroseg_lite.io.binarize_labels({name}); for a probability use {name} >= 0.5.")
    return arr.astype(bool)
