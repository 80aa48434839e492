r"""Edit faces inside a mask with a trained run's generator.

  python -m cganjax.edit --workdir=/tmp/demo --image=face.png \
    --mask=mouth,u_lip,l_lip --parts=face_labels.png --set=Smiling=1 \
    --out=/tmp/edits

Restores G (EMA weights unless --noema) and D from the newest checkpoint
of --workdir (or --step). Only pixels inside the mask change: outside a
hard mask the saved PNG equals the input bit for bit, at the input's size.

--mask is one of:
  part names     mouth,u_lip,l_lip, looked up in --parts: a label-map PNG
                 in the CelebAMask-HQ order (0 background, 1 skin, ...) or
                 a folder of label maps <stem>.png or CelebAMask-HQ part
                 files <id>_<part>.png, paired with images by file name
  a mask image   PNG or JPEG of the image's size; grayscale >= 128 is inside
  a mask folder  <stem>.png per image of an --image folder
  map:ATTR@T[:METHOD[:LAYER]]
                 D's activation map of ATTR's logit on the input, thresholded
                 at T of its maximum; METHOD and LAYER default to the run
                 config's edit.map_method and edit.map_layer (grad_cam and
                 D/block2 when the config has none)

--set=Smiling=1,Eyeglasses=0 is one joint edit, and each further --set gives
separate outputs. A value other than 0 or 1 sets the strength, and
START:STOP:COUNT sweeps COUNT values. Attributes not named keep D's
prediction on the input.

The image is centre-cropped to a square and resized to the model size
(Lanczos); the edit is resized back into that square. Each edit writes
<stem>_<k>.png, <stem>_<k>_strip.png (input, mask, edit, difference) and
<stem>_<k>.json; the run writes report.json.
"""

import sys
import time

from absl import app, flags, logging

from cganjax import cli

_WORKDIR = flags.DEFINE_string(
  'workdir', None, 'Work directory of a training run.'
)
_STEP = flags.DEFINE_integer(
  'step', None, 'Checkpoint step to restore; default: the newest.'
)
_IMAGE = flags.DEFINE_string(
  'image', None, 'An image file (PNG or JPEG) or a folder of them.'
)
_MASK = flags.DEFINE_string(
  'mask',
  None,
  'Part names, a mask image or folder, or map:ATTR@T[:METHOD[:LAYER]].',
)
_PARTS = flags.DEFINE_string(
  'parts',
  None,
  'Part annotation for part-name masks: a label-map PNG, or a folder of '
  'label maps or CelebAMask-HQ part files.',
)
_SET = flags.DEFINE_multi_string(
  'set',
  None,
  'Joint edit ATTR=VALUE[,ATTR=VALUE...]; VALUE may be START:STOP:COUNT. '
  'Repeat for separate outputs.',
)
_OUT = flags.DEFINE_string('out', None, 'Folder for the outputs.')
_DILATE = flags.DEFINE_float(
  'dilate', 0.0, 'Dilate the mask by a disc of this radius, in pixels.'
)
_FEATHER = flags.DEFINE_float(
  'feather',
  0.0,
  'Width in pixels of the blend band inside the mask edge; 0: hard mask.',
)
_SEED = flags.DEFINE_integer('seed', 0, "Seed of G's noise vector.")
_EMA = flags.DEFINE_boolean(
  'ema', True, "Use the EMA of G's weights; --noema uses the trained ones."
)


def main(argv: list[str]) -> None:
  cli.reject_extra_arguments(argv)
  cli.quiet_library_logs()
  from cganjax import editing  # Imported here so that --help stays fast.

  with cli.report_errors():
    started = time.time()
    editor = editing.Editor.load(_WORKDIR.value, _STEP.value, _EMA.value)
    logging.info(
      'Restored step %d in %.1f s.', editor.step, time.time() - started
    )

    def progress(done, total):
      elapsed = time.time() - started
      remaining = elapsed / done * (total - done)
      logging.info(
        'Edited %d/%d images, %.2f images/s, ETA %.0f s.',
        done,
        total,
        done / elapsed,
        remaining,
      )

    summary = editing.edit_files(
      editor,
      _IMAGE.value,
      _OUT.value,
      mask=_MASK.value,
      sets=_SET.value,
      parts=_PARTS.value,
      dilate=_DILATE.value,
      feather=_FEATHER.value,
      seed=_SEED.value,
      progress=progress,
    )
    for name in summary['outputs']:
      print(name)
    failures = summary['failures']
    if failures:
      first = failures[0]
      cli.fail(
        f'{len(failures)} of {summary["images"]} images failed, the first '
        f'{first["image"]}: {first["error"]} (all are listed in '
        f'{_OUT.value}/report.json)'
      )


def run() -> None:
  flags.mark_flags_as_required(['workdir', 'image', 'mask', 'set', 'out'])
  app.run(main, flags_parser=cli.parse_flags)


if __name__ == '__main__':
  sys.exit(run())
