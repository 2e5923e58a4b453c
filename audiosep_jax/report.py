"""The report of a finished run: PNG figures and <workdir>/report/index.md.

Reads, never recomputes: every number in index.md is formatted from a JSON file beside it
(<workdir>/diagnostics/<family>.json, <workdir>/separations/<family>/metrics.json); the
training curves come from <workdir>/tb/<family>/sigma_<level>/scalars.jsonl. All families
found in the workdir (with diagnostics, a separation or both) go into one report. Figures
(one set per family with diagnostics, and a separation figure per separated family):

  dilemma.png               discrimination (mean AUROC) against smoothness, a point per level
  cross_<family>.png        cross-likelihood heatmaps per level (clean, and at level noise)
  noise_<family>.png        in-class log p against sigma_test, a line per level
  probes_<family>.png       constant and pure-noise inputs, a line per source and level
  samples_<family>.png      prior samples, per level and source
  training_<family>.png     train and test nats per sample against step, per level
  separation_<family>.png   mix, truth and estimates of the first separated mix
"""
import glob
import io
import json
import os

import numpy as np
import soundfile
from matplotlib.colors import SymLogNorm
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from audiosep_jax import distributed
from audiosep_jax import train

REPORT_DIR = "report"
SNIPPET = 512  # samples of each waveform drawn in the sample and separation figures


# Reading -------------------------------------------------------------------------------

REQUIRED_KEYS = ("family", "source_names", "levels", "cross_log_prob", "auroc", "mean_auroc",
                 "noise_sensitivity", "constant_probe", "noise_probe", "score_norm",
                 "log_p_drop")


def load_diagnostics(workdir):
  """{family: results} from every <workdir>/diagnostics/*.json (clear error if malformed)."""
  found = {}
  for path in sorted(glob.glob(os.path.join(workdir, "diagnostics", "*.json"))):
    try:
      with open(path) as f:
        results = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"Diagnostics file {path} is not valid JSON: {e}") from e
    missing = [k for k in REQUIRED_KEYS if k not in results]
    if missing:
      raise ValueError(f"Diagnostics file {path} lacks the fields {missing}; rerun "
                       "--mode=diagnose.")
    found[results["family"]] = results
  return found


def load_scalars(workdir, family, sigma):
  """Rows {"step": int, name: float, ...} of <workdir>/tb/<family>/sigma_<level>/scalars.jsonl,
  one per step, in step order.

  The writer appends, so a run resumed from a checkpoint older than its last log line
  logs those steps again: of each (step, name) the last value written is kept.
  """
  path = os.path.join(workdir, "tb", family, train.level_name(sigma), "scalars.jsonl")
  if not os.path.isfile(path):
    return []
  by_step = {}
  with open(path) as f:
    for number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}, line {number}, is not JSON: {e}") from e
      if not isinstance(row, dict) or "step" not in row:
        raise ValueError(f"{path}, line {number}, has no \"step\".")
      by_step.setdefault(int(row["step"]), {}).update(row)
  return [by_step[step] for step in sorted(by_step)]


def separated_families(workdir):
  """Sorted names of the families with a <workdir>/separations/<family>/metrics.json."""
  paths = glob.glob(os.path.join(workdir, "separations", "*", "metrics.json"))
  return sorted(os.path.basename(os.path.dirname(p)) for p in paths)


def load_separation(workdir, family):
  """(metrics dict, None, [mix directories]) of one family, or (None, error text, [mix
  directories]) when its metrics.json cannot be read."""
  directory = os.path.join(workdir, "separations", family)
  path = os.path.join(directory, "metrics.json")
  mixes = [d for d in glob.glob(os.path.join(directory, "mix_*"))
           if os.path.isdir(d) and d.rsplit("_", 1)[1].isdigit()]
  mixes.sort(key=lambda d: int(d.rsplit("_", 1)[1]))
  try:
    with open(path) as f:
      metrics = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    return None, f"{path} could not be read: {e}", mixes
  if not isinstance(metrics, dict):
    return None, f"{path} does not hold a JSON object.", mixes
  return metrics, None, mixes


