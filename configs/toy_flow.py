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
  # jax.checkpoint around each flow: less memory, one more forward pass.
  model.remat = False

  if variant == "demo":
    model.n_blocks = 3
    model.n_flows = 3
    model.n_layers = 5
    model.width = 16
    model.dilation_cycle = 5
    config.data.crop_length = 1_024
    config.data.test_length = 2_048
    config.data.test_size = 32
    config.training.batch_size = 8
    config.training.num_steps = 1_000
    config.training.log_every = 100
    config.training.eval_every = 500
    config.training.checkpoint_every = 500
    config.optim.learning_rate = 1e-3
    config.finetune.num_steps = 100
    config.diagnostics.num_examples = 32
    config.diagnostics.length = 2_048
    config.diagnostics.sample_length = 2_048
    config.separation.num_mixes = 4
    config.separation.mix_length = 2_048
    config.separation.steps_per_level = 50
    # On a CPU, XLA lowers the flow score's convolutions inside a compiled loop to naive
    # kernels (benchmarks/README.md): drive the jitted step from Python instead.
    config.separation.driver = "loop"
  elif variant == "test":
    model.n_blocks = 2
    model.n_flows = 2
    model.n_layers = 2
    model.width = 8
    model.dilation_cycle = 2
    config.data.crop_length = 256
    config.data.test_length = 256
    config.data.test_size = 8
    config.training.batch_size = 4
    config.training.num_steps = 30
    config.training.log_every = 10
    config.training.eval_every = 15
    config.training.checkpoint_every = 15
    config.training.eval_batch_size = 4
    config.optim.learning_rate = 3e-3
    config.finetune.sigmas = (0.01, 0.1)
    config.finetune.num_steps = 5
    config.diagnostics.num_examples = 8
    config.diagnostics.length = 256
    config.diagnostics.batch_size = 4
    config.diagnostics.num_samples = 1
    config.diagnostics.sample_length = 256
    config.separation.num_mixes = 2
    config.separation.mix_length = 256
    config.separation.batch_size = 2
    config.separation.steps_per_level = 5
    config.separation.chunk_overlap = 32
  return config
