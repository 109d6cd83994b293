"""The experiment report: condition x task tables, the three questions in words, figures.

    {out}/report.md        tables, answers, figures (relative links)
    {out}/results.json     every cell's record and the baselines, as evaluated
    {out}/success.png      closed-loop success rate per task and condition (mean over seeds, 95% CI)
    {out}/action_error.png offline action error (joint units) per task and condition
    {out}/training.png     validation loss curves of every cell
    {out}/strips/*.png     closed-loop roll-outs: observed frames with the overlay, outcome bar

Built from `evaluate_cell` records only, so the same report comes out of a train-matrix run,
the `evaluate` flow and `maniflow evaluate`.
"""

from __future__ import annotations

import os
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np

from maniflow.conditions import CONDITIONS
from maniflow.policy import MODEL_VERSION
from maniflow.simulators import simulator_for
from maniflow.stats import Estimate, bootstrap, in_words, paired_difference
from maniflow.storage import temp_sibling, write_json
from maniflow.workspace import Cell

ENV_ORDER = ("cluttered", "clean")


def _cell(record: dict) -> Cell:
    return Cell(**record["cell"])


def _key(record: dict) -> tuple[str, str, str]:
    """(train env, condition, task): a cell less its seed."""
    c = _cell(record)
    return c.env, c.condition, c.task


def _outcomes(records: list[dict]) -> dict:
    """(train env, condition, task) -> {seed: success list}."""
    out: dict = defaultdict(dict)
    for r in records:
        out[_key(r)][_cell(r).seed] = r["closed_loop"]["success"]
    return out


def _paired(cells: dict, keys_a: list, keys_b: list):
    """(tasks, seeds, episodes) outcome arrays of cells a and b over the seeds both have (the
    smallest common number of seeds across tasks)."""
    a_rows, b_rows = [], []
    for ka, kb in zip(keys_a, keys_b):
        seeds = sorted(set(cells[ka]) & set(cells[kb]))
        if seeds:
            a_rows.append([cells[ka][s] for s in seeds])
            b_rows.append([cells[kb][s] for s in seeds])
    if not a_rows:
        return None, None
    n = min(len(r) for r in a_rows)
    return np.array([r[:n] for r in a_rows], np.float64), np.array([r[:n] for r in b_rows], np.float64)


def answers(records: list[dict]) -> list[tuple[str, list[str]]]:
    """The three questions, each with one sentence per comparison the matrix allows."""
    cells = _outcomes(records)
    envs = [e for e in ENV_ORDER if any(k[0] == e for k in cells)]
    tasks = sorted({k[2] for k in cells})

    def compare(a: tuple, b: tuple, name_a: str, name_b: str) -> str | None:
        common = [t for t in tasks if (*a, t) in cells and (*b, t) in cells]
        if not common:
            return None
        xa, xb = _paired(cells, [(*a, t) for t in common], [(*b, t) for t in common])
        if xa is None:
            return None
        d = paired_difference(xa, xb)
        return f"{in_words(name_a, name_b, d)}; {len(common)} task(s), {xa.shape[1]} seed(s) x {xa.shape[2]} episodes."

    out = []
    lines = [compare((e, "overlay_current"), (e, "original"), f"overlay (trained on {e})", "original RGB")
             for e in envs]
    out.append(("Does a drawn path help? (current overlay vs original RGB)", [x for x in lines if x]))
    lines = [compare((e, "overlay_initial_current"), (e, "overlay_current"), f"initial + current overlay ({e})",
                     "current overlay only") for e in envs]
    out.append(("Does the initial-frame overlay help? (memory under occlusion)", [x for x in lines if x]))
    lines = [compare(("cluttered", c), ("clean", c), f"training on cluttered ({c})", "training on clean")
             for c in CONDITIONS.names()]
    out.append(("Clean vs cluttered training, evaluated on cluttered scenes", [x for x in lines if x]))
    return out


def _cell_estimate(cells, key) -> Estimate | None:
    if key not in cells:
        return None
    return bootstrap(np.array([cells[key][s] for s in sorted(cells[key])], np.float64))


def _mean_offline(records, key, field="action_mae"):
    values = [r["offline"][field] for r in records
              if _key(r) == key and r.get("offline")]
    return float(np.mean(values)) if values else None


