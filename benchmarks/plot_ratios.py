"""Every timed round of compare_torch.py or prior_processes.py as a PyTorch / JAX ratio,
per case and layout.

  python benchmarks/plot_ratios.py --figure=docs/compare_torch_rounds.png \
      --results=benchmarks/results/compare_torch_intel_xeon.json,...

Each entry of `--results` is a results file of `compare_torch.py` or `prior_processes.py`
(whose layouts are 'map' and 'prior_processes'), optionally followed by
`:case+case` to take only those cases from it. A round times every runner once, one after
another in one process, so its ratio torch / jax pairs times taken moments apart; the
median of these ratios is close to the table's ratio of medians, and their spread shows
how far a single round can be trusted. Where several entries give the same case on the
same machine their rounds are pooled (repeated runs of one case). One panel per machine
(the results' `machine.cpu`); a dashed line marks `--target`.
"""
import json
import os

from absl import app
from absl import flags
import numpy as np

_RESULTS = flags.DEFINE_list(
    "results", None,
    "compare_torch.py or prior_processes.py results files, each optionally with ':case+case'.",
    required=True)
_FIGURE = flags.DEFINE_string("figure", None, "PNG file for the figure.", required=True)
LAYOUTS = ("map", "vmap", "prior_sharded", "prior_processes")
_LAYOUTS = flags.DEFINE_list("layouts", list(LAYOUTS),
                             f"JAX layouts to plot: {', '.join(LAYOUTS)}.")
_TARGET = flags.DEFINE_float("target", 1.5, "Ratio marked by a dashed line (the issue's).")


def parse_entry(entry):
  """'path[:case+case]' -> (path, tuple of cases, empty for all)."""
  path, _, selected = entry.partition(":")
  return path, tuple(c for c in selected.split("+") if c)


def round_ratios(result, layout):
  """Per-round torch / jax seconds of one case's result: [rounds].

  The PyTorch runner is the one that won its process ('torch_best', or for the prior-sharded
  layout 'sharded_torch_best'). Results without 'sharded_torch_best' come from the earlier
  script that timed every layout in one process, so its PyTorch rounds pair with them all.
  """
  jax_key = f"jax_{layout}_all_s"
  if jax_key not in result:
    raise KeyError(f"case {result.get('case')!r} has no {jax_key!r}")
  torch_name = result["torch_best"]
  if layout == "prior_sharded" and "sharded_torch_best" in result:
    torch_name = "sharded_" + result["sharded_torch_best"]
  torch_s = np.asarray(result[f"{torch_name}_all_s"])
  jax_s = np.asarray(result[jax_key])
  if torch_s.shape != jax_s.shape:
    raise ValueError(f"case {result['case']!r}: {torch_name}_all_s has {torch_s.size} rounds, "
                     f"{jax_key} {jax_s.size}")
  return torch_s / jax_s


def table_order(result):
  """Sort key of a case as the README's tables order them: train steps first, flows first,
  the paper variant first."""
  return (result["kind"] != "train", result["family"], result["variant"] != "paper",
          result["case"])


def load_rounds(entries, layouts):
  """{cpu: {case: {layout: [ratios of every round]}}}, cases in the tables' order."""
  machines, order = {}, {}
  for entry in entries:
    path, selected = parse_entry(entry)
    with open(path) as f:
      content = json.load(f)
    try:
      cpu = content["machine"]["cpu"]
      by_case = {r["case"]: r for r in content["results"]}
    except (KeyError, TypeError) as e:
      raise ValueError(f"{path}: not a results file of compare_torch.py or prior_processes.py "
                       f"({e!r} missing)") from e
    missing = [c for c in selected if c not in by_case]
    if missing:
      raise ValueError(f"{path}: no case {missing}; it has {', '.join(by_case)}")
    for case in selected or tuple(by_case):
      order[case] = table_order(by_case[case])
      pooled = machines.setdefault(cpu, {}).setdefault(case, {l: [] for l in layouts})
      for layout in layouts:
        if f"jax_{layout}_all_s" in by_case[case]:
          try:
            pooled[layout].extend(round_ratios(by_case[case], layout))
          except (KeyError, ValueError) as e:
            raise ValueError(f"{path}: {e}") from e
  return {cpu: dict(sorted(by_case.items(), key=lambda item: order[item[0]]))
          for cpu, by_case in machines.items()}


