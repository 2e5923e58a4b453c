"""FloWaveNet priors on the rendered Bach chorales (soprano, alto, tenor, bass).

  python -m audiosep_jax.main --config=configs/chorales_flow.py:demo --mode=render_chorales \
      --config.data.root=/data/chorales
  python -m audiosep_jax.main --config=configs/chorales_flow.py:demo --workdir=/tmp/chorales \
      --mode=train --config.data.root=/data/chorales

Variants: paper (the MUSDB18 sizes of the 2020 paper: 8 blocks x 6 flows x 10 layers,
width 48, batch 2), demo and test (the toy experiment's sizes; test renders two short
chorales).
"""
from configs import stems_common
from configs import toy_flow


def get_config(arg=None):
  config = stems_common.stems_config(toy_flow.get_config(arg),
                                     stems_common.CHORALE_SOURCES)
  config.render = stems_common.render_config()
  stems_common.chorales_render_variant(config)
  if config.variant == "paper":
    stems_common.musdb_paper_flow(config)
  return config
