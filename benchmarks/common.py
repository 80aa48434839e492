"""Setup shared by the benchmarks: configs, the compiled step, peaks, timing.

Two configs are benchmarked. `synthetic` is configs/synthetic.py (this
project's masked conditional GAN, 64x64, batch 32). `stargan` is
configs/stargan.py (StarGAN, 128x128, batch 16) with train.n_critic=1, so
that one iteration is one D update and one G update, the unit timed in
StarGAN's PyTorch code. `--tiny` shrinks the widths for quick checks.
"""

import dataclasses
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np

from cganjax import step
from cganjax.data import pipeline, synthetic

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from configs import stargan as stargan_config  # noqa: E402
from configs import synthetic as synthetic_config  # noqa: E402

CONFIGS = ('synthetic', 'stargan')

# Dense peak TFLOP/s per device by `device_kind`, for the number format
# that JAX uses for float32 products at each `jax_default_matmul_precision`.
# On Hopper GPUs 'default' and 'high' run them as TF32 and 'highest' as
# float32. On TPUs 'default' is one bfloat16 pass. Sources: H100 SXM
# figures from NVIDIA's data sheet as tabulated at
# glennklockwood.com/garden/processors/h100 (the H200 has the same compute),
# TPU v5e from Google Cloud's TPU v5e page. Sparsity is not counted.
# NOTE: a device kind missing here gets no fraction of peak unless
# --peak_gflops is given.
PEAK_TFLOPS = {
  'NVIDIA H100 80GB HBM3': {'tf32': 494.7, 'float32': 66.9},
  'NVIDIA H200': {'tf32': 494.7, 'float32': 66.9},
  'TPU v5 lite': {'bfloat16': 197.0},
}


def add_model_flags(parser) -> None:
  parser.add_argument(
    '--config',
    choices=CONFIGS,
    default='stargan',
    help='synthetic: configs/synthetic.py; stargan: configs/stargan.py with '
    'one D and one G update per step.',
  )
  parser.add_argument(
    '--image_size', type=int, default=0, help='Image side; 0 keeps the config.'
  )
  parser.add_argument(
    '--batch_size', type=int, default=0, help='Global batch; 0 keeps it.'
  )
  parser.add_argument(
    '--tiny',
    action='store_true',
    help='Shrink the networks to a few channels (for tests).',
  )


def load_config(
  name: str, image_size: int = 0, batch_size: int = 0, tiny=False
):
  """Return the config `name` with the benchmark's overrides applied."""
  if name == 'stargan':
    config = stargan_config.get_config()
    config.unlock()
    config.train.n_critic = 1
  elif name == 'synthetic':
    config = synthetic_config.get_config()
    config.unlock()
  else:
    raise ValueError(f'unknown config {name!r}; use one of {CONFIGS}.')
  if image_size:
    config.data.image_size = image_size
  if batch_size:
    config.train.batch_size = batch_size
  if tiny:
    config.model.g_base_channels = 4
    config.model.d_base_channels = 4
    config.model.g_res_blocks = 1
    if name == 'stargan':
      config.model.d_levels = 3
    else:
      config.model.g_max_channels = 8
      config.model.d_max_channels = 8
      config.model.g_levels = 2
      config.model.d_levels = 2
      config.model.noise_dim = 4
  config.lock()
  return config


def dataset_attributes(config) -> tuple[str, ...]:
  """Return the attribute names of the benchmark's batches.

  StarGAN is timed on exactly its configured attributes, so that G's input
  and D's head have the widths of StarGAN's own runs.
  """
  if config.model.get('arch', 'cganjax') == 'stargan':
    return tuple(config.model.attributes)
  return tuple(synthetic.SYNTHETIC_ATTRIBUTES)


def synthetic_batch(config, attributes) -> dict:
  """Render one global batch of synthetic faces with these attributes."""
  size = config.train.batch_size
  examples = pipeline.load_examples(config, np.arange(size))
  columns = [synthetic.SYNTHETIC_ATTRIBUTES.index(a) for a in attributes]
  return {
    'image': examples['image'],
    'parts': examples['parts'],
    'attributes': examples['attributes'][:, columns],
  }


