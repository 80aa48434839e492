"""Procedural synthetic faces with attributes and part label maps, in numpy.

Each example is a pure function of ``(seed, index, size, overrides)``. Every
face has skin, neck, shirt, ears, eyes, brows, nose, lips and hair. Its
attributes (``SYNTHETIC_ATTRIBUTES``) add or change parts: a hat, glasses,
bangs, a beard and moustache for Male, a smile, an open mouth, a hair colour,
a pale skin tone, earrings and a necklace. Position, scale, roll, yaw-like
pose, lighting, colours and pixel noise vary per example.

Counterfactuals are exact. ``render(..., overrides={'Smiling': True})`` draws
the same face with Smiling set, and its image and label map equal the
original's, bit for bit, outside the union of the changed attributes' regions
(``parts.attribute_mask``) on the two label maps. Three rules make that hold:

- All random numbers are drawn in one fixed order that does not depend on the
  attribute values, so a changed attribute changes no other draw.
- Each attribute changes materials only inside its own shapes, and those
  shapes put the changed pixel centres into the attribute's region.
- Anti-aliasing uses 3x3 sub-samples per pixel, and the centre sub-sample
  gives the label. A sub-sample counts only when every attribute that can
  change it has the pixel in its region. Otherwise it takes the centre
  sub-sample's colour, so that a change cannot bleed into a neighbouring
  pixel outside the region. Edges between parts that different attributes
  change, such as hair and skin, are therefore aliased.

Part names follow the CelebAMask-HQ label order in ``cganjax.data.parts``.
Parts named ``l_`` lie on the image's left. NOTE: whether CelebAMask-HQ means
the image's left or the person's left by ``l_`` is not verified here.
"""

import math
import operator
from collections.abc import Mapping, Sequence

import numpy as np

from cganjax.data import parts

MIN_SIZE = 32
MAX_SIZE = 256

_DRAWN_ATTRIBUTES = frozenset(
  {
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
    'Wearing_Earrings',
    'Wearing_Hat',
    'Wearing_Necklace',
  }
)

# The attributes of the synthetic set, in CelebA order.
SYNTHETIC_ATTRIBUTES = tuple(
  name for name in parts.CELEBA_ATTRIBUTES if name in _DRAWN_ATTRIBUTES
)
_ATTRIBUTE_INDEX = {name: i for i, name in enumerate(SYNTHETIC_ATTRIBUTES)}
_BIT = {name: np.uint16(1 << i) for i, name in enumerate(SYNTHETIC_ATTRIBUTES)}

# Probability that each independent binary attribute is true.
_PROBABILITIES = {
  'Bangs': 0.4,
  'Eyeglasses': 0.4,
  'Male': 0.5,
  'Mouth_Slightly_Open': 0.45,
  'Pale_Skin': 0.4,
  'Smiling': 0.5,
  'Wearing_Earrings': 0.35,
  'Wearing_Hat': 0.3,
  'Wearing_Necklace': 0.35,
}
_BINARY_ATTRIBUTES = tuple(sorted(_PROBABILITIES))

# Hair colour classes and their probabilities. A face whose hair matches none
# of the four has auburn hair.
_HAIR_CLASSES = ('Black_Hair', 'Blond_Hair', 'Brown_Hair', 'Gray_Hair')
_HAIR_PROBABILITIES = (0.22, 0.2, 0.22, 0.14)
# Hair colours before per-face jitter, strands and lighting.
HAIR_COLOURS = {
  'Black_Hair': (28.0, 24.0, 24.0),
  'Blond_Hair': (222.0, 192.0, 125.0),
  'Brown_Hair': (80.0, 46.0, 22.0),
  'Gray_Hair': (168.0, 168.0, 170.0),
}
_OTHER_HAIR_COLOUR = (165.0, 58.0, 28.0)

_SUBSAMPLES = 3  # Sub-samples per pixel side, odd so one is the pixel centre.

# Materials: what a sub-sample shows. Each belongs to one part label.
(
  _BACKGROUND,
  _SKIN,
  _BEARD,
  _NOSE,
  _NOSTRIL,
  _FRAME,
  _SCLERA,
  _IRIS,
  _PUPIL,
  _BROW,
  _EAR,
  _MOUTH_INSIDE,
  _TEETH,
  _UPPER_LIP,
  _LOWER_LIP,
  _HAIR,
  _HAT,
  _HAT_BAND,
  _EARRING,
  _NECKLACE,
  _NECK,
  _CLOTH,
  _CREASE,
) = range(23)
_NUM_MATERIALS = 23

_LABEL = {name: parts.part_label(name) for name in parts.PART_NAMES}
_MATERIAL_BY_LABEL = np.array(
  [
    _BACKGROUND,
    _SKIN,
    _NOSE,
    _FRAME,
    _SCLERA,
    _SCLERA,
    _BROW,
    _BROW,
    _EAR,
    _EAR,
    _MOUTH_INSIDE,
    _UPPER_LIP,
    _LOWER_LIP,
    _HAIR,
    _HAT,
    _EARRING,
    _NECKLACE,
    _NECK,
    _CLOTH,
  ],
  dtype=np.uint8,
)
_SKIN_TONED_LABELS = [_LABEL[n] for n in ('skin', 'nose', 'l_ear', 'r_ear')]
_SKIN_TONED_LABELS.append(_LABEL['neck'])
_MOUTH_PARTS = ('mouth', 'u_lip', 'l_lip')

# Number of uniform draws per example. Parameters take them in order, and new
# parameters go at the end so that existing examples keep their look.
_NUM_UNIFORMS = 96


class _Uniforms:
  """Hands out one example's uniform draws in a fixed order."""

  def __init__(self, rng: np.random.Generator):
    self._values = rng.random(_NUM_UNIFORMS)
    self._next = 0

  def take(self, low: float = 0.0, high: float = 1.0) -> float:
    if self._next >= _NUM_UNIFORMS:
      raise RuntimeError(
        'the synthetic face takes more than _NUM_UNIFORMS uniform draws; '
        'increase _NUM_UNIFORMS'
      )
    value = self._values[self._next]
    self._next += 1
    return float(low + (high - low) * value)

  def colour(self, low: float, high: float) -> np.ndarray:
    return np.array([self.take(low, high) for _ in range(3)], np.float32)


def _check_size(size) -> int:
  try:
    size = operator.index(size)
  except TypeError:
    raise ValueError(
      f'size must be an integer from {MIN_SIZE} to {MAX_SIZE}, got {size!r}'
    ) from None
  if not MIN_SIZE <= size <= MAX_SIZE:
    raise ValueError(
      f'size must be an integer from {MIN_SIZE} to {MAX_SIZE}, got {size}'
    )
  return size


