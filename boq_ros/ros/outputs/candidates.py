"""Our own message: boq_ros/LoopCandidateArray on `loop_candidates`, for every keyframe.

Always on: one array per answered keyframe, accepted or not, with its top-k candidates, their
evidence and, for the loop, the relative pose with its covariance (docs/node.md).
"""
from rclpy.qos import QoSProfile

from boq_ros.msg import LoopCandidateArray
from boq_ros.ros import convert
from boq_ros.ros.outputs.base import Decision, Output, OutputContext
from boq_ros.ros.params import NodeSettings

TOPIC = 'loop_candidates'


class CandidateOutput(Output):
    """Publish every decision as a LoopCandidateArray (reliable, depth 10)."""

    def __init__(self, context: OutputContext, settings: NodeSettings) -> None:
        super().__init__(context, settings)
        node = context.node
        self._publisher = self.own(node.destroy_publisher, node.create_publisher(
            LoopCandidateArray, TOPIC, QoSProfile(depth=10)))

    def publish(self, decision: Decision) -> None:
        self._publisher.publish(convert.candidate_array(
            decision.detection, decision.model_id, decision.map_id))
