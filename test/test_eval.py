"""`boq-ros eval` end to end on generated recordings (sqlite3 and MCAP), with random weights.

Random-weight descriptors are nearly parallel, but their small differences still follow the
image: on the synthetic loop the true revisit ranks high far more often than chance. The tests
claim exactly that (recall well above the chance level computed from the ground truth), plus the
report's structure, the cache, and that recorded candidates evaluate to the same numbers.
Most tests run appearance-only (--no-verification); the verified tests at the end run the
default (appearance-only and verified rows) on a recording with depth.
"""
import contextlib
import io
import json
from math import comb

import numpy as np
import pytest

from boq_ros.cli import main
from boq_ros.detector import REJECTION_CAUSES
from boq_ros.eval.records import read_records
from boq_ros.model.checkpoint import write_random_checkpoint
from boq_ros.pipeline import SKIP_CAUSES
from boq_ros.synth import (
    COMPRESSED_TOPIC,
    DEPTH_TOPIC,
    IMAGE_TOPIC,
    ODOM_TOPIC,
    generate_query_recording,
    generate_recording,
)

SMALL = dict(laps=2, frames_per_lap=20, image_size=(160, 120))
COMMON = ['--pose-topic', ODOM_TOPIC, '--radius-m', '3', '--exclusion-seconds', '2',
          '--exclusion-keyframes', '5', '--device', 'cpu', '--no-progress',
          '--no-verification']
NO_SKIPS = dict.fromkeys(SKIP_CAUSES, 0)


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp('eval')
    run = generate_recording(root / 'run_sqlite', storage='sqlite3', **SMALL)
    query = generate_query_recording(root / 'query_mcap', storage='mcap',
                                     **{**SMALL, 'laps': 1})
    write_random_checkpoint(root / 'random.pth', 'resnet50-16384')
    return root, run, query


def boq_eval(argv):
    """Run `boq-ros eval` as the command line does (its error handling and exit statuses)."""
    return main(['eval', *argv])


def chance_recall(eligible: np.ndarray, near: np.ndarray, k: int) -> float:
    """Expected Recall@k of a ranking drawn at random among each query's eligible keyframes."""
    total = [1 - comb(int(e - p), k) / comb(int(e), k)
             for e, p in zip(eligible.sum(1), near.sum(1)) if p]
    return float(np.mean(total))


def loop_argv(data, out, *extra):
    root = data[0]
    return [str(root / 'run_sqlite'), '--image-topic', IMAGE_TOPIC, '--checkpoint',
            str(root / 'random.pth'), '--out', str(out), '--cache-dir', str(root / 'cache'),
            *COMMON, *extra]


@pytest.fixture(scope='module')
def loop_run(data):
    """The loop-closure evaluation at two model input sizes, and what it printed."""
    out = data[0] / 'loop'
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert boq_eval(loop_argv(data, out, '--input-size', '96', '128')) == 0
    return out, printed.getvalue()


def test_loop_closure_report_on_sqlite3(loop_run):
    out, printed = loop_run
    assert '| height 96 px |' in printed and '| height 128 px |' in printed
    report = json.loads((out / 'report.json').read_text())
    assert report['task'] == 'loop_closure'
    assert [r['label'] for r in report['runs']] == ['height 96 px', 'height 128 px']
    for name in ('pr_curve.png', 'similarity_96.png', 'trajectory_128.png'):
        assert (out / name).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert (out / 'summary.md').read_text() in printed
    run = report['runs'][1]
    assert run['frames'] == run['keyframes'] == 40 and not run['cached']
    assert run['skipped'] == NO_SKIPS
    assert list(run['timings_s']) == ['read', 'decode', 'describe', 'search']
    assert report['inputs']['random_weights'] is True  # a random checkpoint is no release
    assert report['detector']['top_k'] == 5 and report['detector']['candidates_per_query'] == 20
    metrics = run['metrics']
    assert metrics['num_queries'] == 40
    assert metrics['num_positive_queries'] == 20  # every keyframe of the second lap
    assert set(metrics['recall_at']) == {'1', '5', '10', '20'}
    for key in ('auc_pr', 'max_recall_at_100_precision', 'f1_max', 'extended_precision'):
        assert 0.0 <= metrics[key] <= 1.0
    assert len(metrics['pr_curve']['threshold']) == len(metrics['pr_curve']['precision'])


