"""The reference SLAM backend: a GTSAM pose graph fed by odometry and the verified loops.

`ros2 run boq_ros pose_graph_node` (or `vpr.launch.py pose_graph:=true`) subscribes to odometry
(`nav_msgs/Odometry`) and to the loop-closure node's `loop_candidates`; every answered query is
a keyframe: a graph node at its odometry pose (looked up in the odometry buffer once odometry at
or after its stamp has arrived; keyframes join in stamp order), and an accepted candidate
verified with a metric relative pose becomes a robust loop factor (boq_ros/slam.py states the
rule, boq_ros/pose_graph.py the noise models). After each change ISAM2 updates the estimate;
the node publishes the optimised keyframe path (`nav_msgs/Path`, latched), the `map -> odom`
correction as `geometry_msgs/TransformStamped` on `pose_graph/map_to_odom` and, when tf2_msgs is
installed, on /tf every tf_period_s stamped now; `~/save_graph` (and shutdown) write the graph
(g2o) and the optimised keyframe trajectory (TUM) to the configured files. Bad messages are
counted in /diagnostics and dropped; the node keeps running. One thread (a single-threaded
executor) runs every callback, so the graph needs no lock.
"""
import bisect
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass
import math
import os
from pathlib import Path
import sys
import threading
import time
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped, TransformStamped
from nav_msgs.msg import Odometry
from nav_msgs.msg import Path as PathMsg
import numpy as np
import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import Header
from std_srvs.srv import Trigger

from boq_ros.bags import stamp_to_ns
from boq_ros.msg import LoopCandidate, LoopCandidateArray
from boq_ros.poses import PoseBuffer, PoseError
from boq_ros.ros import convert, params
from boq_ros.ros.process import (
    QOS_CHOICES,
    ignore_interrupt,
    interrupt_once,
    reason,
    subscription_qos,
)
from boq_ros.settings import PoseGraphSettings, check_settings, from_values, setting
from boq_ros.slam import SKIP_CAUSES, GraphInput, KeyframeGraph, Loop
from boq_ros.trajectory import Trajectory, quaternion_from_matrix
from boq_ros.verification.verifier import transform_from

PATH_TOPIC = 'pose_graph/path'
MAP_TO_ODOM_TOPIC = 'pose_graph/map_to_odom'
DIAGNOSTICS_TOPIC = '/diagnostics'
_CANDIDATE_DEPTH = 100  # reliable: a backend must not lose a loop while it optimises
PATH_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)
"""The newest path is latched: a viewer that starts later still gets it."""


@dataclass(frozen=True)
class BackendSettings:
    """The settings only the backend node has: inputs, frames, outputs."""

    odometry_topic: str = setting(
        'odom', "nav_msgs/Odometry topic: the keyframes' odometry poses.", section='Inputs')
    odometry_qos: str = setting(
        'sensor_data', 'QoS of the odometry subscription: sensor_data (best effort: matches '
        'any publisher), reliable (nothing lost from a reliable publisher, e.g. a replay), or '
        'system_default.', section='Inputs', choices=QOS_CHOICES)
    candidates_topic: str = setting(
        'loop_candidates', 'boq_ros/LoopCandidateArray topic of the loop-closure node '
        '(reliable).', section='Inputs')
    pose_tolerance_s: float = setting(
        0.1, 'Largest gap between a keyframe stamp and the odometry poses it is interpolated '
        'from.', section='Inputs', low=0.0, high=10.0)
    odometry_wait_s: float = setting(
        5.0, 'How long a keyframe waits for odometry at or after its stamp; then its pose is '
        'looked up in what there is (without one it is dropped, counted as no_odometry).',
        section='Inputs', low=0.0, high=3600.0)
    reorder_s: float = setting(
        0.1, 'How long a keyframe waits from its arrival for keyframes of other cameras with '
        'older stamps: keyframes join the graph in stamp order (a later older one is dropped, '
        'counted as out_of_order).', section='Inputs', low=0.0, high=60.0)
    map_frame: str = setting('map', 'Frame of the optimised path; parent of map -> odom.',
                             section='Outputs')
    publish_tf: bool = setting(
        True, 'Also publish map -> odom on /tf (needs tf2_msgs; without it only on '
        'pose_graph/map_to_odom).', section='Outputs')
    tf_period_s: float = setting(
        0.05, 'Period at which map -> odom is republished on /tf, stamped with the current '
        'time (tf2 does not extrapolate: a transform stamped only at keyframes would be too '
        'old for lookups between them).', section='Outputs', low=0.001, high=10.0)
    graph_path: str = setting(
        '', "g2o file the graph is written to by ~/save_graph and at shutdown; '' for none.",
        section='Outputs')
    trajectory_path: str = setting(
        '', 'TUM file of the optimised keyframe poses, written by ~/save_graph and at '
        "shutdown; '' for none.", section='Outputs')
    diagnostics_period_s: float = setting(1.0, 'Period of the /diagnostics status.',
                                          section='Outputs', low=0.05, high=3600.0)

    def __post_init__(self) -> None:
        check_settings(self)


