"""The run record and Orbax checkpoints of a work directory.

A work directory contains `run.json` (the run record: full config, attribute
names, package versions, git commit, device and process counts) and
`checkpoints/<step>/` written by an Orbax CheckpointManager. Tools that only
restore a model (evaluate, explain, edit) use `load_run_record` and
`restore_state` and never import the training loop.
"""

import importlib.metadata
import json
import os
import subprocess
import tempfile
from pathlib import Path

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from cganjax.errors import InputError

RECORD_NAME = 'run.json'
CHECKPOINT_DIR = 'checkpoints'
RECORD_PACKAGES = (
  'cganjax',
  'jax',
  'jaxlib',
  'flax',
  'optax',
  'orbax-checkpoint',
  'numpy',
)


class WorkdirError(InputError):
  """A work directory that cannot be used as asked."""


def write_atomic(path: Path, content: str | bytes) -> None:
  """Write `content` to `path` through a temporary file and a rename."""
  path = Path(path)
  handle, temporary = tempfile.mkstemp(
    dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp'
  )
  try:
    mode = 'wb' if isinstance(content, bytes) else 'w'
    with os.fdopen(handle, mode) as file:
      file.write(content)
    os.replace(temporary, path)
  except BaseException:
    Path(temporary).unlink(missing_ok=True)
    raise


def _git_commit() -> str | None:
  source = Path(__file__).resolve().parent
  try:
    result = subprocess.run(
      ['git', 'rev-parse', 'HEAD'],
      cwd=source,
      capture_output=True,
      text=True,
      timeout=10,
      check=True,
    )
  except (OSError, subprocess.SubprocessError):
    return None
  return result.stdout.strip() or None


def _package_versions() -> dict[str, str | None]:
  versions = {}
  for name in RECORD_PACKAGES:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = None
  return versions


def make_run_record(config, attributes) -> dict:
  return {
    'config': config.to_dict(),
    'attributes': list(attributes),
    'packages': _package_versions(),
    'git_commit': _git_commit(),
    'device_count': jax.device_count(),
    'process_count': jax.process_count(),
    'platform': jax.default_backend(),
  }


def write_run_record(workdir, record: dict) -> None:
  write_atomic(Path(workdir) / RECORD_NAME, json.dumps(record, indent=2))


def load_run_record(workdir) -> dict:
  """Read the run record of a work directory, with its config as a ConfigDict.

  Raises:
    WorkdirError: when the directory or its record is missing or unreadable.
  """
  path = Path(workdir) / RECORD_NAME
  if not Path(workdir).is_dir():
    raise WorkdirError(
      f'work directory {workdir} not found; pass the --workdir of a '
      'training run.'
    )
  try:
    record = json.loads(path.read_text())
  except FileNotFoundError:
    raise WorkdirError(
      f'{path} not found; {workdir} is not a cganjax work directory. '
      'Pass the --workdir that training wrote.'
    ) from None
  except (OSError, json.JSONDecodeError) as error:
    raise WorkdirError(f'{path} is unreadable ({error}).') from None
  record['config'] = ml_collections.ConfigDict(record['config'])
  return record


def check_same_model(record: dict, config, workdir) -> None:
  """Raise WorkdirError when `workdir` was trained with another model shape."""
  saved = record['config']
  checks = [
    ('data.image_size', saved.data.image_size, config.data.image_size),
    ('data.name', saved.data.name, config.data.name),
  ]
  for key in saved.model:
    checks.append((f'model.{key}', saved.model[key], config.model.get(key)))
  for key, before, now in checks:
    if before != now:
      raise WorkdirError(
        f'{workdir} contains a checkpoint trained with {key}={before!r}, but '
        f'the config requests {now!r}; use a new --workdir or set '
        f'--config.{key}={before!r}.'
      )


def checkpoint_manager(workdir, keep: int = 3, async_save: bool = True):
  """Open (or create) the Orbax CheckpointManager of a work directory."""
  options = ocp.CheckpointManagerOptions(
    max_to_keep=keep,
    enable_async_checkpointing=async_save,
    create=True,
  )
  directory = Path(workdir).resolve() / CHECKPOINT_DIR
  return ocp.CheckpointManager(directory, options=options)


def abstract_like(tree, sharding=None):
  """Shape-and-dtype skeleton of `tree`, placed with `sharding` if given."""

  def one(x):
    x = np.asarray(x) if not hasattr(x, 'dtype') else x
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

  return jax.tree.map(one, tree)


def restore_state(manager, step: int | None, target, workdir):
  """Restore the state of `step` (None: the newest) into `target`'s shapes.

  `target` is a pytree of arrays or `jax.ShapeDtypeStruct`s with the
  structure of the saved state.

  Raises:
    WorkdirError: no checkpoint, an unknown step, or another model shape.
  """
  steps = manager.all_steps()
  if not steps:
    raise WorkdirError(
      f'no checkpoint found in {Path(workdir) / CHECKPOINT_DIR}; train '
      'first with python -m cganjax.main.'
    )
  if step is None:
    step = max(steps)
  elif step not in steps:
    raise WorkdirError(
      f'--step={step} not found in {workdir}; the saved steps are '
      f'{sorted(steps)}.'
    )
  try:
    restored = manager.restore(step, args=ocp.args.StandardRestore(target))
  except (ValueError, KeyError, TypeError) as error:
    first_line = str(error).strip().splitlines()[0] if str(error) else ''
    raise WorkdirError(
      f'the checkpoint of step {step} in {workdir} does not match this '
      f'model ({type(error).__name__}: {first_line[:200]}); restore it '
      'with the config it was trained with, or use a new --workdir.'
    ) from None
  return step, restored
