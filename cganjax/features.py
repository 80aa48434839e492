r"""Feature extractors for the style and perceptual losses.

`loss.features.extractor` picks one of three:

- `discriminator` (default): the discriminator's own taps `D/block1` ..
  `D/block{levels}` (1/2 to 1/2**levels of the image side). The caller
  passes D's current parameters, which go through `jax.lax.stop_gradient`,
  so the loss sends gradients to the image but never into D.
- `random`: a fixed convolutional network with He-normal weights drawn from
  `loss.features.seed`, never trained. Layers `relu1_1`, `relu2_1`,
  `relu3_1` and `relu4_1` (32, 64, 128 and 128 channels, 2x2 average
  pooling between them, so full size to 1/8 of the side).
- `vgg19`: the 16 convolutions of VGG-19 (Simonyan and Zisserman, 2015),
  with 2x2 max pooling between the five blocks, read from the `.npz` file at
  `loss.features.weights_path`. Layers `relu1_1` .. `relu5_4`, each the ReLU
  output of the convolution of the same name. Nothing is downloaded.

Each extractor returns the layers listed in `loss.style.layers`, or its
default layers when that list is empty (`D/block1` .. `D/block3`, all four
random layers, or VGG's `relu1_1` .. `relu4_1`).

VGG-19 weights file
-------------------
An uncompressed or compressed NumPy `.npz` archive with, for every
convolution `conv{b}_{i}` (b = 1..5; i = 1..2 in blocks 1 and 2, 1..4 in
blocks 3 to 5):

- `conv{b}_{i}/kernel`: float, shape [3, 3, C_in, C_out] (HWIO),
  C_out = 64, 128, 256, 512, 512 by block and C_in = 3 for `conv1_1`, whose
  input channels are in RGB order;
- `conv{b}_{i}/bias`: float, shape [C_out];
- optional `input/mean` and `input/std`, shape [3]: the network's input is
  (x - mean) / std, where x is the RGB image scaled to [0, 1]. They default
  to the ImageNet statistics that torchvision's weights expect, mean
  (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225).

Other keys are ignored. Convert the published ImageNet weights once, in an
environment where this package and torchvision are installed (torchvision
downloads the weights itself):

  python -c "import numpy as np, torchvision; \
from cganjax.features import vgg19_arrays_from_torchvision as convert; \
model = torchvision.models.vgg19(weights='IMAGENET1K_V1'); \
state = {k: v.numpy() for k, v in model.state_dict().items()}; \
np.savez('vgg19.npz', **convert(state))"

or from Keras. Keras' weights expect BGR input in [0, 255] minus the
channel means, so the converter reorders conv1_1's input channels and
stores the matching `input/mean` and `input/std`:

  python -c "import numpy as np, keras; \
from cganjax.features import vgg19_arrays_from_keras as convert; \
model = keras.applications.VGG19(weights='imagenet', include_top=False); \
layers = {layer.name: layer.get_weights() for layer in model.layers}; \
np.savez('vgg19.npz', **convert(layers))"

NOTE: the tests run both converters on random arrays laid out as torchvision
and Keras store them, not on the published files, which they cannot
download.
"""

import dataclasses
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cganjax.errors import InputError

DISCRIMINATOR = 'discriminator'
RANDOM = 'random'
VGG19 = 'vgg19'
EXTRACTORS = (DISCRIMINATOR, RANDOM, VGG19)

# Convolutions per block and output channels per block.
VGG19_BLOCKS = (2, 2, 4, 4, 4)
VGG19_CHANNELS = (64, 128, 256, 512, 512)
RANDOM_BLOCKS = (1, 1, 1, 1)
RANDOM_CHANNELS = (32, 64, 128, 128)

# Input normalisation of torchvision's ImageNet weights, for RGB in [0, 1].
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Keras (Caffe) VGG input: BGR in [0, 255] minus these means, listed in BGR.
KERAS_BGR_MEAN = (103.939, 116.779, 123.68)

WEIGHTS_HELP = (
  'convert the published VGG-19 weights as the docstring of '
  'cganjax/features.py shows and pass the file with '
  '--config.loss.features.weights_path'
)


