"""Training the 3D U-Net on sparse manual labels plus pseudo-labels, and saving/loading checkpoints.

Introduced in chapter 5 (``05_train_3d``).

The loop samples random patches (optionally centred near annotated foreground; :mod:`neuroseg_lite.patches`),
augments them, and minimises :func:`neuroseg_lite.losses.weighted_bce` (weight 1 on annotated voxels, lambda on
pseudo-labelled ones) with Adam. Two details are there because sparse training is unstable: in a quick probe
the Dice of a sparsely trained 3D model swung by up to 0.15 from one checkpoint to the next. The learning rate
therefore warms up linearly and then follows a cosine decay, and the returned model is the uniform average of
the weights seen during the last ``average_fraction`` of the steps (as in stochastic weight averaging, Izmailov
et al. 2018), with the batch-norm statistics re-estimated for the averaged weights. Either can be switched off
in :class:`TrainConfig`.
"""
from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from neuroseg_lite._checks import NeurosegInputError, check_image_values, check_same_shape, check_volume
from neuroseg_lite.losses import NORMALIZATIONS, lambda_schedule, pseudo_targets, weighted_bce
from neuroseg_lite.patches import PatchSampler, augment_patch
from neuroseg_lite.unet3d import UNet3D, UNet3DConfig, required_divisor
from neuroseg_lite.utils import seed_everything, select_device, to_plain

__all__ = [
    "TrainConfig",
    "PRESETS_3D",
    "make_train_config",
    "learning_rate",
    "PatchSampler",
    "augment_patch",
    "TrainResult",
    "train_3d",
    "save_checkpoint",
    "load_checkpoint",
    "DEFAULT_INTENSITY_NORMALIZATION",
    "CHECKPOINT_FORMAT",
]

