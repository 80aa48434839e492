"""The training loop: setup, resume, steps and periodic actions."""

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from cganjax import checkpoint, distributed, samples, step
from cganjax.data import pipeline
from cganjax.errors import InputError

# The batch fields that the training step reads.
STEP_INPUTS = ('image', 'parts', 'attributes')


class NonFiniteError(RuntimeError):
  """Training produced non-finite losses, gradients or parameters."""


def is_time(current: int, every: int, total: int) -> bool:
  """True when step `current` (1-based count of steps done) is due.

  A period of 0 or less turns the action off, except at the last step.
  """
  if current == total:
    return True
  return every > 0 and current % every == 0


class MetricWriter:
  """TensorBoard scalars from process 0 only; other processes write nothing."""

  def __init__(self, workdir, enabled: bool):
    self._writer = None
    if enabled:
      from tensorboardX import SummaryWriter

      self._writer = SummaryWriter(str(Path(workdir) / 'tensorboard'))

  def write(self, step_number: int, scalars: dict) -> None:
    if self._writer is None:
      return
    for name, value in scalars.items():
      self._writer.add_scalar(name, value, step_number)
    self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()


def check_workdir(workdir) -> Path:
  """Create the work directory if needed and check that it is writable."""
  path = Path(workdir)
  try:
    path.mkdir(parents=True, exist_ok=True)
    # One probe per process, because processes share the work directory.
    probe = path / f'.write_probe.{jax.process_index()}'
    probe.write_text('')
    probe.unlink()
  except OSError as error:
    raise checkpoint.WorkdirError(
      f'work directory {workdir} is not writable ({error.strerror}); pass a '
      '--workdir you can write to.'
    ) from None
  return path


def validate_config(config) -> None:
  """Raise ValueError on config values that cannot train, before any setup."""
  size = config.data.image_size
  if not 32 <= size <= 256:
    raise InputError(
      f'data.image_size={size} is out of range; use a size from 32 to 256.'
    )
  if config.train.steps < 0:
    raise InputError(f'train.steps={config.train.steps} must be >= 0.')
  for name in ('whole_prob', 'part_prob', 'flip_prob'):
    value = config.masks[name]
    if not 0.0 <= value <= 1.0:
      raise InputError(f'masks.{name}={value} must lie in [0, 1].')
  if config.masks.whole_prob + config.masks.part_prob > 1.0 + 1e-9:
    raise InputError(
      'masks.whole_prob + masks.part_prob must be at most 1, got '
      f'{config.masks.whole_prob + config.masks.part_prob}.'
    )
  step.check_batch_size(config.train.batch_size, jax.device_count())
  step.validate_loss_config(config)
  if config.sample.num_images <= 0:
    raise InputError(
      f'sample.num_images={config.sample.num_images} must be positive.'
    )


def place_batch(batch: dict, sharding) -> dict:
  """Assemble this process's slice of a batch into global sharded arrays."""
  return {
    key: jax.make_array_from_process_local_data(sharding, batch[key])
    for key in STEP_INPUTS
  }


def device_prefetch(batches, sharding, size: int = 2):
  """Keep `size` batches already transferred to the devices."""
  queue = []
  for batch in batches:
    queue.append(place_batch(batch, sharding))
    if len(queue) > size:
      yield queue.pop(0)
  yield from queue


def save_checkpoint(manager, state: step.TrainState, workdir) -> None:
  """Save `state` unless it contains a non-finite parameter."""
  trees = (state.g_params, state.d_params, state.g_ema_params)
  if not bool(step.all_finite(trees)):
    raise NonFiniteError(
      f'refusing to save step {int(state.step)}: the parameters are not '
      f'finite; the last good checkpoint in {workdir} is intact. Lower the '
      'learning rates (optim.*_learning_rate) and resume.'
    )
  manager.save(int(state.step), args=checkpoint.ocp.args.StandardSave(state))


