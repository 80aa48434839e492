r"""Train on the built-in synthetic face set at 64x64.

  python -m cganjax.main --config=configs/synthetic.py --workdir=/tmp/synthetic

Every field can be overridden on the command line, for example
`--config.train.batch_size=64`.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0  # Seeds the parameters, noise, masks and data order.

  config.data = ml_collections.ConfigDict()
  config.data.name = 'synthetic'
  config.data.image_size = 64  # Square side in pixels, 32 to 256.
  config.data.num_train = 100_000  # Synthetic examples in the train split.
  config.data.num_test = 2_000  # Synthetic examples in the test split.
  config.data.prefetch_batches = 2  # Batches prepared ahead on the host.

  config.model = ml_collections.ConfigDict()
  config.model.g_base_channels = 16  # Channels of G's first level.
  config.model.g_max_channels = 128  # Cap on channels at any level of G.
  config.model.g_levels = 3  # Downsamplings in G's encoder.
  config.model.g_res_blocks = (
    2  # Conditional residual blocks at G's bottleneck.
  )
  config.model.noise_dim = 32  # Length of G's noise vector.
  config.model.d_base_channels = 16
  config.model.d_max_channels = 128
  config.model.d_levels = 4  # Downsamplings in D's trunk.

  config.masks = ml_collections.ConfigDict()
  config.masks.whole_prob = 0.25  # Share of whole-image masks: generation.
  config.masks.part_prob = 0.6  # Share of attribute-region masks: edits.
  # The rest are free-form stroke masks, trained as inpainting.
  config.masks.flip_prob = 0.75  # Chance that a part mask flips its attribute.
  config.masks.part_dilation = 0.04  # Region dilation, fraction of the side.
  config.masks.free_form_max_strokes = 4
  config.masks.free_form_max_width = 0.2  # Stroke width, fraction of the side.

  config.loss = ml_collections.ConfigDict()
  config.loss.adversarial = ml_collections.ConfigDict()
  config.loss.adversarial.weight = 1.0
  # 'hinge', 'non_saturating' (softplus of logits) or 'least_squares'.
  config.loss.adversarial.type = 'hinge'
  config.loss.attribute = ml_collections.ConfigDict()
  config.loss.attribute.weight = 1.0  # G: D's attribute loss on fakes.
  config.loss.attribute.d_weight = 1.0  # D: attribute loss on real images.
  config.loss.reconstruction = ml_collections.ConfigDict()
  config.loss.reconstruction.weight = 10.0  # L1 inside unflipped masks.
  config.loss.r1 = ml_collections.ConfigDict()
  config.loss.r1.weight = 1.0  # gamma of the R1 penalty on real images.
  # Steps between R1 evaluations (lazy R1). 16 is StyleGAN2's choice, and
  # on a CPU R1's second derivative costs about 8 forward-backward passes
  # of D (measured at the demo size), so a longer interval saves time.
  config.loss.r1.interval = 16
  # Terms below are off at weight 0, which leaves them out of the compiled
  # step. configs/ablation.py turns on the style and entropy terms.
  config.loss.style = ml_collections.ConfigDict()
  config.loss.style.weight = 0.0  # Gram-matrix loss, real vs edited image.
  # Feature layers of the style and perceptual losses; () is the extractor's
  # default (see cganjax/features.py), e.g. ('D/block1', 'D/block2').
  config.loss.style.layers = ()
  config.loss.style.region = 'inside'  # 'inside', 'outside' or 'all'.
  config.loss.perceptual = ml_collections.ConfigDict()
  # L1 between features, on examples whose mask flips nothing.
  config.loss.perceptual.weight = 0.0
  config.loss.perceptual.region = 'inside'  # 'inside', 'outside' or 'all'.
  config.loss.entropy = ml_collections.ConfigDict()
  # Entropy of D's attribute predictions on the fakes, summed over
  # attributes, in nats.
  config.loss.entropy.conditional_weight = 0.0
  # Binary KL of the batch-mean prediction from the batch-mean request.
  config.loss.entropy.marginal_weight = 0.0
  config.loss.entropy.head = 'sigmoid'  # D has independent binary logits.
  config.loss.tv = ml_collections.ConfigDict()
  config.loss.tv.weight = 0.0  # Total variation inside the mask and its edge.
  config.loss.features = ml_collections.ConfigDict()
  # 'discriminator' (D's taps, no gradient into D), 'random' or 'vgg19'.
  config.loss.features.extractor = 'discriminator'
  config.loss.features.seed = 0  # Weights of the 'random' extractor.
  config.loss.features.weights_path = ''  # .npz file of the 'vgg19' one.

  config.optim = ml_collections.ConfigDict()
  config.optim.g_learning_rate = 2e-4
  config.optim.d_learning_rate = 2e-4
  config.optim.b1 = 0.5
  config.optim.b2 = 0.999
  config.optim.ema_decay = 0.999  # Maximum decay of the EMA of G per step.

  config.train = ml_collections.ConfigDict()
  config.train.steps = 20_000  # Total steps; a resumed run stops here too.
  config.train.batch_size = 32  # Global batch over all devices and hosts.
  config.train.log_every = 100  # Steps between log lines and scalars.
  config.train.checkpoint_every = 1_000
  config.train.sample_every = 1_000  # Steps between sample grids; 0 turns off.
  # Steps between activation-map dumps of the sample images into
  # WORKDIR/maps/step_<step>; 0 turns them off.
  config.train.maps_every = 0
  config.train.keep_checkpoints = 3  # Newest checkpoints kept on disk.
  # Consecutive skipped (non-finite) steps after which training stops.
  config.train.max_nonfinite_steps = 100

  config.sample = ml_collections.ConfigDict()
  config.sample.num_images = 8  # Rows of the sample grid.

  config.edit = ml_collections.ConfigDict()
  # Defaults of activation-map masks (--mask=map:ATTR@T) in cganjax.edit.
  config.edit.map_method = 'grad_cam'  # A method of cganjax.maps.METHODS.
  config.edit.map_layer = 'D/block2'  # A tap of D, at 1/4 of the image side.

  config.evaluate = ml_collections.ConfigDict()
  config.evaluate.num_images = 500  # Test images the evaluator edits.
  config.evaluate.classifier_steps = 4_000  # Training steps of the judge.
  config.evaluate.batch_size = 64
  # Judge training images, inside the central pose and lighting range.
  config.evaluate.classifier_images = 10_000
  # Held-out judge test images, inside and outside that range each.
  config.evaluate.classifier_test_images = 1_000

  config.lock()
  return config