CHECKPOINT_FORMAT = "neuroseg_lite.unet3d"
CHECKPOINT_VERSION = 1
# What the caller is expected to have done to every image (neuroseg_lite.io.normalize_percentile defaults);
# stored in checkpoints so that inference on new stacks can repeat it.
DEFAULT_INTENSITY_NORMALIZATION = {"method": "percentile", "low": 1.0, "high": 99.8}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that controls :func:`train_3d`.

    Parameters
    ----------
    patch_size : tuple of 3 int
        (z, y, x) size of training patches; multiples of the model's ``required_divisor``.
    batch_size : int
        Patches per step.
    steps : int
        Optimiser steps.
    lr : float
        Peak learning rate of Adam.
    weight_decay : float
        Adam's L2 penalty.
    warmup_fraction : float
        Fraction of the steps over which the learning rate rises linearly to ``lr``.
    min_lr_fraction : float
        The cosine decay ends at ``lr * min_lr_fraction``. Warm-up and decay are there because sparse training
        swings between checkpoints; a decaying rate lets the last checkpoints settle.
    average : {"swa", "none"}
        ``"swa"``: return the uniform average of the weights of every step in the last ``average_fraction`` of
        training (batch-norm statistics re-estimated on ``bn_refresh_batches`` training batches); it smooths the
        checkpoint-to-checkpoint swings. ``"none"``: return the final weights.
    average_fraction : float in (0, 1]
    bn_refresh_batches : int
        Batches used to re-estimate batch-norm statistics of the averaged model.
    lam : float
        Weight of pseudo-labelled voxels (lambda of Eq. 1); ignored when no pseudo-labels are given.
    normalization : {"paper", "global"}
        Loss normalisation, see :func:`neuroseg_lite.losses.weighted_bce`.
    pseudo_mode : {"hard", "soft"}
    confidence : float, optional
        Drop pseudo-labels with ``max(p, 1 - p) < confidence``.
    rampup : tuple (t1, t2) of int, optional
        Lee's linear ramp of lambda from 0 (before step t1) to ``lam`` (at step t2); None for a constant lambda.
    foreground_fraction : float in [0, 1]
        Probability that a patch is centred near an annotated foreground voxel instead of anywhere.
    augment : bool
        Random flips on all axes, in-plane 90 degree rotations, intensity scale/shift/gamma.
    amp : bool
        Mixed precision (float16 autocast + gradient scaling); used only on CUDA.
    channels_last : bool
        Run the network in ``torch.channels_last_3d`` memory format (faster convolutions on recent CPUs and GPUs).
    val_every : int
        Validation Dice every this many steps (0: only at the end); needs ``val`` in :func:`train_3d`.
    val_tile : tuple of 3 int, optional
        Tile for validation inference; None uses ``patch_size``.
    log_every : int
        Steps between entries of the history (loss averaged over the interval).
    seed : int
    num_threads : int, optional
        CPU threads for torch during training (restored afterwards); None leaves torch's setting.
    """

    patch_size: tuple[int, int, int] = (16, 64, 64)
    batch_size: int = 2
    steps: int = 500
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_fraction: float = 0.05
    min_lr_fraction: float = 0.02
    average: str = "swa"
    average_fraction: float = 0.25
    bn_refresh_batches: int = 8
    lam: float = 0.5
    normalization: str = "paper"
    pseudo_mode: str = "hard"
    confidence: float | None = None
    rampup: tuple[int, int] | None = None
    foreground_fraction: float = 0.5
    augment: bool = True
    amp: bool = True
    channels_last: bool = True
    val_every: int = 100
    val_tile: tuple[int, int, int] | None = None
    log_every: int = 10
    seed: int = 0
    num_threads: int | None = None

    def __post_init__(self):
        def fail(message):
            raise NeurosegInputError(f"TrainConfig: {message}")

        if len(tuple(self.patch_size)) != 3 or min(self.patch_size) < 1:
            fail(f"patch_size must be three positive integers (z, y, x), got {self.patch_size!r}.")
        object.__setattr__(self, "patch_size", tuple(int(s) for s in self.patch_size))
        if self.batch_size < 1 or self.steps < 1:
            fail(f"batch_size and steps must be >= 1, got {self.batch_size} and {self.steps}.")
        if not self.lr > 0:
            fail(f"lr must be > 0, got {self.lr}.")
        if not 0 <= self.warmup_fraction < 1 or not 0 <= self.min_lr_fraction <= 1:
            fail("warmup_fraction must be in [0, 1) and min_lr_fraction in [0, 1].")
        if self.average not in ("swa", "none"):
            fail(f"average must be 'swa' or 'none', got {self.average!r}.")
        if not 0 < self.average_fraction <= 1:
            fail(f"average_fraction must be in (0, 1], got {self.average_fraction}.")
        if not (math.isfinite(self.lam) and self.lam >= 0):
            fail(f"lam must be finite and >= 0, got {self.lam}.")
        if self.normalization not in NORMALIZATIONS:
            fail(f"normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}.")
        if self.pseudo_mode not in ("hard", "soft"):
            fail(f"pseudo_mode must be 'hard' or 'soft', got {self.pseudo_mode!r}.")
        if self.rampup is not None:
            t1, t2 = (int(t) for t in self.rampup)
            if not 0 <= t1 <= t2:
                fail(f"rampup must be (t1, t2) with 0 <= t1 <= t2, got {self.rampup!r}.")
            object.__setattr__(self, "rampup", (t1, t2))
        if not 0 <= self.foreground_fraction <= 1:
            fail(f"foreground_fraction must be in [0, 1], got {self.foreground_fraction}.")
        if self.val_every < 0 or self.log_every < 1:
            fail("val_every must be >= 0 and log_every >= 1.")
        if self.val_tile is not None:
            object.__setattr__(self, "val_tile", tuple(int(s) for s in self.val_tile))


# "cpu" is sized for about 2 minutes of training on 2 CPU cores with the default UNet3DConfig (1.4 M parameters).
# benchmarks/bench_train3d.py measured one step (16x64x64 patches, batch 2, sampling and augmentation included) at
# about 0.16 s with 2 threads on an idle 2-core machine, and 0.45-0.5 s with 1 thread while other jobs shared the
# cores (2 threads were then 4x slower still: OpenMP threads wait for each other; set num_threads=1 on a busy
# machine). Validating a 64x256x256 volume with 16x64x64 tiles costs about 10 s, hence the sparse val_every.
PRESETS_3D: dict[str, TrainConfig] = {
    "smoke": TrainConfig(patch_size=(8, 32, 32), batch_size=2, steps=12, val_every=6, log_every=2,
                         warmup_fraction=0.1, bn_refresh_batches=2),
    "cpu": TrainConfig(patch_size=(16, 64, 64), batch_size=2, steps=600, val_every=300, log_every=10),
    "gpu": TrainConfig(patch_size=(16, 128, 128), batch_size=8, steps=4000, val_every=250, log_every=25,
                       val_tile=(32, 128, 128), bn_refresh_batches=16),
}


def make_train_config(preset: str = "cpu", **overrides) -> TrainConfig:
    """Return ``PRESETS_3D[preset]`` with some fields replaced, e.g. ``make_train_config("cpu", lam=0.25)``."""
    if preset not in PRESETS_3D:
        raise NeurosegInputError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS_3D)}.")
    valid = set(asdict(PRESETS_3D[preset]))
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise NeurosegInputError(f"unknown TrainConfig field(s) {unknown}; valid fields: {sorted(valid)}.")
    return replace(PRESETS_3D[preset], **overrides)


def learning_rate(step: int, config: TrainConfig) -> float:
    """Learning rate at ``step`` (0-based): linear warm-up, then cosine decay to ``lr * min_lr_fraction``."""
    warmup = round(config.warmup_fraction * config.steps)
    if step < warmup:
        return config.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, config.steps - 1 - warmup)
    low = config.lr * config.min_lr_fraction
    return low + (config.lr - low) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


# --------------------------------------------------------------------------------------------- training


@dataclass
class TrainResult:
    """What :func:`train_3d` returns.

    Attributes
    ----------
    model : UNet3D
        The trained (weight-averaged unless ``average="none"``) model, in eval mode.
    history : dict of lists
        "step", "loss" (mean over the logging interval), "lr", "lam", "seconds" (training time so far, validation
        excluded); "val_step", "val_dice", "val_seconds". The last validation entry (at ``val_step == steps``)
        scores the returned model; the earlier ones score the weights of that moment.
    model_config : UNet3DConfig
    train_config : TrainConfig
    """

    model: UNet3D
    history: dict = field(default_factory=dict)
    model_config: UNet3DConfig | None = None
    train_config: TrainConfig | None = None


class _WeightAverage:
    """Running uniform average of a model's floating-point state (parameters and buffers)."""

    def __init__(self):
        self.average: dict[str, torch.Tensor] | None = None
        self.count = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.count += 1
        if self.average is None:
            self.average = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}
            return
        for key, value in model.state_dict().items():
            if key in self.average:
                self.average[key].lerp_(value, 1.0 / self.count)

    def copy_to(self, model: torch.nn.Module) -> None:
        model.load_state_dict(self.average, strict=False)