def test_loop_closure_finds_revisits_well_above_chance(loop_run, data):
    out, _ = loop_run
    metrics = json.loads((out / 'report.json').read_text())['runs'][1]['metrics']
    info = data[1]
    n = info.n_frames
    dist = np.linalg.norm(info.frame_positions[:, None] - info.frame_positions[None], axis=-1)
    seq = np.arange(n)
    eligible = (seq[None, :] < seq[:, None] - 5) & (
        info.frame_stamps_ns[None, :] <= info.frame_stamps_ns[:, None] - 2 * 10**9)
    near = eligible & (dist <= 3.0)
    assert near.any(axis=1).sum() == metrics['num_positive_queries']
    # Measured: Recall@1 0.5 (chance 0.05), Recall@5 0.9 (chance 0.27).
    assert metrics['recall_at']['1'] >= 5 * chance_recall(eligible, near, 1)
    assert metrics['recall_at']['5'] >= 2 * chance_recall(eligible, near, 5)


def test_rerun_with_another_radius_uses_the_cache(loop_run, data):
    out, _ = loop_run
    again = data[0] / 'loop_radius_6'
    with contextlib.redirect_stdout(io.StringIO()):
        assert boq_eval(loop_argv(data, again, '--input-size', '128', '--radius-m', '6')) == 0
    report = json.loads((again / 'report.json').read_text())
    assert report['runs'][0]['cached']
    assert read_records(again / 'records.jsonl') == read_records(out / 'records_128.jsonl')
    assert report['runs'][0]['metrics']['radius_m'] == 6.0


def test_tum_and_kitti_ground_truth_files_match_the_odometry_topic(loop_run, data):
    out, _ = loop_run
    root, run, _ = data
    run.trajectory.to_tum(root / 'gt.tum')
    with open(root / 'gt.kitti', 'w') as f:  # one pose per image frame, no times file
        for (x, y, z), yaw in zip(run.frame_positions, run.frame_yaws):
            c, s = np.cos(yaw), np.sin(yaw)
            f.write(f'{c} {-s} 0 {x} {s} {c} 0 {y} 0 0 1 {z}\n')
    expected = json.loads((out / 'report.json').read_text())['runs'][1]['metrics']
    for name, fmt in (('gt.tum', 'tum'), ('gt.kitti', 'kitti')):
        argv = loop_argv(data, root / f'with_{fmt}', '--input-size', '128')
        at = argv.index('--pose-topic')
        argv[at:at + 2] = ['--pose-file', str(root / name), '--pose-format', fmt]
        with contextlib.redirect_stdout(io.StringIO()):
            assert boq_eval(argv) == 0
        got = json.loads((root / f'with_{fmt}' / 'report.json').read_text())['runs'][0]
        assert got['cached']
        assert got['metrics']['recall_at'] == expected['recall_at'], fmt
        assert got['metrics']['num_positive_queries'] == expected['num_positive_queries'], fmt


def test_recorded_candidates_evaluate_to_the_same_numbers(loop_run, data):
    out, _ = loop_run
    recorded_out = data[0] / 'recorded'
    argv = [str(data[0] / 'run_sqlite'), '--records', str(out / 'records_128.jsonl'),
            '--out', str(recorded_out), *COMMON]
    with contextlib.redirect_stdout(io.StringIO()):
        assert boq_eval(argv) == 0
    recorded = json.loads((recorded_out / 'report.json').read_text())['runs'][0]['metrics']
    original = json.loads((out / 'report.json').read_text())['runs'][1]['metrics']
    assert recorded == original


