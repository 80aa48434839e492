r"""FLOPs of a JAX function, counted from its jaxpr and by XLA's cost analysis.

  python -m benchmarks.flops --config=stargan   # from the repository root

The jaxpr count follows the rule of PyTorch's FLOP counter
(`torch.utils.flop_counter`): only convolutions (`conv_general_dilated`)
and matrix products (`dot_general`) count, at 2 FLOPs per multiply-add, and
every other operation counts 0. It walks the sub-jaxprs of `jit`,
`shard_map`, `cond`, `scan`, `while`, `custom_jvp_call`, `custom_vjp_call`
and `remat` (any equation parameter that is a jaxpr), with these rules:

  shard_map  the body runs on every device, so its count is multiplied by
             the device count of the axes it makes manual: a global total;
  scan       the body times `length`;
  cond       the costliest branch, an upper bound of any one execution;
  while      the body once, since the trip count is unknown.

XLA's count (`compiled.cost_analysis()['flops']`, a dict in jax 0.10.2)
covers every HLO operation after XLA's rewrites, elementwise work included,
so it is expected to lie above the jaxpr count.
"""

import argparse
import math
from collections import Counter

import jax
import jax.extend.core as jex

# Primitives whose sub-jaxprs run at most once per execution of the parent.
_BRANCHING = ('cond',)


def _shape(var) -> tuple[int, ...]:
  return tuple(var.aval.shape)


def conv_flops(eqn) -> int:
  """FLOPs of a `conv_general_dilated`, as PyTorch counts its forward conv.

  PyTorch counts a convolution as output positions times kernel taps times
  in- and out-features, padding included, and a transposed convolution as
  input positions times the same. Its gradients count the same as the
  forward convolution. In a jaxpr, a convolution whose output is larger
  than its input is a transposed convolution or an input gradient, so it
  is counted by its input side. Two counts are taken and the smaller kept:

    output side  size(out) * taps * rhs in-features / prod(lhs_dilation),
                 where 1 tap in prod(lhs_dilation) meets an input element
                 rather than a zero inserted by the dilation;
    input side   size(lhs) * taps * rhs out-features / groups.

  The input side is the smaller one for input gradients and transposed
  convolutions (it ignores the output's extra border), the output side for
  every other convolution.
  NOTE: where a kernel is larger than its input map, as D's 3x3 realness
  head of StarGAN on a 2x2 map, the weight gradient's input side is the
  smaller, so taps on padding are not counted there, unlike in PyTorch.
  In StarGAN's step at 128x128 that is 4 MFLOP of 2480 GFLOP.
  """
  numbers = eqn.params['dimension_numbers']
  lhs_shape = _shape(eqn.invars[0])
  rhs_shape = _shape(eqn.invars[1])
  out_shape = _shape(eqn.outvars[0])
  rhs_spec = numbers.rhs_spec  # (out feature, in feature, spatial...)
  out_features = rhs_shape[rhs_spec[0]]
  in_features = rhs_shape[rhs_spec[1]]
  taps = math.prod(rhs_shape[d] for d in rhs_spec[2:])
  dilation = math.prod(eqn.params['lhs_dilation'] or (1,))
  groups = eqn.params['feature_group_count'] * eqn.params['batch_group_count']
  output_side = math.prod(out_shape) * taps * in_features // dilation
  input_side = math.prod(lhs_shape) * taps * out_features // groups
  return 2 * min(output_side, input_side)


def dot_flops(eqn) -> int:
  """FLOPs of a `dot_general`: 2 * size(lhs) * size of rhs's free dims."""
  (_, rhs_contract), (_, rhs_batch) = eqn.params['dimension_numbers']
  lhs_shape = _shape(eqn.invars[0])
  rhs_shape = _shape(eqn.invars[1])
  shared = set(rhs_contract) | set(rhs_batch)
  rhs_free = math.prod(
    size for d, size in enumerate(rhs_shape) if d not in shared
  )
  return 2 * math.prod(lhs_shape) * rhs_free


COUNTED = {'conv_general_dilated': conv_flops, 'dot_general': dot_flops}


