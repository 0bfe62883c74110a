"""Tests for neuroseg_lite.zarrio: OME-Zarr 0.4/0.5, plain Zarr and (Big)TIFF stacks read lazily with spacing."""
from __future__ import annotations

import json
import pickle
import warnings

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader

from neuroseg_lite import zarrio
from neuroseg_lite._checks import NeurosegInputError
from neuroseg_lite.io import read_stack


@pytest.fixture
def volume():
    return np.random.default_rng(0).integers(0, 4000, size=(6, 70, 90)).astype(np.uint16)


def _ome_nodes(path):
    return {str(node.zarr.path).rstrip("/").rsplit("/", 1)[-1]: node for node in Reader(parse_url(str(path)))()}


def test_create_image_blockwise_and_ome_zarr_reader(tmp_path, volume):
    path = tmp_path / "sample.ome.zarr"
    array = zarrio.create_image(path, shape=volume.shape, dtype=np.uint16, chunks=(2, 32, 32),
                                spacing=(2.0, 0.6, 0.5), attrs={"seed": 3})
    for z0 in range(0, 6, 2):  # block-wise, as a prediction fills it
        array[z0:z0 + 2] = volume[z0:z0 + 2]
    labels = zarrio.create_labels(path, "neurons", dtype=np.int32)
    labels[:, 10:20, 30:40] = 7
    assert labels.shape == volume.shape and labels.chunks == (2, 32, 32)

    nodes = _ome_nodes(path)
    image = nodes["sample.ome.zarr"].metadata
    assert [a["name"] for a in image["axes"]] == ["z", "y", "x"]
    assert {a["unit"] for a in image["axes"]} == {"micrometer"}
    assert image["coordinateTransformations"][0][0]["scale"] == [2.0, 0.6, 0.5]
    np.testing.assert_array_equal(np.asarray(nodes["sample.ome.zarr"].data[0]), volume)
    label_node = nodes["neurons"]
    assert any(type(spec).__name__ == "Label" for spec in label_node.specs)
    assert np.asarray(label_node.data[0]).sum() == 7 * 10 * 10 * 6

    stack = zarrio.open_stack(path)
    assert stack.format == "ome-zarr-0.5" and stack.spacing == (2.0, 0.6, 0.5) and stack.name == "image"
    assert isinstance(stack.data, da.Array) and stack.shape == volume.shape and stack.dtype == np.uint16
    np.testing.assert_array_equal(stack.data.compute(), volume)
    assert zarrio.describe(path)["attrs"] == {"seed": 3}
    neurons = zarrio.open_stack(path, component="labels/neurons")
    assert neurons.dtype == np.int32 and neurons.spacing == (2.0, 0.6, 0.5)


def test_write_ome_zarr_pyramid_and_labels(tmp_path, volume):
    path = tmp_path / "w.ome.zarr"
    mask = volume > 2000
    zarrio.write_ome_zarr(path, da.from_array(volume, chunks=(3, 40, 40)), spacing=(2.0, 0.5, 0.5),
                          chunks=(3, 32, 32), labels={"mask": mask})
    info = zarrio.describe(path)
    assert info["levels"] == [(6, 70, 90), (6, 35, 45)]  # stops once y/x is below 64
    assert info["labels"] == ["mask"] and info["chunks"] == (3, 32, 32)
    level1 = zarrio.open_stack(path, level=1)
    assert level1.spacing == (2.0, 1.0, 1.0)
    expected = np.round(volume.reshape(6, 35, 2, 45, 2).mean(axis=(2, 4)))
    np.testing.assert_array_equal(level1.data.compute(), expected)
    mask1 = zarrio.open_stack(path, component="labels/mask", level=1)
    np.testing.assert_array_equal(mask1.data.compute(), mask[:, ::2, ::2])
    nodes = _ome_nodes(path)
    assert [d.shape for d in nodes["mask"].data] == [(6, 70, 90), (6, 35, 45)]
    scales = [t[0]["scale"] for t in nodes["w.ome.zarr"].metadata["coordinateTransformations"]]
    assert scales == [[2.0, 0.5, 0.5], [2.0, 1.0, 1.0]]
    assert zarrio.build_pyramid(path, n_levels=3) == 3
    assert zarrio.open_stack(path, level=2).shape == (6, 17, 22)


