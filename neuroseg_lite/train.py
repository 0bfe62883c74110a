"""Training both networks: the 2D pseudo-labeller on annotated pixels, the 3D U-Net on sparse labels + pseudo-labels.

The 2D network is introduced in chapter 3 (``03_train_2d``), the 3D U-Net in chapter 5 (``05_train_3d``).
:func:`train_2d` and :func:`train_3d` take the same arguments: raw image stacks, one sparse annotation object
per stack (:class:`neuroseg_lite.sparse.SparseLabels`), a config and an intensity normalisation, which they
apply themselves. Both return a :class:`neuroseg_lite.checkpoint.TrainedModel` whose history has the same keys
and units, follow the same learning-rate schedule (:func:`learning_rate`) and score validation with
:func:`neuroseg_lite.metrics.dice`.

The 3D loop samples random patches (optionally centred near annotated foreground; :mod:`neuroseg_lite.patches`),
augments them, and minimises :func:`neuroseg_lite.losses.weighted_bce` (weight 1 on annotated voxels, lambda on
pseudo-labelled ones) with Adam. Two details are there because sparse training is unstable: in a quick probe
the Dice of a sparsely trained 3D model swung by up to 0.15 from one checkpoint to the next. The learning rate
therefore warms up linearly and then follows a cosine decay, and the returned model is the uniform average of
the weights seen during the last ``average_fraction`` of the steps (as in stochastic weight averaging, Izmailov
et al. 2018), with the batch-norm statistics re-estimated for the averaged weights. Either can be switched off
in :class:`~neuroseg_lite.trainconfig.TrainConfig`.
"""
from __future__ import annotations

import math
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from neuroseg_lite._checks import NeurosegInputError, check_mask, check_same_shape, check_volume
from neuroseg_lite.checkpoint import TrainedModel
from neuroseg_lite.infer import predict_volume
from neuroseg_lite.intensity import IntensityNormalization
from neuroseg_lite.losses import pseudo_targets
from neuroseg_lite.metrics import dice
from neuroseg_lite.models2d import PRESETS_2D, Train2DConfig, build_model_2d
from neuroseg_lite.patches import AnnotatedPixelSampler, PatchSampler, crop_batch_2d, patch_batch_2d
from neuroseg_lite.pseudolabel import predict_planes
from neuroseg_lite.resume import TrainingState, run_parts
from neuroseg_lite.trainconfig import PRESETS_3D, TrainConfig, make_train_config
from neuroseg_lite.trainer3d import Trainer3D
from neuroseg_lite.unet3d import UNet3D, UNet3DConfig, required_divisor
from neuroseg_lite.utils import seed_everything, select_device, torch_threads, warn_gpu_preset_on_cpu

__all__ = [
    "TrainConfig",
    "PRESETS_3D",
    "make_train_config",
    "Train2DConfig",
    "PRESETS_2D",
    "learning_rate",
    "training_targets",
    "train_2d",
    "train_3d",
]


def learning_rate(step: int, config) -> float:
    """Learning rate at ``step`` (0-based): linear warm-up, then cosine decay to ``lr * min_lr_fraction``.

    The one schedule of both networks; ``config`` is a TrainConfig or a Train2DConfig (``lr``, ``steps``,
    ``warmup_fraction``, ``min_lr_fraction``).

    Examples
    --------
    >>> config = TrainConfig(steps=101, lr=1e-3, warmup_fraction=0.0, min_lr_fraction=0.1)
    >>> learning_rate(0, config), round(learning_rate(100, config), 6)
    (0.001, 0.0001)
    """
    warmup = round(config.warmup_fraction * config.steps)
    if step < warmup:
        return config.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, config.steps - 1 - warmup)
    low = config.lr * config.min_lr_fraction
    return low + (config.lr - low) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


# --------------------------------------------------------------------------------------------- inputs


def _as_list(values, *, single) -> list:
    return [values] if isinstance(values, single) else list(values)


def _annotation_list(annotations) -> list:
    """One SparseLabels-like object (it has ``.annotated``) or a sequence of them, as a list."""
    return [annotations] if hasattr(annotations, "annotated") else list(annotations)


