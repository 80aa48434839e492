"""The training command line, `python -m cganjax.main`, run as a subprocess.

The subprocesses run without the test's XLA_FLAGS, so they see one CPU
device.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import file_contents, saved_steps

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_CONFIG = 'configs/synthetic_demo.py'
# Overrides that shrink the demo config so that a step takes milliseconds.
TINY_OVERRIDES = (
  '--config.train.log_every=1',
  '--config.model.g_base_channels=8',
  '--config.model.g_max_channels=16',
  '--config.model.d_base_channels=8',
  '--config.model.d_max_channels=16',
  '--config.train.batch_size=4',
  '--config.sample.num_images=2',
)
TWO_STEPS = (
  '--config.train.steps=2',
  '--config.train.checkpoint_every=2',
  '--config.train.sample_every=2',
)


def cli_env() -> dict:
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)
  return env


def run_cli(*args, timeout=300) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, '-m', 'cganjax.main', *args],
    cwd=REPO_ROOT,
    env=cli_env(),
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def tiny_run_args(workdir, *extra) -> list[str]:
  return [
    f'--config={DEMO_CONFIG}',
    f'--workdir={workdir}',
    *TINY_OVERRIDES,
    *extra,
  ]


def error_line(result: subprocess.CompletedProcess) -> str:
  """Return the usage error line, checking that no traceback came before."""
  assert 'Traceback' not in result.stderr, result.stderr
  lines = result.stderr.strip().splitlines()
  assert lines, 'stderr is empty'
  last = lines[-1]
  assert last.startswith(('main.py', 'cganjax')), last
  assert 'error' in last, last
  return last


def assert_only_error_line(result: subprocess.CompletedProcess) -> str:
  """Check that stderr is a single usage error line and return it."""
  last = error_line(result)
  assert len(result.stderr.strip().splitlines()) == 1, result.stderr
  return last


def test_help_lists_flags():
  result = run_cli('--help', timeout=120)
  assert result.returncode == 0, result.stderr
  assert '--workdir' in result.stdout
  assert '--config' in result.stdout


def test_missing_workdir_exits_2():
  result = run_cli(f'--config={DEMO_CONFIG}', timeout=120)
  assert result.returncode == 2
  assert 'workdir' in assert_only_error_line(result)


def test_unknown_config_field_exits_2(tmp_path):
  result = run_cli(
    f'--config={DEMO_CONFIG}',
    f'--workdir={tmp_path / "run"}',
    '--config.train.no_such_key=1',
    timeout=120,
  )
  assert result.returncode == 2
  assert 'train.no_such_key' in assert_only_error_line(result)
  assert not (tmp_path / 'run').exists()


def test_unknown_config_section_exits_2(tmp_path):
  result = run_cli(
    f'--config={DEMO_CONFIG}',
    f'--workdir={tmp_path / "run"}',
    '--config.no_such_section.steps=1',
    timeout=120,
  )
  assert result.returncode == 2
  assert 'no_such_section' in assert_only_error_line(result)


def test_misspelt_field_suggests_name(tmp_path):
  result = run_cli(
    f'--config={DEMO_CONFIG}',
    f'--workdir={tmp_path / "run"}',
    '--config.train.step=1',
    timeout=120,
  )
  assert result.returncode == 2
  line = assert_only_error_line(result)
  assert 'train.step' in line
  assert '"steps"' in line


def test_bad_value_type_exits_2(tmp_path):
  result = run_cli(
    f'--config={DEMO_CONFIG}',
    f'--workdir={tmp_path / "run"}',
    '--config.train.steps=abc',
    timeout=120,
  )
  assert result.returncode == 2
  line = assert_only_error_line(result)
  assert 'train.steps' in line
  assert 'abc' in line


def test_image_size_out_of_range_exits_2(tmp_path):
  result = run_cli(
    f'--config={DEMO_CONFIG}',
    f'--workdir={tmp_path / "run"}',
    '--config.data.image_size=20',
    timeout=120,
  )
  assert result.returncode == 2
  assert 'data.image_size=20' in error_line(result)
  assert not (tmp_path / 'run').exists()


def test_missing_config_file_exits_2(tmp_path):
  missing = 'configs/no_such_config.py'
  for extra in ((), ('--config.train.steps=3',)):
    result = run_cli(
      f'--config={missing}', f'--workdir={tmp_path / "run"}', *extra
    )
    assert result.returncode == 2, (extra, result.stderr)
    assert missing in assert_only_error_line(result), extra
  assert not (tmp_path / 'run').exists()


def test_celeba_config_exits_2_at_once(tmp_path):
  started = time.monotonic()
  source = tmp_path / 'celeba_files'
  result = run_cli(
    '--config=configs/celeba.py',
    f'--workdir={tmp_path / "run"}',
    f'--config.data.dir={source}',
    f'--config.data.prepared_dir={tmp_path / "prepared"}',
  )
  elapsed = time.monotonic() - started
  assert result.returncode == 2
  line = error_line(result)
  assert str(source) in line
  assert 'img_align_celeba.zip' in line
  assert 'list_attr_celeba.txt' in line
  assert '--config.data.dir' in line
  # A loose bound: the run fails while it checks the data config, before
  # it builds or compiles the model.
  assert elapsed < 60, elapsed
  assert 'Compiling the training step' not in result.stderr


@pytest.fixture(scope='module')
def tiny_cli_run(tmp_path_factory):
  """A 2-step run through the command line: (workdir, result)."""
  workdir = tmp_path_factory.mktemp('cli_run') / 'run'
  result = run_cli(*tiny_run_args(workdir, *TWO_STEPS))
  return workdir, result


def test_tiny_run_writes_checkpoint(tiny_cli_run):
  workdir, result = tiny_cli_run
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr
  assert saved_steps(workdir) == [2]
  assert (workdir / 'run.json').is_file()
  assert list((workdir / 'samples').glob('*.png'))


def test_finished_run_again_keeps_checkpoint(tiny_cli_run, tmp_path):
  source, first = tiny_cli_run
  assert first.returncode == 0, first.stderr[-3000:]
  workdir = tmp_path / 'run'
  shutil.copytree(source, workdir)
  before = file_contents(workdir / 'checkpoints')

  result = run_cli(*tiny_run_args(workdir, *TWO_STEPS))
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'Resumed from the checkpoint of step 2.' in result.stderr
  # Nothing is left to train, so the step is never compiled.
  assert 'Compiling the training step' not in result.stderr
  assert saved_steps(workdir) == [2]
  assert file_contents(workdir / 'checkpoints') == before


def test_other_model_shape_exits_2(tiny_cli_run, tmp_path):
  source, first = tiny_cli_run
  assert first.returncode == 0, first.stderr[-3000:]
  workdir = tmp_path / 'run'
  shutil.copytree(source, workdir)
  before = file_contents(workdir)

  result = run_cli(
    *tiny_run_args(workdir, *TWO_STEPS, '--config.model.g_base_channels=4')
  )
  assert result.returncode == 2, result.stderr[-3000:]
  line = error_line(result)
  assert 'model.g_base_channels' in line
  assert file_contents(workdir) == before


def test_nonfinite_losses_exit_1(tmp_path):
  workdir = tmp_path / 'run'
  result = run_cli(
    *tiny_run_args(
      workdir,
      *TWO_STEPS,
      '--config.loss.reconstruction.weight=nan',
      '--config.train.max_nonfinite_steps=1',
    )
  )
  # An internal error, not bad input: exit 1, still as one line.
  assert result.returncode == 1, result.stderr[-3000:]
  line = error_line(result)
  assert 'non-finite for 1 consecutive steps' in line
  assert 'no checkpoint was saved' in line
  assert saved_steps(workdir) == []


@pytest.mark.slow
def test_kill_and_resume(tmp_path):
  workdir = tmp_path / 'run'
  args = tiny_run_args(
    workdir,
    '--config.train.steps=40',
    '--config.train.checkpoint_every=10',
    '--config.train.sample_every=10',
  )
  log_path = tmp_path / 'first.log'
  with open(log_path, 'w') as log:
    process = subprocess.Popen(
      [sys.executable, '-m', 'cganjax.main', *args],
      cwd=REPO_ROOT,
      env=cli_env(),
      stdout=log,
      stderr=subprocess.STDOUT,
    )
    try:
      deadline = time.monotonic() + 300
      # Steps take milliseconds here, so poll often to kill the run between
      # its first checkpoint and its last.
      while not saved_steps(workdir) and process.poll() is None:
        assert time.monotonic() < deadline, 'no checkpoint within 300 s'
        time.sleep(0.01)
      finished_early = process.poll() is not None
      os.kill(process.pid, signal.SIGKILL)
      process.wait(timeout=60)
    finally:
      if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
  assert not finished_early, log_path.read_text()[-3000:]
  assert process.returncode == -signal.SIGKILL
  killed_at = saved_steps(workdir)
  assert killed_at, 'no checkpoint survived the kill'
  assert max(killed_at) < 40, killed_at

  result = run_cli(*args)
  assert result.returncode == 0, result.stderr[-3000:]
  resumed = re.search(
    r'Resumed from the checkpoint of step (\d+)\.', result.stderr
  )
  assert resumed, result.stderr[-3000:]
  assert int(resumed.group(1)) >= 10
  assert int(resumed.group(1)) in killed_at
  assert max(saved_steps(workdir)) == 40
