"""Channels-last 3D layout and mixed precision of the 3D U-Net (issue #9, item 8): CPU here, CUDA where one is."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from neuroseg_lite import sparse, synth
from neuroseg_lite.checkpoint import load_model, save_model
from neuroseg_lite.infer import predict_volume
from neuroseg_lite.intensity import IntensityNormalization
from neuroseg_lite.train import _build_trainer, make_train_config, train_3d
from neuroseg_lite.unet3d import UNet3D, UNet3DConfig
from neuroseg_lite.utils import memory_format_for

TINY_MODEL = UNet3DConfig(base_channels=4, depth=2)
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none is visible here)")
CL = torch.channels_last_3d


@pytest.fixture(scope="module")
def tiny():
    volume = synth.make_volume(preset="tiny", seed=1)
    return volume, sparse.simulate_sparse(volume.labels, n_slices=4, axis=0, mode="even")


def _conv_weights(model):
    """The 5D weights whose layouts differ (one with 1 channel or a 1x1x1 kernel is in both at once)."""
    return [p for p in model.parameters() if p.dim() == 5 and p.shape[1] > 1 and p.shape[2:].numel() > 1]


def _trainer(tiny, *, device="cpu", **overrides):
    volume, annotation = tiny
    return _build_trainer([volume.image], [annotation], pseudo=None,
                          config=make_train_config("smoke", **overrides), model_config=TINY_MODEL,
                          intensity=IntensityNormalization(), device=torch.device(device))


def test_the_helper_chooses_channels_last_on_cuda_and_the_cpu_only():
    assert memory_format_for("cuda") == CL and memory_format_for(torch.device("cuda", 0)) == CL
    assert memory_format_for("cpu") == CL  # oneDNN's layout; the stored grid trained in it
    assert memory_format_for("mps") == torch.contiguous_format  # wrong Conv3d outputs there (pytorch#141471)
    for device in ("cpu", "cuda", "mps"):
        assert memory_format_for(device, channels_last=False) == torch.contiguous_format


def test_channels_last_forward_matches_contiguous_on_the_cpu():
    torch.manual_seed(0)
    model = UNet3D(TINY_MODEL).eval()
    x = torch.randn(2, 1, 8, 16, 16)
    with torch.no_grad():
        reference = model(x)
        model.to(memory_format=memory_format_for("cpu"))
        assert all(p.is_contiguous(memory_format=CL) and not p.is_contiguous() for p in _conv_weights(model))
        result = model(x.contiguous(memory_format=memory_format_for("cpu")))
    torch.testing.assert_close(result, reference, rtol=0, atol=1e-5)


def test_the_trainer_follows_the_helper_and_its_state_round_trips(tiny, tmp_path):
    trainer = _trainer(tiny)
    trainer.step(0, 1e-3)
    assert all(p.is_contiguous(memory_format=CL) for p in _conv_weights(trainer.model))
    off = _trainer(tiny, channels_last=False)
    assert all(p.is_contiguous() and not p.is_contiguous(memory_format=CL) for p in _conv_weights(off.model))

    # the resumable state keeps values and layout through torch.save / torch.load(weights_only=True)
    torch.save(trainer.state_dict(), tmp_path / "state.pt")
    loaded = torch.load(tmp_path / "state.pt", weights_only=True)
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(loaded["model"][key], value) and loaded["model"][key].stride() == value.stride()
    fresh = _trainer(tiny)
    fresh.load_state_dict(loaded)
    assert all(torch.equal(a, b) for a, b in zip(fresh.model.state_dict().values(),
                                                 trainer.model.state_dict().values()))


def test_a_model_trained_channels_last_saves_and_loads_the_same_weights(tiny, tmp_path):
    volume, annotation = tiny
    model = train_3d(volume.image, annotation, config=make_train_config("smoke"), model_config=TINY_MODEL,
                     device="cpu", progress=False)
    assert all(p.is_contiguous(memory_format=CL) for p in _conv_weights(model.network))
    path = save_model(tmp_path / "model.pt", model)
    reloaded = load_model(path, kind="unet3d", device="cpu")
    for key, value in model.network.state_dict().items():
        assert torch.equal(reloaded.network.state_dict()[key], value), key
    image = volume.image[:8, :32, :32]
    np.testing.assert_allclose(predict_volume(reloaded, image, device="cpu"),
                               predict_volume(model, image, device="cpu"), rtol=0, atol=1e-6)


def _layouts_seen(model):
    """Record, per forward call of the first multi-channel convolution, whether its weight is channels-last."""
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv3d) and m.in_channels > 1)
    seen = []
    conv.register_forward_pre_hook(lambda module, _: seen.append(module.weight.is_contiguous(memory_format=CL)))
    return seen


def test_predict_volume_layout_switch_gives_the_same_probabilities_on_the_cpu():
    torch.manual_seed(0)
    model = UNet3D(TINY_MODEL)  # contiguous, as built
    image = np.random.default_rng(0).random((12, 40, 36), dtype=np.float32)
    seen = _layouts_seen(model)
    default = predict_volume(model, image, tile=(8, 16, 16), device="cpu")
    assert seen and all(seen), "the CPU default runs channels-last"
    assert all(p.is_contiguous() for p in _conv_weights(model)), "and gives the network back as it was"
    seen.clear()
    off = predict_volume(model, image, tile=(8, 16, 16), device="cpu", channels_last=False)
    assert seen and not any(seen)
    np.testing.assert_allclose(off, default, rtol=0, atol=1e-5)


@CUDA
def test_an_amp_step_on_cuda_keeps_channels_last_and_matches_a_contiguous_step(tiny):
    fast, plain = _trainer(tiny, device="cuda", amp=True), _trainer(tiny, device="cuda", amp=True, channels_last=False)
    assert fast.use_amp and plain.use_amp
    for trainer in (fast, plain):  # a smaller first scale, so that this one step is not skipped for overflow
        trainer.scaler = torch.amp.GradScaler("cuda", init_scale=2.0**8)
    plain.model.load_state_dict(fast.model.state_dict())  # the same weights in both layouts
    batch = fast.next_batch()
    loss_fast = fast.optimize(batch, lam=0.0)
    loss_plain = plain.optimize({**batch, "image": batch["image"].contiguous()}, lam=0.0)
    assert all(p.is_contiguous(memory_format=CL) for p in _conv_weights(fast.model))
    assert all(p.is_contiguous() for p in _conv_weights(plain.model))
    # float16 autocast: convolutions in the two layouts round differently, about 1e-3 relative per layer
    assert float(loss_fast) == pytest.approx(float(loss_plain), rel=1e-2)
    for (name, a), b in zip(fast.model.named_parameters(), plain.model.parameters()):
        if a.grad is not None:  # the unscaled gradients GradScaler left after its step
            error = (a.grad.float() - b.grad.float()).norm() / b.grad.float().norm().clamp_min(1e-12)
            assert torch.isfinite(error) and float(error) < 0.05, name


@CUDA
def test_predict_volume_channels_last_on_cuda_matches_the_cpu(tiny):
    volume, annotation = tiny
    model = train_3d(volume.image, annotation, config=make_train_config("smoke"), model_config=TINY_MODEL,
                     device="cpu", progress=False)
    on_cpu = predict_volume(model, volume.image, device="cpu")
    network = model.network.to(memory_format=torch.contiguous_format)
    seen = _layouts_seen(network)
    on_gpu = predict_volume(model, volume.image, device="cuda")
    assert seen and all(seen), "the CUDA forward runs channels-last"
    assert all(p.is_contiguous() for p in _conv_weights(network)), "and the network's layout comes back"
    # bf16 (or fp16) autocast keeps 8 (11) mantissa bits: probabilities agree to a few hundredths
    assert on_gpu.shape == on_cpu.shape and np.abs(on_gpu - on_cpu).max() < 0.05
