"""Restore a trained run from its work directory, for the tools.

The evaluator and the maps tool restore through `restore_run` and never
import the training loop.
"""

import dataclasses

import jax

from cganjax import checkpoint, step


@dataclasses.dataclass(frozen=True)
class RestoredRun:
  """A run's config, attribute names, networks, and a checkpoint's state."""

  config: object
  attributes: tuple[str, ...]
  networks: step.Networks
  step: int
  state: step.TrainState


def restore_run(workdir, step_number: int | None = None) -> RestoredRun:
  """Restore the checkpoint of `step_number` (None: the newest) of a run.

  The networks are rebuilt from the run record's config, and the state is
  placed on the first device.

  Raises:
    checkpoint.WorkdirError: no run record, no checkpoint, an unknown step,
      or a checkpoint that does not match the recorded model.
  """
  record = checkpoint.load_run_record(workdir)
  config = record['config']
  attributes = tuple(record['attributes'])
  networks = step.create_networks(config, attributes)
  abstract = jax.eval_shape(lambda: step.create_train_state(config, networks))
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
    abstract,
  )
  manager = checkpoint.checkpoint_manager(workdir, async_save=False)
  try:
    restored_step, state = checkpoint.restore_state(
      manager, step_number, target, workdir
    )
  finally:
    manager.close()
  return RestoredRun(config, attributes, networks, restored_step, state)
