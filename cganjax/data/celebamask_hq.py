"""CelebAMask-HQ read from its own directory layout, prepared once.

The source folder (`data.dir`) holds, as distributed:

- `CelebA-HQ-img/<i>.jpg`: the face images, 1024x1024.
- `CelebAMask-HQ-mask-anno/<i // 2000>/<i:05d>_<part>.png`: one binary
  mask per part, 512x512, single-channel or RGB. A part absent from a face
  has no file.
- `CelebAMask-HQ-attribute-anno.txt`: the image count, the 40 attribute
  names, then one row per image, `<i>.jpg` and 40 values of 1 or -1.

`prepare` reads every listed image once and merges its part masks into one
label map in `parts.PART_NAMES` order, where a later part overwrites an
earlier one. It centre-crops and resizes both to the training size, the
label map by nearest neighbour only, and writes a prepared folder
(`cganjax.data.store`). Training then reads rows from that folder. The
images with the highest ids form the test split. No TensorFlow is needed.
"""

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from absl import logging
from PIL import Image

from cganjax.data import parts, store
from cganjax.errors import InputError

IMAGE_FOLDER = 'CelebA-HQ-img'
MASK_FOLDER = 'CelebAMask-HQ-mask-anno'
ATTRIBUTE_FILE = 'CelebAMask-HQ-attribute-anno.txt'
MASK_SIZE = 512
IMAGES_PER_MASK_FOLDER = 2000
SKIP_HINT = 'set data.skip_bad_examples=True to skip such examples'


class BadExample(InputError):
  """One example that cannot be read; preparation may skip it."""


def read_attribute_file(path: Path) -> tuple[list[int], np.ndarray]:
  """Parse the attribute file into image ids and a uint8 [N, 40] array.

  Columns come back in `parts.CELEBA_ATTRIBUTES` order whatever order the
  header lists them in. Fields are split on any run of whitespace; 1 maps
  to 1 (true) and -1 to 0 (false).
  """
  path = Path(path)
  try:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
  except OSError as error:
    raise InputError(
      f'cannot read the attribute file {path} ({error.strerror}); point '
      'data.dir at the CelebAMask-HQ folder.'
    ) from None
  if len(lines) < 2:
    raise InputError(
      f'attribute file {path} has {len(lines)} non-empty lines, expected the '
      'image count, the attribute names and one row per image.'
    )
  try:
    count = int(lines[0].split()[0])
  except ValueError:
    raise InputError(
      f'attribute file {path}: line 1 is {lines[0]!r}, expected the image '
      'count.'
    ) from None

  names = lines[1].split()
  expected = parts.CELEBA_ATTRIBUTES
  if sorted(names) != sorted(expected):
    missing = sorted(set(expected) - set(names))
    extra = sorted(set(names) - set(expected))
    raise InputError(
      f'attribute file {path}: line 2 has {len(names)} names, expected the '
      f'{len(expected)} CelebA attributes once each (missing: '
      f'{", ".join(missing) or "none"}; unknown or repeated: '
      f'{", ".join(extra) or "repeated names"}).'
    )
  columns = [names.index(name) for name in expected]

  rows = lines[2:]
  if len(rows) != count:
    raise InputError(
      f'attribute file {path}: line 1 gives {count} images but {len(rows)} '
      'rows follow; fix the count or the rows.'
    )
  ids = []
  values = np.zeros((count, len(expected)), np.uint8)
  for row, line in enumerate(rows):
    line_number = row + 3
    fields = line.split()
    if len(fields) != len(names) + 1:
      raise InputError(
        f'attribute file {path}, line {line_number}: {len(fields)} fields, '
        f'expected a file name and {len(names)} values.'
      )
    ids.append(_image_id(fields[0], path, line_number))
    raw = fields[1:]
    for column, text in enumerate(raw):
      if text not in ('1', '-1'):
        raise InputError(
          f'attribute file {path}, line {line_number}: value {text!r} of '
          f'{names[column]} is not 1 or -1.'
        )
    signs = np.array([text == '1' for text in raw], np.uint8)
    values[row] = signs[columns]
  if len(set(ids)) != len(ids):
    raise InputError(f'attribute file {path} lists an image more than once.')
  return ids, values


def _image_id(file_name: str, path: Path, line_number: int) -> int:
  stem, dot, extension = file_name.rpartition('.')
  if not dot or extension.lower() != 'jpg' or not stem.isdigit():
    raise InputError(
      f'attribute file {path}, line {line_number}: {file_name!r} is not an '
      'image name of the form <number>.jpg.'
    )
  return int(stem)


