"""RTAB-Map: accepted loops as user links through `<rtabmap_namespace>/add_link`.

RTAB-Map keys its graph by its own node ids, so the adapter learns them from RTAB-Map's
`<ns>/info` (`rtabmap_msgs/Info`: `header.stamp` is the stamp of the data a node was made from,
`ref_id` that node's id; ids <= 0 are not nodes and are ignored) and matches each keyframe stamp
to the nearest announced stamp within `rtabmap_stamp_tolerance_s`. A loop whose two ids are not
known yet (RTAB-Map announces a node after processing its data) waits in a queue keyed by its
two stamps, is retried whenever new info arrives (and while add_link is unavailable), and is
dropped after `rtabmap_pending_timeout_s`, counted. The link: `from_id` = the query's node,
`to_id` = the match's, type 4 (user closure), `transform` = T_from_to (`relative_pose_base`),
`information` = the inverse of the 6x6 covariance (x y z rx ry rz), its eigenvalues floored at
MIN_VARIANCE so that a singular covariance still gives a finite information RTAB-Map accepts;
a loop without a metric relative pose or with an unknown covariance is not sent. The call is
asynchronous (the worker never waits for RTAB-Map); an answer counts as a link, an error or no
answer within `rtabmap_call_timeout_s` is counted and not retried (RTAB-Map may have added it).
Enabled by `publish_rtabmap`; needs rtabmap_msgs (introlab/rtabmap_ros), imported only then.
"""
from bisect import bisect_left
from dataclasses import dataclass
import threading
import time
from types import ModuleType
from typing import Any

from geometry_msgs.msg import Transform
import numpy as np
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.qos import QoSProfile

from boq_ros.bags import stamp_to_ns
from boq_ros.ros.outputs.base import (
    Decision,
    Output,
    OutputContext,
    metric_loop,
    resolve,
)
from boq_ros.ros.params import NodeSettings
from boq_ros.verification.verifier import local_frame_covariance, xyz_quaternion

USER_CLOSURE = 4
"""rtabmap::Link::kUserClosure, the type of a link added from outside."""
MIN_VARIANCE = 1e-9
"""Smallest covariance eigenvalue inverted (m^2, rad^2): information stays below 1e9."""
_INFO_DEPTH = 100  # reliable, as RTAB-Map publishes info by default
_TICK_S = 0.1  # how often waiting loops and calls are checked for their timeouts


def information(covariance: np.ndarray | None, relative_pose: np.ndarray) -> np.ndarray | None:
    """Return a link's 6x6 information, or None when the covariance is unknown.

    Unknown: absent, not finite, or with a negative variance (the published all -1). The
    covariance (ours: perturbation in the query frame) is taken into the link's own frame, as
    RTAB-Map's optimisers perturb (``local_frame_covariance``), and its symmetric part inverted
    in its eigenbasis with the eigenvalues floored at MIN_VARIANCE, so the result is symmetric
    positive definite (RTAB-Map refuses a non-positive diagonal).
    """
    if covariance is None:
        return None
    c = np.asarray(covariance, dtype=float).reshape(6, 6)
    if not np.all(np.isfinite(c)) or np.any(np.diag(c) < 0):
        return None
    c = local_frame_covariance(c, relative_pose)
    values, vectors = np.linalg.eigh((c + c.T) / 2)
    info = (vectors / np.maximum(values, MIN_VARIANCE)) @ vectors.T
    return (info + info.T) / 2


