"""Tests for neuroseg_lite.infer (sliding-window prediction)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from neuroseg_lite._checks import NeurosegInputError
from neuroseg_lite.checkpoint import TrainedModel
from neuroseg_lite.infer import gaussian_window, predict_volume, tile_positions
from neuroseg_lite.intensity import IntensityNormalization
from neuroseg_lite.models2d import Model2DConfig, PatchCNN
from neuroseg_lite.unet3d import UNet3D, UNet3DConfig

TINY_UNET = UNet3DConfig(base_channels=4, depth=2)


class Pointwise(torch.nn.Module):
    """A 1x1x1 convolution: each output voxel depends on its own input voxel only."""

    def __init__(self, divisor=None):
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 1, 1)
        with torch.no_grad():
            self.conv.weight.fill_(3.0)
            self.conv.bias.fill_(-1.0)
        self._divisor = divisor

    def forward(self, x):
        if self._divisor is not None:
            assert all(n % d == 0 for n, d in zip(x.shape[2:], self._divisor)), x.shape
        return self.conv(x)


class PointwiseWithDivisor(Pointwise):
    def required_divisor(self):
        return self._divisor


class Conv3(torch.nn.Module):
    """A single zero-padded 3x3x3 convolution: translation-equivariant away from the borders."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv3d(1, 1, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


class ConstantLogit(torch.nn.Module):
    def __init__(self, value):
        super().__init__()
        self.value = value

    def forward(self, x):
        return torch.zeros_like(x) + self.value


class TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.body = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.BatchNorm3d(4),
                                        torch.nn.ReLU(), torch.nn.Conv3d(4, 1, 1))

    def forward(self, x):
        return self.body(x)


class ZOnlyLazy:
    """Array-like that, like io.LazyStack, only supports indexing along z."""

    def __init__(self, array):
        self._array = array
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim
        self.reads = 0

    def __getitem__(self, key):
        if not isinstance(key, slice):
            raise TypeError("only z slices are supported")
        self.reads += 1
        return self._array[key].copy()


def whole_volume(model, image):
    with torch.no_grad():
        logits = model(torch.from_numpy(image.astype(np.float32))[None, None])
    return torch.sigmoid(logits)[0, 0].numpy()


@pytest.fixture
def image():
    return np.random.default_rng(0).random((11, 37, 29)).astype(np.float32)


@pytest.mark.parametrize("length", [1, 5, 16, 17, 40, 101])
@pytest.mark.parametrize("tile", [1, 8, 16, 33])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.9])
def test_tile_positions_cover_every_voxel(length, tile, overlap):
    starts = tile_positions(length, tile, overlap)
    covered = np.zeros(length, dtype=int)
    for s in starts:
        covered[s:s + tile] += 1
    assert covered.min() >= 1
    assert starts[0] == 0 and starts[-1] == max(length - tile, 0)
    assert all(b > a for a, b in zip(starts, starts[1:]))
    assert all(s + min(tile, length) <= length for s in starts)
    for a, b in zip(starts, starts[1:]):
        # At least the requested overlap, in whole voxels (neighbouring tiles must differ by one voxel).
        assert tile - (b - a) >= min(tile * overlap, tile - 1) - 1e-9


