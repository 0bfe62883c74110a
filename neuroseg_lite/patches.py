"""Random training patches for the 3D U-Net: where to cut them, and how to augment them.

Introduced in chapter 5 (``05_train_3d``), used by :func:`neuroseg_lite.train.train_3d` (and re-exported by
:mod:`neuroseg_lite.train`).
"""
from __future__ import annotations

import numpy as np

from neuroseg_lite._checks import NeurosegInputError

__all__ = ["augment_patch", "PatchSampler"]


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

    def batch(self, size: int) -> dict[str, np.ndarray]:
        """``size`` patches stacked to arrays of shape (size, 1, z, y, x)."""
        patches = [self.sample() for _ in range(size)]
        return {key: np.stack([p[key] for p in patches])[:, None] for key in patches[0]}
