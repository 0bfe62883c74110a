import math

import numpy as np
import pytest

from neuroseg_lite._checks import NeurosegInputError
from neuroseg_lite.metrics import (
    cap_profile,
    confusion_counts,
    evaluate,
    object_scores,
    pick_objects,
    segmentation_scores,
    surface_scores,
)


def _cube(shape, z, y, x):
    volume = np.zeros(shape, dtype=bool)
    volume[z, y, x] = True
    return volume


@pytest.fixture
def shifted_cubes():
    """A 4x4x4 cube and the same cube shifted by one plane along z, in a 10x10x10 volume."""
    truth = _cube((10, 10, 10), slice(2, 6), slice(2, 6), slice(2, 6))
    prediction = _cube((10, 10, 10), slice(3, 7), slice(2, 6), slice(2, 6))
    return prediction, truth


# ---------------------------------------------------------------------------------------------- voxel
def test_shifted_cubes_voxel_scores(shifted_cubes):
    prediction, truth = shifted_cubes
    scores = segmentation_scores(prediction, truth)
    # overlap 3 * 4 * 4 = 48 of 64 voxels each
    assert (scores["tp"], scores["fp"], scores["fn"], scores["tn"]) == (48, 16, 16, 1000 - 80)
    assert scores["dice"] == pytest.approx(0.75)
    assert scores["iou"] == pytest.approx(48 / 80)
    assert scores["precision"] == pytest.approx(0.75)
    assert scores["recall"] == pytest.approx(0.75)
    assert all(type(scores[k]) is float for k in ("dice", "iou", "precision", "recall"))
    assert all(type(scores[k]) is int for k in ("tp", "fp", "fn", "tn"))


def test_mask_restricts_counts(shifted_cubes):
    prediction, truth = shifted_cubes
    mask = np.zeros_like(truth)
    mask[6:] = True  # only the plane the prediction overshoots into, and empty planes below
    counts = confusion_counts(prediction, truth, mask=mask)
    assert counts == {"tp": 0, "fp": 16, "fn": 0, "tn": 4 * 100 - 16}
    mask = np.zeros_like(truth)
    mask[2] = True
    scores = segmentation_scores(prediction, truth, mask=mask)
    assert (scores["tp"], scores["fp"], scores["fn"], scores["tn"]) == (0, 0, 16, 84)
    assert scores["dice"] == 0.0 and scores["precision"] == 1.0 and scores["recall"] == 0.0


def test_threshold_on_probabilities():
    truth = np.zeros((1, 1, 4), dtype=bool)
    truth[0, 0, 2:] = True
    probability = np.array([0.1, 0.5, 0.7, 0.9], dtype=np.float32).reshape(1, 1, 4)
    assert confusion_counts(probability, truth) == {"tp": 2, "fp": 1, "fn": 0, "tn": 1}
    assert confusion_counts(probability, truth, threshold=0.8) == {"tp": 1, "fp": 0, "fn": 1, "tn": 2}
    assert segmentation_scores(probability, truth, threshold=0.6)["dice"] == 1.0


def test_instance_truth_and_inputs_untouched():
    truth = np.zeros((3, 3, 3), dtype=np.uint8)
    truth[0] = 5
    truth[2] = 9
    probability = np.full((3, 3, 3), 0.9)
    before_truth, before_prob = truth.copy(), probability.copy()
    scores = segmentation_scores(probability, truth)
    assert scores["precision"] == pytest.approx(18 / 27) and scores["recall"] == 1.0
    np.testing.assert_array_equal(truth, before_truth)
    np.testing.assert_array_equal(probability, before_prob)


