"""The stems reader: layout, resampling, crops, resumable batches, the test crop list,
and every kind of bad input (each named by track and stem, or handled as documented)."""
import os
import shutil
import tempfile
import threading

import numpy as np
import soundfile as sf
from absl import logging
from absl.testing import absltest

from audiosep_jax.data import stems
from configs import stems_common

RATE = 14_700
NAMES = ("drums", "bass", "other", "vocals")


def write(path, audio, rate=RATE, subtype="FLOAT"):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  sf.write(path, audio, rate, subtype=subtype)


def write_track(root, split, track, audio, rate=RATE, names=NAMES):
  """audio [K, T] -> <root>/<split>/<track>/<name>.wav (float WAV: exact on reading)."""
  for name, stem in zip(names, audio):
    write(os.path.join(root, split, track, name + ".wav"), stem, rate)


def noise_track(seed, length, num=len(NAMES)):
  """[K, T] float32 noise: every sample value is unique, so a crop locates itself."""
  return np.random.default_rng(seed).uniform(-0.9, 0.9, (num, length)).astype(np.float32)


class StemsTestCase(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.root = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self.root)
    self.data = stems_common.stems_data_config(NAMES)
    self.data.root = self.root
    self.data.crop_length = 64
    self.data.test_length = 100
    self.data.test_size = 4
    self.data.prefetch = 2

  def track_dir(self, track, split="train"):
    return os.path.join(self.root, split, track)


class LayoutTest(StemsTestCase):

  def test_load_track_is_stems_in_source_order(self):
    audio = noise_track(0, 500)
    write_track(self.root, "train", "a", audio)
    write(os.path.join(self.track_dir("a"), "mixture.wav"), audio.mean(0))
    loaded = stems.load_track(self.track_dir("a"), self.data)
    self.assertEqual(loaded.dtype, np.float32)
    np.testing.assert_array_equal(loaded, audio)
    self.data.source_names = ("vocals", "drums")
    np.testing.assert_array_equal(stems.load_track(self.track_dir("a"), self.data),
                                  audio[[3, 0]])

  def test_tracks_sorted_and_hidden_folders_ignored(self):
    for name in ("b", "a", ".c.partial"):
      write_track(self.root, "train", name, noise_track(1, 200))
    names = [os.path.basename(d) for d in stems.track_dirs(self.data, "train")]
    self.assertEqual(names, ["a", "b"])

  def test_stereo_is_averaged_to_mono(self):
    left, right = noise_track(2, 300, num=2)
    write_track(self.root, "train", "a", noise_track(3, 300))
    write(os.path.join(self.track_dir("a"), "bass.wav"), np.stack([left, right], axis=1))
    loaded = stems.load_track(self.track_dir("a"), self.data)
    np.testing.assert_allclose(loaded[1], (left + right) / 2, atol=1e-7)

  def test_other_sample_rate_is_resampled_to_the_config_rate(self):
    source_rate, seconds, hz = 44_100, 1.0, 440.0
    t = np.arange(int(source_rate * seconds)) / source_rate
    tone = (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)
    write_track(self.root, "train", "a", np.stack([tone] * len(NAMES)), rate=source_rate)
    loaded = stems.load_track(self.track_dir("a"), self.data)
    self.assertEqual(loaded.shape, (len(NAMES), int(RATE * seconds)))
    spectrum = np.abs(np.fft.rfft(loaded[0] * np.hanning(loaded.shape[1])))
    self.assertAlmostEqual(np.argmax(spectrum) * RATE / loaded.shape[1], hz, delta=1.5)
    # The resampled tone keeps its level (not a resampling of the wrong length).
    self.assertAlmostEqual(np.max(np.abs(loaded[0, 1000:-1000])), 0.5, delta=0.01)

  def test_stems_of_different_native_rates_are_aligned(self):
    audio = noise_track(4, RATE)
    write_track(self.root, "train", "a", audio)
    t = np.arange(44_100) / 44_100
    write(os.path.join(self.track_dir("a"), "other.wav"),
          (0.3 * np.sin(2 * np.pi * 100 * t)).astype(np.float32), 44_100)
    self.assertEqual(stems.load_track(self.track_dir("a"), self.data).shape, (4, RATE))

  def test_silent_stem_is_legal(self):
    audio = noise_track(5, 400)
    audio[3] = 0.0
    write_track(self.root, "train", "a", audio)
    np.testing.assert_array_equal(stems.load_track(self.track_dir("a"), self.data)[3], 0.0)

  def test_cache_dir_gives_the_same_audio_and_follows_file_changes(self):
    self.data.cache_dir = os.path.join(self.root, "cache")
    audio = noise_track(6, 300)
    write_track(self.root, "train", "a", audio)
    first = stems.load_cached_track(self.track_dir("a"), self.data)
    self.assertIsInstance(first, np.memmap)
    np.testing.assert_array_equal(first, audio)
    self.assertLen(os.listdir(self.data.cache_dir), 1)
    again = stems.load_cached_track(self.track_dir("a"), self.data)
    np.testing.assert_array_equal(again, audio)
    self.assertLen(os.listdir(self.data.cache_dir), 1)
    changed = noise_track(7, 301)
    write_track(self.root, "train", "a", changed)
    np.testing.assert_array_equal(stems.load_cached_track(self.track_dir("a"), self.data),
                                  changed)


