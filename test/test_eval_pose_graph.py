"""`boq-ros eval --odometry-topic`: the reference backend offline, scored against ground truth.

The records are made by hand from the recording's exact poses (a verified metric loop from each
second-lap keyframe to the same place on the first lap), so the test pins what the evaluation
does with loops, not how well random weights find them.
"""
import json
import subprocess
import sys

import numpy as np
import pytest

from boq_ros.eval.records import CandidateRecord, write_records
from boq_ros.eval.trajectories import poses_at
from boq_ros.synth import DEMO_DRIFT, GROUND_TRUTH_TOPIC, ODOM_TOPIC, generate_recording
from boq_ros.verification.verifier import xyz_quaternion

PER_LAP = 24


@pytest.fixture(scope='module')
def drifting(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp('drift')
    info = generate_recording(root / 'bag', laps=2, frames_per_lap=PER_LAP, image_size=(32, 24),
                              compressed=False, camera_info=False, depth=False,
                              odometry_drift=DEMO_DRIFT)
    stamps = info.frame_stamps_ns
    truth = poses_at(info.trajectory, stamps, 'truth')
    records = []
    for k, stamp in enumerate(stamps):
        common = dict(query_id=k, query_stamp_ns=int(stamp), query_session='demo',
                      query_camera='/camera/image_raw', query_seq=k)
        if k < PER_LAP:
            records.append(CandidateRecord(**common, match_id=-1, match_stamp_ns=0,
                                           match_session='', match_seq=-1, similarity=0.0,
                                           rank=-1, accepted=False))
            continue
        m = k - PER_LAP
        relative = np.linalg.inv(truth[k]) @ truth[m]
        cov = tuple(float(v) for v in np.diag([1e-3] * 3 + [1e-5] * 3).ravel())
        records.append(CandidateRecord(
            **common, match_id=m, match_stamp_ns=int(stamps[m]), match_session='demo',
            match_seq=m, similarity=0.9, rank=0, accepted=True, status=1, inliers=80,
            pose_kind=1, relative_pose=xyz_quaternion(relative), covariance=cov))
    path = root / 'records.jsonl'
    write_records(path, records)
    return info, path


def _eval(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-m', 'boq_ros.cli', 'eval', *args],
                          capture_output=True, text=True, timeout=300)


def test_records_with_odometry_report_the_drift_corrected(drifting, tmp_path):
    info, records = drifting
    out = tmp_path / 'out'
    result = _eval(str(info.path), '--pose-topic', GROUND_TRUTH_TOPIC, '--records', str(records),
                   '--odometry-topic', ODOM_TOPIC, '--exclusion-seconds', '1', '--out', str(out))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert 'Drift corrected by the loops' in result.stdout
    report = json.loads((out / 'report.json').read_text())
    odometry, graph = report['trajectories']['scores']
    assert odometry['label'] == 'odometry alone' and graph['loops'] == PER_LAP
    assert odometry['keyframes'] == graph['keyframes'] == 2 * PER_LAP
    assert odometry['ate_rmse_m'] > 0.3 and graph['ate_rmse_m'] < odometry['ate_rmse_m'] / 5
    assert (out / 'trajectories.png').stat().st_size > 10_000


def test_odometry_topic_errors_name_the_cause(drifting, tmp_path):
    info, records = drifting
    result = _eval(str(info.path), '--pose-topic', GROUND_TRUTH_TOPIC, '--records', str(records),
                   '--odometry-topic', '/nope', '--out', str(tmp_path / 'a'))
    assert result.returncode == 1 and '/nope' in result.stderr
    assert not (tmp_path / 'a').exists()
    result = _eval(str(info.path), '--query-bag', str(info.path), '--image-topic', '/x',
                   '--checkpoint', 'c.pth', '--pose-topic', GROUND_TRUTH_TOPIC,
                   '--odometry-topic', ODOM_TOPIC, '--out', str(tmp_path / 'b'))
    assert result.returncode == 2 and 'one bag, not --query-bag' in result.stderr