def check_nonfinite(state: step.TrainState, config, manager, workdir) -> None:
  limit = config.train.max_nonfinite_steps
  consecutive = int(state.consecutive_nonfinite)
  if limit > 0 and consecutive >= limit:
    last = manager.latest_step()
    if last is None:
      kept = f'no checkpoint was saved in {workdir}'
    else:
      kept = f'the last good checkpoint (step {last}) in {workdir} is intact'
    raise NonFiniteError(
      f'losses or gradients were non-finite for {consecutive} consecutive '
      f'steps up to step {int(state.step)}; {kept}. Lower the learning '
      'rates (optim.*_learning_rate) or check the input data.'
    )


def format_duration(seconds: float) -> str:
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  return f'{hours}:{minutes:02d}:{seconds:02d}'


def log_metrics(
  writer, state, current, total, metric_sums, metric_count, period
) -> None:
  """Log one progress line and write the averaged metrics as scalars.

  `period` is (steps, seconds) since the last log line. The step that
  includes compilation is not timed, so right after it there is no rate.
  """
  values = {k: float(v) / metric_count for k, v in metric_sums.items()}
  steps_done, seconds = period
  if steps_done > 0:
    rate = steps_done / max(seconds, 1e-9)
    values['steps_per_second'] = rate
    speed = (
      f'{rate:.2f} steps/s  ETA {format_duration((total - current) / rate)}'
    )
  else:
    speed = 'rate not measured yet'
  logging.info(
    'step %d/%d  %s  D %.3f  G %.3f  skipped %d',
    current,
    total,
    speed,
    values['loss/D/total'],
    values['loss/G/total'],
    int(state.nonfinite_steps),
  )
  writer.write(current, {f'train/{k}': v for k, v in values.items()})


def dump_sample_maps(config, manager, workdir, current: int) -> None:
  """Dump Grad-CAM maps of the sample images from the checkpoint of a step.

  The maps folder is `WORKDIR/maps/step_<step>`, with all attribute targets
  on the first `sample.num_images` test images, the rows of the sample grid.
  """
  if jax.process_count() > 1:
    logging.warning('Skipping the maps dump: it runs in one process only.')
    return
  from cganjax import maps_dump  # Only runs that dump maps need it.

  manager.wait_until_finished()
  out = Path(workdir) / 'maps' / f'step_{current:07d}'
  maps_dump.dump_maps(
    workdir,
    out,
    step_number=current,
    num_images=config.sample.num_images,
    overlay_images=min(config.sample.num_images, 4),
  )
  logging.info('Wrote the activation maps of step %d to %s.', current, out)


def latest_step_of_all_processes(manager, workdir) -> int | None:
  """Return the newest checkpoint step, the same one for every process.

  Raises:
    WorkdirError: when the processes see different newest steps, as they do
      when the work directory is not one shared file system.
  """
  latest = manager.latest_step()
  seen = distributed.gather_from_processes(-1 if latest is None else latest)
  if len(set(seen)) > 1:
    shown = ', '.join(
      f'process {i}: {"none" if s < 0 else s}' for i, s in enumerate(seen)
    )
    raise checkpoint.WorkdirError(
      f'the processes see different newest checkpoints in {workdir} '
      f'({shown}); put --workdir on a file system that every process shares.'
    )
  return latest


def check_process_rows(mesh, batch_size: int) -> None:
  """Check that this process's devices hold the rows that it loads.

  `pipeline.train_batches` loads the rows `pipeline.process_slice` of each
  global batch, and `place_batch` puts them on this process's devices.
  """
  held = distributed.process_rows(step.batch_sharding(mesh), batch_size)
  loaded = pipeline.process_slice(
    batch_size, jax.process_index(), jax.process_count()
  )
  if (held.start, held.stop) != (loaded.start, loaded.stop):
    raise distributed.DistributedError(
      f'process {jax.process_index()} loads rows {loaded.start} to '
      f'{loaded.stop - 1} of each batch, but its devices hold rows '
      f'{held.start} to {held.stop - 1}.'
    )


