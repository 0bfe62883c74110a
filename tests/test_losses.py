import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from neuroseg_lite import losses
from neuroseg_lite._checks import NeurosegInputError
from neuroseg_lite.losses import LOSS_NORMALIZATIONS, lambda_schedule, pseudo_targets, weight_map, weighted_bce


def _tiny_volumes():
    labels = np.array([1, 0, 1, 0, 0, 1], bool).reshape(1, 2, 3)
    annotated = np.array([1, 1, 0, 0, 0, 0], bool).reshape(1, 2, 3)
    prob = np.array([0.1, 0.9, 0.95, 0.5, 0.6, 0.2], np.float32).reshape(1, 2, 3)
    return labels, annotated, prob


def test_pseudo_targets_hard_by_hand():
    labels, annotated, prob = _tiny_volumes()
    before = [a.copy() for a in (labels, annotated, prob)]
    targets, mask = pseudo_targets(labels, annotated, prob, mode="hard")
    # Annotated voxels keep the manual label even where the 2D network disagrees; p = 0.5 is a tie -> background.
    np.testing.assert_array_equal(targets.ravel(), [1, 0, 1, 0, 1, 0])
    np.testing.assert_array_equal(mask.ravel(), [0, 0, 1, 1, 1, 1])
    assert targets.dtype == np.float32 and mask.dtype == bool
    for a, b in zip(before, (labels, annotated, prob), strict=True):
        np.testing.assert_array_equal(a, b)


def test_pseudo_targets_soft_and_confidence():
    labels, annotated, prob = _tiny_volumes()
    targets, mask = pseudo_targets(labels, annotated, prob, mode="soft")
    np.testing.assert_allclose(targets.ravel(), [1, 0, 0.95, 0.5, 0.6, 0.2])
    targets, mask = pseudo_targets(labels, annotated, prob, mode="hard", confidence=0.75)
    # max(p, 1-p) for the unannotated voxels: 0.95, 0.5, 0.6, 0.8 -> the 0.5 and 0.6 ones are excluded.
    np.testing.assert_array_equal(mask.ravel(), [0, 0, 1, 0, 0, 1])
    np.testing.assert_array_equal(targets.ravel(), [1, 0, 1, 0, 0, 0])


@pytest.mark.parametrize("change", ["prob_range", "prob_nan", "mode", "confidence", "shape", "labels"])
def test_pseudo_targets_bad_input(change):
    labels, annotated, prob = _tiny_volumes()
    kwargs = {}
    if change == "prob_range":
        prob = prob * 3 - 1
    elif change == "prob_nan":
        prob[0, 0, 0] = np.nan
    elif change == "mode":
        kwargs["mode"] = "fuzzy"
    elif change == "confidence":
        kwargs["confidence"] = 0.3
    elif change == "shape":
        prob = prob[:, :1]
    elif change == "labels":
        labels = labels.astype(int) * 7
    with pytest.raises(NeurosegInputError):
        pseudo_targets(labels, annotated, prob, **kwargs)


def test_weight_map():
    annotated = np.array([1, 0, 0, 0], bool).reshape(1, 1, 4)
    pseudo = np.array([1, 1, 0, 1], bool).reshape(1, 1, 4)
    np.testing.assert_array_equal(weight_map(annotated, lam=0.25, pseudo_mask=pseudo).ravel(), [1, 0.25, 0, 0.25])
    np.testing.assert_array_equal(weight_map(annotated, lam=0.25).ravel(), [1, 0.25, 0.25, 0.25])
    assert weight_map(annotated, lam=0.5).dtype == np.float32
    with pytest.raises(NeurosegInputError, match="lam"):
        weight_map(annotated, lam=-0.1)


def _random_batch(seed=0, shape=(2, 1, 6, 9, 11)):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g) * 3
    targets = (torch.rand(shape, generator=g) > 0.6).float()
    annotated = torch.rand(shape, generator=g) < 0.05
    pseudo = torch.rand(shape, generator=g) < 0.7
    return logits, targets, annotated, pseudo


@pytest.mark.parametrize("loss_normalization", LOSS_NORMALIZATIONS)
@pytest.mark.parametrize("use_mask", [True, False])
def test_lam_zero_is_exactly_the_sparse_loss(loss_normalization, use_mask):
    for seed in range(5):
        logits, targets, annotated, pseudo = _random_batch(seed)
        sparse = F.binary_cross_entropy_with_logits(logits[annotated], targets[annotated])
        loss = weighted_bce(logits, targets, annotated, lam=0.0, pseudo_mask=pseudo if use_mask else None,
                            loss_normalization=loss_normalization)
        assert torch.equal(loss, sparse)


@pytest.mark.parametrize("loss_normalization", LOSS_NORMALIZATIONS)
def test_lam_changes_the_loss(loss_normalization):
    logits, targets, annotated, pseudo = _random_batch(1)
    values = [weighted_bce(logits, targets, annotated, lam=lam, pseudo_mask=pseudo,
                           loss_normalization=loss_normalization) for lam in (0.0, 0.25, 1.0)]
    assert len({round(float(v), 6) for v in values}) == 3


