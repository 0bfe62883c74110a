"""Tests for neuroseg_lite.train (both training loops, the one LR schedule), trainconfig and patches."""
from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
import torch

from neuroseg_lite import sparse
from neuroseg_lite._checks import NeurosegInputError
from neuroseg_lite.checkpoint import TrainedModel
from neuroseg_lite.intensity import IntensityNormalization
from neuroseg_lite.models2d import PRESETS_2D, Train2DConfig
from neuroseg_lite.patches import PatchSampler, augment_patch
from neuroseg_lite.train import (
    PRESETS_3D,
    TrainConfig,
    learning_rate,
    make_train_config,
    train_2d,
    train_3d,
)
from neuroseg_lite.trainer3d import WeightAverage
from neuroseg_lite.unet3d import UNet3D, UNet3DConfig

TINY_MODEL = UNet3DConfig(base_channels=4, depth=2)


def _cubes(seed, shape=(16, 32, 32)):
    """Bright cubes on noise: a toy problem a tiny network learns in a few dozen steps."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, bool)
    for _ in range(4):
        z, y, x = (int(rng.integers(1, s - 7)) for s in shape)
        labels[z:z + 5, y:y + 8, x:x + 8] = True
    image = (labels + rng.normal(0, 0.3, shape)).astype(np.float32)
    return image, labels


def _dense(labels):
    """Every plane annotated: dense training."""
    return sparse.from_planes(labels, planes=range(labels.shape[0]))


def _unchecked(labels, annotated):
    """A SparseLabels built by hand, bypassing from_planes' checks (to feed train_3d bad annotations)."""
    return sparse.SparseLabels(labels=labels, annotated=annotated, planes=(), axis=0, fraction=0.0)


def _coordinates(shape):
    return np.arange(np.prod(shape), dtype=np.float32).reshape(shape)


def _weights(model: TrainedModel) -> dict:
    return {k: v.detach().clone() for k, v in model.network.state_dict().items()}


# ------------------------------------------------------------------------------------------ config


def test_presets_and_overrides():
    assert PRESETS_3D["smoke"].patch_size == (8, 32, 32)
    assert PRESETS_3D["gpu"].steps >= 1000 and PRESETS_3D["gpu"].batch_size > PRESETS_3D["cpu"].batch_size
    config = make_train_config("cpu", lam=0.25, rampup=(10, 50))
    assert config.lam == 0.25 and config.rampup == (10, 50) and config.patch_size == (16, 64, 64)
    with pytest.raises(NeurosegInputError, match="unknown TrainConfig field"):
        make_train_config("cpu", lamda=0.3)
    with pytest.raises(NeurosegInputError, match="unknown preset"):
        make_train_config("tpu")


@pytest.mark.parametrize("bad", [dict(lam=-1.0), dict(loss_normalization="mean"), dict(rampup=(5, 2)),
                                 dict(patch_size=(8, 32)), dict(average="ema"), dict(foreground_fraction=2.0)])
def test_bad_train_config(bad):
    with pytest.raises(NeurosegInputError):
        TrainConfig(**bad)


def test_loss_normalization_is_renamed():
    assert TrainConfig().loss_normalization == "paper"
    assert TrainConfig(loss_normalization="global").loss_normalization == "global"
    assert make_train_config("smoke", loss_normalization="global").loss_normalization == "global"
    with pytest.raises(TypeError, match="normalization"):
        TrainConfig(normalization="paper")  # the old name meant two things; it is gone
    with pytest.raises(NeurosegInputError, match="unknown TrainConfig field"):
        make_train_config("smoke", normalization="paper")


def test_learning_rate_warmup_then_cosine():
    config = TrainConfig(steps=100, lr=1e-3, warmup_fraction=0.1, min_lr_fraction=0.02)
    lrs = [learning_rate(step, config) for step in range(100)]
    assert lrs[0] < lrs[5] < lrs[9] == pytest.approx(1e-3)
    after = lrs[9:]
    assert all(b <= a + 1e-12 for a, b in zip(after, after[1:], strict=False))
    assert lrs[-1] == pytest.approx(2e-5)


