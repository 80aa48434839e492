"""Multi-process runs: input sharding, lost peers and the launch scripts.

The tests marked slow start real runs of two CPU processes that join
through a coordinator on 127.0.0.1 and run their collectives with gloo.
Their subprocesses share one persistent compilation cache, so only the
first run of each program compiles it.
"""

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest
from conftest import make_tiny_config, saved_steps

from cganjax import distributed, step, train
from cganjax.data import pipeline
from cganjax.errors import InputError
from configs import synthetic

REPO_ROOT = Path(__file__).resolve().parent.parent
WORKER = REPO_ROOT / 'tests' / 'multihost_worker.py'
STATE_TREES = ('g_params', 'd_params', 'g_ema_params')
# Processes of the real runs below, and devices of each.
PROCESSES = 2
DEVICES_PER_PROCESS = 2
HEARTBEAT_SECONDS = 5
# The survivor of a lost peer must exit within this time: JAX notices the
# missing heartbeats after HEARTBEAT_SECONDS, and stopping takes a moment
# more on a loaded machine.
SURVIVOR_EXIT_SECONDS = 60
# Largest difference allowed between the parameters of a two-process run and
# of a one-process run.
TOLERANCE = 1e-5
# Limit for a whole run, compilation included.
RUN_SECONDS = 600

# What JAX 0.10.2 writes to stderr when its coordination service stops a
# process, trimmed to the lines that name the cause.
COORDINATOR_LOST_TEXT = """\
E1204 23:31:28.831432   20964 coordination_service_agent.cc:289] Polled an \
error from coordination service (this can be an error from this or another \
task).
F1204 23:31:28.831607   20964 client.h:80] Terminating process because the \
JAX distributed service detected fatal errors. This most likely indicates \
that another task died; see the other task logs for more details. \
absl::Status: UNAVAILABLE: Failed to send RPC to coordination service. \
Either the leader task was preempted/died/restarted unexpectedly or this \
task is experiencing network issues.
"""
HEARTBEATS_STOPPED_TEXT = """\
E1204 23:13:05.132043    7762 coordination_service.cc:1549] Use error \
polling to propagate the following error to all tasks: UNAVAILABLE: The \
following tasks are unhealthy (stopped sending heartbeats):
1
The tasks have crashed. Check the task logs for an earlier error.
F1204 23:13:05.138620    7773 client.h:80] Terminating process because the \
JAX distributed service detected fatal errors.
"""
BARRIER_FAILED_TEXT = """\
F1204 23:10:59.613029    6481 client.h:80] Terminating process because the \
JAX distributed service detected fatal errors. absl::Status: INTERNAL: \
Shutdown barrier has failed.
Barrier result: 'INTERNAL: Barrier failed because: task is set to ERROR: \
UNAVAILABLE: Task 2 heartbeat timeout. This indicates that the remote task \
has failed.
"""
REGISTER_TIMEOUT_TEXT = """\
F1204 23:17:21.070857   11704 client.h:80] Terminating process because the \
JAX distributed service detected fatal errors. absl::Status: \
DEADLINE_EXCEEDED: Deadline Exceeded

RPC: /xla.coordination.CoordinationService/RegisterTask
"""


def config_flags(base, config, prefix='--config.') -> list[str]:
  """Return the override flags that turn `base` into `config`."""
  flags = []
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      flags += config_flags(base[key], value, f'{prefix}{key}.')
    elif value != base[key]:
      assert isinstance(value, int | float | str), (key, value)
      flags.append(f'{prefix}{key}={value}')
  return flags


# Fields that each run below sets itself.
RUN_LENGTH_FIELDS = ('steps', 'checkpoint_every', 'sample_every', 'log_every')
# `python -m cganjax.main` flags for conftest's tiny config, less the run
# length. Runs with these flags and DEVICES_PER_PROCESS devices compile the
# same programs as multihost_worker.py, so they share the compilation cache.
TINY_RUN_FLAGS = (
  '--config=configs/synthetic.py',
  *(
    flag
    for flag in config_flags(synthetic.get_config(), make_tiny_config())
    if flag.split('=')[0].split('.')[-1] not in RUN_LENGTH_FIELDS
  ),
)


