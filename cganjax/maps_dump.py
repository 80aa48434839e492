"""Dump the activation maps of a trained run into a maps folder.

`dump_maps` restores a checkpoint, reads images from a split of the run's
data set or from a folder of image files, computes the maps in batches
split over all local devices, and writes them row by row into
`<out>.partial`. When every row is written it draws the overlays into
`overlays/` and renames the folder to `<out>`, so `<out>` contains only
complete dumps. Called again with the same arguments after an interruption,
it resumes from the rows already written.

See `cganjax.maps_folder` for the folder format and `cganjax.maps` for the
targets and methods.
"""

import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import numpy as np
from absl import logging
from PIL import Image

from cganjax import (
  edit_images,
  maps,
  maps_folder,
  maps_overlays,
  restore,
  step,
)
from cganjax.data import pipeline
from cganjax.errors import InputError

DEFAULT_NUM_IMAGES = 16
DEFAULT_BATCH_SIZE = 16
DEFAULT_OVERLAY_IMAGES = 4
SPLITS = ('test', 'train')
DTYPES = ('float16', 'float32')
IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.webp')
PARTIAL_SUFFIX = '.partial'
OVERLAYS_DIR = 'overlays'
# Fields of index.json that must match for a dump to be resumed or reused.
SETTINGS = (
  'workdir',
  'checkpoint_step',
  'method',
  'dtype',
  'targets',
  'source',
  'image_ids',
)


@dataclasses.dataclass(frozen=True)
class ImageSource:
  """Images to explain: a description for index.json, ids and a reader.

  `read(start, stop)` returns the batch of rows [start, stop): `image`
  uint8 [n, H, W, 3], and `parts` and `attributes` when the source has
  them.
  """

  description: dict
  ids: list[str]
  has_parts: bool
  read: Callable[[int, int], dict]


def dataset_source(config, split: str, count: int) -> ImageSource:
  """Read the first `count` examples of a split of the run's data set."""
  info = pipeline.dataset_info(config)
  available = info.num_test if split == 'test' else info.num_train
  if count > available:
    raise InputError(
      f'--num_images={count} exceeds the {available} images of the {split} '
      f'split of {info.name}; use at most {available}.'
    )
  if split == 'test':
    indices = pipeline.test_indices(0, count)
  else:
    indices = np.arange(count, dtype=np.int64)

  def read(start: int, stop: int) -> dict:
    examples = pipeline.load_examples(config, indices[start:stop])
    return {key: examples[key] for key in ('image', 'parts', 'attributes')}

  description = {
    'kind': 'dataset',
    'data': info.name,
    'split': split,
    'seed': config.seed,
    'image_size': info.image_size,
    'indices': [int(i) for i in indices],
  }
  ids = [f'{split}/{int(i)}' for i in indices]
  return ImageSource(description, ids, has_parts=True, read=read)


def read_image(path: Path, size: int) -> np.ndarray:
  """Read an image file as uint8 [size, size, 3]: centre crop, then resize.

  The file is read as the editing tool reads it (`edit_images`): upright
  after its EXIF orientation, 16-bit samples reduced to their high byte,
  alpha dropped.
  """
  rgb = edit_images.read_reference(path).rgb
  height, width = rgb.shape[:2]
  side = min(width, height)
  left, top = (width - side) // 2, (height - side) // 2
  picture = Image.fromarray(rgb[top : top + side, left : left + side])
  picture = picture.resize((size, size), Image.Resampling.LANCZOS)
  return np.asarray(picture, np.uint8)


