r"""Targets, weight maps and the weighted binary cross-entropy used to train the 3D U-Net.

Introduced in chapter 4 (``04_pseudo_labels``: targets and weights) and used in chapter 5 (``05_train_3d``).

Every voxel of a training volume falls in one of three sets:

* **annotated** (:math:`A`): its label was drawn by hand (one of the annotated 2D slices); weight 1;
* **pseudo-labelled** (:math:`P`): not annotated, its target comes from the 2D network's prediction; weight
  :math:`\lambda`;
* **excluded**: not annotated and no usable pseudo-label (e.g. too uncertain); weight 0.

With :math:`\lambda = 0` the loss is exactly Cicek et al.'s sparse training (unlabelled voxels excluded), the
paper's "3D without pseudo-labels" baseline.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from neuroseg_lite._checks import NeurosegInputError, check_mask, check_same_shape, check_volume

__all__ = ["pseudo_targets", "weight_map", "weighted_bce", "lambda_schedule", "LOSS_NORMALIZATIONS"]

LOSS_NORMALIZATIONS = ("paper", "global")


def _check_lam(lam) -> float:
    try:
        value = float(lam)
    except (TypeError, ValueError) as err:
        raise NeurosegInputError(f"lam must be a number >= 0, got {lam!r}.") from err
    if not math.isfinite(value) or value < 0:
        raise NeurosegInputError(
            f"lam (the weight of pseudo-labelled voxels) must be finite and >= 0, got {lam!r}. "
            "Use lam=0 for sparse training without pseudo-labels.")
    return value


def pseudo_targets(labels, annotated, pseudo_prob, *, mode: str = "hard", confidence: float | None = None):
    """Combine manual labels and 2D-network probabilities into one dense target volume.

    Parameters
    ----------
    labels : ndarray of shape (Z, Y, X), bool or 0/1
        Manual labels; only read where ``annotated`` is True.
    annotated : ndarray of shape (Z, Y, X), bool
        True on manually annotated voxels.
    pseudo_prob : ndarray of shape (Z, Y, X), float in [0, 1]
        Foreground probability from the 2D pseudo-labeller (e.g. ``predict_2d``).
    mode : {"hard", "soft"}
        ``"hard"``: target 1 where ``pseudo_prob > 0.5`` else 0 (Lee 2013 takes the argmax; a tie goes to
        background). ``"soft"``: the probability itself is the target.
    confidence : float in [0.5, 1], optional
        If given, unannotated voxels whose prediction is uncertain, ``max(p, 1 - p) < confidence``, get no
        pseudo-label (they are excluded from the loss). ``None`` keeps every unannotated voxel.

    Returns
    -------
    targets : ndarray of shape (Z, Y, X), float32
        Manual label on annotated voxels, pseudo-label on pseudo-labelled voxels, 0 on excluded voxels
        (their weight is 0, so the value does not matter).
    pseudo_mask : ndarray of shape (Z, Y, X), bool
        True on the unannotated voxels that carry a pseudo-label.
    """
    labels = check_mask(labels, name="labels")
    annotated = check_mask(annotated, name="annotated")
    prob = check_volume(pseudo_prob, name="pseudo_prob")
    check_same_shape(labels, annotated, names=("labels", "annotated"))
    check_same_shape(labels, prob, names=("labels", "pseudo_prob"))
    if mode not in ("hard", "soft"):
        raise NeurosegInputError(f"mode must be 'hard' or 'soft', got {mode!r}.")
    prob = prob.astype(np.float32, copy=False)
    if not np.isfinite(prob).all() or prob.min() < 0 or prob.max() > 1:
        raise NeurosegInputError(
            "pseudo_prob must hold probabilities in [0, 1] without NaN; got values in "
            f"[{np.nanmin(prob)}, {np.nanmax(prob)}]. Pass sigmoid/softmax outputs, not logits.")

    pseudo_mask = ~annotated
    if confidence is not None:
        confidence = float(confidence)
        if not 0.5 <= confidence <= 1.0:
            raise NeurosegInputError(
                f"confidence must be in [0.5, 1] (0.5 keeps every voxel), got {confidence}.")
        pseudo_mask = pseudo_mask & (np.maximum(prob, 1.0 - prob) >= confidence)

    pseudo_values = (prob > 0.5).astype(np.float32) if mode == "hard" else prob
    targets = np.where(annotated, labels.astype(np.float32), np.where(pseudo_mask, pseudo_values, 0.0))
    return targets.astype(np.float32, copy=False), pseudo_mask


def weight_map(annotated, *, lam: float, pseudo_mask=None) -> np.ndarray:
    """Voxel weights of the "global" loss: 1 on annotated voxels, ``lam`` on pseudo-labelled ones, 0 elsewhere.

    Parameters
    ----------
    annotated : ndarray of shape (Z, Y, X), bool
    lam : float >= 0
    pseudo_mask : ndarray of shape (Z, Y, X), bool, optional
        Voxels carrying a pseudo-label. ``None`` means every unannotated voxel does. Annotated voxels always
        get weight 1, even where ``pseudo_mask`` is True.

    Returns
    -------
    ndarray of shape (Z, Y, X), float32
    """
    lam = _check_lam(lam)
    annotated = check_mask(annotated, name="annotated")
    if pseudo_mask is None:
        pseudo = ~annotated
    else:
        pseudo = check_mask(pseudo_mask, name="pseudo_mask")
        check_same_shape(annotated, pseudo, names=("annotated", "pseudo_mask"))
        pseudo = pseudo & ~annotated
    weights = np.zeros(annotated.shape, dtype=np.float32)
    weights[pseudo] = lam
    weights[annotated] = 1.0
    return weights


def weighted_bce(logits: torch.Tensor, targets: torch.Tensor, annotated: torch.Tensor, *, lam: float,
                 pseudo_mask: torch.Tensor | None = None, loss_normalization: str = "paper") -> torch.Tensor:
    r"""Binary cross-entropy with weight 1 on annotated voxels and ``lam`` on pseudo-labelled voxels.

    With :math:`\ell_v` the binary cross-entropy of voxel :math:`v` (from its logit and target), :math:`A` the
    annotated voxels and :math:`P` the pseudo-labelled ones (unannotated voxels of ``pseudo_mask``) of the batch:

    ``loss_normalization="paper"`` is Eq. 1 of Castelli et al. (2020), each term a mean over its own voxels:

    .. math:: L = \frac{1}{|A|}\sum_{v \in A} \ell_v + \lambda \frac{1}{|P|}\sum_{v \in P} \ell_v

    (a term is 0 when its set is empty in the batch).

    ``loss_normalization="global"`` is one weighted mean over a weight map :math:`w` (1 on A, :math:`\lambda` on P):

    .. math:: L = \frac{\sum_v w_v \ell_v}{\sum_v w_v}
              = \frac{|A|\,\bar\ell_A + \lambda |P|\,\bar\ell_P}{|A| + \lambda |P|}

    The two differ in what :math:`\lambda` means. In Eq. 1 :math:`\lambda` is the ratio of the two sets'
    contributions whatever their sizes. In the global form each *voxel* gets the weight, so the larger set wins:
    with one annotated slice in 64 (the book's stacks), pseudo-labelled voxels outnumber annotated ones 63 to 1
    and carry :math:`63\lambda/(1+63\lambda)` of the loss, 93-98 % for any :math:`\lambda` from 0.2 to 1, so changing
    :math:`\lambda` in that range barely changes training. With :math:`\lambda = 0` both forms equal the sparse
    loss (mean over annotated voxels), exactly.

    Parameters
    ----------
    logits : Tensor of shape (N, 1, Z, Y, X) (any shape works)
        Raw network outputs (before the sigmoid); computed in float32 even under autocast.
    targets : Tensor, same shape, float in [0, 1]
    annotated : Tensor, same shape, bool
    lam : float >= 0
        Weight of the pseudo-labelled voxels.
    pseudo_mask : Tensor, same shape, bool, optional
        Voxels that carry a pseudo-label; ``None`` means every unannotated voxel.
    loss_normalization : {"paper", "global"}

    Returns
    -------
    Tensor
        Scalar loss, differentiable with respect to ``logits``.
    """
    lam = _check_lam(lam)
    if loss_normalization not in LOSS_NORMALIZATIONS:
        raise NeurosegInputError(f"loss_normalization must be one of {LOSS_NORMALIZATIONS}, got "
                                 f"{loss_normalization!r}.")
    for name, tensor in (("targets", targets), ("annotated", annotated), ("pseudo_mask", pseudo_mask)):
        if tensor is not None and tuple(tensor.shape) != tuple(logits.shape):
            raise NeurosegInputError(
                f"{name} has shape {tuple(tensor.shape)} but logits have shape {tuple(logits.shape)}; "
                "they must match voxel for voxel.")
    annotated = annotated.bool()
    pseudo = ~annotated if pseudo_mask is None else pseudo_mask.bool() & ~annotated
    if lam == 0.0:
        # Weight 0 voxels are dropped rather than multiplied by 0 so that lam=0 is *exactly* the sparse loss.
        pseudo = torch.zeros_like(annotated)
    logits = logits.float()
    targets = targets.float()
    # Keeps the result attached to the graph (zero gradient) when a batch has no voxel in the loss.
    zero = logits.sum() * 0.0

    if loss_normalization == "paper":
        loss = zero
        if bool(annotated.any()):
            loss = F.binary_cross_entropy_with_logits(logits[annotated], targets[annotated])
        if bool(pseudo.any()):
            loss = loss + lam * F.binary_cross_entropy_with_logits(logits[pseudo], targets[pseudo])
        return loss

    selected = annotated | pseudo
    if not bool(selected.any()):
        return zero
    weights = torch.where(annotated[selected], 1.0, lam)
    per_voxel = F.binary_cross_entropy_with_logits(logits[selected], targets[selected], reduction="none")
    return (per_voxel * weights).sum() / weights.sum()


def lambda_schedule(step: int, *, lam: float, t1: int, t2: int) -> float:
    """Lee's (2013) linear ramp-up of the pseudo-label weight.

    Returns 0 before step ``t1``, ``lam`` from step ``t2`` on, and a linear ramp in between. Lee used
    ``t1 = 100`` and ``t2 = 600`` epochs with a final weight of 3 on MNIST; here steps are optimiser steps.

    Parameters
    ----------
    step : int
    lam : float >= 0
        Final weight.
    t1, t2 : int, 0 <= t1 <= t2
    """
    lam = _check_lam(lam)
    if not 0 <= t1 <= t2:
        raise NeurosegInputError(f"lambda ramp-up needs 0 <= t1 <= t2, got t1={t1}, t2={t2}.")
    if step < t1:
        return 0.0
    if step >= t2:
        return lam
    return lam * (step - t1) / (t2 - t1)