def free_port() -> int:
  with socket.socket() as probe:
    probe.bind(('127.0.0.1', 0))
    return probe.getsockname()[1]


# Input sharding.


@pytest.mark.parametrize('process_count', [1, 2, 4])
def test_process_shards_cover_epoch(process_count):
  config = make_tiny_config()
  batch_size = config.train.batch_size
  steps_per_epoch = config.data.num_train // batch_size
  local_size = batch_size // process_count

  loaded = []
  for process in range(process_count):
    batches = pipeline.train_batches(config, 0, process, process_count)
    loaded.append([next(batches)['index'] for _ in range(steps_per_epoch)])

  every_id = []
  for step_number in range(steps_per_epoch):
    parts = [loaded[p][step_number] for p in range(process_count)]
    for part in parts:
      assert part.shape == (local_size,)
    # In process order, the parts are the global batch of that step.
    expected = pipeline.train_indices(
      config.seed, config.data.num_train, step_number, batch_size
    )
    np.testing.assert_array_equal(np.concatenate(parts), expected)
    every_id.extend(np.concatenate(parts).tolist())

  # One epoch visits each example once, whichever process loads it.
  assert sorted(every_id) == list(range(config.data.num_train))
  per_process = [
    set(np.concatenate(loaded[p]).tolist()) for p in range(process_count)
  ]
  for a in range(process_count):
    for b in range(a + 1, process_count):
      assert not per_process[a] & per_process[b], (a, b)


def test_process_slice_rejects_indivisible_batch():
  with pytest.raises(InputError, match='not divisible by the process count 3'):
    pipeline.process_slice(8, 0, 3)


def test_mesh_devices_match_process_rows():
  assert jax.device_count() == 8
  mesh = step.create_mesh(distributed.mesh_devices())
  rows = distributed.process_rows(step.batch_sharding(mesh), 16)
  assert (rows.start, rows.stop) == (0, 16)
  train.check_process_rows(mesh, 16)


class RowsSharding:
  """A stand-in for a sharding whose local devices hold the given rows."""

  def __init__(self, row_slices):
    self.row_slices = row_slices

  def addressable_devices_indices_map(self, shape):
    return {device: (rows,) for device, rows in enumerate(self.row_slices)}


def test_process_rows_of_contiguous_devices():
  sharding = RowsSharding([slice(4, 6), slice(6, 8)])
  assert distributed.process_rows(sharding, 8) == slice(4, 8)


def test_process_rows_reject_scattered_devices():
  sharding = RowsSharding([slice(0, 2), slice(4, 6)])
  with pytest.raises(distributed.DistributedError, match=r'\[0, 1, 4, 5\]'):
    distributed.process_rows(sharding, 8)


# Options and the environment.


@pytest.mark.parametrize(
  ('options', 'flag'),
  [
    (distributed.Options(mode='sometimes'), '--distributed'),
    (distributed.Options(coordinator_address='10.0.0.1'), 'coordinator'),
    (distributed.Options(coordinator_address='host:99999'), 'coordinator'),
    (distributed.Options(coordinator_address=':1234'), 'coordinator'),
    (distributed.Options(num_processes=0), '--num_processes=0'),
    (distributed.Options(num_processes=2, process_id=2), '--process_id=2'),
    (distributed.Options(process_id=-1), '--process_id=-1'),
    (distributed.Options(heartbeat_timeout_seconds=0), 'heartbeat'),
    (distributed.Options(mode='off', num_processes=2), '--distributed=off'),
  ],
)
def test_invalid_options_rejected(options, flag):
  with pytest.raises(InputError, match=re.escape(flag)):
    distributed.validate_options(options)