def test_empty_conventions():
    empty = np.zeros((2, 3, 3), dtype=bool)
    full = np.ones((2, 3, 3), dtype=bool)
    both_empty = segmentation_scores(empty, empty)
    assert both_empty["dice"] == 1.0 and both_empty["iou"] == 1.0
    assert both_empty["precision"] == 1.0 and both_empty["recall"] == 1.0
    missed = segmentation_scores(empty, full)
    assert missed["dice"] == 0.0 and missed["precision"] == 1.0 and missed["recall"] == 0.0
    spurious = segmentation_scores(full, empty)
    assert spurious["dice"] == 0.0 and spurious["precision"] == 0.0 and spurious["recall"] == 1.0


# ---------------------------------------------------------------------------------------------- objects
def _three_objects():
    shape = (12, 12, 30)
    truth = np.zeros(shape, dtype=bool)
    truth[1:5, 1:5, 1:5] = True      # A: found exactly
    truth[1:6, 1:5, 10:14] = True    # B: 5 planes, split in two by the prediction
    truth[1:5, 1:5, 20:24] = True    # C: missed
    prediction = np.zeros(shape, dtype=bool)
    prediction[1:5, 1:5, 1:5] = True
    prediction[1:3, 1:5, 10:14] = True  # 2/5 of B -> IoU 0.4
    prediction[4:6, 1:5, 10:14] = True  # 2/5 of B -> IoU 0.4
    prediction[10, 10, 27] = True       # a one-voxel speck
    return prediction, truth


def test_object_split_missed_and_speck():
    prediction, truth = _three_objects()
    scores = object_scores(prediction, truth)
    assert (scores["n_true"], scores["n_pred"], scores["n_matched"]) == (3, 4, 1)
    assert scores["precision"] == pytest.approx(1 / 4)
    assert scores["recall"] == pytest.approx(1 / 3)
    assert scores["f1"] == pytest.approx(2 * 1 / 7)
    assert scores["mean_matched_iou"] == pytest.approx(1.0)
    no_specks = object_scores(prediction, truth, min_size_voxels=2)
    assert (no_specks["n_pred"], no_specks["n_matched"]) == (3, 1)
    assert no_specks["precision"] == pytest.approx(1 / 3)
    # At IoU >= 0.4 one half of B matches B, but only one (one-to-one).
    loose = object_scores(prediction, truth, min_iou=0.4)
    assert loose["n_matched"] == 2 and loose["n_pred"] == 4


def test_object_merge():
    truth = np.zeros((5, 5, 9), dtype=bool)
    truth[1:4, 1:4, 0:3] = True
    truth[1:4, 1:4, 4:7] = True
    prediction = np.zeros_like(truth)
    prediction[1:4, 1:4, 0:7] = True  # bridges the gap: IoU 27/63 with each neuron
    merged = object_scores(prediction, truth)
    assert (merged["n_true"], merged["n_pred"], merged["n_matched"]) == (2, 1, 0)
    assert merged["f1"] == 0.0 and math.isnan(merged["mean_matched_iou"])
    loose = object_scores(prediction, truth, min_iou=0.4)
    assert loose["n_matched"] == 1  # one prediction can match one neuron only
    assert loose["mean_matched_iou"] == pytest.approx(27 / 63)


def test_object_connectivity():
    truth = np.zeros((3, 3, 3), dtype=bool)
    truth[0, 0, 0] = truth[1, 1, 1] = True  # corner contact only
    assert object_scores(truth, truth)["n_true"] == 2
    one = object_scores(truth, truth, connectivity=3)
    assert one["n_true"] == 1 and one["n_matched"] == 1


def test_object_empty_and_bad_options():
    empty = np.zeros((3, 3, 3), dtype=bool)
    scores = object_scores(empty, empty)
    assert scores["precision"] == scores["recall"] == scores["f1"] == 1.0
    with pytest.raises(NeurosegInputError, match="min_iou"):
        object_scores(empty, empty, min_iou=0)
    with pytest.raises(NeurosegInputError, match="min_size_voxels"):
        object_scores(empty, empty, min_size_voxels=-1)
    with pytest.raises(NeurosegInputError, match="connectivity"):
        object_scores(empty, empty, connectivity=2)


