r"""Prepare a real data set once, before training or on another machine.

  python -m cganjax.prepare --config=configs/celebamask_hq.py \
    --config.data.dir=/path/to/CelebAMask-HQ --config.data.image_size=64

Reads the source in data.dir and writes the arrays that training reads into
data.prepared_dir (default ~/.cache/cganjax/prepared), then prints the
prepared folder. Training prepares a missing folder by itself on a single
process; a multi-process run needs it prepared beforehand with the same
data fields. A folder that exists already is left as it is.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from cganjax import cli

_CONFIG = config_flags.DEFINE_config_file(
  'config',
  None,
  'Path to a config file of a real data set, such as configs/celeba.py. '
  'Fields can be overridden with --config.FIELD=VALUE.',
  lock_config=True,
)
flags.mark_flags_as_required(['config'])


def main(argv: list[str]) -> None:
  cli.reject_extra_arguments(argv)
  config = cli.load_config(_CONFIG)
  from cganjax.data import pipeline  # Imported here so that --help is fast.
  from cganjax.errors import InputError

  with cli.report_errors():
    if config.data.name not in pipeline.REAL_DATASETS:
      raise InputError(
        f"data.name='{config.data.name}' needs no preparation; prepare one "
        f'of {", ".join(pipeline.REAL_DATASETS)}.'
      )
    info = pipeline.dataset_info(config)
    logging.info(
      'Prepared %s: %d train and %d test images at %dpx.',
      info.name,
      info.num_train,
      info.num_test,
      info.image_size,
    )
    print(pipeline.prepared_folder(config))


def run() -> None:
  app.run(main, flags_parser=cli.parse_flags)


if __name__ == '__main__':
  sys.exit(run())
