"""FloWaveNet priors on MUSDB18-HQ stems (drums, bass, other, vocals).

  python -m audiosep_jax.main --config=configs/musdb_flow.py:paper --workdir=/tmp/musdb \
      --mode=train --config.data.root=/data/musdb18hq

The root is laid out as MUSDB18-HQ ships: <root>/{train,test}/<track>/<stem>.wav.
Variants: paper (8 blocks x 6 flows x 10 layers, width 48, batch 2, crops of 16 384),
demo and test (the toy experiment's sizes).
"""
from configs import stems_common
from configs import toy_flow


def get_config(arg=None):
  config = stems_common.stems_config(toy_flow.get_config(arg), stems_common.MUSDB_SOURCES)
  if config.variant == "paper":
    stems_common.musdb_paper_flow(config)
  return config
