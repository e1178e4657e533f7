"""Pre-processing for StableAnimator (SPEC §6): skeletons, face masks and the face embedding.

Runs with numpy, OpenCV, onnxruntime and insightface only (no JAX). Entry points: `prepare` (the `sa-prep`
command) and `redraw` (`sa-prep draw`); see docs/prep.md.
"""

from sa_jax.prep.pipeline import PrepConfig, prepare, redraw

__all__ = ['PrepConfig', 'prepare', 'redraw']
