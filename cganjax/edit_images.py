"""Images, masks and part annotations for the editing pipeline, in numpy.

Conventions shared by the editing tool:
  * The reference is the upright image: EXIF orientation applied with
    `PIL.ImageOps.exif_transpose`, then converted to 8-bit RGB. 16-bit
    samples keep their high byte (value // 256), which is also what Pillow
    (checked with 13.0) does when it opens a 16-bit RGB PNG. An alpha
    channel (RGBA, LA, PA, or a palette or colour key with transparency) is
    kept as 8-bit alpha.
  * Geometry: the model input is the centred square crop of side min(H, W),
    resized to the model size with Lanczos, as `maps_dump.read_image` does
    for image folders. The edit is mapped back by resizing G's output to
    the crop side (Lanczos on float values, clipped to [0, 255]) and placing
    it in the crop box. The image must be at least as large as the model
    input on both sides.
  * Mask images: converted to grayscale (Pillow's 'L', ITU-R 601 luma) and
    set where the value is >= MASK_THRESHOLD, so a mask saved as JPEG still
    gives the same binary mask.
  * Feathering of width F pixels: a pixel inside the mask at Euclidean
    distance d (between pixel centres) from the nearest pixel outside it
    gets weight min(d / F, 1). Pixels outside the mask get weight 0, so the
    band lies inside the mask edge and the outside stays the reference's.
"""

import dataclasses
import io
from pathlib import Path

import numpy as np
import scipy.ndimage
from PIL import Image, ImageOps, UnidentifiedImageError

from cganjax.data import parts
from cganjax.errors import InputError

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg')
MASK_THRESHOLD = 128
_SIXTEEN_BIT_MODES = ('I;16', 'I;16L', 'I;16B', 'I;16N', 'I')
_ALPHA_MODES = ('RGBA', 'RGBa', 'LA', 'La', 'PA')


@dataclasses.dataclass(frozen=True)
class Reference:
  """An upright 8-bit RGB image [H, W, 3] with its alpha [H, W] or None."""

  rgb: np.ndarray
  alpha: np.ndarray | None
  mode: str
  exif_transposed: bool

  @property
  def size(self) -> tuple[int, int]:
    """(height, width) in pixels."""
    return self.rgb.shape[0], self.rgb.shape[1]


@dataclasses.dataclass(frozen=True)
class CropBox:
  """The centred square of side `side` at (`top`, `left`) seen by the model."""

  top: int
  left: int
  side: int

  @property
  def slices(self) -> tuple[slice, slice]:
    return (
      slice(self.top, self.top + self.side),
      slice(self.left, self.left + self.side),
    )


def _open_upright(path: Path, what: str) -> tuple[Image.Image, bool, str]:
  """Open and decode an image file fully, with EXIF orientation applied."""
  if not path.is_file():
    raise InputError(f'{what} {path} not found; pass an existing file.')
  try:
    with Image.open(path) as picture:
      picture.load()
      mode = picture.mode
      orientation = picture.getexif().get(0x0112, 1)
      upright = ImageOps.exif_transpose(picture)
  except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
    raise InputError(
      f'cannot read the {what} {path} ({error}); pass a complete PNG or '
      'JPEG file.'
    ) from None
  return upright, orientation not in (0, 1), mode


def _to_eight_bit(picture: Image.Image) -> Image.Image:
  """Convert 16-bit and 32-bit integer grayscale to 'L' by the high byte."""
  if picture.mode not in _SIXTEEN_BIT_MODES:
    return picture
  values = np.asarray(picture).astype(np.int64)
  values = np.clip(values, 0, 65535) // 256
  return Image.fromarray(values.astype(np.uint8), mode='L')


def _has_alpha(picture: Image.Image) -> bool:
  return picture.mode in _ALPHA_MODES or 'transparency' in picture.info


