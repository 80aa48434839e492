r"""Compare the evaluator's figures of several runs, grouped by variant.

  python -m cganjax.compare /tmp/ablation/baseline_0 /tmp/ablation/baseline_1 \
      /tmp/ablation/style_0 /tmp/ablation/style_1

Each work directory must contain the report of `python -m cganjax.evaluate`
(`eval/step_<step>.json`; the newest step is read). Runs are grouped by
their directory name with a trailing `_<seed>` removed, so `style_0` and
`style_1` are two seeds of `style`. For each group the table gives the mean
over seeds and, in brackets, the range (minimum to maximum) of each figure
averaged over the attributes. The first group is the reference: a figure of
another group whose range overlaps the reference's range is marked `~`,
because seeds alone could explain that difference.
"""

import dataclasses
import json
import re
import sys
from pathlib import Path

import numpy as np
from absl import app, flags

from cganjax import cli
from cganjax.errors import InputError

# (report key, column title, higher is better)
FIGURES = (
  ('generated_accuracy', 'generated acc.', True),
  ('edit_accuracy', 'edit acc.', True),
  ('outside_change', 'outside change', False),
  ('counterfactual_l1', 'counterfactual L1', False),
)
_SEED_SUFFIX = re.compile(r'_\d+$')

_OUT = flags.DEFINE_string(
  'out', None, 'Also write the markdown table to this file.'
)


@dataclasses.dataclass(frozen=True)
class Group:
  """Runs of one variant and their figures, one row per run."""

  name: str
  workdirs: tuple[str, ...]
  steps: tuple[int, ...]
  # Figure name -> [runs] of the figure averaged over the attributes.
  figures: dict[str, np.ndarray]


def read_report(workdir) -> dict:
  """Read the newest evaluator report of a work directory.

  Raises:
    InputError: no report, or one without the evaluator's figures.
  """
  folder = Path(workdir) / 'eval'
  reports = sorted(folder.glob('step_*.json'), key=_report_step)
  if not reports:
    raise InputError(
      f'{folder} contains no step_<step>.json; run python -m cganjax.evaluate '
      f'--workdir={workdir} first.'
    )
  path = reports[-1]
  try:
    report = json.loads(path.read_text())
  except (OSError, json.JSONDecodeError) as error:
    raise InputError(f'cannot read {path} ({error}); evaluate again.') from None
  missing = [key for key, _, _ in FIGURES if key not in report]
  if missing:
    raise InputError(
      f'{path} has no {", ".join(missing)}; it is not an evaluator report.'
    )
  return report


def _report_step(path: Path) -> int:
  digits = path.stem.removeprefix('step_')
  return int(digits) if digits.isdigit() else -1


def group_runs(workdirs) -> list[Group]:
  """Read the runs' reports and group them by name, in first-seen order."""
  names: dict[str, list[tuple[str, dict]]] = {}
  for workdir in workdirs:
    name = _SEED_SUFFIX.sub('', Path(workdir).resolve().name)
    names.setdefault(name, []).append((str(workdir), read_report(workdir)))
  groups = []
  for name, runs in names.items():
    figures = {
      key: np.array([float(np.mean(report[key])) for _, report in runs])
      for key, _, _ in FIGURES
    }
    groups.append(
      Group(
        name=name,
        workdirs=tuple(workdir for workdir, _ in runs),
        steps=tuple(int(report['step']) for _, report in runs),
        figures=figures,
      )
    )
  return groups


def ranges_overlap(a: np.ndarray, b: np.ndarray) -> bool:
  """Return whether the ranges [min a, max a] and [min b, max b] meet."""
  return bool(a.min() <= b.max() and b.min() <= a.max())


def markdown_table(groups: list[Group]) -> str:
  """Format the groups as a markdown table with the first as reference."""
  header = ['variant', 'seeds'] + [title for _, title, _ in FIGURES]
  lines = [
    '| ' + ' | '.join(header) + ' |',
    '|' + '---|' * len(header),
  ]
  reference = groups[0]
  for group in groups:
    cells = [group.name, str(len(group.workdirs))]
    for key, _, _ in FIGURES:
      values = group.figures[key]
      cell = f'{values.mean():.3f} [{values.min():.3f}, {values.max():.3f}]'
      if group is not reference and ranges_overlap(
        values, reference.figures[key]
      ):
        cell += ' ~'
      cells.append(cell)
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def main(argv: list[str]) -> None:
  with cli.report_errors():
    workdirs = argv[1:]
    if not workdirs:
      raise InputError(
        'no work directories given; pass the runs to compare, as in '
        'python -m cganjax.compare runs/baseline_0 runs/style_0.'
      )
    table = markdown_table(group_runs(workdirs))
    if _OUT.value:
      out = Path(_OUT.value)
      partial = out.with_name(out.name + '.partial')
      partial.write_text(table)
      partial.replace(out)
    sys.stdout.write(table)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
