"""RoboTwin's two layouts, as RoboTwin's own collector and converter write them: one recording
reads the same from both; trees are found without flags; any embodiment; fingertip paths;
the working arm from scene_info.json; cameras that cannot be right are refused with their key."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest

from maniflow.frames import FramesStore, extract_task
from maniflow.geometry import cam2world_gl_from_extrinsic_cv, project_points
from maniflow.inspect import describe
from maniflow.paths.label import ProviderConfig, label_paths
from maniflow.paths.oracle import AT_REST
from maniflow.paths.store import PathStore
from maniflow.robotwin import (
    LAYOUTS,
    CameraMatrices,
    EpisodeContents,
    EpisodeError,
    SourceOptions,
    XPolicyLabEpisode,
    discover_episodes,
    write_xpolicylab_episode,
)
from maniflow.robotwin.episode import busiest_arm
from maniflow.synthetic import arm as armlib
from maniflow.synthetic import simulate_episode, write_episode
from maniflow.synthetic.episode import plan_episode

TASK, CONFIG = "click_bell", "demo_clean"
SIM = dict(task=TASK, env="clean", seed=5, occlusion_prob=0.0)


@pytest.fixture(scope="module")
def sims():
    return [simulate_episode(SIM["task"], SIM["env"], i, SIM["seed"], occlusion_prob=0.0) for i in range(2)]


def write_tree(root, layout: str, sims, config=CONFIG, embodiment="aloha_agilex", scene_info=True, folder=None):
    """The files RoboTwin's collector writes for these recordings, in `layout` (in `folder`
    instead of the collector's own when given)."""
    lay = LAYOUTS[layout]
    folder = folder or lay.folder(root, TASK, config, embodiment)
    for i, sim in enumerate(sims):
        write_episode(lay.path(folder, i), sim, config, layout=layout)
        instructions = lay.instructions_path(folder, i)
        instructions.parent.mkdir(parents=True, exist_ok=True)
        instructions.write_text(json.dumps({"seen": sim.layout.seen, "unseen": sim.layout.unseen}))
    if scene_info:
        (folder / "scene_info.json").write_text(json.dumps({f"episode_{i}": {"info": s.layout.info}
                                                            for i, s in enumerate(sims)}))
    return folder


def extract(root, work, **source):
    return FramesStore(extract_task(root, work, "clean", CONFIG, TASK, source=SourceOptions(**source)).store)


ROWS = ("rgb", "state", "action", "left_endpose", "right_endpose", "left_endpose_next", "right_endpose_next",
        "left_gripper", "right_gripper_next")


def assert_same_rows(a: FramesStore, b: FramesStore, rows=None):
    assert list(a.episode_index) == list(b.episode_index)
    for name in ROWS:
        x, y = a.array(name), b.array(name)
        assert np.array_equal(x if rows is None else x[rows], y), name
    for name in ("intrinsic_cv", "extrinsic_cv", "cam2world_gl"):  # float32 in both; one is derived
        x, y = a.array(name), b.array(name)
        assert np.allclose(x if rows is None else x[rows], y, atol=1e-5), name


def rewrite(path, edit) -> None:
    with h5py.File(path, "r+") as f:
        edit(f)


