import json

import numpy as np
import pytest

from neuroseg_lite._checks import NeurosegInputError
from neuroseg_lite.sparse import (
    SparseLabels,
    distance_to_annotated,
    even_planes,
    from_annotation_stack,
    from_planes,
    objects_crossed,
    read_planes_file,
    simulate_sparse,
)


def _labels(shape=(10, 6, 8), seed=0):
    rng = np.random.default_rng(seed)
    return rng.random(shape) > 0.6


def test_one_slice_is_the_middle_plane():
    labels = _labels((9, 6, 8))
    sparse = simulate_sparse(labels, n_slices=1)
    assert isinstance(sparse, SparseLabels)
    assert sparse.planes == (4,)
    assert sparse.annotated[4].all() and sparse.annotated.sum() == 6 * 8
    np.testing.assert_array_equal(sparse.labels[4], labels[4])
    assert not sparse.labels[np.arange(9) != 4].any()
    assert sparse.fraction == pytest.approx(1 / 9)
    assert simulate_sparse(_labels((10, 6, 8)), n_slices=1).planes == (5,)


def test_even_planes_are_bin_centres():
    assert even_planes(10, 2) == (2, 7)
    assert even_planes(12, 3) == (2, 6, 10)
    assert even_planes(48, 4) == (6, 18, 30, 42)
    for n in range(1, 20):
        for k in range(1, n + 1):
            planes = even_planes(n, k)
            assert len(set(planes)) == k and min(planes) >= 0 and max(planes) < n


def test_all_slices_gives_dense_labels():
    labels = _labels()
    sparse = simulate_sparse(labels, n_slices=labels.shape[0])
    assert sparse.fraction == 1.0
    assert sparse.annotated.all()
    np.testing.assert_array_equal(sparse.labels, labels)
    assert sparse.planes == tuple(range(labels.shape[0]))
    assert sparse.labels.dtype == bool and sparse.annotated.dtype == bool


def test_instance_labels_are_binarised_and_input_untouched():
    instances = np.zeros((6, 5, 5), dtype=np.uint16)
    instances[2, 1:3, 1:3] = 7
    instances[2, 4, 4] = 300
    before = instances.copy()
    sparse = simulate_sparse(instances, n_slices=6)
    assert sparse.labels.dtype == bool
    np.testing.assert_array_equal(sparse.labels, instances > 0)
    np.testing.assert_array_equal(instances, before)
    bool_labels = instances > 0
    out = simulate_sparse(bool_labels, n_slices=6)
    assert out.labels is not bool_labels
    out.labels[:] = False
    assert bool_labels.any()


@pytest.mark.parametrize("bad", [np.full((4, 4, 4), -1, dtype=np.int32), np.full((4, 4, 4), 0.3)])
def test_negative_or_fractional_labels_rejected(bad):
    with pytest.raises(NeurosegInputError, match="neither binary nor instance"):
        simulate_sparse(bad, n_slices=1)


def test_random_mode_is_reproducible():
    labels = _labels((30, 4, 4))
    a = simulate_sparse(labels, n_slices=5, mode="random", seed=3)
    b = simulate_sparse(labels, n_slices=5, mode="random", seed=3)
    assert a.planes == b.planes
    assert len(set(a.planes)) == 5 and list(a.planes) == sorted(a.planes)
    others = {simulate_sparse(labels, n_slices=5, mode="random", seed=s).planes for s in range(10)}
    assert len(others) > 1


@pytest.mark.parametrize("axis", [1, 2])
def test_other_axes(axis):
    labels = _labels((4, 6, 8))
    sparse = simulate_sparse(labels, n_slices=2, axis=axis)
    n = labels.shape[axis]
    assert sparse.axis == axis
    assert sparse.planes == even_planes(n, 2)
    assert sparse.fraction == pytest.approx(2 / n)
    for plane in range(n):
        annotated = np.take(sparse.annotated, plane, axis=axis)
        assert annotated.all() == (plane in sparse.planes)
        assert annotated.any() == (plane in sparse.planes)
    expected = np.zeros_like(labels)
    for plane in sparse.planes:
        index = [slice(None)] * 3
        index[axis] = plane
        expected[tuple(index)] = labels[tuple(index)]
    np.testing.assert_array_equal(sparse.labels, expected)


@pytest.mark.parametrize("k", [0, -1, 11])
def test_n_slices_out_of_range(k):
    with pytest.raises(NeurosegInputError, match="between 1 and 10"):
        simulate_sparse(_labels((10, 4, 4)), n_slices=k)


def test_other_bad_options():
    labels = _labels((10, 4, 4))
    with pytest.raises(NeurosegInputError, match="between 1 and 4"):
        simulate_sparse(labels, n_slices=5, axis=1)
    with pytest.raises(NeurosegInputError, match="integer"):
        simulate_sparse(labels, n_slices=2.5)
    with pytest.raises(NeurosegInputError, match="axis"):
        simulate_sparse(labels, n_slices=1, axis=3)
    with pytest.raises(NeurosegInputError, match="mode"):
        simulate_sparse(labels, n_slices=1, mode="uniform")
    with pytest.raises(NeurosegInputError, match="3D"):
        simulate_sparse(labels[0], n_slices=1)


def test_distance_to_annotated_values():
    sparse = simulate_sparse(np.ones((10, 3, 3), dtype=bool), n_slices=2)
    assert sparse.planes == (2, 7)
    distance = distance_to_annotated(sparse.annotated)
    assert distance.shape == (10, 3, 3) and np.issubdtype(distance.dtype, np.integer)
    np.testing.assert_array_equal(distance[:, 1, 2], [2, 1, 0, 1, 2, 2, 1, 0, 1, 2])
    assert (distance == distance[:, :1, :1]).all()


