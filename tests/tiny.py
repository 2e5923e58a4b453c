"""The smallest flow config the tests of what surrounds a prior need (the training loop,
meshes, processes, separation drivers, diagnostics): configs/toy_flow.py:test with one
block of one flow of one layer. Its train step traces and compiles in 3.0 s against 8.4 s
(the suite's settings, 2 cores); the tests of the flow itself and of learning keep the
test config."""
from configs import toy_flow

# As --config.<field>=<value> overrides too, for the tests that start `audiosep_jax.main`.
FLOW_OVERRIDES = {"model.n_blocks": 1, "model.n_flows": 1, "model.n_layers": 1}


def apply_overrides(config, overrides):
  """config with each 'group.name': value of overrides set; returns config."""
  for field, value in overrides.items():
    group, name = field.split(".")
    config[group][name] = value
  return config


def flow_config():
  return apply_overrides(toy_flow.get_config("test"), FLOW_OVERRIDES)
