"""The ROS build path: colcon builds the package against the ROS prefix (here, the venv).

On a robot the same package.xml / CMakeLists.txt build in a colcon workspace against
/opt/ros/<distro>; here the pip wheels' prefix stands in for it.
"""
import os
from pathlib import Path
import subprocess
import sys
import sysconfig

import pytest

PREFIX = Path(sys.prefix)


@pytest.fixture(scope='module')
def install_space(colcon_install: Path) -> Path:
    """The session's colcon install space (conftest.py builds it once)."""
    return colcon_install


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