def test_one_recording_reads_the_same_from_both_layouts(sims, tmp_path):
    write_tree(tmp_path / "stable", "robotwin2", sims)
    folder = write_tree(tmp_path / "current", "xpolicylab", sims)
    a = extract(tmp_path / "stable", tmp_path / "wa")
    b = extract(tmp_path / "current", tmp_path / "wb")
    assert a.num_frames == sum(s.num_frames - 1 for s in sims)  # T - 1 pairs per recording
    assert_same_rows(a, b)
    ra, rb = a.episodes[0], b.episodes[0]
    assert (ra["layout"], rb["layout"]) == ("robotwin2", "xpolicylab")
    assert rb["provenance"]["data_format_version"] == "v1.0" and rb["embodiment"] == "aloha_agilex"
    assert ra["provenance"]["fps"] == rb["provenance"]["fps"] == 16.6667  # 15 steps of 1/250 s, not 15 Hz
    assert "not Hz" in rb["provenance"]["fps_from"]
    assert ra["instructions"]["seen"] == rb["instructions"]["seen"] == sims[0].layout.seen
    assert rb["instructions"]["from"] == "instruction/episode_*.json"
    assert ra["arm"] == rb["arm"] == sims[0].layout.arm and rb["arm_from"] == "scene_info.json"
    assert b.attrs["provenance"]["layouts"] == {"xpolicylab": 2}

    # RoboTwin's converter (process_data_xpolicylab.py) writes the extrinsic as extrinsic_matrix,
    # instructions as an array of strings plus a singular `instruction`, and no instruction/ files.
    shutil.rmtree(folder / "instruction")
    for i in range(2):
        def converted(f):
            cam = f["vision/cam_head"]
            cam.move("extrinsics_matrix", "extrinsic_matrix")
            texts = json.loads(f["instructions"][()].decode())
            del f["instructions"]
            f.create_dataset("instructions", data=np.asarray(texts, dtype=object), dtype=h5py.string_dtype())
            f.create_dataset("instruction", data=texts[0], dtype=h5py.string_dtype())
        rewrite(LAYOUTS["xpolicylab"].path(folder, i), converted)
    c = extract(tmp_path / "current", tmp_path / "wc")
    assert_same_rows(a, c)
    assert c.episodes[0]["instructions"] == {"seen": sims[0].layout.seen, "unseen": [],
                                             "from": "episode file: instructions"}

    # A recording that lacked cam2world_gl gets extrinsic_cv padded to 4x4: told apart by
    # where the arms are (in front of the camera), and read the same.
    def padded(f):
        m = f["vision/cam_head/extrinsic_matrix"][:]
        gl_to_cv = np.diag([1.0, -1.0, -1.0, 1.0])
        f["vision/cam_head/extrinsic_matrix"][...] = np.linalg.inv(m.astype(np.float64) @ gl_to_cv)
    rewrite(LAYOUTS["xpolicylab"].path(folder, 0), padded)
    d = extract(tmp_path / "current", tmp_path / "wd")
    assert_same_rows(a, d)
    assert d.episodes[0]["provenance"]["extrinsics"] == "extrinsic_cv"
    assert d.episodes[1]["provenance"]["extrinsics"] == "cam2world_gl"

    # --same-index-action (action = state): no next-frame action is stored; the pairs are
    # rebuilt from the next state, one fewer per recording.
    def same_index(f):
        for name in f["state"]:
            f["action"][name][...] = f["state"][name][:]
    for i in range(2):
        rewrite(LAYOUTS["xpolicylab"].path(folder, i), same_index)
    e = extract(tmp_path / "current", tmp_path / "we")
    keep = np.concatenate([np.arange(s.start, s.stop - 1) for s in (a.episode_slice(i) for i in range(2))])
    assert e.num_frames == a.num_frames - 2
    for name in ("rgb", "state", "action", "left_endpose", "right_endpose_next"):
        assert np.array_equal(a.array(name)[keep], e.array(name)), name
    assert e.episodes[0]["provenance"]["action_alignment"].startswith("same_index")


def test_current_layout_trees_are_found_without_flags(sims, tmp_path):
    # As collected: {root}/{config}/{task}/{embodiment}; two configs and two robots.
    root = tmp_path / "collected"
    write_tree(root, "xpolicylab", sims)
    write_tree(root, "xpolicylab", sims, config="demo_randomized")
    write_tree(root, "xpolicylab", sims[:1], embodiment="franka_pair")
    refs = discover_episodes(root)
    assert {(r.config, r.task, r.embodiment, r.layout) for r in refs} == {
        ("demo_clean", TASK, "aloha_agilex", "xpolicylab"), ("demo_randomized", TASK, "aloha_agilex", "xpolicylab"),
        ("demo_clean", TASK, "franka_pair", "xpolicylab")}
    assert refs[0].path.name == "episode_0000000.hdf5"
    with pytest.raises(ValueError, match=r"2 sources \(xpolicylab/aloha_agilex, xpolicylab/franka_pair\)"):
        extract(root, tmp_path / "w")
    assert extract(root, tmp_path / "w", embodiment="franka_pair").num_frames == sims[0].num_frames - 1
    text = describe(root)
    assert "RoboTwin current (XPolicyLab) layout: 5" in text
    assert "[xpolicylab] config demo_randomized, task click_bell, embodiment aloha_agilex: 2 episodes" in text

    # As downloaded (scripts/download_xpolicylab_data.sh): {root}/{task}/aloha_agilex, the
    # config in the download marker; as converted: in conversion_meta.json; else the folder.
    downloaded = tmp_path / "RoboTwin"
    write_tree(downloaded, "xpolicylab", sims, folder=downloaded / TASK / "aloha_agilex")
    (downloaded / ".download_markers").mkdir()
    (downloaded / ".download_markers" / f"{TASK}--demo_clean.complete").write_text("archive=demo_clean.zip\n")
    refs = discover_episodes(downloaded)
    assert {(r.config, r.config_from) for r in refs} == {("demo_clean", f"download marker {TASK}--demo_clean.complete")}
    assert "config from download marker" in describe(downloaded)
    (downloaded / ".download_markers" / f"{TASK}--demo_clean.complete").unlink()
    assert {r.config for r in discover_episodes(downloaded)} == {"RoboTwin"}
    (refs[0].dir / "conversion_meta.json").write_text(json.dumps({"task_config": "demo_randomized"}))
    assert {(r.config, r.config_from) for r in discover_episodes(tmp_path)
            if r.root == tmp_path and r.task == TASK and r.dir == refs[0].dir} == {
        ("demo_randomized", "conversion_meta.json")}

    # A root holding both layouts of one (config, task): the user picks one.
    write_tree(root, "robotwin2", sims)
    with pytest.raises(ValueError, match="robotwin2, xpolicylab/aloha_agilex"):
        extract(root, tmp_path / "w2", embodiment=None)
    assert extract(root, tmp_path / "w2", layout="robotwin2").episodes[0]["layout"] == "robotwin2"


