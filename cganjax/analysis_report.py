"""The report of `python -m cganjax.analyze`: markdown, CSV and figures.

Files written into the output folder:

  report.md        the headline tables, then one table per target with a
                   row per method and layer
  maps.csv         one row per map (maps folder, layer, target, image)
  summary.csv      the means over images of each maps folder, layer and
                   target
  figures/         energy by part, scores by layer, and example overlays

Figures are drawn on matplotlib's Agg canvas, without pyplot.
"""

import csv
import io
import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cganjax import analysis, maps_folder, maps_overlays
from cganjax.data import parts

FIGURES = 'figures'
COLOUR_MAP = 'jet'
OVERLAY_ALPHA = 0.5
MAX_OVERLAY_TARGETS = 6


# Labels and formatting ------------------------------------------------------


def source_labels(summaries: Sequence[dict]) -> dict[str, str]:
  """Name each maps folder by its method, adding the folder's name when two
  folders share a method."""
  methods = {}
  for summary in summaries:
    methods.setdefault(summary['maps'], summary['method'])
  counts = {}
  for method in methods.values():
    counts[method] = counts.get(method, 0) + 1
  return {
    folder: method if counts[method] == 1 else f'{method} ({folder})'
    for folder, method in methods.items()
  }


def expected_parts(attribute: str) -> str:
  """Describe an attribute's region in words, for the tables."""
  region = parts.ATTRIBUTE_REGIONS.get(attribute)
  if region is None:
    return '(no region)'
  text = ', '.join(region.parts)
  if region.near is not None:
    base, anchors, radius = region.near
    text += f'; {base} within {radius:g} of the side of {", ".join(anchors)}'
  return text


def file_stem(text: str) -> str:
  """Replace every run of characters other than letters, digits, '.', '-'
  and '_' with '_', for file names."""
  return re.sub(r'[^A-Za-z0-9._-]+', '_', text).strip('_')


def number(value, digits: int = 3) -> str:
  if value is None or (isinstance(value, float) and not math.isfinite(value)):
    return 'n/a'
  return f'{value:.{digits}f}'


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]):
  lines = [
    '| ' + ' | '.join(header) + ' |',
    '| ' + ' | '.join('---' for _ in header) + ' |',
  ]
  lines += ['| ' + ' | '.join(row) + ' |' for row in rows]
  return '\n'.join(lines)


def csv_text(rows: Sequence[dict], fields: Sequence[str]) -> str:
  """Format rows as CSV: floats with 6 significant digits, NaN as 'nan'."""
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator='\n')
  writer.writerow(fields)
  for row in rows:
    writer.writerow([_csv_value(row[field]) for field in fields])
  return buffer.getvalue()


def _csv_value(value) -> str:
  if isinstance(value, bool | np.bool_):
    return str(int(value))
  if isinstance(value, float | np.floating):
    return 'nan' if not math.isfinite(value) else f'{float(value):.6g}'
  return str(value)


# The headline ----------------------------------------------------------------


def _headline_columns(summaries, labels) -> list[tuple[str, str]]:
  """(maps folder, layer) pairs with real-image attribute maps, in order."""
  columns = []
  for summary in summaries:
    if summary['view'] != 'real' or summary['kind'] != 'attribute':
      continue
    key = (summary['maps'], summary['layer'])
    if key not in columns:
      columns.append(key)
  return columns


