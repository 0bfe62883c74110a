"""How the 3D U-Net is trained: :class:`~neuroseg_lite.trainconfig.TrainConfig` and its presets.

Introduced in chapter 5 (``05_train_3d``). Kept apart from the training loop (:mod:`neuroseg_lite.train`) so
that the model file (:mod:`neuroseg_lite.checkpoint`) can rebuild a stored config without importing the loop.
The 2D pseudo-labeller's counterpart is :class:`neuroseg_lite.models2d.Train2DConfig`.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from neuroseg_lite._checks import NeurosegInputError
from neuroseg_lite.losses import LOSS_NORMALIZATIONS

__all__ = ["TrainConfig", "PRESETS_3D", "make_train_config"]


@dataclass(frozen=True)
class TrainConfig:
    """Everything that controls :func:`neuroseg_lite.train.train_3d`.

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
    loss_normalization : {"paper", "global"}
        What the weighted loss is divided by, see :func:`neuroseg_lite.losses.weighted_bce` (not the intensity
        normalisation of the images, which is :class:`neuroseg_lite.intensity.IntensityNormalization`).
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
        Validation Dice every this many steps (0: only at the end); needs ``val`` in ``train_3d``.
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
    loss_normalization: str = "paper"
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
        if self.loss_normalization not in LOSS_NORMALIZATIONS:
            fail(f"loss_normalization must be one of {LOSS_NORMALIZATIONS}, got {self.loss_normalization!r}.")
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
#: The 3D training budgets by name ("smoke", "cpu", "gpu").
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