@dataclasses.dataclass
class TrainingSetup:
  name: str
  config: object
  networks: step.Networks
  mesh: object
  train_step: object  # (state, batch) -> (state, metrics), as in training.
  state: step.TrainState
  batch: dict

  def abstract_inputs(self):
    shapes = jax.eval_shape(lambda s, b: (s, b), self.state, self.batch)
    return shapes

  def lower(self):
    """Lower the step for this state and batch (jit's own lowering)."""
    jitted = self.train_step.func
    return jitted.lower(*self.train_step.args, self.state, self.batch)

  def describe(self) -> str:
    config = self.config
    device = jax.devices()[0]
    arch = config.model.get('arch', 'cganjax')
    size = config.data.image_size
    return (
      f'{self.name}: arch {arch}, {size}x{size}, batch '
      f'{config.train.batch_size}, float32, '
      f'{self.mesh.size} x {device.platform} ({device.device_kind}), '
      f'matmul precision {matmul_precision()}'
    )


def build_training(args) -> TrainingSetup:
  config = load_config(args.config, args.image_size, args.batch_size, args.tiny)
  return build_from_config(args.config, config)


def build_from_config(name: str, config) -> TrainingSetup:
  attributes = dataset_attributes(config)
  networks = step.create_networks(config, attributes)
  mesh = step.create_mesh()
  step.check_batch_size(config.train.batch_size, mesh.size)
  state = jax.device_put(
    step.create_train_state(config, networks), step.replicated(mesh)
  )
  batch = jax.device_put(
    synthetic_batch(config, attributes), step.batch_sharding(mesh)
  )
  train_step = step.make_train_step(config, networks, mesh)
  return TrainingSetup(name, config, networks, mesh, train_step, state, batch)


def matmul_precision() -> str:
  return jax.config.jax_default_matmul_precision or 'default'


def peak_flops(peak_gflops: float = 0.0) -> tuple[float | None, str]:
  """Return (peak FLOP/s of all devices, what it is) or (None, reason)."""
  devices = jax.devices()
  if peak_gflops > 0:
    return peak_gflops * 1e9, f'{peak_gflops:g} GFLOP/s from --peak_gflops'
  kind = devices[0].device_kind
  if devices[0].platform == 'cpu':
    return None, 'peak unknown on CPU (pass --peak_gflops)'
  peaks = PEAK_TFLOPS.get(kind)
  if peaks is None:
    return None, f'peak of {kind!r} unknown (pass --peak_gflops)'
  if devices[0].platform == 'tpu':
    number = 'bfloat16'
  elif matmul_precision() in ('highest', 'float32'):
    number = 'float32'
  else:
    number = 'tf32'
  peak = peaks[number] * 1e12 * len(devices)
  return peak, (
    f'{len(devices)} x {peaks[number]:g} TFLOP/s dense {number} peak of {kind}'
  )


def flops_lines(setup: TrainingSetup, counted, compiled=None) -> list[str]:
  """Summary lines of the jaxpr count (and XLA's when `compiled` is given)."""
  from benchmarks import flops

  total = sum(counted.values())
  lines = [
    f'FLOPs per iteration (jaxpr, conv + matmul, 2/MAC): {total / 1e9:.3f} '
    f'GFLOP (conv {counted["conv_general_dilated"] / 1e9:.3f}, matmul '
    f'{counted["dot_general"] / 1e9:.3f})'
  ]
  if compiled is not None:
    xla = flops.xla_flops(compiled)
    text = 'not available' if xla is None else f'{xla / 1e9:.3f} GFLOP'
    lines.append(f'FLOPs per iteration (XLA cost analysis): {text}')
  return lines


def median_rate(call, count_per_call: int, runs: int) -> tuple[float, list]:
  """Median of `runs` timed calls of `call`, as counts per second.

  `call` must block until its work is done.
  """
  rates = []
  for _ in range(runs):
    started = time.perf_counter()
    call()
    rates.append(count_per_call / (time.perf_counter() - started))
  return statistics.median(rates), rates


def random_images(batch: int, size: int, seed: int = 0) -> np.ndarray:
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (batch, size, size, 3), np.uint8)
