"""Random training samples for both networks: where to cut them, and how to augment them.

3D patches for the U-Net are introduced in chapter 5 (``05_train_3d``); the 2D pseudo-labeller's patch centres
among annotated pixels and crops of annotated planes in chapter 3 (``03_train_2d``). Both are drawn by
:mod:`neuroseg_lite.train`.
"""
from __future__ import annotations

import numpy as np
import torch

from neuroseg_lite._checks import NeurosegInputError
from neuroseg_lite.models2d import PATCH_CENTRE, PATCH_SIZE, reflect_positions
from neuroseg_lite.resume import generator_state, set_generator_state

__all__ = ["augment_patch", "PatchSampler", "AnnotatedPixelSampler", "patch_batch_2d", "crop_batch_2d"]


def augment_patch(image: np.ndarray, masks=(), *, rng: np.random.Generator, geometric: bool = True,
                  intensity: bool = True):
    """Randomly flip/rotate a patch and its masks identically; change the image's intensities only.

    Parameters
    ----------
    image : ndarray of shape (z, y, x), float
    masks : sequence of ndarray of shape (z, y, x)
        Targets, weights or boolean masks; they get exactly the image's geometric transform and nothing else.
    rng : numpy.random.Generator
    geometric : bool
        Flips along each of the three axes (each with probability 1/2) and a rotation by a random multiple of
        90 degrees in the (Y, X) plane only: voxels are anisotropic, so rotations involving Z would change the
        physical shape of the cells. Non-square (y, x) patches only get 0 or 180 degrees.
    intensity : bool
        Each with probability 1/2: gamma (on the patch's own min-max range), scale, shift.

    Returns
    -------
    image : ndarray of shape (z, y, x), float32
    masks : list of ndarray
        New arrays; the inputs are not modified.
    """
    arrays = [image] + list(masks)
    shape = image.shape
    if any(a.shape != shape for a in arrays):
        raise NeurosegInputError(
            f"augment_patch needs the image and masks to share one shape, got {[a.shape for a in arrays]}.")
    if geometric:
        flips = tuple(axis for axis in range(3) if rng.random() < 0.5)
        turns = int(rng.integers(4)) if shape[1] == shape[2] else 2 * int(rng.integers(2))
        if flips:
            arrays = [np.flip(a, axis=flips) for a in arrays]
        if turns:
            arrays = [np.rot90(a, k=turns, axes=(1, 2)) for a in arrays]
    arrays = [np.ascontiguousarray(a) for a in arrays]
    out = arrays[0].astype(np.float32, copy=True)
    if intensity:
        if rng.random() < 0.5:
            low, high = float(out.min()), float(out.max())
            if high > low:
                gamma = float(np.exp(rng.uniform(-0.4, 0.4)))
                out = low + (high - low) * ((out - low) / (high - low)) ** gamma
        if rng.random() < 0.5:
            out = out * float(np.exp(rng.uniform(-0.2, 0.2)))
        if rng.random() < 0.5:
            out = out + float(rng.uniform(-0.1, 0.1))
        out = out.astype(np.float32, copy=False)
    return out, arrays[1:]


