r"""GFLOP/s of one convolution's forward and backward pass, in variants.

  python -m benchmarks.conv_micro                       # all variants
  XLA_FLAGS=--xla_cpu_enable_fast_math=true python -m benchmarks.conv_micro

A 3x3 convolution, 128 to 128 channels on a 16x64x64 batch, stride 1 and
SAME padding: its loss is differentiated with respect to the input and the
kernel, 3 times the forward's 19.3 GFLOP. Variants: the layout (NHWC, the
one Flax uses, or NCHW with an OIHW kernel), the matmul precision
('default' or 'highest'), and the StarGAN layers as `lax` strided
convolutions or `stride_free` (cganjax.stargan.DownConv and UpConv).
The median of --runs calls is printed, after one call for compilation.
"""

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp

from benchmarks import flops
from cganjax import stargan

LAYOUTS = {'NHWC': ('NHWC', 'HWIO', 'NHWC'), 'NCHW': ('NCHW', 'OIHW', 'NCHW')}


def median_seconds(fn, args, runs: int) -> float:
  jitted = jax.jit(fn)
  jax.block_until_ready(jitted(*args))
  seconds = []
  for _ in range(runs):
    started = time.perf_counter()
    jax.block_until_ready(jitted(*args))
    seconds.append(time.perf_counter() - started)
  return statistics.median(seconds)


def conv_case(layout: str, precision: str | None):
  numbers = LAYOUTS[layout]
  x_shape = (16, 64, 64, 128) if layout == 'NHWC' else (16, 128, 64, 64)
  w_shape = (3, 3, 128, 128)
  x = jax.random.normal(jax.random.key(0), x_shape)
  w = 0.03 * jax.random.normal(jax.random.key(1), w_shape)
  if layout == 'NCHW':
    w = w.transpose(3, 2, 0, 1)

  def loss(x, w):
    y = jax.lax.conv_general_dilated(
      x, w, (1, 1), 'SAME', dimension_numbers=numbers, precision=precision
    )
    return jnp.sum(jnp.square(y))

  return jax.grad(loss, argnums=(0, 1)), (x, w)


def layer_case(module_class, size: int, c_in: int, c_out: int, impl: str):
  module = module_class(c_out, strided_conv=impl)
  x = jax.random.normal(jax.random.key(0), (16, size, size, c_in))
  params = module.init(jax.random.key(1), x)

  def loss(params, x):
    return jnp.sum(jnp.square(module.apply(params, x)))

  return jax.grad(loss, argnums=(0, 1)), (params, x)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--runs', type=int, default=5)
  parser.add_argument(
    '--skip_layers',
    action='store_true',
    help='Time the 3x3 convolution variants only.',
  )
  args = parser.parse_args()
  print(f'XLA_FLAGS={os.environ.get("XLA_FLAGS", "")!r}')
  cases = [
    ('3x3 conv NHWC, default precision', *conv_case('NHWC', None)),
    ('3x3 conv NCHW, default precision', *conv_case('NCHW', None)),
    ('3x3 conv NHWC, highest precision', *conv_case('NHWC', 'highest')),
  ]
  if not args.skip_layers:
    for impl in stargan.STRIDED_CONVS:
      cases.append(
        (
          f"D's 4x4/2 conv 1024->2048 on 4x4, {impl}",
          *layer_case(stargan.DownConv, 4, 1024, 2048, impl),
        )
      )
      cases.append(
        (
          f"G's 4x4/2 transposed conv 128->64 on 64x64, {impl}",
          *layer_case(stargan.UpConv, 64, 128, 64, impl),
        )
      )
  for name, fn, inputs in cases:
    count = flops.jaxpr_flops(fn, *inputs)
    seconds = median_seconds(fn, inputs, args.runs)
    print(
      f'{name}: {count / seconds / 1e9:.1f} GFLOP/s ({count / 1e9:.1f} '
      f'GFLOP in {1000 * seconds:.0f} ms, forward and backward)',
      flush=True,
    )


if __name__ == '__main__':
  main()
