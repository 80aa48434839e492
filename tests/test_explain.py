"""The maps dump (`maps_dump.dump_maps`) and its command line.

The work directory contains a tiny run's record and a checkpoint of random
weights. Each dump compiles the maps function again; the session's
persistent compilation cache (conftest.py) lets later dumps with the same
settings load the compiled program.
"""

import json
import subprocess
from pathlib import Path

import jax
import numpy as np
import pytest
import random_params
from conftest import make_tiny_config, run_module
from PIL import Image

from cganjax import (
  evaluation,
  maps_dump,
  maps_folder,
  restore,
)
from cganjax.errors import InputError

REPO_ROOT = Path(__file__).resolve().parent.parent
DUMP_OPTIONS = {
  'groups': ('attributes', 'edits'),
  'attributes': ['Smiling'],
  'num_images': 12,
  'batch_size': 8,
  'overlay_images': 1,
}


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  """A work directory with a run record and a random step-0 checkpoint."""
  path = tmp_path_factory.mktemp('run')
  random_params.write_random_run(path, make_tiny_config())
  return path


@pytest.fixture(scope='module')
def complete_dump(workdir, tmp_path_factory):
  out = tmp_path_factory.mktemp('dumps') / 'maps'
  assert maps_dump.dump_maps(workdir, out, **DUMP_OPTIONS) == out
  return out


def folder_files(folder) -> dict[str, bytes]:
  return {
    p.name: p.read_bytes()
    for p in sorted(Path(folder).iterdir())
    if p.suffix == '.npy'
  }


def test_restore_generator_matches_restore_run(workdir):
  run = restore.restore_run(workdir)
  config, attributes, networks, restored_step, g_params = (
    evaluation.restore_generator(workdir, None)
  )
  assert restored_step == run.step == 0
  assert attributes == run.attributes
  assert config.to_dict() == run.config.to_dict()
  assert networks.generator == run.networks.generator
  for got, want in zip(
    jax.tree.leaves(g_params),
    jax.tree.leaves(run.state.g_ema_params),
    strict=True,
  ):
    np.testing.assert_array_equal(got, want)


def test_dump_writes_folder(complete_dump):
  loaded = maps_folder.load(complete_dump)
  index = loaded.index
  assert index['format_version'] == 1
  assert index['method'] == 'grad_cam'
  assert index['checkpoint_step'] == 0
  assert index['rows_done'] == index['num_images'] == 12
  assert index['source']['split'] == 'test'
  assert len(index['image_ids']) == 12
  assert index['config']['data']['image_size'] == 32
  names = [t['name'] for t in index['targets']]
  assert names == ['real/Smiling', 'edit/Smiling']
  assert index['views'] == ['edit/Smiling']

  layers = {layer['name']: layer['targets'] for layer in index['layers']}
  assert layers['D/block1'] == ['real/Smiling', 'edit/Smiling']
  # A G tap has no target on the real image.
  assert layers['G/enc1'] == ['edit/Smiling']
  for layer in index['layers']:
    array = np.load(complete_dump / layer['file'])
    assert array.shape == (12, len(layer['targets']), 32, 32)
    assert array.dtype == np.float16
    scales = np.load(complete_dump / layer['scale_file'])
    assert scales.shape == (12, len(layer['targets']))
    assert np.isfinite(array).all()
    assert np.isfinite(scales).all()
  assert loaded.images.shape == (12, 32, 32, 3)
  assert loaded.parts.shape == (12, 32, 32)
  assert loaded.generated.shape == (12, 1, 32, 32, 3)

  overlays = sorted(
    p.relative_to(complete_dump / 'overlays')
    for p in (complete_dump / 'overlays').rglob('*.png')
  )
  expected = sum(len(targets) for targets in layers.values())
  assert len(overlays) == expected
  assert Path('G_enc1/edit_Smiling.png') in overlays
  with Image.open(complete_dump / 'overlays' / overlays[0]) as picture:
    assert picture.format == 'PNG'
  assert not complete_dump.with_name('maps.partial').exists()


