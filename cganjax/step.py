"""Train state and the data-parallel training step.

One compiled step updates D, then G with the updated D, then the EMA copy of
G. It runs SPMD over a 1-D device mesh with axis `data` through
`jax.shard_map`. Each device computes on its slice of the global batch,
losses and metrics are averaged with `lax.pmean`, and the state is
replicated.
Noise, masks and attribute flips come from a key per global example, so the
device count does not change the result.
"""

import dataclasses
import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from cganjax import features, losses, masks, models
from cganjax.data import parts
from cganjax.errors import InputError

DATA_AXIS = 'data'


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  g_params: Any
  d_params: Any
  g_ema_params: Any
  g_opt_state: Any
  d_opt_state: Any
  # Steps whose update was skipped because a loss or gradient was not finite.
  nonfinite_steps: jax.Array
  consecutive_nonfinite: jax.Array


@dataclasses.dataclass(frozen=True)
class Networks:
  generator: models.Generator
  discriminator: models.Discriminator
  g_optimizer: optax.GradientTransformation
  d_optimizer: optax.GradientTransformation
  regions: masks.RegionTable


def create_networks(config, attributes) -> Networks:
  """Build the networks of `model.arch` ('cganjax' or 'stargan')."""
  arch = config.model.get('arch', 'cganjax')
  if arch == 'stargan':
    from cganjax import stargan  # It imports this module.

    generator, discriminator = stargan.create_models(config, attributes)
  elif arch == 'cganjax':
    generator, discriminator = models.create_models(config, len(attributes))
  else:
    raise InputError(
      f"model.arch={arch!r} is not supported; use 'cganjax' or 'stargan'."
    )
  optim = config.optim
  g_optimizer = optax.adam(optim.g_learning_rate, b1=optim.b1, b2=optim.b2)
  d_optimizer = optax.adam(optim.d_learning_rate, b1=optim.b1, b2=optim.b2)
  return Networks(
    generator=generator,
    discriminator=discriminator,
    g_optimizer=g_optimizer,
    d_optimizer=d_optimizer,
    regions=masks.RegionTable(
      attributes, parts.dataset_regions(config.data.name)
    ),
  )


def create_train_state(config, networks: Networks) -> TrainState:
  rng = jax.random.fold_in(jax.random.key(config.seed), 0x5EED)
  g_params, d_params = models.init_params(
    networks.generator, networks.discriminator, rng, config.data.image_size
  )
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    g_params=g_params,
    d_params=d_params,
    g_ema_params=jax.tree.map(jnp.copy, g_params),
    g_opt_state=networks.g_optimizer.init(g_params),
    d_opt_state=networks.d_optimizer.init(d_params),
    nonfinite_steps=jnp.zeros((), jnp.int32),
    consecutive_nonfinite=jnp.zeros((), jnp.int32),
  )


