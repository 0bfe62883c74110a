"""Shared test set-up: tests never download and never draw to a screen."""
from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

ROOT = Path(__file__).resolve().parents[1]
SHARED_QCANET = ROOT.parent / "shared" / "data" / "qcanet-embryo-nuclei"

# The dataset registry's cache points at the shared copy of the QCANet files, so nothing is downloaded.
if "NEUROSEG_DATA_DIR" not in os.environ and SHARED_QCANET.is_dir():
    os.environ["NEUROSEG_DATA_DIR"] = str(SHARED_QCANET)
