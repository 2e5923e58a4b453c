"""Shared pieces of the real-audio experiments (MUSDB18-HQ stems, rendered chorales).

`stems_config(base, source_names)` turns a toy experiment config of one variant into
the same experiment on a stems folder: the model, training, diagnostics and separation
fields of the variant stay; config.data becomes `stems_data_config` with the variant's
crop and test sizes. The folder comes from the command line: --config.data.root=DIR.
"""
import ml_collections
from ml_collections import config_dict

MUSDB_SOURCES = ("drums", "bass", "other", "vocals")
CHORALE_SOURCES = ("soprano", "alto", "tenor", "bass")


def stems_data_config(source_names):
  """config.data of a `<root>/<split>/<track>/<stem>.wav` folder (audiosep_jax/data/stems.py)."""
  data = ml_collections.ConfigDict()
  data.name = "stems"
  # Required: the folder holding <train_split>/ and <test_split>/.
  data.root = config_dict.placeholder(str)
  data.source_names = tuple(source_names)
  data.sample_rate = 14_700
  data.crop_length = 16_384
  data.test_length = 16_384
  data.test_size = 64
  data.train_split = "train"
  data.test_split = "test"
  # Training crops with RMS below silence_rms are redrawn, up to max_crop_tries times;
  # test windows with a stem below it are left out.
  data.skip_silent_crops = True
  data.silence_rms = 1e-3
  data.max_crop_tries = 20
  # Batches prepared ahead by a host thread; 0 prepares each when it is asked for.
  data.prefetch = 4
  # Optional folder for resampled tracks (.npy, memory-mapped); None keeps them in RAM.
  data.cache_dir = config_dict.placeholder(str)
  # Mixing weights a_k; None means the mean, a_k = 1 / K.
  data.mix_weights = None
  return data


def render_config():
  """config.render: how `--mode=render_chorales` renders the music21 Bach chorales."""
  render = ml_collections.ConfigDict()
  # Seeds the per-chorale tempo and transposition and the train/test split; separate
  # from config.seed so that training seeds do not change the data.
  render.seed = 0
  # How many of the chorales with exactly soprano, alto, tenor and bass parts (in the
  # corpus's sorted order); None renders all of them (328 with music21 10.5.1).
  render.num_chorales = config_dict.placeholder(int)
  # Each chorale is cut after this many seconds of music (plus the release tail).
  render.max_seconds = 60.0
  # General MIDI programs (0-based) per voice, in data.source_names order:
  # 73 flute, 40 violin, 71 clarinet, 70 bassoon.
  render.programs = (73, 40, 71, 70)
  render.velocity = 90
  # Quarter notes per minute, drawn uniformly per chorale.
  render.tempo_low = 60.0
  render.tempo_high = 96.0
  # Transposition in semitones, an integer drawn uniformly per chorale in [-max, max].
  render.max_transpose = 3
  # Fraction of the chorales (at least one) that form the test split.
  render.test_fraction = 0.2
  # FluidSynth renders at synth_rate; soxr resamples to data.sample_rate.
  render.synth_rate = 44_100
  # Seconds of release rendered after the last note-off.
  render.tail_seconds = 1.0
  # Every stem is scaled to this peak; mixture.wav is the mean of the stems.
  render.peak = 0.9
  render.subtype = "PCM_16"
  # A General MIDI .sf2 file; None uses the TimGM6mb.sf2 that pretty_midi ships.
  render.soundfont = config_dict.placeholder(str)
  return render


def stems_config(base, source_names):
  """A toy-experiment config of one variant -> the same experiment on stems (in place)."""
  toy_data = base.data
  data = stems_data_config(source_names)
  data.crop_length = toy_data.crop_length
  data.test_length = toy_data.test_length
  data.test_size = toy_data.test_size
  base.data = data
  return base


def musdb_paper_flow(config):
  """The 2020 paper's MUSDB18 flow: 8 blocks x 6 flows x 10 layers, width 48, batch 2,
  crops of 16 384 samples (in place)."""
  config.model.n_blocks = 8
  config.model.n_flows = 6
  config.model.n_layers = 10
  config.model.width = 48
  config.model.dilation_cycle = 10
  config.training.batch_size = 2
  config.data.crop_length = 16_384
  return config


def musdb_paper_wavenet(config):
  """The 2020 code's MUSDB18 WaveNet: 3 stacks x 10 layers, 64 channels, batch 2, crops
  of 16 384 samples (theirs were 16 385 because their input and target were shifted
  copies; here every sample of the crop is predicted) (in place)."""
  config.model.n_layers = 30
  config.model.dilation_cycle = 10
  config.model.width = 64
  config.training.batch_size = 2
  config.data.crop_length = 16_384
  return config


def chorales_render_variant(config):
  """The render of the test variant: two chorales of a few seconds (in place)."""
  if config.variant == "test":
    config.render.num_chorales = 2
    config.render.max_seconds = 3.0
  return config
