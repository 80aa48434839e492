"""Training masks in JAX: attribute regions, free-form strokes, whole image.

Attribute regions come from the table in `cganjax.data.parts`, evaluated on
part label maps inside the compiled step, so the host only sends label maps.
The disc dilation here follows the same rule as `parts.attribute_mask`: a
pixel is within radius R of a set when the distance between pixel centres is
at most R = radius * the longer image side.
"""

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cganjax.data import parts

WHOLE, PART, FREE_FORM = 0, 1, 2


def disc_kernel(radius_pixels: float) -> np.ndarray:
  """Binary disc of the given radius in pixels, as a square float32 array."""
  reach = int(np.floor(radius_pixels))
  offsets = np.arange(-reach, reach + 1)
  squared = offsets[:, None] ** 2 + offsets[None, :] ** 2
  return (squared <= radius_pixels**2).astype(np.float32)


def dilate(masks: jax.Array, radius_pixels: float) -> jax.Array:
  """Dilate boolean masks [..., H, W] by a disc of `radius_pixels`."""
  if radius_pixels < 1:
    return masks
  kernel = jnp.asarray(disc_kernel(radius_pixels))
  leading = masks.shape[:-2]
  height, width = masks.shape[-2:]
  flat = masks.reshape((-1, height, width, 1)).astype(jnp.float32)
  spread = jax.lax.conv_general_dilated(
    flat,
    kernel[:, :, None, None],
    window_strides=(1, 1),
    padding='SAME',
    dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
  )
  return (spread[..., 0] > 0.5).reshape(leading + (height, width))


class RegionTable:
  """The attribute-to-parts table as arrays, for a fixed list of attributes."""

  def __init__(
    self,
    attributes: Sequence[str],
    table: Mapping[str, parts.AttributeRegion] | None = None,
  ):
    """`table` defaults to `parts.ATTRIBUTE_REGIONS`."""
    if table is None:
      table = parts.ATTRIBUTE_REGIONS
    self.attributes = tuple(attributes)
    count = len(self.attributes)
    self.parts = np.zeros((count, parts.NUM_CLASSES), bool)
    self.near_base = np.zeros((count, parts.NUM_CLASSES), bool)
    self.near_anchor = np.zeros((count, parts.NUM_CLASSES), bool)
    self.near_radius = np.zeros((count,), np.float64)
    self.has_region = np.zeros((count,), bool)
    for index, name in enumerate(self.attributes):
      region = table.get(name)
      if region is None:
        continue
      self.has_region[index] = True
      for part in region.parts:
        self.parts[index, parts.part_label(part)] = True
      if region.near is not None:
        base, anchors, radius = region.near
        self.near_base[index, parts.part_label(base)] = True
        for part in anchors:
          self.near_anchor[index, parts.part_label(part)] = True
        self.near_radius[index] = radius

  def regions(self, label_maps: jax.Array) -> jax.Array:
    """Return boolean regions [B, A, H, W] of every attribute.

    Attributes without a region in the table get an empty mask.
    """
    image_side = max(label_maps.shape[-2:])
    onehot = jax.nn.one_hot(label_maps, parts.NUM_CLASSES, dtype=jnp.bool_)

    def select(table: np.ndarray) -> jax.Array:
      # [B, H, W, K] x [A, K] -> [B, A, H, W]
      hits = onehot[:, None, :, :, :] & jnp.asarray(table)[None, :, None, None]
      return jnp.any(hits, axis=-1)

    result = select(self.parts)
    if self.near_base.any():
      anchors = select(self.near_anchor)
      base = select(self.near_base)
      near = []
      for index in range(len(self.attributes)):
        radius = self.near_radius[index] * image_side
        if radius > 0:
          near.append(base[:, index] & dilate(anchors[:, index], radius))
        else:
          near.append(jnp.zeros_like(base[:, index]))
      result = result | jnp.stack(near, axis=1)
    return result


def free_form_masks(
  keys: jax.Array, height: int, width: int, max_strokes: int, max_width: float
) -> jax.Array:
  """Draw free-form stroke masks [B, H, W], one per key.

  Each mask is the union of 1 to `max_strokes` thick line segments with end
  points uniform over the image and widths uniform in
  [max_width / 4, max_width] of the image side.
  """

  def one(key):
    count_key, points_key, width_key = jax.random.split(key, 3)
    count = jax.random.randint(count_key, (), 1, max_strokes + 1)
    points = jax.random.uniform(points_key, (max_strokes, 2, 2))
    widths = jax.random.uniform(
      width_key, (max_strokes,), minval=max_width / 4, maxval=max_width
    )
    ys = (jnp.arange(height) + 0.5) / height
    xs = (jnp.arange(width) + 0.5) / width
    grid = jnp.stack(jnp.meshgrid(ys, xs, indexing='ij'), axis=-1)

    start, end = points[:, 0], points[:, 1]
    direction = end - start
    length2 = jnp.maximum(jnp.sum(direction**2, axis=-1), 1e-12)
    relative = grid[None] - start[:, None, None, :]
    t = jnp.sum(relative * direction[:, None, None, :], axis=-1)
    t = jnp.clip(t / length2[:, None, None], 0.0, 1.0)
    closest = start[:, None, None, :] + t[..., None] * direction[:, None, None]
    distance = jnp.linalg.norm(grid[None] - closest, axis=-1)
    strokes = distance <= widths[:, None, None] / 2
    active = jnp.arange(max_strokes) < count
    return jnp.any(strokes & active[:, None, None], axis=0)

  return jax.vmap(one)(keys)
