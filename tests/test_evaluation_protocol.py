"""The evaluation protocol and its statistics: intervals that say what they cover, detectable
differences, published layouts, the report's header and answers, and the README's demo table
against the committed demo report."""

import json
import re
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest

from maniflow.paths.label import ProviderConfig
from maniflow.report import answers, build_report, ground_truth_labels, readme_blocks
from maniflow.settings import EVAL_SEED, EvalConfig, PathSource
from maniflow.simulators import synthetic
from maniflow.simulators.synthetic import published, solve_layouts
from maniflow.stats import bootstrap, detectable_difference, in_words, paired_difference, seed_variance
from maniflow.synthetic.tasks import TASKS
from maniflow.workspace import Cell

ROOT = Path(__file__).resolve().parents[1]
DEMO_REPORT = ROOT / "docs" / "demo"


def _outcomes(rates_per_seed: list[float], layouts: int = 40) -> np.ndarray:
    """(1, seeds, layouts) with the first rate x layouts successes per seed."""
    x = np.zeros((1, len(rates_per_seed), layouts))
    for s, rate in enumerate(rates_per_seed):
        x[0, s, :round(rate * layouts)] = 1.0
    return x


def test_with_fewer_than_three_seeds_intervals_cover_layouts_only_and_claim_nothing():
    worse, better = _outcomes([0.25, 0.25]), _outcomes([0.75, 0.75])
    d = paired_difference(better, worse)
    assert d.mean == pytest.approx(0.5) and d.low > 0.3  # +50 points on the same layouts
    assert not d.over_seeds and d.covers.startswith("evaluation layouts only")
    text = in_words("overlay", "original", d)
    assert "over evaluation layouts only" in text and "says nothing about whether the conditions differ" in text
    assert "excludes zero" not in text


def test_with_three_seeds_the_interval_resamples_seeds_and_may_claim_a_difference():
    steady = paired_difference(_outcomes([0.75] * 3), _outcomes([0.25] * 3))
    assert steady.over_seeds and steady.seeds == 3
    assert "over seeds and layouts (the interval excludes zero)" in in_words("overlay", "original", steady)
    # The same mean with seeds that disagree: resampling seeds widens the interval past zero.
    spread = paired_difference(_outcomes([0.95, 0.55, 0.0]), _outcomes([0.25, 0.25, 0.25]))
    assert spread.mean == pytest.approx(steady.mean - 0.25, abs=0.01)
    assert spread.high - spread.low > 2 * (steady.high - steady.low)
    assert "includes zero: not distinguishable" in in_words("overlay", "original", spread)
    # The same arrays with one seed fewer: the interval ignores the seeds' spread.
    assert bootstrap(_outcomes([0.95, 0.55])).covers.startswith("evaluation layouts only")


def test_detectable_difference_matches_the_binomial_rule_and_grows_with_seed_spread():
    # The figure: 100 layouts per arm, rates near 50%: about +-14 points.
    assert detectable_difference(1, 1, 100) == pytest.approx(0.1386, abs=1e-4)
    assert detectable_difference(1, 3, 100) == pytest.approx(0.1386 / np.sqrt(3), abs=1e-4)
    assert detectable_difference(1, 3, 100, seed_var=0.01) > detectable_difference(1, 3, 100)
    # Seeds that agree add no variance beyond the layouts' binomial noise; seeds that disagree do.
    assert seed_variance([_outcomes([0.5, 0.5, 0.5], 100)[0]]) == 0.0
    # Rates 10/50/90%: their variance is 0.16, less the seed x layout interaction's share.
    assert seed_variance([_outcomes([0.1, 0.5, 0.9], 100)[0]]) == pytest.approx(0.1589, abs=1e-4)
    assert seed_variance([_outcomes([0.3], 100)[0]]) == 0.0  # one seed: nothing to estimate


@pytest.mark.parametrize("task", sorted(TASKS))
def test_the_published_layouts_are_what_the_rule_gives(task):
    """The committed list is RoboTwin's rule applied to this code's generator: a generator change
    that moves a layout fails here until `maniflow layouts --write` republishes."""
    for env in ("clean", "cluttered"):
        listed = published(task, env, EVAL_SEED, 100)
        assert listed is not None and len(listed.numbers) == 100
        assert published(task, env, EVAL_SEED, 10) == replace(solve_layouts(task, env, EVAL_SEED, 10),
                                                              source=listed.source)
    assert published(task, "cluttered", EVAL_SEED + 1, 5) is None  # another seed: solved, not published


def test_layouts_the_expert_fails_are_skipped_and_counted(monkeypatch):
    fails = {1, 3}
    monkeypatch.setattr(synthetic, "play", lambda env, policy: env.index not in fails)
    found = solve_layouts("click_bell", "cluttered", EVAL_SEED, 3)
    assert found.numbers == (0, 2, 4) and found.skipped == (1, 3)
    assert "3 layouts of seed 1000 that the scripted expert solves (2 it fails skipped" in found.describe()


