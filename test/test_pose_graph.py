"""The reference pose-graph backend on a synthetic 3-lap circle with drifting odometry.

Ground truth: 3 laps of a circle (radius 8 m, 50 keyframes a lap, a gentle height wave).
Odometry: the true increments with a 5 % yaw-rate scale bias, a 0.004 rad yaw drift and a 0.5 %
distance bias per keyframe, plus noise (0.01 m, 0.003 rad): several metres of ATE after 3 laps.
Loops: every 3rd keyframe of laps 2 and 3 to the same place in the earlier laps, the true
relative pose perturbed by noise drawn from its own covariance (a few cm and a few tenths of a
degree, correlated, like PnP's).
"""
import math

import gtsam
import numpy as np
import pytest

from boq_ros.eval.trajectory_error import absolute_trajectory_error
from boq_ros.pose_graph import (
    PoseGraph,
    PoseGraphError,
    floored_covariance,
    to_gtsam_covariance,
)
from boq_ros.settings import PoseGraphSettings, SettingError

PER_LAP = 50
STEP_NS = 500_000_000
START_NS = 1_700_000_000_000_000_000


def rot(rotvec):
    return gtsam.Rot3.Expmap(np.asarray(rotvec, dtype=float)).matrix()


def pose(rotvec=(0.0, 0.0, 0.0), translation=(0.0, 0.0, 0.0)):
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = rot(rotvec), translation
    return out


def perturbed(p, delta):
    """Apply our covariance convention's perturbation: t + d_t, exp([d_rot]x) R."""
    out = p.copy()
    out[:3, :3] = rot(delta[3:]) @ p[:3, :3]
    out[:3, 3] = p[:3, 3] + delta[:3]
    return out


def key(i):
    return START_NS + i * STEP_NS


def circle(laps=3, per_lap=PER_LAP, radius=8.0):
    angles = 2 * np.pi * np.arange(laps * per_lap) / per_lap
    return np.array([pose((0, 0, a + np.pi / 2),
                          (radius * np.cos(a), radius * np.sin(a), 0.3 * np.sin(3 * a)))
                     for a in angles])


def drifting_odometry(truth, rng):
    odometry = [truth[0]]
    for i in range(1, len(truth)):
        step = np.linalg.inv(truth[i - 1]) @ truth[i]
        turn = gtsam.Rot3.Logmap(gtsam.Rot3(step[:3, :3]))
        noisy = pose(turn * 1.05 + [0, 0, 0.004] + rng.normal(0, 0.003, 3),
                     step[:3, 3] * 1.005 + rng.normal(0, 0.01, 3))
        odometry.append(odometry[-1] @ noisy)
    return np.array(odometry)


def pnp_like_covariance(rng):
    """A correlated covariance of about 2 cm and 0.25 deg, in our convention."""
    a = rng.normal(size=(6, 6))
    c = a @ a.T / 6 + 0.5 * np.eye(6)
    sigma = np.array([0.02] * 3 + [0.004] * 3)
    return c / np.sqrt(np.outer(np.diag(c), np.diag(c))) * np.outer(sigma, sigma)


def make_loops(truth, rng, wrong_fraction=0.0, per_lap=PER_LAP):
    """Return [(i_from, i_to, T_from_to, covariance, correct)], some replaced by wrong ones."""
    loops = []
    for i in range(per_lap, len(truth), 3):
        for j in range(i - per_lap, -1, -per_lap):
            cov = pnp_like_covariance(rng)
            relative = perturbed(np.linalg.inv(truth[i]) @ truth[j],
                                 rng.multivariate_normal(np.zeros(6), cov))
            loops.append([i, j, relative, cov, True])
    for k in rng.choice(len(loops), round(wrong_fraction * len(loops)), replace=False):
        i = loops[k][0]
        while True:  # another place: at least 8 keyframes (8 m) from i on every lap
            j = int(rng.integers(0, i - 10))
            if 8 <= (i - j) % per_lap <= per_lap - 8:
                break
        loops[k][1:3] = j, pose(rng.normal(0, 1.0, 3), rng.normal(0, 3.0, 3))
        loops[k][4] = False
    return loops


