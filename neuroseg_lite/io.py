"""Reading and writing 3D TIFF stacks with their voxel spacing, and preparing labels and intensities.

Introduced in chapter 1 (``01_data``).

Every volume is a (Z, Y, X) array and every spacing a (z, y, x) tuple in micrometres. Spacing travels inside
the TIFF: ImageJ metadata (``XResolution``/``YResolution`` = pixels per unit, ``spacing`` = z step, ``unit``)
when we write, and either ImageJ or OME-XML (``PhysicalSizeX/Y/Z`` with their units) when we read. The
TIFF plumbing below these functions (opening, metadata, :class:`~neuroseg_lite.tiff.LazyStack`) is in
:mod:`neuroseg_lite.tiff`.
"""
from __future__ import annotations

import errno
import warnings
from pathlib import Path

import numpy as np
import tifffile

from neuroseg_lite._checks import (
    NeurosegInputError,
    check_image_values,
    check_same_shape,
    check_spacing,
    check_volume,
)
from neuroseg_lite.cache import atomic_write
from neuroseg_lite.tiff import LazyStack, file_spacing, open_tiff

__all__ = [
    "LazyStack",
    "read_stack",
    "write_stack",
    "binarize_labels",
    "normalize_percentile",
    "load_pair",
    "describe_stack",
]

_TIFF_SUFFIXES = (".tif", ".tiff")


def read_stack(path, *, lazy: bool = False):
    """Read a 3D TIFF stack and its voxel spacing.

    Parameters
    ----------
    path : str or Path
        TIFF file holding one (Z, Y, X) stack. A single 2D image is returned as a (1, Y, X) stack.
    lazy : bool
        If True, do not load the voxels: return a read-only ``numpy.memmap`` when the file is uncompressed,
        contiguous and in the machine's byte order, otherwise a :class:`~neuroseg_lite.tiff.LazyStack` that
        decodes z-planes when they are indexed.

    Returns
    -------
    image : ndarray of shape (Z, Y, X), numpy.memmap or LazyStack
        Voxels in the file's dtype (8/16-bit integers, float32/64...).
    spacing : tuple of 3 float or None
        Voxel size (z, y, x) in micrometres from the ImageJ or OME-XML metadata, None when the file does
        not record all three.

    Raises
    ------
    FileNotFoundError
        The file does not exist (the message names it).
    NeurosegInputError
        The file is not a readable TIFF, or it is not a single-channel 3D stack.

    Examples
    --------
    >>> stack = np.zeros((4, 8, 8), np.uint16)
    >>> path = write_stack("stack.tif", stack, spacing=(2.0, 0.9, 0.9))
    >>> image, spacing = read_stack(path)
    >>> image.shape, image.dtype, spacing
    ((4, 8, 8), dtype('uint16'), (2.0, 0.9, 0.9))
    >>> lazy, _ = read_stack(path, lazy=True)  # uncompressed: memory-mapped
    >>> type(lazy).__name__
    'memmap'
    """
    path = Path(path)
    with open_tiff(path) as tif:
        try:
            series = tif.series[0]
            axes, shape = series.axes, tuple(series.shape)
            spacing = file_spacing(tif)
            contiguous = series.dataoffset is not None
            image = None if lazy else series.asarray()
        except (tifffile.TiffFileError, ValueError, OSError, EOFError, IndexError, KeyError) as err:
            raise NeurosegInputError(
                f"'{path}' is a TIFF whose image data could not be decoded ({type(err).__name__}: {err}); "
                "the file may be truncated. Re-export it.") from err
    if len(shape) not in (2, 3):
        raise NeurosegInputError(
            f"'{path}' holds a {len(shape)}D series with axes {axes!r} and shape {shape}, but a single-channel "
            "(Z, Y, X) stack is needed. Split channels/time points first (e.g. Image > Color > Split Channels "
            "in Fiji), or read it with tifffile and select one channel.")
    if lazy:
        image = None
        if contiguous:
            try:
                image = tifffile.memmap(path, mode="r")
            except ValueError:
                image = None  # tifffile declined (unusual layout): page-wise reading still works
            if image is not None and not image.dtype.isnative:
                # big-endian files (ImageJ's default) would hand torch and numba a byte-swapped dtype
                image = None
        if image is None:
            return LazyStack(path), spacing
    if image.ndim == 2:
        image = image.reshape((1,) + image.shape)
    return image, spacing


