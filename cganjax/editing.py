"""Edit real faces inside a mask with a trained run's generator.

  editor = editing.Editor.load('/tmp/demo')
  summary = editing.edit_files(
    editor, 'face.jpg', 'edits', mask='mouth,u_lip,l_lip',
    parts='face_labels.png', sets=['Smiling=1'],
  )

`Editor` restores G (its EMA weights by default) and D from a work
directory's checkpoint through `restore.restore_run`, never through the
training loop. `Editor.edit_image` edits one image file and returns the
outputs in memory, and `edit_files` edits a file or a folder and writes
PNGs and JSON reports. Image geometry, mask thresholds and feathering are
described in `cganjax.edit_images`.

Targets: `parse_sets` turns each `--set` text into one or more edits. Every
attribute that an edit does not name keeps its source value, which for an
unlabelled photo is D's prediction on the model input (probability > 0.5
gives 1). An attribute of a mutually exclusive group (the hair colours)
set above 0.5 turns the unnamed members of its group off, as training does.
A value other than 0 or 1 sets the strength: G receives 2 * value - 1 per
attribute, so 1.5 requests more than a training target did.
"""

import dataclasses
import functools
import itertools
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from cganjax import checkpoint, edit_images, maps, models, restore
from cganjax.data import parts
from cganjax.errors import InputError

REPORT_VERSION = 1
RUN_REPORT_NAME = 'report.json'
# Map settings used when a run's config has no `edit` section.
DEFAULT_MAP_METHOD = 'grad_cam'
DEFAULT_MAP_LAYER = f'{models.DISCRIMINATOR_PREFIX}/block2'
PREDICTION_THRESHOLD = 0.5


# Requests ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MaskSpec:
  """Source of a mask: `kind` is parts, file, folder or map."""

  kind: str
  text: str
  part_names: tuple[str, ...] = ()
  path: Path | None = None
  attribute: str = ''
  threshold: float = 0.0
  method: str = ''
  layer: str = ''


def map_defaults(config) -> tuple[str, str]:
  """Return the run's default map method and layer for activation masks."""
  section = config.get('edit') or {}
  method = section.get('map_method', DEFAULT_MAP_METHOD) or DEFAULT_MAP_METHOD
  layer = section.get('map_layer', DEFAULT_MAP_LAYER) or DEFAULT_MAP_LAYER
  return method, layer


def parse_mask(text: str, attributes, config, d_taps) -> MaskSpec:
  """Parse `--mask`: part names, a mask file or folder, or `map:...`.

  `map:ATTR@T[:METHOD[:LAYER]]` thresholds D's activation map of the
  attribute's logit at T (0 < T <= 1) on the normalised map.

  Raises:
    InputError: an unknown part, attribute, method or layer, or a bad T.
  """
  if not text:
    raise InputError(
      '--mask is empty; pass part names such as mouth,u_lip,l_lip, a mask '
      'image, or map:Smiling@0.5.'
    )
  if text.startswith('map:'):
    return _parse_map(text, attributes, config, d_taps)
  path = Path(text)
  if path.is_dir():
    return MaskSpec(kind='folder', text=text, path=path)
  if path.is_file() or path.suffix.lower() in edit_images.IMAGE_SUFFIXES:
    if not path.is_file():
      raise InputError(f'--mask={text}: mask file not found.')
    return MaskSpec(kind='file', text=text, path=path)
  names = tuple(name.strip() for name in text.split(',') if name.strip())
  unknown = [name for name in names if name not in parts.PART_NAMES]
  if unknown or not names:
    raise InputError(
      f'--mask={text}: unknown face parts {unknown}; use part names from '
      f'{", ".join(parts.PART_NAMES)}, a mask image path, or map:ATTR@T.'
    )
  return MaskSpec(kind='parts', text=text, part_names=names)


