"""The synthetic generator, checked through the RoboTwin reader on real files."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from conftest import SMALL

from maniflow.geometry import project_points, quat_wxyz_to_matrix, tcp_positions
from maniflow.robotwin import (
    KEYS,
    ROBOTWIN_TCP_OFFSET,
    SINGLE_ARM_TASKS,
    RoboTwinEpisode,
    discover_episodes,
    read_instructions,
)
from maniflow.synthetic import GeneratorConfig, generate_dataset, simulate_episode, write_episode
from maniflow.synthetic import arm as armlib
from maniflow.synthetic.episode import ARM_LINK_ID, OBJECT_ID0


def test_layout_and_companion_files(small_root):
    refs = discover_episodes(small_root)
    assert len(refs) == 2 * 2 * 3
    assert {(r.task, r.config) for r in refs} == {
        (t, c) for t in SMALL.tasks for c in ("demo_clean", "demo_randomized")}
    ref = refs[0]
    assert ref.path == small_root / ref.task / ref.config / "data" / f"episode{ref.index}.hdf5"
    instructions = read_instructions(ref)
    assert instructions.seen and instructions.unseen
    info = json.loads((ref.dir / "scene_info.json").read_text())
    assert set(info) == {"episode_0", "episode_1", "episode_2"}
    assert all(e["synthetic"] is True for e in info.values())
    with RoboTwinEpisode(ref.path) as ep:
        assert ep.attrs["synthetic"] is True and "not recorded in RoboTwin" in ep.attrs["note"]
        assert set(ep.cameras) == {"head", "front"}


def test_read_back_matches_simulation(small_root):
    """Values written are the values simulated: frames (up to JPEG loss, same colours),
    joint vector, end poses, grippers and camera matrices with RoboTwin's shapes."""
    sim = simulate_episode("click_bell", "clean", 1, SMALL.seed, SMALL.cameras, SMALL.step_m,
                           SMALL.occlusion_prob)
    path = small_root / "click_bell" / "demo_clean" / "data" / "episode1.hdf5"
    with RoboTwinEpisode(path) as ep:
        arrays = ep.validate("head")
        t = sim.num_frames
        assert arrays.num_frames == t - 1  # (state, action) pairs: the last frame has no action
        for cam in ("head", "front"):
            frames = ep.rgb(cam)
            assert frames.shape == (t, 240, 320, 3) and frames.dtype == np.uint8
            error = np.abs(frames.astype(int) - sim.rgb[cam].astype(int)).mean()
            swapped = np.abs(frames[..., ::-1].astype(int) - sim.rgb[cam].astype(int)).mean()
            assert error < 2.0, error  # JPEG quality 95
            assert swapped > 5 * error  # channel order is right, not merely similar
            cams = ep.camera_matrices(cam)
            assert cams.intrinsic_cv.shape == (t, 3, 3) and cams.extrinsic_cv.shape == (t, 3, 4)
            assert cams.cam2world_gl.shape == (t, 4, 4)
        vector = ep.joint_vector()
        assert np.array_equal(vector, sim.vector) and vector.shape == (t, 14)
        assert np.array_equal(arrays.state, vector[:-1]) and np.array_equal(arrays.action, vector[1:])
        for arm in ("left", "right"):
            assert np.array_equal(arrays.endpose[arm], sim.endpose[arm])
            assert np.array_equal(ep._read(KEYS.joint_gripper(arm)), arrays.gripper[arm])
        assert np.array_equal(ep._read(KEYS.arm_joints("left")), vector[:, :6])
        assert np.array_equal(ep._read(KEYS.arm_joints("right")), vector[:, 7:13])
        state, action = ep.state_action()
        assert state.shape == action.shape == (t - 1, 14)
        assert np.array_equal(action[:-1], state[1:])


