"""Shared defaults for every experiment; experiment files override a few fields.

Groups: data, model, training, optim, finetune, diagnostics, separation.
Variants (chosen on the command line as `file.py:variant`):
  paper  the published sizes
  demo   minutes on a laptop CPU
  test   seconds, for the test suite
"""
import ml_collections

VARIANTS = ("paper", "demo", "test")

TOY_SOURCES = ("sin", "square", "saw", "triangle")


def parse_variant(arg, default="demo"):
  """Returns the variant named by `file.py:arg`, with a clear error for unknown ones."""
  variant = arg or default
  if variant not in VARIANTS:
    raise ValueError(
        f"Unknown config variant {variant!r}; choose one of {', '.join(VARIANTS)}.")
  return variant


def toy_data_config():
  """The four-oscillator data of the 2020 paper's toy experiment, generated on the device."""
  data = ml_collections.ConfigDict()
  data.name = "toy"
  data.source_names = TOY_SOURCES
  data.sample_rate = 14_700
  # Pitch on the piano-key scale, f = 440 * 2 ** ((key - 49) / 12).
  data.key_low = 0.1
  data.key_high = 64.9
  data.amplitude_low = 0.8
  data.amplitude_high = 1.0
  # The likelihood diagnostics of the 2020 paper used unit amplitude.
  data.test_amplitude = 1.0
  data.test_seed = 1234
  data.test_size = 64
  data.test_length = 16_384
  data.crop_length = 16_384
  # Mixing weights a_k; None means the mean, a_k = 1 / K.
  data.mix_weights = None
  return data


