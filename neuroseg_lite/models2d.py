"""The two 2D networks that make pseudo-labels: a 32x32 patch classifier and a small 2D U-Net.

Introduced in chapter 3 (``03_train_2d``); :func:`PatchCNN.dense_logits` is the subject of
chapter 4 (``04_pseudo_labels``). Also here: :class:`Model2DConfig` (which network), :class:`Train2DConfig`
(which network, and how it is trained) and :data:`PRESETS_2D`. Training is
:func:`neuroseg_lite.train.train_2d`, prediction :func:`neuroseg_lite.pseudolabel.predict_2d`, the model file
:mod:`neuroseg_lite.checkpoint`.

The patch classifier follows the layer list the paper's authors published as a Caffe model:
conv 32@5x5 -> ReLU -> maxpool 2 -> conv 64@3x3 -> ReLU -> maxpool 2 -> conv 64@3x3 -> ReLU ->
FC 128 -> ReLU -> dropout -> FC 128 -> ReLU -> dropout -> FC n_classes, unpadded convolutions.
It labels the *centre* pixel of its patch; with an even patch size the centre is defined here as
the pixel at patch index (16, 16), i.e. a pixel (i, j) is classified from image rows i-16 .. i+15
and columns j-16 .. j+15.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from neuroseg_lite._checks import NeurosegInputError

__all__ = [
    "PATCH_SIZE",
    "PATCH_CENTRE",
    "PatchCNN",
    "UNet2D",
    "reflect_positions",
    "reflect_indices",
    "reflect_pad2d",
    "naive_logits",
    "Model2DConfig",
    "Train2DConfig",
    "PRESETS_2D",
    "build_model_2d",
    "model_kind",
]

PATCH_SIZE = 32
PATCH_CENTRE = 16  # pixel (i, j) sits at index (16, 16) of its patch: rows i-16 .. i+15
_PAD_BEFORE = PATCH_CENTRE
_PAD_AFTER = PATCH_SIZE - PATCH_CENTRE - 1


def reflect_positions(positions: np.ndarray, size: int) -> np.ndarray:
    """Map any integer positions onto ``0 .. size - 1`` by mirror reflection (edge pixel not repeated).

    Equals the indexing of ``np.pad(..., mode="reflect")``, including pads longer than the axis, which
    keep reflecting back and forth (period ``2 * (size - 1)``) so tiny images still get a well-defined
    border; an axis of length 1 is repeated (reflection is undefined there).
    """
    positions = np.asarray(positions, dtype=np.int64)
    if size == 1:
        return np.zeros_like(positions)
    period = 2 * (size - 1)
    folded = np.mod(positions, period)
    return np.where(folded < size, folded, period - folded)


def reflect_indices(size: int, before: int, after: int) -> np.ndarray:
    """Source indices that reflect-pad an axis of length ``size`` by ``before`` and ``after`` elements.

    Returns
    -------
    ndarray of int64, shape (before + size + after,)
    """
    return reflect_positions(np.arange(-before, size + after), size)


def reflect_pad2d(x: torch.Tensor, top: int, bottom: int, left: int, right: int) -> torch.Tensor:
    """Reflect-pad the last two axes of ``x`` by any amount (see :func:`reflect_indices`)."""
    rows = torch.from_numpy(reflect_indices(x.shape[-2], top, bottom)).to(x.device)
    cols = torch.from_numpy(reflect_indices(x.shape[-1], left, right)).to(x.device)
    return x.index_select(-2, rows).index_select(-1, cols)


class PatchCNN(nn.Module):
    """Classify the centre pixel of a 32x32 patch (about 205k parameters for one input channel).

    Parameters
    ----------
    in_channels : int
        1, or ``1 + 2 * context_planes`` when neighbouring z-planes are stacked as channels.
    n_classes : int
        2 (background, foreground) for pseudo-labels.
    dropout : float
        Dropout after each hidden fully connected layer (training only).
    """

    def __init__(self, in_channels: int = 1, n_classes: int = 2, dropout: float = 0.5):
        super().__init__()
        self.in_channels = int(in_channels)
        self.n_classes = int(n_classes)
        self.conv1 = nn.Conv2d(in_channels, 32, 5)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.conv3 = nn.Conv2d(64, 64, 3)
        self.fc1 = nn.Linear(64 * 4 * 4, 128)
        self.fc2 = nn.Linear(128, 128)
        self.fc3 = nn.Linear(128, n_classes)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the centre pixel.

        Parameters
        ----------
        x : tensor of shape (N, C, 32, 32)

        Returns
        -------
        tensor of shape (N, n_classes)
        """
        if x.shape[-2:] != (PATCH_SIZE, PATCH_SIZE):
            raise ValueError(f"PatchCNN.forward takes (N, C, 32, 32) patches, got {tuple(x.shape)}; "
                             "use dense_logits for whole images.")
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)   # 28 -> 14
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)   # 12 -> 6
        x = F.relu(self.conv3(x)).flatten(1)         # 4x4x64
        x = self.dropout(F.relu(self.fc1(x)))
        x = self.dropout(F.relu(self.fc2(x)))
        return self.fc3(x)

    def dense_logits(self, x: torch.Tensor, *, max_pixels: int = 1 << 17) -> torch.Tensor:
        """Exact per-pixel logits: ``forward`` on the 32x32 patch centred at every pixel, computed at once.

        The same weights run fully convolutionally. Each 2x2/2 max-pool becomes a stride-1 pool, so
        the output keeps full resolution, and every later layer is dilated by the product of the
        strides it skipped (a trous): conv2 by 2, pool2 by 2, conv3 by 4, fc1 as a 4x4 convolution
        dilated by 4, fc2 and fc3 as 1x1 convolutions. The input is reflect-padded (16 before,
        15 after, as :func:`reflect_indices`), so borders match patches cut from a reflected image.
        Dropout is skipped whatever the module's mode, as in evaluation.

        Parameters
        ----------
        x : tensor of shape (N, C, H, W)
        max_pixels : int
            Bound on N * rows * W per pass; larger inputs are processed image by image in row bands
            (each band carries the 31-row halo it needs), which bounds memory for big slices.

        Returns
        -------
        tensor of shape (N, n_classes, H, W)
        """
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"dense_logits takes (N, {self.in_channels}, H, W), got {tuple(x.shape)}.")
        n, _, height, width = x.shape
        padded = reflect_pad2d(x, _PAD_BEFORE, _PAD_AFTER, _PAD_BEFORE, _PAD_AFTER)
        if n * height * width <= max_pixels:
            return self._dense_padded(padded)
        band = max(1, max_pixels // width)
        out = x.new_empty((n, self.n_classes, height, width))
        for i in range(n):
            for r0 in range(0, height, band):
                r1 = min(height, r0 + band)
                out[i:i + 1, :, r0:r1] = self._dense_padded(padded[i:i + 1, :, r0:r1 + PATCH_SIZE - 1])
        return out

    def _dense_padded(self, padded: torch.Tensor) -> torch.Tensor:
        # Input already padded by 31 rows/cols: the output is 31 smaller in each axis.
        x = F.relu(self.conv1(padded))
        x = F.max_pool2d(x, 2, stride=1)
        x = F.relu(F.conv2d(x, self.conv2.weight, self.conv2.bias, dilation=2))
        x = F.max_pool2d(x, 2, stride=1, dilation=2)
        x = F.relu(F.conv2d(x, self.conv3.weight, self.conv3.bias, dilation=4))
        # fc1 flattens (64, 4, 4) channel-major, which is exactly a conv weight's layout.
        fc1_weight = self.fc1.weight.view(128, 64, 4, 4)
        x = F.relu(F.conv2d(x, fc1_weight, self.fc1.bias, dilation=4))
        x = F.relu(F.conv2d(x, self.fc2.weight[:, :, None, None], self.fc2.bias))
        return F.conv2d(x, self.fc3.weight[:, :, None, None], self.fc3.bias)


@torch.no_grad()
def naive_logits(model: PatchCNN, image: torch.Tensor, *, pixels: np.ndarray | None = None,
                 batch_size: int = 256) -> torch.Tensor:
    """Reference dense map: cut one 32x32 patch per pixel and call ``model.forward`` on batches of them.

    Slow on purpose (it repeats most of the work for neighbouring pixels); it is the yardstick that
    :meth:`PatchCNN.dense_logits` must match and beat. Uses the model's current mode (call ``eval()``).

    Parameters
    ----------
    image : tensor of shape (C, H, W)
    pixels : int ndarray of shape (P, 2), optional
        (row, col) of the pixels to classify; all pixels in raster order by default.

    Returns
    -------
    tensor of shape (P, n_classes)
    """
    _, height, width = image.shape
    if pixels is None:
        rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
        pixels = np.stack([rows.ravel(), cols.ravel()], axis=1)
    padded = reflect_pad2d(image, _PAD_BEFORE, _PAD_AFTER, _PAD_BEFORE, _PAD_AFTER)
    outputs = []
    for start in range(0, len(pixels), batch_size):
        chunk = pixels[start:start + batch_size]
        # padded[r:r+32] holds image rows r-16 .. r+15, the patch centred on pixel r.
        patches = torch.stack([padded[:, r:r + PATCH_SIZE, c:c + PATCH_SIZE] for r, c in chunk])
        outputs.append(model(patches))
    return torch.cat(outputs)


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    # BatchNorm before each ReLU, as in the 2D/3D U-Net papers.
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class UNet2D(nn.Module):
    """A small 2D U-Net: same-size padded convolutions, BatchNorm, ``depth`` 2x2 poolings.

    Parameters
    ----------
    in_channels : int
        1, or ``1 + 2 * context_planes``.
    base_channels : int
        Channels at full resolution; doubled at every level.
    depth : int
        Number of down-sampling steps. Inputs whose height or width is not a multiple of
        ``2 ** depth`` are reflect-padded inside ``forward`` and the output cropped back.
    """

    def __init__(self, in_channels: int = 1, base_channels: int = 16, depth: int = 3):
        super().__init__()
        if depth < 1 or base_channels < 1:
            raise ValueError(f"UNet2D needs depth >= 1 and base_channels >= 1, got {depth}, {base_channels}.")
        self.in_channels = int(in_channels)
        self.base_channels = int(base_channels)
        self.depth = int(depth)
        widths = [base_channels * 2 ** level for level in range(depth + 1)]
        self.down = nn.ModuleList([_conv_block(in_channels, widths[0])])
        self.down.extend(_conv_block(widths[i], widths[i + 1]) for i in range(depth))
        self.upsample = nn.ModuleList(
            nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in reversed(range(depth)))
        self.up = nn.ModuleList(_conv_block(2 * widths[i], widths[i]) for i in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Foreground logits.

        Parameters
        ----------
        x : tensor of shape (N, C, H, W)

        Returns
        -------
        tensor of shape (N, 1, H, W)
        """
        height, width = x.shape[-2:]
        divisor = 2 ** self.depth
        extra_h, extra_w = -height % divisor, -width % divisor
        if extra_h or extra_w:
            x = reflect_pad2d(x, extra_h // 2, extra_h - extra_h // 2, extra_w // 2, extra_w - extra_w // 2)
        skips = []
        for level, block in enumerate(self.down):
            x = block(x if level == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for upsample, block in zip(self.upsample, self.up):
            x = block(torch.cat([skips.pop(), upsample(x)], dim=1))
        x = self.head(x)
        top, left = extra_h // 2, extra_w // 2
        return x[..., top:top + height, left:left + width]


# ----------------------------------------------------------------------------- config

MODEL_KINDS = ("patch", "unet2d")
_DEFAULT_BATCH = {"patch": 128, "unet2d": 4}


@dataclass(frozen=True)
class Model2DConfig:
    """Architecture of a 2D pseudo-labeller: what :func:`build_model_2d` needs to rebuild it.

    Attributes
    ----------
    model : {"patch", "unet2d"}
    in_channels : int
        ``1 + 2 * context_planes``.
    base_channels, depth : int
        ``"unet2d"`` width and number of poolings (ignored by ``"patch"``).
    dropout : float
        ``"patch"`` dropout after the hidden fully connected layers (ignored by ``"unet2d"``).
    """

    model: str = "patch"
    in_channels: int = 1
    base_channels: int = 16
    depth: int = 3
    dropout: float = 0.5

    def __post_init__(self):
        if self.model not in MODEL_KINDS:
            raise NeurosegInputError(f"Model2DConfig.model must be one of {MODEL_KINDS}, got {self.model!r}.")
        if min(self.in_channels, self.base_channels, self.depth) < 1 or not 0 <= self.dropout < 1:
            raise NeurosegInputError(f"Model2DConfig needs in_channels, base_channels, depth >= 1 and dropout in "
                                     f"[0, 1); got {self}.")


@dataclass(frozen=True)
class Train2DConfig:
    """Everything that decides how the 2D pseudo-labeller is built and trained.

    Frozen, so the shared :data:`PRESETS_2D` cannot be changed by accident: derive variants with
    ``dataclasses.replace(PRESETS_2D["cpu"], model="unet2d", context_planes=1)``.

    Attributes
    ----------
    model : {"patch", "unet2d"}
    context_planes : int
        Neighbouring z-planes on each side given as extra channels (input has ``1 + 2 * context_planes``).
    steps : int
        Optimiser steps (Adam).
    batch_size : int or None
        Patches (``"patch"``) or crops (``"unet2d"``) per step; None picks 128 or 4 respectively.
    lr, weight_decay : float
        Adam learning rate and L2 weight decay.
    warmup_fraction, min_lr_fraction : float
        The learning-rate schedule shared with the 3D network (:func:`neuroseg_lite.train.learning_rate`):
        linear warm-up over ``warmup_fraction`` of the steps, then cosine decay to ``lr * min_lr_fraction``
        (0.1 damps the step-to-step swings of the final model; 1.0 is a constant rate).
    seed : int
    class_balance : bool
        ``"patch"``: draw foreground and background centres 50/50 (when both are annotated), otherwise
        uniformly over annotated pixels. ``"unet2d"``: weight the masked loss so both classes count equally.
    augment : bool
        Random flips and 90-degree rotations in the XY plane.
    intensity_jitter : float
        Per-sample random gain ``1 + U(-j, j)`` and offset ``U(-j, j)`` (0 switches it off).
    patch_size : int
        Square crop side for ``"unet2d"`` (clipped to the image). The patch model always uses 32.
    base_channels, depth : int
        ``"unet2d"`` width and number of poolings.
    dropout : float
        ``"patch"`` dropout after the hidden fully connected layers.
    val_every : int
        Validate every that many steps when ``val`` is given (0: only at the end).
    log_every : int
        Steps between entries of the history (loss averaged over the interval).
    val_planes : int
        Validation uses at most this many evenly spaced z-planes, to stay cheap.
    amp : bool
        Mixed precision (float16 autocast) on CUDA; ignored on other devices.
    """

    model: str = "patch"
    context_planes: int = 0
    steps: int = 1500
    batch_size: int | None = None
    lr: float = 1e-3
    weight_decay: float = 1e-5
    warmup_fraction: float = 0.0
    min_lr_fraction: float = 0.1
    seed: int = 0
    class_balance: bool = True
    augment: bool = True
    intensity_jitter: float = 0.1
    patch_size: int = 128
    base_channels: int = 16
    depth: int = 3
    dropout: float = 0.5
    val_every: int = 250
    log_every: int = 10
    val_planes: int = 8
    amp: bool = True

    @property
    def in_channels(self) -> int:
        return 1 + 2 * self.context_planes

    @property
    def model_config(self) -> Model2DConfig:
        """The architecture part of this config."""
        return Model2DConfig(model=self.model, in_channels=self.in_channels, base_channels=self.base_channels,
                             depth=self.depth, dropout=self.dropout)

    def resolved_batch_size(self) -> int:
        return self.batch_size if self.batch_size is not None else _DEFAULT_BATCH[self.model]

    def validate(self) -> Train2DConfig:
        """Raise :class:`~neuroseg_lite.NeurosegInputError` naming the first unusable option."""
        if self.model not in MODEL_KINDS:
            raise NeurosegInputError(f"Train2DConfig.model must be one of {MODEL_KINDS}, got {self.model!r}.")
        positive = {"steps": self.steps, "lr": self.lr, "patch_size": self.patch_size,
                    "base_channels": self.base_channels, "depth": self.depth, "val_planes": self.val_planes}
        if self.batch_size is not None:
            positive["batch_size"] = self.batch_size
        for name, value in positive.items():
            if not value > 0:
                raise NeurosegInputError(f"Train2DConfig.{name} must be positive, got {value!r}.")
        for name in ("context_planes", "val_every", "weight_decay", "intensity_jitter"):
            if getattr(self, name) < 0:
                raise NeurosegInputError(f"Train2DConfig.{name} must be >= 0, got {getattr(self, name)!r}.")
        if not 0 <= self.dropout < 1:
            raise NeurosegInputError(f"Train2DConfig.dropout must be in [0, 1), got {self.dropout!r}.")
        if not 0 <= self.warmup_fraction < 1 or not 0 <= self.min_lr_fraction <= 1 or self.log_every < 1:
            raise NeurosegInputError("Train2DConfig needs warmup_fraction in [0, 1), min_lr_fraction in [0, 1] "
                                     f"and log_every >= 1; got {self.warmup_fraction}, {self.min_lr_fraction}, "
                                     f"{self.log_every}.")
        return self

    @classmethod
    def from_dict(cls, values: dict) -> Train2DConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise NeurosegInputError(
                f"unknown Train2DConfig option(s) {unknown}; known options are {sorted(known)}.")
        return cls(**values)


#: The 2D training budgets by name ("smoke", "cpu", "gpu").
PRESETS_2D: dict[str, Train2DConfig] = {
    # A few steps: checks that everything runs (tests, CI), learns next to nothing.
    "smoke": Train2DConfig(steps=10, batch_size=16, patch_size=64, val_every=5, val_planes=2),
    # About a minute on 2 CPU cores for three 64x256x256 volumes (patch model, batches of 128).
    "cpu": Train2DConfig(steps=1500, val_every=250),
    # Closer to the paper's budget: many more patches, bigger U-Net crops.
    "gpu": Train2DConfig(steps=20000, batch_size=256, patch_size=256, val_every=1000, val_planes=16),
}


def build_model_2d(config: Model2DConfig | Train2DConfig) -> torch.nn.Module:
    """Return an untrained network of the kind and input channels that ``config`` asks for."""
    config = config.validate().model_config if isinstance(config, Train2DConfig) else config
    if config.model == "patch":
        return PatchCNN(config.in_channels, n_classes=2, dropout=config.dropout)
    return UNet2D(config.in_channels, base_channels=config.base_channels, depth=config.depth)


def model_kind(model) -> str:
    """Return ``"patch"`` or ``"unet2d"`` for a 2D pseudo-labeller, else raise NeurosegInputError."""
    if isinstance(model, PatchCNN):
        return "patch"
    if isinstance(model, UNet2D):
        return "unet2d"
    raise NeurosegInputError(
        f"expected a PatchCNN or UNet2D (TrainedModel.network of a 2D model), got {type(model).__name__}.")
