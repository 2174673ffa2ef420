"""The rule that turns keyframes and verified loops into pose-graph factors (boq_ros/slam.py).

The backend node and the offline runs share it, so what it takes, what it counts as skipped and
how the robustness check corrupts loops are pinned here on hand-made records.
"""
import math

import numpy as np
import pytest

from boq_ros.eval.records import CandidateRecord, read_records, write_records
from boq_ros.settings import PoseGraphSettings
from boq_ros.slam import (
    GraphInput,
    KeyframeGraph,
    Loop,
    inputs_from_records,
    loop_of_records,
    optimise,
    with_wrong_loops,
)
from boq_ros.trajectory import Trajectory
from boq_ros.verification.verifier import transform_from

S = 1_000_000_000


def _record(query_s: float, match_s: float, *, accepted: bool = True, status: int = 1,
            pose_kind: int = 1, pose=(1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0),
            covariance=None, rank: int = 0, camera: str = 'cam') -> CandidateRecord:
    return CandidateRecord(
        query_id=int(query_s), query_stamp_ns=int(query_s * S), query_session='s',
        query_camera=camera, query_seq=int(query_s), match_id=int(match_s),
        match_stamp_ns=int(match_s * S), match_session='s', match_seq=int(match_s),
        similarity=0.9, rank=rank, accepted=accepted, status=status, inliers=50,
        pose_kind=pose_kind, relative_pose=pose if status == 1 else None,
        covariance=covariance if status == 1 else None)