def headline_tables(summaries: Sequence[dict]) -> str:
  """Format the two headline tables for D's attribute logits on real images.

  The first puts each attribute's region energy, per method and layer,
  beside the chance level. The second gives the rank correlation between
  the trained and the randomised D's maps.
  """
  labels = source_labels(summaries)
  columns = _headline_columns(summaries, labels)
  if not columns:
    return (
      'No maps of attribute logits on the real images, so there is no '
      'headline table.\n'
    )
  by_key = {
    (s['maps'], s['layer'], s['attribute']): s
    for s in summaries
    if s['view'] == 'real' and s['kind'] == 'attribute'
  }
  attributes = list(dict.fromkeys(attribute for (_, _, attribute) in by_key))
  names = [f'{labels[folder]} {layer}' for folder, layer in columns]

  energy_rows, rho_rows = [], []
  energy_means = [[] for _ in columns]
  rho_means = [[] for _ in columns]
  chances = []
  for attribute in attributes:
    found = [by_key.get((f, layer, attribute)) for f, layer in columns]
    chance = next((s['chance'] for s in found if s), float('nan'))
    chances.append(chance)
    energies = [s['region_energy'] if s else float('nan') for s in found]
    rhos = [s['randomised_spearman'] if s else float('nan') for s in found]
    for values, means in ((energies, energy_means), (rhos, rho_means)):
      for column, value in enumerate(values):
        means[column].append(value)
    energy_rows.append(
      [attribute, expected_parts(attribute), number(chance)]
      + [number(v) for v in energies]
    )
    rho_rows.append([attribute] + [number(v) for v in rhos])
  energy_rows.append(
    ['mean', '', number(analysis.finite_mean(np.array(chances)))]
    + [number(analysis.finite_mean(np.array(v))) for v in energy_means]
  )
  rho_rows.append(
    ['mean'] + [number(analysis.finite_mean(np.array(v))) for v in rho_means]
  )
  energy_table = markdown_table(
    ['attribute', 'expected parts', 'chance'] + names, energy_rows
  )
  rho_table = markdown_table(['attribute'] + names, rho_rows)
  return (
    "Energy in the expected parts: the mean fraction of each map's mass "
    "inside the attribute's region, over the maps that are not all zero. "
    "Chance is the region's mean share of the image area, the energy of "
    'a map spread evenly over the image.\n\n'
    f'{energy_table}\n\n'
    'Randomised-weights check: the mean Spearman rank correlation between '
    'each map and the map of the same target from D with re-initialised '
    'weights. Near 0, the maps depend on what D learned; near 1, the '
    'method shows the image whatever the weights.\n\n'
    f'{rho_table}\n'
  )


# Per-target tables -----------------------------------------------------------


def target_tables(summaries: Sequence[dict], options: analysis.Options) -> str:
  """One table per target, with a row per method and layer."""
  labels = source_labels(summaries)
  by_target: dict[str, list[dict]] = {}
  for summary in summaries:
    by_target.setdefault(summary['target'], []).append(summary)
  fractions = options.delete_fractions
  header = [
    'method',
    'layer',
    'maps',
    'zero',
    'chance',
    'energy',
    'pointing',
    f'IoU@{options.threshold:g}',
    'mean IoU',
    'entropy',
  ]
  header += [f'faith. {100 * f:g}%' for f in fractions]
  header += ['ρ random', 'random-D energy']
  sections = []
  for target, members in by_target.items():
    first = members[0]
    title = f'### {target}'
    if first['attribute']:
      title += f' (expected parts: {expected_parts(first["attribute"])})'
    rows = []
    for s in members:
      row = [
        labels[s['maps']],
        s['layer'],
        str(s['maps_count']),
        str(s['zero_maps']),
        number(s['chance']),
        number(s['region_energy']),
        number(s['pointing_game']),
        number(s['iou']),
        number(s['mean_iou']),
        number(s['entropy_normalised']),
      ]
      row += [
        number(s[f'faithfulness_{analysis.fraction_label(f)}'], 2)
        for f in fractions
      ]
      row += [
        number(s['randomised_spearman']),
        number(s['randomised_region_energy']),
      ]
      rows.append(row)
    sections.append(f'{title}\n\n{markdown_table(header, rows)}\n')
  return '\n'.join(sections)


