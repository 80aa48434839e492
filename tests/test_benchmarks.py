"""Benchmarks: FLOP counting against hand counts, and the scripts' output."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from benchmarks import flops
from cganjax import step
from configs import stargan as stargan_config

ROOT = Path(__file__).resolve().parent.parent
NHWC = ('NHWC', 'HWIO', 'NHWC')

# Multiply-adds of the tiny net below, layer by layer, by PyTorch's rule.
CONV_A = (2 * 8 * 8 * 4) * 9 * 3  # 3x3, 3 -> 4 at 8x8: 13,824
CONV_B = (2 * 4 * 4 * 6) * 16 * 4  # 4x4 stride 2, 4 -> 6, out 4x4: 12,288
CONV_C = (2 * 4 * 4 * 6) * 9 * 3  # 3x3, 2 groups of 3 -> 3: 5,184
CONV_T = (2 * 4 * 4) * 16 * 6 * 2  # transposed, input positions: 6,144
DENSE = 2 * (8 * 8 * 2) * 5  # 1,280
FORWARD_MACS = CONV_A + CONV_B + CONV_C + CONV_T + DENSE


def tiny_params():
  rng = np.random.default_rng(0)

  def draw(*shape):
    return jnp.asarray(0.1 * rng.standard_normal(shape), jnp.float32)

  return {
    'a': draw(3, 3, 3, 4),
    'b': draw(4, 4, 4, 6),
    'c': draw(3, 3, 3, 6),
    't': draw(4, 4, 6, 2),
    'dense': draw(128, 5),
  }


def tiny_net(params, x):
  h = jax.lax.conv_general_dilated(
    x, params['a'], (1, 1), 'SAME', dimension_numbers=NHWC
  )
  h = jax.lax.conv_general_dilated(
    jnp.tanh(h), params['b'], (2, 2), ((1, 1), (1, 1)), dimension_numbers=NHWC
  )
  h = jax.lax.conv_general_dilated(
    jnp.tanh(h),
    params['c'],
    (1, 1),
    'SAME',
    dimension_numbers=NHWC,
    feature_group_count=2,
  )
  h = jax.lax.conv_transpose(
    jnp.tanh(h), params['t'], (2, 2), ((2, 2), (2, 2)), dimension_numbers=NHWC
  )
  return jnp.tanh(h).reshape(h.shape[0], -1) @ params['dense']


def tiny_input():
  return jnp.asarray(np.random.default_rng(1).standard_normal((2, 8, 8, 3)))


def test_forward_matches_hand_count():
  params, x = tiny_params(), tiny_input()
  assert tiny_net(params, x).shape == (2, 5)
  assert flops.jaxpr_flops(tiny_net, params, x) == 2 * FORWARD_MACS


def test_gradient_matches_hand_count():
  """Forward, a weight gradient per layer, input gradients but the first's."""
  params, x = tiny_params(), tiny_input()
  grad = jax.grad(lambda p, x: jnp.sum(tiny_net(p, x)))
  expected = 2 * (3 * FORWARD_MACS - CONV_A)
  assert flops.jaxpr_flops(grad, params, x) == expected


def test_input_gradient_counts_first_layer():
  params, x = tiny_params(), tiny_input()
  grad = jax.grad(lambda p, x: jnp.sum(tiny_net(p, x)), argnums=(0, 1))
  assert flops.jaxpr_flops(grad, params, x) == 2 * 3 * FORWARD_MACS


def test_valid_kernel_gradient_counts_forward():
  """The input gradient of a VALID conv whose kernel covers the map."""
  x = jnp.ones((3, 2, 2, 7))
  w = jnp.ones((2, 2, 7, 5))

  def head(w, x):
    return jax.lax.conv_general_dilated(
      x, w, (1, 1), 'VALID', dimension_numbers=NHWC
    )

  forward = 2 * 3 * 1 * 4 * 7 * 5
  assert flops.jaxpr_flops(head, w, x) == forward
  grad = jax.grad(lambda w, x: jnp.sum(head(w, x)), argnums=(0, 1))
  assert flops.jaxpr_flops(grad, w, x) == 3 * forward