def test_place_recognition_map_sqlite3_query_mcap_compressed(data, capsys):
    root, run, query = data
    out = root / 'pr'
    argv = [str(root / 'run_sqlite'), '--query-bag', str(root / 'query_mcap'),
            '--image-topic', IMAGE_TOPIC, '--query-image-topic', COMPRESSED_TOPIC,
            '--checkpoint', str(root / 'random.pth'), '--input-size', '128', '--out', str(out),
            '--cache-dir', str(root / 'cache'), *COMMON]
    assert boq_eval(argv) == 0
    assert 'place recognition' in capsys.readouterr().out
    report = json.loads((out / 'report.json').read_text())
    assert report['task'] == 'place_recognition'
    metrics = report['runs'][0]['metrics']
    dist = np.linalg.norm(query.frame_positions[:, None] - run.frame_positions[None], axis=-1)
    near = dist <= 3.0
    assert metrics['num_queries'] == 20
    assert metrics['num_positive_queries'] == int(near.any(axis=1).sum()) > 0
    records = read_records(out / 'records.jsonl')
    assert {r.query_session for r in records} == {'query'}
    assert {r.match_session for r in records} == {'map'}
    eligible = np.ones_like(near)
    # Measured: Recall@5 0.65 (chance 0.19), across a lighting and viewpoint change.
    assert metrics['recall_at']['5'] >= 2 * chance_recall(eligible, near, 5)


def test_errors_name_the_cause(data, capsys):
    root = data[0]
    base = [str(root / 'run_sqlite'), '--checkpoint', str(root / 'random.pth'),
            '--out', str(root / 'err'), *COMMON]
    assert boq_eval([*base, '--image-topic', '/nope']) == 1  # failed work
    assert "'/nope'" in capsys.readouterr().err
    assert boq_eval([*base, '--image-topic', IMAGE_TOPIC, '--pose-file', 'x.tum']) == 2  # usage
    assert capsys.readouterr().err == (
        'boq-ros eval: error: give exactly one ground truth: --pose-topic or --pose-file\n')
    assert boq_eval([*base, '--image-topic', ODOM_TOPIC]) == 1
    assert 'not camera images' in capsys.readouterr().err
    assert boq_eval([*base, '--image-topic', IMAGE_TOPIC, '--input-size', '8']) == 2
    assert 'input_size must be 0 (the default) or >= 16' in capsys.readouterr().err
    assert not (root / 'err').exists()


def write_broken_bag(path, frames=12, stamps_s=None):
    """A bag whose camera frames all fail to decode (the step says 3 bytes a pixel, data 1)."""
    from boq_ros.bags import BagWriter, make_header
    from boq_ros.bags import typestore as store

    image = store().types['sensor_msgs/msg/Image']
    with BagWriter(path, storage='mcap') as writer:
        for i in (range(frames) if stamps_s is None else stamps_s):
            msg = image(header=make_header(i * 10**9, 'cam'), height=8, width=8,
                        encoding='rgb8', is_bigendian=0, step=24, data=np.zeros(64, np.uint8))
            writer.write('/cam', 'sensor_msgs/msg/Image', msg, i * 10**9)
    tum = path.with_suffix('.tum')
    tum.write_text(''.join(f'{i} {i} 0 0 0 0 0 1\n' for i in range(frames)))
    return tum


def test_a_topic_whose_frames_all_fail_exits_1_naming_the_cause(data, tmp_path, capsys):
    bag = tmp_path / 'run1.mcap'
    tum = write_broken_bag(bag)
    out = tmp_path / 'out'
    status = boq_eval([str(bag), '--image-topic', '/cam', '--pose-file', str(tum),
                       '--checkpoint', str(data[0] / 'random.pth'), '--out', str(out),
                       '--no-cache', '--device', 'cpu', '--no-progress'])
    captured = capsys.readouterr()
    assert status == 1
    assert captured.err.startswith('boq-ros eval: error: no usable frame on /cam in run1.mcap: '
                                   '12 frames, 12 decode errors (first: /cam: ')
    assert captured.err.count('\n') == 1 and 'Warning' not in captured.err
    assert '0 frames' not in captured.out and not out.exists()
    assert not list(tmp_path.glob('.out.tmp-*'))  # no staging folder left behind either


