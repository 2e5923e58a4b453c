"""The report of a tiny trained, fine-tuned and diagnosed workdir (the pipeline end to end):
every figure written and non-empty, every link resolving, every number in index.md taken
from the JSON beside it, in its place."""
import copy
import json
import os
import re
import struct
import tempfile

import numpy as np
import soundfile
from absl.testing import absltest

from audiosep_jax import main
from audiosep_jax import report
from audiosep_jax import separation
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


def section(markdown, heading):
  """The text of the section '## heading', up to the next '## '."""
  start = markdown.index(f"\n## {heading}\n")
  end = markdown.find("\n## ", start + 1)
  return markdown[start:end if end >= 0 else None]


def table_after(text, caption):
  """(header, rows) of the first markdown table after the first line starting with
  caption; cells stripped."""
  lines = text.splitlines()
  i = next(i for i, line in enumerate(lines) if line.startswith(caption))
  while not lines[i].startswith("|"):
    i += 1
  cells = []
  while i < len(lines) and lines[i].startswith("|"):
    if not lines[i].startswith("|---"):
      cells.append([c.strip() for c in lines[i].strip().strip("|").split("|")])
    i += 1
  return cells[0], cells[1:]


def fmt_rows(rows):
  return [[report.fmt(v) for v in row] for row in rows]