def test_any_embodiment_vector_width_comes_from_the_data(sims, tmp_path):
    """A pair of 7-joint arms (16-d joint vector) in the current layout."""
    sim = sims[0]
    t = sim.num_frames
    rng = np.random.default_rng(0)
    joints = {a: rng.uniform(-1, 1, (t, 7)).astype(np.float32).astype(np.float64) for a in ("left", "right")}
    e = np.repeat(sim.extrinsic_cv["head"][None], t, 0)
    camera = {"head": CameraMatrices(np.repeat(sim.intrinsic_cv["head"][None], t, 0), e,
                                     cam2world_gl_from_extrinsic_cv(e))}
    vector = np.concatenate([joints["left"], sim.gripper["left"][:, None], joints["right"],
                             sim.gripper["right"][:, None]], axis=1)
    contents = EpisodeContents(rgb={"head": sim.rgb["head"]}, camera=camera, vector=vector, arm_joints=joints,
                               joint_gripper=sim.gripper, endpose=sim.endpose, gripper=sim.gripper)
    folder = LAYOUTS["xpolicylab"].folder(tmp_path / "root", TASK, CONFIG, "franka_pair")
    write_xpolicylab_episode(LAYOUTS["xpolicylab"].path(folder, 0), contents, ["press the bell"])
    store = extract(tmp_path / "root", tmp_path / "w")
    assert store.array("state").shape == (t - 1, 16)
    assert np.array_equal(store.array("state"), vector[:-1]) and np.array_equal(store.array("action"), vector[1:])
    assert store.episodes[0]["instructions"]["from"] == "episode file: instructions"
    assert store.attrs["provenance"]["joint_dim"] == {"16": 1}


def test_oracle_paths_start_at_the_fingertips(sims, tmp_path):
    """Episodes saved with RoboTwin's end-pose convention (0.12 m behind the fingertips):
    the oracle's first point is within 3 px of the projected fingertip centre, known here from
    the simulation itself. Following the stored pose instead misses by many pixels."""
    write_tree(tmp_path / "root", "xpolicylab", sims)
    errors = {}
    for offset in (None, 0.0):
        work = tmp_path / f"work{offset}"
        frames = extract(tmp_path / "root", work, tcp_offset=offset)
        label_paths(work, "clean", TASK, ProviderConfig(kind="oracle"))
        store = PathStore(work / "paths" / "oracle" / "clean" / TASK)
        err = []
        for i in range(2):
            plan = plan_episode(TASK, "clean", i, SIM["seed"], occlusion_prob=0.0)
            track = plan.tracks[plan.layout.arm]
            tips = armlib.fingertips(track.position, armlib.orientation(track.rpy))[:-1]
            uv, _ = project_points(tips, frames.array("intrinsic_cv", i), frames.array("extrinsic_cv", i))
            stored = store.read(i)
            first = np.array([p[0][:2] for p in stored.paths]) * (320, 240)
            ok = np.array([s == "ok" for s in stored.status]) & ((uv >= 0) & (uv < (320, 240))).all(axis=1)
            err += np.linalg.norm(first[ok] - uv[ok], axis=1).tolist()
        errors[offset] = np.array(err)
        assert len(err) > 30
    assert errors[None].max() < 3.0, errors[None].max()
    assert np.median(errors[0.0]) > 10, np.median(errors[0.0])  # the stored pose: the wrist, not the tips