class NodeIds:
    """RTAB-Map's node ids by the stamp of the data each node was made from, sorted by stamp."""

    def __init__(self, tolerance_ns: int) -> None:
        self.tolerance_ns = tolerance_ns
        self._stamps: list[int] = []
        self._ids: list[int] = []

    def __len__(self) -> int:
        return len(self._stamps)

    def add(self, stamp_ns: int, node_id: int) -> bool:
        """Record one announcement; say whether it named a node (ids <= 0 do not)."""
        if node_id <= 0:
            return False
        i = bisect_left(self._stamps, stamp_ns)
        if i < len(self._stamps) and self._stamps[i] == stamp_ns:
            self._ids[i] = node_id
        else:
            self._stamps.insert(i, stamp_ns)
            self._ids.insert(i, node_id)
        return True

    def find(self, stamp_ns: int) -> int | None:
        """Return the id of the node nearest in time within the tolerance, else None."""
        i = bisect_left(self._stamps, stamp_ns)
        near = [j for j in (i - 1, i) if 0 <= j < len(self._stamps)]
        if not near:
            return None
        j = min(near, key=lambda k: abs(self._stamps[k] - stamp_ns))
        return self._ids[j] if abs(self._stamps[j] - stamp_ns) <= self.tolerance_ns else None


@dataclass(frozen=True)
class PendingLoop:
    """A loop on its way to RTAB-Map: its keyframe stamps and what the link carries."""

    query_ns: int
    match_ns: int
    transform: np.ndarray  # 4x4 T_query_match in base frames
    information: np.ndarray  # 6x6
    since: float  # monotonic seconds when it was accepted


class LinkQueue:
    """Loops waiting for the node ids of their two keyframes (not thread-safe: lock outside)."""

    def __init__(self, tolerance_ns: int, timeout_s: float) -> None:
        self.ids = NodeIds(tolerance_ns)
        self.timeout_s = timeout_s
        self._waiting: dict[tuple[int, int], PendingLoop] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def add(self, loop: PendingLoop) -> None:
        """Queue a loop (a newer loop between the same two stamps replaces the older)."""
        self._waiting[(loop.query_ns, loop.match_ns)] = loop

    def take_ready(self) -> list[tuple[PendingLoop, int, int]]:
        """Remove and return the loops whose two node ids are known, with (from_id, to_id)."""
        ready = []
        for key, loop in list(self._waiting.items()):
            from_id, to_id = self.ids.find(loop.query_ns), self.ids.find(loop.match_ns)
            if from_id is not None and to_id is not None:
                del self._waiting[key]
                ready.append((loop, from_id, to_id))
        return ready

    def take_expired(self, now: float) -> list[PendingLoop]:
        """Remove and return the loops that waited longer than the timeout."""
        expired = [loop for loop in self._waiting.values() if now - loop.since > self.timeout_s]
        for loop in expired:
            del self._waiting[(loop.query_ns, loop.match_ns)]
        return expired


def link_message(messages: ModuleType, from_id: int, to_id: int, transform: np.ndarray,
                 info: np.ndarray) -> Any:
    """Build an rtabmap_msgs/Link: a user closure from_id -> to_id (transform = T_from_to)."""
    x, y, z, qx, qy, qz, qw = xyz_quaternion(transform)
    msg = Transform()
    msg.translation.x, msg.translation.y, msg.translation.z = x, y, z
    msg.rotation.x, msg.rotation.y, msg.rotation.z, msg.rotation.w = qx, qy, qz, qw
    return messages.Link(from_id=from_id, to_id=to_id, type=USER_CLOSURE, transform=msg,
                         information=[float(v) for v in info.reshape(36)])


