"""The ``neuroseg-lite`` command line: from a lab's own stacks to a model, a segmentation and a neuron table.

Introduced in chapter 10 (``10_whole_sample``) and on the book page "Using your own data". Each subcommand is
a thin layer over the package's functions (named in its help), so what the command line does can be done,
and read, in Python too::

    neuroseg-lite synth tutorial_data                       # image.tif, labels.tif, annotation.tif
    neuroseg-lite train --image tutorial_data/image.tif --labels tutorial_data/annotation.tif \\
        --unlabelled 255 --out model.pt
    neuroseg-lite predict model.pt big_stack.ome.zarr prediction.ome.zarr
    neuroseg-lite count prediction.ome.zarr --out neurons.csv
    neuroseg-lite evaluate prediction.ome.zarr labels.tif
    neuroseg-lite info prediction.ome.zarr
    neuroseg-lite export model.pt model.zip                 # a bioimage.io package: napari, deepImageJ, ilastik

Bad input ends the command with exit status 2 and a one-line reason; nothing is overwritten without
``--overwrite``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from neuroseg_lite._checks import NeurosegInputError

__all__ = ["main", "build_parser"]

_TIFF_SUFFIXES = (".tif", ".tiff")
_EPILOGS = {
    "synth": """examples:
  neuroseg-lite synth tutorial_data                     # a tutorial stack as TIFF, with an annotation
  neuroseg-lite synth sample.ome.zarr --shape 128 512 512 --seed 3   # a large sample, block by block""",
    "train": """examples:
  neuroseg-lite train --image a.tif --labels a_labels.tif --unlabelled 255 --out model.pt
  neuroseg-lite train --image a.tif --image b.tif --labels a_lab.tif --labels b_lab.tif \\
      --planes a_planes.txt --planes b_planes.txt --preset cpu --lam 0.5 --out model.pt""",
    "predict": """examples:
  neuroseg-lite predict model.pt stack.tif prediction.ome.zarr
  neuroseg-lite predict model.pt big.ome.zarr out.ome.zarr --block 64 256 256 --workers 2
  neuroseg-lite predict model.pt big.ome.zarr out.ome.zarr --scheduler tcp://10.0.0.5:8786""",
    "count": """examples:
  neuroseg-lite count prediction.ome.zarr --out neurons.csv --min-volume-um3 100""",
    "evaluate": """examples:
  neuroseg-lite evaluate prediction.ome.zarr labels.tif
  neuroseg-lite evaluate prediction.ome.zarr annotation.tif --unlabelled 255   # annotated planes only""",
    "info": """examples:
  neuroseg-lite info stack.ome.zarr
  neuroseg-lite info model.pt""",
    "export": """examples:
  neuroseg-lite export model.pt model.zip
  neuroseg-lite export model_2d.pt model_2d.zip --test-input stack.tif --name "cortex neurons 2D"
  bioimageio test model.zip                              # bioimageio.core's own check of the package""",
}


# ----------------------------------------------------------------------------------------------- helpers
def _is_tiff(path) -> bool:
    return Path(path).suffix.lower() in _TIFF_SUFFIXES


