"""A small 3D U-Net (Cicek et al. 2016) for voxel-wise segmentation of neuronal bodies.

Introduced in chapter 5 (``05_train_3d``).

Each resolution level has two 3x3x3 convolutions, each followed by a normalisation and a ReLU. The convolutions are
zero-padded, so the output has exactly the input's size (Cicek used unpadded convolutions and predicted a smaller
centre; padding keeps tiling and the loss masks simple). Levels are joined by max pooling on the way down and by
transposed convolutions (or trilinear upsampling) on the way up, with skip connections concatenated, and a final
1x1x1 convolution gives one foreground logit per voxel.

Microscopy voxels are anisotropic (about 2 um in z for 0.9 um in y and x), so by default the first pooling only
halves Y and X, making the voxels of the next level nearly isotropic; later poolings halve all three axes.
Simplification against Cicek: both convolutions of a level have the same width (Cicek doubled the width inside
each encoder block).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from neuroseg_lite._checks import NeurosegInputError

__all__ = [
    "UNet3DConfig",
    "UNet3D",
    "n_parameters",
    "required_divisor",
    "pool_factors",
]

_NORMS = ("batch", "instance", "none")
_UPSAMPLINGS = ("transpose", "trilinear")


@dataclass(frozen=True)
class UNet3DConfig:
    """Architecture of :class:`UNet3D`.

    Parameters
    ----------
    in_channels : int
        Channels of the input volume (1 for a single fluorescence channel).
    base_channels : int
        Feature maps at the first level; level ``i`` has ``base_channels * 2**i``.
    depth : int
        Number of poolings (the network has ``depth + 1`` resolution levels; Cicek used 3).
    norm : {"batch", "instance", "none"}
        Normalisation after every 3x3x3 convolution. ``"batch"`` follows Cicek; ``"instance"`` does not depend on
        the batch size (useful with batches of one or two patches).
    anisotropic_first_pool : bool
        If True the first pooling is (1, 2, 2) (Y and X only), the later ones (2, 2, 2).
    upsample : {"transpose", "trilinear"}
        Learned transposed convolution (Cicek) or trilinear interpolation followed by a 1x1x1 convolution.
    dropout : float
        Channel dropout (``nn.Dropout3d``) applied at the bottleneck, 0 to disable.
    """

    in_channels: int = 1
    base_channels: int = 16
    depth: int = 3
    norm: str = "batch"
    anisotropic_first_pool: bool = True
    upsample: str = "transpose"
    dropout: float = 0.0

    def __post_init__(self):
        if int(self.in_channels) < 1:
            raise NeurosegInputError(f"in_channels must be >= 1, got {self.in_channels}.")
        if int(self.base_channels) < 1:
            raise NeurosegInputError(f"base_channels must be >= 1, got {self.base_channels} (try 8 or 16).")
        if not 1 <= int(self.depth) <= 6:
            raise NeurosegInputError(f"depth (number of poolings) must be between 1 and 6, got {self.depth}.")
        if self.norm not in _NORMS:
            raise NeurosegInputError(f"norm must be one of {_NORMS}, got {self.norm!r}.")
        if self.upsample not in _UPSAMPLINGS:
            raise NeurosegInputError(f"upsample must be one of {_UPSAMPLINGS}, got {self.upsample!r}.")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise NeurosegInputError(f"dropout must be in [0, 1), got {self.dropout}.")


def pool_factors(config: UNet3DConfig) -> list[tuple[int, int, int]]:
    """Pooling factor (z, y, x) of each level transition, from the top of the network down.

    Examples
    --------
    >>> pool_factors(UNet3DConfig(depth=3))  # the first pooling leaves z alone
    [(1, 2, 2), (2, 2, 2), (2, 2, 2)]
    """
    factors = [(2, 2, 2)] * config.depth
    if config.anisotropic_first_pool:
        factors[0] = (1, 2, 2)
    return factors


def required_divisor(config: UNet3DConfig) -> tuple[int, int, int]:
    """Return (dz, dy, dx): every input size along an axis must be a multiple of this for the skips to line up.

    Examples
    --------
    >>> required_divisor(UNet3DConfig())
    (4, 8, 8)
    >>> required_divisor(UNet3DConfig(depth=2, anisotropic_first_pool=False))
    (4, 4, 4)
    """
    dz = dy = dx = 1
    for fz, fy, fx in pool_factors(config):
        dz, dy, dx = dz * fz, dy * fy, dx * fx
    return dz, dy, dx


def n_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameters (weights and biases) of ``model``.

    Examples
    --------
    >>> n_parameters(torch.nn.Conv3d(1, 4, kernel_size=3))  # 4 * 27 weights, 4 biases
    112
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _norm_layer(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    return nn.Identity()


class _ConvBlock(nn.Sequential):
    """Two (3x3x3 convolution -> norm -> ReLU) layers, padded to keep the size."""

    def __init__(self, in_channels: int, out_channels: int, norm: str):
        # A bias right before a normalisation layer is cancelled by its mean subtraction.
        bias = norm == "none"
        super().__init__(
            nn.Conv3d(in_channels, out_channels, 3, padding=1, bias=bias),
            _norm_layer(norm, out_channels),
            nn.ReLU(inplace=True),
            nn.Conv3d(out_channels, out_channels, 3, padding=1, bias=bias),
            _norm_layer(norm, out_channels),
            nn.ReLU(inplace=True),
        )


class _Up(nn.Module):
    """Upsample by ``factor`` and halve the channels."""

    def __init__(self, in_channels: int, out_channels: int, factor: tuple[int, int, int], mode: str):
        super().__init__()
        if mode == "transpose":
            self.up = nn.ConvTranspose3d(in_channels, out_channels, kernel_size=factor, stride=factor)
        else:
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=factor, mode="trilinear", align_corners=False),
                nn.Conv3d(in_channels, out_channels, 1),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(x)


class UNet3D(nn.Module):
    """3D U-Net mapping (N, C, Z, Y, X) volumes to (N, 1, Z, Y, X) foreground logits.

    Parameters
    ----------
    config : UNet3DConfig, optional
        Architecture; the defaults give about 1.4 million parameters.

    Notes
    -----
    Z, Y and X of the input must be multiples of ``required_divisor(config)`` ((4, 8, 8) for the defaults);
    :func:`neuroseg_lite.infer.predict_volume` pads whole volumes for you. The model also runs in the
    ``torch.channels_last_3d`` memory format (``model.to(memory_format=torch.channels_last_3d)``).

    Examples
    --------
    >>> model = UNet3D(UNet3DConfig(base_channels=4, depth=2))
    >>> model.divisor
    (2, 4, 4)
    >>> tuple(model(torch.zeros(1, 1, 4, 16, 16)).shape)  # one logit per voxel
    (1, 1, 4, 16, 16)
    """

    def __init__(self, config: UNet3DConfig | None = None):
        super().__init__()
        self.config = config or UNet3DConfig()
        cfg = self.config
        widths = [cfg.base_channels * 2**level for level in range(cfg.depth + 1)]
        self.factors = pool_factors(cfg)
        self.divisor = required_divisor(cfg)

        self.encoders = nn.ModuleList()
        self.pools = nn.ModuleList()
        in_ch = cfg.in_channels
        for level in range(cfg.depth):
            self.encoders.append(_ConvBlock(in_ch, widths[level], cfg.norm))
            self.pools.append(nn.MaxPool3d(self.factors[level], stride=self.factors[level]))
            in_ch = widths[level]
        self.bottleneck = _ConvBlock(in_ch, widths[cfg.depth], cfg.norm)
        self.dropout = nn.Dropout3d(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for level in reversed(range(cfg.depth)):
            self.ups.append(_Up(widths[level + 1], widths[level], self.factors[level], cfg.upsample))
            self.decoders.append(_ConvBlock(2 * widths[level], widths[level], cfg.norm))
        self.head = nn.Conv3d(widths[0], 1, kernel_size=1)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise NeurosegInputError unless ``x`` is (N, C, Z, Y, X) with sizes divisible by ``self.divisor``."""
        if x.ndim != 5:
            raise NeurosegInputError(
                f"UNet3D expects a 5D tensor (N, C, Z, Y, X), got shape {tuple(x.shape)}. "
                "For one (Z, Y, X) volume use volume[None, None].")
        if x.shape[1] != self.config.in_channels:
            raise NeurosegInputError(
                f"UNet3D was built for {self.config.in_channels} input channel(s) but got {x.shape[1]} "
                f"(input shape {tuple(x.shape)}).")
        sizes = tuple(x.shape[2:])
        if any(s % d for s, d in zip(sizes, self.divisor)):
            padded = tuple(-(-s // d) * d for s, d in zip(sizes, self.divisor))
            raise NeurosegInputError(
                f"UNet3D input (Z, Y, X) = {sizes} is not divisible by {self.divisor} (the product of the pooling "
                f"factors, see required_divisor(config)). Pad or crop to a multiple, e.g. {padded}, or use "
                "neuroseg_lite.infer.predict_volume, which pads whole volumes.")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        skips = []
        for encoder, pool in zip(self.encoders, self.pools):
            x = encoder(x)
            skips.append(x)
            x = pool(x)
        x = self.dropout(self.bottleneck(x))
        for up, decoder, skip in zip(self.ups, self.decoders, reversed(skips)):
            x = decoder(torch.cat([up(x), skip], dim=1))
        return self.head(x)

    def summary(self) -> str:
        """One-paragraph description: configuration, level widths, input divisor and parameter count."""
        cfg = self.config
        widths = [cfg.base_channels * 2**level for level in range(cfg.depth + 1)]
        return (f"UNet3D: {n_parameters(self):,} parameters; levels {cfg.depth + 1} with widths {widths}; "
                f"poolings {self.factors}; input sizes must be multiples of {self.divisor}; norm={cfg.norm}, "
                f"upsample={cfg.upsample}, dropout={cfg.dropout}, in_channels={cfg.in_channels}.")

    def extra_repr(self) -> str:
        return f"parameters={n_parameters(self):,}, divisor={self.divisor}"