class BadInputTest(StemsTestCase):
  """Each error names the track and the stem (or says how to set the root)."""

  def assert_error_names(self, error_type, *words):
    with self.assertRaises(error_type) as caught:
      stems.load_track(self.track_dir("song"), self.data)
    for word in words:
      self.assertIn(word, str(caught.exception))

  def test_missing_stem(self):
    write_track(self.root, "train", "song", noise_track(0, 200)[:3], names=NAMES[:3])
    self.assert_error_names(FileNotFoundError, "'song'", "'vocals'", "missing")

  def test_stems_of_different_lengths(self):
    write_track(self.root, "train", "song", noise_track(0, 200))
    write(os.path.join(self.track_dir("song"), "other.wav"), noise_track(1, 150, num=1)[0])
    self.assert_error_names(ValueError, "'song'", "'other'", "different lengths",
                            "150 samples")

  def test_file_that_is_not_audio(self):
    write_track(self.root, "train", "song", noise_track(0, 200))
    with open(os.path.join(self.track_dir("song"), "bass.wav"), "w") as f:
      f.write("these are not the samples you are looking for\n")
    self.assert_error_names(ValueError, "'song'", "'bass'", "not a readable audio file")

  def test_nan_samples(self):
    audio = noise_track(0, 200)
    audio[2, 17] = np.nan
    write_track(self.root, "train", "song", audio)
    self.assert_error_names(ValueError, "'song'", "'other'", "NaN or Inf")

  def test_inf_samples(self):
    audio = noise_track(0, 200)
    audio[0, 3] = -np.inf
    write_track(self.root, "train", "song", audio)
    self.assert_error_names(ValueError, "'song'", "'drums'", "NaN or Inf")

  def test_root_not_set(self):
    for root in (None, ""):
      self.data.root = root
      with self.assertRaisesRegex(ValueError, r"set --config.data.root=DIR"):
        next(stems.train_batches(self.data, 2, 0, 0))
      with self.assertRaisesRegex(ValueError, r"set --config.data.root=DIR"):
        stems.test_set(self.data)

  def test_root_that_does_not_exist(self):
    self.data.root = os.path.join(self.root, "nowhere")
    with self.assertRaisesRegex(FileNotFoundError, r"nowhere.*--config.data.root=DIR"):
      stems.test_set(self.data)

  def test_empty_root(self):
    with self.assertRaisesRegex(FileNotFoundError, r"No split folder .*train"):
      next(stems.train_batches(self.data, 2, 0, 0))
    os.makedirs(os.path.join(self.root, "test"))
    with self.assertRaisesRegex(FileNotFoundError, r"No track folders in .*test"):
      stems.test_set(self.data)

  def test_track_shorter_than_the_crop_is_skipped_with_a_warning(self):
    write_track(self.root, "train", "long", noise_track(0, 200))
    write_track(self.root, "train", "short", noise_track(1, self.data.crop_length - 1))
    with self.assertLogs(logging.get_absl_logger(), "WARNING") as logs:
      tracks = stems.load_split(self.data, "train", self.data.crop_length)
    self.assertEqual([t.name for t in tracks], ["long"])
    self.assertTrue(any("'short'" in line and "shorter" in line for line in logs.output))
    batches = stems.train_batches(self.data, 8, 0, 0)
    batch = next(batches)
    batches.close()
    self.assertTrue(np.all(np.isin(batch, noise_track(0, 200))))

  def test_every_track_shorter_than_the_crop_is_an_error(self):
    write_track(self.root, "train", "short", noise_track(1, 10))
    with self.assertRaisesRegex(ValueError, r"No track of split 'train'.*64 samples"):
      next(stems.train_batches(self.data, 2, 0, 0))

  def test_bad_numbers_in_the_config(self):
    write_track(self.root, "train", "a", noise_track(0, 200))
    with self.assertRaisesRegex(ValueError, r"batch size must be positive, got 0"):
      next(stems.train_batches(self.data, 0, 0, 0))
    with self.assertRaisesRegex(ValueError, r"seed must be >= 0, got -1"):
      next(stems.train_batches(self.data, 2, -1, 0))
    self.data.crop_length = 0
    with self.assertRaisesRegex(ValueError, r"config.data.crop_length"):
      next(stems.train_batches(self.data, 2, 0, 0))