def test_every_skip_cause_is_named_when_no_frame_is_usable(data, tmp_path, capsys):
    bag = tmp_path / 'run2.mcap'
    tum = write_broken_bag(bag, stamps_s=[0, 1, 2, 10**6, 3])  # and one stamp far ahead
    status = boq_eval([str(bag), '--image-topic', '/cam', '--pose-file', str(tum),
                       '--checkpoint', str(data[0] / 'random.pth'), '--out',
                       str(tmp_path / 'out'), '--no-cache', '--device', 'cpu', '--no-progress'])
    assert status == 1
    assert ('no usable frame on /cam in run2.mcap: 5 frames, 4 decode errors, 1 outlier stamps'
            in capsys.readouterr().err)


def test_a_failed_eval_keeps_an_existing_out_directory_as_it_was(data, tmp_path):
    bag = tmp_path / 'run1.mcap'
    tum = write_broken_bag(bag, frames=3)
    out = tmp_path / 'mine'
    out.mkdir()
    (out / 'notes.txt').write_text('mine')
    assert boq_eval([str(bag), '--image-topic', '/cam', '--pose-file', str(tum),
                     '--checkpoint', str(data[0] / 'random.pth'), '--out', str(out),
                     '--no-cache', '--device', 'cpu', '--no-progress']) == 1
    assert [p.name for p in out.iterdir()] == ['notes.txt']


def test_skipped_frames_by_cause_are_reported(data, tmp_path, capsys):
    """Bad frames among good ones are skipped, counted by cause in report.json and summary.md."""
    from boq_ros.bags import BagWriter, open_bag
    from boq_ros.bags import typestore as store

    root = data[0]
    bag = tmp_path / 'mixed.mcap'
    image = store().types['sensor_msgs/msg/Image']
    with open_bag(root / 'run_sqlite') as source, BagWriter(bag, storage='mcap') as writer:
        for topic in (IMAGE_TOPIC, ODOM_TOPIC):
            msgtype = source.topics[topic].msgtype
            for i, message in enumerate(source.messages([topic])):
                msg = message.decode()
                if topic == IMAGE_TOPIC and i % 10 == 3:  # 4 frames of 40: data too short
                    msg = image(header=msg.header, height=msg.height, width=msg.width,
                                encoding=msg.encoding, is_bigendian=0, step=msg.step,
                                data=np.zeros(10, np.uint8))
                writer.write(topic, msgtype, msg, message.log_time_ns)
    out = tmp_path / 'out'
    assert boq_eval([str(bag), '--image-topic', IMAGE_TOPIC, '--checkpoint',
                     str(root / 'random.pth'), '--input-size', '64', '--out', str(out),
                     '--no-cache', *COMMON]) == 0
    run = json.loads((out / 'report.json').read_text())['runs'][0]
    assert run['frames'] == 40 and run['keyframes'] == 36
    assert run['skipped'] == {**NO_SKIPS, 'decode': 4}
    assert '| 40 | 36 | decode 4 |' in (out / 'summary.md').read_text()
    assert '| 40 | 36 | decode 4 |' in capsys.readouterr().out


def test_deprecated_flag_names_still_work_and_say_so(loop_run, data, capsys):
    out, _ = loop_run
    again = data[0] / 'old_names'
    argv = [str(data[0] / 'run_sqlite'), '--topic', IMAGE_TOPIC, '--checkpoint',
            str(data[0] / 'random.pth'), '--out', str(again), '--cache-dir',
            str(data[0] / 'cache'), '--gt-topic', ODOM_TOPIC, '--radius', '3',
            '--heights', '128', '--policy', 'height', '--backbone', 'resnet50',
            '--keyframes', 'every_frame', '--keyframe-interval', '1',
            '--exclusion-seconds', '2', '--exclusion-keyframes', '5', '--device', 'cpu',
            '--no-progress', '--no-verification']
    assert boq_eval(argv) == 0
    err = capsys.readouterr().err
    for old, new in (('--topic', '--image-topic'), ('--gt-topic', '--pose-topic'),
                     ('--radius', '--radius-m'), ('--heights', '--input-size'),
                     ('--policy', '--resize-policy'), ('--backbone', '--preset'),
                     ('--keyframes', '--keyframe-mode'),
                     ('--keyframe-interval', '--keyframe-interval-s')):
        assert f'boq-ros eval: note: {old} is deprecated, use {new}' in err, old
    report = json.loads((again / 'report.json').read_text())
    assert report['runs'][0]['cached']  # the very same settings as --input-size 128
    assert read_records(again / 'records.jsonl') == read_records(out / 'records_128.jsonl')