def test_one_schedule_for_both_networks():
    # The 2D network's config drives the same function; the old per-network lr_schedule option is gone.
    two_d = Train2DConfig(steps=100, lr=1e-3, warmup_fraction=0.1, min_lr_fraction=0.02)
    three_d = TrainConfig(steps=100, lr=1e-3, warmup_fraction=0.1, min_lr_fraction=0.02)
    assert [learning_rate(s, two_d) for s in range(100)] == [learning_rate(s, three_d) for s in range(100)]
    constant = Train2DConfig(steps=50, lr=3e-4, warmup_fraction=0.0, min_lr_fraction=1.0)
    assert {learning_rate(s, constant) for s in range(50)} == {3e-4}
    default = Train2DConfig(steps=11)  # no warm-up, cosine down to a tenth
    assert learning_rate(0, default) == default.lr and learning_rate(10, default) == pytest.approx(0.1 * default.lr)
    assert not hasattr(Train2DConfig(), "lr_schedule")
    with pytest.raises(TypeError, match="lr_schedule"):
        Train2DConfig(lr_schedule="constant")
    with pytest.raises(NeurosegInputError, match="min_lr_fraction"):
        Train2DConfig(min_lr_fraction=1.5).validate()


# ------------------------------------------------------------------------------------------ sampler


def test_sampler_skips_zero_weight_patches():
    shape = (16, 16, 16)
    annotated = np.zeros(shape, bool)
    annotated[12] = True
    sampler = PatchSampler([np.ones(shape, np.float32)], [np.zeros(shape, np.float32)], [annotated],
                           patch_size=(4, 8, 8), foreground_fraction=0.0, augment=False, rng=0)
    patches = [sampler.sample() for _ in range(30)]
    assert all(p["annotated"].any() for p in patches)
    assert sampler.n_skipped > 0


def test_sampler_foreground_oversampling():
    shape = (16, 32, 32)
    target = np.zeros(shape, np.float32)
    target[2:4, 3:5, 27:29] = 1
    annotated = np.ones(shape, bool)
    args = ([np.ones(shape, np.float32)], [target], [annotated])
    always = PatchSampler(*args, patch_size=(4, 8, 8), foreground_fraction=1.0, augment=False, rng=1)
    assert all(always.sample()["target"].any() for _ in range(30))
    never = PatchSampler(*args, patch_size=(4, 8, 8), foreground_fraction=0.0, augment=False, rng=1)
    assert sum(never.sample()["target"].any() for _ in range(30)) < 15


def test_patch_larger_than_volume():
    shape = (8, 32, 32)
    with pytest.raises(NeurosegInputError, match=r"\(16, 64, 64\).*\(8, 32, 32\).*smaller"):
        PatchSampler([np.ones(shape, np.float32)], [np.zeros(shape, np.float32)], [np.ones(shape, bool)],
                     patch_size=(16, 64, 64))


def test_sampler_without_any_weight():
    shape = (8, 16, 16)
    with pytest.raises(NeurosegInputError, match="zero weight"):
        PatchSampler([np.ones(shape, np.float32)], [np.zeros(shape, np.float32)], [np.zeros(shape, bool)],
                     patch_size=(4, 8, 8))


# ------------------------------------------------------------------------------------------ augmentation


def test_augmentation_is_identical_on_image_and_masks():
    shape = (4, 6, 6)
    code = _coordinates(shape)
    mask = (code % 3 == 0)
    outputs = set()
    for seed in range(40):
        rng = np.random.default_rng(seed)
        image, (target, flag) = augment_patch(code, [code.copy(), mask], rng=rng, intensity=False)
        np.testing.assert_array_equal(image, target)
        np.testing.assert_array_equal(flag, target % 3 == 0)
        assert flag.dtype == bool
        # Each output z-plane holds one input z-plane: nothing rotates through Z (anisotropic voxels).
        z_of = target // (shape[1] * shape[2])
        assert all(len(np.unique(z_of[k])) == 1 for k in range(shape[0]))
        outputs.add(target.tobytes())
    assert len(outputs) >= 8  # flips and rotations actually happen
    np.testing.assert_array_equal(code, _coordinates(shape))  # input untouched


