"""`boq-ros demo` (the README's main job) and the pieces it is made of.

One test runs the whole job as a user does (a subprocess on real DDS, random weights, a tiny
recording); the others check its parts on hand-made inputs: recording reuse, weights choice, the
node parameters against the node's own table, and the live/offline comparison, which must
report every kind of disagreement.
"""
import argparse
from dataclasses import replace
import json
from pathlib import Path
import subprocess
import sys

import numpy as np
import pytest

from boq_ros.demo import (
    DemoError,
    DemoRecording,
    NodeSettings,
    compare_records,
    demo_detector,
    ensure_recording,
    metric_differences,
    write_params_file,
)
from boq_ros.eval.groundtruth import GroundTruth, KeyframePositions
from boq_ros.eval.metrics import EvalConfig, evaluate
from boq_ros.eval.records import CandidateRecord, no_match_record, read_records
from boq_ros.pipeline import SKIP_CAUSES

TINY = ['--frames', '18', '--camera-size', '96', '72', '--input-size', '64', '--device', 'cpu',
        '--no-progress']


def _demo(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-m', 'boq_ros.cli', 'demo', *args], env=env,
                          cwd=cwd, capture_output=True, text=True, timeout=400)


@pytest.fixture
def demo_env(ros_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    env = dict(ros_env)
    env['TORCH_HOME'] = str(tmp_path / 'torch_home')  # no released weights in this cache
    return env


def test_demo_runs_the_main_job(demo_env, tmp_path, ros_domain_id):
    out = tmp_path / 'out'
    result = _demo(['--out', str(out), '--domain-id', str(ros_domain_id), *TINY], demo_env,
                   tmp_path)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    text = result.stdout
    assert 'RANDOMLY INITIALISED' in text and 'not how' in text  # says what random means
    assert 'node: stopped cleanly' in text
    assert 'they agree' in text and 'metrics live vs offline: identical' in text
    report = json.loads((out / 'report' / 'report.json').read_text())
    assert [r['label'] for r in report['runs']] == ['live node', 'offline pipeline',
                                                    'offline, appearance only']
    assert report['runs'][0]['metrics']['pr_score'] == 'inliers'  # verified, as offline
    assert set(report['kept_revisits']['by_run']) == {r['label'] for r in report['runs']}
    assert report['inputs']['random_weights'] is True
    assert report['runs'][1]['skipped'] == dict.fromkeys(SKIP_CAUSES, 0)
    assert report['inputs']['node_parameters']['input_size'] == 64
    assert report['replay']['images'] == report['replay']['answered'] == 18
    assert report['agreement']['records_agree'] and report['agreement']['metric_differences'] == []
    live = report['runs'][0]['metrics']
    assert live['num_queries'] == 18 and live['num_positive_queries'] > 0
    for name in report['plots'] + report['files']:
        assert (out / 'report' / name).stat().st_size > 0
    assert '| live node |' in (out / 'report' / 'summary.md').read_text()
    records = read_records(out / 'run' / 'live_candidates.jsonl')
    assert len({r.query_stamp_ns for r in records}) == 18
    assert list((out / 'recordings').glob('recording-*/recording.json'))
    scores = report['trajectories']['scores']  # the backend beside the node, and offline
    assert [s['label'] for s in scores[:3]] == ['odometry alone', 'pose graph node (live loops)',
                                                'offline pose graph']
    assert all(s['keyframes'] == 18 for s in scores)
    assert scores[1]['ate_rmse_m'] == pytest.approx(scores[2]['ate_rmse_m'], abs=1e-6)
    assert 'trajectories.png' in report['plots'] and (out / 'run' / 'pose_graph.g2o').is_file()
    assert 'Drift corrected by the loops' in text


def test_demo_default_corrects_the_drift(demo_env, tmp_path, ros_domain_id):
    """`make demo` as shipped: the loops the live node published cut the odometry's ATE 10x.

    Also the robustness row: with 10 % of those loops made wrong, the robust kernel keeps the
    optimised ATE within 1.5x of the clean one (and without a kernel it is not).
    """
    out = tmp_path / 'out'
    result = _demo(['--out', str(out), '--domain-id', str(ros_domain_id), '--no-progress'],
                   demo_env, tmp_path)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    report = json.loads((out / 'report' / 'report.json').read_text())
    scores = {s['label']: s for s in report['trajectories']['scores']}
    odometry = scores['odometry alone']['ate_rmse_m']
    live = scores['pose graph node (live loops)']
    assert odometry > 3.0 and live['loops'] > 50
    assert live['ate_rmse_m'] * 10 <= odometry, scores
    clean = scores['offline pose graph']['ate_rmse_m']
    wrong = report['trajectories']['wrong_loops']
    assert wrong >= live['loops'] // 10
    assert scores[f'offline, {wrong} loops wrong (cauchy)']['ate_rmse_m'] <= 1.5 * clean
    assert scores[f'offline, {wrong} loops wrong (no robust kernel)']['ate_rmse_m'] > 3 * clean


def _demo_in_process(args: list[str], ros_env: dict[str, str], monkeypatch) -> int:
    """Run `boq-ros demo` here (no interpreter start-up); the environment is restored after.

    Errors go through boq_ros.cli's one handler, as on the command line.
    """
    from boq_ros.cli import demo as demo_cli
    from boq_ros.cli import run_command

    for key, value in ros_env.items():
        monkeypatch.setenv(key, value)  # the demo sets these for its DDS; undone at teardown
    parser = argparse.ArgumentParser(prog='boq-ros')
    demo_cli.register(parser.add_subparsers(dest='command', required=True))
    return run_command(parser.parse_args(['demo', *args]), 'demo')


def test_demo_reports_a_node_that_cannot_start(ros_env, tmp_path, ros_domain_id, monkeypatch,
                                               capsys):
    from boq_ros.model.checkpoint import write_random_checkpoint

    checkpoint = write_random_checkpoint(tmp_path / 'w.pth', 'resnet50-16384')
    # The demo process never uses the device before the node does: the node is first to fail.
    status = _demo_in_process(['--out', str(tmp_path / 'out'), '--domain-id',
                               str(ros_domain_id), '--checkpoint', str(checkpoint), *TINY,
                               '--device', 'cuda:99'], ros_env, monkeypatch)
    err = capsys.readouterr().err
    assert status == 1
    assert 'the node exited early' in err and "device 'cuda:99' requested" in err


def test_demo_refuses_bad_arguments(ros_env, tmp_path, monkeypatch, capsys):
    out = str(tmp_path / 'out')
    assert _demo_in_process(['--out', out, '--frames', '7'], ros_env, monkeypatch) == 1
    assert 'frames must be a multiple of laps' in capsys.readouterr().err
    assert _demo_in_process(['--out', out, '--checkpoint', str(tmp_path / 'missing.pth')],
                            ros_env, monkeypatch) == 1
    assert 'no checkpoint file' in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:  # a flag out of its range: a usage error
        _demo_in_process(['--out', out, '--radius-m', '0'], ros_env, monkeypatch)
    assert exited.value.code == 2
    assert 'radius_m must be in (0, 1e+06], got 0.0' in capsys.readouterr().err
    broken = tmp_path / 'broken.pth'
    broken.write_bytes(b'not a checkpoint')
    assert _demo_in_process(['--out', out, '--checkpoint', str(broken)], ros_env,
                            monkeypatch) == 1
    err = capsys.readouterr().err
    assert err.startswith('boq-ros demo: error:') and 'broken.pth' in err


def test_demo_deprecated_flag_names_still_work_and_say_so(capsys):
    from boq_ros.cli import build_parser

    args = build_parser().parse_args(['demo', '--image-size', '96', '72', '--height', '64',
                                      '--radius', '3', '--backbone', 'dinov2'])
    assert (args.camera_size, args.input_size, args.radius_m, args.preset) == (
        [96, 72], 64, 3.0, 'dinov2-12288')
    err = capsys.readouterr().err
    for old, new in (('--image-size', '--camera-size'), ('--height', '--input-size'),
                     ('--radius', '--radius-m'), ('--backbone', '--preset')):
        assert f'boq-ros demo: note: {old} is deprecated, use {new}' in err, old


def test_recording_is_generated_once_per_parameters(tmp_path):
    spec = DemoRecording(frames=12, image_size=(32, 24))
    bag, reused = ensure_recording(tmp_path, spec)
    assert not reused and bag.exists()
    mtime = bag.stat().st_mtime_ns
    assert ensure_recording(tmp_path, spec) == (bag, True) and bag.stat().st_mtime_ns == mtime
    other, reused = ensure_recording(tmp_path, replace(spec, seed=1))
    assert other.parent != bag.parent and not reused
    (bag.parent / 'recording.json').unlink()  # as if interrupted before completion
    assert ensure_recording(tmp_path, spec) == (bag, False)
    assert not list(tmp_path.glob('.tmp-*'))
    with pytest.raises(DemoError, match='laps'):
        DemoRecording(laps=1).validate()


def test_weights_choice(tmp_path, monkeypatch):
    from boq_ros.demo import choose_weights
    from boq_ros.model.checkpoint import CheckpointNotFoundError, cache_path

    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'hub'))
    released = cache_path('resnet50-16384')
    released.parent.mkdir(parents=True)
    released.write_bytes(b'stand-in: choose_weights only locates the file')
    weights = choose_weights(None, '', tmp_path / 'scratch')  # '': the default preset
    assert (weights.path, weights.random) == (released, False)
    assert choose_weights('resnet50-16384', 'dinov2-12288', tmp_path).path == released
    given = tmp_path / 'mine.pth'
    given.write_bytes(b'x')
    assert choose_weights(str(given), '', tmp_path).path == given
    with pytest.raises(CheckpointNotFoundError, match='no checkpoint file'):
        choose_weights(str(tmp_path / 'nope.pth'), '', tmp_path)
    with pytest.raises(CheckpointNotFoundError, match='weights download'):
        choose_weights('dinov2-12288', 'dinov2-12288', tmp_path)


