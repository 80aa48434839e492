"""Compare saved activation maps with face part label maps.

Every metric takes maps [..., H, W] (non-negative; negative values count
as 0) and works per map, so it applies to one map or to a stack of them:

  part energy       the fraction of a map's mass (its sum) on each part
                    label, background included. It is NaN for an all-zero
                    map, which has no mass to divide, so means over images
                    leave such maps out and reports count them apart.
  region energy     the fraction of the mass inside an attribute's region,
                    the parts the attribute lives in (`parts.attribute_mask`,
                    which adds a band of skin for some attributes). Its
                    chance level is the region's share of the image area:
                    a map spread evenly over the image has that energy.
  pointing game     1 when the map's maximum lies inside the region, else
                    0. When several pixels share the maximum, the score is
                    the fraction of them inside the region, which is the
                    hit probability when one of them is picked at random.
                    An all-zero map is a miss (0).
  IoU               intersection over union of the pixels where the map is
                    at least `threshold` times its maximum and the region.
                    `mean_iou` averages it over `THRESHOLDS` (0.05 to 0.95
                    in steps of 0.05), a Riemann sum of the area under the
                    IoU-threshold curve. An all-zero map selects no pixel.
  spatial entropy   -sum q log q in nats of the map normalised to sum 1, as
                    `cganjax.losses.spatial_entropy` computes it: log(H W)
                    for a uniform map and 0 for a single peak. The rows of
                    `analyse_folder` give NaN for an all-zero map, where
                    the function returns 0.

Region metrics are NaN where the region is empty in that image, because
then there is nothing to point at.

Two further checks need the discriminator of the maps' checkpoint:

  faithfulness      deletion of the top k% of pixels ranked by the map,
                    against deletion of as many random pixels. Deleted
                    pixels take the image's mean colour (per channel, over
                    the whole original image). The drop of a target's score
                    is `score(image) - score(deleted image)`, and the
                    faithfulness is the map's drop minus the mean drop over
                    `random_draws` random pixel sets, in logit units. Pixels
                    with equal map values are ranked in a random order
                    seeded per image, so an all-zero map behaves like a
                    random deletion. The random sets of one image are the
                    prefixes of one seeded permutation per draw, so they
                    are nested across fractions.
  randomised D      the sanity check of Adebayo et al., "Sanity Checks for
                    Saliency Maps", NeurIPS 2018: the maps of D's targets on
                    the real image are computed again by the same method
                    with D's weights re-initialised (same architecture,
                    Flax's initialisers as at the start of training, with
                    another seed), and each map is compared with the
                    trained D's map by Spearman rank correlation over
                    pixels (NaN when either map is constant). A method
                    whose maps barely change shows the image, not the
                    model.

`analyse_folder` runs all of these over a maps folder, a chunk of images
at a time, and returns one row per map.
"""

import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np
from absl import logging

from cganjax import maps_folder
from cganjax.data import parts
from cganjax.errors import InputError

THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))
DEFAULT_THRESHOLD = 0.5
DEFAULT_DELETE_FRACTIONS = (0.05, 0.1, 0.2)
DEFAULT_RANDOM_DRAWS = 4
DEFAULT_BATCH_SIZE = 64
# Label names by label value: 0 is the background.
LABEL_NAMES = ('background',) + parts.PART_NAMES
# Seed streams: the tie-break order of map pixels and the random pixel sets.
_TIE_BREAK_STREAM = 0
_RANDOM_SET_STREAM = 1


# Per-map metrics ------------------------------------------------------------


def _as_rows(maps, extra=None):
  """Flatten maps [..., H, W] to [M, H * W] float64 with negatives at 0."""
  maps = np.asarray(maps, np.float64)
  if maps.ndim < 2:
    raise ValueError(f'maps must be [..., H, W], got shape {maps.shape}.')
  flat = np.maximum(maps.reshape(-1, maps.shape[-2] * maps.shape[-1]), 0.0)
  if extra is None:
    return flat
  extra = np.broadcast_to(np.asarray(extra), maps.shape)
  return flat, extra.reshape(flat.shape)


def _leading(maps) -> tuple[int, ...]:
  return np.shape(maps)[:-2]