def _parse_map(text, attributes, config, d_taps) -> MaskSpec:
  fields = text[len('map:') :].split(':', 2)
  target = fields[0]
  method, layer = map_defaults(config)
  if len(fields) > 1 and fields[1]:
    method = fields[1]
  if len(fields) > 2 and fields[2]:
    layer = fields[2]

  usage = 'use map:ATTR@T[:METHOD[:LAYER]], e.g. map:Smiling@0.5'
  if '@' not in target:
    raise InputError(f'--mask={text} has no threshold; {usage}.')
  attribute, threshold_text = target.rsplit('@', 1)
  check_attributes([attribute], attributes, f'--mask={text}')

  try:
    threshold = float(threshold_text)
  except ValueError:
    threshold = math.nan
  if not 0.0 < threshold <= 1.0:
    raise InputError(
      f'--mask={text}: the threshold {threshold_text!r} must be a number '
      f'in (0, 1] on the normalised map; {usage}.'
    )
  if method not in maps.METHODS:
    raise InputError(
      f'--mask={text}: unknown method {method!r}; choose from '
      f'{sorted(maps.METHODS)}.'
    )
  if layer not in d_taps:
    raise InputError(
      f"--mask={text}: {layer!r} is not one of D's taps {list(d_taps)}."
    )
  return MaskSpec(
    kind='map',
    text=text,
    attribute=attribute,
    threshold=threshold,
    method=method,
    layer=layer,
  )


def check_attributes(names, attributes, where: str) -> None:
  unknown = [name for name in names if name not in attributes]
  if unknown:
    raise InputError(
      f'{where}: unknown attributes {unknown}; this run has '
      f'{", ".join(attributes)}.'
    )


def _parse_values(text: str, item: str, where: str) -> list[float]:
  """Parse `V` or a sweep `START:STOP:COUNT` (COUNT values, both ends in)."""
  fields = text.split(':')
  try:
    if len(fields) == 1:
      values = [float(fields[0])]
    elif len(fields) == 3:
      count = int(fields[2])
      if count < 1:
        raise ValueError
      values = np.linspace(float(fields[0]), float(fields[1]), count).tolist()
    else:
      raise ValueError
  except ValueError:
    raise InputError(
      f'{where}: {item!r} needs a number or a sweep START:STOP:COUNT '
      'with COUNT >= 1, e.g. Smiling=1.5 or Smiling=0:2:5.'
    ) from None
  if not all(math.isfinite(v) for v in values):
    raise InputError(f'{where}: {item!r} has a value that is not finite.')
  return values


def parse_sets(texts, attributes) -> list[dict[str, float]]:
  """Expand `--set` texts into edits, each {attribute: value}.

  One text is a joint edit (`Smiling=1,Eyeglasses=0`); a sweep in it gives
  one edit per value, and several sweeps in one text give every
  combination. The edits of all texts are returned in order.

  Raises:
    InputError: no text, a malformed item, a repeated or unknown name.
  """
  if not texts:
    raise InputError(
      'no --set given; pass --set=ATTR=VALUE, for example --set=Smiling=1.'
    )
  edits = []
  for text in texts:
    where = f'--set={text}'
    names, choices = [], []
    for item in text.split(','):
      item = item.strip()
      if '=' not in item:
        raise InputError(
          f'{where}: {item!r} is not ATTR=VALUE; separate attributes with '
          'commas, e.g. Smiling=1,Eyeglasses=0.'
        )
      name, value_text = (part.strip() for part in item.split('=', 1))
      if name in names:
        raise InputError(f'{where} names {name} twice; name it once.')
      check_attributes([name], attributes, where)
      names.append(name)
      choices.append(_parse_values(value_text, item, where))
    for values in itertools.product(*choices):
      edits.append(dict(zip(names, values, strict=True)))
  return edits


def target_values(source: np.ndarray, edit: dict, attributes):
  """Return (values [A], origins [A]) of one edit from the source values.

  Origins: 'set' (named by the edit), 'exclusive' (turned off because an
  attribute of its exclusive group was set above 0.5), or 'predicted'.
  """
  values = np.asarray(source, np.float32).copy()
  origins = ['predicted'] * len(attributes)
  for name, value in edit.items():
    index = attributes.index(name)
    values[index] = value
    origins[index] = 'set'
  for group in parts.EXCLUSIVE_GROUPS:
    turned_on = [n for n in group if n in edit and edit[n] > 0.5]
    if not turned_on:
      continue
    for name in group:
      if name in attributes and name not in edit:
        values[attributes.index(name)] = 0.0
        origins[attributes.index(name)] = 'exclusive'
  return values, origins