class _Trainer:
    """One training run's state; ``step`` is exactly what :func:`train_3d` does per iteration."""

    def __init__(self, sampler: PatchSampler, model: UNet3D, config: TrainConfig, device: torch.device):
        self.sampler, self.config, self.device = sampler, config, device
        self.memory_format = torch.channels_last_3d if config.channels_last else torch.contiguous_format
        self.model = model.to(device=device, memory_format=self.memory_format).train()
        self.optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.use_amp = config.amp and device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.average = _WeightAverage() if config.average == "swa" else None
        self.average_start = config.steps - max(1, round(config.average_fraction * config.steps))

    def lam_at(self, step: int) -> float:
        if self.config.rampup is None:
            return self.config.lam
        t1, t2 = self.config.rampup
        return lambda_schedule(step, lam=self.config.lam, t1=t1, t2=t2)

    def next_batch(self) -> dict[str, torch.Tensor]:
        arrays = self.sampler.batch(self.config.batch_size)
        batch = {key: torch.from_numpy(value).to(self.device, non_blocking=True) for key, value in arrays.items()}
        batch["image"] = batch["image"].contiguous(memory_format=self.memory_format)
        return batch

    def optimize(self, batch: dict[str, torch.Tensor], lam: float) -> torch.Tensor:
        """Forward, weighted loss, backward and one Adam step on a ready batch; returns the detached loss."""
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.use_amp):
            logits = self.model(batch["image"])
        loss = weighted_bce(logits, batch["target"], batch["annotated"], lam=lam, pseudo_mask=batch["pseudo"],
                            normalization=self.config.normalization)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach()

    def step(self, step: int) -> tuple[torch.Tensor, float, float]:
        """Set the learning rate, sample and augment a batch, optimise, update the weight average."""
        lr = learning_rate(step, self.config)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        lam = self.lam_at(step)
        loss = self.optimize(self.next_batch(), lam)
        if self.average is not None and step >= self.average_start:
            self.average.update(self.model)
        return loss, lr, lam

    @torch.no_grad()
    def finish(self) -> None:
        """Load the averaged weights and re-estimate batch-norm statistics for them."""
        if self.average is None or self.average.average is None:
            return
        self.average.copy_to(self.model)
        norms = [m for m in self.model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        if not norms or self.config.bn_refresh_batches < 1:
            return
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the refresh batches
        self.model.train()
        for _ in range(self.config.bn_refresh_batches):
            with torch.autocast("cuda", dtype=torch.float16, enabled=self.use_amp):
                self.model(self.next_batch()["image"])
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum


def _as_volume_list(values) -> list:
    if values is None:
        return []
    if isinstance(values, (np.ndarray, torch.Tensor)) and np.ndim(values) == 3:
        return [values]
    return list(values)


def _bool_volume(array, *, name: str) -> np.ndarray:
    arr = check_volume(array, name=name)
    if arr.dtype == bool:
        return arr
    if not np.isin(np.unique(arr), (0, 1)).all():
        raise NeurosegInputError(
            f"{name} must be boolean (or 0/1); got other values. For instance labels use "
            f"neuroseg_lite.io.binarize_labels({name}).")
    return arr.astype(bool)


def _prepare_volumes(images, labels, annotated, pseudo, config: TrainConfig):
    images = _as_volume_list(images)
    labels = _as_volume_list(labels)
    annotated = _as_volume_list(annotated)
    pseudo = None if pseudo is None else _as_volume_list(pseudo)
    counts = [len(images), len(labels), len(annotated)] + ([] if pseudo is None else [len(pseudo)])
    if not images or len(set(counts)) != 1:
        raise NeurosegInputError(
            f"train_3d needs one labels, annotated (and pseudo) volume per image, at least one image; got "
            f"{len(images)} images, {len(labels)} labels, {len(annotated)} annotated"
            + ("" if pseudo is None else f", {len(pseudo)} pseudo") + ".")
    out_images, targets, ann_masks, pseudo_masks = [], [], [], []
    for i, image in enumerate(images):
        image = check_volume(image, name=f"images[{i}]")
        if not np.issubdtype(image.dtype, np.floating):
            raise NeurosegInputError(
                f"images[{i}] has dtype {image.dtype}; train_3d expects normalised float32 intensities. Use "
                "neuroseg_lite.io.normalize_percentile(image) first.")
        check_image_values(image, name=f"images[{i}]")
        lab = _bool_volume(labels[i], name=f"labels[{i}]")
        ann = _bool_volume(annotated[i], name=f"annotated[{i}]")
        check_same_shape(image, lab, names=(f"images[{i}]", f"labels[{i}]"))
        check_same_shape(image, ann, names=(f"images[{i}]", f"annotated[{i}]"))
        if pseudo is None:
            target, pmask = (lab & ann).astype(np.float32), None
        else:
            check_same_shape(image, np.asarray(pseudo[i]), names=(f"images[{i}]", f"pseudo[{i}]"))
            target, pmask = pseudo_targets(lab, ann, pseudo[i], mode=config.pseudo_mode,
                                           confidence=config.confidence)
            if config.lam == 0:
                pmask = None  # lambda 0 is sparse training: patches without annotation would carry no loss
        out_images.append(image.astype(np.float32, copy=False))
        targets.append(target)
        ann_masks.append(ann)
        pseudo_masks.append(pmask)
    if not any(a.any() for a in ann_masks):
        raise NeurosegInputError("no voxel is annotated in any volume; pass the annotated mask of the sparse labels.")
    return out_images, targets, ann_masks, pseudo_masks


def _dice(probability: np.ndarray, truth: np.ndarray) -> float:
    pred = probability > 0.5
    denominator = int(pred.sum()) + int(truth.sum())
    if denominator == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, truth).sum()) / denominator


