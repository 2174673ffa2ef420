"""`boq-ros map build --ray` on a local Ray cluster: the same map as the serial build.

Ray's servers listen on every interface whatever ray.init is told, so the Ray build runs in a
private network namespace (`unshare -rn`), where nothing can be reached beyond its loopback.
Its temp dir is under pytest's, its auth token comes from the environment (nothing written to
~/.ray) and usage stats are off.
"""
import os
import re
import secrets
import shutil
import subprocess
import sys

import numpy as np
import pytest

from boq_ros.cli import main
from boq_ros.keyframe_map import KeyframeMap
from boq_ros.mapping import MapBuildError
from boq_ros.mapping_ray import WorkerPlan, plan_workers
from boq_ros.synth import DEPTH_TOPIC, IMAGE_TOPIC, ODOM_TOPIC, generate_recording

SOCKET_PATH_MAX = 107
"""AF_UNIX path limit; Ray's longest socket is RAY_TMPDIR + RAY_SUFFIX."""
RAY_SUFFIX = len('/ray/session_2026-12-02_00-03-08_985123_1234567/sockets/plasma_store')
BUILD = ("import sys; import boq_ros.mapping_ray; from boq_ros.cli import main; "
         "code = main(sys.argv[1:]); "
         "sys.exit('ray was imported' if '--ray' not in sys.argv and 'ray' in sys.modules "
         "else code)")
"""`boq-ros`, failing when a build without --ray (or boq_ros.mapping_ray) imported Ray."""


@pytest.fixture(scope='module')
def bags(tmp_path_factory):
    root = tmp_path_factory.mktemp('bags')
    return [generate_recording(root / f'run{i}.mcap', storage='mcap', laps=2, frames_per_lap=6,
                               image_size=(48, 32), session=f's{i}', variant=i, seed=5).path
            for i in range(3)]


def build_args(checkpoint, bags, out, *extra):
    """The torch runtime: 'auto' would compile OpenVINO once per Ray worker (10 s or so here)."""
    return ['map', 'build', '--checkpoint', str(checkpoint), '--input-size', '32', '--device',
            'cpu', '--runtime', 'torch', '--image-topic', IMAGE_TOPIC, '--pose-topic',
            ODOM_TOPIC, '--depth-topic', DEPTH_TOPIC, '--keyframe-mode', 'interval',
            '--keyframe-interval-s', '0.3',
            '--out', str(out), '--no-progress', *[a for bag in bags for a in ('--bag', str(bag))],
            *extra]


@pytest.fixture(scope='module')
def on_ray(tmp_path_factory):
    """Run `boq-ros ARGS` (Ray builds) in a private network namespace: loopback only."""
    pytest.importorskip('ray', reason='ray is not installed (requirements.txt pins it)')
    prefix = ['unshare', '-rn', 'sh', '-c', 'ip link set lo up && exec "$0" "$@"']
    if not (shutil.which('unshare') and shutil.which('ip')):
        pytest.skip('unshare or ip missing: no private network namespace for the Ray servers')
    probe = subprocess.run([*prefix, 'true'], capture_output=True, text=True)
    if probe.returncode:
        pytest.skip('cannot make a private network namespace for the Ray servers (unshare -rn: '
                    f'{probe.stderr.strip() or probe.returncode}); Ray would listen on every '
                    'interface')
    ray_tmp = tmp_path_factory.mktemp('ray')
    if len(str(ray_tmp)) + RAY_SUFFIX > SOCKET_PATH_MAX:
        pytest.skip(f'{ray_tmp} is too long for the Ray sockets under it: use a shorter '
                    '--basetemp')
    env = dict(build_env(), RAY_TMPDIR=str(ray_tmp), RAY_USAGE_STATS_ENABLED='0',
               RAY_AUTH_TOKEN=secrets.token_hex(32))
    return lambda args: subprocess.run([*prefix, sys.executable, '-c', BUILD, *args], env=env,
                                       capture_output=True, text=True, timeout=300)


def build_env() -> dict[str, str]:
    """No Ray settings of the caller's; one thread (Ray keeps a set OMP_NUM_THREADS).

    Byte-equal descriptors need the same thread count: torch's CPU kernels round differently
    at others (by 5e-8 at most here).
    """
    return dict({k: v for k, v in os.environ.items() if not k.startswith('RAY_')},
                OMP_NUM_THREADS='1')


def map_contents(path):
    """Everything a map holds, but its random map_id and times."""
    kmap = KeyframeMap.load(path)
    blocks = list(kmap.keyframes())
    features = [f for b in blocks for f in b.features]
    schema = kmap.schema.to_dict()
    return {'ids': np.concatenate([b.ids for b in blocks]),
            'descriptors': np.concatenate([b.descriptors for b in blocks]),
            'metas': [m for b in blocks for m in b.metas],
            'source_ids': [p[1] for b in blocks for p in b.provenance],
            'features': [None if f is None else (
                f.kind, f.keypoints.tobytes(), f.descriptors.tobytes(), f.image_size,
                f.intrinsics, None if f.depth is None else f.depth.tobytes()) for f in features],
            'schema': {k: v for k, v in schema.items()
                       if k not in ('map_id', 'created', 'modified', 'files', 'history')},
            'history': [{k: v for k, v in h.items() if k != 'time'} for h in schema['history']]}


