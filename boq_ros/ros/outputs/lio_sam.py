"""LIO-SAM: `std_msgs/Float64MultiArray [t_query, t_match]` on `lio_loop/loop_closure_detection`.

LIO-SAM takes a pair of keyframe times (seconds) and runs its own ICP between the two scans, so
every accepted loop is sent, with or without a relative pose. Best effort, as LIO-SAM
subscribes. Enabled by `publish_lio_sam` (live).
"""
from rclpy.qos import qos_profile_sensor_data
from std_msgs.msg import Float64MultiArray

from boq_ros.keyframe_map.meta import KeyframeMeta
from boq_ros.ros.outputs.base import Decision, Output, OutputContext
from boq_ros.ros.params import NodeSettings

TOPIC = 'lio_loop/loop_closure_detection'


def lio_sam_pair(query: KeyframeMeta, match: KeyframeMeta) -> Float64MultiArray:
    """Build LIO-SAM's loop message: [t_query, t_match] in seconds."""
    return Float64MultiArray(data=[query.stamp_ns / 1e9, match.stamp_ns / 1e9])


class LioSamOutput(Output):
    """Publish each accepted loop as a LIO-SAM time pair."""

    parameter = 'publish_lio_sam'

    def __init__(self, context: OutputContext, settings: NodeSettings) -> None:
        super().__init__(context, settings)
        node = context.node
        self._publisher = self.own(node.destroy_publisher, node.create_publisher(
            Float64MultiArray, TOPIC, qos_profile_sensor_data))

    def publish(self, decision: Decision) -> None:
        loop = decision.loop
        if loop is not None:
            self._publisher.publish(lio_sam_pair(decision.detection.query, loop.meta))
