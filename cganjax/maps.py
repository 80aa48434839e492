"""Activation maps over the named taps of the generator and discriminator.

A map shows where, in one tapped layer, the features that drive one target
are. Every tap calls `self.perturb(name, x)` and then
`self.sow('intermediates', name, x)`, so one forward pass returns every
tapped feature, and the gradient with respect to the `perturbations`
collection is the gradient with respect to those features. One backward
pass per target gives the gradients at every tap, and `jax.vmap` over the
targets' cotangents runs the backward passes of all targets of one forward
pass together.

Targets (`Target.kind`), each on a view of the image (`Target.view`):
  * `attribute`: an attribute logit of D, on the real image (view `real`) or
    on a face that G draws from noise under a whole-image mask with the
    image's attributes (view `generated`);
  * `realness`: D's realness score, on either view;
  * `edit`: the generated region. G edits the attribute inside its region
    (the flip of `samples.flip_targets`), the edit is composited, and the
    score is D's logit of that attribute on the composite, negated when the
    edit turns the attribute off, so that the map shows the evidence for the
    requested value. Its maps cover G's taps and D's (view `edit/<name>`);
  * `bottleneck`: one channel of G's bottleneck summed over space, explained
    on the taps up to the bottleneck (view `generated`). These are the
    per-latent maps of Liu et al., "Towards Visually Explaining Variational
    Autoencoders", CVPR 2020, with G's encoder in place of the VAE encoder;
  * `noise`: one dimension of G's noise vector (view `generated`). The noise
    is an input of G, so no backward pass reaches it from a tap. Its maps
    use the forward derivative of each tap from the bottleneck on with
    respect to that dimension (`jax.jvp`) in place of the gradient.

A tap gets a map of a target only where the target depends on it. D's
taps get maps of every target scored by D, G's taps get none of targets on
the real image, and the latent targets get maps on the taps listed above
(`target_taps`).

Methods (`METHODS`) take `(activations [..., h, w, C], gradients [..., h,
w, C])` and return the weighted sum `[..., h, w]`; each supplies only its
channel weights or its combination rule. `finish_maps` then applies what
they share: ReLU, upsampling to the image size with half-pixel centres, and
per-map normalisation to [0, 1] that keeps the maximum before it.

The discriminator has no batch statistic and no dropout, so `apply` with
its parameters is its inference form, and G normalises per example
(GroupNorm). An image's maps therefore do not depend on its batch mates,
which is also what lets one backward pass over the summed batch give every
image its own gradients.
"""

import dataclasses
import functools
from collections.abc import Callable, Sequence

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from cganjax import masks, models, samples, step
from cganjax.errors import InputError

REAL = 'real'
GENERATED = 'generated'
EDIT = 'edit'
BOTTLENECK_TAP = f'{models.GENERATOR_PREFIX}/bottleneck'
# Folded into the run's seed to draw the noise of row r of a dump.
NOISE_SALT = 0x3A95
# Weighted sums are clipped here before upsampling so that interpolation and
# the maximum stay finite even when a method overflows.
MAX_WEIGHTED_SUM = float(np.finfo(np.float32).max) / 4

# Groups of targets, as named on the command line.
TARGET_GROUPS = (
  'attributes',
  'realness',
  'generated_attributes',
  'generated_realness',
  'edits',
  'bottleneck',
  'noise',
)


class MissingPerturbationError(ValueError):
  """A tap whose gradient cannot be taken because its perturbation is absent.

  Raised instead of returning the all-zero maps that a forward function
  gives when it never adds the perturbations to the tapped features.
  """


# Methods -------------------------------------------------------------------


def grad_cam(activations: jax.Array, gradients: jax.Array) -> jax.Array:
  """Grad-CAM: channel weights are the spatial mean of the gradients.

  Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
  Gradient-based Localization", ICCV 2017: w_c = mean_ij dS/dA_cij and the
  weighted sum is sum_c w_c A_c.
  """
  weights = jnp.mean(gradients, axis=(-3, -2), keepdims=True)
  return jnp.sum(weights * activations, axis=-1)


