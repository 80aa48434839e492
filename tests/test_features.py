"""Feature extractors: D's taps, the random network and VGG-19 weight files."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_step import ATTRIBUTES

from cganjax import features, losses, step
from cganjax.errors import InputError


def random_images(batch=2, size=32, seed=0):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.uniform(-1, 1, (batch, size, size, 3)), jnp.float32)


def random_vgg19_arrays(seed=0, dtype=np.float32):
  """Random arrays in the documented layout, He-scaled to keep activations."""
  rng = np.random.default_rng(seed)
  arrays = {}
  for key, shape in features.vgg19_shapes().items():
    if key.endswith('/kernel'):
      scale = np.sqrt(2.0 / (9 * shape[2]))
      arrays[key] = (rng.standard_normal(shape, np.float32) * scale).astype(
        dtype
      )
    elif key.endswith('/bias'):
      arrays[key] = rng.uniform(-0.1, 0.1, shape).astype(dtype)
  arrays['input/mean'] = np.array([0.5, 0.4, 0.3], dtype)
  arrays['input/std'] = np.array([0.2, 0.25, 0.5], dtype)
  return arrays


@pytest.fixture(scope='module')
def vgg19_file(tmp_path_factory):
  path = tmp_path_factory.mktemp('vgg') / 'vgg19.npz'
  arrays = random_vgg19_arrays()
  np.savez(path, **arrays)
  return path, arrays


def conv_relu_numpy(x, kernel, bias):
  """relu(3x3 convolution with zero 'same' padding + bias), in float64."""
  x = np.asarray(x, np.float64)
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  _, height, width, _ = x.shape
  out = np.zeros(x.shape[:3] + (kernel.shape[-1],))
  for dy in range(3):
    for dx in range(3):
      window = padded[:, dy : dy + height, dx : dx + width]
      out += np.einsum('bhwi,io->bhwo', window, kernel[dy, dx])
  return np.maximum(out + bias, 0.0)


def first_layer_numpy(images, kernel, bias, mean, std):
  """VGG's relu1_1 of images in [-1, 1], computed independently."""
  unit = (np.asarray(images, np.float64) + 1) / 2
  return conv_relu_numpy((unit - mean) / std, kernel, bias)


def tiny_discriminator(tiny_config):
  networks = step.create_networks(tiny_config, ATTRIBUTES)
  _, d_params = step.models.init_params(
    networks.generator, networks.discriminator, jax.random.key(0), 32
  )
  return networks.discriminator, d_params


def test_discriminator_extractor_shapes(tiny_config):
  discriminator, d_params = tiny_discriminator(tiny_config)
  extractor = features.discriminator_extractor(discriminator)
  assert extractor.layer_names == ('D/block1', 'D/block2', 'D/block3')
  maps = extractor(d_params, random_images(), ('D/block3', 'D/block1'))
  # d_base_channels=8, d_max_channels=16: 16 channels from level 1 on.
  assert maps[0].shape == (2, 4, 4, 16)
  assert maps[1].shape == (2, 16, 16, 16)


def test_discriminator_extractor_stops_gradient_into_d(tiny_config):
  discriminator, d_params = tiny_discriminator(tiny_config)
  extractor = features.discriminator_extractor(discriminator)
  real = random_images(seed=1)

  def style(params, images):
    layers = ('D/block1', 'D/block2')
    return losses.style_loss(
      extractor(params, real, layers), extractor(params, images, layers)
    )

  param_grads, image_grads = jax.grad(style, argnums=(0, 1))(
    d_params, random_images(seed=2)
  )
  assert all(np.all(g == 0) for g in jax.tree.leaves(param_grads))
  assert float(jnp.max(jnp.abs(image_grads))) > 0.0


