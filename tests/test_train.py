"""The training loop through `train.train_and_evaluate` on 8 CPU devices.

Later runs with the same config load the compiled step from the session's
persistent compilation cache (see conftest.py) instead of compiling again.
"""

import json
import math
import re
import shutil

import jax
import numpy as np
import pytest
from conftest import file_contents, make_tiny_config, saved_steps

from cganjax import checkpoint, step, train
from cganjax.data import pipeline
from cganjax.errors import InputError


def tiny_run_config(**train_overrides):
  config = make_tiny_config()
  for name, value in train_overrides.items():
    config.train[name] = value
  return config


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory):
  """A fresh 4-step run: (workdir, returned state) shared by several tests."""
  workdir = tmp_path_factory.mktemp('run_a')
  state = train.train_and_evaluate(tiny_run_config(), workdir)
  return workdir, state


def assert_trees_identical(expected, actual):
  """Assert the same tree structure and bit-identical leaves."""
  expected_leaves, expected_tree = jax.tree.flatten(expected)
  actual_leaves, actual_tree = jax.tree.flatten(actual)
  assert expected_tree == actual_tree
  for index, (a, b) in enumerate(
    zip(expected_leaves, actual_leaves, strict=True)
  ):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype, (index, a.dtype, b.dtype)
    assert a.shape == b.shape, (index, a.shape, b.shape)
    # Compare the bytes so that NaN payloads and -0.0 count too.
    assert a.tobytes() == b.tobytes(), f'leaf {index} differs'


def fresh_state(config):
  """The state that training starts from: the initial parameters."""
  info = pipeline.dataset_info(config)
  networks = step.create_networks(config, info.attributes)
  return step.create_train_state(config, networks)


def restore(workdir, config, step_number=None):
  """Restore a checkpoint of `workdir` the way a resumed run does."""
  mesh = step.create_mesh()
  target = checkpoint.abstract_like(fresh_state(config), step.replicated(mesh))
  manager = checkpoint.checkpoint_manager(workdir, async_save=False)
  try:
    return checkpoint.restore_state(manager, step_number, target, workdir)
  finally:
    manager.close()


def all_finite(tree) -> bool:
  return all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(tree))


def test_run_writes_record_checkpoints_samples(finished_run):
  workdir, state = finished_run
  assert int(state.step) == 4

  record = json.loads((workdir / 'run.json').read_text())
  for key in ('config', 'attributes', 'packages', 'git_commit'):
    assert key in record, key
  assert record['device_count'] == jax.device_count() == 8
  assert record['config']['model']['g_base_channels'] == 8
  assert record['config']['train']['steps'] == 4
  assert record['attributes'], record['attributes']
  assert 'jax' in record['packages']

  assert saved_steps(workdir) == [2, 4]

  grids = sorted(p.name for p in (workdir / 'samples').glob('*.png'))
  assert grids == ['step_0000002.png', 'step_0000004.png']
  for name in grids:
    assert (workdir / 'samples' / name).stat().st_size > 0

  events = list((workdir / 'tensorboard').glob('events.out.tfevents.*'))
  assert events
  assert any(p.stat().st_size > 0 for p in events)


def test_checkpoint_round_trip(finished_run):
  workdir, state = finished_run
  restored_step, restored = restore(workdir, tiny_run_config())
  assert restored_step == 4
  assert_trees_identical(state, restored)


def test_resumed_run_equals_uninterrupted(finished_run, tmp_path):
  _, uninterrupted = finished_run
  first = train.train_and_evaluate(tiny_run_config(steps=2), tmp_path)
  assert int(first.step) == 2
  assert saved_steps(tmp_path) == [2]

  resumed = train.train_and_evaluate(tiny_run_config(steps=4), tmp_path)
  assert int(resumed.step) == 4
  assert saved_steps(tmp_path) == [2, 4]
  assert_trees_identical(uninterrupted, resumed)


def test_same_seed_gives_identical_states(finished_run, tmp_path):
  _, first = finished_run
  second = train.train_and_evaluate(tiny_run_config(), tmp_path)
  assert_trees_identical(first, second)


def test_finished_run_called_again_keeps_state(finished_run, tmp_path):
  workdir, state = finished_run
  copy = tmp_path / 'copy'
  shutil.copytree(workdir, copy)
  again = train.train_and_evaluate(tiny_run_config(), copy)
  assert int(again.step) == 4
  assert saved_steps(copy) == [2, 4]
  assert_trees_identical(state, again)


def test_nonfinite_losses_before_checkpoint(tmp_path):
  config = tiny_run_config(max_nonfinite_steps=2)
  config.loss.reconstruction.weight = float('nan')
  with pytest.raises(train.NonFiniteError) as raised:
    train.train_and_evaluate(config, tmp_path)

  # The check at step 2 comes before the checkpoint of step 2.
  message = str(raised.value)
  assert '2 consecutive steps up to step 2' in message
  assert 'no checkpoint was saved' in message
  assert 'None' not in message
  assert saved_steps(tmp_path) == []