def grad_cam_plus_plus(
  activations: jax.Array, gradients: jax.Array
) -> jax.Array:
  """Grad-CAM++ in its common power form, without the factor exp(S).

  Chattopadhyay et al., "Grad-CAM++: Improved Visual Explanations for Deep
  Convolutional Networks", WACV 2018 (arXiv:1710.11063). With g = dS/dA the
  gradient of the score S:

    alpha_cij = g_cij**2 / (2 g_cij**2 + sum_ab A_cab g_cij**3)
    w_c = sum_ij alpha_cij relu(g_cij)

  and the weighted sum is sum_c w_c A_c. The paper reaches this closed form
  by explaining Y = exp(S) and taking the higher derivatives of S to be zero,
  as they are for a piecewise-linear network. Then exp(S) cancels in alpha
  and remains only as one factor exp(S) in every w_c of the map. That factor
  does not change the normalised map, so it is left out: exp(S) overflows
  float32 for S > 88 (a saturated logit), and it would make the kept maxima
  grow exponentially with the score, so that they could no longer be
  compared across targets. G and D are not piecewise linear (GroupNorm,
  tanh), so the powers of g approximate the higher derivatives there.
  Where the denominator is zero, alpha is 0.
  """
  squared = gradients**2
  cubed = squared * gradients
  activation_sums = jnp.sum(activations, axis=(-3, -2), keepdims=True)
  denominator = 2.0 * squared + activation_sums * cubed
  nonzero = denominator != 0
  alpha = jnp.where(nonzero, squared / jnp.where(nonzero, denominator, 1.0), 0)
  weights = jnp.sum(
    alpha * jax.nn.relu(gradients), axis=(-3, -2), keepdims=True
  )
  return jnp.sum(weights * activations, axis=-1)


def gradient_times_activation(
  activations: jax.Array, gradients: jax.Array
) -> jax.Array:
  """Gradient x activation summed over channels: sum_c g_cij A_cij."""
  return jnp.sum(gradients * activations, axis=-1)


METHODS: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
  'grad_cam': grad_cam,
  'grad_cam_pp': grad_cam_plus_plus,
  'gradient_x_activation': gradient_times_activation,
}


# Shared steps ---------------------------------------------------------------


def upsample(weighted_sum: jax.Array, size: Sequence[int]) -> jax.Array:
  """Resize [..., h, w] to [..., height, width] bilinearly.

  `jax.image.resize` with 'linear' places samples at half-pixel centres:
  output pixel i reads input coordinate (i + 0.5) * h / height - 0.5.
  Coordinates outside the grid take the edge value. A feature cell thus maps
  onto the image pixels it covers, with no shift of half a cell.
  """
  height, width = size
  shape = weighted_sum.shape[:-2] + (height, width)
  return jax.image.resize(weighted_sum, shape, method='linear')


