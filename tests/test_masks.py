"""Training masks: disc dilation, attribute regions and free-form strokes."""

import jax
import numpy as np
import pytest

from cganjax import masks
from cganjax.data import parts


def brute_force_dilate(mask: np.ndarray, radius: float) -> np.ndarray:
  height, width = mask.shape
  result = np.zeros_like(mask)
  ys, xs = np.nonzero(mask)
  for y in range(height):
    for x in range(width):
      distance2 = (ys - y) ** 2 + (xs - x) ** 2
      result[y, x] = bool(np.any(distance2 <= radius**2))
  return result


def test_disc_kernel_hand_worked():
  plus = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], np.float32)
  np.testing.assert_array_equal(masks.disc_kernel(1.0), plus)
  np.testing.assert_array_equal(masks.disc_kernel(1.5), np.ones((3, 3)))
  assert masks.disc_kernel(2.0).sum() == 13


@pytest.mark.parametrize('radius', [1.0, 1.92, 2.5, 3.0])
def test_dilate_matches_brute_force_and_numpy(radius):
  rng = np.random.default_rng(0)
  mask = rng.random((13, 17)) > 0.93
  mask[0, 0] = True
  expected = brute_force_dilate(mask, radius)
  got = np.asarray(masks.dilate(mask[None], radius))[0]
  np.testing.assert_array_equal(got, expected)
  np.testing.assert_array_equal(parts.dilate_disc(mask, radius), expected)


def test_region_table_matches_numpy_table():
  rng = np.random.default_rng(1)
  attributes = sorted(parts.ATTRIBUTE_REGIONS)
  table = masks.RegionTable(attributes)
  label_maps = np.zeros((3, 40, 40), np.uint8)
  for label_map in label_maps:
    # Random rectangles of random parts, drawn in label order.
    for label in range(1, parts.NUM_CLASSES):
      if rng.random() < 0.6:
        top, left = rng.integers(0, 34, size=2)
        h, w = rng.integers(2, 12, size=2)
        label_map[top : top + h, left : left + w] = label
  got = np.asarray(table.regions(label_maps))
  for b, label_map in enumerate(label_maps):
    for a, name in enumerate(attributes):
      expected = parts.attribute_mask(label_map, name)
      np.testing.assert_array_equal(got[b, a], expected, err_msg=name)


def test_region_table_attribute_without_region_is_empty():
  table = masks.RegionTable(['Attractive', 'Smiling'])
  label_maps = np.full((1, 8, 8), parts.part_label('mouth'), np.uint8)
  regions = np.asarray(table.regions(label_maps))
  assert not regions[0, 0].any()
  assert regions[0, 1].all()
  assert list(table.has_region) == [False, True]


def test_free_form_masks_nonempty_and_keyed():
  keys = jax.random.split(jax.random.key(0), 6)
  strokes = np.asarray(masks.free_form_masks(keys, 32, 48, 4, 0.2))
  assert strokes.shape == (6, 32, 48)
  assert strokes.dtype == bool
  assert strokes.reshape(6, -1).any(axis=1).all()
  assert not strokes.reshape(6, -1).all(axis=1).any()
  again = np.asarray(masks.free_form_masks(keys, 32, 48, 4, 0.2))
  np.testing.assert_array_equal(strokes, again)
  assert not np.array_equal(strokes[0], strokes[1])