@dataclasses.dataclass(frozen=True)
class FeatureExtractor:
  """A feature network: (params, images in [-1, 1], layers) -> features.

  `params` is None for the discriminator extractor, whose parameters the
  caller passes at each call. The other extractors store fixed parameters
  here, and the caller passes them back in as a jit argument, so that large
  weights do not become constants of the compiled program.
  """

  name: str
  layer_names: tuple[str, ...]  # Every layer it can return, shallow first.
  default_layers: tuple[str, ...]
  params: Any
  apply_fn: Callable[[Any, jax.Array, tuple[str, ...]], list[jax.Array]]

  def __call__(
    self, params, images: jax.Array, layers: Sequence[str]
  ) -> list[jax.Array]:
    """Return the feature maps [B, h, w, C] of `layers`, in that order."""
    return self.apply_fn(params, images, tuple(layers))

  def select_layers(self, requested: Sequence[str]) -> tuple[str, ...]:
    """Validate requested layer names; an empty request gives the default."""
    if not requested:
      return self.default_layers
    unknown = [name for name in requested if name not in self.layer_names]
    if unknown:
      raise InputError(
        f'loss.style.layers names {unknown[0]!r}, which the {self.name!r} '
        f'extractor does not have; choose from {", ".join(self.layer_names)} '
        '(or an empty tuple for the default).'
      )
    return tuple(requested)


def create_extractor(features_config, discriminator) -> FeatureExtractor:
  """Build the extractor that `loss.features` describes.

  Raises InputError for an unknown extractor name and, for `vgg19`, for a
  weights file that is missing or malformed.
  """
  name = features_config.extractor
  if name == DISCRIMINATOR:
    return discriminator_extractor(discriminator)
  if name == RANDOM:
    return random_extractor(int(features_config.seed))
  if name == VGG19:
    return vgg19_extractor(load_vgg19(features_config.weights_path))
  raise InputError(
    f'loss.features.extractor={name!r} is not supported; use one of '
    f'{", ".join(EXTRACTORS)}.'
  )


def discriminator_extractor(discriminator) -> FeatureExtractor:
  """Features from the discriminator's taps, with no gradient into D."""
  layer_names = tuple(discriminator.tap_names())
  prefix_length = len(layer_names[0].split('/')[0]) + 1

  def apply_fn(d_params, images, layers):
    frozen = jax.lax.stop_gradient(d_params)
    _, variables = discriminator.apply(
      {'params': frozen}, images, mutable=['intermediates']
    )
    taps = variables['intermediates']
    # `sow` stores a tuple of values per tap; D sows each tap once.
    return [taps[name[prefix_length:]][0] for name in layers]

  return FeatureExtractor(
    name=DISCRIMINATOR,
    layer_names=layer_names,
    default_layers=layer_names[:3],
    params=None,
    apply_fn=apply_fn,
  )


def random_extractor(seed: int) -> FeatureExtractor:
  """Build the fixed, seeded random network of the module docstring."""
  shapes = conv_stack_shapes(RANDOM_BLOCKS, RANDOM_CHANNELS)
  params = {}
  key = jax.random.key(seed)
  for index, (name, shape) in enumerate(sorted(shapes.items())):
    if name.endswith('/bias'):
      params[name] = jnp.zeros(shape, jnp.float32)
      continue
    fan_in = shape[0] * shape[1] * shape[2]
    params[name] = jax.random.normal(
      jax.random.fold_in(key, index), shape, jnp.float32
    ) * np.sqrt(2.0 / fan_in)
  layer_names = conv_stack_layer_names(RANDOM_BLOCKS)

  def apply_fn(params, images, layers):
    return apply_conv_stack(params, images, layers, RANDOM_BLOCKS, 'avg')

  return FeatureExtractor(
    name=RANDOM,
    layer_names=layer_names,
    default_layers=layer_names,
    params=params,
    apply_fn=apply_fn,
  )


def vgg19_extractor(params: Mapping[str, np.ndarray]) -> FeatureExtractor:
  """VGG-19 features from arrays in the `.npz` layout (see `load_vgg19`)."""
  layer_names = conv_stack_layer_names(VGG19_BLOCKS)

  def apply_fn(params, images, layers):
    unit = (images.astype(jnp.float32) + 1.0) / 2.0
    normalised = (unit - params['input/mean']) / params['input/std']
    return apply_conv_stack(params, normalised, layers, VGG19_BLOCKS, 'max')

  return FeatureExtractor(
    name=VGG19,
    layer_names=layer_names,
    default_layers=('relu1_1', 'relu2_1', 'relu3_1', 'relu4_1'),
    params={name: jnp.asarray(value) for name, value in params.items()},
    apply_fn=apply_fn,
  )


