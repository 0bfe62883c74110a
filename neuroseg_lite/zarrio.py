"""Whole-sample stacks on disk: OME-Zarr, plain Zarr and (Big)TIFF, opened lazily with their spacing.

Introduced in chapter 10 (``10_whole_sample``).

A cleared brain imaged at cellular resolution does not fit in memory, so every function here works on
:mod:`dask` arrays that read chunks from disk only when computed. :func:`open_stack` opens OME-Zarr (NGFF
0.4 on Zarr v2 and 0.5 on Zarr v3), a plain Zarr array or a (Big)TIFF as a :class:`Stack`: a (Z, Y, X)
dask array and its voxel spacing in micrometres. :func:`create_image` and :func:`create_labels` make an
empty NGFF 0.5 image (and label images beside it) that a prediction fills block by block;
:func:`build_pyramid` adds the downsampled levels viewers such as napari need; :func:`write_ome_zarr` and
:func:`write_tiff` write whole arrays. :func:`check_spacing_match` warns when a stack's voxel size is not
the one a model was trained on and :func:`resample_stack` fixes it lazily. :func:`describe` says what a
stack holds without reading its voxels. The format plumbing (NGFF metadata of both versions, lazy TIFF
regions) is in :mod:`neuroseg_lite._zarrformats`.
"""
from __future__ import annotations

import errno
import warnings
from dataclasses import dataclass
from pathlib import Path

import dask.array as da
import numpy as np
import tifffile
import zarr

from neuroseg_lite._checks import NeurosegInputError, check_spacing
from neuroseg_lite._zarrformats import (
    _TIFF_SUFFIXES,
    _as_dask,
    _check_3d,
    _check_chunks,
    _check_shape,
    _clear,
    _ExistsError,
    _interpolate_axis,
    _MissingPathError,
    _multiscale,
    _ngff_array,
    _ome,
    _open_tiff,
    _set_ome,
    _single_array,
)

__all__ = [
    "SpacingMismatchWarning",
    "Stack",
    "open_stack",
    "check_spacing_match",
    "resample_stack",
    "create_image",
    "create_labels",
    "build_pyramid",
    "write_ome_zarr",
    "write_tiff",
    "describe",
]

class SpacingMismatchWarning(UserWarning):
    """A stack's voxel spacing differs from the spacing the model was trained on (or cannot be checked)."""


@dataclass(frozen=True)
class Stack:
    """A lazily read (Z, Y, X) stack and its voxel spacing.

    Attributes
    ----------
    data : dask.array.Array of shape (Z, Y, X)
        Reads chunks from disk only when computed; never loaded whole.
    spacing : tuple of 3 float or None
        Voxel size (z, y, x) in micrometres; None when the file does not say.
    path : Path
    format : str
        ``"ome-zarr-0.4"``, ``"ome-zarr-0.5"``, ``"zarr"`` or ``"tiff"``.
    name : str or None
        The image (or array) name, if the file gives one.
    level : int
        The resolution level read (0 = full resolution).
    n_levels : int
        How many resolution levels the file holds.
    """

    data: da.Array
    spacing: tuple[float, float, float] | None
    path: Path
    format: str
    name: str | None = None
    level: int = 0
    n_levels: int = 1

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.data.shape)

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype


