r"""The demo run with and without the style and entropy losses.

Pick the variant after a colon and the seed on the command line:

  python -m cganjax.main --config=configs/ablation.py:style \
    --config.seed=1 --workdir=/tmp/ablation/style_1

Variants: `baseline` (configs/synthetic_demo.py unchanged, both terms off),
`style` (Gram-matrix style loss on D's taps), `entropy` (conditional
entropy and marginal KL of D's attribute predictions on the fakes) and
`both` (the default when no variant is given).

The weights come from one 300-step run of the demo config with every new
term at weight 1 (seed 0, one CPU device). At step 300, G's attribute loss
was 3.5, the style loss 1.5, the conditional entropy 4.0 and the marginal
KL 0.13, so these weights make the terms 0.15, 0.40 and 0.13, each a small
share of G's loss. The style loss on D's taps grows with the scale of D's
features (3e-4 at step 1 in that run). Over the full 2,000 steps (logged
means of steps 1901 to 2000, seeds 0 to 2 of `style` and of `both`) it
reached 3.8 to 5.9, so at weight 0.1 it was 15% to 22% of G's total loss,
against 2% to 3% at step 300. The entropy terms shrank instead: the
conditional entropy from 4.4-4.8 to 1.2-1.3 and the marginal KL from 0.10
to 0.02.
"""

import sys
from pathlib import Path

import ml_collections

# Lets `configs` import from any working directory.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from configs import synthetic_demo  # noqa: E402

VARIANTS = ('baseline', 'style', 'entropy', 'both')
STYLE_WEIGHT = 0.1
CONDITIONAL_ENTROPY_WEIGHT = 0.1
MARGINAL_KL_WEIGHT = 1.0


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  variant = variant or 'both'
  if variant not in VARIANTS:
    raise ValueError(
      f'unknown ablation variant {variant!r}; append one of '
      f'{", ".join(VARIANTS)} after the colon, as in '
      '--config=configs/ablation.py:style.'
    )
  config = synthetic_demo.get_config()
  config.unlock()
  if variant in ('style', 'both'):
    config.loss.style.weight = STYLE_WEIGHT
  if variant in ('entropy', 'both'):
    config.loss.entropy.conditional_weight = CONDITIONAL_ENTROPY_WEIGHT
    config.loss.entropy.marginal_weight = MARGINAL_KL_WEIGHT
  config.lock()
  return config
