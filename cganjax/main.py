r"""Train the attribute-conditional face GAN.

  python -m cganjax.main --config=configs/synthetic_demo.py --workdir=/tmp/demo

The work directory receives the run record (run.json), Orbax checkpoints,
TensorBoard event files and sample grids. Given again, the same work
directory resumes from its newest checkpoint. Override any config field on
the command line, for example `--config.train.steps=500`.

This file only parses flags and reports errors, so that the training code
stays importable from tests and notebooks.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from cganjax import cli

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
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv: list[str]) -> None:
  cli.reject_extra_arguments(argv)
  config = cli.load_config(_CONFIG)
  from cganjax import train  # Imported here so that --help stays fast.

  cli.quiet_library_logs()
  logging.info('Work directory: %s', _WORKDIR.value)
  with cli.report_errors(extra_internal=(train.NonFiniteError,)):
    train.train_and_evaluate(config, _WORKDIR.value)


def run() -> None:
  app.run(main, flags_parser=cli.parse_flags)


if __name__ == '__main__':
  sys.exit(run())
