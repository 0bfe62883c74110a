"""The volumes an experiment runs on: raw training and test stacks with labels, spacing and content digests.

Introduced in chapter 1 (``01_data``, which writes the book's synthetic data set to the working folder) and
used by :mod:`neuroseg_lite.experiment`. A :class:`Data` keeps the images raw, as read: the networks normalise
them themselves with the data's :class:`~neuroseg_lite.intensity.IntensityNormalization`, which every model
file stores. Its digests identify the data in cache keys, so two data sets never share a cached result.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from neuroseg_lite import __version__, io, synth
from neuroseg_lite._checks import NeurosegInputError, check_same_shape, check_spacing, check_volume
from neuroseg_lite.cache import array_digest, atomic_write, content_key
from neuroseg_lite.intensity import IntensityNormalization

__all__ = ["Data", "prepare_data", "synthetic_data", "default_workdir"]


def default_workdir() -> Path:
    """The working folder: ``$NEUROSEG_WORKDIR`` if set, else ``./neuroseg_work``."""
    return Path(os.environ.get("NEUROSEG_WORKDIR", "neuroseg_work"))


@dataclass(eq=False)
class Data:
    """Training and test volumes, ready for every method.

    Attributes
    ----------
    name : str
        Names the data in results rows and cache folders (for browsing: cache hits are decided by contents).
    train_images : list of ndarray of shape (Z, Y, X)
        Raw intensities, as read (never modified).
    train_labels : list of bool ndarray of shape (Z, Y, X)
    test_image : ndarray of shape (Z, Y, X)
        Raw intensities.
    test_labels : bool ndarray of shape (Z, Y, X)
    spacing : tuple of 3 floats
        Micrometres (z, y, x).
    intensity_normalization : IntensityNormalization
        What the networks see of the raw images (default: percentiles 1 and 99.8 mapped to 0 and 1).
    val_image : ndarray of shape (Z, Y, X), optional
        Raw intensities of a densely labelled validation volume, neither a training nor the test volume: the
        learning curves of chapter 5 are scored on it (None: no learning curves).
    val_labels : bool ndarray of shape (Z, Y, X), optional
    """

    name: str
    train_images: list
    train_labels: list
    test_image: np.ndarray
    test_labels: np.ndarray
    spacing: tuple
    intensity_normalization: IntensityNormalization = field(default_factory=IntensityNormalization)
    val_image: np.ndarray | None = None
    val_labels: np.ndarray | None = None

    def normalized(self, image) -> np.ndarray:
        """The networks' view of a raw image (float32, a new array)."""
        return self.intensity_normalization.apply(image)

    @cached_property
    def train_images_normalized(self) -> list:
        """Every training image as the networks see it."""
        return [self.normalized(image) for image in self.train_images]

    @cached_property
    def test_image_normalized(self) -> np.ndarray:
        """The test image as the networks see it."""
        return self.normalized(self.test_image)

    @cached_property
    def train_digest(self) -> str:
        """Content key of the training images, labels and spacing."""
        return content_key({"arrays": array_digest(*self.train_images, *self.train_labels),
                            "spacing": self.spacing})

    @cached_property
    def test_digest(self) -> str:
        """Content key of the test image, labels and spacing."""
        return content_key({"arrays": array_digest(self.test_image, self.test_labels), "spacing": self.spacing})

    @cached_property
    def val_digest(self) -> str | None:
        """Content key of the validation image, labels and spacing (None without a validation volume)."""
        if self.val_image is None:
            return None
        return content_key({"arrays": array_digest(self.val_image, self.val_labels), "spacing": self.spacing})

    def __repr__(self) -> str:
        val = "" if self.val_image is None else f" + 1 validation volume of shape {self.val_image.shape}"
        return (f"Data(name={self.name!r}, {len(self.train_images)} training volume(s) + 1 test volume of shape "
                f"{self.test_image.shape}{val}, spacing {self.spacing} µm)")


