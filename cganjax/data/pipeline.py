"""Batches of `{image, parts, attributes}` for training and evaluation.

A batch is a dict of numpy arrays: `image` uint8 [B, H, W, 3], `parts` uint8
[B, H, W] label maps in the CelebAMask-HQ order, `attributes` uint8 [B, A]
(0 or 1), `index` int64 [B], the example ids, and for the synthetic set
`pose` and `lighting` float32 [B], its variation factors in [-1, 1].

The position in the training stream is the step: the examples of step s are
a pure function of (seed, s), so a resumed run continues where it stopped,
and each process reads only its own slice of every global batch.
"""

import dataclasses
import queue
import threading
from collections.abc import Iterator

import numpy as np

from cganjax.data import synthetic
from cganjax.errors import InputError

# Test examples of the synthetic set start here, so changing
# `data.num_train` never moves a test example into the train split.
SYNTHETIC_TEST_OFFSET = 1 << 30


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
  if data.name == 'celeba':
    # TODO: read CelebA through tensorflow-datasets.
    raise InputError(
      "data.name='celeba': the CelebA loader is not part of this version; "
      'train on configs/synthetic.py or configs/synthetic_demo.py.'
    )
  raise InputError(
    f"data.name='{data.name}' is not a known data set; use 'synthetic'."
  )


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
  step = start_step
  while True:
    ids = train_indices(config.seed, config.data.num_train, step, batch_size)
    yield load_examples(config, ids[local])
    step += 1


def test_batches(config, count: int, batch_size: int) -> Iterator[dict]:
  """Yield the first `count` test examples in batches of `batch_size`."""
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
