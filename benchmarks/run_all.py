r"""Check and time the training step, FLOPs, maps and edits in one command.

  python -m benchmarks.run_all                  # from the repository root
  python -m benchmarks.run_all --configs=stargan --runs=5 --trace_dir=/tmp/t

For each config in --configs (default: synthetic at 64x64, batch 32, then
StarGAN at 128x128, batch 16, one D and one G update per iteration), it
prints one line per figure:

  checks      the step has no host callback in its jaxpr, donates its state
              (the input buffers are deleted after a call) and runs the
              timed steps under jax.transfer_guard('disallow'), so no
              implicit host transfer happens per step;
  throughput  images/s for a full iteration (D and G updates): one warm-up
              call, then the median of --runs timed runs of --steps calls,
              each run ending with block_until_ready;
  FLOPs       per iteration from the jaxpr (convolutions and matrix
              products, 2 FLOPs per multiply-add) and from XLA's cost
              analysis of the same compiled step, and the achieved FLOP/s;
              on a GPU or TPU the fraction of the device's peak;
  prefetch    for the first config, the share of step time spent waiting for
              the next batch from the training loop's input pipeline.

Then, once: activation maps per second (the batched Grad-CAM path of
benchmarks/maps_throughput.py) and edit latency for 1 and 64 images.
--trace_dir writes a profiler trace of a few steps of the first config.
Nothing here imports TensorFlow; the last line checks that.
"""

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time

import jax
import numpy as np

from benchmarks import common, flops
from cganjax import step
from cganjax.data import pipeline

CALLBACK_PRIMITIVES = ('pure_callback', 'io_callback', 'debug_callback')


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    '--configs',
    default='synthetic,stargan',
    help='Comma-separated configs to time: synthetic, stargan.',
  )
  parser.add_argument('--steps', type=int, default=1, help='Steps per run.')
  parser.add_argument('--runs', type=int, default=3, help='Timed runs.')
  parser.add_argument(
    '--tiny',
    action='store_true',
    help='Shrink every network and size to a few channels (for tests).',
  )
  parser.add_argument(
    '--peak_gflops',
    type=float,
    default=0.0,
    help='Peak GFLOP/s of all devices together, for the fraction of peak '
    '(default: the table of known accelerators; none on CPU).',
  )
  parser.add_argument(
    '--matmul_precision',
    choices=('default', 'high', 'highest'),
    default='default',
    help='jax_default_matmul_precision for every product and convolution.',
  )
  parser.add_argument(
    '--trace_dir',
    default='',
    help='Write a jax.profiler trace of --trace_steps steps here.',
  )
  parser.add_argument('--trace_steps', type=int, default=3)
  parser.add_argument(
    '--prefetch_steps',
    type=int,
    default=4,
    help='Steps fed by the input pipeline for the prefetch check; 0 skips.',
  )
  parser.add_argument(
    '--skip',
    default='',
    help='Comma-separated parts to skip: maps, edit.',
  )
  args = parser.parse_args(argv)
  names = [name for name in args.configs.split(',') if name]
  unknown = [name for name in names if name not in common.CONFIGS]
  if unknown or not names:
    parser.error(
      f'--configs={args.configs!r} is invalid; use a comma-separated list '
      f'of {", ".join(common.CONFIGS)}.'
    )
  if args.steps < 1 or args.runs < 1:
    parser.error('--steps and --runs must be at least 1.')
  args.config_names = names
  args.skip_parts = set(filter(None, args.skip.split(',')))
  return args


def find_primitives(jaxpr, names) -> list[str]:
  """Return the primitives in `names` used anywhere in a (closed) jaxpr."""
  import jax.extend.core as jex

  if isinstance(jaxpr, jex.ClosedJaxpr):
    jaxpr = jaxpr.jaxpr
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in names:
      found.append(eqn.primitive.name)
    for sub in jex.jaxprs_in_params(eqn.params):
      found += find_primitives(sub, names)
  return found


def check_donation(compiled, args_prefix, state, batch):
  """Call once; return (new state, donated leaves, state leaves)."""
  leaves = jax.tree.leaves(state)
  new_state, _ = compiled(*args_prefix, state, batch)
  jax.block_until_ready(new_state)
  donated = sum(leaf.is_deleted() for leaf in leaves)
  return new_state, donated, len(leaves)