# ---------------------------------------------------------------------------------------------- surface
def test_sheet_shift_along_z_anisotropic():
    truth = _cube((8, 6, 6), 3, slice(1, 5), slice(1, 5))
    prediction = _cube((8, 6, 6), 4, slice(1, 5), slice(1, 5))
    scores = surface_scores(prediction, truth, spacing=(2.0, 0.5, 0.5), tolerance_um=1.9)
    assert scores["hd95_um"] == pytest.approx(2.0)
    assert scores["hd_um"] == pytest.approx(2.0)
    assert scores["surface_dice"] == 0.0
    assert surface_scores(prediction, truth, spacing=(2.0, 0.5, 0.5), tolerance_um=2.0)["surface_dice"] == 1.0
    # the same shift along x costs 0.5 um
    shifted_x = _cube((8, 6, 6), 3, slice(1, 5), slice(2, 6))
    assert surface_scores(shifted_x, truth, spacing=(2.0, 0.5, 0.5))["hd_um"] == pytest.approx(0.5)


def test_single_voxels_diagonal_distance():
    truth = _cube((4, 4, 4), 1, 1, 1)
    prediction = _cube((4, 4, 4), 2, 2, 1)
    scores = surface_scores(prediction, truth, spacing=(2.0, 0.9, 0.9))
    assert scores["hd95_um"] == pytest.approx(math.sqrt(2.0**2 + 0.9**2))


def test_shifted_cubes_surface(shifted_cubes):
    prediction, truth = shifted_cubes
    scores = surface_scores(prediction, truth, spacing=(2.0, 1.0, 1.0), tolerance_um=1.5)
    # Each surface has 56 voxels: 36 on the other surface, 4 cap centres 1 um away in-plane,
    # and one 16-voxel cap 2 um (one plane) away.
    assert scores["hd95_um"] == pytest.approx(2.0)
    assert scores["assd_um"] == pytest.approx((4 * 1 + 16 * 2) / 56)
    assert scores["surface_dice"] == pytest.approx(40 / 56)
    strict = surface_scores(prediction, truth, spacing=(2.0, 1.0, 1.0), tolerance_um=0.5)
    assert strict["surface_dice"] == pytest.approx(36 / 56)


def test_identical_masks_and_padding_invariance(shifted_cubes):
    prediction, truth = shifted_cubes
    same = surface_scores(truth, truth, spacing=(2.0, 0.9, 0.9))
    assert same["surface_dice"] == 1.0 and same["hd95_um"] == 0.0 and same["hd_um"] == 0.0
    # Objects cut by the volume edge get a surface there; zero-padding must not change any score.
    rng = np.random.default_rng(1)
    a = rng.random((6, 7, 8)) > 0.5
    b = rng.random((6, 7, 8)) > 0.5
    spacing = (2.0, 0.9, 0.9)
    plain = surface_scores(a, b, spacing=spacing)
    padded = surface_scores(np.pad(a, 3), np.pad(b, 3), spacing=spacing)
    assert plain == pytest.approx(padded)


def test_surface_empty_conventions():
    empty = np.zeros((3, 3, 3), dtype=bool)
    full = _cube((3, 3, 3), 1, 1, 1)
    both = surface_scores(empty, empty, spacing=(1, 1, 1))
    assert both["surface_dice"] == 1.0 and both["hd95_um"] == 0.0
    one = surface_scores(empty, full, spacing=(1, 1, 1))
    assert one["surface_dice"] == 0.0 and math.isinf(one["hd95_um"])
    with pytest.raises(NeurosegInputError, match="tolerance_um"):
        surface_scores(full, full, spacing=(1, 1, 1), tolerance_um=-1)