def _refuse_existing(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise NeurosegInputError(f"{path} exists; pass --overwrite to replace it, or choose another path.")


def _spacing_arg(values):
    return None if values is None else tuple(float(v) for v in values)


def _open_lazy(path, spacing=None):
    """A :class:`neuroseg_lite.zarrio.Stack` of any supported format (TIFF, Zarr, OME-Zarr)."""
    from neuroseg_lite import zarrio

    return zarrio.open_stack(path, spacing=spacing)


def _read(path, spacing=None):
    """Read a whole stack into memory: (array, spacing)."""
    if _is_tiff(path):
        from neuroseg_lite import io

        image, file_spacing = io.read_stack(path)
        return image, spacing or file_spacing
    stack = _open_lazy(path, spacing)
    return np.asarray(stack.data.compute()), stack.spacing


def _annotation(labels, *, unlabelled, planes):
    from neuroseg_lite import sparse

    if unlabelled is None and planes is None:
        # No marker: the whole stack is annotated (dense labels), which is what evaluate expects by default.
        return sparse.from_planes(labels, planes=range(labels.shape[0]))
    return sparse.from_annotation_stack(labels, unlabelled=unlabelled, planes=planes)


def _print_json(values) -> None:
    from neuroseg_lite.utils import to_plain

    print(json.dumps(to_plain(values), indent=2, default=str))


# -------------------------------------------------------------------------------------------- subcommands
def _synth(args) -> None:
    output = Path(args.output)
    _refuse_existing(output, args.overwrite)
    if output.suffix.lower() == ".zarr" or args.shape is not None:
        from neuroseg_lite import synthlarge

        shape = tuple(args.shape) if args.shape is not None else None
        kwargs = {} if shape is None else {"shape": shape}
        synthlarge.write_sample(output, seed=args.seed, preset=args.preset, block=tuple(args.block),
                                overwrite=args.overwrite, progress=True, **kwargs)
        print(f"wrote the sample {output} (image, labels/neurons, neurons.csv)")
        return
    from neuroseg_lite import io, sparse, synth

    volume = synth.make_volume(seed=args.seed, preset=args.preset)
    annotation = sparse.simulate_sparse(volume.labels, n_slices=args.annotate)
    marked = np.where(annotation.annotated, annotation.labels.astype(np.uint8), np.uint8(255)).astype(np.uint8)
    output.mkdir(parents=True, exist_ok=True)
    io.write_stack(output / "image.tif", volume.image, spacing=volume.spacing, overwrite=args.overwrite)
    io.write_stack(output / "labels.tif", volume.labels.astype(np.uint8), spacing=volume.spacing,
                   overwrite=args.overwrite)
    io.write_stack(output / "annotation.tif", marked, spacing=volume.spacing, overwrite=args.overwrite)
    print(f"wrote {output}/image.tif {volume.image.shape} {volume.spacing} µm, labels.tif (dense truth) and "
          f"annotation.tif ({annotation.n_slices} planes annotated: {list(annotation.planes)}; 255 = unlabelled)")


def _train(args) -> None:
    from neuroseg_lite import checkpoint, pseudolabel, train

    output = Path(args.out)
    _refuse_existing(output, args.overwrite)
    if len(args.image) != len(args.labels):
        raise NeurosegInputError(f"got {len(args.image)} --image and {len(args.labels)} --labels; give one label "
                                 "stack per image stack, in the same order.")
    if args.planes and len(args.planes) != len(args.image):
        raise NeurosegInputError(f"got {len(args.planes)} --planes files for {len(args.image)} images; give one "
                                 "per image, in the same order.")
    images, annotations, spacing = [], [], _spacing_arg(args.spacing)
    for index, (image_path, label_path) in enumerate(zip(args.image, args.labels)):
        image, image_spacing = _read(image_path, spacing)
        labels, _ = _read(label_path, spacing)
        if labels.shape != image.shape:
            raise NeurosegInputError(f"{label_path} has shape {labels.shape} but {image_path} has {image.shape}; "
                                     "each label stack must match its image voxel for voxel.")
        planes = args.planes[index] if args.planes else None
        annotations.append(_annotation(labels, unlabelled=args.unlabelled, planes=planes))
        images.append(image)
        spacing = spacing or image_spacing
        print(f"{image_path}: {image.shape}, {annotations[-1].n_slices} annotated planes "
              f"{list(annotations[-1].planes)[:8]}")
    if spacing is None:
        raise NeurosegInputError("the stacks do not say their voxel size; pass --spacing Z Y X in micrometres.")
    pseudo = None
    if args.lam > 0:
        config_2d = dataclasses.replace(train.PRESETS_2D[args.preset], seed=args.seed)
        model_2d = train.train_2d(images, annotations, config=config_2d, spacing=spacing)
        pseudo = [pseudolabel.predict_2d(model_2d, image, progress=True) for image in images]
        if args.save_2d:
            checkpoint.save_model(Path(args.save_2d), model_2d)
    config = train.make_train_config(args.preset, lam=args.lam, seed=args.seed)
    model = train.train_3d(images, annotations, pseudo=pseudo, config=config, spacing=spacing)
    checkpoint.save_model(output, model)
    print(f"saved the 3D U-Net to {output} (lambda = {args.lam}, preset {args.preset!r})")


def _predict(args) -> None:
    from neuroseg_lite import checkpoint, scale, zarrio

    output = Path(args.output)
    masks = output.with_name(output.stem + "_mask" + output.suffix) if _is_tiff(output) else None
    if masks is not None:  # an OME-Zarr output is checked (and resumed) by predict_large itself
        _refuse_existing(output, args.overwrite)
        _refuse_existing(masks, args.overwrite)
    model = checkpoint.load_model(args.model, kind="unet3d")
    stack = _open_lazy(args.input, _spacing_arg(args.spacing))
    if args.resample:
        stack = zarrio.resample_stack(stack, spacing=model.spacing)
    client = None
    if args.scheduler:
        from distributed import Client

        client = Client(args.scheduler)
    elif args.workers:
        from distributed import Client

        client = Client(scale.local_cluster(n_workers=args.workers))
    options = dict(block=tuple(args.block), client=client, probability_dtype=args.probability_dtype,
                   threshold=args.threshold, progress=True, device=args.device)
    if not _is_tiff(output):
        scale.predict_large(model, stack, output, overwrite=args.overwrite, **options)
        print(f"wrote {output}: probability ({args.probability_dtype}) and labels/mask")
        return
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=".neuroseg-predict-") as scratch:
        zarr_path = Path(scratch) / "prediction.ome.zarr"
        scale.predict_large(model, stack, zarr_path, pyramid=False, **options)
        predicted = zarrio.open_stack(zarr_path)
        zarrio.write_tiff(output, predicted.data, spacing=predicted.spacing, overwrite=args.overwrite)
        mask = zarrio.open_stack(zarr_path / "labels" / "mask")
        zarrio.write_tiff(masks, mask.data, spacing=predicted.spacing, overwrite=args.overwrite)
    print(f"wrote {output} (probability, {args.probability_dtype}) and {masks} (mask, 0/1)")


