"""NeuroSeg Lite: 3D segmentation of neuronal bodies from a few annotated 2D slices.

The package behind the NeuroSeg Lite book. Submodules, in the order the book introduces them: ``io`` (with
``tiff`` below it), ``synth`` (with ``synthconfig``) (chapter 1), ``sparse`` (2), ``models2d`` and
``pseudolabel`` (3), ``losses`` (4-5), ``unet3d``, ``patches``, ``train`` and ``checkpoint`` (5), ``intensity``
(the preprocessing a model file carries), ``infer`` and ``metrics`` (6), ``experiment`` with ``cache`` (7),
``datasets`` (8); ``zarrio`` (large stacks: OME-Zarr, Zarr, TIFF), ``synthlarge``, ``scale`` (out-of-core
prediction on Dask, with ``scaleplan``), ``objects`` (neurons counted) and ``cli`` (the ``neuroseg-lite``
command) (10); ``plot``, ``widgets`` and ``utils`` throughout. The book's page "API reference" documents
every module. Every function refuses unusable input with :class:`NeurosegInputError`, whose message says what
to change.
"""
from neuroseg_lite._checks import NeurosegInputError

__version__ = "0.2.0"
__all__ = ["NeurosegInputError", "__version__"]
