"""The robot's way: the colcon install space, sourced, driven with `ros2 launch` / `ros2 run`.

The package is built with colcon (conftest.py `colcon_install`, shared with test_colcon_build.py)
and its install space sourced (`. install/setup.sh`) over the venv, which stands in for
/opt/ros/<distro>. `ros2 launch`, `ros2 run`, `ros2 lifecycle`, `ros2 param` and `ros2 topic`
are not on PyPI: on a machine without a ROS install they come from the unmodified Jazzy sources
in ../shared/third_party/ros2-jazzy (`make launch-tools`); without that folder the tests that
need them skip. Every process runs on this test's own DDS domain, loopback only. Ctrl-C is sent
as a terminal sends it: SIGINT to the whole process group (the launch process and its node).
"""
from collections.abc import Callable, Iterator
import os
from pathlib import Path
import re
import shutil
import signal
import subprocess
import sys
import time
from typing import Any

from boq_ros.msg import LoopCandidateArray
from conftest import NodeProcess, wait_until
from diagnostic_msgs.msg import DiagnosticArray
import psutil
import pytest
from rclpy.qos import qos_profile_sensor_data
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from test_node_common import ANSWER_TIMEOUT_S, START_TIMEOUT_S, checkpoint, place
import yaml

from boq_ros.ros.convert import image_msg

ROOT = Path(__file__).resolve().parents[1]
PREFIX = Path(sys.prefix)
JAZZY = ROOT.parent / 'shared' / 'third_party' / 'ros2-jazzy'
CLI_TIMEOUT_S = 30.0  # one ros2 CLI call, discovery retries included
STOP_TIMEOUT_S = 30.0  # Ctrl-C to exit (launch escalates to SIGTERM after 5 s itself)
CLEAN_STOP_FAULTS = ('Traceback', 'KeyboardInterrupt', 'process has died')


@pytest.fixture(scope='session')
def launch_tools() -> Path:
    """The `ros2` command of the venv; skip when the launch tools are absent."""
    if not JAZZY.is_dir():
        pytest.skip(f'ros2 launch/run/lifecycle are not on PyPI and {JAZZY} is absent: '
                    'the tests that drive the install space with the ros2 CLI need it')
    ros2 = PREFIX / 'bin' / 'ros2'
    if not ros2.is_file():  # `make test` installs them first; a bare `pytest` may not have
        pytest.skip(f'no ros2 CLI in this prefix ({ros2}): `make test` installs it from '
                    f'{JAZZY} (make launch-tools)')
    return ros2


def _sourced(install: Path, base: dict[str, str]) -> dict[str, str]:
    """Return the environment `. install/setup.sh` leaves in a shell started with `base`."""
    result = subprocess.run(['sh', '-c', f'. "{install}/setup.sh" && env -0'], env=base,
                            capture_output=True, timeout=60, check=True)
    return dict(item.split('=', 1) for item in result.stdout.decode().split('\0') if '=' in item)


@pytest.fixture
def base_env(ros_env: dict[str, str]) -> dict[str, str]:
    """This test's DDS environment plus the ROS prefix (the venv, as /opt/ros/<distro> is)."""
    return dict(ros_env, AMENT_PREFIX_PATH=str(PREFIX),
                PATH=f'{PREFIX / "bin"}:{ros_env["PATH"]}')


@pytest.fixture
def robot_env(base_env: dict[str, str], colcon_install: Path) -> dict[str, str]:
    """The environment of a robot user who sourced the workspace: `. install/setup.sh`."""
    env = _sourced(colcon_install, base_env)
    assert env['AMENT_PREFIX_PATH'].split(':')[0] == str(colcon_install)
    return env


