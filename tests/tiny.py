"""The smallest flow config the tests of what surrounds a prior need (the training loop,
meshes, processes, separation drivers, diagnostics): configs/toy_flow.py:test with one
block of one flow of one layer. Its train step traces and compiles in 3.0 s against 8.4 s
(the suite's settings, 2 cores); the tests of the flow itself and of learning keep the
test config."""
from configs import toy_flow

# Flattened, as `ConfigDict.update_from_flattened_dict` takes them and as --config.<field>
# overrides for the tests that start `audiosep_jax.main`.
FLOW_OVERRIDES = {"model.n_blocks": 1, "model.n_flows": 1, "model.n_layers": 1}


def flow_config():
  config = toy_flow.get_config("test")
  config.update_from_flattened_dict(FLOW_OVERRIDES)
  return config
