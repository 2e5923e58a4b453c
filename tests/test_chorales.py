"""The chorales renderer (music21 + FluidSynth) and the stems configs: two short chorales
rendered through `--mode=render_chorales`, their layout and levels, pitch, atomic writes
and resuming, and a `test`-variant flow prior trained on them end to end."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import soundfile as sf
from absl.testing import absltest
from absl.testing import parameterized

from audiosep_jax.data import chorales
from audiosep_jax.data import stems
from configs import chorales_flow
from configs import chorales_wavenet
from configs import musdb_flow
from configs import musdb_wavenet
from configs import toy_flow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = ("soprano", "alto", "tenor", "bass", "mixture")


def synthesis_missing():
  """Why the chorales cannot be rendered here (names the missing library), or None."""
  try:
    chorales.import_synthesis()
  except ImportError as e:
    return str(e)
  return None


MISSING = synthesis_missing()


class ConfigTest(parameterized.TestCase):

  @parameterized.product(module=(chorales_flow, chorales_wavenet, musdb_flow, musdb_wavenet),
                         variant=("paper", "demo", "test"))
  def test_variants_are_stems_configs_without_a_root(self, module, variant):
    config = module.get_config(variant)
    self.assertEqual(config.variant, variant)
    self.assertEqual(config.data.name, "stems")
    self.assertIsNone(config.data.root)
    self.assertLen(config.data.source_names, 4)
    self.assertEqual(config.data.sample_rate, 14_700)
    self.assertGreaterEqual(config.data.test_length, config.data.crop_length // 2)
    with self.assertRaisesRegex(ValueError, r"set --config.data.root=DIR"):
      stems.test_set(config.data)

  def test_musdb_paper_flow_is_the_papers(self):
    config = musdb_flow.get_config("paper")
    model = config.model
    self.assertEqual((model.family, model.n_blocks, model.n_flows, model.n_layers,
                      model.width), ("flow", 8, 6, 10, 48))
    self.assertEqual(config.training.batch_size, 2)
    self.assertEqual(config.data.crop_length, 16_384)
    self.assertEqual(tuple(config.data.source_names), ("drums", "bass", "other", "vocals"))

  def test_musdb_paper_wavenet(self):
    config = musdb_wavenet.get_config("paper")
    self.assertEqual((config.model.family, config.model.n_layers, config.model.width),
                     ("wavenet", 30, 64))
    self.assertEqual((config.training.batch_size, config.data.crop_length), (2, 16_384))

  def test_chorales_render_config(self):
    config = chorales_flow.get_config("paper")
    self.assertEqual(tuple(config.data.source_names), ("soprano", "alto", "tenor", "bass"))
    # GM programs, 0-based: flute, violin, clarinet, bassoon.
    self.assertEqual(tuple(config.render.programs), (73, 40, 71, 70))
    self.assertIsNone(config.render.num_chorales)
    self.assertEqual(chorales_wavenet.get_config("test").render.num_chorales, 2)

  def test_render_with_a_config_that_is_not_chorales(self):
    with self.assertRaisesRegex(ValueError, r"--mode=render_chorales needs a chorales config "
                                            r"\(configs/chorales_\*\.py"):
      chorales.render_dataset(toy_flow.get_config("test"))

  def test_missing_synthesis_package_names_the_extra_and_writes_nothing(self):
    config = chorales_flow.get_config("test")
    config.data.root = os.path.join(tempfile.mkdtemp(), "chorales")
    missing = ImportError("Rendering the chorales needs the `chorales` extra: pip install")
    with mock.patch.object(chorales, "import_synthesis", side_effect=missing):
      with self.assertRaisesRegex(ImportError, "needs the `chorales` extra"):
        chorales.render_dataset(config)
    self.assertFalse(os.path.exists(config.data.root))


def render_cli(root, *overrides):
  """`python -m audiosep_jax.main --mode=render_chorales` on the test variant."""
  command = [sys.executable, "-m", "audiosep_jax.main",
             "--config=configs/chorales_flow.py:test", "--mode=render_chorales"]
  if root is not None:
    command.append(f"--config.data.root={root}")
  return subprocess.run(command + list(overrides), cwd=ROOT, capture_output=True, text=True,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=300, check=False)


def read(path):
  audio, rate = sf.read(path, dtype="float32")
  return audio, rate


def files_under(root):
  return sorted(os.path.relpath(os.path.join(d, f), root)
                for d, _, names in os.walk(root) for f in names)


@unittest.skipIf(MISSING, f"cannot render chorales: {MISSING}")
class RenderTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.mkdtemp()
    cls.root = os.path.join(cls.tmp, "chorales")
    result = render_cli(cls.root)
    if result.returncode:
      raise AssertionError(f"render_chorales failed:\n{result.stderr[-3000:]}")
    cls.config = chorales_flow.get_config("test")
    cls.config.data.root = cls.root
    with open(os.path.join(cls.root, chorales.MANIFEST)) as f:
      cls.manifest = json.load(f)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.tmp)
    super().tearDownClass()

  def copy_root(self):
    root = os.path.join(tempfile.mkdtemp(dir=self.tmp), "chorales")
    shutil.copytree(self.root, root)
    config = chorales_flow.get_config("test")
    config.data.root = root
    return root, config

  def chorale_dir(self, entry, root=None):
    return os.path.join(root or self.root, entry["split"], entry["id"])

  def test_layout_split_and_manifest(self):
    entries = self.manifest["chorales"]
    self.assertTrue(self.manifest["complete"])
    self.assertEqual(sorted(e["split"] for e in entries), ["test", "train"])
    expected = sorted(os.path.join(e["split"], e["id"], f + ".wav")
                      for e in entries for f in FILES)
    self.assertEqual(files_under(self.root), sorted(expected + [chorales.MANIFEST]))
    totals = self.manifest["totals"]
    self.assertEqual(totals["files"], 10)
    # max_seconds of music plus tail_seconds of release, per chorale.
    render = self.config.render
    self.assertAlmostEqual(totals["hours"] * 3600,
                           2 * (render.max_seconds + render.tail_seconds), delta=0.01)

  def test_stems_levels_and_mixture(self):
    lsb = 1.0 / 32768
    for entry in self.manifest["chorales"]:
      audio = [read(os.path.join(self.chorale_dir(entry), f + ".wav")) for f in FILES]
      self.assertEqual({rate for _, rate in audio}, {14_700})
      self.assertLen({a.shape for a, _ in audio}, 1)
      stems_audio = np.stack([a for a, _ in audio[:4]])
      np.testing.assert_allclose(np.max(np.abs(stems_audio), axis=1), 0.9, atol=2 * lsb)
      np.testing.assert_allclose(audio[4][0], stems_audio.mean(axis=0), atol=2 * lsb)
      # Every voice sounds (not one instrument rendered four times, not silence).
      self.assertTrue(np.all(stems.rms(stems_audio) > 0.05))
      self.assertLess(np.max(np.abs(np.corrcoef(stems_audio) - np.eye(4))), 0.5)

  def test_first_note_sounds_at_the_written_pitch(self):
    data, render = self.config.data, self.config.render
    scores = chorales.list_chorales(2, tuple(data.source_names))
    entries = {e["id"]: e for e in self.manifest["chorales"]}
    for chorale in scores:
      entry = entries[chorale.chorale_id]
      rendering = chorales.Rendering(entry["split"], entry["tempo"], entry["transpose"])
      for name, notes in zip(data.source_names, chorale.voices):
        start, end, pitch = chorales.voice_times(notes, rendering, render.max_seconds)[0]
        audio, rate = read(os.path.join(self.chorale_dir(entry), name + ".wav"))
        note = audio[int((start + 0.05) * rate):int(min(end, start + 0.5) * rate)]
        size = 1 << 16
        spectrum = np.abs(np.fft.rfft(note * np.hanning(note.shape[0]), size))
        peak_hz = np.argmax(spectrum) * rate / size
        f0 = 440.0 * 2.0 ** ((pitch - 69) / 12)
        # The strongest partial is a harmonic of the note (clarinet and bassoon: not
        # always the fundamental), within 2%.
        harmonic = peak_hz / f0
        self.assertGreaterEqual(harmonic, 0.98, (chorale.chorale_id, name))
        self.assertLess(abs(harmonic - round(harmonic)) / round(harmonic), 0.02,
                        (chorale.chorale_id, name, peak_hz, f0))

  def test_the_stems_reader_reads_the_render(self):
    for entry in self.manifest["chorales"]:
      track = stems.load_track(self.chorale_dir(entry), self.config.data)
      soprano, _ = read(os.path.join(self.chorale_dir(entry), "soprano.wav"))
      np.testing.assert_array_equal(track[0], soprano)
    data = self.config.data
    self.assertEqual(stems.test_set(data).shape, (data.test_size, 4, data.test_length))

  def test_resume_rerenders_only_what_is_missing_and_identically(self):
    root, config = self.copy_root()
    entries = self.manifest["chorales"]
    os.remove(os.path.join(self.chorale_dir(entries[0], root), "alto.wav"))
    kept = os.path.join(self.chorale_dir(entries[1], root), "bass.wav")
    kept_mtime = os.stat(kept).st_mtime_ns
    chorales.render_dataset(config)
    self.assertEqual(os.stat(kept).st_mtime_ns, kept_mtime)
    self.assertEqual(files_under(root), files_under(self.root))
    for entry in entries:
      for name in FILES:
        a, _ = read(os.path.join(self.chorale_dir(entry), name + ".wav"))
        b, _ = read(os.path.join(self.chorale_dir(entry, root), name + ".wav"))
        np.testing.assert_array_equal(a, b)

  def test_interrupted_render_leaves_no_half_written_file(self):
    root, config = self.copy_root()
    shutil.rmtree(os.path.join(root, "train"))
    shutil.rmtree(os.path.join(root, "test"))
    real_write = sf.write
    calls = []

    def write_half_then_die(path, audio, *args, **kwargs):
      calls.append(path)
      if len(calls) == 3:
        real_write(path, audio[:audio.shape[0] // 2], *args, **kwargs)
        raise KeyboardInterrupt("killed while writing")
      return real_write(path, audio, *args, **kwargs)

    with mock.patch.object(chorales.sf, "write", side_effect=write_half_then_die):
      with self.assertRaises(KeyboardInterrupt):
        chorales.render_dataset(config)
    self.assertTrue(all(".partial" in os.path.basename(p) for p in calls))
    # Nothing but the manifest (marked incomplete) and empty split folders is left.
    self.assertEqual(files_under(root), [chorales.MANIFEST])
    with open(os.path.join(root, chorales.MANIFEST)) as f:
      self.assertFalse(json.load(f)["complete"])
    chorales.render_dataset(config)
    self.assertEqual(files_under(root), files_under(self.root))

  def test_root_with_other_settings_is_an_error(self):
    root, config = self.copy_root()
    config.render.seed = 1
    with self.assertRaisesRegex(ValueError, r"other settings"):
      chorales.render_dataset(config)

  def test_stray_chorale_folder_is_an_error(self):
    root, config = self.copy_root()
    entry = self.manifest["chorales"][0]
    other = "train" if entry["split"] == "test" else "test"
    shutil.copytree(self.chorale_dir(entry, root), os.path.join(root, other, entry["id"]))
    with self.assertRaisesRegex(ValueError, rf"1 chorale folders .*{other}/{entry['id']}"):
      chorales.render_dataset(config)

  def test_corpus_chorales_are_listed_once(self):
    names = chorales.corpus_chorale_names()
    self.assertGreater(len(names), 300)
    self.assertLen(set(n.split("/")[-1] for n in names), len(names))

  def test_cli_without_root_names_the_flag(self):
    result = render_cli(None)
    self.assertNotEqual(result.returncode, 0)
    self.assertIn("--config.data.root=DIR", result.stderr)


@unittest.skipIf(MISSING, f"cannot render chorales: {MISSING}")
class EndToEndTest(absltest.TestCase):

  def test_render_then_train_a_test_flow_prior(self):
    # pylint: disable=g-import-not-at-top
    from audiosep_jax import priors
    from audiosep_jax import train
    from audiosep_jax.data import pipeline
    tmp = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, tmp)
    config = chorales_flow.get_config("test")
    config.data.root = os.path.join(tmp, "chorales")
    manifest = chorales.render_dataset(config)
    self.assertEqual(manifest["totals"]["chorales"], 2)
    workdir = os.path.join(tmp, "work")
    state = train.train_and_evaluate(config, workdir)
    self.assertEqual(int(state.step), config.training.num_steps)
    np.testing.assert_array_equal(np.asarray(state.skipped), 0)
    self.assertTrue(os.path.isdir(os.path.join(
        train.checkpoint_dir(workdir, "flow", 0.0), str(config.training.num_steps))))
    # Training raised the held-out likelihood above that of the freshly initialised priors.
    prior = priors.build(config.model)
    test_data = pipeline.test_set(config)
    self.assertEqual(test_data.shape, (config.data.test_size, 4, config.data.test_length))
    mean_log_prob = jax.jit(lambda params, x: jnp.mean(
        priors.stacked_log_prob(prior, params, x), axis=(0, 2)))
    fresh = priors.stack_init(prior, jax.random.key(config.seed), test_data[:4])
    before = np.asarray(mean_log_prob(fresh, test_data))
    after = np.asarray(mean_log_prob(state.params, test_data))
    self.assertTrue(np.all(np.isfinite(after)))
    self.assertGreater(np.mean(after), np.mean(before))


if __name__ == "__main__":
  absltest.main()
