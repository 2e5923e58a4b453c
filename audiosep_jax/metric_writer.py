"""One metrics writer per run: TensorBoard event files (tensorboardX) and scalars.jsonl.

Only process 0 writes; on the others every method is a no-op. `scalars.jsonl` holds one
JSON object per write, {"step": int, "<name>": float, ...}, so that reports and tests can
read the training curves without TensorBoard. The file is appended to: a run resumed from
a checkpoint older than its last line logs those steps again, and readers keep the last
value of each (step, name) (`report.load_scalars`).
"""
import json
import os

import jax
import numpy as np


class MetricWriter:
  """write_scalars / write_audios / write_hparams into `logdir`."""

  def __init__(self, logdir):
    self.logdir = logdir
    self._active = jax.process_index() == 0
    self._summary = None
    self._jsonl = None
    if self._active:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      os.makedirs(logdir, exist_ok=True)
      self._summary = SummaryWriter(logdir)
      self._jsonl = open(os.path.join(logdir, "scalars.jsonl"), "a")

  def write_scalars(self, step, scalars):
    if not self._active:
      return
    values = {name: float(value) for name, value in scalars.items()}
    for name, value in values.items():
      self._summary.add_scalar(name, value, step)
    self._jsonl.write(json.dumps({"step": int(step), **values}) + "\n")
    self._jsonl.flush()

  def write_audios(self, step, audios, sample_rate):
    """audios: {name: [N, T]} waveforms in [-1, 1]; one clip per row."""
    if not self._active:
      return
    for name, clips in audios.items():
      for i, clip in enumerate(np.asarray(clips)):
        self._summary.add_audio(f"{name}/{i}", np.clip(clip, -1.0, 1.0), step,
                                sample_rate=sample_rate)

  def write_hparams(self, hparams):
    """Flattened config as TensorBoard text (nested dicts become dotted names)."""
    if not self._active:
      return
    flat = {}

    def visit(prefix, value):
      if isinstance(value, dict):
        for key, sub in value.items():
          visit(f"{prefix}.{key}" if prefix else key, sub)
      else:
        flat[prefix] = value

    visit("", hparams)
    text = "\n".join(f"    {k} = {v!r}" for k, v in sorted(flat.items()))
    self._summary.add_text("config", text, 0)

  def close(self):
    if self._active:
      self._summary.close()
      self._jsonl.close()