# ---------------------------------------------------------------------------------------------- evaluate
def test_evaluate_flat_dict(shifted_cubes):
    prediction, truth = shifted_cubes
    probability = prediction.astype(np.float32) * 0.8
    result = evaluate(probability, truth, spacing=(2.0, 1.0, 1.0))
    assert result["dice"] == pytest.approx(0.75)
    assert result["n_true_objects"] == 1 and result["n_matched_objects"] == 1  # IoU 0.6
    assert result["object_f1"] == 1.0
    assert result["hd95_um"] == pytest.approx(2.0)
    for key, value in result.items():
        assert type(value) in (int, float), key
    masked = evaluate(probability, truth, spacing=(2.0, 1.0, 1.0), mask=truth)
    assert masked["precision"] == 1.0 and masked["tp"] == 48
    assert masked["hd95_um"] == result["hd95_um"]  # mask affects voxel scores only


# ---------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("function", [confusion_counts, segmentation_scores, object_scores])
def test_shape_mismatch_and_not_3d(function):
    a = np.zeros((4, 4, 4), dtype=bool)
    with pytest.raises(NeurosegInputError, match="shape"):
        function(a, np.zeros((4, 4, 5), dtype=bool))
    with pytest.raises(NeurosegInputError, match="3D"):
        function(a[0], a[0])


def test_bad_inputs_surface_and_evaluate():
    a = np.zeros((4, 4, 4), dtype=bool)
    with pytest.raises(NeurosegInputError, match="shape"):
        surface_scores(a, np.zeros((5, 4, 4), dtype=bool), spacing=(1, 1, 1))
    with pytest.raises(NeurosegInputError, match="3D"):
        evaluate(a[0], a[0], spacing=(1, 1, 1))
    with pytest.raises(NeurosegInputError, match="spacing"):
        evaluate(a, a, spacing=(1, 1))
    with pytest.raises(NeurosegInputError, match="spacing"):
        surface_scores(a, a, spacing=(0, 1, 1))
    with pytest.raises(NeurosegInputError, match="mask"):
        confusion_counts(a, a, mask=np.ones((4, 4, 3), dtype=bool))
    with pytest.raises(NeurosegInputError, match="NaN"):
        confusion_counts(np.full((4, 4, 4), np.nan), a)
    with pytest.raises(NeurosegInputError, match="neither binary nor instance"):
        confusion_counts(a, np.full((4, 4, 4), -1))


def test_bounding_box_crop_matches_full_volume_reference():
    # Small objects in a large empty volume: the implementation crops, this reference does not.
    from scipy import ndimage

    rng = np.random.default_rng(2)
    truth = np.zeros((12, 20, 20), dtype=bool)
    prediction = np.zeros_like(truth)
    truth[4:8, 5:11, 6:12] = rng.random((4, 6, 6)) > 0.3
    prediction[4:9, 6:12, 6:12] = rng.random((5, 6, 6)) > 0.3
    spacing = (2.0, 0.9, 0.9)
    cross = ndimage.generate_binary_structure(3, 1)
    surf_p = prediction & ~ndimage.binary_erosion(prediction, cross)
    surf_t = truth & ~ndimage.binary_erosion(truth, cross)
    d_pt = ndimage.distance_transform_edt(~surf_t, sampling=spacing)[surf_p]
    d_tp = ndimage.distance_transform_edt(~surf_p, sampling=spacing)[surf_t]
    scores = surface_scores(prediction, truth, spacing=spacing, tolerance_um=1.0)
    assert scores["hd95_um"] == pytest.approx(max(np.percentile(d_pt, 95), np.percentile(d_tp, 95)))
    assert scores["hd_um"] == pytest.approx(max(d_pt.max(), d_tp.max()))
    expected_sd = (np.sum(d_pt <= 1.0) + np.sum(d_tp <= 1.0)) / (d_pt.size + d_tp.size)
    assert scores["surface_dice"] == pytest.approx(expected_sd)


