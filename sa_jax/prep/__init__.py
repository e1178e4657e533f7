"""Pre-processing for StableAnimator (SPEC §6): skeletons, face masks and the face embedding.

Runs with numpy, OpenCV, onnxruntime and insightface only (no JAX). Entry points: `pipeline.prepare`
(the `sa-prep` command) and `pipeline.redraw` (`sa-prep draw`); see docs/prep.md. Importing this
package imports nothing else, so `sa_jax.prep.frames` (image I/O, used by `sa-animate`) stays free
of the detector libraries.
"""
