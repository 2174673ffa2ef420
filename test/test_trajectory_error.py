"""ATE and RPE against hand-computed cases and against evo (an independent implementation)."""
import math

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from boq_ros.eval.trajectory_error import (
    TrajectoryMetricError,
    absolute_trajectory_error,
    align,
    relative_pose_error,
)

SQUARE = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 1.0, 0.0]])


def poses(positions, rotvecs=None):
    out = np.tile(np.eye(4), (len(positions), 1, 1))
    out[:, :3, 3] = positions
    if rotvecs is not None:
        out[:, :3, :3] = Rotation.from_rotvec(rotvecs).as_matrix()
    return out


def transformed(trajectory, rotation, translation, scale=1.0):
    out = trajectory.copy()
    out[:, :3, :3] = rotation @ trajectory[:, :3, :3]
    out[:, :3, 3] = scale * trajectory[:, :3, 3] @ rotation.T + translation
    return out


def random_trajectory(rng, n, step=0.5):
    """A smooth walk whose heading follows its motion, with some roll, pitch and height."""
    yaw = np.cumsum(rng.normal(0.0, 0.15, n))
    positions = np.cumsum(step * np.stack([np.cos(yaw), np.sin(yaw),
                                           rng.normal(0.0, 0.1, n)], axis=1), axis=0)
    rotvecs = Rotation.from_euler('xyz', np.stack([rng.normal(0, 0.05, n),
                                                   rng.normal(0, 0.05, n), yaw], 1)).as_rotvec()
    return poses(positions, rotvecs)


def noisy(rng, trajectory, sigma_t, sigma_r):
    out = trajectory.copy()
    out[:, :3, 3] += rng.normal(0.0, sigma_t, (len(out), 3))
    out[:, :3, :3] = Rotation.from_rotvec(rng.normal(0.0, sigma_r, (len(out), 3))).as_matrix() \
        @ out[:, :3, :3]
    return out


# -- hand-computed ---------------------------------------------------------------------------
def test_ate_without_alignment_is_the_plain_position_error():
    reference = poses(SQUARE)
    estimate = poses(SQUARE + [[0, 0, 0], [0, 0, 0], [0, 0, 1], [0, 0, 0]])
    ate = absolute_trajectory_error(estimate, reference, 'none')
    np.testing.assert_allclose(ate.errors, [0, 0, 1, 0])
    assert (ate.rmse, ate.mean, ate.median, ate.max) == pytest.approx((0.5, 0.25, 0.0, 1.0))
    np.testing.assert_array_equal(ate.aligned, estimate)


def test_se3_and_sim3_recover_a_known_similarity():
    reference = poses(SQUARE, [[0, 0, 0.1], [0, 0, 0.2], [0.1, 0, 0], [0, 0.3, 0]])
    rotation = Rotation.from_euler('z', 90, degrees=True).as_matrix()
    translation = np.array([1.0, 2.0, 3.0])
    # The estimate is the reference turned by 90 deg about z, moved, and twice as large.
    estimate = transformed(reference, rotation, translation, scale=2.0)

    sim3 = absolute_trajectory_error(estimate, reference, 'sim3')
    assert sim3.scale == pytest.approx(0.5)
    np.testing.assert_allclose(sim3.rotation, rotation.T, atol=1e-12)
    np.testing.assert_allclose(sim3.translation, -0.5 * rotation.T @ translation, atol=1e-12)
    assert sim3.max == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(sim3.aligned, reference, atol=1e-12)

    # Without scale the best rotation is the same; the centred square stays twice as large, so
    # every corner is off by |corner - centre| = sqrt(0.5).
    se3 = absolute_trajectory_error(estimate, reference, 'se3')
    assert se3.scale == 1.0
    np.testing.assert_allclose(se3.rotation, rotation.T, atol=1e-12)
    np.testing.assert_allclose(se3.errors, [math.sqrt(0.5)] * 4)
    assert se3.rmse == pytest.approx(math.sqrt(0.5))


def test_rpe_translation_and_rotation_by_hand():
    reference = poses(np.array([[0.0, 0, 0], [1, 0, 0], [2, 0, 0], [3, 0, 0]]))
    estimate = poses(np.array([[0.0, 0, 0], [1.1, 0, 0], [2.2, 0, 0], [3.3, 0, 0]]))
    rpe = relative_pose_error(estimate, reference)  # each step 0.1 m too long
    np.testing.assert_allclose(rpe.translation_errors, [0.1, 0.1, 0.1])
    assert rpe.translation_rmse == pytest.approx(0.1)
    assert rpe.rotation_rmse_deg == pytest.approx(0.0, abs=1e-12)
    assert relative_pose_error(estimate, reference, delta=2).translation_rmse == pytest.approx(0.2)

    # Turning 2 deg about z per pose where the reference does not turn; positions stay at 0.
    turning = poses(np.zeros((4, 3)), [[0, 0, math.radians(2 * i)] for i in range(4)])
    still = poses(np.zeros((4, 3)))
    assert relative_pose_error(turning, still).rotation_rmse_deg == pytest.approx(2.0)
    assert relative_pose_error(turning, still, 3).rotation_errors_deg == pytest.approx([6.0])
    assert relative_pose_error(turning, still).translation_rmse == pytest.approx(0.0, abs=1e-12)


