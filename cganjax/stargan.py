"""StarGAN (Choi et al., CVPR 2018) in Flax, with its WGAN-GP training step.

Selected with `model.arch = 'stargan'` (configs/stargan.py), so that the same
network can be trained here and timed against StarGAN's own PyTorch code.
Written from the paper's description of the networks and losses:

Generator, NHWC, instance norm with a learned scale and shift after every
convolution but the last, ReLU:
  the target labels tiled over the image and concatenated to it,
  7x7 conv to C, two 4x4 stride-2 convs (2C, 4C),
  residual blocks of two 3x3 convs at 4C (the second one without ReLU),
  two 4x4 stride-2 transposed convs (2C, C), 7x7 conv to 3, tanh.
Discriminator, no normalisation, leaky ReLU with slope 0.01:
  `levels` 4x4 stride-2 convs from C channels, doubling at each,
  a 3x3 conv to 1 channel (realness of each patch),
  a conv to the attribute logits whose kernel covers the final feature map
  (image_size / 2**levels on a side).

Losses, with x the real image, c its labels and c' the target labels:
  D: -mean D_src(x) + mean D_src(G(x, c')) + w_cls * BCE(D_cls(x), c)
     + w_gp * mean_b (||grad_xhat sum D_src(xhat_b)||_2 - 1)^2,
     xhat = a x + (1 - a) G(x, c'), a ~ U(0, 1) per example;
  G: -mean D_src(G(x, c')) + w_cls * BCE(D_cls(G(x, c')), c')
     + w_rec * mean |x - G(G(x, c'), c)|,
BCE summed over attributes and averaged over the batch
(`losses.attribute_loss`). One step updates D once and then G once with the
updated D, plus the EMA copy of G that the sample grids use; with
`train.n_critic` above 1, G is updated only on every n_critic-th step.

The modules keep the call signature of `models.Generator` and
`models.Discriminator` so that the training loop, the sample grids and the
checkpoints work unchanged: G takes (image, mask, attributes, noise) and
ignores the mask and the noise (its noise_dim is 0), and it reads only the
configured attribute columns of the data set's attribute vector. D returns
(realness [B, h, w] per patch, attribute logits [B, A]).
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from cganjax import losses, models, step
from cganjax.errors import InputError

ARCH = 'stargan'
LEAKY_SLOPE = 0.01
NORM_EPSILON = 1e-5  # Instance norm epsilon, as in PyTorch's InstanceNorm2d.


STRIDED_CONVS = ('lax', 'stride_free')
_NHWC = ('NHWC', 'HWIO', 'NHWC')


def space_to_depth(x: jax.Array) -> jax.Array:
  """[B, H, W, C] -> [B, H/2, W/2, 4C], channels ordered (row, column, c)."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h // 2, w // 2, 4 * c)


class DownConv(nn.Module):
  """4x4 convolution with stride 2 and padding 1: H -> H / 2.

  With `strided_conv='stride_free'` it runs as one matrix product. Kernel
  row 2q + d meets padded input row 2(o + q) + d, which is row o + q,
  sub-row d after space-to-depth. So the 2x2 neighbourhoods of the
  space-to-depth input, side by side, times the folded kernel give the
  output. The result and the FLOPs are those of the strided convolution,
  but XLA's CPU backend computes the first and second derivatives of a
  matrix product much faster than those of a strided convolution (see
  BENCHMARKS.md).
  The parameters are the same either way: a [4, 4, in, out] kernel and an
  optional bias.
  """

  features: int
  use_bias: bool = True
  strided_conv: str = 'stride_free'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    kernel = self.param(
      'kernel',
      nn.initializers.lecun_normal(),
      (4, 4, channels, self.features),
    )
    if self.strided_conv == 'lax':
      y = jax.lax.conv_general_dilated(
        x, kernel, (2, 2), ((1, 1), (1, 1)), dimension_numbers=_NHWC
      )
    else:
      blocks = space_to_depth(jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))))
      _, rows, columns, _ = blocks.shape
      # The 2x2 taps side by side on the channel axis: (q_row, q_col,
      # d_row, d_col, c), the order of the folded kernel below.
      patches = jnp.concatenate(
        [
          blocks[:, q_row : rows - 1 + q_row, q_col : columns - 1 + q_col]
          for q_row in (0, 1)
          for q_col in (0, 1)
        ],
        axis=-1,
      )
      # (q_row, d_row, q_col, d_col, c, f) -> (q_row, q_col, d_row, d_col,
      # c, f), matching the channel order of space_to_depth.
      folded = kernel.reshape(2, 2, 2, 2, channels, self.features)
      folded = folded.transpose(0, 2, 1, 3, 4, 5)
      folded = folded.reshape(16 * channels, self.features)
      y = jnp.dot(patches, folded)
    if self.use_bias:
      y = y + self.param('bias', nn.initializers.zeros, (self.features,))
    return y


