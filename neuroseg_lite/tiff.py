"""TIFF file access under :mod:`neuroseg_lite.io`: opening, voxel spacing metadata, lazy page-wise stacks.

:func:`open_tiff` opens a file with errors that name it and say what to do; :func:`file_spacing` reads the
voxel size from ImageJ or OME-XML metadata; :class:`LazyStack` decodes z-planes only when they are indexed
(what ``io.read_stack(path, lazy=True)`` returns when a file cannot be memory-mapped). Reading and writing
whole stacks is :mod:`neuroseg_lite.io`'s job.
"""
from __future__ import annotations

import errno
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import tifffile

from neuroseg_lite._checks import NeurosegInputError

__all__ = ["LazyStack", "open_tiff", "file_spacing"]

# Length units found in ImageJ and OME metadata, as micrometres per unit.
_UM_PER_UNIT = {
    "um": 1.0, "µm": 1.0, "\u03bcm": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0, "micrometre": 1.0,
    "nm": 1e-3, "nanometer": 1e-3, "nanometre": 1e-3,
    "mm": 1e3, "millimeter": 1e3, "millimetre": 1e3,
    "cm": 1e4, "m": 1e6,
    "å": 1e-4, "angstrom": 1e-4, "pm": 1e-6,
}

def _um_per_unit(unit) -> float | None:
    """Micrometres in one ``unit``; None when the unit is absent, 'pixel' or unknown.

    Examples
    --------
    >>> _um_per_unit("nm"), _um_per_unit("micron"), _um_per_unit("pixel")
    (0.001, 1.0, None)
    """
    if unit is None:
        return None
    key = str(unit).strip().lower().replace("\\u00b5", "µ")
    return _UM_PER_UNIT.get(key)


class LazyStack:
    """A (Z, Y, X) stack that reads TIFF pages only when they are indexed.

    Returned by :func:`~neuroseg_lite.io.read_stack` with ``lazy=True`` when the file cannot be memory-mapped
    (compressed or non-contiguous data). Indexing the first axis reads just the requested z-planes;
    ``np.asarray(stack)`` reads everything.

    Parameters
    ----------
    path : str or Path
        A TIFF file whose first series is (Z, Y, X) with one page per z-plane.

    Attributes
    ----------
    shape : tuple of int
    dtype : numpy.dtype
    ndim : int
    pages_read : int
        How many pages were decoded so far (lets you check that laziness works).
    """

    def __init__(self, path):
        self.path = Path(path)
        with open_tiff(self.path) as tif:
            series = tif.series[0]
            shape = tuple(series.shape)
            if len(shape) == 2:
                shape = (1,) + shape
            if len(shape) != 3 or len(series.pages) != shape[0]:
                raise NeurosegInputError(
                    f"{self.path}: cannot read lazily, series shape {series.shape} (axes {series.axes}) is not "
                    "one page per z-plane. Use read_stack(path, lazy=False).")
            self.shape = shape
            self.dtype = np.dtype(series.dtype)
        self.ndim = 3
        self.pages_read = 0

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"LazyStack({str(self.path)!r}, shape={self.shape}, dtype={self.dtype})"

    def _read_planes(self, planes: list[int]) -> np.ndarray:
        if not planes:
            return np.empty((0,) + self.shape[1:], dtype=self.dtype)
        with open_tiff(self.path) as tif:
            data = tif.asarray(key=planes, series=0)
        self.pages_read += len(planes)
        return np.asarray(data).reshape((len(planes),) + self.shape[1:])

    def __getitem__(self, key):
        if not isinstance(key, tuple):
            key = (key,)
        if key and key[0] is Ellipsis:
            # an Ellipsis first may stand for the z axis; resolve it by reading everything
            return self._read_planes(list(range(self.shape[0])))[key]
        z_key, rest = (key[0], key[1:]) if key else (slice(None), ())
        z_indices = np.arange(self.shape[0])[z_key]
        if np.ndim(z_indices) == 0:
            plane = self._read_planes([int(z_indices)])[0]
            return plane[rest] if rest else plane
        block = self._read_planes([int(z) for z in z_indices])
        return block[(slice(None),) + rest] if rest else block

    def __array__(self, dtype=None, copy=None):
        data = self._read_planes(list(range(self.shape[0])))
        return data if dtype is None else data.astype(dtype, copy=False)


def open_tiff(path) -> tifffile.TiffFile:
    """Open a TIFF, turning "not a TIFF" failures into an error that names the file.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    tifffile.TiffFile
        Open file; use it as a context manager.

    Raises
    ------
    FileNotFoundError, IsADirectoryError
        The path does not exist or is a folder (the message names it).
    NeurosegInputError
        The file is not a readable TIFF.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, f"No such TIFF file: '{path}'. Check the path and the working "
                                f"directory ({Path.cwd()}).", str(path))
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, f"'{path}' is a folder; pass the path of a .tif file.", str(path))
    try:
        return tifffile.TiffFile(path)
    except (tifffile.TiffFileError, ValueError, OSError, EOFError, IndexError, KeyError) as err:
        raise NeurosegInputError(
            f"'{path}' could not be read as a TIFF ({type(err).__name__}: {err}). The file is corrupt, "
            "truncated or in another format; re-export it as TIFF (e.g. File > Save As > Tiff in Fiji).") from err


def _imagej_spacing(tif: tifffile.TiffFile) -> tuple[float, float, float] | None:
    meta = tif.imagej_metadata or {}
    scale = _um_per_unit(meta.get("unit"))
    if scale is None or "spacing" not in meta:
        return None
    page = tif.pages[0]
    try:
        x_per_unit, y_per_unit = page.get_resolution()
    except (AttributeError, KeyError, TypeError, ZeroDivisionError):
        return None
    if not (x_per_unit > 0 and y_per_unit > 0):
        return None
    spacing = (float(meta["spacing"]) * scale, scale / float(y_per_unit), scale / float(x_per_unit))
    # TIFF stores resolution as a rational (pixels per unit), so 0.9 um comes back as 0.8999999999999999;
    # 12 significant digits is far finer than any microscope's calibration.
    return tuple(float(f"{value:.12g}") for value in spacing)


def _ome_spacing(tif: tifffile.TiffFile) -> tuple[float, float, float] | None:
    try:
        root = ElementTree.fromstring(tif.ome_metadata)
    except (ElementTree.ParseError, TypeError, ValueError):
        return None
    pixels = next((el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return None
    sizes = []
    for axis in ("Z", "Y", "X"):
        value = pixels.get(f"PhysicalSize{axis}")
        # the OME schema's default unit is the micrometre
        scale = _um_per_unit(pixels.get(f"PhysicalSize{axis}Unit", "µm"))
        if value is None or scale is None:
            return None
        sizes.append(float(value) * scale)
    return tuple(sizes)


def file_spacing(tif: tifffile.TiffFile) -> tuple[float, float, float] | None:
    """The voxel spacing (z, y, x) in micrometres that an open TIFF records, or None.

    OME-XML (``PhysicalSizeX/Y/Z`` with their units) is read first, then ImageJ metadata
    (``XResolution``/``YResolution`` = pixels per unit, ``spacing`` = z step, ``unit``). None when neither
    records all three sizes as finite positive lengths in a known unit.
    """
    spacing = None
    if tif.is_ome:
        spacing = _ome_spacing(tif)
    if spacing is None and tif.is_imagej:
        spacing = _imagej_spacing(tif)
    if spacing is None or not all(np.isfinite(s) and s > 0 for s in spacing):
        return None
    return spacing