def locate(crop, tracks, source):
  """(track index, start) of a crop of one source, or None."""
  for index, audio in enumerate(tracks):
    for start in np.flatnonzero(audio[source] == crop[0]):
      if np.array_equal(audio[source, start:start + crop.shape[0]], crop):
        return index, int(start)
  return None


class TrainBatchesTest(StemsTestCase):

  def setUp(self):
    super().setUp()
    self.tracks = [noise_track(10 + i, length) for i, length in enumerate((300, 150, 1000))]
    for i, audio in enumerate(self.tracks):
      write_track(self.root, "train", f"track{i}", audio)

  def take(self, start_step, count, batch_size=3, seed=7):
    batches = stems.train_batches(self.data, batch_size, seed, start_step)
    out = [next(batches) for _ in range(count)]
    batches.close()
    return out

  def test_batches_are_real_crops_of_each_source(self):
    for batch in self.take(0, 3):
      self.assertEqual(batch.shape, (3, len(NAMES), self.data.crop_length))
      self.assertEqual(batch.dtype, np.float32)
      for example in batch:
        for k, crop in enumerate(example):
          self.assertIsNotNone(locate(crop, self.tracks, k))

  def test_crops_cover_tracks_in_proportion_to_their_positions(self):
    self.data.prefetch = 0
    counts = np.zeros(3)
    for batch in self.take(0, 40, batch_size=8):
      for example in batch:
        counts[locate(example[0], self.tracks, 0)[0]] += 1
    positions = np.array([300, 150, 1000]) - self.data.crop_length + 1
    expected = positions / positions.sum() * counts.sum()
    # Chi-square with 2 degrees of freedom, far below the 0.1% tail (13.8).
    self.assertLess(np.sum((counts - expected) ** 2 / expected), 13.8)

  def test_resuming_gives_the_batches_of_an_uninterrupted_run(self):
    straight = self.take(0, 6)
    resumed = self.take(4, 2)
    for a, b in zip(straight[4:], resumed):
      np.testing.assert_array_equal(a, b)
    self.assertFalse(np.array_equal(straight[0], straight[1]))
    other_seed = self.take(0, 1, seed=8)
    self.assertFalse(np.array_equal(straight[0], other_seed[0]))

  def test_prefetch_does_not_change_batches(self):
    with_thread = self.take(2, 3)
    self.data.prefetch = 0
    without = self.take(2, 3)
    for a, b in zip(with_thread, without):
      np.testing.assert_array_equal(a, b)

  def test_closing_stops_the_prefetch_thread(self):
    before = {t for t in threading.enumerate() if t.name == "stems-prefetch"}
    batches = stems.train_batches(self.data, 2, 0, 0)
    next(batches)
    running = {t for t in threading.enumerate() if t.name == "stems-prefetch"} - before
    self.assertLen(running, 1)
    thread = running.pop()
    self.assertTrue(thread.daemon)
    batches.close()
    self.assertFalse(thread.is_alive())

  def test_prefetch_thread_error_is_raised_to_the_consumer(self):
    def make_batch(step):
      if step == 2:
        raise OSError("disk gone")
      return np.full((1,), step)

    batches = stems._prefetch(make_batch, 0, 2)  # pylint: disable=protected-access
    self.assertEqual([int(next(batches)[0]) for _ in range(2)], [0, 1])
    with self.assertRaisesRegex(OSError, "disk gone"):
      next(batches)

  def test_silent_crops_are_redrawn(self):
    half = noise_track(20, 400)
    half[3, :200] = 0.0  # vocals silent in the first half
    shutil.rmtree(os.path.join(self.root, "train"))
    write_track(self.root, "train", "a", half)
    vocals = np.concatenate([b[:, 3] for b in self.take(0, 10, batch_size=4)])
    self.assertTrue(np.all(stems.rms(vocals) >= self.data.silence_rms))
    self.data.skip_silent_crops = False
    vocals = np.concatenate([b[:, 3] for b in self.take(0, 10, batch_size=4)])
    self.assertTrue(np.any(stems.rms(vocals) < self.data.silence_rms))

  def test_a_stem_silent_everywhere_falls_back_to_silent_crops(self):
    silent = noise_track(21, 400)
    silent[1] = 0.0
    shutil.rmtree(os.path.join(self.root, "train"))
    write_track(self.root, "train", "a", silent)
    self.data.prefetch = 0
    with self.assertLogs(logging.get_absl_logger(), "WARNING") as logs:
      batch = self.take(0, 1, batch_size=2)[0]
    self.assertTrue(np.all(batch[:, 1] == 0.0))
    self.assertTrue(np.all(stems.rms(batch[:, [0, 2, 3]]) > 0.1))
    self.assertTrue(any("silent" in line for line in logs.output))