# ---------------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------------

def _imagej_compatible(image: np.ndarray) -> np.ndarray:
    """Return ``image`` in a dtype ImageJ TIFFs can hold (uint8, uint16, int16, float32), never in place."""
    dtype = image.dtype
    if dtype in (np.uint8, np.uint16, np.int16, np.float32):
        return image
    if dtype.kind == "b":
        # 0/255 is ImageJ's mask convention and binarize_labels reads it back as the same mask
        return image.astype(np.uint8) * np.uint8(255)
    if np.issubdtype(dtype, np.floating):
        finite = image[np.isfinite(image)]
        limit = np.finfo(np.float32).max
        if finite.size and (finite.max() > limit or finite.min() < -limit):
            raise NeurosegInputError(
                f"image ({dtype}) has values beyond the float32 range, which ImageJ TIFFs cannot hold. "
                "Rescale the image first.")
        return image.astype(np.float32)
    if np.issubdtype(dtype, np.integer):
        lo, hi = int(image.min()), int(image.max())
        for target in (np.uint8, np.uint16, np.int16):
            info = np.iinfo(target)
            if info.min <= lo and hi <= info.max:
                return image.astype(target)
        raise NeurosegInputError(
            f"image ({dtype}) has values {lo}..{hi}, which fit none of the integer types an ImageJ TIFF can "
            "hold (uint8, uint16, int16). Convert it yourself, e.g. image.astype(np.float32), or relabel "
            "instance labels with skimage.segmentation.relabel_sequential.")
    raise NeurosegInputError(f"image has dtype {dtype}, which cannot be written as a TIFF stack; "
                             "pass an integer, bool or real float array.")


def write_stack(path, image, *, spacing, overwrite: bool = False, compression=None) -> Path:
    """Write a (Z, Y, X) stack as an ImageJ TIFF that records its voxel spacing.

    The data go to a temporary file in the destination folder which is then renamed over ``path``, so an
    interrupted write never leaves a half-written stack behind. The input array is never modified.

    Parameters
    ----------
    path : str or Path
        Destination ending in ``.tif`` or ``.tiff``; its folder must exist.
    image : ndarray of shape (Z, Y, X)
        uint8, uint16, int16 and float32 are written as they are. Others are converted, because ImageJ TIFFs
        cannot hold them: bool -> uint8 with 0/255 (ImageJ's mask convention), float16/float64 -> float32,
        other integers -> the smallest of uint8/uint16/int16 that holds their range (instance labels from
        ``scipy.ndimage.label`` are int32/int64). Values that fit none raise an error.
    spacing : tuple of 3 float
        Voxel size (z, y, x) in micrometres, stored so that :func:`read_stack` returns it.
    overwrite : bool
        Replace an existing file. False by default so that nobody loses data by accident.
    compression : str or None
        Passed to ``tifffile.imwrite``, e.g. ``"zlib"``. Compressed stacks are smaller but cannot be
        memory-mapped and Fiji's plain TIFF reader may not open them.

    Returns
    -------
    Path
        The path written.

    Raises
    ------
    FileExistsError
        ``path`` exists and ``overwrite`` is False (nothing is written).
    NeurosegInputError
        Not a 3D numeric array, bad spacing, wrong file extension, or values no ImageJ dtype can hold.

    Examples
    --------
    >>> mask = np.zeros((2, 4, 4), bool)
    >>> write_stack("mask.tif", mask, spacing=(1.0, 0.5, 0.5)).name  # as uint8 0/255
    'mask.tif'
    >>> write_stack("mask.tif", mask, spacing=(1.0, 0.5, 0.5))
    Traceback (most recent call last):
    ...
    FileExistsError: 'mask.tif' already exists and was left untouched. Pass ...
    """
    path = Path(path)
    array = check_volume(image, name="image")
    spacing = check_spacing(spacing)
    if path.suffix.lower() not in _TIFF_SUFFIXES:
        raise NeurosegInputError(f"'{path}' does not end in .tif or .tiff; write_stack writes TIFF files only, "
                                 "so give the path a .tif extension.")
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, f"'{path}' is a folder; pass a file path ending in .tif.", str(path))
    if not path.parent.is_dir():
        raise FileNotFoundError(errno.ENOENT, f"The folder '{path.parent}' does not exist; create it first, "
                                "e.g. Path(folder).mkdir(parents=True).", str(path.parent))
    if path.exists() and not overwrite:
        raise FileExistsError(f"'{path}' already exists and was left untouched. Pass "
                              "overwrite=True to replace it, or choose another file name.")
    data = _imagej_compatible(array)
    z, y, x = spacing
    atomic_write(path, lambda tmp: tifffile.imwrite(
        tmp, data, imagej=True, resolution=(1.0 / x, 1.0 / y), metadata={"spacing": z, "unit": "um", "axes": "ZYX"},
        compression=compression))
    return path