def test_paper_loss_is_linear_in_lam():
    logits, targets, annotated, pseudo = _random_batch(2)
    only_pseudo = pseudo & ~annotated
    pseudo_term = F.binary_cross_entropy_with_logits(logits[only_pseudo], targets[only_pseudo])
    l0 = weighted_bce(logits, targets, annotated, lam=0.0, pseudo_mask=pseudo)
    l7 = weighted_bce(logits, targets, annotated, lam=0.7, pseudo_mask=pseudo)
    torch.testing.assert_close(l7, l0 + 0.7 * pseudo_term)


def test_hand_computed_values():
    logits = torch.tensor([0.0, 0.0, 2.0, -1.0])
    targets = torch.tensor([1.0, 0.0, 1.0, 1.0])
    annotated = torch.tensor([True, False, False, False])
    pseudo = torch.tensor([False, True, True, False])  # the last voxel is excluded
    ln2, soft = math.log(2.0), math.log1p(math.exp(-2.0))
    paper = weighted_bce(logits, targets, annotated, lam=0.5, pseudo_mask=pseudo, loss_normalization="paper")
    assert paper.item() == pytest.approx(ln2 + 0.5 * (ln2 + soft) / 2, rel=1e-6)
    glob = weighted_bce(logits, targets, annotated, lam=0.5, pseudo_mask=pseudo, loss_normalization="global")
    assert glob.item() == pytest.approx((ln2 + 0.5 * ln2 + 0.5 * soft) / 2.0, rel=1e-6)


def test_global_form_is_dominated_by_the_larger_set():
    # 1 annotated voxel for 47 pseudo-labelled ones (one slice in 48): the global form hardly sees lam,
    # Eq. 1 ("paper") does. Annotated loss ~ 0 and pseudo loss ~ ln 2 make the shares visible.
    logits = torch.cat([torch.tensor([20.0]), torch.zeros(47)])
    targets = torch.ones(48)
    annotated = torch.zeros(48, dtype=torch.bool)
    annotated[0] = True
    paper = [weighted_bce(logits, targets, annotated, lam=lam).item() for lam in (0.2, 1.0)]
    glob = [weighted_bce(logits, targets, annotated, lam=lam, loss_normalization="global").item()
            for lam in (0.2, 1.0)]
    assert paper[1] / paper[0] == pytest.approx(5.0, rel=1e-3)
    assert glob[1] / glob[0] == pytest.approx((47 / 48) / (47 * 0.2 / (1 + 47 * 0.2)), rel=1e-3)
    assert glob[1] / glob[0] < 1.1


def test_empty_sets_and_gradient():
    logits = torch.zeros(1, 1, 2, 2, 2, requires_grad=True)
    targets = torch.ones(1, 1, 2, 2, 2)
    nothing = torch.zeros(1, 1, 2, 2, 2, dtype=torch.bool)
    for loss_normalization in ("paper", "global"):
        loss = weighted_bce(logits, targets, nothing, lam=0.5, pseudo_mask=nothing,
                            loss_normalization=loss_normalization)
        assert loss.item() == 0.0
        loss.backward()
        assert torch.equal(logits.grad, torch.zeros_like(logits))
    # No annotated voxel: Eq. 1 keeps only the pseudo term.
    loss = weighted_bce(logits, targets, nothing, lam=0.5)
    assert loss.item() == pytest.approx(0.5 * math.log(2.0), rel=1e-6)


@pytest.mark.parametrize("kwargs", [dict(lam=-0.5), dict(lam=float("nan")), dict(lam=0.5, loss_normalization="sum")])
def test_weighted_bce_bad_options(kwargs):
    logits, targets, annotated, pseudo = _random_batch(3)
    with pytest.raises(NeurosegInputError):
        weighted_bce(logits, targets, annotated, **kwargs)


def test_loss_normalization_is_the_one_name():
    # "normalization" alone also meant the intensity spec; the loss form is only ever "loss_normalization".
    assert LOSS_NORMALIZATIONS == ("paper", "global")
    assert not hasattr(losses, "NORMALIZATIONS")
    logits, targets, annotated, pseudo = _random_batch(3)
    with pytest.raises(TypeError, match="normalization"):
        weighted_bce(logits, targets, annotated, lam=0.5, normalization="paper")
    with pytest.raises(NeurosegInputError, match="loss_normalization must be one of"):
        weighted_bce(logits, targets, annotated, lam=0.5, loss_normalization="sum")


def test_weighted_bce_shape_mismatch():
    logits, targets, annotated, pseudo = _random_batch(4)
    with pytest.raises(NeurosegInputError, match="shape"):
        weighted_bce(logits, targets[:, :, :3], annotated, lam=0.5)


def test_lambda_schedule():
    values = [lambda_schedule(step, lam=2.0, t1=10, t2=20) for step in (0, 9, 10, 15, 20, 100)]
    assert values == [0.0, 0.0, 0.0, 1.0, 2.0, 2.0]
    assert lambda_schedule(5, lam=1.0, t1=5, t2=5) == 1.0
    with pytest.raises(NeurosegInputError):
        lambda_schedule(0, lam=1.0, t1=20, t2=10)
    with pytest.raises(NeurosegInputError):
        lambda_schedule(0, lam=-1.0, t1=0, t2=10)
