"""Batches of `{image, parts, attributes}` for training and evaluation.

A batch is a dict of numpy arrays: `image` uint8 [B, H, W, 3], `parts` uint8
[B, H, W] label maps in the CelebAMask-HQ order, `attributes` uint8 [B, A]
(0 or 1), `index` int64 [B], the example ids, and for the synthetic set
`pose` and `lighting` float32 [B], its variation factors in [-1, 1].

The position in the training stream is the step: the examples of step s are
a pure function of (seed, s), so a resumed run continues where it stopped,
and each process reads only its own slice of every global batch. This holds
for the real sets too (`celeba`, `celebamask_hq`): they are prepared once
into a folder of fixed-size arrays (`cganjax.data.store`) and example ids
are rows of it, so shuffling is the same per-epoch permutation of ids and a
process reads only the rows of its slice.
"""

import dataclasses
import queue
import threading
from collections.abc import Iterator
from pathlib import Path

import jax
import numpy as np
from absl import logging

from cganjax.data import store, synthetic
from cganjax.errors import InputError

# Test example ids start here, so changing `data.num_train` never moves a
# test example into the train split. On a real set, test id
# SYNTHETIC_TEST_OFFSET + i is row i of its test split.
SYNTHETIC_TEST_OFFSET = 1 << 30

REAL_DATASETS = ('celeba', 'celebamask_hq')
# Used when data.prepared_dir is empty.
DEFAULT_PREPARED_DIR = '~/.cache/cganjax/prepared'


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  name: str
  attributes: tuple[str, ...]
  image_size: int
  num_train: int
  num_test: int


def dataset_info(config) -> DatasetInfo:
  """Describe the data set named by `config.data.name`."""
  data = config.data
  if data.name == 'synthetic':
    if data.num_train <= 0 or data.num_test <= 0:
      raise InputError(
        'data.num_train and data.num_test must be positive, got '
        f'{data.num_train} and {data.num_test}.'
      )
    return DatasetInfo(
      name='synthetic',
      attributes=tuple(synthetic.SYNTHETIC_ATTRIBUTES),
      image_size=data.image_size,
      num_train=data.num_train,
      num_test=data.num_test,
    )
  if data.name in REAL_DATASETS:
    folder = ensure_prepared(config)
    info, _ = store.open_store(str(folder))
    counts = info['counts']
    if counts['train'] == 0 or counts['test'] == 0:
      raise InputError(
        f'the prepared data in {folder} has {counts["train"]} train and '
        f'{counts["test"]} test images; both must be positive, so fix the '
        'source or data.num_test and delete that folder.'
      )
    if info['image_size'] != data.image_size:
      raise InputError(
        f'{folder} contains {info["image_size"]}px images but data.image_size='
        f'{data.image_size}; delete that folder so that it is prepared again.'
      )
    return DatasetInfo(
      name=data.name,
      attributes=tuple(info['attributes']),
      image_size=data.image_size,
      num_train=counts['train'],
      num_test=counts['test'],
    )
  known = ', '.join(('synthetic',) + REAL_DATASETS)
  raise InputError(
    f"data.name='{data.name}' is not a known data set; use one of {known}."
  )


def _check_source(config) -> None:
  """Raise InputError naming the source folder and files when they are bad."""
  from cganjax.data import celeba, celebamask_hq

  if config.data.name == 'celeba':
    celeba.check_manual_files(config.data.dir)
  else:
    celebamask_hq.check_layout(config.data.dir)


def prepared_folder(config) -> Path:
  """Return the folder of a real set's prepared data, present or not."""
  data = config.data
  if not data.dir:
    _check_source(config)  # Raises the data set's own empty-dir message.
  name = data.name
  if name == 'celebamask_hq':
    # The test split is the num_test highest ids, so it is part of the name.
    name = f'{name}_test{data.num_test}'
  root = data.prepared_dir or DEFAULT_PREPARED_DIR
  return store.prepared_folder(root, name, data.dir, data.image_size)


def ensure_prepared(config) -> Path:
  """Return the prepared folder of a real set, preparing it if missing.

  Preparation reads the source in `data.dir` once; every later run with the
  same data fields reads the prepared folder alone.
  """
  data = config.data
  folder = prepared_folder(config)
  if (folder / store.INFO_FILE).is_file():
    return folder
  _check_source(config)
  if jax.process_count() > 1:
    raise InputError(
      f'no prepared data at {folder}; prepare it once before a multi-process '
      'run with python -m cganjax.prepare and the same config and data '
      'fields.'
    )
  from cganjax.data import celeba, celebamask_hq

  logging.info('Preparing %s from %s into %s.', data.name, data.dir, folder)
  root = data.prepared_dir or DEFAULT_PREPARED_DIR
  if data.name == 'celeba':
    celeba.prepare(data.dir, root, folder, data.image_size)
  else:
    celebamask_hq.prepare(
      data.dir,
      folder,
      data.image_size,
      data.num_test,
      data.skip_bad_examples,
    )
  return folder