def _record(env: str, condition: str, seed: int, success: list[bool], task: str = "click_bell") -> dict:
    """An evaluation record with what the report reads."""
    layouts = {"task": task, "env": "cluttered", "seed": EVAL_SEED, "numbers": list(range(len(success))),
               "skipped": [], "source": "published"}
    history = [{"epoch": e, "loss": 1.0 / (e + 1), "val_loss": 1.0 / (e + 1)} for e in range(8)]
    return {"cell": asdict(Cell(env=env, condition=condition, task=task, seed=seed, preset="demo")),
            "checkpoint": "epoch=0007.ckpt", "eval": asdict(EvalConfig(episodes=len(success))), "layouts": layouts,
            "simulator": "the synthetic environment", "code_version": {"maniflow": "0.5.0", "git": "abc"},
            "model_version": 2, "offline": None, "strip": None,
            "train": {"epochs": 8, "best_val_loss": 0.125, "history": history,
                      "plateau": {"gain": 0.2, "best_epoch": 7, "epochs": 8}},
            "closed_loop": {"success": success, "success_rate": float(np.mean(success))}}


def _matrix(seeds: list[int], rates: dict[str, list[float]], layouts: int = 50) -> list[dict]:
    return [_record(env, condition, seed, [i < round(rate * layouts) for i in range(layouts)])
            for env in ("cluttered", "clean") for condition, per_seed in rates.items()
            for seed, rate in zip(seeds, per_seed)]


def test_the_report_says_what_its_intervals_cover_and_what_its_design_resolves(tmp_path):
    rates = {"original": [0.2, 0.3, 0.2], "overlay_current": [0.6, 0.7, 0.6], "overlay_initial_current": [0.6] * 3}
    baselines = {"click_bell": {"do_nothing": {"success": [False] * 50}, "expert": {"success": [True] * 50}}}
    md = build_report(_matrix([0, 1, 2], rates), baselines, tmp_path / "three").read_text()
    assert "Intervals are 95% percentile bootstraps over training seeds and evaluation layouts" in md
    assert "click_bell: 50 layouts of seed 1000, 0 skipped (published)" in md
    assert "lowest EMA validation loss" in md and "maniflow abc" in md
    assert "**Under-trained**: 18 of 18 cells lowered their best validation loss by more than 5%" in md
    path = next(line for line in md.splitlines() if line.startswith("- overlay (trained on cluttered)"))
    assert "beats original RGB by 40.0 points" in path and "(the interval excludes zero)" in path
    assert "1 task(s), 3 seed(s) x 50 layouts, which resolve differences beyond about ±" in path
    assert "| cluttered | 23% [" in md and "(20/30/20)" in md  # pooled summary, then each seed's rate

    one = [r for r in _matrix([0, 1, 2], rates) if r["cell"]["seed"] == 0]
    md = build_report(one, baselines, tmp_path / "one").read_text()
    assert "With fewer than 3 seeds per cell the intervals cover evaluation layouts only" in md
    assert "excludes zero" not in md and "over evaluation layouts only" in md


def test_the_path_label_is_an_axis_and_the_report_says_what_vlm_error_costs(tmp_path):
    """Overlay cells trained on hamster and on ground-truth paths (the original cells once): the
    report compares them with the same statistics, each label's cells evaluated with its own
    paths. The ground truth is known by the provider that made the label, whatever its name."""
    rates = {"original": [0.2] * 3, "overlay_current": [0.5] * 3}
    records = _matrix([0, 1, 2], rates)
    for r in records:
        r["train_paths"] = None if r["cell"]["condition"] == "original" else {"kind": "hamster"}
    truth = asdict(EvalConfig(episodes=50).for_label("truth", [PathSource(provider=ProviderConfig(
        kind="oracle", label="truth"))]))
    for r in _matrix([0, 1, 2], {"overlay_current": [0.8] * 3}):
        r["cell"]["label"], r["eval"], r["train_paths"] = "truth", truth, {"kind": "oracle"}
        records.append(r)
    md = build_report(records, {}, tmp_path / "labels").read_text()
    vlm = md.split("**How much of the overlay's effect is lost to VLM path error?**")[1].split("**")[0]
    line = next(x for x in vlm.splitlines() if x.startswith("- overlay_current on hamster paths (cluttered)"))
    assert "trails on truth paths (the ground truth) by 30.0 points" in line and "(the interval excludes zero)" in line
    assert line.endswith("its gain over original RGB is +60.0 points on truth paths and +30.0 on hamster paths: "
                         "50% of the effect lost (point estimate).")
    assert "- overlay (trained on cluttered, truth paths) beats original RGB by 60.0 points" in md
    assert "- overlay (trained on cluttered, hamster paths) beats original RGB by 30.0 points" in md
    assert "| trained on | original | current overlay [hamster] | current overlay [truth] |" in md
    assert "from `oracle` for cells trained on `hamster` paths, `truth` for cells trained on `truth` paths" in md
    # An oracle asked every Nth frame is no ground truth; records from before providers were
    # recorded go by the label's name.
    assert ground_truth_labels(records) == {"truth"}
    sparse = [{**r, "train_paths": {"kind": "oracle", "frames_skipped": 40}} if r["cell"]["label"] == "truth" else r
              for r in records]
    assert ground_truth_labels(sparse) == set()
    assert ground_truth_labels([{k: v for k, v in r.items() if k != "train_paths"} for r in records]) == set()
    # No gain to lose on the ground truth's paths: no share is stated.
    flat = [r for r in records if r["cell"]["label"] != "truth"]
    for r in _matrix([0, 1, 2], {"overlay_current": [0.2] * 3}):
        r["cell"]["label"], r["eval"], r["train_paths"] = "truth", truth, {"kind": "oracle"}
        flat.append(r)
    md = build_report(flat, {}, tmp_path / "flat").read_text()
    assert "(+0.0 points) is not distinguishable from zero here, so no share of it can be stated." in md
    # One label, one closed-loop path source: cells of one label evaluated otherwise are refused.
    records[-1]["eval"] = records[0]["eval"]
    with pytest.raises(ValueError, match="different paths"):
        build_report(records, {}, tmp_path / "mixed")
    # Without the ground truth among the labels the question is not asked at all.
    assert [q for q, _, _ in answers(_matrix([0], rates))] == ["Does a drawn path help?",
                                                               "Does the initial-frame overlay help?",
                                                               "Does cluttered training help?"]


