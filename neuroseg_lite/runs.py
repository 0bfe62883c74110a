"""What the comparison runs: methods, a :class:`~neuroseg_lite.runs.Run` (a method and its knobs), grids, budgets.

Introduced in chapter 7 (``07_sparsity_sweep``); :mod:`neuroseg_lite.experiment` makes and scores the runs.
A run's knobs that its method does not use are set to neutral values, so equal runs are equal objects, and
each method's needs are one row of a table instead of branches in the code.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass, field

import numpy as np

from neuroseg_lite._checks import NeurosegInputError
from neuroseg_lite.losses import LOSS_NORMALIZATIONS

__all__ = ["METHODS", "Run", "grid", "ExperimentPreset", "PRESETS", "preset_variant", "resolve_preset"]


@dataclass(frozen=True)
class _Method:
    """What a method needs: the 2D model, pseudo-labels (and so lambda's knobs), the sparse annotation."""

    uses_2d: bool
    uses_pseudo: bool
    sparse: bool
    network: str


_METHODS = {
    "2d": _Method(uses_2d=True, uses_pseudo=False, sparse=True, network="model2d"),
    "3d_sparse": _Method(uses_2d=False, uses_pseudo=False, sparse=True, network="unet3d"),
    "3d_pseudo": _Method(uses_2d=True, uses_pseudo=True, sparse=True, network="unet3d"),
    "3d_dense": _Method(uses_2d=False, uses_pseudo=False, sparse=False, network="unet3d"),
}
#: The four methods of the comparison, in the order of the results tables.
METHODS = tuple(_METHODS)


@dataclass(frozen=True)
class Run:
    """One method with its knobs: a row of the results table.

    Knobs a method does not use are set to neutral values, so equal runs compare and hash equal:
    ``lam=0.0, pseudo_mode="none", loss_normalization="none"`` for all but ``"3d_pseudo"``, and
    ``n_slices=None`` for ``"3d_dense"`` (dense training ignores the sparsity level).

    Parameters
    ----------
    method : {"2d", "3d_sparse", "3d_pseudo", "3d_dense"}
    n_slices : int
        Annotated z-planes per training volume (not used by ``"3d_dense"``).
    seed : int
        Training seed (of the 2D and the 3D network alike).
    lam : float >= 0
        Weight of the pseudo-labels (Eq. 1).
    pseudo_mode : {"hard", "soft"}
    loss_normalization : {"paper", "global"}
        See :func:`neuroseg_lite.losses.weighted_bce`.

    Examples
    --------
    >>> run = Run("3d_sparse", n_slices=2, lam=0.7)
    >>> run.lam, run.pseudo_mode, run.label
    (0.0, 'none', '3d_sparse_k2_seed0')
    >>> Run("3d_dense", n_slices=4) == Run("3d_dense", n_slices=1)
    True
    """

    method: str
    n_slices: int | None = None
    seed: int = 0
    lam: float = 0.5
    pseudo_mode: str = "hard"
    loss_normalization: str = "paper"

    def __post_init__(self):
        if self.method not in _METHODS:
            raise NeurosegInputError(f"unknown method {self.method!r}; choose one of {METHODS}.")
        spec = _METHODS[self.method]
        if not spec.sparse:
            object.__setattr__(self, "n_slices", None)
        elif isinstance(self.n_slices, bool) or not isinstance(self.n_slices, (int, np.integer)) or self.n_slices < 1:
            raise NeurosegInputError(f"method {self.method!r} needs n_slices, a positive number of annotated "
                                     f"planes per volume; got {self.n_slices!r}.")
        else:
            object.__setattr__(self, "n_slices", int(self.n_slices))
        object.__setattr__(self, "seed", int(self.seed))
        if not spec.uses_pseudo:
            for name, value in (("lam", 0.0), ("pseudo_mode", "none"), ("loss_normalization", "none")):
                object.__setattr__(self, name, value)
            return
        if not (math.isfinite(self.lam) and self.lam >= 0):
            raise NeurosegInputError(f"lambda must be finite and >= 0, got {self.lam}.")
        object.__setattr__(self, "lam", float(self.lam))
        if self.pseudo_mode not in ("hard", "soft"):
            raise NeurosegInputError(f"pseudo_mode must be 'hard' or 'soft', got {self.pseudo_mode!r}.")
        if self.loss_normalization not in LOSS_NORMALIZATIONS:
            raise NeurosegInputError(f"loss_normalization must be one of {LOSS_NORMALIZATIONS}, got "
                                     f"{self.loss_normalization!r}.")

    @property
    def spec(self) -> _Method:
        return _METHODS[self.method]

    @property
    def label(self) -> str:
        """A file-name-safe name, e.g. ``3d_pseudo_k2_lam0p5_hard_paper_seed0`` (for browsing, not a key)."""
        parts = [self.method] + ([f"k{self.n_slices}"] if self.spec.sparse else [])
        if self.spec.uses_pseudo:
            parts += [f"lam{self.lam:g}".replace(".", "p"), self.pseudo_mode, self.loss_normalization]
        return "_".join(parts + [f"seed{self.seed}"])


def grid(*, methods=METHODS, n_slices=(1, 2, 4, 8, 16), seeds=(0, 1, 2), lams=(0.5,), pseudo_modes=("hard",),
         loss_normalizations=("paper",)) -> list[Run]:
    """Every distinct Run of a grid, in a stable order (seed, k, method, knobs); the dense bound once per seed."""
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise NeurosegInputError(f"unknown method(s) {unknown}; choose from {METHODS}.")
    runs = [Run(method, n_slices=k, seed=seed, lam=lam, pseudo_mode=mode, loss_normalization=norm)
            for seed in seeds for k in n_slices for method in methods
            for lam in (lams if _METHODS[method].uses_pseudo else (0.0,))
            for mode in (pseudo_modes if _METHODS[method].uses_pseudo else ("hard",))
            for norm in (loss_normalizations if _METHODS[method].uses_pseudo else ("paper",))]
    return list(dict.fromkeys(runs))


@dataclass(frozen=True)
class ExperimentPreset:
    """Training budgets for one run of the comparison.

    Attributes
    ----------
    name : str
        Shown in results rows; it never decides a cache hit (the resolved configs do).
    train_2d : str
        Key of :data:`neuroseg_lite.models2d.PRESETS_2D`.
    train_3d : str
        Key of :data:`neuroseg_lite.trainconfig.PRESETS_3D`.
    model_3d : dict
        Overrides of :class:`neuroseg_lite.unet3d.UNet3DConfig`.
    overrides_2d, overrides_3d : dict
        Overrides of the 2D and 3D training presets (e.g. the number of steps).
    prior_correction : bool
        Correct the class-balanced 2D model's probabilities to the foreground share of the annotated voxels
        (:func:`neuroseg_lite.pseudolabel.correct_prior`) wherever they are used: the 2D method's predictions
        and the pseudo-labels. Off in the paper's method; an ablation of chapter 7.
    val_every : int
        Learning curves: score the 3D models in training on the data's validation volume
        (:attr:`~neuroseg_lite.experiment_data.Data.val_image`) every this many steps (0: no curves). Scoring
        does not change the weights; it costs time and makes the model files differ (their history holds the
        curve), so presets with and without curves train separate models.
    """

    name: str
    train_2d: str
    train_3d: str
    model_3d: dict = field(default_factory=dict)
    overrides_2d: dict = field(default_factory=dict)
    overrides_3d: dict = field(default_factory=dict)
    prior_correction: bool = False
    val_every: int = 0


#: The experiment budgets by name ("smoke", "cpu", "sweep", "sweep_curves", "qcanet", "gpu").
PRESETS = {
    # Seconds per model: for tests and the notebooks' SMOKE switch.
    "smoke": ExperimentPreset("smoke", train_2d="smoke", train_3d="smoke", model_3d={"base_channels": 8, "depth": 2}),
    # Minutes per model on 2 CPU cores: the book's default run. Cheaper 3D budgets (8 base channels at 400 or 600
    # steps, 16 at 400) are tried by benchmarks/calibrate_cpu_preset.py on the dense and sparse baselines only; one
    # replaces this preset only if the rule picks it (tests/test_calibrate_cpu_preset.py checks the table).
    "cpu": ExperimentPreset("cpu", train_2d="cpu", train_3d="cpu"),
    # About half a minute per 3D model on 2 CPU cores: for grids of many runs (chapters 7 and 8). A U-Net with 8
    # base channels (2.2x faster per step than 16) and a 3x higher learning rate. Chosen, before any pseudo-label
    # run, as the cheapest budget tried whose dense and sparse 3D models did not collapse on any of 3 seeds and
    # whose dense Dice was within 0.01 of a 600-step run: see benchmarks/calibrate_sweep_preset.py.
    "sweep": ExperimentPreset("sweep", train_2d="cpu", train_3d="cpu", model_3d={"base_channels": 8},
                              overrides_2d={"steps": 500}, overrides_3d={"steps": 400, "lr": 3e-3}),
    # The "sweep" budgets with learning curves (validation Dice every 50 of the 400 steps): the powered grid of
    # chapter 7 (benchmarks/paired_grid.py).
    "sweep_curves": ExperimentPreset("sweep_curves", train_2d="cpu", train_3d="cpu", model_3d={"base_channels": 8},
                                     overrides_2d={"steps": 500},
                                     overrides_3d={"steps": 400, "lr": 3e-3, "val_tile": (32, 128, 128)},
                                     val_every=50),
    # Chapter 8's budget on the QCANet embryo stacks: "sweep" with 1600 3D steps. Chosen on the dense and sparse
    # 3D models only, by the rule of benchmarks/qcanet_grid.py (400, 800 and 1600 steps tried on both folds and
    # 2 seeds; tests/test_qcanet_grid.py checks the preset against the stored calibration table).
    "qcanet": ExperimentPreset("qcanet", train_2d="cpu", train_3d="cpu", model_3d={"base_channels": 8},
                               overrides_2d={"steps": 500}, overrides_3d={"steps": 1600, "lr": 3e-3}),
    # Paper-like budgets for a GPU (Colab).
    "gpu": ExperimentPreset("gpu", train_2d="gpu", train_3d="gpu", model_3d={"base_channels": 32, "depth": 4}),
}


def resolve_preset(preset) -> ExperimentPreset:
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


def preset_variant(preset, **changes) -> ExperimentPreset:
    """A preset with some fields changed and a name that says which.

    Example: ``preset_variant("sweep", prior_correction=True)`` is named ``"sweep+prior_correction"``. Models a
    variant trains exactly like its base (here the 2D models) are shared through the content-keyed cache.
    """
    base = resolve_preset(preset)
    valid = {f.name for f in dataclasses.fields(ExperimentPreset)} - {"name"}
    unknown = sorted(set(changes) - valid)
    if unknown:
        raise NeurosegInputError(f"unknown ExperimentPreset field(s) {unknown}; valid fields: {sorted(valid)}.")
    tag = "+".join(_tag(key, value) for key, value in sorted(changes.items()))
    return dataclasses.replace(base, name=f"{base.name}+{tag}" if tag else base.name, **changes)