def build_report(records: list[dict], baselines: dict[str, dict], out, title: str = "ManiFlow path-guidance matrix",
                 notes: list[str] | None = None) -> Path:
    """Write the report directory; returns report.md."""
    out = Path(out)
    versions = sorted({r.get("model_version", 1) for r in records})
    if len(versions) > 1:
        raise ValueError(f"the records come from model versions {versions}: one report compares one version "
                         "(retrain or evaluate the older runs apart)")
    tmp = temp_sibling(out)
    (tmp / "strips").mkdir(parents=True)
    cells = _outcomes(records)
    envs = [e for e in ENV_ORDER if any(k[0] == e for k in cells)]
    conditions = [c for c in CONDITIONS.names() if any(k[1] == c for k in cells)]
    tasks = sorted({k[2] for k in cells} | set(baselines))
    seeds = sorted({_cell(r).seed for r in records})
    eval_cfg = records[0]["eval"] if records else {}

    simulators = " and ".join(sorted({simulator_for(t).title for t in tasks}))
    path_source = (eval_cfg.get("paths") or {}).get("label") or (eval_cfg.get("paths") or {}).get("kind", "?")
    md = [f"# {title}", ""]
    md += [f"Evaluated in closed loop on **{eval_cfg.get('env', 'cluttered')}** scenes of {simulators}: "
           f"{eval_cfg.get('episodes', '?')} layouts per task (seed {eval_cfg.get('seed', '?')}, the same for every "
           f"cell), training seeds {seeds}, paths from `{path_source}`, "
           f"{eval_cfg.get('execute_steps', '?')} actions executed per predicted chunk. "
           "Success rates are means over seeds and episodes with 95% bootstrap intervals; "
           "action error is the offline MAE (joint units) on held-out cluttered episodes. "
           f"Policy: ManiFlow model version {versions[0] if versions else MODEL_VERSION} "
           "(docs/maniflow-fidelity.md).", ""]
    md += [f"- {n}" for n in notes or []]
    md += data_section(records)
    md += ["", "## Answers", ""]
    for question, lines in answers(records):
        md += [f"**{question}**", ""]
        md += [f"- {line}" for line in lines] or ["- not answerable: this matrix lacks the conditions to compare"]
        md.append("")

    for env in envs:
        md += [f"## Trained on {env}: success % [95% CI] / action MAE", "",
               "| task | " + " | ".join(conditions) + " | do nothing | expert |",
               "|---" * (len(conditions) + 3) + "|"]
        for task in tasks:
            row = [task]
            for c in conditions:
                est = _cell_estimate(cells, (env, c, task))
                mae = _mean_offline(records, (env, c, task))
                row.append("-" if est is None else est.points() + ("" if mae is None else f" / {mae:.4f}"))
            for kind in ("do_nothing", "expert"):
                b = baselines.get(task, {}).get(kind)
                row.append("-" if b is None else f"{100 * np.mean(b['success']):.0f}")
            md.append("| " + " | ".join(row) + " |")
        md.append("")

    md += ["## Cells", "", "| train env | condition | task | seed | epochs | best val loss | held-out val loss | "
           "success | checkpoint |", "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(records, key=lambda r: (*_key(r), _cell(r).seed)):
        off, c = r.get("offline") or {}, _cell(r)
        md.append(f"| {c.env} | {c.condition} | {c.task} | {c.seed} | {r['train']['epochs']} | "
                  f"{_fmt(r['train']['best_val_loss'])} | {_fmt(off.get('val_loss'))} | "
                  f"{100 * r['closed_loop']['success_rate']:.0f}% | `{r['checkpoint']}` |")
    md.append("")

    figures = []
    if records:
        _bar_chart(tmp / "success.png", envs, conditions, tasks, lambda e, c, t: _cell_estimate(cells, (e, c, t)),
                   "closed-loop success (%)", scale=100.0, baselines=baselines)
        figures.append(("Closed-loop success", "success.png"))
        if any(r.get("offline") for r in records):
            _bar_chart(tmp / "action_error.png", envs, conditions, tasks,
                       lambda e, c, t: _point(_mean_offline(records, (e, c, t))), "offline action MAE (joint units)")
            figures.append(("Offline action error", "action_error.png"))
        _training_curves(tmp / "training.png", records)
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


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.4f}"


def _point(x):
    return None if x is None else Estimate(x, x, x, 1)


def _bar_chart(path: Path, envs, conditions, tasks, estimate, ylabel: str, scale: float = 1.0, baselines=None):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(1, len(envs), figsize=(max(6, 1.6 * len(tasks) * len(envs) + 2), 3.8), squeeze=False)
    width = 0.8 / max(1, len(conditions))
    for ax, env in zip(axes[0], envs):
        x = np.arange(len(tasks))
        for i, c in enumerate(conditions):
            ests = [estimate(env, c, t) for t in tasks]
            mean = np.array([np.nan if e is None else e.mean * scale for e in ests])
            err = np.array([[0 if e is None else (e.mean - e.low) * scale for e in ests],
                            [0 if e is None else (e.high - e.mean) * scale for e in ests]])
            ax.bar(x + (i - (len(conditions) - 1) / 2) * width, mean, width, yerr=err, capsize=2, label=c)
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


def _training_curves(path: Path, records: list[dict]):
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
                    linestyle="-" if c.env == "cluttered" else "--", label=f"{c.env}/{c.condition} s{c.seed}")
        ax.set_title(task)
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation loss")
        ax.set_yscale("log")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

