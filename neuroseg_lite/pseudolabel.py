"""Train a 2D network on the annotated slices and let it pseudo-label every other voxel.

Introduced in chapter 3 (``03_train_2d``); prediction of the pseudo-labels is chapter 4
(``04_pseudo_labels``). The networks, their config and checkpoints are in :mod:`neuroseg_lite.models2d`
and re-exported here, so users import everything from ``neuroseg_lite.pseudolabel``.

Two pseudo-labellers are available:

- ``"patch"``: the paper authors' 32x32 patch classifier (:class:`PatchCNN`), trained on class-balanced
  patches centred on annotated pixels only, then run as an exact dense map (one value per pixel).
- ``"unet2d"``: a small 2D U-Net trained on crops of the annotated slices, the loss masked to annotated
  pixels. Not in the paper; a common modern alternative.

Both see XY planes; ``context_planes`` stacks that many neighbouring z-planes on each side as extra
input channels (reflected at the ends of the stack).
"""
from __future__ import annotations

import math
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from neuroseg_lite._checks import NeurosegInputError, check_image_values, check_same_shape, check_volume
from neuroseg_lite.models2d import (
    PATCH_CENTRE,
    PATCH_SIZE,
    PRESETS_2D,
    PatchCNN,
    Train2DConfig,
    UNet2D,
    build_model_2d,
    load_2d,
    model_kind,
    reflect_positions,
    save_2d,
)
from neuroseg_lite.utils import seed_everything, select_device

__all__ = [
    "PatchCNN",
    "UNet2D",
    "Train2DConfig",
    "PRESETS_2D",
    "AnnotatedPixelSampler",
    "build_model_2d",
    "train_2d",
    "predict_2d",
    "correct_prior",
    "save_2d",
    "load_2d",
]


# ----------------------------------------------------------------------------- input checks

def _check_training_data(images, sparse) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    if isinstance(images, np.ndarray):
        images = [images]
    if hasattr(sparse, "annotated"):
        sparse = [sparse]
    images, sparse = list(images), list(sparse)
    if not images:
        raise NeurosegInputError("train_2d got no images; pass a list of (Z, Y, X) volumes.")
    if len(images) != len(sparse):
        raise NeurosegInputError(
            f"train_2d got {len(images)} image(s) but {len(sparse)} sparse label set(s); pass one "
            "SparseLabels (from neuroseg_lite.sparse.simulate_sparse) per image, in the same order.")
    volumes, labels, annotated = [], [], []
    for i, (image, labelled) in enumerate(zip(images, sparse)):
        name = f"images[{i}]"
        image = check_volume(image, name=name)
        if not np.issubdtype(image.dtype, np.floating):
            raise NeurosegInputError(
                f"{name} has dtype {image.dtype}; the 2D model expects a normalised float image. "
                "Normalise it first, e.g. neuroseg_lite.io.normalize_percentile(image).")
        check_image_values(image, name=name)
        if not (hasattr(labelled, "labels") and hasattr(labelled, "annotated")):
            raise NeurosegInputError(
                f"sparse[{i}] has no .labels/.annotated; pass SparseLabels from "
                "neuroseg_lite.sparse.simulate_sparse (or any object with those attributes).")
        axis = int(getattr(labelled, "axis", 0))
        if axis != 0:
            raise NeurosegInputError(
                f"sparse[{i}] was annotated along axis {axis}, but the 2D model learns from and predicts "
                "XY planes (axis 0). Annotate z-planes (simulate_sparse(..., axis=0)), or move the annotated "
                f"axis to the front of image and labels alike (np.moveaxis(a, {axis}, 0)) and move the "
                "prediction back afterwards.")
        label_volume = np.asarray(labelled.labels).astype(bool, copy=False)
        mask = np.asarray(labelled.annotated).astype(bool, copy=False)
        check_same_shape(image, label_volume, names=(name, f"sparse[{i}].labels"))
        check_same_shape(image, mask, names=(name, f"sparse[{i}].annotated"))
        volumes.append(np.asarray(image, dtype=np.float32))
        labels.append(label_volume)
        annotated.append(mask)
    if not any(mask.any() for mask in annotated):
        raise NeurosegInputError("no voxel is annotated in any volume (every .annotated mask is False); "
                                 "annotate at least one slice.")
    return volumes, labels, annotated


