"""Tests for neuroseg_lite.checkpoint: one model file for the 2D pseudo-labeller and the 3D U-Net."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import neuroseg_lite
from neuroseg_lite import sparse
from neuroseg_lite._checks import NeurosegInputError
from neuroseg_lite.checkpoint import FORMAT, TrainedModel, load_model, save_model
from neuroseg_lite.infer import predict_volume
from neuroseg_lite.intensity import IntensityNormalization
from neuroseg_lite.models2d import PRESETS_2D, Model2DConfig, PatchCNN, Train2DConfig, UNet2D, build_model_2d
from neuroseg_lite.pseudolabel import predict_2d
from neuroseg_lite.train import make_train_config, train_2d, train_3d
from neuroseg_lite.trainconfig import TrainConfig
from neuroseg_lite.unet3d import UNet3D, UNet3DConfig

TINY_UNET = UNet3DConfig(base_channels=4, depth=2)
SPEC = IntensityNormalization(low=2.0, high=99.0, clip=True)


class Gadget:
    """Arbitrary Python object: a weights-only load must refuse to unpickle it."""

    def __init__(self):
        self.value = 1


def _stack(seed, shape=(8, 24, 28)):
    """Bright blobs on noise as raw uint16 counts (values up to 60000), and their labels."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.indices(shape)
    labels = np.zeros(shape, bool)
    for _ in range(5):
        cz, cy, cx = rng.uniform([0, 4, 4], [shape[0], shape[1] - 4, shape[2] - 4])
        labels |= ((zz - cz) * 2) ** 2 + (yy - cy) ** 2 + (xx - cx) ** 2 < rng.uniform(3, 5) ** 2
    counts = 800 + 30000 * labels + rng.normal(0, 4000, shape)
    raw = counts.clip(0, 60000).astype(np.uint16)
    raw.flat[0] = 60000
    return raw, labels


def _busy_batch_norm(network, shape):
    """Non-trivial BatchNorm running statistics, so that restoring them is tested too."""
    with torch.no_grad():
        network.train()(torch.randn(*shape) * 3 + 1)
    return network.eval()


def _model_3d():
    torch.manual_seed(0)
    network = _busy_batch_norm(UNet3D(TINY_UNET), (2, 1, 8, 16, 16))
    config = make_train_config("smoke", rampup=(1, 3), val_tile=(8, 16, 16), loss_normalization="global")
    history = {"step": [2, 4], "loss": [np.float32(0.7), 0.5], "lr": [1e-3, 5e-4], "seconds": [0.1, 0.2],
               "lam": [0.5, 0.5]}
    return TrainedModel(network=network, kind="unet3d", model_config=TINY_UNET, train_config=config,
                        intensity_normalization=SPEC, spacing=(2.0, 0.3, 0.3), history=history)


def _model_2d(config: Train2DConfig):
    torch.manual_seed(0)
    network = build_model_2d(config)
    if config.model == "unet2d":
        network = _busy_batch_norm(network, (2, config.in_channels, 16, 16))
    history = {"step": [10], "loss": [np.float64(0.25)], "lr": [1e-3], "seconds": [0.5],
               "val_step": [10], "val_dice": [0.75], "val_seconds": [0.5]}
    return TrainedModel(network=network.eval(), kind="model2d", model_config=config.model_config,
                        train_config=config, intensity_normalization=SPEC, spacing=[1.0, 0.5, 0.5], history=history)


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module):
    first, second = a.state_dict(), b.state_dict()
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key].cpu(), second[key].cpu()), key


def _edit(path, tmp_path, change, name="edited.pt"):
    payload = torch.load(path, weights_only=True)
    change(payload)
    torch.save(payload, tmp_path / name)
    return tmp_path / name


# ----------------------------------------------------------------------------- round trips


