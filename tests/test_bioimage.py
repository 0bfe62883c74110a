"""Tests for neuroseg_lite.bioimage: a trained model as a bioimage.io package, checked by bioimageio.core's test."""
from __future__ import annotations

import dataclasses
import zipfile

import numpy as np
import pytest
import torch

from neuroseg_lite import sparse, synth
from neuroseg_lite._checks import NeurosegInputError
from neuroseg_lite.bioimage import PAPER_DOI, export_bioimage
from neuroseg_lite.checkpoint import TrainedModel, save_model
from neuroseg_lite.infer import predict_volume
from neuroseg_lite.intensity import IntensityNormalization
from neuroseg_lite.models2d import PRESETS_2D
from neuroseg_lite.pseudolabel import predict_2d
from neuroseg_lite.train import make_train_config, train_2d, train_3d
from neuroseg_lite.unet3d import UNet3D, UNet3DConfig

bioimageio_core = pytest.importorskip("bioimageio.core")
bioimageio_spec = pytest.importorskip("bioimageio.spec")
TINY_UNET = UNet3DConfig(base_channels=4, depth=2)


@pytest.fixture(autouse=True)
def offline_bioimageio(tmp_path, monkeypatch):
    """Keep bioimageio's cache in the test's folder; the packages name no URL, so validation needs no network."""
    monkeypatch.setattr(bioimageio_spec.settings, "cache_path", tmp_path / "bioimageio-cache")


@pytest.fixture(scope="module")
def volume():
    return synth.make_volume(preset="tiny", seed=0)


@pytest.fixture(scope="module")
def model_3d(volume):
    annotation = sparse.simulate_sparse(volume.labels, n_slices=4)
    config = dataclasses.replace(make_train_config("smoke"), steps=4, val_every=0)
    return train_3d(volume.image, annotation, config=config, model_config=TINY_UNET, progress=False,
                    intensity_normalization=IntensityNormalization(low=2.0, high=99.5, clip=True),
                    spacing=volume.spacing, device="cpu")


@pytest.fixture(scope="module")
def model_2d(volume):
    annotation = sparse.simulate_sparse(volume.labels, n_slices=4)
    config = dataclasses.replace(PRESETS_2D["smoke"], steps=4, val_every=0)
    return train_2d(volume.image, annotation, config=config, spacing=volume.spacing, progress=False, device="cpu")


def _test_tensors(package):
    with zipfile.ZipFile(package) as archive:
        return np.load(archive.open("test_input.npy")), np.load(archive.open("test_output.npy"))


def _assert_bioimageio_test_passes(package):
    summary = bioimageio_core.test_model(package)
    failed = [(d.name, [e.msg for e in d.errors]) for d in summary.details if d.status != "passed"]
    assert summary.status == "passed", failed
    names = " ".join(d.name for d in summary.details)
    assert "Reproduce test outputs" in names and "size parameter" in names  # inference really ran


def test_3d_package_passes_bioimageio_test_and_matches_predict_volume(model_3d, tmp_path):
    before = {k: v.clone() for k, v in model_3d.network.state_dict().items()}
    package = export_bioimage(model_3d, tmp_path / "unet.zip", name="tiny neurons 3D", authors=["A. Tester"])
    _assert_bioimageio_test_passes(package)
    raw, output = _test_tensors(package)
    assert raw.shape == output.shape == (1, 1, 16, 64, 64)
    # Same normalisation (whole-stack percentiles, clipped) and the exported weights: predict_volume's output.
    expected = predict_volume(model_3d, raw[0, 0], tile=raw.shape[2:], device="cpu")
    np.testing.assert_allclose(output[0, 0], expected, atol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in model_3d.network.state_dict().items())  # input untouched
    with zipfile.ZipFile(package) as archive:
        rdf = archive.read("rdf.yaml").decode()
    for needed in ("scale_range", "min_percentile: 2.0", "max_percentile: 99.5", "id: clip", "id: sigmoid",
                   "halo: 4", "unit: micrometer", "scale: 2.0", PAPER_DOI, "license: MIT", "torchscript"):
        assert needed in rdf, needed


def test_2d_package_passes_bioimageio_test_and_matches_predict_2d(model_2d, volume, tmp_path):
    package = export_bioimage(model_2d, tmp_path / "patch.zip", test_input=volume.image)
    _assert_bioimageio_test_passes(package)
    raw, output = _test_tensors(package)
    assert raw.shape == (1, 1, 64, 64)
    np.testing.assert_array_equal(raw[0, 0], volume.image[8])  # the middle plane
    # One plane as a one-plane stack: normalised per plane, as the package's rdf describes.
    expected = predict_2d(model_2d, raw[0, 0][None], device="cpu")[0]
    np.testing.assert_allclose(output[0, 0], expected, atol=1e-5)


def test_model_file_is_read_weights_only_and_an_edited_one_is_refused(model_2d, tmp_path):
    path = save_model(tmp_path / "model2d.pt", model_2d)
    package = export_bioimage(path, tmp_path / "from_file.zip")
    assert "2D pseudo-labeller model2d" in zipfile.ZipFile(package).read("rdf.yaml").decode()
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["conv1.weight"] = payload["state_dict"]["conv1.weight"][:, :, :3]  # edited by hand
    torch.save(payload, tmp_path / "edited.pt")
    with pytest.raises(NeurosegInputError, match="do not fit the architecture"):
        export_bioimage(tmp_path / "edited.pt", tmp_path / "edited.zip")
    assert not (tmp_path / "edited.zip").exists()


def test_untrained_model_is_refused_or_clearly_marked(tmp_path):
    untrained = TrainedModel(network=UNet3D(TINY_UNET).eval(), kind="unet3d", model_config=TINY_UNET)
    with pytest.raises(NeurosegInputError, match="no training steps.*allow_untrained=True"):
        export_bioimage(untrained, tmp_path / "untrained.zip")
    package = export_bioimage(untrained, tmp_path / "untrained.zip", name="tiny test net", allow_untrained=True)
    rdf = zipfile.ZipFile(package).read("rdf.yaml").decode()
    assert "name: UNTRAINED tiny test net" in rdf and "- untrained" in rdf and "UNTRAINED (no training" in rdf


def test_existing_output_bad_name_and_bad_test_input_are_refused(model_3d, tmp_path):
    target = tmp_path / "model.zip"
    target.write_bytes(b"someone's package")
    with pytest.raises(NeurosegInputError, match="exists; pass overwrite=True"):
        export_bioimage(model_3d, target)
    assert target.read_bytes() == b"someone's package"
    with pytest.raises(NeurosegInputError, match="is a .zip file"):
        export_bioimage(model_3d, tmp_path / "model")
    with pytest.raises(NeurosegInputError, match="only letters"):
        export_bioimage(model_3d, tmp_path / "named.zip", name="neurons/3D!")
    with pytest.raises(NeurosegInputError, match="smaller than the network's minimum"):
        export_bioimage(model_3d, tmp_path / "small.zip", test_input=np.ones((4, 64, 64), np.uint16))
    with pytest.raises(NeurosegInputError, match="TrainedModel or a model file path"):
        export_bioimage(model_3d.network, tmp_path / "bare.zip")
