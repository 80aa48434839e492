"""Map metrics, faithfulness, the randomised-D check and the analyze CLI.

The metric tests use a 10x10 label map whose Smiling region is exactly the
mouth and the upper lip (12 pixels). At this size the skin band around the
mouth has a radius of 0.6 pixels, so it adds no pixel. Every right value
is worked out by hand from that layout.
"""

import csv
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import random_params
from conftest import make_tiny_config, run_module

from cganjax import (
  analysis,
  losses,
  maps_dump,
  maps_folder,
  restore,
)
from cganjax.data import parts
from cganjax.errors import InputError

REPO_ROOT = Path(__file__).resolve().parent.parent
SKIN = parts.part_label('skin')
NOSE = parts.part_label('nose')
MOUTH = parts.part_label('mouth')
UPPER_LIP = parts.part_label('u_lip')
NOSE_PIXEL = (3, 4)
MOUTH_PIXEL = (6, 3)


def face_labels() -> np.ndarray:
  """Background, skin rows/cols 1..8, nose 3..4 x 4..5, upper lip row 5 x
  3..6, mouth rows 6..7 x 3..6."""
  labels = np.zeros((10, 10), np.uint8)
  labels[1:9, 1:9] = SKIN
  labels[3:5, 4:6] = NOSE
  labels[5, 3:7] = UPPER_LIP
  labels[6:8, 3:7] = MOUTH
  return labels


def uniform_in_mouth() -> np.ndarray:
  return (face_labels() == MOUTH).astype(np.float32)


def peaked_outside() -> np.ndarray:
  """1 on one nose pixel and 0.5 on the 8 mouth pixels: mass 5."""
  values = 0.5 * uniform_in_mouth()
  values[NOSE_PIXEL] = 1.0
  return values


@pytest.fixture
def smiling_region():
  return parts.attribute_mask(face_labels(), 'Smiling')


def test_smiling_region_is_mouth_and_lip(smiling_region):
  labels = face_labels()
  expected = (labels == MOUTH) | (labels == UPPER_LIP)
  np.testing.assert_array_equal(smiling_region, expected)
  assert smiling_region.sum() == 12


def test_metrics_uniform_in_mouth(smiling_region):
  values = uniform_in_mouth()
  energy = analysis.part_energy(values, face_labels())
  assert energy.shape == (parts.NUM_CLASSES,)
  assert energy[MOUTH] == pytest.approx(1.0)
  assert energy.sum() == pytest.approx(1.0)
  assert analysis.region_energy(values, smiling_region) == pytest.approx(1.0)
  assert analysis.pointing_game(values, smiling_region) == 1.0
  # 8 selected pixels, all inside the 12-pixel region.
  assert analysis.iou(values, smiling_region, 0.5) == pytest.approx(8 / 12)
  assert analysis.mean_iou(values, smiling_region) == pytest.approx(8 / 12)
  assert analysis.spatial_entropy(values) == pytest.approx(math.log(8))


def test_metrics_peaked_outside(smiling_region):
  values = peaked_outside()
  energy = analysis.part_energy(values, face_labels())
  assert energy[NOSE] == pytest.approx(0.2)
  assert energy[MOUTH] == pytest.approx(0.8)
  assert analysis.region_energy(values, smiling_region) == pytest.approx(0.8)
  assert analysis.pointing_game(values, smiling_region) == 0.0
  # At 0.5 the nose pixel and the 8 mouth pixels are selected: 8 / 13.
  assert analysis.iou(values, smiling_region, 0.5) == pytest.approx(8 / 13)
  # Above 0.5 only the nose pixel is selected.
  assert analysis.iou(values, smiling_region, 0.55) == 0.0
  # 10 of the 19 grid thresholds (0.05 to 0.5) give 8 / 13.
  expected_mean = 10 * (8 / 13) / 19
  assert analysis.mean_iou(values, smiling_region) == pytest.approx(
    expected_mean
  )
  expected_entropy = 0.2 * math.log(5) + 0.8 * math.log(10)
  assert analysis.spatial_entropy(values) == pytest.approx(expected_entropy)