def report_text(
  summaries: Sequence[dict],
  folders: Sequence[maps_folder.MapsFolder],
  options: analysis.Options,
  label_source: str,
  workdir: str | None,
  figures: Sequence[str],
) -> str:
  """Assemble report.md."""
  inputs = [
    f'- `{folder.folder}`: {folder.index["method"]}, checkpoint step '
    f'{folder.index["checkpoint_step"]}, {len(folder.images)} images, '
    f'{len(folder.layers)} layers, {len(folder.index["targets"])} targets'
    for folder in folders
  ]
  fractions = ', '.join(f'{100 * f:g}%' for f in options.delete_fractions)
  checks = (
    f'Faithfulness and the randomised-weights check use the run in '
    f"`{workdir}` at each folder's checkpoint step."
    if workdir
    else 'No --workdir was given, so faithfulness and the randomised-'
    'weights check are n/a.'
  )
  threshold = f'{options.threshold:g}'
  definitions = '\n'.join(
    [
      "- energy: the fraction of the map's mass inside the attribute's "
      'region (parts from `cganjax.data.parts.ATTRIBUTE_REGIONS`), averaged '
      'over the maps that are not all zero. `zero` counts the all-zero maps.',
      "- chance: the region's mean share of the image area, over the images "
      'where the region is not empty.',
      "- pointing: the map's maximum lies inside the region. Pixels tied at "
      'the maximum share the hit (the fraction of them inside the region), '
      'and an all-zero map is a miss.',
      f'- IoU@{threshold}: IoU of the region with the pixels at {threshold} '
      "of the map's maximum or more. mean IoU: its mean over the "
      'thresholds 0.05, 0.10, ..., 0.95.',
      '- entropy: the spatial entropy of the map normalised to sum 1, '
      'divided by log(pixels), so 1 is uniform and 0 a single pixel.',
      "- faith. k%: D's drop in the target's score when the top k% of "
      "pixels by the map take the image's mean colour, minus the mean drop "
      f'over {options.random_draws} random sets of as many pixels, in '
      'logit units. Positive: the map found pixels that matter more than '
      f'random ones. Fractions: {fractions}.',
      '- ρ random: Spearman rank correlation between the map and the map '
      f'from D with re-initialised weights (seed {options.seed}). '
      'random-D energy: the energy of those maps.',
    ]
  )
  figure_lines = '\n'.join(f'- [{name}]({name})' for name in figures)
  return (
    '# Activation map analysis\n\n'
    '## Inputs\n\n'
    + '\n'.join(inputs)
    + f'\n\nPart label maps: {label_source}. {checks}\n\n'
    "## Headline: D's attribute logits on the real images\n\n"
    + headline_tables(summaries)
    + '\n## Definitions\n\n'
    + definitions
    + '\n\n## Per target\n\n'
    + target_tables(summaries, options)
    + '\n## Files\n\n'
    '- `maps.csv`: every metric for every map.\n'
    '- `summary.csv`: the means per maps folder, layer and target.\n'
    + figure_lines
    + '\n'
  )


# Figures ---------------------------------------------------------------------


def _new_figure(width: float, height: float) -> Figure:
  figure = Figure(figsize=(width, height), dpi=100)
  FigureCanvasAgg(figure)
  return figure


def energy_by_part_figure(members: Sequence[dict], title: str) -> Figure:
  """Heat map of the mean energy per part (columns) for each target (rows),
  under a first row with each part's share of the image area."""
  names = analysis.LABEL_NAMES
  area = np.array(
    [
      analysis.finite_mean(np.array([s[f'area_{n}'] for s in members]))
      for n in names
    ]
  )
  energy = np.array(
    [[s[f'energy_{n}'] for n in names] for s in members], np.float64
  )
  values = np.vstack([area[None], energy])
  row_names = ['area share'] + [s['target'] for s in members]
  figure = _new_figure(1.0 + 0.45 * len(names), 1.2 + 0.3 * len(row_names))
  axes = figure.subplots()
  plot = axes.imshow(
    np.ma.masked_invalid(values), cmap='viridis', vmin=0.0, aspect='auto'
  )
  axes.set_xticks(range(len(names)), names, rotation=60, fontsize=7)
  axes.set_yticks(range(len(row_names)), row_names, fontsize=7)
  axes.axhline(0.5, color='white', linewidth=2)
  axes.set_title(title, fontsize=9)
  bar = figure.colorbar(plot, ax=axes, shrink=0.8)
  bar.set_label('fraction of the map mass', fontsize=7)
  figure.tight_layout()
  return figure


_LAYER_PANELS = (
  ('region_energy', 'energy in expected parts'),
  ('pointing_game', 'pointing game'),
  ('mean_iou', 'mean IoU'),
  ('faithfulness', 'faithfulness (logit)'),
  ('randomised_spearman', 'ρ with randomised D'),
)