def test_colours_are_rgb_for_cv2_and_swapped_for_other_decoders(tmp_path):
    """RoboTwin encodes RGB arrays with cv2: cv2.imdecode gives RGB back, other decoders
    (which assume the JPEG holds RGB) see red and blue swapped. The red block must be red."""
    sim = simulate_episode("beat_block_hammer", "clean", 0, 0, occlusion_prob=0.0)
    path = tmp_path / "episode0.hdf5"
    write_episode(path, sim, "demo_clean")
    block = sim.ids["head"][0] == OBJECT_ID0 + 1
    assert block.sum() > 100
    with RoboTwinEpisode(path) as ep:
        frame = ep.rgb("head", 0, 1)[0]
        raw = bytes(ep._read(KEYS.rgb("head"), slice(0, 1))[0])
    r, g, b = frame[block].mean(axis=0)
    assert r > 150 and g < 90 and b < 90, (r, g, b)
    as_bgr_decoder_sees_it = cv2.cvtColor(cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR),
                                          cv2.COLOR_BGR2RGB)
    assert as_bgr_decoder_sees_it[block].mean(axis=0)[2] > 150  # "blue" block elsewhere


@pytest.mark.parametrize("camera", ["head", "front"])
def test_stored_end_pose_projects_onto_the_drawn_gripper(small_root, camera):
    """Projecting the palm position of the stored end pose (RoboTwin's convention) with the
    stored matrices lands on the drawn gripper (palm or finger pixels) within 2 px, in every frame the palm is visible;
    where it misses, something nearer (an object or arm part, never table or background)
    covers that pixel, and that happens in few frames."""
    checked, covered = 0, 0
    for task, env, config in [("click_bell", "cluttered", "demo_randomized"),
                              ("open_microwave", "clean", "demo_clean")]:
        sim = simulate_episode(task, env, 0, SMALL.seed, SMALL.cameras, SMALL.step_m, SMALL.occlusion_prob)
        with RoboTwinEpisode(small_root / task / config / "data" / "episode0.hdf5") as ep:
            arrays = ep.validate(camera)
            cams = ep.camera_matrices(camera)
        for arm in ("left", "right"):
            palm, _ = armlib.pose_from_robotwin_endpose(arrays.endpose[arm])
            uv, depth = project_points(palm, cams.intrinsic_cv, cams.extrinsic_cv)
            # The same projection through the OpenGL camera-to-world matrix.
            gl = cams.cam2world_gl.astype(np.float64)
            p_cam_gl = np.einsum("tji,tj->ti", gl[:, :3, :3], palm - gl[:, :3, 3])
            assert np.allclose(-p_cam_gl[:, 2], depth, atol=1e-4)
            palm_id, finger_id = sim.gripper_ids[arm]
            for t in range(len(uv)):
                ids = sim.ids[camera][t]
                gripper = (ids == palm_id) | (ids == finger_id)
                u, v = np.round(uv[t]).astype(int)
                if (ids == palm_id).sum() < 30 or not (0 <= u < 320 and 0 <= v < 240):
                    continue  # gripper hidden by something nearer, or outside the image
                dist = cv2.distanceTransform((~gripper).astype(np.uint8), cv2.DIST_L2, 5)
                checked += 1
                if dist[v, u] > 2.0:
                    assert ids[v, u] >= 10, (task, arm, t, dist[v, u], ids[v, u])
                    covered += 1
    assert checked > 100 and covered < 0.05 * checked, (checked, covered)