# The model --------------------------------------------------------------


class Editor:
  """A restored run: G's weights, D's weights and compiled functions."""

  def __init__(self, run: restore.RestoredRun, workdir, use_ema: bool = True):
    self.run = run
    self.workdir = str(workdir)
    self.config = run.config
    self.attributes = list(run.attributes)
    self.model_size = int(run.config.data.image_size)
    self.use_ema = use_ema
    state = run.state
    self.g_params = state.g_ema_params if use_ema else state.g_params
    self.d_params = state.d_params
    self.generator = run.networks.generator
    self.discriminator = run.networks.discriminator
    self.d_taps = self.discriminator.tap_names()
    self._predict = jax.jit(self._predict_fn)
    self._generate = jax.jit(self._generate_fn)

  @classmethod
  def load(cls, workdir, step=None, use_ema: bool = True) -> 'Editor':
    """Restore the run in `workdir` at `step` (None: the newest).

    Raises:
      checkpoint.WorkdirError: no run record or checkpoint, an unknown
        step, or a checkpoint of another architecture.
    """
    return cls(restore.restore_run(workdir, step), workdir, use_ema)

  @property
  def step(self) -> int:
    return int(self.run.step)

  def _predict_fn(self, d_params, images):
    x = images.astype(jnp.float32) / 127.5 - 1.0
    _, logits = self.discriminator.apply({'params': d_params}, x)
    return jax.nn.sigmoid(logits)

  def _generate_fn(self, g_params, images, masks, targets, noise):
    x = images.astype(jnp.float32) / 127.5 - 1.0
    mask = masks[..., None].astype(jnp.float32)
    return self.generator.apply({'params': g_params}, x, mask, targets, noise)

  def predict(self, images: np.ndarray) -> np.ndarray:
    """Return D's attribute probabilities [B, A] for uint8 [B, S, S, 3]."""
    return np.asarray(self._predict(self.d_params, jnp.asarray(images)))

  def noise(self, seed: int) -> np.ndarray:
    key = jax.random.key(seed)
    return np.asarray(jax.random.normal(key, (self.generator.noise_dim,)))

  def generate(self, images, masks, targets, noise) -> np.ndarray:
    """Run G and return its raw output [B, S, S, 3] in [-1, 1].

    `images` uint8 [B, S, S, 3], `masks` bool [B, S, S], `targets` [B, A],
    `noise` [B, Z].
    """
    raw = self._generate(
      self.g_params,
      jnp.asarray(images),
      jnp.asarray(masks),
      jnp.asarray(targets, jnp.float32),
      jnp.asarray(noise, jnp.float32),
    )
    return np.asarray(raw)

  def activation_map(self, image, attribute: str, method, layer, side: int):
    """Compute D's map of an attribute logit on a uint8 input [S, S, 3].

    Returns the map [side, side] in [0, 1], upsampled with half-pixel
    centres and divided by its maximum (all zero when the maximum is 0).
    """
    fn = self._map_fn(self.attributes.index(attribute), method, layer)
    weighted_sum = fn(self.d_params, jnp.asarray(image)[None])
    normalised, _ = maps.finish_maps(weighted_sum, (side, side))
    return np.asarray(normalised[0])

  @functools.lru_cache(maxsize=8)  # noqa: B019 (one Editor per process)
  def _map_fn(self, attribute_index: int, method: str, layer: str):
    prefix = models.DISCRIMINATOR_PREFIX
    discriminator = self.discriminator

    def weighted_sum(d_params, images):
      x = images.astype(jnp.float32) / 127.5 - 1.0
      perturbations = maps.prefixed(
        maps.zero_perturbations(discriminator, d_params, x), prefix
      )

      def forward(perturbations):
        variables = {
          'params': d_params,
          'perturbations': maps.split_perturbations(perturbations, prefix),
        }
        (_, logits), features = maps.apply_with_taps(
          discriminator, prefix, variables, x
        )
        return logits[:, attribute_index][:, None], features, None

      _, features, gradients, _ = maps.tap_gradients(forward, perturbations)
      return maps.METHODS[method](features[layer], gradients[layer][0])

    return jax.jit(weighted_sum)

  # Editing one image ----------------------------------------------------

  def edit_image(
    self,
    image_path,
    mask: MaskSpec | str,
    edits,
    *,
    parts_annotation: edit_images.PartAnnotations | str | None = None,
    dilate: float = 0.0,
    feather: float = 0.0,
    seed: int = 0,
  ) -> list['EditResult']:
    """Edit one image file; return one result per edit, nothing written.

    `edits` is a list of {attribute: value} (see `parse_sets`), or `--set`
    texts. `dilate` and `feather` are in pixels of the original image.

    Raises:
      InputError: an unreadable or too small image, a bad mask or
        annotation, an empty mask, or an unknown attribute.
    """
    image_path = Path(image_path)
    if isinstance(mask, str):
      mask = parse_mask(mask, self.attributes, self.config, self.d_taps)
    if not edits or isinstance(edits[0], str):
      edits = parse_sets(edits, self.attributes)
    for edit in edits:
      check_attributes(list(edit), self.attributes, 'edit')
    if isinstance(parts_annotation, str | Path):
      parts_annotation = edit_images.PartAnnotations(parts_annotation)
    if dilate < 0 or feather < 0:
      raise InputError(
        f'dilation {dilate} and feather width {feather} must be >= 0 pixels.'
      )

    reference = edit_images.read_reference(image_path)
    box = edit_images.crop_box(reference.size, self.model_size, image_path)
    model_input = edit_images.to_model_input(
      reference.rgb, box, self.model_size
    )
    before = self.predict(model_input[None])[0]
    source = (before > PREDICTION_THRESHOLD).astype(np.float32)

    full_mask, mask_report = self._mask(
      mask, image_path, reference, box, model_input, parts_annotation
    )
    if dilate > 0:
      full_mask = parts.dilate_disc(full_mask, dilate)
    inside_box = edit_images.clip_to_box(full_mask, box)
    clipped = int(np.count_nonzero(full_mask) - np.count_nonzero(inside_box))
    full_mask = inside_box
    if not full_mask.any():
      raise InputError(
        f'the mask --mask={mask.text} is empty on {image_path.name} inside '
        'the square of the model input; choose other parts, a lower map '
        'threshold, or a larger --dilate.'
      )
    weights = edit_images.feather_weights(full_mask, feather)
    model_mask = edit_images.mask_to_model(full_mask, box, self.model_size)

    rows = [target_values(source, edit, self.attributes) for edit in edits]
    count = len(rows)
    raw = self.generate(
      np.repeat(model_input[None], count, axis=0),
      np.repeat(model_mask[None], count, axis=0),
      np.stack([values for values, _ in rows]),
      np.repeat(self.noise(seed)[None], count, axis=0),
    )
    outputs = []
    for k in range(count):
      edit_full = edit_images.map_back(raw[k], reference.rgb, box)
      outputs.append(edit_images.composite(reference.rgb, edit_full, weights))
    after = self.predict(
      np.stack(
        [
          edit_images.to_model_input(out, box, self.model_size)
          for out in outputs
        ]
      )
    )

    mask_report.update(
      dilation_px=float(dilate),
      feather_px=float(feather),
      area_px=int(np.count_nonzero(full_mask)),
      area_fraction=float(np.mean(full_mask)),
      clipped_px=clipped,
      model_mask_area_px=int(np.count_nonzero(model_mask)),
    )
    common = {
      'format_version': REPORT_VERSION,
      'image': str(image_path),
      'workdir': self.workdir,
      'checkpoint_step': self.step,
      'generator_weights': 'ema' if self.use_ema else 'generator',
      'width': reference.size[1],
      'height': reference.size[0],
      'mode': reference.mode,
      'exif_transposed': reference.exif_transposed,
      'alpha': reference.alpha is not None,
      'crop_box': dataclasses.asdict(box),
      'model_size': self.model_size,
      'mask': mask_report,
      'noise_seed': seed,
    }
    results = []
    for k, (edit, (values, origins)) in enumerate(
      zip(edits, rows, strict=True)
    ):
      report = dict(common)
      report['edit'] = {name: float(value) for name, value in edit.items()}
      report['attributes'] = {
        name: {'value': float(values[i]), 'origin': origins[i]}
        for i, name in enumerate(self.attributes)
      }
      report['mean_change'] = _mean_change(reference.rgb, outputs[k], full_mask)
      report['probabilities'] = {
        'before': _by_name(self.attributes, before),
        'after': _by_name(self.attributes, after[k]),
      }
      results.append(
        EditResult(
          image=outputs[k],
          alpha=reference.alpha,
          reference=reference.rgb,
          weights=weights,
          report=report,
        )
      )
    return results

  def _mask(self, spec, image_path, reference, box, model_input, annotation):
    size = reference.size
    if spec.kind == 'parts':
      if annotation is None:
        raise InputError(
          f'--mask={spec.text} names face parts, which need a part '
          'annotation; pass --parts=LABEL_MAP.png or a CelebAMask-HQ part '
          'folder, or use a mask image or map:ATTR@T.'
        )
      mask, source = annotation.mask(image_path, spec.part_names, size)
      return mask, {
        'kind': 'parts',
        'parts': list(spec.part_names),
        'annotation': source,
      }
    if spec.kind in ('file', 'folder'):
      path = spec.path
      if spec.kind == 'folder':
        path = _paired_file(spec.path, image_path)
      mask = edit_images.read_mask_image(path, size)
      return mask, {
        'kind': 'file',
        'path': str(path),
        'threshold': edit_images.MASK_THRESHOLD,
      }
    activation = self.activation_map(
      model_input, spec.attribute, spec.method, spec.layer, box.side
    )
    mask = np.zeros(size, bool)
    mask[box.slices] = activation >= spec.threshold
    return mask, {
      'kind': 'map',
      'attribute': spec.attribute,
      'threshold': spec.threshold,
      'method': spec.method,
      'layer': spec.layer,
    }


