r"""Judge a trained run with an independent attribute classifier.

  python -m cganjax.evaluate --workdir=/tmp/demo

The judge is a small CNN, separate from the discriminator, trained once per
data config with a fixed seed and cached under --classifier_dir, so every run
on that data is judged by the same classifier on the same images. It trains
only on examples whose pose and lighting factors lie inside a central range
and is scored both inside that range and on the held-out outer range.

For the run it reports, per attribute: the judge's accuracy on faces drawn
from noise under whole-image masks (target = the test image's attributes),
on edits that flip the attribute inside its region, the mean absolute change
outside the mask (0 to 255), and, on the synthetic set, the mean L1 inside the
mask between the edit and the true counterfactual (0 to 1).
"""

import sys
import time
from pathlib import Path

from absl import app, flags, logging

from cganjax import cli

_WORKDIR = flags.DEFINE_string(
  'workdir', None, 'Work directory of a training run to evaluate.'
)
_STEP = flags.DEFINE_integer(
  'step', None, 'Checkpoint step to evaluate; default: the newest.'
)
_CLASSIFIER_DIR = flags.DEFINE_string(
  'classifier_dir',
  str(Path.home() / '.cache' / 'cganjax' / 'classifiers'),
  'Folder where judges are trained once and reused, one per data config.',
)
_NUM_IMAGES = flags.DEFINE_integer(
  'num_images',
  None,
  'Test images to generate and edit; default: evaluate.num_images of the '
  "run's config.",
)
_OUTPUT = flags.DEFINE_string(
  'output',
  None,
  'Path of the JSON table; default: WORKDIR/eval/step_<step>.json.',
)


def main(argv: list[str]) -> None:
  cli.reject_extra_arguments(argv)
  cli.quiet_library_logs()
  from cganjax import evaluation

  with cli.report_errors():
    started = time.time()
    report = evaluation.evaluate_run(
      _WORKDIR.value,
      step=_STEP.value,
      classifier_dir=_CLASSIFIER_DIR.value,
      num_images=_NUM_IMAGES.value,
      output=_OUTPUT.value,
    )
    print(evaluation.format_table(report))
    logging.info('Evaluation took %.1f s.', time.time() - started)


def run() -> None:
  flags.mark_flags_as_required(['workdir'])
  app.run(main, flags_parser=cli.parse_flags)


if __name__ == '__main__':
  sys.exit(run())