def _check_non_negative(name: str, value) -> int:
  try:
    value = operator.index(value)
  except TypeError:
    raise ValueError(
      f'{name} must be a non-negative integer, got {value!r}'
    ) from None
  if value < 0:
    raise ValueError(f'{name} must be a non-negative integer, got {value}')
  return value


def _resolve_attributes(
  drawn: dict[str, bool], overrides: Mapping[str, bool] | None
) -> dict[str, bool]:
  """Apply overrides to the drawn attributes.

  Setting one hair colour true sets the other three false. Setting two hair
  colours true in one call raises ValueError. Setting the current hair colour
  false leaves none of the four, which renders as auburn hair.
  """
  values = dict(drawn)
  if not overrides:
    return values

  for name, value in overrides.items():
    if name not in _ATTRIBUTE_INDEX:
      raise ValueError(
        f'unknown attribute {name!r} in overrides; valid names: '
        f'{", ".join(SYNTHETIC_ATTRIBUTES)}'
      )
    if not isinstance(value, bool | np.bool_):
      raise ValueError(
        f'override for {name!r} must be a bool, got {type(value).__name__}'
      )

  for group in parts.EXCLUSIVE_GROUPS:
    chosen = [name for name in group if bool(overrides.get(name, False))]
    if len(chosen) > 1:
      raise ValueError(
        f'overrides set {", ".join(chosen)} true, but at most one of '
        f'{", ".join(group)} can be true'
      )
    if chosen:
      for name in group:
        values[name] = False

  for name, value in overrides.items():
    values[name] = bool(value)
  return values


def _draw_attributes(uniforms: _Uniforms) -> dict[str, bool]:
  values = {}
  for name in _BINARY_ATTRIBUTES:
    values[name] = uniforms.take() < _PROBABILITIES[name]
  hair_draw = uniforms.take()
  threshold = 0.0
  for name, probability in zip(_HAIR_CLASSES, _HAIR_PROBABILITIES, strict=True):
    values[name] = threshold <= hair_draw < threshold + probability
    threshold += probability
  return values


def _muted(colour: np.ndarray) -> np.ndarray:
  """Move a colour 40% of the way to its grey, for calmer backgrounds."""
  return colour + np.float32(0.4) * (colour.mean() - colour)


class _Face:
  """Shape and colour parameters of one face, in face coordinates.

  Face coordinates have the origin at the face centre, y pointing down and
  one unit equal to the image side at scale 1. ``k`` scales them into the
  image and ``roll`` rotates them.
  """

  def __init__(self, u: _Uniforms):
    # Placement in the image, as fractions of the image side.
    self.cx = u.take(0.45, 0.55)
    self.cy = u.take(0.43, 0.5)
    self.k = u.take(0.86, 1.04)
    self.roll = math.radians(u.take(-5.0, 5.0))
    self.pose = u.take(-1.0, 1.0)
    self.lighting = u.take(-1.0, 1.0)
    self.brightness = u.take(0.9, 1.08)

    # Head and features.
    self.a = u.take(0.215, 0.245)
    self.b = u.take(0.285, 0.315)
    self.chin = u.take(0.1, 0.22)
    self.eye_x = u.take(0.085, 0.1)
    self.eye_y = u.take(-0.04, -0.02)
    self.eye_w = u.take(0.04, 0.05)
    self.eye_h = u.take(0.017, 0.024)
    self.gaze = u.take(-1.0, 1.0)
    self.brow_gap = u.take(0.065, 0.08)
    self.brow_w = u.take(0.045, 0.056)
    self.brow_arch = u.take(0.004, 0.014)
    self.brow_t = u.take(0.018, 0.028)
    self.nose_bottom = u.take(0.065, 0.085)
    self.nose_w = u.take(0.026, 0.036)
    self.mouth_y = u.take(0.16, 0.18)
    self.mouth_w = u.take(0.072, 0.088)
    self.upper_lip_t = u.take(0.02, 0.026)
    self.lower_lip_t = u.take(0.025, 0.033)
    self.mouth_open = u.take(0.022, 0.03)
    self.mouth_curve = u.take(-0.004, 0.006)
    self.ear_y = u.take(-0.04, 0.0)
    self.ear_w = u.take(0.032, 0.04)
    self.ear_h = u.take(0.055, 0.07)
    self.neck_w = u.take(0.09, 0.115)

    # Hair.
    self.hair_side_top = u.take(0.03, 0.07)
    self.hair_side_low = u.take(0.0, 0.03)
    self.hair_volume = u.take(0.02, 0.06)
    self.hair_end = u.take(-0.02, 0.6)
    self.hairline = u.take(-0.26, -0.22)
    self.bangs_bottom = u.take(-0.16, -0.14)
    self.bangs_phase = u.take(0.0, 2 * math.pi)
    self.bangs_freq = u.take(35.0, 60.0)

    # Hat, glasses, beard, jewellery and shirt.
    self.brim_y = u.take(-0.23, -0.2)
    self.crown_h = u.take(0.15, 0.2)
    self.brim_w = u.take(0.05, 0.11)
    self.glasses_w = u.take(0.064, 0.074)
    self.glasses_h = u.take(0.044, 0.054)
    self.glasses_power = u.take(2.0, 4.5)
    self.frame_t = u.take(0.016, 0.024)
    self.beard_style = u.take()
    self.earring_style = u.take()
    self.necklace_y = u.take(0.325, 0.35)
    self.necklace_drop = u.take(0.03, 0.05)
    self.pendant = u.take()
    self.shoulder_y = u.take(0.4, 0.45)
    self.neckline_style = u.take()
    self.neckline_depth = u.take(0.06, 0.12)

    # Colours.
    self.skin_tone = u.take(0.08, 1.0)
    self.pale_jitter = u.take(-6.0, 6.0)
    self.beard_tone = u.take()
    self.lip_colour = np.array(
      [u.take(140, 190), u.take(35, 70), u.take(50, 80)], np.float32
    )
    self.iris_choice = u.take()
    self.brow_colour = u.colour(0.0, 1.0)
    self.hair_jitter = u.colour(-10.0, 10.0)
    self.hat_choice = u.take()
    self.hat_jitter = u.colour(-15.0, 15.0)
    self.frame_choice = u.take()
    self.metal_choice = u.take()
    self.cloth_colour = u.colour(30.0, 220.0)
    self.background = (
      _muted(u.colour(40.0, 230.0)),
      _muted(u.colour(40.0, 230.0)),
    )
    self.background_angle = u.take(0.0, 2 * math.pi)
    self.noise_sigma = u.take(1.5, 5.0)

    # Features shift sideways with the yaw-like pose, the nose a bit more.
    self.shift = 0.035 * self.pose
    self.nose_x = 1.4 * self.shift
    self.mouth_x = 1.2 * self.shift


