r"""Train on CelebA at 64x64 (tensorflow-datasets `celeb_a`).

python -m cganjax.main --config=configs/celeba.py --workdir=/tmp/celeba
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
  config.data.name = 'celeba'
  config.data.dir = ''  # Folder with the manually downloaded CelebA files.
  config.lock()
  return config
