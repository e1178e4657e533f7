"""Image and video I/O for `sa-prep`: driving frames from a video or a folder, PNG writers.

Frames are RGB uint8 [H, W, 3]. Videos are decoded with imageio-ffmpeg (any format its ffmpeg reads) and
streamed, so a long video never sits in memory. Folders are read in natural name order (`frame_2` before
`frame_10`, as the reference's `int(name.split('_')[1])` sort for `frame_<i>` names). EXIF orientation is
applied to photos, as `cv2.imread` does in the reference tools.
"""

import dataclasses
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import imageio_ffmpeg
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.webp')


@dataclasses.dataclass(frozen=True)
class Frame:
  """One driving frame.

  Attributes:
    image: RGB uint8 [H, W, 3].
    source: where it came from (`video.mp4 frame 12` or a file name).
  """
  image: np.ndarray
  source: str


def load_rgb(path: str | os.PathLike) -> np.ndarray:
  """An image file as RGB uint8 [H, W, 3] (EXIF orientation applied)."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'image not found: {path}')
  try:
    with Image.open(path) as image:
      return np.array(ImageOps.exif_transpose(image).convert('RGB'))
  except (UnidentifiedImageError, OSError) as err:
    raise ValueError(f'cannot read image {path}: {err}') from err


def save_rgb(path: str | os.PathLike, image: np.ndarray) -> None:
  """Writes RGB uint8 [H, W, 3] as PNG."""
  if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
    raise ValueError(f'image has shape {image.shape} and dtype {image.dtype}, expected uint8 [H, W, 3]')
  Image.fromarray(image, 'RGB').save(path)


def save_mask(path: str | os.PathLike, mask: np.ndarray) -> None:
  """Writes a uint8 [H, W] mask as a single-channel (mode L) PNG."""
  if mask.ndim != 2 or mask.dtype != np.uint8:
    raise ValueError(f'mask has shape {mask.shape} and dtype {mask.dtype}, expected uint8 [H, W]')
  Image.fromarray(mask, 'L').save(path)


def _natural_key(name: str) -> tuple:
  return tuple(int(part) if part.isdigit() else part for part in re.split(r'(\d+)', name))


def list_images(folder: str | os.PathLike) -> list[Path]:
  """Image files directly in `folder`, in natural name order."""
  folder = Path(folder)
  if not folder.is_dir():
    raise FileNotFoundError(f'frame folder not found: {folder}')
  files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
  if not files:
    raise ValueError(f'frame folder {folder} has no images (looked for {", ".join(IMAGE_SUFFIXES)})')
  return sorted(files, key=lambda p: _natural_key(p.name))


def _select(indexed: Iterator[tuple[int, Frame]], stride: int,
            max_frames: int | None) -> Iterator[Frame]:
  """Every `stride`-th frame, at most `max_frames` of them."""
  count = 0
  for index, frame in indexed:
    if index % stride:
      continue
    yield frame
    count += 1
    if max_frames is not None and count >= max_frames:
      return


class FrameStream(Iterator[Frame]):
  """The kept frames of a source, in order; `close()` stops the decoder, started or not."""

  def __init__(self, indexed: Iterator[tuple[int, Frame]], stride: int, max_frames: int | None,
               release: Callable[[], None] = lambda: None):
    self._frames = _select(indexed, stride, max_frames)
    self._release = release

  def __next__(self) -> Frame:
    try:
      return next(self._frames)
    except StopIteration:
      self.close()
      raise

  def close(self) -> None:
    self._frames.close()
    self._release()


def _video_frames(path: Path) -> tuple[Iterator[tuple[int, Frame]], Callable[[], None]]:
  """Starts ffmpeg and reads the stream header now (so a bad file fails here); frames come lazily.

  Returns:
    the (index, frame) iterator and the function that stops ffmpeg.
  """
  reader = imageio_ffmpeg.read_frames(str(path), pix_fmt='rgb24')
  try:
    width, height = next(reader)['size']
  except (OSError, RuntimeError, StopIteration, KeyError) as err:
    reader.close()
    raise ValueError(f'cannot read video {path}: {err}') from err

  def frames():
    try:
      for index, raw in enumerate(reader):
        image = np.frombuffer(raw, np.uint8).reshape(height, width, 3)  # rgb24 bytes -> [H, W, 3]
        yield index, Frame(image, f'{path.name} frame {index}')
    except (OSError, RuntimeError) as err:
      raise ValueError(f'cannot read video {path}: {err}') from err

  return frames(), reader.close


def _folder_frames(files: list[Path]) -> Iterator[tuple[int, Frame]]:
  for index, path in enumerate(files):
    yield index, Frame(load_rgb(path), path.name)


def iter_frames(video: str | os.PathLike | None = None, folder: str | os.PathLike | None = None,
                stride: int = 1, max_frames: int | None = None) -> FrameStream:
  """Driving frames from exactly one of `video` or `folder`.

  The source is checked when this is called (missing or unreadable input fails here); frames are
  decoded as they are consumed.

  Args:
    video: a video file.
    folder: a folder of images.
    stride: keep source frames 0, stride, 2 * stride, ...
    max_frames: stop after this many kept frames.

  Returns:
    a `FrameStream` of `Frame`s in order (close it when stopping early).
  """
  if (video is None) == (folder is None):
    raise ValueError(f'give exactly one of a video ({video}) or a frame folder ({folder})')
  if stride < 1:
    raise ValueError(f'stride is {stride}, expected >= 1')
  if max_frames is not None and max_frames < 1:
    raise ValueError(f'max_frames is {max_frames}, expected >= 1 or None')
  if video is not None:
    video = Path(video)
    if not video.is_file():
      raise FileNotFoundError(f'video not found: {video}')
    indexed, release = _video_frames(video)
    return FrameStream(indexed, stride, max_frames, release)
  return FrameStream(_folder_frames(list_images(folder)), stride, max_frames)