def test_write_report_skeleton_shared_by_eval_and_demo(tmp_path):
    from boq_ros.eval import report as report_mod
    from boq_ros.eval.groundtruth import GroundTruth, KeyframePositions
    from boq_ros.eval.metrics import EvalConfig, evaluate
    from boq_ros.eval.records import CandidateRecord

    x = [0, 10, 20, 20, 10, 0]
    positions = KeyframePositions.from_sequence(['run'] * 6, [i * 10**9 for i in range(6)],
                                                np.c_[x, np.zeros((6, 2))])
    truth = GroundTruth(positions, positions, 0.0, 1)
    records = [CandidateRecord(q, q * 10**9, 'run', 'cam', q, m, m * 10**9, 'run', m, s, 0, True)
               for q, m, s in ((3, 0, 0.6), (4, 1, 0.9), (5, 0, 0.7))]
    result = evaluate(records, truth, EvalConfig(radius_m=5.0, recall_ks=(1,)))
    plots = report_mod.plot_loop_closure(tmp_path, [('node', result)], truth, 'loops')
    run = {'label': 'node', 'frames': 6, 'keyframes': 6, 'cached': False,
           'timings_s': {'model': 0.6}, 'frames_per_s': 10.0, 'metrics': result.to_dict()}
    report = report_mod.write_report(
        tmp_path, task='loop_closure', inputs={'bag': 'b'}, detector={'threshold': 0.6},
        evaluation=EvalConfig(radius_m=5.0, recall_ks=(1,)), runs=[run], plots=plots,
        files=['records.jsonl'], extra={'replay': {'published': 6}})
    assert json.loads((tmp_path / 'report.json').read_text()) == report
    assert report['files'] == ['report.json', 'summary.md', 'records.jsonl']
    assert report['plots'] == ['pr_curve.png', 'trajectory.png']
    assert all((tmp_path / p).stat().st_size > 0 for p in plots)
    assert report['evaluation'] == {'radius_m': 5.0, 'recall_ks': [1], 'pose_translation_m': 1.0,
                                    'pose_rotation_deg': 5.0}
    assert report['replay'] == {'published': 6} and report['boq_ros_version']
    summary = (tmp_path / 'summary.md').read_text()
    assert '| node | 100.0 |' in summary and '100.0 (0.700)' in summary


def test_distance_keyframes_take_their_poses_from_the_pose_topic(data, tmp_path):
    out = tmp_path / 'distance'
    with contextlib.redirect_stdout(io.StringIO()):
        assert boq_eval(loop_argv(data, out, '--input-size', '64', '--no-cache',
                                  '--keyframe-mode', 'distance', '--keyframe-distance-m', '15',
                                  '--keyframe-angle-rad', '6')) == 0
    report = json.loads((out / 'report.json').read_text())
    run = report['runs'][0]
    assert run['frames'] == 40 and 0 < run['keyframes'] < 40  # the ring is 6 m a frame
    assert run['skipped'] == NO_SKIPS  # every frame had a pose from /odom
    assert report['inputs']['keyframes']['keyframe_mode'] == 'distance'


# --- geometric verification: appearance-only and verified rows side by side ------------------
VERIFIED = dict(laps=2, frames_per_lap=30, image_size=(320, 240))
# The largest time budget: which candidates are verified must not depend on the machine's load.
VERIFIED_ARGS = ['--pose-topic', ODOM_TOPIC, '--radius-m', '5', '--exclusion-seconds', '3',
                 '--exclusion-keyframes', '15', '--threshold', '-1', '--input-size', '96',
                 '--verify-budget-s', '60', '--device', 'cpu', '--no-progress']


