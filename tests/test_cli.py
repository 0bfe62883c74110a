"""The ``neuroseg-lite`` command line, each subcommand run on small data as a user would (chapter 10)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from neuroseg_lite import cli, io


def run(*argv, expect=0):
    status = cli.main([str(a) for a in argv])
    assert status == expect
    return status


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli") / "data"
    assert cli.main(["synth", str(folder), "--preset", "tiny", "--annotate", "2"]) == 0
    return folder


@pytest.fixture(scope="module")
def tiny_model(tiny_data):
    model = tiny_data.parent / "model.pt"
    status = cli.main(["train", "--image", str(tiny_data / "image.tif"), "--labels", str(tiny_data / "annotation.tif"),
                       "--unlabelled", "255", "--preset", "smoke", "--out", str(model)])
    assert status == 0
    return model


def test_synth_writes_image_truth_and_a_sparse_annotation(tiny_data):
    image, spacing = io.read_stack(tiny_data / "image.tif")
    labels, _ = io.read_stack(tiny_data / "labels.tif")
    annotation, _ = io.read_stack(tiny_data / "annotation.tif")
    assert image.shape == labels.shape == annotation.shape and spacing == (2.0, 0.9, 0.9)
    annotated = np.flatnonzero((annotation != 255).all(axis=(1, 2)))
    assert len(annotated) == 2
    # on the annotated planes the annotation is the truth; elsewhere it is the unlabelled marker
    assert np.array_equal(annotation[annotated] > 0, labels[annotated] > 0)
    assert (annotation[np.setdiff1d(np.arange(len(annotation)), annotated)] == 255).all()


def test_train_writes_a_model_that_info_describes(tiny_model, capsys):
    run("info", tiny_model)
    described = json.loads(capsys.readouterr().out)
    assert described["kind"] == "unet3d" and described["spacing_um"] == [2.0, 0.9, 0.9]
    assert described["train_config"]["lam"] == 0.5


def test_evaluate_dense_and_on_annotated_planes(tiny_data, capsys):
    # the truth scored against itself is perfect; the annotation against the truth only on its planes
    run("evaluate", tiny_data / "labels.tif", tiny_data / "labels.tif")
    dense = json.loads(capsys.readouterr().out)
    assert dense["dice"] == 1.0 and dense["object_f1"] == 1.0
    run("evaluate", tiny_data / "labels.tif", tiny_data / "annotation.tif", "--unlabelled", "255")
    planes = json.loads(capsys.readouterr().out)
    assert planes["dice"] == 1.0 and len(planes["annotated_planes"]) == 2 and "object_f1" not in planes


def test_bad_input_gives_exit_status_2_and_one_line(tiny_data, tiny_model, tmp_path, capsys):
    run("train", "--image", tiny_data / "image.tif", "--labels", tiny_data / "annotation.tif",
        "--unlabelled", "255", "--out", tiny_model, expect=2)
    assert "exists; pass --overwrite" in capsys.readouterr().err
    run("info", tmp_path / "missing.ome.zarr", expect=2)
    err = capsys.readouterr().err
    assert err.startswith("neuroseg-lite info: error:") and err.count("\n") == 1
    run("evaluate", tiny_data / "labels.tif", tiny_data / "annotation.tif", "--unlabelled", "7", expect=2)
    assert "occurs nowhere" in capsys.readouterr().err


def test_every_command_has_help_with_an_example():
    for command in ("synth", "train", "predict", "count", "evaluate", "info", "export"):
        done = subprocess.run([sys.executable, "-m", "neuroseg_lite.cli", command, "--help"],
                              capture_output=True, text=True, check=True)
        assert "examples:" in done.stdout and f"neuroseg-lite {command}" in done.stdout


def test_predict_to_tiff_and_count(tiny_data, tiny_model, tmp_path, capsys):
    output = tmp_path / "prediction.tif"
    run("predict", tiny_model, tiny_data / "image.tif", output)
    probability, spacing = io.read_stack(output)
    mask, _ = io.read_stack(tmp_path / "prediction_mask.tif")
    assert probability.dtype == np.uint8 and spacing == (2.0, 0.9, 0.9)
    assert np.array_equal(mask > 0, probability >= 128)  # the mask is probability >= 0.5
    assert not any(p.name.startswith(".neuroseg-predict") for p in tmp_path.iterdir())  # scratch removed
    run("predict", tiny_model, tiny_data / "image.tif", output, expect=2)  # never overwrites
    assert "--overwrite" in capsys.readouterr().err
    run("count", output, "--out", tmp_path / "neurons.csv", "--min-volume-um3", "0")
    assert "neurons in" in capsys.readouterr().out
    import pandas as pd

    table = pd.read_csv(tmp_path / "neurons.csv")
    assert {"id", "z_um", "y_um", "x_um", "volume_um3", "mean_probability"} <= set(table.columns)


def test_synth_a_large_sample_and_describe_it(tmp_path, capsys):
    sample = tmp_path / "sample.ome.zarr"
    run("synth", sample, "--preset", "tiny", "--shape", "16", "48", "40", "--block", "8", "32", "32")
    run("info", sample)
    described = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert described["shape"] == [16, 48, 40] and described["labels"] == ["neurons"]
    assert (sample / "neurons.csv").is_file()
    run("synth", sample, "--preset", "tiny", "--shape", "16", "48", "40", expect=2)


def test_predict_refuses_a_model_of_the_wrong_kind(tiny_data, tmp_path, capsys):
    model_2d = tmp_path / "model2d.pt"
    run("train", "--image", tiny_data / "image.tif", "--labels", tiny_data / "annotation.tif", "--unlabelled", "255",
        "--preset", "smoke", "--out", tmp_path / "m3d.pt", "--save-2d", model_2d)
    run("predict", model_2d, tiny_data / "image.tif", tmp_path / "p.ome.zarr", expect=2)
    assert "model2d" in capsys.readouterr().err


def test_export_writes_a_bioimageio_package_once(tiny_data, tiny_model, tmp_path, capsys):
    pytest.importorskip("bioimageio.spec")
    import zipfile

    package = tmp_path / "model.zip"
    run("export", tiny_model, package, "--test-input", tiny_data / "image.tif", "--name", "tiny cortex 3D",
        "--author", "A. Tester")
    assert "bioimageio test" in capsys.readouterr().out
    with zipfile.ZipFile(package) as archive:
        rdf = archive.read("rdf.yaml").decode()
    assert "name: tiny cortex 3D" in rdf and "A. Tester" in rdf and "weights.pt" in archive.namelist()
    run("export", tiny_model, package, expect=2)  # never overwrites
    err = capsys.readouterr().err
    assert err.startswith("neuroseg-lite export: error:") and "--overwrite" in err and err.count("\n") == 1