def test_intensity_changes_image_only_and_keeps_alignment():
    shape = (4, 8, 8)
    code = _coordinates(shape) / 256.0
    changed = False
    for seed in range(20):
        image, (target,) = augment_patch(code, [code], rng=np.random.default_rng(seed))
        # Intensity changes are monotonic, so the image's ranking still matches the target voxel for voxel.
        np.testing.assert_array_equal(np.argsort(image, axis=None), np.argsort(target, axis=None))
        np.testing.assert_array_equal(np.sort(target, axis=None), np.sort(code, axis=None))
        changed |= not np.allclose(np.sort(image, axis=None), np.sort(code, axis=None))
    assert changed


def test_sampler_augments_all_arrays_alike():
    shape = (8, 16, 16)
    code = _coordinates(shape)
    annotated = (code % 5 == 0)
    sampler = PatchSampler([code / code.max()], [code], [annotated], patch_size=(4, 8, 8), rng=3)
    for _ in range(10):
        patch = sampler.sample()
        np.testing.assert_array_equal(np.argsort(patch["image"], axis=None), np.argsort(patch["target"], axis=None))
        np.testing.assert_array_equal(patch["annotated"], patch["target"] % 5 == 0)


# ------------------------------------------------------------------------------------------ training


def test_train_3d_learns_and_returns_a_trained_model():
    image, labels = _cubes(0)
    annotation = sparse.from_planes(labels, planes=range(0, 16, 4))
    inputs = [a.copy() for a in (image, annotation.labels, annotation.annotated)]
    config = make_train_config("smoke", steps=30, lr=1e-2, log_every=5, val_every=15, seed=1)
    model = train_3d([image], [annotation], config=config, model_config=TINY_MODEL, val=_cubes(1),
                     spacing=(2.0, 0.5, 0.5), device="cpu", progress=False)
    assert isinstance(model, TrainedModel) and model.kind == "unet3d"
    assert isinstance(model.network, UNet3D) and not model.network.training
    assert model.model_config == TINY_MODEL and model.train_config == config
    assert model.intensity_normalization == IntensityNormalization() and model.spacing == (2.0, 0.5, 0.5)
    history = model.history
    assert history["step"] == [5, 10, 15, 20, 25, 30]
    assert history["loss"][-1] < 0.8 * history["loss"][0]
    assert history["val_step"] == [15, 30] and all(0 <= d <= 1 for d in history["val_dice"])
    assert history["lam"] == [0.5] * 6 and len(history["lr"]) == len(history["seconds"]) == 6
    for original, after in zip(inputs, (image, annotation.labels, annotation.annotated), strict=True):
        np.testing.assert_array_equal(original, after)


def test_train_3d_takes_raw_integer_stacks():
    # Raw detector counts are normalised by the training itself: a uint16 copy of the same stack (an affine
    # map of it, which percentiles undo) trains exactly like the float original.
    image, labels = _cubes(8)
    raw = np.round((image - image.min()) * 9000).astype(np.uint16)
    spec = IntensityNormalization(low=0.0, high=100.0)
    config = make_train_config("smoke", steps=2, log_every=1, average="none")
    runs = [train_3d(stack, _dense(labels), config=config, model_config=TINY_MODEL, intensity_normalization=spec,
                     device="cpu", progress=False) for stack in (spec.apply(raw), raw)]
    assert runs[1].intensity_normalization == spec
    assert runs[0].history["loss"] == pytest.approx(runs[1].history["loss"], rel=1e-4)


def test_train_3d_with_pseudo_labels_and_rampup():
    image, labels = _cubes(2)
    pseudo = np.clip(labels * 0.9 + 0.05, 0, 1).astype(np.float32)
    config = make_train_config("smoke", steps=6, log_every=1, rampup=(2, 4), lam=1.0, average="none")
    model = train_3d(image, sparse.from_planes(labels, planes=[8]), pseudo=pseudo, config=config,
                     model_config=TINY_MODEL, device="cpu", progress=False)
    assert model.history["lam"] == [0.0, 0.0, 0.0, 0.5, 1.0, 1.0]


