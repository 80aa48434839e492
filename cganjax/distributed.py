"""Multi-process runs: joining one, supervising it and naming a lost peer.

A multi-process run starts `python -m cganjax.main` once per host (or once
per GPU under SLURM), all with the same flags. `jax.distributed.initialize`
connects the processes through a coordination service hosted by process 0.
The device mesh then spans the devices of every process, each process loads
its own rows of every global batch, and Orbax writes checkpoints from all of
them.

When a peer dies, the JAX coordination client (jax 0.10.2) stops every
survivor from a C++ thread with a fatal log line and SIGABRT. Python gets no
chance to say which peer was lost. So `cganjax.main` forks in a
multi-process run: the child trains, and the parent copies the child's stderr
to its own, reads JAX's fatal message when the child dies of it and reports
which process was lost (`describe_fatal_error`).

JAX is imported inside the functions that need it, so that `--help` and the
supervising parent stay light.
"""

import contextlib
import ctypes
import dataclasses
import importlib.util
import ipaddress
import os
import re
import signal
import sys
import time

from absl import logging

from cganjax.errors import InputError

MODES = ('auto', 'on', 'off')
# JAX's default, in seconds.
DEFAULT_HEARTBEAT_TIMEOUT = 100
# The start of the line that JAX's coordination client logs before it aborts
# the process (xla/pjrt/distributed/client.h, jax 0.10.2).
FATAL_MARKER = (
  b'Terminating process because the JAX distributed service detected fatal '
  b'errors'
)
# Bytes of the child's stderr kept to read JAX's fatal message from.
TAIL_BYTES = 1 << 16
RESTART_HINT = (
  'restart every process with the same flags and --workdir to resume from '
  'the newest checkpoint.'
)
# Environment variables of SLURM that jax.distributed.initialize reads.
SLURM_VARIABLES = (
  'SLURM_JOB_ID',
  'SLURM_STEP_NODELIST',
  'SLURM_NTASKS',
  'SLURM_PROCID',
  'SLURM_LOCALID',
)


class DistributedError(RuntimeError):
  """A multi-process run that could not start or lost a process."""


@dataclasses.dataclass(frozen=True)
class Options:
  """How to join a multi-process run, from the command-line flags.

  `mode` is 'auto' (join when the flags or the environment describe a
  multi-process run), 'on' (always join) or 'off' (run as one process).
  Unset fields are None, and JAX then reads them from the environment.
  """

  mode: str = 'auto'
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  heartbeat_timeout_seconds: int = DEFAULT_HEARTBEAT_TIMEOUT

  def has_explicit_peers(self) -> bool:
    return any(
      value is not None
      for value in (
        self.coordinator_address,
        self.num_processes,
        self.process_id,
      )
    )


def split_address(address: str) -> tuple[str, int]:
  """Split 'host:port' or '[ipv6]:port' into the host and the port.

  Raises:
    InputError: when the address has no valid port.
  """
  host, separator, port_text = address.rpartition(':')
  try:
    port = int(port_text)
  except ValueError:
    port = -1
  if not separator or not host or not 1 <= port <= 65535:
    raise InputError(
      f'--coordinator_address={address!r} is invalid; use HOST:PORT with a '
      'port from 1 to 65535, such as 10.0.0.1:1234.'
    )
  return host.strip('[]'), port


def is_loopback(host: str) -> bool:
  if host == 'localhost':
    return True
  try:
    return ipaddress.ip_address(host).is_loopback
  except ValueError:
    return False