def read_reference(path) -> Reference:
  """Read an image file as the upright 8-bit RGB reference and its alpha.

  Raises:
    InputError: a missing, unreadable or truncated file.
  """
  path = Path(path)
  picture, transposed, mode = _open_upright(path, 'image')
  alpha = None
  if _has_alpha(picture):
    rgba = np.asarray(picture.convert('RGBA'))
    rgb, alpha = rgba[..., :3].copy(), rgba[..., 3].copy()
  else:
    rgb = np.asarray(_to_eight_bit(picture).convert('RGB')).copy()
  return Reference(rgb=rgb, alpha=alpha, mode=mode, exif_transposed=transposed)


def read_mask_image(path, size: tuple[int, int]) -> np.ndarray:
  """Read a mask image as bool [H, W]: grayscale >= MASK_THRESHOLD.

  Raises:
    InputError: an unreadable file, or a mask whose upright size is not
      `size` (height, width).
  """
  path = Path(path)
  picture, _, _ = _open_upright(path, 'mask')
  gray = np.asarray(_to_eight_bit(picture).convert('L'))
  if gray.shape != tuple(size):
    raise InputError(
      f'the mask {path} is {gray.shape[1]}x{gray.shape[0]} pixels but the '
      f'image is {size[1]}x{size[0]}; pass a mask of the image size.'
    )
  return gray >= MASK_THRESHOLD


