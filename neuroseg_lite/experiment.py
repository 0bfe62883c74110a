"""The paper's comparison: each run made and scored by a :class:`~neuroseg_lite.experiment.Pipeline`, grids of runs.

Introduced in chapter 7 (``07_sparsity_sweep``); the runs themselves and the budgets are in
:mod:`neuroseg_lite.runs` (re-exported here). Chapters 3-6 use the same :class:`Pipeline` step by step, so a
model trained in one chapter is reloaded by the next instead of being trained again. The Pipeline is a
convenience layer over the public functions (:func:`neuroseg_lite.train.train_2d`,
:func:`~neuroseg_lite.train.train_3d`, :func:`~neuroseg_lite.pseudolabel.predict_2d`,
:func:`~neuroseg_lite.infer.predict_volume`, :func:`~neuroseg_lite.metrics.evaluate`) that caches every artefact
in a working folder under a key of everything that determined it (:mod:`neuroseg_lite.cache`).

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
import functools
import time
from pathlib import Path

import numpy as np
import pandas as pd

from neuroseg_lite import __version__, infer, metrics, pseudolabel, sparse, train
from neuroseg_lite._checks import NeurosegInputError
from neuroseg_lite.cache import Cache, atomic_write, content_key
from neuroseg_lite.checkpoint import FORMAT_VERSION, load_model, save_model
from neuroseg_lite.experiment_data import Data, default_workdir, prepare_data, synthetic_data
from neuroseg_lite.models2d import PRESETS_2D
from neuroseg_lite.paired import plan_budget
from neuroseg_lite.runs import METHODS, PRESETS, ExperimentPreset, Run, grid, preset_variant, resolve_preset
from neuroseg_lite.unet3d import UNet3DConfig
from neuroseg_lite.utils import select_device

__all__ = [
    "METHODS",
    "Run",
    "grid",
    "ExperimentPreset",
    "PRESETS",
    "preset_variant",
    "Data",
    "prepare_data",
    "synthetic_data",
    "default_workdir",
    "Pipeline",
    "sweep",
    "compare",
    "plan_budget",
]


# Training code that produced a model: a release that changes how models are trained bumps the package version,
# so models of earlier code are never reused for this one's.
_CODE = {"package": __version__, "model_file": FORMAT_VERSION}
# Prediction settings, part of every prediction's key.
_INFERENCE = {"tile": list(infer.DEFAULT_TILE), "overlap": 0.25, "stored_as": "float16", "threshold": 0.5}
_SCORING = {"threshold": 0.5, "tolerance_um": 2.0, "version": 1}
# Cache folder -> the kind of key its artefacts are stored under (see Pipeline._key).
_ARTEFACTS = {"models2d": "model2d", "pseudo": "pseudo", "models": "model", "predictions": "prediction"}


class Pipeline:
    """Every stage of the method on one dataset, each artefact cached in a working folder under a content key.

    Parameters
    ----------
    data : Data
        From :func:`~neuroseg_lite.experiment_data.prepare_data` or
        :func:`~neuroseg_lite.experiment_data.synthetic_data`.
    preset : str or ExperimentPreset
        A key of :data:`neuroseg_lite.runs.PRESETS` (``"smoke"``, ``"sweep"``, ``"sweep_curves"``, ``"cpu"``,
        ``"gpu"``) or your own preset. A preset with ``val_every`` needs data with a validation volume.
    workdir : path-like, optional
        Where models, pseudo-labels and predictions are kept (default
        :func:`~neuroseg_lite.experiment_data.default_workdir`). One folder may
        hold any number of data sets and presets: a file is reused only for exactly the inputs it came from.
    device : str
        ``"auto"`` picks CUDA, then MPS, then the CPU.
    progress : bool
        Show progress bars while training and predicting.
    save_every_steps, save_every_seconds : int, float, optional
        How often a model in training saves its resumable state (:mod:`neuroseg_lite.resume`) beside the model
        file it will become (``{label}-{key[:16]}.state.pt``, the same content key). A run killed while training
        (a Colab disconnect) continues from that state when the same cell runs again, and ends with the same
        weights. Both None: every 60 seconds. On Colab, point ``workdir`` at Google Drive so that it outlives the
        runtime.
    """

    def __init__(self, data: Data, *, preset="cpu", workdir=None, device="auto", progress=True,
                 save_every_steps: int | None = None, save_every_seconds: float | None = None):
        if not isinstance(data, Data):
            raise NeurosegInputError(f"Pipeline needs a Data (experiment.prepare_data or synthetic_data), got "
                                     f"{type(data).__name__}.")
        self.data = data
        self.preset = resolve_preset(preset)
        if self.preset.val_every and data.val_image is None:
            raise NeurosegInputError(
                f"preset {self.preset.name!r} records learning curves on a validation volume, but {data.name!r} has "
                "none: use experiment.synthetic_data(..., n_val=1), or prepare_data(..., val_image=, val_labels=) "
                "with a held-out annotated crop, or a preset without val_every.")
        self.workdir = Path(workdir) if workdir is not None else default_workdir()
        self.cache = Cache(self.workdir)
        self.device = select_device(device)
        self.progress = progress
        self.save_every = {"save_every_steps": save_every_steps, "save_every_seconds": save_every_seconds}
        self.timings: dict[str, float] = {}  # seconds of the stages run in this session, by artefact label
        self._seconds_in_stages = 0.0  # so that a stage's time leaves out the stages it had to make first
        self._annotations: dict[int, list] = {}

    @property
    def min_object_voxels(self) -> int:
        """The size floor of object scores in voxels (predicted objects smaller than a 4 µm sphere are specks)."""
        voxel_volume = float(np.prod(self.data.spacing))
        return max(1, int(round(4.0 / 3.0 * np.pi * 2.0**3 / voxel_volume)))

    # -- configs and keys ------------------------------------------------------------------------------------
    def sparse_labels(self, n_slices: int) -> list:
        """The simulated annotation of each training volume: ``n_slices`` evenly spaced z-planes.

        Computed once per ``n_slices`` and shared by every stage (callers must not modify the arrays).
        """
        if n_slices not in self._annotations:
            self._annotations[n_slices] = [sparse.simulate_sparse(labels, n_slices=n_slices, axis=0, mode="even")
                                           for labels in self.data.train_labels]
        return self._annotations[n_slices]

    def _annotations_for(self, run: Run) -> list:
        if run.spec.sparse:
            return self.sparse_labels(run.n_slices)
        return [sparse.from_planes(labels, planes=range(labels.shape[0])) for labels in self.data.train_labels]

    def train_config_2d(self, *, seed: int):
        return dataclasses.replace(PRESETS_2D[self.preset.train_2d], seed=seed, **self.preset.overrides_2d)

    def train_config_3d(self, run: Run):
        """The resolved TrainConfig of a 3D run (knobs a method does not use keep the preset's defaults)."""
        knobs = ({"lam": run.lam, "pseudo_mode": run.pseudo_mode, "loss_normalization": run.loss_normalization}
                 if run.spec.uses_pseudo else {"lam": 0.0, "pseudo_mode": "hard", "loss_normalization": "paper"})
        if self.preset.val_every:
            knobs["val_every"] = self.preset.val_every
        return train.make_train_config(self.preset.train_3d, seed=run.seed,
                                       **{**self.preset.overrides_3d, **knobs})

    def _uses_prior_correction(self) -> bool:
        # Only a class-balanced model learned under a 50 % prior; the others need no correction.
        return self.preset.prior_correction and self.train_config_2d(seed=0).class_balance

    def _key(self, kind: str, run: Run) -> str:
        """Content key of one artefact: "model2d", "pseudo", "model", "prediction" or "row" of ``run``."""
        data = self.data
        if kind == "model2d":
            return content_key({"kind": kind, "train": data.train_digest, "code": _CODE,
                                "annotation": [[a.axis, list(a.planes)] for a in self.sparse_labels(run.n_slices)],
                                "config": self.train_config_2d(seed=run.seed),
                                "intensity": data.intensity_normalization})
        if kind == "pseudo":
            return content_key({"kind": kind, "model": self._key("model2d", run),
                                "prior_correction": self._uses_prior_correction()})
        if kind == "model":
            if run.method == "2d":
                return self._key("pseudo", run)  # the 2D method is the corrected (or not) 2D model itself
            annotation = ([[a.axis, list(a.planes)] for a in self.sparse_labels(run.n_slices)]
                          if run.spec.sparse else "dense")
            return content_key({"kind": kind, "train": data.train_digest, "code": _CODE,
                                "annotation": annotation, "config": self.train_config_3d(run),
                                "model": UNet3DConfig(**self.preset.model_3d),
                                "pseudo": self._key("pseudo", run) if run.spec.uses_pseudo else None,
                                "intensity": data.intensity_normalization,
                                **({"val": data.val_digest} if self.preset.val_every else {})})
        if kind == "prediction":
            return content_key({"kind": kind, "model": self._key("model", run), "image": data.test_digest,
                                "inference": _INFERENCE})
        if kind != "row":
            raise ValueError(f"unknown artefact kind {kind!r}")
        return content_key({"kind": kind, "prediction": self._key("prediction", run), "truth": data.test_digest,
                            "scoring": {**_SCORING, "min_size_voxels": self.min_object_voxels},
                            "annotated_fraction": self._annotated_fraction(run)})

    def _label(self, run: Run) -> str:
        return f"{self.data.name}/{run.label}"

    def state_path(self, kind: str, run: Run, *, label=None) -> Path:
        """Where the training of ``run``'s model ("models2d" or "models") keeps its resumable state."""
        return self.cache.path(kind, label or self._label(run), self._key(_ARTEFACTS[kind], run), ".state.pt")

    def _resume(self, kind: str, run: Run, *, label=None) -> dict:
        return {"resume": self.state_path(kind, run, label=label), **self.save_every}

    def _cached(self, kind: str, run: Run, suffix: str, read, make, write, label=None):
        """Load the artefact of ``run`` or make it (timed), store it and return it."""
        label = label or self._label(run)
        key = self._key(_ARTEFACTS[kind], run)
        value = self.cache.load(kind, label, key, suffix, read)
        if value is not None:
            return value
        before, start = self._seconds_in_stages, time.perf_counter()
        value = make()
        elapsed = time.perf_counter() - start
        seconds = elapsed - (self._seconds_in_stages - before)  # without the stages made inside make()
        self._seconds_in_stages = before + elapsed
        self.timings[f"{kind}/{label}"] = seconds
        path = self.cache.save(kind, label, key, suffix, lambda tmp: write(tmp, value), seconds=seconds,
                               device=str(self.device), description={"data": self.data.name,
                                                                     "preset": self.preset.name, "run": run})
        return read(path)

    # -- stages ----------------------------------------------------------------------------------------------
    def model_2d(self, *, n_slices: int, seed: int = 0):
        """The 2D pseudo-labeller for ``n_slices`` annotated planes (a TrainedModel): loaded if cached, else trained."""
        run = Run("2d", n_slices=n_slices, seed=seed)
        label = f"{self.data.name}/2d_k{n_slices}_seed{seed}"
        return self._cached(
            "models2d", run, ".pt", lambda path: load_model(path, kind="model2d", device=self.device),
            lambda: train.train_2d(self.data.train_images, self.sparse_labels(n_slices),
                                   config=self.train_config_2d(seed=seed),
                                   intensity_normalization=self.data.intensity_normalization,
                                   spacing=self.data.spacing, device=self.device, progress=self.progress,
                                   **self._resume("models2d", run, label=label)),
            save_model, label=label)

    def annotated_prior(self, n_slices: int) -> float:
        """Foreground share of the annotated voxels of all training volumes at ``n_slices`` planes each."""
        annotation = self.sparse_labels(n_slices)
        return (sum(int(a.labels[a.annotated].sum()) for a in annotation)
                / sum(int(a.annotated.sum()) for a in annotation))

    def _predict_2d(self, model, image: np.ndarray, *, n_slices: int) -> np.ndarray:
        probability = pseudolabel.predict_2d(model, image, device=self.device, progress=self.progress)
        if self._uses_prior_correction():
            prior = self.annotated_prior(n_slices)
            if 0 < prior < 1:
                probability = pseudolabel.correct_prior(probability, prior=prior)
        return probability

    def pseudo_probabilities(self, *, n_slices: int, seed: int = 0) -> list[np.ndarray]:
        """The 2D model's foreground probability on every training volume (cached as float16)."""
        def make():
            model = self.model_2d(n_slices=n_slices, seed=seed)
            return [self._predict_2d(model, image, n_slices=n_slices).astype(np.float16)
                    for image in self.data.train_images]

        def read(path):
            with np.load(path) as stored:
                return [stored[f"volume{i}"].astype(np.float32) for i in range(len(stored.files))]

        return self._cached("pseudo", Run("2d", n_slices=n_slices, seed=seed), ".npz", read, make,
                            lambda tmp, arrays: np.savez_compressed(tmp, **{f"volume{i}": a for i, a in
                                                                           enumerate(arrays)}),
                            label=f"{self.data.name}/2d_k{n_slices}_seed{seed}")

    def model_3d(self, run: Run):
        """The 3D U-Net of a 3D ``run`` (a TrainedModel): loaded if cached, else trained."""
        if run.spec.network != "unet3d":
            raise NeurosegInputError(f"method {run.method!r} is not a 3D method; choose one of {METHODS[1:]}.")

        def make():
            pseudo = (self.pseudo_probabilities(n_slices=run.n_slices, seed=run.seed) if run.spec.uses_pseudo
                      else None)
            val = (self.data.val_image, self.data.val_labels) if self.preset.val_every else None
            return train.train_3d(self.data.train_images, self._annotations_for(run), pseudo=pseudo,
                                  config=self.train_config_3d(run), model_config=UNet3DConfig(**self.preset.model_3d),
                                  intensity_normalization=self.data.intensity_normalization,
                                  spacing=self.data.spacing, val=val, device=self.device, progress=self.progress,
                                  **self._resume("models", run))

        return self._cached("models", run, ".pt", lambda path: load_model(path, kind="unet3d", device=self.device),
                            make, save_model)

    def learning_curve(self, run: Run) -> pd.DataFrame:
        """Validation Dice of a 3D ``run``'s model during training (trained first if not cached).

        Returns
        -------
        pandas.DataFrame
            One row per validation: ``step``, ``seconds`` (training wall time up to that step, validation
            excluded; the last row scores the returned, weight-averaged model) and ``val_dice``, plus the run's
            ``method``, ``n_slices``, ``seed`` and results-row ``key``. Empty without ``val_every`` in the preset.
        """
        history = self.model_3d(run).history
        curve = pd.DataFrame({"step": history.get("val_step", []), "seconds": history.get("val_seconds", []),
                              "val_dice": history.get("val_dice", [])})
        return curve.assign(method=run.method, n_slices=run.n_slices, seed=run.seed, key=self.row_key(run))

    def pseudo_label_scores(self, *, n_slices: int, seed: int = 0) -> dict:
        """Quality of the pseudo-labels on the voxels they stand in for: the unannotated training voxels.

        Returns
        -------
        dict
            :func:`~neuroseg_lite.metrics.segmentation_scores` (``dice``, ``precision``, ``recall``, ...) of the
            2D model's probabilities (threshold 0.5) against the dense training labels, with the confusion counts
            pooled over the training volumes.
        """
        pseudo = self.pseudo_probabilities(n_slices=n_slices, seed=seed)
        counts = {"tp": 0, "fp": 0, "fn": 0, "tn": 0}
        for probability, truth, annotation in zip(pseudo, self.data.train_labels, self.sparse_labels(n_slices)):
            volume = metrics.confusion_counts(probability, truth, threshold=0.5, mask=~annotation.annotated)
            counts = {name: counts[name] + int(volume[name]) for name in counts}
        return metrics.scores_from_counts(counts)

    def predict(self, run: Run, *, image: np.ndarray | None = None) -> np.ndarray:
        """Foreground probability of ``run`` on the test volume (cached), or on a raw ``image`` if given."""
        def make(target=None):
            target = self.data.test_image if target is None else target
            if run.method == "2d":
                model = self.model_2d(n_slices=run.n_slices, seed=run.seed)
                return self._predict_2d(model, target, n_slices=run.n_slices)
            return infer.predict_volume(self.model_3d(run), target, device=self.device, progress=self.progress)

        if image is not None:
            return make(image)
        # Score what is cached (float16), so that a re-evaluation from the cache gives the very same numbers.
        return self._cached("predictions", run, ".npy", lambda path: np.load(path).astype(np.float32),
                            lambda: make().astype(np.float16), lambda tmp, array: np.save(tmp, array))

    def _annotated_fraction(self, run: Run) -> float:
        return float(np.mean([a.fraction for a in self.sparse_labels(run.n_slices)])) if run.spec.sparse else 1.0

    def row_key(self, run: Run) -> str:
        """The key of ``run``'s results row: equal keys mean equal data, annotation, configs, seed and scoring."""
        return self._key("row", run)

    def evaluate(self, run: Run) -> dict:
        """One results row: the run's scores on the test volume, its settings, stage timings and key.

        The ``*_seconds`` columns are the wall times recorded when each stage ran: ``train_2d_seconds`` and
        ``pseudo_seconds`` (predicting the pseudo-labels) for the 2D model and the pseudo-label method,
        ``train_3d_seconds`` for the 3D models, ``predict_seconds`` for the test volume, and their sum
        ``total_seconds``. The dense bound's ``n_slices`` is the number of planes of the training volumes.
        """
        probability = self.predict(run)
        scores = metrics.evaluate(probability, self.data.test_labels, spacing=self.data.spacing,
                                  threshold=_SCORING["threshold"], tolerance_um=_SCORING["tolerance_um"],
                                  min_size_voxels=self.min_object_voxels)
        columns = dataclasses.asdict(run)
        if not run.spec.sparse:
            columns["n_slices"] = int(self.data.train_labels[0].shape[0])
        return {"data": self.data.name, "preset": self.preset.name, **columns,
                "annotated_fraction": self._annotated_fraction(run), **scores,
                **{name: round(value, 2) for name, value in self.stage_times(run).items()},
                "key": self.row_key(run)}

    def stage_times(self, run: Run) -> dict:
        """Recorded wall time of every stage that ``run`` needs, in seconds (see :meth:`evaluate`)."""
        label_2d = f"{self.data.name}/2d_k{run.n_slices}_seed{run.seed}"
        run_2d = Run("2d", n_slices=run.n_slices, seed=run.seed) if run.spec.uses_2d else None
        stages = {
            "train_2d_seconds": (self.cache.seconds("models2d", label_2d, self._key("model2d", run_2d), ".pt")
                                 if run_2d else 0.0),
            "pseudo_seconds": (self.cache.seconds("pseudo", label_2d, self._key("pseudo", run_2d), ".npz")
                               if run.spec.uses_pseudo else 0.0),
            "train_3d_seconds": (self.cache.seconds("models", self._label(run), self._key("model", run), ".pt")
                                 if run.spec.network == "unet3d" else 0.0),
            "predict_seconds": self.cache.seconds("predictions", self._label(run), self._key("prediction", run),
                                                  ".npy"),
        }
        stages["total_seconds"] = sum(stages.values())
        return stages


# -- results files -------------------------------------------------------------------------------------------
_RENAMED_COLUMNS = {"normalization": "loss_normalization"}  # results files of earlier versions


def _load_results(results_file) -> pd.DataFrame:
    if results_file is None or not Path(results_file).exists():
        return pd.DataFrame()
    table = pd.read_csv(results_file).rename(columns=_RENAMED_COLUMNS)
    if len(table) and "key" not in table.columns:
        raise NeurosegInputError(
            f"{results_file} was written by an earlier neuroseg_lite without run keys, so its rows cannot be checked "
            "against the runs asked for (they may come from other data or budgets). Move it away or pass another "
            "results_file; nothing in it was changed.")
    return table


def sweep(data: Data, *, n_slices=(1, 2, 4, 8, 16), seeds=(0, 1, 2), lams=(0.5,), pseudo_modes=("hard",),
          loss_normalizations=("paper",), methods=METHODS, preset="cpu", workdir=None, results_file=None,
          device="auto", progress=False) -> pd.DataFrame:
    """Run every method over a grid of settings; rows already in ``results_file`` (same key) are not run again.

    Returns
    -------
    pandas.DataFrame
        Exactly one row per distinct :class:`~neuroseg_lite.runs.Run` of the grid (see
        :func:`~neuroseg_lite.runs.grid`; the dense bound once per
        seed), in grid order. Other rows of the results file are kept in the file but not returned.
    """
    runs = grid(methods=methods, n_slices=n_slices, seeds=seeds, lams=lams, pseudo_modes=pseudo_modes,
                loss_normalizations=loss_normalizations)
    pipeline = Pipeline(data, preset=preset, workdir=workdir, device=device, progress=progress)
    table = _load_results(results_file)
    done = {row["key"]: row for row in table.to_dict("records")} if len(table) else {}
    rows = []
    for run in runs:
        key = pipeline.row_key(run)
        if key not in done:
            done[key] = pipeline.evaluate(run)
            if results_file is not None:
                table = pd.concat([table, pd.DataFrame([done[key]])], ignore_index=True)
                # the whole table each time, so an interrupted run never leaves half a row
                atomic_write(results_file, functools.partial(table.to_csv, index=False))
        rows.append(done[key])
    return pd.DataFrame(rows)


def compare(train_images, train_labels, test_image, test_labels, spacing, *, n_slices: int, name: str,
            lam: float = 0.5, seed: int = 0, preset="cpu", pseudo_mode: str = "hard",
            loss_normalization: str = "paper", workdir=None, results_file=None, device="auto",
            progress=False) -> pd.DataFrame:
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
    name : str
        Names the data in results rows and cache folders (letters, digits, ``-``, ``_``); it never decides a
        cache hit, the data's contents do.
    lam : float
        Weight of the pseudo-labels (>= 0).
    seed : int
    preset : str or ExperimentPreset
        A key of :data:`neuroseg_lite.runs.PRESETS` (``"smoke"``, ``"sweep"``, ``"cpu"``, ``"gpu"``) or an
        ExperimentPreset.
    pseudo_mode : {"hard", "soft"}
    loss_normalization : {"paper", "global"}
        See :func:`neuroseg_lite.losses.weighted_bce`.

    Returns
    -------
    pandas.DataFrame
        One row per method (2D, 3D sparse, 3D with pseudo-labels, 3D dense) with Dice, precision, recall,
        IoU, confusion counts, object and surface metrics, the seconds each stage took, and the run's key.
    """
    data = prepare_data(train_images, train_labels, test_image, test_labels, spacing, name=name)
    return sweep(data, n_slices=(n_slices,), seeds=(seed,), lams=(lam,), pseudo_modes=(pseudo_mode,),
                 loss_normalizations=(loss_normalization,), preset=preset, workdir=workdir,
                 results_file=results_file, device=device, progress=progress)