def open_stack(path, *, level: int = 0, component: str | None = None, channel: int | None = None,
               spacing=None) -> Stack:
    """Open a (Z, Y, X) stack lazily from OME-Zarr, plain Zarr or (Big)TIFF.

    Parameters
    ----------
    path : str or Path
        An OME-Zarr image (NGFF 0.4 or 0.5), a Zarr array, a Zarr group holding exactly one 3D array, or a
        ``.tif``/``.tiff`` file (BigTIFF included; read through tifffile's Zarr store, plane tiles on demand).
    level : int
        Resolution level of a multiscale image (0 = full resolution).
    component : str or None
        Path inside a Zarr group: an array or an NGFF image such as ``"labels/neurons"``.
    channel : int or None
        Channel to read when the data have a channel axis longer than 1.
    spacing : tuple of 3 float or None
        Voxel size (z, y, x) in micrometres; replaces what the file records (or provides it).

    Returns
    -------
    Stack
        ``data`` is a dask array of shape (Z, Y, X); singleton t/c axes are dropped; NGFF scales are converted
        to micrometres from their units (nanometer, micrometer, millimeter, ...).

    Raises
    ------
    NeurosegInputError
        Missing path (also a FileNotFoundError), no 3D array, unknown axes or units, 2D data, several
        channels without ``channel=``, a level that does not exist.
    """
    path = Path(path)
    if not path.exists():
        raise _MissingPathError(errno.ENOENT, f"No such stack: '{path}'. Check the path and the working directory "
                                f"({Path.cwd()}).")
    override = None if spacing is None else check_spacing(spacing)
    if path.is_file():
        if path.suffix.lower() not in _TIFF_SUFFIXES:
            raise NeurosegInputError(f"'{path}' is a file but not a TIFF; open_stack reads .tif/.tiff files and "
                                     "Zarr folders. Convert it, e.g. with neuroseg_lite.zarrio.write_ome_zarr.")
        arr, found, n_levels = _open_tiff(path, level, channel)
        return Stack(arr, override or found, path, "tiff", path.stem, level, n_levels)
    try:
        node = zarr.open(str(path), mode="r")
    except (FileNotFoundError, ValueError, KeyError, TypeError) as err:
        raise NeurosegInputError(f"'{path}' is a folder but not a Zarr store ({type(err).__name__}: {err}). "
                                 "Pass an OME-Zarr image, a Zarr array or a TIFF file.") from err
    name = None
    if component is not None:
        try:
            node = node[component]
        except KeyError as err:
            raise NeurosegInputError(f"'{path}' has no component {component!r}; describe(path) lists what it "
                                     "holds.") from err
        name = component.rstrip("/").rsplit("/", 1)[-1]
    if isinstance(node, zarr.Array):
        arr = _check_3d(da.from_zarr(node), path, "data")
        return Stack(arr, override, path, "zarr", name or path.stem)
    ome, version = _ome(node)
    if version is not None and ome.get("multiscales"):
        arr, found, ms_name, n_levels = _ngff_array(node, ome, version, path=path, level=level, channel=channel)
        return Stack(arr, override or found, path, f"ome-zarr-{version}", ms_name or name, level, n_levels)
    array_name, array = _single_array(node, path)
    return Stack(da.from_zarr(array), override, path, "zarr", array_name)


# ---------------------------------------------------------------------------------------------------------------
# Writing OME-Zarr
# ---------------------------------------------------------------------------------------------------------------

def create_image(path, *, shape, dtype, chunks, spacing, name: str = "image", overwrite: bool = False,
                 attrs: dict | None = None) -> zarr.Array:
    """Create an empty NGFF 0.5 (Zarr v3) image with one resolution level, ready for block-wise writes.

    Parameters
    ----------
    path : str or Path
        The image group to create (a folder, conventionally ending in ``.ome.zarr``).
    shape : tuple of 3 int
        (Z, Y, X) size of the full-resolution level.
    dtype : numpy dtype
    chunks : tuple of 3 int or None
        Chunk shape (z, y, x); clipped to ``shape``. None: (64, 256, 256).
    spacing : tuple of 3 float
        Voxel size (z, y, x) in micrometres, stored as the level's scale with unit micrometer.
    name : str
        The multiscale image's name.
    overwrite : bool
        Replace an existing ``path``; otherwise it is an error.
    attrs : dict or None
        Stored in the group attributes under ``"neuroseg_lite"`` (e.g. how the image was made).

    Returns
    -------
    zarr.Array of shape (Z, Y, X)
        Level ``"0"``, filled with zeros until written (``array[z0:z1, y0:y1, x0:x1] = block``). Other
        processes can open it with ``zarr.open_array(path / "0", mode="r+")``.
    """
    path = Path(path)
    shape = _check_shape(shape)
    spacing = check_spacing(spacing)
    chunks = _check_chunks(chunks, shape)
    _clear(path, overwrite)
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.attrs["ome"] = {"version": "0.5", "multiscales": [_multiscale(spacing, name=name, version="0.5")]}
    if attrs:
        group.attrs["neuroseg_lite"] = dict(attrs)
    return group.create_array("0", shape=shape, dtype=np.dtype(dtype), chunks=chunks, fill_value=0,
                              dimension_names=("z", "y", "x"))


