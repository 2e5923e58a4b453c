"""Autoregressive WaveNet priors on the four toy oscillators.

  python -m audiosep_jax.main --config=configs/toy_wavenet.py:demo --workdir=/tmp/toy_wavenet --mode=train
"""
from configs import default


def get_config(arg=None):
  variant = default.parse_variant(arg)
  config = default.get_default_config()
  config.variant = variant
  model = config.model
  model.family = "wavenet"
  # Total layers; dilations 1, 2, 4, ... restart every dilation_cycle layers (3 stacks x 10).
  model.n_layers = 30
  model.dilation_cycle = 10
  model.width = 64
  # The classic causal WaveNet kernel: the current and one past input per layer, so the
  # receptive field is 1 + sum of dilations (3070 samples for 3 x 10 layers).
  model.kernel_size = 2
  model.num_bins = 256
  # 'linear' (mixing is linear in the waveform, PnF) or 'mu_law'.
  model.quantization = "linear"
  model.mu = 255.0
  # The gate's tanh and sigmoid inputs as two matmuls against the halves of each layer's
  # dilated kernel (wavenet.ResidualLayer): the same function, a faster Langevin score on
  # a CPU (benchmarks/README.md); on GPUs and TPUs time both.
  model.split_gate = True
  # The WaveNet's score, one prior after another: 0.94 against 1.23 s with 'vmap' (paper
  # sizes, 1 x 4 x 16 384, on a CPU; benchmarks/README.md).
  config.separation.prior_loop = "map"
  # The 2020 code's WaveNet crops (toy) and batch.
  config.data.crop_length = 3_075
  config.training.batch_size = 2

  default.set_run_sizes(config, variant)
  if variant == "demo":
    model.n_layers = 10
    model.dilation_cycle = 10
    model.width = 32
    config.training.batch_size = 4
    config.training.num_steps = 500
    config.training.log_every = 50
    config.training.eval_every = 250
    config.training.checkpoint_every = 250
  elif variant == "test":
    model.n_layers = 4
    model.dilation_cycle = 2
    model.width = 8
    config.optim.learning_rate = 1e-2
  return config