def test_distance_to_annotated_along_x():
    annotated = np.zeros((2, 3, 6), dtype=bool)
    annotated[:, :, 0] = True
    annotated[:, :, 4] = True
    distance = distance_to_annotated(annotated, axis=2)
    np.testing.assert_array_equal(distance[1, 2], [0, 1, 2, 1, 0, 1])


def test_distance_to_annotated_needs_an_annotation():
    with pytest.raises(NeurosegInputError, match="no annotated"):
        distance_to_annotated(np.zeros((4, 4, 4), dtype=bool))


def test_from_planes_trusts_only_the_listed_planes():
    from neuroseg_lite.sparse import from_planes

    labels = np.zeros((6, 4, 4), dtype=np.uint16)
    labels[1, :2] = 3
    labels[4] = 7  # not listed: must be ignored
    annotation = from_planes(labels, planes=[3, 1])
    assert annotation.planes == (1, 3)
    assert annotation.fraction == pytest.approx(2 / 6)
    assert annotation.annotated[[1, 3]].all() and not annotation.annotated[[0, 2, 4, 5]].any()
    assert annotation.labels.sum() == 8 and not annotation.labels[4].any()


@pytest.mark.parametrize("planes", [[], [6], [-1], [2, 2]])
def test_from_planes_rejects_bad_planes(planes):
    from neuroseg_lite.sparse import from_planes

    with pytest.raises(NeurosegInputError, match="plane"):
        from_planes(np.zeros((6, 4, 4), dtype=bool), planes=planes)


# --- real annotations as annotation tools save them (chapter 10, the CLI's train) -------------------------
def _painted_stack(unlabelled=255, dtype=np.uint8):
    stack = np.full((10, 6, 6), unlabelled, dtype)
    for plane in (2, 7):
        stack[plane] = 0
        stack[plane, 1:4, 1:4] = 1
    return stack


def test_from_annotation_stack_finds_the_painted_planes():
    stack = _painted_stack()
    before = stack.copy()
    annotation = from_annotation_stack(stack, unlabelled=255)
    assert annotation.planes == (2, 7)
    assert annotation.annotated[2].all() and not annotation.annotated[3].any()
    assert int(annotation.labels.sum()) == 2 * 9
    assert np.array_equal(stack, before)  # input untouched


def test_from_annotation_stack_signed_minus_one_and_instance_ids():
    stack = _painted_stack(unlabelled=-1, dtype=np.int16)
    stack[7, 1:4, 1:4] = 5  # instance ids count as neurons
    annotation = from_annotation_stack(stack, unlabelled=-1)
    assert annotation.planes == (2, 7) and int(annotation.labels.sum()) == 18


def test_from_annotation_stack_with_a_planes_file(tmp_path):
    stack = np.zeros((10, 6, 6), np.uint8)
    stack[4, 2, 2] = 1
    side = tmp_path / "planes.txt"
    side.write_text("# planes\n4, 8\n")
    annotation = from_annotation_stack(stack, planes=side)
    assert annotation.planes == (4, 8) and int(annotation.labels.sum()) == 1
    (tmp_path / "planes.json").write_text(json.dumps({"planes": [1, 4]}))
    assert read_planes_file(tmp_path / "planes.json") == (1, 4)


@pytest.mark.parametrize("content", ["4, x", "4.5", ""])
def test_read_planes_file_refuses_bad_content(tmp_path, content):
    side = tmp_path / "planes.txt"
    side.write_text(content)
    with pytest.raises(NeurosegInputError, match="plane"):
        read_planes_file(side)


def test_from_annotation_stack_bad_input():
    stack = _painted_stack()
    with pytest.raises(NeurosegInputError, match="exactly one way"):
        from_annotation_stack(stack)
    with pytest.raises(NeurosegInputError, match="cannot occur"):
        from_annotation_stack(stack, unlabelled=-1)
    partly = stack.copy()
    partly[5, 0, 0] = 0
    with pytest.raises(NeurosegInputError, match=r"planes \[5\].*partly annotated"):
        from_annotation_stack(partly, unlabelled=255)
    with pytest.raises(NeurosegInputError, match="occurs nowhere"):
        from_annotation_stack(np.zeros((3, 4, 4), np.uint8), unlabelled=255)
    with pytest.raises(NeurosegInputError, match="no plane is annotated"):
        from_annotation_stack(np.full((3, 4, 4), 255, np.uint8), unlabelled=255)
    with pytest.raises(NeurosegInputError, match="does not exist"):
        from_annotation_stack(stack, planes="no_such_file.txt")


def test_objects_crossed_counts_instances_cut_by_an_annotated_plane():
    labels = np.zeros((12, 6, 6), np.int32)
    labels[1:3, :2, :2], labels[5:9, 3:, 3:], labels[5:9, :2, 3:] = 1, 2, 3  # 2 and 3 both cross plane 6
    assert objects_crossed(labels, from_planes(labels > 0, planes=[6])) == (2, 3)
    assert objects_crossed(labels, from_planes(labels > 0, planes=[0, 11])) == (0, 3)
    # binary labels: face-connected components are the objects
    assert objects_crossed(labels > 0, from_planes(labels > 0, planes=[2])) == (1, 3)
    with pytest.raises(NeurosegInputError, match="labels of the annotated volume"):
        objects_crossed(labels[:6], from_planes(labels > 0, planes=[2]))