def test_metrics_all_zero(smiling_region):
  values = np.zeros((10, 10), np.float32)
  assert np.isnan(analysis.part_energy(values, face_labels())).all()
  assert np.isnan(analysis.region_energy(values, smiling_region))
  assert analysis.pointing_game(values, smiling_region) == 0.0
  assert analysis.iou(values, smiling_region, 0.5) == 0.0
  assert analysis.mean_iou(values, smiling_region) == 0.0
  assert analysis.spatial_entropy(values) == 0.0


def test_metrics_uniform_map_is_chance(smiling_region):
  values = np.ones((10, 10), np.float32)
  energy = analysis.part_energy(values, face_labels())
  assert energy[0] == pytest.approx(0.36)
  assert energy[SKIN] == pytest.approx(0.48)
  assert energy[NOSE] == pytest.approx(0.04)
  assert energy[UPPER_LIP] == pytest.approx(0.04)
  assert energy[MOUTH] == pytest.approx(0.08)
  assert analysis.region_energy(values, smiling_region) == pytest.approx(0.12)
  # All 100 pixels tie at the maximum and 12 are inside.
  assert analysis.pointing_game(values, smiling_region) == pytest.approx(0.12)
  assert analysis.iou(values, smiling_region, 0.5) == pytest.approx(0.12)
  assert analysis.spatial_entropy(values) == pytest.approx(math.log(100))


def test_pointing_game_splits_ties(smiling_region):
  values = np.zeros((10, 10), np.float32)
  values[NOSE_PIXEL] = 1.0
  values[MOUTH_PIXEL] = 1.0
  assert analysis.pointing_game(values, smiling_region) == 0.5


def test_region_metrics_nan_without_region():
  labels = face_labels()
  labels[labels == MOUTH] = SKIN
  labels[labels == UPPER_LIP] = SKIN
  region = parts.attribute_mask(labels, 'Smiling')
  assert not region.any()
  values = uniform_in_mouth()
  assert np.isnan(analysis.region_energy(values, region))
  assert np.isnan(analysis.pointing_game(values, region))
  assert np.isnan(analysis.iou(values, region, 0.5))


def test_metrics_batch_over_stacks(smiling_region):
  stack = np.stack([uniform_in_mouth(), peaked_outside()])
  energy = analysis.region_energy(stack, smiling_region)
  np.testing.assert_allclose(energy, [1.0, 0.8])
  by_part = analysis.part_energy(stack[None], face_labels()[None, None])
  assert by_part.shape == (1, 2, parts.NUM_CLASSES)
  np.testing.assert_allclose(by_part[0, 1, [NOSE, MOUTH]], [0.2, 0.8])


def test_part_energy_rejects_bad_labels():
  with pytest.raises(ValueError, match='label values'):
    analysis.part_energy(np.ones((2, 2)), np.full((2, 2), parts.NUM_CLASSES))


def test_spatial_entropy_matches_losses():
  rng = np.random.default_rng(3)
  maps = rng.random((5, 7, 9)).astype(np.float32)
  maps[maps < 0.4] = 0.0
  maps[1] = 0.0
  maps[2, 3, 4] = -1.0
  expected = np.asarray(losses.spatial_entropy(jnp.asarray(maps)))
  np.testing.assert_allclose(
    analysis.spatial_entropy(maps), expected, rtol=1e-5, atol=1e-6
  )


def test_rank_average_hand_case():
  np.testing.assert_array_equal(
    analysis.rank_average([10, 20, 20, 5]), [2, 3.5, 3.5, 1]
  )
  np.testing.assert_array_equal(
    analysis.rank_average([7, 7, 7]), [2.0, 2.0, 2.0]
  )


def test_spearman_hand_cases():
  assert analysis.spearman([1, 2, 3, 4], [10, 20, 30, 45]) == pytest.approx(1)
  assert analysis.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1)
  # Ranks of the second are 1, 2, 3.5, 5, 3.5; their deviations from 3
  # give sum dx dy = 8, sum dx^2 = 10 and sum dy^2 = 9.5.
  value = analysis.spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7])
  assert value == pytest.approx(8 / math.sqrt(95))
  assert math.isnan(analysis.spearman([1, 2, 3], [5, 5, 5]))


