"""Tests for the 2D pseudo-labeller (neuroseg_lite.pseudolabel and neuroseg_lite.models2d)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from neuroseg_lite._checks import NeurosegInputError
from neuroseg_lite.models2d import naive_logits, reflect_indices, reflect_positions
from neuroseg_lite.pseudolabel import (
    PRESETS_2D,
    AnnotatedPixelSampler,
    PatchCNN,
    Train2DConfig,
    UNet2D,
    _patch_batch,
    build_model_2d,
    correct_prior,
    load_2d,
    predict_2d,
    save_2d,
    train_2d,
)


@dataclass
class ToySparse:
    labels: np.ndarray
    annotated: np.ndarray
    axis: int = 0


def toy_volume(seed: int, shape=(8, 40, 40), n_blobs=5):
    """Bright balls on a noisy background: image (float32) and dense labels (bool)."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.indices(shape)
    labels = np.zeros(shape, bool)
    for _ in range(n_blobs):
        centre = rng.uniform([0, 6, 6], [shape[0], shape[1] - 6, shape[2] - 6])
        radius = rng.uniform(3.5, 6)
        # z is squashed (anisotropic voxels), like real stacks.
        labels |= ((zz - centre[0]) * 2) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 < radius ** 2
    image = 0.2 + 0.5 * labels + rng.normal(0, 0.12, shape)
    return image.astype(np.float32), labels


def toy_sparse(labels, planes=(2, 5)):
    annotated = np.zeros(labels.shape, bool)
    annotated[list(planes)] = True
    return ToySparse(labels & annotated, annotated)


def dice(prediction, truth):
    return 2 * (prediction & truth).sum() / (prediction.sum() + truth.sum())


@pytest.fixture(scope="module")
def toy_data():
    images, dense = zip(*(toy_volume(seed) for seed in (1, 2)))
    return list(images), list(dense), [toy_sparse(lab) for lab in dense], toy_volume(9)


# ----------------------------------------------------------------------------- networks

def test_patchcnn_parameter_count():
    def count(model):
        return sum(p.numel() for p in model.parameters())

    assert count(PatchCNN()) == 204_226  # conv 832 + 18,496 + 36,928, fc 131,200 + 16,512 + 258
    assert count(PatchCNN(in_channels=3)) - count(PatchCNN()) == 2 * 32 * 25
    assert PatchCNN()(torch.zeros(4, 1, 32, 32)).shape == (4, 2)
    with pytest.raises(ValueError, match="dense_logits"):
        PatchCNN()(torch.zeros(1, 1, 33, 33))


@pytest.mark.parametrize("size, before, after", [(5, 16, 15), (3, 20, 7), (1, 4, 4), (40, 16, 15)])
def test_reflect_indices_match_numpy(size, before, after):
    expected = np.pad(np.arange(size), (before, after), mode="reflect")
    np.testing.assert_array_equal(reflect_indices(size, before, after), expected)
    np.testing.assert_array_equal(reflect_positions(np.array([-1, 0, size]), size),
                                  expected[[before - 1, before, before + size]])


@pytest.mark.parametrize("shape, channels, max_pixels", [((20, 23), 1, 1 << 17), ((17, 40), 3, 1 << 17),
                                                         ((5, 9), 1, 1 << 17), ((26, 21), 1, 100)])
def test_dense_logits_equal_naive_patch_loop(shape, channels, max_pixels):
    torch.manual_seed(0)
    model = PatchCNN(in_channels=channels).eval()
    images = torch.randn(2, channels, *shape)
    with torch.no_grad():
        dense = model.dense_logits(images, max_pixels=max_pixels)
        for image, dense_map in zip(images, dense):
            naive = naive_logits(model, image).T.reshape(2, *shape)
            assert naive.std() > 1e-3  # a constant map would make the comparison meaningless
            torch.testing.assert_close(dense_map, naive, atol=1e-5, rtol=1e-5)


def test_dense_logits_skip_dropout_and_check_channels():
    torch.manual_seed(0)
    model = PatchCNN()
    image = torch.randn(1, 1, 18, 18)
    with torch.no_grad():
        train_mode = model.train().dense_logits(image)
        torch.testing.assert_close(train_mode, model.eval().dense_logits(image))
    with pytest.raises(ValueError, match="1, H, W"):
        model.dense_logits(torch.randn(1, 3, 18, 18))