# ----------------------------------------------------------------------------------- picking objects
def _three_boxes():
    """A 27-voxel and a 12-voxel object inside a (6, 10, 10) stack, and a 40-voxel one on its border."""
    labels = np.zeros((6, 10, 10), dtype=np.uint8)
    labels[1:4, 5:8, 5:8] = 1  # 27 voxels, centre (2, 6, 6)
    labels[2:5, 1:3, 1:3] = 2  # 12 voxels, centre (3, 1.5, 1.5)
    labels[0:2, 0:4, 7:9] = 3  # 16 voxels, touches z = 0 and y = 0
    labels[2:4, 4:9, 0:2] = 4  # 20 voxels, touches x = 0
    return labels


def test_pick_objects_largest_first_and_inside_only():
    labels = _three_boxes()
    before = labels.copy()
    assert pick_objects(labels) == [(2, 6, 6)]
    assert pick_objects(labels, n=None) == [(2, 6, 6), (3, 2, 2)]  # border objects left out
    assert pick_objects(labels, n=5, inside=False) == [(2, 6, 6), (2, 6, 0), (0, 2, 8), (3, 2, 2)]
    assert all(type(c) is int for c in pick_objects(labels, n=None)[0])
    np.testing.assert_array_equal(labels, before)


def test_pick_objects_none_inside_and_bad_options():
    labels = np.ones((3, 4, 4), dtype=bool)  # fills the stack: touches every face
    assert pick_objects(labels) == []
    assert pick_objects(labels, inside=False) == [(1, 2, 2)]  # rounded (1, 1.5, 1.5)
    with pytest.raises(NeurosegInputError, match="n "):
        pick_objects(labels, n=0)
    with pytest.raises(NeurosegInputError, match="by"):
        pick_objects(labels, by="brightness")
    with pytest.raises(NeurosegInputError, match="3D"):
        pick_objects(labels[0])


# ----------------------------------------------------------------------------------- cap profile
def _ball(shape=(11, 15, 15), centre=(5, 7, 7), radius=3.2):
    z, y, x = np.indices(shape)
    return (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= radius ** 2


def test_cap_profile_on_a_sphere():
    truth = _ball()  # planes 2..8 (|dz| <= 3)
    perfect = cap_profile(truth.astype(np.float32), truth)
    assert perfect["z"].tolist() == list(range(2, 9))
    assert perfect["planes_from_cap"].tolist() == [0, 1, 2, 3, 2, 1, 0]
    assert perfect["object"].tolist() == [0] * 7
    np.testing.assert_allclose(perfect["dice"], 1.0)
    # a prediction that stops one plane short at both caps and is one pixel too wide at the equator
    z = np.arange(truth.shape[0])[:, None, None]
    prediction = truth & (np.abs(z - 5) < 3)
    prediction[5] = _ball(radius=4.2)[5]
    profile = cap_profile(prediction, truth)
    dice = dict(zip(profile["z"].tolist(), profile["dice"].tolist()))
    assert dice[2] == 0.0 and dice[8] == 0.0  # missed caps
    assert dice[3] == dice[7] == 1.0
    expected = 2 * truth[5].sum() / (truth[5].sum() + prediction[5].sum())
    assert dice[5] == pytest.approx(expected) and dice[5] < 1.0


def test_cap_profile_other_neurons_do_not_count_and_border_neurons_are_left_out():
    truth = np.zeros((8, 12, 20), dtype=bool)
    truth[2:6, 3:7, 3:7] = True  # neuron 0, inside
    truth[2:6, 3:7, 8:12] = True  # neuron 1, inside, 1 pixel apart in x (within the margin of 0)
    truth[0:3, 3:7, 15:19] = True  # touches z = 0: no cap on top, left out
    profile = cap_profile(truth, truth, margin=4)
    assert sorted(set(profile["object"].tolist())) == [0, 1]
    np.testing.assert_allclose(profile["dice"], 1.0)  # neighbour 1 inside neuron 0's window ignored
    assert len(cap_profile(truth, truth, inside=False)["z"]) == 4 + 4 + 3
    with pytest.raises(NeurosegInputError, match="margin"):
        cap_profile(truth, truth, margin=-1)
