"""Hydra / Kimera-PGMO: `pose_graph_tools_msgs/PoseGraph` edges on `external_loop_closures`.

One PoseGraph per accepted loop, holding one LOOPCLOSE edge: `key_from` / `key_to` are the
query / match keyframes' sensor stamps in nanoseconds (Hydra associates them with its agent
nodes by time), `robot_from` / `robot_to` the two keyframes' robots as integers
(`pose_graph_robot_ids`), `pose` the match's base frame in the query's base frame
(T_query_match = `relative_pose_base`: from -> to) and `covariance` its 6x6 covariance, row-major
over x y z rx ry rz, as in LoopCandidate (all -1 when unknown). Only loops with a metric relative
pose (PnP against depth) are sent: a pose up to scale, or none, would pull the graph wrong; the
others are counted. Enabled by `publish_pose_graph`; needs pose_graph_tools_msgs
(MIT-SPARK/pose_graph_tools), imported only then.
"""
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from rclpy.qos import QoSProfile
from std_msgs.msg import Header

from boq_ros.detector import Verification
from boq_ros.keyframe_map.meta import KeyframeMeta
from boq_ros.ros import convert
from boq_ros.ros.outputs.base import (
    Decision,
    Output,
    OutputContext,
    OutputError,
    metric_loop,
    resolve,
)
from boq_ros.ros.params import NodeSettings

_DEPTH = 100  # reliable, as Hydra subscribes (depth 100): no loop is lost in a burst


class RobotIdError(ValueError):
    """Raised for a loop whose robots have no integer id in the pose graph."""


def robot_ids(query_robot: str, match_robot: str, names: Sequence[str]) -> tuple[int, int]:
    """Return (robot_from, robot_to) of a loop: the robots' places in `names`.

    With no names there is one robot, 0, and a loop between two robot names cannot be told.
    """
    if not names:
        if query_robot != match_robot:
            raise RobotIdError(
                f'a loop between robots {query_robot!r} and {match_robot!r}: set '
                'pose_graph_robot_ids to give each robot its id')
        return 0, 0
    for name in (query_robot, match_robot):
        if name not in names:
            raise RobotIdError(f'robot {name!r} is not in pose_graph_robot_ids {list(names)}')
    return names.index(query_robot), names.index(match_robot)


def loop_graph(messages: ModuleType, query: KeyframeMeta, match: KeyframeMeta,
               robots: tuple[int, int], verification: Verification) -> Any:
    """Build the PoseGraph of one loop: one LOOPCLOSE edge query -> match, stamped as the query."""
    header = Header(stamp=convert.ns_to_stamp(query.stamp_ns))
    relative = convert.pose_with_covariance(verification.relative_pose_base,
                                            verification.covariance_base)
    edge = messages.PoseGraphEdge(
        header=header, key_from=query.stamp_ns, key_to=match.stamp_ns, robot_from=robots[0],
        robot_to=robots[1], type=messages.PoseGraphEdge.LOOPCLOSE, pose=relative.pose,
        covariance=relative.covariance)
    return messages.PoseGraph(header=header, edges=[edge])


class PoseGraphOutput(Output):
    """Publish each accepted metric loop as a PoseGraph edge (Hydra's external loop closures)."""

    parameter = 'publish_pose_graph'
    counters = ('pose_graph_edges', 'pose_graph_no_metric_pose', 'pose_graph_unknown_robot')
    interfaces = ('pose_graph_tools_msgs', 'MIT-SPARK/pose_graph_tools', ('msg',))

    def __init__(self, context: OutputContext, settings: NodeSettings) -> None:
        super().__init__(context, settings)
        (self._messages,) = self.load()
        names = settings.pose_graph_robot_ids
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise OutputError(f'parameter pose_graph_robot_ids lists {twice} more than once')
        self._robots = tuple(names)
        node = context.node
        topic = resolve(node, settings.pose_graph_topic, 'pose_graph_topic')
        self._publisher = self.own(node.destroy_publisher, node.create_publisher(
            self._messages.PoseGraph, topic, QoSProfile(depth=_DEPTH)))

    def publish(self, decision: Decision) -> None:
        found = metric_loop(decision, self.context, 'pose_graph_no_metric_pose')
        if found is None:
            return
        loop, verification = found
        query = decision.detection.query
        try:
            robots = robot_ids(query.robot_id, loop.meta.robot_id, self._robots)
        except RobotIdError as err:
            self.context.fail(f'pose graph: {err}')  # before the count: its reader sees why
            self.context.count('pose_graph_unknown_robot')
            return
        self.context.count('pose_graph_edges')  # before: a reader never sees more than counted
        self._publisher.publish(loop_graph(self._messages, query, loop.meta, robots,
                                           verification))
