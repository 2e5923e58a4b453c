"""Renders the Bach chorales bundled with music21 into the stems layout (data/stems.py).

  python -m audiosep_jax.main --config=configs/chorales_flow.py:demo --mode=render_chorales \
      --config.data.root=DIR

writes `DIR/<split>/<chorale>/{soprano,alto,tenor,bass,mixture}.wav` and `DIR/chorales.json`
(the settings, each chorale's split, tempo, transposition and length, and the totals).

- Chorales: music21's Riemenschneider chorales (`corpus.chorales.Iterator`) in sorted
  order, those with exactly four parts named soprano, alto, tenor and bass; the first
  `render.num_chorales` of them (None: all).
- Per chorale, from `np.random.default_rng([render.seed, crc32(chorale id)])`: a tempo
  uniform in [tempo_low, tempo_high] quarter notes per minute and an integer
  transposition uniform in [-max_transpose, max_transpose] semitones, so a chorale keeps
  its rendering whatever else is rendered. The music is cut after `render.max_seconds`.
- Per voice: one General MIDI instrument (`render.programs`, 0-based, in
  data.source_names order), synthesised alone with FluidSynth through pretty_midi at
  `render.synth_rate` with the TimGM6mb.sf2 that pretty_midi ships (or
  `render.soundfont`), then resampled with soxr to data.sample_rate.
- Levels: every stem is scaled to the peak `render.peak`, and mixture.wav is the mean of
  the stems (the project's default mix, data.mix_weights=None), so nothing clips.
- Split by chorale: a permutation of the rendered chorales drawn from `render.seed`; its
  first max(1, round(test_fraction * n)) chorales are the test split, the rest train.
- Files: each WAV is written to a temporary name and renamed, inside a hidden staging
  folder `.<chorale>.partial` that is renamed to `<chorale>` once all five files are
  there; so no reader ever sees a half-written file or a half-written chorale. A render
  that stopped resumes: finished chorales are kept (rendering is deterministic). A root
  that holds a render with other settings is an error.

The system library FluidSynth (libfluidsynth) is needed: launch/install_system_deps.sh
installs it; the Python packages are the `chorales` extra of setup.py.
"""
import importlib.metadata
import json
import math
import os
import shutil
import time
import zlib
from typing import NamedTuple

import numpy as np
import soundfile as sf
import soxr
from absl import logging

VOICES = ("soprano", "alto", "tenor", "bass")
MIXTURE = "mixture"
MANIFEST = "chorales.json"
RESAMPLE_QUALITY = "HQ"


class Note(NamedTuple):
  """One note of a voice, times in quarter notes from the chorale's start."""
  start: float
  end: float
  pitch: int


class Chorale(NamedTuple):
  """chorale_id: 'bwv10.7'; voices: per data.source_names entry, its notes."""
  chorale_id: str
  voices: tuple


class Rendering(NamedTuple):
  """How one chorale is rendered."""
  split: str
  tempo: float  # quarter notes per minute
  transpose: int  # semitones


def import_synthesis():
  """(music21.corpus, pretty_midi), with errors that say what to install."""
  # pylint: disable=g-import-not-at-top
  try:
    from music21 import corpus
    import pretty_midi
  except ImportError as e:
    raise ImportError(f"Rendering the chorales needs the `chorales` extra: pip install -e "
                      f".[chorales] ({e}).") from e
  try:
    import fluidsynth  # pylint: disable=unused-import
  except ImportError as e:
    raise ImportError(f"Rendering the chorales needs the FluidSynth library (libfluidsynth) "
                      f"and pyfluidsynth: run launch/install_system_deps.sh and pip install "
                      f"-e .[chorales] ({e}).") from e
  # pylint: enable=g-import-not-at-top
  return corpus, pretty_midi


