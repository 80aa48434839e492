"""Face part labels, CelebA attribute names and the region of each attribute.

Label maps use the CelebAMask-HQ order: label 0 is background and label
``i + 1`` is ``PART_NAMES[i]``. Where part masks overlap, the later part wins,
as when CelebAMask-HQ merges its per-part masks into one map.

An attribute's region is the set of pixels where the attribute shows, so an
edit of that attribute is allowed to change those pixels and no others.
"""

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

PART_NAMES = (
  'skin',
  'nose',
  'eye_g',
  'l_eye',
  'r_eye',
  'l_brow',
  'r_brow',
  'l_ear',
  'r_ear',
  'mouth',
  'u_lip',
  'l_lip',
  'hair',
  'hat',
  'ear_r',
  'neck_l',
  'neck',
  'cloth',
)
NUM_CLASSES = len(PART_NAMES) + 1

CELEBA_ATTRIBUTES = (
  '5_o_Clock_Shadow',
  'Arched_Eyebrows',
  'Attractive',
  'Bags_Under_Eyes',
  'Bald',
  'Bangs',
  'Big_Lips',
  'Big_Nose',
  'Black_Hair',
  'Blond_Hair',
  'Blurry',
  'Brown_Hair',
  'Bushy_Eyebrows',
  'Chubby',
  'Double_Chin',
  'Eyeglasses',
  'Goatee',
  'Gray_Hair',
  'Heavy_Makeup',
  'High_Cheekbones',
  'Male',
  'Mouth_Slightly_Open',
  'Mustache',
  'Narrow_Eyes',
  'No_Beard',
  'Oval_Face',
  'Pale_Skin',
  'Pointy_Nose',
  'Receding_Hairline',
  'Rosy_Cheeks',
  'Sideburns',
  'Smiling',
  'Straight_Hair',
  'Wavy_Hair',
  'Wearing_Earrings',
  'Wearing_Hat',
  'Wearing_Lipstick',
  'Wearing_Necklace',
  'Wearing_Necktie',
  'Young',
)

_LABEL_BY_NAME = {name: i + 1 for i, name in enumerate(PART_NAMES)}


def part_label(name: str) -> int:
  """Return the label of a part in CelebAMask-HQ order (background is 0)."""
  try:
    return _LABEL_BY_NAME[name]
  except (KeyError, TypeError):
    raise ValueError(
      f'unknown face part {name!r}; valid part names: {", ".join(PART_NAMES)}'
    ) from None


@dataclass(frozen=True)
class AttributeRegion:
  """Parts an attribute lives in, optionally with a band of a base part.

  The region is the union of ``parts``. When ``near`` is
  ``(base_part, anchor_parts, radius)``, it also contains every pixel of
  ``base_part`` whose centre lies within ``radius`` of a pixel centre of one of
  ``anchor_parts``. ``radius`` is a fraction of the longer image side, so the
  region scales with the image.
  """

  parts: tuple[str, ...]
  near: tuple[str, tuple[str, ...], float] | None = None

  def __post_init__(self):
    parts = (self.parts,) if isinstance(self.parts, str) else self.parts
    parts = tuple(parts)
    for name in parts:
      part_label(name)
    object.__setattr__(self, 'parts', parts)

    if self.near is None:
      return
    base, anchors, radius = self.near
    anchors = (anchors,) if isinstance(anchors, str) else tuple(anchors)
    part_label(base)
    if not anchors:
      raise ValueError('AttributeRegion.near needs at least one anchor part')
    for name in anchors:
      part_label(name)
    radius = float(radius)
    if not radius > 0:
      raise ValueError(
        f'AttributeRegion.near radius must be positive, got {radius}'
      )
    object.__setattr__(self, 'near', (base, anchors, radius))


_MOUTH_PARTS = ('mouth', 'u_lip', 'l_lip')
_LIPS = ('u_lip', 'l_lip')
_EYES = ('l_eye', 'r_eye')
_BROWS = ('l_brow', 'r_brow')
_EARS = ('l_ear', 'r_ear')

# Width of the skin band around the mouth or the eyes, as a fraction of the
# image side.
_SKIN_BAND_RADIUS = 0.06
# Beards and moustaches reach from the lips to the chin, so their skin band
# is wider.
_BEARD_SKIN_RADIUS = 0.14

_HAIR_REGION = AttributeRegion(parts=('hair',))
_MOUTH_REGION = AttributeRegion(
  parts=_MOUTH_PARTS, near=('skin', _MOUTH_PARTS, _SKIN_BAND_RADIUS)
)
_BEARD_REGION = AttributeRegion(
  parts=_LIPS, near=('skin', _MOUTH_PARTS, _BEARD_SKIN_RADIUS)
)

