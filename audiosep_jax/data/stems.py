"""MUSDB18-HQ-layout stems on the host: `<root>/<split>/<track>/<stem>.wav`.

One folder per track, one WAV per source, named by `data.source_names` (MUSDB18-HQ:
drums, bass, other, vocals; the rendered chorales: soprano, alto, tenor, bass). A
`mixture.wav` beside them is not read: the mix is always `sum_k a_k s_k` of the stems.
Folders whose name starts with '.' are ignored (the chorales renderer stages there).

Every stem is read with soundfile and becomes mono float32 at `data.sample_rate`:

- stereo (any channel count): averaged to mono;
- another sample rate: resampled with soxr (quality 'HQ');
- a silent stem is legal; with `data.skip_silent_crops`, training crops whose RMS is
  below `data.silence_rms` are redrawn (up to `data.max_crop_tries` draws, then the last
  draw is used and a warning says so once), and test windows with a silent stem are left
  out of the test set;
- a track shorter than the crop (`data.crop_length` for training, `data.test_length` for
  the test set) is skipped with a warning naming it; a split with no usable track is an
  error.

Errors, each naming the track and the stem: a missing stem file, a file that soundfile
cannot read, NaN or Inf samples, and stems of different lengths. An empty or missing
root, split or track list is an error that says how to set `--config.data.root=DIR`.

Memory: the tracks of a split are loaded once, at the start, as float32
(4 bytes x K stems x samples). The default chorales render (3.7 hours at 14 700 Hz,
3.0 of them for training) takes about 2.5 GB; MUSDB18-HQ's 100 training tracks (about
6.5 hours) about 5.5 GB. With `data.cache_dir` set, each resampled track is stored there
once as .npy and memory-mapped afterwards, so only the crops being read are resident and
a second start skips decoding and resampling.

Training batches: for global step s the batch is a pure function of (seed, s, the data):
`np.random.default_rng([seed, s])` draws, for every example and every source
independently, a track (with probability proportional to its number of crop positions)
and a uniform crop position; the priors are independent, so the sources of one example
need not come from the same track or time. A background thread prepares the next
`data.prefetch` batches. The test set is deterministic: see `test_windows`.

Shapes: a track [K, T]; a batch [B, K, T]; the test set [N, K, T]; float32.
"""
import hashlib
import json
import os
import queue
import threading
from typing import Iterator, NamedTuple

import numpy as np
import soundfile as sf
import soxr
from absl import logging

STEM_SUFFIX = ".wav"
RESAMPLE_QUALITY = "HQ"


class Track(NamedTuple):
  """A loaded track: its folder name and stems [K, T] (float32, maybe memory-mapped)."""
  name: str
  audio: np.ndarray


def _root(data_config):
  root = data_config.get("root", None)
  if not root:
    raise ValueError("config.data.root is not set: set --config.data.root=DIR, a folder "
                     "laid out as DIR/<split>/<track>/<stem>.wav.")
  if not os.path.isdir(root):
    raise FileNotFoundError(f"config.data.root={root!r} is not a directory: set "
                            f"--config.data.root=DIR to the stems folder.")
  return root


def _check_fields(data_config):
  for field in ("crop_length", "test_length", "test_size", "sample_rate", "max_crop_tries"):
    value = data_config[field]
    if not isinstance(value, int) or value <= 0:
      raise ValueError(f"config.data.{field} must be a positive integer, got {value!r}.")
  if not data_config.source_names:
    raise ValueError("config.data.source_names is empty.")
  if data_config.prefetch < 0:
    raise ValueError(f"config.data.prefetch must be >= 0, got {data_config.prefetch!r}.")


def check_config(data_config):
  """Clear errors, before a run writes anything, for a stems config that cannot load: bad
  fields, no root folder, no track folders in its train and test splits."""
  _check_fields(data_config)
  for split in (data_config.train_split, data_config.test_split):
    track_dirs(data_config, split)


def track_dirs(data_config, split):
  """Sorted track folders of one split: [<root>/<split>/<track>, ...]."""
  root = _root(data_config)
  split_dir = os.path.join(root, split)
  if not os.path.isdir(split_dir):
    raise FileNotFoundError(
        f"No split folder {split_dir!r} in config.data.root={root!r}: expected "
        f"<root>/{split}/<track>/<stem>{STEM_SUFFIX}; set --config.data.root=DIR.")
  names = sorted(n for n in os.listdir(split_dir)
                 if not n.startswith(".") and os.path.isdir(os.path.join(split_dir, n)))
  if not names:
    raise FileNotFoundError(
        f"No track folders in {split_dir!r}: expected <root>/{split}/<track>/"
        f"<stem>{STEM_SUFFIX} for the stems {tuple(data_config.source_names)}.")
  return [os.path.join(split_dir, n) for n in names]