# ---------------------------------------------------------------------------------------------------------------
# Labels and intensities
# ---------------------------------------------------------------------------------------------------------------

def binarize_labels(labels, *, name: str = "labels") -> np.ndarray:
    """Turn binary or instance labels into a boolean foreground mask.

    Parameters
    ----------
    labels : ndarray of shape (Z, Y, X)
        bool; binary {0, 1} or {0, 255}; or instance labels (non-negative integers, 0 = background). Floats
        are accepted when every value is a non-negative whole number.
    name : str
        How the array is called in error messages.

    Returns
    -------
    ndarray of bool, shape (Z, Y, X)
        ``labels > 0`` as a new array.

    Raises
    ------
    NeurosegInputError
        Negative values or fractional floats (e.g. probabilities): neither binary nor instance labels.

    Examples
    --------
    >>> binarize_labels(np.array([[[0, 1, 255, 7]]])).tolist()  # 0/1, 0/255 or ids
    [[[False, True, True, True]]]
    >>> binarize_labels(np.array([[[0.0, 0.7]]]))
    Traceback (most recent call last):
    ...
    neuroseg_lite._checks.NeurosegInputError: labels contain fractional values, ...
    """
    labels = check_volume(labels, name=name)
    if labels.dtype == bool:
        return labels.copy()
    if np.issubdtype(labels.dtype, np.complexfloating):
        raise NeurosegInputError(f"{name} are complex numbers, so they are neither binary nor instance labels; "
                                 "pass integer or bool labels.")
    if np.issubdtype(labels.dtype, np.floating):
        if not np.isfinite(labels).all():
            raise NeurosegInputError(
                f"{name} contain NaN or Inf, so they are neither binary nor instance labels. Replace them, "
                "e.g. np.nan_to_num(labels), before binarising.")
        if not np.array_equal(labels, np.round(labels)):
            raise NeurosegInputError(
                f"{name} contain fractional values, so they are neither binary nor instance labels. If they are "
                "probabilities, threshold them first (labels > 0.5); if they were resampled with interpolation, "
                "resample with order=0 (nearest neighbour) instead.")
    if labels.min() < 0:
        raise NeurosegInputError(
            f"{name} contain negative values (min {labels.min()!r}), so they are neither binary nor instance "
            "labels (0 = background, positive = object). Check the file is a label image and not an intensity "
            "image; a signed conversion may have wrapped 255 to -1 (use labels.astype(np.uint8)).")
    return labels > 0


def normalize_percentile(image, *, low: float = 1.0, high: float = 99.8, clip: bool = False,
                         name: str = "image") -> np.ndarray:
    """Map the ``low`` and ``high`` intensity percentiles to 0 and 1.

    Parameters
    ----------
    image : ndarray of shape (Z, Y, X)
        Intensity volume without NaN/Inf and not constant.
    low, high : float
        Percentiles in [0, 100] with ``low < high``.
    clip : bool
        Clip the result to [0, 1]; by default values beyond the percentiles stay outside [0, 1].
    name : str
        How the image is called in error messages.

    Returns
    -------
    ndarray of float32, shape (Z, Y, X)

    Raises
    ------
    NeurosegInputError
        Not 3D, NaN/Inf, constant image, bad percentiles, or both percentiles falling on the same value.

    Examples
    --------
    >>> image = np.arange(100, dtype=np.uint16).reshape(1, 10, 10)
    >>> out = normalize_percentile(image, low=0.0, high=100.0)
    >>> out.dtype, float(out.min()), float(out.max())
    (dtype('float32'), 0.0, 1.0)
    """
    image = check_volume(image, name=name)
    check_image_values(image, name=name)
    if not (0.0 <= low < high <= 100.0):
        raise NeurosegInputError(f"percentiles must satisfy 0 <= low < high <= 100, got low={low}, high={high}.")
    lo, hi = np.percentile(image, [low, high])
    if hi <= lo:
        raise NeurosegInputError(
            f"the {low}th and {high}th percentiles of {name} are both {lo!r} (most voxels share one value), so "
            "they cannot be mapped to 0 and 1. Widen the range, e.g. low=0.0, high=100.0.")
    out = image.astype(np.float32)
    out -= np.float32(lo)
    out /= np.float32(hi - lo)
    if clip:
        np.clip(out, 0.0, 1.0, out=out)
    return out