def test_spearman_matches_scipy():
  stats = pytest.importorskip('scipy.stats')
  rng = np.random.default_rng(0)
  first = np.round(rng.random(200), 1)
  second = np.round(first + rng.random(200), 1)
  expected = stats.spearmanr(first, second).statistic
  assert analysis.spearman(first, second) == pytest.approx(expected)


# Faithfulness with a known score -------------------------------------------

# A D whose logit is the mean of channel 0 over four known pixels.
KNOWN_PIXELS = np.array([9, 10, 17, 18])  # Flat indices in an 8x8 image.
BRIGHT = 200.0


def known_image() -> np.ndarray:
  image = np.zeros((8, 8, 3), np.uint8)
  image.reshape(64, 3)[KNOWN_PIXELS, 0] = BRIGHT
  return image


def known_score(images: np.ndarray) -> np.ndarray:
  flat = np.asarray(images, np.float64).reshape(len(images), 64, 3)
  return flat[:, KNOWN_PIXELS, 0].mean(axis=1, keepdims=True)


# The mean of channel 0 is 4 * 200 / 64, so a deleted known pixel drops
# from 200 to 12.5 and the logit falls by 187.5 / 4 per deleted pixel.
FILL = 4 * BRIGHT / 64
FULL_DROP = BRIGHT - FILL


def test_delete_pixels_uses_mean_colour():
  image = np.arange(4 * 3, dtype=np.uint8).reshape(2, 2, 3)
  deleted = analysis.delete_pixels(image, [3, 0, 1, 2], 2)
  mean = image.reshape(4, 3).mean(axis=0)
  np.testing.assert_allclose(deleted[1, 1], mean)
  np.testing.assert_allclose(deleted[0, 0], mean)
  np.testing.assert_array_equal(deleted[0, 1], image[0, 1])
  np.testing.assert_array_equal(deleted[1, 0], image[1, 0])


def test_faithfulness_known_pixels():
  image = known_image()[None]
  on_known = np.zeros((1, 8, 8), np.float32)
  on_known.reshape(1, 64)[0, KNOWN_PIXELS] = 1.0
  # 4/64 deletes exactly the four known pixels; 2/64 deletes two of them.
  fractions = (4 / 64, 2 / 64)
  result = analysis.faithfulness(
    image, on_known, known_score, fractions=fractions, draws=5, seed=11
  )
  np.testing.assert_allclose(result.map_drop, [[FULL_DROP, FULL_DROP / 2]])

  # The random drop counts the known pixels among each draw's first k.
  expected = []
  for count in (4, 2):
    drops = []
    for draw in range(5):
      order = analysis.random_deletion_order(64, 0, draw, 11)
      hits = len(set(order[:count]) & set(KNOWN_PIXELS))
      drops.append(hits / 4 * FULL_DROP)
    expected.append(np.mean(drops))
  np.testing.assert_allclose(result.random_drop, [expected])
  np.testing.assert_allclose(result.score, result.map_drop - [expected])
  assert result.score[0, 0] > 0


def test_faithfulness_map_peaked_elsewhere():
  image = known_image()[None]
  elsewhere = np.zeros((1, 8, 8), np.float32)
  elsewhere[0, 6:, 6:] = 1.0
  result = analysis.faithfulness(
    image, elsewhere, known_score, fractions=(4 / 64,), draws=3, seed=0
  )
  np.testing.assert_allclose(result.map_drop, [[0.0]])
  assert result.score[0, 0] <= 0


def test_random_drop_mean_matches_expectation():
  image = known_image()[None]
  drops = analysis.random_deletion_drops(
    image, known_score, (8 / 64,), draws=400, seed=5
  )
  # Each known pixel is among 8 random pixels with probability 8 / 64.
  expected = 8 / 64 * FULL_DROP
  assert drops.shape == (1, 1, 400, 1)
  assert drops.mean() == pytest.approx(expected, rel=0.1)


