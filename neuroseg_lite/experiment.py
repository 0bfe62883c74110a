"""The paper's comparison as one function, with a working folder that caches every trained model.

Introduced in chapter 7 (``07_sparsity_sweep``); chapters 3-6 use the same :class:`Pipeline` step by step,
so a model trained in one chapter is reloaded by the next instead of being trained again.

Methods compared (one row each in the results table):

``"2d"``
    the 2D pseudo-labeller applied slice by slice;
``"3d_sparse"``
    the 3D U-Net trained on the annotated voxels only (lambda = 0, Cicek et al. 2016);
``"3d_pseudo"``
    the 3D U-Net trained on manual labels plus the 2D model's pseudo-labels with weight lambda;
``"3d_dense"``
    the 3D U-Net trained on dense labels: the upper bound, independent of the sparsity level.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from neuroseg_lite import infer, io, metrics, pseudolabel, sparse, synth, train, unet3d
from neuroseg_lite._checks import NeurosegInputError, check_same_shape, check_spacing, check_volume
from neuroseg_lite.utils import select_device

__all__ = [
    "METHODS",
    "ExperimentPreset",
    "PRESETS",
    "Data",
    "prepare_data",
    "Pipeline",
    "compare",
    "sweep",
    "default_workdir",
    "preset_variant",
    "synthetic_data",
]

METHODS = ("2d", "3d_sparse", "3d_pseudo", "3d_dense")
NORMALIZATION = {"method": "percentile", "low": 1.0, "high": 99.8}
# Columns that identify a run: a results file is resumed by skipping rows whose key is already there.
KEY_COLUMNS = ("data", "preset", "method", "n_slices", "lam", "pseudo_mode", "normalization", "seed")


@dataclass(frozen=True)
class ExperimentPreset:
    """Training budgets for one run of the comparison.

    Attributes
    ----------
    name : str
    train_2d : str
        Key of :data:`neuroseg_lite.pseudolabel.PRESETS_2D`.
    train_3d : str
        Key of :data:`neuroseg_lite.train.PRESETS_3D`.
    model_3d : dict
        Overrides of :class:`neuroseg_lite.unet3d.UNet3DConfig`.
    overrides_2d, overrides_3d : dict
        Overrides of the 2D and 3D training presets (e.g. the number of steps).
    prior_correction : bool
        Correct the class-balanced 2D model's probabilities to the foreground share of the annotated voxels
        (:func:`neuroseg_lite.pseudolabel.correct_prior`) wherever they are used: the 2D method's predictions
        and the pseudo-labels. Off in the paper's method; an ablation of chapter 7.
    shared_2d_name : str, optional
        Name of a preset whose cached 2D models this one reuses because it trains them identically (set by
        :func:`preset_variant`); None: its own.
    """

    name: str
    train_2d: str
    train_3d: str
    model_3d: dict = field(default_factory=dict)
    overrides_2d: dict = field(default_factory=dict)
    overrides_3d: dict = field(default_factory=dict)
    prior_correction: bool = False
    shared_2d_name: str | None = None

    @property
    def name_2d(self) -> str:
        """The name under which this preset's 2D models are cached."""
        return self.shared_2d_name or self.name


PRESETS = {
    # Seconds per model: for tests and the notebooks' SMOKE switch.
    "smoke": ExperimentPreset("smoke", train_2d="smoke", train_3d="smoke", model_3d={"base_channels": 8, "depth": 2}),
    # Minutes per model on 2 CPU cores: the book's default run.
    "cpu": ExperimentPreset("cpu", train_2d="cpu", train_3d="cpu"),
    # About half a minute per 3D model on 2 CPU cores: for grids of many runs (chapters 7 and 8). A U-Net with 8
    # base channels (2.2x faster per step than 16) and a 3x higher learning rate. Chosen, before any pseudo-label
    # run, as the cheapest budget tried whose dense and sparse 3D models did not collapse on any of 3 seeds and
    # whose dense Dice was within 0.01 of a 600-step run: see benchmarks/calibrate_sweep_preset.py.
    "sweep": ExperimentPreset("sweep", train_2d="cpu", train_3d="cpu", model_3d={"base_channels": 8},
                              overrides_2d={"steps": 500}, overrides_3d={"steps": 400, "lr": 3e-3}),
    # Paper-like budgets for a GPU (Colab).
    "gpu": ExperimentPreset("gpu", train_2d="gpu", train_3d="gpu", model_3d={"base_channels": 32, "depth": 4}),
}


