"""Fixed random parameters for the maps tests, drawn with numpy.

Flax's `init` runs op by op outside `jit` and compiles a program per
operation, which takes tens of seconds on a small CPU. These tests need
fixed weights, not Flax's initialisers, so parameters are drawn here from
the shapes that `jax.eval_shape` gives.
"""

import jax
import numpy as np

from cganjax import models


def random_like(shapes, seed: int):
  """Fill a tree of shapes: kernels ~ N(0, 1 / fan_in), biases and FiLM
  weights small, normalisation scales near 1."""
  rng = np.random.default_rng(seed)

  def draw(path, shape):
    name = str(getattr(path[-1], 'key', path[-1]))
    if name == 'scale':
      values = 1.0 + 0.05 * rng.standard_normal(shape.shape)
    elif name == 'kernel':
      fan_in = int(np.prod(shape.shape[:-1]))
      values = rng.standard_normal(shape.shape) / np.sqrt(fan_in)
    else:
      values = 0.05 * rng.standard_normal(shape.shape)
    return values.astype(shape.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def gan_params(generator, discriminator, image_size: int, seed: int = 7):
  """(g_params, d_params) of the networks for square images."""
  shapes = jax.eval_shape(
    lambda: models.init_params(
      generator, discriminator, jax.random.key(0), image_size
    )
  )
  g_shapes, d_shapes = shapes
  return random_like(g_shapes, seed), random_like(d_shapes, seed + 1)


def write_random_run(path, config) -> None:
  """Write a run record and a step-0 checkpoint of random weights to `path`.

  The checkpoint is saved with training's own `save_checkpoint`, which is
  all that restoring needs; G's EMA weights equal G's.
  """
  from cganjax import checkpoint, step, train
  from cganjax.data import pipeline

  info = pipeline.dataset_info(config)
  networks = step.create_networks(config, info.attributes)
  abstract = jax.eval_shape(lambda: step.create_train_state(config, networks))
  state = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract)
  g_params, d_params = gan_params(
    networks.generator, networks.discriminator, config.data.image_size
  )
  state = state.replace(
    g_params=g_params, d_params=d_params, g_ema_params=g_params
  )
  checkpoint.write_run_record(
    path, checkpoint.make_run_record(config, info.attributes)
  )
  manager = checkpoint.checkpoint_manager(path, async_save=False)
  try:
    train.save_checkpoint(manager, state, path)
    manager.wait_until_finished()
  finally:
    manager.close()
