"""Tests for neuroseg_lite.datasets. They never download: the cache points at the shared copy of the data."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pooch
import pytest

from neuroseg_lite import datasets
from neuroseg_lite._checks import NeurosegInputError

# The data live next to the repository (../shared), never inside it.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "qcanet-embryo-nuclei"

needs_data = pytest.mark.skipif(
    not all((SHARED_DATA / key).is_file() for key in datasets.QCANET_REGISTRY),
    reason=f"QCANet stacks not found in {SHARED_DATA}; these tests never download, so they need a local copy",
)


@pytest.fixture
def shared_cache(monkeypatch):
    monkeypatch.setenv("NEUROSEG_DATA_DIR", str(SHARED_DATA))
    return SHARED_DATA


def test_registry_keys_names_and_urls():
    assert datasets.QCANET_NAMES == ("8_cell_stage", "16_cell_stage")
    expected = {f"{kind}/{name}.tif" for kind in ("raw", "labels") for name in datasets.QCANET_NAMES}
    assert set(datasets.QCANET_REGISTRY) == expected
    assert all(h.startswith("sha256:") and len(h) == len("sha256:") + 64 for h in datasets.QCANET_REGISTRY.values())
    registry = datasets._registry()
    assert registry.get_url("labels/8_cell_stage.tif").endswith("example_datasets/images_nsn/8_cell_stage.tif")
    assert registry.get_url("raw/16_cell_stage.tif").endswith("example_datasets/images_raw/16_cell_stage.tif")


def test_data_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("NEUROSEG_DATA_DIR", str(tmp_path))
    assert datasets.data_dir() == tmp_path
    monkeypatch.delenv("NEUROSEG_DATA_DIR")
    assert datasets.data_dir() == Path(pooch.os_cache("neuroseg-lite"))


@needs_data
@pytest.mark.parametrize("name", datasets.QCANET_NAMES)
def test_fetch_uses_cache_and_verifies(shared_cache, name):
    raw, labels = datasets.fetch_qcanet(name, download=False)
    assert raw == shared_cache / "raw" / f"{name}.tif"
    assert labels == shared_cache / "labels" / f"{name}.tif"


@needs_data
def test_fetch_through_pooch_with_cached_files(shared_cache):
    # download=True still must not download: pooch finds the verified files in the cache
    raw, labels = datasets.fetch_qcanet("16_cell_stage")
    assert raw.is_file() and labels.is_file()


@needs_data
def test_load_qcanet(shared_cache):
    image, labels, spacing = datasets.load_qcanet("8_cell_stage", download=False)
    assert image.shape == (51, 120, 122) and image.dtype == np.uint16
    assert labels.shape == image.shape and labels.dtype == bool
    assert 0.01 < labels.mean() < 0.5
    assert spacing == (2.18, 1.0, 1.0)


@needs_data
def test_corrupt_cached_file_is_refused_without_download(monkeypatch, tmp_path):
    for key in datasets.QCANET_REGISTRY:
        (tmp_path / key).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SHARED_DATA / key, tmp_path / key)
    corrupt = tmp_path / "raw" / "8_cell_stage.tif"
    data = bytearray(corrupt.read_bytes())
    data[-1] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    monkeypatch.setenv("NEUROSEG_DATA_DIR", str(tmp_path))
    expected_hash = datasets.QCANET_REGISTRY["raw/8_cell_stage.tif"].split(":")[1]
    with pytest.raises(NeurosegInputError) as info:
        datasets.fetch_qcanet("8_cell_stage")  # download=True: the check must happen before pooch
    message = str(info.value)
    assert str(corrupt) in message and expected_hash in message and "Delete" in message
    # the intact stack next to it is still accepted
    assert datasets.fetch_qcanet("16_cell_stage", download=False)[0].is_file()


def test_missing_file_offline_is_clear(monkeypatch, tmp_path):
    monkeypatch.setenv("NEUROSEG_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="download=False"):
        datasets.fetch_qcanet("8_cell_stage", download=False)
    assert list(tmp_path.iterdir()) == []


def test_unknown_name():
    with pytest.raises(NeurosegInputError, match="16_cell_stage"):
        datasets.fetch_qcanet("32_cell_stage", download=False)