def test_deletion_order_breaks_ties_by_seed():
  saliency = np.array([0.0, 1.0, 0.0, 1.0, 0.5, 0.0])
  order = analysis.deletion_order(saliency, row=0, seed=1)
  assert set(order[:2]) == {1, 3}
  assert order[2] == 4
  assert set(order[3:]) == {0, 2, 5}
  again = analysis.deletion_order(saliency, row=0, seed=1)
  np.testing.assert_array_equal(order, again)


# A hand-built maps folder ---------------------------------------------------


def write_hand_folder(path: Path, with_parts: bool = True) -> Path:
  """A folder of 3 images with one layer and the target real/Smiling: the
  maps are uniform in the mouth, peaked outside it, and all zero."""
  labels = np.stack([face_labels()] * 3)
  maps = np.stack([uniform_in_mouth(), peaked_outside(), np.zeros((10, 10))])
  specs = maps_folder.array_specs(
    num_images=3,
    image_shape=(10, 10),
    layers={'D/block1': 1},
    dtype='float32',
    has_parts=with_parts,
    num_views=0,
  )
  target = {
    'name': 'real/Smiling',
    'kind': 'attribute',
    'view': 'real',
    'index': 0,
    'attribute': 'Smiling',
  }
  index = {
    'method': 'grad_cam',
    'checkpoint_step': 0,
    'attributes': ['Smiling'],
    'image_ids': ['a', 'b', 'c'],
    'targets': [target],
    'views': [],
    'layers': [
      {
        'name': 'D/block1',
        'file': 'D_block1.npy',
        'scale_file': 'D_block1.scale.npy',
        'targets': ['real/Smiling'],
      }
    ],
  }
  writer = maps_folder.MapsWriter.create(path, index, specs)
  rows = {
    'images': np.full((3, 10, 10, 3), 128, np.uint8),
    'D_block1': maps[:, None].astype(np.float32),
    'D_block1.scale': np.ones((3, 1), np.float32),
  }
  if with_parts:
    rows['parts'] = labels
  writer.write_rows(0, rows)
  writer.close()
  return path


def test_analyse_folder_rows(tmp_path):
  folder = maps_folder.load(write_hand_folder(tmp_path / 'maps'))
  options = analysis.Options()
  rows = analysis.analyse_folder(folder, options=options)
  assert [row['image_id'] for row in rows] == ['a', 'b', 'c']
  uniform, peaked, zero = rows
  assert uniform['region_energy'] == pytest.approx(1.0)
  assert peaked['region_energy'] == pytest.approx(0.8)
  assert math.isnan(zero['region_energy'])
  assert [r['pointing_game'] for r in rows] == [1.0, 0.0, 0.0]
  assert peaked['energy_nose'] == pytest.approx(0.2)
  assert uniform['entropy'] == pytest.approx(math.log(8))
  assert uniform['entropy_normalised'] == pytest.approx(
    math.log(8) / math.log(100)
  )
  assert math.isnan(zero['entropy'])
  assert [bool(r['zero_map']) for r in rows] == [False, False, True]
  assert uniform['region_area'] == pytest.approx(0.12)
  assert uniform['area_skin'] == pytest.approx(0.48)
  # Without a run there is no faithfulness or randomised check.
  assert math.isnan(uniform['faithfulness_10pct'])
  assert math.isnan(uniform['randomised_spearman'])
  assert set(uniform) == set(analysis.row_fields(options))

  (summary,) = analysis.summarise(rows, analysis.row_fields(options))
  assert summary['maps_count'] == 3
  assert summary['zero_maps'] == 1
  assert summary['chance'] == pytest.approx(0.12)
  # The zero map has no energy, so the mean is over the other two.
  assert summary['region_energy'] == pytest.approx(0.9)
  assert summary['pointing_game'] == pytest.approx(1 / 3)
  assert summary['iou'] == pytest.approx((8 / 12 + 8 / 13 + 0) / 3)


def test_analyse_folder_in_chunks_matches(tmp_path):
  folder = maps_folder.load(write_hand_folder(tmp_path / 'maps'))
  whole = analysis.analyse_folder(folder)
  chunked = analysis.analyse_folder(
    folder, options=analysis.Options(batch_size=2)
  )
  for first, second in zip(whole, chunked, strict=True):
    for key, value in first.items():
      if isinstance(value, float) and math.isnan(value):
        assert math.isnan(second[key]), key
      else:
        assert second[key] == value, key


