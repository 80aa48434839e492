r"""StarGAN at 128x128 on the synthetic face set, with StarGAN's settings.

  python -m cganjax.main --config=configs/stargan.py --workdir=/tmp/stargan

The networks, losses and optimiser follow the StarGAN paper (Choi et al.,
CVPR 2018). G has 64 base channels and 6 residual blocks, D has 6 strided
4x4 convolutions. The losses are WGAN-GP with penalty weight 10,
classification with weight 1 and reconstruction with weight 10. Adam runs
at 1e-4 with betas 0.5 and 0.999, on batches of 16, with 5 D updates per G
update. StarGAN's usual 5 CelebA attributes are
Black_Hair, Blond_Hair, Brown_Hair, Male and Young. The synthetic set has no
Young, so Pale_Skin, another change of the whole face's appearance, takes
its place. The benchmarks set train.n_critic=1 to time one D and one G update
per iteration.
"""

import sys
from pathlib import Path

import ml_collections

# Lets `configs` import from any working directory.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from configs import synthetic  # noqa: E402

# A list, not a tuple, so that it compares equal to its JSON copy in the run
# record when a run resumes.
ATTRIBUTES = ['Black_Hair', 'Blond_Hair', 'Brown_Hair', 'Male', 'Pale_Skin']


def get_config() -> ml_collections.ConfigDict:
  config = synthetic.get_config()
  config.unlock()
  config.data.image_size = 128

  config.model.arch = 'stargan'  # 'cganjax' (default) or 'stargan'.
  # Data set attributes that G is conditioned on and D classifies.
  config.model.attributes = list(ATTRIBUTES)
  config.model.g_base_channels = 64
  config.model.g_res_blocks = 6
  config.model.d_base_channels = 64
  config.model.d_levels = 6  # Strided 4x4 convolutions in D.
  # How the stride-2 4x4 convolutions of G and D run: 'lax' (strided and
  # transposed lax convolutions) or 'stride_free' (the same convolutions as
  # stride-1 ones, faster to differentiate on CPU; see BENCHMARKS.md).
  config.model.strided_conv = 'stride_free'

  config.loss.gp = ml_collections.ConfigDict()
  config.loss.gp.weight = 10.0  # WGAN-GP gradient penalty on interpolates.
  config.loss.attribute.weight = 1.0  # G: BCE of D's logits vs the targets.
  config.loss.attribute.d_weight = 1.0  # D: BCE on real images.
  config.loss.reconstruction.weight = 10.0  # L1 of G(G(x, c'), c) vs x.

  config.optim.g_learning_rate = 1e-4
  config.optim.d_learning_rate = 1e-4
  config.optim.b1 = 0.5
  config.optim.b2 = 0.999

  config.train.batch_size = 16
  config.train.n_critic = 5  # D updates per G update.
  config.lock()
  return config