def run(odometry, loops, **settings):
    """Feed the graph as a live node would: keyframe, its loops, update."""
    graph = PoseGraph(PoseGraphSettings(**settings))
    by_query = {}
    for loop in loops:
        by_query.setdefault(loop[0], []).append(loop)
    for i, odometry_pose in enumerate(odometry):
        graph.add_keyframe(key(i), odometry_pose)
        for i_from, i_to, relative, cov, _ in by_query.get(i, []):
            assert graph.add_loop(key(i_from), key(i_to), relative, cov)
        graph.update()
    return graph


def estimate(graph):
    return np.array([graph.pose(k) for k in graph.keys])


def ate(poses, truth):
    return absolute_trajectory_error(poses, truth, 'se3').rmse


@pytest.fixture(scope='module')
def scenario():
    truth = circle()
    odometry = drifting_odometry(truth, np.random.default_rng(0))
    clean = make_loops(truth, np.random.default_rng(1))
    wrong = make_loops(truth, np.random.default_rng(1), wrong_fraction=0.1)
    return truth, odometry, clean, wrong


@pytest.fixture(scope='module')
def clean_graph(scenario):
    truth, odometry, clean, _ = scenario
    return run(odometry, clean)


# -- accuracy ----------------------------------------------------------------------------------
def test_loops_remove_the_drift(scenario, clean_graph):
    truth, odometry, clean, _ = scenario
    odometry_ate, optimised_ate = ate(odometry, truth), ate(estimate(clean_graph), truth)
    assert odometry_ate > 2.5
    assert optimised_ate < odometry_ate / 10, (odometry_ate, optimised_ate)
    assert clean_graph.loop_count == len(clean) and len(clean_graph) == len(truth)


def test_the_robust_kernel_withstands_false_loops(scenario, clean_graph):
    truth, odometry, _, wrong = scenario
    clean_ate = ate(estimate(clean_graph), truth)
    robust = run(odometry, wrong)
    assert ate(estimate(robust), truth) < 1.5 * clean_ate
    plain = run(odometry, wrong, robust_kernel='none')  # the test can fail: without the kernel
    assert ate(estimate(plain), truth) > 10 * clean_ate

    # The report shows which loops the kernel down-weighted: the false ones.
    edges = robust.loops()
    correct = np.array([loop[4] for loop in wrong])
    weights = np.array([e.weight for e in edges])
    assert [(e.key_from, e.key_to) for e in edges] == [(key(i), key(j)) for i, j, *_ in wrong]
    assert weights[~correct].max() < 0.05 < 0.5 < np.median(weights[correct])
    assert all(e.weight == 1.0 for e in plain.loops())


def test_isam2_ends_where_batch_levenberg_marquardt_ends(scenario):
    truth, odometry, _, wrong = scenario
    graph = run(odometry, wrong)
    factors, values = graph.factor_graph()
    initial = gtsam.Values()
    for i, odometry_pose in enumerate(odometry):
        initial.insert(i, gtsam.Pose3(odometry_pose))
    params = gtsam.LevenbergMarquardtParams()
    params.setRelativeErrorTol(1e-12)
    params.setAbsoluteErrorTol(1e-12)
    params.setMaxIterations(200)
    batch = gtsam.LevenbergMarquardtOptimizer(factors, initial, params).optimize()
    assert factors.error(values) == pytest.approx(factors.error(batch), rel=1e-5)
    batch_positions = np.array([batch.atPose3(i).translation() for i in range(len(odometry))])
    assert np.abs(estimate(graph)[:, :3, 3] - batch_positions).max() < 1e-3


def test_same_inputs_same_poses(scenario):
    truth, odometry, _, wrong = scenario
    a, b = run(odometry[:80], wrong[:8]), run(odometry[:80], wrong[:8])
    np.testing.assert_array_equal(estimate(a), estimate(b))
    assert [e.whitened_error for e in a.loops()] == [e.whitened_error for e in b.loops()]
    np.testing.assert_array_equal(a.map_from_odom(), b.map_from_odom())


