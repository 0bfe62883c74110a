"""Device selection, seeding and the environment print-out that opens every notebook.

Introduced in chapter 1 (``01_data``).
"""
from __future__ import annotations

import math
import os
import platform
import random
import warnings

import numpy as np
import torch

__all__ = ["select_device", "seed_everything", "environment_report", "to_plain", "CPUTrainingWarning",
           "cpu_seconds_per_step", "warn_gpu_preset_on_cpu", "torch_threads", "memory_format_for"]

# Stated CPU costs of one training step, on an idle 2-core machine with 2 torch threads (sampling and augmentation
# included). 3D: benchmarks/bench_train3d.py measured 0.16 s for 16x64x64 patches, batch 2, UNet3DConfig()
# (16 base channels; see the note above PRESETS_3D in trainconfig.py). 2D: the "cpu" preset's 1500 steps of the
# patch model at batch 128 take about a minute (models2d.PRESETS_2D), 0.04 s a step. Steps are scaled by the
# voxels per batch and, for the U-Nets, by the squared width (convolution cost); a busy machine is slower still.
_CPU_STEP_3D = (0.16, 16 * 64 * 64 * 2, 16)
_CPU_STEP_2D = (0.04, 128 * 32 * 32, 16)


class torch_threads:  # noqa: N801 -- used like a function: ``with torch_threads(2): ...``
    """Set torch's CPU threads for a block (None: leave the user's setting), restoring the previous number after."""

    def __init__(self, threads: int | None):
        self.threads, self.previous = threads, torch.get_num_threads()

    def __enter__(self):
        if self.threads:
            torch.set_num_threads(int(self.threads))

    def __exit__(self, *exc):
        torch.set_num_threads(self.previous)


class CPUTrainingWarning(UserWarning):
    """A training budget meant for a GPU is running on the CPU (the message says how long it will take)."""


def cpu_seconds_per_step(config, model_config=None) -> float:
    """Estimated CPU seconds of one training step of ``config`` (TrainConfig or Train2DConfig), from stated costs.

    A rough figure (within a factor of a few): the stated step cost scaled by the voxels per batch and the squared
    network width, see the note above this function in the source.
    """
    if hasattr(config, "resolved_batch_size"):  # 2D
        seconds, voxels, width = _CPU_STEP_2D
        side = 32 if config.model == "patch" else config.patch_size
        batch_voxels = config.resolved_batch_size() * side * side * config.in_channels
        scale = 1.0 if config.model == "patch" else (config.base_channels / width) ** 2
    else:
        seconds, voxels, width = _CPU_STEP_3D
        batch_voxels = config.batch_size * math.prod(config.patch_size)
        scale = (getattr(model_config, "base_channels", width) / width) ** 2
    return seconds * batch_voxels / voxels * scale


def warn_gpu_preset_on_cpu(config, device, *, gpu_preset, model_config=None, stacklevel: int = 3) -> None:
    """Warn (:class:`CPUTrainingWarning`) if ``config`` has the batch of ``gpu_preset`` and ``device`` is the CPU."""
    def sizes(c):
        return (getattr(c, "model", None), c.patch_size,
                c.resolved_batch_size() if hasattr(c, "resolved_batch_size") else c.batch_size)

    if torch.device(device).type != "cpu" or sizes(config) != sizes(gpu_preset):
        return
    seconds = config.steps * cpu_seconds_per_step(config, model_config)
    hours = f"{seconds / 3600:.1f} hours" if seconds >= 3600 else f"{seconds / 60:.0f} minutes"
    warnings.warn(
        f"training with a 'gpu' preset ({config.steps} steps, batch {sizes(config)[2]}, patch {config.patch_size}) on "
        f"the CPU: about {hours} ({config.steps} steps x {seconds / config.steps:.2f} s, estimated from a stated "
        "2-core step cost; yours may differ by a factor of a few). Use a GPU (on Colab: Runtime > Change runtime "
        "type > GPU) or the 'cpu' preset.", CPUTrainingWarning, stacklevel=stacklevel)



def memory_format_for(device, *, channels_last: bool = True) -> torch.memory_format:
    """The memory format of the 3D U-Net's weights and 5D inputs on ``device``.

    Introduced in chapter 5 (``05_train_3d``). ``torch.channels_last_3d`` (NDHWC) on CUDA, where the
    convolutions under float16 autocast run on tensor cores, which want the channels innermost, and on the
    CPU, where oneDNN's convolutions run about twice as fast in it (``benchmarks/bench_infer3d.py``) and every
    run of the stored grid trained in it. Contiguous (NCDHW) elsewhere: on Apple's MPS, ``Conv3d`` gave wrong
    outputs for channels-last 3D inputs (pytorch/pytorch#141471, fixed in late 2024), and contiguous whenever
    ``channels_last`` is False (for a kernel that turns out slow in that layout).

    Parameters
    ----------
    device : str or torch.device
    channels_last : bool
        False: always ``torch.contiguous_format``.

    Returns
    -------
    torch.memory_format
    """
    if channels_last and torch.device(device).type in ("cuda", "cpu"):
        return torch.channels_last_3d
    return torch.contiguous_format


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