def _ngff_04(path, data, *, channel_axis: bool):
    """NGFF 0.4 by hand (ome-zarr's writer drops the axis units these tests are about)."""
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    data = data[np.newaxis] if channel_axis else data
    group.create_array("0", data=data, chunks=(1,) * (data.ndim - 2) + (32, 32), chunk_key_encoding={
        "name": "v2", "separator": "/"})
    axes = [{"name": "c", "type": "channel"}] * channel_axis + [
        {"name": a, "type": "space", "unit": "nanometer"} for a in "zyx"]
    scale = [1.0] * channel_axis + [2000.0, 500.0, 250.0]
    group.attrs["multiscales"] = [{"version": "0.4", "name": "old", "axes": axes, "datasets": [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}]}]
    return path


def test_ngff_04_with_nanometres_and_labels(tmp_path, volume):
    path = _ngff_04(tmp_path / "v04.ome.zarr", volume, channel_axis=True)
    assert np.asarray(_ome_nodes(path)["v04.ome.zarr"].data[0]).shape == (1,) + volume.shape
    stack = zarrio.open_stack(path)  # the singleton c axis is dropped
    assert stack.format == "ome-zarr-0.4" and stack.spacing == (2.0, 0.5, 0.25) and stack.name == "old"
    np.testing.assert_array_equal(stack.data.compute(), volume)
    path3 = _ngff_04(tmp_path / "v04_3d.ome.zarr", volume, channel_axis=False)
    zarrio.create_labels(path3, "mask", dtype=np.uint8)[:] = volume > 100
    assert zarrio.build_pyramid(path3, label_name="mask", n_levels=2) == 2
    labels = zarrio.open_stack(path3, component="labels/mask")
    assert labels.format == "ome-zarr-0.4" and labels.spacing == (2.0, 0.5, 0.25)
    np.testing.assert_array_equal(labels.data.compute(), volume > 100)
    node = _ome_nodes(path3)["mask"]
    assert [a["name"] for a in node.metadata["axes"]] == ["z", "y", "x"] and len(node.data) == 2
    assert json.loads((path3 / "labels" / "mask" / ".zattrs").read_text())["image-label"]["version"] == "0.4"


def _hand_ngff(path, axes, shape, scale=None):
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.create_array("0", shape=shape, dtype=np.uint8)
    scale = scale or [1.0] * len(shape)
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": axes, "datasets": [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}]}]}
    return path


def test_channels_units_and_bad_ngff(tmp_path):
    space = [{"name": a, "type": "space", "unit": "millimeter"} for a in "zyx"]
    path = _hand_ngff(tmp_path / "c.zarr", [{"name": "c", "type": "channel"}] + space, (2, 3, 4, 5),
                      [1, 0.002, 0.001, 0.001])
    zarr.open_array(str(path / "0"), mode="r+")[1] = 9
    with pytest.raises(NeurosegInputError, match="2 channels; pass channel="):
        zarrio.open_stack(path)
    stack = zarrio.open_stack(path, channel=1)
    assert stack.shape == (3, 4, 5) and stack.spacing == (2.0, 1.0, 1.0) and int(stack.data.min()) == 9
    assert zarrio.open_stack(path, channel=1, spacing=(1, 1, 1)).spacing == (1.0, 1.0, 1.0)
    weird = _hand_ngff(tmp_path / "w.zarr", [{"name": n} for n in ("q", "y", "x")], (2, 3, 4))
    with pytest.raises(NeurosegInputError, match=r"\['q'\] are not among t, c, z, y, x"):
        zarrio.open_stack(weird)
    furlong = [{"name": a, "type": "space", "unit": "furlong"} for a in "zyx"]
    with pytest.raises(NeurosegInputError, match="unit 'furlong'.*spacing="):
        zarrio.open_stack(_hand_ngff(tmp_path / "u.zarr", furlong, (2, 3, 4)))
    flat = _hand_ngff(tmp_path / "f.zarr", space[1:], (3, 4))
    with pytest.raises(NeurosegInputError, match="missing \\['z'\\]"):
        zarrio.open_stack(flat)
    unitless = _hand_ngff(tmp_path / "n.zarr", [{"name": a} for a in "zyx"], (2, 3, 4))
    assert zarrio.open_stack(unitless).spacing is None