def validate_options(options: Options) -> None:
  """Raise InputError for flags that cannot describe a multi-process run."""
  if options.mode not in MODES:
    raise InputError(
      f'--distributed={options.mode!r} is invalid; use one of '
      f'{", ".join(MODES)}.'
    )
  if options.mode == 'off' and options.has_explicit_peers():
    raise InputError(
      '--distributed=off conflicts with --coordinator_address, '
      '--num_processes and --process_id; drop one or the other.'
    )
  if options.coordinator_address is not None:
    split_address(options.coordinator_address)
  if options.num_processes is not None and options.num_processes < 1:
    raise InputError(
      f'--num_processes={options.num_processes} is invalid; use the number '
      'of processes in the run, at least 1.'
    )
  if options.process_id is not None:
    count = options.num_processes
    if options.process_id < 0 or (
      count is not None and options.process_id >= count
    ):
      limit = 'num_processes - 1' if count is None else str(count - 1)
      raise InputError(
        f'--process_id={options.process_id} is out of range; use an id '
        f'from 0 to {limit}, a different one for each process.'
      )
  if options.heartbeat_timeout_seconds < 1:
    raise InputError(
      f'--heartbeat_timeout_seconds={options.heartbeat_timeout_seconds} is '
      'invalid; use a timeout of at least 1 second.'
    )


def cluster_environment() -> str | None:
  """Name the launcher whose environment describes a multi-process run.

  Reads environment variables and the installed packages only: nothing is
  sent anywhere. Returns None on a plain machine.
  """
  environment = os.environ
  if environment.get('JAX_COORDINATOR_ADDRESS'):
    return 'JAX_COORDINATOR_ADDRESS'
  if all(name in environment for name in SLURM_VARIABLES):
    if environment['SLURM_NTASKS'].strip() not in ('', '0', '1'):
      return 'SLURM'
  if 'OMPI_MCA_orte_hnp_uri' in environment:
    return 'Open MPI'
  # jax[tpu] installs libtpu. On a TPU VM, JAX finds the other workers of
  # the slice from the VM's metadata.
  if importlib.util.find_spec('libtpu') is not None:
    return 'Cloud TPU'
  return None


def is_enabled(options: Options) -> bool:
  """Return whether this run joins a multi-process run."""
  if options.mode == 'off':
    return False
  if options.mode == 'on' or options.has_explicit_peers():
    return True
  return cluster_environment() is not None


_heartbeat_timeout_seconds = DEFAULT_HEARTBEAT_TIMEOUT


def initialize(options: Options) -> bool:
  """Join the multi-process run; return False when running as one process.

  Also selects gloo for collectives between CPU processes. A coordinator on
  a loopback address listens on that address only, instead of JAX's
  default of every interface.

  Raises:
    InputError: when JAX cannot tell the coordinator, the process count or
      this process's id from the flags or the environment, unless `mode`
      is 'auto' and only a TPU package suggested a multi-process run.
  """
  import jax

  global _heartbeat_timeout_seconds
  arguments = {'heartbeat_timeout_seconds': options.heartbeat_timeout_seconds}
  if options.coordinator_address is not None:
    arguments['coordinator_address'] = options.coordinator_address
    host, _ = split_address(options.coordinator_address)
    if is_loopback(host):
      arguments['coordinator_bind_address'] = options.coordinator_address
  if options.num_processes is not None:
    arguments['num_processes'] = options.num_processes
  if options.process_id is not None:
    arguments['process_id'] = options.process_id

  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  try:
    jax.distributed.initialize(**arguments)
  except ValueError as error:
    # jax.distributed.initialize raises ValueError before it connects when
    # the flags and the environment leave a setting unknown.
    detected = cluster_environment()
    if options.mode == 'auto' and not options.has_explicit_peers():
      if detected == 'Cloud TPU':
        # NOTE: no test runs this branch, because libtpu is not installed
        # where the tests run.
        logging.warning(
          'libtpu is installed, but JAX found no TPU pod slice (%s); '
          'running as one process.',
          error,
        )
        return False
    raise InputError(
      f'cannot join a multi-process run: {error} Pass --coordinator_address, '
      '--num_processes and --process_id, or launch through the scripts in '
      'launch/.'
    ) from None
  _heartbeat_timeout_seconds = options.heartbeat_timeout_seconds
  logging.info(
    'Joined a run of %d processes as process %d, with %d local devices.',
    jax.process_count(),
    jax.process_index(),
    jax.local_device_count(),
  )
  return True


