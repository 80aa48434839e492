r"""Train on CelebA at 64x64 (tensorflow-datasets `celeb_a`).

  python -m cganjax.main --config=configs/celeba.py --workdir=/tmp/celeba \
    --config.data.dir=/path/to/celeba_files

data.dir must hold the manually downloaded files img_align_celeba.zip,
list_eval_partition.txt, list_attr_celeba.txt,
list_landmarks_align_celeba.txt and identity_CelebA.txt (see the README).
Training stops at start with a one-line message when they are missing. The
first run prepares the data once into data.prepared_dir; later runs with the
same data fields read only that.
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
  # The split sizes come from the data set, so these synthetic fields go.
  del config.data['num_train']
  del config.data['num_test']
  config.data.dir = ''  # Folder with the manually downloaded CelebA files.
  # Prepared TFRecords (tfds/) and training-size arrays; '' means
  # ~/.cache/cganjax/prepared.
  config.data.prepared_dir = ''
  config.lock()
  return config
