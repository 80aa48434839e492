"""Tests for the part labels, attribute regions and disc dilation."""

import numpy as np
import pytest

from cganjax.data import parts


def brute_force_dilation(mask, radius):
  """Dilate by checking every pair of pixels, as an independent reference."""
  height, width = mask.shape
  out = np.zeros_like(mask)
  set_pixels = list(zip(*np.nonzero(mask), strict=True))
  for y in range(height):
    for x in range(width):
      for sy, sx in set_pixels:
        if (y - sy) ** 2 + (x - sx) ** 2 <= radius**2:
          out[y, x] = True
          break
  return out


def test_part_names_in_celebamask_order():
  expected = (
    'skin nose eye_g l_eye r_eye l_brow r_brow l_ear r_ear mouth u_lip l_lip '
    'hair hat ear_r neck_l neck cloth'
  ).split()
  assert parts.PART_NAMES == tuple(expected)
  assert parts.NUM_CLASSES == 19
  assert parts.part_label('skin') == 1
  assert parts.part_label('mouth') == 10
  assert parts.part_label('hair') == 13
  assert parts.part_label('cloth') == 18


def test_part_label_unknown_name_raises():
  with pytest.raises(ValueError, match='wing') as error:
    parts.part_label('wing')
  assert 'skin' in str(error.value)
  assert 'cloth' in str(error.value)


def test_celeba_attributes_in_celeba_order():
  assert len(parts.CELEBA_ATTRIBUTES) == 40
  assert len(set(parts.CELEBA_ATTRIBUTES)) == 40
  assert parts.CELEBA_ATTRIBUTES[0] == '5_o_Clock_Shadow'
  assert parts.CELEBA_ATTRIBUTES[5] == 'Bangs'
  assert parts.CELEBA_ATTRIBUTES[15] == 'Eyeglasses'
  assert parts.CELEBA_ATTRIBUTES[20] == 'Male'
  assert parts.CELEBA_ATTRIBUTES[31] == 'Smiling'
  assert parts.CELEBA_ATTRIBUTES[39] == 'Young'


def test_dilate_disc_hand_worked_discs():
  mask = np.zeros((7, 7), bool)
  mask[3, 3] = True

  radius_one = np.zeros((7, 7), bool)
  radius_one[3, 2:5] = True
  radius_one[2:5, 3] = True
  assert np.array_equal(parts.dilate_disc(mask, 1.0), radius_one)

  # Radius 1.5 adds the diagonals, at distance sqrt(2).
  radius_one_half = np.zeros((7, 7), bool)
  radius_one_half[2:5, 2:5] = True
  assert np.array_equal(parts.dilate_disc(mask, 1.5), radius_one_half)

  # Radius 2 adds the four pixels two steps away along the axes.
  radius_two = radius_one_half.copy()
  radius_two[3, 1] = radius_two[3, 5] = True
  radius_two[1, 3] = radius_two[5, 3] = True
  assert np.array_equal(parts.dilate_disc(mask, 2.0), radius_two)


def test_dilate_disc_zero_radius_is_identity():
  mask = np.random.default_rng(0).random((9, 11)) < 0.2
  assert np.array_equal(parts.dilate_disc(mask, 0.0), mask)


def test_dilate_disc_single_pixel_counts():
  # Integer points in a disc: 1, 5, 13, 29, 49, 81 for r**2 = 0, 1, 4, 9, 16,
  # 25, a standard sequence (Gauss circle problem).
  mask = np.zeros((21, 21), bool)
  mask[10, 10] = True
  for radius, count in ((0, 1), (1, 5), (2, 13), (3, 29), (4, 49), (5, 81)):
    assert parts.dilate_disc(mask, radius).sum() == count


def test_dilate_disc_clips_at_border():
  mask = np.zeros((6, 6), bool)
  mask[0, 0] = True
  expected = np.zeros((6, 6), bool)
  expected[0, 0:3] = True
  expected[1, 0:2] = True
  expected[2, 0] = True
  assert np.array_equal(parts.dilate_disc(mask, 2.0), expected)


def test_dilate_disc_random_masks_match_brute_force():
  rng = np.random.default_rng(1)
  for radius in (0.5, 1.0, 1.9, 2.5, 3.0, 4.3):
    mask = rng.random((13, 17)) < 0.04
    expected = brute_force_dilation(mask, radius)
    assert np.array_equal(parts.dilate_disc(mask, radius), expected), radius


def test_dilate_disc_empty_mask():
  mask = np.zeros((5, 8), bool)
  assert not parts.dilate_disc(mask, 3.0).any()


def test_dilate_disc_invalid_input_raises():
  with pytest.raises(ValueError, match='radius_px'):
    parts.dilate_disc(np.zeros((3, 3), bool), -1.0)
  with pytest.raises(ValueError, match='2-D'):
    parts.dilate_disc(np.zeros((3, 3, 3), bool), 1.0)


def make_label_map():
  """A 50x50 map: skin, hair on top, a mouth pixel and two eye_g pixels."""
  label_map = np.full((50, 50), parts.part_label('skin'), np.uint8)
  label_map[:10] = parts.part_label('hair')
  label_map[30, 25] = parts.part_label('mouth')
  label_map[15, 10:12] = parts.part_label('eye_g')
  label_map[15, 30] = parts.part_label('l_eye')
  label_map[45:] = 0
  return label_map