def get_default_config():
  """Every field a run reads, with the paper's toy values where it gives them."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.data = toy_data_config()

  config.model = ml_collections.ConfigDict()
  config.model.family = "flow"
  # Both families: how each WaveNet layer forms its residual stream, 'add' | 'matmul' |
  # 'divide' (wavenet.ResidualLayer; the same function). 'divide' keeps XLA:CPU from
  # recomputing the stream in every later layer at no extra matmul (benchmarks/README.md);
  # on GPUs and TPUs time the three.
  config.model.residual_stream = "divide"

  config.training = ml_collections.ConfigDict()
  config.training.batch_size = 5
  config.training.num_steps = 150_000
  config.training.log_every = 100
  config.training.eval_every = 5_000
  config.training.checkpoint_every = 5_000
  config.training.max_checkpoints = 2
  config.training.eval_batch_size = 16
  config.training.num_audio_samples = 1
  # Devices of the ('data', 'prior') mesh of training and separation (evaluation and
  # diagnostics split their examples over all of them); 0 means every device jax sees.
  config.training.num_devices = 0
  # Devices of the `prior` axis (a divisor of K and of each process's devices): each
  # trains (and separates with) K / prior_devices of the priors; the rest of the devices
  # split the batch.
  # On a CPU host, JAX_NUM_CPU_DEVICES=K with prior_devices=K runs the priors
  # concurrently (benchmarks/README.md).
  config.training.prior_devices = 1
  # How each device runs its priors in the train step (priors.map_priors): 'map' one
  # after another (each op on one prior's activations: faster on CPUs at the paper
  # sizes), 'vmap' all at once (every matmul batched over the priors). Chosen on a CPU;
  # on GPUs and TPUs time both (benchmarks/compare_torch.py prints both).
  config.training.prior_loop = "map"
  # The train step averages the gradients of this many chunks of the batch, one after
  # another: the same update with 1/microbatches of the activation memory (batch_size
  # must be a multiple of microbatches x the data devices).
  config.training.microbatches = 1

  config.optim = ml_collections.ConfigDict()
  config.optim.learning_rate = 1e-4
  config.optim.b1 = 0.9
  config.optim.b2 = 0.999
  config.optim.eps = 1e-8
  # Step decay: x decay_factor at num_milestones milestones spread evenly from
  # decay_start_fraction to 100% of training (the paper: 36%, 52%, 68%, 84%, 100%).
  config.optim.decay_factor = 0.6
  config.optim.num_milestones = 5
  config.optim.decay_start_fraction = 0.36
  config.optim.clip_norm = 1.0

  config.finetune = ml_collections.ConfigDict()
  config.finetune.sigmas = (0.01, 0.027, 0.077, 0.129, 0.359)
  config.finetune.num_steps = 10_000
  # The 2020 code's variant: noise scaled by U(0, 1) per example, clamped to [-1, 1].
  config.finetune.legacy_noise = False

  config.diagnostics = ml_collections.ConfigDict()
  config.diagnostics.num_examples = 32
  config.diagnostics.length = 16_384
  config.diagnostics.batch_size = 8
  config.diagnostics.test_sigmas = (0.0, 0.001, 0.01, 0.05, 0.1, 0.2, 0.3)
  config.diagnostics.constant_values = 31
  config.diagnostics.noise_stds = (0.0, 0.001, 0.01, 0.027, 0.077, 0.1, 0.3, 0.5, 0.7, 1.0)
  # Pure-noise probe: log p averaged over this many draws per std.
  config.diagnostics.noise_probe_examples = 4
  config.diagnostics.smoothness_sigma = 0.05
  config.diagnostics.num_samples = 2
  config.diagnostics.sample_length = 16_384
  # Paper's tables clipped the latent term at this floor before averaging.
  config.diagnostics.paper_clip = -1e3

  config.separation = ml_collections.ConfigDict()
  config.separation.steps_per_level = 100
  # Langevin step at level i: eta_i = delta * sigma_i^2 / sigma_L^2.
  config.separation.delta = 3e-5
  # gamma_i = gamma_scale * sigma_i (BASIS: 1).
  config.separation.gamma_scale = 1.0
  # 'noise': x_k ~ N(0, (init_scale * sigma_1)^2); 'mix': x_k = m / sum_j a_j.
  config.separation.init = "noise"
  config.separation.init_scale = 1.0
  # Fixed-seed test mixes separated by --mode=separate, each mix_length samples long.
  config.separation.num_mixes = 8
  config.separation.mix_length = 16_384
  config.separation.batch_size = 8
  # --input files: chunks of mix_length samples, consecutive ones sharing chunk_overlap
  # samples (raised-cosine crossfade).
  config.separation.chunk_overlap = 1_024
  # Per-level residual, score and SI-SDR trace in metrics.json.
  config.separation.trace = True
  # How --mode=separate runs the steps: 'scan' (one compiled call) or 'loop' (one jitted
  # step per call from Python, the same numbers; for debugging and step-level profiling).
  # On a CPU the two ran equally fast for the flow (benchmarks/README.md).
  config.separation.driver = "scan"
  # How each device runs its priors in the score (priors.map_priors): 'vmap' all at once
  # (faster for the score on a CPU), 'map' one after another; the same numbers.
  config.separation.prior_loop = "vmap"
  return config


def set_run_sizes(config, variant):
  """Data, training, fine-tuning, diagnostics and separation sizes shared by every
  experiment's `demo` (minutes on a laptop CPU) and `test` (seconds) variants; the
  experiment files set their model and what differs per family afterwards."""
  if variant == "demo":
    config.data.crop_length = 1_024
    config.data.test_length = 2_048
    config.data.test_size = 32
    config.optim.learning_rate = 1e-3
    config.finetune.num_steps = 100
    config.diagnostics.num_examples = 32
    config.diagnostics.length = 2_048
    config.diagnostics.sample_length = 2_048
    config.separation.num_mixes = 4
    config.separation.mix_length = 2_048
    config.separation.steps_per_level = 50
  elif variant == "test":
    config.data.crop_length = 256
    config.data.test_length = 256
    config.data.test_size = 8
    config.training.batch_size = 4
    config.training.num_steps = 30
    config.training.log_every = 10
    config.training.eval_every = 15
    config.training.checkpoint_every = 15
    config.training.eval_batch_size = 4
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