class _FailingOnce:
    """An ISAM2 whose next update with new factors raises, as on an indeterminant system."""

    def __init__(self, isam) -> None:
        self.isam, self.failed = isam, False

    def update(self, *args):
        if args and not self.failed:
            self.failed = True
            self.isam.update(*args)  # ISAM2 keeps a failed batch's variables
            raise RuntimeError('Indeterminant linear system detected near variable 7')
        return self.isam.update(*args)

    def __getattr__(self, name):
        return getattr(self.isam, name)


def test_a_solver_failure_drops_that_batch_of_loops_and_the_graph_goes_on(scenario):
    truth, odometry, clean, _ = scenario
    reference = run(odometry, clean)
    failing = next(loop[0] for loop in clean if loop[0] > 60)  # a keyframe with a loop
    graph = run(odometry[:failing], [loop for loop in clean if loop[0] < failing])
    loops_before = graph.loop_count
    graph._isam = _FailingOnce(graph._isam)
    graph.add_keyframe(key(failing), odometry[failing])
    late = next(loop for loop in clean if loop[0] == failing)
    assert graph.add_loop(key(late[0]), key(late[1]), late[2], late[3])
    with pytest.raises(PoseGraphError, match='rebuilt without the 1 loop'):
        graph.update()
    assert graph.loop_count == loops_before and len(graph) == failing + 1
    for i in range(failing + 1, len(odometry)):  # the rebuilt graph takes the rest as usual
        graph.add_keyframe(key(i), odometry[i])
        for i_from, i_to, relative, cov, _ in (loop for loop in clean if loop[0] == i):
            assert graph.add_loop(key(i_from), key(i_to), relative, cov)
        graph.update()
    assert ate(estimate(graph), truth) < 1.5 * ate(estimate(reference), truth)


# -- map -> odom -------------------------------------------------------------------------------
def test_map_from_odom_is_identity_until_a_loop_then_corrects_the_drift(scenario, clean_graph):
    truth, odometry, clean, _ = scenario
    graph = PoseGraph()
    np.testing.assert_array_equal(graph.map_from_odom(), np.eye(4))
    for i in range(PER_LAP):
        graph.add_keyframe(key(i), odometry[i])
        graph.update()
    np.testing.assert_allclose(graph.map_from_odom(), np.eye(4), atol=1e-9)
    np.testing.assert_allclose(graph.pose(key(10)), odometry[10], atol=1e-9)

    last = clean_graph.keys[-1]
    corrected = clean_graph.map_from_odom() @ clean_graph.odometry_pose(last)
    np.testing.assert_allclose(corrected, clean_graph.pose(last), atol=1e-12)
    np.testing.assert_array_equal(clean_graph.odometry_pose(last), odometry[-1])
    # The last keyframe's odometry is metres off; map_from_odom brings it back near the truth
    # (in the first keyframe's frame, which the prior pins: no alignment needed).
    assert np.linalg.norm(odometry[-1][:3, 3] - truth[-1][:3, 3]) > 2.0
    assert np.linalg.norm(corrected[:3, 3] - truth[-1][:3, 3]) < 0.3


def test_keyframes_added_since_the_last_update_are_predicted_from_odometry(scenario):
    truth, odometry, clean, _ = scenario
    graph = run(odometry[:60], [loop for loop in clean if loop[0] < 60])
    graph.add_keyframe(key(60), odometry[60])
    expected = graph.map_from_odom() @ odometry[60]  # map_from_odom still of keyframe 59
    np.testing.assert_allclose(graph.pose(key(60)), expected, atol=1e-12)
    np.testing.assert_allclose(graph.poses()[key(60)], expected, atol=1e-12)
    assert graph.update() > 0.0
    assert graph.update() == 0.0  # nothing new


# -- covariance convention -----------------------------------------------------------------------
def gtsam_tangent(reference, p):
    """GTSAM's tangent of p at reference: xi with p = reference * Exp(xi)."""
    return gtsam.Pose3.Logmap(gtsam.Pose3(reference).between(gtsam.Pose3(p)))


RELATIVE = pose((0.3, -0.5, 2.0), (1.0, -2.0, 0.5))


