r"""Latency of editing 1 and 64 images with a generator restored from a run.

  python -m benchmarks.edit_latency           # from the repository root
  python -m benchmarks.edit_latency --workdir=/tmp/cganjax_demo

Without --workdir the script writes a small fake run (the untrained state of
configs/synthetic.py, one checkpoint) to a temporary directory. It restores
the run with `restore.restore_run`, as the tools do, and times one edit
call from uint8 images and masks on the host to uint8 edited images back on
the host: the generator forward pass and compositing inside the mask.
Compilation is excluded by one call before timing.
"""

import argparse
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from cganjax import checkpoint, models, restore, step
from cganjax.data import synthetic


def make_fake_run(config, workdir) -> None:
  """Write a run record and one checkpoint of an untrained state."""
  attributes = synthetic.SYNTHETIC_ATTRIBUTES
  networks = step.create_networks(config, attributes)
  state = step.create_train_state(config, networks)
  manager = checkpoint.checkpoint_manager(workdir, async_save=False)
  manager.save(0, args=checkpoint.ocp.args.StandardSave(state))
  manager.wait_until_finished()
  manager.close()
  record = checkpoint.make_run_record(config, attributes)
  checkpoint.write_run_record(workdir, record)


def make_edit_fn(run: restore.RestoredRun):
  """Compile (g_params, uint8 images, masks, targets, noise) -> uint8."""
  generator = run.networks.generator

  @jax.jit
  def edit(g_params, images, masks, targets, noise):
    image = step.image_to_float(images)
    # The same computation as samples.edit_batch, which is not imported
    # because its module needs Pillow.
    raw = generator.apply({'params': g_params}, image, masks, targets, noise)
    edited = models.composite(image, masks, raw)
    return jnp.round((edited + 1.0) * 127.5).clip(0, 255).astype(jnp.uint8)

  return edit


def edit_inputs(run: restore.RestoredRun, count: int, seed: int = 0):
  """Random images, a central square mask and flipped first attributes."""
  size = run.config.data.image_size
  rng = np.random.default_rng(seed)
  images = common.random_images(count, size, seed)
  masks = np.zeros((count, size, size, 1), np.float32)
  masks[:, size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 1.0
  targets = rng.integers(0, 2, (count, len(run.attributes))).astype(np.float32)
  noise = rng.standard_normal((count, run.networks.generator.noise_dim))
  return images, masks, targets, noise.astype(np.float32)


def median_latency(workdir, count: int, runs: int) -> float:
  """Median seconds of one edit of `count` images, host to host."""
  run = restore.restore_run(workdir)
  edit = make_edit_fn(run)
  inputs = edit_inputs(run, count)
  params = run.state.g_ema_params
  # TODO: call the editing tool's API here once it is merged, so that
  # this times its own path (reading masks, compositing, reporting).
  np.asarray(edit(params, *inputs))
  seconds = []
  for _ in range(runs):
    started = time.perf_counter()
    edited = np.asarray(edit(params, *inputs))
    seconds.append(time.perf_counter() - started)
  assert edited.shape == inputs[0].shape, edited.shape
  return statistics.median(seconds)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    '--workdir', default='', help='Run to restore; default: a fake run.'
  )
  parser.add_argument('--runs', type=int, default=5)
  parser.add_argument('--tiny', action='store_true')
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as scratch:
    workdir = args.workdir
    if not workdir:
      workdir = scratch
      make_fake_run(common.load_config('synthetic', tiny=args.tiny), workdir)
    for count in (1, 64):
      seconds = median_latency(workdir, count, args.runs)
      print(f'edit latency: {1000 * seconds:.1f} ms for {count} image(s)')


if __name__ == '__main__':
  main()
