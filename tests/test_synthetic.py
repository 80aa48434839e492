"""Tests for the procedural synthetic face set."""

import numpy as np
import pytest

from cganjax.data import parts, synthetic

ATTRIBUTES = synthetic.SYNTHETIC_ATTRIBUTES
HAIR_CLASSES = ('Black_Hair', 'Blond_Hair', 'Brown_Hair', 'Gray_Hair')


def label(name):
  return parts.part_label(name)


def attribute(example, name):
  return bool(example['attributes'][ATTRIBUTES.index(name)])


def flipped(example, name):
  return {name: not attribute(example, name)}


@pytest.fixture(scope='module')
def batch32():
  return synthetic.render_batch(0, range(300), 32)


def test_attributes_in_celeba_order():
  positions = [parts.CELEBA_ATTRIBUTES.index(name) for name in ATTRIBUTES]
  assert positions == sorted(positions)
  required = {
    'Bangs',
    'Black_Hair',
    'Blond_Hair',
    'Brown_Hair',
    'Eyeglasses',
    'Gray_Hair',
    'Male',
    'Mouth_Slightly_Open',
    'Pale_Skin',
    'Smiling',
    'Wearing_Hat',
  }
  assert required <= set(ATTRIBUTES)
  for name in ATTRIBUTES:
    assert name in parts.ATTRIBUTE_REGIONS


@pytest.mark.parametrize('size', [32, 48, 64, 128, 256])
def test_render_shapes_and_types(size):
  example = synthetic.render(3, 7, size)
  assert example['image'].shape == (size, size, 3)
  assert example['image'].dtype == np.uint8
  assert example['parts'].shape == (size, size)
  assert example['parts'].dtype == np.uint8
  assert example['parts'].max() < parts.NUM_CLASSES
  assert example['attributes'].shape == (len(ATTRIBUTES),)
  assert example['attributes'].dtype == bool
  assert isinstance(example['pose'], float)
  assert isinstance(example['lighting'], float)
  assert -1.0 <= example['pose'] <= 1.0
  assert -1.0 <= example['lighting'] <= 1.0


@pytest.mark.parametrize('size', [31, 257, 0, -64, 64.0, '64', None])
def test_render_rejects_bad_size(size):
  with pytest.raises(ValueError, match='32 to 256'):
    synthetic.render(0, 0, size)
  with pytest.raises(ValueError, match='32 to 256'):
    synthetic.render_batch(0, [0], size)


def test_render_rejects_negative_seed_or_index():
  with pytest.raises(ValueError, match='seed'):
    synthetic.render(-1, 0, 32)
  with pytest.raises(ValueError, match='index'):
    synthetic.render(0, -1, 32)


def test_render_is_deterministic():
  first = synthetic.render(5, 11, 64)
  second = synthetic.render(5, 11, 64)
  for key in ('image', 'parts', 'attributes'):
    assert np.array_equal(first[key], second[key])
  assert first['pose'] == second['pose']
  assert first['lighting'] == second['lighting']


def test_render_differs_between_indices_and_seeds():
  base = synthetic.render(0, 0, 32)
  other_index = synthetic.render(0, 1, 32)
  other_seed = synthetic.render(1, 0, 32)
  assert not np.array_equal(base['image'], other_index['image'])
  assert not np.array_equal(base['image'], other_seed['image'])
  assert base['pose'] != other_index['pose']


def test_render_batch_matches_single_renders():
  batch = synthetic.render_batch(2, list(range(10)), 48)
  single = synthetic.render(2, 5, 48)
  assert batch['image'].shape == (10, 48, 48, 3)
  assert batch['parts'].shape == (10, 48, 48)
  assert batch['attributes'].shape == (10, len(ATTRIBUTES))
  assert batch['pose'].shape == (10,)
  assert np.array_equal(batch['image'][5], single['image'])
  assert np.array_equal(batch['parts'][5], single['parts'])
  assert np.array_equal(batch['attributes'][5], single['attributes'])
  assert batch['pose'][5] == np.float32(single['pose'])
  assert batch['lighting'][5] == np.float32(single['lighting'])


def test_render_batch_passes_overrides_and_handles_empty():
  batch = synthetic.render_batch(0, np.arange(4), 32, {'Smiling': True})
  assert batch['attributes'][:, ATTRIBUTES.index('Smiling')].all()
  empty = synthetic.render_batch(0, [], 32)
  assert empty['image'].shape == (0, 32, 32, 3)
  assert empty['attributes'].shape == (0, len(ATTRIBUTES))


def test_same_face_at_every_size():
  small = synthetic.render(0, 4, 32)
  large = synthetic.render(0, 4, 128)
  assert np.array_equal(small['attributes'], large['attributes'])
  assert small['pose'] == large['pose']
  assert small['lighting'] == large['lighting']
  # Every fourth pixel centre of the large map lies near a small pixel
  # centre, so the two label maps agree on most pixels.
  agreement = np.mean(large['parts'][1::4, 1::4] == small['parts'])
  assert agreement > 0.85


