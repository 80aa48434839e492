r"""Train on CelebAMask-HQ at 64x64, read from its own directory layout.

  python -m cganjax.main --config=configs/celebamask_hq.py \
    --workdir=/tmp/celebamask_hq --config.data.dir=/path/to/CelebAMask-HQ

data.dir contains CelebA-HQ-img/, CelebAMask-HQ-mask-anno/ and
CelebAMask-HQ-attribute-anno.txt as distributed. The first run prepares the
images, merged part label maps and attributes once at data.image_size into
data.prepared_dir; later runs with the same data fields read only that.
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
  config.data.name = 'celebamask_hq'
  del config.data['num_train']  # Every image not held out trains.
  config.data.num_test = 2_000  # Images with the highest ids, held out.
  config.data.dir = ''  # The CelebAMask-HQ folder.
  # Where prepared arrays go; '' means ~/.cache/cganjax/prepared.
  config.data.prepared_dir = ''
  # False: a bad image or mask stops preparation with its name. True: it is
  # skipped with a warning, and the count is logged at the end.
  config.data.skip_bad_examples = False
  config.lock()
  return config