def part_energy(maps, label_maps, num_labels: int = parts.NUM_CLASSES):
  """Fraction of each map's mass on each label: [..., num_labels].

  `label_maps` are integer [..., H, W], broadcast against `maps`. An
  all-zero map gets NaN for every label.
  """
  flat, labels = _as_rows(maps, label_maps)
  labels = labels.astype(np.int64)
  if labels.size and (labels.min() < 0 or labels.max() >= num_labels):
    raise ValueError(
      f'label values must be in [0, {num_labels}), got {labels.min()} to '
      f'{labels.max()}.'
    )
  count = len(flat)
  keys = labels + num_labels * np.arange(count)[:, None]
  mass = np.bincount(
    keys.ravel(), weights=flat.ravel(), minlength=count * num_labels
  ).reshape(count, num_labels)
  total = flat.sum(axis=1, keepdims=True)
  undefined = np.full_like(mass, np.nan)
  fractions = np.divide(mass, total, out=undefined, where=total > 0)
  return fractions.reshape(_leading(maps) + (num_labels,))


def region_energy(maps, regions):
  """Fraction of each map's mass inside its boolean region: [...].

  NaN for an all-zero map and where the region is empty.
  """
  flat, inside = _as_rows(maps, regions)
  inside = inside.astype(bool)
  total = flat.sum(axis=1)
  mass = np.where(inside, flat, 0.0).sum(axis=1)
  undefined = np.full_like(mass, np.nan)
  energy = np.divide(mass, total, out=undefined, where=total > 0)
  energy = np.where(inside.any(axis=1), energy, np.nan)
  return energy.reshape(_leading(maps))


def pointing_game(maps, regions):
  """Pointing-game score of each map: [...] in [0, 1], NaN for no region.

  The pixels at the map's maximum share the hit: the score is the fraction
  of them inside the region. An all-zero map scores 0.
  """
  flat, inside = _as_rows(maps, regions)
  inside = inside.astype(bool)
  peak = flat.max(axis=1, keepdims=True)
  at_peak = (flat == peak) & (peak > 0)
  count = at_peak.sum(axis=1)
  hits = (at_peak & inside).sum(axis=1) / np.maximum(count, 1)
  hits = np.where(inside.any(axis=1), hits, np.nan)
  return hits.reshape(_leading(maps))


def iou(maps, regions, threshold: float = DEFAULT_THRESHOLD):
  """IoU of {map >= threshold * max} with the region: [...].

  `threshold` is relative to each map's maximum, in (0, 1]. An all-zero map
  selects nothing and scores 0; an empty region gives NaN.
  """
  if not 0 < threshold <= 1:
    raise ValueError(f'threshold must be in (0, 1], got {threshold}.')
  flat, inside = _as_rows(maps, regions)
  inside = inside.astype(bool)
  peak = flat.max(axis=1, keepdims=True)
  selected = (flat >= threshold * peak) & (peak > 0)
  intersection = (selected & inside).sum(axis=1)
  union = (selected | inside).sum(axis=1)
  scores = np.where(
    inside.any(axis=1), intersection / np.maximum(union, 1), np.nan
  )
  return scores.reshape(_leading(maps))


def mean_iou(maps, regions, thresholds: Sequence[float] = THRESHOLDS):
  """Mean of `iou` over the relative thresholds: [...]."""
  return np.mean([iou(maps, regions, t) for t in thresholds], axis=0)


def spatial_entropy(maps):
  """Entropy in nats of each map normalised to sum 1: [...].

  The numpy twin of `cganjax.losses.spatial_entropy`, with its conventions:
  negative values count as 0, and an all-zero map gives 0.
  """
  flat = _as_rows(maps)
  total = flat.sum(axis=1, keepdims=True)
  probs = np.divide(flat, total, out=np.zeros_like(flat), where=total > 0)
  logs = np.log(np.where(probs > 0, probs, 1.0))
  return -(probs * logs).sum(axis=1).reshape(_leading(maps))


def rank_average(values) -> np.ndarray:
  """Ranks 1..n of a 1-D array, tied values getting their mean rank."""
  values = np.asarray(values).ravel()
  order = np.argsort(values, kind='stable')
  ordered = values[order]
  starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
  stops = np.r_[starts[1:], len(values)]
  # A run of ties at sorted positions start..stop-1 has ranks start+1..stop.
  mean_ranks = (starts + stops + 1) / 2.0
  ranks = np.empty(len(values), np.float64)
  ranks[order] = np.repeat(mean_ranks, stops - starts)
  return ranks