def mesh_devices() -> list:
  """Return every device of the run, grouped by process in process order.

  Process p then holds one contiguous block of the `data` axis, the rows
  `pipeline.process_slice` gives it. NOTE: on a TPU pod slice this order
  is not topology-aware; for a 1-D data-parallel mesh that affects only the
  speed of the gradient all-reduce.
  """
  import jax

  return sorted(jax.devices(), key=lambda d: (d.process_index, d.id))


def process_rows(sharding, batch_size: int) -> slice:
  """Return the rows of a global batch that this process's devices hold.

  Raises:
    DistributedError: when those rows are not one contiguous block.
  """
  rows = set()
  for index in sharding.addressable_devices_indices_map((batch_size,)).values():
    rows.update(range(batch_size)[index[0]])
  first, last = min(rows), max(rows)
  if len(rows) != last - first + 1:
    raise DistributedError(
      f'the devices of this process hold rows {sorted(rows)} of the global '
      'batch, which are not one block; build the mesh from mesh_devices().'
    )
  return slice(first, last + 1)


def gather_from_processes(value: int) -> list[int]:
  """Return `value` of every process, in process order.

  Every process must call this at the same point, as for a collective.
  """
  import jax
  import numpy as np
  from jax.experimental import multihost_utils

  if jax.process_count() == 1:
    return [int(value)]
  gathered = multihost_utils.process_allgather(np.int32(value))
  return [int(v) for v in np.asarray(gathered).reshape(-1)]


def local_copy(tree):
  """Copy of replicated global arrays on this process's first device.

  Work that only process 0 does, such as sample grids, computes on this copy
  so that it needs no other process.
  """
  import jax

  return jax.tree.map(lambda x: x.addressable_data(0), tree)


def flush_logs() -> None:
  logging.flush()
  for stream in (sys.stdout, sys.stderr):
    with contextlib.suppress(OSError, ValueError):
      stream.flush()


def stop_after_step_failure(error: BaseException) -> None:
  """Stop this process after a step failed in a multi-process run; never return.

  A step usually fails there because a peer died during a collective (gloo
  reports 'Connection closed by peer'). The JAX coordination service
  notices the missing heartbeats within the heartbeat timeout and stops
  this process. The supervising parent then names the lost peer. This
  function waits for that, then exits with status 1. It does not raise,
  because the exit handlers would wait for the lost peer at JAX's shutdown
  barrier for minutes.
  """
  wait_seconds = 2 * _heartbeat_timeout_seconds + 10
  logging.error(
    'A training step failed in a multi-process run, probably because a peer '
    'process stopped: %s',
    error,
    exc_info=error,
  )
  logging.error(
    'Waiting up to %d s for the JAX coordination service to report a lost '
    'process.',
    wait_seconds,
  )
  flush_logs()
  time.sleep(wait_seconds)
  logging.error(
    'No lost process was reported within %d s; stopping this process.',
    wait_seconds,
  )
  flush_logs()
  os._exit(1)


def _parse_process_ids(text: str) -> list[int]:
  """Return the ids of the tasks that JAX's message lists as stopped."""
  ids = set()
  # 'The following tasks are unhealthy (stopped sending heartbeats):\n1\n2'
  listed = re.search(
    r'stopped sending heartbeats\):\s*\n((?:[ \t]*\d+\s*\n)+)', text
  )
  if listed:
    ids.update(int(v) for v in listed.group(1).split())
  # 'Task 1 heartbeat timeout'
  ids.update(int(v) for v in re.findall(r'Task (\d+) heartbeat timeout', text))
  return sorted(ids)