# Formatting ------------------------------------------------------------------------------


def fmt(value):
  """The one number format of the report (4 significant digits; n/a for non-finite)."""
  if value is None or not np.isfinite(value):
    return "n/a"
  return f"{float(value):.4g}"


def level_label(sigma):
  return "noiseless" if sigma == 0 else f"sigma={fmt(sigma)}"


def table(header, rows):
  """Markdown table lines: header [str], rows [[str]]."""
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(row) + " |" for row in rows]
  return lines + [""]


def as_array(nested):
  """JSON lists with None -> float array with NaN."""
  return np.array(nested, dtype=float)


# Figures -------------------------------------------------------------------------------


def save_figure(fig, path):
  """PNG, written atomically."""
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=110)
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    f.write(buffer.getvalue())
  os.replace(tmp, path)


def family_colors(families):
  palette = ("tab:blue", "tab:red", "tab:green", "tab:purple", "tab:orange")
  return {f: palette[i % len(palette)] for i, f in enumerate(families)}


DILEMMA_PANELS = ("left", "right")


def dilemma_xs(res):
  """The x values [L] of the two panels of dilemma.png: mean score norm, log p drop."""
  return as_array(res["score_norm"]["mean"]), as_array(res["log_p_drop"]["mean"])


def drop_label(all_results):
  """The right panel's x label, with each family's smoothness sigma if they differ."""
  sigmas = {family: fmt(res["log_p_drop"]["sigma"]) for family, res in all_results.items()}
  if len(set(sigmas.values())) == 1:
    return (f"drop of in-class log p at sigma_test={next(iter(sigmas.values()))} "
            "(nats/sample)  <- smoother")
  return ("drop of in-class log p (nats/sample)  <- smoother\nat sigma_test "
          + ", ".join(f"{s} ({f})" for f, s in sigmas.items()))


def left_out(all_results):
  """[(panel, family, sigma)] of the levels dilemma.png cannot place: x is n/a (e.g. an
  infinite log p drop); the figure marks them at the panel's right edge."""
  missing = []
  for family, res in all_results.items():
    for panel, x in zip(DILEMMA_PANELS, dilemma_xs(res)):
      missing += [(panel, family, sigma) for xi, sigma in zip(x, res["levels"])
                  if not np.isfinite(xi)]
  return missing


def dilemma_figure(all_results, path):
  """Mean AUROC against mean score norm (log) and against the log p drop, per family;
  a level with an n/a x is a triangle at the right edge, labelled "<sigma>: n/a"."""
  fig = Figure(figsize=(11, 4.5), layout="constrained")
  axes = fig.subplots(1, 2)
  colors = family_colors(list(all_results))
  for family, res in all_results.items():
    color = colors[family]
    levels = res["levels"]
    auroc_clean = as_array(res["mean_auroc"])
    auroc_noisy = as_array(res.get("mean_auroc_level_noise", res["mean_auroc"]))
    for ax, x in zip(axes, dilemma_xs(res)):
      ax.plot(x, auroc_clean, "-o", color=color, label=f"{family}: clean inputs")
      ax.plot(x, auroc_noisy, "--s", color=color, alpha=0.5, markersize=4,
              label=f"{family}: inputs at the level's noise")
      edge = ax.get_yaxis_transform()  # x in axes coordinates, y in data coordinates
      for xi, yi, noisy, sigma in zip(x, auroc_clean, auroc_noisy, levels):
        if np.isfinite(xi) and np.isfinite(yi):
          ax.annotate(fmt(sigma), (xi, yi), textcoords="offset points", xytext=(4, 4),
                      fontsize=8, color=color)
        elif np.isfinite(yi):
          for y, alpha in ((yi, 1.0), (noisy, 0.5)):
            ax.plot([1.0], [y], ">", color=color, alpha=alpha, transform=edge, clip_on=False)
          ax.annotate(f"{fmt(sigma)}: n/a", (1.0, yi), xycoords=edge, ha="right",
                      textcoords="offset points", xytext=(-6, 4), fontsize=8, color=color)
  axes[0].set_xscale("log")
  axes[0].set_xlabel("mean squared score per sample (log)  <- smoother")
  drops = np.concatenate([as_array(r["log_p_drop"]["mean"]) for r in all_results.values()])
  drops = drops[np.isfinite(drops)]
  if drops.size and np.all(drops > 0):
    axes[1].set_xscale("log")
  else:
    positive = np.abs(drops[drops != 0])
    axes[1].set_xscale("symlog", linthresh=float(positive.min()) if positive.size else 1.0)
  axes[1].set_xlabel(drop_label(all_results))
  aurocs = np.concatenate([as_array(r[key]) for r in all_results.values()
                           for key in ("mean_auroc", "mean_auroc_level_noise") if key in r])
  aurocs = aurocs[np.isfinite(aurocs)]
  low = min(0.4, float(aurocs.min()) - 0.05) if aurocs.size else 0.0
  for ax in axes:
    ax.axhline(0.5, color="gray", lw=0.8, ls=":")
    ax.set_ylabel("mean AUROC (discrimination)")
    ax.set_ylim(max(low, 0.0), 1.02)
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8, loc="lower left")
  fig.suptitle("The dilemma: each point a fine-tuning level (labelled with its sigma); "
               "good priors sit top left")
  save_figure(fig, path)


