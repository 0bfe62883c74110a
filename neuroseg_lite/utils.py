"""Device selection, seeding and the environment print-out that opens every notebook.

Introduced in chapter 1 (``01_data``).
"""
from __future__ import annotations

import os
import platform
import random

import numpy as np
import torch

__all__ = ["select_device", "seed_everything", "environment_report", "to_plain"]


def select_device(preference: str | torch.device = "auto") -> torch.device:
    """Return the best available torch device.

    Parameters
    ----------
    preference : {"auto", "cuda", "mps", "cpu"} or torch.device
        ``"auto"`` picks CUDA, then Apple MPS, then the CPU. ``NEUROSEG_DEVICE`` in the
        environment overrides ``"auto"`` (useful to force the CPU on a shared GPU).

    Returns
    -------
    torch.device
    """
    if isinstance(preference, torch.device):
        return preference
    choice = str(preference).lower()
    if choice == "auto":
        choice = os.environ.get("NEUROSEG_DEVICE", "auto").lower()
    if choice == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if choice.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but no CUDA GPU is visible; use device='auto' or 'cpu'.")
    return torch.device(choice)


def seed_everything(seed: int) -> np.random.Generator:
    """Seed Python, NumPy and PyTorch; return a fresh ``numpy.random.Generator`` for the caller's own draws."""
    random.seed(seed)
    np.random.seed(seed % (2**32))  # noqa: NPY002 -- third-party code may still draw from the legacy global RNG
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def environment_report(device: torch.device | None = None) -> str:
    """One short text block with the versions and hardware a notebook runs on (for reproducibility)."""
    import neuroseg_lite

    device = device or select_device()
    lines = [
        f"python        {platform.python_version()} ({platform.system()} {platform.machine()})",
        f"neuroseg_lite {neuroseg_lite.__version__}",
        f"numpy         {np.__version__}",
        f"torch         {torch.__version__} (threads: {torch.get_num_threads()})",
        f"device        {device}",
    ]
    if device.type == "cuda":
        lines.append(f"gpu           {torch.cuda.get_device_name(device)}")
    return "\n".join(lines)


def to_plain(value):
    """Convert nested values to the builtin types that ``torch.load(weights_only=True)`` accepts.

    Dicts, lists and tuples are converted recursively, numpy scalars and arrays become Python numbers and
    lists, tensors are moved to the CPU; anything else is returned as it is.
    """
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    return value
