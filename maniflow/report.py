"""The experiment report: condition x task tables, the three questions in words, figures.

    {out}/report.md        tables, answers, figures (relative links)
    {out}/results.json     every cell's record and the baselines, as evaluated
    {out}/success.png      closed-loop success rate per task and condition (mean over seeds, 95% CI)
    {out}/action_error.png offline action error (joint units) per task and condition
    {out}/training.png     validation loss curves of every cell
    {out}/strips/*.png     closed-loop roll-outs: observed frames with the overlay, outcome bar
    {out}/quality-{label}.png  error distributions of each path label against the oracle, when
                           measured (`maniflow path-quality`, prepare-data)

Built from `evaluate_cell` records only, so the same report comes out of a train-matrix run,
the `evaluate` flow and `maniflow evaluate`.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np

from maniflow.conditions import CONDITIONS
from maniflow.policy import MODEL_VERSION
from maniflow.stats import (
    MIN_SEEDS,
    Estimate,
    bootstrap,
    detectable_difference,
    in_words,
    paired_difference,
    seed_variance,
)
from maniflow.storage import temp_sibling, write_json
from maniflow.workspace import Cell

ENV_ORDER = ("cluttered", "clean")


def _cell(record: dict) -> Cell:
    return Cell(**record["cell"])


# An arm of the matrix: (condition, path label), the label None for a condition that draws no
# path (its cells are the same whatever the label).
Arm = tuple[str, str | None]
ORACLE = "oracle"  # the ground truth's provider: the upper bound other labels are compared with


def _arm(cell: Cell) -> Arm:
    return cell.condition, None if CONDITIONS[cell.condition].dataset == "original" else cell.label


def _key(record: dict) -> tuple[str, Arm, str]:
    """(train env, arm, task): a cell less its seed."""
    c = _cell(record)
    return c.env, _arm(c), c.task


def _arms(cells: dict) -> list[Arm]:
    """The arms present, in the conditions' order, then by label."""
    order = CONDITIONS.names()
    return sorted({k[1] for k in cells}, key=lambda a: (order.index(a[0]), a[1] or ""))


def _labels(cells: dict) -> list[str]:
    return sorted({k[1][1] for k in cells if k[1][1] is not None})


def ground_truth_labels(records: list[dict]) -> set[str]:
    """Labels whose training paths came from the oracle on every frame (by the provider recorded
    with each cell; records from before that was recorded go by the label's name)."""
    def truth(r: dict) -> bool:
        if "train_paths" not in r:
            return _cell(r).label == ORACLE
        paths = r["train_paths"] or {}
        return paths.get("kind") == ORACLE and not paths.get("frames_skipped")  # every frame's own path

    return {_cell(r).label for r in records if truth(r)}


def arm_name(arm: Arm, labels: list[str], titles: bool = False) -> str:
    """The condition (its title with `titles`), and the path label when the matrix has several."""
    name = CONDITION_TITLES.get(arm[0], arm[0]) if titles else arm[0]
    return name if arm[1] is None or len(labels) < 2 else f"{name} [{arm[1]}]"


def _outcomes(records: list[dict]) -> dict:
    """(train env, arm, task) -> {seed: success list}."""
    out: dict = defaultdict(dict)
    for r in records:
        out[_key(r)][_cell(r).seed] = r["closed_loop"]["success"]
    return out


def _stack(cells: dict, keys: list) -> np.ndarray | None:
    """(cells, seeds, layouts) outcomes of `keys` over the seeds they all have; None when they
    share no seed or their layout counts differ (then they cannot be pooled)."""
    seeds = sorted(set.intersection(*(set(cells[k]) for k in keys))) if keys else []
    if not seeds or len({len(cells[k][s]) for k in keys for s in seeds}) > 1:
        return None
    return np.array([[cells[k][s] for s in seeds] for k in keys], np.float64)


def _paired(cells: dict, keys_a: list, keys_b: list):
    """(tasks, seeds, layouts) outcomes of cells a and b on the seeds all of them have."""
    x = _stack(cells, keys_a + keys_b)
    return (None, None) if x is None else (x[:len(keys_a)], x[len(keys_a):])


