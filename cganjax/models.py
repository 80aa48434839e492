"""Generator and discriminator of the masked attribute-conditional GAN.

Layout is NHWC throughout. Images are float32 in [-1, 1], masks are float32 in
[0, 1] with 1 marking the region to generate, and attributes are floats where
0 means absent and 1 present (values beyond 1 ask for a stronger edit).

Both networks expose named taps: each tapped feature goes through
`self.perturb(name, x)`, so that `jax.grad` with respect to the
`perturbations` collection is the gradient with respect to that feature, and
through `self.sow('intermediates', name, x)`, so that the feature itself can
be read back. Tap names seen from outside carry the network's prefix
(`G/enc1`, `D/block2`).
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cganjax.errors import InputError

GENERATOR_PREFIX = 'G'
DISCRIMINATOR_PREFIX = 'D'


def _channels(base: int, maximum: int, level: int) -> int:
  return min(base * 2**level, maximum)


def _group_count(channels: int) -> int:
  for groups in (8, 4, 2):
    if channels % groups == 0:
      return groups
  return 1


class _Tapped(nn.Module):
  """Base class of modules with named taps."""

  def tap(self, name: str, x: jax.Array) -> jax.Array:
    # NOTE: `perturb` is marked experimental in Flax 0.12. It is a no-op
    # unless the caller passes a `perturbations` collection, which the maps
    # code does and the training step does not.
    x = self.perturb(name, x)
    self.sow('intermediates', name, x)
    return x


class FiLM(nn.Module):
  """Feature-wise scale and shift computed from a conditioning vector."""

  @nn.compact
  def __call__(self, x: jax.Array, condition: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    params = nn.Dense(2 * channels, kernel_init=nn.initializers.zeros)(
      condition
    )
    scale, shift = jnp.split(params[:, None, None, :], 2, axis=-1)
    return x * (1.0 + scale) + shift


class ConditionalResBlock(nn.Module):
  """Residual block whose two normalised convolutions are modulated by FiLM."""

  @nn.compact
  def __call__(self, x: jax.Array, condition: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    h = nn.GroupNorm(num_groups=_group_count(channels))(x)
    h = FiLM()(h, condition)
    h = nn.relu(h)
    h = nn.Conv(channels, (3, 3), use_bias=False)(h)
    h = nn.GroupNorm(num_groups=_group_count(channels))(h)
    h = FiLM()(h, condition)
    h = nn.relu(h)
    h = nn.Conv(channels, (3, 3))(h)
    return x + h


class Generator(_Tapped):
  """Masked conditional generator.

  G(image with the mask region blanked, mask, target attributes, noise) ->
  image. The encoder receives only the unmasked context, the bottleneck and the
  decoder are conditioned on the target attributes and the noise, and skip
  connections carry the context to every decoder level. The caller composites
  the output with `composite`; a mask of ones makes G draw a face from noise
  and attributes alone.

  Taps: `enc1` .. `enc{levels}` (encoder outputs, from 1/2 to 1/2**levels of
  the image side), `bottleneck`, and `dec{levels-1}` .. `dec0` (decoder
  outputs back to full size).
  """

  num_attributes: int
  base_channels: int = 32
  max_channels: int = 256
  levels: int = 3
  res_blocks: int = 2
  noise_dim: int = 32

  @nn.compact
  def __call__(
    self,
    image: jax.Array,
    mask: jax.Array,
    attributes: jax.Array,
    noise: jax.Array,
  ) -> jax.Array:
    batch, height, width, _ = image.shape
    signed_attributes = 2.0 * attributes - 1.0
    condition = jnp.concatenate([signed_attributes, noise], axis=-1)
    condition = nn.relu(nn.Dense(4 * self.base_channels)(condition))

    attribute_planes = jnp.broadcast_to(
      signed_attributes[:, None, None, :],
      (batch, height, width, self.num_attributes),
    )
    h = jnp.concatenate([image * (1.0 - mask), mask, attribute_planes], axis=-1)
    h = nn.relu(nn.Conv(self.base_channels, (3, 3))(h))
    skips = [h]
    for level in range(1, self.levels + 1):
      channels = _channels(self.base_channels, self.max_channels, level)
      h = nn.Conv(channels, (4, 4), strides=(2, 2), use_bias=False)(h)
      h = nn.GroupNorm(num_groups=_group_count(channels))(h)
      h = nn.relu(h)
      h = self.tap(f'enc{level}', h)
      skips.append(h)

    skips.pop()
    for _ in range(self.res_blocks):
      h = ConditionalResBlock()(h, condition)
    h = self.tap('bottleneck', h)

    for level in reversed(range(self.levels)):
      channels = _channels(self.base_channels, self.max_channels, level)
      b, hh, ww, c = h.shape
      h = jax.image.resize(h, (b, 2 * hh, 2 * ww, c), method='nearest')
      h = nn.Conv(channels, (3, 3))(h)
      h = jnp.concatenate([h, skips.pop()], axis=-1)
      h = nn.Conv(channels, (3, 3), use_bias=False)(h)
      h = nn.GroupNorm(num_groups=_group_count(channels))(h)
      h = FiLM()(h, condition)
      h = nn.relu(h)
      h = self.tap(f'dec{level}', h)

    return jnp.tanh(nn.Conv(3, (3, 3))(h))

  def tap_names(self) -> list[str]:
    names = [f'enc{level}' for level in range(1, self.levels + 1)]
    names.append('bottleneck')
    names += [f'dec{level}' for level in reversed(range(self.levels))]
    return [f'{GENERATOR_PREFIX}/{name}' for name in names]


class Discriminator(_Tapped):
  """Discriminator with a shared trunk, a realness head and attribute logits.

  Returns `(realness [B], attribute_logits [B, A])`. There is no batch
  statistic anywhere, so an image's outputs do not depend on its batch mates.

  Taps: `block1` .. `block{levels}`, the trunk after each downsampling, from
  1/2 to 1/2**levels of the image side.
  """

  num_attributes: int
  base_channels: int = 32
  max_channels: int = 256
  levels: int = 4

  @nn.compact
  def __call__(self, image: jax.Array) -> tuple[jax.Array, jax.Array]:
    h = nn.leaky_relu(nn.Conv(self.base_channels, (3, 3))(image), 0.2)
    for level in range(1, self.levels + 1):
      channels = _channels(self.base_channels, self.max_channels, level)
      h = nn.leaky_relu(nn.Conv(channels, (3, 3))(h), 0.2)
      h = nn.Conv(channels, (4, 4), strides=(2, 2))(h)
      h = nn.leaky_relu(h, 0.2)
      h = self.tap(f'block{level}', h)

    features = h.reshape((h.shape[0], -1))
    realness = nn.Dense(1, name='realness')(features)[:, 0]
    attribute_logits = nn.Dense(self.num_attributes, name='attributes')(
      features
    )
    return realness, attribute_logits

  def tap_names(self) -> list[str]:
    return [
      f'{DISCRIMINATOR_PREFIX}/block{level}'
      for level in range(1, self.levels + 1)
    ]


def composite(image: jax.Array, mask: jax.Array, generated: jax.Array):
  """Return `mask * generated + (1 - mask) * image`.

  Where the mask is exactly 0 the result is `image` bit for bit, because
  `0 * generated` is an exact zero for finite outputs of the tanh head.
  """
  return mask * generated + (1.0 - mask) * image


def create_models(config, num_attributes: int):
  """Build the generator and discriminator described by `config.model`."""
  model = config.model
  image_size = config.data.image_size
  for name, levels in (
    ('g_levels', model.g_levels),
    ('d_levels', model.d_levels),
  ):
    if image_size % 2**levels:
      raise InputError(
        f'data.image_size={image_size} is not divisible by '
        f'2**model.{name}={2**levels}; choose a size that is a multiple of '
        f'{2**levels} or fewer levels.'
      )
  generator = Generator(
    num_attributes=num_attributes,
    base_channels=model.g_base_channels,
    max_channels=model.g_max_channels,
    levels=model.g_levels,
    res_blocks=model.g_res_blocks,
    noise_dim=model.noise_dim,
  )
  discriminator = Discriminator(
    num_attributes=num_attributes,
    base_channels=model.d_base_channels,
    max_channels=model.d_max_channels,
    levels=model.d_levels,
  )
  return generator, discriminator


def init_params(
  generator: Generator,
  discriminator: Discriminator,
  rng: jax.Array,
  image_size: int,
) -> tuple[dict, dict]:
  """Initialise both networks' parameters for square images of `image_size`."""
  g_rng, d_rng = jax.random.split(rng)
  image = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  mask = jnp.ones((1, image_size, image_size, 1), jnp.float32)
  attributes = jnp.zeros((1, generator.num_attributes), jnp.float32)
  noise = jnp.zeros((1, generator.noise_dim), jnp.float32)
  g_params = generator.init(g_rng, image, mask, attributes, noise)['params']
  d_params = discriminator.init(d_rng, image)['params']
  return g_params, d_params


def tap_names(modules: Sequence[_Tapped]) -> list[str]:
  return [name for module in modules for name in module.tap_names()]