def heatmap(ax, matrix, names, title):
  """matrix [K, J] on a symmetric-log colour scale (log p spans orders of magnitude below
  zero), its values written in, the diagonal framed."""
  finite = matrix[np.isfinite(matrix)]
  low, high = (float(finite.min()), float(finite.max())) if finite.size else (-1.0, 1.0)
  norm = SymLogNorm(linthresh=1.0, vmin=low, vmax=max(high, low + 1e-6))
  image = ax.imshow(matrix, cmap="viridis", norm=norm)
  ax.set_xticks(range(len(names)), names, rotation=45, fontsize=7)
  ax.set_yticks(range(len(names)), names, fontsize=7)
  ax.set_title(title, fontsize=9)
  for k in range(matrix.shape[0]):
    for j in range(matrix.shape[1]):
      value = matrix[k, j]
      bright = np.isfinite(value) and norm(value) > 0.6
      ax.text(j, k, fmt(value if np.isfinite(value) else None), ha="center", va="center",
              fontsize=7, color="black" if bright else "white")
    ax.add_patch(Rectangle((k - 0.5, k - 0.5), 1, 1, fill=False, edgecolor="red", lw=1.5))
  return image


def cross_figure(res, path):
  """Rows: clean inputs, inputs at the level's noise (and the paper's latent-only term)."""
  names, levels = res["source_names"], res["levels"]
  rows = [("clean", res["cross_log_prob"])]
  if "cross_log_prob_level_noise" in res:
    rows.append(("at level noise", res["cross_log_prob_level_noise"]))
  if "cross_latent_log_prob_paper_clipped" in res:
    rows.append(("latent only, clipped (paper)", res["cross_latent_log_prob_paper_clipped"]))
  fig = Figure(figsize=(3.6 * len(levels), 3.3 * len(rows)), layout="constrained")
  axes = np.array(fig.subplots(len(rows), len(levels), squeeze=False))
  for r, (label, values) in enumerate(rows):
    for l, sigma in enumerate(levels):
      image = heatmap(axes[r, l], as_array(values[l]), names, f"{level_label(sigma)}, {label}")
      fig.colorbar(image, ax=axes[r, l], shrink=0.8)
    axes[r, 0].set_ylabel("prior k")
  for ax in axes[-1]:
    ax.set_xlabel("source j")
  fig.suptitle(f"{res['family']}: mean log p_k(s_j), nats/sample (diagonal framed; colours "
               "on a symmetric log scale)")
  save_figure(fig, path)


