"""NeuroSeg Lite: 3D segmentation of neuronal bodies from a few annotated 2D slices.

The package behind the NeuroSeg Lite book. Submodules, in the order the book introduces them:
``io`` and ``synth`` (chapter 1), ``sparse`` (2), ``pseudolabel`` (3), ``losses`` (4-5),
``unet3d`` and ``train`` (5), ``infer`` and ``metrics`` (6), ``experiment`` (7), ``datasets`` (8),
``plot`` (throughout).
"""
from neuroseg_lite._checks import NeurosegInputError

__version__ = "0.1.0"
__all__ = ["NeurosegInputError", "__version__"]