# A tiny run -----------------------------------------------------------------


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  """A work directory with a run record and a random step-0 checkpoint."""
  path = tmp_path_factory.mktemp('run')
  random_params.write_random_run(path, make_tiny_config())
  return path


@pytest.fixture(scope='module')
def tiny_maps(workdir, tmp_path_factory):
  out = tmp_path_factory.mktemp('dumps') / 'tiny_maps'
  return maps_dump.dump_maps(
    workdir,
    out,
    groups=('attributes', 'realness'),
    attributes=['Smiling', 'Bangs'],
    num_images=4,
    batch_size=8,
    dtype='float32',
    overlay_images=0,
  )


def test_scorer_matches_discriminator(workdir, tiny_maps):
  run = restore.restore_run(workdir)
  folder = maps_folder.load(tiny_maps)
  scorer = analysis.DiscriminatorScorer(
    run.networks.discriminator, run.state.d_params, batch_size=3
  )
  images = np.asarray(folder.images, np.float32)
  realness, logits = run.networks.discriminator.apply(
    {'params': run.state.d_params}, images / 127.5 - 1.0
  )
  expected = np.concatenate([np.asarray(realness)[:, None], logits], axis=1)
  np.testing.assert_allclose(scorer(images), expected, rtol=1e-5, atol=1e-5)


def test_real_image_maps_reproduce_saved(workdir, tiny_maps):
  run = restore.restore_run(workdir)
  folder = maps_folder.load(tiny_maps)
  checks = analysis.prepare_checks(run, folder, seed=0, batch_size=8)
  images = np.asarray(folder.images)
  trained = checks.real_maps(checks.trained_params, images, range(4))
  randomised = checks.real_maps(checks.randomised_params, images, range(4))
  assert checks.real_maps.target_names == [
    'real/Smiling',
    'real/Bangs',
    'real/realness',
  ]
  differs = False
  for layer in folder.layers:
    saved = np.asarray(folder.maps(layer))
    np.testing.assert_allclose(trained[layer], saved, atol=1e-6)
    differs |= not np.allclose(randomised[layer], saved, atol=1e-3)
  assert differs
  trained_leaves = jax.tree.leaves(checks.trained_params)
  randomised_leaves = jax.tree.leaves(checks.randomised_params)
  assert [x.shape for x in trained_leaves] == [
    x.shape for x in randomised_leaves
  ]


def test_analyse_folder_with_checks(workdir, tiny_maps):
  run = restore.restore_run(workdir)
  folder = maps_folder.load(tiny_maps)
  options = analysis.Options(random_draws=2, batch_size=8)
  checks = analysis.prepare_checks(run, folder, seed=0, batch_size=8)
  # Compare the randomised-D check with trained maps in place of the
  # randomised ones: every map that is not constant correlates exactly.
  checks.randomised_params = checks.trained_params
  rows = analysis.analyse_folder(folder, checks=checks, options=options)
  assert len(rows) == 4 * 3 * len(folder.layers)
  for row in rows:
    assert np.isfinite(row['faithfulness_10pct']), row
    assert np.isfinite(row['score']), row
    rho = row['randomised_spearman']
    assert math.isnan(rho) or rho == pytest.approx(1.0), row
  assert any(not math.isnan(r['randomised_spearman']) for r in rows)


def test_prepare_checks_rejects_other_run(workdir, tiny_maps, tmp_path):
  run = restore.restore_run(workdir)
  copy = tmp_path / 'maps'
  shutil.copytree(tiny_maps, copy)
  index = json.loads((copy / 'index.json').read_text())
  index['attributes'] = ['Smiling']
  (copy / 'index.json').write_text(json.dumps(index))
  with pytest.raises(InputError, match='pass the --workdir of the run'):
    analysis.prepare_checks(run, maps_folder.load(copy), 0, 8)


# The command line -----------------------------------------------------------


def run_cli(*args, timeout=300) -> subprocess.CompletedProcess:
  return run_module('cganjax.analyze', *args, timeout=timeout)


