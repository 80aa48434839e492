"""The maps folder, format version 1: write incrementally, resume, load.

A maps folder is readable with numpy and json alone:

  index.json          format name and version, method, checkpoint step,
                      the run record's config, the image source and ids,
                      the targets, and the layers with their targets.
                      It also lists every array's file, shape and dtype,
                      and `rows_done`, the count of complete image rows
  images.npy          uint8 [images, H, W, 3], the input images
  parts.npy           uint8 [images, H, W], part label maps in the
                      CelebAMask-HQ order, when the source has them
  generated.npy       uint8 [images, views, H, W, 3], the images that G
                      generated, one per entry of `views`, when a target is
                      computed on one (a target's `view` names its image)
  <layer>.npy         [images, targets, H, W] float16 or float32 maps in
                      [0, 1], for the targets listed under the layer
  <layer>.scale.npy   float32 [images, targets], each map's maximum before
                      normalisation

`<layer>` is the tap name with '/' replaced by '_' (`D/block2` ->
`D_block2`), as index.json's `layer_file_rule` states. A tap holds only the
targets that depend on it, so no array is written for a pair that does not
exist. Each layer entry of index.json gives its `file`, `scale_file` and
`targets` (target names, in the order of the second axis).

Every array is allocated at full size when the folder is created and
filled row by row. `rows_done` in index.json moves forward only after the
rows before it are flushed to disk, so after an interruption the rows below
`rows_done` are complete and writing resumes there.
"""

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from cganjax import checkpoint
from cganjax.errors import InputError

FORMAT_NAME = 'cganjax-maps'
FORMAT_VERSION = 1
INDEX_NAME = 'index.json'
LAYER_FILE_RULE = (
  '<layer>.npy and <layer>.scale.npy, where <layer> is the tap name with '
  "'/' replaced by '_'"
)
IMAGES = 'images'
PARTS = 'parts'
GENERATED = 'generated'


class MapsFolderError(InputError):
  """A folder that is not a readable maps folder of this format."""


def layer_stem(tap: str) -> str:
  """Return the file stem of a tap's maps: `D/block2` -> `D_block2`."""
  return tap.replace('/', '_')


def scale_stem(tap: str) -> str:
  return f'{layer_stem(tap)}.scale'


@dataclasses.dataclass(frozen=True)
class ArraySpec:
  shape: tuple[int, ...]
  dtype: str


def array_specs(
  num_images: int,
  image_shape: tuple[int, int],
  layers: Mapping[str, int],
  dtype: str,
  has_parts: bool,
  num_views: int,
) -> dict[str, ArraySpec]:
  """Describe the arrays of a folder, by file stem.

  `layers` maps each tap name to the count of its targets.
  """
  height, width = image_shape
  specs = {IMAGES: ArraySpec((num_images, height, width, 3), 'uint8')}
  if has_parts:
    specs[PARTS] = ArraySpec((num_images, height, width), 'uint8')
  if num_views:
    specs[GENERATED] = ArraySpec(
      (num_images, num_views, height, width, 3), 'uint8'
    )
  for tap, count in layers.items():
    specs[layer_stem(tap)] = ArraySpec(
      (num_images, count, height, width), dtype
    )
    specs[scale_stem(tap)] = ArraySpec((num_images, count), 'float32')
  return specs


def _read_index(folder: Path) -> dict:
  path = folder / INDEX_NAME
  try:
    index = json.loads(path.read_text())
  except FileNotFoundError:
    raise MapsFolderError(
      f'{path} not found; {folder} is not a maps folder. Pass a folder '
      'written by python -m cganjax.explain.'
    ) from None
  except (OSError, json.JSONDecodeError) as error:
    raise MapsFolderError(f'{path} is unreadable ({error}).') from None
  if index.get('format') != FORMAT_NAME:
    raise MapsFolderError(
      f'{path} is not the index of a maps folder (format '
      f'{index.get("format")!r}, expected {FORMAT_NAME!r}).'
    )
  if index.get('format_version') != FORMAT_VERSION:
    raise MapsFolderError(
      f'{folder} has maps format version {index.get("format_version")}, '
      f'and this version of cganjax reads version {FORMAT_VERSION} only.'
    )
  return index


def _write_index(folder: Path, index: dict) -> None:
  checkpoint.write_atomic(folder / INDEX_NAME, json.dumps(index, indent=2))


