"""Tests for the 2D pseudo-labeller (neuroseg_lite.pseudolabel and neuroseg_lite.models2d)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from neuroseg_lite import metrics, sparse
from neuroseg_lite._checks import NeurosegInputError
from neuroseg_lite.checkpoint import TrainedModel
from neuroseg_lite.intensity import IntensityNormalization
from neuroseg_lite.models2d import (
    PRESETS_2D,
    Model2DConfig,
    PatchCNN,
    Train2DConfig,
    UNet2D,
    build_model_2d,
    naive_logits,
    reflect_indices,
    reflect_positions,
)
from neuroseg_lite.patches import AnnotatedPixelSampler, patch_batch_2d
from neuroseg_lite.pseudolabel import correct_prior, predict_2d, predict_planes
from neuroseg_lite.train import train_2d
from neuroseg_lite.unet3d import UNet3D, UNet3DConfig


@dataclass
class ToySparse:
    """Duck-typed annotation without from_planes' checks (train_2d only reads these three attributes)."""

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
    return sparse.from_planes(labels, planes=planes)


def dice(prediction, truth):
    return metrics.dice(prediction, truth)


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
    _, _, annotations, _ = toy_data
    labels = [s.labels for s in annotations]
    annotated = [s.annotated for s in annotations]
    n_foreground = sum((lab & a).sum() for lab, a in zip(labels, annotated, strict=True))
    true_fraction = n_foreground / sum(a.sum() for a in annotated)
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

    background_only = AnnotatedPixelSampler([np.zeros_like(lab) for lab in labels], annotated)
    assert background_only.sample(100, np.random.default_rng(0))[2].sum() == 0


def test_patch_batch_is_centred_with_reflected_context(toy_data):
    images, _, annotations, _ = toy_data
    labels = [s.labels for s in annotations]
    annotated = [s.annotated for s in annotations]
    config = Train2DConfig(batch_size=64, context_planes=3, augment=True, intensity_jitter=0.0)
    sampler = AnnotatedPixelSampler(labels, annotated)
    vols, zyx, classes = sampler.sample(64, np.random.default_rng(4))  # the batch draws these first
    batch, targets = patch_batch_2d(images, sampler, np.random.default_rng(4), config)
    assert batch.shape == (64, 7, 32, 32) and np.array_equal(targets.numpy(), classes)
    # Planes 2 and 5 of 8 with 3 context planes on each side reflect at both ends of the stack.
    padded = [np.pad(image, ((3, 3), (0, 0), (0, 0)), mode="reflect") for image in images]
    for k in range(7):
        expected = [padded[v][z + k, y, x] for v, (z, y, x) in zip(vols, zyx)]
        np.testing.assert_array_equal(batch[:, k, 16, 16].numpy(), expected)


# ----------------------------------------------------------------------------- training

def test_train_patch_model_learns_and_beats_chance(toy_data):
    images, _, annotations, (test_image, test_labels) = toy_data
    config = Train2DConfig(steps=100, batch_size=32, lr=2e-3, val_every=50, val_planes=3, log_every=1, seed=0)
    model = train_2d(images, annotations, config=config, spacing=(2.0, 0.5, 0.5), device="cpu", progress=False,
                     val=(test_image, test_labels))
    assert isinstance(model, TrainedModel) and model.kind == "model2d"
    assert isinstance(model.network, PatchCNN) and not model.network.training
    assert model.train_config == config and model.model_config == config.model_config
    assert model.intensity_normalization == IntensityNormalization() and model.spacing == (2.0, 0.5, 0.5)
    history = model.history
    assert history["step"] == list(range(1, 101)) and len(history["loss"]) == len(history["seconds"]) == 100
    assert "time_s" not in history  # the 2D history is in the 3D one's units now
    assert np.mean(history["loss"][-30:]) < 0.6 * np.mean(history["loss"][:10])
    assert history["val_step"] == [50, 100] and all(0 <= d <= 1 for d in history["val_dice"])
    probability = predict_2d(model, test_image, device="cpu")
    chance = 2 * test_labels.mean() / (test_labels.mean() + 0.5)  # Dice of a coin flip
    assert dice(probability >= 0.5, test_labels) > max(0.65, chance + 0.3)
    # The last validation scores the returned network on the validation planes, with the one Dice of metrics.
    planes = np.unique(np.linspace(0, test_image.shape[0] - 1, config.val_planes).round().astype(int))
    assert history["val_dice"][-1] == pytest.approx(metrics.dice(probability[planes], test_labels[planes]))


def test_train_unet2d_learns_from_masked_slices(toy_data):
    images, _, annotations, (test_image, test_labels) = toy_data
    config = Train2DConfig(model="unet2d", steps=60, batch_size=4, patch_size=32, lr=3e-3, base_channels=8,
                           depth=2, context_planes=1, log_every=1, seed=0)
    model = train_2d(images, annotations, config=config, device="cpu", progress=False)
    assert isinstance(model.network, UNet2D) and model.network.in_channels == 3
    assert model.model_config == Model2DConfig(model="unet2d", in_channels=3, base_channels=8, depth=2)
    assert np.mean(model.history["loss"][-20:]) < 0.85 * np.mean(model.history["loss"][:10])
    probability = predict_2d(model, test_image, device="cpu")
    assert dice(probability >= 0.5, test_labels) > 0.5


def test_training_is_reproducible(toy_data):
    images, _, annotations, _ = toy_data
    config = dataclasses.replace(PRESETS_2D["smoke"], steps=4, log_every=1)
    runs = [train_2d(images, annotations, config=config, device="cpu", progress=False) for _ in range(2)]
    assert runs[0].history["loss"] == runs[1].history["loss"]
    for (key, a), b in zip(runs[0].network.state_dict().items(), runs[1].network.state_dict().values(),
                           strict=True):
        assert torch.equal(a, b), key


