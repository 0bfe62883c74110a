"""The committed results tables of long, resumable experiment grids, and their record of machines and times.

Introduced in chapter 7 (``07_sparsity_sweep``) with ``benchmarks/paired_grid.py``; chapter 8's
``benchmarks/qcanet_grid.py`` keeps its tables the same way. A grid runs for hours, across sessions and
machines: every finished run is a row in a working results file (``experiment.sweep`` skips rows it already
has), finished stages are merged into small committed tables, and a ``grid.json`` records the command, the
versions, the machines and each stage's time. On a new machine the working file starts from the committed
rows, so nothing committed is run again. Several processes may share the tables (e.g. one per fold): every
read-modify-write of a table or of ``grid.json`` holds a lock file next to it (POSIX; elsewhere, run one
process at a time).
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import sys
from importlib import resources
from pathlib import Path

import pandas as pd

from neuroseg_lite.cache import atomic_write

__all__ = ["stored_folder", "describe_machine", "read_table", "write_table", "merge_into", "seed_working_file",
           "machines_of", "open_meta", "record_stage", "write_meta"]


def describe_machine(device: str = "cpu") -> str:
    """This machine's CPU model and core count, and the GPU's name when ``device`` is a CUDA device."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = ""
    if str(device).startswith("cuda"):
        import torch

        gpu = f", {torch.cuda.get_device_name(torch.device(device))}"
    return f"{model}, {os.cpu_count()} cores{gpu}"


def stored_folder(name: str, folder=None) -> Path:
    """``folder``, or the package's own ``neuroseg_lite/data/<name>`` (the grids that ship with it)."""
    if folder is None:
        return Path(str(resources.files("neuroseg_lite"))) / "data" / name
    return Path(folder)


def read_table(path, *, columns=()) -> pd.DataFrame:
    """The CSV table at ``path``, or an empty table (with ``columns``) when there is none yet."""
    path = Path(path)
    return pd.read_csv(path) if path.exists() else pd.DataFrame(columns=list(columns))


def write_table(path, table: pd.DataFrame) -> None:
    """Write ``table`` to ``path`` atomically (an interrupted write leaves the old table)."""
    atomic_write(Path(path), lambda tmp: table.to_csv(tmp, index=False))


@contextlib.contextmanager
def _locked(path: Path):
    """Hold an exclusive lock on ``path``'s lock file while the block reads and rewrites ``path``."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def merge_into(path, new: pd.DataFrame, keys) -> pd.DataFrame:
    """Add ``new``'s rows to the table at ``path`` (rows with equal ``keys`` are replaced) and return it.

    Examples
    --------
    >>> write_table("t.csv", pd.DataFrame({"key": ["a", "b"], "dice": [0.5, 0.6]}))
    >>> merge_into("t.csv", pd.DataFrame({"key": ["b", "c"], "dice": [0.7, 0.8]}), ["key"])
      key  dice
    0   a   0.5
    1   b   0.7
    2   c   0.8
    """
    path = Path(path)
    with _locked(path):
        old = read_table(path)
        table = pd.concat([old, new], ignore_index=True) if len(old) else new
        table = table.drop_duplicates(subset=list(keys), keep="last").reset_index(drop=True)
        write_table(path, table)
    return table


def seed_working_file(results_file, stored: pd.DataFrame, *, data_name: str, drop=()) -> None:
    """Start a missing working results file from the committed rows of ``data_name``.

    On a new machine the committed rows are done (their keys say so); only their models are not here.
    ``drop`` names columns the committed table adds to ``experiment.sweep``'s (e.g. ``"machine"``).
    """
    results_file = Path(results_file)
    if results_file.exists() or not len(stored):
        return
    mine = stored[stored["data"] == data_name].drop(columns=list(drop), errors="ignore").drop_duplicates("key")
    results_file.parent.mkdir(parents=True, exist_ok=True)
    write_table(results_file, mine)


def machines_of(keys, stored: pd.DataFrame, this_machine: str) -> list[str]:
    """The machine of each row key: the committed row's where there is one, else this machine."""
    known = dict(zip(stored.get("key", []), stored.get("machine", [])))
    return [known.get(key, this_machine) for key in keys]


