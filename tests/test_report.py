"""The report of a tiny trained, fine-tuned and diagnosed workdir (the pipeline end to end):
every figure written and non-empty, every link resolving, every number in index.md taken
from the JSON beside it."""
import copy
import json
import os
import re
import struct
import tempfile

import numpy as np
import soundfile
from absl.testing import absltest

from audiosep_jax import diagnostics
from audiosep_jax import main
from audiosep_jax import report
from tests import test_diagnostics

LINK = re.compile(r"\]\(([^)]+)\)")


def png_size(path):
  """(width, height) from a PNG header; raises if the file is not a PNG."""
  with open(path, "rb") as f:
    head = f.read(24)
  if head[:8] != b"\x89PNG\r\n\x1a\n":
    raise AssertionError(f"{path} is not a PNG.")
  return struct.unpack(">II", head[16:24])


def json_numbers(obj):
  """Every number in a JSON tree, formatted as the report formats numbers."""
  if isinstance(obj, dict):
    return set().union(*[json_numbers(v) for v in obj.values()]) if obj else set()
  if isinstance(obj, list):
    return set().union(*[json_numbers(v) for v in obj]) if obj else set()
  if isinstance(obj, (int, float)) and not isinstance(obj, bool):
    return {report.fmt(obj)}
  return set()


def table_numbers(markdown):
  """Every numeric table cell of a markdown text (cells 'a / b' give a and b)."""
  numbers = []
  for line in markdown.splitlines():
    if not line.startswith("|") or line.startswith("|---"):
      continue
    for cell in line.strip("|").split("|"):
      for part in cell.split(" / "):
        try:
          float(part.strip())
        except ValueError:
          continue
        numbers.append(part.strip())
  return numbers


def write_workdir(workdir):
  """A workdir as the pipeline leaves it: the flow family briefly trained and fine-tuned
  at one level, then diagnosed (all through main.run, as --mode does); a second family
  'wavenet' with the same numbers less the flow-only fields; one family's separation (the
  other's metrics.json unreadable). Returns the JSON objects the report may quote."""
  config = test_diagnostics.tiny_config()
  config.training.num_steps = 2
  config.training.log_every = 1
  config.training.eval_every = 2
  config.training.checkpoint_every = 2
  config.training.num_audio_samples = 0
  config.finetune.num_steps = 2
  for mode in ("train", "finetune", "diagnose"):
    main.run(config, workdir, mode)
  out = os.path.join(workdir, "diagnostics")
  with open(os.path.join(out, "flow.json")) as f:
    results = json.load(f)
  other = copy.deepcopy(results)
  other["family"] = "wavenet"
  del other["cross_latent_log_prob_paper_clipped"], other["paper_clip"]
  other["mean_auroc"] = [0.6, 0.55]
  diagnostics.write_json(os.path.join(out, "wavenet.json"), other)

  names = results["source_names"]
  sep = os.path.join(workdir, "separations", "flow")
  os.makedirs(os.path.join(sep, "mix_0"))
  rate = config.data.sample_rate
  wave = np.sin(np.linspace(0, 20, 256)).astype(np.float32)
  soundfile.write(os.path.join(sep, "mix_0", "mix.wav"), wave, rate)
  for k, name in enumerate(names):
    soundfile.write(os.path.join(sep, "mix_0", f"true_{name}.wav"), wave * (k + 1) / 4, rate)
    soundfile.write(os.path.join(sep, "mix_0", f"estimate_{name}.wav"), wave / 4, rate)
  metrics = {"source_names": names, "num_mixes": 1,
             "si_sdr": {n: 1.5 + k for k, n in enumerate(names)},
             "si_sdri": {n: 7.25 + k for k, n in enumerate(names)},
             "mix_si_sdr": {n: -5.75 for n in names}, "per_mix": [{"si_sdr": {}}]}
  with open(os.path.join(sep, "metrics.json"), "w") as f:
    json.dump(metrics, f)
  os.makedirs(os.path.join(workdir, "separations", "wavenet"))
  with open(os.path.join(workdir, "separations", "wavenet", "metrics.json"), "w") as f:
    f.write("{not json")
  return [results, other, metrics]


class ReportTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.TemporaryDirectory()
    cls.workdir = cls.tmp.name
    cls.sources = write_workdir(cls.workdir)
    cls.index = main.run(test_diagnostics.tiny_config(), cls.workdir, "report")
    with open(cls.index) as f:
      cls.markdown = f.read()

  @classmethod
  def tearDownClass(cls):
    cls.tmp.cleanup()
    super().tearDownClass()

  def test_every_figure_is_written_and_non_empty(self):
    out = os.path.dirname(self.index)
    expected = ["dilemma.png", "separation_flow.png"] + [
        f"{kind}_{family}.png" for family in ("flow", "wavenet")
        for kind in ("cross", "noise", "probes", "samples")] + ["training_flow.png"]
    for name in expected:
      width, height = png_size(os.path.join(out, name))
      self.assertGreater(width * height, 100 * 100, name)
      self.assertIn(f"({name})", self.markdown)
    self.assertFalse(os.path.exists(os.path.join(out, "training_wavenet.png")))
    self.assertEqual([f for f in os.listdir(out) if f.endswith(".tmp")], [])

  def test_every_link_resolves(self):
    links = LINK.findall(self.markdown)
    self.assertGreater(len(links), 20)
    out = os.path.dirname(self.index)
    for link in links:
      self.assertTrue(os.path.isfile(os.path.join(out, link)), link)
    self.assertIn("../diagnostics/flow.json", links)
    self.assertIn("../separations/flow/metrics.json", links)
    self.assertIn("../separations/flow/mix_0/estimate_saw.wav", links)
    self.assertIn("../tb/flow/sigma_0.1/scalars.jsonl", links)  # written by the train loop

  def test_every_table_number_comes_from_the_json(self):
    allowed = set().union(*[json_numbers(s) for s in self.sources])
    numbers = table_numbers(self.markdown)
    self.assertGreater(len(numbers), 200)
    self.assertEqual([n for n in numbers if n not in allowed], [])
    # Spot checks: the summary row, a cross-likelihood cell and a separation cell.
    flow = self.sources[0]
    self.assertIn(f"| flow | 0 | {report.fmt(flow['mean_auroc'][0])} |", self.markdown)
    self.assertIn(report.fmt(flow["cross_log_prob"][1][2][3]), self.markdown)
    self.assertIn("| saw | 3.5 | 9.25 | -5.75 |", self.markdown)
    self.assertIn("| wavenet | 0.1 | 0.55 |", self.markdown)

  def test_unreadable_separation_is_reported_not_fatal(self):
    self.assertIn("## Separation: wavenet", self.markdown)
    self.assertIn("could not be read", self.markdown)

  def test_bad_or_missing_diagnostics_are_clear_errors(self):
    with tempfile.TemporaryDirectory() as workdir:
      with self.assertRaisesRegex(FileNotFoundError, "--mode=diagnose"):
        report.run(None, workdir)
      os.makedirs(os.path.join(workdir, "diagnostics"))
      path = os.path.join(workdir, "diagnostics", "flow.json")
      with open(path, "w") as f:
        json.dump({"family": "flow"}, f)
      with self.assertRaisesRegex(ValueError, "flow.json lacks the fields"):
        report.run(None, workdir)


class LoadScalarsTest(absltest.TestCase):

  def test_resumed_run_keeps_the_last_row_per_step_in_step_order(self):
    # Logged to step 15 (a test row at step 10), resumed from the step-10 checkpoint:
    # steps 10 (train and test) and 15 logged again, with other values.
    rows = [{"step": 5, "loss": 5.0}, {"step": 10, "loss": 4.0},
            {"step": 10, "test_nats_per_sample/sin": 1.0}, {"step": 15, "loss": 3.0},
            {"step": 10, "loss": 4.5}, {"step": 10, "test_nats_per_sample/sin": 1.5},
            {"step": 15, "loss": 3.5}, {"step": 20, "loss": 2.5}]
    with tempfile.TemporaryDirectory() as workdir:
      directory = os.path.join(workdir, "tb", "flow", "sigma_0")
      os.makedirs(directory)
      with open(os.path.join(directory, "scalars.jsonl"), "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
      loaded = report.load_scalars(workdir, "flow", 0.0)
    self.assertEqual(loaded, [{"step": 5, "loss": 5.0},
                              {"step": 10, "loss": 4.5, "test_nats_per_sample/sin": 1.5},
                              {"step": 15, "loss": 3.5}, {"step": 20, "loss": 2.5}])


if __name__ == "__main__":
  absltest.main()