def test_round_trip_unet3d(tmp_path):
    model = _model_3d()
    path = save_model(tmp_path / "unet.pt", model)
    assert path == tmp_path / "unet.pt" and model.path == path
    assert [p.name for p in tmp_path.iterdir()] == ["unet.pt"]  # written atomically: no temporary file left
    loaded = load_model(path, kind="unet3d", device="cpu")
    assert isinstance(loaded.network, UNet3D) and not loaded.network.training and loaded.kind == "unet3d"
    _assert_same_weights(model.network, loaded.network)
    assert loaded.model_config == TINY_UNET
    assert isinstance(loaded.train_config, TrainConfig) and loaded.train_config == model.train_config
    assert loaded.intensity_normalization == SPEC and loaded.spacing == (2.0, 0.3, 0.3)
    assert loaded.history == {"step": [2, 4], "loss": [pytest.approx(0.7), 0.5], "lr": [1e-3, 5e-4],
                              "seconds": [0.1, 0.2], "lam": [0.5, 0.5]}
    assert all(type(v) is float for v in loaded.history["loss"])  # plain builtins, not numpy scalars
    assert loaded.version == neuroseg_lite.__version__ and loaded.path == path
    raw, _ = _stack(1, shape=(8, 16, 16))
    np.testing.assert_array_equal(predict_volume(loaded, raw, device="cpu"), predict_volume(model, raw, device="cpu"))
    assert load_model(path, device="cpu").kind == "unet3d"  # kind=None takes either network


@pytest.mark.parametrize("config", [Train2DConfig(context_planes=1),
                                    Train2DConfig(model="unet2d", base_channels=4, depth=2, context_planes=1,
                                                  lr=3e-3)])
def test_round_trip_model2d_gives_identical_predictions(tmp_path, config):
    model = _model_2d(config)
    path = save_model(tmp_path / "model.pt", model)
    loaded = load_model(path, kind="model2d", device="cpu")
    assert isinstance(loaded.network, PatchCNN if config.model == "patch" else UNet2D)
    assert not loaded.network.training and loaded.network.in_channels == 3
    _assert_same_weights(model.network, loaded.network)
    assert loaded.model_config == config.model_config
    assert isinstance(loaded.train_config, Train2DConfig) and loaded.train_config == config
    assert loaded.intensity_normalization == SPEC and loaded.spacing == (1.0, 0.5, 0.5)
    assert loaded.history == model.history and type(loaded.history["loss"][0]) is float
    raw, _ = _stack(2, shape=(3, 20, 24))  # raw counts: both normalise them with their (same) stored spec
    np.testing.assert_array_equal(predict_2d(model, raw, device="cpu"), predict_2d(loaded, raw, device="cpu"))


def test_save_replaces_an_existing_file(tmp_path):
    path = save_model(tmp_path / "model.pt", _model_2d(Train2DConfig()))
    save_model(path, _model_3d())
    assert load_model(path, device="cpu").kind == "unet3d"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


# ----------------------------------------------------------------------------- refusals


def test_wrong_kind_is_refused_clearly(tmp_path):
    two_d = save_model(tmp_path / "two_d.pt", _model_2d(Train2DConfig()))
    three_d = save_model(tmp_path / "three_d.pt", _model_3d())
    with pytest.raises(NeurosegInputError, match="two_d.pt holds a 2D pseudo-labeller, not a 3D U-Net"):
        load_model(two_d, kind="unet3d", device="cpu")
    with pytest.raises(NeurosegInputError, match="three_d.pt holds a 3D U-Net, not a 2D pseudo-labeller"):
        load_model(three_d, kind="model2d", device="cpu")


@pytest.mark.parametrize("keep", [0, 100, 0.5, -1])
def test_truncated_file_is_refused(tmp_path, keep):
    path = save_model(tmp_path / "model.pt", _model_3d())
    data = path.read_bytes()
    cut = int(len(data) * keep) if isinstance(keep, float) else (keep if keep >= 0 else len(data) + keep)
    (tmp_path / "cut.pt").write_bytes(data[:cut])
    with pytest.raises(NeurosegInputError, match="cut.pt is not a readable model file.*truncated"):
        load_model(tmp_path / "cut.pt", device="cpu")


