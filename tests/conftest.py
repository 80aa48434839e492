"""Test setup: eight simulated CPU devices and a tiny config.

XLA reads the device count when JAX first initialises its backend, so the
flag is set here, before any test imports JAX.
"""

import os

os.environ['XLA_FLAGS'] = (
  os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
).strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import pytest  # noqa: E402

from configs import synthetic  # noqa: E402


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
  return config


@pytest.fixture
def tiny_config():
  return make_tiny_config()