def preset_variant(preset, **changes) -> ExperimentPreset:
    """A preset with some fields changed and a name that says which, so its cached models are kept apart.

    Example: ``preset_variant("sweep", prior_correction=True)`` is named ``"sweep+prior_correction"``.
    """
    base = _resolve_preset(preset)
    valid = {f.name for f in dataclasses.fields(ExperimentPreset)} - {"name"}
    unknown = sorted(set(changes) - valid)
    if unknown:
        raise NeurosegInputError(f"unknown ExperimentPreset field(s) {unknown}; valid fields: {sorted(valid)}.")
    tag = "+".join(_tag(key, value) for key, value in sorted(changes.items()))
    same_2d = not {"train_2d", "overrides_2d", "shared_2d_name"} & set(changes)
    return dataclasses.replace(base, name=f"{base.name}+{tag}" if tag else base.name,
                               shared_2d_name=base.name_2d if same_2d else None, **changes)


def _resolve_preset(preset) -> ExperimentPreset:
    """``PRESETS[preset]`` for a name, the preset itself for an ExperimentPreset; a clear error otherwise."""
    if isinstance(preset, ExperimentPreset):
        return preset
    if isinstance(preset, str) and preset in PRESETS:
        return PRESETS[preset]
    raise NeurosegInputError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)} or pass an "
                             "ExperimentPreset.")


def _tag(key: str, value) -> str:
    """A file-name-safe label for one changed preset field."""
    if value is True:
        return key
    if isinstance(value, (bool, int, float, str)) and all(c.isalnum() or c in "-_." for c in str(value)):
        return f"{key}-{value}"
    return f"{key}-{hashlib.sha1(repr(value).encode()).hexdigest()[:8]}"


def default_workdir() -> Path:
    """The working folder: ``$NEUROSEG_WORKDIR`` if set, else ``./neuroseg_work``."""
    return Path(os.environ.get("NEUROSEG_WORKDIR", "neuroseg_work"))


@dataclass
class Data:
    """Normalised training and test volumes, ready for every method.

    Attributes
    ----------
    name : str
        Identifies the data in cache file names and results tables.
    train_images : list of ndarray of shape (Z, Y, X), float32
        Percentile-normalised (see ``NORMALIZATION``).
    train_labels : list of ndarray of shape (Z, Y, X), bool
    test_image : ndarray of shape (Z, Y, X), float32
    test_labels : ndarray of shape (Z, Y, X), bool
    spacing : tuple of 3 floats
        Micrometres (z, y, x).
    """

    name: str
    train_images: list
    train_labels: list
    test_image: np.ndarray
    test_labels: np.ndarray
    spacing: tuple


def prepare_data(train_images, train_labels, test_image, test_labels, spacing, *, name: str) -> Data:
    """Check and normalise the volumes for :class:`Pipeline` (inputs are not modified).

    Parameters
    ----------
    train_images, train_labels : sequences of ndarray of shape (Z, Y, X)
        Raw intensities and binary or instance labels; volume ``i`` of one matches volume ``i`` of the other.
    test_image, test_labels : ndarray of shape (Z, Y, X)
    spacing : tuple of 3 floats
        Micrometres (z, y, x).
    name : str
        A short identifier (letters, digits, ``-`` and ``_``), used in cache file names.
    """
    if not name or not all(c.isalnum() or c in "-_" for c in name):
        raise NeurosegInputError(f"data name {name!r} must be non-empty letters, digits, '-' or '_'.")
    if len(train_images) != len(train_labels) or len(train_images) == 0:
        raise NeurosegInputError(
            f"got {len(train_images)} training images and {len(train_labels)} label volumes; "
            "pass one label volume per image, at least one of each.")
    pairs = []
    for i, (image, labels) in enumerate(zip(list(train_images) + [test_image], list(train_labels) + [test_labels])):
        role = f"training volume {i}" if i < len(train_images) else "test volume"
        image = check_volume(image, name=f"{role} image")
        labels = check_volume(labels, name=f"{role} labels")
        check_same_shape(image, labels, names=(f"{role} image", f"{role} labels"))
        norm = io.normalize_percentile(image, low=NORMALIZATION["low"], high=NORMALIZATION["high"])
        pairs.append((norm, io.binarize_labels(labels)))
    *train, test = pairs
    return Data(name=name, train_images=[p[0] for p in train], train_labels=[p[1] for p in train],
                test_image=test[0], test_labels=test[1], spacing=check_spacing(spacing))