def error_line(result: subprocess.CompletedProcess) -> str:
  assert 'Traceback' not in result.stderr, result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr
  assert lines[0].startswith('analyze.py: error: '), lines[0]
  return lines[0]


def read_csv(path: Path) -> list[dict]:
  with open(path, newline='') as file:
    return list(csv.DictReader(file))


def test_cli_end_to_end(workdir, tiny_maps, tmp_path):
  out = tmp_path / 'analysis'
  result = run_cli(
    f'--maps={tiny_maps}',
    f'--out={out}',
    f'--workdir={workdir}',
    '--random_draws=2',
    '--overlay_images=2',
  )
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == str(out)
  assert not list(tmp_path.glob('.analysis.*'))

  folder = maps_folder.load(tiny_maps)
  rows = read_csv(out / 'maps.csv')
  assert len(rows) == 4 * 3 * len(folder.layers)
  # Recompute one map's region energy from the folder's arrays.
  row = next(
    r
    for r in rows
    if r['layer'] == 'D/block2'
    and r['target'] == 'real/Smiling'
    and r['image'] == '1'
  )
  values = np.asarray(folder.map('D/block2', 'real/Smiling')[1], np.float64)
  region = parts.attribute_mask(folder.parts[1], 'Smiling')
  if values.sum() > 0:
    expected = values[region].sum() / values.sum()
    assert float(row['region_energy']) == pytest.approx(expected, rel=1e-5)
  assert float(row['region_area']) == pytest.approx(region.mean(), rel=1e-5)
  assert math.isfinite(float(row['faithfulness_5pct']))
  realness = [r for r in rows if r['target'] == 'real/realness']
  assert all(r['region_energy'] == 'nan' for r in realness)

  summary = read_csv(out / 'summary.csv')
  assert len(summary) == 3 * len(folder.layers)
  report = (out / 'report.md').read_text()
  assert '## Headline' in report
  assert '| Smiling | mouth, u_lip, l_lip;' in report
  assert 'grad_cam D/block1' in report
  assert 'Randomised-weights check' in report
  figures = sorted(p.name for p in (out / 'figures').iterdir())
  assert 'score_by_layer.png' in figures
  assert 'energy_by_part_grad_cam_D_block1.png' in figures
  assert 'overlays_grad_cam_D_block3.png' in figures
  for name in figures:
    assert (out / 'figures' / name).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_cli_without_workdir(tmp_path):
  maps = write_hand_folder(tmp_path / 'maps')
  out = tmp_path / 'analysis'
  result = run_cli(f'--maps={maps}', f'--out={out}', timeout=120)
  assert result.returncode == 0, result.stderr
  rows = read_csv(out / 'maps.csv')
  assert [float(r['pointing_game']) for r in rows] == [1.0, 0.0, 0.0]
  assert rows[1]['region_energy'] == '0.8'
  assert rows[0]['faithfulness_10pct'] == 'nan'
  report = (out / 'report.md').read_text()
  assert '| Smiling | mouth, u_lip, l_lip;' in report
  assert '| 0.120 | 0.900 |' in report


def test_cli_bad_input_exits_2(tmp_path):
  maps = write_hand_folder(tmp_path / 'maps')
  out = tmp_path / 'analysis'

  result = run_cli(f'--maps={tmp_path / "none"}', f'--out={out}', timeout=120)
  assert result.returncode == 2
  assert 'none not found' in error_line(result)

  newer = tmp_path / 'newer'
  shutil.copytree(maps, newer)
  index = json.loads((newer / 'index.json').read_text())
  index['format_version'] = 2
  (newer / 'index.json').write_text(json.dumps(index))
  result = run_cli(f'--maps={newer}', f'--out={out}', timeout=120)
  assert result.returncode == 2
  assert 'format version 2' in error_line(result)

  bare = write_hand_folder(tmp_path / 'bare', with_parts=False)
  result = run_cli(f'--maps={bare}', f'--out={out}', timeout=120)
  assert result.returncode == 2
  assert 'pass --parts=FILE.npy' in error_line(result)

  np.save(tmp_path / 'labels.npy', np.zeros((2, 10, 10), np.uint8))
  result = run_cli(
    f'--maps={bare}',
    f'--out={out}',
    f'--parts={tmp_path / "labels.npy"}',
    timeout=120,
  )
  assert result.returncode == 2
  assert 'has shape [2, 10, 10]' in error_line(result)

  result = run_cli(
    f'--maps={maps}', f'--out={out}', '--delete_fractions=0.1,2', timeout=120
  )
  assert result.returncode == 2
  assert '--delete_fractions=0.1,2' in error_line(result)

  assert not out.exists()
  assert not list(tmp_path.glob('.analysis.*'))
  out.mkdir()
  result = run_cli(f'--maps={maps}', f'--out={out}', timeout=120)
  assert result.returncode == 2
  assert 'already exists' in error_line(result)


