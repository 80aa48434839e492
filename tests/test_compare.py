"""Tests of the run comparison table (`python -m cganjax.compare`)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cganjax import compare
from cganjax.errors import InputError

REPO_ROOT = Path(__file__).resolve().parents[1]


def write_report(workdir: Path, step: int, edit: list[float]) -> None:
  (workdir / 'eval').mkdir(parents=True, exist_ok=True)
  report = {
    'step': step,
    'generated_accuracy': [1.0, 0.5],
    'edit_accuracy': edit,
    'outside_change': [0.0, 0.0],
    'counterfactual_l1': [0.25, 0.75],
  }
  (workdir / 'eval' / f'step_{step}.json').write_text(json.dumps(report))


def test_groups_by_name_and_reads_the_newest_report(tmp_path):
  write_report(tmp_path / 'base_0', 100, [0.0, 0.0])
  write_report(tmp_path / 'base_0', 2000, [0.4, 0.6])  # Mean 0.5.
  write_report(tmp_path / 'base_1', 2000, [0.6, 0.8])  # Mean 0.7.
  write_report(tmp_path / 'style_0', 2000, [0.8, 0.8])
  write_report(tmp_path / 'style_12', 2000, [1.0, 0.8])  # Mean 0.9.
  groups = compare.group_runs(
    [tmp_path / name for name in ('base_0', 'base_1', 'style_0', 'style_12')]
  )
  assert [g.name for g in groups] == ['base', 'style']
  assert groups[0].steps == (2000, 2000)
  np.testing.assert_allclose(groups[0].figures['edit_accuracy'], [0.5, 0.7])
  np.testing.assert_allclose(groups[1].figures['edit_accuracy'], [0.8, 0.9])
  np.testing.assert_allclose(groups[1].figures['counterfactual_l1'], 0.5)
  table = compare.markdown_table(groups)
  rows = {line.split(' | ')[0].strip('| '): line for line in table.splitlines()}
  # Edit accuracy: base 0.6 over [0.5, 0.7] and style 0.85 over [0.8, 0.9],
  # which does not overlap, while the other figures are equal (overlap).
  assert '| 0.600 [0.500, 0.700] |' in rows['base']
  assert '| 0.850 [0.800, 0.900] |' in rows['style']
  assert '| 0.750 [0.750, 0.750] ~ |' in rows['style']


def test_ranges_overlap_at_a_shared_end():
  assert compare.ranges_overlap(np.array([0.1, 0.3]), np.array([0.3, 0.5]))
  assert not compare.ranges_overlap(np.array([0.1, 0.2]), np.array([0.3]))


def test_missing_report_is_an_input_error(tmp_path):
  (tmp_path / 'run_0').mkdir()
  with pytest.raises(InputError, match='run python -m cganjax.evaluate'):
    compare.group_runs([tmp_path / 'run_0'])


def test_command_writes_table_and_fails_in_one_line(tmp_path):
  write_report(tmp_path / 'base_0', 10, [1.0, 1.0])
  out = tmp_path / 'table.md'
  command = [sys.executable, '-m', 'cganjax.compare']
  done = subprocess.run(
    [*command, f'--out={out}', str(tmp_path / 'base_0')],
    capture_output=True,
    text=True,
    cwd=REPO_ROOT,
    timeout=120,
  )
  assert done.returncode == 0, done.stderr
  assert out.read_text() == done.stdout
  assert '| base | 1 |' in done.stdout
  failed = subprocess.run(
    [*command, str(tmp_path / 'absent_0')],
    capture_output=True,
    text=True,
    cwd=REPO_ROOT,
    timeout=120,
  )
  assert failed.returncode == 2
  assert len(failed.stderr.strip().splitlines()) == 1