def test_ray_build_equals_serial_build(tmp_path, resnet_checkpoint, bags, on_ray):
    serial = subprocess.run([sys.executable, '-c', BUILD,
                             *build_args(resnet_checkpoint, bags, tmp_path / 'serial')],
                            env=build_env(), capture_output=True, text=True, timeout=300)
    assert serial.returncode == 0, serial.stderr
    ray = on_ray(build_args(resnet_checkpoint, bags, tmp_path / 'ray', '--ray'))
    assert ray.returncode == 0, ray.stderr
    assert re.match(r'described on Ray by [123] CPU worker\(s\)\n', ray.stdout)  # 2 here
    assert ray.stdout.splitlines()[1:-2] == serial.stdout.splitlines()[:-2]  # all counts
    serial_map, ray_map = map_contents(tmp_path / 'serial'), map_contents(tmp_path / 'ray')
    assert len(serial_map['ids']) == 3 * 6  # 12 frames 0.2 s apart per bag: every other one
    np.testing.assert_array_equal(ray_map.pop('descriptors'), serial_map.pop('descriptors'))
    np.testing.assert_array_equal(ray_map.pop('ids'), serial_map.pop('ids'))
    assert ray_map == serial_map  # metadata (session, seq, stamp, pose, ...), features, schema
    assert {m.session for m in serial_map['metas']} == {'run0', 'run1', 'run2'}
    assert all(f is not None and f[5] is not None for f in serial_map['features'])  # depth too


def test_a_worker_refusal_is_said_as_without_ray(tmp_path, resnet_checkpoint, bags, on_ray,
                                                 capsys):
    args = build_args(resnet_checkpoint, [tmp_path / 'missing.mcap', bags[0]], tmp_path / 'm')
    assert run(*args) == 1
    serial = one_error_line(capsys.readouterr().err)
    assert serial == f'boq-ros map build: error: bag {tmp_path / "missing.mcap"} does not exist'
    ray = on_ray([*args, '--ray', '--ray-workers', '1'])
    assert ray.returncode == 1
    assert serial in ray.stderr.splitlines() and 'Traceback' not in ray.stderr
    assert not (tmp_path / 'm').exists()


def run(*argv):
    try:
        return main(list(argv))
    except SystemExit as exc:
        return exc.code


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith('boq-ros map build: error: '), err
    return lines[0]


def test_ray_refusals_are_one_line(tmp_path, resnet_checkpoint, bags, capsys, monkeypatch):
    out = tmp_path / 'm'
    for address, cause in (('127.0.0.1:1', 'cannot reach the Ray cluster at 127.0.0.1:1: '
                                           'Connection refused'),
                           ('ray://127.0.0.1:1', 'cannot reach the Ray cluster at '
                                                 'ray://127.0.0.1:1: Connection refused'),
                           ('head-node', "Ray address 'head-node' is not 'auto'")):
        assert run(*build_args(resnet_checkpoint, bags, out, '--ray', address)) == 1
        assert cause in one_error_line(capsys.readouterr().err)
    monkeypatch.setitem(sys.modules, 'ray', None)  # as if it were not installed
    assert run(*build_args(resnet_checkpoint, bags, out, '--ray')) == 1
    assert 'building on Ray needs the ray package: pip install "ray[client]==2.60.0"' in (
        one_error_line(capsys.readouterr().err))
    assert run(*build_args(resnet_checkpoint, bags, out, '--ray-workers', '2')) == 2
    assert '--ray-workers needs --ray' in one_error_line(capsys.readouterr().err)
    assert run(*build_args(resnet_checkpoint, bags, out, '--ray', '--ray-workers', '0')) == 2
    assert 'expected a whole number >= 1' in capsys.readouterr().err
    assert not out.exists()


def test_workers_take_gpus_when_the_cluster_has_them():
    assert plan_workers({'GPU': 4, 'CPU': 32}, 16, 'auto', 3) == WorkerPlan(3, 'GPU', 1, 1)
    assert plan_workers({'GPU': 2, 'CPU': 32}, 16, 'cuda:1', 5) == WorkerPlan(2, 'GPU', 1, 1)
    assert plan_workers({'GPU': 2, 'CPU': 32}, 16, 'cpu', 5) == WorkerPlan(5, 'CPU', 0, 6)
    assert plan_workers({'CPU': 2}, 2, 'auto', 3) == WorkerPlan(2, 'CPU', 0, 1)
    assert plan_workers({'CPU': 32}, 16, 'auto', 1) == WorkerPlan(1, 'CPU', 0, 16)  # one node
    assert plan_workers({'CPU': 8}, 8, 'auto', 4, workers=2) == WorkerPlan(2, 'CPU', 0, 4)
    for free, device, workers, message in (
            ({'CPU': 8}, 'cuda', 0, 'device cuda asked for, the Ray cluster has no free GPU'),
            ({'GPU': 1, 'CPU': 8}, 'auto', 2, '2 Ray workers asked for, the cluster has 1 free '
                                              'GPUs'),
            ({'CPU': 0}, 'cpu', 0, 'the Ray cluster has no free CPU')):
        with pytest.raises(MapBuildError, match=message):
            plan_workers(free, 8, device, 3, workers)