def test_cli_with_parts_file(tmp_path):
  bare = write_hand_folder(tmp_path / 'bare', with_parts=False)
  np.save(tmp_path / 'labels.npy', np.stack([face_labels()] * 3))
  out = tmp_path / 'analysis'
  result = run_cli(
    f'--maps={bare}',
    f'--out={out}',
    f'--parts={tmp_path / "labels.npy"}',
    timeout=120,
  )
  assert result.returncode == 0, result.stderr
  rows = read_csv(out / 'maps.csv')
  assert float(rows[0]['region_energy']) == pytest.approx(1.0)


# The notebook -----------------------------------------------------------------


def test_notebook_runs_on_tiny_maps(workdir, tiny_maps, tmp_path, monkeypatch):
  nbformat = pytest.importorskip('nbformat')
  nbclient = pytest.importorskip('nbclient')
  manager_module = pytest.importorskip('jupyter_client.manager')

  # A kernel spec of this interpreter, so the kernel runs in this venv, and
  # Jupyter's folders under tmp_path, so nothing outside it is touched.
  kernels = tmp_path / 'jupyter' / 'kernels' / 'cganjax-test'
  kernels.mkdir(parents=True)
  spec = {
    'argv': [
      sys.executable,
      '-m',
      'ipykernel_launcher',
      '-f',
      '{connection_file}',
    ],
    'display_name': 'cganjax test',
    'language': 'python',
  }
  (kernels / 'kernel.json').write_text(json.dumps(spec))
  monkeypatch.setenv('JUPYTER_PATH', str(tmp_path / 'jupyter'))
  monkeypatch.setenv('JUPYTER_RUNTIME_DIR', str(tmp_path / 'runtime'))
  monkeypatch.setenv('JUPYTER_CONFIG_DIR', str(tmp_path / 'config'))
  monkeypatch.setenv('IPYTHONDIR', str(tmp_path / 'ipython'))
  monkeypatch.setenv('MPLCONFIGDIR', str(tmp_path / 'matplotlib'))
  monkeypatch.setenv('CGANJAX_MAPS', str(tiny_maps))
  monkeypatch.setenv('CGANJAX_WORKDIR', str(workdir))
  monkeypatch.delenv('XLA_FLAGS', raising=False)

  notebook = nbformat.read(
    REPO_ROOT / 'examples' / 'maps_walkthrough.ipynb', as_version=4
  )
  # IPC transport: the kernel talks over Unix sockets, not TCP.
  manager = manager_module.KernelManager(
    kernel_name='cganjax-test', transport='ipc', ip=str(tmp_path / 'ipc')
  )
  client = nbclient.NotebookClient(
    notebook,
    km=manager,
    timeout=300,
    resources={'metadata': {'path': str(REPO_ROOT / 'examples')}},
  )
  client.execute()

  outputs = [
    output
    for cell in notebook.cells
    if cell.cell_type == 'code'
    for output in cell.outputs
  ]
  text = ''.join(o.get('text', '') for o in outputs)
  assert 'method grad_cam, checkpoint step 0' in text
  assert 'real/Smiling on D/block3' in text
  assert 'image 3: energy' in text
  images = [o for o in outputs if 'image/png' in o.get('data', {})]
  assert len(images) == 3
  # The edit cell ran on the tiny run, and the hard mask kept every pixel
  # outside the region.
  assert 'at step 0' in text
  assert 'largest change outside the region: 0\n' in text
