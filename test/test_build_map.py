"""`boq-ros map build` and `map info` on generated sqlite3 and MCAP bags, odometry keyframes."""
import argparse
import json
import math

import numpy as np
import pytest

from boq_ros.cli import map as map_cli
from boq_ros.keyframe_map import KeyframeMap
from boq_ros.synth import COMPRESSED_TOPIC, IMAGE_TOPIC, ODOM_TOPIC, generate_recording


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog='boq-ros')
    map_cli.register(parser.add_subparsers(dest='command', required=True))
    args = parser.parse_args(['map', *argv])
    return args.func(args)


@pytest.fixture(scope='module')
def recordings(tmp_path_factory):
    root = tmp_path_factory.mktemp('bags')
    return [generate_recording(root / f'run_{storage}', storage=storage, laps=2,
                               frames_per_lap=10, image_size=(64, 48), session=storage,
                               variant=i, seed=3)
            for i, storage in enumerate(('sqlite3', 'mcap'))]


def frame_step(rec) -> float:
    return float(np.median(np.linalg.norm(np.diff(rec.frame_positions, axis=0), axis=1)))


def build_args(checkpoint, out, *extra, distance_m=1.0):
    return ('build', '--checkpoint', str(checkpoint), '--image-size', '64', '--device', 'cpu',
            '--keyframes', 'distance', '--distance-m', str(distance_m), '--angle-rad', '10',
            '--pose-topic', ODOM_TOPIC, '--out', str(out), '--no-progress', *extra)


def test_build_map_from_both_storage_kinds_with_odometry_keyframes(
        tmp_path, resnet_checkpoint, recordings, capsys):
    sqlite_rec, mcap_rec = recordings
    out = tmp_path / 'site'
    distance = 2.5 * frame_step(sqlite_rec)
    assert run(*build_args(resnet_checkpoint, out, '--bag', str(sqlite_rec.path), '--topic',
                           IMAGE_TOPIC, '--robot-id', 'r1', distance_m=distance)) == 0
    text = capsys.readouterr().out
    assert 'frames read: 20' in text and 'decode errors: 0' in text
    assert run(*build_args(resnet_checkpoint, out, '--bag', str(mcap_rec.path), '--topic',
                           COMPRESSED_TOPIC, '--session', 'second', '--append',
                           distance_m=distance)) == 0
    kmap = KeyframeMap.load(out, expect_dim=16384)
    assert kmap.model_id.startswith('resnet50-16384@')
    assert kmap.preprocess == {'policy': 'height', 'size': 64, 'multiple': 1}
    sessions = kmap.sessions()
    assert set(sessions) == {'run_sqlite3', 'second'}
    for session, rec, topic in (('run_sqlite3', sqlite_rec, IMAGE_TOPIC),
                                ('second', mcap_rec, COMPRESSED_TOPIC)):
        ids = [i for i in range(kmap.schema.next_id) if kmap.meta(i).session == session]
        metas = [kmap.meta(i) for i in ids]
        assert 2 <= len(metas) < rec.n_frames  # distance selection dropped frames
        assert [m.seq for m in metas] == list(range(len(metas)))
        positions = np.array([m.pose[:3] for m in metas])
        steps = np.linalg.norm(np.diff(positions, axis=0), axis=1)
        assert (steps >= distance - 1e-6).all()
        for meta in metas:
            frame = int(np.flatnonzero(rec.frame_stamps_ns == meta.stamp_ns)[0])
            np.testing.assert_allclose(meta.pose[:3], rec.frame_positions[frame], atol=1e-6)
            assert math.isclose(math.hypot(*meta.pose[3:]), 1.0, abs_tol=1e-9)
            assert meta.pose_source == f'odometry:{ODOM_TOPIC}'
            assert meta.camera == topic and meta.frame_id == 'camera'
            assert meta.image_ref == f'{rec.path.name}#{topic}@{meta.stamp_ns}'
        assert {m.robot_id for m in metas} == ({'r1'} if session == 'run_sqlite3' else {''})
    # the stored descriptors are what the map searches: each finds itself first
    res = kmap.search(np.stack([kmap.descriptor(0), kmap.descriptor(len(kmap) - 1)]), 1)
    assert list(res.ids[:, 0]) == [0, len(kmap) - 1]

    capsys.readouterr()
    assert run('info', str(out), '--json') == 0
    info = json.loads(capsys.readouterr().out)
    assert info['statistics']['sessions'] == sessions
    assert info['statistics']['with_pose'] == len(kmap)
    assert info['schema']['count'] == len(kmap) and info['schema']['dim'] == 16384
    assert run('info', str(out)) == 0
    assert 'index_state:' in capsys.readouterr().out
    assert run(*build_args(resnet_checkpoint, out, '--bag', str(mcap_rec.path),
                           '--topic', IMAGE_TOPIC, '--session', 'third', '--append',
                           '--image-size', '48')) == 1
    assert 'was built with preprocessing' in capsys.readouterr().err
    assert len(KeyframeMap.load(out)) == len(kmap)


def test_build_map_refusals_name_the_cause(tmp_path, resnet_checkpoint, recordings, capsys):
    bag = str(recordings[0].path)
    out = tmp_path / 'm'
    assert run(*build_args(resnet_checkpoint, out, '--bag', bag)) == 1  # two image topics
    assert 'choose with --topic' in capsys.readouterr().err
    assert run('build', '--checkpoint', str(resnet_checkpoint), '--bag', bag, '--keyframes',
               'distance', '--out', str(out)) == 1
    assert 'needs --pose-topic' in capsys.readouterr().err
    out.mkdir()
    (out / 'schema.json').write_text('{}')
    assert run(*build_args(resnet_checkpoint, out, '--bag', bag, '--topic', IMAGE_TOPIC)) == 1
    assert 'pass --append' in capsys.readouterr().err
    assert run('info', str(out)) == 1
    assert 'schema version None' in capsys.readouterr().err
    (out / 'schema.json').unlink()
    (out / 'schema.json').mkdir()  # unreadable: an OSError, reported like any refusal
    assert run('info', str(out)) == 1
    assert 'schema.json' in capsys.readouterr().err