def test_random_extractor_is_fixed_by_seed():
  first = features.random_extractor(3)
  second = features.random_extractor(3)
  other = features.random_extractor(4)
  for key, value in first.params.items():
    np.testing.assert_array_equal(value, second.params[key])
  kernel = 'conv1_1/kernel'
  assert not np.array_equal(first.params[kernel], other.params[kernel])
  maps = first(first.params, random_images(), first.default_layers)
  shapes = [m.shape for m in maps]
  expected = [(2, 32, 32, 32), (2, 16, 16, 64), (2, 8, 8, 128), (2, 4, 4, 128)]
  assert shapes == expected
  assert all(float(jnp.mean(m)) > 0.0 for m in maps)


def test_select_layers_default_and_unknown():
  extractor = features.random_extractor(0)
  assert extractor.select_layers(()) == extractor.default_layers
  assert extractor.select_layers(['relu2_1']) == ('relu2_1',)
  with pytest.raises(InputError) as error:
    extractor.select_layers(['relu1_1', 'D/block1'])
  message = str(error.value)
  assert "'D/block1'" in message
  assert 'relu4_1' in message
  assert '\n' not in message


def test_create_extractor_unknown_name(tiny_config):
  discriminator, _ = tiny_discriminator(tiny_config)
  tiny_config.loss.features.extractor = 'alexnet'
  with pytest.raises(InputError, match="extractor='alexnet'"):
    features.create_extractor(tiny_config.loss.features, discriminator)


def test_vgg19_loads_and_runs(vgg19_file, tiny_config):
  path, arrays = vgg19_file
  discriminator, _ = tiny_discriminator(tiny_config)
  tiny_config.loss.features.extractor = 'vgg19'
  tiny_config.loss.features.weights_path = str(path)
  extractor = features.create_extractor(
    tiny_config.loss.features, discriminator
  )
  assert extractor.name == 'vgg19'
  assert len(extractor.layer_names) == 16

  images = random_images(batch=1)
  layers = ('relu1_1', 'relu2_2', 'relu3_4', 'relu4_1', 'relu5_4')
  maps = extractor(extractor.params, images, layers)
  shapes = [m.shape for m in maps]
  expected = [
    (1, 32, 32, 64),
    (1, 16, 16, 128),
    (1, 8, 8, 256),
    (1, 4, 4, 512),
    (1, 2, 2, 512),
  ]
  assert shapes == expected
  assert all(np.all(np.isfinite(m)) for m in maps)
  reference = first_layer_numpy(
    images,
    arrays['conv1_1/kernel'],
    arrays['conv1_1/bias'],
    arrays['input/mean'],
    arrays['input/std'],
  )
  np.testing.assert_allclose(np.asarray(maps[0]), reference, atol=1e-4)


def test_vgg19_default_input_statistics(tmp_path):
  arrays = random_vgg19_arrays(seed=1)
  del arrays['input/mean'], arrays['input/std']
  arrays['classifier/kernel'] = np.zeros((2, 2), np.float32)  # Ignored.
  path = tmp_path / 'no_stats.npz'
  np.savez_compressed(path, **arrays)
  loaded = features.load_vgg19(path)
  np.testing.assert_allclose(loaded['input/mean'], features.IMAGENET_MEAN)
  np.testing.assert_allclose(loaded['input/std'], features.IMAGENET_STD)
  assert 'classifier/kernel' not in loaded


def assert_one_line_error(path, *fragments):
  with pytest.raises(InputError) as error:
    features.load_vgg19(path)
  message = str(error.value)
  assert '\n' not in message
  assert str(path) in message
  assert 'weights_path' in message
  for fragment in fragments:
    assert fragment in message, message


def test_vgg19_wrong_shape_error(tmp_path):
  arrays = {
    'conv1_1/kernel': np.zeros((3, 3, 3, 32), np.float32),
    'conv1_1/bias': np.zeros((64,), np.float32),
  }
  path = tmp_path / 'narrow.npz'
  np.savez(path, **arrays)
  assert_one_line_error(path, "'conv1_1/kernel'", '[3, 3, 3, 32]')


