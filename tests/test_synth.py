"""Tests for neuroseg_lite.synth (the synthetic two-photon cortex)."""
import dataclasses
import time

import numpy as np
import pytest
from scipy import ndimage

from neuroseg_lite import NeurosegInputError
from neuroseg_lite.synth import PRESETS, SynthConfig, SynthVolume, make_config, make_dataset, make_volume

# Only the neurons: no glia, lipofuscin, vessels or dendrite stubs.
NO_DISTRACTORS = dict(glia_density_per_mm3=0.0, lipofuscin_cell_fraction=0.0, lipofuscin_density_per_mm3=0.0,
                      vessel_length_density_mm_per_mm3=0.0, dendrite_length_um=(0.0, 0.0))


def _boundary_steps(volume):
    """Mean |intensity difference| between neighbouring voxels across label boundaries, along z and x."""
    image = volume.image.astype(float)
    steps = []
    for axis in (0, 2):
        a, lab = np.moveaxis(image, axis, 0), np.moveaxis(volume.labels, axis, 0)
        steps.append(np.abs(a[1:] - a[:-1])[lab[1:] != lab[:-1]].mean())
    return np.array(steps)


def test_tiny_shapes_dtypes_and_spacing():
    vol = make_volume(seed=0, preset="tiny")
    assert isinstance(vol, SynthVolume)
    assert vol.image.shape == vol.labels.shape == (16, 64, 64)
    assert vol.image.dtype == np.uint16 and vol.labels.dtype == bool
    assert vol.glia_mask.dtype == bool and vol.nucleus_mask.dtype == bool and vol.vessel_mask.dtype == bool
    assert vol.spacing == (2.0, 0.9, 0.9)
    assert vol.soma_centers_um.shape == (vol.n_somata, 3)
    assert len(vol.soma_kinds) == len(vol.soma_diameters_um) == vol.n_somata
    assert vol.image.min() > 0  # the detector offset keeps noise from clipping at zero
    assert "n_somata" in repr(vol)


def test_same_seed_is_identical_and_different_seed_differs():
    a, b, c = (make_volume(seed=s, preset="tiny") for s in (7, 7, 8))
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.glia_mask, b.glia_mask)
    assert not np.array_equal(a.image, c.image)
    assert not np.array_equal(a.labels, c.labels)


@pytest.mark.parametrize("seed", range(5))
def test_tiny_preset_holds_several_somata(seed):
    vol = make_volume(seed=seed, preset="tiny")
    sizes = np.bincount(vol.instances.ravel())[1:]
    assert (sizes >= 100).sum() >= 3


def test_labels_instances_and_extras_are_consistent():
    vol = make_volume(seed=1, preset="small")
    assert 0.02 < vol.foreground_fraction < 0.15  # somata fill a few percent of cortex
    np.testing.assert_array_equal(vol.labels, vol.instances > 0)
    assert vol.instances.max() == vol.n_somata == len(np.unique(vol.instances)) - 1
    cfg = vol.config
    assert np.all(vol.soma_diameters_um >= cfg.soma_diameter_um[0])
    assert np.all(vol.soma_diameters_um <= cfg.soma_diameter_um[1])
    assert set(vol.soma_kinds) == {"pyramidal", "ellipsoid"}
    assert vol.nucleus_mask.any() and not (vol.nucleus_mask & ~vol.labels).any()
    assert vol.vessel_mask.any() and not (vol.vessel_mask & vol.labels).any()


def test_glia_are_present_but_not_labelled():
    vol = make_volume(seed=0, preset="small")
    assert vol.glia_mask.sum() > 500
    assert not (vol.glia_mask & vol.labels).any()
    # Glia are dimmer than neurons but brighter than the neuropil around them.
    quiet = make_volume(seed=0, preset="small", noise=False, lipofuscin_density_per_mm3=0.0,
                        lipofuscin_cell_fraction=0.0)
    image = quiet.image.astype(float)
    glia_core = ndimage.binary_erosion(quiet.glia_mask)
    neuropil = ~ndimage.binary_dilation(quiet.labels | quiet.glia_mask | quiet.vessel_mask, iterations=3)
    assert image[neuropil].mean() < image[glia_core].mean() < image[quiet.labels].mean()