def describe_fatal_error(text: str, process_id: int | None) -> str:
  """Return one sentence on why JAX's coordination client stopped a process.

  `text` is the end of the process's stderr, with JAX's fatal message and
  the coordination-service errors that came before it. The wording matched
  here is that of jax 0.10.2. A message in another wording gets the general
  sentence.
  """
  if 'RegisterTask' in text:
    return (
      'could not join the run: the coordinator did not answer within the '
      'initialization timeout; check --coordinator_address and start '
      'process 0.'
    )
  lost = [i for i in _parse_process_ids(text) if i != process_id]
  if lost:
    names = ', '.join(str(i) for i in lost)
    if len(lost) == 1:
      subject = f'lost process {names}: it'
    else:
      subject = f'lost processes {names}: they'
    return (
      f'{subject} stopped sending heartbeats to the JAX coordination '
      f'service; {RESTART_HINT}'
    )
  coordinator_gone = (
    'Failed to send RPC to coordination service' in text
    or 'leader task' in text
  )
  if coordinator_gone and process_id != 0:
    return (
      'lost process 0, the coordinator: its JAX coordination service stopped '
      f'answering; {RESTART_HINT}'
    )
  return (
    'stopped by the JAX coordination service after a failure in the run '
    f'(see the JAX error above); {RESTART_HINT}'
  )


def _exit_with_parent(parent_pid: int) -> None:
  """Ask Linux to SIGKILL this process when the supervising parent dies.

  Otherwise a killed parent would leave the training child running. Does
  nothing on systems without prctl.
  """
  try:
    libc = ctypes.CDLL(None, use_errno=True)
    set_parent_death_signal = libc.prctl
  except (OSError, AttributeError):
    return
  pr_set_pdeathsig = 1
  set_parent_death_signal(pr_set_pdeathsig, int(signal.SIGKILL))
  if os.getppid() != parent_pid:
    # The parent died before prctl took effect.
    os._exit(1)


def _write_all(fd: int, data: bytes) -> None:
  with contextlib.suppress(OSError):
    while data:
      data = data[os.write(fd, data) :]


def _relay(read_fd: int) -> bytes:
  """Copy `read_fd` to stderr until it closes; return its last bytes."""
  tail = bytearray()
  while True:
    chunk = os.read(read_fd, 1 << 16)
    if not chunk:
      break
    _write_all(2, chunk)
    tail += chunk
    del tail[:-TAIL_BYTES]
  os.close(read_fd)
  return bytes(tail)


@dataclasses.dataclass(frozen=True)
class ChildResult:
  """End state of the training child of `supervise`."""

  exit_code: int
  # Reason that JAX's coordination client stopped the child, or None.
  fatal_error: str | None


def supervise(process_id: int | None) -> ChildResult | None:
  """Fork a training child and relay its stderr.

  Returns None in the child, which goes on to train. In the parent, waits
  for the child and returns how it ended. The parent forwards SIGTERM to
  the child and ignores SIGINT, which a terminal sends to both. The child
  is killed if the parent dies.
  """
  flush_logs()
  read_fd, write_fd = os.pipe()
  parent_pid = os.getpid()
  child_pid = os.fork()
  if child_pid == 0:
    os.close(read_fd)
    os.dup2(write_fd, 2)
    os.close(write_fd)
    _exit_with_parent(parent_pid)
    return None

  os.close(write_fd)
  signal.signal(signal.SIGINT, signal.SIG_IGN)

  def forward(number, frame):
    with contextlib.suppress(ProcessLookupError):
      os.kill(child_pid, number)

  signal.signal(signal.SIGTERM, forward)
  tail = _relay(read_fd)
  _, status = os.waitpid(child_pid, 0)
  code = os.waitstatus_to_exitcode(status)
  if FATAL_MARKER in tail:
    text = tail.decode('utf-8', errors='replace')
    return ChildResult(
      exit_code=1, fatal_error=describe_fatal_error(text, process_id)
    )
  if code < 0:
    logging.error(
      'The training process was stopped by signal %s.',
      signal.Signals(-code).name,
    )
    return ChildResult(exit_code=128 - code, fatal_error=None)
  return ChildResult(exit_code=code, fatal_error=None)
