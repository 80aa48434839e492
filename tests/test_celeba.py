"""CelebA: manual files, landmark label maps, tfds preparation, lazy TF."""

import io
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cganjax import masks
from cganjax.data import celeba, parts, pipeline, store
from cganjax.errors import InputError
from configs import celeba as celeba_config

LANDMARK_HEADER = (
  'lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x '
  'leftmouth_y rightmouth_x rightmouth_y'
)
# Typical aligned CelebA landmarks in the 178x218 image.
LANDMARKS = (69, 109, 106, 111, 87, 135, 71, 152, 104, 152)


def write_manual_folder(root: Path, files: dict) -> Path:
  """Write a CelebA manual folder for {file name: (partition, attrs)}.

  Image k is a solid grey of value 40 * k.
  """
  root.mkdir(parents=True, exist_ok=True)
  with zipfile.ZipFile(root / 'img_align_celeba.zip', 'w') as archive:
    for k, name in enumerate(files):
      buffer = io.BytesIO()
      image = np.full((218, 178, 3), 40 * k, np.uint8)
      Image.fromarray(image).save(buffer, 'JPEG', quality=95)
      archive.writestr(f'img_align_celeba/{name}', buffer.getvalue())
  partition = ''.join(f'{name} {p}\n' for name, (p, _) in files.items())
  (root / 'list_eval_partition.txt').write_text(partition)
  lines = [str(len(files)), ' '.join(parts.CELEBA_ATTRIBUTES)]
  for name, (_, true_names) in files.items():
    values = [
      '1' if attribute in true_names else '-1'
      for attribute in parts.CELEBA_ATTRIBUTES
    ]
    lines.append(name + '  ' + ' '.join(values))
  (root / 'list_attr_celeba.txt').write_text('\n'.join(lines) + '\n')
  landmarks = [str(len(files)), LANDMARK_HEADER]
  landmarks += [f'{name} ' + ' '.join(map(str, LANDMARKS)) for name in files]
  (root / 'list_landmarks_align_celeba.txt').write_text(
    '\n'.join(landmarks) + '\n'
  )
  identity = ''.join(f'{name} {k + 1}\n' for k, name in enumerate(files))
  (root / 'identity_CelebA.txt').write_text(identity)
  return root


def test_missing_files_message(tmp_path):
  (tmp_path / 'list_attr_celeba.txt').write_text('')
  with pytest.raises(InputError) as caught:
    celeba.check_manual_files(str(tmp_path))
  message = str(caught.value)
  assert '\n' not in message
  assert str(tmp_path) in message
  assert 'missing img_align_celeba.zip, list_eval_partition.txt' in message
  assert 'missing list_attr_celeba.txt' not in message.split(';')[0]
  assert '--config.data.dir' in message


def test_config_stops_without_files(tmp_path):
  config = celeba_config.get_config()
  config.data.dir = str(tmp_path / 'celeba')
  config.data.prepared_dir = str(tmp_path / 'prepared')
  with pytest.raises(InputError) as caught:
    pipeline.dataset_info(config)
  message = str(caught.value)
  assert str(tmp_path / 'celeba') in message
  for name in celeba.MANUAL_FILES.values():
    assert name in message
  assert not (tmp_path / 'prepared').exists()


def test_transform_landmarks_hand_case():
  # 178x218: the centred square starts at row 20; 178 -> 89 halves.
  points = celeba.transform_landmarks([[69, 109], [0, 20]], 178, 218, 89)
  np.testing.assert_allclose(points, [[34.5, 44.5], [0.0, 0.0]])


def inside_disc_count(size, centre, radius) -> int:
  count = 0
  for i in range(size):
    for j in range(size):
      dx, dy = j + 0.5 - centre[0], i + 0.5 - centre[1]
      count += dx * dx + dy * dy <= radius * radius
  return count


def test_landmark_label_map_parts():
  size = 64
  points = np.array(
    [[20.5, 24.5], [44.5, 24.5], [32.5, 34.5], [22.5, 46.5], [42.5, 46.5]]
  )
  label_map = celeba.landmark_label_map(points, size)
  assert label_map.dtype == np.uint8
  label = parts.part_label
  assert label_map[24, 20] == label('l_eye')
  assert label_map[24, 44] == label('r_eye')
  assert label_map[34, 32] == label('nose')
  assert label_map[46, 32] == label('mouth')
  assert label_map[46, 22] == label('mouth')  # A mouth corner.
  assert label_map[0, 0] == 0
  assert set(np.unique(label_map).tolist()) == {0, 2, 4, 5, 10}
  # Eyes are level and the face symmetric about x = 32.5, so column j
  # mirrors column 64 - j with the two eyes swapped.
  mirrored = label_map[:, 1:][:, ::-1]
  swapped = mirrored.copy()
  swapped[mirrored == label('l_eye')] = label('r_eye')
  swapped[mirrored == label('r_eye')] = label('l_eye')
  np.testing.assert_array_equal(swapped, label_map[:, 1:])
  # The nose is a disc of 0.22 eye distances (24 px), nothing overlapping it.
  radius = 0.22 * 24
  assert np.sum(label_map == label('nose')) == inside_disc_count(
    size, (32.5, 34.5), radius
  )


