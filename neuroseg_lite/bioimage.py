"""A trained model as a bioimage.io model package for napari, deepImageJ and ilastik (book page "Using your own data").

Introduced in ``book/own_data.md``, section "Use the model in other tools". :func:`export_bioimage` writes one
zip that those tools open: the description ``rdf.yaml`` (bioimage.io model format 0.5), TorchScript weights, a
test input and the output the weights give for it, and a README with how the network was trained. The
package's own preprocessing travels with it as bioimage.io operations:

- intensity: the model's :class:`~neuroseg_lite.intensity.IntensityNormalization` becomes ``scale_range`` with
  the same percentiles (then ``clip`` when the model clips). The 3D U-Net reduces over z, y and x of each
  stack, as :func:`neuroseg_lite.io.normalize_percentile` does; a 2D pseudo-labeller sees one plane, so there
  the percentiles are per plane (the package takes them per stack: close for evenly bright stacks).
  ``"none"`` adds no operation: the tool must feed images normalised as in training.
- output: every exported network returns one foreground logit; the ``sigmoid`` postprocessing makes it the
  probability that :func:`neuroseg_lite.infer.predict_volume` and :func:`neuroseg_lite.pseudolabel.predict_2d`
  return (for the patch classifier, logit(foreground) - logit(background), whose sigmoid is its softmax).
- tiling: input sizes are multiples of the network's pooling divisor; the output halo is the border a tool
  should discard between tiles (see :data:`HALO_FRACTION`).

Needs the ``export`` extra (``pip install "neuroseg-lite[export]"``: ``bioimageio.core``).
"""
from __future__ import annotations

import contextlib
import copy
import math
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from neuroseg_lite._checks import NeurosegInputError
from neuroseg_lite.cache import atomic_write
from neuroseg_lite.checkpoint import TrainedModel, load_model
from neuroseg_lite.infer import DEFAULT_TILE
from neuroseg_lite.models2d import PATCH_CENTRE, PATCH_SIZE, PatchCNN

__all__ = ["export_bioimage", "HALO_FRACTION", "PAPER_DOI"]

PAPER_DOI = "10.48550/arXiv.2009.00029"
_PAPER = ("Castelli, Roffilli, Mazzamuto, Costantini, Silvestri, Pavone (2020). Semantic Segmentation of Neuronal "
          "Bodies in Fluorescence Microscopy Using a 2D+3D CNN Training Strategy with Sparsely Annotated Data. "
          "arXiv:2009.00029")
_REPOSITORY = "https://github.com/neuroseg-lite/neuroseg-lite"
#: Halo of a U-Net output as a fraction of predict_volume's default tile, half the 25 % overlap it blends,
#: i.e. the border it down-weights. The U-Nets' receptive fields reach further (about 30 planes in z), so
#: cropping them exactly would need tiles several times larger; a Gaussian-blended 1/8 border was enough for
#: predict_volume to match a whole-volume pass to about 1e-3 (see infer.DEFAULT_TILE).
HALO_FRACTION = 0.125
# Largest default test input (z, y, x): the package stays small, and the bioimage.io test stays quick.
_TEST_CAP = DEFAULT_TILE
_NAME_CHARACTERS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+- ()")


class _PatchLogit(torch.nn.Module):
    """PatchCNN as one foreground logit per pixel, shape-independent (exact within the image, as dense_logits).

    dense_logits builds its reflection indices in numpy, which a traced graph would freeze to one image size;
    ``F.pad(mode="reflect")`` is the same reflection for pads shorter than the image (inputs >= 17 pixels).
    """

    def __init__(self, network: PatchCNN):
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        after = PATCH_SIZE - PATCH_CENTRE - 1
        logits = self.network._dense_padded(F.pad(x, (PATCH_CENTRE, after, PATCH_CENTRE, after), mode="reflect"))
        return logits[:, 1:2] - logits[:, 0:1]


def _geometry(model: TrainedModel) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """Per spatial axis ((z,) y, x): minimum input size, size step and output halo."""
    network = model.network
    if model.kind == "unet3d":
        step, tile = tuple(network.divisor), DEFAULT_TILE
    elif isinstance(network, PatchCNN):
        # Pixel (i, j) reads rows i-16 .. i+15: a halo of 16 makes tiles exact; 33 pixels leave one.
        return (2 * PATCH_CENTRE + 1,) * 2, (1, 1), (PATCH_CENTRE,) * 2
    else:
        step, tile = (2 ** network.depth,) * 2, DEFAULT_TILE[1:]
    halo = tuple(math.ceil(t * HALO_FRACTION / s) * s for t, s in zip(tile, step))  # keeps the pooling grid
    return tuple(2 * h + s for h, s in zip(halo, step)), step, halo


