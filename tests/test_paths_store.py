"""The path store: fallbacks, the journal after a kill, provider identity, and importing the
user's HAMSTER output without ever unpickling it."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest

from maniflow.frames import FramesStore
from maniflow.paths.label import ProviderConfig, finish_episode, label_paths
from maniflow.paths.legacy import UnsafePickleError, import_hamster_dir, load_plain_pickle, read_path_pickle
from maniflow.paths.store import PathStore, ProviderMismatch, fallback_sources
from maniflow.workspace import Workspace


def test_fallback_sources():
    usable = np.array([False, True, False, False, False, True, False])
    assert fallback_sources(usable, "nearest").tolist() == [1, 1, 1, 1, 5, 5, 5]  # ties go to the earlier
    assert fallback_sources(usable, "previous").tolist() == [-1, 1, 1, 1, 1, 5, 5]
    assert fallback_sources(usable, "none").tolist() == [-1, 1, -1, -1, -1, 5, -1]
    assert fallback_sources(np.zeros(3, bool), "nearest").tolist() == [-1, -1, -1]
    with pytest.raises(ValueError, match="fallback"):
        fallback_sources(usable, "random")


def _answers(texts: dict[int, str]) -> dict[int, dict]:
    return {t: {"raw": s, "endpoint": "test", "latency_s": 0.1, "attempts": 1} for t, s in texts.items()}


def test_failed_frames_get_the_nearest_path_and_the_record_says_whose(work_copy):
    frames = FramesStore(Workspace.of(work_copy).frames("clean", "click_bell"))
    provider = ProviderConfig(kind="hamster")
    store = PathStore(Workspace.of(work_copy).paths("hamster", "clean", "click_bell"))
    store.bind(provider.identity(), provider.params())
    n = frames.episodes[0]["frames"]
    good = "<ans>[(0.1, 0.2), (0.3, 0.4)]</ans>"
    texts = {t: good.replace("0.1", f"0.{t % 10}") for t in range(n)}
    texts[3] = "I am not sure."
    texts[4] = "<ans>[(0.5, 0.5), (0.6, 0.5), ...]</ans>"
    del texts[5]  # never answered
    texts[6] = "<ans>[(0.7, 0.7), (0.7001, 0.7)]</ans>"  # both points in one pixel: no path to draw
    stats = finish_episode(store, frames, 0, provider, _answers(texts), {5: "no answer after 5 attempts"})
    assert stats["ok"] == n - 4 and stats["repaired"] == 1 and stats["failed"] == 2 and stats["error"] == 1
    assert stats["reasons"] == {"no <ans> tag and no points": 1, "no answer after 5 attempts": 1,
                                "degenerate: every point in one pixel": 1}
    ep = store.read(int(frames.episode_index[0]))
    assert ep.status[3:7] == ["failed", "repaired", "error", "failed"]
    assert ep.source[3] == 2 and ep.paths[3] == ep.paths[2]  # nearest, tie to the earlier frame
    assert ep.source[5] == 4 and ep.paths[5] == [(0.5, 0.5, 0), (0.6, 0.5, 0)]
    assert ep.source[6] == 7 and ep.record["frames"][6]["reason"] == "degenerate: every point in one pixel"
    rec = ep.record["frames"][3]
    assert rec["raw"] == "I am not sure." and rec["reason"] == "no <ans> tag and no points"
    # The file is JSON with one line per frame.
    lines = store.episode_file(ep.episode).read_text().splitlines()
    assert sum(line.startswith('{"frame": ') for line in lines) == n


def test_journal_cut_off_by_a_kill_keeps_only_whole_lines(work_copy):
    frames = FramesStore(Workspace.of(work_copy).frames("clean", "click_bell"))
    store = PathStore(Workspace.of(work_copy).paths("hamster", "clean", "click_bell"))
    store.dir.mkdir(parents=True)
    fp = frames.episodes[0]["fingerprint"]
    journal = store.journal(0, fp)
    journal.append(0, {"raw": "<ans>[(0.1, 0.1)]</ans>", "endpoint": "a", "latency_s": 1.0, "attempts": 1})
    journal.append(1, {"raw": "<ans>[(0.2, 0.2)]</ans>", "endpoint": "a", "latency_s": 1.0, "attempts": 1})
    journal.close()
    with open(store.journal_file(0), "a") as f:
        f.write('{"frame": 2, "raw": "<ans>[(0.3')  # the kill
    assert sorted(store.load_answers(0, fp)) == [0, 1]
    # Appending after the cut-off line starts a new line, so the next answer is whole.
    journal = store.journal(0, fp)
    journal.append(2, {"raw": "<ans>[(0.3, 0.3)]</ans>", "endpoint": "a", "latency_s": 1.0, "attempts": 1})
    journal.close()
    assert sorted(store.load_answers(0, fp)) == [0, 1, 2]
    # Answers of another version of the episode are not trusted.
    assert store.load_answers(0, {"hdf5": [1, 2]}) == {}


def test_a_store_refuses_answers_of_another_provider_configuration(work_copy):
    store = PathStore(Workspace.of(work_copy).paths("hamster", "clean", "click_bell"))
    store.bind(ProviderConfig(kind="hamster").identity(), {})
    with pytest.raises(ProviderMismatch, match="--label"):  # asked answers are never thrown away
        store.bind(ProviderConfig(kind="hamster", model="HAMSTER_13b").identity(), {})
    # Computed answers (the oracle) are simply recomputed for the new configuration.
    label_paths(work_copy, "clean", "click_bell", ProviderConfig(kind="oracle", oracle_points=10))
    report = label_paths(work_copy, "clean", "click_bell", ProviderConfig(kind="oracle", oracle_points=5))
    assert report.asked == report.frames and max(len(p) for p in PathStore(report.store).read(0).paths) == 5
    report = label_paths(work_copy, "clean", "click_bell",
                         ProviderConfig(kind="oracle", oracle_points=5, label="oracle5"))
    assert report.store.name == "click_bell" and report.store.parent.parent.name == "oracle5"


def test_refinishing_with_another_fallback_asks_nothing(work_copy):
    first = label_paths(work_copy, "clean", "click_bell", ProviderConfig(kind="oracle", fallback="nearest"))
    again = label_paths(work_copy, "clean", "click_bell", ProviderConfig(kind="oracle", fallback="none"))
    assert again.asked == 0 and again.reused == first.frames
    assert PathStore(again.store).read(0).record["fallback"] == "none"


# --- pickles ----------------------------------------------------------------------------------
class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_plain_path_pickles_load_in_every_protocol(protocol):
    path = [(0.25, 0.5, 0), (0.3, 0.45, 1), (1, 0, None), (0.1, 0.2, True)]
    data = pickle.dumps(path, protocol=protocol)
    assert load_plain_pickle(data) == path
    shared = [0.5, 0.5]
    nested = [shared, shared, (shared,)]
    assert load_plain_pickle(pickle.dumps(nested, protocol=protocol)) == nested
    big = [(float(i) / 1000, 2 ** 40 + i, -i) for i in range(1500)]  # long lists: APPENDS in batches
    assert load_plain_pickle(pickle.dumps(big, protocol=protocol)) == big


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_a_pickle_that_calls_anything_is_rejected_and_never_runs(tmp_path, protocol):
    marker = tmp_path / "pwned"
    data = pickle.dumps([(0.1, 0.2), _Exploit(marker)], protocol=protocol)
    with pytest.raises(UnsafePickleError, match="GLOBAL|not allowed"):
        load_plain_pickle(data, "evil.pkl")
    assert not marker.exists()
    with pytest.raises(UnsafePickleError):
        load_plain_pickle(pickle.dumps({"x": 1}, protocol=protocol))
    with pytest.raises(UnsafePickleError):
        load_plain_pickle(pickle.dumps([("0.1", "0.2")], protocol=protocol))


def test_truncated_pickle_is_a_clear_error():
    with pytest.raises(UnsafePickleError, match="broken.pkl"):
        load_plain_pickle(pickle.dumps([(0.1, 0.2)])[:-3], "broken.pkl")


def test_import_hamster_output_reparses_raw_answers_and_completes_later(work_copy, tmp_path):
    frames = FramesStore(Workspace.of(work_copy).frames("clean", "click_bell"))
    number = int(frames.episode_index[1])
    src = tmp_path / "hamster_results"
    ep_dir = src / "click_bell" / f"episode_{number:02d}"
    (ep_dir / "paths").mkdir(parents=True)
    (ep_dir / "raw_outputs").mkdir()
    # Frame 0: a pickled path only. Frame 1: a raw answer the original eval() parser lost
    # (cut off before </ans>), plus its empty pickle. Frame 2: raw answer that is garbage.
    (ep_dir / "paths" / "frame_0000.pkl").write_bytes(pickle.dumps([(0.2, 0.3, 1), (0.4, 0.5, 0)]))
    (ep_dir / "raw_outputs" / "frame_0001.txt").write_text(
        "<ans>[(0.6, 0.7), <action>Open Gripper</action>, (0.65, 0.72), (0.1")
    (ep_dir / "paths" / "frame_0001.pkl").write_bytes(pickle.dumps([]))
    (ep_dir / "raw_outputs" / "frame_0002.txt").write_text("no idea")
    counts = import_hamster_dir(src, work_copy, "clean", "click_bell")
    assert counts == {number: {"raw": 2, "pickle": 1}}
    store = PathStore(Workspace.of(work_copy).paths("hamster", "clean", "click_bell"))
    ep = store.read(number)
    assert ep.paths[0] == [(0.2, 0.3, 1), (0.4, 0.5, 0)] and ep.status[0] == "ok"
    assert ep.paths[1] == [(0.6, 0.7, 1), (0.65, 0.72, 1)] and ep.status[1] == "repaired"
    assert ep.status[2] == "failed" and ep.source[2] == 1
    assert set(ep.status[3:]) == {"error"}  # never asked: a later `maniflow paths` asks for these
    answers = store.load_answers(number, frames.episodes[1]["fingerprint"])
    assert sorted(answers) == [0, 1, 2]
    summary = json.loads((store.dir / "summary.json").read_text())
    assert summary["episodes"][str(number)]["error"] == frames.episodes[1]["frames"] - 3


def test_import_rejects_a_malicious_pickle_by_name(work_copy, tmp_path):
    marker = tmp_path / "pwned"
    ep_dir = tmp_path / "src" / "click_bell" / "episode_00" / "paths"
    ep_dir.mkdir(parents=True)
    (ep_dir / "frame_0000.pkl").write_bytes(pickle.dumps([(0.1, 0.2), _Exploit(marker)]))
    with pytest.raises(UnsafePickleError, match="frame_0000.pkl"):
        import_hamster_dir(tmp_path / "src", work_copy, "clean", "click_bell")
    assert not marker.exists()
    bad = tmp_path / "points.pkl"
    bad.write_bytes(pickle.dumps([(0.1,), (0.2, 0.3)]))
    with pytest.raises(UnsafePickleError, match=r"point 0 is \(0.1,\)"):
        read_path_pickle(bad)


def test_per_episode_labelling_can_leave_the_summary_to_the_caller(work_copy):
    report = label_paths(work_copy, "clean", "click_bell", ProviderConfig(kind="oracle"), episodes=[0],
                         summary=False)
    assert not (report.store / "summary.json").exists()
    assert report.faults == 0 and report.total["frames"] == PathStore(report.store).read(0).num_frames
    summary = PathStore(report.store).write_summary({})
    assert summary["fallback"] == "nearest" and list(summary["episodes"]) == [0]