def _check_config(config):
  if "render" not in config:
    raise ValueError(f"--mode=render_chorales needs a chorales config (configs/chorales_*.py, "
                     f"which has a `render` group); this config "
                     f"(data.name={config.data.get('name', None)!r}) has none.")
  data, render = config.data, config.render
  if not data.get("root", None):
    raise ValueError("config.data.root is not set: set --config.data.root=DIR, the folder "
                     "to render the chorales into.")
  names = tuple(data.source_names)
  if sorted(names) != sorted(VOICES):
    raise ValueError(f"config.data.source_names={names} must be the four voices {VOICES} "
                     f"(in any order) to render the chorales.")
  if len(render.programs) != len(names) or not all(0 <= p <= 127 for p in render.programs):
    raise ValueError(f"config.render.programs={tuple(render.programs)} must be one General "
                     f"MIDI program in 0..127 per source of {names}.")
  if render.num_chorales is not None and render.num_chorales < 2:
    raise ValueError(f"config.render.num_chorales={render.num_chorales} must be at least 2 "
                     f"(one train and one test chorale), or None for all.")
  if not 0 < render.tempo_low <= render.tempo_high:
    raise ValueError(f"config.render tempo range [{render.tempo_low}, {render.tempo_high}] "
                     f"must be positive and ordered.")
  if not 0.0 < render.test_fraction < 1.0:
    raise ValueError(f"config.render.test_fraction={render.test_fraction} must be in (0, 1).")
  if render.max_seconds <= 0 or render.peak <= 0 or render.tail_seconds < 0:
    raise ValueError("config.render.max_seconds and peak must be positive and tail_seconds "
                     f"non-negative, got {render.max_seconds}, {render.peak}, "
                     f"{render.tail_seconds}.")
  if render.soundfont is not None and not os.path.isfile(render.soundfont):
    raise FileNotFoundError(f"config.render.soundfont={render.soundfont!r} is not a file.")


def score_voices(score, voice_names):
  """The notes of each voice, in voice_names order; None unless the score has exactly
  four parts named soprano, alto, tenor and bass."""
  parts = {(p.partName or "").strip().lower(): p for p in score.parts}
  if len(score.parts) != len(VOICES) or sorted(parts) != sorted(VOICES):
    return None
  voices = []
  for name in voice_names:
    notes = []
    for element in parts[name].stripTies().flatten().notes:
      length = float(element.quarterLength)
      if length <= 0.0:  # grace notes
        continue
      start = float(element.offset)
      notes.extend(Note(start, start + length, int(p.midi)) for p in element.pitches)
    voices.append(tuple(notes))
  return tuple(voices)


def corpus_chorale_names():
  """music21's Riemenschneider chorales, each once: sorted corpus names ('bach/bwv10.7').

  The Riemenschneider numbering lists some chorales twice (20 in music21 10.5.1); a
  chorale rendered twice could land in both splits.
  """
  corpus, _ = import_synthesis()
  return sorted(set(corpus.chorales.Iterator(returnType="filename")))


def list_chorales(num_chorales, voice_names):
  """The first num_chorales (None: all) SATB chorales of music21's corpus: [Chorale]."""
  corpus, _ = import_synthesis()
  chorales = []
  for corpus_name in corpus_chorale_names():
    voices = score_voices(corpus.parse(corpus_name), voice_names)
    if voices is None:
      continue
    chorales.append(Chorale(corpus_name.split("/")[-1], voices))
    if num_chorales is not None and len(chorales) == num_chorales:
      break
  if num_chorales is not None and len(chorales) < num_chorales:
    raise ValueError(f"config.render.num_chorales={num_chorales}, but music21's corpus has "
                     f"only {len(chorales)} chorales with soprano, alto, tenor and bass parts.")
  return chorales


def plan_renderings(chorale_ids, render_config, train_split="train", test_split="test"):
  """{chorale_id: Rendering}: the split, tempo and transposition of each chorale."""
  count = len(chorale_ids)
  num_test = max(1, int(round(render_config.test_fraction * count)))
  order = np.random.default_rng(render_config.seed).permutation(count)
  test = {chorale_ids[i] for i in order[:num_test]}
  plan = {}
  for chorale_id in chorale_ids:
    rng = np.random.default_rng([render_config.seed, zlib.crc32(chorale_id.encode())])
    tempo = float(rng.uniform(render_config.tempo_low, render_config.tempo_high))
    transpose = int(rng.integers(-render_config.max_transpose,
                                 render_config.max_transpose + 1))
    split = test_split if chorale_id in test else train_split
    plan[chorale_id] = Rendering(split, tempo, transpose)
  return plan