def test_node_parameters_match_the_node(tmp_path):
    import yaml

    from boq_ros.extractor import ModelSettings
    from boq_ros.ros.params import PARAMS

    model = ModelSettings(checkpoint=str(tmp_path / 'w.pth'), resize_policy='height',
                          input_size=240)
    settings = NodeSettings(model, tmp_path / 'maps', demo_detector(DemoRecording()))
    params = settings.parameters()
    for name, value in params.items():
        assert name in PARAMS, f'the node has no parameter {name}'
        assert type(value) is type(PARAMS[name].default), name
        PARAMS[name].check(value)  # type, range and choices of the node's own parameter
    path = write_params_file(tmp_path / 'p.yaml', params)
    assert yaml.safe_load(path.read_text()) == {'/**': {'ros__parameters': params}}
    assert params['exclusion_seconds'] == pytest.approx(DemoRecording().lap_s / 2)
    assert params['keyframe_mode'] == 'every_frame' and params['input_size'] == 240
    # Node and offline run round the size in one place: DINOv2 takes multiples of 14.
    assert model.preprocess_for('dinov2-12288').size == 238


def _rec(query: int, rank: int, match: int, sim: float, accepted: bool = False
         ) -> CandidateRecord:
    return CandidateRecord(query, 1000 + query, 's', 'cam', query, match, 1000 + match, 's',
                           match, sim, rank, accepted)