def spearman(first, second) -> float:
  """Spearman rank correlation of two equal-sized arrays.

  Pearson correlation of the tie-averaged ranks; NaN when either array is
  constant, since the correlation is undefined then.
  """
  first, second = np.ravel(first), np.ravel(second)
  if first.shape != second.shape:
    raise ValueError(
      f'arrays differ in size: {first.shape} and {second.shape}.'
    )
  x = rank_average(first)
  y = rank_average(second)
  x -= x.mean()
  y -= y.mean()
  norm = np.sqrt((x * x).sum() * (y * y).sum())
  if norm == 0:
    return float('nan')
  return float((x * y).sum() / norm)


def spearman_per_map(first, second):
  """`spearman` of each pair of maps [..., H, W]: [...]."""
  first_rows = _as_rows(first)
  second_rows = _as_rows(second)
  if first_rows.shape != second_rows.shape:
    raise ValueError(
      f'map stacks differ in shape: {np.shape(first)} and {np.shape(second)}.'
    )
  values = [
    spearman(a, b) for a, b in zip(first_rows, second_rows, strict=True)
  ]
  return np.asarray(values, np.float64).reshape(_leading(first))


# Faithfulness ---------------------------------------------------------------


def deleted_pixel_count(fraction: float, num_pixels: int) -> int:
  """Pixels deleted for a fraction: round(fraction * pixels), at least 1."""
  return max(1, int(round(fraction * num_pixels)))


def deletion_order(saliency, row: int, seed: int) -> np.ndarray:
  """Pixel indices of a flattened map, highest value first.

  Equal values are ordered by a permutation seeded by (seed, row), so a
  flat region is deleted in a random but reproducible order.
  """
  saliency = np.ravel(saliency).astype(np.float64)
  rng = np.random.default_rng([seed, _TIE_BREAK_STREAM, row])
  tie_break = rng.permutation(len(saliency))
  # np.lexsort sorts by its last key first.
  return np.lexsort((tie_break, -saliency))


def random_deletion_order(
  num_pixels: int, row: int, draw: int, seed: int
) -> np.ndarray:
  """Return the random pixel order of one draw for image `row`.

  Deleting k random pixels deletes the first k entries.
  """
  rng = np.random.default_rng([seed, _RANDOM_SET_STREAM, row, draw])
  return rng.permutation(num_pixels)


def delete_pixels(image, order, count: int) -> np.ndarray:
  """Copy a [H, W, C] image with its first `count` pixels of `order` set to
  the image's mean colour; returns float32 in the image's units."""
  image = np.asarray(image, np.float32)
  height, width, channels = image.shape
  fill = image.reshape(-1, channels).mean(axis=0)
  deleted = image.reshape(-1, channels).copy()
  deleted[np.asarray(order)[:count]] = fill
  return deleted.reshape(height, width, channels)


def _scores(score_fn, images: list[np.ndarray]) -> np.ndarray:
  return np.asarray(score_fn(np.stack(images)), np.float64)


def map_deletion_drops(
  images,
  maps,
  score_fn: Callable[[np.ndarray], np.ndarray],
  fractions: Sequence[float],
  seed: int,
  rows: Sequence[int] | None = None,
  base_scores=None,
) -> np.ndarray:
  """Score drops after deleting each map's top pixels: [N, F, S].

  `images` [N, H, W, 3] (uint8 or float, in 0..255), `maps` [N, H, W].
  `score_fn` takes float32 images [B, H, W, 3] in 0..255 and returns
  scores [B, S]. `rows` are the images' ids for the tie-break seed
  (default 0..N-1); `base_scores` [N, S] are the scores of the intact
  images, computed when not given.
  """
  images = np.asarray(images)
  count, height, width, _ = images.shape
  rows = range(count) if rows is None else rows
  num_pixels = height * width
  if base_scores is None:
    base_scores = _scores(score_fn, list(images))
  deleted = []
  for image, saliency, row in zip(images, maps, rows, strict=True):
    order = deletion_order(saliency, row, seed)
    for fraction in fractions:
      k = deleted_pixel_count(fraction, num_pixels)
      deleted.append(delete_pixels(image, order, k))
  scores = _scores(score_fn, deleted).reshape(count, len(fractions), -1)
  return np.asarray(base_scores, np.float64)[:, None, :] - scores