def normalise(maps: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Divide each map [..., H, W] by its maximum; return (maps, maxima).

  A map whose maximum is 0 (all zero after ReLU) stays all zero.
  """
  scale = jnp.max(maps, axis=(-2, -1))
  positive = (scale > 0)[..., None, None]
  safe = jnp.where(positive, scale[..., None, None], 1.0)
  return jnp.where(positive, maps / safe, 0.0), scale


def finish_maps(
  weighted_sum: jax.Array, size: Sequence[int]
) -> tuple[jax.Array, jax.Array]:
  """ReLU, upsample to `size` and normalise a weighted sum [..., h, w].

  Returns maps [..., H, W] in [0, 1] and the maxima [...] of the upsampled
  maps before normalisation, so that `maps * maxima` is the upsampled ReLU
  of the weighted sum. NaN becomes 0 and values are clipped at
  `MAX_WEIGHTED_SUM`, so the results are finite for any input.
  """
  rectified = jax.nn.relu(weighted_sum)
  rectified = jnp.where(
    jnp.isnan(rectified), 0.0, jnp.minimum(rectified, MAX_WEIGHTED_SUM)
  )
  return normalise(upsample(rectified, size))


# Capture --------------------------------------------------------------------


def zero_perturbations(module: models._Tapped, params, *args) -> dict:
  """Zeros shaped and typed like each tap of `module` applied to `args`.

  Flax's `perturb` creates them with `zeros_like` of the tapped features,
  so under `jax.shard_map` they vary over the device axis as the features
  do. Under `jit` the forward pass that this runs is removed as unused.
  """
  _, state = module.apply({'params': params}, *args, mutable=['perturbations'])
  return state['perturbations']


def apply_with_taps(module: models._Tapped, prefix: str, variables, *args):
  """Apply `module` and return (output, {prefixed tap name: feature}).

  Any `intermediates` in `variables` are dropped, so sown features never
  pile up across calls.

  Raises:
    ValueError: a tap was sown more than once in one call.
  """
  variables = {k: v for k, v in variables.items() if k != 'intermediates'}
  output, state = module.apply(variables, *args, mutable=['intermediates'])
  sown = flax.traverse_util.flatten_dict(
    state.get('intermediates', {}), sep='/'
  )
  features = {}
  for name, values in sown.items():
    if len(values) != 1:
      raise ValueError(
        f'tap {prefix}/{name} was sown {len(values)} times in one call; '
        'apply each network once per forward function.'
      )
    features[f'{prefix}/{name}'] = values[0]
  return output, features


def split_perturbations(perturbations: dict, prefix: str) -> dict:
  """Select the taps of one network and strip its prefix, for `apply`."""
  start = f'{prefix}/'
  selected = {
    name[len(start) :]: value
    for name, value in perturbations.items()
    if name.startswith(start)
  }
  return flax.traverse_util.unflatten_dict(selected, sep='/')


def prefixed(perturbations: dict, prefix: str) -> dict:
  flat = flax.traverse_util.flatten_dict(perturbations, sep='/')
  return {f'{prefix}/{name}': value for name, value in flat.items()}


def _check_reads_perturbations(forward: Callable, perturbations: dict):
  """Raise when `forward` never reads some of the perturbations.

  A forward function that does not pass the `perturbations` collection to
  `apply` runs the taps' `perturb` as a no-op, and its gradients with
  respect to the perturbations are exact zeros. This check traces
  `forward` once and finds the perturbation inputs that no operation uses.
  """
  paths, _ = jax.tree_util.tree_flatten_with_path(perturbations)
  names = [
    '/'.join(str(getattr(key, 'key', key)) for key in path) for path, _ in paths
  ]
  jaxpr = jax.make_jaxpr(forward)(perturbations).jaxpr
  used = set()
  for equation in jaxpr.eqns:
    used.update(v for v in equation.invars if isinstance(v, core.Var))
  used.update(v for v in jaxpr.outvars if isinstance(v, core.Var))
  unused = [
    name
    for name, var in zip(names, jaxpr.invars, strict=True)
    if var not in used
  ]
  if unused:
    raise MissingPerturbationError(
      f'the forward function never reads the perturbations of {unused}, so '
      'their gradients would be zero; pass them to apply as '
      "{'params': ..., 'perturbations': ...}."
    )


def _varying_axes(value) -> frozenset:
  # NOTE: reads the type that jax.shard_map tracks (JAX 0.10); other
  # versions without this attribute skip the check.
  axis_type = getattr(jax.typeof(value), 'manual_axis_type', None)
  return frozenset(getattr(axis_type, 'varying', ()))


def _check_varying(features: dict, perturbations: dict) -> None:
  """Raise when a perturbation is replicated over an axis its feature varies
  over: the backward pass would then sum its gradient over the devices."""
  for tap, feature in features.items():
    missing_axes = _varying_axes(feature) - _varying_axes(perturbations[tap])
    if missing_axes:
      raise ValueError(
        f'the perturbation of {tap} does not vary over the device axes '
        f'{sorted(missing_axes)} that its feature varies over, so its '
        'gradient would be summed over the devices; create it with '
        'zero_perturbations or jnp.zeros_like of the feature.'
      )


def tap_gradients(forward: Callable, perturbations: dict):
  """Run `forward` once and one backward pass per target.

  `forward(perturbations)` returns `(scores [B, K], features, extra)`:
  `features` maps tap names to the tapped features [B, ...],
  `perturbations` maps the same names to zeros of those shapes, added to
  the features inside `forward`, and `extra` is any other output (or None).
  Images must not interact (no batch statistics), so that the gradient of
  the batch sum of target k's score is, at image b, the gradient of
  `scores[b, k]`.

  Returns `(scores, features, gradients, extra)` with gradients `{tap: [K,
  B, ...]}`. The K backward passes share one forward pass: `jax.vmap` runs
  them over one-hot cotangents.

  Raises:
    MissingPerturbationError: a sown tap has no perturbation, or `forward`
      does not read one.
  """
  _check_reads_perturbations(forward, perturbations)

  def split_outputs(perturbations):
    scores, features, extra = forward(perturbations)
    return scores, (features, extra)

  scores, backward, (features, extra) = jax.vjp(
    split_outputs, perturbations, has_aux=True
  )
  missing = sorted(set(features) - set(perturbations))
  if missing:
    raise MissingPerturbationError(
      f'taps {missing} were sown but have no perturbation; build the '
      'perturbations with zero_perturbations for every network applied.'
    )
  _check_varying(features, perturbations)
  count = scores.shape[-1]
  # Multiplying by ones_like(scores) gives the cotangents the type of the
  # scores, which under shard_map includes varying over the device axis.
  one_hot = jnp.eye(count, dtype=scores.dtype)[:, None, :]
  cotangents = one_hot * jnp.ones_like(scores)[None]
  (gradients,) = jax.vmap(backward)(cotangents)
  return scores, features, gradients, extra


def tap_tangents(forward: Callable, inputs: jax.Array, directions: jax.Array):
  """Forward derivatives of the tapped features along input directions.

  `forward(inputs)` returns `(features, extra)` with `features` a dict of
  tapped features [B, ...]. `directions` [K, *inputs.shape] are tangents of
  `inputs`. Returns `(features, tangents, extra)` with tangents `{tap: [K,
  B, ...]}`: one `jax.jvp` per direction, vmapped, sharing the primal pass.
  """

  def along(direction):
    return jax.jvp(forward, (inputs,), (direction,), has_aux=True)

  features, tangents, extra = jax.vmap(along, out_axes=(None, 0, None))(
    directions
  )
  return features, tangents, extra


# Targets --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Target:
  """One quantity to explain, and the view of the image it is computed on.

  `index` is the attribute index for `attribute` and `edit`, the channel
  for `bottleneck`, the noise dimension for `noise`, and 0 for `realness`.
  """

  name: str
  kind: str
  view: str
  index: int

  def to_json(self, attributes: Sequence[str]) -> dict:
    entry = dataclasses.asdict(self)
    if self.kind in ('attribute', 'edit'):
      entry['attribute'] = attributes[self.index]
    return entry


def make_targets(
  groups: Sequence[str],
  attributes: Sequence[str],
  *,
  selected: Sequence[str] | None = None,
  has_region: Sequence[bool] | None = None,
  num_latent: int = 8,
  bottleneck_channels: int | None = None,
  noise_dim: int | None = None,
) -> list[Target]:
  """List the targets of the requested groups, in the order of `groups`.

  `selected` restricts the attribute groups to those attribute names.
  `num_latent` is the count of bottleneck channels (0 to count - 1) and of
  noise dimensions explained. Edits cover the selected attributes that have
  a region (`has_region`).

  Raises:
    InputError: an unknown group or attribute, no edit target, or a latent
      count out of range.
  """
  unknown = [group for group in groups if group not in TARGET_GROUPS]
  if unknown:
    raise InputError(
      f'unknown target groups {unknown}; choose from {list(TARGET_GROUPS)}.'
    )
  if selected:
    missing = [name for name in selected if name not in attributes]
    if missing:
      raise InputError(
        f'unknown attributes {missing}; the run has {list(attributes)}.'
      )
    chosen = [attributes.index(name) for name in selected]
  else:
    chosen = list(range(len(attributes)))

  targets = []
  for group in dict.fromkeys(groups):
    if group == 'attributes':
      targets += [
        Target(f'{REAL}/{attributes[a]}', 'attribute', REAL, a) for a in chosen
      ]
    elif group == 'realness':
      targets.append(Target(f'{REAL}/realness', 'realness', REAL, 0))
    elif group == 'generated_attributes':
      targets += [
        Target(f'{GENERATED}/{attributes[a]}', 'attribute', GENERATED, a)
        for a in chosen
      ]
    elif group == 'generated_realness':
      targets.append(Target(f'{GENERATED}/realness', 'realness', GENERATED, 0))
    elif group == 'edits':
      editable = [a for a in chosen if has_region is None or has_region[a]]
      if not editable:
        raise InputError(
          'none of the selected attributes has a region to edit; select '
          'attributes with a region, or drop the edits group.'
        )
      for a in editable:
        view = f'{EDIT}/{attributes[a]}'
        targets.append(Target(view, 'edit', view, a))
    else:
      size = bottleneck_channels if group == 'bottleneck' else noise_dim
      if size is not None and not 0 < num_latent <= size:
        raise InputError(
          f'num_latent={num_latent} is out of range for the {group}, which '
          f'has {size} units; use 1 to {size}.'
        )
      targets += [
        Target(f'{GENERATED}/{group}/{unit}', group, GENERATED, unit)
        for unit in range(num_latent)
      ]
  return targets


def target_taps(
  target: Target, g_taps: Sequence[str], d_taps: Sequence[str]
) -> list[str]:
  """Return the taps that a target depends on, which get a map of it."""
  if target.view == REAL:
    return list(d_taps)
  split = list(g_taps).index(BOTTLENECK_TAP)
  if target.kind == 'bottleneck':
    return list(g_taps[: split + 1])
  if target.kind == 'noise':
    return list(g_taps[split:])
  return list(g_taps) + list(d_taps)


@dataclasses.dataclass(frozen=True)
class Layer:
  """A tap and the indices (into the target list) of its targets."""

  name: str
  targets: tuple[int, ...]


def layers_for(
  targets: Sequence[Target], g_taps: Sequence[str], d_taps: Sequence[str]
) -> list[Layer]:
  """Pair every tap with its targets, leaving out taps that have none."""
  layers = []
  for tap in list(g_taps) + list(d_taps):
    target_indices = tuple(
      i
      for i, target in enumerate(targets)
      if tap in target_taps(target, g_taps, d_taps)
    )
    if target_indices:
      layers.append(Layer(tap, target_indices))
  return layers


def generated_views(targets: Sequence[Target]) -> list[str]:
  """Return the views other than the real image, in order of first use."""
  return list(dict.fromkeys(t.view for t in targets if t.view != REAL))


# Batched computation --------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MapSpec:
  """Settings of `maps_for_batch`: networks, targets, method and dtype.

  `dilation` is the radius in pixels by which attribute regions grow into
  edit masks, as in training and the sample grids. `seed` seeds the noise.
  """

  generator: models.Generator
  discriminator: models.Discriminator
  regions: masks.RegionTable
  targets: tuple[Target, ...]
  method: str
  dilation: float
  seed: int
  dtype: str = 'float32'

  @property
  def layers(self) -> list[Layer]:
    return layers_for(
      self.targets, self.generator.tap_names(), self.discriminator.tap_names()
    )

  @property
  def views(self) -> list[str]:
    return generated_views(self.targets)


def make_spec(config, networks: step.Networks, targets, method, dtype):
  """Build the MapSpec of a run from its config and networks."""
  if method not in METHODS:
    raise InputError(
      f'unknown method {method!r}; choose from {sorted(METHODS)}.'
    )
  if dtype not in ('float16', 'float32'):
    raise InputError(f'dtype={dtype!r} must be float16 or float32.')
  return MapSpec(
    generator=networks.generator,
    discriminator=networks.discriminator,
    regions=networks.regions,
    targets=tuple(targets),
    method=method,
    dilation=config.masks.part_dilation * config.data.image_size,
    seed=config.seed,
    dtype=dtype,
  )


def bottleneck_channels(config) -> int:
  """Return the channel count of G's bottleneck for a config's model."""
  model = config.model
  return min(model.g_base_channels * 2**model.g_levels, model.g_max_channels)


def row_noise(seed: int, rows: jax.Array, noise_dim: int) -> jax.Array:
  """Draw noise [B, Z] for dump rows: row r always gets the same vector."""
  key = jax.random.fold_in(jax.random.key(seed), NOISE_SALT)
  return jax.vmap(
    lambda row: jax.random.normal(jax.random.fold_in(key, row), (noise_dim,))
  )(rows)


def _score(target: Target, realness, logits, features) -> jax.Array:
  """Return the value per image [B] that a target explains."""
  if target.kind == 'realness':
    return realness
  if target.kind == 'attribute':
    return logits[:, target.index]
  if target.kind == 'bottleneck':
    return jnp.sum(features[BOTTLENECK_TAP][..., target.index], axis=(1, 2))
  raise ValueError(f'target {target.name} has no score of this kind.')


def _maps_by_tap(spec, features, gradients, taps, size) -> dict:
  """Apply the method and the shared steps: {tap: (maps, maxima)}."""
  method = METHODS[spec.method]
  return {
    tap: finish_maps(method(features[tap], gradients[tap]), size)
    for tap in taps
  }


def _real_view(spec, d_params, image, group, size):
  """Maps of targets scored by D on the real image."""
  discriminator = spec.discriminator
  prefix = models.DISCRIMINATOR_PREFIX
  perturbations = prefixed(
    zero_perturbations(discriminator, d_params, image), prefix
  )

  def forward(perturbations):
    variables = {
      'params': d_params,
      'perturbations': split_perturbations(perturbations, prefix),
    }
    (realness, logits), features = apply_with_taps(
      discriminator, prefix, variables, image
    )
    scores = [_score(t, realness, logits, features) for t in group]
    return jnp.stack(scores, axis=-1), features, None

  _, features, gradients, _ = tap_gradients(forward, perturbations)
  taps = spec.discriminator.tap_names()
  return _maps_by_tap(spec, features, gradients, taps, size)


def _generation_gradients(spec, g_params, d_params, inputs, score_fn):
  """Gradients at G's and D's taps of scores of D on G's composite.

  `inputs` are G's (image, mask, attributes, noise); `score_fn(realness,
  logits, features)` returns the scores [B, K]. Returns `(features,
  gradients, composite)`.
  """
  generator, discriminator = spec.generator, spec.discriminator
  g_prefix = models.GENERATOR_PREFIX
  d_prefix = models.DISCRIMINATOR_PREFIX
  image, mask = inputs[0], inputs[1]
  # D's taps have the same shapes on the composite as on `image`.
  perturbations = {
    **prefixed(zero_perturbations(generator, g_params, *inputs), g_prefix),
    **prefixed(zero_perturbations(discriminator, d_params, image), d_prefix),
  }

  def forward(perturbations):
    g_variables = {
      'params': g_params,
      'perturbations': split_perturbations(perturbations, g_prefix),
    }
    raw, g_features = apply_with_taps(generator, g_prefix, g_variables, *inputs)
    composed = models.composite(image, mask, raw)
    d_variables = {
      'params': d_params,
      'perturbations': split_perturbations(perturbations, d_prefix),
    }
    (realness, logits), d_features = apply_with_taps(
      discriminator, d_prefix, d_variables, composed
    )
    features = {**g_features, **d_features}
    return score_fn(realness, logits, features), features, composed

  _, features, gradients, composed = tap_gradients(forward, perturbations)
  return features, gradients, composed


def _generated_view(spec, g_params, d_params, inputs, group, taps, size):
  """Maps of D's and the bottleneck's targets on the face G draws."""

  def score_fn(realness, logits, features):
    scores = [_score(t, realness, logits, features) for t in group]
    return jnp.stack(scores, axis=-1)

  features, gradients, composed = _generation_gradients(
    spec, g_params, d_params, inputs, score_fn
  )
  return _maps_by_tap(spec, features, gradients, taps, size), composed


def _noise_view(spec, g_params, inputs, group, taps, size):
  """Maps of noise dimensions, from forward derivatives of G's taps."""
  image, mask, attributes, noise = inputs

  def forward(noise):
    raw, features = apply_with_taps(
      spec.generator,
      models.GENERATOR_PREFIX,
      {'params': g_params},
      image,
      mask,
      attributes,
      noise,
    )
    return features, models.composite(image, mask, raw)

  dims = jnp.asarray([t.index for t in group])
  directions = jax.nn.one_hot(dims, noise.shape[-1], dtype=noise.dtype)
  # Shaped [K, B, Z] and typed like `noise`, as for the cotangents above.
  directions = directions[:, None, :] * jnp.ones_like(noise)[None]
  features, tangents, composed = tap_tangents(forward, noise, directions)
  return _maps_by_tap(spec, features, tangents, taps, size), composed


def _edit_view(spec, g_params, d_params, batch, inputs, group, size):
  """Maps of edits: each target edits its attribute inside its region.

  The edits are vmapped: each runs its own forward pass through G and D
  and one backward pass. Returns ({tap: (maps, maxima)} with the edits on
  the first axis, composites [E, B, H, W, 3]).
  """
  image, _, source, noise = inputs
  if 'parts' not in batch:
    raise InputError(
      'edit targets need part label maps to find attribute regions, and '
      'this batch has none.'
    )
  regions = spec.regions.regions(batch['parts'])
  exclusive = step.exclusive_matrix(spec.regions.attributes)
  edit_masks, edit_targets, signs = [], [], []
  for target in group:
    region = masks.dilate(regions[:, target.index], spec.dilation)
    edit_masks.append(region[..., None].astype(jnp.float32))
    requested = samples.flip_targets(source, target.index, exclusive)
    edit_targets.append(requested)
    signs.append(jnp.where(requested[:, target.index] > 0.5, 1.0, -1.0))
  one_hot = jax.nn.one_hot(
    jnp.asarray([t.index for t in group]), source.shape[-1]
  )

  def one_edit(mask, attributes, sign, selector):
    def score_fn(realness, logits, features):
      return (sign * (logits @ selector))[:, None]

    features, gradients, composed = _generation_gradients(
      spec, g_params, d_params, (image, mask, attributes, noise), score_fn
    )
    gradients = jax.tree.map(lambda g: g[0], gradients)
    return features, gradients, composed

  features, gradients, composed = jax.vmap(one_edit)(
    jnp.stack(edit_masks),
    jnp.stack(edit_targets),
    jnp.stack(signs),
    one_hot,
  )
  taps = spec.generator.tap_names() + spec.discriminator.tap_names()
  return _maps_by_tap(spec, features, gradients, taps, size), composed


def maps_for_batch(spec: MapSpec, g_params, d_params, batch: dict) -> dict:
  """Compute every map of `spec` for one batch, on one device.

  `batch` contains `image` uint8 [B, H, W, 3] and `row` int32 [B], the
  images' rows in the dump, which seed the noise. Where known, it also
  contains `attributes` [B, A] (0 or 1) and `parts` uint8 [B, H, W].
  Without `attributes`, G is given D's predictions on the image (logit > 0)
  as the source attributes. Edit targets need `parts`.

  Returns `{'maps': {tap: [B, T, H, W]}, 'scales': {tap: [B, T]}}` with the
  targets of each of `spec.layers` in its order, and, when `spec.views` is
  not empty, `views` uint8 [B, V, H, W, 3]: the generated images the
  targets were computed on.
  """
  image = step.image_to_float(batch['image'])
  batch_size, height, width, _ = image.shape
  size = (height, width)
  g_taps = spec.generator.tap_names()
  d_taps = spec.discriminator.tap_names()
  targets = spec.targets
  # found[target index][tap] = (maps [B, H, W], maxima [B])
  found = {i: {} for i in range(len(targets))}

  def keep(indices, maps_by_tap):
    for k, i in enumerate(indices):
      for tap in target_taps(targets[i], g_taps, d_taps):
        maps, scale = maps_by_tap[tap]
        found[i][tap] = (maps[k], scale[k])

  def select(predicate):
    indices = [i for i, t in enumerate(targets) if predicate(t)]
    return indices, [targets[i] for i in indices]

  if 'attributes' in batch:
    source = batch['attributes'].astype(jnp.float32)
  else:
    _, logits = spec.discriminator.apply({'params': d_params}, image)
    source = (logits > 0).astype(jnp.float32)
  noise = row_noise(spec.seed, batch['row'], spec.generator.noise_dim)
  whole = jnp.ones((batch_size, height, width, 1), jnp.float32)
  generation_inputs = (image, whole, source, noise)
  views = {}

  indices, group = select(lambda t: t.view == REAL)
  if group:
    keep(indices, _real_view(spec, d_params, image, group, size))

  indices, group = select(lambda t: t.view == GENERATED and t.kind != 'noise')
  if group:
    taps = list(
      dict.fromkeys(
        tap for t in group for tap in target_taps(t, g_taps, d_taps)
      )
    )
    maps_by_tap, views[GENERATED] = _generated_view(
      spec, g_params, d_params, generation_inputs, group, taps, size
    )
    keep(indices, maps_by_tap)

  indices, group = select(lambda t: t.kind == 'noise')
  if group:
    taps = target_taps(group[0], g_taps, d_taps)
    maps_by_tap, views[GENERATED] = _noise_view(
      spec, g_params, generation_inputs, group, taps, size
    )
    keep(indices, maps_by_tap)

  indices, group = select(lambda t: t.kind == 'edit')
  if group:
    maps_by_tap, composed = _edit_view(
      spec, g_params, d_params, batch, generation_inputs, group, size
    )
    for k, target in enumerate(group):
      views[target.view] = composed[k]
    keep(indices, maps_by_tap)

  dtype = jnp.dtype(spec.dtype)
  out = {'maps': {}, 'scales': {}}
  for layer in spec.layers:
    maps = [found[i][layer.name][0] for i in layer.targets]
    scales = [found[i][layer.name][1] for i in layer.targets]
    out['maps'][layer.name] = jnp.stack(maps, axis=1).astype(dtype)
    out['scales'][layer.name] = jnp.stack(scales, axis=1)
  if spec.views:
    stacked = jnp.stack([views[view] for view in spec.views], axis=1)
    out['views'] = samples.to_uint8(stacked)
  return out


def make_maps_fn(spec: MapSpec, mesh: Mesh):
  """Compile `maps_for_batch` sharded over the `data` axis of `mesh`.

  Returns `fn(g_params, d_params, batch) -> outputs` with the batch and
  the outputs split along their first axis over the devices, as in
  training, and the parameters replicated. Each device computes the maps of
  its own images through `jax.shard_map`, with no collective, since an
  image's maps do not depend on its batch mates. The batch size must be a
  multiple of the device count.
  """
  sharded = jax.shard_map(
    functools.partial(maps_for_batch, spec),
    mesh=mesh,
    in_specs=(P(), P(), P(step.DATA_AXIS)),
    out_specs=P(step.DATA_AXIS),
  )
  return jax.jit(sharded)
