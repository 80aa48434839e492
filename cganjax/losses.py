"""Loss functions, each a pure function of arrays.

Every loss returns a scalar mean over the batch unless its docstring states
otherwise. Logit-based losses use `jax.nn.softplus` and `optax` primitives,
so saturated logits give finite values.
"""

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
  are clipped to [0, 1], so an edit strength above 1 asks for a confident
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
