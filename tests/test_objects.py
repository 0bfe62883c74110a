"""Tests of neuroseg_lite.objects: labels across blocks, the neuron table, counts, matching, tables on disk."""
from __future__ import annotations

import importlib.util
import math

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import zarr
from scipy import ndimage
from skimage.measure import regionprops

from neuroseg_lite import synth
from neuroseg_lite._checks import NeurosegInputError
from neuroseg_lite.objects import (
    count_neurons,
    density_map,
    label_neurons,
    match_centroids,
    neuron_table,
    write_table,
)

SMALL_CHUNKS = (4, 16, 16)  # the tiny preset's somata span 4-8 planes and 9-18 pixels: every one crosses blocks


@pytest.fixture(scope="module")
def volume():
    return synth.make_volume(preset="tiny", seed=3)


def _same_partition(ours: np.ndarray, reference: np.ndarray) -> bool:
    """True when two label images split the foreground into the same objects (ids may differ)."""
    if not np.array_equal(ours > 0, reference > 0):
        return False
    fg = ours > 0
    pairs = np.unique(np.stack([ours[fg], reference[fg]]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


@pytest.mark.parametrize("connectivity", [1, 3])
def test_labels_merge_across_small_blocks(volume, connectivity):
    fg = volume.instances > 0
    structure = ndimage.generate_binary_structure(3, connectivity)
    reference, n_reference = ndimage.label(fg, structure=structure)
    labels, n = label_neurons(da.from_array(fg, chunks=SMALL_CHUNKS), spacing=volume.spacing,
                              connectivity=connectivity)
    assert n == n_reference > 5
    ours = labels.compute()
    assert ours.dtype == np.int32 and ours.max() == n
    assert _same_partition(ours, reference)


def test_diagonal_touch_across_block_corner():
    # Two voxels meeting only at a corner that is also the corner of four blocks.
    mask = np.zeros((4, 4, 4), bool)
    mask[1, 1, 1] = mask[2, 2, 2] = True
    assert label_neurons(da.from_array(mask, chunks=2), spacing=(1, 1, 1), connectivity=3)[1] == 1
    assert label_neurons(da.from_array(mask, chunks=2), spacing=(1, 1, 1), connectivity=1)[1] == 2


def test_zarr_backed_input(volume, tmp_path):
    fg = (volume.instances > 0).astype(np.uint8)
    store = zarr.open_array(tmp_path / "mask.zarr", mode="w", shape=fg.shape, chunks=SMALL_CHUNKS, dtype="uint8")
    store[:] = fg
    reference, n_reference = ndimage.label(fg)
    for source in (store, da.from_zarr(store)):
        labels, n = label_neurons(source, spacing=volume.spacing)
        assert n == n_reference
        assert labels.chunks[0] == (4, 4, 4, 4)
        assert _same_partition(labels.compute(), reference)


def test_table_equals_regionprops(volume):
    rng = np.random.default_rng(0)
    probability = np.where(volume.instances > 0, rng.uniform(0.5, 1.0, volume.instances.shape), 0.1)
    reference, _ = ndimage.label(volume.instances > 0)
    labels = da.from_array(reference, chunks=SMALL_CHUNKS)
    table = neuron_table(labels, spacing=volume.spacing, probability=da.from_array(probability, chunks=(8, 32, 32)))
    props = regionprops(reference, intensity_image=probability)
    assert table["id"].tolist() == [p.label for p in props]
    voxel = float(np.prod(volume.spacing))
    for row, p in zip(table.itertuples(), props):
        np.testing.assert_allclose([row.z_um, row.y_um, row.x_um], np.asarray(p.centroid) * volume.spacing)
        assert row.n_voxels == p.area and row.volume_um3 == pytest.approx(p.area * voxel)
        assert row.diameter_um == pytest.approx((6 * p.area * voxel / math.pi) ** (1 / 3))
        assert (row.z0, row.y0, row.x0, row.z1, row.y1, row.x1) == p.bbox
        assert row.mean_probability == pytest.approx(p.intensity_mean)
        assert row.on_border == (min(p.bbox[:3]) == 0 or any(e == n for e, n in zip(p.bbox[3:], reference.shape)))
    # uint8 probability is read as value / 255; without a probability the column is NaN.
    scaled = neuron_table(reference, spacing=volume.spacing, probability=np.round(probability * 255).astype(np.uint8))
    np.testing.assert_allclose(scaled["mean_probability"], table["mean_probability"], atol=1 / 255)
    assert neuron_table(reference, spacing=volume.spacing)["mean_probability"].isna().all()


def test_table_centroids_match_synth_truth(volume):
    # Soma centres of whole (not cut) somata lie near their voxel centroids, in the same µm convention.
    table = neuron_table(volume.instances, spacing=volume.spacing)
    inside = table[~table["on_border"]]
    assert len(inside) >= 2
    truth = volume.soma_centers_um[inside["id"].to_numpy() - 1]
    distance = np.linalg.norm(inside[["z_um", "y_um", "x_um"]].to_numpy() - truth, axis=1)
    assert distance.max() < 2.0


def test_size_filter_in_cubic_micrometres(volume):
    reference, n_reference = ndimage.label(volume.instances > 0)
    volumes = np.bincount(reference.ravel())[1:] * float(np.prod(volume.spacing))
    cutoff = float(np.median(volumes))
    labels, n = label_neurons(da.from_array(volume.instances > 0, chunks=SMALL_CHUNKS), spacing=volume.spacing,
                              min_volume_um3=cutoff)
    assert n == int(np.count_nonzero(volumes >= cutoff)) < n_reference
    ours = labels.compute()
    assert sorted(np.unique(ours[ours > 0]).tolist()) == list(range(1, n + 1))
    kept = np.flatnonzero(volumes >= cutoff) + 1
    assert np.array_equal(ours > 0, np.isin(reference, kept))


def _two_spheres(shape=(24, 48, 64), spacing=(1.0, 0.5, 0.5), radius=6.0, gap=10.0):
    z, y, x = np.indices(shape) * np.asarray(spacing)[:, None, None, None]
    centres = [(12.0, 12.0, 16.0 - gap / 2), (12.0, 12.0, 16.0 + gap / 2)]
    mask = np.zeros(shape, bool)
    for c in centres:
        mask |= (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= radius ** 2
    return mask, np.asarray(centres)


@pytest.mark.parametrize("chunks", [None, (8, 16, 16)])
def test_watershed_splits_touching_spheres(chunks):
    mask, centres = _two_spheres()
    spacing = (1.0, 0.5, 0.5)
    assert label_neurons(mask, spacing=spacing)[1] == 1
    result = count_neurons(mask, spacing=spacing, split_touching=True, max_soma_diameter_um=14.0, chunks=chunks)
    assert result.count == 2
    found = result.table[["z_um", "y_um", "x_um"]].to_numpy()
    assert match_centroids(found, centres, radius_um=1.5)["tp"] == 2
    # The cut lines are given back: every foreground voxel keeps a label.
    labels = result.labels.compute()
    assert np.array_equal(labels > 0, mask)
    assert result.table["n_voxels"].sum() == mask.sum()


def test_watershed_block_wise_equals_whole_array():
    # Three touching spheres in a row, cut by blocks smaller than a soma: the same split as on one block.
    shape, spacing = (24, 32, 80), (1.0, 0.5, 0.5)
    z, y, x = np.indices(shape) * np.asarray(spacing)[:, None, None, None]
    mask = np.zeros(shape, bool)
    for cx in (7.0, 18.0, 29.0):
        mask |= (z - 12.0) ** 2 + (y - 8.0) ** 2 + (x - cx) ** 2 <= 6.5 ** 2
    whole, n_whole = label_neurons(mask, spacing=spacing, split_touching=True, max_soma_diameter_um=14.0)
    blocks, n_blocks = label_neurons(da.from_array(mask, chunks=(6, 8, 12)), spacing=spacing, split_touching=True,
                                     max_soma_diameter_um=14.0)
    assert n_whole == n_blocks == 3
    assert _same_partition(blocks.compute(), whole.compute())


def test_watershed_keeps_single_somata(volume):
    # Separate somata of the synthetic volume are not cut into pieces.
    separate = label_neurons(volume.instances > 0, spacing=volume.spacing)[1]
    split = label_neurons(da.from_array(volume.instances > 0, chunks=(8, 32, 32)), spacing=volume.spacing,
                          split_touching=True, min_volume_um3=50.0)[1]
    large = label_neurons(volume.instances > 0, spacing=volume.spacing, min_volume_um3=50.0)[1]
    assert large <= split <= separate + 1


def test_count_and_density(volume):
    prediction = da.from_array(volume.instances > 0, chunks=SMALL_CHUNKS)
    result = count_neurons(prediction, spacing=volume.spacing, min_volume_um3=0.0)
    assert result.count == ndimage.label(volume.instances > 0)[1] == len(result.table)
    volume_mm3 = np.prod(volume.instances.shape) * np.prod(volume.spacing) * 1e-9
    assert result.volume_mm3 == pytest.approx(volume_mm3)
    assert result.density_per_mm3 == pytest.approx(result.count / volume_mm3)
    # A float probability fills mean_probability and is thresholded at 0.5.
    probability = np.where(volume.instances > 0, 0.8, 0.2).astype(np.float32)
    scored = count_neurons(probability, spacing=volume.spacing, min_volume_um3=0.0)
    assert scored.count == result.count
    np.testing.assert_allclose(scored.table["mean_probability"], 0.8, rtol=1e-6)
    # uint8 probability scaled by 255 (as predict_large writes it) gives the same objects.
    as_uint8 = count_neurons((probability * 255).astype(np.uint8), spacing=volume.spacing, min_volume_um3=0.0)
    assert as_uint8.count == result.count


def test_match_centroids_hand_made():
    true = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 10.0], [0.0, 20.0, 0.0]])
    found = np.array([[0.0, 0.0, 1.0], [0.0, 0.0, 13.0], [0.0, 40.0, 0.0], [0.0, 40.0, 40.0]])
    result = match_centroids(found, true, radius_um=4.0, return_pairs=True)
    assert (result["tp"], result["fp"], result["fn"]) == (2, 2, 1)
    assert result["precision"] == 0.5 and result["recall"] == pytest.approx(2 / 3)
    assert result["f1"] == pytest.approx(4 / 7)
    assert result["count_error"] == 1 and result["relative_count_error"] == pytest.approx(1 / 3)
    assert result["mean_distance_um"] == pytest.approx(2.0)
    assert sorted(map(tuple, result["pairs"].tolist())) == [(0, 0), (1, 1)]
    # The radius is inclusive.
    assert match_centroids(found, true, radius_um=3.0)["tp"] == 2
    assert match_centroids(found, true, radius_um=2.999)["tp"] == 1


