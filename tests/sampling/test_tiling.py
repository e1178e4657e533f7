import numpy as np
import pytest

from sa_jax.sampling import tiling


def test_tiles_always_start_with_frame_zero():
  tiles = tiling.tile_indices(30, 16, 4)
  np.testing.assert_array_equal(tiles[0], np.arange(16))
  np.testing.assert_array_equal(tiles[1], [0, *range(13, 28)])
  np.testing.assert_array_equal(tiles[2], [0, *range(15, 30)])       # the extra tile covers the end
  np.testing.assert_array_equal(tiling.tile_indices(5, 4, 2), [[0, 1, 2, 3], [0, 2, 3, 4]])
  np.testing.assert_array_equal(tiling.tile_indices(4, 4, 2), [[0, 1, 2, 3]])


def test_tile_arguments_are_checked():
  with pytest.raises(ValueError, match='tile_size 8 for 5 frames'):
    tiling.tile_indices(5, 8, 2)
  with pytest.raises(ValueError, match='tile_overlap'):
    tiling.tile_indices(8, 4, 4)


def test_weights_are_triangular():
  np.testing.assert_allclose(tiling.tile_weights(4), [0.25, 0.75, 0.75, 0.25])
  assert tiling.tile_weights(16).dtype == np.float32


def test_noise_is_periodic_over_the_tile():
  noise = np.arange(3 * 2, dtype=np.float32).reshape(3, 2)
  np.testing.assert_array_equal(tiling.periodic_noise(noise, 7), noise[[0, 1, 2, 0, 1, 2, 0]])
