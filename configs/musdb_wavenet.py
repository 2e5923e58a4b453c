"""Autoregressive WaveNet priors on MUSDB18-HQ stems (drums, bass, other, vocals).

  python -m audiosep_jax.main --config=configs/musdb_wavenet.py:paper --workdir=/tmp/musdb \
      --mode=train --config.data.root=/data/musdb18hq

Variants: paper (the 2020 code's MUSDB18 WaveNet: 3 x 10 layers, 64 channels, batch 2,
crops of 16 384), demo and test (the toy experiment's sizes).
"""
from configs import stems_common
from configs import toy_wavenet


def get_config(arg=None):
  config = stems_common.stems_config(toy_wavenet.get_config(arg),
                                     stems_common.MUSDB_SOURCES)
  if config.variant == "paper":
    stems_common.musdb_paper_wavenet(config)
  return config