def noise_figure(res, path):
  """One panel per source: in-class log p against sigma_test, a line per level."""
  names, levels = res["source_names"], res["levels"]
  sens = res["noise_sensitivity"]
  values = as_array(sens["table"])  # [L, S, K]
  fig = Figure(figsize=(3.6 * len(names), 3.4), layout="constrained")
  axes = np.atleast_1d(fig.subplots(1, len(names)))
  for k, name in enumerate(names):
    for l, sigma in enumerate(levels):
      axes[k].plot(sens["test_sigmas"], values[l, :, k], "-o", color=f"C{l}", markersize=3,
                   label=level_label(sigma))
      if sigma > 0:
        axes[k].axvline(sigma, color=f"C{l}", ls=":", lw=0.8)
    axes[k].set_xscale("symlog", linthresh=1e-3)
    axes[k].set_xlim(0.0, 1.2 * max(sens["test_sigmas"]))
    axes[k].set_yscale("symlog", linthresh=1.0)
    axes[k].set_title(f"prior {name} on {name} + sigma_test eps", fontsize=9)
    axes[k].set_xlabel("sigma_test")
    axes[k].grid(alpha=0.3)
  axes[0].set_ylabel("mean log p (nats/sample, symlog)")
  axes[-1].legend(fontsize=7)
  fig.suptitle(f"{res['family']}: noise sensitivity (dotted: each level's own sigma)")
  save_figure(fig, path)


def probes_figure(res, path):
  """Top: constant inputs; bottom: pure noise; a panel per level, a line per prior."""
  names, levels = res["source_names"], res["levels"]
  const, noise = res["constant_probe"], res["noise_probe"]
  in_class = as_array(res["in_class_log_prob"]) if "in_class_log_prob" in res else None
  fig = Figure(figsize=(3.4 * len(levels), 6.2), layout="constrained")
  axes = np.array(fig.subplots(2, len(levels), squeeze=False))
  for l, sigma in enumerate(levels):
    for k, name in enumerate(names):
      axes[0, l].plot(const["values"], as_array(const["log_prob"][l][k]), color=f"C{k}",
                      label=name)
      axes[1, l].plot(noise["stds"], as_array(noise["log_prob"][l][k]), "-o", color=f"C{k}",
                      markersize=3, label=name)
      if in_class is not None and np.isfinite(in_class[l, k]):
        for ax in axes[:, l]:
          ax.axhline(in_class[l, k], color=f"C{k}", ls="--", lw=0.8)
    axes[0, l].set_title(f"{level_label(sigma)}: constant c", fontsize=9)
    axes[0, l].set_xlabel("c")
    axes[1, l].set_title(f"{level_label(sigma)}: N(0, std^2) noise", fontsize=9)
    axes[1, l].set_xscale("symlog", linthresh=1e-3)
    axes[1, l].set_xlim(0.0, 1.2 * max(noise["stds"]))
    axes[1, l].set_xlabel("std")
    for ax in axes[:, l]:
      ax.set_yscale("symlog", linthresh=1.0)
      ax.grid(alpha=0.3)
  axes[0, 0].set_ylabel("mean log p (nats/sample, symlog)")
  axes[1, 0].set_ylabel("mean log p (nats/sample, symlog)")
  axes[0, -1].legend(fontsize=7)
  fig.suptitle(f"{res['family']}: probes (dashed: each prior's in-class log p on clean data)")
  save_figure(fig, path)


def samples_figure(res, samples, path):
  """samples [L, K, N, T]: the first SNIPPET samples of draw 0, a row per level."""
  names, levels = res["source_names"], res["levels"]
  fig = Figure(figsize=(3.2 * len(names), 1.6 * len(levels)), layout="constrained")
  axes = np.array(fig.subplots(len(levels), len(names), squeeze=False, sharex=True))
  for l, sigma in enumerate(levels):
    for k, name in enumerate(names):
      axes[l, k].plot(samples[l, k, 0, :SNIPPET], lw=0.7)
      axes[l, k].set_title(f"{name}, {level_label(sigma)}", fontsize=8)
      axes[l, k].tick_params(labelsize=6)
  fig.suptitle(f"{res['family']}: samples from each prior (first "
               f"{min(SNIPPET, samples.shape[-1])} samples)")
  save_figure(fig, path)


