"""One process of a two-process test run, started by tests/test_multihost.py.

  python tests/multihost_worker.py PROCESS_ID PORT WORKDIR OUT

Joins a run of two CPU processes (gloo on 127.0.0.1:PORT, two devices each)
and trains the tiny test config in WORKDIR the way `cganjax.main` does.
Then saves this process's copy of the final state to OUT (.npz), with the
example ids that the process loaded.
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from conftest import make_tiny_config  # noqa: E402

# conftest sets 8 devices, but each process of this run has 2.
os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=2'

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import logging  # noqa: E402

from cganjax import distributed, train  # noqa: E402
from cganjax.data import pipeline  # noqa: E402

DEVICES_PER_PROCESS = 2
STATE_TREES = ('g_params', 'd_params', 'g_ema_params')


def record_loaded_ids(loaded: list):
  """Wrap pipeline.train_batches so that the ids it loads go to `loaded`."""
  original = pipeline.train_batches

  def recording(*args, **kwargs):
    for batch in original(*args, **kwargs):
      loaded.append(batch['index'])
      yield batch

  pipeline.train_batches = recording


def main() -> None:
  logging.use_absl_handler()
  logging.set_verbosity(logging.INFO)
  process_id, port, workdir, out = sys.argv[1:]
  joined = distributed.initialize(
    distributed.Options(
      mode='on',
      coordinator_address=f'127.0.0.1:{port}',
      num_processes=2,
      process_id=int(process_id),
      heartbeat_timeout_seconds=10,
    )
  )
  assert joined
  assert jax.process_count() == 2
  assert jax.local_device_count() == DEVICES_PER_PROCESS

  loaded = []
  record_loaded_ids(loaded)
  state = train.train_and_evaluate(make_tiny_config(), workdir)

  arrays = {'step': np.asarray(int(state.step))}
  for name in STATE_TREES:
    leaves = jax.tree.leaves(distributed.local_copy(getattr(state, name)))
    for index, leaf in enumerate(leaves):
      arrays[f'{name}/{index}'] = np.asarray(leaf)
  # The prefetch thread may have loaded batches past the last step.
  steps = int(state.step)
  arrays['loaded_ids'] = np.stack(loaded[:steps])
  np.savez(out, **arrays)


if __name__ == '__main__':
  main()