class Ros2Process(NodeProcess):
    """A `ros2 ...` command in its own process group, its output in a log file."""

    def wait_for_output(self, pattern: str, timeout: float = START_TIMEOUT_S) -> None:
        """Wait until the output matches `pattern` (a regular expression); fail if it exits."""
        def seen() -> bool:
            if re.search(pattern, self.log_text()):
                return True
            if not self.alive():
                raise AssertionError(f'exited with {self.process.returncode} before printing '
                                     f'{pattern!r}:\n{self.log_tail(60)}')
            return False

        wait_until(seen, timeout, f'{pattern!r} in the output of {" ".join(self.cmd[:3])}',
                   poll_s=0.1)

    def ctrl_c(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """Press Ctrl-C as in a terminal (SIGINT to the process group); return the exit status."""
        os.killpg(self.process.pid, signal.SIGINT)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f'still running {timeout:.0f} s after Ctrl-C:\n'
                                 f'{self.log_tail(60)}') from None

    def wait_exit(self, timeout: float) -> int:
        """Wait for the process to end on its own; return its exit status."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f'still running after {timeout:.0f} s:\n'
                                 f'{self.log_tail(60)}') from None

    def child_pid(self) -> int:
        """The pid of the one node this command started (ros2 launch / ros2 run run it)."""
        children = psutil.Process(self.process.pid).children(recursive=True)
        assert len(children) == 1, [c.cmdline() for c in children]
        return children[0].pid


@pytest.fixture
def ros2(launch_tools: Path, robot_env: dict[str, str],
         tmp_path: Path) -> Iterator[Callable[..., Ros2Process]]:
    """Factory: start `ros2 ARGS...` in the sourced environment; stopped with Ctrl-C at the end."""
    started: list[Ros2Process] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Ros2Process:
        proc = Ros2Process([str(launch_tools), *args], env or robot_env,
                           tmp_path / f'ros2_{len(started)}.log')
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.alive():
            os.killpg(proc.process.pid, signal.SIGINT)
            try:
                proc.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.process.pid, signal.SIGKILL)
                proc.process.wait()
        sys.stdout.write(f'\n--- {" ".join(proc.cmd)} (exit {proc.process.returncode}) ---\n'
                         f'{proc.log_tail(80)}\n')


@pytest.fixture
def cli_env(launch_tools: Path, robot_env: dict[str, str]) -> Iterator[dict[str, str]]:
    """The sourced environment with a ros2cli daemon on this test's domain, stopped after it.

    The daemon keeps one view of the graph; a `--no-daemon` call discovers it anew in 0.5 s and
    misses nodes about every other time.
    """
    subprocess.run([str(launch_tools), 'daemon', 'start'], env=robot_env, check=True,
                   capture_output=True, timeout=CLI_TIMEOUT_S)
    yield robot_env
    subprocess.run([str(launch_tools), 'daemon', 'stop'], env=robot_env, capture_output=True,
                   timeout=CLI_TIMEOUT_S)


def cli(env: dict[str, str], *args: str, expect: str, timeout: float = CLI_TIMEOUT_S) -> str:
    """Run a ros2 CLI query until its output contains `expect`; return that output.

    Right after a node starts, the daemon may not know it yet ("Node not found"): retried.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = subprocess.run(['ros2', *args], env=env, capture_output=True, text=True,
                                timeout=timeout)
        output = result.stdout + result.stderr
        if expect in output:
            return output
        if time.monotonic() > deadline:
            raise AssertionError(f'`ros2 {" ".join(args)}` never printed {expect!r}; last:\n'
                                 f'{output}')


def transition(env: dict[str, str], node: str, name: str) -> None:
    """`ros2 lifecycle set NODE NAME`, retried only while the CLI cannot find the node."""
    deadline = time.monotonic() + CLI_TIMEOUT_S
    while True:
        result = subprocess.run(['ros2', 'lifecycle', 'set', node, name], env=env,
                                capture_output=True, text=True, timeout=START_TIMEOUT_S)
        output = result.stdout + result.stderr
        if 'Node not found' not in output or time.monotonic() > deadline:
            break
    assert result.returncode == 0 and 'Transitioning successful' in output, output


def write_config(path: Path, **overrides: Any) -> Path:
    """The package's config/vpr.yaml with `overrides`: a parameter file as a robot user writes."""
    data = yaml.safe_load((ROOT / 'config' / 'vpr.yaml').read_text())
    data['/**']['ros__parameters'].update(overrides)
    path.write_text(yaml.safe_dump(data))
    return path


def small_model(tmp_path: Path, tmp_path_factory: Any) -> dict[str, Any]:
    """Parameters of a small CPU model with random weights and a private map directory."""
    return {'checkpoint': str(checkpoint(tmp_path_factory)), 'device': 'cpu',
            'resize_policy': 'square', 'input_size': 48, 'map_directory': str(tmp_path / 'maps')}


def answer_one_image(ros_node: Any, camera_topic: str, candidates_topic: str,
                     alive: Callable[[], None], clock: bool = False) -> Any:
    """Publish a camera image until the node answers with a LoopCandidateArray; return it."""
    answers = ros_node.collect(LoopCandidateArray, candidates_topic, 10)
    camera = ros_node.publisher(Image, camera_topic, qos_profile_sensor_data)
    clock_pub = ros_node.publisher(Clock, '/clock', 10) if clock else None
    ros_node.wait_for_subscribers(camera, timeout=START_TIMEOUT_S)
    ros_node.wait_for_publishers(answers)
    header = Header(frame_id='cam')
    header.stamp.sec = 7
    msg = image_msg(place(0), 'rgb8', header)

    def answered() -> bool:  # best effort may lose a frame: publish until answered
        alive()
        if not answers.messages:
            if clock_pub is not None:
                clock_pub.publish(Clock(clock=header.stamp))
            camera.publish(msg)
        return bool(answers.messages)

    wait_until(answered, ANSWER_TIMEOUT_S, f'an answer on {candidates_topic}', poll_s=0.5)
    return answers.messages[0]