def create_mesh(devices=None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def exclusive_matrix(attributes) -> np.ndarray:
  """[A, A] bool: entry (a, b) is true when b must turn off if a turns on."""
  index = {name: i for i, name in enumerate(attributes)}
  matrix = np.zeros((len(attributes),) * 2, bool)
  for group in parts.EXCLUSIVE_GROUPS:
    members = [index[name] for name in group if name in index]
    for a in members:
      for b in members:
        matrix[a, b] = a != b
  return matrix


def image_to_float(image: jax.Array) -> jax.Array:
  return image.astype(jnp.float32) / 127.5 - 1.0


def example_keys(step_key: jax.Array, global_index: jax.Array) -> jax.Array:
  return jax.vmap(lambda i: jax.random.fold_in(step_key, i))(global_index)


def draw_inputs(config, networks: Networks, batch: dict, keys: jax.Array):
  """Draw masks, target attributes and noise, one key per example.

  Returns a dict with `image` (float [-1, 1]), `mask` [B, H, W, 1], `source`
  and `target` attributes [B, A] (float 0/1), `noise` [B, Z] and
  `reconstruct` [B], 1 where the mask edits nothing (reconstruction applies).
  """
  mask_config = config.masks
  image = image_to_float(batch['image'])
  source = batch['attributes'].astype(jnp.float32)
  _, height, width, _ = image.shape
  num_attributes = source.shape[-1]

  regions = networks.regions.regions(batch['parts'])
  nonempty = jnp.any(regions, axis=(2, 3))
  has_region = jnp.asarray(networks.regions.has_region)
  exclusive = jnp.asarray(exclusive_matrix(networks.regions.attributes))

  def per_example(key, region_nonempty):
    type_key, choice_key, flip_key, noise_key = jax.random.split(key, 4)
    u = jax.random.uniform(type_key)
    kind = jnp.where(
      u < mask_config.whole_prob,
      masks.WHOLE,
      jnp.where(
        u < mask_config.whole_prob + mask_config.part_prob,
        masks.PART,
        masks.FREE_FORM,
      ),
    )
    candidates = has_region & region_nonempty
    logits = jnp.where(candidates, 0.0, -jnp.inf)
    chosen = jax.random.categorical(choice_key, logits)
    usable = jnp.any(candidates)
    kind = jnp.where((kind == masks.PART) & ~usable, masks.FREE_FORM, kind)
    flip = jax.random.bernoulli(flip_key, mask_config.flip_prob) & (
      kind == masks.PART
    )
    noise = jax.random.normal(noise_key, (networks.generator.noise_dim,))
    return kind, chosen, flip, noise

  kind, chosen, flip, noise = jax.vmap(per_example)(keys, nonempty)

  chosen_onehot = jax.nn.one_hot(chosen, num_attributes, dtype=jnp.bool_)
  part_mask = jnp.any(regions & chosen_onehot[:, :, None, None], axis=1)
  part_mask = masks.dilate(part_mask, mask_config.part_dilation * height)
  stroke_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
  stroke_mask = masks.free_form_masks(
    stroke_keys,
    height,
    width,
    mask_config.free_form_max_strokes,
    mask_config.free_form_max_width,
  )
  mask = jnp.where(
    (kind == masks.WHOLE)[:, None, None],
    True,
    jnp.where((kind == masks.PART)[:, None, None], part_mask, stroke_mask),
  )

  flipped_value = 1.0 - jnp.sum(source * chosen_onehot, axis=-1)
  turns_on = flip & (flipped_value > 0.5)
  switched_off = turns_on[:, None] & exclusive[chosen]
  target = jnp.where(switched_off, 0.0, source)
  target = jnp.where(
    flip[:, None] & chosen_onehot, flipped_value[:, None], target
  )

  return {
    'image': image,
    'mask': mask[..., None].astype(jnp.float32),
    'source': source,
    'target': target,
    'noise': noise,
    'reconstruct': ((kind != masks.WHOLE) & ~flip).astype(jnp.float32),
  }


def all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves))


def select_tree(condition: jax.Array, when_true, when_false):
  return jax.tree.map(
    lambda a, b: jnp.where(condition, a, b), when_true, when_false
  )


def next_state(config, state: TrainState, g_update, d_update):
  """Assemble the state after one D and one G update.

  `g_update` and `d_update` are `(params, opt_state, finite)` as returned by
  `guarded_update`. G's EMA moves only when G's update was finite. Returns
  the new state and `skipped`, an int32 that is 1 when either update was
  skipped for a non-finite value.
  """
  g_params, g_opt_state, g_finite = g_update
  d_params, d_opt_state, d_finite = d_update
  g_ema_params = optax.incremental_update(
    g_params, state.g_ema_params, 1.0 - ema_decay(config, state.step)
  )
  g_ema_params = select_tree(g_finite, g_ema_params, state.g_ema_params)
  skipped = (~(d_finite & g_finite)).astype(jnp.int32)
  new_state = TrainState(
    step=state.step + 1,
    g_params=g_params,
    d_params=d_params,
    g_ema_params=g_ema_params,
    g_opt_state=g_opt_state,
    d_opt_state=d_opt_state,
    nonfinite_steps=state.nonfinite_steps + skipped,
    consecutive_nonfinite=(state.consecutive_nonfinite + 1) * skipped,
  )
  return new_state, skipped


