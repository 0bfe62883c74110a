"""Downloading real stacks: the QCANet mouse-embryo nuclei (Tokuoka et al. 2020, MIT licence).

Introduced in chapter 8 (``08_real_data``).

Two live mouse embryos (8- and 16-cell stage, nuclei labelled with H2B-mRFP1), each a (51, 120, 122) uint16
fluorescence stack with a dense nucleus mask, from the GitHub repository funalab/QCANet. Files are downloaded
once with :mod:`pooch`, checked against the SHA-256 hashes below, and cached in the folder named by the
environment variable ``NEUROSEG_DATA_DIR`` (default: the user cache, ``pooch.os_cache("neuroseg-lite")``),
laid out as ``raw/<name>.tif`` and ``labels/<name>.tif``.

Cite: Tokuoka Y. et al., "3D convolutional neural networks-based segmentation to acquire quantitative criteria
of the nucleus during mouse embryogenesis", npj Systems Biology and Applications 6, 32 (2020),
doi:10.1038/s41540-020-00152-8.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pooch

from neuroseg_lite._checks import NeurosegInputError
from neuroseg_lite.io import binarize_labels, read_stack

__all__ = [
    "QCANET_NAMES",
    "QCANET_SPACING",
    "QCANET_REGISTRY",
    "data_dir",
    "fetch_qcanet",
    "load_qcanet",
]

#: The names of the two stacks, an 8- and a 16-cell stage embryo.
QCANET_NAMES = ("8_cell_stage", "16_cell_stage")

# The repository's training config gives the voxel aspect ratio z : y : x = 2.18 : 1 : 1 but not the absolute
# pixel size, so these are *relative* units that we treat as micrometres: shapes and anisotropy are right,
# absolute sizes (um, um^3) are not known.
#: The assumed voxel spacing (z, y, x), the published aspect ratio in relative units read as micrometres.
QCANET_SPACING = (2.18, 1.0, 1.0)

_COMMIT = "d047df5f271390dd06c72a8eb1d599a2ba96b9a0"
_BASE_URL = f"https://github.com/funalab/QCANet/raw/{_COMMIT}/example_datasets/"
_REMOTE_FOLDER = {"raw": "images_raw", "labels": "images_nsn"}

#: SHA-256 hash of every file, by its path in the cache folder.
QCANET_REGISTRY = {
    "raw/8_cell_stage.tif": "sha256:e5b776a9919d974d17961233f6008b9cf1a84b8c8625fc37e14b0dcac31b080b",
    "raw/16_cell_stage.tif": "sha256:8b908d8bad15e144b39540d93a68c7a9597e42f7bc93222af1f7106c6bd4ed80",
    "labels/8_cell_stage.tif": "sha256:551e112a9722d0f89f5ca90d1450d2c8ce65943c6a22f499038355816ca07f20",
    "labels/16_cell_stage.tif": "sha256:71b1606894a7eec4e07066914291c8c7ddea31fb4753885e2867c41f4b5acf48",
}

#: The environment variable that names the cache folder (see :func:`data_dir`).
ENV_VAR = "NEUROSEG_DATA_DIR"


def data_dir() -> Path:
    """The cache folder: ``$NEUROSEG_DATA_DIR`` if set, else ``pooch.os_cache("neuroseg-lite")``.

    Examples
    --------
    >>> from unittest import mock
    >>> with mock.patch.dict(os.environ, {"NEUROSEG_DATA_DIR": "/data/qcanet"}):
    ...     print(data_dir())
    /data/qcanet
    """
    custom = os.environ.get(ENV_VAR, "").strip()
    return Path(custom).expanduser() if custom else Path(pooch.os_cache("neuroseg-lite"))


def _registry() -> pooch.Pooch:
    # built per call so that a change of NEUROSEG_DATA_DIR (e.g. in a notebook) takes effect
    urls = {}
    for key in QCANET_REGISTRY:
        kind, file_name = key.split("/")
        urls[key] = _BASE_URL + f"{_REMOTE_FOLDER[kind]}/{file_name}"
    return pooch.create(path=data_dir(), base_url=_BASE_URL, registry=dict(QCANET_REGISTRY), urls=urls,
                        retry_if_failed=2, allow_updates=False)


def _check_cached_hash(path: Path, key: str) -> None:
    """Refuse a cached file whose hash is wrong, before pooch would try to re-download over it."""
    algorithm, expected = QCANET_REGISTRY[key].split(":")
    actual = pooch.file_hash(str(path), alg=algorithm)
    if actual != expected:
        raise NeurosegInputError(
            f"the cached file '{path}' is corrupt or a different version: its {algorithm} is {actual} but "
            f"{expected} was expected for '{key}'. Delete the file so that it is downloaded again, or set "
            f"{ENV_VAR} to a folder holding the correct files.")


def fetch_qcanet(name: str = "8_cell_stage", *, download: bool = True) -> tuple[Path, Path]:
    """Return the paths of one QCANet raw stack and its label stack, downloading them if needed.

    Parameters
    ----------
    name : {"8_cell_stage", "16_cell_stage"}
    download : bool
        If False, only use files already in the cache and raise FileNotFoundError when one is missing
        (for offline machines and tests).

    Returns
    -------
    raw_path, label_path : Path
        Hash-verified files in :func:`data_dir`.

    Raises
    ------
    NeurosegInputError
        Unknown name, or a cached file whose hash does not match (the message says how to fix it).
    FileNotFoundError
        A file is missing and ``download`` is False.
    ConnectionError
        The download failed (no network, or the server is unreachable).

    Notes
    -----
    A cached file is hash-checked here, before pooch sees it: pooch would otherwise try to download a
    replacement, which fails offline with a message that does not name the bad file.

    Examples
    --------
    Offline, in an empty cache folder (nothing is downloaded):

    >>> from unittest import mock
    >>> with mock.patch.dict(os.environ, {"NEUROSEG_DATA_DIR": "empty-cache"}):
    ...     fetch_qcanet("8_cell_stage", download=False)
    Traceback (most recent call last):
    ...
    FileNotFoundError: 'empty-cache/raw/8_cell_stage.tif' is not in the cache ...
    """
    if name not in QCANET_NAMES:
        raise NeurosegInputError(f"unknown QCANet stack {name!r}; choose one of {QCANET_NAMES}.")
    folder = data_dir()
    paths = []
    for kind in ("raw", "labels"):
        key = f"{kind}/{name}.tif"
        local = folder / key
        if local.exists():
            _check_cached_hash(local, key)
            paths.append(local)
            continue
        if not download:
            raise FileNotFoundError(
                f"'{local}' is not in the cache and download=False. Call fetch_qcanet({name!r}) with "
                f"download=True on a machine with internet access, or set {ENV_VAR} to a folder holding "
                f"{key}.")
        try:
            # pooch checks the downloaded bytes against the registry hash before keeping them
            paths.append(Path(_registry().fetch(key, progressbar=False)))
        except ValueError as err:
            # pooch raises ValueError when the downloaded bytes do not match the registry hash
            raise NeurosegInputError(
                f"the download of '{key}' did not match its expected hash ({err}). The remote file changed or "
                f"the transfer was corrupted; try again later, or place a verified copy at '{local}'.") from err
        except OSError as err:
            raise ConnectionError(
                f"could not download '{key}' into '{folder}' ({type(err).__name__}: {err}). Check the internet "
                f"connection, or download it by hand from {_registry().get_url(key)} and place it at "
                f"'{local}' (or set {ENV_VAR} to a folder holding it).") from err
    return paths[0], paths[1]


def load_qcanet(name: str = "8_cell_stage", *, download: bool = True):
    """Load one QCANet embryo stack with its nucleus mask and the assumed voxel spacing.

    Parameters
    ----------
    name : {"8_cell_stage", "16_cell_stage"}
    download : bool
        See :func:`fetch_qcanet`.

    Returns
    -------
    image : ndarray of uint16, shape (51, 120, 122)
        Fluorescence (Z, Y, X).
    labels : ndarray of bool, shape (51, 120, 122)
        True inside nuclei (the files store 0/255).
    spacing : tuple of 3 float
        ``QCANET_SPACING`` = (2.18, 1.0, 1.0): an assumption. Only the z : y : x aspect ratio is published
        (in QCANet's training config); the absolute pixel size is not, so read these as relative units.
    """
    raw_path, label_path = fetch_qcanet(name, download=download)
    image, _ = read_stack(raw_path)
    labels, _ = read_stack(label_path)
    if image.shape != labels.shape:
        raise NeurosegInputError(f"QCANet {name}: image {image.shape} and labels {labels.shape} differ; the "
                                 f"cache in '{data_dir()}' is inconsistent, delete it to download again.")
    return np.asarray(image), binarize_labels(labels), QCANET_SPACING