# ----------------------------------------------------------------------------- sampling

def _gather_patches(volume: np.ndarray, z, y, x, *, context: int, size: int) -> np.ndarray:
    """Cut (B, 1 + 2 * context, size, size) windows starting PATCH_CENTRE before each (y, x), reflected."""
    offsets = np.arange(size) - PATCH_CENTRE
    planes = reflect_positions(z[:, None] + np.arange(-context, context + 1), volume.shape[0])
    rows = reflect_positions(y[:, None] + offsets, volume.shape[1])
    cols = reflect_positions(x[:, None] + offsets, volume.shape[2])
    return volume[planes[:, :, None, None], rows[:, None, :, None], cols[:, None, None, :]]


def _dihedral(batch: np.ndarray, rng: np.random.Generator, *, allow_transpose: bool = True) -> np.ndarray:
    """Random flip + quarter turn per sample on the last two axes (square inputs for odd turns)."""
    out = batch.copy()
    flip = rng.random(len(out)) < 0.5
    out[flip] = out[flip][..., ::-1]
    turns = rng.integers(0, 4, len(out)) if allow_transpose else 2 * rng.integers(0, 2, len(out))
    for k in (1, 2, 3):
        chosen = turns == k
        if chosen.any():
            out[chosen] = np.rot90(out[chosen], k, axes=(-2, -1))
    return out