def test_vgg19_torch_layout_kernel_error(tmp_path):
  # A kernel left in PyTorch's OIHW layout is caught by its shape.
  arrays = random_vgg19_arrays(seed=2)
  arrays['conv2_1/kernel'] = arrays['conv2_1/kernel'].transpose(3, 2, 0, 1)
  path = tmp_path / 'oihw.npz'
  np.savez(path, **arrays)
  assert_one_line_error(path, "'conv2_1/kernel'", '[3, 3, 64, 128]')


def test_vgg19_missing_and_malformed_files(tmp_path):
  assert_one_line_error(tmp_path / 'absent.npz', 'not found')
  text = tmp_path / 'notes.npz'
  text.write_text('not an archive\nsecond line\n')
  assert_one_line_error(text, 'not a readable .npz archive')
  single = tmp_path / 'single.npy'
  np.save(single, np.zeros(3))
  assert_one_line_error(single, 'single array')
  partial = tmp_path / 'partial.npz'
  np.savez(partial, **{'conv1_1/kernel': np.zeros((3, 3, 3, 64))})
  assert_one_line_error(partial, "'conv1_1/bias'")
  integers = tmp_path / 'integers.npz'
  arrays = random_vgg19_arrays(seed=3)
  arrays['conv1_1/bias'] = np.zeros(64, np.int32)
  np.savez(integers, **arrays)
  assert_one_line_error(integers, 'int32')
  with pytest.raises(InputError, match='needs loss.features.weights_path'):
    features.load_vgg19('')


def test_torchvision_conversion_maps_layers():
  # Small widths: the converter checks the order, not the sizes.
  rng = np.random.default_rng(4)
  indices = [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34]
  state = {}
  for number, index in enumerate(indices):
    state[f'features.{index}.weight'] = rng.normal(size=(number + 2, 3, 3, 3))
    state[f'features.{index}.bias'] = rng.normal(size=number + 2)
  state['classifier.0.weight'] = rng.normal(size=(4, 8))
  state['classifier.0.bias'] = rng.normal(size=4)
  arrays = features.vgg19_arrays_from_torchvision(state)

  layer_names = features.conv_stack_layer_names(features.VGG19_BLOCKS)
  names = [name[len('relu') :] for name in layer_names]
  for number, (suffix, index) in enumerate(zip(names, indices, strict=True)):
    kernel = arrays[f'conv{suffix}/kernel']
    source = state[f'features.{index}.weight']
    assert kernel.shape == (3, 3, 3, number + 2)
    # HWIO[y, x, i, o] = OIHW[o, i, y, x].
    assert kernel[2, 0, 1, 0] == np.float32(source[0, 1, 2, 0])
    np.testing.assert_array_equal(
      arrays[f'conv{suffix}/bias'], state[f'features.{index}.bias'].astype('f')
    )
  np.testing.assert_allclose(arrays['input/std'], features.IMAGENET_STD)


def test_keras_conversion_keeps_first_layer_output():
  rng = np.random.default_rng(5)
  layers = {}
  for block, count in enumerate(features.VGG19_BLOCKS, start=1):
    for index in range(1, count + 1):
      kernel = rng.normal(size=(3, 3, 3, 4)).astype(np.float32)
      layers[f'block{block}_conv{index}'] = [kernel, rng.normal(size=4)]
  layers['block1_pool'] = []
  arrays = features.vgg19_arrays_from_keras(layers)

  # Keras' own input: BGR in [0, 255] minus the BGR channel means.
  images = np.asarray(random_images(batch=1, size=6, seed=6), np.float64)
  bgr = (images + 1) / 2 * 255.0
  bgr = bgr[..., ::-1] - np.asarray(features.KERAS_BGR_MEAN)
  kernel, bias = layers['block1_conv1']
  keras_output = conv_relu_numpy(bgr, kernel, bias)
  converted = first_layer_numpy(
    images,
    arrays['conv1_1/kernel'],
    arrays['conv1_1/bias'],
    arrays['input/mean'],
    arrays['input/std'],
  )
  np.testing.assert_allclose(converted, keras_output, rtol=1e-4, atol=1e-3)
