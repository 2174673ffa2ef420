"""The ROS build path: colcon builds the package against the ROS prefix (here, the venv).

On a robot the same package.xml / CMakeLists.txt build in a colcon workspace against
/opt/ros/<distro>; here the pip wheels' prefix stands in for it.
"""
import os
from pathlib import Path
import shutil
import subprocess
import sys
import sysconfig

import pytest

ROOT = Path(__file__).resolve().parents[1]
PREFIX = Path(sys.prefix)
SOURCES = ['CMakeLists.txt', 'package.xml', 'README.md', 'msg', 'srv', 'boq_ros', 'launch',
           'config', 'scripts']


@pytest.fixture(scope='module')
def install_space(tmp_path_factory):
    if shutil.which('cmake') is None:
        pytest.fail('cmake is required for the colcon build (apt-get install cmake)')
    ws = tmp_path_factory.mktemp('colcon_ws')
    src = ws / 'src' / 'boq_ros'
    src.mkdir(parents=True)
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns('__pycache__'))
        else:
            shutil.copy2(path, src / name)
    env = dict(os.environ, AMENT_PREFIX_PATH=str(PREFIX), CMAKE_PREFIX_PATH=str(PREFIX),
               PATH=f'{PREFIX / "bin"}:{os.environ["PATH"]}')
    cmd = [str(PREFIX / 'bin' / 'colcon'), '--log-base', str(ws / 'log'), 'build',
           '--base-paths', str(ws / 'src'), '--build-base', str(ws / 'build'),
           '--install-base', str(ws / 'install'), '--merge-install',
           '--event-handlers', 'console_direct-',
           '--cmake-args', f'-DPython3_EXECUTABLE={sys.executable}', '-DBUILD_TESTING=OFF']
    result = subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    return ws / 'install'


def test_install_space_has_node_launch_and_config(install_space):
    node = install_space / 'lib' / 'boq_ros' / 'vpr_node'
    assert node.is_file() and os.access(node, os.X_OK)
    assert (install_space / 'share' / 'boq_ros' / 'launch' / 'vpr.launch.py').is_file()
    assert (install_space / 'share' / 'boq_ros' / 'config' / 'vpr.yaml').is_file()
    assert (install_space / 'share' / 'boq_ros' / 'package.xml').is_file()
    assert (install_space / 'share' / 'ament_index' / 'resource_index' / 'packages'
            / 'boq_ros').is_file()


def test_messages_and_code_import_from_install_space(install_space):
    site = install_space / Path(sysconfig.get_path('purelib')).relative_to(sys.prefix)
    env = dict(os.environ, PYTHONPATH=str(site),
               LD_LIBRARY_PATH=f'{install_space / "lib"}:{os.environ.get("LD_LIBRARY_PATH", "")}')
    code = (
        'import boq_ros, boq_ros.detector\n'
        'from boq_ros.msg import LoopCandidateArray, LoopCandidate, KeyframeRef\n'
        'from boq_ros.srv import SaveMap, LoadMap, Relocalize\n'
        'from rclpy.serialization import serialize_message, deserialize_message\n'
        'msg = LoopCandidateArray(candidates=[LoopCandidate(similarity=0.5)])\n'
        'back = deserialize_message(serialize_message(msg), LoopCandidateArray)\n'
        'assert back.candidates[0].similarity == 0.5\n'
        'print(boq_ros.__file__)\n'
        'print(boq_ros.detector.__file__)\n'
        'import boq_ros.msg; print(boq_ros.msg.__file__)\n')
    # cwd outside the source tree: `python -c` puts the cwd first on sys.path.
    result = subprocess.run([sys.executable, '-c', code], env=env, cwd=install_space,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    files = result.stdout.split()
    assert all(f.startswith(str(install_space)) for f in files), files
