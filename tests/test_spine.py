"""The typed spine: one configuration tree behind the library, the CLI and the flows; one
workspace layout; registries for providers, conditions and simulators."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from maniflow.cli import build_parser
from maniflow.config import add_options, fields, from_args, is_config
from maniflow.paths.client import ClientConfig
from maniflow.paths.label import ProviderConfig
from maniflow.robotwin import SourceOptions
from maniflow.settings import DatasetConfig, EvalConfig, PrepareConfig, TrainOptions
from maniflow.workspace import Cell, Workspace, read_cell

PROJECT = Path(__file__).resolve().parents[1]


def _leaves(cls, prefix=""):
    """Every leaf field of a configuration class, as dotted names."""
    out = set()
    for name, info in fields(cls).items():
        out |= _leaves(info.annotation, f"{prefix}{name}.") if is_config(info.annotation) else {prefix + name}
    return out


def _command(name: str):
    return build_parser()._subparsers._group_actions[0].choices[name]


def test_each_cli_command_exposes_every_option_of_its_configuration():
    def dests(command):
        return {a.dest for a in _command(command)._actions}

    assert _leaves(ProviderConfig) | _leaves(ClientConfig) <= dests("paths")
    assert _leaves(EvalConfig) <= dests("evaluate")
    assert _leaves(Cell) | _leaves(TrainOptions) <= dests("train")
    assert {"resolution", "dtype"} <= dests("render")
    assert {"clean_config", "cluttered_config", "embodiment", "layout", "tcp_offset"} <= dests("extract")
    alone = argparse.ArgumentParser(add_help=False)
    add_options(alone, TrainOptions)
    assert {a.dest for a in alone._actions} == _leaves(TrainOptions)


@pytest.mark.parametrize("command, cls", [("paths", ProviderConfig), ("paths", ClientConfig), ("evaluate", EvalConfig),
                                          ("train", TrainOptions), ("render", DatasetConfig),
                                          ("extract", SourceOptions)])
def test_a_command_without_options_gives_the_configuration_defaults(command, cls):
    """Nested defaults included: closed-loop evaluation's path source is the oracle, not the
    labelling default (HAMSTER), on the command line as in the library and the flows."""
    required = {"train": ["--env", "clean", "--task", "click_bell", "--condition", "original"]}
    assert from_args(cls, build_parser().parse_args([command, *required.get(command, [])])) == cls()


def test_every_deployment_of_prefect_yaml_validates_against_its_flow_parameters():
    import yaml

    from flows.evaluate import EvaluateParams
    from flows.prepare_data import PrepareParams
    from flows.train_matrix import MatrixParams
    from flows.train_run import CellParams

    models = {"train_matrix": MatrixParams, "prepare_data": PrepareParams, "train_run": CellParams,
              "evaluate": EvaluateParams}
    deployments = yaml.safe_load((PROJECT / "prefect.yaml").read_text())["deployments"]
    demo = next(d for d in deployments if d["name"] == "demo" and d["entrypoint"].endswith(":train_matrix"))
    for d in deployments:
        models[d["entrypoint"].split(":")[1]](**(d.get("parameters") or {}).get("params", {}))
    params = MatrixParams(**demo["parameters"]["params"])
    assert params.data.client.endpoints == tuple(f"http://127.0.0.1:{p}" for p in range(8100, 8104))
    assert params.evaluation.paths.kind == "oracle" and params.data.label_retry_delay_s == 5


def test_closed_loop_paths_must_read_answers_as_the_training_paths_were_read():
    from flows.train_matrix import MatrixParams

    qwen = {"kind": "openai", "model": "qwen3-vl", "coords": "thousand"}
    with pytest.raises(ValueError, match="set evaluation.paths.coords to thousand"):
        MatrixParams(data={"provider": qwen}, evaluation={"paths": {**qwen, "coords": "unit"}})
    assert MatrixParams(data={"provider": qwen}, evaluation={"paths": qwen}).evaluation.paths.coords == "thousand"


def test_cli_options_become_the_same_typed_configs_the_flows_take():
    """A Qwen-style endpoint (0-1000 coordinates, a key, longer answers) in closed-loop evaluation:
    the options reach the evaluation's path source, as the flow's parameters do."""
    args = build_parser().parse_args(
        ["evaluate", "--provider", "openai", "--model", "qwen3-vl", "--coords", "thousand", "--max-tokens", "1024",
         "--endpoints", "http://127.0.0.1:8000-8001/v1", "--api-key-env", "QWEN_KEY", "--env", "clean",
         "--episodes", "7", "--no-offline"])
    cfg = from_args(EvalConfig, args)
    assert cfg.paths == ProviderConfig(kind="openai", model="qwen3-vl", coords="thousand", max_tokens=1024)
    assert cfg.client.endpoints == ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8001/v1")
    assert cfg.client.api_key_env == "QWEN_KEY" and cfg.env == "clean" and cfg.episodes == 7 and not cfg.offline
    # The flow parameter that holds the same settings, as JSON from the UI or prefect.yaml.
    assert EvalConfig(**json.loads(json.dumps(asdict(cfg)))) == cfg
    from flows.evaluate import EvaluateParams

    assert EvaluateParams(evaluation=asdict(cfg)).evaluation == cfg


def test_the_prefect_ui_form_shows_every_option_with_its_help():
    from prefect.utilities.callables import parameter_schema

    from flows.train_matrix import train_matrix

    schema = parameter_schema(train_matrix.fn).model_dump()["definitions"]
    for cls in (ProviderConfig, ClientConfig, EvalConfig, TrainOptions, PrepareConfig):
        shown = schema[cls.__name__]["properties"]
        assert set(shown) == set(fields(cls)), cls.__name__
        assert all(p.get("description") for p in shown.values()), cls.__name__
    coords = schema["ProviderConfig"]["properties"]["coords"]
    assert coords["default"] is None and "qwen has no default: declare it" in coords["description"]


def test_configs_refuse_unknown_keys_and_bad_values_with_the_field_name():
    with pytest.raises(ValueError, match="endpiont\n  Unexpected keyword argument"):
        ClientConfig(endpiont=("http://x",))
    with pytest.raises(ValueError, match="provider 'gpt4v': choose from"):
        ProviderConfig(kind="gpt4v")
    with pytest.raises(ValueError, match="provider qwen answers in a convention of the model's: declare coords"):
        ProviderConfig(kind="qwen")
    assert ProviderConfig(kind="hamster").coords == "unit"  # the provider's own convention
    with pytest.raises(ValueError, match="condition 'rgb'"):
        Cell(condition="rgb")
    assert ClientConfig(endpoints="http://h:1-3").endpoints == ("http://h:1", "http://h:2", "http://h:3")


def test_a_cell_travels_from_its_run_directory_unchanged(tmp_path):
    cell = Cell(env="clean", condition="overlay_current", task="click_bell", seed=2, preset="demo", label="oracle")
    work = Workspace(tmp_path)
    assert work.run(cell).name == "clean_overlay_current-oracle_click_bell_demo_seed2"
    assert work.cell_dataset(cell).name == "clean_overlay-oracle_click_bell.zarr"
    assert work.cell_dataset(cell, "cluttered").name == "cluttered_overlay-oracle_click_bell.zarr"
    run = work.run(cell)
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"cell": asdict(cell)}))
    assert read_cell(run) == cell and work.cells("demo") == [cell] and work.cells("paper") == []
    old = work.root / "runs" / "old"
    old.mkdir()
    (old / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="no cell recorded"):
        read_cell(old)
    assert work.cells() == [cell]  # a directory without a cell is not mistaken for one


def test_a_run_written_before_cells_were_recorded_is_still_found(tmp_path):
    """Runs of maniflow < 0.5 hold no cell: it is read from their dataset and name, which must agree."""
    import zarr

    work = Workspace(tmp_path)
    cell = Cell(env="clean", condition="original", task="click_bell", seed=1, preset="demo", label="oracle")
    store = work.cell_dataset(cell)
    zarr.open_group(store, mode="w").attrs.update({"env": "clean", "task": "click_bell", "type": "original",
                                                   "paths": None})
    run = work.run(cell)
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"store": str(store), "condition": "original",
                                                 "train": {"seed": 1}}))
    assert read_cell(run) == cell and work.cells("demo") == [cell]
    renamed = run.with_name("clean_original_click_bell_demo_seed7")
    run.rename(renamed)
    with pytest.raises(ValueError, match="seed7: no cell recorded and none can be read from its dataset"):
        read_cell(renamed)


def test_older_overlay_runs_with_relative_store_paths_and_set_aside_runs(tmp_path, monkeypatch):
    """An overlay run of another label whose config.json names its store relative to where the
    CLI ran is still found; a run set aside for another model version is not listed twice."""
    import zarr

    work = Workspace(tmp_path / "work")
    cell = Cell(env="cluttered", condition="overlay_current", task="click_bell", seed=12, preset="paper",
                label="my_vlm")
    zarr.open_group(work.cell_dataset(cell), mode="w").attrs.update(
        {"env": "cluttered", "task": "click_bell", "type": "overlay", "paths": {"label": "my_vlm"}})
    run = work.run(cell)
    run.mkdir(parents=True)
    relative = Path("work/datasets") / work.cell_dataset(cell).name  # as `--work work` recorded it
    (run / "config.json").write_text(json.dumps({"store": str(relative), "condition": "overlay_current",
                                                 "train": {"seed": 12}}))
    monkeypatch.chdir(tmp_path / "work")  # somewhere else than where it trained
    assert read_cell(run) == cell
    aside = run.with_name(f"{run.name}.model-v1")
    aside.mkdir()
    (aside / "config.json").write_text(json.dumps({"cell": asdict(cell)}))
    assert work.cells() == [cell]


def test_a_registry_whose_module_fails_raises_the_same_error_again(tmp_path, monkeypatch):
    package = tmp_path / "brokenplugins"
    package.mkdir()
    (package / "__init__.py").write_text("from maniflow.registry import Registry\n"
                                         "THINGS = Registry('thing', __name__)\n")
    (package / "a.py").write_text("from brokenplugins import THINGS\n"
                                  "THINGS.register('a', 1)\nraise ImportError('no a')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import brokenplugins

    for _ in range(2):
        with pytest.raises(ImportError, match="no a"):
            brokenplugins.THINGS.names()


def test_evaluating_a_run_directory_of_another_work_directory_is_refused(tmp_path):
    from maniflow.cli import main

    cell = Cell(env="clean", condition="original", task="click_bell", preset="demo")
    run = Workspace(tmp_path / "elsewhere").run(cell)
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"cell": asdict(cell)}))
    assert main(["evaluate", "--work", str(tmp_path / "work"), "--runs", str(run)]) == 2


def test_a_registry_read_from_several_threads_waits_for_its_modules(tmp_path, monkeypatch):
    import threading

    package = tmp_path / "slowplugins"
    package.mkdir()
    (package / "__init__.py").write_text("from maniflow.registry import Registry\n"
                                         "THINGS = Registry('thing', __name__)\n")
    for name in ("a", "b"):
        (package / f"{name}.py").write_text(f"import time\nfrom slowplugins import THINGS\ntime.sleep(0.3)\n"
                                            f"THINGS.register({name!r}, {name!r})\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import slowplugins

    seen = []
    threads = [threading.Thread(target=lambda: seen.append(slowplugins.THINGS.names())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == [("a", "b")] * 4


def test_a_new_path_provider_is_one_registration(work_copy, monkeypatch):
    """A provider registered from outside the package labels a store, appears among the CLI's
    choices and is refused nowhere else."""
    from maniflow.cli import main
    from maniflow.paths.protocol import format_hamster_answer
    from maniflow.paths.providers import PROVIDERS, PathProvider
    from maniflow.paths.store import PathStore

    class Centre(PathProvider):
        name = "centre"
        computed, needs_client = True, False

        def identity(self, cfg):
            return {"kind": "centre"}

        def answer(self, frames, store, episodes, cfg, client, deliver):
            for ep in episodes:
                for t in sorted(ep.missing):
                    deliver(ep, t, {"raw": format_hamster_answer([(0.5, 0.5, 1), (0.6, 0.5, 0)]),
                                    "endpoint": "centre"})
            return []

    monkeypatch.setitem(PROVIDERS._entries, "centre", Centre())
    assert "centre" in _command("paths")._option_string_actions["--provider"].choices
    assert main(["paths", "--provider", "centre", "--work", str(work_copy), "--envs", "clean",
                 "--tasks", "click_bell"]) == 0
    stored = PathStore(Workspace(work_copy).paths("centre", "clean", "click_bell"))
    first = stored.read(stored.episodes()[0])
    assert first.paths[0] == [(0.5, 0.5, 1), (0.6, 0.5, 0)]


def test_registries_name_the_choices():
    from maniflow.conditions import CONDITIONS, matrix_conditions
    from maniflow.registry import Registry
    from maniflow.simulators import simulator_for

    assert matrix_conditions() == ["original", "overlay_current", "overlay_initial_current"]
    with pytest.raises(ValueError, match="unknown model condition 'x': choose from original, overlay_current"):
        CONDITIONS["x"]
    assert simulator_for("push_cube").name == "maniskill" and simulator_for("click_bell").name == "synthetic"
    with pytest.raises(ValueError, match="no simulator evaluates task 'fold_towel'"):
        simulator_for("fold_towel")
    registry = Registry("thing")
    registry.register("a", 1)
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("a", 2)


def test_running_a_deployment_without_a_server_says_how_to_get_one(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path)
    out = subprocess.run([sys.executable, "deployments/run.py", "train-matrix/demo"], cwd=PROJECT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().splitlines() == [
        "run.py: no Prefect server is configured (PREFECT_API_URL is unset): start the project's stack with "
        "`make up`, then `eval \"$(deployments/stack.sh env)\"` in this shell"]


def test_flows_call_tasks_and_never_library_functions():
    """Flows import from maniflow only configuration types and registries' readers: the work is in
    tasks, thin wrappers over the library."""
    import ast
    import importlib

    allowed = {"matrix_conditions", "default_root", "default_work", "Workspace"}  # defaults; path arithmetic
    for path in (PROJECT / "flows").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("maniflow"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    obj = getattr(module, alias.name)
                    assert is_config(obj) or alias.name in allowed or not callable(obj), \
                        f"{path.name} imports {node.module}.{alias.name}"