def _build_trainer(images, labels, annotated, *, pseudo, config: TrainConfig, model_config: UNet3DConfig,
                   device: torch.device) -> _Trainer:
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
    volumes, targets, ann_masks, pseudo_masks = _prepare_volumes(images, labels, annotated, pseudo, config)
    rng = seed_everything(config.seed)
    sampler = PatchSampler(volumes, targets, ann_masks, pseudo_masks=pseudo_masks, patch_size=config.patch_size,
                           foreground_fraction=config.foreground_fraction, augment=config.augment, rng=rng)
    return _Trainer(sampler, UNet3D(model_config), config, device)


def train_3d(images, labels, annotated, *, pseudo=None, config: TrainConfig | None = None,
             model_config: UNet3DConfig | None = None, val=None, device="auto", checkpoint_path=None,
             progress: bool = True, intensity_normalization: dict | None = None) -> TrainResult:
    """Train a 3D U-Net on sparse manual labels, optionally with pseudo-labels.

    Parameters
    ----------
    images : list of ndarray of shape (Z, Y, X), float
        Normalised intensities (``neuroseg_lite.io.normalize_percentile``); one array is accepted too.
    labels : list of ndarray of shape (Z, Y, X), bool
        Manual labels, read only where ``annotated`` is True.
    annotated : list of ndarray of shape (Z, Y, X), bool
        Annotated voxels (e.g. ``SparseLabels.annotated``). All True gives dense training, the upper bound.
    pseudo : list of ndarray of shape (Z, Y, X), float in [0, 1], optional
        Pseudo-label probabilities from the 2D network. None trains sparsely (Cicek's lambda = 0 baseline).
    config : TrainConfig, optional
        Default ``PRESETS_3D["cpu"]``.
    model_config : UNet3DConfig, optional
        Default ``UNet3DConfig()``.
    val : tuple (image, labels), optional
        A held-out normalised volume and its dense boolean labels, scored by voxel Dice at threshold 0.5 every
        ``config.val_every`` steps and at the end (sliding-window ``predict_volume``).
    device : {"auto", "cpu", "cuda", "mps"} or torch.device
    checkpoint_path : str or Path, optional
        Where to save the final model (see :func:`save_checkpoint`); an existing file is replaced atomically.
    progress : bool
        Show a tqdm bar with the running loss.
    intensity_normalization : dict, optional
        How the images were normalised, stored in the checkpoint; default ``DEFAULT_INTENSITY_NORMALIZATION``.

    Returns
    -------
    TrainResult
    """
    from tqdm.auto import tqdm

    config = config or PRESETS_3D["cpu"]
    model_config = model_config or UNet3DConfig()
    device = select_device(device)
    if val is not None:
        val_image, val_truth = val
        val_image = check_volume(val_image, name="val image")
        if not np.issubdtype(val_image.dtype, np.floating):
            raise NeurosegInputError(
                f"val image has dtype {val_image.dtype}; normalise it like the training images "
                "(neuroseg_lite.io.normalize_percentile).")
        val_truth = _bool_volume(val_truth, name="val labels")
        check_same_shape(val_image, val_truth, names=("val image", "val labels"))
    old_threads = torch.get_num_threads()
    if config.num_threads:
        torch.set_num_threads(int(config.num_threads))
    try:
        trainer = _build_trainer(images, labels, annotated, pseudo=pseudo, config=config,
                                 model_config=model_config, device=device)
        history = {key: [] for key in ("step", "loss", "lr", "lam", "seconds", "val_step", "val_dice",
                                       "val_seconds")}
        elapsed = 0.0

        def validate(step: int) -> None:
            from neuroseg_lite.infer import predict_volume

            prob = predict_volume(trainer.model, val_image, tile=config.val_tile or config.patch_size,
                                  batch_size=config.batch_size, device=device)
            trainer.model.train()
            history["val_step"].append(step)
            history["val_dice"].append(_dice(prob, val_truth))
            history["val_seconds"].append(round(elapsed, 3))

        interval_losses = []
        bar = tqdm(total=config.steps, disable=not progress, desc="train 3D U-Net", unit="step")
        with bar:
            for step in range(config.steps):
                started = time.perf_counter()
                loss, lr, lam = trainer.step(step)
                interval_losses.append(loss)
                done = step + 1
                logging = done % config.log_every == 0 or done == config.steps
                if logging:
                    # One device sync per logging interval rather than per step.
                    mean_loss = float(torch.stack(interval_losses).mean())
                    interval_losses.clear()
                elapsed += time.perf_counter() - started
                if logging:
                    history["step"].append(done)
                    history["loss"].append(mean_loss)
                    history["lr"].append(lr)
                    history["lam"].append(lam)
                    history["seconds"].append(round(elapsed, 3))
                    bar.set_postfix(loss=f"{mean_loss:.4f}", lam=f"{lam:.2f}", refresh=False)
                bar.update(1)
                if val is not None and config.val_every and done % config.val_every == 0 and done < config.steps:
                    validate(done)
        started = time.perf_counter()
        trainer.finish()
        elapsed += time.perf_counter() - started
        if val is not None:
            validate(config.steps)
        model = trainer.model.eval()
        if checkpoint_path is not None:
            save_checkpoint(checkpoint_path, model, model_config=model_config, train_config=config,
                            normalization=intensity_normalization or DEFAULT_INTENSITY_NORMALIZATION,
                            history=history)
    finally:
        torch.set_num_threads(old_threads)
    return TrainResult(model=model, history=history, model_config=model_config, train_config=config)