def prepare_data(train_images, train_labels, test_image, test_labels, spacing, *, name: str,
                 intensity_normalization: IntensityNormalization | None = None, val_image=None,
                 val_labels=None) -> Data:
    """Check the volumes for :class:`~neuroseg_lite.experiment.Pipeline` (inputs are not modified).

    Parameters
    ----------
    train_images, train_labels : sequences of ndarray of shape (Z, Y, X)
        Raw intensities and binary or instance labels; volume ``i`` of one matches volume ``i`` of the other.
    test_image, test_labels : ndarray of shape (Z, Y, X)
    spacing : tuple of 3 floats
        Micrometres (z, y, x).
    name : str
        A short identifier (letters, digits, ``-`` and ``_``), used in results rows and cache folder names.
    intensity_normalization : IntensityNormalization, optional
        Default: percentiles 1 and 99.8 mapped to 0 and 1.
    val_image, val_labels : ndarray of shape (Z, Y, X), optional
        A held-out, densely labelled validation volume (for real data, an annotated crop that is neither
        training nor test data), for learning curves; give both or neither.
    """
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "-_" for c in name):
        raise NeurosegInputError(f"data name {name!r} must be non-empty letters, digits, '-' or '_'.")
    if len(train_images) != len(train_labels) or len(train_images) == 0:
        raise NeurosegInputError(
            f"got {len(train_images)} training images and {len(train_labels)} label volumes; "
            "pass one label volume per image, at least one of each.")
    if (val_image is None) != (val_labels is None):
        raise NeurosegInputError("give both val_image and val_labels (a densely labelled validation volume), or "
                                 "neither.")
    has_val = val_image is not None
    roles = [f"training volume {i}" for i in range(len(train_images))] + ["test volume"] + (
        ["validation volume"] if has_val else [])
    all_images = list(train_images) + [test_image] + ([val_image] if has_val else [])
    all_labels = list(train_labels) + [test_labels] + ([val_labels] if has_val else [])
    images, labels = [], []
    for role, image, label in zip(roles, all_images, all_labels):
        image = check_volume(image, name=f"{role} image")
        label = check_volume(label, name=f"{role} labels")
        check_same_shape(image, label, names=(f"{role} image", f"{role} labels"))
        images.append(image)
        labels.append(io.binarize_labels(label, name=f"{role} labels"))
    n_train = len(train_images)
    data = Data(name=name, train_images=images[:n_train], train_labels=labels[:n_train],
                test_image=images[n_train], test_labels=labels[n_train], spacing=check_spacing(spacing),
                intensity_normalization=intensity_normalization or IntensityNormalization(),
                val_image=images[-1] if has_val else None, val_labels=labels[-1] if has_val else None)
    data.train_images_normalized, data.test_image_normalized  # noqa: B018 -- refuse unusable images now
    return data


def synthetic_data(*, preset: str = "tutorial", seed: int = 0, n_train: int = 3, n_val: int = 0,
                   workdir=None) -> Data:
    """The synthetic dataset of the book (``n_train`` training volumes + 1 test volume), ready for a Pipeline.

    The raw volumes are saved as TIFF stacks under ``workdir/data/`` the first time (chapter 1 does this), with
    a record of the generator settings they came from, and read back from there afterwards, so every chapter
    works on the same files. Files from other settings (or an interrupted write) are made anew.

    Parameters
    ----------
    preset : str
        A preset of :data:`neuroseg_lite.synthconfig.PRESETS` (``"tutorial"`` for the book, ``"tiny"`` for smoke runs).
    seed : int
    n_train : int
    n_val : {0, 1}
        1: one more volume of the same generator, for learning curves (:attr:`Data.val_image`); the training
        and test volumes are the same with or without it.
    workdir : path-like, optional

    Returns
    -------
    Data
        Named ``synth-{preset}-seed{seed}``.
    """
    name = f"synth-{preset}-seed{seed}"
    if preset not in synth.PRESETS:
        raise NeurosegInputError(f"unknown synthetic preset {preset!r}; choose one of {sorted(synth.PRESETS)}.")
    if n_val not in (0, 1):
        raise NeurosegInputError(f"n_val must be 0 or 1 (one validation volume), got {n_val!r}.")
    folder = (Path(workdir) if workdir is not None else default_workdir()) / "data" / name
    roles = [f"train{i}" for i in range(n_train)] + ["test"] + ["val"] * n_val
    files = [(folder / f"{role}_image.tif", folder / f"{role}_labels.tif") for role in roles]
    record = folder / "generator.json"
    # n_val enters the key only when asked for, so the files of earlier releases' data sets stay valid
    key = content_key({"config": asdict(synth.PRESETS[preset]), "seed": seed, "n_train": n_train,
                       "package": __version__, **({"n_val": n_val} if n_val else {})})
    try:
        current = json.loads(record.read_text()).get("key") == key
    except (OSError, ValueError):
        current = False
    if not current or not all(a.exists() and b.exists() for a, b in files):
        dataset = synth.make_dataset(n_train=n_train, seed=seed, preset=preset, n_val=n_val)
        volumes = (list(zip(dataset.train_images, dataset.train_labels)) + [(dataset.test_image, dataset.test_labels)]
                   + list(zip(dataset.val_images, dataset.val_labels)))
        folder.mkdir(parents=True, exist_ok=True)
        record.unlink(missing_ok=True)  # the files are incomplete until the record is back
        for (image, labels), (image_file, label_file) in zip(volumes, files):
            io.write_stack(image_file, image, spacing=dataset.spacing, overwrite=True)
            io.write_stack(label_file, labels.astype(np.uint8), spacing=dataset.spacing, overwrite=True)
        atomic_write(record, lambda tmp: tmp.write_text(json.dumps({"key": key, "preset": preset, "seed": seed,
                                                                    "n_train": n_train, "n_val": n_val})))
    stacks = [io.load_pair(image_file, label_file) for image_file, label_file in files]
    train, test, val = stacks[:n_train], stacks[n_train], stacks[n_train + 1:]
    return prepare_data([s[0] for s in train], [s[1] for s in train], test[0], test[1], test[2], name=name,
                        val_image=val[0][0] if val else None, val_labels=val[0][1] if val else None)