def train_indices(seed: int, num_train: int, step: int, batch_size: int):
  """Return the example ids of global batch `step`.

  Each epoch visits every id once in an order fixed by (seed, epoch).
  """
  start = step * batch_size
  positions = np.arange(start, start + batch_size)
  epochs = positions // num_train
  result = np.empty(batch_size, np.int64)
  for epoch in np.unique(epochs):
    order = np.random.default_rng([seed, int(epoch)]).permutation(num_train)
    selected = epochs == epoch
    result[selected] = order[positions[selected] % num_train]
  return result


def test_indices(start: int, count: int) -> np.ndarray:
  return SYNTHETIC_TEST_OFFSET + np.arange(start, start + count)


def load_examples(config, indices: np.ndarray, overrides=None) -> dict:
  """Render or read the examples with the given ids as one batch."""
  if config.data.name in REAL_DATASETS:
    if overrides:
      raise InputError(
        f'attribute overrides need the synthetic set; {config.data.name} '
        'has no counterfactual images.'
      )
    return read_real_examples(config, indices)
  batch = synthetic.render_batch(
    config.seed, indices, config.data.image_size, overrides=overrides
  )
  return {
    'image': batch['image'],
    'parts': batch['parts'],
    'attributes': batch['attributes'].astype(np.uint8),
    'index': np.asarray(indices, np.int64),
    'pose': batch['pose'],
    'lighting': batch['lighting'],
  }


def read_real_examples(config, indices: np.ndarray) -> dict:
  """Read rows of a prepared real set; ids from the test offset on are test."""
  indices = np.asarray(indices, np.int64)
  info = dataset_info(config)
  folder = prepared_folder(config)
  is_test = indices >= SYNTHETIC_TEST_OFFSET
  rows = np.where(is_test, indices - SYNTHETIC_TEST_OFFSET, indices)

  for split, selected, count in (
    ('train', ~is_test, info.num_train),
    ('test', is_test, info.num_test),
  ):
    bad = rows[selected][(rows[selected] < 0) | (rows[selected] >= count)]
    if bad.size:
      raise InputError(
        f'{config.data.name} has {count} {split} images, so example '
        f'{int(bad[0])} does not exist; request at most {count}.'
      )

  size = config.data.image_size
  batch = {
    'image': np.zeros((len(indices), size, size, 3), np.uint8),
    'parts': np.zeros((len(indices), size, size), np.uint8),
    'attributes': np.zeros((len(indices), len(info.attributes)), np.uint8),
  }
  for split, selected in (('train', ~is_test), ('test', is_test)):
    if not selected.any():
      continue
    values = store.read_rows(folder, split, rows[selected])
    for key in batch:
      batch[key][selected] = values[key]
  batch['index'] = indices
  return batch


def process_slice(batch_size: int, process_index: int, process_count: int):
  """Return the slice of a global batch that one process loads."""
  if batch_size % process_count:
    raise InputError(
      f'train.batch_size={batch_size} is not divisible by the process count '
      f'{process_count}; use a multiple of {process_count}.'
    )
  local = batch_size // process_count
  return slice(process_index * local, (process_index + 1) * local)


def train_batches(
  config,
  start_step: int,
  process_index: int = 0,
  process_count: int = 1,
) -> Iterator[dict]:
  """Yield this process's part of each global training batch from a step."""
  batch_size = config.train.batch_size
  local = process_slice(batch_size, process_index, process_count)
  num_train = dataset_info(config).num_train
  step = start_step
  while True:
    ids = train_indices(config.seed, num_train, step, batch_size)
    yield load_examples(config, ids[local])
    step += 1


def test_batches(config, count: int, batch_size: int) -> Iterator[dict]:
  """Yield the first `count` test examples in batches of `batch_size`."""
  if config.data.name in REAL_DATASETS:
    available = dataset_info(config).num_test
    if count > available:
      raise InputError(
        f'{count} test images requested but {config.data.name} holds out '
        f'{available}; lower sample.num_images (or --num_images), or hold '
        'out more images.'
      )
  for start in range(0, count, batch_size):
    size = min(batch_size, count - start)
    yield load_examples(config, test_indices(start, size))


def prefetch(iterator: Iterator[dict], size: int) -> Iterator[dict]:
  """Run `iterator` in a background thread, keeping `size` items ready.

  An exception raised by the iterator is raised again in the consumer.
  """
  if size <= 0:
    yield from iterator
    return
  items: queue.Queue = queue.Queue(maxsize=size)
  stop = threading.Event()
  sentinel = object()

  def produce():
    try:
      for item in iterator:
        while not stop.is_set():
          try:
            items.put(item, timeout=0.1)
            break
          except queue.Full:
            continue
        if stop.is_set():
          return
      items.put(sentinel)
    except BaseException as error:  # Re-raised in the consumer below.
      items.put(error)

  thread = threading.Thread(target=produce, daemon=True)
  thread.start()
  try:
    while True:
      item = items.get()
      if item is sentinel:
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()
