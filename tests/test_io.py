"""Tests for neuroseg_lite.io: TIFF round trips with spacing, lazy reading, safe writing, label and intensity checks."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile

from neuroseg_lite._checks import NeurosegInputError
from neuroseg_lite.io import (
    LazyStack,
    binarize_labels,
    describe_stack,
    load_pair,
    normalize_percentile,
    read_stack,
    write_stack,
)

SPACING = (2.0, 0.9, 0.75)


def ramp(shape=(5, 6, 7), dtype=np.uint16):
    return np.arange(np.prod(shape)).reshape(shape).astype(dtype)


# --- read / write round trips --------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32])
def test_round_trip_keeps_values_dtype_and_spacing(tmp_path, dtype):
    image = ramp(dtype=dtype)
    path = write_stack(tmp_path / "stack.tif", image, spacing=SPACING)
    loaded, spacing = read_stack(path)
    assert loaded.dtype == dtype
    np.testing.assert_array_equal(loaded, image)
    assert spacing == pytest.approx(SPACING, rel=1e-6)


def test_round_trip_awkward_spacing(tmp_path):
    spacing = (2.18, 0.123456, 0.3333)
    path = write_stack(tmp_path / "s.tif", ramp(), spacing=spacing)
    assert read_stack(path)[1] == pytest.approx(spacing, rel=1e-5)


def test_float64_written_as_float32_and_input_untouched(tmp_path):
    image = np.linspace(0, 1, 5 * 6 * 7).reshape(5, 6, 7)
    before = image.copy()
    path = write_stack(tmp_path / "f.tif", image, spacing=SPACING)
    loaded, _ = read_stack(path)
    assert loaded.dtype == np.float32
    np.testing.assert_allclose(loaded, image, rtol=1e-6)
    np.testing.assert_array_equal(image, before)
    assert image.dtype == np.float64


def test_bool_written_as_0_255_and_reads_back_as_same_mask(tmp_path):
    mask = ramp() % 3 == 0
    path = write_stack(tmp_path / "m.tif", mask, spacing=SPACING)
    raw, _ = read_stack(path)
    assert raw.dtype == np.uint8 and set(np.unique(raw)) == {0, 255}
    np.testing.assert_array_equal(binarize_labels(raw), mask)


def test_int64_instance_labels_fit_in_uint16(tmp_path):
    labels = ramp().astype(np.int64) * 100  # up to 20900: needs 16 bits
    loaded, _ = read_stack(write_stack(tmp_path / "l.tif", labels, spacing=SPACING))
    assert loaded.dtype == np.uint16
    np.testing.assert_array_equal(loaded, labels)


def test_int64_out_of_range_refused(tmp_path):
    labels = ramp().astype(np.int64) * 100_000
    with pytest.raises(NeurosegInputError, match="uint16"):
        write_stack(tmp_path / "big.tif", labels, spacing=SPACING)
    assert list(tmp_path.iterdir()) == []


def test_ome_spacing_with_unit_conversion(tmp_path):
    path = tmp_path / "ome.tif"
    image = ramp()
    tifffile.imwrite(path, image, ome=True, metadata={
        "axes": "ZYX",
        "PhysicalSizeX": 750.0, "PhysicalSizeXUnit": "nm",
        "PhysicalSizeY": 0.0009, "PhysicalSizeYUnit": "mm",
        "PhysicalSizeZ": 2.0, "PhysicalSizeZUnit": "µm",
    })
    loaded, spacing = read_stack(path)
    np.testing.assert_array_equal(loaded, image)
    assert spacing == pytest.approx((2.0, 0.9, 0.75), rel=1e-9)


def test_ome_default_unit_is_micrometre(tmp_path):
    path = tmp_path / "ome.tif"
    tifffile.imwrite(path, ramp(), ome=True,
                     metadata={"axes": "ZYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5, "PhysicalSizeZ": 3.0})
    assert read_stack(path)[1] == pytest.approx((3.0, 0.5, 0.5))


def test_plain_tiff_has_no_spacing(tmp_path):
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, ramp())
    image, spacing = read_stack(path)
    assert spacing is None and image.shape == (5, 6, 7)


def test_2d_file_becomes_one_plane_stack(tmp_path):
    path = tmp_path / "plane.tif"
    tifffile.imwrite(path, ramp()[0])
    image, _ = read_stack(path)
    assert image.shape == (1, 6, 7)


def test_multichannel_file_refused(tmp_path):
    path = tmp_path / "czyx.tif"
    tifffile.imwrite(path, np.zeros((4, 2, 6, 7), np.uint8), imagej=True, metadata={"axes": "ZCYX"})
    with pytest.raises(NeurosegInputError, match="single-channel"):
        read_stack(path)


# --- lazy reading ---------------------------------------------------------------------------------------------

def test_lazy_uncompressed_is_memmap(tmp_path):
    image = ramp()
    path = write_stack(tmp_path / "u.tif", image, spacing=SPACING)
    lazy, spacing = read_stack(path, lazy=True)
    assert isinstance(lazy, np.memmap)
    np.testing.assert_array_equal(lazy[2], image[2])
    assert spacing == pytest.approx(SPACING)
    del lazy


def test_lazy_compressed_reads_only_requested_planes(tmp_path):
    image = ramp(shape=(6, 8, 9))
    path = write_stack(tmp_path / "z.tif", image, spacing=SPACING, compression="zlib")
    lazy, spacing = read_stack(path, lazy=True)
    assert isinstance(lazy, LazyStack)
    assert lazy.shape == image.shape and lazy.dtype == image.dtype and lazy.ndim == 3 and len(lazy) == 6
    assert spacing == pytest.approx(SPACING)
    assert lazy.pages_read == 0
    np.testing.assert_array_equal(lazy[3], image[3])
    assert lazy.pages_read == 1
    np.testing.assert_array_equal(lazy[1:5:2, 2, 1:4], image[1:5:2, 2, 1:4])
    assert lazy.pages_read == 3
    np.testing.assert_array_equal(lazy[-1], image[-1])
    np.testing.assert_array_equal(lazy[[0, 2]], image[[0, 2]])
    np.testing.assert_array_equal(np.asarray(lazy), image)


def test_lazy_big_endian_gives_native_planes(tmp_path):
    image = ramp()
    path = tmp_path / "be.tif"
    tifffile.imwrite(path, image, imagej=True, byteorder=">", resolution=(2.0, 2.0),
                     metadata={"spacing": 3.0, "unit": "micron"})
    lazy, spacing = read_stack(path, lazy=True)
    assert spacing == pytest.approx((3.0, 0.5, 0.5))
    plane = lazy[1]
    assert plane.dtype.isnative
    np.testing.assert_array_equal(plane, image[1])


# --- write_stack refusals -------------------------------------------------------------------------------------

def test_write_refuses_to_overwrite_and_keeps_old_file(tmp_path):
    path = write_stack(tmp_path / "a.tif", ramp(), spacing=SPACING)
    original = path.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_stack(path, ramp() * 2, spacing=SPACING)
    assert path.read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tif"]  # no temp file left behind


def test_write_overwrite_true_replaces(tmp_path):
    path = write_stack(tmp_path / "a.tif", ramp(), spacing=SPACING)
    write_stack(path, ramp() * 2, spacing=(1.0, 1.0, 1.0), overwrite=True)
    image, spacing = read_stack(path)
    np.testing.assert_array_equal(image, ramp() * 2)
    assert spacing == pytest.approx((1.0, 1.0, 1.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tif"]


@pytest.mark.parametrize("bad", [np.zeros((6, 7)), np.zeros((2, 3, 6, 7)), np.zeros((0, 6, 7))])
def test_write_refuses_non_3d_and_writes_nothing(tmp_path, bad):
    with pytest.raises(NeurosegInputError):
        write_stack(tmp_path / "x.tif", bad, spacing=SPACING)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (0.0, 1.0, 1.0), (-2.0, 1.0, 1.0), None])
def test_write_refuses_bad_spacing_and_writes_nothing(tmp_path, spacing):
    with pytest.raises(NeurosegInputError):
        write_stack(tmp_path / "x.tif", ramp(), spacing=spacing)
    assert list(tmp_path.iterdir()) == []


def test_write_refuses_wrong_extension_and_missing_folder(tmp_path):
    with pytest.raises(NeurosegInputError, match=r"\.tif"):
        write_stack(tmp_path / "x.png", ramp(), spacing=SPACING)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_stack(tmp_path / "missing" / "x.tif", ramp(), spacing=SPACING)
    assert list(tmp_path.iterdir()) == []


def test_write_failure_leaves_no_temp_file(tmp_path):
    with pytest.raises(ValueError, match="(?i)compression"):  # tifffile's refusal of an unknown codec
        write_stack(tmp_path / "x.tif", ramp(), spacing=SPACING, compression="no-such-codec")
    assert list(tmp_path.iterdir()) == []


# --- read_stack refusals --------------------------------------------------------------------------------------

def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nothing_here.tif"
    with pytest.raises(FileNotFoundError, match="nothing_here.tif"):
        read_stack(path)


def test_corrupt_tiff_names_the_file(tmp_path):
    path = tmp_path / "broken.tif"
    path.write_bytes(b"this is not a tiff at all" * 10)
    with pytest.raises(NeurosegInputError, match="broken.tif"):
        read_stack(path)


def test_truncated_tiff_names_the_file(tmp_path):
    path = write_stack(tmp_path / "cut.tif", ramp(shape=(4, 32, 32)), spacing=SPACING)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(NeurosegInputError, match="cut.tif"):
        read_stack(path)


# --- labels ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("labels", [
    np.array([0, 1, 1, 0]), np.array([0, 255, 255, 0], np.uint8), np.array([0, 3, 7, 0], np.int32),
    np.array([False, True, True, False]), np.array([0.0, 1.0, 2.0, 0.0]),
])
def test_binarize_accepts_binary_and_instance(labels):
    volume = labels.reshape(1, 2, 2)
    before = volume.copy()
    mask = binarize_labels(volume)
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask.ravel(), [False, True, True, False])
    np.testing.assert_array_equal(volume, before)
    assert mask is not volume


def test_binarize_rejects_negative():
    with pytest.raises(NeurosegInputError, match="neither binary nor instance"):
        binarize_labels(np.array([0, -1, 1, 2]).reshape(1, 2, 2))


def test_binarize_rejects_fractional_floats():
    with pytest.raises(NeurosegInputError, match="neither binary nor instance"):
        binarize_labels(np.array([0.0, 0.3, 0.9, 1.0]).reshape(1, 2, 2))


def test_binarize_rejects_non_3d():
    with pytest.raises(NeurosegInputError, match="3D"):
        binarize_labels(np.zeros((4, 4), np.uint8))


# --- normalize_percentile --------------------------------------------------------------------------------------

def test_normalize_maps_percentiles_to_0_and_1():
    image = ramp(shape=(4, 10, 10))
    before = image.copy()
    out = normalize_percentile(image, low=0.0, high=100.0)
    assert out.dtype == np.float32
    assert out.min() == pytest.approx(0.0) and out.max() == pytest.approx(1.0)
    np.testing.assert_array_equal(image, before)
    clipped = normalize_percentile(image, low=10, high=90, clip=True)
    assert clipped.min() == 0.0 and clipped.max() == 1.0
    unclipped = normalize_percentile(image, low=10, high=90)
    assert unclipped.min() < 0.0 and unclipped.max() > 1.0


@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
def test_normalize_rejects_nan_inf(bad_value):
    image = np.ones((3, 4, 4), np.float32)
    image[1, 2, 2] = bad_value
    with pytest.raises(NeurosegInputError, match="NaN or Inf"):
        normalize_percentile(image)


def test_normalize_rejects_constant():
    with pytest.raises(NeurosegInputError, match="constant"):
        normalize_percentile(np.full((3, 4, 4), 7, np.uint16))


def test_normalize_rejects_equal_percentiles_and_bad_range():
    image = np.zeros((3, 10, 10), np.uint16)
    image[0, 0, 0] = 5  # not constant, but the 1st and 99.8th percentiles are both 0
    with pytest.raises(NeurosegInputError, match="Widen"):
        normalize_percentile(image, low=1.0, high=99.0)
    with pytest.raises(NeurosegInputError, match="low < high"):
        normalize_percentile(ramp(), low=50, high=10)


def test_normalize_rejects_non_3d():
    with pytest.raises(NeurosegInputError, match="3D"):
        normalize_percentile(np.arange(10.0))


# --- load_pair and describe_stack -------------------------------------------------------------------------------

def test_load_pair_reads_checks_and_binarizes(tmp_path):
    image = ramp()
    labels = (ramp() % 4 == 0).astype(np.uint8) * 255
    image_path = write_stack(tmp_path / "img.tif", image, spacing=SPACING)
    label_path = write_stack(tmp_path / "lab.tif", labels, spacing=SPACING)
    img, lab, spacing = load_pair(image_path, label_path)
    np.testing.assert_array_equal(img, image)
    assert lab.dtype == bool and lab.sum() == (labels > 0).sum()
    assert spacing == pytest.approx(SPACING)
    assert load_pair(image_path, label_path, spacing=(3, 1, 1))[2] == (3.0, 1.0, 1.0)


def test_load_pair_shape_mismatch(tmp_path):
    image_path = write_stack(tmp_path / "img.tif", ramp(), spacing=SPACING)
    label_path = write_stack(tmp_path / "lab.tif", ramp(shape=(5, 7, 6)) > 3, spacing=SPACING)
    with pytest.raises(NeurosegInputError, match="shape"):
        load_pair(image_path, label_path)


def test_load_pair_without_any_spacing_asks_for_it(tmp_path):
    tifffile.imwrite(tmp_path / "img.tif", ramp())
    tifffile.imwrite(tmp_path / "lab.tif", (ramp() > 10).astype(np.uint8))
    with pytest.raises(NeurosegInputError, match=r"spacing=\(z, y, x\)"):
        load_pair(tmp_path / "img.tif", tmp_path / "lab.tif")
    _, _, spacing = load_pair(tmp_path / "img.tif", tmp_path / "lab.tif", spacing=(2, 1, 1))
    assert spacing == (2.0, 1.0, 1.0)


def test_load_pair_rejects_probability_labels(tmp_path):
    tifffile.imwrite(tmp_path / "img.tif", ramp())
    tifffile.imwrite(tmp_path / "lab.tif", np.linspace(0, 1, 5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7))
    with pytest.raises(NeurosegInputError, match="neither binary nor instance"):
        load_pair(tmp_path / "img.tif", tmp_path / "lab.tif", spacing=SPACING)


def test_describe_stack():
    info = describe_stack(ramp(shape=(4, 10, 20)), (2.0, 0.5, 0.5))
    assert info["shape"] == (4, 10, 20) and info["dtype"] == "uint16"
    assert info["size_um"] == pytest.approx((8.0, 5.0, 10.0))
    assert info["min"] == 0 and info["max"] == 799
    assert info["p1"] <= info["p50"] <= info["p99"]
    assert describe_stack(ramp(), None)["size_um"] is None