def part_mask_path(mask_root: Path, image_id: int, part: str) -> Path:
  folder = Path(mask_root) / str(image_id // IMAGES_PER_MASK_FOLDER)
  return folder / f'{image_id:05d}_{part}.png'


def read_part_mask(path: Path) -> np.ndarray:
  """Read a part mask file (single-channel or RGB) as a bool array.

  A pixel is in the part when any colour channel is at least 128, since the
  files hold 0 or 255.
  """
  try:
    with Image.open(path) as picture:
      values = np.asarray(picture.convert('RGB'))
  except OSError as error:
    raise BadExample(
      f'cannot read part mask {path} ({error}); replace the file, or '
      f'{SKIP_HINT}.'
    ) from None
  if values.shape[:2] != (MASK_SIZE, MASK_SIZE):
    height, width = values.shape[:2]
    raise BadExample(
      f'part mask {path} is {width}x{height}, expected '
      f'{MASK_SIZE}x{MASK_SIZE}; replace the file, or {SKIP_HINT}.'
    )
  return values.max(axis=-1) >= 128


def merge_part_masks(masks: Mapping[str, np.ndarray]) -> np.ndarray:
  """Merge per-part bool masks into a uint8 label map.

  Parts are painted in `parts.PART_NAMES` order, so where masks overlap
  the part that comes later in that order wins. The order of the mapping
  does not matter.
  """
  if not masks:
    raise ValueError('merge_part_masks needs at least one part mask')
  shapes = {np.shape(mask) for mask in masks.values()}
  if len(shapes) != 1:
    raise ValueError(f'part masks differ in shape: {sorted(shapes)}')
  label_map = np.zeros(shapes.pop(), np.uint8)
  for name in parts.PART_NAMES:
    if name in masks:
      label_map[np.asarray(masks[name], bool)] = parts.part_label(name)
  unknown = set(masks) - set(parts.PART_NAMES)
  if unknown:
    raise ValueError(f'unknown part names: {sorted(unknown)}')
  return label_map


def read_label_map(mask_root: Path, image_id: int) -> np.ndarray:
  """Read and merge the part masks of one image into a 512x512 label map."""
  masks = {}
  for name in parts.PART_NAMES:
    path = part_mask_path(mask_root, image_id, name)
    if path.is_file():
      masks[name] = read_part_mask(path)
  if not masks:
    folder = part_mask_path(mask_root, image_id, 'skin').parent
    raise BadExample(
      f'image {image_id} has no part mask file {image_id:05d}_<part>.png in '
      f'{folder}; restore its masks, or {SKIP_HINT}.'
    )
  return merge_part_masks(masks)


def read_image(path: Path) -> np.ndarray:
  """Read a JPEG as uint8 [H, W, 3]; a missing or truncated file is bad."""
  if not path.is_file():
    raise BadExample(
      f'image {path} is listed in the attribute file but missing; restore '
      f'it, or {SKIP_HINT}.'
    )
  try:
    with Image.open(path) as picture:
      return np.asarray(picture.convert('RGB'))
  except OSError as error:
    raise BadExample(
      f'cannot decode image {path} ({error}); replace the file, or {SKIP_HINT}.'
    ) from None


def read_example(source_dir: Path, image_id: int, size: int):
  """Return the image and label map of one image at the training size."""
  image = read_image(source_dir / IMAGE_FOLDER / f'{image_id}.jpg')
  label_map = read_label_map(source_dir / MASK_FOLDER, image_id)
  return (
    store.crop_and_resize(image, size),
    store.crop_and_resize_labels(label_map, size),
  )


def check_layout(source_dir: str) -> Path:
  """Raise InputError unless `source_dir` has the CelebAMask-HQ layout."""
  if not source_dir:
    raise InputError(
      'data.dir is empty; set --config.data.dir to the CelebAMask-HQ folder '
      f'(holding {IMAGE_FOLDER}/, {MASK_FOLDER}/ and {ATTRIBUTE_FILE}).'
    )
  folder = Path(source_dir).expanduser()
  expected = (IMAGE_FOLDER, MASK_FOLDER, ATTRIBUTE_FILE)
  missing = [name for name in expected if not (folder / name).exists()]
  if missing:
    raise InputError(
      f'data.dir={source_dir} lacks {", ".join(missing)}; it must hold '
      f'{IMAGE_FOLDER}/, {MASK_FOLDER}/ and {ATTRIBUTE_FILE} as in the '
      'CelebAMask-HQ download.'
    )
  return folder


def prepare(
  source_dir: str,
  folder: Path,
  size: int,
  num_test: int,
  skip_bad_examples: bool = False,
) -> Path:
  """Prepare CelebAMask-HQ at `size` into `folder`; return the folder.

  The `num_test` images with the highest ids form the test split. A bad
  example raises BadExample, or is skipped with a warning when
  `skip_bad_examples` is set.
  """
  source = check_layout(source_dir)
  ids, attributes = read_attribute_file(source / ATTRIBUTE_FILE)
  if not 0 < num_test < len(ids):
    raise InputError(
      f'data.num_test={num_test} must be at least 1 and less than the '
      f'{len(ids)} images listed in {source / ATTRIBUTE_FILE}.'
    )
  order = np.argsort(ids, kind='stable')
  first_test = len(ids) - num_test
  writer = store.StoreWriter(
    folder,
    size,
    parts.CELEBA_ATTRIBUTES,
    {'data': 'celebamask_hq', 'source': str(source.resolve())},
  )
  skipped = []
  try:
    for position, row in enumerate(order):
      image_id = ids[row]
      try:
        image, label_map = read_example(source, image_id, size)
      except BadExample as error:
        if not skip_bad_examples:
          raise
        logging.warning('Skipping image %d: %s', image_id, error)
        skipped.append(f'{image_id}.jpg')
        continue
      split = 'test' if position >= first_test else 'train'
      writer.add(split, f'{image_id}.jpg', image, label_map, attributes[row])
      if (position + 1) % 1000 == 0:
        logging.info('Prepared %d of %d images.', position + 1, len(ids))
  except BaseException:
    writer.abort()
    raise
  store.log_skipped(skipped, len(ids))
  return writer.finish(skipped)