def voice_times(notes, rendering, max_seconds):
  """Notes in seconds at the rendering's tempo, transposed, cut at max_seconds:
  [(start, end, pitch)]."""
  seconds_per_quarter = 60.0 / rendering.tempo
  timed = []
  for note in notes:
    start = note.start * seconds_per_quarter
    if start >= max_seconds:
      continue
    end = min(note.end * seconds_per_quarter, max_seconds)
    pitch = note.pitch + rendering.transpose
    if not 0 <= pitch <= 127:
      raise ValueError(f"Transposed pitch {pitch} is outside MIDI's 0..127.")
    timed.append((start, end, pitch))
  return timed


def synthesize_voice(timed_notes, program, render_config, num_samples):
  """FluidSynth through pretty_midi: one instrument alone -> [num_samples] at synth_rate."""
  _, pretty_midi = import_synthesis()
  instrument = pretty_midi.Instrument(program=program)
  for start, end, pitch in timed_notes:
    instrument.notes.append(pretty_midi.Note(velocity=render_config.velocity, pitch=pitch,
                                             start=start, end=end))
  soundfont = render_config.soundfont
  if soundfont is None:
    soundfont = os.path.join(os.path.dirname(pretty_midi.__file__),
                             pretty_midi.fluidsynth.DEFAULT_SF2)
  audio = np.zeros((num_samples,), np.float64)
  if timed_notes:
    synthesized = instrument.fluidsynth(fs=render_config.synth_rate, synthesizer=soundfont)
    size = min(num_samples, synthesized.shape[0])
    audio[:size] = synthesized[:size]
  return audio


def render_chorale(chorale, rendering, data_config, render_config):
  """-> (stems [K, T], mixture [T]), float32 at data.sample_rate, each stem at the peak."""
  timed = [voice_times(notes, rendering, render_config.max_seconds) for notes in chorale.voices]
  end = max(note[1] for voice in timed for note in voice)
  num_samples = int(math.ceil((end + render_config.tail_seconds) * render_config.synth_rate))
  stems = []
  for notes, program in zip(timed, render_config.programs):
    audio = synthesize_voice(notes, program, render_config, num_samples)
    if render_config.synth_rate != data_config.sample_rate:
      audio = soxr.resample(audio, render_config.synth_rate, data_config.sample_rate,
                            quality=RESAMPLE_QUALITY)
    peak = np.max(np.abs(audio))
    if peak > 0:
      audio = audio * (render_config.peak / peak)
    stems.append(audio.astype(np.float32))
  stems = np.stack(stems)
  return stems, stems.mean(axis=0)


def write_wav(path, audio, sample_rate, subtype):
  """Writes audio [T] to a temporary name beside path, then renames it to path."""
  directory, name = os.path.split(path)
  tmp = os.path.join(directory, f".{name}.partial")
  try:
    sf.write(tmp, audio, sample_rate, subtype=subtype, format="WAV")
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_chorale(split_dir, chorale_id, named_audio, sample_rate, subtype):
  """Writes {name: audio [T]} as <split_dir>/<chorale_id>/<name>.wav via a staging folder."""
  final = os.path.join(split_dir, chorale_id)
  staging = os.path.join(split_dir, f".{chorale_id}.partial")
  if os.path.exists(staging):
    shutil.rmtree(staging)
  os.makedirs(staging)
  try:
    for name, audio in named_audio.items():
      write_wav(os.path.join(staging, name + ".wav"), audio, sample_rate, subtype)
    if os.path.exists(final):
      shutil.rmtree(final)
    os.rename(staging, final)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise


def _file_names(data_config):
  return tuple(data_config.source_names) + (MIXTURE,)


def _finished_seconds(chorale_dir, data_config):
  """Seconds of a complete rendered chorale folder, or None if it is not complete."""
  paths = [os.path.join(chorale_dir, n + ".wav") for n in _file_names(data_config)]
  if not all(os.path.isfile(p) for p in paths):
    return None
  info = sf.info(paths[-1])
  return info.frames / info.samplerate


