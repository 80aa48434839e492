"""StarGAN: architecture, stride-free convolutions, losses and the step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cganjax import stargan, step
from cganjax.errors import InputError
from configs import stargan as stargan_config


def max_difference(a, b):
  return max(
    float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
  )


def full_config():
  config = stargan_config.get_config()
  config.unlock()
  config.train.n_critic = 1
  return config


def tiny_config(strided_conv='stride_free'):
  config = full_config()
  config.data.image_size = 32
  config.model.g_base_channels = 4
  config.model.g_res_blocks = 1
  config.model.d_base_channels = 4
  config.model.d_levels = 3
  config.model.strided_conv = strided_conv
  config.train.batch_size = 4
  config.train.n_critic = 2
  return config


def kernel_shapes(params) -> list[tuple[int, ...]]:
  """Kernel shapes in the order the layers run (Flax names sort by index)."""
  shapes = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    if str(path[-1].key) == 'kernel':
      shapes.append((str(path[0].key), tuple(leaf.shape)))
  return shapes


def test_paper_architecture_at_128():
  config = full_config()
  networks = step.create_networks(config, stargan_config.ATTRIBUTES)
  state = jax.eval_shape(lambda: step.create_train_state(config, networks))
  g_shapes = dict(kernel_shapes(state.g_params))
  assert g_shapes['Conv_0'] == (7, 7, 3 + 5, 64)
  assert g_shapes['DownConv_0'] == (4, 4, 64, 128)
  assert g_shapes['DownConv_1'] == (4, 4, 128, 256)
  blocks = [k for k in state.g_params if k.startswith('ResidualBlock')]
  assert len(blocks) == 6
  for block in blocks:
    for conv in ('Conv_0', 'Conv_1'):
      shape = state.g_params[block][conv]['kernel'].shape
      assert shape == (3, 3, 256, 256)
  assert g_shapes['UpConv_0'] == (4, 4, 256, 128)
  assert g_shapes['UpConv_1'] == (4, 4, 128, 64)
  assert g_shapes['Conv_1'] == (7, 7, 64, 3)
  norms = [k for k in state.g_params if k.startswith('InstanceNorm')]
  assert len(norms) == 5  # 1 + 2 down + 2 up, 12 more inside the blocks.

  d_shapes = dict(kernel_shapes(state.d_params))
  channels = [3, 64, 128, 256, 512, 1024, 2048]
  for level in range(6):
    expected = (4, 4, channels[level], channels[level + 1])
    assert d_shapes[f'DownConv_{level}'] == expected
  assert d_shapes['realness'] == (3, 3, 2048, 1)
  assert d_shapes['attributes'] == (2, 2, 2048, 5)  # 128 / 64 = 2.


def test_output_shapes_and_ranges():
  config = tiny_config()
  attributes = stargan_config.ATTRIBUTES
  networks = step.create_networks(config, attributes)
  state = step.create_train_state(config, networks)
  image = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3), minval=-1)
  labels = jnp.asarray([[1, 0, 0, 1, 0], [0, 1, 0, 0, 1]], jnp.float32)
  out = networks.generator.apply(
    {'params': state.g_params}, image, None, labels, None
  )
  assert out.shape == (2, 32, 32, 3)
  assert float(jnp.max(jnp.abs(out))) <= 1.0
  realness, logits = networks.discriminator.apply(
    {'params': state.d_params}, out
  )
  assert realness.shape == (2, 4, 4)
  assert logits.shape == (2, 5)


def test_generator_reads_configured_columns():
  config = tiny_config()
  dataset = ('Smiling', 'Black_Hair', 'Blond_Hair', 'Brown_Hair', 'Male')
  dataset += ('Pale_Skin', 'Eyeglasses')
  generator, _ = stargan.create_models(config, dataset)
  assert generator.attribute_columns == (1, 2, 3, 4, 5)
  params = generator.init(
    jax.random.key(0), jnp.zeros((1, 32, 32, 3)), None, jnp.zeros((1, 7)), None
  )
  image = jax.random.uniform(jax.random.key(1), (1, 32, 32, 3))
  labels = jnp.asarray([[0, 1, 0, 0, 1, 0, 0]], jnp.float32)
  changed = labels.at[:, 0].set(1.0).at[:, 6].set(1.0)  # Unused columns.
  first = generator.apply(params, image, None, labels, None)
  second = generator.apply(params, image, None, changed, None)
  assert float(jnp.max(jnp.abs(first - second))) == 0.0
  flipped = labels.at[:, 2].set(1.0)
  third = generator.apply(params, image, None, flipped, None)
  assert float(jnp.max(jnp.abs(first - third))) > 0.0


@pytest.mark.parametrize('module', [stargan.DownConv, stargan.UpConv])
def test_stride_free_matches_lax(module):
  x = jax.random.normal(jax.random.key(0), (2, 8, 6, 3))
  reference = module(5, strided_conv='lax')
  stride_free = module(5, strided_conv='stride_free')
  params = reference.init(jax.random.key(1), x)
  expected = reference.apply(params, x)
  got = stride_free.apply(params, x)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)

  def loss(module, params, x):
    return jnp.sum(jnp.sin(module.apply(params, x)))

  expected_grads = jax.grad(loss, argnums=(1, 2))(reference, params, x)
  got_grads = jax.grad(loss, argnums=(1, 2))(stride_free, params, x)
  for a, b in zip(
    jax.tree.leaves(got_grads), jax.tree.leaves(expected_grads), strict=True
  ):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_down_conv_is_pytorch_conv():
  """A 4x4 stride-2 pad-1 convolution, checked by a loop over outputs."""
  rng = np.random.default_rng(0)
  x = rng.standard_normal((1, 6, 6, 2)).astype(np.float32)
  module = stargan.DownConv(3, use_bias=False)
  params = module.init(jax.random.key(0), x)
  kernel = np.asarray(params['params']['kernel'])
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  expected = np.zeros((1, 3, 3, 3), np.float32)
  for i in range(3):
    for j in range(3):
      window = padded[0, 2 * i : 2 * i + 4, 2 * j : 2 * j + 4]
      expected[0, i, j] = np.einsum('hwc,hwcf->f', window, kernel)
  np.testing.assert_allclose(module.apply(params, x), expected, atol=1e-5)


def test_up_conv_is_transposed_conv():
  """Each input pixel adds kernel * value into a 4x4 output window at 2i-1."""
  rng = np.random.default_rng(1)
  x = rng.standard_normal((1, 3, 3, 2)).astype(np.float32)
  module = stargan.UpConv(2)
  params = module.init(jax.random.key(0), x)
  kernel = np.asarray(params['params']['kernel'])
  # lax.conv_transpose without kernel flipping: output o takes taps t with
  # o + t - 2 = 2i, i.e. input i scatters to o = 2i + 2 - t.
  full = np.zeros((1, 10, 10, 2), np.float32)
  for i in range(3):
    for j in range(3):
      for t in range(4):
        for u in range(4):
          full[0, 2 * i + 2 - t + 2, 2 * j + 2 - u + 2] += (
            x[0, i, j] @ kernel[t, u]
          )
  expected = full[:, 2:8, 2:8]
  np.testing.assert_allclose(module.apply(params, x), expected, atol=1e-5)


def test_gradient_penalty_of_linear_critic():
  """For f(x) = sum(w * x) the gradient is w, so the penalty is (|w|-1)^2."""
  rng = np.random.default_rng(0)
  weights = jnp.asarray(rng.standard_normal((4, 4, 3)), jnp.float32)
  images = jnp.asarray(rng.standard_normal((2, 4, 4, 3)), jnp.float32)

  def critic(x):
    return jnp.sum(weights * x, axis=(1, 2, 3))

  norm = float(jnp.sqrt(jnp.sum(jnp.square(weights))))
  expected = (norm - 1.0) ** 2
  assert float(stargan.gradient_penalty(critic, images)) == pytest.approx(
    expected, rel=1e-5
  )


def test_invalid_settings_raise():
  config = tiny_config()
  config.model.attributes = ['Black_Hair', 'Young']
  with pytest.raises(InputError, match='Young'):
    step.create_networks(config, stargan_config.ATTRIBUTES)
  config = tiny_config()
  config.data.image_size = 36
  with pytest.raises(InputError, match='image_size=36'):
    step.create_networks(config, stargan_config.ATTRIBUTES)
  config = tiny_config(strided_conv='fast')
  with pytest.raises(InputError, match='strided_conv'):
    step.create_networks(config, stargan_config.ATTRIBUTES)
  config = tiny_config()
  config.model.arch = 'biggan'
  with pytest.raises(InputError, match="model.arch='biggan'"):
    step.create_networks(config, stargan_config.ATTRIBUTES)
  config = tiny_config()
  config.train.n_critic = 0
  with pytest.raises(InputError, match='n_critic'):
    step.validate_loss_config(config)


def random_batch(seed, batch_size=4, size=32):
  rng = np.random.default_rng(seed)
  return {
    'image': rng.integers(0, 256, (batch_size, size, size, 3), np.uint8),
    'parts': np.zeros((batch_size, size, size), np.uint8),
    'attributes': rng.integers(0, 2, (batch_size, 5)).astype(np.uint8),
  }


def run(config, devices, batches):
  networks = step.create_networks(config, stargan_config.ATTRIBUTES)
  mesh = step.create_mesh(devices)
  state = jax.device_put(
    step.create_train_state(config, networks), step.replicated(mesh)
  )
  initial = jax.tree.map(np.asarray, state)
  train_step = step.make_train_step(config, networks, mesh)
  states, metrics = [], []
  for batch in batches:
    state, m = train_step(
      state, jax.device_put(batch, step.batch_sharding(mesh))
    )
    states.append(jax.tree.map(np.asarray, state))
    metrics.append(jax.tree.map(float, m))
  return initial, states, metrics


def test_step_updates_g_every_n_critic():
  config = tiny_config()  # n_critic = 2: G moves on the second step only.
  initial, states, metrics = run(
    config, jax.devices()[:2], [random_batch(0), random_batch(1)]
  )
  first, second = states
  assert max_difference(first.d_params, initial.d_params) > 1e-6
  assert max_difference(first.g_params, initial.g_params) == 0.0
  assert metrics[0]['loss/G/total'] == 0.0
  assert max_difference(second.g_params, first.g_params) > 1e-6
  assert max_difference(second.d_params, first.d_params) > 1e-6
  for name in ('loss/D/total', 'loss/D/gradient_penalty', 'loss/G/total'):
    assert np.isfinite(metrics[1][name]), name
  # G's total is the weighted sum of its terms.
  g = metrics[1]
  total = (
    g['loss/G/adversarial']
    + g['loss/G/attribute']
    + 10.0 * g['loss/G/reconstruction']
  )
  assert g['loss/G/total'] == pytest.approx(total, rel=1e-5)
  assert metrics[1]['nonfinite'] == 0.0


@pytest.mark.slow
def test_one_and_two_devices_agree():
  config = tiny_config()
  config.train.n_critic = 1
  batches = [random_batch(2)]
  _, one_device, one_metrics = run(config, jax.devices()[:1], batches)
  _, two_devices, two_metrics = run(config, jax.devices()[:2], batches)
  for name, value in one_metrics[0].items():
    assert two_metrics[0][name] == pytest.approx(value, rel=1e-5, abs=1e-6)
  # Adam's first step is lr * g / |g| per entry, so a gradient entry near 0
  # turns rounding differences into a sign: such entries may differ by
  # 2 * lr. Instance norm makes many of G's gradient entries near 0 (0.4%
  # flip in this tiny G); a real difference in the step would flip most.
  learning_rate = config.optim.g_learning_rate
  for name in ('g_params', 'd_params'):
    one = np.concatenate(
      [np.ravel(x) for x in jax.tree.leaves(getattr(one_device[0], name))]
    )
    two = np.concatenate(
      [np.ravel(x) for x in jax.tree.leaves(getattr(two_devices[0], name))]
    )
    difference = np.abs(one - two)
    assert float(np.max(difference)) <= 2 * learning_rate + 1e-6, name
    assert np.mean(difference > 1e-5) < 1e-2, name