def folder_source(folder, size: int, count: int | None) -> ImageSource:
  """Image files of a folder (not its subfolders), sorted by name.

  Each image is centre-cropped to a square and resized to `size` x `size`
  with a Lanczos filter. These images have no part maps and no attribute
  labels.
  """
  folder = Path(folder)
  if not folder.is_dir():
    raise InputError(
      f'--images={folder} is not a folder; pass a folder of PNG or JPEG files.'
    )
  paths = sorted(
    p
    for p in folder.iterdir()
    if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
  )
  if not paths:
    raise InputError(
      f'--images={folder} has no image files ({", ".join(IMAGE_SUFFIXES)}).'
    )
  if count is not None:
    if count > len(paths):
      raise InputError(
        f'--num_images={count} exceeds the {len(paths)} images in {folder}.'
      )
    paths = paths[:count]

  def read(start: int, stop: int) -> dict:
    return {'image': np.stack([read_image(p, size) for p in paths[start:stop]])}

  description = {
    'kind': 'files',
    'folder': str(folder.resolve()),
    'paths': [p.name for p in paths],
    'preprocessing': (
      f'centre crop to a square, then resize to {size}x{size} (Lanczos)'
    ),
  }
  return ImageSource(
    description, [p.name for p in paths], has_parts=False, read=read
  )


def describe(run, source, spec, workdir) -> dict:
  """Return the descriptive fields of index.json."""
  attributes = run.attributes
  layers = spec.layers
  return {
    'method': spec.method,
    'dtype': spec.dtype,
    'workdir': str(Path(workdir).resolve()),
    'checkpoint_step': run.step,
    'config': run.config.to_dict(),
    'attributes': list(attributes),
    'source': source.description,
    'image_ids': source.ids,
    'noise': (
      'row r of the dump draws G noise from fold_in(fold_in(key(seed), '
      f'{maps.NOISE_SALT}), r)'
    ),
    'targets': [t.to_json(attributes) for t in spec.targets],
    'views': spec.views,
    'layers': [
      {
        'name': layer.name,
        'file': f'{maps_folder.layer_stem(layer.name)}.npy',
        'scale_file': f'{maps_folder.scale_stem(layer.name)}.npy',
        'targets': [spec.targets[i].name for i in layer.targets],
      }
      for layer in layers
    ],
  }


def _normalised(value):
  """JSON round trip, so that tuples and lists compare equal."""
  return json.loads(json.dumps(value))


def _differences(index: dict, header: dict) -> list[str]:
  return [
    key
    for key in SETTINGS
    if _normalised(index.get(key)) != _normalised(header.get(key))
  ]


def _check_options(
  method, dtype, split, groups, num_latent, num_images, batch_size, overlays
):
  """Raise InputError on a bad option, before anything slow starts."""
  unknown = [group for group in groups if group not in maps.TARGET_GROUPS]
  if unknown or not groups:
    raise InputError(
      f'--targets={",".join(groups)} is not a list of target groups; '
      f'choose from {", ".join(maps.TARGET_GROUPS)}.'
    )
  if num_latent <= 0:
    raise InputError(f'--num_latent={num_latent} must be positive.')
  if method not in maps.METHODS:
    raise InputError(
      f'--method={method} is not a known method; choose from '
      f'{", ".join(sorted(maps.METHODS))}.'
    )
  if dtype not in DTYPES:
    raise InputError(f'--dtype={dtype} must be float16 or float32.')
  if split not in SPLITS:
    raise InputError(f'--split={split} must be test or train.')
  if num_images is not None and num_images <= 0:
    raise InputError(f'--num_images={num_images} must be positive.')
  if batch_size <= 0:
    raise InputError(f'--batch_size={batch_size} must be positive.')
  if overlays < 0:
    raise InputError(f'--overlay_images={overlays} must be 0 or more.')


