"""Sample grids from fixed inputs, saved as PNG.

Rows are fixed test images. The first column is the input; each further
column flips one attribute inside that attribute's region (dilated as in
training). The last row draws faces from noise under whole-image masks with
the attributes of the rows above.
"""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from cganjax import masks, models, step


def edit_batch(
  generator: models.Generator,
  g_params,
  image: jax.Array,
  mask: jax.Array,
  target: jax.Array,
  noise: jax.Array,
) -> jax.Array:
  """Edit float images [-1, 1] inside float masks [B, H, W, 1]."""
  raw = generator.apply({'params': g_params}, image, mask, target, noise)
  return models.composite(image, mask, raw)


def flip_targets(source: jax.Array, attribute: int, exclusive: np.ndarray):
  """Flip one attribute of every row, switching off its exclusive partners."""
  flipped = 1.0 - source[:, attribute]
  turns_on = (flipped > 0.5)[:, None] & jnp.asarray(exclusive[attribute])
  target = jnp.where(turns_on, 0.0, source)
  return target.at[:, attribute].set(flipped)


def make_grid_fn(config, networks: step.Networks):
  """Compile (g_params, batch) -> uint8 grid [rows, cols, H, W, 3]."""
  generator = networks.generator
  attributes = networks.regions.attributes
  exclusive = step.exclusive_matrix(attributes)
  dilation = config.masks.part_dilation * config.data.image_size

  @jax.jit
  def grid_fn(g_params, batch):
    image = step.image_to_float(batch['image'])
    source = batch['attributes'].astype(jnp.float32)
    rows = image.shape[0]
    noise_key = jax.random.fold_in(jax.random.key(config.seed), 0x5A3)
    noise = jax.random.normal(noise_key, (rows, generator.noise_dim))
    regions = networks.regions.regions(batch['parts'])

    columns = [image]
    for index in range(len(attributes)):
      region = masks.dilate(regions[:, index], dilation)
      mask = region[..., None].astype(jnp.float32)
      target = flip_targets(source, index, exclusive)
      columns.append(
        edit_batch(generator, g_params, image, mask, target, noise)
      )
    grid = jnp.stack(columns, axis=1)

    count = grid.shape[1]
    picks = jnp.arange(count) % rows
    whole = jnp.ones(image.shape[:3] + (1,), jnp.float32)[picks]
    generated = edit_batch(
      generator,
      g_params,
      image[picks],
      whole,
      source[picks],
      jax.random.normal(jax.random.fold_in(noise_key, 1), noise[picks].shape),
    )
    grid = jnp.concatenate([grid, generated[None]], axis=0)
    return to_uint8(grid)

  return grid_fn


def to_uint8(image: jax.Array) -> jax.Array:
  return jnp.clip(jnp.round((image + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


def save_grid(grid: np.ndarray, path, scale: int = 2) -> None:
  """Tile [rows, cols, H, W, 3] uint8 into one PNG, each tile upscaled."""
  rows, cols, height, width, _ = grid.shape
  border = 2
  canvas = np.full(
    (
      rows * (height + border) + border,
      cols * (width + border) + border,
      3,
    ),
    255,
    np.uint8,
  )
  for r in range(rows):
    for c in range(cols):
      top = border + r * (height + border)
      left = border + c * (width + border)
      canvas[top : top + height, left : left + width] = grid[r, c]
  picture = Image.fromarray(canvas)
  if scale > 1:
    picture = picture.resize(
      (canvas.shape[1] * scale, canvas.shape[0] * scale), Image.NEAREST
    )
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  temporary = path.with_name(f'.{path.name}.tmp')
  picture.save(temporary, format='PNG')
  temporary.replace(path)