def training_figure(family, names, levels, scalars, path):
  """A panel per level: train (lines) and test (dots) nats per sample per source."""
  fig = Figure(figsize=(3.6 * len(levels), 3.2), layout="constrained")
  axes = np.atleast_1d(fig.subplots(1, len(levels)))
  for ax, sigma, rows in zip(axes, levels, scalars):
    for k, name in enumerate(names):
      for key, style, label in ((f"nats_per_sample/{name}", "-", name),
                                (f"test_nats_per_sample/{name}", "o", None)):
        points = [(r["step"], r[key]) for r in rows if key in r]
        if points:
          steps, values = zip(*points)
          ax.plot(steps, values, style, color=f"C{k}", markersize=3, lw=0.8, label=label)
    ax.set_title(f"{family}, {level_label(sigma)}", fontsize=9)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
  axes[0].set_ylabel("nats/sample (line: train, dots: test)")
  axes[-1].legend(fontsize=7)
  save_figure(fig, path)


def read_wav(path):
  audio, _ = soundfile.read(path, dtype="float32", always_2d=True)
  return audio[:, 0]


def separation_figure(family, names, mix_dir, path):
  """The mix, then per source the truth and the estimate (first SNIPPET samples)."""
  fig = Figure(figsize=(10, 1.5 * (len(names) + 1)), layout="constrained")
  axes = np.atleast_1d(fig.subplots(len(names) + 1, 1, sharex=True))
  mix_path = os.path.join(mix_dir, "mix.wav")
  if os.path.isfile(mix_path):
    axes[0].plot(read_wav(mix_path)[:SNIPPET], color="black", lw=0.7)
  axes[0].set_title(f"{family}: {os.path.basename(mix_dir)}, mix", fontsize=9)
  for k, name in enumerate(names):
    for stems, color in ((("true", "truth"), "gray"), (("estimate",), "tab:blue")):
      for stem in stems:
        wav = os.path.join(mix_dir, f"{stem}_{name}.wav")
        if os.path.isfile(wav):
          axes[k + 1].plot(read_wav(wav)[:SNIPPET], color=color, lw=0.7, label=stem)
          break
    axes[k + 1].set_title(name, fontsize=9)
    axes[k + 1].legend(fontsize=7, loc="upper right")
  axes[-1].set_xlabel("sample")
  save_figure(fig, path)


# The markdown ------------------------------------------------------------------------------


HOW_TO_READ = """\
How to read it. Each prior k scores audio in nats per sample (higher = more likely).
A prior is *discriminative* when its own source is much likelier than the others (a
dominant diagonal in the cross-likelihood tables, AUROC near 1) and *smooth* when slightly
perturbed in-class audio stays likely (a small drop of log p under noise, a small score
norm): annealed Langevin separation needs both. Level 0 is the noiseless prior; level
sigma is the prior fine-tuned on x + sigma * eps, evaluated with its density at sigma.
"""


def summary_section(all_results):
  lines = ["## Summary: discrimination against smoothness", "", "![dilemma](dilemma.png)", "",
           "x: smoothness (left: mean squared score per sample at x = s + tau eps, tau = the "
           "level's sigma, the smoothness sigma at level 0; right: the drop of in-class log p "
           "when noise of the family's smoothness sigma, column drop sigma_test, is added), "
           "y: mean AUROC over the priors (solid: clean test data; dashed: test data noised "
           "at the level's sigma). Chance is 0.5. A prior that escapes the dilemma sits top "
           "left; the 2020 finding is a line from top right (noiseless: discriminative but "
           "peaked) to bottom left (fine-tuned: smooth but not discriminative).", ""]
  missing = left_out(all_results)
  for panel in DILEMMA_PANELS:
    names = [f"{family} {level_label(sigma)}" for p, family, sigma in missing if p == panel]
    if names:
      lines += [f"Not placed in the {panel} panel (x is n/a, e.g. an infinite log p drop; "
                "drawn as a triangle at its right edge): " + ", ".join(names) + ".", ""]
  rows = []
  for family, res in all_results.items():
    for l, sigma in enumerate(res["levels"]):
      noisy = res.get("mean_auroc_level_noise")
      rows.append([family, fmt(sigma), fmt(res["mean_auroc"][l]),
                   fmt(noisy[l]) if noisy else "n/a", fmt(res["score_norm"]["input_sigmas"][l]),
                   fmt(res["score_norm"]["mean"][l]), fmt(res["log_p_drop"]["sigma"]),
                   fmt(res["log_p_drop"]["mean"][l])])
  lines += table(["family", "level sigma", "mean AUROC (clean)", "mean AUROC (level noise)",
                  "score input sigma", "mean squared score", "drop sigma_test",
                  "log p drop"], rows)
  return lines