class RtabmapOutput(Output):
    """Send each accepted metric loop to RTAB-Map's add_link once its node ids are known."""

    parameter = 'publish_rtabmap'
    counters = ('rtabmap_links', 'rtabmap_no_metric_pose', 'rtabmap_unknown_covariance',
                'rtabmap_expired', 'rtabmap_failed', 'rtabmap_timeouts')
    interfaces = ('rtabmap_msgs', 'introlab/rtabmap_ros', ('msg', 'srv'))

    def __init__(self, context: OutputContext, settings: NodeSettings) -> None:
        super().__init__(context, settings)
        self._messages, services = self.load()
        self._request = services.AddLink.Request
        node = context.node
        namespace = settings.rtabmap_namespace.rstrip('/')
        self._service = resolve(node, f'{namespace}/add_link', 'rtabmap_namespace',
                                service=True)
        self._info_topic = resolve(node, f'{namespace}/info', 'rtabmap_namespace')
        self._call_timeout_s = settings.rtabmap_call_timeout_s
        self._lock = threading.Lock()  # the queue and the calls: worker and executor threads
        self._queue = LinkQueue(round(settings.rtabmap_stamp_tolerance_s * 1e9),
                                settings.rtabmap_pending_timeout_s)
        self._calls: dict[Any, tuple[int, int, float]] = {}  # future -> from, to, sent at
        group = MutuallyExclusiveCallbackGroup()
        self._client = self.own(node.destroy_client, node.create_client(
            services.AddLink, self._service, callback_group=group))
        self.own(node.destroy_subscription, node.create_subscription(
            self._messages.Info, self._info_topic, self._on_info, QoSProfile(depth=_INFO_DEPTH),
            callback_group=group))
        self.own(node.destroy_timer, node.create_timer(_TICK_S, self._on_tick,
                                                       callback_group=group))

    def publish(self, decision: Decision) -> None:
        found = metric_loop(decision, self.context, 'rtabmap_no_metric_pose')
        if found is None:
            return
        loop, verification = found
        info = information(verification.covariance_base, verification.relative_pose_base)
        if info is None:
            self.context.count('rtabmap_unknown_covariance')
            return
        with self._lock:
            self._queue.add(PendingLoop(decision.detection.query.stamp_ns, loop.meta.stamp_ns,
                                        verification.relative_pose_base, info,
                                        time.monotonic()))
        self._send_ready()

    def gauges(self) -> list[tuple[str, int]]:
        with self._lock:
            return [('rtabmap_pending', len(self._queue)),
                    ('rtabmap_nodes', len(self._queue.ids))]

    def _on_info(self, msg: Any) -> None:
        with self._lock:
            known = self._queue.ids.add(stamp_to_ns(msg.header.stamp), int(msg.ref_id))
        if known:
            self._send_ready()

    def _on_tick(self) -> None:
        now = time.monotonic()
        with self._lock:
            expired = self._queue.take_expired(now)
            late = [f for f, (*_, sent) in self._calls.items()
                    if now - sent > self._call_timeout_s]
            for future in late:
                del self._calls[future]
        # Each failure is reported before it is counted: a reader of the count sees its error.
        for loop in expired:
            self.context.fail(f'rtabmap: loop {loop.query_ns} -> {loop.match_ns} (ns) dropped '
                              f'after {self._queue.timeout_s:g} s: {self._why_waiting(loop)}')
            self.context.count('rtabmap_expired')
        for future in late:
            self._client.remove_pending_request(future)
            self.context.fail(f'rtabmap: {self._service} did not answer within '
                              f'{self._call_timeout_s:g} s')
            self.context.count('rtabmap_timeouts')
        self._send_ready()

    def _why_waiting(self, loop: PendingLoop) -> str:
        with self._lock:
            unknown = [ns for ns in (loop.query_ns, loop.match_ns)
                       if self._queue.ids.find(ns) is None]
        if unknown:
            return f'no node of stamp(s) {unknown} announced on {self._info_topic}'
        return f'{self._service} was not available'

    def _send_ready(self) -> None:
        """Call add_link for every loop whose ids are known (outside the lock: rclpy locks)."""
        if not self._client.service_is_ready():
            return
        with self._lock:
            ready = self._queue.take_ready()
        for loop, from_id, to_id in ready:
            request = self._request(link=link_message(self._messages, from_id, to_id,
                                                      loop.transform, loop.information))
            future = self._client.call_async(request)
            with self._lock:
                self._calls[future] = (from_id, to_id, time.monotonic())
            future.add_done_callback(self._on_answer)

    def _on_answer(self, future: Any) -> None:
        with self._lock:
            call = self._calls.pop(future, None)
        if call is None:  # timed out (counted) before the answer came
            return
        from_id, to_id, _ = call
        error = future.exception()
        if error is not None:
            self.context.fail(f'rtabmap: add_link {from_id} -> {to_id} failed: {error}')
            self.context.count('rtabmap_failed')
            return
        self.context.count('rtabmap_links')