def _as_probability(data):
    """A prediction as float probability: predict's uint8 outputs hold probability x 255; a 0/1 uint8 is a mask.

    (objects.count_neurons reads uint8 predictions by the same rule.)
    """
    if data.dtype != np.uint8:
        return data.astype(np.float32)
    if int(data.max()) <= 1:  # a binary mask (one pass over uint8 values, cheap next to predicting them)
        return data.astype(np.float32)
    return data.astype(np.float32) / np.float32(255.0)


def _count(args) -> None:
    from neuroseg_lite import objects

    output = Path(args.out)
    _refuse_existing(output, args.overwrite)
    stack = _open_lazy(args.prediction, _spacing_arg(args.spacing))
    if stack.spacing is None:
        raise NeurosegInputError(f"{args.prediction} does not say its voxel size; pass --spacing Z Y X (µm).")
    from dask.diagnostics import ProgressBar

    with ProgressBar():
        result = objects.count_neurons(stack.data, spacing=stack.spacing, threshold=args.threshold,
                                       min_volume_um3=args.min_volume_um3, split_touching=args.split_touching)
    objects.write_table(result.table, output, overwrite=args.overwrite)
    print(f"{result.count} neurons in {result.volume_mm3:.4g} mm³ ({result.density_per_mm3:.0f} per mm³); "
          f"table: {output}")


def _evaluate(args) -> None:
    from neuroseg_lite import metrics

    prediction, spacing = _read(args.prediction, _spacing_arg(args.spacing))
    labels, label_spacing = _read(args.labels, _spacing_arg(args.spacing))
    spacing = spacing or label_spacing
    if spacing is None:
        raise NeurosegInputError("neither stack says its voxel size; pass --spacing Z Y X in micrometres.")
    if prediction.shape != labels.shape:
        raise NeurosegInputError(f"the prediction has shape {prediction.shape} but the labels {labels.shape}; "
                                 "evaluate a prediction of the stack these labels belong to.")
    probability = _as_probability(prediction)
    annotation = _annotation(labels, unlabelled=args.unlabelled, planes=args.planes)
    dense = annotation.annotated.all()
    scores = metrics.evaluate(probability, annotation.labels, spacing=spacing, threshold=args.threshold,
                              mask=None if dense else annotation.annotated)
    if not dense:
        # Object and surface scores need whole objects, which a few annotated planes do not hold.
        scores = {key: value for key, value in scores.items() if not key.startswith(("object", "n_", "surface"))}
        scores["annotated_planes"] = list(annotation.planes)
    _print_json(scores)


