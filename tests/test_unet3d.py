import pytest
import torch

from neuroseg_lite._checks import NeurosegInputError
from neuroseg_lite.unet3d import UNet3D, UNet3DConfig, n_parameters, pool_factors, required_divisor


@pytest.mark.parametrize("config", [
    UNet3DConfig(base_channels=2, depth=2),
    UNet3DConfig(base_channels=2, depth=2, norm="instance", upsample="trilinear"),
    UNet3DConfig(base_channels=2, depth=1, norm="none", anisotropic_first_pool=False, dropout=0.2),
    UNet3DConfig(in_channels=2, base_channels=2, depth=3),
])
def test_output_shape_equals_input(config):
    model = UNet3D(config).eval()
    dz, dy, dx = required_divisor(config)
    x = torch.randn(2, config.in_channels, 2 * dz, dy, 3 * dx)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, 1) + x.shape[2:]
    assert torch.isfinite(y).all()


def test_required_divisor_and_pooling():
    assert required_divisor(UNet3DConfig()) == (4, 8, 8)
    assert required_divisor(UNet3DConfig(anisotropic_first_pool=False)) == (8, 8, 8)
    assert pool_factors(UNet3DConfig(depth=2)) == [(1, 2, 2), (2, 2, 2)]


def test_indivisible_input_names_sizes_and_fix():
    model = UNet3D(UNet3DConfig(base_channels=2))
    with pytest.raises(NeurosegInputError, match=r"\(6, 16, 20\).*\(4, 8, 8\).*\(8, 16, 24\)"):
        model(torch.zeros(1, 1, 6, 16, 20))


def test_wrong_rank_and_channels():
    model = UNet3D(UNet3DConfig(base_channels=2, depth=1))
    with pytest.raises(NeurosegInputError, match="5D"):
        model(torch.zeros(1, 4, 8, 8))
    with pytest.raises(NeurosegInputError, match="input channel"):
        model(torch.zeros(1, 3, 4, 8, 8))


def test_parameter_count_by_hand_and_in_repr():
    # depth 1, base 2, no norm (convs have biases): every layer counted by hand.
    model = UNet3D(UNet3DConfig(base_channels=2, depth=1, norm="none"))
    expected = ((1 * 2 * 27 + 2) + (2 * 2 * 27 + 2)      # encoder block
                + (2 * 4 * 27 + 4) + (4 * 4 * 27 + 4)    # bottleneck
                + (4 * 2 * 1 * 2 * 2 + 2)                # transposed conv (1, 2, 2)
                + (4 * 2 * 27 + 2) + (2 * 2 * 27 + 2)    # decoder block on the concatenation
                + (2 + 1))                               # 1x1x1 head
    assert n_parameters(model) == expected == 1187
    assert "1,187" in repr(model)
    assert "1,187 parameters" in model.summary()
    big = UNet3D()
    assert f"{n_parameters(big):,}" in repr(big)


def test_channels_last_gives_same_output():
    torch.manual_seed(0)
    model = UNet3D(UNet3DConfig(base_channels=4, depth=2)).eval()
    x = torch.randn(1, 1, 8, 16, 16)
    with torch.no_grad():
        reference = model(x)
        model_cl = model.to(memory_format=torch.channels_last_3d)
        result = model_cl(x.contiguous(memory_format=torch.channels_last_3d))
    torch.testing.assert_close(result, reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("bad", [dict(norm="group"), dict(depth=0), dict(base_channels=0), dict(dropout=1.0),
                                 dict(upsample="nearest")])
def test_bad_config(bad):
    with pytest.raises(NeurosegInputError):
        UNet3DConfig(**bad)