def test_cytoplasm_is_brighter_than_nucleus():
    vol = make_volume(seed=0, preset="small", noise=False, **NO_DISTRACTORS)
    image = vol.image.astype(float)
    nucleus = ndimage.binary_erosion(vol.nucleus_mask)
    cytoplasm = vol.labels & ~ndimage.binary_dilation(vol.nucleus_mask) & ndimage.binary_erosion(vol.labels)
    assert nucleus.sum() > 100 and cytoplasm.sum() > 100
    assert image[cytoplasm].mean() > 1.3 * image[nucleus].mean()
    # The contrast comes from the nucleus_brightness knob: a bright nucleus removes it.
    flat = make_volume(seed=0, preset="small", noise=False, nucleus_brightness=1.0, nucleolus_brightness=0.0,
                       **NO_DISTRACTORS)
    flat_image = flat.image.astype(float)
    assert abs(flat_image[cytoplasm].mean() / flat_image[nucleus].mean() - 1.0) < 0.1


def test_depth_attenuation_follows_the_length_constant():
    kwargs = dict(seed=2, preset="tiny", noise=False)
    attenuated = make_volume(attenuation_length_um=50.0, **kwargs)
    flat = make_volume(attenuation_length_um=None, **kwargs)
    offset = attenuated.config.offset_adu
    ratio = (attenuated.image.astype(float) - offset).mean(axis=(1, 2)) / (
        flat.image.astype(float) - offset).mean(axis=(1, 2))
    depth = np.arange(16) * 2.0
    np.testing.assert_allclose(ratio, np.exp(-depth / 50.0), rtol=0.02)


def test_psf_sigma_is_in_micrometres():
    # Isolated bright granules (sigma 0.3 um) imaged through a PSF that is well sampled on every axis:
    # their second moments in um must equal sqrt(granule^2 + psf^2), whatever the voxel size.
    psf = np.array([1.7, 0.8, 0.8])
    vol = make_volume(seed=3, preset="small", noise=False, neuron_density_per_mm3=0.0, background_level=0.0,
                      lipofuscin_density_per_mm3=5000.0, lipofuscin_sigma_um=(0.3, 0.3),
                      lipofuscin_brightness=100.0, attenuation_length_um=None, offset_adu=0.0,
                      psf_sigma_um=tuple(psf), **{k: v for k, v in NO_DISTRACTORS.items()
                                                  if k != "lipofuscin_density_per_mm3"})
    image = vol.image.astype(float)
    blobs, n = ndimage.label(image > 0)
    sigmas = []
    for index, box in enumerate(ndimage.find_objects(blobs), start=1):
        if any(s.start == 0 or s.stop == size for s, size in zip(box, image.shape)):
            continue  # cut by the border
        weights = np.where(blobs[box] == index, image[box], 0.0).ravel()
        grid = np.indices(blobs[box].shape).reshape(3, -1).astype(float)
        mean = grid @ weights / weights.sum()
        sigmas.append(np.sqrt(((grid - mean[:, None]) ** 2) @ weights / weights.sum()) * np.array(vol.spacing))
    assert len(sigmas) >= 2
    np.testing.assert_allclose(np.mean(sigmas, axis=0), np.sqrt(psf ** 2 + 0.3 ** 2), rtol=0.1)


def test_psf_blurs_z_more_than_x():
    # How much the PSF flattens the intensity steps at soma boundaries, relative to no PSF at all.
    kwargs = dict(seed=0, preset="tiny", noise=False, **NO_DISTRACTORS)
    sharp = _boundary_steps(make_volume(psf_sigma_um=(0.0, 0.0, 0.0), **kwargs))
    default_z, default_x = _boundary_steps(make_volume(**kwargs)) / sharp
    assert default_z < default_x - 0.1
    iso_z, iso_x = _boundary_steps(make_volume(psf_sigma_um=(0.8, 0.8, 0.8), **kwargs)) / sharp
    assert iso_z > iso_x  # control: the measure does not prefer z by itself
    assert make_config().psf_sigma_um[0] > 2 * make_config().psf_sigma_um[2]