def conv_stack_layer_names(blocks: Sequence[int]) -> tuple[str, ...]:
  return tuple(
    f'relu{block}_{index}'
    for block, count in enumerate(blocks, start=1)
    for index in range(1, count + 1)
  )


def conv_stack_shapes(
  blocks: Sequence[int], channels: Sequence[int], in_channels: int = 3
) -> dict[str, tuple[int, ...]]:
  """Kernel (HWIO) and bias shapes of a stack of 3x3 convolutions."""
  shapes = {}
  previous = in_channels
  for block, (count, width) in enumerate(
    zip(blocks, channels, strict=True), start=1
  ):
    for index in range(1, count + 1):
      shapes[f'conv{block}_{index}/kernel'] = (3, 3, previous, width)
      shapes[f'conv{block}_{index}/bias'] = (width,)
      previous = width
  return shapes


def apply_conv_stack(
  params: Mapping[str, jax.Array],
  images: jax.Array,
  layers: Sequence[str],
  blocks: Sequence[int],
  pooling: str,
) -> list[jax.Array]:
  """Run 3x3 'SAME' convolutions with ReLU, pooling 2x2 between blocks.

  Stops after the deepest requested layer, so shallow layers cost only the
  convolutions that lead to them. `pooling` is 'max' or 'avg'.
  """
  requested = set(layers)
  found = {}
  x = images.astype(jnp.float32)
  for block, count in enumerate(blocks, start=1):
    if block > 1:
      x = _pool(x, pooling)
    for index in range(1, count + 1):
      name = f'conv{block}_{index}'
      x = jax.lax.conv_general_dilated(
        x,
        params[f'{name}/kernel'],
        window_strides=(1, 1),
        padding='SAME',
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      )
      x = jax.nn.relu(x + params[f'{name}/bias'])
      layer = f'relu{block}_{index}'
      if layer in requested:
        found[layer] = x
      if len(found) == len(requested):
        return [found[name] for name in layers]
  return [found[name] for name in layers]


def _pool(x: jax.Array, pooling: str) -> jax.Array:
  window = (1, 2, 2, 1)
  if pooling == 'max':
    return jax.lax.reduce_window(
      x, -jnp.inf, jax.lax.max, window, window, 'VALID'
    )
  total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, window, 'VALID')
  return total / 4.0


def vgg19_shapes() -> dict[str, tuple[int, ...]]:
  """Return the shape of every array of the VGG-19 weights file, by key."""
  shapes = conv_stack_shapes(VGG19_BLOCKS, VGG19_CHANNELS)
  shapes['input/mean'] = (3,)
  shapes['input/std'] = (3,)
  return shapes


def load_vgg19(path) -> dict[str, np.ndarray]:
  """Read and check a VGG-19 weights file in the `.npz` layout above.

  Returns float32 arrays by key, with `input/mean` and `input/std` filled in
  when the file has none. Raises a one-line InputError naming the file and
  the fix when it is missing, is not an `.npz` archive, lacks an array or
  has one of the wrong shape.
  """
  if not str(path):
    raise InputError(
      'loss.features.extractor=vgg19 needs loss.features.weights_path; '
      + WEIGHTS_HELP
      + '.'
    )
  path = Path(path).expanduser()
  if not path.is_file():
    raise InputError(f'VGG-19 weights file {path} not found; {WEIGHTS_HELP}.')
  try:
    archive = np.load(path, allow_pickle=False)
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
    reason = (str(error).splitlines() or [type(error).__name__])[0]
    raise InputError(
      f'VGG-19 weights file {path} is not a readable .npz archive '
      f'({reason}); {WEIGHTS_HELP}.'
    ) from None
  if not isinstance(archive, np.lib.npyio.NpzFile):
    raise InputError(
      f'VGG-19 weights file {path} contains a single array, not an .npz '
      f'archive of named arrays; {WEIGHTS_HELP}.'
    )
  with archive:
    arrays = {}
    defaults = {'input/mean': IMAGENET_MEAN, 'input/std': IMAGENET_STD}
    for key, shape in vgg19_shapes().items():
      if key in archive.files:
        value = archive[key]
      elif key in defaults:
        value = np.asarray(defaults[key], np.float32)
      else:
        raise InputError(
          f'VGG-19 weights file {path} has no array {key!r}; {WEIGHTS_HELP}.'
        )
      if value.shape != shape:
        raise InputError(
          f'VGG-19 weights file {path}: {key!r} has shape '
          f'{list(value.shape)}, expected {list(shape)} (kernels are HWIO); '
          f'{WEIGHTS_HELP}.'
        )
      if not np.issubdtype(value.dtype, np.floating):
        raise InputError(
          f'VGG-19 weights file {path}: {key!r} has dtype {value.dtype}, '
          f'expected a float type; {WEIGHTS_HELP}.'
        )
      arrays[key] = value.astype(np.float32)
  return arrays