def test_wrappers_are_walked():
  params, x = tiny_params(), tiny_input()
  mesh = step.create_mesh(jax.devices()[:2])

  def sharded(params, x):
    body = jax.shard_map(
      tiny_net, mesh=mesh, in_specs=(P(), P('data')), out_specs=P('data')
    )
    return body(params, x)

  # Each of the 2 devices runs the net on 1 of the 2 images.
  placed = jax.device_put(x, step.batch_sharding(mesh))
  assert flops.jaxpr_flops(jax.jit(sharded), params, placed) == (
    2 * FORWARD_MACS
  )

  def scanned(params, x):
    def body(h, _):
      return jnp.tanh(h @ params['dense'] @ params['dense'].T), None

    return jax.lax.scan(body, x.reshape(2, -1)[:, :128], None, length=3)[0]

  assert flops.jaxpr_flops(scanned, params, x) == 3 * 2 * 2 * (2 * 128 * 5)

  def branching(params, x):
    return jax.lax.cond(
      x[0, 0, 0, 0] > 0,
      lambda: jnp.sum(tiny_net(params, x)),
      lambda: jnp.sum(x),
    )

  assert flops.jaxpr_flops(branching, params, x) == 2 * FORWARD_MACS

  @jax.custom_vjp
  def product(a, b):
    return a @ b

  product.defvjp(lambda a, b: (a @ b, (a, b)), lambda r, g: (g @ r[1].T, None))
  a, b = jnp.ones((4, 6)), jnp.ones((6, 3))
  assert flops.jaxpr_flops(product, a, b) == 2 * 4 * 6 * 3
  grad = jax.grad(lambda a: jnp.sum(product(a, b)))
  assert flops.jaxpr_flops(grad, a) == 2 * (2 * 4 * 6 * 3)


def test_xla_count_skips_padding():
  """XLA counts only taps on input data; brute force over the 4x4 case."""
  x, w = jnp.ones((1, 4, 4, 1)), jnp.ones((4, 4, 1, 1))

  def conv(x, w):
    return jax.lax.conv_general_dilated(
      x, w, (2, 2), ((1, 1), (1, 1)), dimension_numbers=NHWC
    )

  inside = 0
  for out_row in range(2):
    for out_col in range(2):
      for tap_row in range(4):
        for tap_col in range(4):
          row = 2 * out_row + tap_row - 1
          col = 2 * out_col + tap_col - 1
          inside += 0 <= row < 4 and 0 <= col < 4
  assert inside == 36
  compiled = jax.jit(conv).lower(x, w).compile()
  assert flops.xla_flops(compiled) == 2 * inside
  assert flops.jaxpr_flops(conv, x, w) == 2 * 2 * 2 * 16


def stargan_hand_count(batch: int = 16) -> dict:
  """FLOPs of StarGAN's step at 128x128 with 5 attributes, layer by layer.

  F(out side, kernel, in, out) = 2 * batch * side^2 * kernel^2 * in * out;
  a transposed convolution counts its input side.
  """

  def conv(side, kernel, c_in, c_out):
    return 2 * batch * side * side * kernel * kernel * c_in * c_out

  g_first = conv(128, 7, 3 + 5, 64)
  g_forward = (
    g_first
    + conv(64, 4, 64, 128)
    + conv(32, 4, 128, 256)
    + 12 * conv(32, 3, 256, 256)
    + conv(32, 4, 256, 128)  # Transposed, 32x32 input positions.
    + conv(64, 4, 128, 64)
    + conv(128, 7, 64, 3)
  )
  widths = [3, 64, 128, 256, 512, 1024, 2048]
  trunk = [conv(128 >> (i + 1), 4, widths[i], widths[i + 1]) for i in range(6)]
  src = conv(2, 3, 2048, 1)
  cls = conv(1, 2, 2048, 5)
  d_forward = sum(trunk) + src + cls
  # The realness head's weight gradient: a 3x3 kernel on a 2x2 map, where
  # the counter takes the input side (2x2 positions x 2x2 output taps).
  src_weight_grad = 2 * batch * 4 * 4 * 2048
  d_step = (
    3 * d_forward  # D on real, fake and interpolates.
    + g_forward  # The fakes.
    + (d_forward - cls)  # Penalty: input gradient of realness.
    + (2 * d_forward - trunk[0])
    - src
    + src_weight_grad  # Real.
    + (2 * d_forward - trunk[0] - 2 * cls)
    - src
    + src_weight_grad  # Fake.
    + 2 * (d_forward - cls)
    - src
    - src
    + src_weight_grad  # Penalty.
  )
  g_step = (
    2 * g_forward  # Translation and reconstruction.
    + d_forward  # D on the translation.
    + 2 * g_forward  # Reconstruction's weight and input gradients.
    + d_forward  # Input gradient through D.
    + 2 * g_forward
    - g_first  # Translation's, no input gradient.
  )
  pytorch_extra = d_forward + 2 * sum(trunk)
  return {
    'step': d_step + g_step,
    'pytorch': d_step + g_step + pytorch_extra,
    'g_forward': g_forward,
    'd_forward': d_forward,
  }