def _info(args) -> None:
    path = Path(args.path)
    if path.suffix == ".pt":
        from neuroseg_lite import checkpoint

        model = checkpoint.load_model(path, device="cpu")
        history = model.history or {}
        _print_json({"path": str(path), "kind": model.kind, "spacing_um": model.spacing, "version": model.version,
                     "intensity_normalization": model.intensity_normalization.to_dict(),
                     "model_config": dataclasses.asdict(model.model_config),
                     "train_config": model.train_config and dataclasses.asdict(model.train_config),
                     "steps": (history.get("step") or [None])[-1],
                     "final_val_dice": (history.get("val_dice") or [None])[-1]})
        return
    from neuroseg_lite import zarrio

    _print_json(zarrio.describe(path))


def _export(args) -> None:
    from neuroseg_lite import bioimage

    output = Path(args.output)
    _refuse_existing(output, args.overwrite)
    test_input = None if args.test_input is None else _read(args.test_input)[0]
    bioimage.export_bioimage(Path(args.model), output, test_input=test_input, name=args.name,
                             authors=args.author, overwrite=args.overwrite, allow_untrained=args.allow_untrained)
    print(f"wrote the bioimage.io model package {output}; check it with 'bioimageio test {output}', open it in "
          "napari, deepImageJ or ilastik")