def read_stem(path, sample_rate, track, stem):
  """One stem file -> mono float32 [T] at sample_rate; errors name the track and stem."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Track {track!r}: stem {stem!r} is missing (no file {path}).")
  try:
    audio, rate = sf.read(path, dtype="float32", always_2d=True)
  except (sf.LibsndfileError, RuntimeError, TypeError) as e:
    raise ValueError(f"Track {track!r}, stem {stem!r}: {path} is not a readable audio "
                     f"file ({e}).") from e
  if not np.all(np.isfinite(audio)):
    bad = int(np.sum(~np.isfinite(audio)))
    raise ValueError(f"Track {track!r}, stem {stem!r}: {path} has {bad} NaN or Inf "
                     f"samples.")
  mono = audio.mean(axis=1, dtype=np.float32)
  if rate != sample_rate and mono.size:
    mono = soxr.resample(mono, rate, sample_rate, quality=RESAMPLE_QUALITY)
  return np.ascontiguousarray(mono, dtype=np.float32), rate


def load_track(track_dir, data_config):
  """Reads a track folder -> stems [K, T] (mono float32 at data.sample_rate, validated).

  Stems of one native rate must have exactly the same length; stems of different native
  rates may differ by one sample after resampling (rounding) and are cut to the shortest.
  """
  track = os.path.basename(os.path.normpath(track_dir))
  stems, rates = [], []
  for stem in data_config.source_names:
    path = os.path.join(track_dir, stem + STEM_SUFFIX)
    audio, rate = read_stem(path, data_config.sample_rate, track, stem)
    stems.append(audio)
    rates.append(rate)
  lengths = [s.shape[0] for s in stems]
  tolerance = 0 if len(set(rates)) == 1 else 1
  if max(lengths) - min(lengths) > tolerance:
    detail = ", ".join(f"{n}: {l} samples at {r} Hz"
                       for n, l, r in zip(data_config.source_names, lengths, rates))
    longest = data_config.source_names[int(np.argmax(lengths))]
    shortest = data_config.source_names[int(np.argmin(lengths))]
    raise ValueError(f"Track {track!r}: stems of different lengths (stem {shortest!r} is "
                     f"shorter than stem {longest!r}; {detail}).")
  length = min(lengths)
  return np.stack([s[:length] for s in stems])


def _cache_path(track_dir, data_config):
  """<cache_dir>/<track>-<hash>.npy; the hash covers the files' size and mtime, the
  rate and the stem names, so a changed file or config reads the WAVs again."""
  key = {"track": os.path.abspath(track_dir), "rate": data_config.sample_rate,
         "stems": list(data_config.source_names), "files": []}
  for stem in data_config.source_names:
    path = os.path.join(track_dir, stem + STEM_SUFFIX)
    stat = os.stat(path) if os.path.isfile(path) else None
    key["files"].append(None if stat is None else [stat.st_size, stat.st_mtime_ns])
  digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
  return os.path.join(data_config.cache_dir,
                      f"{os.path.basename(os.path.normpath(track_dir))}-{digest}.npy")


def load_cached_track(track_dir, data_config):
  """load_track, through data.cache_dir when it is set (then memory-mapped, read-only)."""
  if not data_config.get("cache_dir", None):
    return load_track(track_dir, data_config)
  path = _cache_path(track_dir, data_config)
  if not os.path.isfile(path):
    audio = load_track(track_dir, data_config)
    os.makedirs(data_config.cache_dir, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.partial"
    with open(tmp, "wb") as f:
      np.save(f, audio)
    os.replace(tmp, path)
  return np.load(path, mmap_mode="r")


def load_split(data_config, split, min_length):
  """All tracks of a split at least min_length samples long: [Track], sorted by name.

  Shorter tracks are skipped with a warning; none left is an error.
  """
  tracks = []
  for track_dir in track_dirs(data_config, split):
    audio = load_cached_track(track_dir, data_config)
    name = os.path.basename(track_dir)
    if audio.shape[1] < min_length:
      logging.warning("Skipping track %r of split %r: %d samples, shorter than the crop "
                      "of %d.", name, split, audio.shape[1], min_length)
      continue
    tracks.append(Track(name, audio))
  if not tracks:
    raise ValueError(f"No track of split {split!r} in {data_config.root!r} is at least "
                     f"{min_length} samples long at {data_config.sample_rate} Hz.")
  return tracks


def rms(x):
  """Root mean square over the last axis: [..., T] -> [...]."""
  return np.sqrt(np.mean(np.square(x, dtype=np.float64), axis=-1))


class _Sampler:
  """Random training crops of K independent sources from loaded tracks."""

  def __init__(self, tracks, data_config):
    self.tracks = tracks
    self.length = data_config.crop_length
    self.skip_silent = data_config.skip_silent_crops
    self.silence_rms = data_config.silence_rms
    self.max_tries = data_config.max_crop_tries
    self.num_sources = len(data_config.source_names)
    positions = np.array([t.audio.shape[1] - self.length + 1 for t in tracks], np.float64)
    self.track_p = positions / positions.sum()
    self.warned = False

  def crop(self, rng, source):
    """One crop [T] of `source`; redrawn while silent (if skip_silent)."""
    for _ in range(self.max_tries):
      audio = self.tracks[rng.choice(len(self.tracks), p=self.track_p)].audio
      start = int(rng.integers(0, audio.shape[1] - self.length + 1))
      crop = np.asarray(audio[source, start:start + self.length], np.float32)
      if not self.skip_silent or rms(crop) >= self.silence_rms:
        return crop
    if not self.warned:
      self.warned = True
      logging.warning("Source %d: %d crops in a row were silent (RMS < %g); using silent "
                      "crops where that happens.", source, self.max_tries, self.silence_rms)
    return crop

  def batch(self, seed, step, batch_size):
    """The batch of global step `step`: [B, K, T], a pure function of (seed, step)."""
    rng = np.random.default_rng([seed, step])
    return np.stack([np.stack([self.crop(rng, k) for k in range(self.num_sources)])
                     for _ in range(batch_size)])


def _prefetch(make_batch, start_step, size):
  """Yields make_batch(start_step), make_batch(start_step + 1), ... computed `size`
  ahead by a daemon thread. Closing the generator stops the thread; an error in the
  thread is raised here."""
  if size == 0:
    step = start_step
    while True:
      yield make_batch(step)
      step += 1
  batches = queue.Queue(maxsize=size)
  stop = threading.Event()

  def produce():
    step = start_step
    while not stop.is_set():
      try:
        item = (make_batch(step), None)
      except Exception as e:  # pylint: disable=broad-except
        item = (None, e)
      while not stop.is_set():
        try:
          batches.put(item, timeout=0.1)
          break
        except queue.Full:
          continue
      if item[1] is not None:
        return
      step += 1

  thread = threading.Thread(target=produce, name="stems-prefetch", daemon=True)
  thread.start()
  try:
    while True:
      batch, error = batches.get()
      if error is not None:
        raise error
      yield batch
  finally:
    stop.set()
    thread.join(timeout=5.0)


def train_batches(data_config, batch_size, seed, start_step) -> Iterator[np.ndarray]:
  """Yields the batches of steps start_step, start_step + 1, ...: [B, K, T] float32.

  The batch of step s depends only on (seed, s) and the files, so a run resumed at
  start_step sees the batches of an uninterrupted one. Tracks load at the first next().
  """
  _check_fields(data_config)
  if seed < 0:
    raise ValueError(f"The data seed must be >= 0, got {seed}.")
  if batch_size <= 0:
    raise ValueError(f"The batch size must be positive, got {batch_size}.")
  tracks = load_split(data_config, data_config.train_split, data_config.crop_length)
  sampler = _Sampler(tracks, data_config)
  yield from _prefetch(lambda step: sampler.batch(seed, step, batch_size), start_step,
                       data_config.prefetch)


def test_windows(tracks, data_config):
  """The test crop list: [(track index, start)], deterministic.

  Rule: every track (sorted by name) is cut into non-overlapping windows of
  data.test_length from its start (a remainder shorter than a window is dropped); with
  data.skip_silent_crops, windows in which any stem's RMS is below data.silence_rms are
  dropped; then data.test_size windows evenly spaced over that list (first and last
  included) are the test set.
  """
  length, size = data_config.test_length, data_config.test_size
  windows = []
  for index, track in enumerate(tracks):
    for start in range(0, track.audio.shape[1] - length + 1, length):
      if data_config.skip_silent_crops:
        window = np.asarray(track.audio[:, start:start + length])
        if np.any(rms(window) < data_config.silence_rms):
          continue
      windows.append((index, start))
  if len(windows) < size:
    raise ValueError(
        f"The test split {data_config.test_split!r} has {len(windows)} usable windows of "
        f"{length} samples, fewer than config.data.test_size={size}; lower test_size or "
        f"test_length, or add test tracks.")
  picks = np.round(np.linspace(0, len(windows) - 1, size)).astype(int)
  return [windows[i] for i in picks]


def test_set(data_config):
  """The held-out crops [N, K, T] (N = data.test_size, T = data.test_length), float32."""
  _check_fields(data_config)
  tracks = load_split(data_config, data_config.test_split, data_config.test_length)
  length = data_config.test_length
  return np.stack([np.asarray(tracks[i].audio[:, s:s + length], np.float32)
                   for i, s in test_windows(tracks, data_config)])
