"""Out-of-core prediction (neuroseg_lite.scale): equal to whole-stack prediction, resumable, refuses bad input."""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import zarr

from neuroseg_lite import scale, scaleplan
from neuroseg_lite._checks import NeurosegInputError
from neuroseg_lite.checkpoint import TrainedModel, save_model
from neuroseg_lite.infer import predict_volume
from neuroseg_lite.intensity import IntensityNormalization
from neuroseg_lite.models2d import Model2DConfig, build_model_2d
from neuroseg_lite.pseudolabel import predict_2d
from neuroseg_lite.unet3d import UNet3D, UNet3DConfig

SPACING = (2.0, 1.0, 1.0)
TILE = (8, 16, 16)  # halo (7, 15, 15)
BLOCK = (9, 17, 23)  # divides none of the axes of IMAGE_SHAPE
IMAGE_SHAPE = (20, 40, 44)


def _image(seed=0):
    rng = np.random.default_rng(seed)
    image = rng.poisson(80, size=IMAGE_SHAPE).astype(np.uint16)
    zz, yy, xx = np.ogrid[:20, :40, :44]
    for cz, cy, cx in [(5, 10, 10), (12, 25, 30), (15, 16, 40)]:  # bright somata a few blocks wide
        image[(zz - cz) ** 2 / 9 + (yy - cy) ** 2 / 36 + (xx - cx) ** 2 / 36 <= 1] += 400
    return image


@pytest.fixture(scope="module")
def model3d():
    torch.manual_seed(0)
    config = UNet3DConfig(base_channels=4, depth=2)
    network = UNet3D(config).eval()
    return TrainedModel(network=network, kind="unet3d", model_config=config,
                        intensity_normalization=IntensityNormalization(low=1.0, high=99.8), spacing=SPACING)


@pytest.fixture(scope="module")
def model2d():
    torch.manual_seed(1)
    config = Model2DConfig(model="unet2d", in_channels=3, base_channels=4, depth=2, dropout=0.0)
    return TrainedModel(network=build_model_2d(config).eval(), kind="model2d", model_config=config, spacing=SPACING)


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as c:
        yield c


@pytest.fixture(scope="module")
def reference(model3d):
    return predict_volume(model3d, _image(), tile=TILE)


def _read(path):
    return np.asarray(zarr.open_array(str(path / "0"), mode="r")), \
        np.asarray(zarr.open_array(str(path / "labels" / "mask" / "0"), mode="r"))


def _dice(a, b):
    return 2.0 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum())


@pytest.mark.parametrize("q", [0.0, 1.0, 37.5, 50.0, 99.8, 100.0])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.int32, np.float32])
def test_intensity_range_equals_numpy_percentile(dtype, q):
    rng = np.random.default_rng(3)
    data = (rng.normal(0, 50, size=(7, 11, 13)) + (0 if np.dtype(dtype).kind == "i" else 120)).astype(dtype)
    low = min(q, 99.0)
    found = scaleplan.intensity_range(data, IntensityNormalization(low=low, high=max(q, 99.5)))
    assert found == tuple(float(v) for v in np.percentile(data, [low, max(q, 99.5)]))


def test_intensity_range_block_by_block_on_dask_and_none(monkeypatch):
    import dask.array as da

    data = np.random.default_rng(4).integers(0, 4000, size=(30, 20, 20)).astype(np.uint16)
    monkeypatch.setattr(scaleplan, "_SCAN_VOXELS", 1000)  # several slabs
    found = scaleplan.intensity_range(da.from_array(data, chunks=(5, 10, 10)), IntensityNormalization())
    assert found == tuple(np.percentile(data, [1.0, 99.8]))
    assert scaleplan.intensity_range(data.astype(np.float32), IntensityNormalization(method="none")) is None
    with pytest.raises(NeurosegInputError, match="constant"):
        scaleplan.intensity_range(np.full((3, 4, 4), 7, np.uint16), IntensityNormalization())
    bad = data.astype(np.float32)
    bad[1, 2, 3] = np.nan
    with pytest.raises(NeurosegInputError, match="NaN"):
        scaleplan.intensity_range(bad, IntensityNormalization())


