"""Temporal tiling of a long clip into overlapping UNet calls (SPEC §4.3).

Every tile starts with frame 0 (the reference-aligned frame); predictions are blended with
triangular weights and normalised by the summed weights per frame.
"""

import jax
import jax.numpy as jnp
import numpy as np


def tile_indices(num_frames: int, tile_size: int, tile_overlap: int) -> np.ndarray:
  """Frame indices of each tile, `[K, tile_size]` int32.

  Tiles start at `i = 0, T - O, 2 (T - O), ...` while `i <= N - T` and hold `[0, i+1, ..., i+T-1]`;
  if the last frame is not covered, a final tile `[0, N-T+1, ..., N-1]` is added.
  Example N=30, T=16, O=4: [0..15], [0,13..27], [0,15..29].
  """
  if tile_size < 1 or num_frames < tile_size:
    raise ValueError(f'need 1 <= tile_size <= number of frames, got tile_size {tile_size} for '
                     f'{num_frames} frames')
  if not 0 <= tile_overlap < tile_size:
    raise ValueError(f'tile_overlap must be in [0, tile_size), got {tile_overlap} with tile_size {tile_size}')
  tiles = [[0, *range(i + 1, i + tile_size)]
           for i in range(0, num_frames - tile_size + 1, tile_size - tile_overlap)]
  if tiles[-1][-1] < num_frames - 1:
    tiles.append([0, *range(num_frames - tile_size + 1, num_frames)])
  return np.asarray(tiles, np.int32)


def tile_weights(tile_size: int) -> np.ndarray:
  """Triangular blending weights `min(w, 2 - w)`, `w = (j + 0.5) * 2 / T`: `[T]` float32."""
  w = (np.arange(tile_size, dtype=np.float32) + np.float32(0.5)) * np.float32(2.0) / np.float32(tile_size)
  return np.minimum(w, np.float32(2.0) - w)


def periodic_noise(noise: jax.Array, num_frames: int) -> jax.Array:
  """Repeats `[T, ...]` initial noise along frames to `[N, ...]`: frame k gets `noise[k mod T]`."""
  return jnp.take(noise, jnp.arange(num_frames) % noise.shape[0], axis=0)
