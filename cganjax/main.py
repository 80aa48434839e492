r"""Train the attribute-conditional face GAN.

  python -m cganjax.main --config=configs/synthetic_demo.py --workdir=/tmp/demo

The work directory receives the run record (run.json), Orbax checkpoints,
TensorBoard event files and sample grids. Given again, the same work
directory resumes from its newest checkpoint. Override any config field on
the command line, for example `--config.train.steps=500`.

The same command joins a multi-process run (a TPU pod slice, SLURM, or
launch/local.sh) when the flags or the environment describe one; see
cganjax/distributed.py. Only process 0 then logs progress and writes the run
record, sample grids and event files; every process writes its part of each
checkpoint.

This file only parses flags and reports errors, so that the training code
stays importable from tests and notebooks.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from cganjax import cli, distributed

_CONFIG = config_flags.DEFINE_config_file(
  'config',
  None,
  'Path to a config file, such as configs/synthetic.py. Fields can be '
  'overridden with --config.FIELD=VALUE.',
  lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
  'workdir',
  None,
  'Directory for checkpoints, logs and samples; created if missing, resumed '
  'if it already contains a checkpoint.',
)
_DISTRIBUTED = flags.DEFINE_enum(
  'distributed',
  'auto',
  list(distributed.MODES),
  'Whether to join a multi-process run: auto joins when the flags below are '
  'set or when SLURM (several tasks), Open MPI, JAX_COORDINATOR_ADDRESS or '
  'a TPU VM describe one; on always joins, letting JAX read what the flags '
  'leave unset from the environment; off runs as one process.',
)
_COORDINATOR_ADDRESS = flags.DEFINE_string(
  'coordinator_address',
  None,
  'HOST:PORT of process 0, where the JAX coordination service listens; the '
  'same on every process.',
)
_NUM_PROCESSES = flags.DEFINE_integer(
  'num_processes', None, 'Number of processes in the run.'
)
_PROCESS_ID = flags.DEFINE_integer(
  'process_id',
  None,
  'Id of this process, from 0 to num_processes - 1; 0 hosts the '
  'coordination service.',
)
_HEARTBEAT_TIMEOUT = flags.DEFINE_integer(
  'heartbeat_timeout_seconds',
  distributed.DEFAULT_HEARTBEAT_TIMEOUT,
  'In a multi-process run, seconds without a heartbeat after which JAX '
  'declares a process lost and stops the others.',
)
flags.mark_flags_as_required(['config', 'workdir'])


def distributed_options() -> distributed.Options:
  options = distributed.Options(
    mode=_DISTRIBUTED.value,
    coordinator_address=_COORDINATOR_ADDRESS.value,
    num_processes=_NUM_PROCESSES.value,
    process_id=_PROCESS_ID.value,
    heartbeat_timeout_seconds=_HEARTBEAT_TIMEOUT.value,
  )
  distributed.validate_options(options)
  return options


def join_run(options: distributed.Options) -> None:
  """Join a multi-process run under a supervising parent, if there is one.

  Returns in the training process. The parent exits when the training
  process ends, with a one-line error when JAX stopped it for a lost peer.
  """
  if not distributed.is_enabled(options):
    return
  result = distributed.supervise(options.process_id)
  if result is not None:
    if result.fatal_error is not None:
      cli.fail(result.fatal_error, cli.INTERNAL_EXIT)
    sys.exit(result.exit_code)
  if distributed.initialize(options):
    import jax

    if jax.process_index() != 0:
      # Other processes log warnings and errors only.
      logging.set_verbosity(logging.WARNING)


def main(argv: list[str]) -> None:
  cli.reject_extra_arguments(argv)
  config = cli.load_config(_CONFIG)
  with cli.report_errors():
    join_run(distributed_options())
  from cganjax import train  # Imported here so that --help stays fast.

  cli.quiet_library_logs()
  logging.info('Work directory: %s', _WORKDIR.value)
  with cli.report_errors(extra_internal=(train.NonFiniteError,)):
    train.train_and_evaluate(config, _WORKDIR.value)


def run() -> None:
  app.run(main, flags_parser=cli.parse_flags)


if __name__ == '__main__':
  sys.exit(run())