def test_dump_resumes_after_interruption(
  workdir, complete_dump, tmp_path, monkeypatch
):
  out = tmp_path / 'maps'
  calls = []
  original = maps_folder.MapsWriter.write_rows

  def write_then_stop(self, start, rows):
    if calls:
      raise KeyboardInterrupt
    calls.append(start)
    original(self, start, rows)

  with monkeypatch.context() as patch:
    patch.setattr(maps_folder.MapsWriter, 'write_rows', write_then_stop)
    with pytest.raises(KeyboardInterrupt):
      maps_dump.dump_maps(workdir, out, **DUMP_OPTIONS)
  partial = tmp_path / 'maps.partial'
  assert not out.exists()
  assert json.loads((partial / 'index.json').read_text())['rows_done'] == 8

  resumed_rows = []

  def record_start(self, start, rows):
    resumed_rows.append(start)
    original(self, start, rows)

  with monkeypatch.context() as patch:
    patch.setattr(maps_folder.MapsWriter, 'write_rows', record_start)
    maps_dump.dump_maps(workdir, out, **DUMP_OPTIONS)
  assert resumed_rows == [8]
  assert not partial.exists()
  assert folder_files(out) == folder_files(complete_dump)


def test_dump_again_reuses_complete_folder(workdir, complete_dump, monkeypatch):
  before = folder_files(complete_dump)

  def fail(*args, **kwargs):
    raise AssertionError('maps were computed again')

  monkeypatch.setattr(maps_dump.maps, 'make_maps_fn', fail)
  assert maps_dump.dump_maps(workdir, complete_dump, **DUMP_OPTIONS)
  assert folder_files(complete_dump) == before

  with pytest.raises(InputError, match=r'other settings \(method\)'):
    maps_dump.dump_maps(
      workdir, complete_dump, **DUMP_OPTIONS, method='grad_cam_pp'
    )
  assert folder_files(complete_dump) == before


def write_images(folder: Path) -> None:
  folder.mkdir()
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 256, (24, 40, 3), np.uint8)).save(
    folder / 'b_wide.png'
  )
  Image.fromarray(rng.integers(0, 256, (32, 32), np.uint8)).save(
    folder / 'a_gray.jpg'
  )
  (folder / 'notes.txt').write_text('not an image')


def test_dump_from_image_folder(workdir, tmp_path):
  write_images(tmp_path / 'photos')
  out = maps_dump.dump_maps(
    workdir,
    tmp_path / 'maps',
    images=tmp_path / 'photos',
    groups=('attributes',),
    attributes=['Smiling'],
    batch_size=8,
    overlay_images=0,
  )
  loaded = maps_folder.load(out)
  assert loaded.index['source']['kind'] == 'files'
  assert loaded.index['image_ids'] == ['a_gray.jpg', 'b_wide.png']
  assert loaded.images.shape == (2, 32, 32, 3)
  assert loaded.parts is None
  assert not (out / 'parts.npy').exists()
  assert not (out / 'overlays').exists()
  # The wide image is centre-cropped to its middle 24x24, then resized.
  wide = np.asarray(Image.open(tmp_path / 'photos' / 'b_wide.png'))
  expected = np.asarray(
    Image.fromarray(wide[:, 8:32]).resize((32, 32), Image.Resampling.LANCZOS)
  )
  np.testing.assert_array_equal(loaded.images[1], expected)


def test_dump_rejects_bad_requests(workdir, tmp_path):
  write_images(tmp_path / 'photos')
  with pytest.raises(InputError, match='need part label maps'):
    maps_dump.dump_maps(
      workdir, tmp_path / 'a', images=tmp_path / 'photos', groups=('edits',)
    )
  with pytest.raises(InputError, match=r'--step=3 not found'):
    maps_dump.dump_maps(workdir, tmp_path / 'f', step_number=3)
  with pytest.raises(InputError, match='--num_images=99'):
    maps_dump.dump_maps(workdir, tmp_path / 'b', num_images=99)
  with pytest.raises(InputError, match='not a folder'):
    maps_dump.dump_maps(workdir, tmp_path / 'c', images=tmp_path / 'none')
  with pytest.raises(InputError, match='--targets=colour'):
    maps_dump.dump_maps(workdir, tmp_path / 'd', groups=('colour',))
  (tmp_path / 'e').mkdir()
  with pytest.raises(InputError, match='not a complete maps folder'):
    maps_dump.dump_maps(workdir, tmp_path / 'e')
  assert not list(tmp_path.glob('*.partial'))


