"""Command-line entry point: a thin absl shim over the library's run functions.

  python -m audiosep_jax.main --config=configs/toy_flow.py:demo --workdir=DIR --mode=train \
      [--config.training.num_steps=500 ...] [--input=FILE.wav]
"""
import importlib.util
import logging as std_logging
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from audiosep_jax import distributed

MODES = ("train", "eval", "finetune", "diagnose", "separate", "report", "all",
         "render_chorales")

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, `path.py:variant` (paper | demo | test).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and outputs.")
_MODE = flags.DEFINE_enum("mode", "train", MODES, "What to run.")
_INPUT = flags.DEFINE_string("input", None, "A WAV file to separate (--mode=separate).")


class _DropLibraryChatter(std_logging.Filter):
  """Keeps orbax's per-save INFO lines out of the progress log (warnings still pass)."""

  def filter(self, record):
    return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def load_config_file(spec):
  """`path.py:variant` -> the ConfigDict its get_config(variant) returns.

  The folder above the config file goes on sys.path, so `from configs import default`
  works from any working directory.
  """
  path, _, variant = spec.partition(":")
  if not os.path.isfile(path):
    raise ValueError(f"--config: no config file at {path!r}.")
  root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
  if root not in sys.path:
    sys.path.insert(0, root)
  module_spec = importlib.util.spec_from_file_location("_audiosep_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(variant or None)


def check_overrides(config, argv):
  """Raises a ValueError naming the first `--config.<field>` that the config lacks."""
  for arg in argv:
    if arg == "--":
      break
    if not arg.startswith(("--config.", "-config.")):
      continue
    field = arg.split("config.", 1)[1].split("=", 1)[0]
    node, walked = config, "config"
    for part in field.split("."):
      if not hasattr(node, "keys") or part not in node:
        known = ", ".join(sorted(node.keys())) if hasattr(node, "keys") else "(not a group)"
        raise ValueError(f"Unknown config field {walked}.{part} (from {arg}); "
                         f"{walked} has: {known}.")
      node, walked = node[part], f"{walked}.{part}"


def config_specs(argv):
  """The values given to --config in argv, in order, spelled `--config=FILE` or
  `--config FILE` (one or two dashes, as absl takes them); none after `--`."""
  specs = []
  args = iter(argv[1:])
  for arg in args:
    if arg == "--":
      break
    if arg in ("--config", "-config"):
      spec = next(args, None)
      if spec is not None:
        specs.append(spec)
    elif arg.startswith(("--config=", "-config=")):
      specs.append(arg.split("=", 1)[1])
  return specs


def parse_flags(argv):
  """absl flag parsing, after checking the config file, variant and overrides by hand
  so that a bad one gets a message that names it."""
  specs = config_specs(argv)
  if specs:
    try:
      check_overrides(load_config_file(specs[-1]), argv)
    except ValueError as e:
      sys.exit(f"Error: {e}")
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.exit(f"Error: {e}\nPass --helpshort to see the flags.")


def run(config, workdir, mode, input_path=None):
  """Runs one mode; `all` is train, finetune, diagnose, separate and report."""
  # Imports are per mode so that, e.g., rendering needs no JAX compile of the priors.
  # pylint: disable=g-import-not-at-top
  if mode == "render_chorales":
    from audiosep_jax.data import chorales
    return chorales.render_dataset(config)
  from audiosep_jax import train
  if mode == "train":
    return train.train_and_evaluate(config, workdir)
  if mode == "eval":
    return train.evaluate_checkpoint(config, workdir)
  if mode == "finetune":
    return train.finetune(config, workdir)
  if mode == "diagnose":
    from audiosep_jax import diagnostics
    return diagnostics.run(config, workdir)
  if mode == "separate":
    from audiosep_jax import separation
    return separation.run(config, workdir, input_path)
  if mode == "report":
    from audiosep_jax import report
    return report.run(config, workdir)
  if mode == "all":
    for step in ("train", "finetune", "diagnose", "separate", "report"):
      logging.info("=== %s: %s", config.model.family, step)
      result = run(config, workdir, step)
    return result
  raise ValueError(f"Unknown --mode={mode!r}; choose one of {', '.join(MODES)}.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  logging.get_absl_handler().addFilter(_DropLibraryChatter())
  config = _CONFIG.value
  if config is None:
    raise app.UsageError("--config is required, e.g. --config=configs/toy_flow.py:demo")
  if _WORKDIR.value is None and _MODE.value != "render_chorales":
    raise app.UsageError("--workdir is required.")
  if _INPUT.value is not None and _MODE.value != "separate":
    raise app.UsageError("--input is only read by --mode=separate.")
  try:
    distributed.initialize()
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  if not distributed.is_primary():
    logging.set_verbosity(logging.WARNING)
  run(config, _WORKDIR.value, _MODE.value, _INPUT.value)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