QUESTIONS = {
    "path": ("Does a drawn path help?", "current overlay vs original RGB"),
    "initial": ("Does the initial-frame overlay help?", "initial + current overlay vs current overlay: memory under "
                "occlusion"),
    "clutter": ("Does cluttered training help?", "cluttered vs clean training data, evaluated on cluttered scenes"),
    "vlm": ("How much of the overlay's effect is lost to VLM path error?", "the same condition trained on a VLM's "
            "paths vs on the ground truth's (oracle, the upper bound)"),
}


def _difference(xa: np.ndarray, xb: np.ndarray, name_a: str, name_b: str, seed_var: float) -> str:
    """One comparison in words: the paired difference, what its interval covers, what it resolves."""
    d = paired_difference(xa, xb)
    t, s, e = xa.shape
    resolves = 100 * detectable_difference(t, s, e, seed_var if d.over_seeds else 0.0)
    design = f"{t} task(s), {s} seed(s) x {e} layouts"
    if d.over_seeds:
        return f"{in_words(name_a, name_b, d)}; {design}, which resolve differences beyond about ±{resolves:.0f} points"
    return (f"{in_words(name_a, name_b, d)}; {design}: between these trained weights the layouts resolve "
            f"differences beyond about ±{resolves:.0f} points")


def answers(records: list[dict]) -> list[tuple[str, str, list[str]]]:
    """The three questions as (question, what is compared, one sentence per comparison the
    matrix allows). Tasks are pooled (each weighs the same) when they share seeds and layout
    counts, else answered one by one; each sentence says what its interval covers and the
    difference its design resolves (95% interval half-width, docs/evaluation.md)."""
    cells = _outcomes(records)
    envs = [e for e in ENV_ORDER if any(k[0] == e for k in cells)]
    tasks = sorted({k[2] for k in cells})
    labels = _labels(cells)
    seed_var = seed_variance([x[0] for x in (_stack(cells, [k]) for k in cells) if x is not None])

    def paths(label: str) -> str:
        return f", {label} paths" if len(labels) > 1 else ""

    def compare(a: tuple, b: tuple, name_a: str, name_b: str) -> str | None:
        common = [t for t in tasks if (*a, t) in cells and (*b, t) in cells]
        xa, xb = _paired(cells, [(*a, t) for t in common], [(*b, t) for t in common])
        if xa is not None:
            line = _difference(xa, xb, name_a, name_b, seed_var)
            if len(common) > 1:
                line += " (per task: " + ", ".join(
                    f"{task} {100 * (xa[i].mean() - xb[i].mean()):+.0f}" for i, task in enumerate(common)) + ")"
            return line + "."
        per_task = [(t, _paired(cells, [(*a, t)], [(*b, t)])) for t in common]
        per_task = [f"{t}: {_difference(x[0], x[1], name_a, name_b, seed_var)}" for t, x in per_task
                    if x[0] is not None]
        return ("tasks not pooled (their seeds or layout counts differ): " + "; ".join(per_task) + ".") \
            if per_task else None

    lines = {
        "path": [compare((e, ("overlay_current", lb)), (e, ("original", None)), f"overlay (trained on {e}{paths(lb)})",
                         "original RGB") for e in envs for lb in labels],
        "initial": [compare((e, ("overlay_initial_current", lb)), (e, ("overlay_current", lb)),
                            f"initial + current overlay ({e}{paths(lb)})", "current overlay only")
                    for e in envs for lb in labels],
        "clutter": [compare(("cluttered", arm), ("clean", arm), f"training on cluttered ({arm_name(arm, labels)})",
                            "training on clean") for arm in _arms(cells)],
    }
    truth = sorted(ground_truth_labels(records) & set(labels))
    if truth and len(labels) > 1:  # only a matrix with the path label as an axis asks it
        lines["vlm"] = [lost_line(compare((e, arm), (e, (arm[0], t)), f"{arm[0]} on {arm[1]} paths ({e})",
                                          f"on {t} paths (the ground truth)"), cells, e, arm, t)
                        for t in truth for e in envs for arm in _arms(cells) if arm[1] not in (None, *truth)]
    return [(*QUESTIONS[k], [x for x in found if x]) for k, found in lines.items()]