def test_stored_pose_and_matrices_reproduce_the_palm_silhouette(small_root):
    """Stronger than a point check: the palm box placed at the stored end pose (position and
    quaternion) and projected with the stored matrices covers exactly the drawn palm pixels.
    A camera off by 3 px fails this."""
    corners = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)]) * \
        np.array(armlib.PALM_SIZE) / 2
    checked = 0
    for task, env, config in [("click_bell", "clean", "demo_clean"), ("open_microwave", "cluttered",
                                                                      "demo_randomized")]:
        sim = simulate_episode(task, env, 0, SMALL.seed, SMALL.cameras, SMALL.step_m, SMALL.occlusion_prob)
        with RoboTwinEpisode(small_root / task / config / "data" / "episode0.hdf5") as ep:
            arrays = ep.validate("head")
            cams = ep.camera_matrices("head")
        arm = sim.layout.arm
        palm, rotation = armlib.pose_from_robotwin_endpose(arrays.endpose[arm])
        world = palm[:, None] + np.einsum("tij,cj->tci", rotation, corners)
        uv, _ = project_points(world, cams.intrinsic_cv[:, None], cams.extrinsic_cv[:, None])
        palm_id, finger_id = sim.gripper_ids[arm]
        for t in range(sim.num_frames):
            ids = sim.ids["head"][t]
            palm = ids == palm_id
            if palm.sum() < 30:
                continue
            hull = np.zeros(ids.shape, np.uint8)
            cv2.fillConvexPoly(hull, cv2.convexHull(np.round(uv[t] * 16).astype(np.int32)), 1, cv2.LINE_8, 4)
            grown = cv2.dilate(hull, np.ones((3, 3), np.uint8)).astype(bool)
            assert (palm & ~grown).sum() <= 2, (task, t)  # no palm pixel outside the predicted box
            inside = hull.astype(bool)
            own_arm = palm | (ids == finger_id) | (ids == ARM_LINK_ID[arm])  # the wrist sits in front
            drawn = own_arm[inside].mean()
            if drawn < 0.97:  # something else nearer covers part of the box
                assert ((ids >= 10) & ~own_arm)[inside].any(), (task, t, drawn)
                continue
            checked += 1
    assert checked > 40


def test_joint_vector_is_a_function_of_the_end_pose(small_root):
    ref = discover_episodes(small_root, tasks=["open_microwave"], configs=["demo_randomized"])[0]
    with RoboTwinEpisode(ref.path) as ep:
        a, vector = ep.validate(), ep.joint_vector()
    for arm, offset in (("left", 0), ("right", 7)):
        position, rotation = armlib.pose_from_joints(arm, vector[:, offset:offset + 6])
        palm, stored = armlib.pose_from_robotwin_endpose(a.endpose[arm])
        assert np.allclose(position, palm, atol=1e-6)  # float32, as a simulator reports
        assert np.allclose(rotation, stored, atol=1e-6)
        # RoboTwin's convention: the stored position lies 0.12 m behind the fingertips, along x.
        tips = tcp_positions(a.endpose[arm], ROBOTWIN_TCP_OFFSET)
        assert np.allclose(tips, armlib.fingertips(position, rotation), atol=1e-6)
        assert np.allclose(np.linalg.norm(tips - a.endpose[arm][:, :3], axis=1), 0.12, atol=1e-6)
        assert np.allclose(quat_wxyz_to_matrix(a.endpose[arm][:, 3:])[:, :, 0], rotation[:, :, 2], atol=1e-6)
        assert np.array_equal(vector[:, offset + 6], a.gripper[arm])


def test_deterministic_per_seed(tmp_path):
    cfg = GeneratorConfig(tasks=("turn_switch",), envs=("cluttered",), episodes=2, seed=3)
    for name in ("a", "b"):
        generate_dataset(tmp_path / name, cfg, progress=lambda _: None)
    other = GeneratorConfig(tasks=("turn_switch",), envs=("cluttered",), episodes=2, seed=4)
    generate_dataset(tmp_path / "c", other, progress=lambda _: None)
    rel = "turn_switch/demo_randomized/data/episode1.hdf5"
    with RoboTwinEpisode(tmp_path / "a" / rel) as a, RoboTwinEpisode(tmp_path / "b" / rel) as b, \
            RoboTwinEpisode(tmp_path / "c" / rel) as c:
        assert np.array_equal(a.rgb(), b.rgb())
        assert np.array_equal(a.joint_vector(), b.joint_vector())
        assert not np.array_equal(a.rgb("head", 0, 1), c.rgb("head", 0, 1))  # another layout
    # Episodes do not depend on how many others are generated.
    alone = simulate_episode("turn_switch", "cluttered", 1, 3)
    with RoboTwinEpisode(tmp_path / "a" / rel) as a:
        assert np.array_equal(alone.vector, a.joint_vector())