def test_match_centroids_beats_greedy():
    # Greedy closest-first takes found 1 with true 0 (0.8 µm) and leaves two points alone; the assignment
    # finds both pairs.
    found = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 2.0]])
    true = np.array([[0.0, 0.0, 1.2], [0.0, 0.0, 3.5]])
    result = match_centroids(found, true, radius_um=1.6)
    assert result["tp"] == 2 and result["mean_distance_um"] == pytest.approx(1.35)


def test_match_centroids_empty_and_tables():
    empty = np.zeros((0, 3))
    assert match_centroids(empty, empty, radius_um=5.0)["f1"] == 1.0
    none_found = match_centroids(empty, [[1.0, 2.0, 3.0]], radius_um=5.0)
    assert none_found["recall"] == 0.0 and none_found["relative_count_error"] == -1.0
    assert math.isnan(none_found["mean_distance_um"])
    assert match_centroids([[1.0, 2.0, 3.0]], empty, radius_um=5.0)["relative_count_error"] == math.inf
    table = pd.DataFrame({"z_um": [1.0], "y_um": [2.0], "x_um": [3.0]})
    assert match_centroids(table, np.array([[1.0, 2.0, 4.0]]), radius_um=1.0)["tp"] == 1


def test_density_map_counts_every_neuron():
    shape, spacing = (10, 100, 120), (2.0, 1.0, 1.0)
    table = pd.DataFrame({"y_um": [5.0, 10.0, 60.0, 99.0], "x_um": [5.0, 70.0, 5.0, 119.0]})
    density, extent = density_map(table, shape=shape, spacing=spacing, bin_um=50.0)
    assert density.shape == (2, 3)
    assert extent == (-0.5, 119.5, 99.5, -0.5)
    bin_volume = np.outer([50.0, 50.0], [50.0, 50.0, 20.0]) * 20.0 * 1e-9
    counts = density * bin_volume
    np.testing.assert_allclose(counts, [[1, 1, 0], [1, 0, 1]])