def prepare_run(config, workdir):
  """Check inputs, open the work directory and restore or create the state."""
  validate_config(config)
  workdir = check_workdir(workdir)
  info = pipeline.dataset_info(config)
  networks = step.create_networks(config, info.attributes)
  mesh = step.create_mesh(distributed.mesh_devices())

  manager = checkpoint.checkpoint_manager(
    workdir, keep=config.train.keep_checkpoints
  )
  latest = latest_step_of_all_processes(manager, workdir)
  resuming = latest is not None
  if resuming:
    # Checked before the parameters are initialised so that a mismatch
    # fails at once.
    record = checkpoint.load_run_record(workdir)
    checkpoint.check_same_model(record, config, workdir)
  state = step.create_train_state(config, networks)
  state = jax.device_put(state, step.replicated(mesh))
  if resuming:
    target = checkpoint.abstract_like(state, step.replicated(mesh))
    restored_step, state = checkpoint.restore_state(
      manager, latest, target, workdir
    )
    logging.info('Resumed from the checkpoint of step %d.', restored_step)
  if jax.process_index() == 0:
    record = checkpoint.make_run_record(config, info.attributes)
    checkpoint.write_run_record(workdir, record)
  return workdir, networks, mesh, manager, state


def train_and_evaluate(config, workdir) -> step.TrainState:
  """Train from scratch or resume in `workdir`, up to `config.train.steps`."""
  workdir, networks, mesh, manager, state = prepare_run(config, workdir)
  total = config.train.steps
  start = int(state.step)
  is_main = jax.process_index() == 0
  logging.info(
    'Process %d of %d, %d local and %d global devices; steps %d to %d.',
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
    start,
    total,
  )

  train_step = step.make_train_step(config, networks, mesh)
  check_process_rows(mesh, config.train.batch_size)
  batches = pipeline.prefetch(
    pipeline.train_batches(
      config, start, jax.process_index(), jax.process_count()
    ),
    config.data.prefetch_batches,
  )
  batches = device_prefetch(batches, step.batch_sharding(mesh))
  sample_examples = next(
    pipeline.test_batches(
      config, config.sample.num_images, config.sample.num_images
    )
  )
  sample_batch = {key: sample_examples[key] for key in STEP_INPUTS}
  grid_fn = samples.make_grid_fn(config, networks)
  writer = MetricWriter(workdir, enabled=is_main)

  metric_sums, metric_count = None, 0
  last_log_time, last_log_step = time.time(), start
  try:
    for current in range(start + 1, total + 1):
      if current == start + 1:
        logging.info('Compiling the training step.')
      state, metrics = train_step(state, next(batches))
      if current == start + 1:
        jax.block_until_ready(state.step)
        logging.info('First step done; compilation finished.')
        last_log_time, last_log_step = time.time(), current
      metric_sums = (
        metrics
        if metric_sums is None
        else jax.tree.map(jnp.add, metric_sums, metrics)
      )
      metric_count += 1

      if is_time(current, config.train.log_every, total):
        now = time.time()
        log_metrics(
          writer,
          state,
          current,
          total,
          metric_sums,
          metric_count,
          (current - last_log_step, now - last_log_time),
        )
        metric_sums, metric_count = None, 0
        last_log_time, last_log_step = now, current
        check_nonfinite(state, config, manager, workdir)

      if is_time(current, config.train.sample_every, total) and is_main:
        # On a local copy, so that process 0 needs no other process.
        g_ema_params = distributed.local_copy(state.g_ema_params)
        grid = np.asarray(grid_fn(g_ema_params, sample_batch))
        samples.save_grid(grid, workdir / 'samples' / f'step_{current:07d}.png')

      maps_due = config.train.maps_every > 0 and is_time(
        current, config.train.maps_every, total
      )
      if maps_due or is_time(current, config.train.checkpoint_every, total):
        check_nonfinite(state, config, manager, workdir)
        save_checkpoint(manager, state, workdir)
        logging.info('Saving the checkpoint of step %d.', current)
      if maps_due:
        dump_sample_maps(config, manager, workdir, current)
  except Exception as error:
    # Errors that every process raises together end the run as usual.
    shared = isinstance(error, (InputError, NonFiniteError))
    if jax.process_count() > 1 and not shared:
      distributed.stop_after_step_failure(error)
    raise
  finally:
    manager.wait_until_finished()
    writer.close()
  return state