def assert_clean_stop(status: int, output: str) -> None:
    assert status == 0, output[-4000:]
    for fault in CLEAN_STOP_FAULTS:
        assert fault not in output, f'{fault!r} in the output:\n{output[-4000:]}'


def alive_check(proc: Ros2Process) -> Callable[[], None]:
    def check() -> None:
        assert proc.alive(), f'exited with {proc.process.returncode}:\n{proc.log_tail(60)}'
    return check


# --- the install space itself (no ros2 CLI needed) ---------------------------------------------

def test_boq_ros_command_is_installed_and_runs(colcon_install, robot_env, tmp_path):
    """Messages tell robot users to run `boq-ros weights download`: the install has it."""
    command = colcon_install / 'bin' / 'boq-ros'
    for path in (command, colcon_install / 'lib' / 'boq_ros' / 'boq-ros'):
        assert path.is_file() and os.access(path, os.X_OK), path
    # Sourced, `boq-ros` on PATH is the install space's (before the venv's pip entry point).
    assert shutil.which('boq-ros', path=robot_env['PATH']) == str(command)
    for args in (['--help'], ['weights', 'download', '--help']):
        result = subprocess.run(['boq-ros', *args], env=robot_env, cwd=tmp_path,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
    assert '--preset' in result.stdout  # the command the messages name exists as written
    result = subprocess.run(['boq-ros', '--help'], env=robot_env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert 'weights' in result.stdout


def test_venv_registers_no_half_package():
    """`make venv` installs the generated messages only: no `boq_ros` package in its index.

    Registered, an unsourced `ros2 launch boq_ros vpr.launch.py` found a share directory in the
    venv without launch file, config or executable and failed with a path inside .venv.
    """
    index = PREFIX / 'share' / 'ament_index' / 'resource_index' / 'packages'
    assert index.is_dir() and not (index / 'boq_ros').exists()
    import boq_ros.msg  # the generated messages are there all the same
    assert boq_ros.msg.LoopCandidateArray


def test_unsourced_launch_names_the_missing_package(base_env, launch_tools, tmp_path):
    result = subprocess.run([str(launch_tools), 'launch', 'boq_ros', 'vpr.launch.py'],
                            env=base_env, cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    # Not a share directory inside the venv that lacks the launch file.
    assert "Package 'boq_ros' not found" in output, output
    assert str(PREFIX / 'share' / 'boq_ros') not in output, output


# --- ros2 launch ------------------------------------------------------------------------------

def test_launch_autostart_answers_and_stops_cleanly_on_ctrl_c(ros2, ros_node, tmp_path,
                                                            tmp_path_factory):
    """The node, and with pose_graph:=true the backend beside it (installed config)."""
    params = small_model(tmp_path, tmp_path_factory)
    config = write_config(tmp_path / 'vpr.yaml', **{k: v for k, v in params.items()
                                                    if k != 'checkpoint'})
    diagnostics = ros_node.collect(DiagnosticArray, '/diagnostics')
    launch = ros2('launch', 'boq_ros', 'vpr.launch.py', f'config:={config}',
                  f"checkpoint:={params['checkpoint']}", 'pose_graph:=true')
    launch.wait_for_output(r'\[vpr_node\]: active: listening on')
    first = answer_one_image(ros_node, '/image', '/loop_candidates', alive_check(launch))
    assert first.query.camera == '/image' and first.query.stamp.sec == 7
    assert first.model.startswith('resnet50-16384@')
    # The backend got the answer: a keyframe waiting for odometry (none is published here).
    # The image is republished until the first answer, so the node may answer a few copies.
    def received(got: list) -> bool:
        return any(s.name == '/pose_graph_node: pose graph'
                   and int(dict((kv.key, kv.value) for kv in s.values)
                           .get('keyframes_received_total', 0)) >= 1
                   for a in got for s in a.status)

    diagnostics.wait_for(predicate=received, timeout=ANSWER_TIMEOUT_S)
    status = launch.ctrl_c()
    output = launch.log_text()
    assert_clean_stop(status, output)
    assert output.count('process has finished cleanly') == 2, output[-4000:]


def test_launch_lifecycle_namespace_remap_sim_time_config(cli_env, ros2, ros_node, tmp_path,
                                                          tmp_path_factory):
    robot_env = cli_env
    # No odometry: with sim time, a frame would wait for poses until keyframe_wait_frames.
    config = write_config(tmp_path / 'robot1.yaml', **small_model(tmp_path, tmp_path_factory),
                          top_k=3, robot_id='robot1', session='run7', odometry_topic='')
    launch = ros2('launch', 'boq_ros', 'vpr.launch.py', 'lifecycle:=true',
                  'namespace:=/robot1', 'image:=/cam0/image_raw', 'use_sim_time:=true',
                  f'config:={config}', 'log_level:=debug')
    node = '/robot1/vpr_node'
    # Waits unconfigured for a lifecycle manager; parameters from the config file.
    cli(robot_env, 'lifecycle', 'get', node, expect='unconfigured [1]')
    assert 'configured:' not in launch.log_text()
    # (`ros2 param get`, one call per parameter: Jazzy's `ros2 param dump` lists no parameter of
    # a Kilted node. robot_id and session show in the candidates below.)
    for name, shown in (('top_k', 'Integer value is: 3'), ('input_size', 'Integer value is: 48'),
                        ('use_sim_time', 'Boolean value is: True')):
        assert shown in cli(robot_env, 'param', 'get', node, name, expect='value is'), name
    transition(robot_env, node, 'configure')
    cli(robot_env, 'lifecycle', 'get', node, expect='inactive [2]')
    transition(robot_env, node, 'activate')
    cli(robot_env, 'lifecycle', 'get', node, expect='active [3]')
    # Topics under the namespace; the camera input remapped to an absolute topic.
    expected = ['/robot1/loop_candidates', '/robot1/relocalization_pose', '/cam0/image_raw',
                '/robot1/vpr_node/transition_event']
    cli(robot_env, 'topic', 'list', expect=expected[0])
    wait_until(lambda: all(t in cli(robot_env, 'topic', 'list', expect='/rosout').split()
                           for t in expected), CLI_TIMEOUT_S, f'topics {expected}', poll_s=0.1)
    first = answer_one_image(ros_node, '/cam0/image_raw', '/robot1/loop_candidates',
                             alive_check(launch), clock=True)
    assert first.query.camera == '/cam0/image_raw'
    assert first.query.robot_id == 'robot1' and first.query.session == 'run7'
    # log_level:=debug is the level of the node's logger only, not of rcl or rmw (which print
    # hundreds of debug lines a second).
    assert any('robot1.vpr_node:=debug' in arg
               for arg in psutil.Process(launch.child_pid()).cmdline())
    output = launch.log_text()
    assert '[robot1.vpr_node]: active: listening on' in output
    assert not re.search(r'\[(rcl|rmw|rclpy)[a-z_.]*\]', output), output[-4000:]
    assert 'DEBUG' not in output, output[-4000:]
    status = launch.ctrl_c()
    assert_clean_stop(status, launch.log_text())


def test_launch_fails_when_the_node_cannot_configure(ros2, tmp_path, tmp_path_factory):
    config = write_config(tmp_path / 'vpr.yaml', **small_model(tmp_path, tmp_path_factory))
    missing = tmp_path / 'missing.pth'
    launch = ros2('launch', 'boq_ros', 'vpr.launch.py', f'config:={config}',
                  f'checkpoint:={missing}')
    status = launch.wait_exit(START_TIMEOUT_S)
    output = launch.log_text()
    assert status != 0, output
    assert 'configure failed' in output and 'exited with status 1' in output, output


# --- ros2 run ---------------------------------------------------------------------------------

def test_ros2_run_node_and_a_second_ctrl_c_during_shutdown(ros2, colcon_install, ros_node,
                                                         tmp_path, tmp_path_factory):
    """`ros2 run boq_ros vpr_node` with the installed config; Ctrl-C again and again is clean.

    ros2 launch forwards one SIGINT to the node after the terminal's own: a second SIGINT must
    not interrupt the node's shutdown (it raised KeyboardInterrupt in main()'s finally, exit -2).
    Here SIGINTs go to the node every few milliseconds until it exits.
    """
    params = small_model(tmp_path, tmp_path_factory)
    installed_config = colcon_install / 'share' / 'boq_ros' / 'config' / 'vpr.yaml'
    run = ros2('run', 'boq_ros', 'vpr_node', '--ros-args', '--params-file', str(installed_config),
               *(arg for key, value in params.items() for arg in ('-p', f'{key}:={value}')))
    run.wait_for_output(r'\[vpr_node\]: active: listening on')
    first = answer_one_image(ros_node, '/image', '/loop_candidates', alive_check(run))
    assert first.query.camera == '/image'
    node_pid = run.child_pid()
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while run.alive() and time.monotonic() < deadline:
        try:
            os.kill(node_pid, signal.SIGINT)
        except ProcessLookupError:
            break
        time.sleep(0.003)
    status = run.wait_exit(STOP_TIMEOUT_S)
    assert_clean_stop(status, run.log_text())


def test_ros2_run_finds_the_boq_ros_command(launch_tools, robot_env, tmp_path):
    result = subprocess.run(['ros2', 'run', 'boq_ros', 'boq-ros', '--help'], env=robot_env,
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and 'weights' in result.stdout, result.stdout + result.stderr