def matrix_table(names, matrix, corner):
  return table([corner] + names, [[name] + [fmt(v) for v in row]
                                  for name, row in zip(names, matrix)])


def family_section(res, figures, json_link, scalars_links):
  family, names, levels = res["family"], res["source_names"], res["levels"]
  lines = [f"## {family}", "",
           f"All numbers: [{json_link}]({json_link}) ({res.get('num_examples')} test examples "
           f"of {res.get('length')} samples, seed {res.get('seed')}; density: "
           f"{res.get('density', 'n/a')}).", ""]

  lines += ["### Cross-likelihood", "", f"![cross-likelihood]({figures['cross']})", "",
            "Mean log p_k(s_j) in nats per sample, row = prior k, column = source j. A "
            "discriminative prior has the largest value of its row on the diagonal.", ""]
  variants = [("clean test data", "cross_log_prob"),
              ("test data plus the level's noise", "cross_log_prob_level_noise"),
              (f"latent term only, clipped at {fmt(res.get('paper_clip'))} per sample (the "
               "2020 paper's quantity, not a log-likelihood)",
               "cross_latent_log_prob_paper_clipped")]
  for l, sigma in enumerate(levels):
    for label, key in variants:
      if key in res:
        lines += [f"{level_label(sigma)}, {label}:", ""]
        lines += matrix_table(names, res[key][l], "prior \\ source")

  lines += ["### AUROC", "",
            "Per prior: its own source's examples against the other sources' examples, "
            "scored by the per-example mean log p (1 = perfect, 0.5 = chance).", ""]
  rows = [[fmt(sigma)] + [fmt(v) for v in res["auroc"][l]] + [fmt(res["mean_auroc"][l])]
          for l, sigma in enumerate(levels)]
  lines += ["Clean test data:", ""] + table(["level sigma"] + names + ["mean"], rows)
  if "auroc_level_noise" in res:
    rows = [[fmt(sigma)] + [fmt(v) for v in res["auroc_level_noise"][l]]
            + [fmt(res["mean_auroc_level_noise"][l])] for l, sigma in enumerate(levels)]
    lines += ["Test data plus the level's noise:", ""] + table(
        ["level sigma"] + names + ["mean"], rows)

  sens = res["noise_sensitivity"]
  lines += ["### Noise sensitivity", "", f"![noise sensitivity]({figures['noise']})", "",
            "In-class mean log p_k(s_k + sigma_test eps), rows sigma_test, columns the level "
            "the prior was fine-tuned at; mean over the sources (n/a: log p = -inf for some "
            "example, e.g. the noiseless WaveNet, whose density is 0 outside [-1, 1], on "
            "sources that reach +-1):", ""]
  header = ["sigma_test \\ level"] + [fmt(s) for s in levels]
  lines += table(header, [[fmt(t)] + [fmt(sens["mean"][l][i]) for l in range(len(levels))]
                          for i, t in enumerate(sens["test_sigmas"])])
  for k, name in enumerate(names):
    lines += [f"Prior {name}:", ""]
    lines += table(header, [[fmt(t)] + [fmt(sens["table"][l][i][k]) for l in range(len(levels))]
                            for i, t in enumerate(sens["test_sigmas"])])

  lines += ["### Smoothness", "",
            "Mean squared score per sample (squared norm of grad_x log p over the example, "
            "divided by its length) at x = s + tau eps, and the drop of in-class log p at "
            f"sigma_test = {fmt(res['log_p_drop']['sigma'])}; per source:", ""]
  rows = [[fmt(sigma), fmt(res["score_norm"]["input_sigmas"][l])]
          + [fmt(v) for v in res["score_norm"]["per_source"][l]]
          + [fmt(v) for v in res["log_p_drop"]["per_source"][l]] for l, sigma in enumerate(levels)]
  lines += table(["level sigma", "tau"] + [f"score {n}" for n in names]
                 + [f"drop {n}" for n in names], rows)

  const, noise = res["constant_probe"], res["noise_probe"]
  lines += ["### Probes", "", f"![probes]({figures['probes']})", "",
            "Mean log p of constant signals and of pure Gaussian noise (averaged over "
            f"{noise.get('examples_per_std')} draws per std). Compare with the in-class "
            "log p above: a prior that rates these higher than its own source can be "
            "fooled by silence or hiss. n/a: log p = -inf (the noiseless WaveNet's density "
            "is 0 outside [-1, 1]).", ""]
  for l, sigma in enumerate(levels):
    lines += [f"{level_label(sigma)}, constant c:", ""]
    lines += table(["c"] + names, [[fmt(c)] + [fmt(const["log_prob"][l][k][i])
                                               for k in range(len(names))]
                                   for i, c in enumerate(const["values"])])
    lines += [f"{level_label(sigma)}, noise std:", ""]
    lines += table(["std"] + names, [[fmt(s)] + [fmt(noise["log_prob"][l][k][i])
                                                 for k in range(len(names))]
                                     for i, s in enumerate(noise["stds"])])

  samples = res.get("samples", {})
  if "samples" in figures:
    lines += ["### Prior samples", "", f"![samples]({figures['samples']})", ""]
    if "rms" in samples:
      rows = [[fmt(sigma)] + [f"{fmt(r)} / {fmt(m)}" for r, m in
                              zip(samples["rms"][l], samples["max_abs"][l])]
              for l, sigma in enumerate(levels)]
      lines += ["RMS / max |x| of the samples:", ""] + table(["level sigma"] + names, rows)
    for l, sigma in enumerate(levels):
      wavs = samples.get("wavs", [])
      if l < len(wavs) and wavs[l]:
        links = ", ".join(f"[{os.path.basename(w)}](../diagnostics/{w})" for w in wavs[l])
        lines += [f"{level_label(sigma)}: {links}", ""]

  if "training" in figures:
    lines += ["### Training curves", "", f"![training]({figures['training']})", "",
              "Nats per sample of each prior (lines: training batches, dots: the test set), "
              "a panel per level; fine-tuning levels count their steps from 0. Data: "
              + ", ".join(f"[{os.path.basename(os.path.dirname(p))}]({p})"
                          for p in scalars_links), ""]
  return lines