def test_attributes_agree_with_parts(batch32):
  label_maps = batch32['parts']
  for name, part in (
    ('Eyeglasses', 'eye_g'),
    ('Wearing_Hat', 'hat'),
    ('Mouth_Slightly_Open', 'mouth'),
    ('Wearing_Earrings', 'ear_r'),
    ('Wearing_Necklace', 'neck_l'),
  ):
    present = (label_maps == label(part)).any(axis=(1, 2))
    expected = batch32['attributes'][:, ATTRIBUTES.index(name)]
    assert np.array_equal(present, expected), name


def test_every_face_has_its_core_parts(batch32):
  for part in (
    'skin',
    'nose',
    'l_eye',
    'r_eye',
    'l_brow',
    'r_brow',
    'u_lip',
    'l_lip',
    'hair',
    'neck',
  ):
    present = (batch32['parts'] == label(part)).any(axis=(1, 2))
    assert present.all(), part


def test_at_most_one_hair_colour(batch32):
  columns = [ATTRIBUTES.index(name) for name in HAIR_CLASSES]
  counts = batch32['attributes'][:, columns].sum(axis=1)
  assert counts.max() <= 1
  assert (counts == 0).any()


def test_hair_colour_nearest_to_its_class():
  batch = synthetic.render_batch(1, range(60), 64)
  class_colours = np.array([synthetic.HAIR_COLOURS[n] for n in HAIR_CLASSES])
  checked = 0
  for i in range(60):
    hair = batch['parts'][i] == label('hair')
    mean = batch['image'][i][hair].astype(np.float64).mean(axis=0)
    nearest = np.argmin(((class_colours - mean) ** 2).sum(axis=1))
    for k, name in enumerate(HAIR_CLASSES):
      if batch['attributes'][i, ATTRIBUTES.index(name)]:
        assert nearest == k, (i, name, mean)
        checked += 1
  assert checked >= 30


def test_attribute_frequencies(batch32):
  rates = batch32['attributes'].mean(axis=0)
  for name, rate in zip(ATTRIBUTES, rates, strict=True):
    if name in HAIR_CLASSES:
      assert 0.08 <= rate <= 0.35, (name, rate)
    else:
      assert 0.27 <= rate <= 0.63, (name, rate)


def test_pose_and_lighting_spread(batch32):
  for key in ('pose', 'lighting'):
    values = batch32[key]
    assert values.min() >= -1.0
    assert values.max() <= 1.0
    assert values.min() < -0.8
    assert values.max() > 0.8


def test_pale_skin_lighter_than_every_other_tone(batch32):
  # The median skips beard pixels, which carry the skin label.
  pale = batch32['attributes'][:, ATTRIBUTES.index('Pale_Skin')]
  brightness = []
  for i in range(len(pale)):
    skin = batch32['parts'][i] == label('skin')
    pixels = batch32['image'][i][skin].astype(np.float64)
    brightness.append(np.median(pixels.mean(axis=1)))
  brightness = np.array(brightness)
  assert brightness[pale].min() > brightness[~pale].max() + 10


def test_bangs_add_hair_above_the_brows():
  for index in range(20):
    without = synthetic.render(0, index, 64, {'Bangs': False})['parts']
    with_bangs = synthetic.render(0, index, 64, {'Bangs': True})['parts']
    added = (with_bangs == label('hair')) & (without != label('hair'))
    assert added.any(), index
    assert (without[added] == label('skin')).all(), index

    brows = np.isin(with_bangs, [label('l_brow'), label('r_brow')])
    for column in np.flatnonzero(added.any(axis=0) & brows.any(axis=0)):
      lowest_bang = np.flatnonzero(added[:, column]).max()
      highest_brow = np.flatnonzero(brows[:, column]).min()
      assert lowest_bang < highest_brow, (index, column)


def test_smiling_widens_the_mouth_and_shows_teeth():
  mouth_parts = [label('mouth'), label('u_lip'), label('l_lip')]
  for index in range(20):
    overrides = {'Mouth_Slightly_Open': True}
    plain = synthetic.render(0, index, 64, {**overrides, 'Smiling': False})
    smile = synthetic.render(0, index, 64, {**overrides, 'Smiling': True})
    plain_width = np.isin(plain['parts'], mouth_parts).any(axis=0).sum()
    smile_width = np.isin(smile['parts'], mouth_parts).any(axis=0).sum()
    assert smile_width > plain_width, index

    inside = smile['parts'] == label('mouth')
    teeth = smile['image'][inside].astype(int).min(axis=1) > 150
    assert teeth.any(), index


def test_open_mouth_is_dark_inside():
  for index in range(20):
    example = synthetic.render(0, index, 32, {'Mouth_Slightly_Open': True})
    inside = example['parts'] == label('mouth')
    assert inside.sum() >= 3, index
    dark = example['image'][inside].astype(int).max(axis=1) < 110
    assert dark.any(), index


