"""`boq-ros map build` and `map info` on generated bags and image folders, and build_map.

Refusals and empty results are part of the interface: a build that adds nothing exits 1 with
the cause and writes nothing; usage errors exit 2.
"""
import json
import math

import cv2
import numpy as np
import pytest

from boq_ros.cli import main
from boq_ros.keyframe_map import KeyframeMap
from boq_ros.synth import COMPRESSED_TOPIC, IMAGE_TOPIC, ODOM_TOPIC, generate_recording


def run(*argv: str) -> int:
    """Run `boq-ros map ...`; argparse's own usage errors exit 2 (SystemExit)."""
    try:
        return main(['map', *argv])
    except SystemExit as exc:
        return exc.code


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
    return ('build', '--checkpoint', str(checkpoint), '--input-size', '64', '--device', 'cpu',
            '--keyframe-mode', 'distance', '--keyframe-distance-m', str(distance_m),
            '--keyframe-angle-rad', '6', '--pose-topic', ODOM_TOPIC, '--out', str(out),
            '--no-progress', *extra)


def test_build_map_from_both_storage_kinds_with_odometry_keyframes(
        tmp_path, resnet_checkpoint, recordings, capsys):
    sqlite_rec, mcap_rec = recordings
    out = tmp_path / 'site'
    distance = 2.5 * frame_step(sqlite_rec)
    assert run(*build_args(resnet_checkpoint, out, '--bag', str(sqlite_rec.path),
                           '--image-topic', IMAGE_TOPIC, '--robot-id', 'r1',
                           distance_m=distance)) == 0
    text = capsys.readouterr().out
    assert 'frames read: 20' in text
    assert 'frames skipped: 0 (decode 0, depth 0, no_pose 0, descriptor 0, stamp 0)' in text
    assert run(*build_args(resnet_checkpoint, out, '--bag', str(mcap_rec.path), '--topic',
                           COMPRESSED_TOPIC, '--session', 'second', '--append',
                           distance_m=distance)) == 0
    assert '--topic is deprecated, use --image-topic' in capsys.readouterr().err
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
                           '--image-topic', IMAGE_TOPIC, '--session', 'third', '--append',
                           '--input-size', '48')) == 1
    assert 'the map was built with resize_policy' in capsys.readouterr().err
    assert len(KeyframeMap.load(out)) == len(kmap)


def test_build_map_refusals_name_the_cause(tmp_path, resnet_checkpoint, recordings, capsys):
    bag = str(recordings[0].path)
    out = tmp_path / 'm'
    assert run(*build_args(resnet_checkpoint, out, '--bag', bag)) == 1  # two image topics
    assert 'boq-ros map build: error: ' in (err := capsys.readouterr().err)
    assert 'choose with --image-topic' in err
    assert run('build', '--checkpoint', str(resnet_checkpoint), '--bag', bag,
               '--keyframe-mode', 'distance', '--out', str(out)) == 2  # usage
    assert 'needs --pose-topic' in capsys.readouterr().err
    assert run(*build_args(resnet_checkpoint, out, '--bag', bag, '--input-size', '8')) == 2
    assert 'input_size must be 0 (the default) or >= 16' in capsys.readouterr().err
    assert not out.exists()
    out.mkdir()
    (out / 'schema.json').write_text('{}')
    assert run(*build_args(resnet_checkpoint, out, '--bag', bag, '--image-topic',
                           IMAGE_TOPIC)) == 1
    assert 'pass append (--append)' in capsys.readouterr().err
    assert run('info', str(out)) == 1
    assert 'schema version None' in capsys.readouterr().err
    (out / 'schema.json').unlink()
    (out / 'schema.json').mkdir()  # unreadable: an OSError, reported like any refusal
    assert run('info', str(out)) == 1
    assert 'schema.json' in capsys.readouterr().err


def folder_args(checkpoint, out, *extra):
    return ('build', '--checkpoint', str(checkpoint), '--input-size', '64', '--device', 'cpu',
            '--out', str(out), '--no-progress', *extra)


def test_a_build_that_adds_nothing_fails_and_writes_nothing(tmp_path, resnet_checkpoint,
                                                            capsys):
    empty = tmp_path / 'empty'
    empty.mkdir()
    out = tmp_path / 'out'
    assert run(*folder_args(resnet_checkpoint, out, '--images', str(empty))) == 1
    assert f'no usable frame in {empty}: 0 files' in capsys.readouterr().err
    texts = tmp_path / 'texts'
    texts.mkdir()
    for i in range(3):
        (texts / f'{i}.txt').write_text('not an image')
    assert run(*folder_args(resnet_checkpoint, out, '--images', str(texts))) == 1
    assert f'no usable frame in {texts}: 3 files, none of them JPEG or PNG' in (
        capsys.readouterr().err)
    broken = tmp_path / 'broken'
    broken.mkdir()
    for i in range(3):
        (broken / f'{i}.jpg').write_bytes(b'\xff\xd8 truncated')
    assert run(*folder_args(resnet_checkpoint, out, '--images', str(broken))) == 1
    err = capsys.readouterr().err
    assert 'no keyframe to add' in err and '3 frames read, skipped: 3 decode' in err
    assert not out.exists()


