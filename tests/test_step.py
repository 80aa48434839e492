"""The sharded training step: device-count invariance and non-finite skips."""

import jax
import numpy as np

from cganjax import step

ATTRIBUTES = ('Black_Hair', 'Blond_Hair', 'Eyeglasses', 'Smiling', 'Male')


def random_batch(batch_size=8, size=32, seed=0):
  """Random images with simple face-like label maps."""
  rng = np.random.default_rng(seed)
  image = rng.integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8)
  label_maps = np.zeros((batch_size, size, size), np.uint8)
  for b in range(batch_size):
    top = int(rng.integers(4, 8))
    label_maps[b, top : top + 20, 6:26] = 1  # skin
    label_maps[b, top + 5 : top + 8, 9:14] = 4  # l_eye
    label_maps[b, top + 5 : top + 8, 18:23] = 5  # r_eye
    label_maps[b, top + 14 : top + 17, 12:20] = 11  # u_lip
    label_maps[b, :top, 4:28] = 13  # hair
  attributes = rng.integers(0, 2, (batch_size, len(ATTRIBUTES)), dtype=np.uint8)
  attributes[:, 1] = np.where(attributes[:, 0] == 1, 0, attributes[:, 1])
  return {'image': image, 'parts': label_maps, 'attributes': attributes}


def run_steps(config, devices, batches):
  networks = step.create_networks(config, ATTRIBUTES)
  mesh = step.create_mesh(devices)
  state = jax.device_put(
    step.create_train_state(config, networks), step.replicated(mesh)
  )
  train_step = step.make_train_step(config, networks, mesh)
  metrics = []
  for batch in batches:
    placed = jax.device_put(batch, step.batch_sharding(mesh))
    state, m = train_step(state, placed)
    metrics.append(m)
  return state, metrics


def max_difference(a, b):
  return max(
    float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
  )


def test_one_and_eight_devices_agree(tiny_config):
  assert jax.device_count() == 8
  batches = [random_batch(seed=0), random_batch(seed=1)]
  initial = step.create_train_state(
    tiny_config, step.create_networks(tiny_config, ATTRIBUTES)
  )
  one, _ = run_steps(tiny_config, jax.devices()[:1], batches)
  eight, _ = run_steps(tiny_config, jax.devices(), batches)

  for name in ('g_params', 'd_params', 'g_ema_params'):
    difference = max_difference(getattr(one, name), getattr(eight, name))
    moved = max_difference(getattr(one, name), getattr(initial, name))
    assert difference < 1e-5, (name, difference)
    assert moved > 20 * 1e-5, (name, moved)
  assert int(one.step) == int(eight.step) == 2


def test_same_inputs_give_identical_states(tiny_config):
  batches = [random_batch(seed=3)]
  first, _ = run_steps(tiny_config, jax.devices()[:2], batches)
  second, _ = run_steps(tiny_config, jax.devices()[:2], batches)
  assert max_difference(first, second) == 0.0


def test_ema_decay_warms_up(tiny_config):
  decays = [
    float(step.ema_decay(tiny_config, jax.numpy.asarray(t)))
    for t in (0, 10, 1_000_000)
  ]
  assert decays[0] == np.float32(1 / 10)
  assert decays[1] == np.float32(11 / 20)
  assert decays[2] == np.float32(tiny_config.optim.ema_decay)


def test_nonfinite_loss_skips_update(tiny_config):
  networks = step.create_networks(tiny_config, ATTRIBUTES)
  initial = step.create_train_state(tiny_config, networks)
  tiny_config.loss.reconstruction.weight = float('nan')
  state, metrics = run_steps(tiny_config, jax.devices()[:2], [random_batch()])

  # G's loss is NaN, so G, its optimizer and its EMA keep their values.
  assert max_difference(state.g_params, initial.g_params) == 0.0
  assert max_difference(state.g_ema_params, initial.g_ema_params) == 0.0
  assert max_difference(state.g_opt_state, initial.g_opt_state) == 0.0
  # D's loss is finite, so D still trains.
  assert max_difference(state.d_params, initial.d_params) > 0.0
  assert int(state.nonfinite_steps) == 1
  assert int(state.consecutive_nonfinite) == 1
  assert float(metrics[0]['nonfinite']) == 1.0


def test_consecutive_count_resets_after_finite_step(tiny_config):
  tiny_config.loss.reconstruction.weight = float('nan')
  networks = step.create_networks(tiny_config, ATTRIBUTES)
  mesh = step.create_mesh(jax.devices()[:1])
  state = jax.device_put(
    step.create_train_state(tiny_config, networks), step.replicated(mesh)
  )
  batch = jax.device_put(random_batch(), step.batch_sharding(mesh))
  # The config is read when the step is traced, at its first call.
  bad_step = step.make_train_step(tiny_config, networks, mesh)
  state, _ = bad_step(state, batch)
  state, _ = bad_step(state, batch)
  assert int(state.consecutive_nonfinite) == 2
  tiny_config.loss.reconstruction.weight = 10.0
  good_step = step.make_train_step(tiny_config, networks, mesh)
  state, _ = good_step(state, batch)
  assert int(state.consecutive_nonfinite) == 0
  assert int(state.nonfinite_steps) == 2


def test_draw_inputs_flip_rules(tiny_config):
  tiny_config.masks.whole_prob = 0.0
  tiny_config.masks.part_prob = 1.0
  tiny_config.masks.flip_prob = 1.0
  networks = step.create_networks(tiny_config, ATTRIBUTES)
  batch = random_batch(batch_size=64, seed=5)
  keys = jax.random.split(jax.random.key(0), 64)
  inputs = step.draw_inputs(tiny_config, networks, batch, keys)
  source = np.asarray(inputs['source'])
  target = np.asarray(inputs['target'])
  changed = source != target
  hair = [0, 1]
  for b in range(64):
    flipped = np.flatnonzero(changed[b])
    # Exactly one attribute flips, except that turning a hair colour on may
    # also turn the other one off.
    assert 1 <= len(flipped) <= 2
    if len(flipped) == 2:
      assert set(flipped) == set(hair)
    assert target[b, hair].sum() <= 1
  assert not np.asarray(inputs['reconstruct']).any()
  assert np.asarray(inputs['mask']).reshape(64, -1).any(axis=1).all()


def test_batch_size_check():
  step.check_batch_size(16, 8)
  for bad in (7, 0, -8):
    try:
      step.check_batch_size(bad, 8)
    except ValueError as error:
      assert f'train.batch_size={bad}' in str(error)
    else:
      raise AssertionError(f'batch size {bad} was accepted')
