"""The work directory: every path the project writes, and the typed key of a training cell.

    frames/{env}/{task}[@camera].zarr                    decoded episodes (maniflow.frames)
    paths/{label}/{env}/{task}[@camera]/                 path answers per episode (maniflow.paths)
    datasets/{env}_{kind}[-label]_{task}.zarr            training datasets (maniflow.datasets)
    datasets/parts/{env}/{task}/{original|label}/episodeN  rendered episode parts
    datasets/previews/{env}_{task}[-label].png           contact sheets (and .mp4 episodes)
    exports/{format}/{env}_{views}[-label]_{task}[_video][.zarr]  datasets for other trainers (maniflow.exporters)
    runs/{cell}/                                         one training cell (maniflow.train)
    runs/{cell}/eval/{key}.json                          its evaluation records (maniflow.evaluate)
    eval/baselines/{task}-{key}.json                     do-nothing and expert baselines
    maniskill/eval-plans/{task}/{env}-seed{S}-n{N}/      ManiSkill expert plans of evaluation layouts
    reports/{name}/                                      experiment reports (maniflow.report)
    .locks/{name}/                                       lock files shared by processes

Nothing else builds these names: library, CLI and flows ask a `Workspace`, and a training cell
travels as a `Cell` from the matrix to training, evaluation and the report.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from maniflow.config import config, setting

DEFAULT_LABEL = "hamster"  # the user's path provider; other labels are named in store names


def default_work() -> str:
    """The work directory when none is given: $MANIFLOW_WORK, else ./work."""
    return os.environ.get("MANIFLOW_WORK", "work")


def default_root() -> str:
    """The RoboTwin data root when none is given: $MANIFLOW_DATA, else ./data/robotwin."""
    return os.environ.get("MANIFLOW_DATA", "data/robotwin")

DATASET_KINDS = ("original", "overlay", "concat")


@config
class Cell:
    """One cell of the experiment matrix: what a training run is, and its directory's name."""

    env: str = setting("cluttered", "training data: clean or cluttered")
    condition: str = setting("overlay_initial_current", "model condition (maniflow.conditions)",
                             choices=lambda: _conditions().names())
    task: str = setting("beat_block_hammer", "task name")
    seed: int = setting(0, "training seed")
    preset: str = setting("paper", "training preset: paper (the user's settings) or demo (toy sizes)",
                          choices=lambda: _presets())
    label: str = setting(DEFAULT_LABEL, "path label of the overlay datasets")

    def __post_init__(self):
        from maniflow.robotwin import ENVS

        if self.env not in ENVS:
            raise ValueError(f"env {self.env!r}: choose from {', '.join(ENVS)}")
        if self.condition not in _conditions():
            raise ValueError(f"condition {self.condition!r}: choose from {', '.join(_conditions().names())}")
        if self.preset not in _presets():
            raise ValueError(f"preset {self.preset!r}: choose from {', '.join(_presets())}")

    @property
    def name(self) -> str:
        """The run directory's name: `{env}_{condition}[-label]_{task}_{preset}_seed{seed}`."""
        suffix = "" if self.label == DEFAULT_LABEL else f"-{self.label}"
        return f"{self.env}_{self.condition}{suffix}_{self.task}_{self.preset}_seed{self.seed}"

    @property
    def dataset_kind(self) -> str:
        return _conditions()[self.condition].dataset

    def __str__(self) -> str:
        label = "" if self.label == DEFAULT_LABEL else f" [{self.label}]"
        return f"{self.env}/{self.condition}/{self.task} seed {self.seed}{label}"


def _conditions():
    from maniflow.conditions import CONDITIONS

    return CONDITIONS


def _presets() -> tuple[str, ...]:
    from maniflow.settings import PRESETS

    return tuple(PRESETS)


def _camera_name(task: str, camera: str) -> str:
    return task if camera == "head" else f"{task}@{camera}"