def lost_line(line: str | None, cells: dict, env: str, arm: Arm, truth: str) -> str | None:
    """The comparison, with the share of the condition's gain over original RGB that the label's
    paths lose: on the tasks and seeds all three arms share, as the paired line is; stated only
    when the ground truth's own gain has an interval above zero."""
    tasks = [t for t in sorted({k[2] for k in cells})
             if all((env, a, t) in cells for a in (arm, (arm[0], truth), ("original", None)))]
    x = _stack(cells, [(env, a, t) for a in (arm, (arm[0], truth), ("original", None)) for t in tasks])
    if line is None or x is None:
        return line
    vlm, gt, original = x[:len(tasks)], x[len(tasks):2 * len(tasks)], x[2 * len(tasks):]
    gain = paired_difference(gt, original)
    if gain.low <= 0:
        return line[:-1] + (f"; the condition's gain over original RGB on {truth} paths ({100 * gain.mean:+.1f} "
                            "points) is not distinguishable from zero here, so no share of it can be stated.")
    lost = 1 - (vlm.mean() - original.mean()) / (gt.mean() - original.mean())
    return line[:-1] + (f"; its gain over original RGB is {100 * gain.mean:+.1f} points on {truth} paths and "
                        f"{100 * (vlm.mean() - original.mean()):+.1f} on {arm[1]} paths: {100 * lost:.0f}% of the "
                        "effect lost (point estimate).")


def _cell_estimate(cells, key) -> Estimate | None:
    if key not in cells:
        return None
    return bootstrap(np.array([cells[key][s] for s in sorted(cells[key])], np.float64))


def _seed_rates(cells, key) -> list[float]:
    return [float(np.mean(cells[key][s])) for s in sorted(cells[key])] if key in cells else []


def _mean_offline(records, key, field="action_mae"):
    values = [r["offline"][field] for r in records
              if _key(r) == key and r.get("offline")]
    return float(np.mean(values)) if values else None


PLATEAU_GAIN = 0.05  # a closing quarter of epochs that still lowers the best validation loss more is under-trained
CONDITION_TITLES = {"original": "original", "overlay_current": "current overlay",
                    "overlay_initial_current": "initial + current"}


# The evaluation settings that make a protocol (the rest, device or batch size, change no result).
PROTOCOL = {"env": None, "seed": None, "episodes": None, "execute_steps": None, "inference_steps": None,
            "paths": None, "checkpoint": "best"}  # with the value of records that predate the setting


def check_protocol(records: list[dict]) -> None:
    """One report compares one model version evaluated under one protocol: the same evaluation
    settings for every cell and, per task, the same layouts."""
    versions = sorted({r.get("model_version", 1) for r in records})
    if len(versions) > 1:
        raise ValueError(f"the records come from model versions {versions}: one report compares one version "
                         "(retrain or evaluate the older runs apart)")
    def setting(r, k):
        return json.dumps((r.get("eval") or {}).get(k, PROTOCOL[k]), sort_keys=True)

    differ = [k for k in PROTOCOL if k != "paths" and len({setting(r, k) for r in records}) > 1]
    # Closed-loop paths come from the provider of the cell's own path label: one per label.
    if any(len({setting(r, "paths") for r in records if _cell(r).label == label}) > 1
           for label in {_cell(r).label for r in records}):
        differ.append("paths")
    if differ:
        raise ValueError(f"the cells were evaluated with different {', '.join(differ)}: one report compares cells "
                         "under one protocol and one checkpoint rule")
    for task in {_cell(r).task for r in records}:
        lists = {tuple((r.get("layouts") or {}).get("numbers", ())) for r in records if _cell(r).task == task}
        if len(lists) > 1:
            raise ValueError(f"{task}: the cells were evaluated on different layouts (or some before layouts were "
                             "recorded); evaluate them again under one protocol")