def _is_trained(model: TrainedModel) -> bool:
    steps = (model.history or {}).get("step") or []
    return bool(steps) and max(steps) > 0


def _valid_crop(image: np.ndarray, minimum, step, cap, *, source: str) -> np.ndarray:
    """The centred crop of the largest shape min + k * step that fits both the image and ``cap``."""
    sizes = []
    for n, m, s, c in zip(image.shape, minimum, step, cap):
        if n < m:
            raise NeurosegInputError(f"the test input {source} has shape {image.shape}, smaller than the network's "
                                     f"minimum {tuple(minimum)}; pass a larger crop (or no test input).")
        sizes.append(m + (min(n, max(c, m)) - m) // s * s)
    starts = [(n - k) // 2 for n, k in zip(image.shape, sizes)]
    return image[tuple(slice(a, a + k) for a, k in zip(starts, sizes))]


def _test_input(model: TrainedModel, test_input, minimum, step) -> np.ndarray:
    """A raw test image of a valid shape: (Z, Y, X) for the 3D U-Net, (Y, X) for a 2D model."""
    if test_input is None:
        from neuroseg_lite import synth

        image, source = synth.make_volume(preset="tiny", seed=0).image, "(synthetic)"
        if model.intensity_normalization.method == "none":  # such a model expects normalised floats
            from neuroseg_lite.io import normalize_percentile

            image = normalize_percentile(image)
    else:
        image, source = np.asarray(test_input), f"of dtype {np.asarray(test_input).dtype}"
    if model.kind == "model2d" and image.ndim == 3:
        image = image[image.shape[0] // 2]  # a 2D model sees one plane: the middle one
    wanted = 3 if model.kind == "unet3d" else 2
    if image.ndim != wanted:
        raise NeurosegInputError(f"the test input has shape {image.shape}; a {model.kind} model needs a "
                                 f"{'(Z, Y, X) stack' if wanted == 3 else '(Y, X) plane or a (Z, Y, X) stack'}.")
    return _valid_crop(image, minimum, step, _TEST_CAP[-wanted:], source=source)


def _preprocessing(model: TrainedModel, v0_5, axes):
    spec = model.intensity_normalization
    if spec.method == "none":
        return []
    if spec.high <= 1.0:
        raise NeurosegInputError(f"bioimage.io's scale_range needs an upper percentile above 1, but the model "
                                 f"normalises with high={spec.high}; retrain with a usual range (e.g. 99.8).")
    ops = [v0_5.ScaleRangeDescr(kwargs=v0_5.ScaleRangeKwargs(
        axes=[v0_5.AxisId(a) for a in axes], min_percentile=spec.low, max_percentile=spec.high))]
    if spec.clip:
        ops.append(v0_5.ClipDescr(kwargs=v0_5.ClipKwargs(min=0.0, max=1.0)))
    return ops


def _training_text(model: TrainedModel, trained: bool) -> str:
    """What the README says about the network and its training (markdown)."""
    history, config = model.history or {}, model.train_config
    lines = [f"- network: `{model.kind}`, {type(model.network).__name__} with "
             f"{sum(p.numel() for p in model.network.parameters()):,} parameters; architecture "
             f"`{model.model_config}`",
             f"- intensity normalisation: `{model.intensity_normalization}`",
             f"- voxel size (z, y, x) of the training stacks: {model.spacing} µm",
             f"- trained by neuroseg-lite {model.version}"]
    if trained:
        loss = f", final loss {float(history['loss'][-1]):.4g}" if history.get("loss") else ""
        lines.append(f"- training: {max(history['step'])} optimiser steps{loss}")
        if history.get("val_dice"):
            lines.append(f"- final validation Dice: {float(history['val_dice'][-1]):.3f}")
    else:
        lines.append("- **UNTRAINED**: no training steps; its outputs are meaningless (for testing tools only)")
    if config is not None:
        lines.append(f"- training configuration: `{config}`")
    return "\n".join(lines)


def _readme(model: TrainedModel, name: str, trained: bool, axes: str) -> str:
    return f"""# {name}

Exported by neuroseg-lite ({_REPOSITORY}) from a model file of its own. Segments neuronal bodies in
fluorescence stacks: the output is the foreground probability of every {'voxel' if axes == 'zyx' else 'pixel'}
(axes {axes}). It follows the 2D + 3D training strategy of Castelli et al. (2020, arXiv:2009.00029): a 2D
pseudo-labeller trained on a few annotated planes, then a 3D U-Net trained on the manual labels plus its
pseudo-labels.

{_training_text(model, trained)}

Feed raw single-channel images at about the voxel size above; the package's preprocessing (percentile
normalisation) is described in the rdf and applied by the tools. Cite the paper above when you use it.

## Validation

The test output is what these TorchScript weights return for the test input after neuroseg-lite's own
normalisation; `bioimageio.core`'s test (`bioimageio test model.zip`) reproduces it from the rdf's
preprocessing. Validate the segmentation on your own annotated planes (the book's chapter 6).
"""


@contextlib.contextmanager
def _quiet_jit():
    """Silence torch.jit's warnings, which say nothing the exporter can act on.

    The shape checks in forward() become constants of the trace (TracerWarning); the declared min/step keep
    them true. TorchScript is deprecated in recent torch, but it is the PyTorch format the bioimage.io tools
    read (DeprecationWarning).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.jit")
        yield


def export_bioimage(model, path, *, test_input=None, name: str | None = None, authors=None,
                    overwrite: bool = False, allow_untrained: bool = False) -> Path:
    """Write ``model`` as a bioimage.io model package (a zip with bioimageio.yaml and TorchScript weights).

    Parameters
    ----------
    model : TrainedModel or str or Path
        A 3D U-Net or a 2D pseudo-labeller (one input channel, i.e. ``context_planes=0``), or the path of a
        model file (read by :func:`neuroseg_lite.checkpoint.load_model`, weights only). Never modified.
    path : str or Path
        The ``.zip`` to write.
    test_input : ndarray, optional
        Raw image the package's test input is cropped from: (Z, Y, X) for the 3D U-Net (a centred crop of a
        valid size, at most ``infer.DEFAULT_TILE``), a (Y, X) plane or a (Z, Y, X) stack (its middle plane)
        for a 2D model. Default: the synthetic ``"tiny"`` stack of :func:`neuroseg_lite.synth.make_volume`.
    name : str, optional
        The model's name (5-128 letters, digits, spaces and ``_+-()``). Default from the kind and the file.
    authors : sequence of str, optional
        Who trained the model (default: "NeuroSeg Lite user").
    overwrite : bool
        Replace an existing ``path``.
    allow_untrained : bool
        Export a network whose history holds no training steps, named, described and tagged "untrained".

    Returns
    -------
    Path
        ``path``. Its test output is the exported weights' probability on the test input, shape
        (1, 1, z, y, x) or (1, 1, y, x), after the model's own intensity normalisation.

    Raises
    ------
    NeurosegInputError
        Untrained model (without ``allow_untrained``), existing output, bad name, test input or model.
    """
    if isinstance(model, (str, Path)):
        model = load_model(model, device="cpu")
    elif not isinstance(model, TrainedModel):
        raise NeurosegInputError(f"export_bioimage takes a TrainedModel or a model file path, got "
                                 f"{type(model).__name__}; pass e.g. what train_3d returns, or 'model.pt'.")
    path = Path(path)
    if path.suffix.lower() != ".zip":
        raise NeurosegInputError(f"{path}: a bioimage.io model package is a .zip file; name it e.g. model.zip.")
    if path.exists() and not overwrite:
        raise NeurosegInputError(f"{path} exists; pass overwrite=True (--overwrite) to replace it.")
    trained = _is_trained(model)
    if not trained and not allow_untrained:
        raise NeurosegInputError("the model's history holds no training steps (an untrained network); train it "
                                 "first (train.train_3d / neuroseg-lite train), or pass allow_untrained=True "
                                 "(--allow-untrained) to export it marked as untrained.")
    if model.kind == "model2d" and model.model_config.in_channels != 1:
        raise NeurosegInputError(f"this 2D model reads {model.model_config.in_channels} z-planes as channels "
                                 "(context_planes > 0), which the tools cannot assemble; export a model trained "
                                 "with context_planes=0, or predict with neuroseg_lite.pseudolabel.predict_2d.")
    default = f"NeuroSeg Lite {'3D U-Net' if model.kind == 'unet3d' else '2D pseudo-labeller'}"
    default += f" {model.path.stem}" if model.path is not None else ""
    name = (name or "".join(c if c in _NAME_CHARACTERS else "-" for c in default))[:128]
    if not trained and "untrained" not in name.lower():
        name = f"UNTRAINED {name}"[:128]
    if len(name) < 5 or set(name) - _NAME_CHARACTERS:
        raise NeurosegInputError(f"model name {name!r}: bioimage.io names have 5 to 128 characters, only letters, "
                                 "digits, spaces and _+-(); choose another name.")
    try:
        from bioimageio.spec import save_bioimageio_package
        from bioimageio.spec.model import v0_5
    except ImportError as err:
        raise NeurosegInputError("exporting needs bioimageio.core; install it with "
                                 "pip install 'neuroseg-lite[export]'.") from err

    minimum, step, halo = _geometry(model)
    raw = _test_input(model, test_input, minimum, step)
    # The package's own normalisation (a 2D plane as a one-plane stack: per plane, as the rdf says).
    normalised = model.preprocess(raw if raw.ndim == 3 else raw[None])
    normalised = normalised.reshape((1, 1) + raw.shape)
    network = copy.deepcopy(model.network).cpu().eval()  # the caller's network keeps its device and mode
    module = _PatchLogit(network) if isinstance(network, PatchCNN) else network
    axes = "zyx" if model.kind == "unet3d" else "yx"
    spacing = model.spacing or (1.0, 1.0, 1.0)
    scale = dict(zip("zyx", spacing))
    unit = "micrometer" if model.spacing is not None else None
    author_names = list(authors) if authors else ["NeuroSeg Lite user"]
    untrained_note = "" if trained else "UNTRAINED (no training steps; outputs are meaningless). "

    with tempfile.TemporaryDirectory(prefix="neuroseg-bioimage-") as scratch:
        folder = Path(scratch)
        example = torch.from_numpy(normalised)
        with _quiet_jit():
            torch.jit.trace(module, example, check_trace=False).save(str(folder / "weights.pt"))
            with torch.inference_mode():  # the test output comes from the file written, not from the network
                logits = torch.jit.load(str(folder / "weights.pt"), map_location="cpu")(example)
        probability = torch.sigmoid(logits).numpy().astype(np.float32)
        np.save(folder / "test_input.npy", raw.astype(np.float32).reshape(normalised.shape))
        np.save(folder / "test_output.npy", probability)
        (folder / "README.md").write_text(_readme(model, name, trained, axes), encoding="utf-8")

        input_id, output_id = v0_5.TensorId("raw"), v0_5.TensorId("probability")
        input_axes = [v0_5.BatchAxis(), v0_5.ChannelAxis(channel_names=[v0_5.Identifier("raw")])]
        output_axes = [v0_5.BatchAxis(), v0_5.ChannelAxis(channel_names=[v0_5.Identifier("foreground")])]
        for axis, m, s, h in zip(axes, minimum, step, halo):
            axis_id = v0_5.AxisId(axis)
            input_axes.append(v0_5.SpaceInputAxis(id=axis_id, size=v0_5.ParameterizedSize(min=m, step=s),
                                                  scale=scale[axis], unit=unit))
            output_axes.append(v0_5.SpaceOutputAxisWithHalo(
                id=axis_id, size=v0_5.SizeReference(tensor_id=input_id, axis_id=axis_id), halo=h,
                scale=scale[axis], unit=unit))
        kind_text = ("3D U-Net" if model.kind == "unet3d" else
                     f"2D pseudo-labeller ({type(network).__name__}, one z-plane at a time)")
        descr = v0_5.ModelDescr(
            name=name,
            description=(f"{untrained_note}{kind_text} segmenting neuronal bodies in fluorescence microscopy: "
                         "foreground probability per voxel. 2D+3D training strategy with sparse annotations "
                         f"(Castelli et al. 2020); exported by neuroseg-lite {model.version}.")[:1024],
            authors=[v0_5.Author(name=a) for a in author_names],
            cite=[v0_5.CiteEntry(text=_PAPER, doi=v0_5.Doi(PAPER_DOI))],
            license=v0_5.LicenseId("MIT"),
            documentation=v0_5.FileDescr(source=folder / "README.md"),
            tags=["neuroseg-lite", "semantic-segmentation", "fluorescence-light-microscopy", "neurons", "pytorch",
                  "3d" if model.kind == "unet3d" else "2d"] + ([] if trained else ["untrained"]),
            inputs=[v0_5.InputTensorDescr(
                id=input_id, axes=input_axes, test_tensor=v0_5.FileDescr(source=folder / "test_input.npy"),
                data=v0_5.IntervalOrRatioDataDescr(type="float32"),
                preprocessing=_preprocessing(model, v0_5, axes),
                description="raw intensities, one channel" if model.intensity_normalization.method != "none"
                else "intensities normalised as in training (the model carries no normalisation)")],
            outputs=[v0_5.OutputTensorDescr(
                id=output_id, axes=output_axes, test_tensor=v0_5.FileDescr(source=folder / "test_output.npy"),
                data=v0_5.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
                postprocessing=[v0_5.SigmoidDescr()], description="foreground probability")],
            weights=v0_5.WeightsDescr(torchscript=v0_5.TorchscriptWeightsDescr(
                source=folder / "weights.pt", pytorch_version=v0_5.Version(torch.__version__.split("+")[0]))),
            config={"neuroseg_lite": {"kind": model.kind, "version": model.version, "trained": trained,
                                      "intensity_normalization": model.intensity_normalization.to_dict(),
                                      "spacing_um": None if model.spacing is None else list(model.spacing)}},
        )
        atomic_write(path, lambda tmp: save_bioimageio_package(descr, output_path=tmp))
    return path