def _open_writer(out: Path, partial: Path, header: dict, specs):
  """Return (writer, None), or (None, out) when `out` is already done."""
  if out.exists():
    try:
      index = maps_folder.load(out).index
    except maps_folder.MapsFolderError:
      raise InputError(
        f'--out={out} exists and is not a complete maps folder; pass a new '
        '--out or remove it.'
      ) from None
    differences = _differences(index, header)
    if differences:
      raise InputError(
        f'--out={out} already contains maps with other settings '
        f'({", ".join(differences)}); pass a new --out or remove it.'
      )
    return None, out
  if partial.exists():
    try:
      writer = maps_folder.MapsWriter.open(partial)
    except maps_folder.MapsFolderError as error:
      raise InputError(
        f'cannot resume {partial}: {error} Remove it to start again.'
      ) from None
    differences = _differences(writer.index, header)
    if differences:
      raise InputError(
        f'{partial} contains an interrupted dump with other settings '
        f'({", ".join(differences)}); rerun with the same options to resume '
        'it, or remove it.'
      )
    logging.info(
      'Resuming %s: %d of %d images are done.',
      partial,
      writer.rows_done,
      writer.num_images,
    )
    return writer, None
  return maps_folder.MapsWriter.create(partial, header, specs), None


def _rounded_batch_size(batch_size: int, device_count: int) -> int:
  rounded = -(-batch_size // device_count) * device_count
  if rounded != batch_size:
    logging.info(
      'Batch size %d rounded up to %d, a multiple of the %d devices.',
      batch_size,
      rounded,
      device_count,
    )
  return rounded


def _padded(batch: dict, size: int) -> dict:
  """Repeat the last row until the batch has `size` rows."""
  count = len(batch['image'])
  if count == size:
    return batch
  picks = np.minimum(np.arange(size), count - 1)
  return {key: value[picks] for key, value in batch.items()}


def _rows_to_write(batch: dict, outputs: dict, count: int) -> dict:
  rows = {maps_folder.IMAGES: batch['image'][:count]}
  if 'parts' in batch:
    rows[maps_folder.PARTS] = batch['parts'][:count]
  if 'views' in outputs:
    rows[maps_folder.GENERATED] = np.asarray(outputs['views'])[:count]
  for tap, values in outputs['maps'].items():
    rows[maps_folder.layer_stem(tap)] = np.asarray(values)[:count]
    rows[maps_folder.scale_stem(tap)] = np.asarray(outputs['scales'][tap])[
      :count
    ]
  return rows


def _format_seconds(seconds: float) -> str:
  minutes, seconds = divmod(int(round(seconds)), 60)
  hours, minutes = divmod(minutes, 60)
  return f'{hours}:{minutes:02d}:{seconds:02d}'


class _Progress:
  """Logs images done, the rate and the ETA; the first batch, which
  includes compilation, is not timed."""

  def __init__(self, total: int):
    self.total = total
    self.first_done = None
    self.first_time = None
    self.started = time.time()

  def update(self, done: int) -> None:
    now = time.time()
    if self.first_done is None:
      self.first_done, self.first_time = done, now
      logging.info(
        'maps for %d/%d images  first batch, with compilation, took %.1f s',
        done,
        self.total,
        now - self.started,
      )
      return
    rate = (done - self.first_done) / max(now - self.first_time, 1e-9)
    logging.info(
      'maps for %d/%d images  %.2f images/s  ETA %s',
      done,
      self.total,
      rate,
      _format_seconds((self.total - done) / rate),
    )


def dump_maps(
  workdir,
  out,
  *,
  step_number: int | None = None,
  images=None,
  split: str = 'test',
  method: str = 'grad_cam',
  groups: Sequence[str] = ('attributes',),
  attributes: Sequence[str] | None = None,
  num_latent: int = 8,
  num_images: int | None = None,
  batch_size: int = DEFAULT_BATCH_SIZE,
  dtype: str = 'float16',
  overlay_images: int = DEFAULT_OVERLAY_IMAGES,
) -> Path:
  """Write the maps of a run's checkpoint to the maps folder `out`.

  Images come from the folder `images` when given (all its files unless
  `num_images` is set), else from `split` of the run's data set
  (`num_images`, default `DEFAULT_NUM_IMAGES`). G's parameters are the EMA
  ones, as in the sample grids and the evaluator. Returns the path of the
  complete folder. If `out` is already a complete dump with the same
  settings, it is returned unchanged.

  Raises:
    InputError: a bad option, work directory, image folder or output path.
  """
  _check_options(
    method,
    dtype,
    split,
    groups,
    num_latent,
    num_images,
    batch_size,
    overlay_images,
  )
  out = Path(out)
  partial = out.with_name(out.name + PARTIAL_SUFFIX)

  run = restore.restore_run(workdir, step_number)
  if jax.process_count() > 1:
    raise InputError(
      'the maps dump runs in one process; start it without jax.distributed.'
    )
  config = run.config
  logging.info('Restored the checkpoint of step %d from %s.', run.step, workdir)
  if images is not None:
    source = folder_source(images, config.data.image_size, num_images)
  else:
    source = dataset_source(config, split, num_images or DEFAULT_NUM_IMAGES)
  targets = maps.make_targets(
    groups,
    run.attributes,
    selected=attributes,
    has_region=run.networks.regions.has_region,
    num_latent=num_latent,
    bottleneck_channels=maps.bottleneck_channels(config),
    noise_dim=config.model.noise_dim,
  )
  if not source.has_parts and any(t.kind == 'edit' for t in targets):
    raise InputError(
      'edit targets need part label maps to find attribute regions, and an '
      '--images folder has none; drop edits from --targets.'
    )
  spec = maps.make_spec(config, run.networks, targets, method, dtype)
  header = describe(run, source, spec, workdir)
  size = config.data.image_size
  specs = maps_folder.array_specs(
    num_images=len(source.ids),
    image_shape=(size, size),
    layers={layer.name: len(layer.targets) for layer in spec.layers},
    dtype=dtype,
    has_parts=source.has_parts,
    num_views=len(spec.views),
  )

  try:
    writer, done = _open_writer(out, partial, header, specs)
  except OSError as error:
    raise InputError(
      f'cannot write the maps folder {partial} ({error.strerror}); pass a '
      'writable --out.'
    ) from None
  if done is not None:
    logging.info('%s already holds these maps; nothing to do.', done)
    return done

  mesh = step.create_mesh()
  batch_size = _rounded_batch_size(batch_size, mesh.size)
  maps_fn = maps.make_maps_fn(spec, mesh)
  sharding = step.batch_sharding(mesh)
  g_params, d_params = jax.device_put(
    (run.state.g_ema_params, run.state.d_params), step.replicated(mesh)
  )
  total = writer.num_images
  logging.info(
    'Computing %d targets on %d layers with %s for %d of %d images, %d '
    'per batch on %d devices.',
    len(targets),
    len(spec.layers),
    method,
    total - writer.rows_done,
    total,
    batch_size,
    mesh.size,
  )
  progress = _Progress(total)
  pending = None
  # The next batch is read on the host while the devices compute this one.
  for start in range(writer.rows_done, total, batch_size):
    stop = min(start + batch_size, total)
    batch = source.read(start, stop)
    batch['row'] = np.arange(start, stop, dtype=np.int32)
    padded = _padded(batch, batch_size)
    outputs = maps_fn(g_params, d_params, jax.device_put(padded, sharding))
    if pending is not None:
      _finish_batch(writer, progress, *pending)
    pending = (start, stop, batch, outputs)
  if pending is not None:
    _finish_batch(writer, progress, *pending)
  writer.close()

  loaded = maps_folder.load(partial)
  if overlay_images:
    written = maps_overlays.write_overlays(
      loaded, partial / OVERLAYS_DIR, overlay_images
    )
    logging.info('Wrote %d overlay grids.', len(written))
  os.replace(partial, out)
  logging.info('Maps written to %s.', out)
  return out


def _finish_batch(writer, progress, start, stop, batch, outputs) -> None:
  writer.write_rows(start, _rows_to_write(batch, outputs, stop - start))
  progress.update(stop)