def crop_box(size: tuple[int, int], model_size: int, name) -> CropBox:
  """Return the centred square crop of an image of `size` (height, width).

  Raises:
    InputError: a side shorter than `model_size`.
  """
  height, width = size
  if min(height, width) < model_size:
    raise InputError(
      f'the image {name} is {width}x{height} pixels, smaller than the '
      f'minimum {model_size}x{model_size} that this model takes; pass a '
      'larger image.'
    )
  side = min(height, width)
  return CropBox(top=(height - side) // 2, left=(width - side) // 2, side=side)


def to_model_input(rgb: np.ndarray, box: CropBox, model_size: int):
  """Crop and resize uint8 RGB [H, W, 3] to the model input, uint8."""
  crop = Image.fromarray(rgb[box.slices])
  crop = crop.resize((model_size, model_size), Image.Resampling.LANCZOS)
  return np.asarray(crop, np.uint8)


def mask_to_model(mask: np.ndarray, box: CropBox, model_size: int):
  """Bool mask [model_size, model_size]: cells that cover any mask pixel.

  G regenerates every cell that touches the mask, so that the mapped-back
  edit covers the whole mask at the original size.
  """
  coverage = Image.fromarray(mask[box.slices].astype(np.float32), mode='F')
  coverage = coverage.resize((model_size, model_size), Image.Resampling.BOX)
  return np.asarray(coverage) > 0


def resize_float(values: np.ndarray, side: int) -> np.ndarray:
  """Resize float [h, w, C] to [side, side, C] with Lanczos, per channel."""
  channels = []
  for c in range(values.shape[-1]):
    plane = Image.fromarray(values[..., c].astype(np.float32), mode='F')
    plane = plane.resize((side, side), Image.Resampling.LANCZOS)
    channels.append(np.asarray(plane))
  return np.stack(channels, axis=-1)


def map_back(generated: np.ndarray, rgb: np.ndarray, box: CropBox):
  """Place G's output [S, S, 3] in [-1, 1] into the crop box of `rgb`.

  Returns float [H, W, 3] in [0, 255]: the edit resized to the crop side
  inside the box and the reference elsewhere.
  """
  values = (np.asarray(generated, np.float32) + 1.0) * 127.5
  edit = rgb.astype(np.float32)
  edit[box.slices] = np.clip(resize_float(values, box.side), 0.0, 255.0)
  return edit


def clip_to_box(mask: np.ndarray, box: CropBox) -> np.ndarray:
  """Clear the mask outside the crop box, which the model input lacks."""
  inside = np.zeros_like(mask)
  inside[box.slices] = mask[box.slices]
  return inside


def feather_weights(mask: np.ndarray, width: float) -> np.ndarray:
  """Blend weights in [0, 1]: min(distance to the outside / width, 1).

  Width 0 gives the hard mask as 0.0 and 1.0. The distance is 0 outside
  the mask, so the weight there is exactly 0. Image borders are not mask
  edges, because the distance transform finds no outside pixel beyond
  them.
  """
  mask = np.asarray(mask, bool)
  if width <= 0:
    return mask.astype(np.float32)
  distance = scipy.ndimage.distance_transform_edt(mask)
  return np.minimum(distance / width, 1.0).astype(np.float32)


def composite(reference: np.ndarray, edit: np.ndarray, weights: np.ndarray):
  """Blend uint8 `reference` and float `edit` [H, W, 3] with weights [H, W].

  Each pixel is round(w * edit + (1 - w) * reference). Where w is 0 the
  result is the reference bit for bit, because it is copied, not computed.
  """
  w = weights[..., None].astype(np.float32)
  mixed = w * edit + (1.0 - w) * reference.astype(np.float32)
  mixed = np.clip(np.round(mixed), 0, 255).astype(np.uint8)
  return np.where(w > 0, mixed, reference)


# Part annotations -------------------------------------------------------


def check_label_map(labels: np.ndarray, path) -> np.ndarray:
  if labels.ndim == 3:
    if not np.all(labels == labels[..., :1]):
      raise InputError(
        f'the label map {path} is a colour image; pass a one-channel PNG '
        'whose values are CelebAMask-HQ labels.'
      )
    labels = labels[..., 0]
  labels = labels.astype(np.int64)
  largest = int(labels.max(initial=0))
  if largest >= parts.NUM_CLASSES:
    raise InputError(
      f'the label map {path} contains the value {largest}, but labels go '
      f'from 0 to {parts.NUM_CLASSES - 1} in the CelebAMask-HQ order; pass '
      'a label map, not a mask or a colour picture.'
    )
  return labels


def read_label_map(path) -> np.ndarray:
  """Read a label-map PNG (values 0..18, palette indices kept) as int64."""
  path = Path(path)
  picture, _, _ = _open_upright(path, 'label map')
  if picture.mode in _SIXTEEN_BIT_MODES:
    labels = np.asarray(picture)
  elif picture.mode in ('L', 'P', 'RGB'):
    labels = np.asarray(picture)
  else:
    labels = np.asarray(picture.convert('L'))
  return check_label_map(labels, path)


def scale_to(mask: np.ndarray, size: tuple[int, int], path) -> np.ndarray:
  """Scale an annotation mask to `size` by nearest neighbour.

  CelebAMask-HQ annotates its 1024x1024 images at 512x512, so an annotation
  of another size with the same aspect ratio is scaled. Any other shape is
  an error.
  """
  if mask.shape == tuple(size):
    return mask
  height, width = mask.shape
  if height * size[1] != width * size[0]:
    raise InputError(
      f'the annotation {path} is {width}x{height} pixels, which does not '
      f'match the {size[1]}x{size[0]} image; pass the annotation of this '
      'image.'
    )
  picture = Image.fromarray(mask.astype(np.uint8))
  picture = picture.resize((size[1], size[0]), Image.Resampling.NEAREST)
  return np.asarray(picture).astype(bool)


def _image_ids(stem: str) -> list[str]:
  # CelebAMask-HQ names image 12 "12.jpg" and its part files "00012_*.png".
  ids = [stem]
  if stem.isdigit():
    ids.append(f'{int(stem):05d}')
  return ids


class PartAnnotations:
  """Part annotations: one label-map PNG or a folder.

  A folder may contain label maps named `<image stem>.png` and
  CelebAMask-HQ part files `<image id>_<part>.png` (binary masks), in any
  subfolder. They are paired with images by file name.
  """

  def __init__(self, path):
    self.path = Path(path)
    self.label_maps: dict[str, Path] = {}
    self.part_files: dict[str, dict[str, Path]] = {}
    if self.path.is_file():
      return
    if not self.path.is_dir():
      raise InputError(
        f'--parts={self.path} not found; pass a label-map PNG or a folder '
        'of part annotations.'
      )
    by_length = sorted(parts.PART_NAMES, key=len, reverse=True)
    for file in sorted(self.path.rglob('*.png')):
      stem = file.stem
      part = next((p for p in by_length if stem.endswith(f'_{p}')), None)
      if part is None:
        self.label_maps.setdefault(stem, file)
      else:
        image_id = stem[: -len(part) - 1]
        self.part_files.setdefault(image_id, {})[part] = file

  def mask(self, image_path: Path, names, size) -> tuple[np.ndarray, str]:
    """Return the union of the named parts for an image, and its source.

    Raises:
      InputError: no annotation for the image, or an unreadable one.
    """
    if self.path.is_file():
      labels = read_label_map(self.path)
      selected = parts.parts_mask(labels, names)
      return scale_to(selected, size, self.path), str(self.path)
    for image_id in _image_ids(image_path.stem):
      if image_id in self.label_maps:
        file = self.label_maps[image_id]
        selected = parts.parts_mask(read_label_map(file), names)
        return scale_to(selected, size, file), str(file)
    for image_id in _image_ids(image_path.stem):
      if image_id in self.part_files:
        return self._union_of_part_files(image_id, names, size)
    raise InputError(
      f'no part annotation for {image_path.name} in {self.path}; add '
      f'{image_path.stem}.png (a label map) or {image_path.stem}_<part>.png '
      'files.'
    )

  def _union_of_part_files(self, image_id, names, size):
    files = self.part_files[image_id]
    union = np.zeros(size, bool)
    for name in names:
      file = files.get(name)
      if file is None:
        continue  # CelebAMask-HQ has no file for a part the face lacks.
      union |= scale_to(read_mask_image_any_size(file), size, file)
    return union, str(self.path / f'{image_id}_<part>.png')


def read_mask_image_any_size(path) -> np.ndarray:
  picture, _, _ = _open_upright(Path(path), 'part mask')
  return np.asarray(_to_eight_bit(picture).convert('L')) >= MASK_THRESHOLD


# Writing ----------------------------------------------------------------


def png_bytes(picture: Image.Image) -> bytes:
  buffer = io.BytesIO()
  picture.save(buffer, format='PNG')
  return buffer.getvalue()


def output_picture(rgb: np.ndarray, alpha: np.ndarray | None) -> Image.Image:
  """RGB, or RGBA with the reference's alpha unchanged."""
  if alpha is None:
    return Image.fromarray(rgb, mode='RGB')
  return Image.fromarray(np.dstack([rgb, alpha]), mode='RGBA')


def strip_picture(reference, weights, output, max_height: int = 512):
  """Input, mask, edit and difference side by side, as an RGB picture.

  The difference is |edit - input| summed over channels and scaled so that
  the largest change is white. Panels taller than `max_height` are shrunk
  with Lanczos, keeping the aspect ratio.
  """
  difference = np.abs(output.astype(np.int32) - reference.astype(np.int32))
  difference = difference.sum(axis=-1).astype(np.float64)
  peak = difference.max()
  if peak > 0:
    difference = difference / peak * 255.0
  gray = np.round(difference).astype(np.uint8)
  mask = np.round(weights * 255.0).astype(np.uint8)
  panels = [
    reference,
    np.repeat(mask[..., None], 3, axis=-1),
    output,
    np.repeat(gray[..., None], 3, axis=-1),
  ]
  height, width = reference.shape[:2]
  if height > max_height:
    width = max(1, round(width * max_height / height))
    height = max_height
  gap = 2
  canvas = Image.new('RGB', (4 * width + 3 * gap, height), (255, 255, 255))
  for i, panel in enumerate(panels):
    picture = Image.fromarray(panel, mode='RGB')
    if picture.size != (width, height):
      picture = picture.resize((width, height), Image.Resampling.LANCZOS)
    canvas.paste(picture, (i * (width + gap), 0))
  return canvas
