import numpy as np
import pytest
import torch

from neuroseg_lite._checks import NeurosegInputError
from neuroseg_lite.patches import PatchSampler, augment_patch
from neuroseg_lite.train import (DEFAULT_INTENSITY_NORMALIZATION, PRESETS_3D, TrainConfig, _WeightAverage,
                                 learning_rate, load_checkpoint, make_train_config, save_checkpoint, train_3d)
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


def _coordinates(shape):
    return np.arange(np.prod(shape), dtype=np.float32).reshape(shape)


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


@pytest.mark.parametrize("bad", [dict(lam=-1.0), dict(normalization="mean"), dict(rampup=(5, 2)),
                                 dict(patch_size=(8, 32)), dict(average="ema"), dict(foreground_fraction=2.0)])
def test_bad_train_config(bad):
    with pytest.raises(NeurosegInputError):
        TrainConfig(**bad)


def test_learning_rate_warmup_then_cosine():
    config = TrainConfig(steps=100, lr=1e-3, warmup_fraction=0.1, min_lr_fraction=0.02)
    lrs = [learning_rate(step, config) for step in range(100)]
    assert lrs[0] < lrs[5] < lrs[9] == pytest.approx(1e-3)
    after = lrs[9:]
    assert all(b <= a + 1e-12 for a, b in zip(after, after[1:]))
    assert lrs[-1] == pytest.approx(2e-5)


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


def test_train_3d_reduces_loss_and_checkpoint_round_trip(tmp_path):
    image, labels = _cubes(0)
    annotated = np.zeros(labels.shape, bool)
    annotated[::4] = True
    inputs = [a.copy() for a in (image, labels, annotated)]
    config = make_train_config("smoke", steps=30, lr=1e-2, log_every=5, val_every=15, seed=1)
    path = tmp_path / "model.pt"
    result = train_3d([image], [labels], [annotated], config=config, model_config=TINY_MODEL,
                      val=_cubes(1), device="cpu", checkpoint_path=path, progress=False)
    history = result.history
    assert history["step"] == [5, 10, 15, 20, 25, 30]
    assert history["loss"][-1] < 0.8 * history["loss"][0]
    assert history["val_step"] == [15, 30] and all(0 <= d <= 1 for d in history["val_dice"])
    assert history["lam"] == [0.5] * 6 and len(history["lr"]) == len(history["seconds"]) == 6
    for original, after in zip(inputs, (image, labels, annotated)):
        np.testing.assert_array_equal(original, after)

    model, info = load_checkpoint(path, device="cpu")
    assert info["normalization"] == DEFAULT_INTENSITY_NORMALIZATION
    assert info["model_config"] == TINY_MODEL and info["history"]["loss"] == history["loss"]
    assert info["train_config"] == config
    x = torch.randn(1, 1, 8, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), result.model.eval()(x))
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temporary file left behind


def test_train_3d_with_pseudo_labels_and_rampup():
    image, labels = _cubes(2)
    annotated = np.zeros(labels.shape, bool)
    annotated[8] = True
    pseudo = np.clip(labels * 0.9 + 0.05, 0, 1).astype(np.float32)
    config = make_train_config("smoke", steps=6, log_every=1, rampup=(2, 4), lam=1.0, average="none")
    result = train_3d(image, labels, annotated, pseudo=pseudo, config=config, model_config=TINY_MODEL,
                      device="cpu", progress=False)
    assert result.history["lam"] == [0.0, 0.0, 0.0, 0.5, 1.0, 1.0]


def test_train_3d_is_seeded():
    image, labels = _cubes(3)
    config = make_train_config("smoke", steps=3, log_every=1)
    runs = [train_3d([image], [labels], [np.ones(labels.shape, bool)], config=config, model_config=TINY_MODEL,
                     device="cpu", progress=False).history["loss"] for _ in range(2)]
    assert runs[0] == runs[1]


@pytest.mark.parametrize("problem", ["integer_image", "shape", "no_annotation", "patch_divisor", "counts",
                                     "instance_labels", "integer_val", "in_channels"])