def test_the_working_arm_comes_from_scene_info_else_the_heuristic(sims, tmp_path):
    root = tmp_path / "root"
    folder = write_tree(root, "robotwin2", sims)
    busiest = [busiest_arm(s.endpose, s.gripper) for s in sims]
    assert busiest == [s.layout.arm for s in sims]
    # scene_info.json names the other arm for episode 1 (RoboTwin's word wins over the heuristic).
    info = json.loads((folder / "scene_info.json").read_text())
    other = "left" if sims[1].layout.arm == "right" else "right"
    info["episode_1"]["info"]["{a}"] = other
    (folder / "scene_info.json").write_text(json.dumps(info))
    store = extract(root, tmp_path / "w")
    assert [(e["arm"], e["arm_from"]) for e in store.episodes] == [
        (sims[0].layout.arm, "scene_info.json"), (other, "scene_info.json")]
    (folder / "scene_info.json").unlink()
    report = extract_task(root, tmp_path / "w", "clean", CONFIG, TASK)
    assert report.count("extracted") == 2  # the arm's source changed: re-read
    store = FramesStore(report.store)
    assert [(e["arm"], e["arm_from"], e["arm_note"]) for e in store.episodes] == [
        (arm, "heuristic", "no scene_info.json") for arm in busiest]
    assert store.attrs["provenance"]["arm_from"] == {"heuristic": 2}


def _set(key, frame, value):
    def edit(f):
        arr = f[key][:]
        arr[frame:] = value(arr[frame:])
        f[key][...] = arr
    return edit


CAMERA_FAULTS = {  # episode -> (layout, corruption, key, frame, words in the message)
    1: ("robotwin2", _set("observation/head_camera/intrinsic_cv", 0, lambda a: 0 * a),
        "observation/head_camera/intrinsic_cv", 0, "focal length fx 0"),
    2: ("robotwin2", _set("observation/head_camera/intrinsic_cv", 5, lambda a: a + [[0, 0, 300], [0, 0, 0], [0, 0, 0]]),
        "observation/head_camera/intrinsic_cv", 5, "principal point (460, 120) lies outside the 320x240 image"),
    3: ("robotwin2", _set("observation/head_camera/extrinsic_cv", 7, lambda a: a * [1.1, 1.1, 1.1, 1.0]),
        "observation/head_camera/extrinsic_cv", 7, "rotation is not orthonormal"),
    4: ("robotwin2", _set("observation/head_camera/cam2world_gl", 3, lambda a: a + np.eye(4, 4, 3) * 0.05),
        "observation/head_camera/extrinsic_cv", 3, "disagrees with observation/head_camera/cam2world_gl"),
    5: ("xpolicylab", _set("vision/cam_head/intrinsic_matrix", 0, lambda a: 0 * a),
        "vision/cam_head/intrinsic_matrix", 0, "must be positive"),
    6: ("xpolicylab", _set("vision/cam_head/extrinsics_matrix", 2, lambda a: a + np.outer([0, 0, 0, 1], [0, 0, 1, 0])),
        "vision/cam_head/extrinsics_matrix", 2, "not a rigid transform"),
}


@pytest.mark.parametrize("layout", ["robotwin2", "xpolicylab"])
def test_cameras_that_cannot_be_right_are_quarantined_with_key_and_frame(sims, tmp_path, layout):
    faults = {n: f for n, f in CAMERA_FAULTS.items() if f[0] == layout}
    root = tmp_path / "root"
    folder = write_tree(root, layout, [sims[0]] * (max(faults) + 1))
    for n, (_, edit, *_rest) in faults.items():
        rewrite(LAYOUTS[layout].path(folder, n), edit)
    report = extract_task(root, tmp_path / "w", "clean", CONFIG, TASK)
    errors = {q["episode"]: q["error"] for q in report.quarantined}
    assert set(errors) == set(faults)
    for n, (_, _, key, frame, words) in faults.items():
        assert (errors[n]["kind"], errors[n]["key"], errors[n]["frame"]) == ("bad_camera", key, frame), errors[n]
        assert words in errors[n]["message"] and errors[n]["file"].endswith(LAYOUTS[layout].path(folder, n).name)
    store = FramesStore(report.store)
    assert 0 in store.episode_index and not set(faults) & set(store.episode_index.tolist())
    label = label_paths(tmp_path / "w", "clean", TASK, ProviderConfig(kind="oracle"))
    assert label.faults == 0  # the episodes left are sound: their oracle paths are paths


def _truncate(key, rows=3):
    def edit(f):
        values = f[key][:-rows]
        del f[key]
        f[key] = values
    return edit