def _image_group(path: Path):
    path = Path(path)
    if not path.is_dir():
        raise _MissingPathError(errno.ENOENT, f"No OME-Zarr image at '{path}'; create it with create_image first.")
    group = zarr.open_group(str(path), mode="r+")
    ome, version = _ome(group)
    if version is None or not ome.get("multiscales"):
        raise NeurosegInputError(f"'{path}' is not an OME-Zarr image (no multiscales metadata); create it with "
                                 "create_image or write_ome_zarr.")
    return group, ome, version


def create_labels(image_path, label_name: str, *, dtype, chunks=None, overwrite: bool = False) -> zarr.Array:
    """Create an empty label image ``labels/<label_name>`` beside an OME-Zarr image, same shape and scale.

    Parameters
    ----------
    image_path : str or Path
        An OME-Zarr image (from :func:`create_image`, or any NGFF 0.4/0.5 image; the labels use its format).
    label_name : str
        E.g. ``"mask"`` or ``"neurons"``; listed in ``labels/`` so viewers show it as a label layer.
    dtype : numpy dtype
        uint8 for a mask, int32 for instance ids.
    chunks : tuple of 3 int or None
        None: the image's level-0 chunks.
    overwrite : bool
        Replace an existing label image of that name.

    Returns
    -------
    zarr.Array of shape (Z, Y, X)
        The label image's level ``"0"``, zeros until written.
    """
    group, ome, version = _image_group(image_path)
    if not label_name or "/" in label_name or label_name.startswith("."):
        raise NeurosegInputError(f"label_name {label_name!r} must be a plain name such as 'neurons' (no '/').")
    ms = ome["multiscales"][0]
    level0 = group[ms["datasets"][0]["path"]]
    if level0.ndim != 3:
        raise NeurosegInputError(f"'{image_path}' is {level0.ndim}D; labels can be added only to (Z, Y, X) images.")
    # the image's scale in micrometres; a unitless scale is copied as it is
    raw = [t["scale"] for t in ms["datasets"][0].get("coordinateTransformations", []) if t.get("type") == "scale"]
    spacing = open_stack(image_path).spacing or (tuple(raw[0]) if raw else (1.0, 1.0, 1.0))
    chunks = _check_chunks(chunks or level0.chunks, level0.shape)
    zarr_format = 3 if version == "0.5" else 2
    labels = group.get("labels") or group.create_group("labels")
    label_ome, _ = _ome(labels)
    names = list(label_ome.get("labels", []))
    if label_name in labels:
        if not overwrite:
            raise _ExistsError(errno.EEXIST, f"'{image_path}' already has labels/{label_name}; it was left untouched. "
                               "Pass overwrite=True to replace it, or choose another label_name.")
        del labels[label_name]
    label_group = labels.create_group(label_name)
    image_label = {"source": {"image": "../../"}}
    if version != "0.5":
        image_label["version"] = version
    _set_ome(label_group, {"multiscales": [_multiscale(spacing, name=label_name, version=version)],
                           "image-label": image_label}, version)
    _set_ome(labels, {"labels": names + ([label_name] if label_name not in names else [])}, version)
    extra = {"dimension_names": ("z", "y", "x")} if zarr_format == 3 else {"chunk_key_encoding": {
        "name": "v2", "separator": "/"}}
    return label_group.create_array("0", shape=level0.shape, dtype=np.dtype(dtype), chunks=chunks, fill_value=0,
                                    **extra)


def _target_group(path, label_name):
    group, ome, version = _image_group(path)
    if label_name is None:
        return group, ome, version
    try:
        labels = group["labels"][label_name]
    except KeyError as err:
        raise NeurosegInputError(f"'{path}' has no labels/{label_name}; create it with create_labels.") from err
    label_ome, _ = _ome(labels)
    return labels, label_ome, version