def test_block_halo_comes_from_the_tile(model3d):
    assert scale.block_halo(model3d, tile=TILE) == (7, 15, 15)
    assert scale.block_halo(model3d) == (31, 63, 63)  # DEFAULT_TILE (32, 64, 64)


def test_predict_large_equals_predict_volume(model3d, reference, client, tmp_path):
    image = _image()
    threshold = float(np.median(reference))  # an untrained network is near 0.5 everywhere: split it in half
    out = scale.predict_large(model3d, image, tmp_path / "p.ome.zarr", block=BLOCK, tile=TILE, client=client,
                              probability_dtype="float16", threshold=threshold, pyramid=False, progress=False,
                              spacing=SPACING)
    probability, mask = _read(out)
    assert probability.dtype == np.float16 and probability.shape == image.shape
    assert np.abs(probability.astype(np.float32) - reference).max() <= 1e-3
    assert _dice(mask > 0, reference >= threshold) >= 0.999
    assert zarr.open_group(str(out), mode="r").attrs["neuroseg_lite"]["predict_large"]["complete"] is True
    assert (out / "model.pt").is_file()  # an in-memory model is saved for the workers
    assert not (out / scale._MARKERS).exists()


def test_predict_large_from_ome_zarr_with_pyramid(model3d, reference, client, tmp_path):
    source = scale.zarrio.create_image(tmp_path / "in.ome.zarr", shape=IMAGE_SHAPE, dtype=np.uint16,
                                       chunks=(8, 16, 16), spacing=SPACING)
    source[:] = _image()
    model_file = save_model(tmp_path / "m.pt", model3d)
    out = scale.predict_large(model_file, tmp_path / "in.ome.zarr", tmp_path / "p.ome.zarr", block=(10, 20, 22),
                              tile=TILE, client=client, progress=False)
    probability, _ = _read(out)
    assert np.abs(probability / 255.0 - reference).max() <= 0.5 / 255 + 1e-3
    assert zarr.open_group(str(out), mode="r").attrs["neuroseg_lite"]["predict_large"]["complete"] is True


def test_predict_2d_large_equals_predict_2d(model2d, client, tmp_path):
    image = _image(5)
    expected = predict_2d(model2d, image)
    out = scale.predict_2d_large(model2d, image, tmp_path / "p2.ome.zarr", block=(3, 16, 16), client=client,
                                 probability_dtype="float16", pyramid=False, progress=False, spacing=SPACING)
    probability, mask = _read(out)
    assert np.abs(probability.astype(np.float32) - expected).max() <= 1e-3
    assert np.array_equal(mask > 0, probability.astype(np.float32) >= 0.5)


def test_disk_full_is_a_clear_error_and_the_rerun_resumes(model3d, reference, client, tmp_path, monkeypatch):
    real, written = scale._write_block, []

    def fills_up(job, region, probability, mask, index):
        if len(written) >= 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(job, region, probability, mask, index)
        written.append(index)

    monkeypatch.setattr(scale, "_write_block", fills_up)
    kwargs = dict(block=BLOCK, tile=TILE, client=client, probability_dtype="float16", pyramid=False,
                  progress=False, spacing=SPACING)
    with pytest.raises(NeurosegInputError, match="full.*finished.*kept.*again"):
        scale.predict_large(model3d, _image(), tmp_path / "p.ome.zarr", **kwargs)
    done = {int(p.name.split(".")[0]) for p in (tmp_path / "p.ome.zarr" / scale._MARKERS).iterdir()}
    assert done == set(written) and len(done) == 3
    monkeypatch.setattr(scale, "_write_block", real)
    with pytest.raises(NeurosegInputError, match="threshold"):  # other parameters: refused, not mixed
        scale.predict_large(model3d, _image(), tmp_path / "p.ome.zarr", **{**kwargs, "threshold": 0.3})
    calls = []
    monkeypatch.setattr(scale, "_write_block", lambda *a: (calls.append(a[-1]), real(*a)))
    scale.predict_large(model3d, _image(), tmp_path / "p.ome.zarr", **kwargs)
    # Only the missing blocks run (a task cancelled by the failure may still finish and write its block).
    assert set(calls) == set(range(len(scaleplan.block_regions(IMAGE_SHAPE, BLOCK)))) - done
    probability, _ = _read(tmp_path / "p.ome.zarr")
    assert np.abs(probability.astype(np.float32) - reference).max() <= 1e-3


