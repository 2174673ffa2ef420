"""Issue-2 smoke test: one camera image in, one candidate array out, over real DDS."""
from boq_ros.msg import LoopCandidateArray
from conftest import wait_until
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from test_node_common import START_TIMEOUT_S, base_params, checkpoint, place

from boq_ros.ros.convert import NO_ID, image_msg


def test_one_image_gets_a_candidate_array(start_node, ros_node, tmp_path, tmp_path_factory):
    proc = start_node(params=base_params(checkpoint(tmp_path_factory), tmp_path / 'maps'))
    answers = ros_node.collect(LoopCandidateArray, '/loop_candidates', 10)
    # The node's default input QoS is sensor data (best effort), as cameras publish.
    camera = ros_node.publisher(Image, '/image', qos_profile_sensor_data)
    ros_node.wait_for_subscribers(camera, timeout=START_TIMEOUT_S)
    ros_node.wait_for_publishers(answers)
    header = Header(frame_id='cam')
    header.stamp.sec, header.stamp.nanosec = 12, 345
    msg = image_msg(place(0), 'rgb8', header)

    def answered() -> bool:  # best effort may lose a frame: publish until answered
        proc.assert_alive()
        if not answers.messages:
            camera.publish(msg)
        return bool(answers.messages)

    wait_until(answered, 60, 'an answer on /loop_candidates', poll_s=1.0)
    first = answers.messages[0]
    assert (first.query.stamp.sec, first.query.stamp.nanosec) == (12, 345)
    assert (first.header.stamp.sec, first.header.frame_id) == (12, 'cam')
    assert first.query.camera == '/image' and first.query.frame_id == 'cam'
    assert first.query.id == 0 != NO_ID  # grow mode: the first keyframe of a new map
    assert first.candidates == [] and not first.accepted  # nothing to match yet
    assert first.model.startswith('resnet50-16384@') and first.map_id
