r"""Maps per second: targets batched with vmap versus a per-target loop.

  python -m benchmarks.maps_throughput            # from the repository root

Both paths compute Grad-CAM maps of D's attribute logits on real images,
for 10 targets on D's 4 taps, with the same weights and images:

  batched   the maps function of `python -m cganjax.explain`
            (`maps.make_maps_fn`): one forward pass and the 10 backward
            passes vmapped, sharded over the local devices;
  loop      a jit-compiled function for one target (a forward pass and one
            `vjp`, all 4 taps), called once per target.

A map is one (image, target, tap) triple, so each call of the batched path
and each round of the loop make batch_size * 10 * 4 maps. Compilation is
excluded: each path runs once before it is timed. The script checks that
both paths give the same maps and that TensorFlow was never imported.
"""

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from cganjax import maps, masks, models, step
from cganjax.data import parts

NUM_TARGETS = 10
D_LEVELS = 4


def random_params(shapes, seed: int):
  """Kernels ~ N(0, 1 / fan_in), other parameters ~ N(0, 0.05**2)."""
  rng = np.random.default_rng(seed)

  def draw(path, shape):
    name = str(getattr(path[-1], 'key', path[-1]))
    if name == 'kernel':
      scale = 1.0 / np.sqrt(np.prod(shape.shape[:-1]))
    else:
      scale = 0.05
    return (scale * rng.standard_normal(shape.shape)).astype(shape.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def build(image_size: int, channels: int):
  attributes = parts.CELEBA_ATTRIBUTES[:NUM_TARGETS]
  discriminator = models.Discriminator(
    num_attributes=NUM_TARGETS,
    base_channels=channels,
    max_channels=8 * channels,
    levels=D_LEVELS,
  )
  # Only the real image is explained, so G is never applied; the spec needs
  # it for its tap names.
  generator = models.Generator(num_attributes=NUM_TARGETS)
  image = jnp.zeros((1, image_size, image_size, 3))
  shapes = jax.eval_shape(discriminator.init, jax.random.key(0), image)
  d_params = random_params(shapes['params'], seed=1)
  targets = maps.make_targets(['attributes'], attributes)
  spec = maps.MapSpec(
    generator=generator,
    discriminator=discriminator,
    regions=masks.RegionTable(attributes),
    targets=tuple(targets),
    method='grad_cam',
    dilation=0.0,
    seed=0,
    dtype='float32',
  )
  return spec, d_params


def make_loop_fn(spec):
  """Compile the maps [B, taps, H, W] of one target: a forward pass and
  one vjp."""
  discriminator = spec.discriminator
  prefix = models.DISCRIMINATOR_PREFIX
  taps = discriminator.tap_names()

  @jax.jit
  def one_target(d_params, images, index):
    image = step.image_to_float(images)
    perturbations = maps.prefixed(
      maps.zero_perturbations(discriminator, d_params, image), prefix
    )

    def forward(perturbations):
      variables = {
        'params': d_params,
        'perturbations': maps.split_perturbations(perturbations, prefix),
      }
      (_, logits), features = maps.apply_with_taps(
        discriminator, prefix, variables, image
      )
      score = jnp.take(logits, index, axis=1)
      return score[:, None], features, None

    _, features, gradients, _ = maps.tap_gradients(forward, perturbations)
    size = image.shape[1:3]
    out = []
    for tap in taps:
      weighted = maps.grad_cam(features[tap], gradients[tap][0])
      out.append(maps.finish_maps(weighted, size)[0])
    return jnp.stack(out, axis=1)

  return one_target


def time_calls(call, repeats: int) -> float:
  jax.block_until_ready(call())
  started = time.perf_counter()
  for _ in range(repeats):
    jax.block_until_ready(call())
  return time.perf_counter() - started


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch_size', type=int, default=16)
  parser.add_argument('--image_size', type=int, default=64)
  parser.add_argument(
    '--channels', type=int, default=16, help="D's first-level channels."
  )
  parser.add_argument('--repeats', type=int, default=10)
  args = parser.parse_args()

  spec, d_params = build(args.image_size, args.channels)
  mesh = step.create_mesh()
  if args.batch_size % mesh.size:
    parser.error(
      f'--batch_size={args.batch_size} must be a multiple of the '
      f'{mesh.size} devices.'
    )
  rng = np.random.default_rng(0)
  images = rng.integers(
    0, 256, (args.batch_size, args.image_size, args.image_size, 3), np.uint8
  )
  batch = {'image': images, 'row': np.arange(args.batch_size, dtype=np.int32)}
  batch = jax.device_put(batch, step.batch_sharding(mesh))
  replicated = jax.device_put(d_params, step.replicated(mesh))

  batched_fn = maps.make_maps_fn(spec, mesh)
  # G's parameters are never read for real-image targets.
  batched = lambda: batched_fn({}, replicated, batch)
  loop_fn = make_loop_fn(spec)
  loop = lambda: [loop_fn(d_params, images, k) for k in range(NUM_TARGETS)]

  # Same maps on both paths, as [B, targets, taps, H, W].
  outputs = batched()
  taps = spec.discriminator.tap_names()
  from_batched = np.stack([outputs['maps'][tap] for tap in taps], axis=2)
  from_loop = np.stack([np.asarray(m) for m in loop()], axis=1)
  np.testing.assert_allclose(from_batched, from_loop, rtol=1e-4, atol=1e-5)

  maps_per_call = args.batch_size * NUM_TARGETS * len(taps)
  batched_seconds = time_calls(batched, args.repeats)
  loop_seconds = time_calls(loop, args.repeats)
  batched_rate = maps_per_call * args.repeats / batched_seconds
  loop_rate = maps_per_call * args.repeats / loop_seconds

  device = jax.devices()[0]
  print(
    f'{len(jax.devices())} x {device.platform} ({device.device_kind}), '
    f'batch {args.batch_size}, {args.image_size}x{args.image_size} images, '
    f'{NUM_TARGETS} targets, {len(taps)} taps, Grad-CAM, '
    f'{args.repeats} timed calls each'
  )
  print(f'batched (vmap over targets): {batched_rate:10.1f} maps/s')
  print(f'per-target loop (jit):       {loop_rate:10.1f} maps/s')
  print(f'ratio batched / loop:        {batched_rate / loop_rate:10.2f}')
  if 'tensorflow' in sys.modules:
    raise SystemExit('TensorFlow was imported; the maps path must not use it.')
  print('TensorFlow imported: no')


if __name__ == '__main__':
  main()
