"""PNG grids of a maps folder: image, map and overlay, with a colour bar.

One PNG per layer and target, at `<out>/<layer>/<target>.png` with '/' in
both names replaced by '_'. Each row is one image: the image the target was
computed on, the map, and the map blended over the image. Every map is
normalised to [0, 1], so one colour bar serves the whole grid, and each row
title gives the map's maximum before normalisation.

Figures are drawn on matplotlib's Agg canvas directly, without pyplot, so
no display and no global figure state are involved.
"""

import os
import tempfile
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cganjax import maps_folder

COLOUR_MAP = 'jet'
OVERLAY_ALPHA = 0.5
TILE_INCHES = 1.6


def file_stem(name: str) -> str:
  return name.replace('/', '_')


def draw_grid(
  images: np.ndarray,
  maps: np.ndarray,
  scales: np.ndarray,
  row_titles: list[str],
  title: str,
) -> Figure:
  """Draw rows of (image, map, overlay) for uint8 images [N, H, W, 3] and
  maps [N, H, W] in [0, 1], with one colour bar."""
  rows = len(images)

  figure = Figure(
    figsize=(3 * TILE_INCHES + 1.0, rows * TILE_INCHES + 0.6), dpi=100
  )
  FigureCanvasAgg(figure)
  axes = figure.subplots(rows, 3, squeeze=False)
  map_plot = None

  for row in range(rows):
    image = images[row]
    values = np.asarray(maps[row], np.float32)
    image_axes, map_axes, overlay_axes = axes[row]
    image_axes.imshow(image)
    map_plot = map_axes.imshow(values, cmap=COLOUR_MAP, vmin=0.0, vmax=1.0)
    overlay_axes.imshow(image)
    overlay_axes.imshow(
      values, cmap=COLOUR_MAP, vmin=0.0, vmax=1.0, alpha=OVERLAY_ALPHA
    )
    image_axes.set_ylabel(
      f'{row_titles[row]}\nmax {float(scales[row]):.3g}', fontsize=7
    )
    for axis in axes[row]:
      axis.set_xticks([])
      axis.set_yticks([])

  for axis, name in zip(axes[0], ('image', 'map', 'overlay'), strict=True):
    axis.set_title(name, fontsize=8)
  figure.suptitle(title, fontsize=9)
  colour_bar = figure.colorbar(map_plot, ax=axes.ravel().tolist(), shrink=0.8)
  colour_bar.set_label('map / its maximum', fontsize=7)
  colour_bar.ax.tick_params(labelsize=7)
  return figure


def save_figure(figure: Figure, path: Path) -> None:
  """Save a PNG under a temporary name, then rename it to `path`."""
  path.parent.mkdir(parents=True, exist_ok=True)
  handle, temporary = tempfile.mkstemp(
    dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp'
  )
  os.close(handle)
  try:
    figure.savefig(temporary, format='png')
    os.replace(temporary, path)
  except BaseException:
    Path(temporary).unlink(missing_ok=True)
    raise


def write_overlays(
  loaded: maps_folder.MapsFolder, out_dir, count: int = 4
) -> list[Path]:
  """Write one grid per layer and target for the first `count` images.

  Returns the paths written.
  """
  out_dir = Path(out_dir)
  rows = min(count, len(loaded.images))
  if rows <= 0:
    return []
  ids = loaded.index.get('image_ids', [])
  row_titles = [str(ids[i]) if i < len(ids) else str(i) for i in range(rows)]
  method = loaded.index.get('method', '')
  written = []
  for layer in loaded.layers:
    scales = loaded.scales(layer)
    for position, target in enumerate(loaded.targets(layer)):
      figure = draw_grid(
        loaded.view_images(target)[:rows],
        loaded.maps(layer)[:rows, position],
        scales[:rows, position],
        row_titles,
        f'{target} on {layer} ({method})',
      )
      path = out_dir / file_stem(layer) / f'{file_stem(target)}.png'
      save_figure(figure, path)
      written.append(path)
  return written
