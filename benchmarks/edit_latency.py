r"""Latency of editing after the model is loaded: one image, and 64 at once.

  python -m benchmarks.edit_latency               # from the repository root
  python -m benchmarks.edit_latency --workdir=/tmp/demo

Without --workdir the model is that of configs/synthetic.py (64x64 images)
with random weights, because the latency does not depend on the weight
values. Three figures, each the median of --repeats timed runs after one
untimed run that compiles:

  one image   `Editor.edit_image` on a 64x64 PNG with one edit. It
              includes reading, the part mask, D's predictions before and
              after, G, mapping back and compositing, but no file writes;
  64 edits    `Editor.edit_image` on the same image with a sweep of 64
              values, which runs G once on a batch of 64;
  G+D on 64   `Editor.generate` and `Editor.predict` on 64 different
              model inputs, the model alone.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from PIL import Image

from cganjax import editing, models, restore, step
from cganjax.data import synthetic
from configs import synthetic as synthetic_config

BATCH = 64


def random_params(shapes, seed: int):
  """Kernels ~ N(0, 1 / fan_in), other parameters ~ N(0, 0.05**2)."""
  rng = np.random.default_rng(seed)

  def draw(path, shape):
    name = str(getattr(path[-1], 'key', path[-1]))
    if name == 'kernel':
      scale = 1.0 / np.sqrt(np.prod(shape.shape[:-1]))
    else:
      scale = 0.05
    return (scale * rng.standard_normal(shape.shape)).astype(shape.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def fresh_editor() -> editing.Editor:
  config = synthetic_config.get_config()
  attributes = synthetic.SYNTHETIC_ATTRIBUTES
  networks = step.create_networks(config, attributes)
  shapes = jax.eval_shape(
    lambda: models.init_params(
      networks.generator,
      networks.discriminator,
      jax.random.key(0),
      config.data.image_size,
    )
  )
  g_params, d_params = (random_params(s, i) for i, s in enumerate(shapes))
  abstract = jax.eval_shape(lambda: step.create_train_state(config, networks))
  state = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract)
  state = state.replace(
    g_params=g_params, d_params=d_params, g_ema_params=g_params
  )
  run = restore.RestoredRun(config, tuple(attributes), networks, 0, state)
  return editing.Editor(run, workdir='(random weights)')


def median_seconds(fn, repeats: int) -> float:
  fn()
  times = []
  for _ in range(repeats):
    started = time.perf_counter()
    fn()
    times.append(time.perf_counter() - started)
  return statistics.median(times)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument(
    '--workdir', help='trained work directory; default: random weights'
  )
  parser.add_argument('--repeats', type=int, default=20)
  args = parser.parse_args()

  if args.workdir:
    editor = editing.Editor.load(args.workdir)
  else:
    editor = fresh_editor()
  size = editor.model_size
  example = synthetic.render(5, 0, size)
  folder = Path(tempfile.mkdtemp())
  Image.fromarray(example['image']).save(folder / 'face.png')
  Image.fromarray(example['parts']).save(folder / 'labels.png')
  annotation = str(folder / 'labels.png')
  mask = 'mouth,u_lip,l_lip'

  def one():
    editor.edit_image(
      folder / 'face.png', mask, ['Smiling=1'], parts_annotation=annotation
    )

  def sweep():
    editor.edit_image(
      folder / 'face.png',
      mask,
      [f'Smiling=0:2:{BATCH}'],
      parts_annotation=annotation,
    )

  images = np.stack(
    [synthetic.render(5, i, size)['image'] for i in range(BATCH)]
  )
  masks = np.zeros((BATCH, size, size), bool)
  masks[:, size // 2 :, size // 4 : 3 * size // 4] = True
  targets = np.ones((BATCH, len(editor.attributes)), np.float32)
  noise = np.repeat(editor.noise(0)[None], BATCH, axis=0)

  def model_only():
    editor.generate(images, masks, targets, noise)
    editor.predict(images)

  print(
    f'{size}x{size} model, {jax.device_count()} {jax.default_backend()} '
    f'device(s), median of {args.repeats} runs after one untimed run'
  )
  for label, fn in (
    ('one image, one edit', one),
    (f'one image, {BATCH} edits (sweep)', sweep),
    (f'G+D on {BATCH} model inputs', model_only),
  ):
    seconds = median_seconds(fn, args.repeats)
    print(f'  {label:32s} {seconds * 1000:8.1f} ms')
  if 'tensorflow' in sys.modules:
    raise SystemExit('TensorFlow was imported, which editing must not do.')


if __name__ == '__main__':
  main()