def guarded_update(loss_fn, optimizer, params, opt_state):
  """Apply one optimizer update unless it would not be finite.

  `loss_fn(params)` returns `(loss, metrics)`. When the loss, a gradient or
  an updated parameter is not finite, the parameters and the optimizer
  state are returned unchanged. Returns (params, opt_state, finite, metrics).
  """
  (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  updates, new_opt_state = optimizer.update(grads, opt_state, params)
  new_params = optax.apply_updates(params, updates)
  finite = jnp.isfinite(loss) & all_finite(grads) & all_finite(new_params)
  new_params = select_tree(finite, new_params, params)
  new_opt_state = select_tree(finite, new_opt_state, opt_state)
  return new_params, new_opt_state, finite, metrics


def ema_decay(config, step_number: jax.Array) -> jax.Array:
  """EMA decay at a step: (1 + t) / (10 + t), capped at optim.ema_decay.

  The warm-up keeps the EMA from averaging in the random initial weights,
  which would otherwise dominate it for the first thousands of steps.
  """
  t = step_number.astype(jnp.float32)
  return jnp.minimum(config.optim.ema_decay, (1.0 + t) / (10.0 + t))


def lazy_r1(config, discriminator, d_params, image, step_number) -> jax.Array:
  """Weighted R1 term: gamma / 2 * R1 * interval every `interval` steps.

  Lazy regularisation as in StyleGAN2: computing the penalty on one step in
  `interval` and scaling it by `interval` keeps its average strength.
  Returns 0 on the other steps, and always when the weight is 0.
  """
  r1_config = config.loss.r1
  if r1_config.weight <= 0:
    return jnp.zeros((), jnp.float32)
  interval = max(int(r1_config.interval), 1)

  def penalty():
    realness = lambda x: discriminator.apply({'params': d_params}, x)[0]
    value = losses.r1_penalty(realness, image)
    return 0.5 * r1_config.weight * interval * value

  def skip():
    # Marked as varying over `data`, like the penalty of local images, so
    # that both branches of the cond have the same type under shard_map.
    return jax.lax.pcast(jnp.zeros((), jnp.float32), DATA_AXIS, to='varying')

  due = step_number % interval == 0
  return jax.lax.cond(due, penalty, skip)


def global_mean(local_loss: jax.Array) -> jax.Array:
  """Average a per-device loss over the `data` axis.

  Differentiating this global mean with respect to the replicated
  parameters gives the global mean gradient, already the same on every
  device. NOTE: this relies on `jax.shard_map` tracking which values vary
  across devices (`check_vma=True`, the default in JAX 0.10). There the
  transpose of the implicit broadcast of a replicated parameter is a `psum`.
  So the gradient of the local loss followed by a `pmean` of the gradients
  would be the device count times the mean gradient.
  """
  return jax.lax.pmean(local_loss, DATA_AXIS)


REGIONS = ('inside', 'outside', 'all')
ENTROPY_HEADS = ('sigmoid',)


def validate_loss_config(config) -> None:
  """Raise a one-line InputError for loss settings the step cannot use."""
  arch = config.model.get('arch', 'cganjax')
  if arch == 'stargan':
    from cganjax import stargan

    stargan.validate_loss_config(config)
    return
  if arch != 'cganjax':
    raise InputError(
      f"model.arch={arch!r} is not supported; use 'cganjax' or 'stargan'."
    )
  loss_config = config.loss
  adversarial_type = loss_config.adversarial.type
  if adversarial_type not in losses.ADVERSARIAL_LOSSES:
    raise InputError(
      f'loss.adversarial.type={adversarial_type!r} is not supported; use one '
      f'of {", ".join(losses.ADVERSARIAL_LOSSES)}.'
    )
  for key in (
    'style.weight',
    'perceptual.weight',
    'entropy.conditional_weight',
    'entropy.marginal_weight',
    'tv.weight',
  ):
    section, name = key.split('.')
    weight = loss_config[section][name]
    if not weight >= 0:
      raise InputError(
        f'loss.{key}={weight} is invalid; use a weight >= 0 (0 turns the '
        'term off).'
      )
  for section in ('style', 'perceptual'):
    region = loss_config[section].region
    if region not in REGIONS:
      raise InputError(
        f'loss.{section}.region={region!r} is not supported; use one of '
        f'{", ".join(REGIONS)}.'
      )
  head = loss_config.entropy.head
  if head not in ENTROPY_HEADS:
    raise InputError(
      f"loss.entropy.head={head!r} is not supported: the discriminator's "
      "attribute logits are independent binary logits, so use 'sigmoid'."
    )
  extractor = loss_config.features.extractor
  if extractor not in features.EXTRACTORS:
    raise InputError(
      f'loss.features.extractor={extractor!r} is not supported; use one of '
      f'{", ".join(features.EXTRACTORS)}.'
    )


@dataclasses.dataclass(frozen=True)
class FeatureSetup:
  """The feature extractor of the style and perceptual losses and its layers."""

  extractor: features.FeatureExtractor
  layers: tuple[str, ...]

  def extract(self, feature_params, d_params, images) -> list[jax.Array]:
    """Features of `images`; D's parameters serve the D extractor."""
    params = d_params if self.extractor.params is None else feature_params
    return self.extractor(params, images, self.layers)


def create_feature_setup(config, networks: Networks) -> FeatureSetup | None:
  """Build the extractor when a feature loss is on, else return None.

  The VGG-19 weights file is read here, so a missing or malformed file
  fails before the first step.
  """
  loss_config = config.loss
  if loss_config.style.weight <= 0 and loss_config.perceptual.weight <= 0:
    return None
  extractor = features.create_extractor(
    loss_config.features, networks.discriminator
  )
  return FeatureSetup(
    extractor=extractor,
    layers=extractor.select_layers(loss_config.style.layers),
  )


def region_mask(region: str, mask: jax.Array) -> jax.Array | None:
  """Return the mask of a feature loss: `mask`, its complement or None."""
  if region == 'inside':
    return mask
  if region == 'outside':
    return 1.0 - mask
  return None


def feature_terms(config, real_features, fake_features, inputs) -> dict:
  """Weighted style and perceptual terms of G, as {name: (weight, value)}.

  Style compares every example, edits included: an edit should keep the
  texture statistics of the face. Perceptual compares only examples whose
  mask flips nothing, like the L1 reconstruction, because features of an
  edited region should differ from the original's.
  """
  loss_config = config.loss
  mask = inputs['mask']
  terms = {}
  if loss_config.style.weight > 0:
    style = losses.style_loss(
      real_features,
      fake_features,
      region_mask(loss_config.style.region, mask),
    )
    terms['style'] = (loss_config.style.weight, style)
  if loss_config.perceptual.weight > 0:
    perceptual = losses.perceptual_loss(
      real_features,
      fake_features,
      region_mask(loss_config.perceptual.region, mask),
      inputs['reconstruct'],
    )
    terms['perceptual'] = (loss_config.perceptual.weight, perceptual)
  return terms


def entropy_terms(config, logits, targets) -> dict:
  """Weighted entropy terms of G on D's attribute logits for the fakes.

  The marginal term compares batch means, so it gathers the logits and
  targets of the whole global batch: its value, and hence the step, then
  does not depend on the device count.
  """
  entropy_config = config.loss.entropy
  terms = {}
  if entropy_config.conditional_weight > 0:
    conditional = losses.sigmoid_conditional_entropy(logits)
    terms['conditional_entropy'] = (
      entropy_config.conditional_weight,
      conditional,
    )
  if entropy_config.marginal_weight > 0:
    all_logits = jax.lax.all_gather(logits, DATA_AXIS, tiled=True)
    all_targets = jax.lax.all_gather(targets, DATA_AXIS, tiled=True)
    marginal = losses.sigmoid_marginal_kl(all_logits, all_targets)
    terms['marginal_kl'] = (entropy_config.marginal_weight, marginal)
  return terms


def _local_step(
  config,
  networks: Networks,
  feature_setup: FeatureSetup | None,
  feature_params,
  state: TrainState,
  batch: dict,
):
  """Run one step on this device's slice, averaging over `data`.

  `feature_setup` is None when the style and perceptual losses are off.
  `feature_params` are the fixed extractor's weights, or an empty dict.
  """
  generator, discriminator = networks.generator, networks.discriminator
  loss_config = config.loss
  local_size = batch['image'].shape[0]
  offset = jax.lax.axis_index(DATA_AXIS) * local_size
  step_key = jax.random.fold_in(jax.random.key(config.seed), state.step)
  keys = example_keys(step_key, offset + jnp.arange(local_size))
  inputs = draw_inputs(config, networks, batch, keys)
  image, mask = inputs['image'], inputs['mask']

  def generate(g_params):
    raw = generator.apply(
      {'params': g_params}, image, mask, inputs['target'], inputs['noise']
    )
    return raw, models.composite(image, mask, raw)

  _, fake = generate(state.g_params)
  fake = jax.lax.stop_gradient(fake)

  d_adversarial_loss, g_adversarial_loss = losses.ADVERSARIAL_LOSSES[
    loss_config.adversarial.type
  ]

  def d_loss_fn(d_params):
    real_score, real_logits = discriminator.apply({'params': d_params}, image)
    fake_score, _ = discriminator.apply({'params': d_params}, fake)
    adversarial = d_adversarial_loss(real_score, fake_score)
    attribute = losses.attribute_loss(real_logits, inputs['source'])
    r1 = lazy_r1(config, discriminator, d_params, image, state.step)
    total = global_mean(
      loss_config.adversarial.weight * adversarial
      + loss_config.attribute.d_weight * attribute
      + r1
    )
    accuracy = jnp.mean((real_logits > 0) == (inputs['source'] > 0.5))
    return total, {
      'loss/D/total': total,
      'loss/D/adversarial': adversarial,
      'loss/D/attribute': attribute,
      'loss/D/r1': r1,
      'scores/real': jnp.mean(real_score),
      'scores/fake': jnp.mean(fake_score),
      'accuracy/D/real_attributes': accuracy,
    }

  d_params, d_opt_state, d_finite, d_metrics = guarded_update(
    d_loss_fn, networks.d_optimizer, state.d_params, state.d_opt_state
  )

  if feature_setup is not None:
    # Features of the real images do not depend on G, so they are computed
    # once, with the updated D that G's losses also use.
    real_features = jax.lax.stop_gradient(
      feature_setup.extract(feature_params, d_params, image)
    )

  def g_loss_fn(g_params):
    raw, composed = generate(g_params)
    score, logits = discriminator.apply({'params': d_params}, composed)
    adversarial = g_adversarial_loss(score)
    attribute = losses.attribute_loss(logits, inputs['target'])
    reconstruction = losses.masked_l1_loss(
      raw, image, mask, inputs['reconstruct']
    )
    terms = {
      'adversarial': (loss_config.adversarial.weight, adversarial),
      'attribute': (loss_config.attribute.weight, attribute),
      'reconstruction': (loss_config.reconstruction.weight, reconstruction),
    }
    if feature_setup is not None:
      fake_features = feature_setup.extract(feature_params, d_params, composed)
      terms.update(feature_terms(config, real_features, fake_features, inputs))
    terms.update(entropy_terms(config, logits, inputs['target']))
    if loss_config.tv.weight > 0:
      tv = losses.masked_total_variation(composed, mask)
      terms['tv'] = (loss_config.tv.weight, tv)
    total = global_mean(sum(weight * value for weight, value in terms.values()))
    accuracy = jnp.mean((logits > 0) == (inputs['target'] > 0.5))
    g_metrics = {'loss/G/total': total, 'accuracy/D/fake_targets': accuracy}
    for name, (_, value) in terms.items():
      g_metrics[f'loss/G/{name}'] = value
    return total, g_metrics

  g_params, g_opt_state, g_finite, g_metrics = guarded_update(
    g_loss_fn, networks.g_optimizer, state.g_params, state.g_opt_state
  )
  new_state, skipped = next_state(
    config,
    state,
    (g_params, g_opt_state, g_finite),
    (d_params, d_opt_state, d_finite),
  )
  metrics = {**d_metrics, **g_metrics}
  metrics['mask/area'] = jnp.mean(mask)
  metrics = jax.lax.pmean(metrics, DATA_AXIS)
  metrics['nonfinite'] = skipped.astype(jnp.float32)
  return new_state, metrics


def make_train_step(config, networks: Networks, mesh: Mesh):
  """Compile the sharded step: (state, batch) -> (state, metrics).

  The state must be replicated over `mesh` and the batch sharded along its
  first axis with `batch_sharding(mesh)`. The input state is donated.
  Raises InputError at once for invalid loss settings and, when a feature
  loss uses VGG-19, for a missing or malformed weights file. The rest of the
  config is read when the step is traced, at its first call.
  """
  validate_loss_config(config)
  if config.model.get('arch', 'cganjax') == 'stargan':
    from cganjax import stargan

    local_step = stargan.make_local_step(config, networks)
    feature_params = {}
  else:
    feature_setup = create_feature_setup(config, networks)
    local_step = functools.partial(_local_step, config, networks, feature_setup)
    feature_params = {}
    if feature_setup is not None and feature_setup.extractor.params is not None:
      feature_params = feature_setup.extractor.params
  feature_params = jax.device_put(feature_params, replicated(mesh))
  sharded = jax.shard_map(
    local_step,
    mesh=mesh,
    in_specs=(P(), P(), P(DATA_AXIS)),
    out_specs=(P(), P()),
  )
  # The extractor's weights are an argument, not a constant of the compiled
  # program: VGG-19's would add about 80 MB to it.
  compiled = jax.jit(sharded, donate_argnums=(1,))
  return functools.partial(compiled, feature_params)


def check_batch_size(batch_size: int, device_count: int) -> None:
  if batch_size <= 0 or batch_size % device_count:
    raise InputError(
      f'train.batch_size={batch_size} is not divisible by the device count '
      f'{device_count}; set --config.train.batch_size to a positive multiple '
      f'of {device_count}.'
    )
