"""The evaluator's library: the judge classifier and the run's scores.

See `cganjax.evaluate` for the command line and what each score means.
"""

import hashlib
import json
import time
from pathlib import Path

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from cganjax import checkpoint, losses, masks, restore, samples, step
from cganjax.data import pipeline, synthetic
from cganjax.errors import InputError

# Fixed seeds of the judge: its weights, its training images and the
# evaluation images, so that runs with different seeds meet the same judge.
JUDGE_SEED = 20_261_204
JUDGE_DATA_SEED = 7_001
EVAL_DATA_SEED = 7_002
# The judge trains on examples with |pose| and |lighting| up to this bound.
CENTRAL_RANGE = 0.6
JUDGE_VERSION = 2


class Judge(nn.Module):
  """Attribute classifier used only for evaluation."""

  num_attributes: int

  @nn.compact
  def __call__(self, image: jax.Array) -> jax.Array:
    h = image
    for channels in (32, 64, 128, 128):
      for _ in range(2):
        h = nn.Conv(channels, (3, 3))(h)
        h = nn.LayerNorm()(h)
        h = nn.relu(h)
      h = nn.avg_pool(h, (2, 2), (2, 2))
    h = jnp.mean(h, axis=(1, 2))
    h = nn.relu(nn.Dense(128)(h))
    return nn.Dense(self.num_attributes)(h)


def judge_key(config) -> str:
  settings = {
    'version': JUDGE_VERSION,
    'data': config.data.name,
    'image_size': config.data.image_size,
    'steps': config.evaluate.classifier_steps,
    'batch_size': config.evaluate.batch_size,
    'images': config.evaluate.classifier_images,
    'test_images': config.evaluate.classifier_test_images,
  }
  digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
  name = f'{config.data.name}_{config.data.image_size}'
  return f'{name}_{digest.hexdigest()[:10]}'


def in_central_range(pose: np.ndarray, lighting: np.ndarray) -> np.ndarray:
  return (np.abs(pose) <= CENTRAL_RANGE) & (np.abs(lighting) <= CENTRAL_RANGE)


def render(seed: int, indices, size: int, overrides=None) -> dict:
  return synthetic.render_batch(seed, np.asarray(indices), size, overrides)


def collect(seed: int, size: int, count: int, central: bool, start: int):
  """Render examples from id `start` on, keeping `count` inside or outside
  the central pose and lighting range."""
  selected, index = [], start
  chunk = 256
  while sum(len(k['image']) for k in selected) < count:
    batch = render(seed, np.arange(index, index + chunk), size)
    keep = in_central_range(batch['pose'], batch['lighting'])
    keep = keep if central else ~keep
    selected.append({k: v[keep] for k, v in batch.items()})
    index += chunk
  return {
    k: np.concatenate([c[k] for c in selected])[:count] for k in selected[0]
  }


def judge_accuracy(judge, params, images, attributes, batch_size) -> np.ndarray:
  predictions = predict(judge, params, images, batch_size)
  return np.mean(predictions == attributes.astype(bool), axis=0)


def predict(judge, params, images, batch_size) -> np.ndarray:
  apply = jax.jit(lambda p, x: judge.apply({'params': p}, x) > 0)
  out = []
  for start in range(0, len(images), batch_size):
    chunk = step.image_to_float(jnp.asarray(images[start : start + batch_size]))
    out.append(np.asarray(apply(params, chunk)))
  return np.concatenate(out)