# Attributes that have no entry, such as Young or Attractive, are global and
# have no region. Keyed by attribute name so that a data set can add entries.
ATTRIBUTE_REGIONS: dict[str, AttributeRegion] = {
  '5_o_Clock_Shadow': _BEARD_REGION,
  'Arched_Eyebrows': AttributeRegion(parts=_BROWS),
  'Bags_Under_Eyes': AttributeRegion(
    parts=_EYES, near=('skin', _EYES, _SKIN_BAND_RADIUS)
  ),
  'Bangs': _HAIR_REGION,
  'Big_Lips': AttributeRegion(parts=_MOUTH_PARTS),
  'Big_Nose': AttributeRegion(parts=('nose',)),
  'Black_Hair': _HAIR_REGION,
  'Blond_Hair': _HAIR_REGION,
  'Brown_Hair': _HAIR_REGION,
  'Bushy_Eyebrows': AttributeRegion(parts=_BROWS),
  'Eyeglasses': AttributeRegion(parts=('eye_g',) + _EYES + _BROWS),
  'Goatee': _BEARD_REGION,
  'Gray_Hair': _HAIR_REGION,
  'Male': _BEARD_REGION,
  'Mouth_Slightly_Open': _MOUTH_REGION,
  'Mustache': _BEARD_REGION,
  'Narrow_Eyes': AttributeRegion(parts=_EYES),
  'No_Beard': _BEARD_REGION,
  'Pale_Skin': AttributeRegion(parts=('skin', 'nose') + _EARS + ('neck',)),
  'Pointy_Nose': AttributeRegion(parts=('nose',)),
  'Smiling': _MOUTH_REGION,
  'Straight_Hair': _HAIR_REGION,
  'Wavy_Hair': _HAIR_REGION,
  'Wearing_Earrings': AttributeRegion(parts=('ear_r',) + _EARS),
  'Wearing_Hat': AttributeRegion(parts=('hat', 'hair')),
  'Wearing_Lipstick': AttributeRegion(parts=_LIPS),
  'Wearing_Necklace': AttributeRegion(parts=('neck_l', 'neck')),
  'Wearing_Necktie': AttributeRegion(parts=('cloth',)),
}

# CelebA has no part maps, so its label maps contain only the eyes, the nose
# and the mouth drawn from its five landmarks (`cganjax.data.celeba`).
# Attributes whose region needs other parts (hair colours, hats, glasses,
# brows, beards) have no entry here and train on CelebA only under
# whole-image or free-form masks.
_CELEBA_MOUTH = AttributeRegion(parts=('mouth',))
_CELEBA_EYES = AttributeRegion(parts=_EYES)
_CELEBA_NOSE = AttributeRegion(parts=('nose',))
CELEBA_LANDMARK_REGIONS: dict[str, AttributeRegion] = {
  'Bags_Under_Eyes': _CELEBA_EYES,
  'Big_Lips': _CELEBA_MOUTH,
  'Big_Nose': _CELEBA_NOSE,
  'Mouth_Slightly_Open': _CELEBA_MOUTH,
  'Narrow_Eyes': _CELEBA_EYES,
  'Pointy_Nose': _CELEBA_NOSE,
  'Smiling': _CELEBA_MOUTH,
  'Wearing_Lipstick': _CELEBA_MOUTH,
}

# The region table of each data set: the part maps of the synthetic set and
# CelebAMask-HQ have every part, CelebA's only the landmark parts.
DATASET_REGIONS: dict[str, dict[str, AttributeRegion]] = {
  'synthetic': ATTRIBUTE_REGIONS,
  'celebamask_hq': ATTRIBUTE_REGIONS,
  'celeba': CELEBA_LANDMARK_REGIONS,
}


def dataset_regions(name: str) -> dict[str, AttributeRegion]:
  """Return the attribute-to-region table of the data set `name`."""
  try:
    return DATASET_REGIONS[name]
  except KeyError:
    raise ValueError(
      f'no region table for data set {name!r}; known data sets: '
      f'{", ".join(sorted(DATASET_REGIONS))}'
    ) from None


# Groups of attributes of which at most one is true for any face.
EXCLUSIVE_GROUPS = (('Black_Hair', 'Blond_Hair', 'Brown_Hair', 'Gray_Hair'),)


def _check_label_map(label_map) -> np.ndarray:
  label_map = np.asarray(label_map)
  if label_map.ndim != 2:
    raise ValueError(
      f'label map must be 2-D [height, width], got shape {label_map.shape}'
    )
  if not np.issubdtype(label_map.dtype, np.integer):
    raise ValueError(
      f'label map must have an integer dtype, got {label_map.dtype}'
    )
  return label_map