def _checked_inputs(images, annotations, intensity: IntensityNormalization, *, who: str):
    """Normalised images and the bool labels/annotated masks of each stack, checked against each other."""
    images = _as_list(images, single=np.ndarray)
    annotations = _annotation_list(annotations)
    if not images or len(images) != len(annotations):
        raise NeurosegInputError(
            f"{who} got {len(images)} image(s) and {len(annotations)} annotation(s); pass one SparseLabels "
            "(neuroseg_lite.sparse.simulate_sparse or from_planes) per image, in the same order.")
    volumes, labels, annotated = [], [], []
    for i, (image, annotation) in enumerate(zip(images, annotations)):
        if not (hasattr(annotation, "labels") and hasattr(annotation, "annotated")):
            raise NeurosegInputError(
                f"annotations[{i}] has no .labels/.annotated; pass SparseLabels from neuroseg_lite.sparse "
                "(simulate_sparse, or from_planes for your own annotated planes).")
        volume = intensity.apply(image, name=f"images[{i}]")
        label, mask = (check_mask(annotation.labels, name=f"annotations[{i}].labels"),
                       check_mask(annotation.annotated, name=f"annotations[{i}].annotated"))
        check_same_shape(volume, label, names=(f"images[{i}]", f"annotations[{i}].labels"))
        check_same_shape(volume, mask, names=(f"images[{i}]", f"annotations[{i}].annotated"))
        volumes.append(volume)
        labels.append(label)
        annotated.append(mask)
    if not any(mask.any() for mask in annotated):
        raise NeurosegInputError("no voxel is annotated in any volume (every .annotated mask is False); "
                                 "annotate at least one plane.")
    return volumes, labels, annotated


def _checked_val(val, intensity: IntensityNormalization):
    if val is None:
        return None
    image, truth = val
    image = intensity.apply(image, name="val image")
    truth = check_mask(truth, name="val labels")
    check_same_shape(image, truth, names=("val image", "val labels"))
    return image, truth


def training_targets(labels, annotated, pseudo, config: TrainConfig):
    """The 3D U-Net's target and pseudo-label mask for one volume (chapter 5).

    Parameters
    ----------
    labels, annotated : bool ndarray of shape (Z, Y, X)
        Manual labels (read where ``annotated``) and the annotated voxels.
    pseudo : float ndarray of shape (Z, Y, X), optional
        2D pseudo-label probabilities; None for sparse (or dense) training.
    config : TrainConfig
        Its ``pseudo_mode``, ``confidence`` and ``lam`` are used.

    Returns
    -------
    target : float32 ndarray of shape (Z, Y, X)
        Manual label on annotated voxels, pseudo-label (hard or soft) on pseudo-labelled ones, 0 elsewhere.
    pseudo_mask : bool ndarray of shape (Z, Y, X) or None
        Voxels whose loss is weighted by lambda; None without pseudo-labels or with ``lam == 0``.
    """
    labels, annotated = check_mask(labels, name="labels"), check_mask(annotated, name="annotated")
    if pseudo is None:
        return (labels & annotated).astype(np.float32), None
    target, pseudo_mask = pseudo_targets(labels, annotated, pseudo, mode=config.pseudo_mode,
                                         confidence=config.confidence)
    # lambda 0 is sparse training: patches without annotation would carry no loss
    return target, (None if config.lam == 0 else pseudo_mask)


# --------------------------------------------------------------------------------------------- the loop


def _fit(step, *, config, desc: str, progress: bool, validate=None, extras=(), state=None, callback=None) -> dict:
    """Run ``step(i, lr) -> (loss tensor, extras dict)`` for every step; return the history.

    Losses are averaged over ``config.log_every`` steps (one device sync per interval); ``validate(history)``
    runs every ``config.val_every`` steps before the last (the last one is the caller's, after any averaging).
    ``state`` (a :class:`~neuroseg_lite.resume.TrainingState`) restores a saved run before the first step and
    saves one after the steps it says; ``callback(done)`` runs after each step (and its saving).
    """
    from tqdm.auto import tqdm

    history = {key: [] for key in ("step", "loss", "lr", *extras, "seconds")}
    if validate is not None:
        history.update(val_step=[], val_dice=[], val_seconds=[])
    start, elapsed, losses = 0, 0.0, []
    saved = None if state is None else state.load()
    if saved is not None:
        start, history, elapsed, losses = saved["step"], saved["history"], saved["elapsed"], saved["losses"]
    with tqdm(total=config.steps, initial=start, disable=not progress, desc=desc, unit="step") as bar:
        for i in range(start, config.steps):
            started = time.perf_counter()
            lr = learning_rate(i, config)
            loss, values = step(i, lr)
            losses.append(loss)
            done = i + 1
            logging = done % config.log_every == 0 or done == config.steps
            if logging:
                mean_loss = float(torch.stack(losses).mean())
                losses.clear()
            elapsed += time.perf_counter() - started
            if logging:
                for key, value in (("step", done), ("loss", mean_loss), ("lr", lr), *values.items()):
                    history[key].append(value)
                history["seconds"].append(round(elapsed, 3))
                bar.set_postfix(loss=f"{mean_loss:.4f}", refresh=False)
            bar.update(1)
            if validate is not None and config.val_every and done % config.val_every == 0 and done < config.steps:
                validate(history, done, elapsed)
            if state is not None and state.due(done):
                state.save(done, history=history, elapsed=elapsed, losses=losses)
            if callback is not None:
                callback(done)
    return history