def build_pyramid(path, *, label_name: str | None = None, n_levels: int | None = None, downscale=(1, 2, 2)) -> int:
    """Add downsampled levels 1..n-1 to an OME-Zarr image (or one of its label images) from level 0.

    Each level is computed block by block with dask from the level before it: the mean of each
    ``downscale`` box for images, the box's first voxel for labels (ids must not be averaged). Existing
    levels above 0 are replaced and the multiscales metadata lists every level with its scale.

    Parameters
    ----------
    path : str or Path
        An OME-Zarr image.
    label_name : str or None
        Build the pyramid of ``labels/<label_name>`` instead of the image.
    n_levels : int or None
        Total number of levels, level 0 included. None: halve until the smaller y/x side is below 64,
        at most 5 levels.
    downscale : tuple of 3 int
        Factor (z, y, x) between consecutive levels; (1, 2, 2) keeps the z resolution of anisotropic stacks.

    Returns
    -------
    int
        The number of levels the image now has.
    """
    group, ome, version = _target_group(path, label_name)
    factors = _check_shape(downscale)
    ms = ome["multiscales"][0]
    level0 = group[ms["datasets"][0]["path"]]
    shapes = [tuple(level0.shape)]
    while True:
        nxt = tuple(n // f for n, f in zip(shapes[-1], factors))
        done = (len(shapes) >= n_levels) if n_levels is not None else (min(shapes[-1][1:]) < 64 or len(shapes) >= 5)
        if done or min(nxt) < 1 or nxt == shapes[-1]:
            break
        shapes.append(nxt)
    for dataset in ms["datasets"][1:]:
        if dataset["path"] in group:
            del group[dataset["path"]]
    is_label = label_name is not None or "image-label" in ome
    extra = {"dimension_names": ("z", "y", "x")} if version == "0.5" else {"chunk_key_encoding": {
        "name": "v2", "separator": "/"}}
    previous = level0
    for i in range(1, len(shapes)):
        source = da.from_zarr(previous)
        crop = tuple(slice(0, n * f) for n, f in zip(shapes[i], factors))
        if is_label:
            small = source[crop][::factors[0], ::factors[1], ::factors[2]]
        else:
            small = da.coarsen(np.mean, source[crop].astype(np.float32), dict(enumerate(factors)))
            if np.issubdtype(level0.dtype, np.integer):
                small = da.round(small)
            small = small.astype(level0.dtype)
        chunks = tuple(min(c, n) for c, n in zip(level0.chunks, shapes[i]))
        target = group.create_array(str(i), shape=shapes[i], dtype=level0.dtype, chunks=chunks, fill_value=0,
                                    **extra)
        da.store(small.rechunk(chunks), target, lock=False)
        previous = target
    scale = next(t["scale"] for t in ms["datasets"][0]["coordinateTransformations"] if t.get("type") == "scale")
    datasets = [{"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": [
        float(s) * f ** i for s, f in zip(scale, factors)]}]} for i in range(len(shapes))]
    datasets[0] = ms["datasets"][0]
    new_ms = {**ms, "datasets": datasets}
    if not is_label:
        new_ms["type"] = "mean"
    _set_ome(group, {**ome, "multiscales": [new_ms] + ome["multiscales"][1:]}, version)
    return len(shapes)


def write_ome_zarr(path, image, *, spacing, chunks=None, name: str = "image", labels: dict | None = None,
                   overwrite: bool = False, pyramid: bool = True) -> Path:
    """Write an image (and label images) as NGFF 0.5 OME-Zarr, block by block, with a pyramid.

    Parameters
    ----------
    path : str or Path
    image : ndarray, dask or zarr array of shape (Z, Y, X)
    spacing : tuple of 3 float
        Voxel size (z, y, x) in micrometres.
    chunks : tuple of 3 int or None
        None: (64, 256, 256) clipped to the shape.
    name : str
    labels : dict or None
        ``{name: array of shape (Z, Y, X)}``; bool arrays are stored as uint8 0/1.
    overwrite : bool
    pyramid : bool
        Add downsampled levels (see :func:`build_pyramid`).

    Returns
    -------
    Path
    """
    path = Path(path)
    data = _as_dask(image, "image")
    labels = {key: _as_dask(value, f"labels[{key!r}]") for key, value in (labels or {}).items()}
    for key, value in labels.items():
        if value.shape != data.shape:
            raise NeurosegInputError(f"labels[{key!r}] has shape {value.shape} but the image {data.shape}; "
                                     "they must match voxel for voxel.")
    dtype = np.uint8 if data.dtype == bool else data.dtype
    target = create_image(path, shape=data.shape, dtype=dtype, chunks=chunks, spacing=spacing, name=name,
                          overwrite=overwrite)
    da.store(data.astype(dtype).rechunk(target.chunks), target, lock=False)
    for key, value in labels.items():
        label_dtype = np.uint8 if value.dtype == bool else value.dtype
        out = create_labels(path, key, dtype=label_dtype)
        da.store(value.astype(label_dtype).rechunk(out.chunks), out, lock=False)
    if pyramid:
        build_pyramid(path)
        for key in labels:
            build_pyramid(path, label_name=key)
    return path