def protocol_lines(records: list[dict]) -> list[str]:
    """The report's header: protocol, simulator, intervals, checkpoints, code and model versions."""
    if not records:
        return ["No evaluated cells."]
    cfg = records[0]["eval"]
    seeds = sorted({_cell(r).seed for r in records})
    per_cell = min(len({_cell(r).seed for r in records if _key(r) == k}) for k in {_key(r) for r in records})
    layouts = {_cell(r).task: r.get("layouts") for r in records}
    sims = sorted({r.get("simulator", "?") for r in records})
    code = sorted({(r.get("code_version") or {}).get("git") or (r.get("code_version") or {}).get("maniflow", "?")
                   for r in records}, key=str)
    rule = cfg.get("checkpoint", "best")
    sources = {}  # path label of the training data -> closed-loop path source
    for r in sorted(records, key=lambda r: _cell(r).label):
        if _arm(_cell(r))[1] is not None:
            paths = (r.get("eval") or {}).get("paths") or {}
            sources[_cell(r).label] = paths.get("label") or paths.get("kind", "?")
    policy_paths = (f"paths from `{next(iter(sources.values()), '?')}` in closed loop" if len(sources) < 2 else
                    "paths in closed loop from " + ", ".join(f"`{s}` for cells trained on `{lb}` paths"
                                                             for lb, s in sources.items()))
    fallback = sum(bool((r.get("checkpoint_choice") or {}).get("fallback_to_latest")) for r in records)
    lines = [
        f"- **Protocol**: closed loop on **{cfg.get('env', 'cluttered')}** scenes of {' and '.join(sims)}; per task "
        "the layouts the scripted expert solves, tried from the evaluation seed upwards (RoboTwin's rule), the "
        "same for every cell: " + "; ".join(f"{t}: {_layouts_text(x, cfg)}" for t, x in sorted(layouts.items())) + ".",
        f"- **Policy inputs**: {policy_paths}, {cfg.get('execute_steps', '?')} actions executed per predicted chunk.",
        f"- **Training seeds**: {seeds} ({per_cell} or more per cell). " + (
            "Intervals are 95% percentile bootstraps over training seeds and evaluation layouts (crossed: every "
            "seed sees every layout)." if per_cell >= MIN_SEEDS else
            f"With fewer than {MIN_SEEDS} seeds per cell the intervals cover evaluation layouts only, and no "
            "answer claims a difference between conditions."),
        "- **Checkpoints**: " + {
            "best": "each cell's lowest EMA validation loss (chosen without the evaluation layouts)"
                    + (f"; {fallback} cell(s) without validation episodes: their last epoch." if fallback else "."),
            "latest": "each cell's last epoch (EMA weights).",
            "every": "**optimistic**: the best of the checkpoints kept every k epochs, chosen by closed-loop "
                     "success on the evaluation layouts themselves; read the rates as upper bounds."}[rule],
        f"- **Code**: maniflow {', '.join(map(str, code))}; ManiFlow model version "
        f"{records[0].get('model_version', MODEL_VERSION)} (docs/maniflow-fidelity.md). Action error is the "
        "offline MAE (joint units) on held-out episodes of the evaluation env.",
    ]
    under = still_improving(records)
    if under:
        lines.append(f"- **Under-trained**: {len(under)} of {len(records)} cells lowered their best validation loss "
                     f"by more than {100 * PLATEAU_GAIN:.0f}% in their last quarter of epochs (see Cells); their "
                     "success rates may partly measure training length.")
    return lines


def _layouts_text(layouts: dict | None, cfg: dict) -> str:
    if not layouts:
        return (f"the first {cfg.get('episodes', '?')} layouts of seed {cfg.get('seed', '?')} (not recorded: "
                "evaluated before layouts were)")
    return (f"{len(layouts['numbers'])} layouts of seed {layouts['seed']}, {len(layouts['skipped'])} skipped "
            f"({layouts['source']})")


def summary_table(records: list[dict], baselines: dict[str, dict]) -> list[str]:
    """Success % [95% interval] per training env and condition, pooled over tasks, with the
    baselines: the table the README shows."""
    cells = _outcomes(records)
    envs = [e for e in ENV_ORDER if any(k[0] == e for k in cells)]
    arms, labels = _arms(cells), _labels(cells)
    tasks = sorted({k[2] for k in cells})
    md = ["| trained on | " + " | ".join(arm_name(a, labels, titles=True) for a in arms)
          + " | do nothing | scripted expert |", "|---" * (len(arms) + 3) + "|"]
    for env in envs:
        row = [env]
        for c in arms:
            x = _stack(cells, [(env, c, t) for t in tasks if (env, c, t) in cells])
            est = None if x is None else bootstrap(x)
            row.append("-" if est is None else f"{100 * est.mean:.0f}% [{100 * est.low:.0f}, {100 * est.high:.0f}]")
        for kind in ("do_nothing", "expert"):
            values = [x for t in tasks for x in baselines.get(t, {}).get(kind, {}).get("success", [])]
            row.append(f"{100 * np.mean(values):.0f}%" if values else "-")
        md.append("| " + " | ".join(row) + " |")
    return md


