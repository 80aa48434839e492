r"""Latency of the editing API after the model is loaded: 1 and 64 images.

  python -m benchmarks.edit_latency               # from the repository root
  python -m benchmarks.edit_latency --workdir=/tmp/cganjax_demo

Without --workdir the script writes a fake run (the untrained state of
configs/synthetic.py, 64x64, one checkpoint) to a temporary directory,
because the latency does not depend on the weight values. It restores the
run with `editing.Editor.load`, as `python -m cganjax.edit` does, and
prints medians of --runs timed runs after one untimed run that compiles:

  1 image     `Editor.edit_image` on one PNG with a part mask and one edit:
              reading, the mask, D's predictions before and after, G,
              mapping back and compositing, but no file writes;
  64 images   the same call on 64 different PNGs, one after another, as the
              tool edits a folder;
  64 edits    one image with a sweep of 64 values, which runs G once on a
              batch of 64;
  G+D on 64   `Editor.generate` and `Editor.predict` on 64 model inputs,
              the networks alone.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks import common
from cganjax import checkpoint, editing, step
from cganjax.data import synthetic

BATCH = 64
MASK = 'mouth,u_lip,l_lip'


def make_fake_run(config, workdir) -> None:
  """Write a run record and one checkpoint of an untrained state."""
  attributes = synthetic.SYNTHETIC_ATTRIBUTES
  networks = step.create_networks(config, attributes)
  state = step.create_train_state(config, networks)
  manager = checkpoint.checkpoint_manager(workdir, async_save=False)
  manager.save(0, args=checkpoint.ocp.args.StandardSave(state))
  manager.wait_until_finished()
  manager.close()
  record = checkpoint.make_run_record(config, attributes)
  checkpoint.write_run_record(workdir, record)


def write_faces(folder: Path, size: int, count: int) -> list[Path]:
  """Write `count` synthetic faces and their label maps as PNG files."""
  paths = []
  for index in range(count):
    example = synthetic.render(5, index, size)
    path = folder / f'face{index}.png'
    Image.fromarray(example['image']).save(path)
    Image.fromarray(example['parts']).save(folder / f'face{index}_labels.png')
    paths.append(path)
  return paths


def median_seconds(fn, runs: int) -> float:
  fn()  # Compiles.
  times = []
  for _ in range(runs):
    started = time.perf_counter()
    fn()
    times.append(time.perf_counter() - started)
  return statistics.median(times)


def timed_calls(editor: editing.Editor, folder: Path) -> dict:
  """Return {label: function} of the calls this benchmark times."""
  size = editor.model_size
  faces = write_faces(folder, size, BATCH)

  def edit(path, edits):
    labels = path.with_name(path.stem + '_labels.png')
    editor.edit_image(path, MASK, edits, parts_annotation=str(labels))

  images = np.stack([np.asarray(Image.open(path)) for path in faces])
  masks = np.zeros((BATCH, size, size), bool)
  masks[:, size // 2 :, size // 4 : 3 * size // 4] = True
  targets = np.ones((BATCH, len(editor.attributes)), np.float32)
  noise = np.repeat(editor.noise(0)[None], BATCH, axis=0)

  def model_only():
    editor.generate(images, masks, targets, noise)
    editor.predict(images)

  return {
    '1 image': lambda: edit(faces[0], ['Smiling=1']),
    f'{BATCH} images': lambda: [edit(path, ['Smiling=1']) for path in faces],
    f'{BATCH} edits of 1 image': lambda: edit(
      faces[0], [f'Smiling=0:2:{BATCH}']
    ),
    f'G+D on {BATCH} inputs': model_only,
  }


def median_latency(workdir, count: int, runs: int) -> float:
  """Median seconds to edit `count` (1 or 64) images of a run."""
  editor = editing.Editor.load(workdir)
  with tempfile.TemporaryDirectory() as folder:
    calls = timed_calls(editor, Path(folder))
    return median_seconds(calls['1 image' if count == 1 else '64 images'], runs)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    '--workdir', default='', help='Run to restore; default: a fake run.'
  )
  parser.add_argument('--runs', type=int, default=5)
  parser.add_argument('--tiny', action='store_true')
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as scratch:
    workdir = args.workdir
    if not workdir:
      workdir = Path(scratch) / 'run'
      make_fake_run(common.load_config('synthetic', tiny=args.tiny), workdir)
    editor = editing.Editor.load(workdir)
    print(
      f'{editor.model_size}x{editor.model_size} model, median of {args.runs} '
      'runs after one untimed run'
    )
    faces = Path(scratch) / 'faces'
    faces.mkdir()
    for label, fn in timed_calls(editor, faces).items():
      seconds = median_seconds(fn, args.runs)
      print(f'edit latency: {1000 * seconds:.1f} ms for {label}', flush=True)
  if 'tensorflow' in sys.modules:
    raise SystemExit('TensorFlow was imported, which editing must not do.')


if __name__ == '__main__':
  main()