def synthetic_data(*, preset: str = "tutorial", seed: int = 0, n_train: int = 3, workdir=None) -> Data:
    """The synthetic dataset of the book (``n_train`` training volumes + 1 test volume), ready for a Pipeline.

    The raw volumes are saved as TIFF stacks under ``workdir/data/`` the first time (chapter 1 does this),
    and read back from there afterwards, so every chapter works on the same files.

    Parameters
    ----------
    preset : str
        A preset of :data:`neuroseg_lite.synth.PRESETS` (``"tutorial"`` for the book, ``"tiny"`` for smoke runs).
    seed : int
    n_train : int
    workdir : path-like, optional

    Returns
    -------
    Data
        Named ``synth-{preset}-seed{seed}``.
    """
    name = f"synth-{preset}-seed{seed}"
    folder = (Path(workdir) if workdir is not None else default_workdir()) / "data" / name
    files = [folder / f"{role}_{kind}.tif" for role in [f"train{i}" for i in range(n_train)] + ["test"]
             for kind in ("image", "labels")]
    if not all(f.exists() for f in files):
        dataset = synth.make_dataset(n_train=n_train, seed=seed, preset=preset)
        volumes = list(zip(dataset.train_images, dataset.train_labels)) + [(dataset.test_image, dataset.test_labels)]
        folder.mkdir(parents=True, exist_ok=True)
        for (image, labels), (image_file, label_file) in zip(volumes, zip(files[::2], files[1::2])):
            io.write_stack(image_file, image, spacing=dataset.spacing, overwrite=True)
            io.write_stack(label_file, labels.astype(np.uint8), spacing=dataset.spacing, overwrite=True)
    stacks = [io.load_pair(image_file, label_file) for image_file, label_file in zip(files[::2], files[1::2])]
    *train, test = stacks
    return prepare_data([s[0] for s in train], [s[1] for s in train], test[0], test[1], test[2], name=name)


def _lam_tag(lam: float) -> str:
    return f"{lam:g}".replace(".", "p")