def build_report(records: list[dict], baselines: dict[str, dict], out, title: str = "ManiFlow path-guidance matrix",
                 notes: list[str] | None = None, quality: dict[str, Path] | None = None) -> Path:
    """Write the report directory; returns report.md. `quality`: the path-quality directory of
    each path label ({work}/quality/{label}), shown where measured."""
    out = Path(out)
    check_protocol(records)
    tmp = temp_sibling(out)
    (tmp / "strips").mkdir(parents=True)
    cells = _outcomes(records)
    envs = [e for e in ENV_ORDER if any(k[0] == e for k in cells)]
    arms, labels = _arms(cells), _labels(cells)
    names = [arm_name(a, labels) for a in arms]
    tasks = sorted({k[2] for k in cells} | set(baselines))

    md = [f"# {title}", ""] + protocol_lines(records) + [""]
    md += [f"- {n}" for n in notes or []]
    md += ["## Summary", "", "Closed-loop success over every task and training seed, 95% interval as above:", ""]
    md += summary_table(records, baselines)
    md += data_section(records)
    md += quality_section(quality or {}, _labels(cells), tmp)
    md += ["", "## Answers", ""]
    for question, compared, lines in answers(records):
        md += [f"**{question}** ({compared})", ""]
        md += [f"- {line}" for line in lines] or ["- not answerable: this matrix lacks the conditions to compare"]
        md.append("")

    for env in envs:
        md += [f"## Trained on {env}: success % [95% interval] (per seed) / action MAE", "",
               "| task | " + " | ".join(names) + " | do nothing | expert |",
               "|---" * (len(arms) + 3) + "|"]
        for task in tasks:
            row = [task]
            for c in arms:
                est = _cell_estimate(cells, (env, c, task))
                mae = _mean_offline(records, (env, c, task))
                per_seed = "/".join(f"{100 * x:.0f}" for x in _seed_rates(cells, (env, c, task)))
                row.append("-" if est is None else f"{est.points()} ({per_seed})"
                           + ("" if mae is None else f" / {mae:.4f}"))
            for kind in ("do_nothing", "expert"):
                b = baselines.get(task, {}).get(kind)
                row.append("-" if b is None else f"{100 * np.mean(b['success']):.0f}")
            md.append("| " + " | ".join(row) + " |")
        md.append("")

    md += ["## Cells", "", f"Closing gain: how much the last quarter of epochs still lowered the best validation "
           f"loss (over {100 * PLATEAU_GAIN:.0f}%: still learning).", "",
           "| train env | condition | task | seed | epochs | best val loss (epoch) | closing gain | "
           "held-out val loss | success | checkpoint |", "|---" * 10 + "|"]
    for r in sorted(records, key=lambda r: (*_key(r), _cell(r).seed)):
        off, c, tr = r.get("offline") or {}, _cell(r), r["train"]
        pl = tr.get("plateau") or {}
        gain = "-" if pl.get("gain") is None else f"{100 * pl['gain']:.1f}%"
        md.append(f"| {c.env} | {arm_name(_arm(c), labels)} | {c.task} | {c.seed} | {tr['epochs']} | "
                  f"{_fmt(tr['best_val_loss'])} ({pl.get('best_epoch', '-')}) | {gain} | {_fmt(off.get('val_loss'))} | "
                  f"{100 * r['closed_loop']['success_rate']:.0f}% | `{r['checkpoint']}` |")
    md.append("")

    figures = []
    if records:
        _bar_chart(tmp / "success.png", envs, arms, names, tasks,
                   lambda e, c, t: _cell_estimate(cells, (e, c, t)), "closed-loop success (%)", scale=100.0,
                   baselines=baselines, dots=lambda e, c, t: _seed_rates(cells, (e, c, t)))
        figures.append(("Closed-loop success (bars: mean and 95% interval; dots: each training seed)", "success.png"))
        if any(r.get("offline") for r in records):
            _bar_chart(tmp / "action_error.png", envs, arms, names, tasks,
                       lambda e, c, t: _point(_mean_offline(records, (e, c, t))), "offline action MAE (joint units)")
            figures.append(("Offline action error", "action_error.png"))
        _training_curves(tmp / "training.png", records, labels)
        figures.append(("Training curves (validation loss, EMA)", "training.png"))
    md += ["## Figures", ""] + [f"### {name}\n\n![{name}]({file})\n" for name, file in figures]

    strips = [r for r in records if r.get("strip") and Path(r["strip"]).exists()]
    strips = sorted(strips, key=lambda r: (_cell(r).task, *_key(r), _cell(r).seed))
    if strips:
        md += ["## Roll-outs", "", "Observed frames with the overlay the policy saw; green bar: success, red: failure.",
               ""]
        for r in strips:
            name = f"{_cell(r).name}.png"
            shutil.copyfile(r["strip"], tmp / "strips" / name)
            md += [f"**{_cell(r)}**", "",
                   f"![{name}](strips/{name})", ""]

    (tmp / "report.md").write_text("\n".join(md))
    write_json(tmp / "results.json", {"cells": records, "baselines": baselines})
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out / "report.md"