class UpConv(nn.Module):
  """4x4 transposed convolution with stride 2 and padding 1: H -> 2H.

  The output is that of `jax.lax.conv_transpose(x, kernel, (2, 2),
  ((2, 2), (2, 2)))`, a PyTorch ConvTranspose2d with kernel 4, stride 2 and
  padding 1 up to the kernel's orientation. With `strided_conv=
  'stride_free'` each of the 4 output phases (even or odd row and column)
  is a 2x2 stride-1 convolution of the input with the kernel taps of that
  phase: output row 2m takes input rows m - 1 and m with kernel rows 0
  and 2, output row 2m + 1 takes rows m and m + 1 with kernel rows 1 and 3.
  This skips the zeros that the stride dilation inserts, so the FLOPs are
  the transposed convolution's, and it avoids the slow weight gradient of
  an input-dilated convolution on XLA's CPU backend.
  """

  features: int
  strided_conv: str = 'stride_free'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    kernel = self.param(
      'kernel',
      nn.initializers.lecun_normal(),
      (4, 4, channels, self.features),
    )
    if self.strided_conv == 'lax':
      return jax.lax.conv_transpose(
        x, kernel, (2, 2), ((2, 2), (2, 2)), dimension_numbers=_NHWC
      )
    b, h, w, _ = x.shape
    padding = {0: (1, 0), 1: (0, 1)}
    rows = []
    for row in (0, 1):
      columns = []
      for column in (0, 1):
        taps = kernel[row::2, column::2]
        columns.append(
          jax.lax.conv_general_dilated(
            x,
            taps,
            (1, 1),
            (padding[row], padding[column]),
            dimension_numbers=_NHWC,
          )
        )
      rows.append(jnp.stack(columns, axis=3))  # [B, H, W, 2, F]
    y = jnp.stack(rows, axis=2)  # [B, H, 2, W, 2, F]
    return y.reshape(b, 2 * h, 2 * w, self.features)


def _instance_norm() -> nn.Module:
  return nn.InstanceNorm(epsilon=NORM_EPSILON, use_scale=True, use_bias=True)