class Workspace:
    """The layout of one work directory (pure path arithmetic; nothing is created)."""

    def __init__(self, root):
        self.root = Path(root)

    @classmethod
    def of(cls, work) -> Workspace:
        return work if isinstance(work, Workspace) else cls(work)

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Workspace) and self.root == other.root

    def __hash__(self) -> int:
        return hash(self.root)

    # -- frames and paths -----------------------------------------------------------------------
    def frames(self, env: str, task: str, camera: str = "head") -> Path:
        return self.root / "frames" / env / f"{_camera_name(task, camera)}.zarr"

    def all_frames_stores(self) -> list[Path]:
        """Every frames store, of every camera."""
        return sorted((self.root / "frames").glob("*/*.zarr"))

    def frames_stores(self, envs=None, tasks=None, camera: str = "head") -> list[tuple[str, str]]:
        """The (env, task) pairs with a frames store of `camera` (all envs and tasks by default)."""
        found = []
        for path in self.all_frames_stores():
            env = path.parent.name
            task, _, cam = path.name[:-len(".zarr")].partition("@")
            if (cam or "head") == camera and (not envs or env in envs) and (not tasks or task in tasks):
                found.append((env, task))
        return found

    def paths(self, label: str, env: str, task: str, camera: str = "head") -> Path:
        return self.root / "paths" / label / env / _camera_name(task, camera)

    def quality(self, label: str) -> Path:
        """`maniflow path-quality`'s output for a path label (its paths against the oracle)."""
        return self.root / "quality" / label

    def locks(self, name: str) -> Path:
        return self.root / ".locks" / name

    # -- datasets -------------------------------------------------------------------------------
    @staticmethod
    def dataset_name(env: str, kind: str, task: str, label: str = DEFAULT_LABEL) -> str:
        if kind not in DATASET_KINDS:
            raise ValueError(f"dataset type {kind!r}: choose from {DATASET_KINDS}")
        suffix = "" if kind == "original" or label == DEFAULT_LABEL else f"-{label}"
        return f"{env}_{kind}{suffix}_{task}.zarr"

    def dataset(self, env: str, kind: str, task: str, label: str = DEFAULT_LABEL) -> Path:
        return self.root / "datasets" / self.dataset_name(env, kind, task, label)

    def cell_dataset(self, cell: Cell, env: str | None = None) -> Path:
        """The dataset a cell trains on (or, with `env`, the same kind of dataset of that env)."""
        return self.dataset(env or cell.env, cell.dataset_kind, cell.task, cell.label)

    def dataset_part(self, env: str, task: str, which: str, episode: int) -> Path:
        """`which` is "original" or a path label."""
        return self.root / "datasets" / "parts" / env / task / which / f"episode{episode}"

    def preview(self, env: str, task: str, label: str = DEFAULT_LABEL, episode: int | None = None) -> Path:
        """The contact sheet of (env, task, label), or with `episode` that episode's video."""
        suffix = "" if label == DEFAULT_LABEL else f"-{label}"
        name = f"{env}_{task}{suffix}" + ("" if episode is None else f"_episode{episode}")
        return self.root / "datasets" / "previews" / (f"{name}.png" if episode is None else f"{name}.mp4")

    def export(self, fmt: str, env: str, task: str, label: str, views, video: bool = False, suffix: str = "") -> Path:
        """An exported dataset: `views` joined by "+", the label named unless it is the default or
        no view shows a path, `_video` when its images are videos."""
        named = label != DEFAULT_LABEL and any(v != "original" for v in views)
        name = f"{env}_{'+'.join(views)}{'-' + label if named else ''}_{task}{'_video' if video else ''}"
        return self.root / "exports" / fmt / (name + suffix)

    # -- runs, evaluation, reports --------------------------------------------------------------
    def run(self, cell: Cell) -> Path:
        return self.root / "runs" / cell.name

    def cells(self, preset: str | None = None) -> list[Cell]:
        """The cells (of `preset`) with a run directory, finished or not. Other directories (one
        set aside as `{run}.model-vN` or `{run}.other-config`, one whose cell cannot be read) are
        not runs of a cell."""
        cells = []
        for recorded in sorted((self.root / "runs").glob("*/config.json")):
            try:
                cell = read_cell(recorded.parent)
            except ValueError:
                continue
            if self.run(cell) == recorded.parent and (preset is None or cell.preset == preset):
                cells.append(cell)
        return cells

    def eval_record(self, run, key: str) -> Path:
        return Path(run) / "eval" / f"{key}.json"

    def baselines(self, task: str, key: str) -> Path:
        return self.root / "eval" / "baselines" / f"{task}-{key}.json"

    def maniskill_plans(self, task: str, env: str, seed: int, episodes: int) -> Path:
        return self.root / "maniskill" / "eval-plans" / task / f"{env}-seed{seed}-n{episodes}"

    def report(self, name: str) -> Path:
        return self.root / "reports" / name


def read_cell(run) -> Cell:
    """The cell a run directory trains (its config.json)."""
    run = Path(run)
    recorded = json.loads((run / "config.json").read_text())
    return Cell(**recorded["cell"]) if "cell" in recorded else _cell_from_dataset(run, recorded)


def _cell_from_dataset(run: Path, recorded: dict) -> Cell:
    """The cell of a run written before runs recorded it: from the dataset it trained on, its
    condition and seed, and the preset in its name, which must come out the same as the
    directory's name. The store path may be relative to where training ran: then the dataset
    of the same name in this work directory is read."""
    import zarr

    store = Path(recorded.get("store", ""))
    if not store.is_absolute() or not store.exists():
        store = run.parent.parent / "datasets" / store.name
    try:
        attrs = zarr.open_group(store, mode="r").attrs.asdict()
        condition, seed = recorded["condition"], recorded["train"]["seed"]
        label = (attrs.get("paths") or {}).get("label") or DEFAULT_LABEL
        if run.name.startswith(f"{attrs['env']}_{condition}-"):  # an original-RGB cell of another label
            label = run.name[len(f"{attrs['env']}_{condition}-"):].split(f"_{attrs['task']}_")[0]
        preset = run.name.rsplit(f"_seed{seed}", 1)[0].rsplit("_", 1)[-1]
        cell = Cell(env=attrs["env"], condition=condition, task=attrs["task"], seed=seed, preset=preset, label=label)
    except (KeyError, FileNotFoundError, ValueError) as e:
        raise ValueError(f"{run}: no cell recorded and none can be read from its dataset ({e})") from e
    if cell.name != run.name:
        raise ValueError(f"{run}: no cell recorded; its dataset says {cell}, whose directory would be {cell.name}")
    return cell