def test_covariance_conversion_matches_the_numerical_jacobian():
    step, jacobian = 1e-7, np.zeros((6, 6))
    for k in range(6):
        delta = np.zeros(6)
        delta[k] = step
        jacobian[:, k] = gtsam_tangent(RELATIVE, perturbed(RELATIVE, delta)) / step
    cov = pnp_like_covariance(np.random.default_rng(2))
    np.testing.assert_allclose(to_gtsam_covariance(cov, RELATIVE), jacobian @ cov @ jacobian.T,
                               rtol=1e-5, atol=1e-12)


def test_covariance_conversion_matches_monte_carlo():
    rng = np.random.default_rng(3)
    cov = pnp_like_covariance(rng) * 4  # 4 cm, 0.5 deg
    samples = rng.multivariate_normal(np.zeros(6), cov, 20000)
    tangents = np.array([gtsam_tangent(RELATIVE, perturbed(RELATIVE, d)) for d in samples])
    expected = to_gtsam_covariance(cov, RELATIVE)
    sigma = np.sqrt(np.diag(expected))
    # Correlations and variances agree within the sampling error (about 1 / sqrt(20000)).
    np.testing.assert_allclose(np.cov(tangents.T) / np.outer(sigma, sigma),
                               expected / np.outer(sigma, sigma), atol=0.04)


def test_loop_covariance_is_taken_in_the_from_frame():
    """A loop tight along the from keyframe's x and loose along its y moves the pose along x."""
    settings = PoseGraphSettings(odometry_min_sigma_translation_m=0.1,
                                 odometry_translation_sigma_per_m=0.0,
                                 loop_min_sigma_translation_m=1e-4,
                                 loop_min_sigma_rotation_rad=1e-4, robust_kernel='none')
    graph = PoseGraph(settings)
    a, b = pose((0, 0, 0.5), (1.0, 2.0, 0.0)), pose((0, 0, 0.5 + np.pi / 3), (3.0, 4.0, 0.0))
    graph.add_keyframe(key(0), a)
    graph.add_keyframe(key(1), b)
    relative = np.linalg.inv(a) @ b
    relative[:3, 3] += [0.5, 0.5, 0.0]  # the loop says: 0.5 m further along a's x and y
    cov = np.diag([1e-3, 10.0, 1e-3, 1e-3, 1e-3, 1e-3]) ** 2  # sure of x, not of y
    graph.add_loop(key(0), key(1), relative, cov)
    graph.update()
    moved = np.linalg.inv(a) @ graph.pose(key(1)) - np.linalg.inv(a) @ b
    assert moved[0, 3] == pytest.approx(0.5, abs=1e-3)
    assert moved[1, 3] == pytest.approx(0.0, abs=1e-3)


def test_floored_covariance():
    cov = np.diag([0.01, 0.2, 0.0, 0.001, 0.05, 0.0]) ** 2
    cov[0, 1] = cov[1, 0] = 0.5 * 0.01 * 0.2
    out = floored_covariance(cov, 0.05, 0.01)
    floor = np.diag([0.05] * 3 + [0.01] * 3) ** 2
    assert np.linalg.eigvalsh(out - floor).min() > -1e-15  # at least the floor everywhere
    assert np.linalg.eigvalsh(out - cov).min() > -1e-15  # never more confident than given
    assert out[1, 1] == pytest.approx(0.2 ** 2, rel=0.05)  # a large sigma stays
    loose = np.diag([0.3] * 3 + [0.1] * 3) ** 2
    np.testing.assert_allclose(floored_covariance(loose, 0.05, 0.01), loose, rtol=1e-12)


def test_unknown_covariance_uses_the_default_sigmas(tmp_path):
    graph = PoseGraph()
    graph.add_keyframe(key(0), pose())
    graph.add_keyframe(key(1), pose((0, 0, 0.1), (1, 0, 0)))
    relative = pose((0, 0, 0.1), (1, 0, 0))
    assert graph.add_loop(key(1), key(0), np.linalg.inv(relative), None)
    assert graph.add_loop(key(1), key(0), np.linalg.inv(relative), -np.ones(36))
    graph.update()
    factors, _ = gtsam.readG2o(str(graph.write_g2o(tmp_path / 'g.g2o')), True)
    s = PoseGraphSettings()
    expected = np.diag([s.loop_sigma_rotation_rad] * 3 + [s.loop_sigma_translation_m] * 3) ** 2
    for i in (1, 2):
        np.testing.assert_allclose(factors.at(i).noiseModel().covariance(), expected, rtol=1e-5)