def random_deletion_drops(
  images,
  score_fn: Callable[[np.ndarray], np.ndarray],
  fractions: Sequence[float],
  draws: int,
  seed: int,
  rows: Sequence[int] | None = None,
  base_scores=None,
) -> np.ndarray:
  """Score drops after deleting random pixels: [N, F, draws, S].

  The pixel counts match `map_deletion_drops`; draw d of image `row`
  deletes the first pixels of `random_deletion_order(..., row, d, seed)`.
  """
  images = np.asarray(images)
  count, height, width, _ = images.shape
  rows = list(range(count) if rows is None else rows)
  num_pixels = height * width
  if base_scores is None:
    base_scores = _scores(score_fn, list(images))
  drops = []
  # One draw at a time keeps at most N * F deleted images in memory.
  for draw in range(draws):
    deleted = []
    for image, row in zip(images, rows, strict=True):
      order = random_deletion_order(num_pixels, row, draw, seed)
      for fraction in fractions:
        k = deleted_pixel_count(fraction, num_pixels)
        deleted.append(delete_pixels(image, order, k))
    scores = _scores(score_fn, deleted).reshape(count, len(fractions), -1)
    drops.append(np.asarray(base_scores, np.float64)[:, None, :] - scores)
  return np.stack(drops, axis=2)


@dataclasses.dataclass(frozen=True)
class Faithfulness:
  """Deletion results of one score column, each [N, F]."""

  map_drop: np.ndarray
  random_drop: np.ndarray
  random_drop_std: np.ndarray

  @property
  def score(self) -> np.ndarray:
    """The map's drop minus the mean random drop."""
    return self.map_drop - self.random_drop


def faithfulness(
  images,
  maps,
  score_fn: Callable[[np.ndarray], np.ndarray],
  column: int = 0,
  fractions: Sequence[float] = DEFAULT_DELETE_FRACTIONS,
  draws: int = DEFAULT_RANDOM_DRAWS,
  seed: int = 0,
  rows: Sequence[int] | None = None,
) -> Faithfulness:
  """Deletion test of maps [N, H, W] for score column `column`."""
  images = np.asarray(images)
  base = _scores(score_fn, list(images))
  by_map = map_deletion_drops(
    images, maps, score_fn, fractions, seed, rows, base
  )
  random = random_deletion_drops(
    images, score_fn, fractions, draws, seed, rows, base
  )
  return Faithfulness(
    map_drop=by_map[..., column],
    random_drop=random[..., column].mean(axis=2),
    random_drop_std=random[..., column].std(axis=2),
  )


# The discriminator of a run -------------------------------------------------


def score_column(target: dict) -> int | None:
  """Column of a target's score in `DiscriminatorScorer` output, or None
  when the score is not D's output on the target's view alone."""
  if target['kind'] == 'realness':
    return 0
  if target['kind'] == 'attribute':
    return 1 + target['index']
  return None


class DiscriminatorScorer:
  """D's scores [B, 1 + A] (realness, then attribute logits) of float32
  images [B, H, W, 3] in 0..255, under fixed parameters.

  Batches are padded to `batch_size` so that one compiled program serves
  every call.
  """

  def __init__(self, discriminator, params, batch_size: int):
    import jax
    import jax.numpy as jnp

    def scores(params, images):
      realness, logits = discriminator.apply(
        {'params': params}, images / 127.5 - 1.0
      )
      return jnp.concatenate([realness[:, None], logits], axis=1)

    self._scores = jax.jit(scores)
    self._params = params
    self.batch_size = batch_size

  def __call__(self, images) -> np.ndarray:
    images = np.asarray(images, np.float32)
    outputs = []
    for start in range(0, len(images), self.batch_size):
      chunk = images[start : start + self.batch_size]
      padded = _pad_rows(chunk, self.batch_size)
      result = np.asarray(self._scores(self._params, padded))
      outputs.append(result[: len(chunk)])
    return np.concatenate(outputs)


def _pad_rows(array: np.ndarray, size: int) -> np.ndarray:
  """Repeat the last row until `array` has `size` rows."""
  if len(array) == size:
    return array
  picks = np.minimum(np.arange(size), len(array) - 1)
  return array[picks]


def randomised_discriminator_params(discriminator, image_size: int, seed: int):
  """Fresh parameters of `discriminator` from its initialisers."""
  import jax
  import jax.numpy as jnp

  image = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  init = jax.jit(lambda key: discriminator.init(key, image)['params'])
  return init(jax.random.key(seed))