def test_rpe_ignores_the_frame_of_the_estimate():
    rng = np.random.default_rng(3)
    reference = random_trajectory(rng, 30)
    estimate = noisy(rng, reference, 0.05, 0.01)
    moved = transformed(estimate, Rotation.random(random_state=1).as_matrix(), [5.0, -2.0, 1.0])
    a, b = relative_pose_error(estimate, reference, 2), relative_pose_error(moved, reference, 2)
    np.testing.assert_allclose(a.translation_errors, b.translation_errors, atol=1e-9)
    np.testing.assert_allclose(a.rotation_errors_deg, b.rotation_errors_deg, atol=1e-7)


# -- refused inputs ----------------------------------------------------------------------------
@pytest.mark.parametrize('positions, message', [
    (SQUARE[:2], 'at least 3 positions'),
    (np.ones((5, 3)), 'degenerate'),
    (np.outer(np.arange(5.0), [1.0, 2.0, 3.0]), 'degenerate'),  # on one line
])
def test_align_refuses_too_few_or_degenerate_positions(positions, message):
    with pytest.raises(TrajectoryMetricError, match=message):
        align(positions, positions, with_scale=False)


def test_refused_inputs_name_the_cause():
    square = poses(SQUARE)
    with pytest.raises(TrajectoryMetricError, match='match them by stamp'):
        absolute_trajectory_error(square, square[:3])
    with pytest.raises(TrajectoryMetricError, match='alignment must be one of'):
        absolute_trajectory_error(square, square, 'sim2')
    with pytest.raises(TrajectoryMetricError, match=r'\(N, 4, 4\)'):
        relative_pose_error(square[:, :3], square)
    bad = square.copy()
    bad[1, 0, 3] = np.nan
    with pytest.raises(TrajectoryMetricError, match='non-finite'):
        absolute_trajectory_error(bad, square)
    with pytest.raises(TrajectoryMetricError, match='no pair 4 apart'):
        relative_pose_error(square, square, delta=4)
    with pytest.raises(TrajectoryMetricError, match='delta must be'):
        relative_pose_error(square, square, delta=0)


# -- against evo -------------------------------------------------------------------------------
def trajectory_pairs():
    rng = np.random.default_rng(0)
    pairs = []
    for n in (5, 50, 400):  # random: poses anywhere, rotations anywhere
        rotvecs = Rotation.random(n, random_state=n).as_rotvec()
        reference = poses(rng.normal(0, 10, (n, 3)), rotvecs)
        pairs.append((f'random-{n}', noisy(rng, transformed(
            reference, Rotation.random(random_state=7).as_matrix(), [3, -1, 2], 1.7), 0.3, 0.2),
            reference))
    # Realistic: a drifting odometry of a 300-pose walk, in its own frame and scale.
    reference = random_trajectory(rng, 300)
    drift = reference.copy()
    for i in range(1, len(drift)):
        step = np.linalg.inv(reference[i - 1]) @ reference[i]
        step[:3, :3] = Rotation.from_rotvec([0, 0, 0.004]).as_matrix() @ step[:3, :3]
        drift[i] = drift[i - 1] @ step
    pairs.append(('realistic', transformed(noisy(rng, drift, 0.02, 0.002), Rotation.from_euler(
        'z', 30, degrees=True).as_matrix(), [10, 5, 0], 0.9), reference))
    return pairs


PAIRS = trajectory_pairs()


@pytest.mark.parametrize('name, estimate, reference', PAIRS, ids=[p[0] for p in PAIRS])
def test_agrees_with_evo(name, estimate, reference):
    trajectory = pytest.importorskip('evo.core.trajectory',
                                     reason='evo is not installed (test-only dependency)')
    metrics = pytest.importorskip('evo.core.metrics')
    stamps = np.arange(len(reference), dtype=float)

    def evo_trajectory(p):
        return trajectory.PoseTrajectory3D(poses_se3=list(p), timestamps=stamps)

    for alignment in ('se3', 'sim3', 'none'):
        evo_est = evo_trajectory(estimate)
        if alignment != 'none':
            evo_est.align(evo_trajectory(reference), correct_scale=alignment == 'sim3')
        ape = metrics.APE(metrics.PoseRelation.translation_part)
        ape.process_data((evo_trajectory(reference), evo_est))
        ours = absolute_trajectory_error(estimate, reference, alignment)
        stats = ape.get_all_statistics()
        for key, value in (('rmse', ours.rmse), ('mean', ours.mean), ('median', ours.median),
                           ('max', ours.max)):
            assert value == pytest.approx(stats[key], rel=1e-9, abs=1e-9), (alignment, key)
        np.testing.assert_allclose(ours.aligned, np.array(evo_est.poses_se3), atol=1e-9)

    for delta in (1, 4):
        for relation, value in ((metrics.PoseRelation.translation_part, 'translation_rmse'),
                                (metrics.PoseRelation.rotation_angle_deg, 'rotation_rmse_deg')):
            rpe = metrics.RPE(relation, delta=delta, delta_unit=metrics.Unit.frames,
                              all_pairs=True)
            rpe.process_data((evo_trajectory(reference), evo_trajectory(estimate)))
            ours = getattr(relative_pose_error(estimate, reference, delta), value)
            assert ours == pytest.approx(rpe.get_statistic(metrics.StatisticsType.rmse),
                                         rel=1e-9, abs=1e-9), (delta, value)