def test_unreadable_and_missing_files(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model file")
    with pytest.raises(NeurosegInputError, match="notes.txt is not a readable model file"):
        load_model(tmp_path / "notes.txt", device="cpu")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_model(tmp_path / "missing.pt", device="cpu")


def test_loading_is_weights_only(tmp_path):
    # A file that needs arbitrary code to unpickle is refused instead of run.
    path = save_model(tmp_path / "model.pt", _model_3d())
    payload = torch.load(path, weights_only=True)
    payload["history"] = {"loss": [Gadget()]}
    torch.save(payload, tmp_path / "pickled.pt")
    with pytest.raises(NeurosegInputError, match="pickled.pt is not a readable model file"):
        load_model(tmp_path / "pickled.pt", device="cpu")


def test_edited_state_dict_is_an_architecture_error(tmp_path):
    path = save_model(tmp_path / "model.pt", _model_3d())
    key = next(k for k, v in torch.load(path, weights_only=True)["state_dict"].items() if v.dim() == 5)

    def reshape(payload):
        payload["state_dict"][key] = torch.zeros(3, 1, 3, 3, 3)

    with pytest.raises(NeurosegInputError, match="do not fit the architecture.*shape mismatches"):
        load_model(_edit(path, tmp_path, reshape), device="cpu")
    with pytest.raises(NeurosegInputError, match=f"do not fit the architecture.*missing.*{key}"):
        load_model(_edit(path, tmp_path, lambda p: p["state_dict"].pop(key)), device="cpu")
    with pytest.raises(NeurosegInputError, match="do not fit the architecture.*unexpected"):
        load_model(_edit(path, tmp_path, lambda p: p["state_dict"].update(extra=torch.zeros(2))), device="cpu")
    with pytest.raises(NeurosegInputError, match="do not fit the architecture.*base_channels=8"):
        load_model(_edit(path, tmp_path, lambda p: p["model_config"].update(base_channels=8)), device="cpu")

    two_d = save_model(tmp_path / "two_d.pt", _model_2d(Train2DConfig(context_planes=1)))
    with pytest.raises(NeurosegInputError, match="edited.pt.*do not fit.*in_channels=1"):
        load_model(_edit(two_d, tmp_path, lambda p: p["model_config"].update(in_channels=1)), device="cpu")
    with pytest.raises(NeurosegInputError, match="edited.pt.*do not fit.*unet2d"):
        load_model(_edit(two_d, tmp_path, lambda p: p["model_config"].update(model="unet2d")), device="cpu")


@pytest.mark.parametrize("old_format", ["neuroseg_lite.unet3d", "neuroseg_lite.pseudolabel2d/1"])
def test_old_format_is_refused_clearly(tmp_path, old_format):
    state = UNet3D(TINY_UNET).state_dict() if old_format.endswith("unet3d") else PatchCNN().state_dict()
    torch.save({"format": old_format, "state_dict": state, "model_config": dataclasses.asdict(TINY_UNET)},
               tmp_path / "old.pt")
    with pytest.raises(NeurosegInputError, match=f"old.pt was written by an earlier neuroseg_lite.*{old_format}"
                                                 ".*retrain"):
        load_model(tmp_path / "old.pt", device="cpu")


def test_foreign_and_corrupt_payloads(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(NeurosegInputError, match="other.pt is not a NeuroSeg Lite model file"):
        load_model(tmp_path / "other.pt", device="cpu")
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(NeurosegInputError, match="not a NeuroSeg Lite model file.*Tensor"):
        load_model(tmp_path / "tensor.pt", device="cpu")
    path = save_model(tmp_path / "model.pt", _model_3d())
    with pytest.raises(NeurosegInputError, match="unknown model kind 'resnet'"):
        load_model(_edit(path, tmp_path, lambda p: p.update(kind="resnet")), device="cpu")
    with pytest.raises(NeurosegInputError, match="unreadable model_config or intensity normalisation"):
        load_model(_edit(path, tmp_path, lambda p: p["intensity_normalization"].update(method="zscore")),
                   device="cpu")
    with pytest.raises(NeurosegInputError, match="unreadable model_config"):
        load_model(_edit(path, tmp_path, lambda p: p["model_config"].update(colour="blue")), device="cpu")
    assert torch.load(path, weights_only=True)["format"] == FORMAT


def test_save_refuses_what_it_could_not_rebuild(tmp_path):
    with pytest.raises(NeurosegInputError, match="save_model takes a TrainedModel.*UNet3D"):
        save_model(tmp_path / "bare.pt", UNet3D(TINY_UNET))
    wrong = TrainedModel(network=UNet3D(TINY_UNET), kind="unet3d", model_config=UNet3DConfig(base_channels=8, depth=2))
    with pytest.raises(NeurosegInputError, match="does not describe the network"):
        save_model(tmp_path / "wrong.pt", wrong)
    channels = TrainedModel(network=PatchCNN(in_channels=5), kind="model2d", model_config=Model2DConfig(in_channels=3))
    with pytest.raises(NeurosegInputError, match="does not describe the network"):
        save_model(tmp_path / "channels.pt", channels)
    assert not list(tmp_path.iterdir())
    with pytest.raises(NeurosegInputError, match="kind must be one of"):
        TrainedModel(network=PatchCNN(), kind="patch", model_config=Model2DConfig())


# ----------------------------------------------------------------------------- a non-default spec travels


def test_unet3d_trained_with_other_percentiles_predicts_new_raw_stacks(tmp_path):
    # Done when: a model trained with a non-default intensity spec predicts new stacks correctly with no spec
    # passed by hand, also after a save/load round trip.
    spec = IntensityNormalization(low=5.0, high=95.0)
    (raw, labels), (new_raw, _) = _stack(3), _stack(4)
    config = make_train_config("smoke", steps=6, patch_size=(8, 16, 16), log_every=2, average="none")
    model = train_3d(raw, sparse.from_planes(labels, planes=[1, 4, 6]), config=config, model_config=TINY_UNET,
                     intensity_normalization=spec, device="cpu", progress=False)
    assert model.intensity_normalization == spec
    prob = predict_volume(model, new_raw, device="cpu")
    np.testing.assert_allclose(prob, predict_volume(model.network, spec.apply(new_raw), device="cpu"), atol=1e-6)
    default = predict_volume(model.network, IntensityNormalization().apply(new_raw), device="cpu")
    assert np.abs(prob - default).max() > 1e-3  # the spec matters for this model

    loaded = load_model(save_model(tmp_path / "unet.pt", model), kind="unet3d", device="cpu")
    assert loaded.intensity_normalization == spec
    np.testing.assert_allclose(predict_volume(loaded, new_raw, device="cpu"), prob, atol=1e-6)


def test_model2d_trained_on_prenormalised_data_predicts_new_stacks(tmp_path):
    # The user's own normalisation (method "none"): new stacks prepared the same way are used as they are.
    def own_normalisation(raw):
        return (raw.astype(np.float32) / 30000.0 - 0.1).astype(np.float32)

    spec = IntensityNormalization(method="none")
    (raw, labels), (new_raw, _) = _stack(5), _stack(6)
    config = dataclasses.replace(PRESETS_2D["smoke"], steps=12, batch_size=32, lr=3e-3)
    model = train_2d(own_normalisation(raw), sparse.from_planes(labels, planes=[2, 5]), config=config,
                     intensity_normalization=spec, device="cpu", progress=False)
    new = own_normalisation(new_raw)
    prob = predict_2d(model, new, device="cpu")
    np.testing.assert_array_equal(prob, predict_2d(model.network, new, device="cpu"))
    percentiles = predict_2d(model.network, IntensityNormalization().apply(new_raw), device="cpu")
    assert np.abs(prob - percentiles).max() > 1e-3  # had the default spec been applied, this would differ

    loaded = load_model(save_model(tmp_path / "two_d.pt", model), kind="model2d", device="cpu")
    assert loaded.intensity_normalization == spec
    np.testing.assert_array_equal(predict_2d(loaded, new, device="cpu"), prob)
    with pytest.raises(NeurosegInputError, match="uint16.*normalise"):  # raw counts: this model cannot know how
        predict_2d(loaded, new_raw, device="cpu")