# ---------------------------------------------------------------------------------------------------------------
# TIFF, spacing, description
# ---------------------------------------------------------------------------------------------------------------

def write_tiff(path, data, *, spacing, overwrite: bool = False, bigtiff: bool | None = None) -> Path:
    """Write a (Z, Y, X) stack as a TIFF plane by plane, never holding it whole in memory.

    uint8, uint16, int16 and float32 stacks under 4 GB are written as ImageJ TIFFs exactly like
    :func:`neuroseg_lite.io.write_stack`; larger stacks and other dtypes as OME BigTIFF (``PhysicalSize``
    in µm). Both :func:`neuroseg_lite.io.read_stack` and :func:`open_stack` read the spacing back.

    Parameters
    ----------
    path : str or Path
        Ending in ``.tif`` or ``.tiff``; its folder must exist.
    data : ndarray, dask or zarr array of shape (Z, Y, X)
        bool is written as uint8 0/255 (ImageJ's mask convention).
    spacing : tuple of 3 float
        Voxel size (z, y, x) in micrometres.
    overwrite : bool
    bigtiff : bool or None
        Force (True) or forbid (False) BigTIFF; None decides by size.

    Returns
    -------
    Path
    """
    path = Path(path)
    arr = _as_dask(data, "data")
    z, y, x = check_spacing(spacing)
    if path.suffix.lower() not in (".tif", ".tiff"):
        raise NeurosegInputError(f"'{path}' does not end in .tif or .tiff; give the path a .tif extension.")
    if not path.parent.is_dir():
        raise _MissingPathError(errno.ENOENT, f"The folder '{path.parent}' does not exist; create it first.")
    if path.exists() and not overwrite:
        raise _ExistsError(errno.EEXIST, f"'{path}' already exists and was left untouched. Pass overwrite=True "
                           "to replace it, or choose another file name.")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * np.uint8(255)
    if bigtiff is None:
        bigtiff = arr.nbytes > 2**32 - 2**25  # 32 MiB for headers and metadata below the 4 GiB TIFF limit
    imagej = not bigtiff and arr.dtype in (np.uint8, np.uint16, np.int16, np.float32)
    planes_per_read = max(1, int(arr.chunksize[0]))

    def planes():
        for z0 in range(0, arr.shape[0], planes_per_read):
            yield from np.asarray(arr[z0:z0 + planes_per_read].compute())

    if imagej:
        options = dict(imagej=True, resolution=(1.0 / x, 1.0 / y),
                       metadata={"spacing": z, "unit": "um", "axes": "ZYX"})
    else:
        options = dict(ome=True, bigtiff=bigtiff, metadata={
            "axes": "ZYX", "PhysicalSizeZ": z, "PhysicalSizeY": y, "PhysicalSizeX": x,
            "PhysicalSizeZUnit": "µm", "PhysicalSizeYUnit": "µm", "PhysicalSizeXUnit": "µm"})
    # a temporary file renamed at the end: an interrupted write never leaves a truncated stack at `path`
    temporary = path.with_name(f".{path.name}.partial{path.suffix}")
    try:
        tifffile.imwrite(temporary, planes(), shape=arr.shape, dtype=arr.dtype, **options)
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def check_spacing_match(spacing, model_spacing, *, rtol: float = 0.05, name: str = "image") -> bool:
    """Warn (:class:`SpacingMismatchWarning`) when a stack's spacing differs from the model's.

    Parameters
    ----------
    spacing, model_spacing : tuple of 3 float or None
        (z, y, x) in micrometres.
    rtol : float
        Allowed relative difference per axis.
    name : str
        How the stack is called in the warning.

    Returns
    -------
    bool
        True when every axis agrees within ``rtol``; False (after a warning) otherwise or when either is None.
    """
    if spacing is None or model_spacing is None:
        missing = f"{name}'s spacing" if spacing is None else "the model's training spacing"
        warnings.warn(f"Cannot check {name}'s voxel spacing against the model: {missing} is unknown. Pass "
                      "spacing=(z, y, x) in micrometres (open_stack(path, spacing=...) / CLI --spacing).",
                      SpacingMismatchWarning, stacklevel=2)
        return False
    spacing, model_spacing = check_spacing(spacing), check_spacing(model_spacing)
    ratio = tuple(s / m for s, m in zip(spacing, model_spacing))
    if all(abs(r - 1.0) <= rtol for r in ratio):
        return True
    warnings.warn(f"{name} has voxel spacing {spacing} µm but the model was trained at {model_spacing} µm "
                  f"(ratio {tuple(round(r, 3) for r in ratio)}); neurons will look "
                  "bigger or smaller than the model expects. Resample first: "
                  f"resample_stack(stack, spacing={model_spacing}) or the CLI's --resample.",
                  SpacingMismatchWarning, stacklevel=2)
    return False