class Pipeline:
    """Every stage of the method on one dataset, with trained models cached in a working folder.

    Parameters
    ----------
    data : Data
        From :func:`prepare_data`.
    preset : str or ExperimentPreset
        A key of :data:`PRESETS` (``"smoke"``, ``"sweep"``, ``"cpu"``, ``"gpu"``) or your own preset; cached
        files are named after ``preset.name``, so give a changed preset a new name.
    workdir : path-like, optional
        Where checkpoints, pseudo-labels and predictions are kept (default :func:`default_workdir`).
    device : str
        ``"auto"`` picks CUDA, then MPS, then the CPU.
    progress : bool
        Show progress bars while training and predicting.
    """

    def __init__(self, data: Data, *, preset="cpu", workdir=None, device="auto", progress=True):
        self.data = data
        self.preset = _resolve_preset(preset)
        self.workdir = Path(workdir) if workdir is not None else default_workdir()
        self.device = select_device(device)
        self.progress = progress
        self.timings: dict[str, float] = {}
        self._annotations: dict[int, list] = {}  # n_slices -> simulated annotation, reused by every stage

    @property
    def min_object_voxels(self) -> int:
        """Predicted objects smaller than a 4 um sphere are specks, not neurons: object scores ignore them."""
        voxel_volume = float(np.prod(self.data.spacing))
        return max(1, int(round(4.0 / 3.0 * np.pi * 2.0**3 / voxel_volume)))

    # -- paths -----------------------------------------------------------------------------------------------
    def _path(self, kind: str, stem: str, suffix: str) -> Path:
        folder = self.workdir / kind
        folder.mkdir(parents=True, exist_ok=True)
        # A variant that trains its 2D models exactly like another preset reuses them (same weights, one training).
        name = self.preset.name_2d if kind == "models" and stem.startswith("2d_") else self.preset.name
        return folder / f"{self.data.name}_{name}_{stem}{suffix}"

    def _record_seconds(self, path: Path, seconds: float) -> None:
        """Keep the wall time that produced the cached file ``path``, beside it, for later results rows."""
        self.timings[f"{path.parent.name}/{path.stem}"] = seconds
        _write_json(path.with_name(path.name + ".seconds.json"),
                    {"seconds": round(seconds, 3), "device": str(self.device)})

    def stage_seconds(self, kind: str, stem: str, suffix: str) -> float:
        """Wall time recorded for the cached file of ``kind`` ("models", "pseudo" or "predictions"); NaN if none."""
        record = self._path(kind, stem, suffix + ".seconds.json")
        return float(json.loads(record.read_text())["seconds"]) if record.exists() else math.nan

    @staticmethod
    def _stem(method, *, n_slices, seed, lam=None, pseudo_mode=None, normalization=None) -> str:
        parts = [method]
        if method != "3d_dense":
            parts.append(f"k{n_slices}")
        if method == "3d_pseudo":
            parts += [f"lam{_lam_tag(lam)}", pseudo_mode, normalization]
        parts.append(f"seed{seed}")
        return "_".join(parts)

    # -- stages ----------------------------------------------------------------------------------------------
    def sparse_labels(self, n_slices: int) -> list:
        """The simulated annotation of each training volume: ``n_slices`` evenly spaced z-planes.

        Computed once per ``n_slices`` and shared by every stage (callers must not modify the arrays).
        """
        if n_slices not in self._annotations:
            self._annotations[n_slices] = [sparse.simulate_sparse(labels, n_slices=n_slices, axis=0, mode="even")
                                           for labels in self.data.train_labels]
        return self._annotations[n_slices]

    def train_config_2d(self, *, seed: int):
        return dataclasses.replace(pseudolabel.PRESETS_2D[self.preset.train_2d], seed=seed,
                                   **self.preset.overrides_2d)

    def train_config_3d(self, *, seed: int, lam: float = 0.0, pseudo_mode: str = "hard",
                        normalization: str = "paper"):
        return train.make_train_config(self.preset.train_3d, seed=seed, lam=lam, pseudo_mode=pseudo_mode,
                                       normalization=normalization, **self.preset.overrides_3d)

    def model_2d(self, *, n_slices: int, seed: int = 0):
        """The 2D pseudo-labeller for ``n_slices`` annotated planes: loaded if cached, else trained."""
        path = self._path("models", self._stem("2d", n_slices=n_slices, seed=seed), ".pt")
        if path.exists():
            model, _ = pseudolabel.load_2d(path, device=self.device)
            return model
        start = time.perf_counter()
        model, history = pseudolabel.train_2d(self.data.train_images, self.sparse_labels(n_slices),
                                              config=self.train_config_2d(seed=seed), device=self.device,
                                              progress=self.progress)
        self._record_seconds(path, time.perf_counter() - start)
        pseudolabel.save_2d(path, model, config=self.train_config_2d(seed=seed), history=history)
        return model

    def history_2d(self, *, n_slices: int, seed: int = 0) -> dict:
        """The training history stored with the cached 2D model."""
        self.model_2d(n_slices=n_slices, seed=seed)
        path = self._path("models", self._stem("2d", n_slices=n_slices, seed=seed), ".pt")
        return pseudolabel.load_2d(path, device="cpu")[1]["history"]

    def pseudo_probabilities(self, *, n_slices: int, seed: int = 0) -> list[np.ndarray]:
        """The 2D model's foreground probability on every training volume (cached as float16)."""
        path = self._path("pseudo", self._stem("2d", n_slices=n_slices, seed=seed), ".npz")
        if path.exists():
            with np.load(path) as stored:
                return [stored[f"volume{i}"].astype(np.float32) for i in range(len(stored.files))]
        model = self.model_2d(n_slices=n_slices, seed=seed)
        start = time.perf_counter()
        probabilities = [self._predict_2d(model, image, n_slices=n_slices) for image in self.data.train_images]
        self._record_seconds(path, time.perf_counter() - start)
        _save_npz(path, {f"volume{i}": p.astype(np.float16) for i, p in enumerate(probabilities)})
        return probabilities

    def annotated_prior(self, n_slices: int) -> float:
        """Foreground share of the annotated voxels of all training volumes at ``n_slices`` planes each."""
        annotation = self.sparse_labels(n_slices)
        return (sum(int(a.labels[a.annotated].sum()) for a in annotation)
                / sum(int(a.annotated.sum()) for a in annotation))

    def _predict_2d(self, model, image: np.ndarray, *, n_slices: int) -> np.ndarray:
        probability = pseudolabel.predict_2d(model, image, device=self.device, progress=self.progress)
        # Only a class-balanced model learned under a 50 % prior; the others need no correction.
        if self.preset.prior_correction and self.train_config_2d(seed=0).class_balance:
            prior = self.annotated_prior(n_slices)
            if 0 < prior < 1:
                probability = pseudolabel.correct_prior(probability, prior=prior)
        return probability

    def model_3d(self, method: str, *, n_slices: int, seed: int = 0, lam: float = 0.5, pseudo_mode: str = "hard",
                 normalization: str = "paper"):
        """A 3D U-Net trained by ``method`` (``"3d_sparse"``, ``"3d_pseudo"`` or ``"3d_dense"``); cached.

        Returns
        -------
        model : UNet3D
        info : dict
            The checkpoint's contents besides the weights (configs, normalisation, history).
        """
        if method not in METHODS[1:]:
            raise NeurosegInputError(f"method {method!r} is not a 3D method; choose one of {METHODS[1:]}.")
        path = self._path("models", self._stem(method, n_slices=n_slices, seed=seed, lam=lam,
                                               pseudo_mode=pseudo_mode, normalization=normalization), ".pt")
        if path.exists():
            return train.load_checkpoint(path, device=self.device)
        if method == "3d_dense":
            annotated = [np.ones(labels.shape, dtype=bool) for labels in self.data.train_labels]
            labels, pseudo, lam = self.data.train_labels, None, 0.0
        else:
            annotation = self.sparse_labels(n_slices)
            annotated = [a.annotated for a in annotation]
            labels = [a.labels for a in annotation]
            pseudo = self.pseudo_probabilities(n_slices=n_slices, seed=seed) if method == "3d_pseudo" else None
            lam = lam if method == "3d_pseudo" else 0.0
        config = self.train_config_3d(seed=seed, lam=lam, pseudo_mode=pseudo_mode, normalization=normalization)
        model_config = unet3d.UNet3DConfig(**self.preset.model_3d)
        start = time.perf_counter()
        result = train.train_3d(self.data.train_images, labels, annotated, pseudo=pseudo, config=config,
                                model_config=model_config, device=self.device, progress=self.progress)
        self._record_seconds(path, time.perf_counter() - start)
        train.save_checkpoint(path, result.model, model_config=model_config, train_config=config,
                              normalization=NORMALIZATION, history=result.history)
        return train.load_checkpoint(path, device=self.device)

    def predict(self, method: str, *, n_slices: int, seed: int = 0, lam: float = 0.5, pseudo_mode: str = "hard",
                normalization: str = "paper", image: np.ndarray | None = None) -> np.ndarray:
        """Foreground probability of ``method`` on the test volume (cached), or on ``image`` if given."""
        stem = self._stem(method, n_slices=n_slices, seed=seed, lam=lam, pseudo_mode=pseudo_mode,
                          normalization=normalization)
        path = self._path("predictions", stem, ".npy")
        if image is None and path.exists():
            return np.load(path).astype(np.float32)
        target = self.data.test_image if image is None else image
        if method == "2d":
            model = self.model_2d(n_slices=n_slices, seed=seed)
            start = time.perf_counter()
            probability = self._predict_2d(model, target, n_slices=n_slices)
        else:
            model, _ = self.model_3d(method, n_slices=n_slices, seed=seed, lam=lam, pseudo_mode=pseudo_mode,
                                     normalization=normalization)
            start = time.perf_counter()
            probability = infer.predict_volume(model, target, device=self.device, progress=self.progress)
        if image is None:
            self._record_seconds(path, time.perf_counter() - start)
            # Score what is cached, so that a re-evaluation from the cache gives the very same numbers.
            probability = probability.astype(np.float16)
            _save_npy(path, probability)
        return probability.astype(np.float32)

    def evaluate(self, method: str, *, n_slices: int, seed: int = 0, lam: float = 0.5, pseudo_mode: str = "hard",
                 normalization: str = "paper") -> dict:
        """One results row: the method's scores on the test volume, with its settings and stage timings.

        The ``*_seconds`` columns are the wall times recorded when each stage ran (NaN where a cached file
        predates the records): ``train_2d_seconds`` and ``pseudo_seconds`` (predicting the pseudo-labels) for
        the 2D model and the pseudo-label method, ``train_3d_seconds`` for the 3D models, ``predict_seconds``
        for the test volume, and their sum ``total_seconds``.
        """
        probability = self.predict(method, n_slices=n_slices, seed=seed, lam=lam, pseudo_mode=pseudo_mode,
                                   normalization=normalization)
        stages = self.stage_times(method, n_slices=n_slices, seed=seed, lam=lam, pseudo_mode=pseudo_mode,
                                  normalization=normalization)
        scores = metrics.evaluate(probability, self.data.test_labels, spacing=self.data.spacing, threshold=0.5,
                                  min_size_voxels=self.min_object_voxels)
        uses_lam = method == "3d_pseudo"
        row = {
            "data": self.data.name, "preset": self.preset.name, "method": method,
            "n_slices": n_slices if method != "3d_dense" else int(self.data.train_labels[0].shape[0]),
            "annotated_fraction": (1.0 if method == "3d_dense"
                                   else float(np.mean([a.fraction for a in self.sparse_labels(n_slices)]))),
            "lam": lam if uses_lam else 0.0,
            "pseudo_mode": pseudo_mode if uses_lam else "none",
            "normalization": normalization if uses_lam else "none",
            "seed": seed,
            **scores,
            **{name: round(value, 2) for name, value in stages.items()},
        }
        return row

    def stage_times(self, method: str, *, n_slices: int, seed: int = 0, lam: float = 0.5, pseudo_mode: str = "hard",
                    normalization: str = "paper") -> dict:
        """Recorded wall time of every stage that ``method`` needs, in seconds (see :meth:`evaluate`)."""
        stem_2d = self._stem("2d", n_slices=n_slices, seed=seed)
        stem = self._stem(method, n_slices=n_slices, seed=seed, lam=lam, pseudo_mode=pseudo_mode,
                          normalization=normalization)
        uses_2d = method in ("2d", "3d_pseudo")
        stages = {
            "train_2d_seconds": self.stage_seconds("models", stem_2d, ".pt") if uses_2d else 0.0,
            "pseudo_seconds": self.stage_seconds("pseudo", stem_2d, ".npz") if method == "3d_pseudo" else 0.0,
            "train_3d_seconds": self.stage_seconds("models", stem, ".pt") if method != "2d" else 0.0,
            "predict_seconds": self.stage_seconds("predictions", stem, ".npy"),
        }
        stages["total_seconds"] = sum(stages.values())
        return stages


