"""FloWaveNet priors on the four toy oscillators.

  python -m audiosep_jax.main --config=configs/toy_flow.py:demo --workdir=/tmp/toy_flow --mode=train
"""
from configs import default


def get_config(arg=None):
  variant = default.parse_variant(arg)
  config = default.get_default_config()
  config.variant = variant
  model = config.model
  model.family = "flow"
  model.n_blocks = 4
  model.n_flows = 6
  model.n_layers = 10
  model.width = 32
  model.kernel_size = 3
  # Dilations 1, 2, 4, ... restart after this many layers.
  model.dilation_cycle = 10
  # Recompute each flow step in the backward pass (flow.remat_after_cotangent): a peak
  # about 10x lower at the paper setting, about a third more arithmetic.
  model.remat = False
  # ActNorm's data-dependent init divides by (std of the init batch + this).
  model.actnorm_eps = 1e-6

  default.set_run_sizes(config, variant)
  if variant == "demo":
    model.n_blocks = 3
    model.n_flows = 3
    model.n_layers = 5
    model.width = 16
    model.dilation_cycle = 5
    config.training.batch_size = 8
    config.training.num_steps = 1_000
    config.training.log_every = 100
    config.training.eval_every = 500
    config.training.checkpoint_every = 500
  elif variant == "test":
    model.n_blocks = 2
    model.n_flows = 2
    model.n_layers = 2
    model.width = 8
    model.dilation_cycle = 2
    config.optim.learning_rate = 3e-3
  return config
