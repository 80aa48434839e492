"""The evaluator: judge caching, scores on a tiny run, command-line errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_tiny_config

from cganjax import evaluation, train

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
  config = make_tiny_config()
  config.train.steps = 2
  workdir = tmp_path_factory.mktemp('run')
  train.train_and_evaluate(config, workdir)
  return workdir


def test_evaluate_run_scores_and_caches_judge(tiny_run, tmp_path):
  judges = tmp_path / 'judges'
  report = evaluation.evaluate_run(
    tiny_run, classifier_dir=judges, num_images=16
  )
  attributes = report['attributes']
  assert report['step'] == 2
  for key in ('generated_accuracy', 'edit_accuracy', 'counterfactual_l1'):
    values = np.asarray(report[key], np.float64)
    assert values.shape == (len(attributes),), key
    assert np.all((values >= 0) & (values <= 1)), key
  # Edits composite with hard masks, so pixels outside them never change.
  assert np.all(np.asarray(report['outside_change']) == 0.0)
  for split in ('central', 'held_out_range'):
    accuracy = np.asarray(report['judge']['accuracy'][split])
    assert accuracy.shape == (len(attributes),)

  saved = json.loads(Path(report['output']).read_text())
  assert saved['edit_accuracy'] == report['edit_accuracy']
  table = evaluation.format_table(report)
  for name in attributes:
    assert name in table

  folders = list(judges.iterdir())
  assert len(folders) == 1
  params_file = folders[0] / 'params.msgpack'
  written = params_file.stat().st_mtime_ns
  again = evaluation.evaluate_run(
    tiny_run, classifier_dir=judges, num_images=16
  )
  # The second evaluation loads the cached judge and scores identically.
  assert params_file.stat().st_mtime_ns == written
  assert again['edit_accuracy'] == report['edit_accuracy']
  assert again['judge'] == report['judge']


def test_judge_key_depends_on_data_config():
  config = make_tiny_config()
  other = make_tiny_config()
  other.data.image_size = 64
  assert evaluation.judge_key(config) != evaluation.judge_key(other)
  reseeded = make_tiny_config()
  reseeded.seed = 5
  # Runs with other seeds are judged by the same judge.
  assert evaluation.judge_key(config) == evaluation.judge_key(reseeded)


def test_central_range_split():
  pose = np.array([0.0, 0.6, -0.61, 0.2])
  lighting = np.array([0.0, -0.6, 0.0, 0.9])
  central = evaluation.in_central_range(pose, lighting)
  assert central.tolist() == [True, True, False, False]


def run_cli(*args):
  environment = dict(os.environ)
  environment.pop('XLA_FLAGS', None)
  return subprocess.run(
    [sys.executable, '-m', 'cganjax.evaluate', *args],
    cwd=REPO,
    env=environment,
    capture_output=True,
    text=True,
    timeout=300,
  )


def test_cli_help_exits_0():
  result = run_cli('--help')
  assert result.returncode == 0
  assert '--workdir' in result.stdout + result.stderr


def test_cli_missing_workdir_exits_2(tmp_path):
  result = run_cli(f'--workdir={tmp_path / "absent"}')
  assert result.returncode == 2
  assert 'Traceback' not in result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert 'not found' in last
  assert 'absent' in last


def test_cli_unknown_step_exits_2(tiny_run, tmp_path):
  result = run_cli(
    f'--workdir={tiny_run}', '--step=999', f'--classifier_dir={tmp_path}'
  )
  assert result.returncode == 2
  assert 'Traceback' not in result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert '--step=999' in last