def test_male_draws_a_beard_without_changing_labels():
  for index in range(20):
    plain = synthetic.render(0, index, 32, {'Male': False})
    male = synthetic.render(0, index, 32, {'Male': True})
    assert np.array_equal(plain['parts'], male['parts'])
    changed = (plain['image'] != male['image']).any(axis=-1)
    assert changed.sum() >= 5, index
    assert (male['parts'][changed] != label('hair')).all()


def changed_outside_region(original, counterfactual):
  """Return a mask of pixels changed outside the changed attributes' regions."""
  region = np.zeros(original['parts'].shape, bool)
  for i, name in enumerate(ATTRIBUTES):
    if original['attributes'][i] != counterfactual['attributes'][i]:
      region |= parts.attribute_mask(original['parts'], name)
      region |= parts.attribute_mask(counterfactual['parts'], name)
  image_changed = (original['image'] != counterfactual['image']).any(axis=-1)
  parts_changed = original['parts'] != counterfactual['parts']
  return (image_changed | parts_changed) & ~region


@pytest.mark.parametrize('size,count', [(32, 30), (48, 8), (64, 12)])
def test_counterfactual_changes_only_its_region(size, count):
  for index in range(count):
    original = synthetic.render(7, index, size)
    for name in ATTRIBUTES:
      counterfactual = synthetic.render(7, index, size, flipped(original, name))
      outside = changed_outside_region(original, counterfactual)
      assert not outside.any(), (index, name, np.argwhere(outside)[:5])
      assert not np.array_equal(original['image'], counterfactual['image']), (
        index,
        name,
      )


def test_counterfactual_with_several_overrides():
  rng = np.random.default_rng(0)
  for index in range(15):
    original = synthetic.render(3, index, 32)
    names = rng.choice(ATTRIBUTES, size=3, replace=False)
    overrides = {}
    for name in names:
      overrides.update(flipped(original, name))
    if sum(overrides.get(name, False) for name in HAIR_CLASSES) > 1:
      continue
    counterfactual = synthetic.render(3, index, 32, overrides)
    outside = changed_outside_region(original, counterfactual)
    assert not outside.any(), (index, overrides)


def test_override_with_drawn_values_changes_nothing():
  original = synthetic.render(0, 9, 32)
  same = {name: attribute(original, name) for name in ATTRIBUTES}
  repeat = synthetic.render(0, 9, 32, same)
  assert np.array_equal(original['image'], repeat['image'])
  assert np.array_equal(original['parts'], repeat['parts'])


def test_override_unknown_name_raises():
  with pytest.raises(ValueError, match="'Wings'") as error:
    synthetic.render(0, 0, 32, {'Wings': True})
  assert 'Smiling' in str(error.value)


def test_override_value_must_be_bool():
  with pytest.raises(ValueError, match='bool'):
    synthetic.render(0, 0, 32, {'Smiling': 1})


def test_override_two_hair_colours_raises():
  with pytest.raises(ValueError, match='at most one'):
    synthetic.render(0, 0, 32, {'Black_Hair': True, 'Blond_Hair': True})


def test_override_hair_colour_clears_the_others(batch32):
  column = ATTRIBUTES.index('Black_Hair')
  index = int(np.flatnonzero(batch32['attributes'][:, column])[0])
  example = synthetic.render(0, index, 32, {'Blond_Hair': True})
  assert attribute(example, 'Blond_Hair')
  assert not attribute(example, 'Black_Hair')
  assert not attribute(example, 'Brown_Hair')
  assert not attribute(example, 'Gray_Hair')

  cleared = synthetic.render(0, index, 32, {'Black_Hair': False})
  for name in HAIR_CLASSES:
    assert not attribute(cleared, name)


def test_hair_and_hat_never_cover_glasses():
  for index in range(15):
    frames = []
    for bangs in (False, True):
      for hat in (False, True):
        overrides = {'Eyeglasses': True, 'Bangs': bangs, 'Wearing_Hat': hat}
        example = synthetic.render(0, index, 48, overrides)
        frames.append(example['parts'] == label('eye_g'))
    for frame in frames[1:]:
      assert np.array_equal(frame, frames[0]), index


def test_pose_moves_the_nose_sideways(batch32):
  checked = 0
  for i in np.flatnonzero(np.abs(batch32['pose']) > 0.6):
    label_map = batch32['parts'][i]
    face_columns = np.nonzero(label_map == label('skin'))[1]
    nose_columns = np.nonzero(label_map == label('nose'))[1]
    offset = nose_columns.mean() - face_columns.mean()
    assert np.sign(offset) == np.sign(batch32['pose'][i]), i
    checked += 1
  assert checked >= 20


def test_lighting_brightens_one_side():
  checked = 0
  for index in range(60):
    example = synthetic.render(0, index, 64, {'Male': False})
    if abs(example['lighting']) < 0.6:
      continue
    skin = example['parts'] == label('skin')
    rows, columns = np.nonzero(skin)
    middle = columns.mean()
    brightness = example['image'][rows, columns].astype(np.float64).mean(axis=1)
    right = brightness[columns > middle + 2].mean()
    left = brightness[columns < middle - 2].mean()
    assert np.sign(right - left) == np.sign(example['lighting']), index
    checked += 1
  assert checked >= 10