SEPARATION_COLUMNS = (("SI-SDR", ("si_sdr",)), ("SI-SDRi", ("si_sdri",)), ("SDR", ("sdr",)),
                      ("mix SI-SDR (baseline)", ("mix_si_sdr",)))


def metric_value(metrics, keys, name):
  """metrics[key][name] for the first key present, if it is a number; else None."""
  for key in keys:
    group = metrics.get(key)
    if isinstance(group, dict):
      value = group.get(name)
      return value if isinstance(value, (int, float)) else None
  return None


def separation_names(metrics, results, mixes):
  """Source names of a separation: from its metrics, else from its family's diagnostics,
  else from the estimate WAVs of its first mix."""
  names = (metrics or {}).get("source_names") or (results or {}).get("source_names")
  if names or not mixes:
    return list(names or [])
  wavs = sorted(glob.glob(os.path.join(mixes[0], "estimate_*.wav")))
  return [os.path.basename(w)[len("estimate_"):-len(".wav")] for w in wavs]


def separation_section(family, metrics, error, figure, wav_links):
  lines = [f"## Separation: {family}", ""]
  if error:
    return lines + [error, ""]
  names = metrics.get("source_names") or sorted(metrics.get("si_sdr") or {})
  columns = [(label, keys) for label, keys in SEPARATION_COLUMNS
             if any(isinstance(metrics.get(k), dict) for k in keys)]
  lines += [f"Metrics: [../separations/{family}/metrics.json]"
            f"(../separations/{family}/metrics.json) (dB, mean over "
            f"{metrics.get('num_mixes', 'the')} test mixes; the baseline takes the mix itself "
            "as every estimate; SI-SDRi = SI-SDR - baseline).", ""]
  rows = [[name] + [fmt(metric_value(metrics, keys, name)) for _, keys in columns]
          for name in names]
  lines += table(["source"] + [label for label, _ in columns], rows)
  bad = metrics.get("non_finite_estimates")
  if isinstance(bad, int) and bad > 0:
    lines += [f"{bad} estimated source(s) hold NaN or inf: the sampler diverged "
              "(config.separation.delta?). Their metrics are null in metrics.json, and a "
              "mean over mixes that includes one is n/a above.", ""]
  if figure:
    lines += [f"![separation]({figure})", ""]
  if wav_links:
    lines += ["Audio: " + ", ".join(f"[{label}]({link})" for label, link in wav_links), ""]
  return lines