def load_pair(image_path, label_path, *, spacing=None):
    """Read an image stack and its label stack, check they match, and binarise the labels.

    Parameters
    ----------
    image_path, label_path : str or Path
        TIFF stacks of the same (Z, Y, X) shape.
    spacing : tuple of 3 float, optional
        Voxel size (z, y, x) in micrometres. Overrides the files' metadata; required when neither file
        records a spacing.

    Returns
    -------
    image : ndarray of shape (Z, Y, X)
    labels : ndarray of bool, shape (Z, Y, X)
    spacing : tuple of 3 float
        Micrometres: the argument, else the image file's, else the label file's.

    Examples
    --------
    >>> labels = np.zeros((4, 8, 8), np.uint8)
    >>> labels[1:3, 2:5, 2:5] = 255
    >>> raw = np.ones((4, 8, 8), np.uint16)
    >>> _ = write_stack("raw.tif", raw, spacing=(2.0, 0.9, 0.9))
    >>> _ = write_stack("labels.tif", labels, spacing=(2.0, 0.9, 0.9))
    >>> image, mask, spacing = load_pair("raw.tif", "labels.tif")
    >>> mask.dtype, int(mask.sum()), spacing
    (dtype('bool'), 18, (2.0, 0.9, 0.9))
    """
    image, image_spacing = read_stack(image_path)
    raw_labels, label_spacing = read_stack(label_path)
    check_volume(image, name="image")
    check_same_shape(image, raw_labels, names=(f"image ({Path(image_path).name})",
                                               f"labels ({Path(label_path).name})"))
    labels = binarize_labels(raw_labels)
    if spacing is not None:
        return image, labels, check_spacing(spacing)
    if image_spacing and label_spacing and not np.allclose(image_spacing, label_spacing, rtol=1e-3):
        warnings.warn(f"image spacing {image_spacing} and label spacing {label_spacing} differ; using the "
                      "image's. Pass spacing=(z, y, x) to choose.", stacklevel=2)
    found = image_spacing or label_spacing
    if found is None:
        raise NeurosegInputError(
            f"neither '{image_path}' nor '{label_path}' records its voxel spacing. Pass it yourself: "
            "load_pair(..., spacing=(z, y, x)) in micrometres, e.g. spacing=(2.0, 0.9, 0.9).")
    return image, labels, found


def describe_stack(image, spacing=None) -> dict:
    """Summarise a stack: shape, dtype, physical size and intensity percentiles.

    Parameters
    ----------
    image : ndarray of shape (Z, Y, X)
    spacing : tuple of 3 float or None
        Voxel size (z, y, x) in micrometres; None leaves the physical sizes out (as None).

    Returns
    -------
    dict
        ``shape``, ``dtype``, ``n_voxels``, ``megabytes``, ``spacing_um``, ``size_um`` (z, y, x extent),
        ``min``, ``p1``, ``p50``, ``p99``, ``max``, ``mean``.

    Examples
    --------
    >>> image = np.arange(100, dtype=np.uint16).reshape(1, 10, 10)
    >>> info = describe_stack(image, spacing=(2.0, 0.5, 0.5))
    >>> info["shape"], info["size_um"], info["p50"]
    ((1, 10, 10), (2.0, 5.0, 5.0), 49.5)
    """
    image = check_volume(image, name="image")
    spacing = None if spacing is None else check_spacing(spacing)
    p1, p50, p99 = (float(v) for v in np.percentile(image, [1, 50, 99]))
    return {
        "shape": tuple(int(n) for n in image.shape),
        "dtype": str(image.dtype),
        "n_voxels": int(image.size),
        "megabytes": image.nbytes / 1e6,
        "spacing_um": spacing,
        "size_um": None if spacing is None else tuple(n * s for n, s in zip(image.shape, spacing)),
        "min": float(image.min()),
        "p1": p1,
        "p50": p50,
        "p99": p99,
        "max": float(image.max()),
        "mean": float(image.mean(dtype=np.float64)),
    }
