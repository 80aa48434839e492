r"""Analyse saved activation maps against face part label maps.

  python -m cganjax.analyze --maps=/tmp/demo_maps --out=/tmp/demo_analysis \
      --workdir=/tmp/cganjax_demo

Reads one or more maps folders, each written by python -m cganjax.explain
with one method. For every map it measures the energy inside each face
part and inside the attribute's expected parts, the pointing game, IoU
with the expected parts and the spatial entropy. With --workdir it also
restores D at each folder's checkpoint step for the deletion faithfulness
test and for the randomised-weights check (maps from D with re-initialised
weights, compared by Spearman rank correlation).

Writes OUT/report.md (headline tables, then a table per target with a row
per method and layer), OUT/maps.csv (every map), OUT/summary.csv (means per
folder, layer and target) and PNG figures in OUT/figures. OUT is written
under a temporary name and renamed when complete; it must not exist.
"""

import shutil
import sys
import tempfile
import time
from pathlib import Path

from absl import app, flags, logging

from cganjax import cli
from cganjax.errors import InputError

_MAPS = flags.DEFINE_list(
  'maps',
  None,
  'Maps folders to analyse, comma-separated; each is the output of one '
  'python -m cganjax.explain run.',
)
_OUT = flags.DEFINE_string(
  'out', None, 'Output folder for the report; it must not exist.'
)
_WORKDIR = flags.DEFINE_string(
  'workdir',
  None,
  'Work directory of the run that wrote the maps. Enables the faithfulness '
  'test and the randomised-weights check; without it they are n/a.',
)
_PARTS = flags.DEFINE_string(
  'parts',
  None,
  'A .npy file of integer part label maps [images, height, width] in the '
  "CelebAMask-HQ order, replacing each folder's parts.npy. Needed for "
  'folders without parts.npy, such as dumps of --images folders.',
)
_THRESHOLD = flags.DEFINE_float(
  'threshold',
  0.5,
  "IoU threshold as a fraction of each map's maximum, in (0, 1].",
)
_DELETE_FRACTIONS = flags.DEFINE_list(
  'delete_fractions',
  ['0.05', '0.1', '0.2'],
  'Fractions of the pixels deleted in the faithfulness test, each in (0, 1).',
)
_RANDOM_DRAWS = flags.DEFINE_integer(
  'random_draws',
  4,
  'Random pixel sets per image and fraction in the faithfulness test.',
)
_SEED = flags.DEFINE_integer(
  'seed',
  0,
  'Seed of the random pixel sets, the tie-break order of equal map values '
  "and the randomised D's weights.",
)
_BATCH_SIZE = flags.DEFINE_integer(
  'batch_size', 64, 'Images read and scored per batch.'
)
_OVERLAY_IMAGES = flags.DEFINE_integer(
  'overlay_images',
  4,
  'Images (columns) in each example overlay figure; 0 draws none.',
)


def parse_fractions(values) -> tuple[float, ...]:
  try:
    fractions = tuple(float(value) for value in values)
  except ValueError:
    raise InputError(
      f'--delete_fractions={",".join(values)} is not a list of numbers; '
      'pass fractions such as 0.05,0.1,0.2.'
    ) from None
  if not fractions or not all(0 < f < 1 for f in fractions):
    raise InputError(
      f'--delete_fractions={",".join(values)} must be fractions in (0, 1).'
    )
  return fractions


def check_options(threshold, random_draws, batch_size, overlay_images):
  """Raise InputError on a bad option, before anything slow starts."""
  if not 0 < threshold <= 1:
    raise InputError(f'--threshold={threshold} must be in (0, 1].')
  if random_draws < 1:
    raise InputError(f'--random_draws={random_draws} must be 1 or more.')
  if batch_size < 1:
    raise InputError(f'--batch_size={batch_size} must be 1 or more.')
  if overlay_images < 0:
    raise InputError(f'--overlay_images={overlay_images} must be 0 or more.')


def load_folders(paths):
  """Load the maps folders; raise InputError for a missing or bad one."""
  from cganjax import maps_folder

  folders = []
  for path in paths:
    path = Path(path)
    if not path.is_dir():
      raise InputError(
        f'--maps: {path} not found; pass a maps folder written by python -m '
        'cganjax.explain.'
      )
    folders.append(maps_folder.load(path))
  return folders


