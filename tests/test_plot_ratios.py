"""benchmarks/plot_ratios.py pairs each round's PyTorch and JAX times and pools runs."""
import json

import numpy as np
import pytest

from benchmarks import plot_ratios


def case_result(case, jax_map, torch_2t, torch_1t, sharded=None, sharded_torch=None):
  """A compare_torch.py result of one case with the given per-round seconds."""
  result = {"case": case, "kind": "train", "family": "wavenet", "variant": "paper",
            "jax_map_all_s": jax_map, "torch_1t_all_s": torch_1t,
            "torch_2t_all_s": torch_2t, "torch_best": "torch_2t"}
  if sharded is not None:
    result["jax_prior_sharded_all_s"] = sharded
  if sharded_torch is not None:
    result["sharded_torch_2t_all_s"] = sharded_torch
    result["sharded_torch_best"] = "torch_2t"
  return result


def write_results(path, cpu, results):
  path.write_text(json.dumps({"machine": {"cpu": cpu}, "results": results}))
  return str(path)


def test_round_ratios_pair_each_round_with_its_own_torch_time():
  result = case_result("c", jax_map=[1.0, 2.0, 4.0], torch_2t=[3.0, 3.0, 3.0],
                       torch_1t=[9.0, 9.0, 9.0], sharded=[0.5, 1.0, 1.5],
                       sharded_torch=[2.0, 2.0, 3.0])
  np.testing.assert_allclose(plot_ratios.round_ratios(result, "map"), [3.0, 1.5, 0.75])
  np.testing.assert_allclose(plot_ratios.round_ratios(result, "prior_sharded"),
                             [4.0, 2.0, 2.0])
  del result["sharded_torch_best"]
  np.testing.assert_allclose(plot_ratios.round_ratios(result, "prior_sharded"),
                             [6.0, 3.0, 2.0])
  with pytest.raises(KeyError, match="jax_vmap_all_s"):
    plot_ratios.round_ratios(result, "vmap")


def test_prior_processes_rounds_pair_with_the_same_torch_rounds():
  result = dict(case_result("c", jax_map=[1.0, 2.0], torch_2t=[3.0, 4.0], torch_1t=[9.0, 9.0]),
                jax_prior_processes_all_s=[0.5, 2.0])
  np.testing.assert_allclose(plot_ratios.round_ratios(result, "prior_processes"), [6.0, 2.0])
  np.testing.assert_allclose(plot_ratios.round_ratios(result, "map"), [3.0, 2.0])


def test_load_rounds_selects_pools_and_orders_cases(tmp_path):
  first = write_results(tmp_path / "a.json", "cpu A", [
      case_result("wavenet_paper_train", [1.0, 1.0], [2.0, 3.0], [5.0, 5.0]),
      dict(case_result("flow_paper_score", [1.0], [2.0], [4.0]), kind="score",
           family="flow"),
      dict(case_result("flow_paper_train", [1.0], [1.5], [4.0]), family="flow")])
  second = write_results(tmp_path / "b.json", "cpu A", [
      case_result("wavenet_paper_train", [2.0], [3.0], [5.0])])
  other = write_results(tmp_path / "c.json", "cpu B", [
      case_result("wavenet_paper_train", [1.0], [4.0], [5.0])])
  machines = plot_ratios.load_rounds(
      [f"{first}:wavenet_paper_train+flow_paper_score+flow_paper_train", second, other],
      ["map"])
  assert list(machines) == ["cpu A", "cpu B"]
  assert list(machines["cpu A"]) == ["flow_paper_train", "wavenet_paper_train",
                                     "flow_paper_score"]
  np.testing.assert_allclose(machines["cpu A"]["wavenet_paper_train"]["map"],
                             [2.0, 3.0, 1.5])
  np.testing.assert_allclose(machines["cpu B"]["wavenet_paper_train"]["map"], [4.0])
  only = plot_ratios.load_rounds([f"{first}:flow_paper_train"], ["map"])
  assert list(only["cpu A"]) == ["flow_paper_train"]


def test_bad_input_names_the_file(tmp_path):
  good = write_results(tmp_path / "a.json", "cpu A",
                       [case_result("c", [1.0, 1.0], [2.0], [2.0])])
  with pytest.raises(ValueError, match="a.json.*no case \\['d'\\]"):
    plot_ratios.load_rounds([f"{good}:d"], ["map"])
  with pytest.raises(ValueError, match="a.json.*1 rounds, jax_map_all_s 2"):
    plot_ratios.load_rounds([good], ["map"])
  not_results = tmp_path / "x.json"
  not_results.write_text(json.dumps({"results": []}))
  with pytest.raises(ValueError, match="x.json: not a results file of compare_torch.py"):
    plot_ratios.load_rounds([str(not_results)], ["map"])


def test_plot_writes_one_panel_per_machine(tmp_path):
  import matplotlib.image  # pylint: disable=g-import-not-at-top
  machines = {"cpu A": {"c": {"map": [1.2, 1.6], "vmap": [], "prior_processes": [1.7]}},
              "cpu B": {"c": {"map": [2.0], "vmap": [0.9], "prior_processes": []}}}
  out = tmp_path / "figs" / "ratios.png"
  plot_ratios.plot(machines, ["map", "vmap", "prior_processes"], 1.5, str(out))
  height, width, _ = matplotlib.image.imread(out).shape
  assert width > 1.5 * height
  assert [p.name for p in out.parent.iterdir()] == ["ratios.png"]


def test_median_table_bolds_the_cases_that_reach_the_target():
  table = plot_ratios.median_table(
      "cpu A", {"c": {"map": [1.2, 1.6, 1.7], "vmap": []}, "d": {"map": [1.0], "vmap": [2.0]}},
      ["map", "vmap"], 1.5)
  assert table.splitlines() == ["| cpu A: case | map | vmap |", "|---|---|---|",
                                "| `c` | **1.60x** (3) | - |",
                                "| `d` | 1.00x (1) | **2.00x** (1) |"]