@dataclasses.dataclass(frozen=True)
class EditResult:
  """One edit at the original size: uint8 image [H, W, 3], alpha or None,
  the reference, the blend weights [H, W] and the JSON report."""

  image: np.ndarray
  alpha: np.ndarray | None
  reference: np.ndarray
  weights: np.ndarray
  report: dict


def _by_name(attributes, values) -> dict:
  return {name: float(values[i]) for i, name in enumerate(attributes)}


def _mean_change(reference, output, mask) -> dict:
  """Compute the mean absolute change (0 to 255) inside and outside."""
  change = np.abs(output.astype(np.float64) - reference.astype(np.float64))
  inside = change[mask]
  outside = change[~mask]
  return {
    'inside': float(inside.mean()) if inside.size else 0.0,
    'outside': float(outside.mean()) if outside.size else 0.0,
  }


def _paired_file(folder: Path, image_path: Path) -> Path:
  for suffix in edit_images.IMAGE_SUFFIXES:
    for candidate in (suffix, suffix.upper()):
      path = folder / f'{image_path.stem}{candidate}'
      if path.is_file():
        return path
  raise InputError(
    f'no mask for {image_path.name} in {folder}; add {image_path.stem}.png.'
  )


# Files ------------------------------------------------------------------


def list_images(image) -> list[Path]:
  """List the image file, or the PNG and JPEG files of a folder by name."""
  path = Path(image)
  if path.is_file():
    return [path]
  if not path.is_dir():
    raise InputError(
      f'--image={image} not found; pass an image file or a folder.'
    )
  files = sorted(
    p
    for p in path.iterdir()
    if p.is_file() and p.suffix.lower() in edit_images.IMAGE_SUFFIXES
  )
  if not files:
    raise InputError(
      f'--image={image} has no PNG or JPEG files; pass a folder of images.'
    )
  stems = [p.stem for p in files]
  repeated = sorted({s for s in stems if stems.count(s) > 1})
  if repeated:
    raise InputError(
      f'--image={image} has several files named {repeated[0]} with '
      'different suffixes, whose outputs would collide; rename them.'
    )
  return files


