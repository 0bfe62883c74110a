"""Shared test set-up: tests never download and never draw to a screen."""
from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

ROOT = Path(__file__).resolve().parents[1]
SHARED_QCANET = ROOT.parent / "shared" / "data" / "qcanet-embryo-nuclei"

# The dataset registry's cache points at the shared copy of the QCANet files, so nothing is downloaded.
if "NEUROSEG_DATA_DIR" not in os.environ and SHARED_QCANET.is_dir():
    os.environ["NEUROSEG_DATA_DIR"] = str(SHARED_QCANET)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Run each test with one torch thread, restored afterwards.

    Test machines are shared 2-core boxes: two OpenMP threads competing with other processes made the
    small-batch tests up to 8x slower than one thread.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