def test_celeba_region_table():
  table = parts.dataset_regions('celeba')
  names = ['Smiling', 'Black_Hair', 'Wearing_Hat', 'Eyeglasses', 'Big_Nose']
  regions = masks.RegionTable(names, table)
  assert regions.has_region.tolist() == [True, False, False, False, True]
  full = masks.RegionTable(names, parts.dataset_regions('celebamask_hq'))
  assert full.has_region.tolist() == [True] * 5
  label_map = celeba.landmark_label_map(
    np.array([[20, 24], [44, 24], [32, 34], [22, 46], [42, 46]]), 64
  )
  computed = np.asarray(regions.regions(label_map[None]))[0]
  np.testing.assert_array_equal(computed[0], label_map == 10)
  np.testing.assert_array_equal(computed[4], label_map == 2)
  assert not computed[1:4].any()


FILES = {
  '000001.jpg': (0, {'Smiling'}),
  '000002.jpg': (0, {'Male', 'Young'}),
  '000003.jpg': (1, set()),
  '000004.jpg': (2, {'Eyeglasses'}),
}


def test_prepare_from_manual_folder(tmp_path):
  source = write_manual_folder(tmp_path / 'celeba', FILES)
  config = celeba_config.get_config()
  config.data.dir = str(source)
  config.data.prepared_dir = str(tmp_path / 'prepared')
  config.data.image_size = 16
  info = pipeline.dataset_info(config)
  assert (info.num_train, info.num_test) == (2, 1)
  assert (tmp_path / 'prepared' / 'tfds' / 'celeb_a').is_dir()
  batch = pipeline.load_examples(
    config, np.array([0, 1, pipeline.SYNTHETIC_TEST_OFFSET])
  )
  # tfds yields a split in file-name order; 000004 is the only test file.
  for row, (name, grey) in enumerate(
    (('000001.jpg', 0), ('000002.jpg', 40), ('000004.jpg', 120))
  ):
    assert np.abs(batch['image'][row].astype(int) - grey).max() <= 3
    true_names = FILES[name][1]
    expected = [int(a in true_names) for a in parts.CELEBA_ATTRIBUTES]
    assert batch['attributes'][row].tolist() == expected
  points = celeba.transform_landmarks(
    np.reshape(LANDMARKS, (5, 2)), 178, 218, 16
  )
  np.testing.assert_array_equal(
    batch['parts'][0], celeba.landmark_label_map(points, 16)
  )
  nose_x, nose_y = points[2]
  assert batch['parts'][0][int(nose_y), int(nose_x)] == 2


def test_prepare_listed_image_missing(tmp_path):
  source = write_manual_folder(tmp_path / 'celeba', FILES)
  with open(source / 'list_eval_partition.txt', 'a') as file:
    file.write('000009.jpg 0\n')
  folder = tmp_path / 'prepared' / 'celeba'
  with pytest.raises(InputError) as caught:
    celeba.prepare(str(source), str(tmp_path / 'prepared'), folder, 16)
  message = str(caught.value)
  assert '000009.jpg' in message
  assert str(source) in message
  assert '\n' not in message
  assert not folder.exists()


def test_prepare_with_mock_data(tmp_path):
  tfds = pytest.importorskip('tensorflow_datasets')
  source = tmp_path / 'celeba'
  source.mkdir()
  for name in celeba.MANUAL_FILES.values():
    (source / name).write_bytes(b'')  # Only their presence is checked.
  folder = tmp_path / 'prepared' / 'celeba'
  with tfds.testing.mock_data(num_examples=3):
    celeba.prepare(str(source), str(tmp_path / 'prepared'), folder, 16)
    builder = celeba.builder_class()(data_dir=str(tmp_path / 'tfds'))
    examples = list(tfds.as_numpy(builder.as_dataset(split='test')))
  info, arrays = store.open_store(str(folder))
  assert info['counts'] == {'train': 3, 'test': 3}
  assert arrays['train']['image'].shape == (3, 16, 16, 3)
  for row, example in enumerate(examples):
    image, label_map, attributes = celeba.example_arrays(example, 16)
    np.testing.assert_array_equal(arrays['test']['image'][row], image)
    np.testing.assert_array_equal(arrays['test']['parts'][row], label_map)
    expected = [
      int(example['attributes'][name]) for name in parts.CELEBA_ATTRIBUTES
    ]
    assert arrays['test']['attributes'][row].tolist() == expected
  assert set(np.unique(arrays['train']['parts']).tolist()) <= {0, 2, 4, 5, 10}


@pytest.mark.parametrize(
  'modules',
  [
    # Each command-line module defines its own flags, so each gets a fresh
    # interpreter.
    [
      'cganjax.main',
      'cganjax.train',
      'cganjax.step',
      'cganjax.maps',
      'cganjax.maps_dump',
      'cganjax.evaluation',
      'cganjax.data.pipeline',
      'cganjax.data.celeba',
      'cganjax.data.celebamask_hq',
    ],
    ['cganjax.explain'],
    ['cganjax.prepare'],
  ],
)
def test_no_tensorflow_without_data(modules):
  code = (
    'import importlib, sys\n'
    f'for name in {modules!r}:\n'
    '  importlib.import_module(name)\n'
    "loaded = [m for m in ('tensorflow', 'tensorflow_datasets') "
    'if m in sys.modules]\n'
    'print(loaded)\n'
  )
  result = subprocess.run(
    [sys.executable, '-c', code],
    capture_output=True,
    text=True,
    cwd=Path(__file__).resolve().parents[1],
    timeout=300,
  )
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == '[]'
