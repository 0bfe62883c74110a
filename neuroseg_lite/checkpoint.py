"""The one model file of the package, for the 2D pseudo-labeller and the 3D U-Net alike.

Introduced in chapter 3 (``03_train_2d``) and used by every later chapter. A :class:`TrainedModel` is what
training returns and what prediction takes: the network with everything needed to rebuild and use it (model
and training configs, the intensity normalisation its inputs went through, the voxel spacing it was trained
at, its training history and the package version). Prediction applies the stored normalisation itself, so a
model and its preprocessing cannot be mismatched.

Files are plain dicts of tensors and builtins, written atomically and read with
``torch.load(..., weights_only=True)``; the weights are checked against the architecture the config describes.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from neuroseg_lite._checks import NeurosegInputError, check_spacing
from neuroseg_lite.cache import atomic_write
from neuroseg_lite.intensity import IntensityNormalization
from neuroseg_lite.models2d import Model2DConfig, Train2DConfig, build_model_2d
from neuroseg_lite.trainconfig import TrainConfig
from neuroseg_lite.unet3d import UNet3D, UNet3DConfig
from neuroseg_lite.utils import select_device, to_plain

__all__ = ["TrainedModel", "save_model", "load_model", "KINDS", "FORMAT", "FORMAT_VERSION"]

FORMAT = "neuroseg_lite.model"
FORMAT_VERSION = 2
KINDS = ("unet3d", "model2d")
_LEGACY_FORMATS = ("neuroseg_lite.unet3d", "neuroseg_lite.pseudolabel2d/1")
_CONFIGS = {"unet3d": (UNet3DConfig, TrainConfig), "model2d": (Model2DConfig, Train2DConfig)}


def _build(kind: str, model_config) -> torch.nn.Module:
    return UNet3D(model_config) if kind == "unet3d" else build_model_2d(model_config)


def _shapes(state: dict) -> dict:
    return {key: tuple(value.shape) for key, value in state.items()}


def _architecture_mismatch(kind: str, model_config, state: dict) -> str | None:
    """None if ``state`` fits the network ``model_config`` builds, else a description of the difference."""
    expected, saved = _shapes(_build(kind, model_config).state_dict()), _shapes(state)
    if expected == saved:
        return None
    missing, unexpected = sorted(set(expected) - set(saved)), sorted(set(saved) - set(expected))
    shapes = [f"{k}: {saved[k]} vs {expected[k]}" for k in expected if k in saved and saved[k] != expected[k]]
    return f"missing {missing[:3]}, unexpected {unexpected[:3]}, shape mismatches {shapes[:3]}"


@dataclass
class TrainedModel:
    """A trained network with its configs, preprocessing, spacing and history.

    Attributes
    ----------
    network : torch.nn.Module
        :class:`~neuroseg_lite.unet3d.UNet3D`, :class:`~neuroseg_lite.models2d.PatchCNN` or
        :class:`~neuroseg_lite.models2d.UNet2D`, in eval mode.
    kind : {"unet3d", "model2d"}
    model_config : UNet3DConfig or Model2DConfig
    train_config : TrainConfig or Train2DConfig, optional
    intensity_normalization : IntensityNormalization
        Applied to raw images by training and prediction.
    spacing : tuple of 3 float, optional
        Voxel size (z, y, x) in micrometres of the training images.
    history : dict of lists
        "step", "loss", "lr", "seconds" and, with validation, "val_step", "val_dice", "val_seconds".
    version : str
        neuroseg_lite version that trained it.
    path : Path, optional
        The file it was loaded from or last saved to.
    """

    network: torch.nn.Module
    kind: str
    model_config: object
    train_config: object = None
    intensity_normalization: IntensityNormalization = field(default_factory=IntensityNormalization)
    spacing: tuple | None = None
    history: dict = field(default_factory=dict)
    version: str = ""
    path: Path | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise NeurosegInputError(f"model kind must be one of {KINDS}, got {self.kind!r}.")
        if self.spacing is not None:
            self.spacing = check_spacing(self.spacing)
        if not self.version:
            import neuroseg_lite

            self.version = neuroseg_lite.__version__

    def preprocess(self, image, *, name: str = "image"):
        """The network's view of a raw (Z, Y, X) stack: this model's intensity normalisation (a new array)."""
        return self.intensity_normalization.apply(image, name=name)

    def to(self, device) -> TrainedModel:
        """Move the network to ``device`` (``"auto"`` picks CUDA, MPS, then the CPU); returns self."""
        self.network.to(select_device(device))
        return self

    def __repr__(self) -> str:
        n = sum(p.numel() for p in self.network.parameters())
        return (f"TrainedModel(kind={self.kind!r}, {type(self.network).__name__} with {n:,} parameters, "
                f"intensity={self.intensity_normalization}, spacing={self.spacing}, version={self.version!r})")


def save_model(path, model: TrainedModel) -> Path:
    """Write ``model`` to ``path`` in one step (an existing file is replaced atomically).

    Raises
    ------
    NeurosegInputError
        If the configs do not describe the network (it could not be rebuilt from the file).
    """
    if not isinstance(model, TrainedModel):
        raise NeurosegInputError(f"save_model takes a TrainedModel (what train_2d/train_3d return), got "
                                 f"{type(model).__name__}.")
    state = {k: v.detach().cpu().contiguous() for k, v in model.network.state_dict().items()}
    problem = _architecture_mismatch(model.kind, model.model_config, state)
    if problem:
        raise NeurosegInputError(f"model_config {model.model_config} does not describe the network ({problem}); "
                                 "pass the config the network was built with.")
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": model.kind,
        "model_config": to_plain(asdict(model.model_config)),
        "train_config": None if model.train_config is None else to_plain(asdict(model.train_config)),
        "intensity_normalization": model.intensity_normalization.to_dict(),
        "spacing": None if model.spacing is None else list(model.spacing),
        "history": to_plain(model.history),
        "package_version": model.version,
        "torch_version": str(torch.__version__),
        "state_dict": state,
    }
    model.path = atomic_write(path, lambda tmp: torch.save(payload, tmp))
    return model.path


def _read_train_config(kind: str, values):
    if values is None:
        return None
    try:
        return _CONFIGS[kind][1](**values)
    except (TypeError, NeurosegInputError):
        return values  # written by another version: keep the plain dict rather than refuse the weights


def load_model(path, *, kind: str | None = None, device="auto") -> TrainedModel:
    """Read a model file written by :func:`save_model` (weights only: no code is unpickled).

    Parameters
    ----------
    path : str or Path
    kind : {"unet3d", "model2d"}, optional
        Refuse a file that holds the other kind of network.
    device : {"auto", "cpu", "cuda", "mps"} or torch.device

    Returns
    -------
    TrainedModel
        The network on ``device``, in eval mode.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}; check the path (save_model writes one).")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and weights-only errors differ by torch version; all mean "unusable"
        raise NeurosegInputError(f"{path} is not a readable model file ({type(err).__name__}: {err}); it is "
                                 "truncated, damaged or not a torch file.") from err
    found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
    if found in _LEGACY_FORMATS:
        raise NeurosegInputError(f"{path} was written by an earlier neuroseg_lite (format {found!r}) without its "
                                 "intensity normalisation; retrain the model (experiment runs do so by themselves).")
    if found != FORMAT:
        raise NeurosegInputError(f"{path} is not a NeuroSeg Lite model file (format {found!r}, expected "
                                 f"{FORMAT!r}).")
    stored_kind = payload.get("kind")
    if stored_kind not in KINDS:
        raise NeurosegInputError(f"{path}: unknown model kind {stored_kind!r}; the file was edited or is corrupt.")
    if kind is not None and stored_kind != kind:
        names = {"unet3d": "a 3D U-Net", "model2d": "a 2D pseudo-labeller"}
        raise NeurosegInputError(f"{path} holds {names[stored_kind]}, not {names.get(kind, kind)}; pass the other "
                                 "model file (or kind=None).")
    try:
        model_config = _CONFIGS[stored_kind][0](**payload["model_config"])
        intensity = IntensityNormalization.from_dict(payload.get("intensity_normalization"))
    except (TypeError, KeyError, NeurosegInputError) as err:
        raise NeurosegInputError(f"{path}: unreadable model_config or intensity normalisation ({err}); the file "
                                 "is corrupt or from a newer version of neuroseg_lite.") from err
    state = payload.get("state_dict", {})
    problem = _architecture_mismatch(stored_kind, model_config, state)
    if problem:
        raise NeurosegInputError(f"{path}: the saved weights do not fit the architecture its config describes "
                                 f"({model_config}): {problem}. The file was edited or is corrupt.")
    network = _build(stored_kind, model_config)
    network.load_state_dict(state)
    return TrainedModel(
        network=network.to(select_device(device)).eval(), kind=stored_kind, model_config=model_config,
        train_config=_read_train_config(stored_kind, payload.get("train_config")),
        intensity_normalization=intensity, spacing=payload.get("spacing"), history=payload.get("history", {}),
        version=str(payload.get("package_version", "")), path=path)