def _replace_atomically(path: Path, write) -> None:
    """Write with ``write(temporary_path)`` next to ``path``, then rename: no half-written cache files."""
    tmp = path.with_name(path.name + ".tmp" + path.suffix)  # numpy appends .npy/.npz unless the name ends so
    write(tmp)
    os.replace(tmp, path)


def _save_npz(path: Path, arrays: dict) -> None:
    _replace_atomically(path, lambda tmp: np.savez_compressed(tmp, **arrays))


def _write_json(path: Path, content: dict) -> None:
    _replace_atomically(path, lambda tmp: tmp.write_text(json.dumps(content)))


def _save_npy(path: Path, array: np.ndarray) -> None:
    _replace_atomically(path, lambda tmp: np.save(tmp, array))


def _row_key(row: dict) -> tuple:
    return tuple(str(row[c]) for c in KEY_COLUMNS)


def _load_results(results_file) -> pd.DataFrame:
    if results_file is None or not Path(results_file).exists():
        return pd.DataFrame()
    return pd.read_csv(results_file)


def _append_result(results_file, row: dict) -> None:
    if results_file is None:
        return
    path = Path(results_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame([row]).to_csv(path, mode="a", header=not path.exists(), index=False)


def sweep(data: Data, *, n_slices=(1, 2, 4, 8, 16), seeds=(0, 1, 2), lams=(0.5,), pseudo_modes=("hard",),
          normalizations=("paper",), methods=METHODS, preset="cpu", workdir=None, results_file=None,
          device="auto", progress=False) -> pd.DataFrame:
    """Run every method over a grid of settings; rows already in ``results_file`` are not run again.

    Returns
    -------
    pandas.DataFrame
        One row per (method, n_slices, lam, pseudo_mode, normalization, seed), all rows of the results file
        included. The dense upper bound is run once per seed.
    """
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise NeurosegInputError(f"unknown method(s) {sorted(unknown)}; choose from {METHODS}.")
    for lam in lams:
        if lam < 0:
            raise NeurosegInputError(f"lambda must be >= 0, got {lam}.")
    pipeline = Pipeline(data, preset=preset, workdir=workdir, device=device, progress=progress)
    done = _load_results(results_file)
    done_keys = {_row_key(r) for r in done.to_dict("records")} if len(done) else set()
    rows = []
    for seed in seeds:
        for k in n_slices:
            for method in methods:
                if method == "3d_dense" and k != n_slices[0]:
                    continue
                settings = ([(lam, mode, norm) for lam in lams for mode in pseudo_modes for norm in normalizations]
                            if method == "3d_pseudo" else [(0.0, "none", "none")])
                for lam, mode, norm in settings:
                    probe = {"data": data.name, "preset": pipeline.preset.name, "method": method, "lam": lam,
                             "pseudo_mode": mode, "normalization": norm, "seed": seed,
                             "n_slices": k if method != "3d_dense" else int(data.train_labels[0].shape[0])}
                    if _row_key(probe) in done_keys:
                        continue
                    row = pipeline.evaluate(method, n_slices=k, seed=seed, lam=lam,
                                            pseudo_mode=mode if mode != "none" else "hard",
                                            normalization=norm if norm != "none" else "paper")
                    _append_result(results_file, row)
                    rows.append(row)
    return pd.concat([done, pd.DataFrame(rows)], ignore_index=True) if rows else done


def compare(train_images, train_labels, test_image, test_labels, spacing, *, n_slices: int, lam: float = 0.5,
            seed: int = 0, preset: str = "cpu", pseudo_mode: str = "hard", normalization: str = "paper",
            name: str = "data", workdir=None, results_file=None, device="auto", progress=False) -> pd.DataFrame:
    """The paper's comparison at one sparsity level: one row per method, on the test volume.

    Parameters
    ----------
    train_images, train_labels : sequences of ndarray of shape (Z, Y, X)
        Raw training volumes and their dense labels (sparse annotation is simulated from them).
    test_image, test_labels : ndarray of shape (Z, Y, X)
    spacing : tuple of 3 floats
        Micrometres (z, y, x).
    n_slices : int
        Annotated z-planes per training volume.
    lam : float
        Weight of the pseudo-labels (>= 0).
    seed : int
    preset : str or ExperimentPreset
        A key of :data:`PRESETS` (``"smoke"``, ``"sweep"``, ``"cpu"``, ``"gpu"``) or an ExperimentPreset.
    pseudo_mode : {"hard", "soft"}
    normalization : {"paper", "global"}
        See :func:`neuroseg_lite.losses.weighted_bce`.

    Returns
    -------
    pandas.DataFrame
        One row per method (2D, 3D sparse, 3D with pseudo-labels, 3D dense) with Dice, precision, recall,
        IoU, confusion counts, object and surface metrics, and the seconds each stage took.
    """
    data = prepare_data(train_images, train_labels, test_image, test_labels, spacing, name=name)
    return sweep(data, n_slices=(n_slices,), seeds=(seed,), lams=(lam,), pseudo_modes=(pseudo_mode,),
                 normalizations=(normalization,), preset=preset, workdir=workdir, results_file=results_file,
                 device=device, progress=progress)