def test_train_3d_is_deterministic_on_the_cpu():
    image, labels = _cubes(3)
    config = make_train_config("smoke", steps=4, log_every=1)  # weight averaging and BN refresh included
    runs = [train_3d([image], [_dense(labels)], config=config, model_config=TINY_MODEL, device="cpu",
                     progress=False) for _ in range(2)]
    assert runs[0].history["loss"] == runs[1].history["loss"]
    first, second = _weights(runs[0]), _weights(runs[1])
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key
    other = train_3d([image], [_dense(labels)], config=dataclasses.replace(config, seed=1), model_config=TINY_MODEL,
                     device="cpu", progress=False)
    assert not all(torch.equal(first[k], v) for k, v in _weights(other).items())  # the seed is used


@pytest.mark.parametrize("problem", ["integer_image_without_normalisation", "shape", "no_annotation",
                                     "patch_divisor", "counts", "instance_labels", "integer_val_without_normalisation",
                                     "in_channels", "not_sparse_labels", "pseudo_counts", "val_shape"])
def test_train_3d_bad_input(problem):
    image, labels = _cubes(4)
    annotation = _dense(labels)
    config, model_config, intensity, val, pseudo = make_train_config("smoke", steps=1), TINY_MODEL, None, None, None
    if problem == "integer_image_without_normalisation":
        image, intensity = (image * 100).astype(np.uint16), IntensityNormalization("none")
        match = "normalize_percentile"
    elif problem == "shape":
        annotation, match = _dense(labels[:8]), "shape"
    elif problem == "no_annotation":
        empty = np.zeros(labels.shape, bool)
        annotation, match = _unchecked(empty, empty), "no voxel is annotated"
    elif problem == "patch_divisor":
        config, match = make_train_config("smoke", patch_size=(8, 30, 32)), "divisor"
    elif problem == "counts":
        annotation, match = [annotation, annotation], "1 image.*2 annotation"
    elif problem == "instance_labels":
        annotation, match = _unchecked(labels.astype(np.int32) * 3, np.ones(labels.shape, bool)), "binarize_labels"
    elif problem == "integer_val_without_normalisation":
        intensity, match = IntensityNormalization("none"), "val image"
        val = ((image * 100).astype(np.int16), labels)
    elif problem == "in_channels":
        model_config, match = UNet3DConfig(in_channels=2, base_channels=4, depth=2), "in_channels"
    elif problem == "not_sparse_labels":
        annotation, match = [labels], r"\.labels/\.annotated"
    elif problem == "pseudo_counts":
        pseudo, match = [np.full(labels.shape, 0.5, np.float32)] * 2, "pseudo-label volume"
    elif problem == "val_shape":
        val, match = (image, labels[:8]), "val"
    with pytest.raises(NeurosegInputError, match=match):
        train_3d(image, annotation, pseudo=pseudo, config=config, model_config=model_config,
                 intensity_normalization=intensity, val=val, device="cpu", progress=False)


def test_lam_zero_ignores_pseudo_labels():
    # lambda = 0 is Cicek's sparse training: pseudo-labels must change nothing, not even the patches drawn.
    image, labels = _cubes(5)
    annotation = sparse.from_planes(labels, planes=range(4, 16, 6))
    pseudo = np.random.default_rng(0).random(labels.shape).astype(np.float32)
    config = make_train_config("smoke", steps=3, log_every=1, lam=0.0)
    runs = [train_3d(image, annotation, pseudo=p, config=config, model_config=TINY_MODEL, device="cpu",
                     progress=False).history["loss"] for p in (None, pseudo)]
    assert runs[0] == runs[1]


# ------------------------------------------------------------------------------------------ 2D and 3D alike


def _both_networks(steps, *, log_every, val_every=0, val=None, seed=0):
    """Train the 2D patch model and the tiny 3D U-Net on the same stack under the same schedule."""
    image, labels = _cubes(6)
    annotation = sparse.from_planes(labels, planes=[3, 8, 12])
    schedule = dict(steps=steps, lr=2e-3, warmup_fraction=0.3, min_lr_fraction=0.1, log_every=log_every,
                    val_every=val_every, seed=seed)
    config_2d = dataclasses.replace(PRESETS_2D["smoke"], batch_size=8, val_planes=2, **schedule)
    config_3d = make_train_config("smoke", average="none", **schedule)
    two_d = train_2d(image, annotation, config=config_2d, val=val, device="cpu", progress=False)
    three_d = train_3d(image, annotation, config=config_3d, model_config=TINY_MODEL, val=val, device="cpu",
                       progress=False)
    return (two_d, config_2d), (three_d, config_3d)