def test_plain_zarr_groups_and_missing(tmp_path):
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("raw", shape=(4, 5, 6), dtype=np.float32)[:] = 1.5
    group.create_array("meta", shape=(3,), dtype=np.int64)
    stack = zarrio.open_stack(tmp_path / "g.zarr", spacing=(1, 2, 3))
    assert stack.format == "zarr" and stack.name == "raw" and stack.spacing == (1.0, 2.0, 3.0)
    assert float(stack.data.sum()) == 1.5 * 120
    group.create_array("other", shape=(2, 2, 2), dtype=np.uint8)
    with pytest.raises(NeurosegInputError, match="2 3D arrays .*raw .*component="):
        zarrio.open_stack(tmp_path / "g.zarr")
    assert zarrio.open_stack(tmp_path / "g.zarr", component="other").shape == (2, 2, 2)
    empty = zarr.open_group(str(tmp_path / "e.zarr"), mode="w")
    empty.create_array("plane", shape=(5, 6), dtype=np.uint8)
    with pytest.raises(NeurosegInputError, match="no 3D array .*plane"):
        zarrio.open_stack(tmp_path / "e.zarr")
    zarr.open_array(str(tmp_path / "a.zarr"), mode="w", shape=(5, 6), dtype=np.uint8)
    with pytest.raises(NeurosegInputError, match="2D data"):
        zarrio.open_stack(tmp_path / "a.zarr")
    with pytest.raises(FileNotFoundError, match="No such stack"):
        zarrio.open_stack(tmp_path / "nothing.zarr")
    with pytest.raises(NeurosegInputError):
        zarrio.open_stack(tmp_path / "nothing.zarr")


def test_existing_outputs_are_refused(tmp_path, volume):
    path = tmp_path / "x.ome.zarr"
    zarrio.write_ome_zarr(path, volume, spacing=(1, 1, 1), pyramid=False)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        zarrio.create_image(path, shape=(2, 2, 2), dtype=np.uint8, chunks=None, spacing=(1, 1, 1))
    zarrio.create_labels(path, "mask", dtype=np.uint8)
    with pytest.raises(NeurosegInputError, match="labels/mask.*overwrite=True"):
        zarrio.create_labels(path, "mask", dtype=np.uint8)
    zarrio.create_labels(path, "mask", dtype=np.uint8, overwrite=True)
    assert zarrio.describe(path)["labels"] == ["mask"]
    zarrio.write_ome_zarr(path, volume[:2], spacing=(1, 1, 1), overwrite=True, pyramid=False)
    assert zarrio.open_stack(path).shape == (2, 70, 90) and zarrio.describe(path)["labels"] == []
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(NeurosegInputError, match="not a Zarr store"):
        zarrio.create_image(tmp_path / "notes", shape=(2, 2, 2), dtype=np.uint8, chunks=None, spacing=(1, 1, 1),
                            overwrite=True)
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"
    zarrio.write_tiff(tmp_path / "t.tif", volume, spacing=(1, 1, 1))
    with pytest.raises(FileExistsError, match="overwrite=True"):
        zarrio.write_tiff(tmp_path / "t.tif", volume, spacing=(1, 1, 1))


@pytest.mark.parametrize("bigtiff", [False, True])
def test_write_tiff_round_trip_and_lazy_bigtiff(tmp_path, volume, bigtiff):
    path = zarrio.write_tiff(tmp_path / "s.tif", da.from_array(volume, chunks=(2, 70, 90)),
                             spacing=(2.0, 0.5, 0.4), bigtiff=bigtiff)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_bigtiff == bigtiff and len(tif.pages) == 6
    image, spacing = read_stack(path)
    np.testing.assert_array_equal(image, volume)
    assert spacing == (2.0, 0.5, 0.4)
    stack = zarrio.open_stack(path)
    assert stack.format == "tiff" and stack.spacing == (2.0, 0.5, 0.4)
    pickle.dumps(stack.data)  # distributed workers receive the graph
    np.testing.assert_array_equal(stack.data[2:4, 10:20].compute(), volume[2:4, 10:20])


