"""Generator and discriminator: taps, compositing, batch independence."""

import jax
import jax.numpy as jnp
import numpy as np

from cganjax import models


def build(tiny_config, num_attributes=5):
  generator, discriminator = models.create_models(tiny_config, num_attributes)
  g_params, d_params = models.init_params(
    generator, discriminator, jax.random.key(0), 32
  )
  return generator, discriminator, g_params, d_params


def inputs(batch=3, size=32, num_attributes=5, noise_dim=8):
  rng = np.random.default_rng(0)
  image = jnp.asarray(rng.uniform(-1, 1, (batch, size, size, 3)), jnp.float32)
  mask = np.zeros((batch, size, size, 1), np.float32)
  mask[:, 8:20, 10:30] = 1.0
  attributes = jnp.asarray(rng.integers(0, 2, (batch, num_attributes)))
  noise = jnp.asarray(rng.normal(size=(batch, noise_dim)), jnp.float32)
  return image, jnp.asarray(mask), attributes.astype(jnp.float32), noise


def test_generator_taps_at_several_resolutions(tiny_config):
  generator, _, g_params, _ = build(tiny_config)
  image, mask, attributes, noise = inputs()
  out, state = generator.apply(
    {'params': g_params},
    image,
    mask,
    attributes,
    noise,
    mutable=['intermediates'],
  )
  assert out.shape == image.shape
  sown = state['intermediates']
  names = [f'G/{name}' for name in sown]
  assert names == generator.tap_names()
  sides = {value[0].shape[1] for value in sown.values()}
  assert sides == {8, 16, 32}


def test_discriminator_taps_and_heads(tiny_config):
  _, discriminator, _, d_params = build(tiny_config)
  image = inputs()[0]
  (realness, logits), state = discriminator.apply(
    {'params': d_params}, image, mutable=['intermediates']
  )
  assert realness.shape == (3,)
  assert logits.shape == (3, 5)
  sown = state['intermediates']
  assert [f'D/{name}' for name in sown] == discriminator.tap_names()
  assert [value[0].shape[1] for value in sown.values()] == [16, 8, 4]


def test_composite_keeps_outside_pixels_exactly(tiny_config):
  generator, _, g_params, _ = build(tiny_config)
  image, mask, attributes, noise = inputs()
  raw = generator.apply({'params': g_params}, image, mask, attributes, noise)
  out = np.asarray(models.composite(image, mask, raw))
  outside = np.asarray(mask[..., 0]) == 0
  np.testing.assert_array_equal(out[outside], np.asarray(image)[outside])
  inside = ~outside
  np.testing.assert_array_equal(out[inside], np.asarray(raw)[inside])


def test_generator_ignores_pixels_under_mask(tiny_config):
  generator, _, g_params, _ = build(tiny_config)
  image, mask, attributes, noise = inputs()
  other = jnp.where(mask > 0, -image, image)
  a = generator.apply({'params': g_params}, image, mask, attributes, noise)
  b = generator.apply({'params': g_params}, other, mask, attributes, noise)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_discriminator_independent_of_batch_mates(tiny_config):
  _, discriminator, _, d_params = build(tiny_config)
  image = inputs(batch=4)[0]
  realness, logits = discriminator.apply({'params': d_params}, image)
  alone_realness, alone_logits = discriminator.apply(
    {'params': d_params}, image[2:3]
  )
  np.testing.assert_allclose(realness[2:3], alone_realness, atol=1e-5)
  np.testing.assert_allclose(logits[2:3], alone_logits, atol=1e-5)


def test_perturbation_gradient_is_feature_gradient(tiny_config):
  _, discriminator, _, d_params = build(tiny_config)
  image = inputs(batch=2)[0]
  _, state = discriminator.apply(
    {'params': d_params}, image, mutable=['perturbations', 'intermediates']
  )
  perturbations = state['perturbations']

  def realness(perturbations):
    variables = {'params': d_params, 'perturbations': perturbations}
    return discriminator.apply(variables, image)[0].sum()

  grads = jax.grad(realness)(perturbations)
  feature = state['intermediates']['block3'][0]
  # block3 feeds the flattened dense realness head directly, so the gradient
  # with respect to it is the head's kernel, reshaped, for every image.
  kernel = d_params['realness']['kernel'][:, 0].reshape(feature.shape[1:])
  for b in range(2):
    np.testing.assert_allclose(grads['block3'][b], kernel, atol=1e-6)


def test_bad_image_size_rejected(tiny_config):
  tiny_config.data.image_size = 36
  try:
    models.create_models(tiny_config, 5)
  except ValueError as error:
    assert 'data.image_size=36' in str(error)
  else:
    raise AssertionError('image_size 36 with 3 D levels was accepted')