def write_workdir(workdir):
  """A workdir as the pipeline leaves it: the flow family briefly trained and fine-tuned
  at one level, then diagnosed (all through main.run, as --mode does); a second family
  'wavenet' with the same numbers less the flow-only fields, another smoothness sigma and
  an infinite log p drop at level 0; the flow's separation (one estimate diverged), the
  wavenet's metrics.json unreadable, and a family 'solo' with a separation only. Returns
  the JSON objects the report may quote."""
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
  other["log_p_drop"]["sigma"] = 0.2
  other["log_p_drop"]["mean"][0] = float("inf")
  separation.write_json(os.path.join(out, "wavenet.json"), other)

  names = results["source_names"]
  sep = os.path.join(workdir, "separations", "flow")
  os.makedirs(os.path.join(sep, "mix_0"))
  rate = config.data.sample_rate
  wave = np.sin(np.linspace(0, 20, 256)).astype(np.float32)
  soundfile.write(os.path.join(sep, "mix_0", "mix.wav"), wave, rate)
  for k, name in enumerate(names):
    soundfile.write(os.path.join(sep, "mix_0", f"true_{name}.wav"), wave * (k + 1) / 4, rate)
    soundfile.write(os.path.join(sep, "mix_0", f"estimate_{name}.wav"), wave / 4, rate)
  metrics = {"source_names": names, "num_mixes": 1, "non_finite_estimates": 1,
             "si_sdr": {n: 1.5 + k for k, n in enumerate(names)},
             "si_sdri": {n: 7.25 + k for k, n in enumerate(names)},
             "mix_si_sdr": {n: -5.75 for n in names}, "per_mix": [{"si_sdr": {}}]}
  metrics["si_sdr"][names[0]] = float("nan")  # written as null
  separation.write_json(os.path.join(sep, "metrics.json"), metrics)
  os.makedirs(os.path.join(workdir, "separations", "wavenet"))
  with open(os.path.join(workdir, "separations", "wavenet", "metrics.json"), "w") as f:
    f.write("{not json")
  solo = os.path.join(workdir, "separations", "solo")
  os.makedirs(os.path.join(solo, "mix_0"))
  for stem in ("mix", "true_hum", "estimate_hum"):
    soundfile.write(os.path.join(solo, "mix_0", f"{stem}.wav"), wave, rate)
  solo_metrics = {"num_mixes": 1, "si_sdr": {"hum": 2.5}, "sdr": {"hum": 3.25}}
  separation.write_json(os.path.join(solo, "metrics.json"), solo_metrics)
  return [results, other, metrics, solo_metrics]


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
    expected = ["dilemma.png", "separation_flow.png", "separation_solo.png"] + [
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

  def test_diagnostics_tables_hold_the_json_in_place(self):
    # Whole tables against the JSON, row by row: a transposed or mis-indexed table fails.
    flow = self.sources[0]
    names, levels = flow["source_names"], flow["levels"]
    text = section(self.markdown, "flow")
    for l, sigma in enumerate(levels):
      for caption, key in (("clean test data", "cross_log_prob"),
                           ("test data plus the level's noise", "cross_log_prob_level_noise"),
                           ("latent term only", "cross_latent_log_prob_paper_clipped")):
        header, rows = table_after(text, f"{report.level_label(sigma)}, {caption}")
        self.assertEqual(header[1:], names)
        self.assertEqual(rows, [[n] + r for n, r in zip(names, fmt_rows(flow[key][l]))])
      const, noise = flow["constant_probe"], flow["noise_probe"]
      _, rows = table_after(text, f"{report.level_label(sigma)}, constant c:")
      self.assertEqual(rows, fmt_rows(np.c_[const["values"], np.transpose(
          np.array(const["log_prob"][l], dtype=float))]))
      _, rows = table_after(text, f"{report.level_label(sigma)}, noise std:")
      self.assertEqual(rows, fmt_rows(np.c_[noise["stds"], np.transpose(
          np.array(noise["log_prob"][l], dtype=float))]))
    _, rows = table_after(text, "Clean test data:")
    self.assertEqual(rows, fmt_rows(np.c_[levels, flow["auroc"], flow["mean_auroc"]]))
    sens = flow["noise_sensitivity"]
    for k, name in enumerate(names):
      header, rows = table_after(text, f"Prior {name}:")
      self.assertEqual(header[1:], fmt_rows([levels])[0])
      self.assertEqual(rows, fmt_rows(np.c_[sens["test_sigmas"], np.transpose(
          np.array(sens["table"], dtype=float)[:, :, k])]))
    _, rows = table_after(text, "Mean squared score per sample")
    smooth = flow["score_norm"], flow["log_p_drop"]
    self.assertEqual(rows, fmt_rows(np.c_[levels, smooth[0]["input_sigmas"],
                                          smooth[0]["per_source"], smooth[1]["per_source"]]))

  def test_summary_uses_each_familys_smoothness_sigma_and_names_left_out_levels(self):
    header, rows = table_after(section(self.markdown, "Summary: discrimination against "
                                                      "smoothness"), "x: smoothness")
    self.assertEqual(header[-2:], ["drop sigma_test", "log p drop"])
    expected = []
    for res in self.sources[:2]:
      for l, sigma in enumerate(res["levels"]):
        expected.append([res["family"]] + fmt_rows([[
            sigma, res["mean_auroc"][l], res["mean_auroc_level_noise"][l],
            res["score_norm"]["input_sigmas"][l], res["score_norm"]["mean"][l],
            res["log_p_drop"]["sigma"], res["log_p_drop"]["mean"][l]]])[0])
    self.assertEqual(rows, expected)
    self.assertEqual(rows[2][-2:], ["0.2", "n/a"])  # wavenet, level 0
    self.assertEqual(report.left_out({r["family"]: r for r in self.sources[:2]}),
                     [("right", "wavenet", 0.0)])
    self.assertIn("Not placed in the right panel", self.markdown)
    self.assertIn("right edge): wavenet noiseless.", self.markdown)
    flow_sigma = report.fmt(self.sources[0]["log_p_drop"]["sigma"])
    both = report.drop_label({r["family"]: r for r in self.sources[:2]})
    self.assertIn(f"sigma_test {flow_sigma} (flow), 0.2 (wavenet)", both)
    self.assertIn(f"sigma_test={flow_sigma} ", report.drop_label({"flow": self.sources[0]}))

  def test_separation_tables_show_null_metrics_and_diverged_estimates(self):
    names = self.sources[0]["source_names"]
    text = section(self.markdown, "Separation: flow")
    header, rows = table_after(text, "Metrics:")
    self.assertEqual(header, ["source", "SI-SDR", "SI-SDRi", "mix SI-SDR (baseline)"])
    self.assertEqual(rows, [[n, "n/a" if k == 0 else report.fmt(1.5 + k),
                             report.fmt(7.25 + k), "-5.75"] for k, n in enumerate(names)])
    self.assertIn("1 estimated source(s) hold NaN or inf", text)
    self.assertNotIn("NaN or inf", section(self.markdown, "Separation: solo"))

  def test_a_family_with_a_separation_only_gets_its_section(self):
    text = section(self.markdown, "Separation: solo")
    self.assertEqual(table_after(text, "Metrics:"),
                     (["source", "SI-SDR", "SDR"], [["hum", "2.5", "3.25"]]))
    self.assertIn("(separation_solo.png)", text)
    self.assertIn("No diagnostics for solo (run --mode=diagnose)", self.markdown)
    self.assertNotIn("## solo", self.markdown)

  def test_unreadable_separation_is_reported_not_fatal(self):
    self.assertIn("## Separation: wavenet", self.markdown)
    self.assertIn("could not be read", self.markdown)

  def test_bad_or_missing_diagnostics_are_clear_errors(self):
    with tempfile.TemporaryDirectory() as workdir:
      with self.assertRaisesRegex(FileNotFoundError, "--mode=diagnose or --mode=separate"):
        report.run(None, workdir)
      os.makedirs(os.path.join(workdir, "diagnostics"))
      path = os.path.join(workdir, "diagnostics", "flow.json")
      with open(path, "w") as f:
        json.dump({"family": "flow"}, f)
      with self.assertRaisesRegex(ValueError, "flow.json lacks the fields"):
        report.run(None, workdir)


  def test_separations_without_diagnostics_make_a_report(self):
    with tempfile.TemporaryDirectory() as workdir:
      directory = os.path.join(workdir, "separations", "flow")
      separation.write_json(os.path.join(directory, "metrics.json"),
                            {"source_names": ["sin"], "si_sdr": {"sin": 4.5}})
      with open(report.run(None, workdir)) as f:
        markdown = f.read()
      self.assertIn("| sin | 4.5 |", section(markdown, "Separation: flow"))
      self.assertIn("No diagnostics for flow", markdown)
      self.assertFalse(os.path.exists(os.path.join(workdir, "report", "dilemma.png")))


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