class MapsWriter:
  """Fills the arrays of a maps folder row by row.

  Create a folder with `MapsWriter.create`, or reopen an interrupted one
  with `MapsWriter.open`; then call `write_rows` with consecutive rows.
  """

  def __init__(self, folder, index: dict, arrays: dict[str, np.memmap]):
    self.folder = Path(folder)
    self.index = index
    self._arrays = arrays

  @classmethod
  def create(
    cls, folder, index: dict, specs: Mapping[str, ArraySpec]
  ) -> 'MapsWriter':
    """Allocate every array in a new folder and write its index.

    `index` contains the descriptive fields, and this adds the format,
    `arrays`, `num_images` and `rows_done`. The index is written last, so a
    folder with an index has all its arrays.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    num_images = specs[IMAGES].shape[0]
    arrays = {}
    for stem, spec in specs.items():
      if spec.shape[0] != num_images:
        raise ValueError(
          f'array {stem} has {spec.shape[0]} rows, not {num_images}.'
        )
      arrays[stem] = np.lib.format.open_memmap(
        folder / f'{stem}.npy', mode='w+', dtype=spec.dtype, shape=spec.shape
      )
    index = {
      'format': FORMAT_NAME,
      'format_version': FORMAT_VERSION,
      **index,
      'num_images': num_images,
      'layer_file_rule': LAYER_FILE_RULE,
      'arrays': {
        f'{stem}.npy': {'shape': list(spec.shape), 'dtype': spec.dtype}
        for stem, spec in specs.items()
      },
      'rows_done': 0,
    }
    _write_index(folder, index)
    return cls(folder, index, arrays)

  @classmethod
  def open(cls, folder) -> 'MapsWriter':
    """Reopen a folder to write the rows from its `rows_done` on."""
    folder = Path(folder)
    index = _read_index(folder)
    arrays = {}
    for name, spec in index['arrays'].items():
      array = np.lib.format.open_memmap(folder / name, mode='r+')
      _check_array(folder / name, array, spec)
      arrays[name.removesuffix('.npy')] = array
    return cls(folder, index, arrays)

  @property
  def rows_done(self) -> int:
    return self.index['rows_done']

  @property
  def num_images(self) -> int:
    return self.index['num_images']

  def write_rows(self, start: int, rows: Mapping[str, np.ndarray]) -> None:
    """Write rows `start` onwards of every array, then record them as done.

    `rows` maps every array's file stem to its new rows; `start` must equal
    `rows_done`, so that the completed rows stay contiguous.
    """
    if start != self.rows_done:
      raise ValueError(
        f'rows must be written in order: got start={start}, but '
        f'{self.rows_done} rows are done.'
      )
    missing = sorted(set(self._arrays) - set(rows))
    if missing:
      raise ValueError(f'no rows given for arrays {missing}.')
    counts = {len(rows[stem]) for stem in self._arrays}
    if len(counts) != 1:
      raise ValueError(f'arrays got different row counts {sorted(counts)}.')
    count = counts.pop()
    if start + count > self.num_images:
      raise ValueError(
        f'rows {start} to {start + count} exceed the {self.num_images} '
        'images of the folder.'
      )
    for stem, array in self._arrays.items():
      array[start : start + count] = rows[stem]
    for array in self._arrays.values():
      array.flush()
    self.index = {**self.index, 'rows_done': start + count}
    _write_index(self.folder, self.index)

  def close(self) -> None:
    for array in self._arrays.values():
      array.flush()
    self._arrays = {}


def _check_array(path: Path, array: np.ndarray, spec: Mapping) -> None:
  if list(array.shape) != list(spec['shape']) or array.dtype != np.dtype(
    spec['dtype']
  ):
    raise MapsFolderError(
      f'{path} has shape {list(array.shape)} and dtype {array.dtype}, but '
      f'index.json lists {spec["shape"]} and {spec["dtype"]}; the folder is '
      'damaged. Write it again.'
    )


@dataclasses.dataclass(frozen=True)
class MapsFolder:
  """A loaded maps folder; the arrays are read-only memory maps.

  With `allow_partial`, every array is cut to the `rows_done` complete
  rows.
  """

  folder: Path
  index: dict
  arrays: dict[str, np.ndarray]

  @property
  def images(self) -> np.ndarray:
    return self.arrays[IMAGES]

  @property
  def parts(self) -> np.ndarray | None:
    return self.arrays.get(PARTS)

  @property
  def generated(self) -> np.ndarray | None:
    return self.arrays.get(GENERATED)

  @property
  def layers(self) -> list[str]:
    return [layer['name'] for layer in self.index['layers']]

  def layer_entry(self, layer: str) -> dict:
    for entry in self.index['layers']:
      if entry['name'] == layer:
        return entry
    raise KeyError(f'no layer {layer!r}; the folder has {self.layers}.')

  def targets(self, layer: str) -> list[str]:
    """Names of the targets that `layer` holds, in array order."""
    return list(self.layer_entry(layer)['targets'])

  def maps(self, layer: str) -> np.ndarray:
    """Maps [images, targets, H, W] of a layer."""
    return self.arrays[layer_stem(layer)]

  def scales(self, layer: str) -> np.ndarray:
    """Maxima before normalisation [images, targets] of a layer."""
    return self.arrays[scale_stem(layer)]

  def map(self, layer: str, target: str) -> np.ndarray:
    """Maps [images, H, W] of one target on one layer."""
    names = self.targets(layer)
    if target not in names:
      raise KeyError(f'layer {layer} has no target {target!r}; it has {names}.')
    return self.maps(layer)[:, names.index(target)]

  def target_entry(self, target: str) -> dict:
    for entry in self.index['targets']:
      if entry['name'] == target:
        return entry
    raise KeyError(f'no target {target!r}.')

  def view_images(self, target: str) -> np.ndarray:
    """Return the images [images, H, W, 3] that a target's maps explain."""
    view = self.target_entry(target)['view']
    if view == 'real':
      return self.images
    return self.generated[:, self.index['views'].index(view)]


def load(folder, allow_partial: bool = False) -> MapsFolder:
  """Open a maps folder, memory-mapping every array read-only.

  Raises:
    MapsFolderError: not a maps folder, another format version, an array
      that does not match the index, or an incomplete folder without
      `allow_partial`.
  """
  folder = Path(folder)
  index = _read_index(folder)
  done, total = index['rows_done'], index['num_images']
  if done < total and not allow_partial:
    raise MapsFolderError(
      f'{folder} is incomplete: {done} of {total} images are written. '
      'Resume the dump, or load it with allow_partial=True.'
    )
  arrays = {}
  for name, spec in index['arrays'].items():
    path = folder / name
    try:
      array = np.load(path, mmap_mode='r')
    except (OSError, ValueError) as error:
      raise MapsFolderError(f'{path} is unreadable ({error}).') from None
    _check_array(path, array, spec)
    arrays[name.removesuffix('.npy')] = array[:done]
  return MapsFolder(folder, index, arrays)