def _jitter(batch: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    if strength <= 0:
        return batch
    shape = (len(batch),) + (1,) * (batch.ndim - 1)
    gain = 1 + rng.uniform(-strength, strength, shape).astype(np.float32)
    offset = rng.uniform(-strength, strength, shape).astype(np.float32)
    return batch * gain + offset


class AnnotatedPixelSampler:
    """Draw patch centres among annotated voxels, foreground and background 50/50 when both exist.

    Parameters
    ----------
    labels, annotated : list of bool ndarray of shape (Z, Y, X)
    class_balance : bool
        False draws uniformly over all annotated voxels instead.
    """

    def __init__(self, labels: list[np.ndarray], annotated: list[np.ndarray], *, class_balance: bool = True):
        self.shapes = [mask.shape for mask in annotated]
        # Flat indices per class and volume; int64 because real stacks exceed 2**31 voxels.
        self.pools = {}
        for cls in (0, 1):
            per_volume = [np.flatnonzero(mask & (lab if cls else ~lab)) for lab, mask in zip(labels, annotated)]
            self.pools[cls] = (per_volume, np.cumsum([len(p) for p in per_volume]))
        self.counts = {cls: int(self.pools[cls][1][-1]) for cls in (0, 1)}
        if self.counts[0] + self.counts[1] == 0:
            raise NeurosegInputError("no voxel is annotated, so there is no patch centre to draw; "
                                     "annotate at least one slice.")
        self.class_balance = class_balance

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return ``(volume_index, zyx (n, 3), label (n,))`` for ``n`` centres."""
        if self.class_balance and self.counts[0] and self.counts[1]:
            classes = (np.arange(n) < n // 2 + rng.integers(0, 2) * (n % 2)).astype(np.int64)
            rng.shuffle(classes)
        else:
            total = self.counts[0] + self.counts[1]
            classes = (rng.random(n) < self.counts[1] / total).astype(np.int64)
        volume_index = np.empty(n, np.int64)
        zyx = np.empty((n, 3), np.int64)
        for cls in (0, 1):
            chosen = np.flatnonzero(classes == cls)
            if not len(chosen):
                continue
            per_volume, cumulative = self.pools[cls]
            draws = rng.integers(0, cumulative[-1], len(chosen))
            vols = np.searchsorted(cumulative, draws, side="right")
            starts = np.concatenate([[0], cumulative[:-1]])[vols]
            for v in np.unique(vols):
                here = vols == v
                flat = per_volume[v][draws[here] - starts[here]]
                zyx[chosen[here]] = np.stack(np.unravel_index(flat, self.shapes[v]), axis=1)
            volume_index[chosen] = vols
        return volume_index, zyx, classes


def _patch_batch(volumes, sampler, rng, config):
    vols, zyx, classes = sampler.sample(config.resolved_batch_size(), rng)
    # 33x33 windows keep pixel (16, 16) fixed under flips and quarter turns; crop to 32 afterwards.
    window = PATCH_SIZE + 1 if config.augment else PATCH_SIZE
    batch = np.empty((len(vols), config.in_channels, window, window), np.float32)
    for v in np.unique(vols):
        here = vols == v
        z, y, x = zyx[here].T
        batch[here] = _gather_patches(volumes[v], z, y, x, context=config.context_planes, size=window)
    if config.augment:
        batch = _dihedral(batch, rng)[..., :PATCH_SIZE, :PATCH_SIZE]
    batch = _jitter(batch, rng, config.intensity_jitter)
    return torch.from_numpy(np.ascontiguousarray(batch)), torch.from_numpy(classes)


def _crop_batch(volumes, labels, annotated, planes, rng, config, crop):
    n = config.resolved_batch_size()
    picks = planes[rng.integers(0, len(planes), n)]
    channels = np.arange(-config.context_planes, config.context_planes + 1)
    images = np.empty((n, config.in_channels, *crop), np.float32)
    targets = np.empty((n, 2, *crop), np.float32)  # channel 0: label, 1: annotated
    for i, (v, z) in enumerate(picks):
        y0 = rng.integers(0, volumes[v].shape[1] - crop[0] + 1)
        x0 = rng.integers(0, volumes[v].shape[2] - crop[1] + 1)
        window = (slice(y0, y0 + crop[0]), slice(x0, x0 + crop[1]))
        images[i] = volumes[v][(reflect_positions(z + channels, volumes[v].shape[0]), *window)]
        targets[i, 0] = labels[v][z][window]
        targets[i, 1] = annotated[v][z][window]
    if config.augment:
        both = _dihedral(np.concatenate([images, targets], axis=1), rng, allow_transpose=crop[0] == crop[1])
        images, targets = both[:, :config.in_channels], both[:, config.in_channels:]
    images = _jitter(images, rng, config.intensity_jitter)
    return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(np.ascontiguousarray(targets))


def _masked_bce(logits, targets, class_weights):
    label, mask = targets[:, :1], targets[:, 1:]
    weight = mask * torch.where(label > 0.5, class_weights[1], class_weights[0])
    loss = F.binary_cross_entropy_with_logits(logits.float(), label, reduction="none")
    return (loss * weight).sum() / weight.sum().clamp_min(1e-8)


# ----------------------------------------------------------------------------- training

def train_2d(images, sparse, *, config: Train2DConfig | None = None, device="auto", progress: bool = True,
             val=None) -> tuple[torch.nn.Module, dict]:
    """Train the 2D pseudo-labeller on the annotated voxels of one or more volumes.

    Parameters
    ----------
    images : list of float ndarray of shape (Z, Y, X)
        Normalised intensities (``neuroseg_lite.io.normalize_percentile``); volumes may differ in shape.
    sparse : list of SparseLabels
        One per image, annotated along axis 0 (z-planes): ``.labels`` and ``.annotated`` bool (Z, Y, X).
    config : Train2DConfig, optional
        Defaults to ``PRESETS_2D["cpu"]``.
    device : str or torch.device
        ``"auto"`` picks CUDA, MPS, then CPU (:func:`neuroseg_lite.utils.select_device`).
    progress : bool
        Show a tqdm bar with the running loss.
    val : tuple (image, labels) of (Z, Y, X) arrays, optional
        Densely labelled volume: Dice at 0.5 on up to ``config.val_planes`` z-planes every
        ``config.val_every`` steps and at the end.

    Returns
    -------
    model : PatchCNN or UNet2D
        In eval mode, on ``device``.
    history : dict of lists
        ``"step"``, ``"loss"`` (every step), ``"time_s"`` (seconds since the start, per step) and, with
        ``val``, ``"val_step"``, ``"val_dice"``.
    """
    config = (config or PRESETS_2D["cpu"]).validate()
    volumes, labels, annotated = _check_training_data(images, sparse)
    if val is not None:
        val_image = check_volume(val[0], name="val[0]")
        check_image_values(val_image, name="val[0]")
        val_labels = np.asarray(check_volume(val[1], name="val[1]")).astype(bool, copy=False)
        check_same_shape(val_image, val_labels, names=("val[0]", "val[1]"))
        val_planes = np.unique(np.linspace(0, val_image.shape[0] - 1, config.val_planes).round().astype(int))
    device = select_device(device)
    rng = seed_everything(config.seed)
    model = build_model_2d(config).to(device)

    n_foreground = sum(int((lab & mask).sum()) for lab, mask in zip(labels, annotated))
    n_annotated = sum(int(mask.sum()) for mask in annotated)
    if n_foreground in (0, n_annotated):
        warnings.warn(f"every annotated voxel is {'background' if n_foreground == 0 else 'foreground'}; the "
                      "2D model can only learn that one class. Annotate slices that contain both.", stacklevel=2)
    if config.model == "patch":
        sampler = AnnotatedPixelSampler(labels, annotated, class_balance=config.class_balance)
    else:
        planes = np.array([(v, z) for v, mask in enumerate(annotated) for z in np.flatnonzero(mask.any(axis=(1, 2)))])
        crop = (min(config.patch_size, *(v.shape[1] for v in volumes)),
                min(config.patch_size, *(v.shape[2] for v in volumes)))
        fraction = n_foreground / n_annotated
        if config.class_balance and 0 < fraction < 1:
            class_weights = torch.tensor([0.5 / (1 - fraction), 0.5 / fraction], device=device)
        else:
            class_weights = torch.ones(2, device=device)

    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    if config.lr_schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: 0.1 + 0.45 * (1 + math.cos(math.pi * min(s, config.steps) / config.steps)))
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    use_amp = config.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    history = {"step": [], "loss": [], "time_s": []}
    if val is not None:
        history.update(val_step=[], val_dice=[])
    start, running = time.perf_counter(), None
    bar = tqdm(range(1, config.steps + 1), desc=f"train 2D ({config.model})", disable=not progress)
    model.train()
    for step in bar:
        if config.model == "patch":
            inputs, targets = _patch_batch(volumes, sampler, rng, config)
        else:
            inputs, targets = _crop_batch(volumes, labels, annotated, planes, rng, config, crop)
        inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
            logits = model(inputs)
        if config.model == "patch":
            loss = F.cross_entropy(logits.float(), targets)
        else:
            loss = _masked_bce(logits, targets, class_weights)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()

        value = float(loss.detach())
        running = value if running is None else 0.95 * running + 0.05 * value
        history["step"].append(step)
        history["loss"].append(value)
        history["time_s"].append(time.perf_counter() - start)
        if step % 10 == 0 or step == config.steps:
            bar.set_postfix(loss=f"{running:.4f}")
        if val is not None and (step == config.steps or (config.val_every and step % config.val_every == 0)):
            probability = _predict_planes(model, val_image, val_planes, batch_size=8, device=device)
            history["val_step"].append(step)
            history["val_dice"].append(_dice(probability >= 0.5, val_labels[val_planes]))
            bar.set_postfix(loss=f"{running:.4f}", val_dice=f"{history['val_dice'][-1]:.3f}")
            model.train()
    bar.close()
    return model.eval(), history


def _dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    total = int(prediction.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * int((prediction & truth).sum()) / total


# ----------------------------------------------------------------------------- prediction

@torch.inference_mode()
def _predict_planes(model, image, planes, *, batch_size, device, progress=False) -> np.ndarray:
    """Foreground probability of the given z-planes, each with its reflected z-context."""
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
    model : PatchCNN or UNet2D
        From :func:`train_2d` or :func:`load_2d`; moved to ``device``. Its input channels decide the
        z-context (``1 + 2 * context_planes``), reflected at the first and last planes.
    image : ndarray of shape (Z, Y, X)
        Normalised the same way as the training images; never modified.
    batch_size : int
        z-planes per forward pass (the patch model also splits big planes into row bands).

    Returns
    -------
    ndarray of float32, shape (Z, Y, X)
        Softmax foreground probability (patch model) or sigmoid (U-Net).
    """
    model_kind(model)
    image = check_volume(image, name="image")
    check_image_values(image, name="image")
    if batch_size < 1:
        raise NeurosegInputError(f"batch_size must be >= 1, got {batch_size}.")
    device = select_device(device)
    model.to(device)
    return _predict_planes(model, image, np.arange(image.shape[0]), batch_size=batch_size, device=device,
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