def verified_argv(root, checkpoint, out, *extra):
    return [str(root / 'loop_depth'), '--image-topic', IMAGE_TOPIC, '--checkpoint',
            str(checkpoint), '--out', str(out), '--cache-dir', str(root / 'cache'),
            *VERIFIED_ARGS, *extra]


@pytest.fixture(scope='module')
def verified_run(tmp_path_factory, resnet_checkpoint):
    """The default evaluation (verification on) of a 2-lap recording with aligned depth."""
    root = tmp_path_factory.mktemp('verified')
    generate_recording(root / 'loop_depth', storage='mcap', **VERIFIED)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert boq_eval(verified_argv(root, resnet_checkpoint, root / 'out',
                                      '--depth-topic', DEPTH_TOPIC)) == 0
    return root, printed.getvalue()


def test_verified_and_appearance_rows_side_by_side(verified_run):
    root, printed = verified_run
    out = root / 'out'
    report = json.loads((out / 'report.json').read_text())
    appearance, verified = report['runs']
    assert (appearance['label'], verified['label']) == ('height 96 px', 'height 96 px + sift')
    assert '| height 96 px |' in printed and '| height 96 px + sift |' in printed
    assert 'rotation error p50 / p90 (deg)' in printed
    assert report['files'] == ['report.json', 'summary.md', 'records.jsonl',
                               'records_verified.jsonl']
    for name in ('pr_curve.png', 'trajectory.png', 'trajectory_verified.png'):
        assert (out / name).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert report['inputs']['map']['depth_topic'] == DEPTH_TOPIC
    assert report['inputs']['verification']['feature_kind'] == 'sift'
    assert list(appearance['timings_s']) == ['read', 'decode', 'describe', 'search']
    assert list(verified['timings_s']) == ['read', 'decode', 'describe', 'features', 'search',
                                           'verify']
    a, v = appearance['metrics'], verified['metrics']
    assert (a['pr_score'], v['pr_score']) == ('similarity', 'inliers')
    assert a['recall_at'] == v['recall_at']  # the same candidates: retrieval's R@K
    assert appearance['verification'] is None
    info = verified['verification']
    assert set(info['rejected_by_cause']) == set(REJECTION_CAUSES)
    assert info['keyframes_with_features'] == info['keyframes_with_depth'] == 60
    assert info['keyframes_calibrated'] == 60  # the conventional /camera/camera_info
    assert info['candidates_tried'] >= info['candidates_verified'] == v['accepted']['count']
    assert info['ms_per_query']['median'] > 0
    # Verification is deterministic: every loop it accepts on the street is a true one.
    assert v['accepted']['count'] >= 10 and v['accepted']['precision'] == 1.0
    assert v['accepted']['precision'] >= a['accepted']['precision']
    # With depth the poses are metric (PnP), and close to the truth.
    pose = v['pose_errors']
    assert pose['loops_by_pose_kind']['metric'] == v['accepted']['count']
    assert pose['rotation_deg']['count'] == pose['translation_m']['count'] == v['accepted'][
        'count']
    assert pose['rotation_deg']['median'] < 2.0 and pose['translation_m']['median'] < 0.5
    assert a['pose_errors']['rotation_deg']['count'] == 0  # appearance-only: no poses
    # The verified PR curve's points are the accepted loops, at their inlier counts.
    assert float(v['threshold_at_100_precision']).is_integer()
    assert v['pr_curve']['precision'] and all(p == 1.0 for p in v['pr_curve']['precision'])


def test_verified_records_carry_the_accepted_loop_and_its_pose(verified_run):
    from boq_ros.eval.records import POSE_METRIC, STATUS_VERIFIED
    from boq_ros.settings import VerificationSettings

    need = VerificationSettings().min_inliers_pnp
    root, _ = verified_run
    records = read_records(root / 'out' / 'records_verified.jsonl')
    accepted = [r for r in records if r.accepted]
    assert len({r.query_stamp_ns for r in accepted}) == len(accepted) >= 10
    assert all(r.status == STATUS_VERIFIED and r.pose_kind == POSE_METRIC and r.inliers >= need
               and r.relative_pose is not None for r in accepted)
    assert all(r.status != STATUS_VERIFIED for r in records if not r.accepted)
    appearance = read_records(root / 'out' / 'records.jsonl')
    assert all(r.rank == 0 for r in appearance if r.accepted)
    assert all(r.relative_pose is None and r.inliers == 0 for r in appearance)
    key = [(r.query_stamp_ns, r.match_stamp_ns, r.rank, r.similarity) for r in records]
    assert key == [(r.query_stamp_ns, r.match_stamp_ns, r.rank, r.similarity)
                   for r in appearance]  # the same candidates, verified or not


