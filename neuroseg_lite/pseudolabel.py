"""Let the 2D network trained on a few annotated slices pseudo-label every other voxel of a stack.

Introduced in chapter 4 (``04_pseudo_labels``). The networks and their config are in
:mod:`neuroseg_lite.models2d`; they are trained by :func:`neuroseg_lite.train.train_2d` (chapter 3).

Two pseudo-labellers are available:

- ``"patch"``: the paper authors' 32x32 patch classifier (:class:`~neuroseg_lite.models2d.PatchCNN`), trained on
  class-balanced patches centred on annotated pixels only, then run as an exact dense map (one value per pixel).
- ``"unet2d"``: a small 2D U-Net trained on crops of the annotated slices, the loss masked to annotated
  pixels. Not in the paper; a common modern alternative.

Both see XY planes; ``context_planes`` stacks that many neighbouring z-planes on each side as extra
input channels (reflected at the ends of the stack).
"""
from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from neuroseg_lite._checks import NeurosegInputError, check_image_values, check_volume
from neuroseg_lite.checkpoint import TrainedModel
from neuroseg_lite.models2d import model_kind, reflect_positions
from neuroseg_lite.utils import select_device

__all__ = ["predict_2d", "predict_planes", "correct_prior"]


# ----------------------------------------------------------------------------- prediction

@torch.inference_mode()
def predict_planes(model, image, planes, *, batch_size, device, progress=False) -> np.ndarray:
    """Foreground probability of the given z-planes of a normalised image, each with its reflected z-context.

    ``model`` is a bare 2D network (PatchCNN or UNet2D); returns float32 of shape (len(planes), Y, X).
    """
    kind = model_kind(model)
    context = (model.in_channels - 1) // 2
    was_training = model.training
    model.eval()
    depth, height, width = image.shape
    if kind == "unet2d":
        # The U-Net holds every level's activations at once; keep about 4 Mpx per pass.
        batch_size = max(1, min(batch_size, (1 << 22) // (height * width)))
    use_amp = device.type == "cuda"
    out = np.empty((len(planes), height, width), np.float32)
    offsets = np.arange(-context, context + 1)
    starts = range(0, len(planes), batch_size)
    for start in tqdm(starts, desc="predict 2D", disable=not progress):
        chunk = planes[start:start + batch_size]
        index = reflect_positions(chunk[:, None] + offsets, depth)
        batch = torch.from_numpy(np.asarray(image[index.ravel()], dtype=np.float32).reshape(
            len(chunk), len(offsets), height, width)).to(device)
        with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
            logits = model.dense_logits(batch) if kind == "patch" else model(batch)
        logits = logits.float()
        probability = torch.softmax(logits, dim=1)[:, 1] if kind == "patch" else torch.sigmoid(logits[:, 0])
        out[start:start + len(chunk)] = probability.cpu().numpy()
    model.train(was_training)
    return out


def predict_2d(model, image, *, batch_size: int = 8, device="auto", progress: bool = False) -> np.ndarray:
    """Foreground probability of every voxel, predicted z-plane by z-plane.

    Parameters
    ----------
    model : TrainedModel or torch.nn.Module
        A 2D model from :func:`neuroseg_lite.train.train_2d` or :func:`neuroseg_lite.checkpoint.load_model`:
        the raw image is normalised by the model's own stored intensity normalisation. A bare PatchCNN/UNet2D
        needs an image normalised as its training images were. Moved to ``device``. Its input channels decide
        the z-context (``1 + 2 * context_planes``), reflected at the first and last planes.
    image : ndarray of shape (Z, Y, X)
        Never modified.
    batch_size : int
        z-planes per forward pass (the patch model also splits big planes into row bands).

    Returns
    -------
    ndarray of float32, shape (Z, Y, X)
        Softmax foreground probability (patch model) or sigmoid (U-Net).
    """
    if isinstance(model, TrainedModel):
        if model.kind != "model2d":
            raise NeurosegInputError(f"predict_2d needs a 2D model, got a {model.kind!r} model; use "
                                     "neuroseg_lite.infer.predict_volume for a 3D U-Net.")
        image, network = model.preprocess(image), model.network
    else:
        network = model
        image = check_volume(image, name="image")
        if not np.issubdtype(image.dtype, np.floating):
            raise NeurosegInputError(
                f"image has dtype {image.dtype} (raw detector counts?) and a bare network carries no intensity "
                "normalisation; pass the TrainedModel (train_2d / checkpoint.load_model), which normalises raw "
                "stacks itself, or normalise the image first (neuroseg_lite.io.normalize_percentile).")
    model_kind(network)
    check_image_values(image, name="image")
    if batch_size < 1:
        raise NeurosegInputError(f"batch_size must be >= 1, got {batch_size}.")
    device = select_device(device)
    network.to(device)
    return predict_planes(network, image, np.arange(image.shape[0]), batch_size=batch_size, device=device,
                          progress=progress)


def correct_prior(probability, *, prior: float, training_prior: float = 0.5) -> np.ndarray:
    """Re-weight class probabilities learned under one foreground prior for data with another (Bayes' rule).

    A class-balanced 2D model (``Train2DConfig.class_balance``) learned ``p(foreground | patch)`` in a world
    where half of the pixels are foreground, so at threshold 0.5 it over-predicts foreground in a volume where
    far fewer are. Multiplying the odds by ``prior / (1 - prior)`` over ``training_prior / (1 - training_prior)``
    gives the probability under the true prior (Saerens et al., Neural Computation 14, 2002). Used by the
    pseudo-label quality ablation of chapter 7 (``07_sparsity_sweep``).

    Parameters
    ----------
    probability : ndarray of any shape, values in [0, 1]
        Foreground probabilities, e.g. from :func:`predict_2d`; not modified.
    prior : float in (0, 1)
        Foreground share of the data the probabilities are for, e.g. that of the annotated voxels.
    training_prior : float in (0, 1)
        Foreground share the model was trained under (0.5 for class-balanced training).

    Returns
    -------
    ndarray of float32, same shape
    """
    for name, value in (("prior", prior), ("training_prior", training_prior)):
        if not 0 < value < 1:
            raise NeurosegInputError(f"{name} must be strictly between 0 and 1, got {value}; a prior of 0 or 1 "
                                     "would turn every probability into that class.")
    p = np.clip(np.asarray(probability, dtype=np.float64), 0.0, 1.0)
    odds_ratio = (prior / (1 - prior)) / (training_prior / (1 - training_prior))
    return (p * odds_ratio / (p * odds_ratio + (1 - p))).astype(np.float32)
