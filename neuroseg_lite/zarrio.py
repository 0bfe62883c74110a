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
stack holds without reading its voxels.
"""
from __future__ import annotations

import errno
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import dask.array as da
import numpy as np
import tifffile
import zarr

from neuroseg_lite._checks import NeurosegInputError, check_spacing
from neuroseg_lite.tiff import _um_per_unit, file_spacing

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

_TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8")
# NGFF units are UDUNITS-2 names; the SI lengths a microscope can plausibly use, in micrometres.
_NGFF_UM = {"angstrom": 1e-4, "picometer": 1e-6, "nanometer": 1e-3, "micrometer": 1.0, "millimeter": 1e3,
            "centimeter": 1e4, "decimeter": 1e5, "meter": 1e6}
_KNOWN_AXES = ("t", "c", "z", "y", "x")


class SpacingMismatchWarning(UserWarning):
    """A stack's voxel spacing differs from the spacing the model was trained on (or cannot be checked)."""


class _MissingPathError(NeurosegInputError, FileNotFoundError):
    """A path that does not exist: a NeurosegInputError that ``except FileNotFoundError`` also catches."""


class _ExistsError(NeurosegInputError, FileExistsError):
    """An output that exists and was left untouched: caught by ``except FileExistsError`` too."""


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


# ---------------------------------------------------------------------------------------------------------------
# NGFF metadata: 0.4 keeps it in the group attributes, 0.5 under attributes["ome"] with one version for all
# ---------------------------------------------------------------------------------------------------------------

def _ome(group) -> tuple[dict, str | None]:
    """The group's NGFF attributes and version (None when it has none)."""
    attrs = group.attrs.asdict()
    if isinstance(attrs.get("ome"), dict):
        return attrs["ome"], str(attrs["ome"].get("version", "0.5"))
    for key in ("multiscales", "image-label"):
        if key in attrs:
            entry = attrs[key][0] if key == "multiscales" and attrs[key] else attrs[key]
            return attrs, str(entry.get("version", "0.4")) if isinstance(entry, dict) else "0.4"
    if "labels" in attrs:
        return attrs, "0.4"
    return attrs, None


def _set_ome(group, ome: dict, version: str) -> None:
    if version == "0.5":
        group.attrs["ome"] = {**ome, "version": "0.5"}
    else:
        group.attrs.update(ome)