class ResidualBlock(nn.Module):
  """x + IN(conv3x3(ReLU(IN(conv3x3(x))))), channels unchanged."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    h = nn.Conv(channels, (3, 3), padding=1, use_bias=False)(x)
    h = nn.relu(_instance_norm()(h))
    h = nn.Conv(channels, (3, 3), padding=1, use_bias=False)(h)
    return x + _instance_norm()(h)


class Generator(models._Tapped):
  """StarGAN's generator: image and target labels in, translated image out.

  `attribute_columns` picks the labels it is conditioned on out of the
  attribute vector it is given (the data set's, `num_attributes` wide).
  Convolutions followed by instance norm have no bias, which the norm would
  remove. Taps: `down1`, `down2`, `bottleneck`, `up1`, `up2`.
  """

  num_attributes: int
  attribute_columns: tuple[int, ...]
  base_channels: int = 64
  res_blocks: int = 6
  strided_conv: str = 'stride_free'  # One of STRIDED_CONVS.
  noise_dim: int = 0  # No noise input; kept for the shared interface.

  @nn.compact
  def __call__(
    self,
    image: jax.Array,
    mask: jax.Array,
    attributes: jax.Array,
    noise: jax.Array,
  ) -> jax.Array:
    del mask, noise  # StarGAN translates the whole image; callers composite.
    batch, height, width, _ = image.shape
    labels = attributes[:, jnp.asarray(self.attribute_columns)]
    planes = jnp.broadcast_to(
      labels[:, None, None, :].astype(image.dtype),
      (batch, height, width, labels.shape[-1]),
    )
    h = jnp.concatenate([image, planes], axis=-1)
    channels = self.base_channels
    h = nn.Conv(channels, (7, 7), padding=3, use_bias=False)(h)
    h = nn.relu(_instance_norm()(h))
    for level in (1, 2):
      channels *= 2
      h = DownConv(channels, use_bias=False, strided_conv=self.strided_conv)(h)
      h = nn.relu(_instance_norm()(h))
      h = self.tap(f'down{level}', h)

    for _ in range(self.res_blocks):
      h = ResidualBlock()(h)
    h = self.tap('bottleneck', h)

    for level in (1, 2):
      channels //= 2
      h = UpConv(channels, strided_conv=self.strided_conv)(h)
      h = nn.relu(_instance_norm()(h))
      h = self.tap(f'up{level}', h)

    return jnp.tanh(nn.Conv(3, (7, 7), padding=3, use_bias=False)(h))

  def tap_names(self) -> list[str]:
    names = ['down1', 'down2', 'bottleneck', 'up1', 'up2']
    return [f'{models.GENERATOR_PREFIX}/{name}' for name in names]


class Discriminator(models._Tapped):
  """StarGAN's PatchGAN discriminator with an attribute head.

  Returns `(realness [B, h, w], attribute_logits [B, A])`, where h = w =
  image_size / 2**levels. Taps: `block1` .. `block{levels}`.
  """

  num_attributes: int
  base_channels: int = 64
  levels: int = 6
  strided_conv: str = 'stride_free'  # One of STRIDED_CONVS.

  @nn.compact
  def __call__(self, image: jax.Array) -> tuple[jax.Array, jax.Array]:
    h = image
    for level in range(1, self.levels + 1):
      channels = self.base_channels * 2 ** (level - 1)
      h = DownConv(channels, strided_conv=self.strided_conv)(h)
      h = nn.leaky_relu(h, LEAKY_SLOPE)
      h = self.tap(f'block{level}', h)

    realness = nn.Conv(1, (3, 3), padding=1, use_bias=False, name='realness')(h)
    side = h.shape[1:3]
    logits = nn.Conv(
      self.num_attributes,
      side,
      padding='VALID',
      use_bias=False,
      name='attributes',
    )(h)
    return realness[..., 0], logits.reshape((h.shape[0], -1))

  def tap_names(self) -> list[str]:
    return [
      f'{models.DISCRIMINATOR_PREFIX}/block{level}'
      for level in range(1, self.levels + 1)
    ]


def is_stargan(config) -> bool:
  return config.model.get('arch', 'cganjax') == ARCH


def attribute_columns(config, attributes) -> tuple[int, ...]:
  """Return the columns of `config.model.attributes` in the data's labels."""
  names = tuple(config.model.attributes)
  if not names:
    return tuple(range(len(attributes)))
  missing = [name for name in names if name not in attributes]
  if missing:
    raise InputError(
      f'model.attributes names {", ".join(missing)}, which the data set '
      f'lacks; choose from {", ".join(attributes)}.'
    )
  return tuple(attributes.index(name) for name in names)


def create_models(config, attributes) -> tuple[Generator, Discriminator]:
  """Build StarGAN's G and D for the data set's attribute names."""
  model = config.model
  size = config.data.image_size
  if size % 2**model.d_levels or size % 4:
    raise InputError(
      f'data.image_size={size} is not divisible by 2**model.d_levels='
      f'{2**model.d_levels} (and by 4 for G); choose a multiple of '
      f'{max(2**model.d_levels, 4)} or fewer levels.'
    )
  if model.strided_conv not in STRIDED_CONVS:
    raise InputError(
      f'model.strided_conv={model.strided_conv!r} is not supported; use one '
      f'of {", ".join(STRIDED_CONVS)}.'
    )
  columns = attribute_columns(config, attributes)
  generator = Generator(
    num_attributes=len(attributes),
    attribute_columns=columns,
    base_channels=model.g_base_channels,
    res_blocks=model.g_res_blocks,
    strided_conv=model.strided_conv,
  )
  discriminator = Discriminator(
    num_attributes=len(columns),
    base_channels=model.d_base_channels,
    levels=model.d_levels,
    strided_conv=model.strided_conv,
  )
  return generator, discriminator


def validate_loss_config(config) -> None:
  """Raise a one-line InputError for StarGAN settings the step cannot use."""
  for key, value in (
    ('loss.gp.weight', config.loss.gp.weight),
    ('loss.attribute.weight', config.loss.attribute.weight),
    ('loss.attribute.d_weight', config.loss.attribute.d_weight),
    ('loss.reconstruction.weight', config.loss.reconstruction.weight),
  ):
    if not value >= 0:
      raise InputError(f'{key}={value} is invalid; use a weight >= 0.')
  n_critic = config.train.n_critic
  if not (isinstance(n_critic, int) and n_critic >= 1):
    raise InputError(
      f'train.n_critic={n_critic!r} is invalid; use an integer >= 1 (D '
      'updates per G update).'
    )


def gradient_penalty(realness_fn, images: jax.Array) -> jax.Array:
  """WGAN-GP term mean_b (||d sum realness(x_b) / d x_b||_2 - 1)^2."""
  gradients = jax.grad(lambda x: jnp.sum(realness_fn(x)))(images)
  norms = jnp.sqrt(jnp.sum(jnp.square(gradients), axis=(1, 2, 3)))
  return jnp.mean(jnp.square(norms - 1.0))


def draw_targets(keys: jax.Array, source: jax.Array) -> jax.Array:
  """Give each example the labels of a random example of the global batch.

  Borrowing whole label vectors keeps label combinations that occur in the
  data, such as one hair colour at a time. The choice depends only on the
  example's key, so it does not change with the device count.
  """
  everyone = jax.lax.all_gather(source, step.DATA_AXIS, tiled=True)
  picks = jax.vmap(
    lambda key: jax.random.randint(key, (), 0, everyone.shape[0])
  )(keys)
  return everyone[picks]


def local_step(config, networks, feature_params, state, batch):
  """One D update, then one G update, on this device's slice of the batch.

  `feature_params` is unused: StarGAN has no feature losses.
  """
  del feature_params
  generator, discriminator = networks.generator, networks.discriminator
  loss_config = config.loss
  columns = jnp.asarray(generator.attribute_columns)
  local_size = batch['image'].shape[0]
  offset = jax.lax.axis_index(step.DATA_AXIS) * local_size
  step_key = jax.random.fold_in(jax.random.key(config.seed), state.step)
  keys = step.example_keys(step_key, offset + jnp.arange(local_size))
  target_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
  mix_keys = jax.vmap(lambda k: jax.random.fold_in(k, 2))(keys)

  image = step.image_to_float(batch['image'])
  full_source = batch['attributes'].astype(jnp.float32)
  source = full_source[:, columns]
  target = draw_targets(target_keys, source)
  full_target = full_source.at[:, columns].set(target)
  no_mask = jnp.ones(image.shape[:3] + (1,), image.dtype)
  no_noise = jnp.zeros((local_size, 0), image.dtype)

  def translate(g_params, x, labels):
    return generator.apply({'params': g_params}, x, no_mask, labels, no_noise)

  fake = jax.lax.stop_gradient(translate(state.g_params, image, full_target))
  mix = jax.vmap(lambda k: jax.random.uniform(k))(mix_keys)[:, None, None, None]
  interpolates = mix * image + (1.0 - mix) * fake

  def d_loss_fn(d_params):
    def realness_fn(x):
      return discriminator.apply({'params': d_params}, x)[0]

    real_score, real_logits = discriminator.apply({'params': d_params}, image)
    fake_score, _ = discriminator.apply({'params': d_params}, fake)
    adversarial = jnp.mean(fake_score) - jnp.mean(real_score)
    attribute = losses.attribute_loss(real_logits, source)
    penalty = gradient_penalty(realness_fn, interpolates)
    total = step.global_mean(
      adversarial
      + loss_config.attribute.d_weight * attribute
      + loss_config.gp.weight * penalty
    )
    accuracy = jnp.mean((real_logits > 0) == (source > 0.5))
    return total, {
      'loss/D/total': total,
      'loss/D/adversarial': adversarial,
      'loss/D/attribute': attribute,
      'loss/D/gradient_penalty': penalty,
      'scores/real': jnp.mean(real_score),
      'scores/fake': jnp.mean(fake_score),
      'accuracy/D/real_attributes': accuracy,
    }

  d_params, d_opt_state, d_finite, d_metrics = step.guarded_update(
    d_loss_fn, networks.d_optimizer, state.d_params, state.d_opt_state
  )
  d_metrics = jax.lax.pmean(d_metrics, step.DATA_AXIS)

  def g_loss_fn(g_params):
    translated = translate(g_params, image, full_target)
    score, logits = discriminator.apply({'params': d_params}, translated)
    adversarial = -jnp.mean(score)
    attribute = losses.attribute_loss(logits, target)
    cycled = translate(g_params, translated, full_source)
    reconstruction = jnp.mean(jnp.abs(image - cycled))
    total = step.global_mean(
      adversarial
      + loss_config.attribute.weight * attribute
      + loss_config.reconstruction.weight * reconstruction
    )
    accuracy = jnp.mean((logits > 0) == (target > 0.5))
    return total, {
      'loss/G/total': total,
      'loss/G/adversarial': adversarial,
      'loss/G/attribute': attribute,
      'loss/G/reconstruction': reconstruction,
      'accuracy/D/fake_targets': accuracy,
    }

  def update_g(_):
    g_params, g_opt_state, g_finite, g_metrics = step.guarded_update(
      g_loss_fn, networks.g_optimizer, state.g_params, state.g_opt_state
    )
    g_metrics = jax.lax.pmean(g_metrics, step.DATA_AXIS)
    return g_params, g_opt_state, g_finite, g_metrics

  n_critic = config.train.n_critic
  if n_critic == 1:
    g_params, g_opt_state, g_finite, g_metrics = update_g(None)
  else:
    # Everything both branches return is the same on every device (the
    # metrics are averaged inside), as a cond under shard_map requires.
    shapes = jax.eval_shape(update_g, None)

    # NOTE: G's losses read 0 on steps without a G update, so their means
    # over a logging period are 1 / n_critic of the updates' losses.
    def skip_g(_):
      metrics = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes[3])
      return state.g_params, state.g_opt_state, jnp.array(True), metrics

    due = state.step % n_critic == n_critic - 1
    g_params, g_opt_state, g_finite, g_metrics = jax.lax.cond(
      due, update_g, skip_g, None
    )

  new_state, skipped = step.next_state(
    config,
    state,
    (g_params, g_opt_state, g_finite),
    (d_params, d_opt_state, d_finite),
  )
  metrics = {**d_metrics, **g_metrics}
  metrics['nonfinite'] = skipped.astype(jnp.float32)
  return new_state, metrics


def make_local_step(config, networks):
  return functools.partial(local_step, config, networks)
