"""Driving frames from videos and folders; PNG writers."""

import cv2
import numpy as np
import pytest
from PIL import Image

from sa_jax.prep import frames
from tests.prep.conftest import VIDEO_COLOURS


def _colours(sequence) -> list[tuple[int, ...]]:
  return [tuple(int(c) for c in frame.image[32, 32]) for frame in sequence]


def test_video_frames_with_stride_and_limit(inputs):
  every = list(frames.iter_frames(video=inputs.video))
  assert len(every) == len(VIDEO_COLOURS)
  assert every[0].image.shape == (64, 64, 3) and every[0].image.dtype == np.uint8
  assert every[1].source == 'drive.mp4 frame 1'
  for got, want in zip(_colours(every), VIDEO_COLOURS):
    np.testing.assert_allclose(got, want, atol=2)  # lossless H.264 in 4:2:0
  strided = list(frames.iter_frames(video=inputs.video, stride=2, max_frames=2))
  assert [f.source for f in strided] == ['drive.mp4 frame 0', 'drive.mp4 frame 2']
  unstarted = frames.iter_frames(video=inputs.video)
  unstarted.close()  # stops ffmpeg before the first frame
  assert list(unstarted) == []


def test_folder_in_natural_order(tmp_path):
  for i in (10, 2, 1):
    Image.fromarray(np.full((4, 6, 3), i, np.uint8)).save(tmp_path / f'frame_{i}.png')
  Image.fromarray(np.full((4, 6, 3), 7, np.uint8)).save(tmp_path / 'frame_7.jpg', quality=100)
  (tmp_path / 'notes.txt').write_text('not an image')
  got = list(frames.iter_frames(folder=tmp_path))
  assert [f.source for f in got] == ['frame_1.png', 'frame_2.png', 'frame_7.jpg', 'frame_10.png']
  assert got[0].image.shape == (4, 6, 3)
  assert [f.source for f in frames.iter_frames(folder=tmp_path, stride=3)] == ['frame_1.png',
                                                                                 'frame_10.png']


def test_rgba_and_grey_images_become_rgb(tmp_path):
  Image.fromarray(np.full((3, 5, 4), 200, np.uint8), 'RGBA').save(tmp_path / 'a.png')
  Image.fromarray(np.full((3, 5), 9, np.uint8), 'L').save(tmp_path / 'b.png')
  assert frames.load_rgb(tmp_path / 'a.png').shape == (3, 5, 3)
  np.testing.assert_array_equal(frames.load_rgb(tmp_path / 'b.png')[0, 0], (9, 9, 9))


def test_16_bit_pngs_keep_their_high_byte(tmp_path):
  values = np.arange(0, 256, 17, dtype=np.uint16).reshape(2, 8)  # [H, W] 8-bit levels
  colour = np.stack([values, 255 - values, values // 2], -1)  # [H, W, 3] RGB
  cv2.imwrite(str(tmp_path / 'grey.png'), values * 256 + 200)  # low byte 200: dropped, not rounded
  cv2.imwrite(str(tmp_path / 'colour.png'), colour[..., ::-1] * 256 + 200)  # BGR for cv2
  with Image.open(tmp_path / 'grey.png') as grey:
    assert grey.mode == 'I;16'
  np.testing.assert_array_equal(frames.load_rgb(tmp_path / 'grey.png'), np.repeat(values[..., None], 3, -1))
  np.testing.assert_array_equal(frames.load_mask(tmp_path / 'grey.png'), values)
  np.testing.assert_array_equal(frames.load_rgb(tmp_path / 'colour.png'), colour)
  np.testing.assert_array_equal(cv2.imread(str(tmp_path / 'grey.png'), cv2.IMREAD_GRAYSCALE), values)


def test_modes_without_an_8_bit_mapping_are_refused(tmp_path):
  Image.fromarray(np.zeros((2, 3), np.float32)).save(tmp_path / 'float.tif')
  Image.fromarray(np.array([[70000, 0]], np.int32)).save(tmp_path / 'wide.tif')
  with pytest.raises(ValueError, match=r'^cannot read image .*float.tif: mode F is not supported') as err:
    frames.load_rgb(tmp_path / 'float.tif')
  assert '\n' not in str(err.value)
  with pytest.raises(ValueError, match=r'wide.tif: mode I values span 0..70000, expected 0..65535'):
    frames.load_mask(tmp_path / 'wide.tif')


@pytest.mark.parametrize('keep', [0, 0.5])
def test_empty_and_truncated_images_give_one_line(tmp_path, keep):
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), np.uint8)).save(tmp_path / 'a.png')
  data = (tmp_path / 'a.png').read_bytes()
  (tmp_path / 'a.png').write_bytes(data[:int(len(data) * keep)])
  for load in (frames.load_rgb, frames.load_mask):
    with pytest.raises(ValueError, match=r'^cannot read (image|mask) .*a.png: ') as err:
      load(tmp_path / 'a.png')
    assert '\n' not in str(err.value)


def test_masks_are_single_channel(tmp_path):
  Image.fromarray(np.full((3, 5, 3), 255, np.uint8)).save(tmp_path / 'white.png')
  Image.fromarray(np.full((3, 5, 2), 128, np.uint8), 'LA').save(tmp_path / 'grey_alpha.png')
  mask = frames.load_mask(tmp_path / 'white.png')
  assert mask.shape == (3, 5) and mask.dtype == np.uint8 and (mask == 255).all()
  assert (frames.load_mask(tmp_path / 'grey_alpha.png') == 128).all()
  with pytest.raises(FileNotFoundError, match='mask not found: .*absent.png'):
    frames.load_mask(tmp_path / 'absent.png')


def test_errors_name_the_input(tmp_path):
  with pytest.raises(FileNotFoundError, match='video not found: .*missing.mp4'):
    frames.iter_frames(video=tmp_path / 'missing.mp4')
  bad = tmp_path / 'bad.mp4'
  bad.write_bytes(b'not a video' * 50)
  with pytest.raises(ValueError, match='cannot read video .*bad.mp4'):
    frames.iter_frames(video=bad)
  with pytest.raises(ValueError, match='has no images'):
    frames.iter_frames(folder=tmp_path)
  with pytest.raises(ValueError, match='exactly one of a video'):
    frames.iter_frames(video=bad, folder=tmp_path)
  with pytest.raises(ValueError, match='stride is 0'):
    frames.iter_frames(folder=tmp_path, stride=0)
  with pytest.raises(ValueError, match='cannot read image .*bad.mp4'):
    frames.load_rgb(bad)


def test_writers(tmp_path):
  frames.save_rgb(tmp_path / 'rgb.png', np.full((3, 4, 3), (1, 2, 3), np.uint8))
  frames.save_mask(tmp_path / 'mask.png', np.full((3, 4), 255, np.uint8))
  with Image.open(tmp_path / 'rgb.png') as rgb, Image.open(tmp_path / 'mask.png') as mask:
    assert rgb.mode == 'RGB' and mask.mode == 'L' and mask.size == (4, 3)
  with pytest.raises(ValueError, match=r'expected uint8 \[H, W\]'):
    frames.save_mask(tmp_path / 'x.png', np.zeros((3, 4), np.float32))