def test_valid_options_accepted():
  distributed.validate_options(
    distributed.Options(
      coordinator_address='[::1]:1234', num_processes=2, process_id=1
    )
  )
  assert distributed.split_address('[::1]:1234') == ('::1', 1234)
  assert distributed.split_address('10.0.0.1:80') == ('10.0.0.1', 80)


@pytest.mark.parametrize(
  ('host', 'expected'),
  [
    ('127.0.0.1', True),
    ('127.1.2.3', True),
    ('::1', True),
    ('localhost', True),
    ('10.0.0.1', False),
    ('node-0', False),
  ],
)
def test_is_loopback(host, expected):
  assert distributed.is_loopback(host) is expected


SLURM_TWO_TASKS = {
  'SLURM_JOB_ID': '123',
  'SLURM_STEP_NODELIST': 'node[1-2]',
  'SLURM_NTASKS': '2',
  'SLURM_PROCID': '0',
  'SLURM_LOCALID': '0',
}


@pytest.fixture
def plain_environment(monkeypatch):
  """An environment without the variables of a cluster launcher."""
  for name in (
    *SLURM_TWO_TASKS,
    'JAX_COORDINATOR_ADDRESS',
    'OMPI_MCA_orte_hnp_uri',
  ):
    monkeypatch.delenv(name, raising=False)
  return monkeypatch


def test_plain_machine_runs_one_process(plain_environment):
  assert distributed.cluster_environment() is None
  assert not distributed.is_enabled(distributed.Options())


def test_slurm_with_two_tasks_joins(plain_environment):
  for name, value in SLURM_TWO_TASKS.items():
    plain_environment.setenv(name, value)
  assert distributed.cluster_environment() == 'SLURM'
  assert distributed.is_enabled(distributed.Options())
  assert not distributed.is_enabled(distributed.Options(mode='off'))


def test_slurm_with_one_task_runs_alone(plain_environment):
  for name, value in SLURM_TWO_TASKS.items():
    plain_environment.setenv(name, value)
  plain_environment.setenv('SLURM_NTASKS', '1')
  assert distributed.cluster_environment() is None


def test_explicit_flags_join(plain_environment):
  assert distributed.is_enabled(distributed.Options(num_processes=2))
  assert distributed.is_enabled(distributed.Options(mode='on'))


# Naming the lost peer from JAX's message.


def test_lost_coordinator_named():
  text = COORDINATOR_LOST_TEXT
  described = distributed.describe_fatal_error(text, process_id=1)
  assert described.startswith('lost process 0, the coordinator')
  assert 'resume from the newest checkpoint' in described


def test_coordinator_never_names_itself():
  text = COORDINATOR_LOST_TEXT
  described = distributed.describe_fatal_error(text, process_id=0)
  assert 'lost process' not in described
  assert 'see the JAX error above' in described


def test_unhealthy_task_list_named():
  text = HEARTBEATS_STOPPED_TEXT
  described = distributed.describe_fatal_error(text, process_id=0)
  assert described.startswith('lost process 1:')


def test_heartbeat_timeout_task_named():
  text = BARRIER_FAILED_TEXT
  described = distributed.describe_fatal_error(text, process_id=0)
  assert described.startswith('lost process 2:')


def test_several_lost_processes_named():
  text = HEARTBEATS_STOPPED_TEXT.replace('):\n1\n', '):\n1\n3\n')
  described = distributed.describe_fatal_error(text, process_id=0)
  assert described.startswith('lost processes 1, 3:')


def test_unreachable_coordinator_at_start():
  text = REGISTER_TIMEOUT_TEXT
  described = distributed.describe_fatal_error(text, process_id=1)
  assert described.startswith('could not join the run')
  assert '--coordinator_address' in described


def test_unknown_fatal_message_general():
  described = distributed.describe_fatal_error('F] Terminating', 1)
  assert described.startswith('stopped by the JAX coordination service')


# The command line and the launch scripts.