def test_histories_have_the_same_keys_units_and_schedule(monkeypatch):
    from neuroseg_lite import train as train_module

    pause = 0.5
    real_dice = train_module.dice

    def slow_dice(*args, **kwargs):  # validation takes long: the history must not count it as training time
        time.sleep(pause)
        return real_dice(*args, **kwargs)

    monkeypatch.setattr(train_module, "dice", slow_dice)
    (two_d, config_2d), (three_d, config_3d) = _both_networks(7, log_every=2, val_every=4, val=_cubes(7))
    h2, h3 = two_d.history, three_d.history
    base = {"step", "loss", "lr", "seconds", "val_step", "val_dice", "val_seconds"}
    assert set(h2) == base and set(h3) == base | {"lam"}  # the 3D loop also logs lambda
    for history, config in ((h2, config_2d), (h3, config_3d)):
        assert history["step"] == [2, 4, 6, 7]  # every log_every steps, and the last one
        # The learning rate of the last step of each interval (history steps count from 1, the schedule from 0).
        assert history["lr"] == [learning_rate(step - 1, config) for step in history["step"]]
        assert len(set(history["lr"])) == 4  # warm-up and decay are visible
        assert all(isinstance(s, int) for s in history["step"])
        assert all(isinstance(v, float) and np.isfinite(v) for v in history["loss"])
        seconds = history["seconds"]
        assert all(isinstance(s, float) for s in seconds) and seconds == sorted(seconds) and seconds[0] > 0
        # The slow validation after step 4 is not training time: steps 5 and 6 alone fill that interval.
        assert seconds[2] - seconds[1] < pause
        assert history["val_step"] == [4, 7] and all(0 <= d <= 1 for d in history["val_dice"])
        # Validation is stamped on the same clock: the training seconds when it ran.
        assert history["val_seconds"][0] == seconds[1] and history["val_seconds"][1] >= seconds[-1]
    assert h2["lr"] == h3["lr"]  # one schedule


@pytest.mark.parametrize("network", ["2d", "3d"])
def test_logged_loss_is_the_mean_over_the_interval(network):
    index = 0 if network == "2d" else 1
    every_step = _both_networks(5, log_every=1)[index][0].history
    every_two = _both_networks(5, log_every=2)[index][0].history
    assert every_step["step"] == [1, 2, 3, 4, 5] and every_two["step"] == [2, 4, 5]
    loss = every_step["loss"]
    expected = [(loss[0] + loss[1]) / 2, (loss[2] + loss[3]) / 2, loss[4]]
    assert every_two["loss"] == pytest.approx(expected, rel=1e-5)


# ------------------------------------------------------------------------------------------ internals


def test_weight_average_is_the_mean_of_snapshots():
    model = UNet3D(UNet3DConfig(base_channels=2, depth=1))
    first = {k: v.clone() for k, v in model.state_dict().items()}
    average = WeightAverage()
    average.update(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    average.update(model)
    average.copy_to(model)
    for key, value in model.state_dict().items():
        if value.is_floating_point() and key.endswith("weight"):
            torch.testing.assert_close(value, first[key] + 0.5)


def test_one_way_in():
    from neuroseg_lite import patches, pseudolabel, train

    for name in ("PatchSampler", "augment_patch", "AnnotatedPixelSampler", "patch_batch_2d", "crop_batch_2d"):
        assert callable(getattr(patches, name)), name
    assert train.PatchSampler is patches.PatchSampler
    for module, gone in ((train, ("save_checkpoint", "load_checkpoint", "TrainResult")),
                         (pseudolabel, ("train_2d", "save_2d", "load_2d", "_predict_planes"))):
        assert not [name for name in gone if hasattr(module, name)], module.__name__
