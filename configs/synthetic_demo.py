r"""The README's demo: a small run on 32x32 synthetic faces, minutes on a CPU.

python -m cganjax.main --config=configs/synthetic_demo.py --workdir=/tmp/demo
"""

import sys
from pathlib import Path

import ml_collections

# Lets `configs` import from any working directory.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from configs import synthetic  # noqa: E402


def get_config() -> ml_collections.ConfigDict:
  config = synthetic.get_config()
  config.unlock()
  config.data.image_size = 32
  config.model.g_base_channels = 16
  config.model.g_max_channels = 64
  config.model.g_levels = 2
  config.model.g_res_blocks = 2
  config.model.d_base_channels = 16
  config.model.d_max_channels = 64
  config.model.d_levels = 3
  config.train.steps = 2_000
  config.train.batch_size = 32
  config.train.log_every = 100
  config.train.checkpoint_every = 500
  config.train.sample_every = 500
  config.evaluate.num_images = 256
  config.evaluate.classifier_steps = 3_000
  config.lock()
  return config