def test_resume_after_the_process_is_killed(model3d, reference, client, tmp_path):
    np.save(tmp_path / "image.npy", _image())
    save_model(tmp_path / "m.pt", model3d)
    out = tmp_path / "killed.ome.zarr"
    script = textwrap.dedent(f"""
        import os, signal
        import numpy as np
        from distributed import Client, LocalCluster
        from neuroseg_lite import scale
        real, count = scale._write_block, []
        def write_then_die(*args):
            real(*args)
            count.append(1)
            if len(count) == 4:
                os.kill(os.getpid(), signal.SIGKILL)  # as a crash or an out-of-memory kill would
        scale._write_block = write_then_die
        with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as c, \\
                Client(c) as client:
            scale.predict_large({str(tmp_path / "m.pt")!r}, np.load({str(tmp_path / "image.npy")!r}), {str(out)!r},
                                block={BLOCK}, tile={TILE}, client=client, probability_dtype="float16",
                                pyramid=False, progress=False, spacing={SPACING})
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == -signal.SIGKILL, run.stderr[-2000:]
    done = list((out / scale._MARKERS).iterdir())
    assert len(done) == 4
    assert zarr.open_group(str(out), mode="r").attrs["neuroseg_lite"]["predict_large"]["complete"] is False
    scale.predict_large(tmp_path / "m.pt", _image(), out, block=BLOCK, tile=TILE, client=client,
                        probability_dtype="float16", pyramid=False, progress=False, spacing=SPACING)
    probability, _ = _read(out)
    assert np.abs(probability.astype(np.float32) - reference).max() <= 1e-3
    with pytest.raises(NeurosegInputError, match="complete.*overwrite=True"):
        scale.predict_large(tmp_path / "m.pt", _image(), out, block=BLOCK, tile=TILE, client=client,
                            probability_dtype="float16", pyramid=False, progress=False, spacing=SPACING)


def test_refusals(model3d, model2d, client, tmp_path):
    image = _image()
    kwargs = dict(tile=TILE, client=client, pyramid=False, progress=False, spacing=SPACING)
    with pytest.raises(NeurosegInputError, match="smaller than the halo.*y: 8 < 15"):
        scale.predict_large(model3d, image, tmp_path / "a.ome.zarr", block=(9, 8, 30), **kwargs)
    with pytest.raises(NeurosegInputError, match="'unet3d' model.*predict_2d_large"):
        scale.predict_large(model2d, image, tmp_path / "a.ome.zarr", block=BLOCK, **kwargs)
    save_model(tmp_path / "m2d.pt", model2d)
    with pytest.raises(NeurosegInputError, match="2D pseudo-labeller, not a 3D U-Net"):
        scale.predict_large(tmp_path / "m2d.pt", image, tmp_path / "a.ome.zarr", block=BLOCK, **kwargs)
    with pytest.raises(NeurosegInputError, match="spacing="):
        scale.predict_large(model3d, image, tmp_path / "a.ome.zarr", block=BLOCK, **{**kwargs, "spacing": None})
    with pytest.raises(NeurosegInputError, match=r"\(Z, Y, X\)"):
        scale.predict_large(model3d, image[0], tmp_path / "a.ome.zarr", block=BLOCK, **kwargs)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(NeurosegInputError, match="overwrite=True"):
        scale.predict_large(model3d, image, tmp_path / "mine", block=BLOCK, **kwargs)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    assert not (tmp_path / "a.ome.zarr").exists()
    assert image.dtype == np.uint16 and np.array_equal(image, _image())  # never modified