def test_tiff_channels_and_2d(tmp_path, volume):
    tifffile.imwrite(tmp_path / "zcyx.tif", np.stack([volume, volume + 1], axis=1), imagej=True,
                     metadata={"axes": "ZCYX"})
    with pytest.raises(NeurosegInputError, match="channel="):
        zarrio.open_stack(tmp_path / "zcyx.tif")
    np.testing.assert_array_equal(zarrio.open_stack(tmp_path / "zcyx.tif", channel=1).data.compute(), volume + 1)
    tifffile.imwrite(tmp_path / "plane.tif", volume[0])
    with pytest.raises(NeurosegInputError, match="2D"):
        zarrio.open_stack(tmp_path / "plane.tif")
    (tmp_path / "x.png").write_bytes(b"not an image")
    with pytest.raises(NeurosegInputError, match="not a TIFF"):
        zarrio.open_stack(tmp_path / "x.png")


def test_spacing_match_and_resample(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert zarrio.check_spacing_match((2.0, 0.5, 0.5), (2.04, 0.5, 0.5))
    with pytest.warns(zarrio.SpacingMismatchWarning, match=r"ratio \(1.0, 0.5, 0.5\).*resample_stack"):
        assert not zarrio.check_spacing_match((2.0, 0.5, 0.5), (2.0, 1.0, 1.0))
    with pytest.warns(zarrio.SpacingMismatchWarning, match="unknown"):
        assert not zarrio.check_spacing_match(None, (2.0, 1.0, 1.0))
    ramp = np.broadcast_to(np.arange(40, dtype=np.float32) * 2, (4, 40, 40)).copy()  # linear along x
    stack = zarrio.Stack(da.from_array(ramp, chunks=(2, 16, 16)), (2.0, 0.5, 0.5), tmp_path, "zarr")
    half = zarrio.resample_stack(stack, spacing=(2.0, 1.0, 1.0))
    assert half.shape == (4, 20, 20) and half.spacing == (2.0, 1.0, 1.0) and half.dtype == np.float32
    # voxel centres aligned: output x i sits at input x 2i + 0.5, where the ramp is 4i + 1
    np.testing.assert_allclose(half.data[0, 0].compute(), np.arange(20) * 4 + 1)
    finer = zarrio.resample_stack(stack, spacing=(1.0, 0.5, 0.5))
    assert finer.shape == (8, 40, 40)
    np.testing.assert_allclose(finer.data.compute(), np.broadcast_to(ramp[:1], (8, 40, 40)))
    with pytest.raises(NeurosegInputError, match="spacing="):
        zarrio.resample_stack(zarrio.Stack(stack.data, None, tmp_path, "zarr"), spacing=(1, 1, 1))


def test_written_metadata_is_ngff_05(tmp_path, volume):
    path = zarrio.write_ome_zarr(tmp_path / "m.ome.zarr", volume, spacing=(1, 1, 1), labels={"m": volume > 9})
    root = json.loads((path / "zarr.json").read_text())
    assert root["zarr_format"] == 3 and root["attributes"]["ome"]["version"] == "0.5"
    level0 = json.loads((path / "0" / "zarr.json").read_text())
    assert level0["dimension_names"] == ["z", "y", "x"]
    label = json.loads((path / "labels" / "m" / "zarr.json").read_text())["attributes"]["ome"]
    assert label["image-label"]["source"]["image"] == "../../"
    assert json.loads((path / "labels" / "zarr.json").read_text())["attributes"]["ome"]["labels"] == ["m"]


def test_writers_refuse_bad_arrays(tmp_path, volume):
    with pytest.raises(NeurosegInputError, match="3D"):
        zarrio.write_ome_zarr(tmp_path / "p.ome.zarr", volume[0], spacing=(1, 1, 1))
    with pytest.raises(NeurosegInputError, match="labels\\['m'\\] has shape"):
        zarrio.write_ome_zarr(tmp_path / "p.ome.zarr", volume, spacing=(1, 1, 1), labels={"m": volume[:2]})
    with pytest.raises(NeurosegInputError, match=".tif"):
        zarrio.write_tiff(tmp_path / "p.png", volume, spacing=(1, 1, 1))
    assert not (tmp_path / "p.ome.zarr").exists()