def train_judge(config, attributes) -> tuple[dict, dict]:
  """Train the judge; return its parameters and held-out accuracies."""
  size = config.data.image_size
  batch_size = config.evaluate.batch_size
  pool_size = config.evaluate.classifier_images
  test_size = config.evaluate.classifier_test_images
  if pool_size < batch_size or test_size <= 0:
    raise InputError(
      f'evaluate.classifier_images={pool_size} must be at least '
      f'evaluate.batch_size={batch_size}, and '
      f'evaluate.classifier_test_images={test_size} positive.'
    )
  logging.info('Training the judge: rendering %d images.', pool_size)
  pool = collect(JUDGE_DATA_SEED, size, pool_size, central=True, start=0)
  judge = Judge(len(attributes))
  rng = jax.random.key(JUDGE_SEED)
  params = judge.init(rng, jnp.zeros((1, size, size, 3)))['params']
  steps = config.evaluate.classifier_steps
  schedule = optax.warmup_cosine_decay_schedule(
    0.0, 1e-3, min(200, steps // 10), steps
  )
  optimizer = optax.adam(schedule)
  opt_state = optimizer.init(params)

  @jax.jit
  def train_step(params, opt_state, images, labels):
    def loss_fn(params):
      logits = judge.apply({'params': params}, step.image_to_float(images))
      return losses.attribute_loss(logits, labels.astype(jnp.float32))

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  order_rng = np.random.default_rng(JUDGE_SEED)
  order = order_rng.permutation(pool_size)
  position = 0
  started = time.time()
  steps = config.evaluate.classifier_steps
  for judge_step in range(1, steps + 1):
    if position + batch_size > pool_size:
      order, position = order_rng.permutation(pool_size), 0
    picked = order[position : position + batch_size]
    position += batch_size
    params, opt_state, loss = train_step(
      params, opt_state, pool['image'][picked], pool['attributes'][picked]
    )
    if judge_step % 500 == 0 or judge_step == steps:
      rate = judge_step / (time.time() - started)
      logging.info(
        'judge step %d/%d  loss %.4f  %.1f steps/s  ETA %.0f s',
        judge_step,
        steps,
        float(loss),
        rate,
        (steps - judge_step) / rate,
      )

  # Held-out ids start past any id the pool could have used.
  start = 1 << 24
  central = collect(JUDGE_DATA_SEED, size, test_size, True, start)
  outer = collect(JUDGE_DATA_SEED, size, test_size, False, start)
  accuracy = {
    'central': judge_accuracy(
      judge, params, central['image'], central['attributes'], batch_size
    ).tolist(),
    'held_out_range': judge_accuracy(
      judge, params, outer['image'], outer['attributes'], batch_size
    ).tolist(),
  }
  return params, accuracy


def load_or_train_judge(config, attributes, classifier_dir) -> tuple:
  """Return (judge, params, meta), training and caching it on first use."""
  folder = Path(classifier_dir) / judge_key(config)
  judge = Judge(len(attributes))
  params_path = folder / 'params.msgpack'
  meta_path = folder / 'meta.json'
  if params_path.exists() and meta_path.exists():
    meta = json.loads(meta_path.read_text())
    size = config.data.image_size
    target = judge.init(jax.random.key(0), jnp.zeros((1, size, size, 3)))
    params = flax.serialization.from_bytes(
      target['params'], params_path.read_bytes()
    )
    logging.info('Loaded the judge from %s.', folder)
    return judge, params, meta

  params, accuracy = train_judge(config, attributes)
  meta = {
    'attributes': list(attributes),
    'accuracy': accuracy,
    'central_range': CENTRAL_RANGE,
    'key': judge_key(config),
  }
  try:
    folder.mkdir(parents=True, exist_ok=True)
    # Parameters first: a folder with meta.json is complete.
    checkpoint.write_atomic(params_path, flax.serialization.to_bytes(params))
    checkpoint.write_atomic(meta_path, json.dumps(meta, indent=2))
  except OSError as error:
    raise InputError(
      f'cannot write the judge to {folder} ({error.strerror}); pass a '
      'writable --classifier_dir.'
    ) from None
  logging.info('Saved the judge to %s.', folder)
  return judge, params, meta


def restore_generator(workdir, step_number):
  """Restore the run's config, attributes, networks, step and EMA of G."""
  run = restore.restore_run(workdir, step_number)
  return (
    run.config,
    run.attributes,
    run.networks,
    run.step,
    run.state.g_ema_params,
  )


def check_evaluable(config, num_images=None) -> int:
  """Return the number of images to score, or raise why the run cannot be.

  Raises:
    InputError: a non-positive count, a real data set with fewer held-out
      images than that count, or any other real data set.
  """
  count = num_images or config.evaluate.num_images
  if count <= 0:
    raise InputError(f'--num_images={count} must be positive.')
  if config.data.name != 'synthetic':
    # Figures from a handful of held-out faces would mean nothing, so a
    # small real set (such as the four-face CelebAMask-HQ sample) is
    # rejected for that reason first.
    held_out = pipeline.dataset_info(config).num_test
    if held_out < count:
      raise InputError(
        f"too few held-out images: data.name='{config.data.name}' has "
        f'{held_out} and the evaluator scores {count} '
        '(evaluate.num_images or --num_images); evaluate a run on a larger '
        'data set.'
      )
    raise InputError(
      f"data.name='{config.data.name}': this version evaluates runs on the "
      'synthetic set only, because it needs counterfactual faces.'
    )
  return count


def evaluate_run(
  workdir,
  step=None,
  classifier_dir=None,
  num_images=None,
  output=None,
) -> dict:
  """Score the run in `workdir`; write and return the report."""
  count = check_evaluable(
    checkpoint.load_run_record(workdir)['config'], num_images
  )
  config, attributes, networks, restored_step, g_params = restore_generator(
    workdir, step
  )
  classifier_dir = classifier_dir or Path.home() / '.cache/cganjax/classifiers'
  judge, judge_params, meta = load_or_train_judge(
    config, attributes, classifier_dir
  )

  scores = score_edits(config, networks, g_params, judge, judge_params, count)
  report = {
    'workdir': str(workdir),
    'step': restored_step,
    'num_images': count,
    'attributes': list(attributes),
    'judge': meta,
    **scores,
  }
  path = Path(output) if output else Path(workdir) / 'eval'
  if not output:
    path = path / f'step_{restored_step}.json'
  path.parent.mkdir(parents=True, exist_ok=True)
  checkpoint.write_atomic(path, json.dumps(report, indent=2))
  report['output'] = str(path)
  return report


def score_edits(config, networks, g_params, judge, judge_params, count):
  """Generate and edit the evaluation images; return per-attribute scores."""
  attributes = networks.regions.attributes
  size = config.data.image_size
  batch_size = config.evaluate.batch_size
  exclusive = step.exclusive_matrix(attributes)
  dilation = config.masks.part_dilation * size
  generator = networks.generator
  edit = jax.jit(
    lambda p, image, mask, target, noise: samples.edit_batch(
      generator, p, image, mask, target, noise
    )
  )
  regions_fn = jax.jit(
    lambda parts: masks.dilate(networks.regions.regions(parts), dilation)
  )
  judge_fn = jax.jit(lambda p, x: judge.apply({'params': p}, x) > 0)

  num_attributes = len(attributes)
  generated_hits = np.zeros(num_attributes)
  edit_hits = np.zeros(num_attributes)
  edit_counts = np.zeros(num_attributes)
  outside_change = np.zeros(num_attributes)
  counterfactual_l1 = np.zeros(num_attributes)
  started = time.time()
  noise_key = jax.random.key(EVAL_DATA_SEED)
  for start in range(0, count, batch_size):
    ids = pipeline.test_indices(start, min(batch_size, count - start))
    batch = render(EVAL_DATA_SEED, ids, size)
    image = step.image_to_float(jnp.asarray(batch['image']))
    source = jnp.asarray(batch['attributes'], jnp.float32)
    noise = jax.random.normal(
      jax.random.fold_in(noise_key, start), (len(ids), generator.noise_dim)
    )

    whole = jnp.ones(image.shape[:3] + (1,), jnp.float32)
    drawn = edit(g_params, image, whole, source, noise)
    predicted = np.asarray(judge_fn(judge_params, drawn))
    generated_hits += np.sum(predicted == (np.asarray(source) > 0.5), axis=0)

    regions = np.asarray(regions_fn(jnp.asarray(batch['parts'])))
    for a, name in enumerate(attributes):
      if not networks.regions.has_region[a]:
        continue
      mask = jnp.asarray(regions[:, a, :, :, None], jnp.float32)
      target = samples.flip_targets(source, a, exclusive)
      edited = edit(g_params, image, mask, target, noise)
      edited_u8 = np.asarray(samples.to_uint8(edited))
      predicted = np.asarray(judge_fn(judge_params, edited))
      expected = np.asarray(target[:, a]) > 0.5
      edit_hits[a] += np.sum(predicted[:, a] == expected)
      edit_counts[a] += len(ids)

      inside = regions[:, a]
      difference = np.abs(
        edited_u8.astype(np.int32) - batch['image'].astype(np.int32)
      )
      outside_pixels = max(int((~inside).sum()) * 3, 1)
      outside_change[a] += (
        (difference * ~inside[..., None]).sum() / (outside_pixels) * len(ids)
      )

      cf_error = 0.0
      for b, index in enumerate(ids):
        override = {name: bool(expected[b])}
        cf = synthetic.render(EVAL_DATA_SEED, int(index), size, override)
        error = np.abs(
          edited_u8[b].astype(np.float64) - cf['image'].astype(np.float64)
        )
        pixels = max(int(inside[b].sum()) * 3, 1)
        cf_error += (error * inside[b][..., None]).sum() / pixels / 255.0
      counterfactual_l1[a] += cf_error
    done = start + len(ids)
    rate = done / (time.time() - started)
    logging.info(
      'evaluated %d/%d images  %.1f images/s  ETA %.0f s',
      done,
      count,
      rate,
      (count - done) / rate,
    )

  safe = np.maximum(edit_counts, 1)
  has_region = networks.regions.has_region
  return {
    'generated_accuracy': (generated_hits / count).tolist(),
    'edit_accuracy': np.where(has_region, edit_hits / safe, np.nan).tolist(),
    'outside_change': np.where(
      has_region, outside_change / safe, np.nan
    ).tolist(),
    'counterfactual_l1': np.where(
      has_region, counterfactual_l1 / safe, np.nan
    ).tolist(),
  }


def format_table(report: dict) -> str:
  """Render the report as a fixed-width text table."""
  judge = report['judge']['accuracy']
  lines = [
    f'Run {report["workdir"]}, step {report["step"]}, '
    f'{report["num_images"]} test images.',
    'Judge accuracy is on held-out images with pose and lighting inside '
    f'|{CENTRAL_RANGE}| (central) and outside it (outer).',
    '',
    f'{"attribute":<20} {"judge":>7} {"judge":>7} {"generated":>9} '
    f'{"edit":>7} {"outside":>8} {"cf L1":>7}',
    f'{"":<20} {"central":>7} {"outer":>7} {"accuracy":>9} '
    f'{"accuracy":>7} {"change":>8} {"inside":>7}',
  ]
  columns = zip(
    report['attributes'],
    judge['central'],
    judge['held_out_range'],
    report['generated_accuracy'],
    report['edit_accuracy'],
    report['outside_change'],
    report['counterfactual_l1'],
    strict=True,
  )
  for name, central, outer, generated, edited, outside, cf in columns:
    lines.append(
      f'{name:<20} {central:>7.3f} {outer:>7.3f} {generated:>9.3f} '
      f'{edited:>7.3f} {outside:>8.3f} {cf:>7.3f}'
    )
  means = [
    np.nanmean(judge['central']),
    np.nanmean(judge['held_out_range']),
    np.nanmean(report['generated_accuracy']),
    np.nanmean(report['edit_accuracy']),
    np.nanmean(report['outside_change']),
    np.nanmean(report['counterfactual_l1']),
  ]
  lines.append(
    f'{"mean":<20} {means[0]:>7.3f} {means[1]:>7.3f} {means[2]:>9.3f} '
    f'{means[3]:>7.3f} {means[4]:>8.3f} {means[5]:>7.3f}'
  )
  lines.append(f'Written to {report.get("output", "")}')
  return '\n'.join(lines)
