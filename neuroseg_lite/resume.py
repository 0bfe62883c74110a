"""Training that survives interruption: a resumable state saved every few steps or seconds.

Introduced in chapter 5 (``05_train_3d``); used by :func:`neuroseg_lite.train.train_2d`,
:func:`~neuroseg_lite.train.train_3d` and, through them, by :class:`neuroseg_lite.experiment.Pipeline`, which
keeps the state beside the model it is training in its working folder (on Colab, point that folder at Google
Drive so that the state outlives the runtime).

A state file holds everything the rest of the run depends on: the network, the optimiser (its step counts are
the scheduler's position), the gradient scaler, the weight average and the patch sampler (through the objects'
``state_dict``), every random number generator (the samplers' numpy Generators, NumPy's and Python's global
ones, torch's CPU and CUDA generators), the history so far, the losses not yet logged and the elapsed time.
Training started again with the same call continues from the last state and, on the same device, ends with the
very weights of an uninterrupted run. A state is used only if its key (configs, data digests, seed, package
version, device type) is the one asked for; a state from another run, or a truncated one, is refused.

Files are written atomically (:func:`neuroseg_lite.cache.atomic_write`), so a kill or a full disk while saving
leaves the previous state intact, and read with ``torch.load(..., weights_only=True)``: RNG states are stored as
tensors and JSON text, never as pickled objects.
"""
from __future__ import annotations

import errno
import json
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from neuroseg_lite._checks import NeurosegInputError
from neuroseg_lite.cache import atomic_write, content_key

__all__ = ["FORMAT", "TrainingState", "run_parts", "check_writable", "generator_state", "set_generator_state"]

FORMAT = "neuroseg_lite.training_state"
FORMAT_VERSION = 1
#: Seconds between states when a resume path is given without ``save_every_steps``/``save_every_seconds``.
DEFAULT_EVERY_SECONDS = 60.0
_PART_NAMES = {"kind": "kind of training", "config": "configuration", "data": "training data", "seed": "seed",
               "version": "neuroseg_lite version", "device": "device type"}


def generator_state(rng: np.random.Generator) -> str:
    """A numpy Generator's state as JSON text (plain data for ``torch.load(..., weights_only=True)``)."""
    return json.dumps(rng.bit_generator.state)


def set_generator_state(rng: np.random.Generator, text: str) -> None:
    """Put a Generator back to a state from :func:`generator_state` (in place)."""
    rng.bit_generator.state = json.loads(text)