def output_names(stem: str, count: int) -> list[str]:
  width = len(str(count - 1))
  return [f'{stem}_{k:0{width}d}' for k in range(count)]


def write_results(results, out: Path, stem: str) -> list[dict]:
  """Write each result's PNG, strip PNG and JSON report, each atomically."""
  out.mkdir(parents=True, exist_ok=True)
  written = []
  for name, result in zip(
    output_names(stem, len(results)), results, strict=True
  ):
    report = dict(result.report)
    report['output'] = f'{name}.png'
    report['strip'] = f'{name}_strip.png'
    picture = edit_images.output_picture(result.image, result.alpha)
    strip = edit_images.strip_picture(
      result.reference, result.weights, result.image
    )
    checkpoint.write_atomic(out / f'{name}.png', edit_images.png_bytes(picture))
    checkpoint.write_atomic(
      out / f'{name}_strip.png', edit_images.png_bytes(strip)
    )
    checkpoint.write_atomic(
      out / f'{name}.json', json.dumps(report, indent=2) + '\n'
    )
    written.append(report)
  return written


def edit_files(
  editor: Editor,
  image,
  out,
  *,
  mask: str,
  sets,
  parts: str | None = None,
  dilate: float = 0.0,
  feather: float = 0.0,
  seed: int = 0,
  progress=None,
) -> dict:
  """Edit an image file or every image of a folder; write PNGs and reports.

  For each image and edit, `out` receives `<stem>_<k>.png` (the edit at the
  original size, RGBA when the input has alpha), `<stem>_<k>_strip.png`
  and `<stem>_<k>.json`, and the run gets `report.json` listing every
  output and failure. All checks that need no image run before any image
  is read. An image that fails is reported and the rest are edited; with a
  single image its error is raised and nothing is written.

  Returns the run report. Raises InputError as described above.
  """
  out = Path(out)
  mask_spec = parse_mask(mask, editor.attributes, editor.config, editor.d_taps)
  edits = parse_sets(sets, editor.attributes)
  files = list_images(image)
  annotation = edit_images.PartAnnotations(parts) if parts else None
  if mask_spec.kind == 'parts' and annotation is None:
    raise InputError(
      f'--mask={mask} names face parts, which need a part annotation; pass '
      '--parts=LABEL_MAP.png or a CelebAMask-HQ part folder.'
    )
  if out.exists() and not out.is_dir():
    raise InputError(f'--out={out} is a file; pass a folder.')

  outputs, failures = [], []
  for index, path in enumerate(files):
    try:
      results = editor.edit_image(
        path,
        mask_spec,
        edits,
        parts_annotation=annotation,
        dilate=dilate,
        feather=feather,
        seed=seed,
      )
    except InputError as error:
      if len(files) == 1:
        raise
      message = str(error).strip().splitlines()[0]
      logging.warning('Skipped %s: %s', path, message)
      failures.append({'image': str(path), 'error': message})
      continue
    outputs += write_results(results, out, path.stem)
    if progress is not None:
      progress(index + 1, len(files))

  summary = {
    'format_version': REPORT_VERSION,
    'workdir': editor.workdir,
    'checkpoint_step': editor.step,
    'images': len(files),
    'edits_per_image': len(edits),
    'outputs': [report['output'] for report in outputs],
    'failures': failures,
  }
  out.mkdir(parents=True, exist_ok=True)
  checkpoint.write_atomic(
    out / RUN_REPORT_NAME, json.dumps(summary, indent=2) + '\n'
  )
  return summary