def test_noise_is_poisson_gaussian():
    cfg = make_config("small", neuron_density_per_mm3=0.0, background_variation=0.0, neuropil_texture=0.0,
                      attenuation_length_um=None, **NO_DISTRACTORS)
    image = make_volume(seed=0, config=cfg).image.astype(float)
    photons = cfg.photons_per_unit * cfg.background_level
    assert image.mean() == pytest.approx(cfg.offset_adu + cfg.gain_adu_per_photon * photons, rel=0.01)
    expected_var = cfg.gain_adu_per_photon ** 2 * photons + cfg.read_noise_adu ** 2
    assert image.var() == pytest.approx(expected_var, rel=0.05)


def test_dendrite_stubs_change_the_image_but_not_the_labels():
    with_stubs = make_volume(seed=4, preset="tiny", dendrite_length_um=(15.0, 25.0))
    without = make_volume(seed=4, preset="tiny", dendrite_length_um=(0.0, 0.0))
    np.testing.assert_array_equal(with_stubs.labels, without.labels)
    assert with_stubs.image.astype(float).sum() > without.image.astype(float).sum()


def test_presets_and_overrides():
    assert {"tutorial", "small", "tiny", "easy", "hard"} <= set(PRESETS)
    assert make_config("small").shape == (32, 128, 128)
    assert make_config("small").spacing == make_config("tutorial").spacing
    easy, hard, default = make_config("easy"), make_config("hard"), make_config()
    assert easy.glia_density_per_mm3 == 0 and easy.vessel_length_density_mm_per_mm3 == 0
    assert easy.psf_sigma_um[0] < default.psf_sigma_um[0] < hard.psf_sigma_um[0]
    assert easy.photons_per_unit > default.photons_per_unit > hard.photons_per_unit
    assert hard.glia_density_per_mm3 > default.glia_density_per_mm3
    cfg = make_config("tiny", psf_sigma_um=[1.0, 0.3, 0.3])
    assert cfg.psf_sigma_um == (1.0, 0.3, 0.3) and cfg.shape == (16, 64, 64)
    vol = make_volume(seed=0, config=cfg, noise=False)
    assert vol.config.noise is False and vol.config.psf_sigma_um == (1.0, 0.3, 0.3)
    assert make_volume(seed=0, preset="easy", shape=(8, 32, 32)).image.shape == (8, 32, 32)


def test_unknown_preset_and_override_list_the_valid_names():
    with pytest.raises(NeurosegInputError, match="tutorial") as err:
        make_config("huge")
    assert "tiny" in str(err.value)
    with pytest.raises(NeurosegInputError, match="psf_sigma_um"):
        make_volume(preset="tiny", psf_sigma=(1, 1, 1))
    with pytest.raises(NeurosegInputError, match="tiny"):
        make_volume(preset="nope")


@pytest.mark.parametrize("override", [
    dict(shape=(64, 256)),
    dict(shape=(0, 64, 64)),
    dict(shape=(16.5, 64, 64)),
    dict(spacing=(2.0, -0.9, 0.9)),
    dict(soma_diameter_um=(-10.0, 25.0)),
    dict(soma_diameter_um=(25.0, 10.0)),
    dict(glia_diameter_um=(0.0, 8.0)),
    dict(neuron_density_per_mm3=-1.0),
    dict(glia_brightness=float("nan")),
    dict(pyramidal_fraction=1.5),
    dict(pyramid_taper=1.0),
    dict(nucleus_fraction=(0.5, 1.2)),
    dict(psf_sigma_um=(1.0, -0.3, 0.3)),
    dict(psf_sigma_um=(1.0, 0.3)),
    dict(attenuation_length_um=0.0),
    dict(photons_per_unit=0.0),
    dict(apical_direction=(0.0, 0.0, 0.0)),
    dict(noise="yes"),
    dict(lipofuscin_granules_per_cell=(2.5, 8)),
])
def test_invalid_config_values_are_rejected(override):
    with pytest.raises(NeurosegInputError, match="SynthConfig|spacing"):
        make_config("tiny", **override)
    with pytest.raises(NeurosegInputError):
        SynthConfig(**override)