def _multiplier(eqn) -> int:
  name = eqn.primitive.name
  if name == 'scan':
    return int(eqn.params['length'])
  if name == 'shard_map':
    mesh = eqn.params['mesh']
    axes = eqn.params.get('newly_manual_axes', ())
    return math.prod(mesh.shape[axis] for axis in axes)
  return 1


def count_flops(jaxpr, totals: Counter | None = None) -> Counter:
  """Count FLOPs by primitive in a (closed) jaxpr, walking sub-jaxprs.

  Returns a Counter {'conv_general_dilated': ..., 'dot_general': ...}.
  """
  if isinstance(jaxpr, jex.ClosedJaxpr):
    jaxpr = jaxpr.jaxpr
  totals = Counter() if totals is None else totals
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name in COUNTED:
      totals[name] += COUNTED[name](eqn)
      continue
    subs = list(jex.jaxprs_in_params(eqn.params))
    if not subs:
      continue
    counts = [count_flops(sub) for sub in subs]
    if name in _BRANCHING:
      costliest = max(counts, key=lambda c: sum(c.values()))
      counts = [costliest]
    scale = _multiplier(eqn)
    for count in counts:
      for key, value in count.items():
        totals[key] += scale * value
  return totals


def jaxpr_flops(fn, *args) -> int:
  """Total FLOPs of `fn(*args)` by the jaxpr rule (args may be abstract)."""
  return sum(count_flops(jax.make_jaxpr(fn)(*args)).values())


def xla_flops(compiled) -> float | None:
  """FLOPs from XLA's cost analysis of a compiled function, or None.

  jax 0.10.2 returns a dict; some older versions returned a list of dicts,
  one per program. Backends without a cost model return None or no 'flops'.
  """
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  if not analysis or 'flops' not in analysis:
    return None
  return float(analysis['flops'])


def pytorch_extra_flops(networks, d_params, batch_size: int, size: int):
  """FLOPs that PyTorch's StarGAN step computes and this step does not.

  Returns (D weight gradients in G's backward pass, zero gradients through
  D's trunk in the gradient penalty), by the same counting rule:

  - StarGAN's G update calls backward() with D's parameters still
    requiring gradients, so autograd computes D's weight gradients on the
    fake images and then discards them: D's forward count again. jax.grad
    with respect to G's parameters never computes them.
  - In the double backward of the gradient penalty, PyTorch's autograd
    differentiates the leaky ReLU's backward with respect to its saved
    input as a tensor of zeros. It propagates that through the forward
    pass of D on the interpolates: a weight and an input gradient of
    every trunk convolution. JAX drops the zero cotangent.
    NOTE: this cause is inferred from the size of the gap, which it
    matches to the MFLOP, and was not read in PyTorch's source.
  """
  image = jax.ShapeDtypeStruct((batch_size, size, size, 3), 'float32')
  discriminator = networks.discriminator
  d_forward = jaxpr_flops(
    lambda p, x: discriminator.apply({'params': p}, x), d_params, image
  )
  side = size // 2**discriminator.levels
  heads = (
    2
    * batch_size
    * (
      side * side * math.prod(d_params['realness']['kernel'].shape)
      + math.prod(d_params['attributes']['kernel'].shape)
    )
  )
  return d_forward, 2 * (d_forward - heads)


def main() -> None:
  from benchmarks import common

  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  common.add_model_flags(parser)
  args = parser.parse_args()
  setup = common.build_training(args)
  state, batch = setup.abstract_inputs()
  counted = count_flops(jax.make_jaxpr(setup.train_step)(state, batch))
  print(setup.describe())
  for line in common.flops_lines(setup, counted):
    print(line)
  if setup.config.model.get('arch', 'cganjax') == 'stargan':
    config = setup.config
    weight_grads, zero_grads = pytorch_extra_flops(
      setup.networks,
      state.d_params,
      config.train.batch_size,
      config.data.image_size,
    )
    total = sum(counted.values()) + weight_grads + zero_grads
    print(
      f'FLOPs per iteration as PyTorch computes it: {total / 1e9:.3f} GFLOP '
      f'(+{weight_grads / 1e9:.3f} D weight gradients in the G update, '
      f'+{zero_grads / 1e9:.3f} zero gradients through D in the penalty)'
    )


if __name__ == '__main__':
  main()