def test_attribute_mask_near_band():
  label_map = make_label_map()
  region = parts.attribute_mask(label_map, 'Smiling')

  # Smiling's radius is 0.06 of the 50-pixel side: 3 pixels.
  y, x = np.mgrid[:50, :50]
  within = (y - 30) ** 2 + (x - 25) ** 2 <= 9
  skin = label_map == parts.part_label('skin')
  mouth = label_map == parts.part_label('mouth')
  assert np.array_equal(region, (within & skin) | mouth)
  assert region.sum() == 29


def test_attribute_mask_excludes_other_parts_near_anchor():
  label_map = make_label_map()
  label_map[30, 26] = parts.part_label('nose')
  region = parts.attribute_mask(label_map, 'Smiling')
  assert not region[30, 26]
  assert region[30, 24]


def test_attribute_mask_parts_only():
  label_map = make_label_map()
  region = parts.attribute_mask(label_map, 'Eyeglasses')
  expected = np.zeros((50, 50), bool)
  expected[15, 10:12] = True
  expected[15, 30] = True
  assert np.array_equal(region, expected)

  hat_region = parts.attribute_mask(label_map, 'Wearing_Hat')
  assert np.array_equal(hat_region, label_map == parts.part_label('hair'))


def test_attribute_mask_unknown_attribute_raises():
  label_map = make_label_map()
  with pytest.raises(ValueError, match="'Young'") as error:
    parts.attribute_mask(label_map, 'Young')
  assert 'Smiling' in str(error.value)


def test_attribute_mask_custom_regions():
  label_map = make_label_map()
  regions = {'Hairy': parts.AttributeRegion(parts=('hair',))}
  region = parts.attribute_mask(label_map, 'Hairy', regions=regions)
  assert np.array_equal(region, label_map == parts.part_label('hair'))
  with pytest.raises(ValueError, match='Smiling'):
    parts.attribute_mask(label_map, 'Smiling', regions=regions)


def test_attribute_mask_rejects_bad_label_maps():
  with pytest.raises(ValueError, match='2-D'):
    parts.attribute_mask(np.zeros((4, 4, 1), np.uint8), 'Smiling')
  with pytest.raises(ValueError, match='integer'):
    parts.attribute_mask(np.zeros((4, 4), np.float32), 'Smiling')


def test_attribute_masks_stacks_in_order():
  label_map = make_label_map()
  names = ['Eyeglasses', 'Smiling', 'Black_Hair']
  stacked = parts.attribute_masks(label_map, names)
  assert stacked.shape == (3, 50, 50)
  assert stacked.dtype == bool
  for index, name in enumerate(names):
    assert np.array_equal(stacked[index], parts.attribute_mask(label_map, name))
  assert parts.attribute_masks(label_map, []).shape == (0, 50, 50)


def test_parts_mask_accepts_name_or_names():
  label_map = make_label_map()
  hair = label_map == parts.part_label('hair')
  assert np.array_equal(parts.parts_mask(label_map, 'hair'), hair)
  both = parts.parts_mask(label_map, ['hair', 'mouth'])
  assert both.sum() == hair.sum() + 1
  with pytest.raises(ValueError, match='wing'):
    parts.parts_mask(label_map, ['wing'])


def test_attribute_region_validates_fields():
  with pytest.raises(ValueError, match='wing'):
    parts.AttributeRegion(parts=('wing',))
  with pytest.raises(ValueError, match='radius'):
    parts.AttributeRegion(parts=(), near=('skin', ('mouth',), 0.0))
  with pytest.raises(ValueError, match='wing'):
    parts.AttributeRegion(parts=(), near=('skin', ('wing',), 0.1))
  region = parts.AttributeRegion(parts=['hair'], near=('skin', 'mouth', 1))
  assert region.parts == ('hair',)
  assert region.near == ('skin', ('mouth',), 1.0)


def test_regions_of_listed_attributes():
  regions = parts.ATTRIBUTE_REGIONS
  mouth = ('mouth', 'u_lip', 'l_lip')
  for name in ('Smiling', 'Mouth_Slightly_Open'):
    assert set(regions[name].parts) == set(mouth)
    base, anchors, radius = regions[name].near
    assert base == 'skin'
    assert set(anchors) == set(mouth)
    assert radius == pytest.approx(0.06)

  base, anchors, male_radius = regions['Male'].near
  assert base == 'skin'
  assert set(mouth) <= set(anchors)
  assert male_radius > regions['Smiling'].near[2]
  assert {'u_lip', 'l_lip'} <= set(regions['Male'].parts)

  assert set(regions['Eyeglasses'].parts) == {
    'eye_g',
    'l_eye',
    'r_eye',
    'l_brow',
    'r_brow',
  }
  for name in ('Black_Hair', 'Blond_Hair', 'Brown_Hair', 'Gray_Hair', 'Bangs'):
    assert regions[name].parts == ('hair',)
    assert regions[name].near is None
  assert set(regions['Wearing_Hat'].parts) == {'hat', 'hair'}
  assert set(regions['Pale_Skin'].parts) == {
    'skin',
    'nose',
    'l_ear',
    'r_ear',
    'neck',
  }
  assert set(regions['Wearing_Earrings'].parts) == {'ear_r', 'l_ear', 'r_ear'}
  assert set(regions['Wearing_Necklace'].parts) == {'neck_l', 'neck'}
  for name in regions:
    assert name in parts.CELEBA_ATTRIBUTES
  for name in ('Young', 'Attractive', 'Blurry'):
    assert name not in regions


def test_exclusive_groups_hold_hair_colours():
  assert parts.EXCLUSIVE_GROUPS == (
    ('Black_Hair', 'Blond_Hair', 'Brown_Hair', 'Gray_Hair'),
  )