def plot(machines, layouts, target, out):
  """One panel per machine: a row per case, a dot per round, a bar at each median."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  colors = {"map": "tab:blue", "vmap": "tab:orange", "prior_sharded": "tab:green",
            "prior_processes": "tab:red"}
  cases_max = max(len(c) for c in machines.values())
  fig, axes = plt.subplots(1, len(machines), sharex=True, squeeze=False,
                           figsize=(6.5 * len(machines), 0.55 * cases_max + 1.6))
  rng = np.random.default_rng(0)
  spacing = 0.8 / len(layouts)  # between a row's layouts, in rows
  legend = {}  # layout -> a scatter of it, for the one legend of all panels
  for ax, (cpu, by_case) in zip(axes[0], machines.items()):
    names = list(by_case)
    for row, case in enumerate(names):
      for i, layout in enumerate(layouts):
        ratios = np.asarray(by_case[case][layout])
        if not ratios.size:
          continue
        y = row + (i - (len(layouts) - 1) / 2) * spacing
        jitter = rng.uniform(-0.25, 0.25, ratios.size) * spacing
        legend[layout] = ax.scatter(ratios, y + jitter, s=9, alpha=0.55, color=colors[layout])
        ax.plot([np.median(ratios)] * 2, [y - 0.45 * spacing, y + 0.45 * spacing],
                color=colors[layout], lw=2.5)
    ax.axvline(target, color="k", ls="--", lw=1)
    ax.axvline(1.0, color="0.6", lw=0.8)
    ax.set_xscale("log")
    ticks = [0.5, 0.75, 1, target, 2, 3, 4, 6]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_title(cpu, fontsize=10)
    ax.set_xlabel("PyTorch time / JAX time, per round (> 1: JAX faster)")
    ax.grid(axis="x", alpha=0.3)
  shown = [layout for layout in layouts if layout in legend]
  fig.legend([legend[layout] for layout in shown], shown, loc="lower center", ncol=len(shown),
             fontsize=9, title="JAX layout", title_fontsize=9)
  fig.tight_layout(rect=(0, 0.07, 1, 1))
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  partial = out + ".partial.png"
  fig.savefig(partial, dpi=110)
  plt.close(fig)
  os.replace(partial, out)


def median_table(cpu, by_case, layouts, target):
  """A markdown table of one machine's median per-round ratio per case and layout, with
  the number of rounds; bold where it reaches `target`."""
  def cell(ratios):
    if not ratios:
      return "-"
    median = np.median(ratios)
    text = f"**{median:.2f}x**" if median >= target else f"{median:.2f}x"
    return f"{text} ({len(ratios)})"
  lines = [f"| {cpu}: case | " + " | ".join(layouts) + " |",
           "|---" * (len(layouts) + 1) + "|"]
  lines += [f"| `{case}` | " + " | ".join(cell(by_layout[l]) for l in layouts) + " |"
            for case, by_layout in by_case.items()]
  return "\n".join(lines)


def main(argv):
  del argv
  unknown = [l for l in _LAYOUTS.value if l not in LAYOUTS]
  if unknown:
    raise ValueError(f"--layouts: unknown {unknown}; known: {', '.join(LAYOUTS)}")
  machines = load_rounds(_RESULTS.value, _LAYOUTS.value)
  plot(machines, _LAYOUTS.value, _TARGET.value, _FIGURE.value)
  for cpu, by_case in machines.items():
    print(median_table(cpu, by_case, _LAYOUTS.value, _TARGET.value))


if __name__ == "__main__":
  app.run(main)