def test_a_bag_whose_frames_all_fail_writes_no_map(tmp_path, resnet_checkpoint, capsys):
    from boq_ros.bags import BagWriter, make_header
    from boq_ros.bags import typestore as store

    bag = tmp_path / 'bad.mcap'
    Image = store().types['sensor_msgs/msg/Image']
    with BagWriter(bag, storage='mcap') as writer:
        for i in range(4):  # the step says 3 bytes per pixel, the data holds 1
            msg = Image(header=make_header(i * 10**9, 'cam'), height=8, width=8,
                        encoding='rgb8', is_bigendian=0, step=24,
                        data=np.zeros(64, np.uint8))
            writer.write('/cam', 'sensor_msgs/msg/Image', msg, i * 10**9)
    out = tmp_path / 'out'
    assert run(*folder_args(resnet_checkpoint, out, '--bag', str(bag))) == 1
    assert '4 frames read, skipped: 4 decode' in capsys.readouterr().err
    assert not out.exists()


def test_append_skips_keyframes_already_in_the_map(tmp_path, resnet_checkpoint, recordings,
                                                   capsys):
    bag = str(recordings[0].path)
    out = tmp_path / 'site'
    args = folder_args(resnet_checkpoint, out, '--bag', bag, '--image-topic', IMAGE_TOPIC,
                       '--keyframe-mode', 'interval', '--keyframe-interval-s', '0.5')
    assert run(*args) == 0
    before = KeyframeMap.load(out)
    capsys.readouterr()
    assert run(*args, '--append') == 1  # the same recording again: nothing new
    assert 'already in the map' in capsys.readouterr().err
    again = KeyframeMap.load(out)
    assert len(again) == len(before) and again.schema.modified == before.schema.modified
    # Every frame now: the interval keyframes are skipped and counted, the others join.
    assert run(*folder_args(resnet_checkpoint, out, '--bag', bag, '--image-topic', IMAGE_TOPIC,
                            '--append')) == 0
    text = capsys.readouterr().out
    assert f'keyframes already in the map (skipped): {len(before)}' in text
    after = KeyframeMap.load(out)
    assert len(after) == recordings[0].n_frames
    assert len({after.meta(i).stamp_ns for i in range(len(after))}) == len(after)


