"""Where episodes live: RoboTwin's two layouts, found under one root without flags.

    robotwin2   {root}/{task}/{config}/data/episode{N}.hdf5                   (stable 2.0)
    xpolicylab  {root}/{config}/{task}/{embodiment}/data/episode_{N:07d}.hdf5  (current; collected)
                {root}/{task}/{embodiment}/data/episode_{N:07d}.hdf5           (current; downloaded)

The file name tells the layouts apart (`episode0.hdf5` vs `episode_0000000.hdf5`), so a root
may hold either, or both. A downloaded or converted tree has no config folder: its config is
read from the converter's `source_path` attribute in its files, `conversion_meta.json`
(task_config) or the download marker `.download_markers/{task}--{config}.complete`, else it is
the folder's name.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import h5py

from maniflow.config import config, setting
from maniflow.robotwin.episode import ARMS, DEFAULT_CONFIG_NAMES, EpisodeError, Instructions
from maniflow.robotwin.stable import LAYOUT as ROBOTWIN2
from maniflow.robotwin.stable import RoboTwinEpisode
from maniflow.robotwin.xpolicylab import LAYOUT as XPOLICYLAB
from maniflow.robotwin.xpolicylab import XPolicyLabEpisode


@dataclass(frozen=True)
class Layout:
    """How one layout names its files; `reader` opens them."""

    name: str
    reader: type
    episode_file: re.Pattern  # data/ file names; group 1 is the episode number
    file_name: str  # format of the data/ file name
    instructions: str  # format of the instructions file, relative to the episode folder
    folder_format: str  # where a collector puts the episode folder under the root

    def folder(self, root, task: str, config: str, embodiment: str = "") -> Path:
        return Path(root) / self.folder_format.format(task=task, config=config, embodiment=embodiment)

    def path(self, folder: Path, index: int) -> Path:
        return folder / "data" / self.file_name.format(index)

    def instructions_path(self, folder: Path, index: int) -> Path:
        return folder / self.instructions.format(index)


LAYOUTS = {
    ROBOTWIN2: Layout(ROBOTWIN2, RoboTwinEpisode, re.compile(r"^episode(\d+)\.hdf5$"), "episode{}.hdf5",
                      "instructions/episode{}.json", "{task}/{config}"),
    XPOLICYLAB: Layout(XPOLICYLAB, XPolicyLabEpisode, re.compile(r"^episode_(\d{7})\.hdf5$"), "episode_{:07d}.hdf5",
                       "instruction/episode_{:07d}.json", "{config}/{task}/{embodiment}"),
}


@dataclass(frozen=True, order=True)
class EpisodeRef:
    """Where one episode lives. Small and picklable, so it can travel to a Dask worker."""

    root: Path
    task: str
    config: str
    index: int
    layout: str = ROBOTWIN2
    embodiment: str = ""  # the current layout's robot folder (aloha_agilex); "" in stable 2.0
    folder: Path | None = None  # the folder holding data/ (derived in stable 2.0)
    config_from: str = "folder name"

    @property
    def dir(self) -> Path:
        if self.folder is not None:
            return Path(self.folder)
        return LAYOUTS[self.layout].folder(self.root, self.task, self.config, self.embodiment)

    @property
    def path(self) -> Path:
        return LAYOUTS[self.layout].path(self.dir, self.index)

    @property
    def instructions_path(self) -> Path:
        return LAYOUTS[self.layout].instructions_path(self.dir, self.index)

    @property
    def scene_info_path(self) -> Path:
        return self.dir / "scene_info.json"

    def open(self):
        """The episode file, opened with its layout's reader (a context manager)."""
        return LAYOUTS[self.layout].reader(self.path)

    def fingerprint(self) -> dict:
        """Size and modification time of the inputs: changes when an episode is rewritten."""
        out = {}
        for name, p in (("hdf5", self.path), ("instructions", self.instructions_path)):
            try:
                st = p.stat()
                out[name] = [st.st_size, st.st_mtime_ns]
            except FileNotFoundError:
                out[name] = None
        return out


def _converted_from(folder: Path) -> str | None:
    """The config a converted folder's first episode says it came from (attribute source_path)."""
    first = min(folder.glob("data/episode_*.hdf5"), default=None)
    if first is None:
        return None
    try:
        with XPolicyLabEpisode(first) as ep:
            source = ep.source_episode()
    except EpisodeError:
        return None
    return source[1] if source else None