def load_label_maps(folders, parts_path):
  """Return the label maps of each folder and a description of their source.

  Raises:
    InputError: an unreadable --parts file, label maps that do not fit a
      folder, or a folder without parts.npy when --parts is not given.
  """
  import numpy as np

  from cganjax import analysis

  if parts_path is not None:
    try:
      given = np.load(parts_path, mmap_mode='r')
    except (OSError, ValueError) as error:
      raise InputError(
        f'--parts={parts_path} is unreadable ({error}); pass a .npy file of '
        'label maps [images, height, width].'
      ) from None
    label_maps = [
      analysis.check_label_maps(given, folder, f'--parts={parts_path}')
      for folder in folders
    ]
    return label_maps, f'`{parts_path}` (--parts)'
  for folder in folders:
    if folder.parts is None:
      raise InputError(
        f'{folder.folder} has no parts.npy (its images have no part label '
        'maps); pass --parts=FILE.npy with label maps [images, height, '
        'width] in the CelebAMask-HQ order.'
      )
  return [folder.parts for folder in folders], "each folder's parts.npy"


def folder_labels(folders) -> list[str]:
  """Name each folder by its directory name, numbered when names repeat."""
  names = [folder.folder.name for folder in folders]
  labels = []
  for position, name in enumerate(names):
    labels.append(name if names.count(name) == 1 else f'{name}#{position + 1}')
  return labels


def analyse(
  maps_paths,
  out,
  *,
  workdir=None,
  parts_path=None,
  threshold: float = 0.5,
  delete_fractions=(0.05, 0.1, 0.2),
  random_draws: int = 4,
  seed: int = 0,
  batch_size: int = 64,
  overlay_images: int = 4,
) -> Path:
  """Write the report of the maps folders `maps_paths` to the folder `out`.

  Raises:
    InputError: a bad option, a missing or unreadable maps folder, label
      maps that are missing or do not fit, a work directory that cannot be
      restored at a folder's checkpoint step, or an existing `out`.
  """
  check_options(threshold, random_draws, batch_size, overlay_images)
  fractions = parse_fractions(delete_fractions)
  out = Path(out)
  if out.exists():
    raise InputError(f'--out={out} already exists; pass a new --out.')
  folders = load_folders(maps_paths)
  label_maps, label_source = load_label_maps(folders, parts_path)

  # Imported here so that --help and bad input are reported fast.
  from cganjax import analysis, analysis_report, restore

  options = analysis.Options(
    threshold=threshold,
    delete_fractions=fractions,
    random_draws=random_draws,
    seed=seed,
    batch_size=batch_size,
  )
  labels = folder_labels(folders)
  runs = {}
  rows = []
  for folder, label, labelled in zip(folders, labels, label_maps, strict=True):
    checks = None
    if workdir is not None:
      step = folder.index['checkpoint_step']
      if step not in runs:
        runs[step] = restore.restore_run(workdir, step)
        logging.info('Restored step %d of %s.', step, workdir)
      checks = analysis.prepare_checks(runs[step], folder, seed, batch_size)
    rows += analysis.analyse_folder(folder, labelled, checks, options, label)

  fields = analysis.row_fields(options)
  summaries = analysis.summarise(rows, fields)
  out.parent.mkdir(parents=True, exist_ok=True)
  partial = Path(
    tempfile.mkdtemp(prefix=f'.{out.name}.', suffix='.partial', dir=out.parent)
  )
  try:
    (partial / 'maps.csv').write_text(analysis_report.csv_text(rows, fields))
    (partial / 'summary.csv').write_text(
      analysis_report.csv_text(summaries, analysis.summary_fields(fields))
    )
    figures = analysis_report.write_figures(
      partial,
      summaries,
      folders,
      labels,
      label_maps,
      options,
      overlay_images,
    )
    text = analysis_report.report_text(
      summaries, folders, options, label_source, workdir, figures
    )
    (partial / 'report.md').write_text(text)
    partial.chmod(0o755)
    partial.rename(out)
  except BaseException:
    shutil.rmtree(partial, ignore_errors=True)
    raise
  logging.info('Wrote the analysis of %d maps to %s.', len(rows), out)
  return out


def main(argv: list[str]) -> None:
  cli.reject_extra_arguments(argv)
  cli.quiet_library_logs()
  with cli.report_errors():
    started = time.time()
    out = analyse(
      _MAPS.value,
      _OUT.value,
      workdir=_WORKDIR.value,
      parts_path=_PARTS.value,
      threshold=_THRESHOLD.value,
      delete_fractions=_DELETE_FRACTIONS.value,
      random_draws=_RANDOM_DRAWS.value,
      seed=_SEED.value,
      batch_size=_BATCH_SIZE.value,
      overlay_images=_OVERLAY_IMAGES.value,
    )
    logging.info('Analysis took %.1f s.', time.time() - started)
    print(out)


def run() -> None:
  flags.mark_flags_as_required(['maps', 'out'])
  app.run(main, flags_parser=cli.parse_flags)


if __name__ == '__main__':
  sys.exit(run())
