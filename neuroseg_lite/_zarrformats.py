"""Format plumbing under :mod:`neuroseg_lite.zarrio`: NGFF metadata, Zarr groups, lazy TIFF regions, checks.

Introduced in chapter 10 (``10_whole_sample``).

NGFF 0.4 keeps its metadata in the group attributes (Zarr v2), 0.5 under ``attributes["ome"]`` (Zarr v3)
with one version for the whole group; :func:`_ome` and :func:`_set_ome` hide that difference.
:func:`_ngff_array` turns a multiscale image's axes, scale transforms and units into a (Z, Y, X) dask array
and a spacing in micrometres. :class:`_TiffRegion` reads TIFF regions through tifffile's Zarr store.
The public functions using these are in :mod:`neuroseg_lite.zarrio`.
"""
from __future__ import annotations

import errno
import shutil
from pathlib import Path

import dask.array as da
import numpy as np
import tifffile
import zarr

from neuroseg_lite._checks import NeurosegInputError
from neuroseg_lite.tiff import _um_per_unit, file_spacing

_TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8")
# NGFF units are UDUNITS-2 names; the SI lengths a microscope can plausibly use, in micrometres.
_NGFF_UM = {"angstrom": 1e-4, "picometer": 1e-6, "nanometer": 1e-3, "micrometer": 1.0, "millimeter": 1e3,
            "centimeter": 1e4, "decimeter": 1e5, "meter": 1e6}
_KNOWN_AXES = ("t", "c", "z", "y", "x")


class _MissingPathError(NeurosegInputError, FileNotFoundError):
    """A path that does not exist: a NeurosegInputError that ``except FileNotFoundError`` also catches."""


class _ExistsError(NeurosegInputError, FileExistsError):
    """An output that exists and was left untouched: caught by ``except FileExistsError`` too."""


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
        with tifffile.imread(self.path, aszarr=True) as store:
            node = self._node(store)
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


def _as_dask(data, name: str) -> da.Array:
    arr = da.from_zarr(data) if isinstance(data, zarr.Array) else data
    arr = arr if isinstance(arr, da.Array) else np.asarray(arr)
    if arr.ndim != 3 or arr.size == 0:
        raise NeurosegInputError(f"{name} must be a non-empty 3D (Z, Y, X) array, got shape {tuple(arr.shape)}.")
    if isinstance(arr, np.ndarray):
        arr = da.from_array(arr, chunks=tuple(min(c, n) for c, n in zip((64, 256, 256), arr.shape)))
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise NeurosegInputError(f"{name} has dtype {arr.dtype}; pass a numeric (integer or float) array.")
    return arr


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
