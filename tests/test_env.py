"""The synthetic closed-loop environment: task success checks, determinism, contact rules."""

import numpy as np
import pytest

from maniflow.evaluate import baseline
from maniflow.settings import EvalConfig
from maniflow.stats import bootstrap, in_words, paired_difference
from maniflow.synthetic.env import ARM_OFFSET, EnvConfig, TabletopEnv
from maniflow.synthetic.tasks import TASKS


@pytest.mark.parametrize("task", sorted(TASKS))
def test_expert_succeeds_and_doing_nothing_fails(task):
    cfg = EvalConfig(episodes=3)
    expert = baseline(task, "expert", cfg)
    nothing = baseline(task, "do_nothing", cfg)
    assert expert["success"] == [True, True, True]
    assert nothing["success"] == [False, False, False]
    env = TabletopEnv(task, "cluttered", 0, cfg.env_config())
    assert all(s < env.max_steps for s in expert["steps"])  # succeeded before the time limit
    assert nothing["steps"] == [TabletopEnv(task, "cluttered", i, cfg.env_config()).max_steps for i in range(3)]


def test_env_is_deterministic_per_seed_and_matches_the_generator_layout():
    a, b = TabletopEnv("click_bell", "cluttered", 2), TabletopEnv("click_bell", "cluttered", 2)
    other = TabletopEnv("click_bell", "cluttered", 2, EnvConfig(seed=7))
    np.testing.assert_array_equal(a.observe().rgb, b.observe().rgb)
    assert not np.array_equal(a.observe().rgb, other.observe().rgb)
    script = a.expert_vectors()
    for t in range(10):
        a.step(script[t + 1])
        b.step(script[t + 1])
    np.testing.assert_array_equal(a.observe().rgb, b.observe().rgb)
    np.testing.assert_allclose(a.state(), script[10], atol=1e-9)  # the script is followed exactly


def test_closing_away_from_the_object_grasps_nothing_and_moves_are_rate_limited():
    env = TabletopEnv("move_can_pot", "clean", 0)
    o = ARM_OFFSET[env.arm]
    action = env.state()
    action[o + 6] = 0.0  # close the gripper at home, far from the can
    env.step(action)
    assert env.held is None
    far = env.state()
    far[o:o + 3] += [0.0, 0.0, -0.3]  # 30 cm down in one step
    before = env.position.copy()
    env.step(far)
    assert np.linalg.norm(env.position - before) == pytest.approx(env.cfg.max_move_m)


def test_place_needs_the_object_carried_there():
    """A can that starts near the target is not a success unless it was picked up."""
    env = TabletopEnv("move_can_pot", "clean", 0)
    env.obj_t["can"][:2] = np.asarray(env.goal.point)[:2]
    assert not env._goal_reached()
    env.lifted.add("can")
    assert env._goal_reached()


def test_bootstrap_interval_and_paired_difference():
    x = np.zeros((1, 2, 40))
    x[:, :, :10] = 1.0  # 25% success
    est = bootstrap(x)
    assert est.mean == pytest.approx(0.25)
    assert 0.1 < est.low < 0.25 < est.high < 0.4
    better = x.copy()
    better[:, :, 10:30] = 1.0  # 75%: +50 points on the same episodes
    d = paired_difference(better, x)
    assert d.mean == pytest.approx(0.5)
    assert d.low > 0.3
    text = in_words("overlay", "original", d)
    assert text.startswith("overlay beats original by 50.0 points of success, 95% CI [")
    assert "excludes zero" in text
    assert "trails" in in_words("a", "b", paired_difference(x, better))


@pytest.mark.slow
def test_closed_loop_paths_can_come_from_a_vlm_server_over_http(small_work, path_server):
    """The VLM path source speaks the HAMSTER protocol to a real loopback server: one request
    per observed frame, answers parsed into full-frame paths."""
    from maniflow.paths.client import ClientConfig
    from maniflow.paths.label import ProviderConfig

    server = path_server(small_work, 2)
    source = ProviderConfig(kind="hamster").closed_loop(ClientConfig(endpoints=server.urls))
    envs = [TabletopEnv("click_bell", "cluttered", i) for i in range(3)]
    paths = source(envs, [e.observe().rgb for e in envs])
    assert len(paths) == 3 and all(len(p) >= 2 for p in paths)
    assert all(0 <= x <= 1 and 0 <= y <= 1 for p in paths for x, y, *_ in p)
    assert server.total("answered") == 3