PARAMS = params.ParamTable((BackendSettings, PoseGraphSettings),
                           ('Inputs', 'Pose graph', 'Outputs'), node_name='pose_graph_node',
                           config_name='config/pose_graph.yaml', startup_only=True)
"""Every backend parameter (config/pose_graph.yaml is its rendering)."""


def _tf_message_class() -> Any:
    """Return tf2_msgs' TFMessage, or None where tf2_msgs is not installed."""
    try:
        from tf2_msgs.msg import TFMessage
    except ImportError:
        return None
    return TFMessage


def loop_of_message(msg: Any) -> Loop | None:
    """Return the accepted, verified loop of a LoopCandidateArray, if it has a relative pose."""
    if not msg.accepted:
        return None
    accepted = next((c for c in msg.candidates if c.status == LoopCandidate.STATUS_VERIFIED),
                    None)
    if accepted is None or not accepted.has_relative_pose:
        return None
    p, q = accepted.relative_pose_base.pose.position, accepted.relative_pose_base.pose.orientation
    pose = transform_from((p.x, p.y, p.z, q.x, q.y, q.z, q.w))
    cov = np.asarray(accepted.relative_pose_base.covariance, dtype=np.float64).reshape(6, 6)
    if not np.isfinite(pose).all() or not np.isfinite(cov).all():
        raise ValueError("the accepted candidate's relative pose or covariance is not finite")
    return Loop(stamp_to_ns(accepted.match.stamp), pose,
                None if np.all(cov == -1.0) else cov,
                metric=accepted.pose_kind == LoopCandidate.POSE_METRIC)


@dataclass
class _Pending:
    stamp_ns: int
    loop: Loop | None
    since: float  # monotonic arrival time


