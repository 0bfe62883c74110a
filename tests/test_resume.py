"""Training that survives interruption (neuroseg_lite.resume) and honest device handling (issue 11, items 2-3)."""
from __future__ import annotations

import dataclasses
import errno
import functools
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import warnings

import numpy as np
import pytest
import torch

from neuroseg_lite import experiment, resume, sparse, synth
from neuroseg_lite._checks import NeurosegInputError
from neuroseg_lite.checkpoint import load_model, save_model
from neuroseg_lite.infer import predict_volume
from neuroseg_lite.models2d import PRESETS_2D
from neuroseg_lite.train import PRESETS_3D, make_train_config, train_2d, train_3d
from neuroseg_lite.unet3d import UNet3DConfig
from neuroseg_lite.utils import CPUTrainingWarning, cpu_seconds_per_step, warn_gpu_preset_on_cpu

TINY_MODEL = UNet3DConfig(base_channels=4, depth=2)
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none is visible here)")

# One training run in a fresh process: 2D or 3D smoke training on the 'tiny' synthetic volume, with a validation
# volume, one torch thread (results depend on the thread count), a state every few steps, and a callback that
# SIGKILLs the process after step KILL_AT; the final weights go to OUT.
_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import torch
    from neuroseg_lite import sparse, synth
    from neuroseg_lite.models2d import PRESETS_2D
    from neuroseg_lite.train import PRESETS_3D, train_2d, train_3d
    from neuroseg_lite.unet3d import UNet3DConfig

    kind, state, out, kill_at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    torch.set_num_threads(1)
    volume, val = synth.make_volume(preset="tiny", seed=1), synth.make_volume(preset="tiny", seed=2)
    annotation = sparse.simulate_sparse(volume.labels, n_slices=4, axis=0, mode="even")

    def callback(step):
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    options = dict(device="cpu", progress=False, val=(val.image, val.labels), callback=callback)
    if state != "none":
        options.update(resume=state, save_every_steps=3 if kind == "3d" else 2)
    if kind == "3d":
        model = train_3d(volume.image, annotation, config=PRESETS_3D["smoke"],
                         model_config=UNet3DConfig(base_channels=4, depth=2), **options)
    else:
        model = train_2d(volume.image, annotation, config=PRESETS_2D["smoke"], **options)
    torch.save({"weights": model.network.state_dict(), "history": model.history}, out)