def _record_validation(history: dict, step: int, elapsed: float, score: float) -> None:
    history["val_step"].append(step)
    history["val_dice"].append(score)
    history["val_seconds"].append(round(elapsed, 3))


# --------------------------------------------------------------------------------------------- 2D


def _masked_bce(logits, targets, class_weights):
    label, mask = targets[:, :1], targets[:, 1:]
    weight = mask * torch.where(label > 0.5, class_weights[1], class_weights[0])
    loss = F.binary_cross_entropy_with_logits(logits.float(), label, reduction="none")
    return (loss * weight).sum() / weight.sum().clamp_min(1e-8)


def train_2d(images, annotations, *, config: Train2DConfig | None = None,
             intensity_normalization: IntensityNormalization | None = None, spacing=None, val=None,
             device="auto", progress: bool = True, resume=None, save_every_steps: int | None = None,
             save_every_seconds: float | None = None, callback=None) -> TrainedModel:
    """Train the 2D pseudo-labeller on the annotated voxels of one or more stacks.

    Parameters
    ----------
    images : ndarray of shape (Z, Y, X), or a list of them
        Raw intensities; volumes may differ in shape. Normalised here by ``intensity_normalization``.
    annotations : SparseLabels or list of SparseLabels
        One per image, annotated along axis 0 (z-planes).
    config : Train2DConfig, optional
        Default ``PRESETS_2D["cpu"]``.
    intensity_normalization : IntensityNormalization, optional
        Default: percentiles 1 and 99.8 mapped to 0 and 1.
    spacing : tuple of 3 float, optional
        Voxel size (z, y, x) in micrometres, stored with the model.
    val : tuple (raw image, labels) of (Z, Y, X) arrays, optional
        A densely labelled volume: Dice (:func:`neuroseg_lite.metrics.dice`) on up to ``config.val_planes``
        z-planes every ``config.val_every`` steps and at the end.
    device : {"auto", "cpu", "cuda", "mps"} or torch.device
    progress : bool
        Show a tqdm bar with the running loss.
    resume : str or Path, optional
        A state file (:mod:`neuroseg_lite.resume`): absent, training starts and saves its state there; present
        (an interrupted run of the same call), training continues from it and ends with the same weights as an
        uninterrupted run. Removed when training finishes. A state of another run is refused.
    save_every_steps, save_every_seconds : int, float, optional
        When to save the state (with ``resume``); both None: every 60 seconds.
    callback : callable, optional
        ``callback(step)`` after each completed step (after its state is saved), e.g. to stop a test run there.

    Returns
    -------
    TrainedModel
        ``kind="model2d"``, network in eval mode on ``device``.
    """
    config = (config or PRESETS_2D["cpu"]).validate()
    intensity = intensity_normalization or IntensityNormalization()
    annotations = _annotation_list(annotations)
    for i, annotation in enumerate(annotations):
        if int(getattr(annotation, "axis", 0)) != 0:
            raise NeurosegInputError(
                f"annotations[{i}] was annotated along axis {annotation.axis}, but the 2D model learns from and "
                "predicts XY planes (axis 0). Annotate z-planes, or move the annotated axis to the front of image "
                f"and labels alike (np.moveaxis(a, {annotation.axis}, 0)) and the prediction back afterwards.")
    volumes, labels, annotated = _checked_inputs(images, annotations, intensity, who="train_2d")
    val = _checked_val(val, intensity)
    device = select_device(device)
    warn_gpu_preset_on_cpu(config, device, gpu_preset=PRESETS_2D["gpu"])
    rng = seed_everything(config.seed)
    network = build_model_2d(config).to(device)

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
        balanced = config.class_balance and 0 < fraction < 1
        class_weights = torch.tensor([0.5 / (1 - fraction), 0.5 / fraction] if balanced else [1.0, 1.0],
                                     device=device)
    optimizer = torch.optim.Adam(network.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    use_amp = config.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    def step(_, lr):
        for group in optimizer.param_groups:
            group["lr"] = lr
        if config.model == "patch":
            inputs, targets = patch_batch_2d(volumes, sampler, rng, config)
        else:
            inputs, targets = crop_batch_2d(volumes, labels, annotated, planes, rng, config, crop)
        inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
            logits = network(inputs)
        if config.model == "patch":
            loss = F.cross_entropy(logits.float(), targets)
        else:
            loss = _masked_bce(logits, targets, class_weights)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return loss.detach(), {}

    def validate(history, done, elapsed):
        image, truth = val
        planes_val = np.unique(np.linspace(0, image.shape[0] - 1, config.val_planes).round().astype(int))
        probability = predict_planes(network, image, planes_val, batch_size=8, device=device)
        _record_validation(history, done, elapsed, dice(probability, truth[planes_val]))
        network.train()

    state = None
    if resume is not None:
        parts = run_parts("train_2d", configs={"train": config, "intensity": intensity.to_dict()},
                          arrays=[*volumes, *labels, *annotated, *(val or ())], seed=config.seed, device=device)
        objects = {"model": network, "optimizer": optimizer, **({"scaler": scaler} if use_amp else {})}
        state = TrainingState(resume, parts=parts, objects=objects, generators={"rng": rng},
                              every_steps=save_every_steps, every_seconds=save_every_seconds, device=device)
    network.train()
    history = _fit(step, config=config, desc=f"train 2D ({config.model})", progress=progress,
                   validate=None if val is None else validate, state=state, callback=callback)
    if val is not None:
        validate(history, config.steps, history["seconds"][-1])
    if state is not None:
        state.finish()
    return TrainedModel(network=network.eval(), kind="model2d", model_config=config.model_config,
                        train_config=config, intensity_normalization=intensity, spacing=spacing, history=history)


# --------------------------------------------------------------------------------------------- 3D


def _build_trainer(images, annotations, *, pseudo, config: TrainConfig, model_config: UNet3DConfig,
                   intensity: IntensityNormalization, device: torch.device) -> Trainer3D:
    """Check inputs, seed, build the sampler and model; shared by :func:`train_3d` and the benchmark."""
    if model_config.in_channels != 1:
        raise NeurosegInputError(
            f"train_3d trains on single-channel (Z, Y, X) volumes, but model_config.in_channels is "
            f"{model_config.in_channels}; use UNet3DConfig(in_channels=1).")
    divisor = required_divisor(model_config)
    if any(p % d for p, d in zip(config.patch_size, divisor)):
        fixed = tuple(max(d, p // d * d) for p, d in zip(config.patch_size, divisor))
        raise NeurosegInputError(
            f"patch_size {config.patch_size} is not a multiple of the model's required divisor {divisor}; use e.g. "
            f"patch_size={fixed}.")
    volumes, labels, annotated = _checked_inputs(images, annotations, intensity, who="train_3d")
    if pseudo is not None:
        pseudo = _as_list(pseudo, single=np.ndarray)
        if len(pseudo) != len(volumes):
            raise NeurosegInputError(f"train_3d got {len(pseudo)} pseudo-label volume(s) for {len(volumes)} "
                                     "image(s); pass one per image (or pseudo=None).")
        for i, (volume, probability) in enumerate(zip(volumes, pseudo)):
            check_same_shape(volume, check_volume(probability, name=f"pseudo[{i}]"),
                             names=(f"images[{i}]", f"pseudo[{i}]"))
    targets, pseudo_masks = zip(*(training_targets(lab, ann, None if pseudo is None else pseudo[i], config)
                                  for i, (lab, ann) in enumerate(zip(labels, annotated))))
    rng = seed_everything(config.seed)
    sampler = PatchSampler(volumes, list(targets), annotated, pseudo_masks=list(pseudo_masks),
                           patch_size=config.patch_size, foreground_fraction=config.foreground_fraction,
                           augment=config.augment, rng=rng)
    return Trainer3D(sampler, UNet3D(model_config), config, device)


def train_3d(images, annotations, *, pseudo=None, config: TrainConfig | None = None,
             model_config: UNet3DConfig | None = None, intensity_normalization: IntensityNormalization | None = None,
             spacing=None, val=None, device="auto", progress: bool = True, resume=None,
             save_every_steps: int | None = None, save_every_seconds: float | None = None,
             callback=None) -> TrainedModel:
    """Train a 3D U-Net on sparse manual labels, optionally with pseudo-labels.

    Parameters
    ----------
    images : ndarray of shape (Z, Y, X), or a list of them
        Raw intensities, normalised here by ``intensity_normalization``.
    annotations : SparseLabels or list of SparseLabels
        One per image (:mod:`neuroseg_lite.sparse`); every plane annotated gives dense training, the upper
        bound.
    pseudo : list of ndarray of shape (Z, Y, X), float in [0, 1], optional
        Pseudo-label probabilities from the 2D network. None trains sparsely (Cicek's lambda = 0 baseline).
    config : TrainConfig, optional
        Default ``PRESETS_3D["cpu"]``.
    model_config : UNet3DConfig, optional
        Default ``UNet3DConfig()``.
    intensity_normalization : IntensityNormalization, optional
        Default: percentiles 1 and 99.8 mapped to 0 and 1.
    spacing : tuple of 3 float, optional
        Voxel size (z, y, x) in micrometres, stored with the model.
    val : tuple (raw image, labels), optional
        A held-out volume and its dense labels, scored by :func:`neuroseg_lite.metrics.dice` every
        ``config.val_every`` steps and at the end (sliding-window prediction).
    device : {"auto", "cpu", "cuda", "mps"} or torch.device
    progress : bool
        Show a tqdm bar with the running loss.
    resume : str or Path, optional
        A state file (:mod:`neuroseg_lite.resume`): absent, training starts and saves its state there; present
        (an interrupted run of the same call), training continues from it and ends with the same weights as an
        uninterrupted run. Removed when training finishes. A state of another run is refused.
    save_every_steps, save_every_seconds : int, float, optional
        When to save the state (with ``resume``); both None: every 60 seconds.
    callback : callable, optional
        ``callback(step)`` after each completed step (after its state is saved), e.g. to stop a test run there.

    Returns
    -------
    TrainedModel
        ``kind="unet3d"``: the (weight-averaged unless ``average="none"``) network in eval mode. Its history
        also records "lam" per logged step; the last validation entry scores the returned weights.
    """
    config = config or PRESETS_3D["cpu"]
    model_config = model_config or UNet3DConfig()
    intensity = intensity_normalization or IntensityNormalization()
    device = select_device(device)
    warn_gpu_preset_on_cpu(config, device, gpu_preset=PRESETS_3D["gpu"], model_config=model_config)
    val = _checked_val(val, intensity)
    with torch_threads(config.num_threads):
        trainer = _build_trainer(images, annotations, pseudo=pseudo, config=config, model_config=model_config,
                                 intensity=intensity, device=device)

        def validate(history, done, elapsed):
            probability = predict_volume(trainer.model, val[0], tile=config.val_tile or config.patch_size,
                                         batch_size=config.batch_size, device=device)
            trainer.model.train()
            _record_validation(history, done, elapsed, dice(probability, val[1]))

        state = None
        if resume is not None:
            sampler = trainer.sampler
            parts = run_parts("train_3d", configs={"train": config, "model": model_config,
                                                   "intensity": intensity.to_dict()},
                              arrays=[*sampler.images, *sampler.targets, *sampler.annotated, *sampler.pseudo_masks,
                                      *(val or ())], seed=config.seed, device=device)
            state = TrainingState(resume, parts=parts, objects={"trainer": trainer}, every_steps=save_every_steps,
                                  every_seconds=save_every_seconds, device=device)
        history = _fit(trainer.step, config=config, desc="train 3D U-Net", progress=progress,
                       validate=None if val is None else validate, extras=("lam",), state=state, callback=callback)
        started = time.perf_counter()
        trainer.finish()
        elapsed = (history["seconds"][-1] if history["seconds"] else 0.0) + time.perf_counter() - started
        if val is not None:
            validate(history, config.steps, elapsed)
        if state is not None:
            state.finish()
    return TrainedModel(network=trainer.model.eval(), kind="unet3d", model_config=model_config,
                        train_config=config, intensity_normalization=intensity, spacing=spacing, history=history)