# --------------------------------------------------------------------------------------------- checkpoints


def save_checkpoint(path, model: torch.nn.Module, *, model_config: UNet3DConfig | None = None,
                    train_config: TrainConfig | None = None, normalization: dict | None = None,
                    history: dict | None = None) -> Path:
    """Save a 3D U-Net with everything needed to rebuild and use it, as a plain dict.

    The file is written to a temporary name in the same folder and then renamed over ``path``, so an existing
    checkpoint is replaced in one step (training runs overwrite their checkpoint intentionally) and a crash
    never leaves a half-written file.

    Parameters
    ----------
    path : str or Path
    model : UNet3D
    model_config : UNet3DConfig, optional
        Default ``model.config``.
    train_config : TrainConfig, optional
    normalization : dict, optional
        How input images were normalised; default ``DEFAULT_INTENSITY_NORMALIZATION``.
    history : dict of lists, optional

    Returns
    -------
    Path
    """
    model_config = model_config or getattr(model, "config", None)
    if not isinstance(model_config, UNet3DConfig):
        raise NeurosegInputError("save_checkpoint needs model_config=UNet3DConfig(...) describing the model.")
    reference = {k: tuple(v.shape) for k, v in UNet3D(model_config).state_dict().items()}
    actual = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if reference != actual:
        raise NeurosegInputError(
            f"model_config {model_config} does not describe the model (different layers or shapes); pass the "
            "config the model was built with.")
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "model_config": to_plain(asdict(model_config)),
        "train_config": None if train_config is None else to_plain(asdict(train_config)),
        "normalization": to_plain(normalization or DEFAULT_INTENSITY_NORMALIZATION),
        "history": to_plain(history or {}),
        "torch_version": str(torch.__version__),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        torch.save(payload, temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def _looks_2d(checkpoint: dict) -> bool:
    if "pseudolabel" in str(checkpoint.get("format", "")):
        return True
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, dict):
        return False
    weights = [v for k, v in state.items() if isinstance(v, torch.Tensor) and k.endswith("weight")]
    return bool(weights) and all(w.ndim <= 4 for w in weights) and any(w.ndim == 4 for w in weights)