class TestSetTest(StemsTestCase):

  def test_crop_list_rule(self):
    # Track a: 3 windows of 100 (a remainder of 50 is dropped); track b: 2 windows, the
    # first with a silent stem.
    a, b = noise_track(30, 350), noise_track(31, 200)
    b[2, :100] = 0.0
    write_track(self.root, "test", "a", a)
    write_track(self.root, "test", "b", b)
    self.data.test_size = 3
    # Usable windows a@0, a@100, a@200, b@100; round(linspace(0, 3, 3)) = [0, 2, 3].
    expected = np.stack([a[:, 0:100], a[:, 200:300], b[:, 100:200]])
    np.testing.assert_array_equal(stems.test_set(self.data), expected)
    # Without skipping, all five windows a@0, a@100, a@200, b@0, b@100, in that order.
    self.data.skip_silent_crops = False
    self.data.test_size = 5
    expected = np.stack([a[:, 0:100], a[:, 100:200], a[:, 200:300], b[:, 0:100],
                         b[:, 100:200]])
    np.testing.assert_array_equal(stems.test_set(self.data), expected)

  def test_deterministic_and_independent_of_the_train_split(self):
    write_track(self.root, "test", "a", noise_track(32, 1000))
    first = stems.test_set(self.data)
    write_track(self.root, "train", "x", noise_track(33, 1000))
    np.testing.assert_array_equal(first, stems.test_set(self.data))

  def test_too_few_windows_is_an_error(self):
    write_track(self.root, "test", "a", noise_track(34, 250))
    with self.assertRaisesRegex(ValueError, r"2 usable windows.*test_size=4"):
      stems.test_set(self.data)

  def test_short_test_track_is_skipped(self):
    write_track(self.root, "test", "a", noise_track(35, 400))
    write_track(self.root, "test", "b", noise_track(36, 99))
    self.assertEqual(stems.test_set(self.data).shape, (4, len(NAMES), 100))


if __name__ == "__main__":
  absltest.main()
