"""Test setup: eight simulated CPU devices and a tiny config.

XLA reads the device count when JAX first initialises its backend, so the
flag is set here, before any test imports JAX.
"""

import os
import subprocess
import sys
from pathlib import Path

os.environ['XLA_FLAGS'] = (
  os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
).strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import jax  # noqa: E402
import pytest  # noqa: E402
from jax.experimental.compilation_cache import compilation_cache  # noqa: E402

from configs import synthetic  # noqa: E402

CACHE_OPTIONS = {
  'jax_compilation_cache_dir': None,  # Set by the fixture below.
  'jax_persistent_cache_min_compile_time_secs': 0.0,
  'jax_persistent_cache_min_entry_size_bytes': 0,
}


@pytest.fixture(scope='session', autouse=True)
def compilation_cache_dir(tmp_path_factory):
  """Keep a persistent compilation cache for the whole test session.

  Each training run compiles its step, so later runs with the same config,
  in any test module, load the compiled step from this cache.
  """
  options = dict(CACHE_OPTIONS)
  options['jax_compilation_cache_dir'] = str(
    tmp_path_factory.mktemp('compilation_cache')
  )
  previous = {name: getattr(jax.config, name) for name in options}
  for name, value in options.items():
    jax.config.update(name, value)
  # JAX decides once per process whether the cache is in use, so a reset
  # makes it decide again with the options above.
  compilation_cache.reset_cache()
  yield
  for name, value in previous.items():
    jax.config.update(name, value)
  compilation_cache.reset_cache()


def make_tiny_config():
  """A config small enough that a training step takes milliseconds."""
  config = synthetic.get_config()
  config.data.image_size = 32
  config.data.num_train = 64
  config.data.num_test = 16
  config.data.prefetch_batches = 1
  config.model.g_base_channels = 8
  config.model.g_max_channels = 16
  config.model.g_levels = 2
  config.model.g_res_blocks = 1
  config.model.noise_dim = 8
  config.model.d_base_channels = 8
  config.model.d_max_channels = 16
  config.model.d_levels = 3
  config.train.steps = 4
  config.train.batch_size = 8
  config.train.log_every = 2
  config.train.checkpoint_every = 2
  config.train.sample_every = 2
  config.sample.num_images = 2
  config.evaluate.num_images = 16
  config.evaluate.classifier_steps = 20
  config.evaluate.batch_size = 16
  config.evaluate.classifier_images = 128
  config.evaluate.classifier_test_images = 32
  return config


@pytest.fixture
def tiny_config():
  return make_tiny_config()


def saved_steps(workdir) -> list[int]:
  """Return the checkpoint steps saved in a work directory, in order."""
  folder = Path(workdir) / 'checkpoints'
  if not folder.is_dir():
    return []
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


def file_contents(folder) -> dict[str, bytes]:
  """Map each file below `folder` (relative path) to its bytes."""
  folder = Path(folder)
  return {
    str(p.relative_to(folder)): p.read_bytes()
    for p in sorted(folder.rglob('*'))
    if p.is_file()
  }


def run_module(module: str, *args, timeout=300):
  """Run `python -m MODULE ARGS` from the repository root on one CPU device.

  XLA_FLAGS is dropped so that the subprocess does not simulate 8 devices.
  """
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)
  return subprocess.run(
    [sys.executable, '-m', module, *args],
    cwd=Path(__file__).resolve().parents[1],
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )
