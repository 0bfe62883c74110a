"""The two 2D networks that make pseudo-labels: a 32x32 patch classifier and a small 2D U-Net.

Introduced in chapter 3 (``03_train_2d``); :func:`PatchCNN.dense_logits` is the subject of
chapter 4 (``04_pseudo_labels``). Training and prediction live in :mod:`neuroseg_lite.pseudolabel`.

The patch classifier follows the layer list the paper's authors published as a Caffe model:
conv 32@5x5 -> ReLU -> maxpool 2 -> conv 64@3x3 -> ReLU -> maxpool 2 -> conv 64@3x3 -> ReLU ->
FC 128 -> ReLU -> dropout -> FC 128 -> ReLU -> dropout -> FC n_classes, unpadded convolutions.
It labels the *centre* pixel of its patch; with an even patch size the centre is defined here as
the pixel at patch index (16, 16), i.e. a pixel (i, j) is classified from image rows i-16 .. i+15
and columns j-16 .. j+15.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "PATCH_SIZE",
    "PATCH_CENTRE",
    "PatchCNN",
    "UNet2D",
    "reflect_indices",
    "reflect_pad2d",
    "naive_logits",
]

PATCH_SIZE = 32
PATCH_CENTRE = 16  # pixel (i, j) sits at index (16, 16) of its patch: rows i-16 .. i+15
_PAD_BEFORE = PATCH_CENTRE
_PAD_AFTER = PATCH_SIZE - PATCH_CENTRE - 1


def reflect_indices(size: int, before: int, after: int) -> np.ndarray:
    """Source indices that reflect-pad an axis of length ``size`` (edge pixel not repeated).

    Equals ``np.pad(..., mode="reflect")`` whenever the pad is shorter than the axis. Longer pads keep
    reflecting back and forth (period ``2 * (size - 1)``), so tiny images still get a well-defined
    border; an axis of length 1 is repeated (reflection is undefined there).

    Returns
    -------
    ndarray of int64, shape (before + size + after,)
    """
    positions = np.arange(-before, size + after)
    if size == 1:
        return np.zeros_like(positions)
    period = 2 * (size - 1)
    folded = np.mod(positions, period)
    return np.where(folded < size, folded, period - folded).astype(np.int64)


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