# The command line, run as a subprocess with one CPU device.


def run_cli(*args, timeout=300) -> subprocess.CompletedProcess:
  return run_module('cganjax.explain', *args, timeout=timeout)


def error_line(result: subprocess.CompletedProcess) -> str:
  assert 'Traceback' not in result.stderr, result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('explain.py: error: '), last
  return last


def test_cli_help_lists_flags():
  result = run_cli('--help', timeout=120)
  assert result.returncode == 0, result.stderr
  for flag in ('--workdir', '--out', '--step', '--images', '--method'):
    assert flag in result.stdout, flag
  assert 'generated_attributes' in result.stdout


def test_cli_bad_input_exits_2(tmp_path):
  result = run_cli(f'--out={tmp_path / "maps"}', timeout=120)
  assert result.returncode == 2
  assert 'workdir' in error_line(result)
  assert len(result.stderr.strip().splitlines()) == 1, result.stderr

  result = run_cli(
    f'--workdir={tmp_path}', f'--out={tmp_path / "maps"}', timeout=120
  )
  assert result.returncode == 2
  assert 'run.json' in error_line(result)

  result = run_cli(
    f'--workdir={tmp_path}',
    f'--out={tmp_path / "maps"}',
    '--targets=attributes,colour',
    timeout=120,
  )
  assert result.returncode == 2
  assert '--targets=attributes,colour' in error_line(result)
  assert len(result.stderr.strip().splitlines()) == 1, result.stderr
  assert not (tmp_path / 'maps').exists()


def test_cli_writes_maps_folder(workdir, tmp_path):
  out = tmp_path / 'maps'
  result = run_cli(
    f'--workdir={workdir}',
    f'--out={out}',
    '--targets=attributes,realness',
    '--attributes=Smiling,Bangs',
    '--num_images=3',
    '--batch_size=2',
    '--overlay_images=2',
    '--dtype=float32',
  )
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == str(out)
  assert 'maps for 3/3 images' in result.stderr

  # Readable with numpy and json alone.
  index = json.loads((out / 'index.json').read_text())
  assert index['dtype'] == 'float32'
  assert [layer['name'] for layer in index['layers']] == [
    'D/block1',
    'D/block2',
    'D/block3',
  ]
  for name, spec in index['arrays'].items():
    array = np.load(out / name)
    assert list(array.shape) == spec['shape'], name
    assert str(array.dtype) == spec['dtype'], name
  block = np.load(out / 'D_block2.npy')
  assert block.shape == (3, 3, 32, 32)
  assert block.min() >= 0.0
  assert block.max() <= 1.0
  grids = sorted((out / 'overlays').rglob('*.png'))
  assert len(grids) == 9


def test_read_image_16_bit_high_byte(tmp_path):
  # Regression: converting with Pillow's convert('RGB') clipped 16-bit
  # samples, so 1000 and 40000 both became 255.
  values = np.array([[1000, 40000], [65535, 255]], np.uint16)
  path = tmp_path / 'gray16.png'
  Image.fromarray(values).save(path)
  image = maps_dump.read_image(path, 2)
  expected = values // 256  # 3, 156, 255, 0
  np.testing.assert_array_equal(image, np.repeat(expected[..., None], 3, -1))


def test_read_image_applies_the_exif_orientation(tmp_path):
  # Every pixel distinct, so a crop of the sideways image cannot match.
  stored = (np.arange(2 * 4 * 3).reshape(2, 4, 3) * 10).astype(np.uint8)
  exif = Image.Exif()
  exif[0x0112] = 6  # Rotate 90 degrees clockwise to display.
  path = tmp_path / 'sideways.png'
  Image.fromarray(stored).save(path, exif=exif)
  image = maps_dump.read_image(path, 2)
  # Upright the image is 4 high and 2 wide; the centre crop keeps rows 1, 2.
  upright = np.rot90(stored, k=-1)
  assert upright.shape == (4, 2, 3)
  np.testing.assert_array_equal(image, upright[1:3])
