"""CelebAMask-HQ: attribute file, part-mask merge, preparation and batches.

Fixtures are written in the data set's own layout into temporary folders.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_tiny_config, saved_steps
from PIL import Image

from cganjax import checkpoint, evaluation, train
from cganjax.data import celebamask_hq as hq
from cganjax.data import parts, pipeline, store
from cganjax.errors import InputError
from configs import celebamask_hq as hq_config

NAMES = parts.CELEBA_ATTRIBUTES
SAMPLE_DIR = Path(
  os.environ.get(
    'CGANJAX_CELEBAMASK_HQ_SAMPLE',
    Path(__file__).resolve().parents[2]
    / 'shared'
    / 'data'
    / 'celebamask_hq_sample',
  )
)

# A 4x4 pattern of each part, scaled up to 512x512 in the mask files.
PATTERNS = {
  'skin': np.ones((4, 4), bool),
  'hair': np.array(
    [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]], bool
  ),
  'nose': np.array(
    [[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]], bool
  ),
  'hat': np.array(
    [[1, 1, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]], bool
  ),
}
# Written by hand: hat (14) beats hair (13) beats nose (2) beats skin (1).
EXPECTED_4X4 = np.array(
  [[14, 14, 14, 14], [13, 13, 2, 1], [13, 13, 2, 1], [1, 1, 1, 1]], np.uint8
)


def upscale(pattern: np.ndarray, size: int = hq.MASK_SIZE) -> np.ndarray:
  factor = size // pattern.shape[0]
  return np.kron(pattern, np.ones((factor, factor), pattern.dtype))


def write_mask(path: Path, mask: np.ndarray, rgb: bool) -> None:
  values = mask.astype(np.uint8) * 255
  if rgb:
    values = np.repeat(values[..., None], 3, axis=-1)
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(values).save(path)


def attribute_text(rows, names=NAMES, count=None, separator=' ') -> str:
  """Render an attribute file; each row is (file name, set of true names)."""
  lines = [str(len(rows) if count is None else count), ' '.join(names)]
  for file_name, true_names in rows:
    values = ['1' if name in true_names else '-1' for name in names]
    lines.append(file_name + separator + separator.join(values))
  return '\n'.join(lines) + '\n'


def write_layout(root: Path, faces: dict, image_side: int = 64) -> Path:
  """Write images, part masks and attributes for {id: (colour, parts, attrs)}.

  `parts` maps part names to 4x4 patterns; odd ids get RGB mask files and
  even ids single-channel ones. The files of each face are written in
  reverse part order, so their listing order is not the merge order.
  """
  (root / hq.IMAGE_FOLDER).mkdir(parents=True)
  rows = []
  for image_id, (colour, face_parts, true_names) in faces.items():
    image = np.full((image_side, image_side, 3), colour, np.uint8)
    Image.fromarray(image).save(root / hq.IMAGE_FOLDER / f'{image_id}.jpg')
    for name in reversed(list(face_parts)):
      path = hq.part_mask_path(root / hq.MASK_FOLDER, image_id, name)
      write_mask(path, upscale(face_parts[name]), rgb=image_id % 2 == 1)
    rows.append((f'{image_id}.jpg', true_names))
  (root / hq.ATTRIBUTE_FILE).write_text(attribute_text(rows))
  return root


def nearest_4x4(pattern: np.ndarray, size: int) -> np.ndarray:
  """Resize a 4x4 label map seen as 512x512 by the centre rule, by loops."""
  big = upscale(pattern)
  out = np.zeros((size, size), big.dtype)
  for i in range(size):
    for j in range(size):
      y = int((i + 0.5) * hq.MASK_SIZE / size)
      x = int((j + 0.5) * hq.MASK_SIZE / size)
      out[i, j] = big[y, x]
  return out


def test_attribute_file_odd_spacing(tmp_path):
  names = list(NAMES)
  # Header order differs from CelebA's: columns follow the header.
  names[0], names[-1] = names[-1], names[0]
  text = (
    '2\n'
    + '  '.join(names)
    + '  \n'
    + attribute_text([('7.jpg', {'Smiling', 'Young'})], names)
    .splitlines()[2]
    .replace(' ', '   ')
    + '\n\t12.jpg\t'
    + ' '.join('1' if n == '5_o_Clock_Shadow' else '-1' for n in names)
    + '  \n\n'
  )
  path = tmp_path / 'attributes.txt'
  path.write_text(text)
  ids, values = hq.read_attribute_file(path)
  assert ids == [7, 12]
  assert values.shape == (2, 40)
  assert values.dtype == np.uint8
  smiling, young = NAMES.index('Smiling'), NAMES.index('Young')
  assert values[0, smiling] == 1
  assert values[0, young] == 1
  assert values[0].sum() == 2
  assert values[1, NAMES.index('5_o_Clock_Shadow')] == 1
  assert values[1].sum() == 1


@pytest.mark.parametrize(
  'text, fragment',
  [
    (attribute_text([('1.jpg', set())], count=2), 'gives 2 images but 1'),
    (
      attribute_text([('1.jpg', set())], names=NAMES[:-1]),
      'line 2 has 39 names',
    ),
    (
      attribute_text([('1.jpg', set())]).replace(' -1\n', '\n'),
      'line 3: 40 fields',
    ),
    (attribute_text([('1.jpg', set())]).replace(' -1', ' 0', 1), "'0'"),
    (attribute_text([('one.jpg', set())]), 'not an image name'),
  ],
)
def test_attribute_file_bad(tmp_path, text, fragment):
  path = tmp_path / 'attributes.txt'
  path.write_text(text)
  with pytest.raises(InputError) as caught:
    hq.read_attribute_file(path)
  message = str(caught.value)
  assert fragment in message
  assert str(path) in message
  assert '\n' not in message


def test_merge_scrambled_order():
  masks = {name: PATTERNS[name] for name in ('hat', 'nose', 'skin', 'hair')}
  np.testing.assert_array_equal(hq.merge_part_masks(masks), EXPECTED_4X4)
  reordered = dict(reversed(list(masks.items())))
  np.testing.assert_array_equal(hq.merge_part_masks(reordered), EXPECTED_4X4)


def test_label_map_from_files(tmp_path):
  root = tmp_path / 'masks'
  # Written in scrambled order, in both file forms.
  for name, rgb in (('hat', True), ('skin', False), ('hair', True)):
    write_mask(hq.part_mask_path(root, 3, name), upscale(PATTERNS[name]), rgb)
  write_mask(hq.part_mask_path(root, 3, 'nose'), upscale(PATTERNS['nose']), 0)
  label_map = hq.read_label_map(root, 3)
  assert label_map.shape == (512, 512)
  np.testing.assert_array_equal(label_map, upscale(EXPECTED_4X4))


def test_rgb_and_single_channel_agree(tmp_path):
  mask = upscale(PATTERNS['hair'])
  write_mask(tmp_path / 'grey.png', mask, rgb=False)
  write_mask(tmp_path / 'rgb.png', mask, rgb=True)
  assert Image.open(tmp_path / 'grey.png').mode == 'L'
  assert Image.open(tmp_path / 'rgb.png').mode == 'RGB'
  np.testing.assert_array_equal(hq.read_part_mask(tmp_path / 'grey.png'), mask)
  np.testing.assert_array_equal(hq.read_part_mask(tmp_path / 'rgb.png'), mask)


def test_nearest_resize_hand_case():
  source = np.arange(16, dtype=np.uint8).reshape(4, 4)
  # Output pixel centres at 1.0 and 3.0 in source pixels pick rows/cols 1, 3.
  expected = np.array([[5, 7], [13, 15]], np.uint8)
  np.testing.assert_array_equal(
    store.crop_and_resize_labels(source, 2), expected
  )


def test_nearest_resize_keeps_labels():
  rng = np.random.default_rng(0)
  source = rng.choice([0, 3, 7, 18], size=(512, 512)).astype(np.uint8)
  resized = store.crop_and_resize_labels(source, 37)
  assert resized.shape == (37, 37)
  assert set(np.unique(resized)) <= {0, 3, 7, 18}
  np.testing.assert_array_equal(
    store.crop_and_resize_labels(upscale(EXPECTED_4X4), 8),
    nearest_4x4(EXPECTED_4X4, 8),
  )


def test_mask_folders_by_id():
  root = Path('anno')
  assert hq.part_mask_path(root, 1999, 'skin') == root / '0/01999_skin.png'
  assert hq.part_mask_path(root, 2000, 'skin') == root / '1/02000_skin.png'
  assert hq.part_mask_path(root, 2001, 'hat') == root / '1/02001_hat.png'


FACES = {
  2001: (200, {'skin': PATTERNS['skin'], 'hat': PATTERNS['hat']}, {'Male'}),
  1999: (40, {'skin': PATTERNS['skin'], 'hair': PATTERNS['hair']}, set()),
  2000: (
    120,
    {name: PATTERNS[name] for name in ('nose', 'hat', 'skin', 'hair')},
    {'Smiling', 'Wearing_Hat'},
  ),
}


def merged(face_parts: dict) -> np.ndarray:
  return hq.merge_part_masks(face_parts)


def test_prepare_layout(tmp_path):
  source = write_layout(tmp_path / 'src', FACES)
  folder = hq.prepare(str(source), tmp_path / 'prepared', 8, num_test=1)
  info, arrays = store.open_store(str(folder))
  assert info['counts'] == {'train': 2, 'test': 1}
  # The highest id is held out; train rows are in id order.
  assert info['names'] == {
    'train': ['1999.jpg', '2000.jpg'],
    'test': ['2001.jpg'],
  }
  assert not (tmp_path / 'prepared.partial').exists()
  rows = [('train', 0, 1999), ('train', 1, 2000), ('test', 0, 2001)]
  for split, row, image_id in rows:
    colour, face_parts, true_names = FACES[image_id]
    image = arrays[split]['image'][row]
    assert image.shape == (8, 8, 3)
    assert np.abs(image.astype(int) - colour).max() <= 3
    np.testing.assert_array_equal(
      arrays[split]['parts'][row], nearest_4x4(merged(face_parts), 8)
    )
    expected = [1 if name in true_names else 0 for name in NAMES]
    assert arrays[split]['attributes'][row].tolist() == expected


def test_prepare_missing_folder(tmp_path):
  with pytest.raises(InputError, match='lacks CelebA-HQ-img'):
    hq.prepare(str(tmp_path / 'nowhere'), tmp_path / 'out', 8, num_test=1)
  with pytest.raises(InputError, match='data.dir is empty'):
    hq.prepare('', tmp_path / 'out', 8, num_test=1)


def break_missing_image(source: Path) -> Path:
  path = source / hq.IMAGE_FOLDER / '2000.jpg'
  path.unlink()
  return path


def break_truncated_image(source: Path) -> Path:
  path = source / hq.IMAGE_FOLDER / '2000.jpg'
  rng = np.random.default_rng(1)
  noise = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
  Image.fromarray(noise).save(path, quality=95)
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])
  return path


def break_mask_size(source: Path) -> Path:
  path = hq.part_mask_path(source / hq.MASK_FOLDER, 2000, 'nose')
  write_mask(path, np.ones((256, 256), bool), rgb=False)
  return path


def break_no_masks(source: Path) -> Path:
  folder = source / hq.MASK_FOLDER / '1'
  for path in folder.glob('02000_*.png'):
    path.unlink()
  return folder


@pytest.mark.parametrize(
  'breaker, fragment',
  [
    (break_missing_image, 'listed in the attribute file but missing'),
    (break_truncated_image, 'cannot decode image'),
    (break_mask_size, 'is 256x256, expected 512x512'),
    (break_no_masks, 'has no part mask file'),
  ],
)
def test_bad_example(tmp_path, breaker, fragment):
  source = write_layout(tmp_path / 'src', FACES)
  named = breaker(source)
  out = tmp_path / 'prepared'
  with pytest.raises(InputError) as caught:
    hq.prepare(str(source), out, 8, num_test=1)
  message = str(caught.value)
  assert fragment in message
  assert str(named) in message
  assert 'skip_bad_examples' in message
  assert '\n' not in message
  assert not out.exists()
  assert not (tmp_path / 'prepared.partial').exists()

  folder = hq.prepare(str(source), out, 8, num_test=1, skip_bad_examples=True)
  info, arrays = store.open_store(str(folder))
  assert info['skipped'] == ['2000.jpg']
  assert info['names'] == {'train': ['1999.jpg'], 'test': ['2001.jpg']}
  np.testing.assert_array_equal(
    arrays['train']['parts'][0], nearest_4x4(merged(FACES[1999][1]), 8)
  )


def test_num_test_bounds(tmp_path):
  source = write_layout(tmp_path / 'src', FACES)
  for num_test in (0, 3):
    with pytest.raises(InputError, match=f'data.num_test={num_test}'):
      hq.prepare(str(source), tmp_path / 'out', 8, num_test=num_test)


def fixture_config(tmp_path, faces=FACES, num_test=1):
  source = tmp_path / 'src'
  if not source.exists():
    write_layout(source, faces)
  config = hq_config.get_config()
  config.data.dir = str(source)
  config.data.prepared_dir = str(tmp_path / 'prepared')
  config.data.image_size = 8
  config.data.num_test = num_test
  return config


def test_pipeline_reads_rows(tmp_path):
  config = fixture_config(tmp_path)
  info = pipeline.dataset_info(config)
  assert (info.num_train, info.num_test) == (2, 1)
  assert info.attributes == NAMES
  ids = np.array([1, pipeline.SYNTHETIC_TEST_OFFSET, 0])
  batch = pipeline.load_examples(config, ids)
  assert batch['index'].tolist() == ids.tolist()
  for row, image_id in enumerate((2000, 2001, 1999)):
    np.testing.assert_array_equal(
      batch['parts'][row], nearest_4x4(merged(FACES[image_id][1]), 8)
    )
  with pytest.raises(InputError, match='has 1 test images'):
    pipeline.load_examples(config, pipeline.test_indices(0, 2))
  with pytest.raises(InputError, match='has 2 train images'):
    pipeline.load_examples(config, np.array([2]))


def test_second_run_reads_prepared(tmp_path):
  config = fixture_config(tmp_path)
  pipeline.dataset_info(config)
  # With the source gone, the prepared folder alone serves the data.
  for path in sorted((tmp_path / 'src').rglob('*'), reverse=True):
    path.unlink() if path.is_file() else path.rmdir()
  assert pipeline.dataset_info(config).num_train == 2
  assert pipeline.load_examples(config, np.array([0]))['image'].shape == (
    1,
    8,
    8,
    3,
  )


def many_faces(count: int) -> dict:
  return {
    i: (i * 9 % 256, {'skin': PATTERNS['skin']}, set()) for i in range(count)
  }


def test_process_shards_cover_epoch(tmp_path):
  config = fixture_config(tmp_path, many_faces(13), num_test=1)
  config.train.batch_size = 4
  num_train = pipeline.dataset_info(config).num_train
  assert num_train == 12
  streams = [
    pipeline.train_batches(config, 0, process_index=p, process_count=2)
    for p in range(2)
  ]
  seen = []
  for _ in range(3):  # 3 steps of 4 = one epoch of 12.
    local = [next(stream)['index'] for stream in streams]
    assert len(local[0]) == len(local[1]) == 2
    assert not set(local[0]) & set(local[1])
    seen.extend(np.concatenate(local).tolist())
  assert sorted(seen) == list(range(12))


def test_resume_continues_stream(tmp_path):
  config = fixture_config(tmp_path, many_faces(13), num_test=1)
  config.train.batch_size = 4
  fresh = pipeline.train_batches(config, 0)
  batches = [next(fresh) for _ in range(5)]
  resumed = pipeline.train_batches(config, 3)
  for expected in batches[3:]:
    batch = next(resumed)
    np.testing.assert_array_equal(batch['index'], expected['index'])
    np.testing.assert_array_equal(batch['image'], expected['image'])


@pytest.mark.skipif(
  not SAMPLE_DIR.is_dir(),
  reason=f'no CelebAMask-HQ sample at {SAMPLE_DIR}; set '
  'CGANJAX_CELEBAMASK_HQ_SAMPLE to its folder',
)
def test_sample_image_0_parts():
  mask_root = SAMPLE_DIR / hq.MASK_FOLDER
  present = {
    path.name[len('00000_') : -len('.png')]
    for path in (mask_root / '0').glob('00000_*.png')
  }
  assert present
  label_map = hq.read_label_map(mask_root, 0)
  labels = set(np.unique(label_map).tolist()) - {0}
  assert labels == {parts.part_label(name) for name in present}
  _, values = hq.read_attribute_file(SAMPLE_DIR / hq.ATTRIBUTE_FILE)
  assert set(np.unique(values).tolist()) <= {0, 1}


@pytest.mark.slow  # About a minute, most of it compiling the step.
def test_training_runs_on_fixture(tmp_path):
  config = fixture_config(tmp_path)
  tiny = make_tiny_config()
  config.model = tiny.model
  config.train = tiny.train
  config.sample = tiny.sample
  config.data.image_size = 32
  config.train.steps = 2
  config.sample.num_images = 2
  with pytest.raises(InputError, match='lower sample.num_images'):
    train.train_and_evaluate(config, tmp_path / 'refused')
  config.sample.num_images = 1
  state = train.train_and_evaluate(config, tmp_path / 'run')
  assert int(state.step) == 2
  assert saved_steps(tmp_path / 'run') == [2]
  assert (tmp_path / 'run' / 'samples' / 'step_0000002.png').is_file()
  prepared = list((tmp_path / 'prepared').iterdir())
  assert [path.name.split('_32px_')[0] for path in prepared] == [
    'celebamask_hq_test1'
  ]


def run_prepare(*flags):
  return subprocess.run(
    [sys.executable, '-m', 'cganjax.prepare', *flags],
    capture_output=True,
    text=True,
    cwd=Path(__file__).resolve().parents[1],
    timeout=300,
  )


def test_prepare_command(tmp_path):
  source = write_layout(tmp_path / 'src', FACES)
  flags = [
    '--config=configs/celebamask_hq.py',
    f'--config.data.dir={source}',
    f'--config.data.prepared_dir={tmp_path / "prepared"}',
    '--config.data.num_test=1',
    '--config.data.image_size=32',
  ]
  result = run_prepare(*flags)
  assert result.returncode == 0, result.stderr
  folder = Path(result.stdout.strip())
  assert folder.parent == tmp_path / 'prepared'
  info, _ = store.open_store(str(folder))
  assert info['counts'] == {'train': 2, 'test': 1}

  result = run_prepare(*flags[:1], f'--config.data.dir={tmp_path / "none"}')
  assert result.returncode == 2
  assert result.stdout == ''
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('prepare.py: error: data.dir=')
  assert 'lacks CelebA-HQ-img' in last


def test_evaluator_rejects_too_few_held_out_images(tmp_path):
  config = fixture_config(tmp_path)  # 1 held-out face.
  with pytest.raises(InputError, match='too few held-out images.* has 1 and'):
    evaluation.check_evaluable(config)
  # With as many held-out images as requested, the reason is the data set.
  with pytest.raises(InputError, match='synthetic set only'):
    evaluation.check_evaluable(config, num_images=1)


def test_evaluate_rejects_small_held_out_set(tmp_path):
  config = fixture_config(tmp_path)
  workdir = tmp_path / 'run'
  workdir.mkdir()
  # The evaluator checks the recorded config before it restores anything.
  (workdir / checkpoint.RECORD_NAME).write_text(
    json.dumps({'config': config.to_dict(), 'attributes': list(NAMES)})
  )
  result = subprocess.run(
    [sys.executable, '-m', 'cganjax.evaluate', f'--workdir={workdir}'],
    capture_output=True,
    text=True,
    cwd=Path(__file__).resolve().parents[1],
    timeout=300,
  )
  assert result.returncode == 2
  errors = [line for line in result.stderr.splitlines() if 'error:' in line]
  assert len(errors) == 1
  assert 'too few held-out images' in errors[0]
  assert not (workdir / 'eval').exists()
