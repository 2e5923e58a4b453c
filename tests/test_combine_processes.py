"""benchmarks/cases.py combines compare_torch.py's results of one case from several
processes (imported from cases: compare_torch defines absl flags that other benchmark
modules define too)."""
import pytest

from benchmarks import cases


def process_result(jax_map, torch_1t, torch_2t, busy=0.0, compile_s=10.0):
  """A child's result of the one-device layout with the given per-round seconds."""
  result = {"case": "wavenet_paper_train", "kind": "train", "samples_per_call": 100,
            "jax_compile_s": {"jax_map": compile_s}, "others_busy_fraction": busy}
  for name, rounds in (("jax_map", jax_map), ("torch_1t", torch_1t),
                       ("torch_2t", torch_2t)):
    result[f"{name}_all_s"] = rounds
    result[f"{name}_s"] = sorted(rounds)[len(rounds) // 2]
  result["jax_map_samples_per_s"] = 100 / result["jax_map_s"]
  result["torch_best"] = min(("torch_1t", "torch_2t"), key=lambda n: result[f"{n}_s"])
  result["torch_s"] = result[f"{result['torch_best']}_s"]
  result["torch_over_jax_map"] = result["torch_s"] / result["jax_map_s"]
  return result


def test_one_process_is_returned_as_it_is():
  result = process_result([1.0, 2.0, 3.0], [5.0] * 3, [4.0] * 3)
  assert cases.combine_processes([result]) is result


def test_ratio_is_the_median_of_each_process_own_ratio():
  # Per-process ratios torch_2t / jax_map: 2.0, 1.0, 3.0, median 2.0; the ratio of the
  # medians would be 2.0 / 2.0 = 1.0.
  results = [process_result([1.0], [9.0], [2.0], busy=0.1, compile_s=8.0),
             process_result([2.0], [9.0], [2.0], busy=0.3, compile_s=12.0),
             process_result([4.0], [20.0], [12.0], busy=0.2, compile_s=10.0)]
  combined = cases.combine_processes(results)
  assert combined["processes"] == 3
  assert combined["jax_map_s"] == 2.0
  assert combined["torch_2t_s"] == 2.0
  assert combined["torch_best"] == "torch_2t"
  assert combined["torch_s"] == 2.0
  assert combined["torch_over_jax_map_per_process"] == [2.0, 1.0, 3.0]
  assert combined["torch_over_jax_map"] == 2.0
  assert combined["jax_map_all_s"] == [1.0, 2.0, 4.0]
  assert combined["torch_1t_all_s"] == [9.0, 9.0, 20.0]
  assert combined["jax_map_samples_per_s"] == pytest.approx(50.0)
  assert combined["jax_compile_s"] == {"jax_map": 10.0}
  assert combined["others_busy_fraction"] == 0.3
  assert combined["case"] == "wavenet_paper_train"


def test_torch_best_is_chosen_over_all_processes():
  # torch_1t wins the first process, torch_2t the median over all three.
  results = [process_result([1.0], [1.5], [2.0]), process_result([1.0], [9.0], [3.0]),
             process_result([1.0], [9.0], [2.5])]
  combined = cases.combine_processes(results)
  assert combined["torch_best"] == "torch_2t"
  assert combined["torch_over_jax_map_per_process"] == [2.0, 3.0, 2.5]