def _config_of(folder: Path, task: str, fallback: str) -> tuple[str, str]:
    """(config, where it came from) of a current-layout episode folder: the converter's record
    in the episode files, conversion_meta.json, the download marker, else the folder's name."""
    config = _converted_from(folder)
    if config:
        return config, "source_path of the converted episodes"
    meta = folder / "conversion_meta.json"
    if meta.exists():
        try:
            config = json.loads(meta.read_text()).get("task_config")
        except (OSError, ValueError):
            config = None
        if config:
            return str(config), "conversion_meta.json"
    markers = sorted((folder.parent.parent / ".download_markers").glob(f"{task}--*.complete"))
    if len(markers) == 1:
        return markers[0].stem.split("--", 1)[1], f"download marker {markers[0].name}"
    if markers:
        return fallback, f"folder name (download markers of several configs: {[m.name for m in markers]})"
    return fallback, "folder name"


def _folder_refs(root: Path, folder: Path, names) -> list[EpisodeRef]:
    """The episodes among the file `names` of `folder`/data, a layout's folder under `root`
    ({task}/{config} in stable 2.0, [{config}/]{task}/{embodiment} in the current layout)."""
    parts = folder.relative_to(root).parts
    stable = [m for m in map(LAYOUTS[ROBOTWIN2].episode_file.match, names) if m] if len(parts) == 2 else []
    current = [m for m in map(LAYOUTS[XPOLICYLAB].episode_file.match, names) if m]
    refs = [EpisodeRef(root, parts[0], parts[1], int(m.group(1))) for m in stable]
    if current:  # the config is looked up once per folder (it may open a file)
        task, embodiment = parts[-2], parts[-1]
        config, source = _config_of(folder, task, parts[0] if len(parts) == 3 else root.name)
        refs += [EpisodeRef(root, task, config, int(m.group(1)), XPOLICYLAB, embodiment, folder, source)
                 for m in current]
    return refs


def discover_episodes(root, tasks=None, configs=None) -> list[EpisodeRef]:
    """All episodes under `root` in either layout, sorted by (task, config, embodiment,
    layout, episode number)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"RoboTwin data directory not found: {root}")
    # Every layout's folder names its task second to last: other tasks' folders are never opened.
    folders = [d.parent for d in [*root.glob("*/*/data"), *root.glob("*/*/*/data")]
               if not tasks or d.parent.relative_to(root).parts[-2] in tasks]
    refs = [r for folder in folders for r in _folder_refs(root, folder, [f.name for f in (folder / "data").iterdir()])]
    refs = [r for r in refs if not configs or r.config in configs]
    return sorted(refs, key=lambda r: (r.task, r.config, r.embodiment, r.layout, r.index))


@config
class SourceOptions:
    """Where an env's recordings are and which of them to read, and how to read their end poses."""

    clean_config: str = setting(DEFAULT_CONFIG_NAMES["clean"], "RoboTwin config directory of the clean environment")
    cluttered_config: str = setting(DEFAULT_CONFIG_NAMES["cluttered"],
                                    "RoboTwin config directory of the cluttered environment")
    embodiment: str | None = setting(None, "robot folder of RoboTwin's current layout (e.g. aloha_agilex), when "
                                     "several robots' recordings share a (config, task)")
    layout: str | None = setting(None, "robotwin2 or xpolicylab, when both layouts hold the same (config, task)",
                                 choices=lambda: tuple(LAYOUTS))
    tcp_offset: float | None = setting(None, "metres from the stored end pose to the fingertips (default: the "
                                       "files' convention; RoboTwin: 0.12)")

    def __post_init__(self):
        if self.layout is not None and self.layout not in LAYOUTS:
            raise ValueError(f"layout {self.layout!r}: choose from {sorted(LAYOUTS)}")

    @property
    def config_names(self) -> dict[str, str]:
        return {"clean": self.clean_config, "cluttered": self.cluttered_config}

    def config_name(self, env: str) -> str:
        """The config directory holding `env`'s recordings."""
        return self.config_names[env]


def ref_for_file(path) -> EpisodeRef | None:
    """The reference of one episode file, from where it sits (None if its name fits no layout;
    a current-layout file is taken to sit in a collected {config}/{task}/{embodiment} tree)."""
    path = Path(path).absolute()
    folder = path.parent.parent
    depth = 2 if LAYOUTS[ROBOTWIN2].episode_file.match(path.name) else 3
    refs = _folder_refs(folder.parents[depth - 1], folder, [path.name])
    return refs[0] if refs else None