def _global_rngs() -> dict:
    numpy_state = np.random.get_state()  # noqa: NPY002 -- third-party code may draw from the legacy global RNG
    state = {"python": json.dumps(random.getstate()),
             "numpy": json.dumps([numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]]),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_global_rngs(state: dict) -> None:
    version, internal, gauss = json.loads(state["python"])
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = json.loads(state["numpy"])
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def check_writable(folder) -> Path:
    """Create ``folder`` if needed and check that a file can be written in it; a clear error otherwise."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".write-test-")
        os.close(handle)
        os.unlink(probe)
    except OSError as err:
        raise NeurosegInputError(
            f"cannot write in the working folder {folder} ({err.strerror or err}): it is on a read-only path or not "
            "yours. Pass a writable folder (workdir=... of the Pipeline, resume=... of train_2d/train_3d); on Colab "
            "a folder on Google Drive, e.g. /content/drive/MyDrive/neuroseg.") from err
    return folder


def run_parts(kind: str, *, configs: dict, arrays, seed: int, device) -> dict:
    """The ``parts`` of a :class:`TrainingState`: what a training run's result depends on.

    ``configs`` are dataclasses or dicts (model, training, intensity); ``arrays`` the arrays the loop trains on
    (reduced to one :func:`neuroseg_lite.cache.array_digest`).
    """
    from neuroseg_lite import __version__
    from neuroseg_lite.cache import array_digest

    return {"kind": kind, "config": configs, "data": array_digest(*arrays), "seed": int(seed),
            "version": __version__, "device": torch.device(device).type}


class TrainingState:
    """Save and restore the resumable state of one training run in one file.

    Parameters
    ----------
    path : str or Path
        The state file. Absent: training starts from the beginning; present: it continues from it.
    parts : dict
        What the run depends on, by name (``"kind"``, ``"config"``, ``"data"``, ``"seed"``, ``"version"``,
        ``"device"``): JSON-able descriptions, each reduced to a content key. A state whose keys differ is
        refused, naming the parts that differ.
    objects : dict of name -> object with ``state_dict()`` and ``load_state_dict(state)``
        Network, optimiser, trainer, ...: saved and restored in this order.
    generators : dict of name -> numpy.random.Generator, optional
        Generators drawn from by the loop itself (not through one of ``objects``).
    every_steps : int, optional
        Save after every that many steps.
    every_seconds : float, optional
        Save when that many seconds have passed since the last save (or the start). Both None: every
        :data:`DEFAULT_EVERY_SECONDS` seconds.
    device : torch.device
        Where the pending losses go back to.
    """

    def __init__(self, path, *, parts: dict, objects: dict, generators=None, every_steps=None, every_seconds=None,
                 device="cpu"):
        self.path = Path(path)
        if every_steps is not None and int(every_steps) < 1:
            raise NeurosegInputError(f"save_every_steps must be >= 1 (or None), got {every_steps!r}.")
        if every_seconds is not None and not float(every_seconds) > 0:
            raise NeurosegInputError(f"save_every_seconds must be > 0 (or None), got {every_seconds!r}.")
        if every_steps is None and every_seconds is None:
            every_seconds = DEFAULT_EVERY_SECONDS
        self.every_steps = None if every_steps is None else int(every_steps)
        self.every_seconds = None if every_seconds is None else float(every_seconds)
        self.keys = {name: content_key(value) for name, value in parts.items()}
        self.objects, self.generators = dict(objects), dict(generators or {})
        self.device = torch.device(device)
        self.last_saved = time.monotonic()
        self.saved_step: int | None = None
        check_writable(self.path.parent)

    # -- reading ---------------------------------------------------------------------------------------------
    def _refuse(self, problem: str, fix: str = "delete it to train from the beginning, or pass another resume "
                                                 "path") -> NeurosegInputError:
        return NeurosegInputError(f"training state {self.path} {problem}; it was not used. To go on, {fix}.")

    def _read(self) -> dict:
        try:
            payload = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as err:  # zip, pickle and weights-only errors differ by torch version: all mean unusable
            raise self._refuse(f"is unreadable ({type(err).__name__}: {str(err)[:200]}): truncated, damaged or not "
                               "a state file") from err
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
            raise self._refuse(f"is not a NeuroSeg Lite training state (format {found!r}, expected {FORMAT!r})")
        if payload.get("format_version") != FORMAT_VERSION:
            raise self._refuse(f"has format version {payload.get('format_version')!r}, this neuroseg_lite reads "
                               f"{FORMAT_VERSION}")
        stored = payload.get("keys")
        if not isinstance(stored, dict):
            raise self._refuse("has no record of the run that wrote it (edited or damaged)")
        differ = [_PART_NAMES.get(name, name) for name in self.keys if stored.get(name) != self.keys[name]]
        if differ or set(stored) != set(self.keys):
            raise self._refuse(f"was saved by another training run (it differs in: {', '.join(differ) or 'parts'}), "
                               "so continuing from it would not give this run's model")
        return payload

    def load(self) -> dict | None:
        """Restore every object and RNG from the state file; None if there is none.

        Returns
        -------
        dict or None
            ``step`` (steps done), ``history``, ``elapsed`` (training seconds so far) and ``losses`` (the
            losses since the last logged step, 0-d tensors on ``device``).

        Raises
        ------
        NeurosegInputError
            If the file is truncated, damaged, not a state file, or from another run.
        """
        if not self.path.exists():
            return None
        payload = self._read()
        try:
            for name, value in self.objects.items():
                value.load_state_dict(payload["objects"][name])
            for name, rng in self.generators.items():
                set_generator_state(rng, payload["generators"][name])
            _set_global_rngs(payload["rngs"])
            losses = payload["losses"]
            loop = {"step": int(payload["step"]), "history": {k: list(v) for k, v in payload["history"].items()},
                    "elapsed": float(payload["elapsed"]),
                    "losses": [] if losses is None else list(losses.to(self.device).unbind())}
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise self._refuse(f"does not fit this run ({type(err).__name__}: {str(err)[:200]}); it was edited or "
                               "damaged") from err
        self.saved_step = loop["step"]
        return loop

    # -- writing ---------------------------------------------------------------------------------------------
    def due(self, step: int) -> bool:
        """Whether a state should be saved after ``step`` steps."""
        if self.every_steps is not None and step % self.every_steps == 0:
            return True
        return self.every_seconds is not None and time.monotonic() - self.last_saved >= self.every_seconds

    def save(self, step: int, *, history: dict, elapsed: float, losses) -> Path:
        """Write the state after ``step`` steps (atomically: a failure leaves the previous state as it was).

        Raises
        ------
        OSError
            With a message saying which state is still there, if the file cannot be written (e.g. a full disk).
        """
        from neuroseg_lite import __version__
        from neuroseg_lite.utils import to_plain

        payload = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "package_version": __version__,
            "keys": self.keys, "step": int(step), "elapsed": float(elapsed), "history": to_plain(history),
            "losses": torch.stack([loss.detach().cpu() for loss in losses]) if losses else None,
            "objects": {name: value.state_dict() for name, value in self.objects.items()},
            "generators": {name: generator_state(rng) for name, rng in self.generators.items()},
            "rngs": _global_rngs(),
        }
        try:
            atomic_write(self.path, lambda tmp: torch.save(payload, tmp))
        except OSError as err:
            kept = (f"the state of step {self.saved_step} is intact" if self.saved_step is not None
                    else "no earlier state exists")
            reason = "the disk is full" if err.errno == errno.ENOSPC else (err.strerror or str(err))
            raise OSError(err.errno, f"could not save the training state of step {step} to {self.path}: {reason}; "
                          f"{kept}. Free some space (or pass a resume path on another disk) and run the same call "
                          "again to continue.") from err
        self.saved_step, self.last_saved = int(step), time.monotonic()
        return self.path

    def finish(self) -> None:
        """Remove the state file: the run is complete (its model is what the caller keeps)."""
        self.path.unlink(missing_ok=True)