@pytest.mark.parametrize("key, named", [
    ("vision/cam_head/colors", "state/"),  # fewer frames than rows: the first per-row array is named
    ("state/right_ee_poses", "state/right_ee_poses"),  # one arm's poses cut short
    ("action/left_ee_poses", "action/left_ee_poses"),  # the final pose comes from here
    ("action/right_ee_joint_states", "action/right_ee_joint_states"),
])
def test_current_layout_bad_rows_are_located_errors(sims, tmp_path, key, named):
    folder = write_tree(tmp_path / "root", "xpolicylab", sims[:1])
    path = LAYOUTS["xpolicylab"].path(folder, 0)
    rewrite(path, _truncate(key))
    with XPolicyLabEpisode(path) as ep, pytest.raises(EpisodeError) as err:
        ep.validate()
    assert err.value.kind == "length_mismatch" and err.value.key.startswith(named), err.value
    rows = sims[0].num_frames - 1
    assert f"but vision/cam_head/colors has {rows - 3 if named == 'state/' else rows} frames" in err.value.message
    report = extract_task(tmp_path / "root", tmp_path / "w", "clean", CONFIG, TASK)  # quarantined, no crash
    assert report.quarantined[0]["error"]["kind"] == "length_mismatch"


def test_current_layout_missing_keys_are_named(sims, tmp_path):
    folder = write_tree(tmp_path / "root", "xpolicylab", sims[:1])
    path = LAYOUTS["xpolicylab"].path(folder, 0)
    rewrite(path, lambda f: f.__delitem__("state/left_ee_poses"))
    with XPolicyLabEpisode(path) as ep, pytest.raises(EpisodeError) as err:
        ep.validate()
    assert (err.value.kind, err.value.key) == ("missing_key", "state/left_ee_poses")


def test_converted_episodes_say_where_they_came_from(sims, tmp_path):
    """RoboTwin's converter records each file's source (attribute source_path): its config
    names the folder's config, its number is the episode's key in the copied scene_info.json
    (--start-episode shifts the file numbers), and a folder mixing two configs (the converter
    run twice into one output root) is refused episode by episode, not mislabelled."""
    root = tmp_path / "RoboTwin"
    folder = write_tree(root, "xpolicylab", sims, folder=root / TASK / "aloha_agilex")
    arms = [s.layout.arm for s in sims]
    # Converted with --start-episode 5: files 0 and 1 are source episodes 5 and 6.
    (folder / "scene_info.json").write_text(json.dumps({"episode_5": {"info": {"{a}": arms[0]}},
                                                        "episode_6": {"info": {"{a}": arms[1]}}}))
    for i in range(2):
        rewrite(LAYOUTS["xpolicylab"].path(folder, i), lambda f, i=i: f.attrs.__setitem__(
            "source_path", f"data/{TASK}/demo_randomized/data/episode{5 + i}.hdf5"))
    (folder / "conversion_meta.json").write_text(json.dumps({"task_config": "demo_clean"}))  # overwritten, stale
    refs = discover_episodes(root)
    assert {(r.config, r.config_from) for r in refs} == {("demo_randomized", "source_path of the converted episodes")}
    store = FramesStore(extract_task(root, tmp_path / "w", "cluttered", "demo_randomized", TASK).store)
    assert [(e["arm"], e["arm_from"], e["scene_info_episode"]) for e in store.episodes] == [
        (arms[0], "scene_info.json", 5), (arms[1], "scene_info.json", 6)]
    assert store.episodes[0]["provenance"]["converted_from"].endswith("demo_randomized/data/episode5.hdf5")
    # Episode 1 was converted from the clean config into the same folder.
    rewrite(LAYOUTS["xpolicylab"].path(folder, 1), lambda f: f.attrs.__setitem__(
        "source_path", f"data/{TASK}/demo_clean/data/episode6.hdf5"))
    report = extract_task(root, tmp_path / "w", "cluttered", "demo_randomized", TASK)
    [q] = report.quarantined
    assert (q["episode"], q["error"]["kind"], q["error"]["key"]) == (1, "config_mismatch", "attrs/source_path")
    assert "converted from config 'demo_clean'" in q["error"]["message"]


def test_an_arm_at_rest_is_no_path_but_no_fault(sims, tmp_path):
    """click_bell ends holding the press: the oracle has no path there (every point in one
    pixel) and says why; the frames borrow the last path; nothing is reported as a fault."""
    write_tree(tmp_path / "root", "robotwin2", sims)
    extract(tmp_path / "root", tmp_path / "w")
    report = label_paths(tmp_path / "w", "clean", TASK, ProviderConfig(kind="oracle"))
    assert report.total["reasons"] == {AT_REST: report.total["failed"]} and report.total["failed"] >= 4
    assert report.faults == 0 and "WARNING" not in report.summary()
