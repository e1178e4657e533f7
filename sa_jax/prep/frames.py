"""Image and video I/O for `sa-prep`: driving frames from a video or a folder, PNG writers.

Frames are RGB uint8 [H, W, 3]. Videos are decoded with imageio-ffmpeg (any format its ffmpeg reads) and
streamed, so a long video never sits in memory. Folders are read in natural name order (`frame_2` before
`frame_10`, as the reference's `int(name.split('_')[1])` sort for `frame_<i>` names). Images are read as
`cv2.imread` reads them in the reference tools: EXIF orientation applied, alpha dropped, 16-bit samples
reduced to their high byte; modes with no such mapping (floating point, LAB) are refused.
"""

import dataclasses
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import imageio_ffmpeg
import numpy as np
from PIL import Image, ImageOps, PngImagePlugin

from sa_jax import errors, outputs

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.webp')
SOFTWARE = 'Software'   # the PNG text key of the signature of the frames sa-jax writes
WRITER = 'Source'       # the PNG text key naming the tool, on the frames sa-animate writes
EIGHT_BIT_MODES = ('1', 'L', 'LA', 'P', 'PA', 'RGB', 'RGBA', 'RGBX', 'CMYK', 'YCbCr')
SIXTEEN_BIT_MODES = ('I;16', 'I;16L', 'I;16B', 'I;16N', 'I')  # grey; 'I' is 32-bit, accepted in 0..65535


@dataclasses.dataclass(frozen=True)
class Frame:
  """One driving frame.

  Attributes:
    image: RGB uint8 [H, W, 3].
    source: where it came from (`video.mp4 frame 12` or a file name).
  """
  image: np.ndarray
  source: str


def _eight_bit(image: Image.Image, path: Path, what: str) -> Image.Image:
  """`image` in a mode Pillow maps to RGB and L: 16-bit grey (and 'I' within 0..65535) keeps its high
  byte, as `cv2.imread` reduces it and as Pillow reduces 16-bit RGB PNGs when opening them."""
  if image.mode in EIGHT_BIT_MODES:
    return image
  if image.mode not in SIXTEEN_BIT_MODES:
    raise ValueError(f'cannot read {what} {path}: mode {image.mode} is not supported, expected one of '
                     f'{", ".join(EIGHT_BIT_MODES + SIXTEEN_BIT_MODES)}')
  values = np.array(image)  # [H, W] uint16 or int32
  low, high = int(values.min()), int(values.max())
  if low < 0 or high > 65535:
    raise ValueError(f'cannot read {what} {path}: mode {image.mode} values span {low}..{high}, '
                     'expected 0..65535 (16-bit grey)')
  return Image.fromarray((values >> 8).astype(np.uint8))  # [H, W] uint8: mode L


def _load(path: str | os.PathLike, mode: str, what: str) -> np.ndarray:
  """An image file converted to `mode` ('RGB' or 'L') as uint8, EXIF orientation applied."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'{what} not found: {path}')
  try:
    with Image.open(path) as image:
      return np.array(_eight_bit(ImageOps.exif_transpose(image), path, what).convert(mode))
  except (OSError, Image.DecompressionBombError) as err:  # UnidentifiedImageError is an OSError
    raise ValueError(f'cannot read {what} {path}: {errors.first_line(err)}') from err


def check_image(path: str | os.PathLike) -> None:
  """Refuses an image file that cannot be read whole (missing, empty, truncated, corrupt, unsupported
  mode), without decoding it: Pillow's `verify` checks the structure (PNG chunk CRCs)."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'image not found: {path}')
  try:
    with Image.open(path) as image:
      if image.mode not in EIGHT_BIT_MODES + SIXTEEN_BIT_MODES:
        raise ValueError(f'cannot read image {path}: mode {image.mode} is not supported')
      image.verify()
  except (OSError, SyntaxError, Image.DecompressionBombError) as err:   # verify raises SyntaxError on bad CRCs
    raise ValueError(f'cannot read image {path}: {errors.first_line(err)}') from err


def load_rgb(path: str | os.PathLike) -> np.ndarray:
  """An image file as RGB uint8 [H, W, 3] (EXIF orientation applied, alpha dropped as `cv2.imread` does,
  16-bit reduced to 8-bit)."""
  return _load(path, 'RGB', 'image')


def load_mask(path: str | os.PathLike) -> np.ndarray:
  """A mask image file as uint8 [H, W] in 0..255 (colour images become their luma, as `convert('L')`)."""
  return _load(path, 'L', 'mask')


def _signed(writer: str | None = None) -> PngImagePlugin.PngInfo:
  info = PngImagePlugin.PngInfo()
  info.add_text(SOFTWARE, outputs.SIGNATURE)
  if writer is not None:
    info.add_text(WRITER, writer)
  return info


def save_rgb(path: str | os.PathLike, image: np.ndarray, writer: str | None = None) -> None:
  """Writes RGB uint8 [H, W, 3] as PNG, signed (`is_signed`), naming `writer` when given."""
  if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
    raise ValueError(f'image has shape {image.shape} and dtype {image.dtype}, expected uint8 [H, W, 3]')
  Image.fromarray(image, 'RGB').save(path, pnginfo=_signed(writer))


def save_mask(path: str | os.PathLike, mask: np.ndarray) -> None:
  """Writes a uint8 [H, W] mask as a single-channel (mode L) PNG, signed (`is_signed`)."""
  if mask.ndim != 2 or mask.dtype != np.uint8:
    raise ValueError(f'mask has shape {mask.shape} and dtype {mask.dtype}, expected uint8 [H, W]')
  Image.fromarray(mask, 'L').save(path, pnginfo=_signed())


def is_signed(path: str | os.PathLike, writer: str | None = None) -> bool:
  """Whether `path` is a PNG that `save_rgb`/`save_mask` wrote (its Software text chunk), for
  `writer` by that tool; only the header is read."""
  try:
    with Image.open(path) as image:
      return (image.format == 'PNG' and image.info.get(SOFTWARE) == outputs.SIGNATURE
              and (writer is None or image.info.get(WRITER) == writer))
  except (OSError, ValueError):
    return False


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