def test_write_table(tmp_path, volume):
    table = neuron_table(volume.instances, spacing=volume.spacing)
    path = write_table(table, tmp_path / "neurons.csv")
    back = pd.read_csv(path)
    pd.testing.assert_frame_equal(back, table, check_dtype=False)
    with pytest.raises(NeurosegInputError, match="overwrite=True"):
        write_table(table, path)
    write_table(table.iloc[:2], path, overwrite=True)
    assert len(pd.read_csv(path)) == 2
    with pytest.raises(NeurosegInputError, match=r"\.csv or \.parquet"):
        write_table(table, tmp_path / "neurons.xlsx")
    if importlib.util.find_spec("pyarrow") is None:
        with pytest.raises(NeurosegInputError, match="pip install pyarrow"):
            write_table(table, tmp_path / "neurons.parquet")
    else:
        pd.testing.assert_frame_equal(pd.read_parquet(write_table(table, tmp_path / "neurons.parquet")), table)


def test_bad_input(volume):
    fg = volume.instances > 0
    with pytest.raises(NeurosegInputError, match="3D"):
        label_neurons(fg[0], spacing=volume.spacing)
    with pytest.raises(NeurosegInputError, match="3D"):
        neuron_table(da.from_array(volume.instances[0]), spacing=volume.spacing)
    with pytest.raises(NeurosegInputError, match="spacing"):
        label_neurons(fg, spacing=(1.0, 1.0))
    with pytest.raises(NeurosegInputError, match="spacing"):
        count_neurons(fg, spacing=(1.0, -1.0, 1.0))
    with pytest.raises(NeurosegInputError, match="min_volume_um3"):
        label_neurons(fg, spacing=volume.spacing, min_volume_um3=-1.0)
    with pytest.raises(NeurosegInputError, match="max_soma_diameter_um"):
        label_neurons(fg, spacing=volume.spacing, split_touching=True, max_soma_diameter_um=-5.0)
    with pytest.raises(NeurosegInputError, match="connectivity"):
        label_neurons(fg, spacing=volume.spacing, connectivity=2)
    with pytest.raises(NeurosegInputError, match="integer instance labels"):
        neuron_table(fg, spacing=volume.spacing)
    with pytest.raises(NeurosegInputError, match="shape"):
        neuron_table(volume.instances, spacing=volume.spacing, probability=np.zeros((2, 2, 2)))
    with pytest.raises(NeurosegInputError, match="radius_um"):
        match_centroids(np.zeros((1, 3)), np.zeros((1, 3)), radius_um=-1.0)
    with pytest.raises(NeurosegInputError, match=r"\(N, 3\)"):
        match_centroids(np.zeros((2, 2)), np.zeros((1, 3)), radius_um=1.0)
    with pytest.raises(NeurosegInputError, match="bin_um"):
        density_map(pd.DataFrame({"y_um": [], "x_um": []}), shape=(1, 2, 2), spacing=(1, 1, 1), bin_um=0)


def test_input_is_not_modified(volume):
    probability = np.where(volume.instances > 0, 0.9, 0.1)
    before = probability.copy()
    count_neurons(probability, spacing=volume.spacing, split_touching=True)
    assert np.array_equal(probability, before)