def vgg19_arrays_from_torchvision(
  state_dict: Mapping[str, Any],
) -> dict[str, np.ndarray]:
  """Convert torchvision's VGG-19 state dict (as NumPy arrays) to the layout.

  Takes the 4-D `features.N.weight` kernels [C_out, C_in, 3, 3] in layer
  order, transposes them to HWIO and pairs each with its bias. The
  classifier's 2-D weights are skipped. Keys may lack the `features.` prefix,
  as in the state dict of `model.features`.
  """
  kernels = []
  for key, value in state_dict.items():
    parts = key.split('.')
    if parts[-1] == 'weight' and np.ndim(value) == 4:
      kernels.append((int(parts[-2]), '.'.join(parts[:-1])))
  kernels.sort()
  names = [name[len('relu') :] for name in conv_stack_layer_names(VGG19_BLOCKS)]
  if len(kernels) != len(names):
    raise ValueError(
      f'expected {len(names)} convolution kernels in the VGG-19 state dict, '
      f'found {len(kernels)}.'
    )
  arrays = {}
  for suffix, (_, prefix) in zip(names, kernels, strict=True):
    kernel = np.asarray(state_dict[f'{prefix}.weight'], np.float32)
    arrays[f'conv{suffix}/kernel'] = kernel.transpose(2, 3, 1, 0)
    arrays[f'conv{suffix}/bias'] = np.asarray(
      state_dict[f'{prefix}.bias'], np.float32
    )
  arrays['input/mean'] = np.asarray(IMAGENET_MEAN, np.float32)
  arrays['input/std'] = np.asarray(IMAGENET_STD, np.float32)
  return arrays


def vgg19_arrays_from_keras(
  layer_weights: Mapping[str, Sequence[Any]],
) -> dict[str, np.ndarray]:
  """Convert Keras VGG-19 weights, {'block1_conv1': [kernel, bias], ...}.

  Keras kernels are already HWIO. Keras' VGG-19 reads BGR in [0, 255] minus
  `KERAS_BGR_MEAN`, so conv1_1's input channels are reversed to RGB and the
  input statistics become mean = KERAS_BGR_MEAN reversed / 255 and
  std = 1 / 255, which gives the same input on the [0, 1] RGB scale.
  """
  arrays = {}
  for block, count in enumerate(VGG19_BLOCKS, start=1):
    for index in range(1, count + 1):
      keras_name = f'block{block}_conv{index}'
      if keras_name not in layer_weights:
        raise ValueError(
          f'the Keras VGG-19 weights have no layer {keras_name}.'
        )
      kernel, bias = layer_weights[keras_name]
      kernel = np.asarray(kernel, np.float32)
      if (block, index) == (1, 1):
        kernel = kernel[:, :, ::-1, :]
      arrays[f'conv{block}_{index}/kernel'] = np.ascontiguousarray(kernel)
      arrays[f'conv{block}_{index}/bias'] = np.asarray(bias, np.float32)
  arrays['input/mean'] = np.asarray(KERAS_BGR_MEAN[::-1], np.float32) / 255.0
  arrays['input/std'] = np.full((3,), 1.0 / 255.0, np.float32)
  return arrays