def _disc_half_widths(radius: float) -> np.ndarray:
  """Return, for each row offset dy in [-R, R], the largest dx in the disc.

  R is floor(radius). Offsets (dy, dx) belong to the disc when
  dx**2 + dy**2 <= radius**2, checked in integers where radius**2 allows it.
  """
  reach = int(np.floor(radius))
  squared = radius * radius
  dy = np.arange(-reach, reach + 1)
  half = np.floor(np.sqrt(np.maximum(squared - dy * dy, 0.0))).astype(np.int64)
  # Correct the float square root where it lands one off an exact square.
  half = np.where((half + 1) ** 2 + dy * dy <= squared, half + 1, half)
  half = np.where(half**2 + dy * dy > squared, half - 1, half)
  return half


def dilate_disc(mask, radius_px: float) -> np.ndarray:
  """Dilate a 2-D boolean mask by a disc of ``radius_px`` pixels.

  A pixel is set when some set pixel of ``mask`` lies at an offset (dy, dx)
  with dx**2 + dy**2 <= radius_px**2. Radius 0 returns a copy of the mask.
  The disc is split into rows: each row offset is a horizontal dilation,
  computed from prefix sums, shifted vertically, so the cost is
  O(radius_px * area) inside the bounding box of the set pixels.
  """
  mask = np.asarray(mask, dtype=bool)
  if mask.ndim != 2:
    raise ValueError(f'mask must be 2-D, got shape {mask.shape}')
  radius_px = float(radius_px)
  if not radius_px >= 0:
    raise ValueError(f'radius_px must be >= 0, got {radius_px}')

  out = np.zeros_like(mask)
  rows = np.flatnonzero(mask.any(axis=1))
  if rows.size == 0:
    return out
  cols = np.flatnonzero(mask.any(axis=0))
  reach = int(np.floor(radius_px))
  height, width = mask.shape

  # Work in the bounding box of the set pixels grown by the reach, because
  # nothing outside it can be set.
  top = max(rows[0] - reach, 0)
  bottom = min(rows[-1] + reach + 1, height)
  left = max(cols[0] - reach, 0)
  right = min(cols[-1] + reach + 1, width)
  box = mask[top:bottom, left:right]
  box_height, box_width = box.shape

  prefix = np.zeros((box_height, box_width + 1), dtype=np.int32)
  np.cumsum(box, axis=1, out=prefix[:, 1:])
  x = np.arange(box_width)
  horizontal = {}
  result = np.zeros_like(box)
  half_widths = _disc_half_widths(radius_px)
  for dy, half in zip(range(-reach, reach + 1), half_widths, strict=True):
    if half not in horizontal:
      high = np.minimum(x + half + 1, box_width)
      low = np.maximum(x - half, 0)
      horizontal[half] = (prefix[:, high] - prefix[:, low]) > 0
    row_dilated = horizontal[half]
    # A set pixel at row r marks row r + dy.
    if dy >= 0:
      result[dy:] |= row_dilated[: box_height - dy]
    else:
      result[:dy] |= row_dilated[-dy:]
  out[top:bottom, left:right] = result
  return out


def near_radius_px(radius: float, shape: Sequence[int]) -> float:
  """Convert a radius in fractions of the longer image side to pixels."""
  return float(radius) * max(shape)


def parts_mask(label_map, part_names: str | Iterable[str]) -> np.ndarray:
  """Return a boolean mask of the pixels labelled with any of the parts."""
  label_map = _check_label_map(label_map)
  if isinstance(part_names, str):
    part_names = (part_names,)
  labels = [part_label(name) for name in part_names]
  return np.isin(label_map, labels)


def attribute_mask(
  label_map,
  attribute: str,
  *,
  regions: Mapping[str, AttributeRegion] | None = None,
) -> np.ndarray:
  """Compute the boolean [H, W] region of ``attribute`` on a label map.

  ``regions`` defaults to ``ATTRIBUTE_REGIONS``. Raises ValueError when the
  attribute has no region there.
  """
  label_map = _check_label_map(label_map)
  if regions is None:
    regions = ATTRIBUTE_REGIONS
  region = regions.get(attribute)
  if region is None:
    raise ValueError(
      f'attribute {attribute!r} has no region; attributes with a region: '
      f'{", ".join(sorted(regions))}'
    )

  mask = parts_mask(label_map, region.parts)
  if region.near is not None:
    base, anchors, radius = region.near
    anchor_mask = parts_mask(label_map, anchors)
    grown = dilate_disc(anchor_mask, near_radius_px(radius, label_map.shape))
    mask |= grown & (label_map == part_label(base))
  return mask


def attribute_masks(
  label_map,
  attributes: Sequence[str],
  *,
  regions: Mapping[str, AttributeRegion] | None = None,
) -> np.ndarray:
  """Stack the regions of several attributes into a bool [A, H, W] array."""
  label_map = _check_label_map(label_map)
  masks = [
    attribute_mask(label_map, name, regions=regions) for name in attributes
  ]
  if not masks:
    return np.zeros((0,) + label_map.shape, dtype=bool)
  return np.stack(masks)
