"""Tests for neuroseg_lite.synthlarge (a synthetic sample rendered block by block into OME-Zarr)."""
import itertools
import json

import numpy as np
import pytest
import zarr
from scipy import ndimage

from neuroseg_lite import NeurosegInputError
from neuroseg_lite.cache import StaleCacheWarning
from neuroseg_lite.synth import make_volume
from neuroseg_lite.synthlarge import ensure_sample, plan_sample, read_truth, render_block, write_sample

SHAPE = (24, 96, 90)  # not a multiple of the noise tiles (8, 32, 32)


def _whole(plan):
    return render_block(plan, tuple(slice(0, n) for n in plan.shape))


def _assemble(plan, block):
    image = np.zeros(plan.shape, np.uint16)
    labels = np.full(plan.shape, -1, np.int32)
    for corner in itertools.product(*(range(0, n, b) for n, b in zip(plan.shape, block))):
        region = tuple(slice(a, min(a + b, n)) for a, b, n in zip(corner, block, plan.shape))
        image[region], labels[region] = render_block(plan, region)
    return image, labels


@pytest.fixture(scope="module")
def plan():
    return plan_sample(shape=SHAPE, seed=5, preset="tiny")


@pytest.fixture(scope="module")
def whole(plan):
    return _whole(plan)


@pytest.mark.parametrize("block", [(11, 37, 41), (24, 30, 64), (5, 96, 90)])
def test_any_blocking_gives_identical_arrays(plan, whole, block):
    image, labels = _assemble(plan, block)
    np.testing.assert_array_equal(image, whole[0])
    np.testing.assert_array_equal(labels, whole[1])


def test_neurons_crossing_block_borders_are_whole(plan, whole):
    block = (11, 37, 41)
    _, labels = _assemble(plan, block)
    sizes = np.bincount(labels.ravel(), minlength=len(plan.neurons) + 1)
    np.testing.assert_array_equal(sizes[plan.neurons.id], plan.neurons.n_voxels)
    crossing = 0
    for axis, step in enumerate(block):
        for edge in range(step, SHAPE[axis], step):
            before = np.take(labels, edge - 1, axis=axis)
            after = np.take(labels, edge, axis=axis)
            crossing += len(np.intersect1d(before[before > 0], after[after > 0]))
    assert crossing >= 5  # the test means something: several somata do span borders
    # each soma is one connected piece of the assembled volume
    for row in plan.neurons.itertuples():
        assert ndimage.label(labels == row.id)[1] == 1


def test_deterministic_from_the_seed(plan, whole):
    again = plan_sample(shape=SHAPE, seed=5, preset="tiny")
    region = (slice(3, 17), slice(20, 70), slice(1, 60))
    image, labels = render_block(again, region)
    np.testing.assert_array_equal(image, whole[0][region])
    np.testing.assert_array_equal(labels, whole[1][region])
    other, other_labels = render_block(plan_sample(shape=SHAPE, seed=6, preset="tiny"), region)
    assert not np.array_equal(other, image) and not np.array_equal(other_labels, labels)


@pytest.mark.parametrize("seed", [0, 1])
def test_same_placement_and_statistics_as_make_volume(seed):
    plan = plan_sample(shape=(32, 128, 128), seed=seed, preset="small")
    image, labels = _whole(plan)
    volume = make_volume(seed=seed, preset="small")
    # placement is make_volume's own, so the labels are too (density, foreground fraction, sizes)
    np.testing.assert_array_equal(labels, volume.instances)
    assert len(plan.neurons) == volume.n_somata
    np.testing.assert_allclose(plan.neurons[["center_z_um", "center_y_um", "center_x_um"]], volume.soma_centers_um)
    # the random fields are other draws: intensities agree statistically
    background = labels == 0
    assert 0.9 < image.mean() / volume.image.mean() < 1.1
    assert 0.9 < np.median(image[background]) / np.median(volume.image[background]) < 1.1
    assert 0.8 < image[~background].mean() / volume.image[~background].mean() < 1.25
    assert 0.8 < image.std() / volume.image.std() < 1.25


def test_shape_defaults_to_the_presets():
    assert plan_sample(preset="tiny", seed=0).shape == (16, 64, 64)


def test_detector_noise_has_the_poisson_gaussian_variance():
    noisy, _ = _whole(plan_sample(shape=(16, 64, 64), seed=2, preset="tiny"))
    clean, _ = _whole(plan_sample(shape=(16, 64, 64), seed=2, preset="tiny", noise=False))
    cfg = plan_sample(shape=(16, 64, 64), seed=2, preset="tiny").config
    residual = noisy.astype(float) - clean
    expected = cfg.gain_adu_per_photon * (clean.astype(float) - cfg.offset_adu) + cfg.read_noise_adu ** 2
    assert abs(residual.mean()) < 0.05 * residual.std()
    assert 0.9 < residual.var() / expected.mean() < 1.1


