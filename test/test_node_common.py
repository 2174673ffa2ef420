"""Helpers shared by the node tests (no tests here): data, checkpoints, a node with its peers.

The node runs as a subprocess on a private DDS domain; the test process talks to it with a
TestNode (conftest). Images are 64x64 random textures: with random weights every descriptor is
nearly parallel to every other (cosine 0.999-0.9994 between different textures at this size),
while the same pixels give the same descriptor (cosine 1 - 1e-6) in any encoding. A threshold of
0.9999 therefore accepts exactly the revisits of identical images, which is what these tests
check: the plumbing (ids, stamps, exclusion, encodings, cameras), not recognition quality.
"""
from collections.abc import Callable
from pathlib import Path
import sys
import time
from typing import Any

from boq_ros.msg import LoopCandidateArray
from conftest import NodeProcess, TestNode, _next_domain, node_command, wait_until
from diagnostic_msgs.msg import DiagnosticArray
import numpy as np
import torch

from boq_ros.model.checkpoint import write_random_checkpoint
from boq_ros.ros.dds import safe_dds_environment

THRESHOLD = 0.9999
START_TIMEOUT_S = 120.0  # model loading on a busy 2-core machine
ANSWER_TIMEOUT_S = 60.0


def checkpoint(tmp_path_factory: Any, kind: str = 'good') -> Path:
    """A random ResNet checkpoint in the released format, written once per test session.

    kind 'nan' has one NaN weight, so every descriptor the model makes is NaN.
    """
    root = tmp_path_factory.getbasetemp()
    good = root / 'boq_resnet_random_0.pth'
    if not good.exists():
        write_random_checkpoint(good, 'resnet50-16384', seed=0)
    if kind == 'good':
        return good
    bad = root / 'boq_resnet_random_nan.pth'
    if not bad.exists():
        state = torch.load(good, weights_only=True)
        state['aggregator.fc.bias'][0] = float('nan')
        torch.save(state, bad)
    return bad


def place(seed: int, size: int = 64) -> np.ndarray:
    """A distinct rgb8 texture: one 'place' of the generated world."""
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def base_params(ckpt: Path, map_dir: Path, **extra: Any) -> dict[str, Any]:
    """Parameters every test node uses: a small CPU model and a private map directory.

    The tests of one node jump between stamp ranges (each test its own); the outlier guard on
    stamps (time_jump_s) is tested on its own (test_node_lifecycle, test_pipeline), so here it
    is wide open. Verification is off: random textures have no geometry to verify
    (test_node_verification drives it with the synthetic street).
    """
    return {'checkpoint': str(ckpt), 'device': 'cpu', 'resize_policy': 'square',
            'input_size': 64, 'map_directory': str(map_dir), 'time_jump_s': 1e9,
            'verification': False, **extra}


def diagnostics(messages: list[Any], node: str = '/vpr_node') -> dict[str, str] | None:
    """Values of the node's latest /diagnostics status, or None before the first."""
    for msg in reversed(messages):
        for status in msg.status:
            if status.name.startswith(f'{node}:'):
                return {kv.key: kv.value for kv in status.values}
    return None


def computed_after(messages: list[Any], after_ns: int, node: str = '/vpr_node') -> list[Any]:
    """The node's /diagnostics messages whose counters were read after `after_ns` (wall clock).

    The node reads its counters, then stamps the message: a message stamped at or after
    `after_ns` may hold counters read just before it. The timer publishes one message at a
    time, so every message of the node after that one was read after `after_ns`.
    """
    ours = [m for m in messages if any(s.name.startswith(f'{node}:') for s in m.status)]
    first = next((i for i, m in enumerate(ours)
                  if m.header.stamp.sec * 10**9 + m.header.stamp.nanosec >= after_ns), None)
    return [] if first is None else ours[first + 1:]


def wait_diag(collector: Any, predicate: Callable[[dict[str, str]], bool],
              proc: NodeProcess | None = None, timeout: float = ANSWER_TIMEOUT_S,
              after_ns: int | None = None) -> dict[str, str]:
    """Wait for a diagnostics status that satisfies `predicate` (the node publishes every s).

    With `after_ns`, only statuses whose counters the node read after that wall-clock time.
    """
    found: list[dict[str, str]] = []

    def ok() -> bool:
        if proc is not None:
            proc.assert_alive()
        messages = list(collector.messages)
        if after_ns is not None:
            messages = computed_after(messages, after_ns)
        values = diagnostics(messages)
        if values is not None and predicate(values):
            found.append(values)
            return True
        return False

    wait_until(ok, timeout, 'a matching /diagnostics status', poll_s=0.1)
    return found[0]


def answered(collector: Any, stamp_ns: int, camera: str | None = None) -> Callable:
    """Predicate: an answer for the query with this stamp (and camera) arrived."""
    def check(messages: list[Any]) -> bool:
        return any(_is(m, stamp_ns, camera) for m in messages)
    return check


def _is(msg: Any, stamp_ns: int, camera: str | None) -> bool:
    stamp = msg.query.stamp.sec * 10**9 + msg.query.stamp.nanosec
    return stamp == stamp_ns and (camera is None or msg.query.camera == camera)


def answer_for(collector: Any, stamp_ns: int, camera: str | None = None,
               timeout: float = ANSWER_TIMEOUT_S) -> Any:
    """Wait for, then return, the node's candidate array for one query."""
    messages = collector.wait_for(predicate=answered(collector, stamp_ns, camera),
                                  timeout=timeout)
    return next(m for m in messages if _is(m, stamp_ns, camera))



class NodeUnderTest:
    """A node subprocess plus a test-side peer on a private domain, for a whole test module."""

    def __init__(self, tmp: Path, name: str, params_file: Path | None = None,
                 params: dict[str, Any] | None = None) -> None:
        domain = _next_domain()
        (tmp / 'ros_log').mkdir(exist_ok=True)
        env = safe_dds_environment(domain, tmp / 'ros_log')
        self.name = name
        self.proc = NodeProcess(node_command(name=name, params_file=params_file, params=params),
                                env, tmp / 'node.log')
        self.ros = TestNode(domain)
        self.candidates = self.ros.collect(LoopCandidateArray, '/loop_candidates', 100)
        self.diagnostics = self.ros.collect(DiagnosticArray, '/diagnostics', 100)

    def diag(self, predicate: Callable[[dict[str, str]], bool] = lambda v: True,
             timeout: float = ANSWER_TIMEOUT_S) -> dict[str, str]:
        """The latest /diagnostics status once one satisfies `predicate`."""
        return wait_diag(self.diagnostics, predicate, self.proc, timeout)

    def snapshot(self, timeout: float = ANSWER_TIMEOUT_S) -> dict[str, str]:
        """A /diagnostics status whose counters the node read after this call.

        The baseline for counting what comes next: the latest status received may have been
        read before events the test has already seen answered (an answer or an error).
        """
        return wait_diag(self.diagnostics, lambda v: True, self.proc, timeout,
                         after_ns=time.time_ns())

    def close(self) -> int:
        self.ros.close()
        status = self.proc.stop()
        sys.stdout.write(f'\n--- {" ".join(self.proc.cmd)} (exit {status}) ---\n'
                         f'{self.proc.log_text()[-6000:]}\n')
        return status
