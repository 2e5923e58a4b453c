"""Autoregressive WaveNet priors on the rendered Bach chorales (soprano, alto, tenor, bass).

  python -m audiosep_jax.main --config=configs/chorales_wavenet.py:demo --workdir=/tmp/chorales \
      --mode=train --config.data.root=/data/chorales

Render the data first (see configs/chorales_flow.py; both files render the same set).
Variants: paper (the 2020 code's MUSDB18 WaveNet: 3 x 10 layers, 64 channels, batch 2,
crops of 16 384), demo and test (the toy experiment's sizes).
"""
from configs import stems_common
from configs import toy_wavenet


def get_config(arg=None):
  config = stems_common.stems_config(toy_wavenet.get_config(arg),
                                     stems_common.CHORALE_SOURCES)
  config.render = stems_common.render_config()
  stems_common.chorales_render_variant(config)
  if config.variant == "paper":
    stems_common.musdb_paper_wavenet(config)
  return config