@pytest.mark.parametrize("length", [1, 7, 16, 17, 64, 101, 512])
@pytest.mark.parametrize("tile,align", [(8, 4), (16, 4), (32, 8), (64, 8), (128, 8), (8, 8)])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
def test_aligned_tile_positions(length, tile, align, overlap):
    starts = tile_positions(length, tile, overlap, align=align)
    assert starts[0] == 0 and all(s % align == 0 for s in starts)
    assert all(b > a for a, b in zip(starts, starts[1:]))
    covered = np.zeros(length + align, dtype=int)
    for s in starts:
        covered[s:s + tile] += 1
    assert covered[:length].min() >= 1
    if tile < length:
        assert length <= starts[-1] + tile < length + align  # the last tile overhangs by less than align
        assert all(s + tile < length for s in starts[:-1])  # and only the last one overhangs
    wanted = max(align, int(tile * (1 - overlap)) // align * align)  # the stride the overlap allows
    assert all(b - a <= wanted for a, b in zip(starts, starts[1:]))


@pytest.mark.parametrize("kwargs", [dict(length=0, tile=4), dict(length=4, tile=0),
                                    dict(length=8, tile=4, overlap=1.0), dict(length=8, tile=4, overlap=-0.1)])
def test_tile_positions_bad_input(kwargs):
    with pytest.raises(NeurosegInputError):
        tile_positions(**kwargs)


def test_gaussian_window_peak_and_floor():
    w = gaussian_window(32, sigma_scale=0.125)
    assert w.max() <= 1.0 and w.max() > 0.99
    assert w.min() >= 1e-3 and w[0] == pytest.approx(1e-3)
    np.testing.assert_allclose(w, w[::-1])


def test_output_shape_dtype_and_range(image):
    prob = predict_volume(TinyNet(), image, tile=(4, 16, 16), device="cpu")
    assert prob.shape == image.shape and prob.dtype == np.float32
    assert prob.min() >= 0.0 and prob.max() <= 1.0
    assert prob.std() > 0


def test_pointwise_model_is_exact(image):
    model = Pointwise()
    prob = predict_volume(model, image, tile=(4, 16, 16), overlap=0.5, device="cpu")
    np.testing.assert_allclose(prob, whole_volume(model, image), atol=1e-6, rtol=0)


def test_conv3_matches_whole_volume_run(image):
    model = Conv3()
    expected = whole_volume(model, image)
    prob = predict_volume(model, image, tile=(8, 16, 16), overlap=0.5, device="cpu")
    # Tile borders see zero padding, but the Gaussian window gives them ~1e-3 of a tile centre's weight.
    np.testing.assert_allclose(prob, expected, atol=5e-3, rtol=0)
    # ... and the blending matters: a flat average of the same tiles is visibly worse at tile borders.
    flat = predict_volume(model, image, tile=(8, 16, 16), overlap=0.5, device="cpu", sigma_scale=1e3)
    assert np.abs(flat - expected).max() > 5 * np.abs(prob - expected).max()


@pytest.mark.parametrize("shape,tile,sigma_scale", [((7, 33, 21), (4, 16, 16), 0.125),
                                                    ((7, 33, 21), (4, 16, 16), 0.03),
                                                    ((3, 5, 70), (8, 16, 16), 0.125)])
def test_constant_model_normalisation_is_exact(shape, tile, sigma_scale):
    image = np.random.default_rng(1).random(shape).astype(np.float32)
    prob = predict_volume(ConstantLogit(0.7), image, tile=tile, overlap=0.3, sigma_scale=sigma_scale, device="cpu")
    expected = 1.0 / (1.0 + np.exp(-0.7))
    np.testing.assert_allclose(prob, expected, atol=1e-6, rtol=0)  # borders and corners included


def test_volume_smaller_than_tile_and_odd_sizes_with_divisor():
    image = np.random.default_rng(2).random((3, 5, 30)).astype(np.float32)
    model = PointwiseWithDivisor(divisor=(4, 8, 8))  # asserts every tile is divisible
    prob = predict_volume(model, image, device="cpu")  # default tile, clipped and reflection-padded
    np.testing.assert_allclose(prob, whole_volume(Pointwise(), image), atol=1e-6, rtol=0)
    # The divisor argument serves models without required_divisor().
    plain = Pointwise(divisor=(2, 4, 4))
    prob = predict_volume(plain, image, tile=(2, 4, 8), divisor=(2, 4, 4), device="cpu")
    np.testing.assert_allclose(prob, whole_volume(Pointwise(), image), atol=1e-6, rtol=0)
    with pytest.raises(NeurosegInputError, match="multiple"):
        predict_volume(model, image, tile=(4, 8, 12), device="cpu")


def test_short_axes_are_reflection_padded_around_the_centre():
    image = np.random.default_rng(7).random((3, 5, 30)).astype(np.float32)
    model = Conv3()
    # Divisor (4, 8, 8): the single tile is (4, 8, 32), so z gets 0 + 1, y 1 + 2, x 1 + 1 mirrored voxels.
    prob = predict_volume(model, image, divisor=(4, 8, 8), device="cpu")
    padded = np.pad(image, ((0, 1), (1, 2), (1, 1)), mode="reflect")
    expected = whole_volume(model, padded)[0:3, 1:6, 1:31]
    np.testing.assert_allclose(prob, expected, atol=1e-6, rtol=0)


class BlockMax(torch.nn.Module):
    """Max over 2x2 blocks in (y, x), broadcast back: shift-equivariant only for even shifts, like a U-Net."""

    def required_divisor(self):
        return (1, 2, 2)

    def forward(self, x):
        pooled = torch.nn.functional.max_pool3d(x, (1, 2, 2))
        return torch.nn.functional.interpolate(pooled, scale_factor=(1, 2, 2), mode="nearest") - 0.5


def test_tiles_follow_the_pooling_grid():
    image = np.random.default_rng(9).random((5, 30, 26)).astype(np.float32)
    model = BlockMax()
    # Odd strides (tile 10, overlap 0.5 -> 5) would cut 2x2 blocks; aligned starts reproduce the whole volume.
    prob = predict_volume(model, image, tile=(2, 10, 10), overlap=0.5, device="cpu")
    np.testing.assert_allclose(prob, whole_volume(model, image), atol=1e-6, rtol=0)


def test_overhanging_last_tiles():
    image = np.random.default_rng(10).random((9, 21, 30)).astype(np.float32)
    model = PointwiseWithDivisor(divisor=(4, 8, 8))  # z starts 0, 4, 8: the last tile holds one real plane
    prob = predict_volume(model, image, tile=(4, 8, 16), overlap=0.25, device="cpu")
    np.testing.assert_allclose(prob, whole_volume(Pointwise(), image), atol=1e-6, rtol=0)
    constant = predict_volume(ConstantLogit(-1.3), image, tile=(4, 8, 16), divisor=(4, 8, 8), device="cpu")
    np.testing.assert_allclose(constant, 1.0 / (1.0 + np.exp(1.3)), atol=1e-6, rtol=0)


def test_single_voxel_axes():
    image = np.random.default_rng(3).random((1, 1, 9)).astype(np.float32)
    model = PointwiseWithDivisor(divisor=(4, 8, 8))
    prob = predict_volume(model, image, device="cpu")
    np.testing.assert_allclose(prob, whole_volume(Pointwise(), image), atol=1e-6, rtol=0)


def test_batch_size_does_not_change_the_result(image):
    model = Conv3()
    one = predict_volume(model, image, tile=(4, 16, 16), batch_size=1, device="cpu")
    three = predict_volume(model, image, tile=(4, 16, 16), batch_size=3, device="cpu", progress=True)
    np.testing.assert_allclose(one, three, atol=1e-6, rtol=0)


def test_input_not_modified_and_model_mode_restored(image):
    before = image.copy()
    image.setflags(write=False)  # a write attempt would raise
    model = TinyNet()
    model.train()
    predict_volume(model, image, tile=(4, 16, 16), device="cpu")
    np.testing.assert_array_equal(image, before)
    assert model.training
    model.eval()
    predict_volume(model, image, tile=(4, 16, 16), device="cpu")
    assert not model.training


def _memmap(path, data):
    mm = np.memmap(path, dtype=data.dtype, mode="w+", shape=data.shape)
    mm[:] = data
    mm.flush()
    del mm
    return np.memmap(path, dtype=data.dtype, mode="r", shape=data.shape)


def _trained(spec=None, *, seed=0):
    """An untrained tiny U-Net wrapped as a TrainedModel with the given intensity spec."""
    torch.manual_seed(seed)
    return TrainedModel(network=UNet3D(TINY_UNET).eval(), kind="unet3d", model_config=TINY_UNET,
                        intensity_normalization=spec or IntensityNormalization())


def test_float_memmap_input(tmp_path):
    data = np.random.default_rng(4).random((9, 40, 35)).astype(np.float32)
    readonly = _memmap(tmp_path / "stack.raw", data)
    model = Conv3()
    from_memmap = predict_volume(model, readonly, tile=(4, 16, 16), device="cpu")
    in_memory = predict_volume(model, data, tile=(4, 16, 16), device="cpu")
    np.testing.assert_array_equal(from_memmap, in_memory)
    np.testing.assert_array_equal(np.asarray(readonly), data)


def test_integer_memmap_needs_the_trained_model(tmp_path):
    data = np.random.default_rng(4).integers(0, 4000, size=(9, 40, 35), dtype=np.uint16)
    readonly = _memmap(tmp_path / "stack.raw", data)
    with pytest.raises(NeurosegInputError, match="uint16.*TrainedModel"):
        predict_volume(Conv3(), readonly, tile=(4, 16, 16), device="cpu")
    model = _trained()
    from_memmap = predict_volume(model, readonly, tile=(8, 16, 16), device="cpu")
    np.testing.assert_array_equal(from_memmap, predict_volume(model, data, tile=(8, 16, 16), device="cpu"))
    np.testing.assert_array_equal(np.asarray(readonly), data)


class ConstantScale(torch.nn.Module):
    def __init__(self, inner, scale):
        super().__init__()
        self.inner, self.scale = inner, scale

    def forward(self, x):
        return self.inner(x * self.scale)


def test_lazy_z_only_array_like(image):
    lazy = ZOnlyLazy(image)
    model = Conv3()
    prob = predict_volume(model, lazy, tile=(4, 16, 16), device="cpu")
    np.testing.assert_array_equal(prob, predict_volume(model, image, tile=(4, 16, 16), device="cpu"))
    assert lazy.reads > 1  # read slab by slab, not once as a whole
    with pytest.raises(NeurosegInputError, match="uint16.*TrainedModel"):
        predict_volume(model, ZOnlyLazy((image * 1000).astype(np.uint16)), tile=(4, 16, 16), device="cpu")


def test_compressed_tiff_read_lazily(tmp_path):
    io = pytest.importorskip("neuroseg_lite.io")
    data = np.random.default_rng(11).random((7, 24, 20)).astype(np.float32) * 60000
    path = io.write_stack(tmp_path / "stack.tif", data, spacing=(2.0, 0.9, 0.9), compression="zlib")
    lazy, _ = io.read_stack(path, lazy=True)
    assert isinstance(lazy, io.LazyStack)  # compressed pages cannot be memory-mapped
    model = ConstantScale(Conv3(), 1 / 60000)
    expected = predict_volume(model, data, tile=(4, 16, 16), device="cpu")
    np.testing.assert_array_equal(predict_volume(model, lazy, tile=(4, 16, 16), device="cpu"), expected)


def test_compressed_raw_tiff_with_the_trained_model(tmp_path):
    io = pytest.importorskip("neuroseg_lite.io")
    data = np.random.default_rng(12).integers(0, 60000, size=(8, 24, 20), dtype=np.uint16)
    path = io.write_stack(tmp_path / "raw.tif", data, spacing=(2.0, 0.9, 0.9), compression="zlib")
    lazy, _ = io.read_stack(path, lazy=True)
    model = _trained()
    expected = predict_volume(model, data, tile=(8, 16, 16), device="cpu")
    np.testing.assert_array_equal(predict_volume(model, lazy, tile=(8, 16, 16), device="cpu"), expected)


# ----------------------------------------------------------------------------- raw input and the model's spec


def test_trained_model_normalises_raw_uint16_by_its_stored_spec():
    # Done when: a raw uint16 stack (values up to 60000) is normalised by the model's stored spec.
    rng = np.random.default_rng(13)
    raw = (rng.gamma(2.0, 4000.0, size=(8, 24, 20))).clip(0, 60000).astype(np.uint16)
    raw[3, 5, 7] = 60000
    before = raw.copy()
    spec = IntensityNormalization(low=5.0, high=95.0)
    model = _trained(spec)
    prob = predict_volume(model, raw, tile=(8, 16, 16), device="cpu")
    np.testing.assert_array_equal(prob, predict_volume(model.network, spec.apply(raw), tile=(8, 16, 16),
                                                       device="cpu"))
    np.testing.assert_array_equal(raw, before)
    assert prob.shape == raw.shape and prob.dtype == np.float32
    # The stored spec is what decides: the default percentiles, or none at all, predict something else.
    other = predict_volume(model.network, IntensityNormalization().apply(raw), tile=(8, 16, 16), device="cpu")
    assert np.abs(prob - other).max() > 1e-3
    unnormalised = predict_volume(model.network, raw.astype(np.float32), tile=(8, 16, 16), device="cpu")
    assert np.abs(prob - unnormalised).max() > 1e-2


@pytest.mark.parametrize("dtype", [np.uint16, np.uint8, np.int32])
def test_bare_network_refuses_raw_integer_stacks(dtype):
    raw = np.random.default_rng(14).integers(0, 200, size=(8, 24, 20)).astype(dtype)
    with pytest.raises(NeurosegInputError, match=f"{np.dtype(dtype).name}.*TrainedModel.*normalize_percentile"):
        predict_volume(UNet3D(TINY_UNET), raw, device="cpu")


def test_predict_volume_refuses_a_2d_model():
    model = TrainedModel(network=PatchCNN(), kind="model2d", model_config=Model2DConfig())
    with pytest.raises(NeurosegInputError, match="3D U-Net.*predict_2d"):
        predict_volume(model, np.random.default_rng(15).random((4, 16, 16)).astype(np.float32), device="cpu")


def test_unet3d_if_available():
    unet3d = pytest.importorskip("neuroseg_lite.unet3d")
    config = unet3d.UNet3DConfig(base_channels=4, depth=2)
    model = unet3d.UNet3D(config)
    image = np.random.default_rng(5).random((5, 21, 19)).astype(np.float32)
    model.eval()
    divisor = unet3d.required_divisor(config)
    # The divisor comes from the model itself; the default tile is clipped and padded to it.
    prob = predict_volume(model, image, device="cpu")
    assert prob.shape == image.shape and prob.dtype == np.float32
    assert 0.0 <= prob.min() <= prob.max() <= 1.0
    tiled = predict_volume(model, image, tile=tuple(2 * d for d in divisor), overlap=0.5, device="cpu")
    assert np.abs(tiled - prob).mean() < 0.05  # small tiles lose context but agree on the whole


def test_unet3d_single_tile_equals_forward_and_layout_is_restored():
    unet3d = pytest.importorskip("neuroseg_lite.unet3d")
    torch.manual_seed(0)
    model = unet3d.UNet3D(unet3d.UNet3DConfig(base_channels=4, depth=2)).eval()
    image = np.random.default_rng(8).normal(size=(8, 16, 24)).astype(np.float32)  # a multiple of (2, 4, 4)
    prob = predict_volume(model, image, tile=image.shape, device="cpu")  # one tile: no blending at all
    np.testing.assert_allclose(prob, whole_volume(model, image), atol=1e-5, rtol=0)
    # predict_volume switches the CPU weights to channels-last 3D for speed, then back.
    assert all(p.is_contiguous() for p in model.parameters())


@pytest.mark.parametrize("bad,match", [
    (np.zeros((8, 8)), "3D"),
    (np.zeros((2, 4, 8, 8)), "3D"),
    (np.zeros((0, 8, 8)), "empty"),
    (np.full((4, 8, 8), np.nan, dtype=np.float32), "NaN"),
    (np.where(np.arange(256).reshape(4, 8, 8) == 5, np.inf, 1.0), "NaN or Inf"),
    (np.ones((4, 8, 8), dtype=np.float32), "constant"),
])
def test_bad_images(bad, match):
    with pytest.raises(NeurosegInputError, match=match):
        predict_volume(Pointwise(), bad, device="cpu")


def test_nan_in_a_memmap_is_found(tmp_path):
    path = tmp_path / "nan.raw"
    mm = np.memmap(path, dtype=np.float32, mode="w+", shape=(6, 8, 8))
    mm[:] = np.random.default_rng(6).random((6, 8, 8))
    mm[5, 7, 7] = np.nan
    with pytest.raises(NeurosegInputError, match="1 NaN"):
        predict_volume(Pointwise(), mm, device="cpu")


@pytest.mark.parametrize("kwargs,match", [
    (dict(batch_size=0), "batch_size"),
    (dict(overlap=1.0), "overlap"),
    (dict(sigma_scale=0.0), "sigma_scale"),
    (dict(tile=(4, 8)), "tile"),
    (dict(tile=(4, 0, 8)), "tile"),
    (dict(divisor=(1, 2)), "divisor"),
])
def test_bad_options(image, kwargs, match):
    with pytest.raises(NeurosegInputError, match=match):
        predict_volume(Pointwise(), image, device="cpu", **kwargs)


def test_bad_models(image):
    with pytest.raises(NeurosegInputError, match="torch.nn.Module"):
        predict_volume(lambda x: x, image, device="cpu")

    class TwoChannels(torch.nn.Module):
        def forward(self, x):
            return torch.cat([x, x], dim=1)

    with pytest.raises(NeurosegInputError, match="one logit channel"):
        predict_volume(TwoChannels(), image, device="cpu")