def load_checkpoint(path, *, device="auto") -> tuple[UNet3D, dict]:
    """Load a checkpoint written by :func:`save_checkpoint` (or by ``train_3d(checkpoint_path=...)``).

    Parameters
    ----------
    path : str or Path
    device : {"auto", "cpu", "cuda", "mps"} or torch.device

    Returns
    -------
    model : UNet3D
        On ``device``, in eval mode.
    info : dict
        "model_config" (UNet3DConfig), "train_config" (TrainConfig; a plain dict if this version cannot parse
        it; None if not saved), "normalization", "history",
        "format_version", "torch_version", "path".
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no 3D U-Net checkpoint at {path}; check the path (train_3d writes one when "
                                "given checkpoint_path=...).")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and weights-only errors differ by torch version; all mean "unusable"
        raise NeurosegInputError(f"{path} is not a readable torch checkpoint ({err}).") from err
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        if isinstance(checkpoint, dict) and _looks_2d(checkpoint):
            raise NeurosegInputError(
                f"{path} holds a 2D model (2D convolution weights), not a 3D U-Net; load it with "
                "neuroseg_lite.pseudolabel.load_2d.")
        found = checkpoint.get("format") if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise NeurosegInputError(
            f"{path} is not a NeuroSeg Lite 3D U-Net checkpoint (format {found!r}, expected "
            f"{CHECKPOINT_FORMAT!r}); save models with neuroseg_lite.train.save_checkpoint.")
    try:
        model_config = UNet3DConfig(**checkpoint["model_config"])
    except (TypeError, KeyError) as err:
        raise NeurosegInputError(f"{path}: unreadable model_config ({err}); the file is corrupt or from a newer "
                                 "version of neuroseg_lite.") from err
    model = UNet3D(model_config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    saved = {k: tuple(v.shape) for k, v in checkpoint["state_dict"].items()}
    if expected != saved:
        missing = sorted(set(expected) - set(saved))
        unexpected = sorted(set(saved) - set(expected))
        shapes = [f"{k}: saved {saved[k]} vs built {expected[k]}" for k in expected
                  if k in saved and saved[k] != expected[k]]
        raise NeurosegInputError(
            f"{path}: the saved weights do not match the architecture its config describes ({model_config}). "
            f"Missing: {missing[:4]}{' ...' if len(missing) > 4 else ''}; unexpected: {unexpected[:4]}"
            f"{' ...' if len(unexpected) > 4 else ''}; shape mismatches: {shapes[:4]}"
            f"{' ...' if len(shapes) > 4 else ''}. Rebuild with the UNet3DConfig the weights were trained with.")
    model.load_state_dict(checkpoint["state_dict"])
    train_config = checkpoint.get("train_config")
    if isinstance(train_config, dict):
        try:
            train_config = TrainConfig(**train_config)
        except (TypeError, NeurosegInputError):
            pass  # written by another version: keep the plain dict rather than refuse the weights
    info = {
        "model_config": model_config,
        "train_config": train_config,
        "normalization": checkpoint.get("normalization"),
        "history": checkpoint.get("history", {}),
        "format_version": checkpoint.get("format_version"),
        "torch_version": checkpoint.get("torch_version"),
        "path": path,
    }
    return model.to(select_device(device)).eval(), info