@pytest.mark.parametrize('strided_conv', ['stride_free', 'lax'])
def test_stargan_step_count(strided_conv):
  config = stargan_config.get_config()
  config.unlock()
  config.train.n_critic = 1
  config.model.strided_conv = strided_conv
  networks = step.create_networks(config, stargan_config.ATTRIBUTES)
  mesh = step.create_mesh(jax.devices()[:1])
  state = jax.eval_shape(lambda: step.create_train_state(config, networks))
  batch = {
    'image': jax.ShapeDtypeStruct((16, 128, 128, 3), jnp.uint8),
    'parts': jax.ShapeDtypeStruct((16, 128, 128), jnp.uint8),
    'attributes': jax.ShapeDtypeStruct((16, 5), jnp.uint8),
  }
  train_step = step.make_train_step(config, networks, mesh)
  counted = flops.jaxpr_flops(train_step, state, batch)
  hand = stargan_hand_count()
  assert counted == hand['step']

  weight_grads, zero_grads = flops.pytorch_extra_flops(
    networks, state.d_params, 16, 128
  )
  assert weight_grads == hand['d_forward']
  as_pytorch = counted + weight_grads + zero_grads
  assert as_pytorch == hand['pytorch']
  # PyTorch's FLOP counter on StarGAN's own code gave 2545 GFLOP.
  assert abs(as_pytorch / 2545e9 - 1) < 0.01
  assert abs(counted / 2545e9 - 1) > 0.02  # JAX skips that work.


def run_script(*args, timeout=600):
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)
  result = subprocess.run(
    [sys.executable, '-m', *args],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  return result.stdout


def test_flops_script_prints_counts():
  out = run_script('benchmarks.flops', '--config=stargan', '--tiny')
  assert 'arch stargan, 128x128, batch 16' in out
  assert 'FLOPs per iteration (jaxpr' in out
  assert 'as PyTorch computes it' in out


def test_run_all_rejects_unknown_config():
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  result = subprocess.run(
    [sys.executable, '-m', 'benchmarks.run_all', '--configs=biggan'],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 2
  assert "--configs='biggan' is invalid" in result.stderr


@pytest.mark.slow
def test_run_all_tiny_prints_every_figure(tmp_path):
  out = run_script(
    'benchmarks.run_all',
    '--tiny',
    '--runs=2',
    f'--trace_dir={tmp_path / "trace"}',
  )
  for prefix in (
    'synthetic: arch cganjax',
    'stargan: arch stargan',
    'checks: host callbacks in the step: 0; state buffers donated:',
    'throughput:',
    'FLOPs per iteration (jaxpr',
    'FLOPs per iteration (XLA cost analysis):',
    'achieved:',
    'prefetch:',
    'trace: 3 steps',
    'maps:',
    'edit latency:',
    'TensorFlow imported: no',
  ):
    assert prefix in out, prefix
  assert out.count('edit latency:') == 2
  for line in out.splitlines():
    if line.startswith('checks:'):
      donated, total = line.split('donated: ')[1].split(';')[0].split(' of ')
      assert donated == total
  assert any((tmp_path / 'trace').rglob('*.xplane.pb'))