def test_train_3d_bad_input(problem):
    image, labels = _cubes(4)
    annotated = np.ones(labels.shape, bool)
    config, match = make_train_config("smoke", steps=1), None
    if problem == "integer_image":
        image, match = (image * 100).astype(np.uint16), "normalize_percentile"
    elif problem == "shape":
        labels, match = labels[:8], "shape"
    elif problem == "no_annotation":
        annotated, match = np.zeros(labels.shape, bool), "annotated"
    elif problem == "patch_divisor":
        config, match = make_train_config("smoke", patch_size=(8, 30, 32)), "divisor"
    elif problem == "counts":
        labels, match = [labels, labels], "one labels"
    elif problem == "instance_labels":
        labels, match = labels.astype(np.int32) * 3, "binarize_labels"
    model_config = UNet3DConfig(in_channels=2, base_channels=4, depth=2) if problem == "in_channels" else TINY_MODEL
    if problem == "in_channels":
        match = "in_channels"
    val = ((image * 100).astype(np.int16), labels) if problem == "integer_val" else None
    if problem == "integer_val":
        match = "val image"
    with pytest.raises(NeurosegInputError, match=match):
        train_3d(image, labels, annotated, config=config, model_config=model_config, val=val, device="cpu",
                 progress=False)


# ------------------------------------------------------------------------------------------ checkpoints


def test_checkpoint_mismatches(tmp_path):
    model = UNet3D(TINY_MODEL)
    path = save_checkpoint(tmp_path / "a.pt", model, model_config=TINY_MODEL, train_config=TrainConfig(),
                           normalization=DEFAULT_INTENSITY_NORMALIZATION, history={"loss": [np.float32(1.0)]})
    payload = torch.load(path, weights_only=True)
    payload["model_config"]["base_channels"] = 8
    torch.save(payload, tmp_path / "edited.pt")
    with pytest.raises(NeurosegInputError, match="do not match.*shape mismatches"):
        load_checkpoint(tmp_path / "edited.pt", device="cpu")

    torch.save({"format": "neuroseg_lite.pseudolabel2d/1", "state_dict": {"conv1.weight": torch.zeros(32, 1, 5, 5)}},
               tmp_path / "two_d.pt")
    with pytest.raises(NeurosegInputError, match="2D"):
        load_checkpoint(tmp_path / "two_d.pt", device="cpu")

    (tmp_path / "notes.txt").write_text("not a checkpoint")
    with pytest.raises(NeurosegInputError, match="not a readable"):
        load_checkpoint(tmp_path / "notes.txt", device="cpu")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(NeurosegInputError, match="does not describe"):
        save_checkpoint(tmp_path / "b.pt", model, model_config=UNet3DConfig(base_channels=8, depth=2),
                        train_config=None, normalization=None, history=None)


def test_lam_zero_ignores_pseudo_labels():
    # lambda = 0 is Cicek's sparse training: pseudo-labels must change nothing, not even the patches drawn.
    image, labels = _cubes(5)
    annotated = np.zeros(labels.shape, bool)
    annotated[4::6] = True
    pseudo = np.random.default_rng(0).random(labels.shape).astype(np.float32)
    config = make_train_config("smoke", steps=3, log_every=1, lam=0.0)
    runs = [train_3d(image, labels, annotated, pseudo=p, config=config, model_config=TINY_MODEL, device="cpu",
                     progress=False).history["loss"] for p in (None, pseudo)]
    assert runs[0] == runs[1]


def test_weight_average_is_the_mean_of_snapshots():
    model = UNet3D(UNet3DConfig(base_channels=2, depth=1))
    first = {k: v.clone() for k, v in model.state_dict().items()}
    average = _WeightAverage()
    average.update(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    average.update(model)
    average.copy_to(model)
    for key, value in model.state_dict().items():
        if value.is_floating_point() and key.endswith("weight"):
            torch.testing.assert_close(value, first[key] + 0.5)


def test_train_re_exports_the_patch_tools():
    from neuroseg_lite import patches, train

    assert train.PatchSampler is patches.PatchSampler and train.augment_patch is patches.augment_patch