def test_nonfinite_losses_keep_checkpoint(tmp_path):
  config = tiny_run_config(
    max_nonfinite_steps=2, checkpoint_every=1, log_every=2
  )
  config.loss.reconstruction.weight = float('nan')
  with pytest.raises(train.NonFiniteError) as raised:
    train.train_and_evaluate(config, tmp_path)
  assert 'checkpoint (step 1)' in str(raised.value)

  # Step 1 was saved with one skipped step, and the check at step 2 raised.
  assert saved_steps(tmp_path) == [1]
  restored_step, restored = restore(tmp_path, config)
  assert restored_step == 1
  assert all_finite(restored.g_params)
  assert all_finite(restored.d_params)
  assert all_finite(restored.g_ema_params)
  assert int(restored.nonfinite_steps) == 1
  # G's loss is NaN at every step, so every G update was skipped.
  initial = fresh_state(config)
  assert_trees_identical(initial.g_params, restored.g_params)
  assert_trees_identical(initial.g_ema_params, restored.g_ema_params)


def test_save_checkpoint_rejects_nonfinite(finished_run, tmp_path):
  source, state = finished_run
  workdir = tmp_path / 'run'
  shutil.copytree(source, workdir)
  folder = workdir / checkpoint.CHECKPOINT_DIR
  before = sorted(p.name for p in folder.iterdir())

  g_params = jax.tree.map(lambda x: x * math.nan, state.g_params)
  bad = state.replace(step=state.step + 1, g_params=g_params)
  manager = checkpoint.checkpoint_manager(workdir)
  try:
    with pytest.raises(train.NonFiniteError, match='not finite'):
      train.save_checkpoint(manager, bad, workdir)
    manager.wait_until_finished()
  finally:
    manager.close()

  assert sorted(p.name for p in folder.iterdir()) == before
  restored_step, restored = restore(workdir, tiny_run_config())
  assert restored_step == 4
  assert_trees_identical(state, restored)


def test_batch_size_not_divisible_raises(tmp_path):
  assert jax.device_count() == 8
  config = tiny_run_config(batch_size=12)
  with pytest.raises(InputError, match=r'train\.batch_size=12'):
    train.train_and_evaluate(config, tmp_path / 'run')
  assert not (tmp_path / 'run').exists()


def test_image_size_out_of_range_raises(tmp_path):
  for size in (16, 512):
    config = tiny_run_config()
    config.data.image_size = size
    with pytest.raises(InputError, match=rf'data\.image_size={size}'):
      train.train_and_evaluate(config, tmp_path / 'run')
  assert not (tmp_path / 'run').exists()


def test_workdir_regular_file_raises(tmp_path):
  path = tmp_path / 'a_file'
  path.write_text('not a directory')
  with pytest.raises(checkpoint.WorkdirError, match=re.escape(str(path))):
    train.train_and_evaluate(tiny_run_config(), path)
  assert path.read_text() == 'not a directory'


def test_workdir_under_file_raises(tmp_path):
  # Root can write into read-only folders, so a path below a regular file
  # serves as the unwritable location.
  parent = tmp_path / 'a_file'
  parent.write_text('')
  workdir = parent / 'run'
  with pytest.raises(checkpoint.WorkdirError, match=re.escape(str(workdir))):
    train.train_and_evaluate(tiny_run_config(), workdir)


def test_other_model_shape_rejected(tmp_path, monkeypatch):
  config = tiny_run_config(steps=2)
  first = train.train_and_evaluate(config, tmp_path)
  before = file_contents(tmp_path)

  def fail_if_called(*args, **kwargs):
    raise AssertionError('the state was built before the model check')

  changed = tiny_run_config(steps=4)
  changed.model.g_base_channels = 4
  with monkeypatch.context() as patch:
    # The check must run before the slow parameter initialisation.
    patch.setattr(step, 'create_train_state', fail_if_called)
    with pytest.raises(
      checkpoint.WorkdirError, match=r'model\.g_base_channels=8'
    ):
      train.train_and_evaluate(changed, tmp_path)

  # Nothing was written: the record, checkpoints, samples and event files
  # are as the first run left them.
  assert file_contents(tmp_path) == before
  restored_step, restored = restore(tmp_path, config)
  assert restored_step == 2
  assert_trees_identical(first, restored)


def test_bad_loss_setting_rejected_before_writing(tmp_path):
  config = tiny_run_config()
  config.loss.adversarial.type = 'wasserstein'
  workdir = tmp_path / 'run'
  with pytest.raises(InputError, match='loss.adversarial.type'):
    train.train_and_evaluate(config, workdir)
  assert not workdir.exists()


def test_maps_every_dumps_sample_maps(tmp_path):
  from cganjax import maps_folder

  config = tiny_run_config(steps=2, maps_every=2, checkpoint_every=0)
  workdir = tmp_path / 'run'
  train.train_and_evaluate(config, workdir)

  folder = workdir / 'maps' / 'step_0000002'
  loaded = maps_folder.load(folder)
  index = json.loads((folder / 'index.json').read_text())
  assert index['checkpoint_step'] == 2
  assert saved_steps(workdir) == [2]
  expected = next(
    pipeline.test_batches(
      config, config.sample.num_images, config.sample.num_images
    )
  )
  np.testing.assert_array_equal(loaded.images, expected['image'])
  assert any(layer.startswith('D/') for layer in loaded.layers)