def test_write_sample_round_trip(tmp_path, plan, whole):
    out = write_sample(tmp_path / "s.ome.zarr", shape=SHAPE, seed=5, preset="tiny", block=(16, 40, 64),
                       progress=False)
    group = zarr.open_group(str(out), mode="r")
    image, labels = group["0"], group["labels/neurons/0"]
    assert image.dtype == np.uint16 and labels.dtype == np.int32 and image.chunks == (16, 40, 64)
    np.testing.assert_array_equal(image[:], whole[0])
    np.testing.assert_array_equal(labels[:], whole[1])
    record = group.attrs["neuroseg_lite"]["synthlarge"]
    assert record["seed"] == 5 and record["preset"] == "tiny" and tuple(record["shape"]) == SHAPE
    json.dumps(record)
    scale = group.attrs["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"]
    assert tuple(scale) == plan.config.spacing

    truth = read_truth(out)
    values = whole[1]
    ids = np.unique(values[values > 0])
    np.testing.assert_array_equal(np.sort(truth.id), ids)
    np.testing.assert_array_equal(truth.n_voxels, np.bincount(values.ravel())[truth.id])
    centroids = np.array(ndimage.center_of_mass(np.ones_like(values), values, truth.id)) * plan.spacing
    np.testing.assert_allclose(truth[["z_um", "y_um", "x_um"]], centroids, atol=1e-9)
    assert set(truth.kind) <= {"pyramidal", "ellipsoid"}
    low, high = plan.config.soma_diameter_um
    assert truth.diameter_um.between(low, high).all()


def test_existing_output_is_refused_unless_overwrite(tmp_path):
    out = write_sample(tmp_path / "s.ome.zarr", shape=(8, 40, 40), preset="tiny", block=(8, 32, 32), progress=False)
    before = zarr.open_array(str(out / "0"), mode="r")[:]
    with pytest.raises(NeurosegInputError, match="overwrite=True"):
        write_sample(out, shape=(8, 40, 40), seed=1, preset="tiny", progress=False)
    np.testing.assert_array_equal(zarr.open_array(str(out / "0"), mode="r")[:], before)
    write_sample(out, shape=(8, 40, 40), seed=1, preset="tiny", progress=False, overwrite=True)
    assert not np.array_equal(zarr.open_array(str(out / "0"), mode="r")[:], before)


def test_dask_client_writes_the_same_sample(tmp_path):
    distributed = pytest.importorskip("distributed")
    kwargs = dict(shape=(16, 64, 70), seed=3, preset="tiny", block=(8, 32, 32), progress=False)
    here = write_sample(tmp_path / "here.ome.zarr", **kwargs)
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None) as client:
        there = write_sample(tmp_path / "there.ome.zarr", client=client, **kwargs)
    for part in ("0", "labels/neurons/0"):
        np.testing.assert_array_equal(zarr.open_array(str(here / part))[:], zarr.open_array(str(there / part))[:])
    assert read_truth(here).equals(read_truth(there))


def test_bad_input_is_explained(tmp_path, plan):
    with pytest.raises(NeurosegInputError, match="three non-empty slices"):
        render_block(plan, (slice(0, 4), slice(0, 200), slice(0, 4)))
    with pytest.raises(NeurosegInputError, match="three non-empty slices"):
        render_block(plan, (slice(0, 4), slice(0, 4)))
    with pytest.raises(NeurosegInputError, match="seed"):
        plan_sample(shape=SHAPE, seed=-1)
    with pytest.raises(NeurosegInputError, match="shape"):
        plan_sample(shape=(0, 10, 10))
    with pytest.raises(NeurosegInputError, match="block"):
        write_sample(tmp_path / "b.ome.zarr", shape=SHAPE, block=(0, 32, 32), progress=False)
    with pytest.raises(NeurosegInputError, match="write_sample"):
        read_truth(tmp_path / "missing.ome.zarr")


def test_ensure_sample_reuses_only_the_sample_asked_for(tmp_path):
    path = tmp_path / "s.ome.zarr"
    options = dict(shape=(8, 32, 32), preset="tiny", block=(8, 32, 32), progress=False)
    ensure_sample(path, seed=3, **options)
    written = (path / "neurons.csv").stat().st_mtime_ns
    ensure_sample(path, seed=3, **{**options, "block": (4, 16, 16)})  # the blocking decides nothing
    assert (path / "neurons.csv").stat().st_mtime_ns == written
    with pytest.warns(StaleCacheWarning, match="seed"):
        ensure_sample(path, seed=4, **options)
    assert np.array_equal(zarr.open_array(path / "0")[:], render_block(plan_sample(
        shape=(8, 32, 32), seed=4, preset="tiny"), (slice(0, 8), slice(0, 32), slice(0, 32)))[0])
    (path / "neurons.csv").unlink()  # an interrupted sample is written anew
    with pytest.warns(StaleCacheWarning, match="interrupted"):
        ensure_sample(path, seed=4, **options)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(NeurosegInputError, match="left untouched"):
        ensure_sample(foreign, seed=0, **options)
    assert (foreign / "notes.txt").read_text() == "keep me"