def _straight_odometry(seconds: int) -> Trajectory:
    """1 m/s along x, identity orientation, 10 Hz."""
    t = np.arange(seconds * 10 + 1)
    positions = np.stack([t / 10.0, np.zeros(t.size), np.zeros(t.size)], axis=1)
    return Trajectory((t * S // 10).astype(np.int64), positions,
                      np.tile([0.0, 0.0, 0.0, 1.0], (t.size, 1)))


def test_loop_of_records_takes_the_accepted_verified_candidate_only():
    cov = tuple(float(v) for v in np.diag([0.01, 0.01, 0.01, 1e-4, 1e-4, 1e-4]).ravel())
    rows = [_record(10, 2, accepted=False, status=2, rank=0),
            _record(10, 3, accepted=True, rank=1, covariance=cov)]
    loop = loop_of_records(rows)
    assert loop is not None and loop.match_stamp_ns == 3 * S and loop.metric
    np.testing.assert_allclose(loop.relative_pose[:3, 3], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(loop.covariance, np.asarray(cov).reshape(6, 6))
    # appearance only (verification off) and rejected: no loop; up to scale: not metric
    assert loop_of_records([_record(10, 3, status=0)]) is None
    assert loop_of_records([_record(10, 3, accepted=False, status=2)]) is None
    assert not loop_of_records([_record(10, 3, pose_kind=2)]).metric


def test_inputs_from_records_group_queries_and_look_up_odometry():
    odometry = _straight_odometry(20)
    records = [_record(1.25, 0, status=2, accepted=False),  # a query without a loop
               _record(5.5, 1.25), _record(5.5, 0.5, accepted=False, status=0, rank=1),
               _record(30, 5.5)]  # beyond the odometry: no pose
    inputs = inputs_from_records(records, odometry)
    assert [i.stamp_ns for i in inputs] == [int(1.25 * S), int(5.5 * S), 30 * S]
    np.testing.assert_allclose(inputs[1].odometry_pose[:3, 3], [5.5, 0.0, 0.0])
    assert inputs[0].loop is None and inputs[1].loop.match_stamp_ns == int(1.25 * S)
    assert inputs[2].odometry_pose is None


def test_keyframe_graph_counts_what_it_does_not_take():
    graph = KeyframeGraph(PoseGraphSettings())
    pose = transform_from((0, 0, 0, 0, 0, 0, 1))
    loop = Loop(1 * S, transform_from((1, 0, 0, 0, 0, 0, 1)), None, metric=True)
    assert not graph.add(GraphInput(1 * S, None))  # no odometry: nothing to anchor
    assert graph.add(GraphInput(1 * S, pose))
    assert graph.add(GraphInput(2 * S, transform_from((1, 0, 0, 0, 0, 0, 1)), loop))
    assert not graph.add(GraphInput(2 * S, pose))  # a second camera at the same stamp
    assert not graph.add(GraphInput(int(1.5 * S), pose))  # older than the newest keyframe
    assert graph.add(GraphInput(3 * S, transform_from((2, 0, 0, 0, 0, 0, 1)),
                                Loop(99 * S, pose, None, metric=True)))  # unknown match
    assert graph.add(GraphInput(4 * S, transform_from((3, 0, 0, 0, 0, 0, 1)),
                                Loop(1 * S, pose, None, metric=False)))
    not_psd = -np.eye(6)
    assert graph.add(GraphInput(5 * S, transform_from((4, 0, 0, 0, 0, 0, 1)),
                                Loop(1 * S, pose, not_psd, metric=True)))  # the keyframe stays
    assert len(graph.graph) == 5 and graph.loops_added == 1
    assert dict(graph.skipped) == {'no_odometry': 1, 'out_of_order': 1,
                                   'match_not_in_graph': 1, 'loop_not_metric': 1,
                                   'loop_refused': 1}


def test_with_wrong_loops_corrupts_the_asked_share_far_from_the_truth():
    pose = transform_from((0, 0, 0, 0, 0, 0, 1))
    inputs = [GraphInput(k * S, pose, Loop((k - 40) * S, pose, None, True) if k >= 40 else None)
              for k in range(100)]
    corrupted, count = with_wrong_loops(inputs, 0.1, seed=3)
    assert count == 6  # 10 % of 60 loops
    changed = [(a, b) for a, b in zip(inputs, corrupted) if a != b]
    assert len(changed) == count
    for before, after in changed:
        assert after.loop.relative_pose is before.loop.relative_pose  # same claimed pose
        wrong = after.loop.match_stamp_ns // S
        assert abs(wrong - before.loop.match_stamp_ns // S) >= 10
        assert wrong <= before.stamp_ns // S - 10
    again, _ = with_wrong_loops(inputs, 0.1, seed=3)
    assert [i.loop and i.loop.match_stamp_ns for i in again] == [
        i.loop and i.loop.match_stamp_ns for i in corrupted]


def test_optimise_corrects_drift_with_records_loops():
    """A square driven twice, odometry with a heading bias; loops from the true poses.

    One closure spreads a bias over the lap rather than removing it: the bound is 5x.
    """
    def truth(k: int) -> np.ndarray:
        side, along = divmod(k % 40, 10)
        yaw = side * math.pi / 2
        corners = [(0, 0), (10, 0), (10, 10), (0, 10)]
        x0, y0 = corners[side]
        x, y = x0 + math.cos(yaw) * along, y0 + math.sin(yaw) * along
        return transform_from((x, y, 0, 0, 0, math.sin(yaw / 2), math.cos(yaw / 2)))

    true = [truth(k) for k in range(80)]
    bias = transform_from((0, 0, 0, 0, 0, math.sin(0.0025), math.cos(0.0025)))
    odom = [true[0]]
    for k in range(1, 80):
        odom.append(odom[-1] @ bias @ np.linalg.inv(true[k - 1]) @ true[k])
    inputs = [GraphInput(k * S, odom[k],
                         Loop((k - 40) * S, np.linalg.inv(true[k]) @ true[k - 40], None, True)
                         if k >= 40 else None) for k in range(80)]
    graph = optimise(inputs, PoseGraphSettings())
    poses = graph.graph.poses()
    drifted = max(np.linalg.norm(odom[k][:3, 3] - true[k][:3, 3]) for k in range(80))
    corrected = max(np.linalg.norm(poses[k * S][:3, 3] - true[k][:3, 3]) for k in range(80))
    assert graph.loops_added == 40 and drifted > 2.0
    assert corrected < drifted / 5


def test_records_keep_the_loop_covariance(tmp_path):
    cov = tuple(float(v) for v in np.arange(36) / 100)
    path = tmp_path / 'r.jsonl'
    write_records(path, [_record(2, 1, covariance=cov)])
    assert read_records(path)[0].covariance == cov
    with pytest.raises(ValueError, match='covariance must be 36'):
        _record(2, 1, covariance=(1.0,)).validate()
    with pytest.raises(ValueError, match='covariance without a relative_pose'):
        CandidateRecord(1, 1, 's', 'c', 1, 0, 0, 's', 0, 0.9, 0, True,
                        covariance=cov).validate()