def test_compare_records_finds_every_disagreement():
    base = [no_match_record(0, 1000, 's', 'cam', 0),
            _rec(5, 0, 1, 0.9, True), _rec(5, 1, 2, 0.8), _rec(5, 2, 3, 0.7)]
    assert compare_records(base, list(base)).agree
    near = [base[0], _rec(5, 0, 1, 0.9 + 5e-5, True), _rec(5, 1, 2, 0.8), _rec(5, 2, 3, 0.7)]
    result = compare_records(base, near)
    assert result.agree and result.max_similarity_diff == pytest.approx(5e-5)
    # Near-ties may swap ranks, and the last rank may hold either of two near-tied keyframes.
    tied = [base[0], _rec(5, 0, 1, 0.9, True), _rec(5, 1, 2, 0.8), _rec(5, 2, 3, 0.8)]
    swapped = [base[0], _rec(5, 0, 1, 0.9, True), _rec(5, 1, 3, 0.8), _rec(5, 2, 2, 0.8)]
    assert compare_records(tied, swapped).agree
    assert compare_records(tied, tied[:3] + [_rec(5, 2, 4, 0.8)]).agree
    cases = {
        'similarities at equal ranks differ': [base[0], _rec(5, 0, 1, 0.95, True)] + base[2:],
        'keyframe 4 proposed live only': base[:2] + [_rec(5, 1, 4, 0.8), base[3]],
        '2 candidates live, 3 offline': base[:3],
        'accepted none live, [1] offline': [base[0], _rec(5, 0, 1, 0.9)] + base[2:],
    }
    for problem, live in cases.items():
        result = compare_records(live, base)
        assert not result.agree and problem in result.mismatches[0], (problem, result)
    # Acceptance may differ only when the similarity sits on the threshold.
    flipped = [base[0], _rec(5, 0, 1, 0.9)] + base[2:]
    assert compare_records(flipped, base, threshold=0.9).agree
    result = compare_records(base[:1], base)
    assert result.missing_queries == (1005,) and not result.agree
    assert 'DIFFER' in result.format() and 'never answered live' in result.format()
    assert compare_records(base, base[:1]).extra_queries == (1005,)


def test_metric_differences_names_the_metric():
    positions = KeyframePositions.from_sequence(['s'] * 6, [1000 + q for q in range(6)],
                                                np.array([[0, 0, 0], [50, 0, 0], [100, 0, 0],
                                                          [0, 1, 0], [50, 1, 0], [100, 1, 0]]))
    truth = GroundTruth(positions, positions, 0.0, 1)
    wrong = [no_match_record(q, 1000 + q, 's', 'cam', q) for q in range(3)] + [
        _rec(3, 0, 0, 0.9, True), _rec(4, 0, 1, 0.8, True), _rec(5, 0, 0, 0.7, True)]
    right = wrong[:5] + [_rec(5, 0, 2, 0.7, True)]  # keyframe 2 is where query 5 is
    config = EvalConfig(radius_m=5.0)
    assert metric_differences(evaluate(wrong, truth, config),
                              evaluate(wrong, truth, config)) == []
    diffs = metric_differences(evaluate(right, truth, config), evaluate(wrong, truth, config))
    assert any(d.startswith('recall_at.1:') for d in diffs), diffs