@pytest.mark.parametrize("shape", [(37, 50), (3, 8), (64, 64)])
def test_unet2d_keeps_any_size(shape):
    model = UNet2D(in_channels=3).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, *shape)).shape == (2, 1, *shape)


# ----------------------------------------------------------------------------- sampling

def test_sampler_centres_on_annotated_pixels_and_balances(toy_data):
    _, _, sparse, _ = toy_data
    labels = [s.labels for s in sparse]
    annotated = [s.annotated for s in sparse]
    true_fraction = sum((l & a).sum() for l, a in zip(labels, annotated)) / sum(a.sum() for a in annotated)
    assert 0.02 < true_fraction < 0.3

    sampler = AnnotatedPixelSampler(labels, annotated)
    vols, zyx, classes = sampler.sample(4000, np.random.default_rng(0))
    z, y, x = zyx.T
    assert all(annotated[v][zz, yy, xx] for v, zz, yy, xx in zip(vols, z, y, x))
    assert np.array_equal(classes, [labels[v][zz, yy, xx] for v, zz, yy, xx in zip(vols, z, y, x)])
    assert classes.mean() == 0.5
    assert set(np.unique(vols)) == {0, 1} and set(np.unique(z)) == {2, 5}

    uniform = AnnotatedPixelSampler(labels, annotated, class_balance=False)
    _, _, classes = uniform.sample(4000, np.random.default_rng(0))
    assert abs(classes.mean() - true_fraction) < 0.03

    background_only = AnnotatedPixelSampler([np.zeros_like(l) for l in labels], annotated)
    assert background_only.sample(100, np.random.default_rng(0))[2].sum() == 0


def test_patch_batch_is_centred_with_reflected_context(toy_data):
    images, _, sparse, _ = toy_data
    labels = [s.labels for s in sparse]
    annotated = [s.annotated for s in sparse]
    config = Train2DConfig(batch_size=64, context_planes=3, augment=True, intensity_jitter=0.0)
    sampler = AnnotatedPixelSampler(labels, annotated)
    vols, zyx, classes = sampler.sample(64, np.random.default_rng(4))  # the batch draws these first
    batch, targets = _patch_batch(images, sampler, np.random.default_rng(4), config)
    assert batch.shape == (64, 7, 32, 32) and np.array_equal(targets.numpy(), classes)
    # Planes 2 and 5 of 8 with 3 context planes on each side reflect at both ends of the stack.
    padded = [np.pad(image, ((3, 3), (0, 0), (0, 0)), mode="reflect") for image in images]
    for k in range(7):
        expected = [padded[v][z + k, y, x] for v, (z, y, x) in zip(vols, zyx)]
        np.testing.assert_array_equal(batch[:, k, 16, 16].numpy(), expected)


# ----------------------------------------------------------------------------- training

def test_train_patch_model_learns_and_beats_chance(toy_data):
    images, _, sparse, (test_image, test_labels) = toy_data
    config = Train2DConfig(steps=100, batch_size=32, lr=2e-3, val_every=50, val_planes=3, seed=0)
    model, history = train_2d(images, sparse, config=config, device="cpu", progress=False,
                              val=(test_image, test_labels))
    assert isinstance(model, PatchCNN) and not model.training
    assert history["step"] == list(range(1, 101)) and len(history["loss"]) == len(history["time_s"]) == 100
    assert np.mean(history["loss"][-30:]) < 0.6 * np.mean(history["loss"][:10])
    assert history["val_step"] == [50, 100] and all(0 <= d <= 1 for d in history["val_dice"])
    probability = predict_2d(model, test_image, device="cpu")
    chance = 2 * test_labels.mean() / (test_labels.mean() + 0.5)  # Dice of a coin flip
    assert dice(probability >= 0.5, test_labels) > max(0.65, chance + 0.3)