def test_train_2d_takes_raw_integer_stacks(toy_data):
    # Percentiles undo an affine map of the intensities, so raw counts train like the float original.
    images, _, annotations, _ = toy_data
    raw = [np.round((image - image.min()) * 20000).astype(np.uint16) for image in images]
    spec = IntensityNormalization(low=0.0, high=100.0)
    config = dataclasses.replace(PRESETS_2D["smoke"], steps=3, log_every=1)
    runs = [train_2d(stacks, annotations, config=config, intensity_normalization=spec, device="cpu",
                     progress=False) for stacks in ([spec.apply(r) for r in raw], raw)]
    assert runs[1].intensity_normalization == spec
    assert runs[0].history["loss"] == pytest.approx(runs[1].history["loss"], rel=1e-4)


def test_train_2d_rejects_bad_input(toy_data):
    images, dense, annotations, _ = toy_data
    smoke = PRESETS_2D["smoke"]

    def train(imgs, sps, **kw):
        return train_2d(imgs, sps, config=kw.pop("config", smoke), device="cpu", progress=False, **kw)

    with pytest.raises(NeurosegInputError, match="axis 1.*moveaxis"):
        train(images[:1], [sparse.from_planes(dense[0], planes=[10, 20], axis=1)])
    with pytest.raises(NeurosegInputError, match="normalize_percentile"):  # raw counts, but "none" was asked for
        train([(images[0] * 1000).astype(np.uint16)], annotations[:1],
              intensity_normalization=IntensityNormalization(method="none"))
    with pytest.raises(NeurosegInputError, match="2 image.*1 annotation"):
        train(images, annotations[:1])
    with pytest.raises(NeurosegInputError, match="shape"):
        train([images[0][:, :30]], annotations[:1])
    with pytest.raises(NeurosegInputError, match="no voxel is annotated"):
        empty = np.zeros_like(dense[0])
        train(images[:1], [ToySparse(empty, empty)])
    with pytest.raises(NeurosegInputError, match="NaN"):
        bad = images[0].copy()
        bad[0, 0, 0] = np.nan
        train([bad], annotations[:1])
    with pytest.raises(NeurosegInputError, match="0 image"):
        train([], [])
    with pytest.raises(NeurosegInputError, match=r"\.labels/\.annotated"):
        train(images[:1], [dense[0]])
    for bad_option in ({"model": "resnet"}, {"steps": 0}, {"context_planes": -1}, {"dropout": 1.0},
                       {"log_every": 0}):
        with pytest.raises(NeurosegInputError, match=next(iter(bad_option))):
            train(images[:1], annotations[:1], config=dataclasses.replace(smoke, **bad_option))
    with pytest.raises(NeurosegInputError, match="val"):
        train(images[:1], annotations[:1], val=(images[0], dense[0][:4]))
    with pytest.raises(dataclasses.FrozenInstanceError):
        smoke.steps = 3  # the shared presets cannot be edited by accident
    with pytest.warns(UserWarning, match="background"):
        no_foreground = ToySparse(np.zeros_like(dense[0]), annotations[0].annotated)
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


@pytest.mark.parametrize("config", [Train2DConfig(context_planes=1),
                                    Train2DConfig(model="unet2d", base_channels=4, depth=2, context_planes=1)])
def test_predict_planes_is_a_subset_of_predict_2d(config):
    torch.manual_seed(0)
    image, _ = toy_volume(4, shape=(6, 20, 24))
    model = build_model_2d(config).train()
    planes = np.array([0, 3, 5])
    subset = predict_planes(model, image, planes, batch_size=2, device=torch.device("cpu"))
    assert subset.shape == (3, 20, 24) and subset.dtype == np.float32
    assert model.training  # the caller's mode is restored
    np.testing.assert_allclose(subset, predict_2d(model, image, device="cpu")[planes], atol=1e-6)


def test_predict_2d_normalises_raw_stacks_with_the_models_spec():
    # Done when: raw uint16 counts (up to 60000) are normalised by the model's stored spec, or refused.
    torch.manual_seed(0)
    image, _ = toy_volume(6, shape=(3, 24, 20))
    raw = np.round(1000 + image * 80000).clip(0, 60000).astype(np.uint16)
    assert raw.max() == 60000
    spec = IntensityNormalization(low=2.0, high=98.0)
    network = PatchCNN().eval()
    with torch.no_grad():  # larger random weights: an output that visibly depends on the intensities
        for parameter in network.parameters():
            parameter.mul_(3.0)
    model = TrainedModel(network=network, kind="model2d", model_config=Model2DConfig(), intensity_normalization=spec)
    before = raw.copy()
    probability = predict_2d(model, raw, device="cpu")
    np.testing.assert_array_equal(probability, predict_2d(network, spec.apply(raw), device="cpu"))
    np.testing.assert_array_equal(raw, before)
    # The spec decides: the default percentiles, or no normalisation at all, give other probabilities.
    assert np.abs(probability - predict_2d(network, IntensityNormalization().apply(raw), device="cpu")).max() > 1e-4
    assert np.abs(probability - predict_2d(network, raw.astype(np.float32), device="cpu")).max() > 1e-2
    with pytest.raises(NeurosegInputError, match="uint16.*TrainedModel"):
        predict_2d(network, raw, device="cpu")
    unet = TrainedModel(network=UNet3D(UNet3DConfig(base_channels=2, depth=1)), kind="unet3d",
                        model_config=UNet3DConfig(base_channels=2, depth=1))
    with pytest.raises(NeurosegInputError, match="2D model.*predict_volume"):
        predict_2d(unet, raw, device="cpu")


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
