"""Activation maps: methods, capture, upsampling, batching and the folder.

Right values come from computations independent of `cganjax.maps`: the
tiny network below split by hand with `jax.vjp`, the method formulas and
half-pixel bilinear upsampling written again in numpy, finite differences,
and a 4x4 case worked by hand.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import random_params
from conftest import make_tiny_config

from cganjax import maps, maps_folder, models, step
from cganjax.data import pipeline

IMAGE_SIDE = 16
TINY_PREFIX = 'T'


class TinyNet(models._Tapped):
  """Two tapped convolutions and a linear head with three scores."""

  @nn.compact
  def __call__(self, x):
    h = nn.Conv(4, (3, 3), strides=(2, 2), name='conv1')(x)
    h = self.tap('a', nn.leaky_relu(h, 0.2))
    h = nn.Conv(3, (3, 3), strides=(2, 2), name='conv2')(h)
    h = self.tap('b', jnp.tanh(h))
    return nn.Dense(3, name='head')(h.reshape((h.shape[0], -1)))


def stage_a(params, x):
  h = nn.Conv(4, (3, 3), strides=(2, 2)).apply({'params': params['conv1']}, x)
  return nn.leaky_relu(h, 0.2)


def stage_b(params, a):
  h = nn.Conv(3, (3, 3), strides=(2, 2)).apply({'params': params['conv2']}, a)
  return jnp.tanh(h)


def head(params, b):
  flat = b.reshape((b.shape[0], -1))
  return nn.Dense(3).apply({'params': params['head']}, flat)


@pytest.fixture(scope='module')
def tiny_net():
  net = TinyNet()
  x = jax.random.normal(jax.random.key(1), (2, IMAGE_SIDE, IMAGE_SIDE, 3))
  shapes = jax.eval_shape(net.init, jax.random.key(0), x)['params']
  return net, random_params.random_like(shapes, seed=42), x


def tiny_forward(net, params, x):
  def forward(perturbations):
    variables = {
      'params': params,
      'perturbations': maps.split_perturbations(perturbations, TINY_PREFIX),
    }
    scores, features = maps.apply_with_taps(net, TINY_PREFIX, variables, x)
    return scores, features, None

  perturbations = maps.prefixed(
    maps.zero_perturbations(net, params, x), TINY_PREFIX
  )
  return forward, perturbations


# Independent numpy versions of the methods and the shared steps.


def reference_weighted_sum(method, activations, gradients):
  a = np.asarray(activations, np.float64)
  g = np.asarray(gradients, np.float64)
  if method == 'grad_cam':
    weights = g.mean(axis=(-3, -2), keepdims=True)
    return (weights * a).sum(-1)
  if method == 'grad_cam_pp':
    sums = a.sum(axis=(-3, -2), keepdims=True)
    denominator = 2 * g**2 + sums * g**3
    alpha = np.divide(
      g**2, denominator, out=np.zeros_like(g), where=denominator != 0
    )
    weights = (alpha * np.maximum(g, 0)).sum(axis=(-3, -2), keepdims=True)
    return (weights * a).sum(-1)
  assert method == 'gradient_x_activation'
  return (a * g).sum(-1)


def interpolation_matrix(size_in: int, size_out: int) -> np.ndarray:
  """Bilinear weights [out, in] with half-pixel centres, edges clamped."""
  position = (np.arange(size_out) + 0.5) * size_in / size_out - 0.5
  position = np.clip(position, 0, size_in - 1)
  low = np.floor(position).astype(int)
  high = np.minimum(low + 1, size_in - 1)
  fraction = position - low
  matrix = np.zeros((size_out, size_in))
  matrix[np.arange(size_out), low] += 1 - fraction
  matrix[np.arange(size_out), high] += fraction
  return matrix


def reference_finish(weighted, height, width):
  rectified = np.maximum(np.asarray(weighted, np.float64), 0)
  rows = interpolation_matrix(rectified.shape[-2], height)
  cols = interpolation_matrix(rectified.shape[-1], width)
  upsampled = np.einsum('ph,...hw,qw->...pq', rows, rectified, cols)
  scale = upsampled.max(axis=(-2, -1))
  safe = np.where(scale > 0, scale, 1)[..., None, None]
  return np.where(scale[..., None, None] > 0, upsampled / safe, 0), scale


# Methods and capture on the tiny network.


@pytest.mark.parametrize('method', sorted(maps.METHODS))
def test_method_equals_hand_split_vjp(tiny_net, method):
  net, params, x = tiny_net
  forward, perturbations = tiny_forward(net, params, x)
  scores, features, gradients, _ = maps.tap_gradients(forward, perturbations)

  a = stage_a(params, x)
  b = stage_b(params, a)
  np.testing.assert_allclose(scores, head(params, b), rtol=1e-6)
  np.testing.assert_allclose(features['T/a'], a, rtol=1e-6)
  np.testing.assert_allclose(features['T/b'], b, rtol=1e-6)

  ones = jnp.ones(x.shape[0])
  for k in range(3):
    _, backward_a = jax.vjp(
      lambda a, k=k: head(params, stage_b(params, a))[:, k], a
    )
    _, backward_b = jax.vjp(lambda b, k=k: head(params, b)[:, k], b)
    expected_gradients = {
      'T/a': backward_a(ones)[0],
      'T/b': backward_b(ones)[0],
    }
    for tap, expected_features in (('T/a', a), ('T/b', b)):
      np.testing.assert_allclose(
        gradients[tap][k], expected_gradients[tap], rtol=1e-5, atol=1e-7
      )
      weighted = maps.METHODS[method](features[tap], gradients[tap][k])
      got_maps, got_scale = maps.finish_maps(weighted, (IMAGE_SIDE, IMAGE_SIDE))
      want = reference_weighted_sum(
        method, expected_features, expected_gradients[tap]
      )
      want_maps, want_scale = reference_finish(want, IMAGE_SIDE, IMAGE_SIDE)
      np.testing.assert_allclose(got_scale, want_scale, rtol=1e-4, atol=1e-9)
      np.testing.assert_allclose(got_maps, want_maps, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('method', sorted(maps.METHODS))
def test_opposite_channels_leave_one_half(method):
  # Channel 0 is on over the left half with gradient +1, channel 1 over the
  # right half with gradient -1: the right half sums to a negative value,
  # which ReLU removes.
  activations = np.zeros((4, 4, 2), np.float32)
  activations[:, :2, 0] = 1.0
  activations[:, 2:, 1] = 1.0
  gradients = np.zeros((4, 4, 2), np.float32)
  gradients[..., 0] = 1.0
  gradients[..., 1] = -1.0
  weighted = maps.METHODS[method](
    jnp.asarray(activations), jnp.asarray(gradients)
  )
  got, scale = maps.finish_maps(weighted, (4, 4))

  expected = np.zeros((4, 4), np.float32)
  expected[:, :2] = 1.0
  np.testing.assert_array_equal(np.asarray(got), expected)
  # Grad-CAM: w = (1, -1). Gradient x activation: 1 on the left.
  # Grad-CAM++: alpha_0 = 1 / (2 + 8) on every cell, so w_0 = 16 / 10,
  # and relu(-1) = 0 gives w_1 = 0.
  expected_scale = {
    'grad_cam': 1.0,
    'gradient_x_activation': 1.0,
    'grad_cam_pp': 1.6,
  }[method]
  np.testing.assert_allclose(float(scale), expected_scale, rtol=1e-6)


def test_perturb_gradients_equal_finite_differences(tiny_net):
  net, params, x = tiny_net
  with jax.enable_x64(True):
    params64 = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), params)
    x64 = jnp.asarray(x, jnp.float64)
    forward, perturbations = tiny_forward(net, params64, x64)
    _, _, gradients, _ = maps.tap_gradients(forward, perturbations)
    picks = np.random.default_rng(0)
    epsilon = 1e-6
    for tap in ('T/a', 'T/b'):
      shape = perturbations[tap].shape
      for _ in range(6):
        position = tuple(int(picks.integers(0, n)) for n in shape)
        image = position[0]
        step_up = dict(perturbations)
        step_down = dict(perturbations)
        step_up[tap] = perturbations[tap].at[position].add(epsilon)
        step_down[tap] = perturbations[tap].at[position].add(-epsilon)
        difference = (forward(step_up)[0] - forward(step_down)[0]) / (
          2 * epsilon
        )
        for k in range(3):
          np.testing.assert_allclose(
            gradients[tap][(k,) + position],
            difference[image, k],
            rtol=1e-6,
            atol=1e-9,
          )
        # The other image's scores do not move.
        np.testing.assert_allclose(difference[1 - image], 0.0, atol=1e-9)


def test_forgotten_perturbations_raise(tiny_net):
  net, params, x = tiny_net
  _, perturbations = tiny_forward(net, params, x)

  def forward_without(perturbations):
    scores, features = maps.apply_with_taps(
      net, TINY_PREFIX, {'params': params}, x
    )
    return scores, features, None

  with pytest.raises(maps.MissingPerturbationError, match='T/a'):
    maps.tap_gradients(forward_without, perturbations)


def test_sown_tap_without_perturbation_raises(tiny_net):
  net, params, x = tiny_net
  forward, perturbations = tiny_forward(net, params, x)

  def forward_one_tap(only_a):
    # Passes the perturbation of tap a only: Flax rejects the missing b.
    return forward({**only_a, 'T/b': jnp.zeros_like(perturbations['T/b'])})

  with pytest.raises(maps.MissingPerturbationError, match=r'T/b'):
    maps.tap_gradients(
      lambda p: forward_one_tap({'T/a': p['T/a']}),
      {'T/a': perturbations['T/a']},
    )
  with pytest.raises(ValueError, match='missing perturbation'):
    partial = {'a': perturbations['T/a']}
    net.apply({'params': params, 'perturbations': partial}, x)


def test_replicated_perturbations_raise_under_shard_map(tiny_net):
  # Zeros made with jnp.zeros are replicated over the devices; the backward
  # pass would sum their gradients over the devices' images.
  net, params, _ = tiny_net
  mesh = step.create_mesh()
  images = jax.random.normal(jax.random.key(2), (8, IMAGE_SIDE, IMAGE_SIDE, 3))

  def local(images, replicated):
    forward, perturbations = tiny_forward(net, params, images)
    if replicated:
      perturbations = jax.tree.map(
        lambda p: jnp.zeros(p.shape, p.dtype), perturbations
      )
    return maps.tap_gradients(forward, perturbations)[2]['T/a']

  def sharded(replicated):
    return jax.shard_map(
      lambda x: local(x, replicated),
      mesh=mesh,
      in_specs=jax.sharding.PartitionSpec(step.DATA_AXIS),
      out_specs=jax.sharding.PartitionSpec(None, step.DATA_AXIS),
    )

  with pytest.raises(ValueError, match='summed over the devices'):
    sharded(True)(images)
  got = sharded(False)(images)
  forward, perturbations = tiny_forward(net, params, images)
  want = maps.tap_gradients(forward, perturbations)[2]['T/a']
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_repeated_calls_do_not_accumulate(tiny_net):
  net, params, x = tiny_net
  _, state = net.apply({'params': params}, x, mutable=['intermediates'])
  stale = {'params': params, 'intermediates': state['intermediates']}
  # Flax itself appends to sown values passed back in.
  _, again = net.apply(stale, x, mutable=['intermediates'])
  assert len(again['intermediates']['a']) == 2

  _, first = maps.apply_with_taps(net, TINY_PREFIX, stale, x)
  _, second = maps.apply_with_taps(net, TINY_PREFIX, stale, x)
  for tap in ('T/a', 'T/b'):
    assert first[tap].shape == second[tap].shape
    np.testing.assert_array_equal(first[tap], second[tap])
  np.testing.assert_array_equal(first['T/a'], state['intermediates']['a'][0])

  forward, perturbations = tiny_forward(net, params, x)
  first_call = maps.tap_gradients(forward, perturbations)
  second_call = maps.tap_gradients(forward, perturbations)
  for tap in ('T/a', 'T/b'):
    np.testing.assert_array_equal(first_call[2][tap], second_call[2][tap])


# Shared steps.


@pytest.mark.parametrize(
  ('grid', 'image', 'cell'),
  [
    ((8, 8), (32, 32), (3, 5)),
    ((6, 10), (48, 80), (2, 7)),
    ((6, 10), (48, 40), (4, 1)),
  ],
)
def test_impulse_lands_on_its_cell(grid, image, cell):
  weighted = np.zeros(grid, np.float32)
  weighted[cell] = 1.0
  got, scale = maps.finish_maps(jnp.asarray(weighted), image)
  got = np.asarray(got)
  assert got.shape == image
  row, col = cell
  factors = (image[0] // grid[0], image[1] // grid[1])
  assert factors[0] * grid[0] == image[0]
  assert factors[1] * grid[1] == image[1]

  # With half-pixel centres the cell's centre is at pixel coordinate
  # f * index + (f - 1) / 2 along each axis, for an upsampling factor f.
  centres = [f * i + (f - 1) / 2 for f, i in zip(factors, cell, strict=True)]

  # The pixels nearest the cell's centre are the maximum.
  peak = np.argwhere(got == 1.0)
  expected_peak = [
    (r, c)
    for r in sorted({int(np.floor(centres[0])), int(np.ceil(centres[0]))})
    for c in sorted({int(np.floor(centres[1])), int(np.ceil(centres[1]))})
  ]
  assert sorted(map(tuple, peak)) == expected_peak

  # The mass is centred on the cell's centre: no half-cell shift.
  rows, cols = np.indices(image)
  total = got.sum()
  assert abs((got * rows).sum() / total - centres[0]) < 1e-4
  assert abs((got * cols).sum() / total - centres[1]) < 1e-4

  # Non-zero exactly where the sampled coordinate is within one cell of
  # the impulse: pixels f * (i - 1/2) to f * (i + 3/2) - 1.
  nonzero = np.argwhere(got > 0)
  for axis, (f, i) in enumerate(zip(factors, (row, col), strict=True)):
    assert nonzero[:, axis].min() == f * i - f // 2, axis
    assert nonzero[:, axis].max() == f * i + f + f // 2 - 1, axis

  want, want_scale = reference_finish(weighted, *image)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(float(scale), want_scale, rtol=1e-6)


def test_zero_map_stays_zero():
  got, scale = maps.finish_maps(jnp.zeros((2, 4, 4)), (8, 8))
  np.testing.assert_array_equal(got, 0.0)
  np.testing.assert_array_equal(scale, 0.0)
  # Negative everywhere is zero after ReLU.
  got, scale = maps.finish_maps(-jnp.ones((4, 4)), (8, 8))
  np.testing.assert_array_equal(got, 0.0)
  assert float(scale) == 0.0


@pytest.mark.parametrize('method', sorted(maps.METHODS))
def test_extreme_inputs_give_finite_maps(method):
  key_a, key_g = jax.random.split(jax.random.key(3))
  shape = (2, 4, 4, 8)
  uniform = jax.random.uniform(key_a, shape)
  normal = jax.random.normal(key_g, shape)
  cases = {
    'zero gradients': (uniform, jnp.zeros(shape)),
    'zero activations': (jnp.zeros(shape), normal),
    'constant': (jnp.full(shape, 0.5), jnp.full(shape, -0.25)),
    'gradients 1e15': (uniform, 1e15 * normal),
    'gradients 1e30': (uniform, 1e30 * normal),
    'infinite gradients': (uniform, jnp.inf * normal),
  }
  for case, (activations, gradients) in cases.items():
    got, scale = maps.finish_maps(
      maps.METHODS[method](activations, gradients), (8, 8)
    )
    assert np.isfinite(np.asarray(got)).all(), case
    assert np.isfinite(np.asarray(scale)).all(), case
    assert float(jnp.min(got)) >= 0.0, case
    assert float(jnp.max(got)) <= 1.0, case
    if case in ('zero gradients', 'zero activations'):
      np.testing.assert_array_equal(got, 0.0, err_msg=case)


# Targets and the batched computation on G and D.


def tiny_setup():
  config = make_tiny_config()
  info = pipeline.dataset_info(config)
  networks = step.create_networks(config, info.attributes)
  # Random weights everywhere, FiLM included (Flax starts it at zero, which
  # would make every noise map zero), so that each target depends on its
  # taps.
  g_params, d_params = random_params.gan_params(
    networks.generator, networks.discriminator, config.data.image_size
  )
  return config, info, networks, g_params, d_params


ALL_GROUPS = (
  'attributes',
  'realness',
  'generated_attributes',
  'generated_realness',
  'edits',
  'bottleneck',
  'noise',
)


@pytest.fixture(scope='module')
def computed():
  config, info, networks, g_params, d_params = tiny_setup()
  targets = maps.make_targets(
    ALL_GROUPS,
    info.attributes,
    selected=['Smiling', 'Bangs'],
    has_region=networks.regions.has_region,
    num_latent=2,
    bottleneck_channels=maps.bottleneck_channels(config),
    noise_dim=config.model.noise_dim,
  )
  # Grad-CAM, whose result is linear in the gradients: Grad-CAM++ divides
  # by sums that can come near zero, which turns the rounding differences
  # between batch shapes into map differences of up to 2e-4 here.
  spec = maps.make_spec(config, networks, targets, 'grad_cam', 'float32')
  mesh = step.create_mesh()
  sharded = maps.make_maps_fn(spec, mesh)
  single = jax.jit(lambda g, d, batch: maps.maps_for_batch(spec, g, d, batch))
  examples = pipeline.load_examples(config, pipeline.test_indices(0, 16))
  batch = {key: examples[key] for key in ('image', 'parts', 'attributes')}
  batch['row'] = np.arange(16, dtype=np.int32)
  outputs = jax.tree.map(np.asarray, sharded(g_params, d_params, batch))
  return {
    'spec': spec,
    'sharded': sharded,
    'single': single,
    'params': (g_params, d_params),
    'batch': batch,
    'outputs': outputs,
  }


def test_make_targets_rejects_bad_requests():
  attributes = ('Bangs', 'Smiling')
  with pytest.raises(ValueError, match='unknown target groups'):
    maps.make_targets(['colour'], attributes)
  with pytest.raises(ValueError, match='unknown attributes'):
    maps.make_targets(['attributes'], attributes, selected=['Hat'])
  with pytest.raises(ValueError, match='no region|has a region'):
    maps.make_targets(['edits'], attributes, has_region=[False, False])
  with pytest.raises(ValueError, match='num_latent=9'):
    maps.make_targets(
      ['bottleneck'], attributes, num_latent=9, bottleneck_channels=8
    )


def test_layers_pair_only_dependent_targets(computed):
  spec = computed['spec']
  names = [t.name for t in spec.targets]
  by_tap = {
    layer.name: [names[i] for i in layer.targets] for layer in spec.layers
  }
  real = [n for n in names if n.startswith('real/')]
  assert real
  for tap, targets in by_tap.items():
    if tap.startswith('G/'):
      assert not set(real) & set(targets), tap
    else:
      assert not [n for n in targets if '/bottleneck/' in n], tap
      assert not [n for n in targets if '/noise/' in n], tap
  assert 'generated/bottleneck/0' in by_tap['G/enc1']
  assert 'generated/bottleneck/0' in by_tap['G/bottleneck']
  assert 'generated/bottleneck/0' not in by_tap['G/dec0']
  assert 'generated/noise/0' not in by_tap['G/enc1']
  assert 'generated/noise/0' in by_tap['G/bottleneck']
  assert 'generated/noise/0' in by_tap['G/dec0']
  assert by_tap['D/block1'] == [
    n for n in names if '/bottleneck/' not in n and '/noise/' not in n
  ]


def test_outputs_have_layer_shapes(computed):
  spec, outputs = computed['spec'], computed['outputs']
  for layer in spec.layers:
    maps_array = outputs['maps'][layer.name]
    assert maps_array.shape == (16, len(layer.targets), 32, 32), layer.name
    assert outputs['scales'][layer.name].shape == (16, len(layer.targets))
  assert outputs['views'].shape == (16, len(spec.views), 32, 32, 3)
  assert outputs['views'].dtype == np.uint8
  # With these parameters every target depends on its taps somewhere.
  for layer in spec.layers:
    assert (outputs['scales'][layer.name] > 0).any(), layer.name


def test_map_in_batch_equals_image_alone(computed):
  # Different batch shapes round differently, by up to 1e-5 here; a map
  # that depended on its batch mates would differ by far more.
  g_params, d_params = computed['params']
  batch, outputs = computed['batch'], computed['outputs']
  for row in (0, 5, 11):
    alone = {key: value[row : row + 1] for key, value in batch.items()}
    single = jax.tree.map(
      np.asarray, computed['single'](g_params, d_params, alone)
    )
    for tap, values in outputs['maps'].items():
      np.testing.assert_allclose(
        single['maps'][tap][0], values[row], rtol=1e-4, atol=3e-5, err_msg=tap
      )
      np.testing.assert_allclose(
        single['scales'][tap][0],
        outputs['scales'][tap][row],
        rtol=1e-4,
        atol=1e-9,
        err_msg=tap,
      )
    np.testing.assert_array_equal(single['views'][0], outputs['views'][row])


def test_black_and_constant_images_give_finite_maps(computed):
  g_params, d_params = computed['params']
  batch = dict(computed['batch'])
  image = np.zeros_like(batch['image'])
  image[8:] = 128
  batch['image'] = image
  outputs = jax.tree.map(
    np.asarray, computed['sharded'](g_params, d_params, batch)
  )
  for tap, values in outputs['maps'].items():
    scales = outputs['scales'][tap]
    assert np.isfinite(values).all(), tap
    assert np.isfinite(scales).all(), tap
    assert values.min() >= 0.0, tap
    assert values.max() <= 1.0, tap
    assert scales.min() >= 0.0, tap
    # A map is all zero exactly when its maximum is zero.
    peaks = values.max(axis=(2, 3))
    np.testing.assert_array_equal(peaks == 0, scales == 0, err_msg=tap)


def test_dropped_pairs_have_zero_gradients(computed):
  # The pairs left out of the layers are exactly those with no dependence.
  spec = computed['spec']
  g_params, d_params = computed['params']
  generator, discriminator = spec.generator, spec.discriminator
  batch = computed['batch']
  image = step.image_to_float(batch['image'][:2])
  mask = jnp.ones(image.shape[:3] + (1,))
  attributes = jnp.asarray(batch['attributes'][:2], jnp.float32)
  noise = maps.row_noise(spec.seed, jnp.arange(2), generator.noise_dim)
  g_zeros = maps.prefixed(
    maps.zero_perturbations(
      generator, g_params, image, mask, attributes, noise
    ),
    'G',
  )

  def bottleneck_sum(perturbations):
    variables = {
      'params': g_params,
      'perturbations': maps.split_perturbations(perturbations, 'G'),
    }
    _, features = maps.apply_with_taps(
      generator, 'G', variables, image, mask, attributes, noise
    )
    score = jnp.sum(features['G/bottleneck'][..., 0], axis=(1, 2))
    return score[:, None], features, None

  gradients = jax.jit(lambda p: maps.tap_gradients(bottleneck_sum, p)[2])(
    g_zeros
  )
  for tap in ('G/dec1', 'G/dec0'):
    np.testing.assert_array_equal(gradients[tap], 0.0)
  for tap in ('G/enc1', 'G/enc2', 'G/bottleneck'):
    assert np.abs(np.asarray(gradients[tap])).max() > 0, tap

  def g_features(noise):
    _, features = maps.apply_with_taps(
      generator, 'G', {'params': g_params}, image, mask, attributes, noise
    )
    return features, None

  direction = jnp.zeros((1,) + noise.shape).at[0, :, 0].set(1.0)
  tangents = jax.jit(lambda z, d: maps.tap_tangents(g_features, z, d)[1])(
    noise, direction
  )
  for tap in ('G/enc1', 'G/enc2'):
    np.testing.assert_array_equal(tangents[tap], 0.0)
  for tap in ('G/bottleneck', 'G/dec1', 'G/dec0'):
    assert np.abs(np.asarray(tangents[tap])).max() > 0, tap
  del discriminator, d_params


# The maps folder.


def folder_arrays(rows: int, rng) -> dict:
  return {
    maps_folder.IMAGES: rng.integers(0, 256, (rows, 8, 12, 3), np.uint8),
    maps_folder.PARTS: rng.integers(0, 19, (rows, 8, 12), np.uint8),
    'D_block1': rng.random((rows, 3, 8, 12)).astype(np.float16),
    'D_block1.scale': rng.random((rows, 3)).astype(np.float32),
  }


def make_folder(path, rows):
  specs = maps_folder.array_specs(
    num_images=rows,
    image_shape=(8, 12),
    layers={'D/block1': 3},
    dtype='float16',
    has_parts=True,
    num_views=0,
  )
  header = {
    'method': 'grad_cam',
    'layers': [
      {
        'name': 'D/block1',
        'file': 'D_block1.npy',
        'scale_file': 'D_block1.scale.npy',
        'targets': ['real/a', 'real/b', 'real/realness'],
      }
    ],
    'targets': [
      {'name': name, 'view': 'real'}
      for name in ('real/a', 'real/b', 'real/realness')
    ],
  }
  return maps_folder.MapsWriter.create(path, header, specs)


def assert_folder_holds(path, arrays):
  loaded = maps_folder.load(path)
  assert loaded.index['rows_done'] == len(arrays[maps_folder.IMAGES])
  for stem, expected in arrays.items():
    got = loaded.arrays[stem]
    assert isinstance(got, np.memmap), stem
    assert got.dtype == expected.dtype, stem
    np.testing.assert_array_equal(got, expected, err_msg=stem)
    # The file reads back with numpy alone.
    np.testing.assert_array_equal(np.load(path / f'{stem}.npy'), expected)
  np.testing.assert_array_equal(
    loaded.map('D/block1', 'real/b'), arrays['D_block1'][:, 1]
  )
  np.testing.assert_array_equal(
    loaded.scales('D/block1'), arrays['D_block1.scale']
  )


def test_folder_loads_back_over_write_batches(tmp_path):
  arrays = folder_arrays(10, np.random.default_rng(0))
  writer = make_folder(tmp_path / 'maps', 10)
  for start in range(0, 10, 4):
    writer.write_rows(
      start, {k: v[start : start + 4] for k, v in arrays.items()}
    )
  writer.close()
  assert_folder_holds(tmp_path / 'maps', arrays)


def test_folder_resumes_after_interruption(tmp_path):
  arrays = folder_arrays(10, np.random.default_rng(1))
  path = tmp_path / 'maps'
  writer = make_folder(path, 10)
  writer.write_rows(0, {k: v[:4] for k, v in arrays.items()})
  # A write that dies half way: arrays touched, rows_done not moved.
  half = {k: np.zeros_like(v[4:8]) for k, v in arrays.items()}
  for stem, array in writer._arrays.items():
    array[4:8] = half[stem]
  del writer

  with pytest.raises(maps_folder.MapsFolderError, match='4 of 10'):
    maps_folder.load(path)
  partial = maps_folder.load(path, allow_partial=True)
  assert len(partial.images) == 4
  np.testing.assert_array_equal(partial.images, arrays[maps_folder.IMAGES][:4])

  resumed = maps_folder.MapsWriter.open(path)
  assert resumed.rows_done == 4
  with pytest.raises(ValueError, match='in order'):
    resumed.write_rows(8, {k: v[8:] for k, v in arrays.items()})
  for start in (4, 8):
    resumed.write_rows(
      start, {k: v[start : start + 4] for k, v in arrays.items()}
    )
  resumed.close()
  assert_folder_holds(path, arrays)


def test_folder_rejects_other_version(tmp_path):
  path = tmp_path / 'maps'
  make_folder(path, 2).close()
  index = (path / 'index.json').read_text()
  (path / 'index.json').write_text(
    index.replace('"format_version": 1', '"format_version": 2')
  )
  with pytest.raises(maps_folder.MapsFolderError, match='version 2'):
    maps_folder.load(path, allow_partial=True)