def test_train_unet2d_learns_from_masked_slices(toy_data):
    images, _, sparse, (test_image, test_labels) = toy_data
    config = Train2DConfig(model="unet2d", steps=60, batch_size=4, patch_size=32, lr=3e-3, base_channels=8,
                           depth=2, context_planes=1, seed=0)
    model, history = train_2d(images, sparse, config=config, device="cpu", progress=False)
    assert isinstance(model, UNet2D) and model.in_channels == 3
    assert np.mean(history["loss"][-20:]) < 0.85 * np.mean(history["loss"][:10])
    probability = predict_2d(model, test_image, device="cpu")
    assert dice(probability >= 0.5, test_labels) > 0.5


def test_training_is_reproducible(toy_data):
    images, _, sparse, _ = toy_data
    config = dataclasses.replace(PRESETS_2D["smoke"], steps=4)
    runs = [train_2d(images, sparse, config=config, device="cpu", progress=False)[1]["loss"] for _ in range(2)]
    assert runs[0] == runs[1]


def test_train_2d_rejects_bad_input(toy_data):
    images, dense, sparse, _ = toy_data
    smoke = PRESETS_2D["smoke"]

    def train(imgs, sps, **kw):
        return train_2d(imgs, sps, config=kw.pop("config", smoke), device="cpu", progress=False, **kw)

    with pytest.raises(NeurosegInputError, match="axis 1.*moveaxis"):
        train(images[:1], [ToySparse(sparse[0].labels, sparse[0].annotated, axis=1)])
    with pytest.raises(NeurosegInputError, match="normalize_percentile"):
        train([(images[0] * 1000).astype(np.uint16)], sparse[:1])
    with pytest.raises(NeurosegInputError, match="2 image.*1 sparse label set"):
        train(images, sparse[:1])
    with pytest.raises(NeurosegInputError, match="shape"):
        train([images[0][:, :30]], sparse[:1])
    with pytest.raises(NeurosegInputError, match="no voxel is annotated"):
        empty = np.zeros_like(dense[0])
        train(images[:1], [ToySparse(empty, empty)])
    with pytest.raises(NeurosegInputError, match="NaN"):
        bad = images[0].copy()
        bad[0, 0, 0] = np.nan
        train([bad], sparse[:1])
    with pytest.raises(NeurosegInputError, match="no images"):
        train([], [])
    with pytest.raises(NeurosegInputError, match=r"\.labels/\.annotated"):
        train(images[:1], [dense[0]])
    for bad_option in ({"model": "resnet"}, {"steps": 0}, {"context_planes": -1}, {"dropout": 1.0}):
        with pytest.raises(NeurosegInputError, match=next(iter(bad_option))):
            train(images[:1], sparse[:1], config=dataclasses.replace(smoke, **bad_option))
    with pytest.raises(NeurosegInputError, match="val"):
        train(images[:1], sparse[:1], val=(images[0], dense[0][:4]))
    with pytest.raises(dataclasses.FrozenInstanceError):
        smoke.steps = 3  # the shared presets cannot be edited by accident
    with pytest.warns(UserWarning, match="background"):
        no_foreground = ToySparse(np.zeros_like(dense[0]), sparse[0].annotated)
        train(images[:1], [no_foreground], config=dataclasses.replace(smoke, steps=2))


# ----------------------------------------------------------------------------- prediction

def test_predict_2d_shape_range_and_input_untouched():
    image, _ = toy_volume(3, shape=(3, 21, 26))
    original = image.copy()
    for model in (PatchCNN(), UNet2D(base_channels=4, depth=2)):
        probability = predict_2d(model, image, batch_size=2, device="cpu")
        assert probability.shape == image.shape and probability.dtype == np.float32
        assert probability.min() >= 0 and probability.max() <= 1 and probability.std() > 0
        np.testing.assert_array_equal(image, original)
    with pytest.raises(NeurosegInputError, match="3D"):
        predict_2d(PatchCNN(), image[0], device="cpu")
    with pytest.raises(NeurosegInputError, match="batch_size"):
        predict_2d(PatchCNN(), image, batch_size=0, device="cpu")
    with pytest.raises(NeurosegInputError, match="PatchCNN or UNet2D"):
        predict_2d(torch.nn.Conv2d(1, 1, 1), image, device="cpu")