def resample_stack(stack: Stack, *, spacing) -> Stack:
    """Resample a stack lazily to another voxel spacing (separable linear interpolation, dask).

    Parameters
    ----------
    stack : Stack
        Its ``spacing`` must be known (``open_stack(path, spacing=...)`` otherwise).
    spacing : tuple of 3 float
        The new voxel size (z, y, x) in micrometres, typically the model's.

    Returns
    -------
    Stack
        Same physical extent, shape ``round(shape * old / new)``, the input dtype (integers rounded);
        nothing is computed until the data are.
    """
    new = check_spacing(spacing)
    if stack.spacing is None:
        raise NeurosegInputError(f"'{stack.path}' has no known spacing, so it cannot be resampled; open it with "
                                 "open_stack(path, spacing=(z, y, x)) first.")
    old = stack.spacing
    out = stack.data.astype(np.float32)
    for axis in range(3):
        n_out = max(1, int(round(stack.shape[axis] * old[axis] / new[axis])))
        if n_out != stack.shape[axis] or old[axis] != new[axis]:
            out = _interpolate_axis(out, axis, n_out, new[axis] / old[axis])
    if np.issubdtype(stack.dtype, np.integer):
        out = da.round(out)
    out = out.astype(stack.dtype).rechunk(tuple(min(c, n) for c, n in zip(stack.data.chunksize, out.shape)))
    return Stack(out, new, stack.path, stack.format, stack.name, stack.level, stack.n_levels)


def describe(path) -> dict:
    """What a stack holds, read from its metadata only.

    Returns
    -------
    dict
        ``format``, ``shape``, ``dtype``, ``chunks`` (level 0), ``spacing`` (µm or None), ``levels`` (list of
        (Z, Y, X) shapes), ``labels`` (label image names), ``attrs`` (the ``neuroseg_lite`` attributes).
    """
    stack = open_stack(path)
    info = {"path": str(stack.path), "format": stack.format, "name": stack.name, "shape": stack.shape,
            "dtype": str(stack.dtype), "chunks": tuple(int(c) for c in stack.data.chunksize),
            "spacing": stack.spacing, "levels": [stack.shape], "labels": [], "attrs": {}}
    if stack.format.startswith("ome-zarr"):
        group = zarr.open_group(str(stack.path), mode="r")
        info["levels"] = [open_stack(path, level=i).shape for i in range(stack.n_levels)]
        info["attrs"] = dict(group.attrs.get("neuroseg_lite", {}))
        if "labels" in group:
            info["labels"] = list(_ome(group["labels"])[0].get("labels", []))
    elif stack.format == "tiff":
        info["levels"] = [open_stack(path, level=i).shape for i in range(stack.n_levels)]
    return info
