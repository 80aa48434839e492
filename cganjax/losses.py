"""Loss functions, each a pure function of arrays.

Every loss returns a scalar mean over the batch unless its docstring states
otherwise. Logit-based losses use `jax.nn.softplus` and `optax` primitives,
so saturated logits give finite values.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax


def hinge_d_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
  """Hinge loss of the discriminator.

  L_D = mean(relu(1 - D(x))) + mean(relu(1 + D(G(z)))).
  """
  real = jnp.mean(jax.nn.relu(1.0 - real_logits))
  fake = jnp.mean(jax.nn.relu(1.0 + fake_logits))
  return real + fake


def hinge_g_loss(fake_logits: jax.Array) -> jax.Array:
  """Hinge loss of the generator: L_G = -mean(D(G(z)))."""
  return -jnp.mean(fake_logits)


def attribute_loss(
  logits: jax.Array, targets: jax.Array, weights: jax.Array | None = None
) -> jax.Array:
  """Binary cross-entropy of attribute logits against targets in [0, 1].

  L = mean_b sum_a w_b * [-t log sigmoid(l) - (1 - t) log(1 - sigmoid(l))],
  summed over attributes as in StarGAN and averaged over the batch. Targets
  are clipped to [0, 1], so an edit strength above 1 requests a confident
  "present". `weights` (shape [B]) scales each example; None weighs all by 1.
  """
  targets = jnp.clip(targets, 0.0, 1.0)
  per_example = jnp.sum(
    optax.sigmoid_binary_cross_entropy(logits, targets), axis=-1
  )
  if weights is not None:
    per_example = per_example * weights
  return jnp.mean(per_example)


def masked_l1_loss(
  prediction: jax.Array,
  target: jax.Array,
  mask: jax.Array,
  weights: jax.Array | None = None,
) -> jax.Array:
  """Mean absolute error inside the mask, normalised per example.

  For each example b: sum(m * |p - t|) / (C * max(sum(m), 1)), where C is the
  channel count, so the loss is the mean per-pixel, per-channel L1 inside the
  mask whatever the mask's area. Examples are then averaged, scaled by
  `weights` (shape [B]) when given. An empty mask contributes 0.
  """
  channels = prediction.shape[-1]
  error = jnp.abs(prediction - target) * mask
  total = jnp.sum(error, axis=(1, 2, 3))
  area = jnp.sum(mask, axis=(1, 2, 3))
  per_example = total / (channels * jnp.maximum(area, 1.0))
  if weights is not None:
    per_example = per_example * weights
  return jnp.mean(per_example)


def r1_penalty(realness_fn, images: jax.Array) -> jax.Array:
  """R1 gradient penalty on real images (Mescheder et al., ICML 2018).

  R1 = mean_b ||d realness(x_b) / d x_b||^2, without the gamma / 2 factor,
  which the caller applies. `realness_fn` maps images [B, H, W, C] to
  realness logits [B]. The squared norm has no square root, so it stays
  finite, with a finite gradient, when the image gradient is exactly zero.
  """
  gradients = jax.grad(lambda x: jnp.sum(realness_fn(x)))(images)
  return jnp.mean(jnp.sum(jnp.square(gradients), axis=(1, 2, 3)))


# Adversarial losses. Each takes the realness logits of D, before any
# sigmoid, and returns the mean over the batch.


def non_saturating_d_loss(
  real_logits: jax.Array, fake_logits: jax.Array
) -> jax.Array:
  """Non-saturating (logistic) loss of the discriminator.

  L_D = mean(softplus(-D(x))) + mean(softplus(D(G(z)))), which is
  -log sigmoid(D(x)) - log(1 - sigmoid(D(G(z)))) written with softplus so
  that saturated logits give finite values and gradients.
  """
  real = jnp.mean(jax.nn.softplus(-real_logits))
  fake = jnp.mean(jax.nn.softplus(fake_logits))
  return real + fake


def non_saturating_g_loss(fake_logits: jax.Array) -> jax.Array:
  """Non-saturating loss of the generator: mean(softplus(-D(G(z)))).

  This is -log sigmoid(D(G(z))), whose gradient stays large while D rejects
  the fakes, unlike the saturating log(1 - sigmoid(D(G(z)))).
  """
  return jnp.mean(jax.nn.softplus(-fake_logits))


def least_squares_d_loss(
  real_logits: jax.Array, fake_logits: jax.Array
) -> jax.Array:
  """Least-squares loss of the discriminator (LSGAN, targets 1 and 0).

  L_D = 0.5 * mean((D(x) - 1)^2) + 0.5 * mean(D(G(z))^2), applied to the raw
  output of D with no sigmoid.
  """
  real = 0.5 * jnp.mean(jnp.square(real_logits - 1.0))
  fake = 0.5 * jnp.mean(jnp.square(fake_logits))
  return real + fake


def least_squares_g_loss(fake_logits: jax.Array) -> jax.Array:
  """Least-squares loss of the generator: 0.5 * mean((D(G(z)) - 1)^2)."""
  return 0.5 * jnp.mean(jnp.square(fake_logits - 1.0))


# (discriminator loss, generator loss) by the name `loss.adversarial.type`
# takes in the config.
ADVERSARIAL_LOSSES = {
  'hinge': (hinge_d_loss, hinge_g_loss),
  'non_saturating': (non_saturating_d_loss, non_saturating_g_loss),
  'least_squares': (least_squares_d_loss, least_squares_g_loss),
}


# Feature statistics for the style and perceptual losses. Features are NHWC;
# a mask is [B, H, W, 1] at image resolution, 1 where the loss applies.


def downsample_mask(mask: jax.Array, height: int, width: int) -> jax.Array:
  """Resize a [B, H, W, 1] mask to [B, height, width, 1] by area averaging.

  When the image side is a multiple of the feature side, each feature cell
  gets the mean of the mask over the pixels it covers. Other ratios fall back
  to antialiased linear resizing.
  """
  batch, full_height, full_width, channels = mask.shape
  if (full_height, full_width) == (height, width):
    return mask
  if full_height % height == 0 and full_width % width == 0:
    blocks = mask.reshape(
      batch,
      height,
      full_height // height,
      width,
      full_width // width,
      channels,
    )
    return jnp.mean(blocks, axis=(2, 4))
  return jax.image.resize(
    mask, (batch, height, width, channels), method='linear', antialias=True
  )


def _masked_mean_weights(
  features: jax.Array, mask: jax.Array | None
) -> tuple[jax.Array, jax.Array]:
  """Per-position weights [B, H, W] and their safe sums [B] for a layer."""
  batch, height, width, _ = features.shape
  if mask is None:
    weights = jnp.ones((batch, height, width), jnp.float32)
  else:
    weights = downsample_mask(mask, height, width)[..., 0]
    weights = weights.astype(jnp.float32)
  area = jnp.sum(weights, axis=(1, 2))
  # An empty region gives a zero numerator, so dividing by 1 makes its
  # statistic 0 without a NaN in the value or the gradient.
  return weights, jnp.where(area > 0, area, 1.0)


def gram_matrix(
  features: jax.Array, mask: jax.Array | None = None
) -> jax.Array:
  """Normalised Gram matrices [B, C, C] in float32 of features [B, H, W, C].

  G_b[i, j] = sum_p m_p f_p,i f_p,j / (C * sum_p m_p), where p runs over the
  H * W positions and m is `mask` area-averaged to the feature resolution
  (all ones when `mask` is None), so without a mask the divisor is C * H * W.
  Dividing by the number of positions makes G the mean outer product over
  positions, which does not grow with resolution: a periodic image and a
  larger crop of the same pattern give the same G. Dividing by C as well
  keeps ||G||_F^2 of the same order for layers of different widths.

  The features are cast to float32 and multiplied at the highest precision,
  because sums over H * W positions overflow float16 and lose digits in
  bfloat16 or TF32. An example whose mask is empty at this resolution gets
  G = 0.
  """
  features = features.astype(jnp.float32)
  channels = features.shape[-1]
  weights, area = _masked_mean_weights(features, mask)
  gram = jnp.einsum(
    'bhwi,bhwj,bhw->bij',
    features,
    features,
    weights,
    precision=jax.lax.Precision.HIGHEST,
  )
  return gram / (channels * area)[:, None, None]


def style_loss(
  real_features: Sequence[jax.Array],
  fake_features: Sequence[jax.Array],
  mask: jax.Array | None = None,
) -> jax.Array:
  """Gram-matrix style loss, averaged over layers.

  L = mean_l mean_b ||G_l(real_b) - G_l(fake_b)||_F^2 with G from
  `gram_matrix`, restricted to `mask` (at image resolution, downsampled to
  each layer) when given. Layers are averaged, not summed, so the scale does
  not change with the number of layers. Both lists hold the same layers in
  the same order.
  """
  _check_layer_lists(real_features, fake_features)
  per_layer = []
  for real, fake in zip(real_features, fake_features, strict=True):
    difference = gram_matrix(real, mask) - gram_matrix(fake, mask)
    per_layer.append(jnp.mean(jnp.sum(jnp.square(difference), axis=(1, 2))))
  return jnp.mean(jnp.stack(per_layer))


def perceptual_loss(
  real_features: Sequence[jax.Array],
  fake_features: Sequence[jax.Array],
  mask: jax.Array | None = None,
  weights: jax.Array | None = None,
) -> jax.Array:
  """Perceptual loss: mean L1 distance between features, averaged over layers.

  For layer l and example b: sum_p m_p * sum_c |f_real - f_fake| /
  (C * sum_p m_p), the mean absolute feature difference inside the mask (m
  as in `gram_matrix`; all positions when `mask` is None). Examples are
  averaged, each scaled by `weights` (shape [B]) when given, then layers are
  averaged. An example whose mask is empty at a layer contributes 0 there.
  """
  _check_layer_lists(real_features, fake_features)
  per_layer = []
  for real, fake in zip(real_features, fake_features, strict=True):
    channels = real.shape[-1]
    position_weights, area = _masked_mean_weights(real, mask)
    error = jnp.sum(
      jnp.abs(real.astype(jnp.float32) - fake.astype(jnp.float32)), axis=-1
    )
    per_example = jnp.sum(error * position_weights, axis=(1, 2)) / (
      channels * area
    )
    if weights is not None:
      per_example = per_example * weights
    per_layer.append(jnp.mean(per_example))
  return jnp.mean(jnp.stack(per_layer))


def _check_layer_lists(real_features, fake_features) -> None:
  if not real_features or len(real_features) != len(fake_features):
    raise ValueError(
      f'expected two equal, non-empty lists of feature maps, got '
      f'{len(real_features)} and {len(fake_features)} layers.'
    )


# Entropy terms, computed from logits so that saturated logits stay finite.


def binary_entropy(logits: jax.Array) -> jax.Array:
  """Elementwise entropy in nats of Bernoulli(sigmoid(logits)).

  H = -p log p - (1 - p) log(1 - p) with p = sigmoid(l), rewritten as
  softplus(l) - l * p. Its gradient, -l * p * (1 - p), is finite for any
  finite logit, and H is 0 up to float rounding for |l| >= 100.
  """
  return jax.nn.softplus(logits) - logits * jax.nn.sigmoid(logits)


def sigmoid_conditional_entropy(logits: jax.Array) -> jax.Array:
  """Conditional entropy of independent binary predictions [B, A].

  L = mean_b sum_a H(sigmoid(l_ba)), in nats. Minimising it on generated
  images makes D's attribute predictions confident, so the generator is
  pushed to draw each attribute clearly present or clearly absent.
  """
  return jnp.mean(jnp.sum(binary_entropy(logits), axis=-1))


def softmax_conditional_entropy(logits: jax.Array) -> jax.Array:
  """Conditional entropy of categorical predictions: logits [B, K].

  L = mean_b -sum_k p_bk log p_bk with p_b = softmax(l_b), in nats, computed
  from `log_softmax`, so a class with probability 0 adds 0 and no NaN.
  """
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  probs = jnp.exp(log_probs)
  return jnp.mean(-jnp.sum(probs * log_probs, axis=-1))


def _log_batch_mean_probability(log_probs: jax.Array) -> jax.Array:
  """log mean_b exp(log_probs[b]) over axis 0, without leaving log space."""
  return jax.nn.logsumexp(log_probs, axis=0) - jnp.log(log_probs.shape[0])


def _negative_entropy(probs: jax.Array) -> jax.Array:
  """Elementwise p log p with 0 log 0 = 0, for target frequencies."""
  safe = jnp.where(probs > 0, probs, 1.0)
  return jnp.where(probs > 0, probs * jnp.log(safe), 0.0)


def sigmoid_marginal_kl(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Divergence of the batch-mean prediction from the batch-mean target.

  With q_a = mean_b t_ba (the share of the batch that requests attribute a,
  targets clipped to [0, 1]) and p_a = mean_b sigmoid(l_ba):
  L = sum_a KL(Bernoulli(q_a) || Bernoulli(p_a))
    = sum_a [q log(q / p) + (1 - q) log((1 - q) / (1 - p))].
  This replaces the marginal entropy of CatGAN, which pushes every
  attribute's batch frequency toward 1/2: here an attribute requested in 5%
  of the batch should come out in 5% of it. log p and log(1 - p) are
  log-sum-exps of log-sigmoids, so they stay finite for logits of +-100, and
  so does the gradient with respect to the logits. The KL is over the batch
  passed in, so a sharded caller should gather the whole batch first.
  """
  targets = jnp.clip(targets, 0.0, 1.0)
  requested = jnp.mean(targets, axis=0)
  log_present = _log_batch_mean_probability(jax.nn.log_sigmoid(logits))
  log_absent = _log_batch_mean_probability(jax.nn.log_sigmoid(-logits))
  divergence = (
    _negative_entropy(requested)
    + _negative_entropy(1.0 - requested)
    - requested * log_present
    - (1.0 - requested) * log_absent
  )
  return jnp.sum(divergence)