class _Canvas:
  """Sub-sample grid of one image with face coordinates and the layers.

  ``layers[label]`` lists the (window, mask) pairs of one part. The label map
  is built from them in label order, so later parts cover earlier ones.
  """

  def __init__(self, face: _Face, size: int):
    self.face = face
    self.size = size
    self.side = size * _SUBSAMPLES
    positions = (np.arange(self.side, dtype=np.float32) + 0.5) / self.side
    self.dx = positions - np.float32(face.cx)
    self.dy = positions - np.float32(face.cy)
    self.cos = np.float32(math.cos(face.roll))
    self.sin = np.float32(math.sin(face.roll))
    inverse_k = np.float32(1.0 / face.k)
    self.x = (self.cos * self.dx[None, :] + self.sin * self.dy[:, None]) * (
      inverse_k
    )
    self.y = (self.cos * self.dy[:, None] - self.sin * self.dx[None, :]) * (
      inverse_k
    )
    # Unrotated coordinates for the neck and shirt, which do not roll.
    self.body_x = self.dx * inverse_k
    self.body_y = self.dy * inverse_k
    # One output pixel in face units, for minimum thicknesses.
    self.pixel = 1.0 / (size * face.k)
    self.layers = {label: [] for label in range(1, parts.NUM_CLASSES)}
    self.full = (slice(None), slice(None))

  def window(
    self, x: float, y: float, half_w: float, half_h: float
  ) -> tuple[slice, slice]:
    """Return the sub-sample slices that cover a face-coordinate rectangle."""
    face = self.face
    cos, sin = float(self.cos), float(self.sin)
    centre_x = face.cx + face.k * (cos * x - sin * y)
    centre_y = face.cy + face.k * (sin * x + cos * y)
    reach_x = face.k * (abs(cos) * half_w + abs(sin) * half_h)
    reach_y = face.k * (abs(sin) * half_w + abs(cos) * half_h)
    return (
      self._span(centre_y, reach_y),
      self._span(centre_x, reach_x),
    )

  def _span(self, centre: float, reach: float) -> slice:
    low = math.floor((centre - reach) * self.side - 0.5)
    high = math.ceil((centre + reach) * self.side - 0.5) + 1
    return slice(min(max(low, 0), self.side), min(max(high, 0), self.side))

  def coords(self, window) -> tuple[np.ndarray, np.ndarray]:
    return self.x[window], self.y[window]

  def body_window(
    self, half_w: float, top: float, bottom: float
  ) -> tuple[slice, slice]:
    """Return the sub-sample slices of an unrotated body rectangle.

    The rectangle spans ``|body_x| < half_w`` and ``top < body_y < bottom``.
    """
    face = self.face
    middle = (top + bottom) / 2
    rows = self._span(face.cy + face.k * middle, face.k * (bottom - top) / 2)
    return rows, self._span(face.cx, face.k * half_w)

  def body_coords(self, window) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = window
    return self.body_x[None, cols], self.body_y[rows, None]

  def add(self, part: str, window, mask: np.ndarray) -> None:
    self.layers[_LABEL[part]].append((window, mask))


def _thickness(value: float, pixels: float, canvas: _Canvas) -> float:
  return max(value, pixels * canvas.pixel)


def _face_mask(face: _Face, x: np.ndarray, y: np.ndarray) -> np.ndarray:
  narrowing = 1.0 - face.chin * np.clip(y / face.b, 0.0, 1.0)
  return (x / (face.a * narrowing)) ** 2 + (y / face.b) ** 2 <= 1.0


def _hairline(face: _Face, x: np.ndarray) -> np.ndarray:
  return face.hairline + 0.09 * (x / face.a) ** 2


def _brow_top(face: _Face, canvas: _Canvas) -> float:
  thickness = _thickness(face.brow_t, 1.1, canvas)
  return face.eye_y - face.brow_gap - face.brow_arch - thickness / 2


def _bangs_mask(face, canvas, x, y, face_mask) -> np.ndarray:
  wave = 0.012 * np.sin(face.bangs_freq * x + face.bangs_phase)
  bottom = np.minimum(face.bangs_bottom + wave, _brow_top(face, canvas) - 0.012)
  return face_mask & (y < bottom)