def _settings(config):
  """What determines the rendered audio (compared with a root's manifest)."""
  settings = {"render": config.render.to_dict(), "sample_rate": config.data.sample_rate,
              "source_names": list(config.data.source_names),
              "music21": importlib.metadata.version("music21"),
              "splits": [config.data.train_split, config.data.test_split]}
  return json.loads(json.dumps(settings))


def _check_no_strays(root, plan, data_config):
  """Raises if the root holds chorale folders that this render would not make (another
  render's, or one in the other split): they would mix into the data."""
  stray = []
  for split in (data_config.train_split, data_config.test_split):
    split_dir = os.path.join(root, split)
    if not os.path.isdir(split_dir):
      continue
    for name in sorted(os.listdir(split_dir)):
      if name.startswith(".") or not os.path.isdir(os.path.join(split_dir, name)):
        continue
      if name not in plan or plan[name].split != split:
        stray.append(os.path.join(split, name))
  if stray:
    raise ValueError(f"{root!r} holds {len(stray)} chorale folders that this render does "
                     f"not make ({', '.join(stray[:5])}); render into an empty "
                     f"--config.data.root=DIR.")


def _write_json(path, value):
  tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.partial")
  with open(tmp, "w") as f:
    json.dump(value, f, indent=2)
  os.replace(tmp, path)


def render_dataset(config):
  """Renders the chorales into config.data.root; returns the manifest written there.

  The manifest's totals: number of chorales per split, files, and hours of audio.
  """
  _check_config(config)
  import_synthesis()  # a missing package fails here, before the root folder is made
  data, render = config.data, config.render
  root = data.root
  os.makedirs(root, exist_ok=True)
  manifest_path = os.path.join(root, MANIFEST)
  settings = _settings(config)
  if os.path.isfile(manifest_path):
    with open(manifest_path) as f:
      previous = json.load(f).get("settings")
    if previous != settings:
      raise ValueError(f"{root!r} holds a chorales render with other settings (see "
                       f"{manifest_path}); render into an empty --config.data.root=DIR.")
  start_time = time.time()
  chorales = list_chorales(render.num_chorales, tuple(data.source_names))
  plan = plan_renderings([c.chorale_id for c in chorales], render, data.train_split,
                         data.test_split)
  _check_no_strays(root, plan, data)
  _write_json(manifest_path, {"settings": settings, "complete": False})
  entries = []
  for index, chorale in enumerate(chorales):
    rendering = plan[chorale.chorale_id]
    split_dir = os.path.join(root, rendering.split)
    os.makedirs(split_dir, exist_ok=True)
    seconds = _finished_seconds(os.path.join(split_dir, chorale.chorale_id), data)
    if seconds is None:
      stems, mixture = render_chorale(chorale, rendering, data, render)
      named = dict(zip(data.source_names, stems))
      named[MIXTURE] = mixture
      write_chorale(split_dir, chorale.chorale_id, named, data.sample_rate, render.subtype)
      seconds = mixture.shape[0] / data.sample_rate
    entries.append({"id": chorale.chorale_id, **rendering._asdict(), "seconds": seconds})
    logging.info("Rendered %d/%d chorales (%s, %s, %.1f s)", index + 1, len(chorales),
                 chorale.chorale_id, rendering.split, seconds)
  totals = {"chorales": len(entries), "files": len(entries) * len(_file_names(data)),
            "hours": sum(e["seconds"] for e in entries) / 3600.0,
            "render_seconds": time.time() - start_time}
  for kind, split in (("train", data.train_split), ("test", data.test_split)):
    in_split = [e for e in entries if e["split"] == split]
    totals[f"{kind}_chorales"] = len(in_split)
    totals[f"{kind}_hours"] = sum(e["seconds"] for e in in_split) / 3600.0
  manifest = {"settings": settings, "complete": True, "totals": totals, "chorales": entries}
  _write_json(manifest_path, manifest)
  logging.info("Chorales in %s: %d train, %d test, %d files, %.2f hours, rendered in %.0f s",
               root, totals["train_chorales"], totals["test_chorales"], totals["files"],
               totals["hours"], totals["render_seconds"])
  return manifest