def test_verified_rerun_from_the_cache_gives_identical_numbers(verified_run, resnet_checkpoint):
    root, _ = verified_run
    again = root / 'again'
    with contextlib.redirect_stdout(io.StringIO()):
        assert boq_eval(verified_argv(root, resnet_checkpoint, again,
                                      '--depth-topic', DEPTH_TOPIC)) == 0
    first = json.loads((root / 'out' / 'report.json').read_text())['runs']
    second = json.loads((again / 'report.json').read_text())['runs']
    assert [r['cached'] for r in first] == [False, False]
    assert [r['cached'] for r in second] == [True, True]
    for a, b in zip(first, second):
        assert a['metrics'] == b['metrics']
        assert a['keyframes'] == b['keyframes'] and a['skipped'] == b['skipped']
    info = {k: v for k, v in second[1]['verification'].items() if k != 'ms_per_query'}
    assert info == {k: v for k, v in first[1]['verification'].items() if k != 'ms_per_query'}
    for name in ('records.jsonl', 'records_verified.jsonl'):
        assert read_records(again / name) == read_records(root / 'out' / name)


def test_recorded_verified_candidates_evaluate_to_the_same_numbers(verified_run):
    root, _ = verified_run
    recorded_out = root / 'recorded'
    argv = [str(root / 'loop_depth'), '--records', str(root / 'out' / 'records_verified.jsonl'),
            '--out', str(recorded_out), *VERIFIED_ARGS]
    with contextlib.redirect_stdout(io.StringIO()):
        assert boq_eval(argv) == 0
    recorded = json.loads((recorded_out / 'report.json').read_text())['runs'][0]['metrics']
    original = json.loads((root / 'out' / 'report.json').read_text())['runs'][1]['metrics']
    assert recorded == original  # pose errors included: the records carry the poses


def test_no_verification_is_the_appearance_only_row(verified_run, resnet_checkpoint):
    root, _ = verified_run
    plain = root / 'plain'
    with contextlib.redirect_stdout(io.StringIO()):
        assert boq_eval(verified_argv(root, resnet_checkpoint, plain, '--no-verification')) == 0
    (run,) = json.loads((plain / 'report.json').read_text())['runs']
    both = json.loads((root / 'out' / 'report.json').read_text())['runs']
    assert run['label'] == 'height 96 px' and not run['cached']  # a key without features
    assert run['metrics'] == both[0]['metrics']
    assert read_records(plain / 'records.jsonl') == read_records(root / 'out' / 'records.jsonl')


def test_verification_flags_are_the_settings():
    from boq_ros.cli import build_parser
    from boq_ros.settings import VerificationSettings, settings_of

    parser = build_parser()
    args = parser.parse_args(['eval', 'bag', '--out', 'o'])
    assert all(getattr(args, s.name) == s.default for s in settings_of(VerificationSettings))
    assert (args.depth_topic, args.camera_info_topic) == (None, None)
    args = parser.parse_args(['eval', 'bag', '--out', 'o', '--no-verification',
                              '--feature-kind', 'orb', '--depth-range-m', '0.5', '8',
                              '--camera-in-base', '0', '0', '1', '0', '0', '0', '1',
                              '--camera-info-topic', ''])
    assert (args.verification, args.feature_kind, args.depth_range_m, args.camera_in_base,
            args.camera_info_topic) == (False, 'orb', [0.5, 8.0], [0, 0, 1, 0, 0, 0, 1], '')
    with pytest.raises(SystemExit):
        parser.parse_args(['eval', 'bag', '--out', 'o', '--depth-range-m', '-1', '8'])