def test_the_report_refuses_cells_evaluated_on_different_layouts(tmp_path):
    records = _matrix([0], {"original": [0.5], "overlay_current": [0.5]})
    records[1]["layouts"] = {**records[1]["layouts"], "numbers": list(range(1, 51))}
    with pytest.raises(ValueError, match="different layouts"):
        build_report(records, {}, tmp_path / "r")


def _readme_block(text: str, name: str) -> list[str]:
    match = re.search(rf"<!-- {name}:begin .*?-->\n(.*?)\n<!-- {name}:end -->", text, re.S)
    assert match, f"README.md has no {name} block"
    return match.group(1).splitlines()


@pytest.mark.parametrize("name", ["demo", "demo-replication"])
def test_the_readme_shows_the_committed_demo_reports(name):
    """The README's demo tables and answers are generated from docs/{name}/results.json (the
    committed outputs of `make demo` and `make demo-replication`); a README that disagrees with
    those reports fails here."""
    results = json.loads((ROOT / "docs" / name / "results.json").read_text())
    readme = (ROOT / "README.md").read_text()
    blocks = readme_blocks(results, name)
    for block in (f"{name}-table", f"{name}-answers"):
        assert _readme_block(readme, block) == blocks[block]
    if name == "demo":
        assert _readme_block(readme, "demo-plateau") == blocks["demo-plateau"]
    assert "\n".join(blocks[f"{name}-table"]) in (ROOT / "docs" / name / "report.md").read_text()
    seeds = {r["cell"]["seed"] for r in results["cells"]}
    assert len(seeds) >= 3 and all(len(r["closed_loop"]["success"]) == 100 for r in results["cells"])


def _verdicts(results: dict) -> list[str]:
    """Each answer's conclusion: which way, when its interval excludes zero; else none."""
    out = []
    for _, _, lines in answers(results["cells"]):
        for line in lines:
            for claim in line.split(";"):  # one claim, or one per task when tasks are not pooled
                if not any(w in claim for w in (" beats ", " trails ", " equally ")):
                    continue
                out.append(("beats" if " beats " in claim else "trails") if "(the interval excludes zero)" in claim
                           else "not distinguishable")
    return out


def test_the_demo_conclusions_hold_on_disjoint_seed_sets():
    """The committed demo and its replication (the same matrix on other training seeds) draw
    the same conclusions."""
    first = json.loads((DEMO_REPORT / "results.json").read_text())
    second = json.loads((ROOT / "docs" / "demo-replication" / "results.json").read_text())
    seeds = [{r["cell"]["seed"] for r in x["cells"]} for x in (first, second)]
    assert seeds[0].isdisjoint(seeds[1]) and min(len(s) for s in seeds) >= 3
    assert _verdicts(first) == _verdicts(second) and _verdicts(first)


def test_maniflow_layouts_prints_the_published_list(capsys):
    from maniflow.cli import main

    assert main(["layouts", "--tasks", "click_bell", "--envs", "cluttered", "--episodes", "3"]) == 0
    out = capsys.readouterr().out
    assert "click_bell/cluttered: 3 layouts of seed 1000 that the scripted expert solves (0 it fails skipped; " \
           "published in maniflow/simulators/layouts/synthetic.json)" in out
    assert "layouts [0, 1, 2]" in out