class PoseGraphNode(Node):
    """GTSAM pose-graph backend over the loop-closure node's keyframes and verified loops."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__('pose_graph_node', **kwargs)
        PARAMS.declare(self)
        values = PARAMS.read(self)
        self.settings = from_values(BackendSettings, values)
        self.graph = KeyframeGraph(from_values(PoseGraphSettings, values))
        self.counts: Counter[str] = Counter()
        self._last_error = ''
        self._update_s: deque[float] = deque(maxlen=1000)
        s = self.settings
        self._poses = PoseBuffer(s.pose_tolerance_s, frame='')
        self._pending: list[_Pending] = []  # oldest stamp first
        self._odom_frame = ''
        self._correction: TransformStamped | None = None  # the latest map -> odom
        self._path_pub = self.create_publisher(PathMsg, PATH_TOPIC, PATH_QOS)
        self._map_odom_pub = self.create_publisher(TransformStamped, MAP_TO_ODOM_TOPIC,
                                                   QoSProfile(depth=10))
        tf_class = _tf_message_class() if s.publish_tf else None
        self._tf_class = tf_class
        self._tf_pub = self.create_publisher(tf_class, '/tf', QoSProfile(depth=100)) \
            if tf_class is not None else None
        if s.publish_tf and tf_class is None:
            self.get_logger().warning('tf2_msgs is not installed: map -> odom goes to '
                                      f'{MAP_TO_ODOM_TOPIC} only')
        self._diag_pub = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, 10)
        self.create_subscription(Odometry, s.odometry_topic, self._on_odometry,
                                 subscription_qos(s.odometry_qos, 100))
        self.create_subscription(LoopCandidateArray, s.candidates_topic, self._on_candidates,
                                 QoSProfile(depth=_CANDIDATE_DEPTH))
        self.create_service(Trigger, '~/save_graph', self._on_save)
        self.create_timer(s.tf_period_s, self._on_tick)
        self.create_timer(s.diagnostics_period_s, self._publish_diagnostics)

    # -- inputs ---------------------------------------------------------------------------
    def _on_odometry(self, msg: Odometry) -> None:
        p, q = msg.pose.pose.position, msg.pose.pose.orientation
        try:
            self._poses.add(stamp_to_ns(msg.header.stamp), (p.x, p.y, p.z),
                            (q.x, q.y, q.z, q.w), frame=msg.header.frame_id)
        except PoseError as err:
            self._count_error('odometry', f'odometry dropped: {err}')
            return
        self.counts['odometry'] += 1
        self._odom_frame = msg.header.frame_id
        self.drain()

    def _on_candidates(self, msg: LoopCandidateArray) -> None:
        try:
            loop = loop_of_message(msg)
        except ValueError as err:
            self._count_error('candidates', f'loop dropped: {err}')
            loop = None
        self.counts['keyframes_received'] += 1
        bisect.insort(self._pending, _Pending(stamp_to_ns(msg.header.stamp), loop,
                                              time.monotonic()), key=lambda p: p.stamp_ns)
        self.drain()

    def drain(self, expire: bool = False, final: bool = False, publish: bool = True,
              now: float | None = None) -> None:
        """Add the waiting keyframes whose odometry pose is decided, oldest stamp first.

        A keyframe is decided once odometry at or after its stamp has arrived (the candidates
        come from another process than the odometry: older odometry may still be in flight)
        and it waited reorder_s (other cameras' older keyframes); ``expire``: also once it
        waited odometry_wait_s (a stopped odometry); ``final``: all of them (shutdown).
        ``now``: the monotonic time to judge the waits by (default: now).
        """
        s = self.settings
        now = time.monotonic() if now is None else now
        changed = False
        while self._pending:
            item = self._pending[0]
            waited = now - item.since
            newest = self._poses.newest_ns
            decided = (newest is not None and newest >= item.stamp_ns
                       and waited >= s.reorder_s)
            if not (decided or final or (expire and waited > s.odometry_wait_s)):
                break
            self._pending.pop(0)
            pose = self._poses.lookup(item.stamp_ns)
            odometry = None
            if pose is not None and not any(math.isnan(v) for v in pose):
                odometry = transform_from(pose)
            try:
                changed |= self.graph.add(GraphInput(item.stamp_ns, odometry, item.loop))
            except ValueError as err:
                self._count_error('graph', f'keyframe {item.stamp_ns} refused: {err}')
        if changed:
            self._optimise(publish)

    def _optimise(self, publish: bool) -> None:
        try:
            self._update_s.append(self.graph.graph.update())
        except Exception as err:  # noqa: BLE001 - a solver failure must not kill the node
            self._count_error('optimise', f'optimisation failed: {reason(err)}')
            return
        self._correction = self._transform(self.graph.graph.map_from_odom(),
                                           self.graph.graph.newest_key)
        if publish:
            self._publish(self.graph.graph.poses())

    # -- outputs --------------------------------------------------------------------------
    def _transform(self, map_from_odom: np.ndarray, stamp_ns: int) -> TransformStamped:
        tf = TransformStamped(header=Header(stamp=convert.ns_to_stamp(stamp_ns),
                                            frame_id=self.settings.map_frame),
                              child_frame_id=self._odom_frame or 'odom')
        t, q = map_from_odom[:3, 3], quaternion_from_matrix(map_from_odom[:3, :3])
        tf.transform.translation.x, tf.transform.translation.y, tf.transform.translation.z = (
            float(v) for v in t)
        (tf.transform.rotation.x, tf.transform.rotation.y, tf.transform.rotation.z,
         tf.transform.rotation.w) = (float(v) for v in q)
        return tf

    def _publish(self, poses: dict[int, np.ndarray]) -> None:
        """Publish the optimised path and the correction (stamped with the newest keyframe)."""
        frame = self.settings.map_frame
        path = PathMsg(header=Header(stamp=convert.ns_to_stamp(max(poses)), frame_id=frame))
        for stamp, pose in poses.items():
            stamped = PoseStamped(header=Header(stamp=convert.ns_to_stamp(stamp),
                                                frame_id=frame))
            stamped.pose = convert.pose_with_covariance(pose, None).pose
            path.poses.append(stamped)
        self._path_pub.publish(path)
        self._map_odom_pub.publish(self._correction)
        self._publish_tf()

    def _publish_tf(self) -> None:
        """Publish the latest correction on /tf, stamped now (no-op without tf2_msgs)."""
        if self._tf_pub is None or self._correction is None:
            return
        tf = TransformStamped(header=Header(stamp=self.get_clock().now().to_msg(),
                                            frame_id=self._correction.header.frame_id),
                              child_frame_id=self._correction.child_frame_id,
                              transform=self._correction.transform)
        self._tf_pub.publish(self._tf_class(transforms=[tf]))

    def save(self) -> list[Path]:
        """Write the graph (g2o) and the optimised trajectory (TUM) to the configured files."""
        s = self.settings
        if not (s.graph_path or s.trajectory_path):
            raise ValueError('nothing to save: set graph_path and/or trajectory_path')
        if not len(self.graph.graph):
            raise ValueError('the graph is empty: no keyframe received yet')
        written = []
        if s.graph_path:
            written.append(self.graph.graph.write_g2o(Path(s.graph_path).expanduser()))
        if s.trajectory_path:
            written.append(write_tum(Path(s.trajectory_path).expanduser(),
                                     self.graph.graph.poses()))
        return written

    def _on_save(self, request: Trigger.Request, response: Trigger.Response
                 ) -> Trigger.Response:
        try:
            written = self.save()
        except (ValueError, OSError) as err:
            self._count_error('service', f'save_graph: {reason(err)}')
            response.success, response.message = False, reason(err)
            return response
        response.success = True
        response.message = 'wrote ' + ', '.join(str(p) for p in written)
        return response

    def _on_tick(self) -> None:
        self.drain(expire=True)
        self._publish_tf()

    def _count_error(self, kind: str, text: str) -> None:
        self.counts[f'{kind}_errors'] += 1
        self._last_error = text
        self.get_logger().warning(text, throttle_duration_sec=5.0)

    def _publish_diagnostics(self) -> None:
        graph = self.graph
        # Loops the robust kernel trusts less than half: the likely false ones.
        doubted = sum(1 for loop in graph.graph.loops() if loop.weight < 0.5)
        values = [('keyframes', len(graph.graph)), ('loops', graph.loops_added),
                  ('loops_downweighted', doubted), ('pending_keyframes', len(self._pending))]
        values += [(f'skipped_{cause}_total', graph.skipped.get(cause, 0))
                   for cause in SKIP_CAUSES]
        values += [(f'{key}_total', self.counts.get(key, 0))
                   for key in ('odometry', 'keyframes_received', 'odometry_errors',
                               'candidates_errors', 'graph_errors', 'optimise_errors',
                               'service_errors')]
        samples = sorted(self._update_s)
        if samples:
            values += [('update_ms_median', f'{1e3 * samples[len(samples) // 2]:.2f}'),
                       ('update_ms_max', f'{1e3 * samples[-1]:.2f}')]
        values.append(('last_error', self._last_error))
        errors = sum(v for k, v in self.counts.items() if k.endswith('_errors'))
        status = DiagnosticStatus(
            level=DiagnosticStatus.WARN if errors else DiagnosticStatus.OK,
            name=f'{self.get_fully_qualified_name()}: pose graph',
            message=f'{len(graph.graph)} keyframes, {graph.loops_added} loops',
            values=[KeyValue(key=k, value=str(v)) for k, v in values])
        self._diag_pub.publish(DiagnosticArray(
            header=Header(stamp=self.get_clock().now().to_msg()), status=[status]))


def write_tum(path: Path, poses: dict[int, np.ndarray]) -> Path:
    """Write keyframe poses (stamp ns -> 4x4) as a TUM trajectory file."""
    stamps = np.array(sorted(poses), dtype=np.int64)
    positions = np.array([poses[s][:3, 3] for s in stamps])
    quaternions = np.array([quaternion_from_matrix(poses[s][:3, :3]) for s in stamps])
    path.parent.mkdir(parents=True, exist_ok=True)
    Trajectory(stamps, positions, quaternions).to_tum(path)
    return path


def wait_for_path(keyframes: int, domain_id: int, timeout_s: float,
                  peer_alive: Any = lambda: True, topic: str = '/' + PATH_TOPIC) -> PathMsg:
    """Return the backend's path once it holds `keyframes` poses (the condition waited on).

    Raises TimeoutError naming what it last saw, or RuntimeError when `peer_alive` turns false.
    """
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain_id)
    latest: list[PathMsg] = []
    try:
        node = rclpy.create_node(f'boq_ros_path_watch_{os.getpid()}', context=context,
                                 start_parameter_services=False)
        node.create_subscription(PathMsg, topic, latest.append, PATH_QOS)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        deadline = time.monotonic() + timeout_s
        while not (latest and len(latest[-1].poses) >= keyframes):
            if not peer_alive():
                raise RuntimeError('the pose graph node exited')
            if time.monotonic() > deadline:
                seen = len(latest[-1].poses) if latest else 'no path'
                raise TimeoutError(f'the pose graph path did not reach {keyframes} keyframes '
                                   f'within {timeout_s:.0f} s (last: {seen})')
            executor.spin_once(timeout_sec=0.1)
        return latest[-1]
    finally:
        rclpy.shutdown(context=context)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the backend until Ctrl-C; write the configured files on the way out."""
    import signal

    handles_signals = threading.current_thread() is threading.main_thread()
    if handles_signals:
        signal.signal(signal.SIGINT, interrupt_once)
    rclpy.init(args=sys.argv if argv is None else list(argv))
    try:
        node = PoseGraphNode()
    except ValueError as err:
        print(f'pose_graph_node: {err}', file=sys.stderr)
        rclpy.try_shutdown()
        return 1
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    status = 0
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if handles_signals:
            signal.signal(signal.SIGINT, ignore_interrupt)
        s = node.settings
        node.drain(final=True, publish=False)  # Ctrl-C has shut the context down
        if (s.graph_path or s.trajectory_path) and len(node.graph.graph):
            # printed: Ctrl-C has shut the context down, the logger could not reach /rosout
            try:
                for path in node.save():
                    print(f'pose_graph_node: wrote {path}', file=sys.stderr)
            except (ValueError, OSError) as err:
                print(f'pose_graph_node: could not save at shutdown: {reason(err)}',
                      file=sys.stderr)
                status = 1
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
        if handles_signals:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
    return status


if __name__ == '__main__':
    sys.exit(main())
