"""The WaveNets' residual stream forms (config.model.residual_stream), side by side.

  python benchmarks/residual_stream.py [--cases=wavenet_paper_train,wavenet_paper_score] \
      [--streams=matmul,divide] [--loops=map,vmap] [--rounds=7] \
      [--out=benchmarks/results/residual_stream.json]

Every form computes the same function of the same params (`wavenet.ResidualLayer`); they
differ in what the compiler makes of them. For each case of `cases.CASES` this compiles
the JAX train step or score (`cases.jax_runners`, one CPU device) once per stream
and prior loop, then times them alternately in one process (`cases.time_alternately`):
the ratios within a case are the numbers to read. Prints each runner's median and the
first stream's time over each other stream's (> 1: the other is faster).
"""
import os
import statistics
import sys

from absl import app
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import cases  # pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import common  # pylint: disable=g-import-not-at-top,wrong-import-position

_CASES = flags.DEFINE_list("cases", ["wavenet_paper_train", "wavenet_paper_score"],
                           "Cases of cases.CASES to time.")
_STREAMS = flags.DEFINE_list("streams", ["matmul", "divide"],
                             "Values of config.model.residual_stream; the first is the "
                             "reference of the printed ratios.")
_LOOPS = flags.DEFINE_list("loops", ["map", "vmap"], "Prior loops: 'map' and/or 'vmap'.")
_ROUNDS = flags.DEFINE_integer("rounds", 7, "Timed rounds (median reported).")
_MIN_MEASURE_S = flags.DEFINE_float(
    "min_measure_s", 1.0, "Each timed measurement repeats the call for at least this long.")
_SCORE_SIGMA = flags.DEFINE_float(
    "score_sigma", 0.077, "Noise level of the WaveNet's smoothed density in score cases.")
_OUT = flags.DEFINE_string("out", None, "JSON file for the results (default: print only).")


def time_case(name, streams, loops, rounds, min_measure_s, score_sigma):
  """{'case', 'streams', '<stream>_<loop>_s' medians, '..._all_s' rounds, compile_s}."""
  from audiosep_jax.models import wavenet  # pylint: disable=g-import-not-at-top
  for stream in streams:
    wavenet.check_residual_stream(stream, "--streams")
  case = cases.CASES[name]
  batch = cases.sample_batch(case, cases.get_config(case))
  sigma = score_sigma if case.family == "wavenet" else 0.0
  runners, compile_s = {}, {}
  for stream in streams:
    config = cases.get_config(case)
    config.model.residual_stream = stream
    built, seconds, _ = cases.jax_runners(case, config, batch, sigma, "one_device")
    for loop in loops:
      runners[f"{stream}_{loop}"] = built[f"jax_{loop}"]
      compile_s[f"{stream}_{loop}"] = seconds[f"jax_{loop}"]
  times = cases.time_alternately(runners, rounds, min_measure_s)
  return {"case": name, **case._asdict(), "streams": streams, "loops": loops,
          "compile_s": compile_s, **cases.medians(times)}


def main(argv):
  del argv
  common.warn_without_tcmalloc()
  unknown = [n for n in _CASES.value if n not in cases.CASES]
  if unknown:
    raise ValueError(f"--cases: unknown {unknown}; known: {', '.join(cases.CASES)}.")
  unknown_loops = [loop for loop in _LOOPS.value if loop not in ("map", "vmap")]
  if unknown_loops:
    raise ValueError(f"--loops: unknown {unknown_loops}; known: map, vmap.")
  results = []
  for name in _CASES.value:
    result = time_case(name, _STREAMS.value, _LOOPS.value, _ROUNDS.value,
                       _MIN_MEASURE_S.value, _SCORE_SIGMA.value)
    results.append(result)
    reference = _STREAMS.value[0]
    for loop in _LOOPS.value:
      line = "  ".join(f"{s} {result[f'{s}_{loop}_s']:.3f} s" for s in _STREAMS.value)
      ratios = "  ".join(
          f"{reference}/{s} {result[f'{reference}_{loop}_s'] / result[f'{s}_{loop}_s']:.2f}"
          for s in _STREAMS.value[1:])
      print(f"{name:22s} {loop:4s}  {line}  {ratios}", flush=True)
    if _OUT.value:
      common.write_json(_OUT.value, {"machine": cases.machine_info(with_torch=False),
                                     "results": results})


if __name__ == "__main__":
  app.run(main)