def _counts(counts: dict) -> str:
    return "; ".join(k if len(counts) == 1 else f"{k} ({n})" for k, n in counts.items())


def data_section(records: list[dict]) -> list[str]:
    """Where each (training env, task)'s episodes came from, as the frames stores recorded it."""
    data = {(_cell(r).env, _cell(r).task): r["data"] for r in records if r.get("data")}
    if not data:
        return []
    md = ["", "## Data", "", "| trained on | task | RoboTwin layout | data format | embodiment | config | "
          "frames/s | instructions from | working arm from | end pose to fingertips |", "|---" * 10 + "|"]
    for (env, task), d in sorted(data.items()):
        md.append(f"| {env} | {task} | {_counts(d['layouts'])} | {_counts(d['data_format_versions'])} | "
                  f"{_counts(d['embodiments'])} | {_counts(d['configs'])} | {_counts(d['fps'])} | "
                  f"{_counts(d['instructions_from'])} | {_counts(d['arm_from'])} | {_counts(d['tcp_offset_m'])} |")
    if any("demo_randomized" in c for d in data.values() for c in d["configs"]):
        md += ["", "RoboTwin's `demo_randomized` (the cluttered config) also randomises the background, the "
               "lighting and the table height: cluttered training data differs from clean in more than clutter."]
    return md


def quality_section(quality: dict[str, Path], labels: list[str], out: Path) -> list[str]:
    """How far each path label's paths are from the ground truth, where it was measured; its
    figure is copied next to the report."""
    from maniflow.paths.quality import markdown

    found = {lb: Path(quality[lb]) for lb in labels if lb in quality and (Path(quality[lb]) / "quality.json").exists()}
    if not found:
        return []
    md = ["", "## Path quality", ""]
    for label, directory in found.items():
        figure = None
        if (directory / "quality.png").exists():
            figure = f"quality-{label}.png"
            shutil.copyfile(directory / "quality.png", out / figure)
        md += markdown(json.loads((directory / "quality.json").read_text()), figure) + [""]
    return md[:-1]


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.4f}"


def _point(x):
    return None if x is None else Estimate(x, x, x, 1, 1, 1)