def score_by_layer_figure(summaries, options: analysis.Options) -> Figure:
  """Scores of real-image attribute maps against layer, one line per
  method, averaged over attributes; the chance level is dashed."""
  labels = source_labels(summaries)
  chosen = [
    s for s in summaries if s['view'] == 'real' and s['kind'] == 'attribute'
  ]
  middle = options.delete_fractions[len(options.delete_fractions) // 2]
  faith_field = f'faithfulness_{analysis.fraction_label(middle)}'
  figure = _new_figure(3.2 * len(_LAYER_PANELS), 3.2)
  axes = figure.subplots(1, len(_LAYER_PANELS), squeeze=False)[0]
  for folder, label in labels.items():
    members = [s for s in chosen if s['maps'] == folder]
    layers = list(dict.fromkeys(s['layer'] for s in members))
    if not layers:
      continue
    for axis, (field, _) in zip(axes, _LAYER_PANELS, strict=True):
      key = faith_field if field == 'faithfulness' else field
      means = [
        analysis.finite_mean(
          np.array([s[key] for s in members if s['layer'] == layer])
        )
        for layer in layers
      ]
      axis.plot(layers, means, marker='o', label=label)
    chance = [
      analysis.finite_mean(
        np.array([s['chance'] for s in members if s['layer'] == layer])
      )
      for layer in layers
    ]
    axes[0].plot(layers, chance, linestyle='--', color='grey')
  for axis, (field, title) in zip(axes, _LAYER_PANELS, strict=True):
    if field == 'faithfulness':
      title += f', {100 * middle:g}%'
    axis.set_title(title, fontsize=9)
    axis.tick_params(labelsize=7)
  axes[0].plot([], [], linestyle='--', color='grey', label='chance')
  axes[0].legend(fontsize=7)
  figure.tight_layout()
  return figure


def overlay_figure(
  folder: maps_folder.MapsFolder,
  layer: str,
  targets: Sequence[dict],
  label_maps,
  count: int,
  title: str,
) -> Figure:
  """Maps over their images for a few targets (rows) and images (columns),
  with each attribute's region outlined in white."""
  count = min(count, len(folder.images))
  figure = _new_figure(1.6 * count + 1.4, 1.6 * len(targets) + 0.6)
  axes = figure.subplots(len(targets), count, squeeze=False)
  names = folder.targets(layer)
  ids = folder.index.get('image_ids') or [str(i) for i in range(count)]
  for row, target in enumerate(targets):
    position = names.index(target['name'])
    images = folder.view_images(target['name'])
    attribute = target.get('attribute', '')
    for column in range(count):
      axis = axes[row, column]
      values = np.asarray(folder.maps(layer)[column, position], np.float32)
      axis.imshow(images[column])
      axis.imshow(
        values, cmap=COLOUR_MAP, vmin=0.0, vmax=1.0, alpha=OVERLAY_ALPHA
      )
      has_region = (
        label_maps is not None
        and analysis.view_has_parts(target['view'])
        and attribute in parts.ATTRIBUTE_REGIONS
      )
      if has_region:
        region = parts.attribute_mask(label_maps[column], attribute)
        if region.any():
          axis.contour(region, levels=[0.5], colors='white', linewidths=0.8)
      axis.set_xticks([])
      axis.set_yticks([])
      if row == 0:
        axis.set_title(str(ids[column]), fontsize=6)
    axes[row, 0].set_ylabel(target['name'], fontsize=7)
  figure.suptitle(title, fontsize=9)
  return figure


def write_figures(
  out: Path,
  summaries: Sequence[dict],
  folders: Sequence[maps_folder.MapsFolder],
  folder_labels: Sequence[str],
  label_maps: Sequence,
  options: analysis.Options,
  overlay_images: int,
) -> list[str]:
  """Write every figure under `out/figures`; return their relative paths."""
  labels = source_labels(summaries)
  written = []

  def save(figure: Figure, name: str) -> None:
    maps_overlays.save_figure(figure, out / FIGURES / name)
    written.append(f'{FIGURES}/{name}')

  save(score_by_layer_figure(summaries, options), 'score_by_layer.png')
  for folder_label in dict.fromkeys(s['maps'] for s in summaries):
    members = [s for s in summaries if s['maps'] == folder_label]
    for layer in dict.fromkeys(s['layer'] for s in members):
      chosen = [
        s
        for s in members
        if s['layer'] == layer and analysis.view_has_parts(s['view'])
      ]
      if not chosen or not np.isfinite(chosen[0]['area_background']):
        continue
      stem = file_stem(f'{labels[folder_label]}_{layer}')
      save(
        energy_by_part_figure(chosen, f'{labels[folder_label]}, {layer}'),
        f'energy_by_part_{stem}.png',
      )
  if overlay_images <= 0:
    return written
  for folder, folder_label, labelled in zip(
    folders, folder_labels, label_maps, strict=True
  ):
    targets = [t for t in folder.index['targets'] if t.get('attribute')]
    targets = (targets or folder.index['targets'])[:MAX_OVERLAY_TARGETS]
    for layer in folder.layers:
      present = [t for t in targets if t['name'] in folder.targets(layer)]
      if not present:
        continue
      name = labels.get(folder_label, folder_label)
      stem = file_stem(f'{name}_{layer}')
      save(
        overlay_figure(
          folder, layer, present, labelled, overlay_images, f'{name}, {layer}'
        ),
        f'overlays_{stem}.png',
      )
  return written
