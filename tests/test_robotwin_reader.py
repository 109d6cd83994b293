"""The RoboTwin 2.0 reader on real files: storage variants, discovery, state/action rule."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from maniflow.robotwin import KEYS, EpisodeError, RoboTwinEpisode, discover_episodes, read_instructions
from maniflow.synthetic import simulate_episode, write_episode


@pytest.fixture(scope="module")
def one_episode():
    return simulate_episode("turn_switch", "clean", 0, 1, occlusion_prob=0.0)


def test_fixed_and_variable_length_frames_read_the_same(one_episode, tmp_path):
    write_episode(tmp_path / "fixed.hdf5", one_episode, "demo_clean", frame_storage="fixed")
    write_episode(tmp_path / "vlen.hdf5", one_episode, "demo_clean", frame_storage="vlen")
    with h5py.File(tmp_path / "fixed.hdf5") as f, h5py.File(tmp_path / "vlen.hdf5") as g:
        assert f[KEYS.rgb("head")].dtype.kind == "S"  # RoboTwin: padded fixed-length strings
        assert h5py.check_vlen_dtype(g[KEYS.rgb("head")].dtype) == np.uint8
    # Opaque (np.void) frames, as some converters write them.
    with h5py.File(tmp_path / "fixed.hdf5") as f, h5py.File(tmp_path / "opaque.hdf5", "w") as g:
        for key in ("joint_action", "endpose", "observation"):
            f.copy(key, g)
        raw = f[KEYS.rgb("head")][:]
        del g[KEYS.rgb("head")]
        g[KEYS.rgb("head")] = raw.view(f"V{raw.dtype.itemsize}")  # padding follows the JPEG end
    frames = {}
    for name in ("fixed", "vlen", "opaque"):
        with RoboTwinEpisode(tmp_path / f"{name}.hdf5") as ep:
            frames[name] = ep.rgb("head")
    assert np.array_equal(frames["fixed"], frames["vlen"])
    assert np.array_equal(frames["fixed"], frames["opaque"])
    assert frames["fixed"].shape == (one_episode.num_frames, 240, 320, 3)


def test_frames_stored_as_text_are_a_located_error(one_episode, tmp_path):
    """Variable-length *strings* cannot hold JPEG bytes (embedded NULs); a file that has them
    gets a bad_frame error naming key and frame, not a crash or a wrong image."""
    write_episode(tmp_path / "e.hdf5", one_episode, "demo_clean")
    with h5py.File(tmp_path / "e.hdf5", "r+") as f:
        t = len(f[KEYS.rgb("head")])
        del f[KEYS.rgb("head")]
        f.create_dataset(KEYS.rgb("head"), data=[f"frame {i}" for i in range(t)],
                         dtype=h5py.string_dtype())
    with RoboTwinEpisode(tmp_path / "e.hdf5") as ep, pytest.raises(EpisodeError) as err:
        ep.rgb("head")
    assert (err.value.kind, err.value.key, err.value.frame) == ("bad_frame", KEYS.rgb("head"), 0)
    assert err.value.message == "undecodable JPEG (7 bytes)"  # "frame 0"


def test_partial_frame_ranges(one_episode, tmp_path):
    write_episode(tmp_path / "e.hdf5", one_episode, "demo_clean")
    with RoboTwinEpisode(tmp_path / "e.hdf5") as ep:
        everything = ep.rgb("head")
        assert np.array_equal(ep.rgb("head", 5, 9), everything[5:9])


def test_state_action_rule(one_episode, tmp_path):
    write_episode(tmp_path / "e.hdf5", one_episode, "demo_clean")
    with RoboTwinEpisode(tmp_path / "e.hdf5") as ep:
        state, action = ep.state_action()
    v = one_episode.vector
    assert np.array_equal(state, v[:-1]) and np.array_equal(action, v[1:])


def test_discovery_sorts_numerically_and_filters(tmp_path, one_episode):
    for config in ("demo_clean", "mine"):
        for i in (0, 2, 10):
            (tmp_path / "turn_switch" / config / "data").mkdir(parents=True, exist_ok=True)
            (tmp_path / "turn_switch" / config / "data" / f"episode{i}.hdf5").touch()
    (tmp_path / "turn_switch" / "mine" / "data" / "notes.txt").touch()
    refs = discover_episodes(tmp_path, configs=["mine"])
    assert [r.index for r in refs] == [0, 2, 10]
    assert len(discover_episodes(tmp_path)) == 6
    assert discover_episodes(tmp_path, tasks=["click_bell"]) == []
    with pytest.raises(FileNotFoundError):
        discover_episodes(tmp_path / "nope")


def test_missing_camera_names_the_key(one_episode, tmp_path):
    write_episode(tmp_path / "e.hdf5", one_episode, "demo_clean")
    with RoboTwinEpisode(tmp_path / "e.hdf5") as ep, pytest.raises(EpisodeError) as err:
        ep.rgb("front")
    assert err.value.kind == "missing_key" and err.value.key == "observation/front_camera/rgb"
    assert "e.hdf5" in str(err.value)


def test_instructions_missing_or_broken(tmp_path, small_root):
    ref = discover_episodes(small_root)[0]
    assert read_instructions(ref).default
    moved = type(ref)(tmp_path, ref.task, ref.config, ref.index)
    assert read_instructions(moved).seen == []  # missing file: no instructions, not an error
    moved.instructions_path.parent.mkdir(parents=True)
    moved.instructions_path.write_text("{not json")
    with pytest.raises(EpisodeError) as err:
        read_instructions(moved)
    assert err.value.kind == "unreadable" and "episode0.json" in str(err.value)