def select_episodes(root, task: str, config: str, embodiment: str | None = None, layout: str | None = None
                    ) -> list[EpisodeRef]:
    """The episodes of (config, task) under `root`: one layout and one embodiment, or a clear
    error naming the choices (their joint vectors and cameras would not mix)."""
    refs = [r for r in discover_episodes(root, tasks=[task], configs=[config])
            if (embodiment is None or r.embodiment == embodiment) and (layout is None or r.layout == layout)]
    if not refs:
        raise FileNotFoundError(f"no episodes of task {task!r}, config {config!r} under {root}"
                                + (f" (embodiment {embodiment})" if embodiment else "")
                                + (f" (layout {layout})" if layout else "")
                                + "; expected {task}/{config}/data/episode{N}.hdf5 (RoboTwin 2.0) or "
                                  "{config}/{task}/{embodiment}/data/episode_{N:07d}.hdf5 (current)")
    sources = sorted({(r.layout, r.embodiment) for r in refs})
    if len(sources) > 1:
        found = ", ".join(f"{lay}" + (f"/{emb}" if emb else "") for lay, emb in sources)
        raise ValueError(f"{root}: {task}/{config} is held by {len(sources)} sources ({found}); choose one "
                         "with embodiment (--embodiment) or layout (--layout)")
    return refs


def open_episode(path):
    """An episode file opened with the reader of the layout its contents follow."""
    try:
        with h5py.File(path, "r") as f:
            current = "vision" in f and "observation" not in f
    except (OSError, ValueError) as e:
        raise EpisodeError(path, "unreadable", f"cannot open HDF5 file ({e})") from e
    return (XPolicyLabEpisode if current else RoboTwinEpisode)(path)


def read_instructions(ref: EpisodeRef, episode=None) -> Instructions:
    """The episode's language instructions: its JSON file, else (current layout) the
    instructions stored in the episode file itself, else none."""
    p = ref.instructions_path
    if p.exists():
        try:
            raw = json.loads(p.read_text())
        except (OSError, ValueError) as e:
            raise EpisodeError(p, "unreadable", f"instructions are not valid JSON: {e}") from e
        if isinstance(raw, list):
            raw = {"seen": raw}
        if not isinstance(raw, dict):
            raise EpisodeError(p, "unreadable", "instructions must be a JSON object with 'seen'/'unseen'")
        return Instructions([str(s) for s in raw.get("seen", [])], [str(s) for s in raw.get("unseen", [])],
                            re.sub(r"\{[^}]*\}", "*", LAYOUTS[ref.layout].instructions))
    if ref.layout == XPOLICYLAB:
        if episode is None:
            with ref.open() as ep:
                texts, key = ep.instructions_in_file()
        else:
            texts, key = episode.instructions_in_file()
        if texts:
            return Instructions(texts, [], f"episode file: {key}")
    return Instructions()


@lru_cache(maxsize=64)
def _scene_info(path: Path, mtime_ns: int) -> dict | None:
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def scene_info_number(ref: EpisodeRef, episode) -> int:
    """The episode's key in scene_info.json: its file number, or for a converted episode
    (`source_episode`) the number of the file it came from, which the copied scene_info keeps."""
    source = episode.source_episode()
    return source[2] if source else ref.index


def scene_info_arm(ref: EpisodeRef, number: int | None = None) -> tuple[str | None, str]:
    """The working arm RoboTwin recorded for the episode (`info["{a}"]` in scene_info.json),
    or None, with what was found. `number`: its key there (`scene_info_number`), if not its
    file number."""
    number = ref.index if number is None else number
    p = ref.scene_info_path
    if not p.exists():
        return None, "no scene_info.json"
    info = _scene_info(p, p.stat().st_mtime_ns)
    if info is None:
        return None, "scene_info.json unreadable"
    entry = info.get(f"episode_{number}")
    arm = entry.get("info", {}).get("{a}") if isinstance(entry, dict) and isinstance(entry.get("info"), dict) \
        else None
    if arm in ARMS:
        return arm, f"scene_info.json episode_{number} info['{{a}}']"
    return None, f"scene_info.json has no arm for episode_{number}"