def subprocess_env(cache_dir=None, devices=1) -> dict:
  """The environment of a subprocess on `devices` CPU devices."""
  env = dict(os.environ)
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  env['JAX_PLATFORMS'] = 'cpu'
  if cache_dir is not None:
    env['JAX_COMPILATION_CACHE_DIR'] = str(cache_dir)
    env['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
    env['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '0'
  return env


def run_main(*args, timeout=120) -> subprocess.CompletedProcess:
  env = subprocess_env()
  # Without a launcher's variables, so that nothing describes a run.
  for name in (
    *SLURM_TWO_TASKS,
    'JAX_COORDINATOR_ADDRESS',
    'OMPI_MCA_orte_hnp_uri',
  ):
    env.pop(name, None)
  return subprocess.run(
    [sys.executable, '-m', 'cganjax.main', *args],
    cwd=REPO_ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def test_main_rejects_process_id_out_of_range(tmp_path):
  result = run_main(
    *TINY_RUN_FLAGS,
    f'--workdir={tmp_path / "run"}',
    '--coordinator_address=127.0.0.1:1234',
    '--num_processes=2',
    '--process_id=2',
  )
  assert result.returncode == 2, result.stderr[-3000:]
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr[-3000:]
  assert '--process_id=2 is out of range' in lines[0]
  assert not (tmp_path / 'run').exists()


def test_main_rejects_bad_coordinator_address(tmp_path):
  result = run_main(
    *TINY_RUN_FLAGS,
    f'--workdir={tmp_path / "run"}',
    '--coordinator_address=127.0.0.1',
    '--num_processes=2',
    '--process_id=0',
  )
  assert result.returncode == 2, result.stderr[-3000:]
  assert "--coordinator_address='127.0.0.1' is invalid" in result.stderr


def test_main_distributed_on_without_peers_exits_2(tmp_path):
  result = run_main(
    *TINY_RUN_FLAGS, f'--workdir={tmp_path / "run"}', '--distributed=on'
  )
  assert result.returncode == 2, result.stderr[-3000:]
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr[-3000:]
  assert 'cannot join a multi-process run' in lines[0]
  assert '--coordinator_address' in lines[0]
  assert not (tmp_path / 'run').exists()


def fake_gcloud_path(tmp_path) -> tuple[dict, Path]:
  """An environment whose `gcloud` only records that it was called."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  calls = tmp_path / 'gcloud_calls'
  fake = bin_dir / 'gcloud'
  fake.write_text(f'#!/bin/sh\necho "$@" >> {calls}\nexit 1\n')
  fake.chmod(0o755)
  env = subprocess_env()
  env['PATH'] = f'{bin_dir}{os.pathsep}{env["PATH"]}'
  return env, calls


def test_tpu_pod_dry_run_prints_commands(tmp_path):
  env, calls = fake_gcloud_path(tmp_path)
  result = subprocess.run(
    [
      'bash',
      'launch/tpu_pod.sh',
      '--dry-run',
      '--name=test-slice',
      '--zone=us-central2-b',
      '--accelerator_type=v4-16',
      '--config=configs/synthetic_demo.py',
      '--workdir=/mnt/shared/run',
      '--',
      '--config.train.steps=10',
    ],
    cwd=REPO_ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert result.returncode == 0, result.stderr
  assert not calls.exists(), 'the dry run called gcloud'

  lines = result.stdout.splitlines()
  commands = [line for line in lines if line.startswith('gcloud ')]
  tpu = 'gcloud compute tpus tpu-vm'
  assert commands[0] == f'{tpu} describe test-slice --zone=us-central2-b'
  assert commands[1] == (
    f'{tpu} create test-slice --zone=us-central2-b '
    '--accelerator-type=v4-16 --version=tpu-ubuntu2204-base'
  )

  kinds = [command.split()[4] for command in commands[2:]]
  assert kinds == ['scp', 'ssh', 'scp', 'ssh']
  for command in commands[2:]:
    assert '--worker=all' in command.split(), command
  assert any(line.startswith('tar -C ') for line in lines)

  train_command = commands[-1]
  assert '-m cganjax.main --distributed=on' in train_command
  assert '--config=configs/launch_synthetic_demo.py' in train_command
  assert '--workdir=/mnt/shared/run' in train_command
  assert '--config.train.steps=10' in train_command


def test_tpu_pod_reuse_skips_creation(tmp_path):
  env, calls = fake_gcloud_path(tmp_path)
  result = subprocess.run(
    [
      'bash',
      'launch/tpu_pod.sh',
      '--dry-run',
      '--reuse',
      '--name=test-slice',
      '--zone=us-central2-b',
      '--config=configs/synthetic_demo.py',
      '--workdir=/mnt/shared/run',
    ],
    cwd=REPO_ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert result.returncode == 0, result.stderr
  assert ' create ' not in result.stdout
  assert ' describe ' not in result.stdout
  assert not calls.exists()


@pytest.mark.parametrize(
  ('arguments', 'message'),
  [
    (['--zone=z', '--config=configs/synthetic.py'], 'missing --name'),
    (
      ['--name=n', '--zone=z', '--config=no/such.py', '--workdir=/w'],
      '--config=no/such.py not found',
    ),
    (
      ['--name=n', '--zone=z', '--config=configs/synthetic.py', '--workdir=w'],
      '--workdir=w is relative',
    ),
    (['--name=n', '--colour=red'], 'unknown option --colour=red'),
  ],
)
def test_tpu_pod_rejects_bad_input(tmp_path, arguments, message):
  env, calls = fake_gcloud_path(tmp_path)
  result = subprocess.run(
    ['bash', 'launch/tpu_pod.sh', '--dry-run', *arguments],
    cwd=REPO_ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert result.returncode == 2
  assert message in result.stderr
  assert not calls.exists()


def test_slurm_dry_run_prints_srun(tmp_path):
  env = subprocess_env()
  env.pop('SLURM_JOB_ID', None)
  result = subprocess.run(
    [
      'bash',
      'launch/slurm.sbatch',
      '--dry-run',
      '--config=configs/synthetic_demo.py',
      '--workdir=/shared/run',
    ],
    cwd=REPO_ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == (
    'srun python3 -m cganjax.main --distributed=on '
    '--config=configs/synthetic_demo.py --workdir=/shared/run'
  )


def test_local_sh_rejects_bad_process_count():
  result = subprocess.run(
    ['bash', 'launch/local.sh', '-n', '0', '--', '--workdir=/tmp/x'],
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert result.returncode == 2
  assert '-n 0 is invalid' in result.stderr


def test_scripts_pass_shellcheck():
  shellcheck = shutil.which('shellcheck')
  assert shellcheck, 'shellcheck not found; install the test extra'
  scripts = sorted(
    str(path.relative_to(REPO_ROOT))
    for pattern in ('*.sh', '*.sbatch')
    for path in (REPO_ROOT / 'launch').glob(pattern)
  )
  assert scripts == [
    'launch/local.sh',
    'launch/slurm.sbatch',
    'launch/tpu_pod.sh',
  ]
  result = subprocess.run(
    [shellcheck, '.ci/run', *scripts],
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert result.returncode == 0, result.stdout


# Real two-process runs.


@pytest.fixture(scope='module')
def cache_dir(tmp_path_factory):
  """A persistent compilation cache shared by the runs of this module."""
  return tmp_path_factory.mktemp('multihost_compilation_cache')


def read_state(path) -> dict:
  with np.load(path) as arrays:
    return {name: arrays[name] for name in arrays.files}


def tree_arrays(state, name) -> list[np.ndarray]:
  return [np.asarray(x) for x in jax.tree.leaves(getattr(state, name))]


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path, cache_dir):
  port = free_port()
  workdir = tmp_path / 'two'
  outputs = [tmp_path / f'process_{i}.npz' for i in range(2)]
  logs = [tmp_path / f'process_{i}.log' for i in range(2)]
  processes = []
  for i in range(2):
    with open(logs[i], 'w') as log:
      processes.append(
        subprocess.Popen(
          [sys.executable, str(WORKER), str(i), str(port), str(workdir)]
          + [str(outputs[i])],
          cwd=REPO_ROOT,
          env=subprocess_env(cache_dir),
          stdout=log,
          stderr=subprocess.STDOUT,
        )
      )
  try:
    for i, process in enumerate(processes):
      assert process.wait(timeout=RUN_SECONDS) == 0, logs[i].read_text()[-3000:]
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
        process.wait()

  config = make_tiny_config()
  one = train.train_and_evaluate(config, tmp_path / 'one')
  info = pipeline.dataset_info(config)
  initial = step.create_train_state(
    config, step.create_networks(config, info.attributes)
  )
  two = [read_state(path) for path in outputs]
  assert int(one.step) == int(two[0]['step']) == int(two[1]['step']) == 4

  for name in STATE_TREES:
    expected = tree_arrays(one, name)
    start = tree_arrays(initial, name)
    moved = max(
      float(np.max(np.abs(a - b))) for a, b in zip(expected, start, strict=True)
    )
    assert moved > 50 * TOLERANCE, (name, moved)
    for index, leaf in enumerate(expected):
      key = f'{name}/{index}'
      # Every process has the same replicated parameters.
      np.testing.assert_array_equal(two[0][key], two[1][key], err_msg=key)
      # Summing over 4 devices in 2 processes instead of 8 devices in one
      # changes only the rounding.
      difference = float(np.max(np.abs(two[0][key] - leaf)))
      assert difference < TOLERANCE, (key, difference)

  # Each process loaded its own half of every global batch.
  batch_size = config.train.batch_size
  for step_number in range(4):
    halves = [two[i]['loaded_ids'][step_number] for i in range(2)]
    assert not set(halves[0].tolist()) & set(halves[1].tolist())
    expected_ids = pipeline.train_indices(
      config.seed, config.data.num_train, step_number, batch_size
    )
    np.testing.assert_array_equal(np.concatenate(halves), expected_ids)


def start_main(workdir, port, process_id, log_path, cache_dir, *extra):
  with open(log_path, 'w') as log:
    return subprocess.Popen(
      [
        sys.executable,
        '-m',
        'cganjax.main',
        *TINY_RUN_FLAGS,
        f'--workdir={workdir}',
        f'--coordinator_address=127.0.0.1:{port}',
        f'--num_processes={PROCESSES}',
        f'--process_id={process_id}',
        f'--heartbeat_timeout_seconds={HEARTBEAT_SECONDS}',
        *extra,
      ],
      cwd=REPO_ROOT,
      env=subprocess_env(cache_dir, DEVICES_PER_PROCESS),
      stdout=log,
      stderr=subprocess.STDOUT,
    )


def stop_all(processes) -> None:
  for process in processes:
    if process.poll() is None:
      process.kill()
      process.wait(timeout=60)


def wait_until(condition, processes, seconds, what) -> None:
  deadline = time.monotonic() + seconds
  while not condition():
    assert all(p.poll() is None for p in processes), f'a process ended {what}'
    assert time.monotonic() < deadline, f'timed out {what}'
    time.sleep(0.05)


def kill_and_check_survivor(processes, victim, logs) -> str:
  """SIGKILL process `victim`; return the survivor's last line."""
  survivor = 1 - victim
  processes[victim].kill()
  killed_at = time.monotonic()
  try:
    code = processes[survivor].wait(timeout=SURVIVOR_EXIT_SECONDS)
  except subprocess.TimeoutExpired:
    pytest.fail(
      f'process {survivor} still runs {SURVIVOR_EXIT_SECONDS} s after '
      f'process {victim} was killed'
    )
  elapsed = time.monotonic() - killed_at
  processes[victim].wait(timeout=60)
  output = logs[survivor].read_text()
  assert code == 1, (code, output[-3000:])
  assert elapsed < SURVIVOR_EXIT_SECONDS
  return output.strip().splitlines()[-1]


def resumed_step(log_path) -> int | None:
  found = re.search(
    r'Resumed from the checkpoint of step (\d+)\.', log_path.read_text()
  )
  return None if found is None else int(found.group(1))


@pytest.mark.slow
def test_lost_peers_stop_run_and_restart_resumes(tmp_path, cache_dir):
  workdir = tmp_path / 'run'
  long_run = ('--config.train.steps=5000', '--config.train.checkpoint_every=5')
  sample_at_end = (
    '--config.train.sample_every=0',
    '--config.train.log_every=1',
  )

  def start(name, *extra):
    port = free_port()
    logs = [tmp_path / f'{name}_process_{i}.log' for i in range(PROCESSES)]
    processes = [
      start_main(workdir, port, i, logs[i], cache_dir, *extra)
      for i in range(PROCESSES)
    ]
    return processes, logs

  # Run 1: the coordinator, process 0, dies after the first checkpoint.
  processes, logs = start('first', *long_run, *sample_at_end)
  try:
    wait_until(
      lambda: saved_steps(workdir), processes, RUN_SECONDS, 'before step 5'
    )
    last_line = kill_and_check_survivor(processes, 0, logs)
  finally:
    stop_all(processes)
  assert 'lost process 0, the coordinator' in last_line, last_line
  saved = saved_steps(workdir)
  assert saved, 'no checkpoint survived'

  # Run 2 resumes from the newest checkpoint, saves another one and loses
  # process 1.
  processes, logs = start('second', *long_run, *sample_at_end)
  try:
    wait_until(
      lambda: max(saved_steps(workdir)) > max(saved),
      processes,
      RUN_SECONDS,
      'before a new checkpoint',
    )
    last_line = kill_and_check_survivor(processes, 1, logs)
  finally:
    stop_all(processes)
  assert resumed_step(logs[0]) == max(saved), logs[0].read_text()[-3000:]
  assert 'lost process 1:' in last_line, last_line
  saved = saved_steps(workdir)

  # Run 3, through launch/local.sh, resumes again and finishes three steps
  # later.
  final_step = max(saved) + 3
  log_dir = tmp_path / 'local_sh_logs'
  env = subprocess_env(cache_dir)
  env['PYTHON'] = sys.executable
  # local.sh sets the device count itself.
  del env['XLA_FLAGS']
  result = subprocess.run(
    [
      'bash',
      'launch/local.sh',
      '-n',
      str(PROCESSES),
      '-d',
      str(DEVICES_PER_PROCESS),
      '-l',
      str(log_dir),
      '--',
      *TINY_RUN_FLAGS,
      f'--workdir={workdir}',
      f'--config.train.steps={final_step}',
      f'--config.train.checkpoint_every={final_step}',
      *sample_at_end,
    ],
    cwd=REPO_ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=RUN_SECONDS,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  resumed = re.search(
    r'Resumed from the checkpoint of step (\d+)\.', result.stderr
  )
  assert resumed and int(resumed.group(1)) == max(saved), result.stderr[-3000:]
  assert max(saved_steps(workdir)) == final_step
  assert (workdir / 'samples' / f'step_{final_step:07d}.png').is_file()
  assert list((workdir / 'tensorboard').iterdir())
  assert '"process_count": 2' in (workdir / 'run.json').read_text()
  # Process 0 logs progress; process 1 logs only warnings and errors.
  assert f'step {final_step}/{final_step}' in result.stderr
  other = (log_dir / 'process_1.log').read_text()
  assert 'Joined a run of 2 processes as process 1' in other
  assert f'step {final_step}/{final_step}' not in other