def _bar_chart(path: Path, envs, arms, names, tasks, estimate, ylabel: str, scale: float = 1.0, baselines=None,
               dots=None):
    """Bars (mean, interval) per task and arm (`names`: their legend); `dots(env, arm, task)`:
    per-seed values."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(1, len(envs), figsize=(max(6, 1.6 * len(tasks) * len(envs) + 2), 3.8), squeeze=False)
    width = 0.8 / max(1, len(arms))
    for ax, env in zip(axes[0], envs):
        x = np.arange(len(tasks))
        for i, (c, name) in enumerate(zip(arms, names)):
            ests = [estimate(env, c, t) for t in tasks]
            mean = np.array([np.nan if e is None else e.mean * scale for e in ests])
            err = np.array([[0 if e is None else (e.mean - e.low) * scale for e in ests],
                            [0 if e is None else (e.high - e.mean) * scale for e in ests]])
            centre = x + (i - (len(arms) - 1) / 2) * width
            ax.bar(centre, mean, width, yerr=err, capsize=2, label=name, alpha=0.8)
            if dots:
                for j, t in enumerate(tasks):
                    values = np.asarray(dots(env, c, t)) * scale
                    jitter = np.linspace(-0.25, 0.25, len(values)) * width if len(values) > 1 else np.zeros(1)
                    ax.scatter(centre[j] + jitter[:len(values)], values, s=12, color="black", zorder=4,
                               label="training seed" if i == 0 and j == 0 else None)
        if baselines:
            nothing = [100 * np.mean(baselines[t]["do_nothing"]["success"]) if t in baselines else np.nan
                       for t in tasks]
            ax.scatter(x, nothing, marker="_", s=400, color="black", label="do nothing", zorder=3)
        ax.set_xticks(x, tasks, rotation=20, ha="right", fontsize=8)
        ax.set_title(f"trained on {env}")
        ax.set_ylabel(ylabel)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _training_curves(path: Path, records: list[dict], labels: list[str]):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    tasks = sorted({_cell(r).task for r in records})
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.5), squeeze=False)
    colours = {c: f"C{i}" for i, c in enumerate(CONDITIONS.names())}
    for ax, task in zip(axes[0], tasks):
        for r in records:
            c = _cell(r)
            if c.task != task:
                continue
            h = [x for x in r["train"]["history"] if x["val_loss"] is not None]
            ax.plot([x["epoch"] for x in h], [x["val_loss"] for x in h], color=colours[c.condition],
                    linestyle="-" if c.env == "cluttered" else "--",
                    label=f"{c.env}/{arm_name(_arm(c), labels)} s{c.seed}")
        ax.set_title(task)
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation loss")
        ax.set_yscale("log")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)



# -- the README's demo section ------------------------------------------------------------------

def still_improving(records: list[dict]) -> list[dict]:
    """Cells whose last quarter of epochs still lowered the best validation loss by more than
    PLATEAU_GAIN (or that have too few validations to tell)."""
    gains = [(r, (r["train"].get("plateau") or {}).get("gain")) for r in records]
    return [r for r, g in gains if g is None or g > PLATEAU_GAIN]


def readme_blocks(results: dict, name: str = "demo") -> dict[str, list[str]]:
    """The README's generated blocks (`<!-- {name}-table:begin ... -->` to `<!-- {name}-table:end
    -->`, and -answers, -plateau) from a report's results.json."""
    return {f"{name}-table": summary_table(results["cells"], results["baselines"]),
            f"{name}-answers": [f"- **{question}** {line}" for question, _, found in answers(results["cells"])
                                for line in found],
            f"{name}-plateau": [plateau_line(results["cells"])]}


def plateau_line(records: list[dict]) -> str:
    """How many cells trained to a plateau (closing gain under PLATEAU_GAIN), naming the others."""
    still = still_improving(records)
    text = (f"{len(records) - len(still)} of {len(records)} cells lowered their best validation loss by less than "
            f"{100 * PLATEAU_GAIN:.0f}% over their last quarter of epochs")
    if not still:
        return text + "."
    gain = {str(_cell(r)): (r["train"].get("plateau") or {}).get("gain") for r in still}
    return text + "; still improving: " + ", ".join(
        f"{c} ({'too few validations' if g is None else f'{100 * g:.0f}%'})" for c, g in sorted(gain.items())) + "."


def publish_demo(report_dir, dest, readme=None, name: str = "demo") -> None:
    """Copy a report directory to `dest` (replacing it) without its roll-out strips (megabytes of
    PNG; they stay in the work directory) and, given `readme`, rewrite the blocks `name`-* that
    exist in it from the report: `make publish-demo`, after `make demo`."""
    import re

    report_dir, dest = Path(report_dir), Path(dest)
    tmp = temp_sibling(dest)
    shutil.copytree(report_dir, tmp, ignore=shutil.ignore_patterns("strips"))
    md = (tmp / "report.md").read_text()
    if "## Roll-outs" in md:
        (tmp / "report.md").write_text(md.split("## Roll-outs")[0] + "## Roll-outs\n\nThe roll-out strips stay in the "
                                       "work directory's copy of this report (`work/reports/<name>/strips/`).\n")
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    if readme is None:
        return
    readme = Path(readme)
    text = readme.read_text()
    blocks = readme_blocks(json.loads((dest / "results.json").read_text()), name)
    found = 0
    for block, lines in blocks.items():
        pattern = rf"(<!-- {block}:begin .*?-->\n)(?:.*?\n)?(<!-- {block}:end -->)"
        found += bool(re.search(pattern, text, re.S))
        text = re.sub(pattern, lambda m, lines=lines: m.group(1) + "".join(f"{x}\n" for x in lines) + m.group(2),
                      text, flags=re.S)
    if not found:
        raise ValueError(f"{readme} has none of the blocks {', '.join(blocks)} (<!-- NAME:begin ... --> to "
                         "<!-- NAME:end -->)")
    readme.write_text(text)