def test_image_folder_glob_depth_and_stamps(tmp_path, resnet_checkpoint, capsys):
    scenes = tmp_path / 'seq-01'  # 7-Scenes: colour JPEG and 16-bit depth PNG side by side
    scenes.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        cv2.imwrite(str(scenes / f'frame-{i:06d}.color.jpg'),
                    rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
        cv2.imwrite(str(scenes / f'frame-{i:06d}.depth.png'),
                    rng.integers(0, 5000, (48, 64), dtype=np.uint16))
    out = tmp_path / 'all'
    assert run(*folder_args(resnet_checkpoint, out, '--images', str(scenes))) == 0
    captured = capsys.readouterr()
    assert 'stamps from file order, 1 s apart' in captured.err
    assert 'keyframes added: 3' in captured.out and 'depth 3' in captured.out
    kmap = KeyframeMap.load(out)
    assert [kmap.meta(i).image_ref for i in range(3)] == [
        f'seq-01/frame-{i:06d}.color.jpg' for i in range(3)]
    assert [kmap.meta(i).stamp_ns for i in range(3)] == [0, 2 * 10**9, 4 * 10**9]  # file order
    glob_out = tmp_path / 'glob'
    assert run(*folder_args(resnet_checkpoint, glob_out, '--images',
                            str(scenes / '*.color.jpg'))) == 0
    assert 'depth 0' in capsys.readouterr().out
    assert len(KeyframeMap.load(glob_out)) == 3
    depth_out = tmp_path / 'depth'
    assert run(*folder_args(resnet_checkpoint, depth_out, '--images', str(scenes / '*.png'),
                            '--include-depth')) == 0
    assert len(KeyframeMap.load(depth_out)) == 3

    stamped = tmp_path / 'stamped'  # EuRoC-style nanosecond names
    stamped.mkdir()
    for ns in (1403636579763555584, 1403636579813555456):
        cv2.imwrite(str(stamped / f'{ns}.png'), rng.integers(0, 256, (48, 64, 3), np.uint8))
    ns_out = tmp_path / 'ns'
    assert run(*folder_args(resnet_checkpoint, ns_out, '--images', str(stamped))) == 0
    assert 'stamps from file names, as nanoseconds' in capsys.readouterr().err
    assert KeyframeMap.load(ns_out).meta(1).stamp_ns == 1403636579813555456


def test_build_map_python_api(tmp_path, resnet_checkpoint, recordings):
    from boq_ros.mapping import Recording, build_map
    from boq_ros.settings import KeyframePolicy, MapSettings, ModelSettings

    rec = recordings[1]
    summary = build_map(
        [Recording(rec.path, image_topics=(IMAGE_TOPIC,), pose_topic=ODOM_TOPIC)],
        tmp_path / 'api', model=ModelSettings(str(resnet_checkpoint), device='cpu',
                                              input_size=64),
        keyframes=KeyframePolicy('interval', keyframe_interval_s=1.0),
        map_settings=MapSettings(session='walk', robot_id='r2'))
    kmap = KeyframeMap.load(summary.out)
    assert summary.keyframes == len(kmap) == summary.total_keyframes > 0
    assert summary.frames == rec.n_frames and sum(summary.skipped.values()) == 0
    assert kmap.sessions() == {'walk': len(kmap)}
    assert all(kmap.meta(i).pose is not None for i in range(len(kmap)))


def test_help_names_existing_docs():
    import contextlib
    import io
    from pathlib import Path

    text = io.StringIO()
    with contextlib.redirect_stdout(text), pytest.raises(SystemExit):
        main(['map', 'build', '--help'])
    root = Path(__file__).resolve().parents[1]
    for doc in {w.strip('().,;') for w in text.getvalue().split() if w.startswith(('docs/',
                                                                                  '(docs/'))}:
        assert (root / doc).is_file(), doc


def _pngs(folder, n, seed=0):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        cv2.imwrite(str(folder / f'{i}.png'), rng.integers(0, 256, (24, 32, 3), np.uint8))


def test_two_recordings_that_would_collide_are_refused(tmp_path, resnet_checkpoint, capsys):
    _pngs(tmp_path / 'A' / 'cam', 4)
    _pngs(tmp_path / 'B' / 'cam', 3, seed=1)
    out = tmp_path / 'out'
    assert run(*folder_args(resnet_checkpoint, out, '--images', str(tmp_path / 'A' / 'cam'),
                            '--images', str(tmp_path / 'B' / 'cam'))) == 1
    assert "would both be session 'cam', camera 'cam'" in capsys.readouterr().err
    assert not out.exists()


def test_output_locations_are_checked_before_any_work(tmp_path, resnet_checkpoint, capsys):
    _pngs(tmp_path / 'imgs', 2)
    images = ('--images', str(tmp_path / 'imgs'))
    afile = tmp_path / 'afile'
    afile.write_text('x')
    for out, message in ((afile, 'is a file, not a map directory'),
                         (afile / 'sub', 'is a file'),
                         (tmp_path / 'imgs', 'exists and is not a keyframe map')):
        assert run(*folder_args(resnet_checkpoint, out, *images)) == 1
        assert message in capsys.readouterr().err
    empty = tmp_path / 'mounted'
    empty.mkdir()  # an empty directory is a new map
    assert run(*folder_args(resnet_checkpoint, empty, *images)) == 0
    assert len(KeyframeMap.load(empty)) == 2
    assert run(*folder_args(resnet_checkpoint, '', *images)) == 2
    assert 'an empty path names no file or folder' in capsys.readouterr().err
    single = tmp_path / 'one'
    assert run(*folder_args(resnet_checkpoint, single, '--images',
                            str(tmp_path / 'imgs' / '0.png'))) == 0  # one image file
    assert len(KeyframeMap.load(single)) == 1
    assert run(*folder_args(resnet_checkpoint, tmp_path / 'x', *images, '--device', 'tpu')) == 2
    assert "device must be 'auto', 'cpu', 'cuda' or 'cuda:N'" in capsys.readouterr().err
    assert run(*folder_args(resnet_checkpoint, tmp_path / 'x', *images, '--bogus')) == 2
    assert 'boq-ros map build: error: unrecognized arguments: --bogus' in (
        capsys.readouterr().err)


def test_a_broken_pose_message_is_dropped_not_fatal(tmp_path, resnet_checkpoint, capsys):
    from boq_ros.bags import BagWriter, make_image_msg, make_odometry_msg

    bag = tmp_path / 'odd.mcap'
    rng = np.random.default_rng(0)
    with BagWriter(bag, storage='mcap') as writer:
        for i in range(6):
            t = i * 10**9
            position = (math.nan, 0.0, 0.0) if i == 2 else (2.0 * i, 0.0, 0.0)
            writer.write('/odom', 'nav_msgs/msg/Odometry',
                         make_odometry_msg(t, position, (0.0, 0.0, 0.0, 1.0)), t)
            writer.write('/cam', 'sensor_msgs/msg/Image', make_image_msg(
                rng.integers(0, 256, (24, 32, 3), np.uint8), 'rgb8', t, 'cam'), t + 1)
    out = tmp_path / 'out'
    assert run(*folder_args(resnet_checkpoint, out, '--bag', str(bag), '--pose-topic',
                            '/odom', '--pose-tolerance-s', '0.5')) == 0
    err = capsys.readouterr().err
    assert 'warning: ' in err and '1 of 6 poses are not finite' in err
    kmap = KeyframeMap.load(out)
    assert [kmap.meta(i).pose is not None for i in range(6)] == [True, True, False, True,
                                                                 True, True]