class PatchSampler:
    """Random (z, y, x) training patches from a list of volumes, optionally augmented.

    Parameters
    ----------
    images : list of ndarray of shape (Z, Y, X), float32
    targets : list of ndarray of shape (Z, Y, X), float32
        Dense targets (manual labels and pseudo-labels).
    annotated : list of ndarray of shape (Z, Y, X), bool
    pseudo_masks : list of ndarray of shape (Z, Y, X), bool, optional
        Voxels carrying a pseudo-label; None for sparse training.
    patch_size : tuple of 3 int
    foreground_fraction : float
        Probability of centring a patch near (within a quarter patch of) an annotated voxel whose target is
        foreground; the other patches are placed uniformly.
    augment : bool
        Apply :func:`augment_patch`.
    rng : numpy.random.Generator or int, optional
    max_tries : int
        Patches with no annotated and no pseudo-labelled voxel have zero weight for every lambda and are drawn
        again, at most this many times per patch.

    Attributes
    ----------
    n_skipped : int
        Patches redrawn because they had zero weight.
    """

    def __init__(self, images, targets, annotated, *, pseudo_masks=None, patch_size=(16, 64, 64),
                 foreground_fraction: float = 0.5, augment: bool = True, rng=None, max_tries: int = 1000):
        if not (len(images) == len(targets) == len(annotated)) or not images:
            raise NeurosegInputError(
                f"PatchSampler needs as many images ({len(images)}), targets ({len(targets)}) and annotated masks "
                f"({len(annotated)}), at least one.")
        self.patch_size = tuple(int(s) for s in patch_size)
        for i, image in enumerate(images):
            if any(p > s for p, s in zip(self.patch_size, image.shape)):
                smaller = tuple(min(p, s) for p, s in zip(self.patch_size, image.shape))
                raise NeurosegInputError(
                    f"patch_size {self.patch_size} is larger than volume {i} of shape {image.shape}. Use a smaller "
                    f"patch_size (at most {smaller}, rounded down to the model's required divisor) or pad the volume.")
        self.images = list(images)
        self.targets = list(targets)
        self.annotated = list(annotated)
        if pseudo_masks is None:
            pseudo_masks = [None] * len(images)
        self.support = [a if p is None else (a | p) for a, p in zip(self.annotated, pseudo_masks)]
        self.pseudo_masks = [np.zeros(a.shape, bool) if p is None else p for a, p in zip(self.annotated, pseudo_masks)]
        if not any(s.any() for s in self.support):
            raise NeurosegInputError(
                "no voxel is annotated or pseudo-labelled, so every patch has zero weight; check the annotated masks.")
        self.foreground = [np.flatnonzero(a & (t > 0.5)) for a, t in zip(self.annotated, self.targets)]
        sizes = np.array([im.size for im in self.images], dtype=float)
        self.volume_probs = sizes / sizes.sum()
        self.foreground_fraction = float(foreground_fraction)
        self.augment = augment
        self.rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        self.max_tries = int(max_tries)
        self.n_skipped = 0

    def _corner(self, index: int) -> tuple[int, ...]:
        shape = self.images[index].shape
        fg = self.foreground[index]
        if fg.size and self.rng.random() < self.foreground_fraction:
            centre = np.unravel_index(fg[self.rng.integers(fg.size)], shape)
            corner = []
            for c, p, s in zip(centre, self.patch_size, shape):
                jitter = int(self.rng.integers(-(p // 4), p // 4 + 1))
                corner.append(int(np.clip(c + jitter - p // 2, 0, s - p)))
            return tuple(corner)
        return tuple(int(self.rng.integers(s - p + 1)) for p, s in zip(self.patch_size, shape))

    def sample(self) -> dict[str, np.ndarray]:
        """One patch: dict with "image" (float32), "target" (float32), "annotated" and "pseudo" (bool)."""
        for _ in range(self.max_tries):
            index = int(self.rng.choice(len(self.images), p=self.volume_probs))
            corner = self._corner(index)
            window = tuple(slice(c, c + p) for c, p in zip(corner, self.patch_size))
            if self.support[index][window].any():
                break
            self.n_skipped += 1
        else:
            raise NeurosegInputError(
                f"{self.max_tries} patches of size {self.patch_size} in a row held no annotated or pseudo-labelled "
                "voxel; annotations are too sparse for this patch size. Use a larger patch_size (in z) or annotate "
                "more planes.")
        image = self.images[index][window]
        masks = [self.targets[index][window], self.annotated[index][window], self.pseudo_masks[index][window]]
        if self.augment:
            image, masks = augment_patch(image, masks, rng=self.rng)
        return {"image": np.asarray(image, dtype=np.float32), "target": np.asarray(masks[0], dtype=np.float32),
                "annotated": np.asarray(masks[1], dtype=bool), "pseudo": np.asarray(masks[2], dtype=bool)}

    def state_dict(self) -> dict:
        """Where the sampler is in its random sequence (plain data; see :mod:`neuroseg_lite.resume`)."""
        return {"rng": generator_state(self.rng), "n_skipped": self.n_skipped}

    def load_state_dict(self, state: dict) -> None:
        """Continue the random sequence of :meth:`state_dict` (the Generator is changed in place)."""
        set_generator_state(self.rng, state["rng"])
        self.n_skipped = int(state["n_skipped"])

    def batch(self, size: int) -> dict[str, np.ndarray]:
        """``size`` patches stacked to arrays of shape (size, 1, z, y, x)."""
        patches = [self.sample() for _ in range(size)]
        return {key: np.stack([p[key] for p in patches])[:, None] for key in patches[0]}


# ----------------------------------------------------------------------------- 2D: annotated pixels and slices

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


def patch_batch_2d(volumes, sampler, rng, config):
    """A batch of augmented 32x32 patches centred on annotated pixels, with their classes (the patch model)."""
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


def crop_batch_2d(volumes, labels, annotated, planes, rng, config, crop):
    """A batch of augmented crops of annotated planes: images and (label, annotated) targets (the 2D U-Net)."""
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