def softmax_marginal_kl(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Categorical version of `sigmoid_marginal_kl`: logits and targets [B, K].

  With q = mean_b t_b (targets are probability vectors, such as one-hot
  requests) and p = mean_b softmax(l_b): L = KL(q || p) =
  sum_k q_k log(q_k / p_k), with 0 log 0 = 0.
  """
  requested = jnp.mean(targets, axis=0)
  log_predicted = _log_batch_mean_probability(
    jax.nn.log_softmax(logits, axis=-1)
  )
  return jnp.sum(_negative_entropy(requested) - requested * log_predicted)


def spatial_entropy(
  maps: jax.Array, axis: tuple[int, ...] = (-2, -1)
) -> jax.Array:
  """Entropy in nats of non-negative maps normalised to sum 1 over `axis`.

  H = -sum_p q_p log q_p with q = m / sum(m) over the axes in `axis` (by
  default the last two, H and W); returns one value per map, with those axes
  removed. A uniform map over n cells gives log n and a one-hot map 0, so H
  measures how spread out an activation map is. Negative entries count as
  0. Zero and negative cells add 0 to H and get a gradient of exactly 0,
  through `jnp.where` guards, where the plain q log q would give an infinite
  derivative at q = 0. An all-zero map gives H = 0 and a zero gradient.
  """
  maps = maps.astype(jnp.float32)
  maps = jnp.where(maps > 0, maps, 0.0)
  total = jnp.sum(maps, axis=axis, keepdims=True)
  total = jnp.where(total > 0, total, 1.0)
  probs = maps / total
  positive = probs > 0
  safe = jnp.where(positive, probs, 1.0)
  terms = jnp.where(positive, probs * jnp.log(safe), 0.0)
  return -jnp.sum(terms, axis=axis)


def masked_total_variation(image: jax.Array, mask: jax.Array) -> jax.Array:
  """Anisotropic total variation of images [B, H, W, C] inside a mask.

  For each example, every pair (p, q) of horizontally or vertically adjacent
  pixels gets the weight w_pq = max(m_p, m_q), so pairs that cross the mask
  border count too and a seam between generated pixels and the context is
  penalised. The example's value is sum w_pq * sum_c |x_p - x_q| /
  (C * max(sum w_pq, 1)), the mean absolute step per channel over the
  weighted pairs. Examples are averaged; an empty mask contributes 0.
  """
  channels = image.shape[-1]
  image = image.astype(jnp.float32)
  mask = mask.astype(jnp.float32)
  vertical_step = jnp.abs(image[:, 1:] - image[:, :-1])
  horizontal_step = jnp.abs(image[:, :, 1:] - image[:, :, :-1])
  vertical_weight = jnp.maximum(mask[:, 1:], mask[:, :-1])
  horizontal_weight = jnp.maximum(mask[:, :, 1:], mask[:, :, :-1])
  total = jnp.sum(vertical_step * vertical_weight, axis=(1, 2, 3)) + jnp.sum(
    horizontal_step * horizontal_weight, axis=(1, 2, 3)
  )
  pairs = jnp.sum(vertical_weight, axis=(1, 2, 3)) + jnp.sum(
    horizontal_weight, axis=(1, 2, 3)
  )
  return jnp.mean(total / (channels * jnp.maximum(pairs, 1.0)))
