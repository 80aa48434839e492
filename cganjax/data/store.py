"""Prepared data sets: fixed-size arrays at the training resolution.

A prepared folder contains, per split, raw uint8 files read with
`np.memmap`: `<split>_image.u8` [N, S, S, 3], `<split>_parts.u8` [N, S, S]
label maps in the CelebAMask-HQ order and `<split>_attributes.u8` [N, A]
(0 or 1). `info.json` gives the counts, the image size, the attribute
names, the example names and the source folder. Rows are read by index,
so any example of any step is a cheap random access, and a resumed or
multi-process run reads only its own rows. The writer fills FOLDER.partial
and renames it to FOLDER when done, so a folder that exists is complete.

Nothing here imports TensorFlow.
"""

import functools
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
from absl import logging
from PIL import Image

from cganjax.errors import InputError

FORMAT_VERSION = 1
SPLITS = ('train', 'test')
INFO_FILE = 'info.json'


def prepared_folder(
  prepared_dir: str, name: str, source_dir: str, size: int
) -> Path:
  """Return the folder of a data set prepared from `source_dir` at `size`.

  The name includes a hash of the absolute source path, so two source
  folders (a sample and the full set) never share a prepared folder.
  """
  source = str(Path(source_dir).expanduser().resolve())
  digest = hashlib.sha256(source.encode()).hexdigest()[:10]
  root = Path(prepared_dir).expanduser()
  return root / f'{name}_{size}px_{digest}'


def centre_crop_box(width: int, height: int) -> tuple[int, int, int, int]:
  """Return the (left, top, right, bottom) box of the centred square."""
  side = min(width, height)
  left = (width - side) // 2
  top = (height - side) // 2
  return left, top, left + side, top + side


def crop_and_resize(image: np.ndarray, size: int) -> np.ndarray:
  """Centre-crop a uint8 [H, W, 3] image to a square, then resize it.

  The resize is bicubic with PIL's antialiasing, so downscaling averages
  over the source pixels instead of skipping them.
  """
  height, width = image.shape[:2]
  box = centre_crop_box(width, height)
  picture = Image.fromarray(np.ascontiguousarray(image), 'RGB')
  picture = picture.resize((size, size), Image.Resampling.BICUBIC, box=box)
  return np.asarray(picture, np.uint8)


def nearest_indices(source: int, size: int) -> np.ndarray:
  """Return the source index of each of `size` output pixels, nearest.

  Output pixel i has its centre at (i + 0.5) * source / size in source
  pixels, and takes the source pixel that contains that point.
  """
  centres = (np.arange(size) + 0.5) * source / size
  return np.minimum(np.floor(centres).astype(np.int64), source - 1)


def crop_and_resize_labels(label_map: np.ndarray, size: int) -> np.ndarray:
  """Centre-crop a [H, W] label map, then resize it by nearest neighbour.

  Every output value is a value of the input, so no new label appears.
  """
  height, width = label_map.shape
  left, top, right, bottom = centre_crop_box(width, height)
  square = label_map[top:bottom, left:right]
  rows = nearest_indices(square.shape[0], size)
  cols = nearest_indices(square.shape[1], size)
  return square[rows[:, None], cols[None, :]]


class StoreWriter:
  """Write the rows of one prepared folder, then publish it by a rename."""

  def __init__(self, folder: Path, size: int, attributes, description: dict):
    self.folder = Path(folder)
    self.partial = self.folder.with_name(self.folder.name + '.partial')
    self.size = size
    self.attributes = tuple(attributes)
    self.description = description
    if self.partial.exists():
      shutil.rmtree(self.partial)
    self.partial.mkdir(parents=True)
    self.names = {split: [] for split in SPLITS}
    self.files = {
      (split, field): open(self.partial / f'{split}_{field}.u8', 'wb')
      for split in SPLITS
      for field in ('image', 'parts', 'attributes')
    }

  def add(self, split: str, name: str, image, parts, attributes) -> None:
    """Append one example; arrays must already have the store's shapes."""
    size = self.size
    expected = {
      'image': (image, (size, size, 3)),
      'parts': (parts, (size, size)),
      'attributes': (attributes, (len(self.attributes),)),
    }
    for field, (array, shape) in expected.items():
      array = np.asarray(array)
      if array.shape != shape or array.dtype != np.uint8:
        raise ValueError(
          f'{field} of {name} is {array.dtype}{list(array.shape)}, '
          f'expected uint8{list(shape)}'
        )
      self.files[split, field].write(np.ascontiguousarray(array).tobytes())
    self.names[split].append(name)

  def finish(self, skipped: list[str]) -> Path:
    """Write info.json and rename the folder into place."""
    for file in self.files.values():
      file.close()
    info = {
      'format_version': FORMAT_VERSION,
      'image_size': self.size,
      'attributes': list(self.attributes),
      'counts': {split: len(self.names[split]) for split in SPLITS},
      'names': self.names,
      'skipped': skipped,
      **self.description,
    }
    with open(self.partial / INFO_FILE, 'w') as file:
      json.dump(info, file, indent=1)
    if self.folder.exists():
      shutil.rmtree(self.folder)
    os.replace(self.partial, self.folder)
    return self.folder

  def abort(self) -> None:
    for file in self.files.values():
      file.close()
    shutil.rmtree(self.partial, ignore_errors=True)


@functools.lru_cache(maxsize=8)
def open_store(folder: str) -> tuple[dict, dict]:
  """Open a prepared folder: its info and memory-mapped arrays per split."""
  path = Path(folder)
  try:
    with open(path / INFO_FILE) as file:
      info = json.load(file)
  except (OSError, ValueError) as error:
    raise InputError(
      f'cannot read the prepared data in {path} ({error}); delete the '
      'folder so that it is prepared again.'
    ) from None
  if info.get('format_version') != FORMAT_VERSION:
    raise InputError(
      f'{path} contains prepared data of format '
      f'{info.get("format_version")}, expected {FORMAT_VERSION}; delete the '
      'folder so that it is prepared again.'
    )
  size = info['image_size']
  shapes = {
    'image': (size, size, 3),
    'parts': (size, size),
    'attributes': (len(info['attributes']),),
  }
  arrays = {}
  for split in SPLITS:
    count = info['counts'][split]
    arrays[split] = {}
    for field, shape in shapes.items():
      file = path / f'{split}_{field}.u8'
      if count == 0:
        arrays[split][field] = np.zeros((0,) + shape, np.uint8)
        continue
      arrays[split][field] = np.memmap(
        file, dtype=np.uint8, mode='r', shape=(count,) + shape
      )
  return info, arrays


def read_rows(folder: Path, split: str, rows: np.ndarray) -> dict:
  """Return `image`, `parts` and `attributes` of the given rows of a split."""
  _, arrays = open_store(str(folder))
  rows = np.asarray(rows, np.int64)
  # Sorted reads touch the file in order; the result keeps the given order.
  order = np.argsort(rows, kind='stable')
  result = {}
  for field, array in arrays[split].items():
    values = np.empty((len(rows),) + array.shape[1:], np.uint8)
    values[order] = array[rows[order]]
    result[field] = values
  return result


def log_skipped(skipped: list[str], total: int) -> None:
  if skipped:
    logging.warning(
      'Skipped %d of %d examples during preparation; see the warnings '
      'above for each.',
      len(skipped),
      total,
    )
