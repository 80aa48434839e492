r"""Write activation maps of a trained run: arrays, index and overlays.

  python -m cganjax.explain --workdir=/tmp/demo --out=/tmp/demo_maps

Restores the newest checkpoint of the run (or --step), computes a map for
every target on every tap that the target depends on, and writes a maps
folder: index.json, images.npy, parts.npy, one [images, targets, H, W]
array per layer with its maxima, and PNG overlays in overlays/. With only
--workdir and --out it explains D's attribute logits on the first 16 test
images of the run's data set. The folder is written as OUT.partial and
renamed to OUT when complete; rerun the same command after an interruption
to resume.

Target groups (--targets, comma-separated):
  attributes            D's attribute logits on the real image
  realness              D's realness on the real image
  generated_attributes  D's attribute logits on a face G draws from noise
  generated_realness    D's realness on that face
  edits                 the generated region: D's logit of the requested
                        value on an edit of the attribute inside its region,
                        through G's taps and D's
  bottleneck            the first --num_latent channels of G's bottleneck,
                        each summed over space
  noise                 the first --num_latent dimensions of G's noise
"""

import sys
import time

from absl import app, flags, logging

from cganjax import cli

_WORKDIR = flags.DEFINE_string(
  'workdir', None, 'Work directory of a training run to explain.'
)
_OUT = flags.DEFINE_string(
  'out', None, 'Maps folder to write; it must not hold other maps.'
)
_STEP = flags.DEFINE_integer(
  'step', None, 'Checkpoint step to explain; default: the newest.'
)
_IMAGES = flags.DEFINE_string(
  'images',
  None,
  'Folder of PNG or JPEG files to explain instead of the data set; each is '
  'centre-cropped and resized to the model size. Edits need part maps, so '
  'they are not available here.',
)
_SPLIT = flags.DEFINE_enum(
  'split', 'test', ['test', 'train'], "Split of the run's data set to use."
)
_METHOD = flags.DEFINE_enum(
  'method',
  'grad_cam',
  ['grad_cam', 'grad_cam_pp', 'gradient_x_activation'],
  'Map method: Grad-CAM, Grad-CAM++ (power form) or gradient x activation.',
)
_TARGETS = flags.DEFINE_list(
  'targets',
  ['attributes'],
  'Target groups, comma-separated: attributes, realness, '
  'generated_attributes, generated_realness, edits, bottleneck, noise.',
)
_ATTRIBUTES = flags.DEFINE_list(
  'attributes',
  None,
  'Attribute names for the attribute and edit groups; default: all.',
)
_NUM_LATENT = flags.DEFINE_integer(
  'num_latent',
  8,
  'Bottleneck channels and noise dimensions to explain, from the first.',
)
_NUM_IMAGES = flags.DEFINE_integer(
  'num_images',
  None,
  'Images to explain; default: 16 from the data set, or every file of '
  '--images.',
)
_BATCH_SIZE = flags.DEFINE_integer(
  'batch_size',
  16,
  'Images per batch over all devices, rounded up to a multiple of the '
  'device count.',
)
_DTYPE = flags.DEFINE_enum(
  'dtype', 'float16', ['float16', 'float32'], 'Dtype of the saved maps.'
)
_OVERLAY_IMAGES = flags.DEFINE_integer(
  'overlay_images',
  4,
  'Images (rows) in each overlay grid; 0 writes no overlays.',
)


def main(argv: list[str]) -> None:
  cli.reject_extra_arguments(argv)
  cli.quiet_library_logs()
  from cganjax import maps_dump  # Imported here so that --help stays fast.

  with cli.report_errors():
    started = time.time()
    out = maps_dump.dump_maps(
      _WORKDIR.value,
      _OUT.value,
      step_number=_STEP.value,
      images=_IMAGES.value,
      split=_SPLIT.value,
      method=_METHOD.value,
      groups=_TARGETS.value,
      attributes=_ATTRIBUTES.value,
      num_latent=_NUM_LATENT.value,
      num_images=_NUM_IMAGES.value,
      batch_size=_BATCH_SIZE.value,
      dtype=_DTYPE.value,
      overlay_images=_OVERLAY_IMAGES.value,
    )
    logging.info('Explaining took %.1f s.', time.time() - started)
    print(out)


def run() -> None:
  flags.mark_flags_as_required(['workdir', 'out'])
  app.run(main, flags_parser=cli.parse_flags)


if __name__ == '__main__':
  sys.exit(run())