# -- g2o -----------------------------------------------------------------------------------------
def test_g2o_round_trip(tmp_path, clean_graph):
    path = clean_graph.write_g2o(tmp_path / 'graph.g2o')
    factors, values = gtsam.readG2o(str(path), True)
    assert values.size() == len(clean_graph)
    assert factors.size() == len(clean_graph) - 1 + clean_graph.loop_count  # no prior in g2o
    for i, k in enumerate(clean_graph.keys):
        read = values.atPose3(i).matrix()
        np.testing.assert_allclose(read, clean_graph.pose(k), atol=1e-4)  # 6 digits in g2o
    edges = {(f.keys()[0], f.keys()[1]) for f in (factors.at(i) for i in range(factors.size()))}
    index = {k: i for i, k in enumerate(clean_graph.keys)}
    assert {(index[e.key_from], index[e.key_to]) for e in clean_graph.loops()} <= edges


# -- refused inputs ------------------------------------------------------------------------------
def test_keys_must_be_new_and_increasing():
    graph = PoseGraph()
    graph.add_keyframe(key(1), pose())
    with pytest.raises(PoseGraphError, match=f'keyframe {key(1)} is already in the graph'):
        graph.add_keyframe(key(1), pose())
    with pytest.raises(PoseGraphError, match=f'keyframe {key(0)} is older'):
        graph.add_keyframe(key(0), pose())
    with pytest.raises(PoseGraphError, match='integer stamp'):
        graph.add_keyframe(1.5, pose())
    with pytest.raises(PoseGraphError, match=f'keyframe {key(7)} is not in the graph'):
        graph.pose(key(7))
    assert graph.keys == [key(1)]


def test_loops_to_unknown_keyframes_are_refused_not_added():
    graph = PoseGraph()
    graph.add_keyframe(key(0), pose())
    assert not graph.add_loop(key(0), key(5), pose(), None)
    assert not graph.add_loop(key(5), key(0), pose(), None)
    assert graph.loop_count == 0
    graph.add_keyframe(key(5), pose(translation=(1, 0, 0)))
    assert graph.add_loop(key(5), key(0), pose(translation=(-1, 0, 0)), None)  # the retry
    assert graph.loop_count == 1


@pytest.mark.parametrize('relative, cov, message', [
    (np.full((4, 4), np.nan), None, 'non-finite'),
    (np.diag([2.0, 1.0, 1.0, 1.0]), None, 'not a rigid transform'),
    (np.diag([-1.0, -1.0, -1.0, 1.0]), None, 'not a rigid transform'),  # a reflection
    (np.eye(3), None, '4x4'),
    (np.eye(4), np.eye(3), 'must be 6x6'),
    (np.eye(4), np.full((6, 6), np.inf), 'non-finite'),
    (np.eye(4), np.eye(6) + np.triu(np.ones((6, 6)), 1) * 0.1, 'not symmetric'),
    (np.eye(4), -np.eye(6) * 0.5, 'not positive semi-definite'),
])
def test_bad_loops_are_refused(relative, cov, message):
    graph = PoseGraph()
    graph.add_keyframe(key(0), pose())
    graph.add_keyframe(key(1), pose())
    with pytest.raises(PoseGraphError, match=message):
        graph.add_loop(key(1), key(0), relative, cov)
    with pytest.raises(PoseGraphError, match='two keyframes'):
        graph.add_loop(key(1), key(1), np.eye(4), None)
    with pytest.raises(PoseGraphError, match='non-finite'):
        graph.add_keyframe(key(2), np.full((4, 4), np.inf))
    assert graph.loop_count == 0


def test_settings_are_checked():
    with pytest.raises(SettingError, match='robust_kernel must be one of'):
        PoseGraphSettings(robust_kernel='tukey')
    with pytest.raises(SettingError, match='loop_min_sigma_translation_m must be in'):
        PoseGraphSettings(loop_min_sigma_translation_m=0.0)
    assert math.isclose(PoseGraphSettings().robust_kernel_width, 3.0)