def test_predict_2d_stacks_reflected_context_planes():
    torch.manual_seed(0)
    image, _ = toy_volume(3, shape=(4, 20, 20))
    model = build_model_2d(Train2DConfig(context_planes=2)).eval()
    assert model.in_channels == 5
    probability = predict_2d(model, image, device="cpu")
    for z, planes in ((0, [2, 1, 0, 1, 2]), (3, [1, 2, 3, 2, 1])):
        with torch.no_grad():
            logits = model.dense_logits(torch.from_numpy(image[planes])[None])
        np.testing.assert_allclose(probability[z], torch.softmax(logits, 1)[0, 1].numpy(), atol=1e-6)
    single_plane = predict_2d(model, image[:1], device="cpu")  # every context channel is plane 0
    assert single_plane.shape == (1, 20, 20)


# ----------------------------------------------------------------------------- checkpoints

@pytest.mark.parametrize("config", [Train2DConfig(context_planes=1),
                                    Train2DConfig(model="unet2d", base_channels=4, depth=2)])
def test_checkpoint_round_trip_gives_identical_predictions(tmp_path, config):
    image, _ = toy_volume(5, shape=(3, 20, 24))
    model, history = build_model_2d(config), {"step": [1, 2], "loss": [np.float32(0.7), 0.5]}
    if config.model == "unet2d":  # make the BatchNorm running statistics non-trivial
        model.train()(torch.randn(2, 1, 16, 16) * 3 + 1)
    path = save_2d(tmp_path / "model.pt", model, config=config, history=history)
    loaded, info = load_2d(path, device="cpu")
    assert info["config"] == config and info["kind"] == config.model and info["history"]["loss"][1] == 0.5
    np.testing.assert_array_equal(predict_2d(model, image, device="cpu"), predict_2d(loaded, image, device="cpu"))


def test_checkpoint_mismatch_raises(tmp_path):
    config = Train2DConfig(context_planes=1)
    model = build_model_2d(config)
    with pytest.raises(NeurosegInputError, match="3 input channel"):
        save_2d(tmp_path / "bad.pt", PatchCNN(in_channels=5), config=config)
    path = save_2d(tmp_path / "model.pt", model, config=config)

    edited = torch.load(path, weights_only=True)
    edited["config"]["context_planes"] = 0
    torch.save(edited, tmp_path / "edited.pt")
    with pytest.raises(NeurosegInputError, match="edited.pt.*context_planes=0"):
        load_2d(tmp_path / "edited.pt", device="cpu")

    edited["config"]["model"] = "unet2d"
    torch.save(edited, tmp_path / "kind.pt")
    with pytest.raises(NeurosegInputError, match="'patch' model"):
        load_2d(tmp_path / "kind.pt", device="cpu")

    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(NeurosegInputError, match="junk.pt"):
        load_2d(tmp_path / "junk.pt", device="cpu")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(NeurosegInputError, match="save_2d"):
        load_2d(tmp_path / "other.pt", device="cpu")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_2d(tmp_path / "missing.pt", device="cpu")


def test_correct_prior_turns_a_balanced_posterior_into_the_true_one():
    # Two Gaussian classes: the exact posterior under a 50/50 prior, corrected to a 10 % prior, must equal the
    # exact posterior computed directly under the 10 % prior.
    x = np.linspace(-4, 4, 101)
    likelihood_fg, likelihood_bg = np.exp(-0.5 * (x - 1) ** 2), np.exp(-0.5 * (x + 1) ** 2)
    balanced = likelihood_fg / (likelihood_fg + likelihood_bg)
    true = 0.1 * likelihood_fg / (0.1 * likelihood_fg + 0.9 * likelihood_bg)
    before = balanced.copy()
    corrected = correct_prior(balanced, prior=0.1)
    np.testing.assert_allclose(corrected, true, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(balanced, before)
    assert corrected.dtype == np.float32 and corrected.shape == balanced.shape
    np.testing.assert_allclose(correct_prior(balanced, prior=0.3, training_prior=0.3), balanced,
                               rtol=1e-6)
    assert correct_prior(np.array([0.0, 0.5, 1.0]), prior=0.2).tolist() == pytest.approx([0, 0.2, 1])


@pytest.mark.parametrize("prior", [0.0, 1.0, -0.1, 1.5])
def test_correct_prior_rejects_degenerate_priors(prior):
    with pytest.raises(NeurosegInputError, match="strictly between 0 and 1"):
        correct_prior(np.array([0.5]), prior=prior)