class RealImageMaps:
  """Recompute the maps of D's targets on the real image.

  Uses the maps module's own computation with a chosen set of D
  parameters: `__call__(d_params, images, rows)` returns `{tap: [N, T, H,
  W] float32}` for `targets` (index.json entries, all with view `real`).
  """

  def __init__(self, run, targets: Sequence[dict], method: str, batch_size):
    import jax

    from cganjax import maps, step

    chosen = [
      maps.Target(t['name'], t['kind'], t['view'], t['index']) for t in targets
    ]
    self.target_names = [target.name for target in chosen]
    spec = maps.make_spec(run.config, run.networks, chosen, method, 'float32')
    self._mesh = step.create_mesh()
    devices = self._mesh.size
    self.batch_size = -(-batch_size // devices) * devices
    self._maps_fn = maps.make_maps_fn(spec, self._mesh)
    self._sharding = step.batch_sharding(self._mesh)
    self._g_params = jax.device_put(
      run.state.g_ema_params, step.replicated(self._mesh)
    )
    self.taps = [layer.name for layer in spec.layers]
    self._jax = jax
    self._step = step

  def __call__(self, d_params, images, rows) -> dict[str, np.ndarray]:
    jax = self._jax
    d_params = jax.device_put(d_params, self._step.replicated(self._mesh))
    rows = np.asarray(rows, np.int32)
    found = {tap: [] for tap in self.taps}
    for start in range(0, len(images), self.batch_size):
      stop = min(start + self.batch_size, len(images))
      batch = {
        'image': _pad_rows(np.asarray(images[start:stop]), self.batch_size),
        'row': _pad_rows(rows[start:stop], self.batch_size),
      }
      outputs = self._maps_fn(
        self._g_params, d_params, jax.device_put(batch, self._sharding)
      )
      for tap in self.taps:
        found[tap].append(np.asarray(outputs['maps'][tap])[: stop - start])
    return {tap: np.concatenate(values) for tap, values in found.items()}


@dataclasses.dataclass
class DiscriminatorChecks:
  """The trained D of a maps folder's checkpoint and a randomised copy."""

  scorer: DiscriminatorScorer
  real_maps: RealImageMaps | None
  trained_params: object
  randomised_params: object


def prepare_checks(
  run, folder: maps_folder.MapsFolder, seed: int, batch_size: int
) -> DiscriminatorChecks:
  """Set up faithfulness and the randomised-weights check for a folder.

  `run` is the restored run (`restore.restore_run`) at the folder's
  checkpoint step.

  Raises:
    InputError: the run's attributes or image size differ from the maps'.
  """
  index = folder.index
  if list(run.attributes) != list(index['attributes']):
    raise InputError(
      f'the run has attributes {list(run.attributes)}, but {folder.folder} '
      f'was written for {index["attributes"]}; pass the --workdir of the '
      'run that wrote the maps.'
    )
  size = run.config.data.image_size
  if folder.images.shape[1:3] != (size, size):
    raise InputError(
      f'the run has {size}x{size} images, but {folder.folder} has '
      f'{folder.images.shape[1]}x{folder.images.shape[2]}; pass the '
      '--workdir of the run that wrote the maps.'
    )
  discriminator = run.networks.discriminator
  trained = run.state.d_params
  randomised = randomised_discriminator_params(discriminator, size, seed)
  real_targets = [t for t in index['targets'] if t['view'] == 'real']
  real_maps = None
  if real_targets:
    real_maps = RealImageMaps(run, real_targets, index['method'], batch_size)
  return DiscriminatorChecks(
    scorer=DiscriminatorScorer(discriminator, trained, batch_size),
    real_maps=real_maps,
    trained_params=trained,
    randomised_params=randomised,
  )


# A whole folder ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Options:
  """Settings of `analyse_folder`; fractions are of the image's pixels."""

  threshold: float = DEFAULT_THRESHOLD
  thresholds: tuple[float, ...] = THRESHOLDS
  delete_fractions: tuple[float, ...] = DEFAULT_DELETE_FRACTIONS
  random_draws: int = DEFAULT_RANDOM_DRAWS
  seed: int = 0
  batch_size: int = DEFAULT_BATCH_SIZE


def fraction_label(fraction: float) -> str:
  """Column suffix of a deletion fraction: 0.05 -> '5pct'."""
  return f'{100 * fraction:g}pct'


def row_fields(options: Options) -> list[str]:
  """Column names of the rows of `analyse_folder`, in order."""
  fields = [
    'maps',
    'method',
    'layer',
    'target',
    'kind',
    'view',
    'attribute',
    'image',
    'image_id',
    'zero_map',
    'region_area',
    'region_energy',
    'pointing_game',
    'iou',
    'mean_iou',
    'entropy',
    'entropy_normalised',
    'score',
  ]
  fields += [f'energy_{name}' for name in LABEL_NAMES]
  fields += [f'area_{name}' for name in LABEL_NAMES]
  for fraction in options.delete_fractions:
    label = fraction_label(fraction)
    fields += [
      f'map_drop_{label}',
      f'random_drop_{label}',
      f'random_drop_std_{label}',
      f'faithfulness_{label}',
    ]
  fields += ['randomised_spearman', 'randomised_region_energy']
  return fields


def view_has_parts(view: str) -> bool:
  """Return whether the real image's label maps describe a view's image.

  An edit changes the image only inside the attribute's region, so the
  real image's parts stay in place. A face drawn from noise has no label
  map.
  """
  return view == 'real' or view.startswith('edit/')


def _regions(label_maps: np.ndarray, attribute: str) -> np.ndarray:
  return np.stack(
    [parts.attribute_mask(label_map, attribute) for label_map in label_maps]
  )


def _chunks(total: int, size: int) -> Iterator[tuple[int, int]]:
  for start in range(0, total, size):
    yield start, min(start + size, total)


def check_label_maps(label_maps, folder: maps_folder.MapsFolder, name: str):
  """Return label maps [N, H, W] for a folder's images, or raise InputError."""
  label_maps = np.asarray(label_maps)
  expected = folder.images.shape[:3]
  if label_maps.shape != expected:
    raise InputError(
      f'{name} has shape {list(label_maps.shape)}, but {folder.folder} has '
      f'images of shape {list(expected)}; pass label maps [images, height, '
      'width] for the same images.'
    )
  if not np.issubdtype(label_maps.dtype, np.integer):
    raise InputError(
      f'{name} has dtype {label_maps.dtype}; pass integer label maps.'
    )
  if label_maps.size and (
    label_maps.min() < 0 or label_maps.max() >= parts.NUM_CLASSES
  ):
    raise InputError(
      f'{name} has labels from {label_maps.min()} to {label_maps.max()}, '
      f'outside 0 to {parts.NUM_CLASSES - 1}; pass label maps in the '
      'CelebAMask-HQ order.'
    )
  return label_maps


def analyse_folder(
  folder: maps_folder.MapsFolder,
  label_maps=None,
  checks: DiscriminatorChecks | None = None,
  options: Options = Options(),
  label: str | None = None,
) -> list[dict]:
  """Compute every metric for every map of a folder: one dict per map.

  `label_maps` [N, H, W] default to the folder's `parts.npy`; with neither,
  the region and part metrics are NaN. `checks` adds faithfulness (targets
  of kind attribute or realness) and the randomised-weights check (targets
  on the real image, on D's taps). `label` names the folder in the rows
  (default: the folder's name). Images are read `options.batch_size` at a
  time from the memory-mapped arrays.
  """
  index = folder.index
  targets = {t['name']: t for t in index['targets']}
  label = folder.folder.name if label is None else label
  if label_maps is None:
    label_maps = folder.parts
  total = len(folder.images)
  ids = index.get('image_ids') or [str(i) for i in range(total)]
  height, width = folder.images.shape[1:3]
  log_pixels = np.log(height * width)
  rows = []
  started = time.time()
  for start, stop in _chunks(total, options.batch_size):
    context = _ChunkContext(folder, label_maps, checks, options, start, stop)
    for layer in folder.layers:
      layer_maps = np.asarray(folder.maps(layer)[start:stop], np.float32)
      for position, name in enumerate(folder.targets(layer)):
        target = targets[name]
        maps = layer_maps[:, position]
        metrics = context.metrics(layer, target, maps)
        for offset in range(stop - start):
          image = start + offset
          row = {
            'maps': label,
            'method': index['method'],
            'layer': layer,
            'target': name,
            'kind': target['kind'],
            'view': target['view'],
            'attribute': target.get('attribute', ''),
            'image': image,
            'image_id': ids[image],
          }
          row.update({key: value[offset] for key, value in metrics.items()})
          entropy = row['entropy']
          row['entropy_normalised'] = entropy / log_pixels
          rows.append(row)
    _log_progress(label, stop, total, started)
  return rows


def _log_progress(label: str, done: int, total: int, started: float) -> None:
  elapsed = time.time() - started
  rate = done / max(elapsed, 1e-9)
  logging.info(
    '%s: %d/%d images  %.1f images/s  ETA %.0f s',
    label,
    done,
    total,
    rate,
    (total - done) / rate,
  )


class _ChunkContext:
  """The inputs that the maps of one chunk of images share.

  These are label maps, regions, intact-image scores, random deletions and
  randomised-D maps, each computed once per chunk.
  """

  def __init__(self, folder, label_maps, checks, options, start, stop):
    self.folder = folder
    self.checks = checks
    self.options = options
    self.rows = list(range(start, stop))
    self.count = stop - start
    self.label_maps = None
    if label_maps is not None:
      self.label_maps = np.asarray(label_maps[start:stop])
    self._regions = {}
    self._view_images = {}
    self._base_scores = {}
    self._random_drops = {}
    self._randomised_maps = None

  def images(self, target: dict) -> np.ndarray:
    view = target['view']
    if view not in self._view_images:
      images = self.folder.view_images(target['name'])
      start, stop = self.rows[0], self.rows[-1] + 1
      self._view_images[view] = np.asarray(images[start:stop])
    return self._view_images[view]

  def region(self, attribute: str) -> np.ndarray | None:
    if self.label_maps is None or attribute not in parts.ATTRIBUTE_REGIONS:
      return None
    if attribute not in self._regions:
      self._regions[attribute] = _regions(self.label_maps, attribute)
    return self._regions[attribute]

  def metrics(self, layer: str, target: dict, maps: np.ndarray) -> dict:
    count = self.count
    nan = np.full(count, np.nan)
    zero_map = ~(maps > 0).any(axis=(1, 2))
    entropy = spatial_entropy(maps)
    out = {
      'zero_map': zero_map,
      # The entropy of an all-zero map is undefined; spatial_entropy's 0
      # would read as a perfectly focused map.
      'entropy': np.where(zero_map, np.nan, entropy),
    }
    out.update(self._part_metrics(target, maps))
    out.update(self._faithfulness(target, maps))
    out['randomised_spearman'] = nan
    out['randomised_region_energy'] = nan
    out.update(self._randomised(layer, target, maps))
    return out

  def _part_metrics(self, target: dict, maps: np.ndarray) -> dict:
    count = self.count
    nan = np.full(count, np.nan)
    region_keys = (
      'region_area',
      'region_energy',
      'pointing_game',
      'iou',
      'mean_iou',
    )
    out = {key: nan for key in region_keys}
    for name in LABEL_NAMES:
      out[f'energy_{name}'] = nan
      out[f'area_{name}'] = nan
    if self.label_maps is None or not view_has_parts(target['view']):
      return out
    energies = part_energy(maps, self.label_maps)
    for label_value, name in enumerate(LABEL_NAMES):
      out[f'energy_{name}'] = energies[:, label_value]
      out[f'area_{name}'] = (self.label_maps == label_value).mean(axis=(1, 2))
    region = self.region(target.get('attribute', ''))
    if region is None:
      return out
    options = self.options
    out['region_area'] = region.mean(axis=(1, 2))
    out['region_energy'] = region_energy(maps, region)
    out['pointing_game'] = pointing_game(maps, region)
    out['iou'] = iou(maps, region, options.threshold)
    out['mean_iou'] = mean_iou(maps, region, options.thresholds)
    return out

  def _faithfulness(self, target: dict, maps: np.ndarray) -> dict:
    options = self.options
    out = {'score': np.full(self.count, np.nan)}
    column = score_column(target)
    usable = self.checks is not None and column is not None
    if usable:
      images = self.images(target)
      base = self._base(target['view'], images)
      out['score'] = base[:, column]
      by_map = map_deletion_drops(
        images,
        maps,
        self.checks.scorer,
        options.delete_fractions,
        options.seed,
        self.rows,
        base,
      )[..., column]
      random = self._random(target['view'], images)[..., column]
    for position, fraction in enumerate(options.delete_fractions):
      label = fraction_label(fraction)
      if not usable:
        for prefix in ('map_drop', 'random_drop', 'random_drop_std'):
          out[f'{prefix}_{label}'] = np.full(self.count, np.nan)
        out[f'faithfulness_{label}'] = np.full(self.count, np.nan)
        continue
      random_mean = random[:, position].mean(axis=1)
      out[f'map_drop_{label}'] = by_map[:, position]
      out[f'random_drop_{label}'] = random_mean
      out[f'random_drop_std_{label}'] = random[:, position].std(axis=1)
      out[f'faithfulness_{label}'] = by_map[:, position] - random_mean
    return out

  def _base(self, view: str, images: np.ndarray) -> np.ndarray:
    if view not in self._base_scores:
      scores = self.checks.scorer(np.asarray(images, np.float32))
      self._base_scores[view] = np.asarray(scores, np.float64)
    return self._base_scores[view]

  def _random(self, view: str, images: np.ndarray) -> np.ndarray:
    if view not in self._random_drops:
      options = self.options
      self._random_drops[view] = random_deletion_drops(
        images,
        self.checks.scorer,
        options.delete_fractions,
        options.random_draws,
        options.seed,
        self.rows,
        self._base(view, images),
      )
    return self._random_drops[view]

  def _randomised(self, layer: str, target: dict, maps: np.ndarray) -> dict:
    checks = self.checks
    if (
      checks is None
      or checks.real_maps is None
      or target['view'] != 'real'
      or layer not in checks.real_maps.taps
    ):
      return {}
    if self._randomised_maps is None:
      images = self.images(target)
      self._randomised_maps = checks.real_maps(
        checks.randomised_params, images, self.rows
      )
    position = checks.real_maps.target_names.index(target['name'])
    randomised = self._randomised_maps[layer][:, position]
    # Quantise like the saved maps, so both sides have the same ties.
    randomised = randomised.astype(self.folder.maps(layer).dtype)
    out = {'randomised_spearman': spearman_per_map(maps, randomised)}
    region = self.region(target.get('attribute', ''))
    if region is not None:
      out['randomised_region_energy'] = region_energy(randomised, region)
    return out


# Summaries --------------------------------------------------------------------

GROUP_FIELDS = ('maps', 'method', 'layer', 'target')
_TEXT_FIELDS = ('kind', 'view', 'attribute')


def finite_mean(values: np.ndarray) -> float:
  """Mean of the finite values, NaN when there are none."""
  finite = values[np.isfinite(values)]
  return float(finite.mean()) if finite.size else float('nan')


def summarise(rows: Sequence[dict], fields: Sequence[str]) -> list[dict]:
  """Average the rows of each (maps, method, layer, target) over images.

  Each numeric field becomes the mean of its finite values (NaN when none
  is finite). Added per group: `maps_count`, `zero_maps` (the count of
  all-zero maps), `images_with_region` (images whose region is not empty)
  and `chance`, the region's mean share of the image area over those
  images, the same images over which `region_energy` is averaged.
  """
  groups: dict[tuple, list[dict]] = {}
  for row in rows:
    groups.setdefault(tuple(row[f] for f in GROUP_FIELDS), []).append(row)
  numeric = [
    f
    for f in fields
    if f not in GROUP_FIELDS + _TEXT_FIELDS + ('image', 'image_id', 'zero_map')
  ]
  summaries = []
  for key, members in groups.items():
    first = members[0]
    summary = dict(zip(GROUP_FIELDS, key, strict=True))
    summary.update({f: first[f] for f in _TEXT_FIELDS})
    summary['maps_count'] = len(members)
    summary['zero_maps'] = int(sum(bool(r['zero_map']) for r in members))
    area = np.array([r['region_area'] for r in members], np.float64)
    with_region = area > 0
    summary['images_with_region'] = int(with_region.sum())
    summary['chance'] = finite_mean(np.where(with_region, area, np.nan))
    for field in numeric:
      values = np.array([r[field] for r in members], np.float64)
      summary[field] = finite_mean(values)
    summaries.append(summary)
  return summaries


def summary_fields(fields: Sequence[str]) -> list[str]:
  """Column names of `summarise` output, in order."""
  numeric = [
    f
    for f in fields
    if f not in GROUP_FIELDS + _TEXT_FIELDS + ('image', 'image_id', 'zero_map')
  ]
  return (
    list(GROUP_FIELDS)
    + list(_TEXT_FIELDS)
    + ['maps_count', 'zero_maps', 'images_with_region', 'chance']
    + numeric
  )