# ------------------------------------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``neuroseg-lite`` (one subcommand per step)."""
    from neuroseg_lite import __version__

    parser = argparse.ArgumentParser(
        prog="neuroseg-lite", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Segment and count neuronal bodies in 3D stacks from a few annotated planes "
                    "(2D pseudo-labels + a weighted 3D U-Net). Run 'neuroseg-lite COMMAND --help' for each step.")
    parser.add_argument("--version", action="version", version=f"neuroseg-lite {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, help_text, function):
        sub = commands.add_parser(name, help=help_text, description=help_text, epilog=_EPILOGS[name],
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.set_defaults(function=function)
        return sub

    def spacing_option(sub):
        sub.add_argument("--spacing", nargs=3, type=float, metavar=("Z", "Y", "X"),
                         help="voxel size in micrometres, when the files do not say it")

    def overwrite_option(sub):
        sub.add_argument("--overwrite", action="store_true", help="replace existing outputs")

    sub = command("synth", "Make synthetic data: a tutorial stack as TIFF, or a large sample as OME-Zarr "
                  "(synth.make_volume, synthlarge.write_sample).", _synth)
    sub.add_argument("output", help="a folder (TIFF files) or a .zarr path (a large sample)")
    sub.add_argument("--preset", default="tutorial", help="synthetic-data preset (default: tutorial)")
    sub.add_argument("--seed", type=int, default=0)
    sub.add_argument("--shape", nargs=3, type=int, metavar=("Z", "Y", "X"), help="size of a large sample")
    sub.add_argument("--block", nargs=3, type=int, default=(64, 256, 256), metavar=("Z", "Y", "X"),
                     help="block written at a time for a large sample (default: 64 256 256)")
    sub.add_argument("--annotate", type=int, default=2, help="annotated planes in annotation.tif (default: 2)")
    overwrite_option(sub)

    sub = command("train", "Train the 2D pseudo-labeller, then the 3D U-Net on the annotated planes plus "
                  "pseudo-labels weighted by lambda (train.train_2d, pseudolabel.predict_2d, train.train_3d).",
                  _train)
    sub.add_argument("--image", action="append", required=True, help="an image stack (repeat for several)")
    sub.add_argument("--labels", action="append", required=True,
                     help="its label stack: 0 background, >0 neuron, only some planes annotated")
    marker = sub.add_mutually_exclusive_group(required=True)
    marker.add_argument("--unlabelled", type=int, help="the value of voxels nobody annotated (e.g. 255 or -1)")
    marker.add_argument("--planes", action="append", help="a side file listing the annotated planes (per image)")
    sub.add_argument("--out", required=True, help="the model file to write (.pt)")
    sub.add_argument("--preset", default="cpu", choices=("smoke", "cpu", "gpu"), help="training budget")
    sub.add_argument("--lam", type=float, default=0.5, help="weight of pseudo-labelled voxels; 0 trains sparsely")
    sub.add_argument("--seed", type=int, default=0)
    sub.add_argument("--save-2d", help="also save the 2D pseudo-labeller to this file")
    spacing_option(sub)
    overwrite_option(sub)

    sub = command("predict", "Predict a stack of any size block by block on Dask (scale.predict_large); an "
                  "interrupted run resumes when the same command is run again.", _predict)
    sub.add_argument("model", help="a 3D model file from 'neuroseg-lite train'")
    sub.add_argument("input", help="TIFF, Zarr or OME-Zarr stack")
    sub.add_argument("output", help=".ome.zarr (probability + labels/mask) or .tif (probability + _mask.tif)")
    sub.add_argument("--block", nargs=3, type=int, default=(64, 256, 256), metavar=("Z", "Y", "X"))
    sub.add_argument("--workers", type=int, help="start a local Dask cluster with this many workers")
    sub.add_argument("--scheduler", help="address of a running Dask scheduler (e.g. on a SLURM cluster)")
    sub.add_argument("--probability-dtype", default="uint8", choices=("uint8", "float16"))
    sub.add_argument("--threshold", type=float, default=0.5)
    sub.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    sub.add_argument("--resample", action="store_true", help="resample the stack to the model's spacing first")
    spacing_option(sub)
    overwrite_option(sub)

    sub = command("count", "Count the neurons of a prediction and write their table (objects.count_neurons).",
                  _count)
    sub.add_argument("prediction", help="a prediction (OME-Zarr or TIFF) from 'neuroseg-lite predict'")
    sub.add_argument("--out", required=True, help="the neuron table to write (.csv or .parquet)")
    sub.add_argument("--threshold", type=float, default=0.5)
    sub.add_argument("--min-volume-um3", type=float, default=50.0, help="smaller objects are dropped")
    sub.add_argument("--split-touching", action="store_true", help="split touching somata (watershed)")
    spacing_option(sub)
    overwrite_option(sub)

    sub = command("evaluate", "Score a prediction against labels, optionally on the annotated planes only "
                  "(metrics.evaluate).", _evaluate)
    sub.add_argument("prediction")
    sub.add_argument("labels", help="dense labels, or sparse ones with --unlabelled / --planes")
    marker = sub.add_mutually_exclusive_group()
    marker.add_argument("--unlabelled", type=int, help="the value of voxels nobody annotated")
    marker.add_argument("--planes", help="a side file listing the annotated planes")
    sub.add_argument("--threshold", type=float, default=0.5)
    spacing_option(sub)

    sub = command("info", "Say what a stack or a model file holds (zarrio.describe, checkpoint.load_model).",
                  _info)
    sub.add_argument("path")

    sub = command("export", "Write a model file as a bioimage.io model package for napari, deepImageJ and "
                  "ilastik (bioimage.export_bioimage; needs the 'export' extra).", _export)
    sub.add_argument("model", help="a model file (.pt) from 'neuroseg-lite train' (3D, or the 2D one of --save-2d)")
    sub.add_argument("output", help="the package to write (.zip)")
    sub.add_argument("--test-input", help="a stack (TIFF, Zarr, OME-Zarr) to crop the test input from "
                     "(default: a small synthetic stack)")
    sub.add_argument("--name", help="the model's name in the package")
    sub.add_argument("--author", action="append", help="who trained it (repeat for several)")
    sub.add_argument("--allow-untrained", action="store_true",
                     help="export a network without training steps, marked as untrained")
    overwrite_option(sub)
    return parser


def main(argv=None) -> int:
    """Run ``neuroseg-lite``; returns the exit status (0 done, 2 bad input, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.function(args)
    except NeurosegInputError as err:
        print(f"neuroseg-lite {args.command}: error: {err}", file=sys.stderr)
        return 2
    except FileNotFoundError as err:
        print(f"neuroseg-lite {args.command}: error: {err.filename or err}: no such file", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"neuroseg-lite {args.command}: interrupted; run the same command again to continue"
              f"{' where it stopped' if args.command == 'predict' else ''}.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