# The orchestrator -------------------------------------------------------------------------


def write_text(path, text):
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def run(config, workdir):
  """--mode=report: figures and <workdir>/report/index.md (written by process 0 only);
  returns the index.md path (None on the other processes)."""
  del config  # Everything comes from the workdir's files.
  if not distributed.is_primary():
    return None
  all_results = load_diagnostics(workdir)
  separated = separated_families(workdir)
  if not all_results and not separated:
    raise FileNotFoundError(
        f"Neither diagnostics ({os.path.join(workdir, 'diagnostics', '<family>.json')}) nor "
        f"separations ({os.path.join(workdir, 'separations', '<family>', 'metrics.json')}) "
        "to report; run --mode=diagnose or --mode=separate first.")
  out = os.path.join(workdir, REPORT_DIR)
  os.makedirs(out, exist_ok=True)
  lines = [f"# Report: {os.path.basename(os.path.abspath(workdir))}", ""]
  undiagnosed = [family for family in separated if family not in all_results]
  if undiagnosed:
    lines += [f"No diagnostics for {', '.join(undiagnosed)} (run --mode=diagnose): "
              "separation only.", ""]
  if all_results:
    lines += [HOW_TO_READ]
    dilemma_figure(all_results, os.path.join(out, "dilemma.png"))
    lines += summary_section(all_results)

  for family, res in all_results.items():
    figures = {}
    for name, draw in (("cross", cross_figure), ("noise", noise_figure),
                       ("probes", probes_figure)):
      figures[name] = f"{name}_{family}.png"
      draw(res, os.path.join(out, figures[name]))
    npy = res.get("samples", {}).get("npy")
    if npy and os.path.isfile(os.path.join(workdir, "diagnostics", npy)):
      figures["samples"] = f"samples_{family}.png"
      samples_figure(res, np.load(os.path.join(workdir, "diagnostics", npy)),
                     os.path.join(out, figures["samples"]))
    scalars = [load_scalars(workdir, family, s) for s in res["levels"]]
    scalars_links = [os.path.join("..", "tb", family, train.level_name(s), "scalars.jsonl")
                     for s, rows in zip(res["levels"], scalars) if rows]
    if scalars_links:
      figures["training"] = f"training_{family}.png"
      training_figure(family, res["source_names"], res["levels"], scalars,
                      os.path.join(out, figures["training"]))
    lines += family_section(res, figures, f"../diagnostics/{family}.json", scalars_links)

  for family in separated:
    metrics, error, mixes = load_separation(workdir, family)
    names = separation_names(metrics, all_results.get(family), mixes)
    figure = None
    if mixes:
      figure = f"separation_{family}.png"
      separation_figure(family, names, mixes[0], os.path.join(out, figure))
    wav_links = []
    for mix_dir in mixes:
      for wav in sorted(glob.glob(os.path.join(mix_dir, "*.wav"))):
        label = f"{os.path.basename(mix_dir)}/{os.path.basename(wav)}"
        wav_links.append((label, os.path.relpath(wav, out)))
    lines += separation_section(family, metrics, error, figure, wav_links)

  path = os.path.join(out, "index.md")
  write_text(path, "\n".join(lines))
  return path