def test_regeneration_is_skipped_when_identical(tmp_path):
    cfg = GeneratorConfig(tasks=("click_bell",), envs=("clean",), episodes=1)
    first = generate_dataset(tmp_path, cfg, progress=lambda _: None)
    mtime = (tmp_path / "click_bell/demo_clean/data/episode0.hdf5").stat().st_mtime_ns
    second = generate_dataset(tmp_path, cfg, progress=lambda _: None)
    assert first[0]["written"] == 1 and second[0]["written"] == 0
    assert (tmp_path / "click_bell/demo_clean/data/episode0.hdf5").stat().st_mtime_ns == mtime


@pytest.mark.parametrize("task", SINGLE_ARM_TASKS)
def test_each_task_scripts_a_complete_manipulation(task):
    for env, index in (("clean", 0), ("cluttered", 1)):
        sim = simulate_episode(task, env, index, 0, occlusion_prob=0.0)
        arm = sim.layout.arm
        idle = "right" if arm == "left" else "left"
        if task == "open_microwave":
            assert arm == "left"
        pos = sim.endpose[arm][:, :3]
        assert 30 <= sim.num_frames <= 200
        assert np.linalg.norm(np.diff(pos, axis=0), axis=1).sum() > 0.3  # the arm moves
        assert np.ptp(sim.endpose[idle][:, :3], axis=0).max() < 1e-9  # the other arm waits
        grip = sim.gripper[arm]
        assert grip.min() == 0.0  # closes (grasp or press with a closed gripper)
        fingertips = tcp_positions(sim.endpose[arm], ROBOTWIN_TCP_OFFSET)
        reach = np.linalg.norm(fingertips - sim.layout.key_point, axis=1).min()
        assert reach < 0.06, (task, reach)  # fingertips reach the object
        assert sim.task_object_visibility[0] > 0.9  # the first frame shows the task object
        assert sim.layout.seen and sim.layout.unseen
        if task in ("move_can_pot", "place_object_stand", "open_microwave"):
            assert grip[-1] == 1.0  # released at the end


def test_cluttered_differs_from_clean_by_distractors_and_look():
    clean = simulate_episode("click_bell", "clean", 0, 0, occlusion_prob=0.0)
    cluttered = simulate_episode("click_bell", "cluttered", 0, 0, occlusion_prob=0.0)
    distractor_ids = lambda ids: {i for i in np.unique(ids) if i >= 60}  # noqa: E731
    assert not distractor_ids(clean.ids["head"][0])
    assert len(distractor_ids(cluttered.ids["head"][0])) >= 3
    clean2 = simulate_episode("click_bell", "clean", 1, 0, occlusion_prob=0.0)
    table = lambda s: s.rgb["head"][0][s.ids["head"][0] == 1].mean(axis=0)  # noqa: E731
    assert np.allclose(table(clean), table(clean2), atol=4)  # clean: one fixed look
    looks = [table(simulate_episode("click_bell", "cluttered", i, 0, occlusion_prob=0.0)) for i in range(3)]
    assert max(np.abs(a - b).max() for a in looks for b in looks) > 15  # cluttered: varies


@pytest.mark.parametrize("task", SINGLE_ARM_TASKS)
def test_occlusion_hides_the_task_object_for_a_while(task):
    sim = simulate_episode(task, "cluttered", 2, 0, occlusion_prob=1.0)
    start, end = sim.occlusion_frames
    vis = sim.task_object_visibility
    assert 0 < start < end <= sim.num_frames
    assert vis[0] > 0.9
    assert vis[start:end].min() < 0.6 and vis[start:end].min() < vis[0] - 0.4, vis[start:end].min()
    if task not in ("open_microwave", "beat_block_hammer"):  # large objects stay partly visible
        assert vis[start:end].min() < 0.25