def open_meta(path, *, script: str, this_machine: str, argv=None, design: dict | None = None, **fields) -> dict:
    """A grid's ``grid.json`` (or a new record) updated for a command that is about to run.

    Parameters
    ----------
    path : path-like
        The grid's ``grid.json``.
    script : str
        The grid's script as run from the repository root, e.g. ``"benchmarks/paired_grid.py"``.
    this_machine : str
        :func:`describe_machine`; added to ``meta["machines"]``.
    argv : list of str, optional
        The script's arguments (default ``sys.argv[1:]``). ``python <script> <argv>`` becomes
        ``meta["command"]`` and each stage it finishes records it (:func:`record_stage`), so a grid run in
        parts, or by several processes, keeps every command.
    design : dict of str to list, optional
        What the whole grid covers (e.g. its data seeds and values of k). A command that runs a part of the grid
        adds its values to the recorded lists (sorted union) instead of replacing them, here and again in
        :func:`record_stage` (for processes that opened the record before another one wrote it). Their names
        are kept in ``meta["design"]``.
    **fields
        Whatever describes this command alone (versions, threads, budgets): replaces what was recorded.

    Returns
    -------
    dict
        The record; nothing is written until :func:`record_stage`.
    """
    path = Path(path)
    meta = json.loads(path.read_text()) if path.exists() else {"done": {}}
    meta.setdefault("done", {})
    for name, values in (design or {}).items():
        meta[name] = sorted(set(meta.get(name, [])) | set(values))
    meta["design"] = sorted(set(meta.get("design", [])) | set(design or {}))
    command = " ".join(["python", script, *(sys.argv[1:] if argv is None else argv)])
    meta.update(command=command, this_machine=this_machine, **fields)
    if this_machine not in meta.setdefault("machines", []):
        meta["machines"].append(this_machine)
    return meta


def write_meta(path, meta: dict) -> None:
    """Write a grid's ``grid.json`` atomically."""
    atomic_write(Path(path), lambda tmp: tmp.write_text(json.dumps(meta, indent=2) + "\n"))


def record_stage(meta: dict, path, stage: str, *, seconds: float, new_runs: int, runs: int,
                 report: bool = True) -> None:
    """Record a finished stage in ``meta["done"]``, write ``meta`` to ``path`` and (``report``) print a line.

    A stage found complete (no new runs) keeps its earlier record; one that made runs adds this session's
    seconds to the earlier ones (a session stopped inside a stage records nothing for it) and records
    ``meta["command"]``, the command that ran it. Stages, machines and design values (:func:`open_meta`) that
    other processes recorded in the file meanwhile are kept.

    Examples
    --------
    >>> meta = {"done": {}}
    >>> record_stage(meta, "grid.json", "k 1", seconds=800.0, new_runs=8, runs=8)
    k 1: 8 runs (8 new), 800 s
    >>> record_stage(meta, "grid.json", "k 1", seconds=0.2, new_runs=0, runs=8,
    ...              report=False)
    >>> meta["done"]["k 1"]["seconds"], meta["done"]["k 1"]["runs"]
    (800.0, 8)
    """
    path = Path(path)
    with _locked(path):
        recorded = json.loads(path.read_text()) if path.exists() else {}
        on_disk = recorded.get("done", {})
        done = meta.setdefault("done", {})
        done.update({name: entry for name, entry in on_disk.items() if name not in done or name != stage})
        machines = meta.setdefault("machines", [])
        machines.extend(m for m in recorded.get("machines", []) if m not in machines)
        meta["design"] = sorted(set(meta.get("design", [])) | set(recorded.get("design", [])))
        for name in meta["design"]:
            meta[name] = sorted(set(meta.get(name, [])) | set(recorded.get(name, [])))
        previous = done.get(stage, {})
        if not (previous and new_runs == 0):
            before = previous.get("seconds", previous.get("seconds_this_session", 0.0))
            now = datetime.datetime.now().isoformat(timespec="seconds")
            done[stage] = {"seconds": round(before + seconds, 1), "runs": runs, "new_runs": new_runs,
                           "finished": now}
            if meta.get("command"):
                done[stage]["command"] = meta["command"]
            meta["updated"] = now
        write_meta(path, meta)
    if report:
        print(f"{stage}: {runs} runs ({new_runs} new), {seconds:.0f} s", flush=True)