def test_invalid_arguments_are_rejected():
    with pytest.raises(NeurosegInputError, match="SynthConfig"):
        make_volume(config={"shape": (16, 64, 64)})
    with pytest.raises(NeurosegInputError, match="seed"):
        make_volume(seed=-1, preset="tiny")
    with pytest.raises(NeurosegInputError, match="n_train"):
        make_dataset(n_train=0, preset="tiny")
    with pytest.raises(NeurosegInputError, match="seed"):
        make_dataset(seed=-3, preset="tiny")


def test_dataset_volumes_are_independent_and_reproducible():
    data = make_dataset(n_train=2, seed=5, preset="tiny")
    assert len(data.train_images) == len(data.train_labels) == 2
    assert data.test_image.shape == data.test_labels.shape == (16, 64, 64)
    assert data.spacing == (2.0, 0.9, 0.9) and data.config.shape == (16, 64, 64)
    assert len(set(data.seeds)) == 3
    assert not np.array_equal(data.train_images[0], data.train_images[1])
    assert not np.array_equal(data.train_labels[0], data.test_labels)
    again = make_dataset(n_train=2, seed=5, preset="tiny")
    np.testing.assert_array_equal(again.test_image, data.test_image)
    rebuilt = make_volume(seed=data.seeds[1], preset="tiny")
    np.testing.assert_array_equal(rebuilt.image, data.train_images[1])
    from_config = make_dataset(n_train=2, seed=5, config=make_config("tiny"))
    np.testing.assert_array_equal(from_config.test_labels, data.test_labels)
    other = make_dataset(n_train=2, seed=6, preset="tiny")
    assert not np.array_equal(other.test_image, data.test_image)


def test_tutorial_volume_sanity():
    start = time.perf_counter()
    vol = make_volume(seed=0)
    elapsed = time.perf_counter() - start
    print(f"tutorial volume: {elapsed:.2f} s, {vol.n_somata} somata, foreground {vol.foreground_fraction:.3f}")
    assert vol.image.shape == (64, 256, 256) and vol.image.dtype == np.uint16
    assert 100 <= vol.n_somata <= 400  # ~30k neurons/mm^3 in 128 x 230 x 230 um, plus cut cells
    assert 0.02 < vol.foreground_fraction < 0.15
    image = vol.image.astype(float) - vol.config.offset_adu
    assert image[:8].mean() > image[-8:].mean()  # signal fades with depth


def test_validation_volumes_leave_the_training_and_test_volumes_unchanged():
    plain = make_dataset(n_train=2, seed=3, preset="tiny", noise=False)
    with_val = make_dataset(n_train=2, seed=3, preset="tiny", noise=False, n_val=2)
    assert plain.val_images == [] and len(with_val.val_images) == 2 == len(with_val.val_labels)
    for a, b in zip(plain.train_images + [plain.test_image], with_val.train_images + [with_val.test_image]):
        np.testing.assert_array_equal(a, b)
    assert with_val.seeds[:3] == plain.seeds and len(set(with_val.seeds)) == 5
    assert not np.array_equal(with_val.val_images[0], with_val.val_images[1])
    with pytest.raises(NeurosegInputError, match="n_val"):
        make_dataset(n_train=1, preset="tiny", n_val=-1)


def test_the_tall_preset_is_the_tutorial_tissue_in_a_deeper_column():
    tall, tutorial = PRESETS["tall"], PRESETS["tutorial"]
    assert tall.shape[0] >= 128 and tall.shape[0] > tutorial.shape[0]
    assert dataclasses.replace(tall, shape=tutorial.shape) == tutorial