def time_training(setup, args) -> dict:
  """Print and return the checks, FLOPs and throughput of one config."""
  print(setup.describe(), flush=True)
  abstract_state, abstract_batch = setup.abstract_inputs()
  jaxpr = jax.make_jaxpr(setup.train_step)(abstract_state, abstract_batch)
  counted = flops.count_flops(jaxpr)
  callbacks = find_primitives(jaxpr, CALLBACK_PRIMITIVES)

  started = time.perf_counter()
  compiled = setup.lower().compile()
  compile_seconds = time.perf_counter() - started
  prefix = setup.train_step.args

  state, donated, total = check_donation(
    compiled, prefix, setup.state, setup.batch
  )
  print(
    f'checks: host callbacks in the step: {len(callbacks)}; state buffers '
    f'donated: {donated} of {total}; compile {compile_seconds:.1f} s',
    flush=True,
  )
  batch = setup.batch
  holder = {'state': state}

  def run_steps():
    current = holder['state']
    for _ in range(args.steps):
      current, metrics = compiled(*prefix, current, batch)
    jax.block_until_ready((current, metrics))
    holder['state'] = current

  images = setup.config.train.batch_size * args.steps
  with jax.transfer_guard('disallow'):
    rate, rates = common.median_rate(run_steps, images, args.runs)
  seconds = setup.config.train.batch_size / rate
  print(
    f'throughput: {rate:.3f} images/s ({seconds:.3f} s per iteration; '
    f'median of {args.runs} runs of {args.steps} steps, runs '
    f'{", ".join(f"{r:.3f}" for r in rates)} images/s; transfer guard on)',
    flush=True,
  )
  for line in common.flops_lines(setup, counted, compiled):
    print(line)
  total_flops = sum(counted.values())
  achieved = total_flops / seconds
  peak, peak_text = common.peak_flops(args.peak_gflops)
  fraction = '' if peak is None else f', {100 * achieved / peak:.1f}% of peak'
  print(
    f'achieved: {achieved / 1e9:.1f} GFLOP/s by the jaxpr count{fraction} '
    f'({peak_text}; matmul precision {common.matmul_precision()})',
    flush=True,
  )
  holder_state = holder['state']
  return {
    'images_per_second': rate,
    'jaxpr_flops': total_flops,
    'seconds': seconds,
    'compiled': compiled,
    'state': holder_state,
  }


def check_prefetch(setup, compiled, state, steps: int) -> None:
  """Feed the step from the training loop's pipeline; report input waits.

  The pipeline is `pipeline.prefetch` (a background thread rendering
  batches) followed by `train.device_prefetch` (batches placed on the
  devices ahead of use), exactly as in `train.train_and_evaluate`.
  """
  try:
    from cganjax import train  # Needs Pillow, for the sample grids.
  except ImportError as error:
    print(f'prefetch: not checked, the training loop failed to import: {error}')
    return

  config = setup.config
  if config.model.get('arch', 'cganjax') == 'stargan':
    # The pipeline yields all the data set's attributes; the StarGAN
    # benchmark runs on 5 columns only, so it is fed the 64x64 config.
    print('prefetch: checked on the synthetic config only')
    return
  prefix = setup.train_step.args
  batches = train.device_prefetch(
    pipeline.prefetch(
      pipeline.train_batches(config, 0), config.data.prefetch_batches
    ),
    step.batch_sharding(setup.mesh),
  )
  waits, totals = [], []
  state, _ = compiled(*prefix, state, next(batches))
  jax.block_until_ready(state)
  for _ in range(steps):
    started = time.perf_counter()
    batch = next(batches)
    waited = time.perf_counter() - started
    state, metrics = compiled(*prefix, state, batch)
    jax.block_until_ready(metrics)
    waits.append(waited)
    totals.append(time.perf_counter() - started)
  batches.close()
  share = sum(waits) / sum(totals)
  print(
    f'prefetch: {100 * share:.1f}% of step time spent waiting for input '
    f'(median wait {1000 * statistics.median(waits):.1f} ms of a '
    f'{1000 * statistics.median(totals):.0f} ms step; '
    f'data.prefetch_batches={config.data.prefetch_batches} on the host, 2 '
    'on the devices)',
    flush=True,
  )