def _hair_mask(face: _Face, x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """Return the hair outline before the face is cut out of it."""
  centre_y = -0.03
  top = -(face.b + face.hair_volume)
  width_top = face.a + face.hair_side_top
  width_low = face.a + face.hair_side_low
  dome = (x / width_top) ** 2 + ((y - centre_y) / (centre_y - top)) ** 2 <= 1.0
  blend = np.clip((y - centre_y) / 0.08, 0.0, 1.0)
  width = width_top + (width_low - width_top) * blend
  end = face.hair_end + 0.04 * (x / width_top) ** 2
  sides = (y > centre_y) & (np.abs(x) < width) & (y < end)
  return (dome & (y <= centre_y)) | sides


def _mouth_state(face: _Face, canvas: _Canvas, smiling: bool, open_: bool):
  """Return the mouth geometry of one (Smiling, Mouth_Slightly_Open) state."""
  width = face.mouth_w * (1.35 if smiling else 1.0)
  curve = 0.04 if smiling else face.mouth_curve
  upper_t = _thickness(face.upper_lip_t, 1.0, canvas)
  lower_t = _thickness(face.lower_lip_t, 1.0, canvas)
  if open_:
    opening = _thickness(
      face.mouth_open * (1.15 if smiling else 1.0), 1.0, canvas
    )
  else:
    opening = 0.0
  if smiling:
    open_up, open_down = 0.7 * opening, 1.3 * opening
  else:
    open_up, open_down = opening, opening
  return width, curve, upper_t, lower_t, open_up, open_down


def _mouth_masks(face, canvas, x, y, smiling: bool, open_: bool):
  """Return the masks of one mouth state.

  The masks are the open mouth, the upper and lower lips, the teeth inside
  the open mouth, and the dark line along the lower edge of the upper lip
  that shows where closed lips meet.
  """
  width, curve, upper_t, lower_t, open_up, open_down = _mouth_state(
    face, canvas, smiling, open_
  )
  u = (x - face.mouth_x) / width
  within = np.abs(u) < 1.0
  envelope = np.sqrt(np.maximum(1.0 - u * u, 0.0))
  offset = y - (face.mouth_y - curve * u * u)
  top = -open_up * envelope
  bottom = open_down * envelope
  if open_:
    inside = within & (offset > top) & (offset < bottom)
  else:
    inside = np.zeros_like(within)
  upper = within & (offset > top - upper_t * envelope) & (offset <= top)
  lower = within & (offset >= bottom) & (offset < bottom + lower_t * envelope)
  teeth_share = 0.55 if smiling else 0.3
  teeth_edge = top + teeth_share * (bottom - top)
  teeth = inside & (offset < teeth_edge) & (np.abs(u) < 0.85)
  if open_:
    line = np.zeros_like(within)
  else:
    line = upper & (offset > -_thickness(0.005, 0.34, canvas))
  return inside, upper, lower, teeth, line


def _mouth_window(face: _Face, canvas: _Canvas):
  return canvas.window(face.mouth_x, face.mouth_y, face.mouth_w * 1.4, 0.12)


def _mouth_core(face: _Face, canvas: _Canvas) -> np.ndarray:
  """Return the pixels that are mouth or lips in all four mouth states.

  These pixel centres are anchors of the mouth regions whatever Smiling and
  Mouth_Slightly_Open are, so a disc around them lies inside those regions.
  """
  rows, cols = _mouth_window(face, canvas)
  pixel_rows = slice(rows.start // _SUBSAMPLES, -(-rows.stop // _SUBSAMPLES))
  pixel_cols = slice(cols.start // _SUBSAMPLES, -(-cols.stop // _SUBSAMPLES))
  centre = _SUBSAMPLES // 2
  x = canvas.x[centre::_SUBSAMPLES, centre::_SUBSAMPLES][pixel_rows, pixel_cols]
  y = canvas.y[centre::_SUBSAMPLES, centre::_SUBSAMPLES][pixel_rows, pixel_cols]
  core = np.ones(x.shape, dtype=bool)
  for smiling in (False, True):
    for open_ in (False, True):
      masks = _mouth_masks(face, canvas, x, y, smiling, open_)
      core &= masks[0] | masks[1] | masks[2]
  full = np.zeros((canvas.size, canvas.size), dtype=bool)
  full[pixel_rows, pixel_cols] = core
  return full


def _pixel_to_subsample(mask: np.ndarray, window) -> np.ndarray:
  rows, cols = window
  row_index = np.arange(rows.start, rows.stop) // _SUBSAMPLES
  col_index = np.arange(cols.start, cols.stop) // _SUBSAMPLES
  return mask[row_index[:, None], col_index[None, :]]


def _mouth_radius(attribute: str) -> float | None:
  """Return the skin radius of a region anchored on the whole mouth, if any."""
  region = parts.ATTRIBUTE_REGIONS.get(attribute)
  if region is None or region.near is None:
    return None
  base, anchors, radius = region.near
  if base != 'skin' or not set(_MOUTH_PARTS) <= set(anchors):
    return None
  return radius


class _Scene:
  """Label, material and sensitivity maps on the sub-sample grid."""

  def __init__(self, canvas: _Canvas):
    side = canvas.side
    self.canvas = canvas
    self.labels = np.zeros((side, side), dtype=np.uint8)
    # Sub-materials that replace the label's default material.
    self.materials = []
    # Bit i is set where SYNTHETIC_ATTRIBUTES[i] can change the sub-sample.
    self.sensitivity = np.zeros((side, side), dtype=np.uint16)

  def sensitive(self, attribute: str, window, mask: np.ndarray) -> None:
    self.sensitivity[window] |= _BIT[attribute] * mask.astype(np.uint16)


def _build_ears(face, canvas, scene, values, face_mask) -> None:
  """Add the ears, showing only their part outside the face, and earrings."""
  for part, side in (('l_ear', -1.0), ('r_ear', 1.0)):
    ear_x = side * (face.a - 0.004) - 0.6 * face.shift
    window = canvas.window(ear_x, face.ear_y, face.ear_w, face.ear_h)
    ex, ey = canvas.coords(window)
    ear = ((ex - ear_x) / face.ear_w) ** 2 + (
      (ey - face.ear_y) / face.ear_h
    ) ** 2
    canvas.add(part, window, (ear <= 1.0) & ~face_mask[window])

    radius = _thickness(0.02, 1.2, canvas)
    ring = face.earring_style < 0.5
    if ring:
      radius = _thickness(0.03, 1.8, canvas)
    centre_x = ear_x + side * 0.006
    centre_y = face.ear_y + face.ear_h + 0.6 * radius
    window = canvas.window(centre_x, centre_y, radius, radius)
    ex, ey = canvas.coords(window)
    distance = np.sqrt((ex - centre_x) ** 2 + (ey - centre_y) ** 2)
    earring = distance <= radius
    if ring:
      earring &= distance >= radius - _thickness(0.01, 1.0, canvas)
    scene.sensitive('Wearing_Earrings', window, earring)
    if values['Wearing_Earrings']:
      canvas.add('ear_r', window, earring)


def _build_hair(face, canvas, scene, values, face_mask) -> None:
  """Add the hair, bangs and the hat.

  Hair covers the face only above the hairline, and bangs only between the
  hairline and the brows.
  """
  x, y = canvas.x, canvas.y
  hair = _hair_mask(face, x, y) & ~(face_mask & (y > _hairline(face, x)))
  canvas.add('hair', canvas.full, hair)

  top = face.hairline - 0.01
  bottom = _brow_top(face, canvas)
  window = canvas.window(0.0, (top + bottom) / 2, face.a, (bottom - top) / 2)
  bx, by = canvas.coords(window)
  bangs = _bangs_mask(face, canvas, bx, by, face_mask[window])
  scene.sensitive('Bangs', window, bangs)
  if values['Bangs']:
    canvas.add('hair', window, bangs)

  # The brim stays at least 1.2 pixels above the highest point of the bangs'
  # lower edge, so bangs show under a hat at every size.
  brim_h = _thickness(0.022, 1.2, canvas)
  bangs_top = min(face.bangs_bottom, _brow_top(face, canvas)) - 0.012
  brim_y = min(face.brim_y, bangs_top - brim_h - 1.2 * canvas.pixel)
  half_w = face.a + face.brim_w
  window = canvas.window(0.0, brim_y - face.crown_h / 2, half_w, 0.2)
  hx, hy = canvas.coords(window)
  crown = ((hx / (face.a + 0.045)) ** 2) + (
    ((hy - brim_y) / face.crown_h) ** 2
  ) <= 1.0
  crown &= hy <= brim_y
  brim = (hx / half_w) ** 2 + ((hy - brim_y) / brim_h) ** 2 <= 1.0
  hat = crown | brim
  scene.sensitive('Wearing_Hat', window, hat)
  if values['Wearing_Hat']:
    canvas.add('hat', window, hat)
    band = crown & (hy > brim_y - _thickness(0.035, 1.2, canvas))
    scene.materials.append((window, _LABEL['hat'], _HAT_BAND, band))


def _build_body(face, canvas, scene, values, face_mask) -> None:
  """Add the neck, the necklace and the shirt, which do not roll."""
  window = canvas.body_window(face.neck_w, 0.05, 2.0)
  bx, by = canvas.body_coords(window)
  neck = (np.abs(bx) < face.neck_w) & ~face_mask[window]

  chain_t = _thickness(0.014, 1.1, canvas)
  chain_y = face.necklace_y + face.necklace_drop * (1 - (bx / face.neck_w) ** 2)
  necklace = (np.abs(bx) < face.neck_w) & (np.abs(by - chain_y) < chain_t / 2)
  pendant_r = _thickness(0.014, 1.0, canvas) * (1.0 + face.pendant)
  pendant_y = face.necklace_y + face.necklace_drop + chain_t / 2 + pendant_r
  necklace |= bx**2 + (by - pendant_y) ** 2 <= pendant_r**2
  necklace &= ~face_mask[window]
  scene.sensitive('Wearing_Necklace', window, necklace)
  if values['Wearing_Necklace']:
    canvas.add('neck_l', window, necklace)
    neck &= ~necklace
  canvas.add('neck', window, neck)

  window = canvas.body_window(2.0, face.shoulder_y, 2.0)
  bx, by = canvas.body_coords(window)
  slope = np.maximum(np.abs(bx) - 1.3 * face.neck_w, 0.0)
  shirt = by > face.shoulder_y + 0.7 * slope**2
  neckline_w = 0.95 * face.neck_w
  depth = face.neckline_depth
  if face.neckline_style < 0.5:
    cut = (np.abs(bx) < neckline_w) & (
      by < face.shoulder_y + depth * (1 - np.abs(bx) / neckline_w)
    )
  else:
    cut = (bx / neckline_w) ** 2 + ((by - face.shoulder_y) / depth) ** 2 < 1
  canvas.add('cloth', window, shirt & ~cut)


def _build_eyes(face, canvas, scene, values) -> None:
  """Add eyes with iris and pupil, brows and the glasses frame."""
  eye_h = _thickness(face.eye_h, 0.75, canvas)
  eye_w = _thickness(face.eye_w, 1.6, canvas)
  brow_t = _thickness(face.brow_t, 1.1, canvas)
  for side, eye_part, brow_part in (
    (-1.0, 'l_eye', 'l_brow'),
    (1.0, 'r_eye', 'r_brow'),
  ):
    eye_x = side * face.eye_x + face.shift
    window = canvas.window(eye_x, face.eye_y, eye_w, eye_h)
    ex, ey = canvas.coords(window)
    dx = ex - eye_x
    dy = ey - face.eye_y
    eye = (np.abs(dx) < eye_w) & (np.abs(dy) < eye_h * (1 - (dx / eye_w) ** 2))
    canvas.add(eye_part, window, eye)
    iris_r = 0.9 * eye_h
    iris_d2 = (dx - 0.3 * face.gaze * eye_w) ** 2 + dy**2
    label = _LABEL[eye_part]
    scene.materials.append((window, label, _IRIS, iris_d2 <= iris_r**2))
    pupil = iris_d2 <= (0.45 * iris_r) ** 2
    scene.materials.append((window, label, _PUPIL, pupil))

    brow_x = eye_x + side * 0.006
    brow_y = face.eye_y - face.brow_gap
    half_h = face.brow_arch + brow_t
    window = canvas.window(brow_x, brow_y, face.brow_w, half_h)
    bx, by = canvas.coords(window)
    t = (bx - brow_x) / face.brow_w
    centre = brow_y - face.brow_arch * (1 - t * t)
    # Brows thin toward their outer end.
    half_t = brow_t / 2 * (1.0 - 0.35 * (side * t + 1) / 2)
    brow = (np.abs(t) < 1.0) & (np.abs(by - centre) < half_t)
    canvas.add(brow_part, window, brow)

  frame_t = _thickness(face.frame_t, 1.3, canvas)
  frame_y = face.eye_y + 0.004
  temple_y = frame_y - 0.25 * face.glasses_h
  # Wide enough for the temples to reach the face outline at any pose.
  reach = face.eye_x + face.glasses_w + 0.16
  window = canvas.window(face.shift, frame_y, reach, face.glasses_h + frame_t)
  gx, gy = canvas.coords(window)
  power = face.glasses_power
  smaller = min(face.glasses_w, face.glasses_h)
  frame = np.zeros(gx.shape, dtype=bool)
  offset_x = np.abs(gx - face.shift)
  for side in (-1.0, 1.0):
    dx = np.abs(gx - (side * face.eye_x + face.shift)) / face.glasses_w
    dy = np.abs(gy - frame_y) / face.glasses_h
    norm = (dx**power + dy**power) ** (1.0 / power)
    frame |= np.abs(norm - 1.0) * smaller < frame_t / 2
  bar = np.abs(gy - temple_y) < frame_t / 2
  bridge = bar & (offset_x < face.eye_x - face.glasses_w + 0.3 * frame_t)
  inner_end = face.eye_x + face.glasses_w - 0.3 * frame_t
  temples = bar & (offset_x > inner_end) & _face_mask(face, gx, gy)
  frame |= bridge | temples
  scene.sensitive('Eyeglasses', window, frame)
  if values['Eyeglasses']:
    canvas.add('eye_g', window, frame)


def _build_nose(face, canvas, scene) -> None:
  top = face.eye_y + 0.015
  tip_h = _thickness(0.016, 0.8, canvas)
  nose_w = _thickness(face.nose_w, 1.0, canvas)
  half_h = (face.nose_bottom - top) / 2 + tip_h + 0.01
  window = canvas.window(
    face.nose_x, (top + face.nose_bottom) / 2, nose_w + 0.01, half_h
  )
  x, y = canvas.coords(window)
  dx = x - face.nose_x
  along = np.clip((y - top) / (face.nose_bottom - top), 0.0, 1.0)
  half_w = _thickness(0.007, 0.5, canvas) + (nose_w - 0.007) * along**3
  ridge = (y >= top) & (y <= face.nose_bottom) & (np.abs(dx) < half_w)
  tip = (dx / nose_w) ** 2 + ((y - face.nose_bottom) / tip_h) ** 2 <= 1.0
  canvas.add('nose', window, ridge | tip)

  nostril_w = _thickness(0.009, 0.6, canvas)
  nostril_h = _thickness(0.005, 0.45, canvas)
  nostrils = np.zeros(x.shape, dtype=bool)
  for side in (-1.0, 1.0):
    nx = (dx - side * 0.55 * nose_w) / nostril_w
    ny = (y - face.nose_bottom - 0.4 * tip_h) / nostril_h
    nostrils |= nx**2 + ny**2 <= 1.0
  scene.materials.append((window, _LABEL['nose'], _NOSTRIL, nostrils))


def _build_smile_creases(face, canvas, scene, values, mouth_reach) -> None:
  """Add the skin creases beside the mouth corners of a smile.

  They are clipped to Smiling's skin band around the pixels that are mouth
  or lips in every mouth state, so they lie in Smiling's region.
  """
  radius = _mouth_radius('Smiling')
  if radius is None:
    return
  width = _mouth_state(face, canvas, True, False)[0]
  corner_y = face.mouth_y - 0.04
  half_t = _thickness(0.008, 0.7, canvas) / 2
  for side in (-1.0, 1.0):
    corner_x = face.mouth_x + side * width
    window = canvas.window(corner_x + side * 0.02, corner_y, 0.04, 0.045)
    x, y = canvas.coords(window)
    t = (y - corner_y + 0.0025) / 0.0325
    bow = 0.014 + 0.012 * (1.0 - t * t)
    crease = (np.abs(t) < 1.0) & (np.abs(x - corner_x - side * bow) < half_t)
    crease &= _pixel_to_subsample(mouth_reach[radius], window)
    scene.sensitive('Smiling', window, crease)
    if values['Smiling']:
      scene.materials.append((window, _LABEL['skin'], _CREASE, crease))


def _build_mouth(face, canvas, scene, values, mouth_reach) -> None:
  """Add the lips, the open mouth, teeth and the beard."""
  window = _mouth_window(face, canvas)
  x, y = canvas.coords(window)
  smiling = values['Smiling']
  open_ = values['Mouth_Slightly_Open']
  inside, upper, lower, teeth, line = _mouth_masks(
    face, canvas, x, y, smiling, open_
  )
  canvas.add('mouth', window, inside)
  canvas.add('u_lip', window, upper)
  canvas.add('l_lip', window, lower)
  scene.materials.append((window, _LABEL['mouth'], _TEETH, teeth))
  scene.materials.append((window, _LABEL['u_lip'], _MOUTH_INSIDE, line))

  # Both mouth attributes can change any sub-sample of any mouth state.
  reach = np.zeros(x.shape, dtype=bool)
  for smile_state in (False, True):
    for open_state in (False, True):
      masks = _mouth_masks(face, canvas, x, y, smile_state, open_state)
      reach |= masks[0] | masks[1] | masks[2]
  scene.sensitive('Smiling', window, reach)
  scene.sensitive('Mouth_Slightly_Open', window, reach)
  _build_smile_creases(face, canvas, scene, values, mouth_reach)

  # The beard stays within Male's skin radius of the pixels that are mouth
  # or lips in every mouth state, so it lies in Male's region whatever the
  # mouth does.
  radius = _mouth_radius('Male')
  if radius is None:
    raise RuntimeError(
      'the synthetic beard needs a Male region with skin near mouth, u_lip '
      'and l_lip in parts.ATTRIBUTE_REGIONS'
    )
  window = canvas.window(face.mouth_x, face.mouth_y + 0.04, 0.18, 0.17)
  x, y = canvas.coords(window)
  dx = x - face.mouth_x
  moustache_h = _thickness(0.024, 1.5, canvas)
  moustache_y = face.mouth_y - face.upper_lip_t - 0.6 * moustache_h
  beard = (dx / (1.3 * face.mouth_w)) ** 2 + (
    (y - moustache_y) / moustache_h
  ) ** 2 <= 1.0
  if face.beard_style < 0.55:
    full = (dx / 0.155) ** 2 + ((y - face.mouth_y - 0.05) / 0.135) ** 2 <= 1.0
    beard |= full & (y > face.mouth_y - 0.012)
  else:
    goatee_y = face.mouth_y + face.lower_lip_t + 0.05
    beard |= (dx / 0.065) ** 2 + ((y - goatee_y) / 0.07) ** 2 <= 1.0
  beard &= _pixel_to_subsample(mouth_reach[radius], window)
  scene.sensitive('Male', window, beard)
  if values['Male']:
    scene.materials.append((window, _LABEL['skin'], _BEARD, beard))


def _merge_labels(canvas: _Canvas, scene: _Scene) -> None:
  for label in range(1, parts.NUM_CLASSES):
    for window, mask in canvas.layers[label]:
      scene.labels[window][mask] = label


def _materials(scene: _Scene) -> np.ndarray:
  materials = np.take(_MATERIAL_BY_LABEL, scene.labels)
  for window, label, material, mask in scene.materials:
    view = materials[window]
    view[mask & (scene.labels[window] == label)] = material
  return materials


def _add_colour_sensitivity(scene: _Scene) -> None:
  """Mark sub-samples whose colour depends on hair colour or Pale_Skin."""
  by_label = np.zeros(parts.NUM_CLASSES, dtype=np.uint16)
  for name in _HAIR_CLASSES:
    by_label[_LABEL['hair']] |= _BIT[name]
  by_label[_SKIN_TONED_LABELS] |= _BIT['Pale_Skin']
  scene.sensitivity |= np.take(by_label, scene.labels)


def _mouth_reach(core: np.ndarray) -> dict[float, np.ndarray]:
  """Dilate ``core`` by each skin radius of the mouth-anchored regions.

  ``core`` contains the pixels that are mouth or lips in every mouth state, so
  each dilation, restricted to skin, lies inside the region's skin band
  whatever Smiling and Mouth_Slightly_Open are.
  """
  reach = {}
  for name in SYNTHETIC_ATTRIBUTES:
    radius = _mouth_radius(name)
    if radius is not None and radius not in reach:
      radius_px = parts.near_radius_px(radius, core.shape)
      reach[radius] = parts.dilate_disc(core, radius_px)
  return reach


def _covered(label_map: np.ndarray, mouth_reach) -> np.ndarray:
  """Return per pixel the bits of the attributes whose region contains it.

  Part membership comes from the label map. Skin near the mouth counts only
  inside ``mouth_reach``, which does not change when the mouth does, so the
  bits of a pixel change only where its label changes.
  """
  by_label = np.zeros(parts.NUM_CLASSES, dtype=np.uint16)
  for name in SYNTHETIC_ATTRIBUTES:
    region = parts.ATTRIBUTE_REGIONS.get(name)
    if region is None:
      continue
    for part in region.parts:
      by_label[_LABEL[part]] |= _BIT[name]
  covered = np.take(by_label, label_map)

  skin = label_map == _LABEL['skin']
  for name in SYNTHETIC_ATTRIBUTES:
    radius = _mouth_radius(name)
    if radius is not None:
      near = mouth_reach[radius] & skin
      covered |= _BIT[name] * near.astype(np.uint16)
  return covered


_PALE_SKIN = np.array([240.0, 214.0, 196.0])
_LIGHT_SKIN = np.array([200.0, 152.0, 118.0])
_DARK_SKIN = np.array([112.0, 74.0, 54.0])
_BEARDS = ((28, 24, 22), (62, 40, 28), (125, 120, 115))
_FRAMES = (
  (20, 20, 22),
  (70, 40, 25),
  (25, 45, 150),
  (170, 30, 40),
  (30, 110, 60),
  (110, 40, 140),
)
_LIPS = ((150, 30, 45), (215, 105, 125), (110, 30, 50))
_JEWELS = (
  (215, 175, 60),
  (200, 200, 210),
  (190, 30, 50),
  (40, 70, 190),
  (30, 150, 80),
)


def _distance(colour, reference) -> float:
  return float(np.linalg.norm(np.asarray(colour) - np.asarray(reference)))


def _first_distinct(candidates, start: int, references, min_distance: float):
  """Pick a colour that contrasts with every reference colour.

  Returns the first candidate, from index ``start`` on and wrapping around,
  whose RGB distance to each reference is at least ``min_distance``, or the
  candidate farthest from its nearest reference when none is.
  """
  count = len(candidates)
  best, best_distance = None, -1.0
  for offset in range(count):
    candidate = np.asarray(candidates[(start + offset) % count], np.float32)
    nearest = min(_distance(candidate, ref) for ref in references)
    if nearest >= min_distance:
      return candidate
    if nearest > best_distance:
      best, best_distance = candidate, nearest
  return best


def _hair_colour(
  face: _Face, values: dict[str, bool], other_skin
) -> np.ndarray:
  """Return the hair colour of a face, scaled to stand out from its skin.

  The scale depends on the drawn non-pale skin tone and never on Pale_Skin,
  so Pale_Skin does not change hair pixels. A scale is used only when the
  colour stays nearest to its own class colour.
  """
  classes = [HAIR_COLOURS[name] for name in _HAIR_CLASSES]
  classes.append(_OTHER_HAIR_COLOUR)
  own = len(_HAIR_CLASSES)
  for k, name in enumerate(_HAIR_CLASSES):
    if values[name]:
      own = k
  base = np.array(classes[own]) + face.hair_jitter
  centres = np.array(classes)
  for scale in (1.0, 0.8, 1.25, 0.65, 1.45):
    colour = np.clip(base * scale, 0.0, 255.0)
    nearest = np.argmin(((centres - colour) ** 2).sum(axis=1))
    if nearest == own and _distance(colour, other_skin) >= 55.0:
      return colour
  return np.clip(base, 0.0, 255.0)


def _palette(face: _Face, values: dict[str, bool]) -> np.ndarray:
  """Return the RGB colour of each material for one face.

  Hair, lips, beard and glasses take colours that stand out from the face's
  skin. They are chosen from the drawn skin tone, not from Pale_Skin, so they
  do not change when Pale_Skin does.
  """
  palette = np.zeros((_NUM_MATERIALS, 3), dtype=np.float32)
  pale_skin = _PALE_SKIN + face.pale_jitter
  other_skin = _LIGHT_SKIN + (_DARK_SKIN - _LIGHT_SKIN) * face.skin_tone
  skin = pale_skin if values['Pale_Skin'] else other_skin
  both_skins = (pale_skin, other_skin)
  palette[_SKIN] = skin
  palette[_NOSE] = 0.9 * skin
  palette[_NOSTRIL] = 0.5 * skin
  palette[_EAR] = 0.94 * skin
  palette[_NECK] = 0.84 * skin
  palette[_CREASE] = 0.72 * skin
  beard_start = int(face.beard_tone * len(_BEARDS))
  palette[_BEARD] = _first_distinct(_BEARDS, beard_start, both_skins, 60.0)

  palette[_SCLERA] = (232.0, 228.0, 222.0)
  irises = ((95, 60, 35), (50, 35, 25), (70, 110, 150), (80, 110, 70))
  palette[_IRIS] = irises[int(face.iris_choice * len(irises))]
  palette[_PUPIL] = (12.0, 10.0, 10.0)
  palette[_BROW] = (35.0, 25.0, 20.0) + face.brow_colour * (40.0, 28.0, 20.0)
  frame_start = int(face.frame_choice * len(_FRAMES))
  palette[_FRAME] = _first_distinct(_FRAMES, frame_start, both_skins, 90.0)

  palette[_MOUTH_INSIDE] = (55.0, 18.0, 22.0)
  palette[_TEETH] = (235.0, 232.0, 220.0)
  lips = (face.lip_colour,) + _LIPS
  lip = _first_distinct(lips, 0, both_skins + (palette[_BEARD],), 60.0)
  palette[_UPPER_LIP] = lip
  palette[_LOWER_LIP] = np.minimum(lip * 1.1, 255.0)
  palette[_HAIR] = _hair_colour(face, values, other_skin)

  hats = (
    (170, 40, 40),
    (35, 45, 100),
    (200, 180, 140),
    (30, 30, 30),
    (50, 100, 60),
    (225, 225, 225),
  )
  hat = np.array(hats[int(face.hat_choice * len(hats))]) + face.hat_jitter
  palette[_HAT] = np.clip(hat, 0.0, 255.0)
  palette[_HAT_BAND] = 0.5 * palette[_HAT]
  # Jewellery contrasts with the skin and, for earrings, the background.
  jewel_start = int(face.metal_choice * len(_JEWELS))
  earring_background = both_skins + face.background
  palette[_EARRING] = _first_distinct(
    _JEWELS, jewel_start, earring_background, 80.0
  )
  palette[_NECKLACE] = _first_distinct(_JEWELS, jewel_start, both_skins, 80.0)
  palette[_CLOTH] = face.cloth_colour
  palette[_BACKGROUND] = face.background[0]
  return palette


# Shading mode of each material in _shade: 0 none, 1 hair strands, 2 round
# skin shading.
_SHADING = np.zeros(_NUM_MATERIALS, dtype=np.uint8)
_SHADING[_HAIR] = 1
_SHADING[[_SKIN, _NOSE, _EAR, _CREASE]] = 2


def _shade(face: _Face, canvas: _Canvas, materials, palette) -> np.ndarray:
  """Return the sub-sample colours [3, side, side] before lighting.

  Channels come first and are processed one at a time, because numpy
  broadcasts slowly over a length-3 last axis. Hair strands
  and skin shading are evaluated at pixel centres, which is enough for such
  slow patterns and nine times cheaper.
  """
  colours = np.take(np.ascontiguousarray(palette.T), materials, axis=1)

  # Background: a linear gradient between two colours.
  angle = face.background_angle
  along = np.float32(math.cos(angle)) * (canvas.dx[None, :] + face.cx - 0.5)
  along = along + np.float32(math.sin(angle)) * (
    canvas.dy[:, None] + face.cy - 0.5
  )
  gradient = np.clip(0.5 + 0.8 * along, 0.0, 1.0) * (materials == _BACKGROUND)
  step = face.background[1] - face.background[0]

  n = _SUBSAMPLES
  x = canvas.x[n // 2 :: n, n // 2 :: n]
  y = canvas.y[n // 2 :: n, n // 2 :: n]
  strands = 1.0 + 0.09 * np.sin(
    2 * math.pi * (22.0 * x + 0.6 * np.sin(2 * math.pi * 3.0 * y))
  )
  roundness = 1.0 - 0.12 * ((x / face.a) ** 2 + np.maximum(y / face.b, 0) ** 2)
  size = canvas.size
  shading = np.take(_SHADING, materials).reshape(size, n, size, n)
  factor = np.where(shading == 1, strands[:, None, :, None], np.float32(1.0))
  factor = np.where(shading == 2, roundness[:, None, :, None], factor)
  factor = factor.reshape(materials.shape)

  for channel in range(3):
    colours[channel] += gradient * step[channel]
    colours[channel] *= factor
  return colours


def _mix_subsamples(colours, sensitivity, covered) -> np.ndarray:
  """Average the sub-samples of each pixel that its regions allow.

  A sub-sample counts when every attribute that can change it has the pixel
  in its region. The others take the centre sub-sample's colour. Returns
  colours [3, size, size].
  """
  size = covered.shape[0]
  n = _SUBSAMPLES
  sensitivity = sensitivity.reshape(size, n, size, n)
  allowed = (sensitivity & ~covered[:, None, :, None]) == 0
  mixed = np.empty((3, size, size), dtype=np.float32)
  for channel in range(3):
    grid = colours[channel].reshape(size, n, size, n)
    centre = grid[:, n // 2, :, n // 2]
    chosen = np.where(allowed, grid, centre[:, None, :, None])
    # Sum the small sub-sample axes as slices, because numpy reduces slowly
    # over two strided axes.
    rows = chosen[:, 0]
    for i in range(1, n):
      rows = rows + chosen[:, i]
    total = rows[..., 0]
    for i in range(1, n):
      total = total + rows[..., i]
    mixed[channel] = total * np.float32(1.0 / (n * n))
  return mixed


def _build_scene(face: _Face, size: int, values: dict[str, bool]):
  """Draw every part on the sub-sample grid and merge them in label order."""
  canvas = _Canvas(face, size)
  scene = _Scene(canvas)
  mouth_reach = _mouth_reach(_mouth_core(face, canvas))
  face_mask = _face_mask(face, canvas.x, canvas.y)
  canvas.add('skin', canvas.full, face_mask)
  _build_ears(face, canvas, scene, values, face_mask)
  _build_hair(face, canvas, scene, values, face_mask)
  _build_body(face, canvas, scene, values, face_mask)
  _build_eyes(face, canvas, scene, values)
  _build_nose(face, canvas, scene)
  _build_mouth(face, canvas, scene, values, mouth_reach)
  _merge_labels(canvas, scene)
  return canvas, scene, mouth_reach


def _compose(face, canvas, scene, mouth_reach, values, noise):
  """Colour the scene and return the uint8 image and the label map."""
  size = canvas.size
  n = _SUBSAMPLES
  materials = _materials(scene)
  _add_colour_sensitivity(scene)
  label_map = scene.labels[n // 2 :: n, n // 2 :: n].copy()
  covered = _covered(label_map, mouth_reach)

  colours = _shade(face, canvas, materials, _palette(face, values))
  mixed = _mix_subsamples(colours, scene.sensitivity, covered)

  # Lighting: a brightness gradient along the face's x axis.
  face_x = canvas.x[n // 2 :: n, n // 2 :: n] / face.a
  light = face.brightness * (
    1.0 + 0.22 * face.lighting * np.clip(face_x, -1.6, 1.6)
  )
  image = np.empty((size, size, 3), dtype=np.uint8)
  for channel in range(3):
    value = mixed[channel] * light + face.noise_sigma * noise[channel]
    image[..., channel] = np.clip(np.rint(value), 0, 255)
  return image, label_map


def render(
  seed: int,
  index: int,
  size: int,
  overrides: Mapping[str, bool] | None = None,
) -> dict[str, np.ndarray | float]:
  """Render example ``index`` of the synthetic set with random seed ``seed``.

  Returns a dict with these keys:

  - ``image``: uint8 [size, size, 3].
  - ``parts``: uint8 [size, size] label map in CelebAMask-HQ order.
  - ``attributes``: bool [len(SYNTHETIC_ATTRIBUTES)].
  - ``pose``: float in [-1, 1], a yaw-like turn that moves the features
    toward the image's right when positive.
  - ``lighting``: float in [-1, 1], a brightness gradient across the face
    that brightens the image's right side when positive.

  ``overrides`` sets attributes by name and draws the same face otherwise.
  Outside the regions (``parts.attribute_mask``) of the changed attributes on
  both label maps, image and label map equal the original's bit for bit.
  Setting a hair colour true sets the other hair colours false, and setting
  two true raises ValueError.

  ``size`` is an integer from 32 to 256. The same face at another size has
  the same attributes and layout, but thin parts get a minimum thickness in
  pixels and the pixel noise differs. Raises ValueError on an invalid size,
  seed, index or override.
  """
  size = _check_size(size)
  seed = _check_non_negative('seed', seed)
  index = _check_non_negative('index', index)
  rng = np.random.default_rng([seed, index])
  uniforms = _Uniforms(rng)
  drawn = _draw_attributes(uniforms)
  face = _Face(uniforms)
  noise = rng.standard_normal((3, size, size), dtype=np.float32)
  values = _resolve_attributes(drawn, overrides)

  canvas, scene, mouth_reach = _build_scene(face, size, values)
  image, label_map = _compose(face, canvas, scene, mouth_reach, values, noise)
  attributes = np.array([values[name] for name in SYNTHETIC_ATTRIBUTES])
  return {
    'image': image,
    'parts': label_map,
    'attributes': attributes,
    'pose': face.pose,
    'lighting': face.lighting,
  }


def render_batch(
  seed: int,
  indices: Sequence[int],
  size: int,
  overrides: Mapping[str, bool] | None = None,
) -> dict[str, np.ndarray]:
  """Render several examples and stack each field along a new first axis.

  Element i equals ``render(seed, indices[i], size, overrides)``. ``pose``
  and ``lighting`` become float32 arrays.
  """
  size = _check_size(size)
  examples = [render(seed, i, size, overrides) for i in indices]
  if not examples:
    return {
      'image': np.zeros((0, size, size, 3), np.uint8),
      'parts': np.zeros((0, size, size), np.uint8),
      'attributes': np.zeros((0, len(SYNTHETIC_ATTRIBUTES)), bool),
      'pose': np.zeros((0,), np.float32),
      'lighting': np.zeros((0,), np.float32),
    }
  batch = {
    key: np.stack([example[key] for example in examples])
    for key in ('image', 'parts', 'attributes')
  }
  for key in ('pose', 'lighting'):
    batch[key] = np.array([e[key] for e in examples], dtype=np.float32)
  return batch