""")


def _run(tmp_path, kind, state, kill_at=-1):
    out = tmp_path / f"out-{kind}-{kill_at}.pt"
    script = tmp_path / "train_once.py"
    script.write_text(_SCRIPT)
    env = {**os.environ, "NEUROSEG_DEVICE": "cpu", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(script), kind, str(state), str(out), str(kill_at)], env=env,
                          capture_output=True, text=True, timeout=300)
    return done, out


def _assert_same_weights(a: dict, b: dict):
    assert a.keys() == b.keys()
    different = [key for key in a if not torch.equal(a[key], b[key])]
    assert not different, f"tensors differ after resuming: {different[:5]}"


# 3D smoke: 12 steps, a state every 3, validation at 6, weight averaging over steps 10-12. Killed one step after
# a save (4: the work of step 4 is lost and redone), after the validation (8), and after the last step but before
# the weight average and batch-norm refresh (12). 2D smoke: 10 steps, a state every 2, validation at 5.
@pytest.mark.parametrize("kind, kill_points", [("3d", (4, 8, 12)), ("2d", (3, 6, 10))])
def test_killed_three_times_ends_with_the_weights_of_an_uninterrupted_run(tmp_path, kind, kill_points):
    reference, out = _run(tmp_path, kind, "none")
    assert reference.returncode == 0, reference.stderr
    expected = torch.load(out, weights_only=True)
    state = tmp_path / "work" / f"{kind}.state.pt"
    for kill_at in kill_points:
        killed, out = _run(tmp_path, kind, state, kill_at)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        assert not out.exists() and state.exists()
        assert torch.load(state, weights_only=True)["step"] <= kill_at
    finished, out = _run(tmp_path, kind, state)
    assert finished.returncode == 0, finished.stderr
    result = torch.load(out, weights_only=True)
    _assert_same_weights(expected["weights"], result["weights"])
    assert result["history"]["loss"] == expected["history"]["loss"]
    assert result["history"]["val_dice"] == expected["history"]["val_dice"]
    assert not state.exists(), "the state file is removed once training has finished"


# ------------------------------------------------------------------------------------------ in-process faults


class _Stop(Exception):
    pass


def _stop_at(step):
    def callback(done):
        if done == step:
            raise _Stop(done)
    return callback


@pytest.fixture(scope="module")
def tiny():
    volume = synth.make_volume(preset="tiny", seed=1)
    return volume, sparse.simulate_sparse(volume.labels, n_slices=4, axis=0, mode="even")


def _train(tiny, **options):
    volume, annotation = tiny
    options = {"config": PRESETS_3D["smoke"], "model_config": TINY_MODEL, "device": "cpu", "progress": False,
               **options}
    return train_3d(volume.image, annotation, **options)


def _interrupted_state(tiny, path, *, at=5, **options):
    with pytest.raises(_Stop):
        _train(tiny, resume=path, save_every_steps=2, callback=_stop_at(at), **options)
    assert path.exists()
    return path


def test_state_of_another_configuration_or_data_is_refused(tiny, tmp_path):
    path = _interrupted_state(tiny, tmp_path / "state.pt")
    before = path.read_bytes()
    with pytest.raises(NeurosegInputError, match=r"another training run.*seed.*was not used"):
        _train(tiny, config=make_train_config("smoke", seed=1), resume=path)
    with pytest.raises(NeurosegInputError, match="configuration"):
        _train(tiny, config=make_train_config("smoke", lr=2e-3), resume=path)
    with pytest.raises(NeurosegInputError, match="configuration"):
        _train(tiny, model_config=UNet3DConfig(base_channels=8, depth=2), resume=path)
    volume, annotation = tiny
    with pytest.raises(NeurosegInputError, match="training data"):
        train_3d(volume.image[::-1].copy(), annotation, config=PRESETS_3D["smoke"], model_config=TINY_MODEL,
                 device="cpu", progress=False, resume=path)
    assert path.read_bytes() == before, "a refused state is left as it was"


def test_truncated_or_foreign_state_is_refused(tiny, tmp_path):
    path = _interrupted_state(tiny, tmp_path / "state.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(NeurosegInputError, match="unreadable.*truncated"):
        _train(tiny, resume=path)
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(NeurosegInputError, match="not a NeuroSeg Lite training state"):
        _train(tiny, resume=path)
    payload = torch.load(_interrupted_state(tiny, tmp_path / "other.pt"), weights_only=True)
    payload["objects"]["trainer"]["model"].popitem()  # an edited state: a tensor missing
    torch.save(payload, path)
    with pytest.raises(NeurosegInputError, match="does not fit this run"):
        _train(tiny, resume=path)


def test_full_disk_while_saving_keeps_the_previous_state(tiny, tmp_path, monkeypatch):
    reference = _train(tiny).network.state_dict()
    path = tmp_path / "state.pt"
    real_save, calls = torch.save, []

    def save_until_the_disk_is_full(obj, target, *args, **kwargs):
        calls.append(target)
        if len(calls) > 2:  # steps 2 and 4 are saved, then the disk is full
            with open(target, "wb") as handle:
                handle.write(b"half a state")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, target, *args, **kwargs)

    monkeypatch.setattr(resume.torch, "save", save_until_the_disk_is_full)
    with pytest.raises(OSError, match=r"step 6 .*the disk is full; the state of step 4 is intact") as caught:
        _train(tiny, resume=path, save_every_steps=2)
    assert caught.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["step"] == 4
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"], "no half-written file is left behind"
    resumed = _train(tiny, resume=path, save_every_steps=2).network.state_dict()
    _assert_same_weights(reference, resumed)


@pytest.fixture
def read_only_folder(tmp_path, monkeypatch):
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:  # root writes through permissions: make file creation fail as on a read-only mount
        def refuse(*args, **kwargs):
            raise OSError(errno.EROFS, "Read-only file system")
        monkeypatch.setattr(resume.tempfile, "mkstemp", refuse)
    yield folder
    folder.chmod(0o755)


def test_read_only_working_folder_gives_a_clear_message(tiny, read_only_folder):
    with pytest.raises(NeurosegInputError, match="cannot write in the working folder .*read-only"):
        _train(tiny, resume=read_only_folder / "state.pt")
    volume, _ = tiny
    data = experiment.prepare_data([volume.image], [volume.labels], volume.image, volume.labels, volume.spacing,
                                   name="tiny")
    pipeline = experiment.Pipeline(data, preset="smoke", workdir=read_only_folder, device="cpu", progress=False)
    with pytest.raises(NeurosegInputError, match="workdir=.*Google Drive"):
        pipeline.model_3d(experiment.Run("3d_sparse", n_slices=2))


def test_bad_save_intervals_are_refused(tiny, tmp_path):
    with pytest.raises(NeurosegInputError, match="save_every_steps"):
        _train(tiny, resume=tmp_path / "s.pt", save_every_steps=0)
    with pytest.raises(NeurosegInputError, match="save_every_seconds"):
        _train(tiny, resume=tmp_path / "s.pt", save_every_seconds=-1)


def test_pipeline_resumes_a_model_interrupted_in_its_workdir(tiny, tmp_path, monkeypatch):
    volume, _ = tiny
    data = experiment.prepare_data([volume.image], [volume.labels], volume.image, volume.labels, volume.spacing,
                                   name="tiny")
    run = experiment.Run("3d_sparse", n_slices=2)
    expected = experiment.Pipeline(data, preset="smoke", workdir=tmp_path / "a", device="cpu",
                                   progress=False).model_3d(run).network.state_dict()
    pipeline = experiment.Pipeline(data, preset="smoke", workdir=tmp_path / "b", device="cpu", progress=False,
                                   save_every_steps=2)
    monkeypatch.setattr(experiment.train, "train_3d", functools.partial(train_3d, callback=_stop_at(7)))
    with pytest.raises(_Stop):  # a kernel interrupted while training
        pipeline.model_3d(run)
    monkeypatch.undo()
    state = pipeline.state_path("models", run)
    assert state.exists() and state.parent == tmp_path / "b" / "models" / "tiny"
    assert state.name.startswith(f"{run.label}-{pipeline._key('model', run)[:16]}")
    assert torch.load(state, weights_only=True)["step"] == 6
    again = experiment.Pipeline(data, preset="smoke", workdir=tmp_path / "b", device="cpu", progress=False)
    _assert_same_weights(expected, again.model_3d(run).network.state_dict())
    assert not state.exists()


# ------------------------------------------------------------------------------------------ model files by hand


def test_model_file_edited_by_hand_is_refused(tiny, tmp_path):
    path = save_model(tmp_path / "model.pt", _train(tiny))
    data = path.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(NeurosegInputError, match="not a readable model file.*truncated"):
        load_model(truncated)
    payload = torch.load(path, weights_only=True)
    key = next(k for k, v in payload["state_dict"].items() if v.ndim == 5)
    payload["state_dict"][key] = torch.zeros(payload["state_dict"][key].shape[0] + 1,
                                             *payload["state_dict"][key].shape[1:])
    edited = tmp_path / "edited.pt"
    torch.save(payload, edited)
    with pytest.raises(NeurosegInputError, match=f"do not fit the architecture.*{key}"):
        load_model(edited)


# ------------------------------------------------------------------------------------------ devices


def test_gpu_preset_on_the_cpu_warns_with_the_time_it_takes(tiny):
    config, model = make_train_config("gpu"), UNet3DConfig(base_channels=32, depth=4)
    with pytest.warns(CPUTrainingWarning, match=r"about \d+\.\d hours \(4000 steps x \d+\.\d\d s") as caught:
        warn_gpu_preset_on_cpu(config, torch.device("cpu"), gpu_preset=PRESETS_3D["gpu"], model_config=model)
    hours = config.steps * cpu_seconds_per_step(config, model) / 3600
    assert f"about {hours:.1f} hours" in str(caught[0].message) and hours > 5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_gpu_preset_on_cpu(config, torch.device("cuda"), gpu_preset=PRESETS_3D["gpu"], model_config=model)
        warn_gpu_preset_on_cpu(PRESETS_3D["cpu"], torch.device("cpu"), gpu_preset=PRESETS_3D["gpu"])
    assert cpu_seconds_per_step(PRESETS_3D["cpu"], UNet3DConfig()) == pytest.approx(0.16)
    volume, annotation = tiny
    # the warning comes before any work: here the volume is even too small for the preset's patches
    with pytest.warns(CPUTrainingWarning, match="'gpu' preset"), pytest.raises(NeurosegInputError):
        train_3d(volume.image, annotation, config=config, model_config=model, device="cpu", progress=False)
    with pytest.warns(CPUTrainingWarning, match="'gpu' preset.*minutes"):
        train_2d(volume.image, annotation, config=dataclasses.replace(PRESETS_2D["gpu"], steps=1, val_every=0),
                 device="cpu", progress=False)


def test_torch_threads_are_respected(tiny):
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        seen = []
        _train(tiny, callback=lambda step: seen.append(torch.get_num_threads()))
        assert set(seen) == {1} and torch.get_num_threads() == 1, "a user's torch.set_num_threads is kept"
        seen.clear()
        _train(tiny, config=make_train_config("smoke", num_threads=2),
               callback=lambda step: seen.append(torch.get_num_threads()))
        assert set(seen) == {2}, "TrainConfig.num_threads applies while training"
        assert torch.get_num_threads() == 1, "and the user's setting comes back afterwards"
    finally:
        torch.set_num_threads(previous)


@CUDA
def test_amp_training_step_on_cuda_and_resume(tiny):
    volume, annotation = tiny
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "state.pt")
        options = dict(config=make_train_config("smoke", amp=True), model_config=TINY_MODEL, device="cuda",
                       progress=False)
        with pytest.raises(_Stop):
            train_3d(volume.image, annotation, resume=path, save_every_steps=2, callback=_stop_at(5), **options)
        saved = torch.load(path, weights_only=True)
        assert "scaler" in saved["objects"]["trainer"] and "cuda" in saved["rngs"]
        model = train_3d(volume.image, annotation, resume=path, **options)
    assert next(model.network.parameters()).device.type == "cuda"
    assert np.isfinite(model.history["loss"]).all() and len(model.history["loss"]) == 6


@CUDA
def test_predict_volume_autocast_on_cuda_matches_the_cpu(tiny):
    volume, annotation = tiny
    model = _train(tiny)
    on_cpu = predict_volume(model, volume.image, device="cpu")
    on_gpu = predict_volume(model, volume.image, device="cuda")
    assert on_gpu.shape == on_cpu.shape and np.abs(on_gpu - on_cpu).max() < 0.05