def _multiscale(axes_scale, *, name, version, n_levels=1, downscale=(1, 1, 1)) -> dict:
    scale = np.asarray(axes_scale, float)
    datasets = [{"path": str(i), "coordinateTransformations": [
        {"type": "scale", "scale": [float(s) for s in scale * np.power(downscale, i)]}]} for i in range(n_levels)]
    entry = {"name": name, "axes": [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"],
             "datasets": datasets}
    if version != "0.5":
        entry["version"] = version
    return entry


def _ngff_array(group, ome: dict, version: str, *, path: Path, level: int, channel):
    """Select the level's array and drop t/c axes; returns (dask array, spacing, name, n_levels)."""
    multiscales = ome.get("multiscales") or []
    if not multiscales or not multiscales[0].get("datasets"):
        raise NeurosegInputError(f"'{path}' has NGFF metadata without multiscales datasets; it is not an image. "
                                 "Open one of its arrays with component=.")
    ms = multiscales[0]
    datasets = ms["datasets"]
    if not 0 <= level < len(datasets):
        raise NeurosegInputError(f"'{path}' has {len(datasets)} resolution level(s) (0..{len(datasets) - 1}); "
                                 f"level={level} does not exist. Pick one of them.")
    axes = [a if isinstance(a, dict) else {"name": a} for a in ms.get("axes", [{"name": n} for n in "tczyx"])]
    names = [str(a.get("name", "")).lower() for a in axes]
    unknown = [n for n in names if n not in _KNOWN_AXES]
    if unknown:
        raise NeurosegInputError(
            f"'{path}' has axes {names}; {unknown} are not among t, c, z, y, x, so the (Z, Y, X) volume cannot "
            "be found. Rewrite the file with NGFF axis names (e.g. with ome-zarr) or open the array with "
            "component= and give spacing=.")
    node = group[datasets[level]["path"]]
    arr = da.from_zarr(node)
    if arr.ndim != len(names):
        names = names[-arr.ndim:] if arr.ndim < len(names) else names
        if arr.ndim != len(names):
            raise NeurosegInputError(f"'{path}': level {level} has {arr.ndim} dimensions but {len(axes)} axes.")
    missing = [a for a in "zyx" if a not in names]
    if missing:
        raise NeurosegInputError(
            f"'{path}' holds {len(names)}D data with axes {names}, missing {missing}: a (Z, Y, X) volume is "
            "needed. For a 2D image add a z axis of length 1 when writing it.")
    scale = np.ones(len(names))
    for transforms in (datasets[level].get("coordinateTransformations", []), ms.get("coordinateTransformations", [])):
        for t in transforms:
            if t.get("type") == "scale":
                scale = scale * np.asarray(t["scale"], float)
    index = []
    for i, n in enumerate(names):
        if n == "t":
            if arr.shape[i] != 1:
                raise NeurosegInputError(f"'{path}' has {arr.shape[i]} time points; select one first and write it as "
                                         "its own image (only a single (Z, Y, X) volume is supported).")
            index.append(0)
        elif n == "c":
            if channel is None and arr.shape[i] != 1:
                raise NeurosegInputError(f"'{path}' has {arr.shape[i]} channels; pass channel= (0..{arr.shape[i] - 1}) "
                                         "to choose the one to segment.")
            c = 0 if channel is None else int(channel)
            if not 0 <= c < arr.shape[i]:
                raise NeurosegInputError(f"channel={channel} does not exist: '{path}' has {arr.shape[i]} channel(s).")
            index.append(c)
        else:
            index.append(slice(None))
    kept = [n for n in names if n in "zyx"]
    arr = arr[tuple(index)].transpose([kept.index(a) for a in "zyx"])
    spacing = None
    units = {a.get("name", "").lower(): a.get("unit") for a in axes}
    factors = []
    for a in "zyx":
        unit = units.get(a)
        if unit is None:
            break
        factor = _NGFF_UM.get(str(unit).lower(), _um_per_unit(unit))
        if factor is None:
            raise NeurosegInputError(
                f"'{path}': axis {a!r} has unit {unit!r}, which is not a length unit this package knows "
                f"({', '.join(_NGFF_UM)}). Fix the metadata or pass spacing=(z, y, x) in micrometres.")
        factors.append(factor)
    if len(factors) == 3:
        spacing = tuple(float(f"{scale[names.index(a)] * f:.12g}") for a, f in zip("zyx", factors))
    return arr, spacing, ms.get("name"), len(datasets)


def _single_array(group, path: Path):
    """The only 3D array anywhere in a group, or an error listing what is there."""
    found = []

    def walk(node, prefix):
        for key, child in node.members():
            name = f"{prefix}{key}"
            if isinstance(child, zarr.Array):
                found.append((name, child))
            else:
                walk(child, name + "/")
    walk(group, "")
    three_d = [(n, a) for n, a in found if a.ndim == 3]
    if len(three_d) == 1:
        return three_d[0]
    listing = ", ".join(f"{n} {tuple(a.shape)}" for n, a in found) or "no arrays at all"
    problem = "no 3D array" if not three_d else f"{len(three_d)} 3D arrays"
    raise NeurosegInputError(f"'{path}' is a Zarr group with {problem} ({listing}). Pick the array with "
                             "component='<name>' (a 3D (Z, Y, X) one).")


def _check_3d(arr, path: Path, what: str):
    if arr.ndim != 3:
        hint = " For a single 2D image use io.read_stack, or store it as (1, Y, X)." if arr.ndim == 2 else ""
        raise NeurosegInputError(f"'{path}' holds {arr.ndim}D {what} of shape {tuple(arr.shape)}; a (Z, Y, X) "
                                 f"volume is needed.{hint}")
    return arr


class _TiffRegion:
    """Reads any region of a TIFF (one level) through tifffile's Zarr store, opening the file per read.

    Holding only the path keeps the dask graph picklable for distributed workers and leaves no file open.
    """

    def __init__(self, path: Path, level: int):
        self.path, self.level = str(path), level
        node = self._node(tifffile.imread(self.path, aszarr=True))
        self.shape, self.dtype, self.ndim, self.chunks = tuple(node.shape), node.dtype, node.ndim, node.chunks

    def _node(self, store):
        node = zarr.open(store, mode="r")
        return node[str(self.level)] if isinstance(node, zarr.Group) else node

    def __getitem__(self, key):
        with tifffile.imread(self.path, aszarr=True) as store:
            return np.asarray(self._node(store)[key])


def _open_tiff(path: Path, level: int, channel):
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        axes, n_levels = series.axes, len(series.levels)
        spacing = file_spacing(tif)
    if not 0 <= level < n_levels:
        raise NeurosegInputError(f"'{path}' has {n_levels} resolution level(s); level={level} does not exist.")
    region = _TiffRegion(path, level)
    plane_bytes = int(np.prod(region.shape[-2:])) * region.dtype.itemsize
    # several planes per block (~32 MiB): one file open and one decode call per block, not per plane
    depth = max(int(region.chunks[0]), min(region.shape[0], 2**25 // max(plane_bytes, 1)))
    arr = da.from_array(region, chunks=(depth,) + tuple(region.shape[1:]), lock=False, fancy=False,
                        name=f"tiff-{path.name}-{level}-{path.stat().st_mtime_ns}")
    channel_axes = [i for i, a in enumerate(axes) if a in "CS"]
    if arr.ndim == 4 and len(channel_axes) == 1:
        i = channel_axes[0]
        if channel is None and arr.shape[i] != 1:
            raise NeurosegInputError(f"'{path}' has {arr.shape[i]} channels (axes {axes}); pass channel= to pick one.")
        arr = da.take(arr, 0 if channel is None else int(channel), axis=i)
    return _check_3d(arr, path, f"data (axes {axes})"), spacing, n_levels


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

def _check_shape(shape) -> tuple[int, int, int]:
    try:
        shape = tuple(int(n) for n in shape)
    except TypeError as err:
        raise NeurosegInputError(f"shape must be three integers (Z, Y, X), got {shape!r}.") from err
    if len(shape) != 3 or min(shape) < 1:
        raise NeurosegInputError(f"shape must be three positive integers (Z, Y, X), got {shape}.")
    return shape


def _check_chunks(chunks, shape) -> tuple[int, int, int]:
    if chunks is None:
        # ~16 MiB of uint16 per chunk: big enough for fast reads, small enough for one worker's block
        chunks = (64, 256, 256)
    chunks = _check_shape(chunks)
    return tuple(min(c, n) for c, n in zip(chunks, shape))


def _clear(path: Path, overwrite: bool) -> None:
    """Refuse an existing output, or remove it when ``overwrite`` (only if it looks like Zarr or is empty)."""
    if not path.exists():
        return
    if not overwrite:
        raise _ExistsError(errno.EEXIST, f"'{path}' already exists and was left untouched. Pass overwrite=True "
                           "to replace it, or choose another path.")
    if path.is_file():
        path.unlink()
        return
    markers = ("zarr.json", ".zgroup", ".zarray", ".zattrs")
    if any(path.iterdir()) and not any((path / m).exists() for m in markers):
        raise NeurosegInputError(f"'{path}' is a non-empty folder that is not a Zarr store; it was not deleted "
                                 "even with overwrite=True. Choose another path.")
    shutil.rmtree(path)


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


def _as_dask(data, name: str) -> da.Array:
    arr = data if isinstance(data, da.Array) else da.from_zarr(data) if isinstance(data, zarr.Array) else None
    if arr is None:
        arr = np.asarray(data)
        arr = da.from_array(arr, chunks=tuple(min(c, n) for c, n in zip((64, 256, 256), arr.shape)) or None)
    if arr.ndim != 3 or arr.size == 0:
        raise NeurosegInputError(f"{name} must be a non-empty 3D (Z, Y, X) array, got shape {tuple(arr.shape)}.")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise NeurosegInputError(f"{name} has dtype {arr.dtype}; pass a numeric (integer or float) array.")
    return arr


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


def _interpolate_axis(arr: da.Array, axis: int, n_out: int, ratio: float) -> da.Array:
    """Linear interpolation along one axis, voxel centres aligned (the physical extent is kept)."""
    n_in = arr.shape[axis]
    position = np.clip((np.arange(n_out) + 0.5) * ratio - 0.5, 0, n_in - 1)
    lower = np.floor(position).astype(int)
    upper = np.minimum(lower + 1, n_in - 1)
    weight = (position - lower).astype(np.float32)
    shape = [1, 1, 1]
    shape[axis] = n_out
    weight = weight.reshape(shape)
    return da.take(arr, lower, axis=axis) * (1 - weight) + da.take(arr, upper, axis=axis) * weight


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