def write_trace(setup, compiled, state, trace_dir: str, steps: int) -> None:
  prefix = setup.train_step.args
  with jax.profiler.trace(trace_dir):
    for _ in range(steps):
      state, metrics = compiled(*prefix, state, setup.batch)
    jax.block_until_ready(metrics)
  print(f'trace: {steps} steps written to {trace_dir}', flush=True)


def maps_rate(tiny: bool, runs: int) -> None:
  """Maps per second of the batched Grad-CAM path of maps_throughput."""
  try:
    from benchmarks import maps_throughput
    from cganjax import maps  # Imports Pillow, for the PNG overlays.
  except ImportError as error:
    print(f'maps: not timed, the maps module failed to import: {error}')
    return

  batch_size, image_size, channels = (2, 32, 4) if tiny else (16, 64, 16)
  spec, d_params = maps_throughput.build(image_size, channels)
  mesh = step.create_mesh()
  batch_size = max(batch_size // mesh.size, 1) * mesh.size
  images = common.random_images(batch_size, image_size)
  batch = {'image': images, 'row': np.arange(batch_size, dtype=np.int32)}
  batch = jax.device_put(batch, step.batch_sharding(mesh))
  replicated = jax.device_put(d_params, step.replicated(mesh))
  maps_fn = maps.make_maps_fn(spec, mesh)

  def call():
    jax.block_until_ready(maps_fn({}, replicated, batch))

  call()
  per_call = batch_size * maps_throughput.NUM_TARGETS * maps_throughput.D_LEVELS
  rate, _ = common.median_rate(call, per_call, runs)
  print(
    f'maps: {rate:.1f} activation maps/s (Grad-CAM of D, batch '
    f'{batch_size}, {image_size}x{image_size}, '
    f'{maps_throughput.NUM_TARGETS} targets x {maps_throughput.D_LEVELS} '
    f'taps per image; median of {runs} calls)',
    flush=True,
  )


def edit_latency(tiny: bool, runs: int) -> None:
  """Print the latency of editing 1 and 64 images from a restored run."""
  from benchmarks import edit_latency as edit

  with tempfile.TemporaryDirectory() as workdir:
    config = common.load_config('synthetic', tiny=tiny)
    edit.make_fake_run(config, workdir)
    for count in (1, 64):
      seconds = edit.median_latency(workdir, count, runs)
      print(
        f'edit latency: {1000 * seconds:.1f} ms for {count} image(s) '
        f'({config.data.image_size}x{config.data.image_size}, '
        'Editor.edit_image from PNG files to composited edits, one image '
        f'at a time; median of {runs})',
        flush=True,
      )


def main(argv=None) -> None:
  args = parse_args(argv)
  jax.config.update(
    'jax_default_matmul_precision',
    None if args.matmul_precision == 'default' else args.matmul_precision,
  )
  print(
    f'jax {jax.__version__}, {jax.device_count()} x '
    f'{jax.devices()[0].device_kind}, XLA_FLAGS='
    f'{os.environ.get("XLA_FLAGS", "")!r}',
    flush=True,
  )
  for index, name in enumerate(args.config_names):
    config = common.load_config(name, tiny=args.tiny)
    if args.tiny:
      config.unlock()
      config.data.image_size = 32
      config.train.batch_size = 2 * jax.device_count()
      config.lock()
    setup = common.build_from_config(name, config)
    result = time_training(setup, args)
    if index == 0 and args.prefetch_steps > 0:
      check_prefetch(
        setup, result['compiled'], result['state'], args.prefetch_steps
      )
      result['state'] = None
    if index == 0 and args.trace_dir:
      state = result['state']
      if state is None:
        state = jax.device_put(
          step.create_train_state(setup.config, setup.networks),
          step.replicated(setup.mesh),
        )
      write_trace(
        setup, result['compiled'], state, args.trace_dir, args.trace_steps
      )
  if 'maps' not in args.skip_parts:
    maps_rate(args.tiny, args.runs)
  if 'edit' not in args.skip_parts:
    edit_latency(args.tiny, args.runs)
  imported = 'tensorflow' in sys.modules
  print(f'TensorFlow imported: {"yes" if imported else "no"}')
  if imported:
    raise SystemExit('TensorFlow was imported; the benchmarks must not.')


if __name__ == '__main__':
  with contextlib.suppress(KeyboardInterrupt):
    main()
