"""`boq-ros replay`: pacing, /clock, lockstep, recording, refusals; and live == offline.

The first tests replay into a stand-in node (an rclpy subscription in the test process that
answers chosen images with a LoopCandidateArray), so that what replay itself does is checked
exactly. The last test replays into the real node as a subprocess and checks that what it
published agrees with the offline pipeline on the same recording.
"""
import argparse
from pathlib import Path
import struct
import threading

import numpy as np
import pytest

from boq_ros.bags import open_bag
from boq_ros.cli import replay as replay_cli
from boq_ros.eval.records import read_records
from boq_ros.ros.replay import (
    CandidateRecorder,
    NodeGone,
    ReplayError,
    ReplayOptions,
    header_stamp_ns,
    message_class,
    replay,
)
from boq_ros.synth import COMPRESSED_TOPIC, IMAGE_TOPIC, ODOM_TOPIC, generate_recording

FRAMES = 6
RATE_HZ = 5.0


def cli_main(argv: list[str]) -> int:
    """Run `boq-ros replay` (only that subcommand, whatever else the CLI has)."""
    parser = argparse.ArgumentParser(prog='boq-ros')
    replay_cli.register(parser.add_subparsers(dest='command', required=True))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture(scope='module')
def bag(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp('replay') / 'tiny.mcap'
    generate_recording(path, storage='mcap', laps=1, frames_per_lap=FRAMES,
                       image_size=(32, 24), rate_hz=RATE_HZ, odom_rate_hz=10.0)
    return path


def _image_stamps(bag: Path) -> list[int]:
    with open_bag(bag) as b:
        return [m.decode().header.stamp.sec * 10**9 + m.decode().header.stamp.nanosec
                for m in b.messages([IMAGE_TOPIC])]


class FakeNode:
    """Answers images on one camera topic like the node: one array per image, matching k-1."""

    def __init__(self, ros_node, answer=lambda k: True, topic='/camera/image_raw',
                 msg_type=None) -> None:
        from boq_ros.msg import LoopCandidate, LoopCandidateArray
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        self._types = LoopCandidate, LoopCandidateArray
        self.answer = answer
        self.received = []
        self.stamps = []
        self._lock = threading.Lock()
        qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self.pub = ros_node.node.create_publisher(LoopCandidateArray, '/loop_candidates', qos)
        self.sub = ros_node.node.create_subscription(msg_type or Image, topic, self._on_image,
                                                     qos)

    def _on_image(self, image) -> None:
        candidate_type, array_type = self._types
        with self._lock:
            k = len(self.received)
            self.received.append(image.header.stamp)
            if not self.answer(k):
                return
            msg = array_type()
            msg.header.stamp = image.header.stamp
            msg.query.id = k
            msg.query.stamp = image.header.stamp
            msg.query.session = 'demo'
            msg.query.camera = 'camera'
            if k > 0:
                c = candidate_type()
                c.match.id = k - 1
                c.match.stamp = self.received[k - 1]
                c.match.session = 'demo'
                c.similarity = 0.5
                msg.candidates = [c]
                msg.accepted = k % 2 == 0
            self.pub.publish(msg)


def test_lockstep_records_every_answer(bag, ros_node, ros_domain_id):
    fake = FakeNode(ros_node)
    options = ReplayOptions(topics=(IMAGE_TOPIC, ODOM_TOPIC), rate=20.0,
                            record_topic='/loop_candidates', lockstep=True)
    summary, records = replay(bag, options, domain_id=ros_domain_id, progress=False)
    stamps = _image_stamps(bag)
    assert summary.published == {IMAGE_TOPIC: FRAMES, ODOM_TOPIC: 11}
    assert (summary.images, summary.answered, summary.dropped) == (FRAMES, FRAMES, 0)
    assert summary.recorded == FRAMES and summary.records == FRAMES
    assert [r.query_stamp_ns for r in records] == stamps
    assert [r.query_seq for r in records] == list(range(FRAMES))
    assert not records[0].has_match
    for k, r in enumerate(records[1:], start=1):
        assert (r.match_id, r.match_seq, r.match_stamp_ns) == (k - 1, k - 1, stamps[k - 1])
        assert r.rank == 0 and r.similarity == pytest.approx(0.5) and r.accepted == (k % 2 == 0)
    # The bag's bytes arrived unchanged: same stamps in the same order.
    assert [s.sec * 10**9 + s.nanosec for s in fake.received] == stamps


def test_lockstep_synchronised_cameras(bag, ros_node, ros_domain_id):
    """Two cameras with the same stamps: each image waits for, and counts, its own answer."""
    from sensor_msgs.msg import CompressedImage

    FakeNode(ros_node)
    FakeNode(ros_node, topic=COMPRESSED_TOPIC, msg_type=CompressedImage)
    options = ReplayOptions(topics=(IMAGE_TOPIC, COMPRESSED_TOPIC), rate=20.0,
                            record_topic='/loop_candidates', lockstep=True)
    summary, records = replay(bag, options, domain_id=ros_domain_id, progress=False)
    with open_bag(bag) as b:
        compressed = [m.decode().header.stamp for m in b.messages([COMPRESSED_TOPIC])]
    assert [s.sec * 10**9 + s.nanosec for s in compressed] == _image_stamps(bag)
    assert (summary.images, summary.answered, summary.dropped) == (2 * FRAMES, 2 * FRAMES, 0)
    assert summary.recorded == len(records) == 2 * FRAMES


def test_paced_by_bag_clock_with_clock_topic(bag, ros_node, ros_domain_id):
    from rclpy.qos import qos_profile_sensor_data
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import CompressedImage

    clock = ros_node.collect(Clock, '/clock', qos_profile_sensor_data)
    images = ros_node.collect(CompressedImage, '/cam/compressed', 100)
    rate = 4.0
    options = ReplayOptions(topics=(COMPRESSED_TOPIC,), remap=((COMPRESSED_TOPIC,
                                                                '/cam/compressed'),),
                            rate=rate, clock=True)
    summary, records = replay(bag, options, domain_id=ros_domain_id, progress=False)
    assert summary.published == {'/cam/compressed': FRAMES} and records == []
    # Paced: the wall time covers the bag time (from the bag's first message) over the rate.
    assert summary.bag_s == pytest.approx((FRAMES - 1) / RATE_HZ, abs=0.01)
    assert summary.wall_s >= summary.bag_s / rate - 0.01
    images.wait_for(FRAMES)
    with open_bag(bag) as b:
        log_times = [m.log_time_ns for m in b.messages([COMPRESSED_TOPIC])]
    # /clock carries the bag time of each published message (best effort: some may be lost).
    got = [c.clock.sec * 10**9 + c.clock.nanosec for c in clock.wait_for(1)]
    assert set(got) <= set(log_times) and got == sorted(got)


def test_unanswered_images_count_as_dropped(bag, ros_node, ros_domain_id, tmp_path,
                                            monkeypatch):
    FakeNode(ros_node, answer=lambda k: k % 2 == 0)
    out = tmp_path / 'live.jsonl'
    monkeypatch.setenv('ROS_DOMAIN_ID', str(ros_domain_id))
    status = cli_main(['replay', str(bag), '--topics', IMAGE_TOPIC, '--rate', '50',
                       '--lockstep', '--answer-timeout', '1', '--record-topic',
                       '/loop_candidates', '--record-out', str(out), '--no-progress'])
    assert status == 0
    records = read_records(out)
    assert [r.query_id for r in records] == [0, 2, 4]
    assert [r.query_seq for r in records] == [0, 1, 2]
    # Matches the recorder never saw queried have no known seq.
    assert [r.match_seq for r in records if r.has_match] == [-1, -1]


def test_refusals(bag, ros_domain_id, monkeypatch):
    monkeypatch.setenv('ROS_AUTOMATIC_DISCOVERY_RANGE', 'SUBNET')
    with pytest.raises(ReplayError, match='LOCALHOST'):
        replay(bag, ReplayOptions(), domain_id=ros_domain_id)
    monkeypatch.setenv('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    with pytest.raises(ReplayError, match='no topic /nope'):
        replay(bag, ReplayOptions(topics=('/nope',)), domain_id=ros_domain_id)
    with pytest.raises(ReplayError, match='cannot remap'):
        replay(bag, ReplayOptions(remap=(('/nope', '/x'),)), domain_id=ros_domain_id)
    with pytest.raises(FileNotFoundError):
        replay(bag.with_name('missing.mcap'), ReplayOptions(), domain_id=ros_domain_id)
    for bad, match in [({'rate': 0.0}, 'rate'), ({'qos': 'fast'}, 'qos'),
                       ({'lockstep': True}, 'lockstep needs record_topic'),
                       ({'answer_timeout_s': -1.0}, 'answer_timeout_s')]:
        with pytest.raises(ReplayError, match=match):
            ReplayOptions(**bad).validate()
    # Nobody listens on this domain: a bounded wait, then a message that says what is missing.
    with pytest.raises(ReplayError, match='nothing publishes /loop_candidates'):
        replay(bag, ReplayOptions(topics=(IMAGE_TOPIC,), record_topic='/loop_candidates',
                                  subscriber_timeout_s=0.3), domain_id=ros_domain_id)
    with pytest.raises(NodeGone):
        replay(bag, ReplayOptions(topics=(IMAGE_TOPIC,), subscriber_timeout_s=30.0),
               domain_id=ros_domain_id, peer_alive=lambda: False)


def test_message_helpers():
    assert message_class('sensor_msgs/msg/Image').__name__ == 'Image'
    with pytest.raises(ReplayError, match='not available to rclpy'):
        message_class('no_such_pkg/msg/Thing')
    with pytest.raises(ReplayError, match='not a ROS 2 message type'):
        message_class('sensor_msgs/Image')
    little = b'\x00\x01\x00\x00' + struct.pack('<iI', 12, 345)
    big = b'\x00\x00\x00\x00' + struct.pack('>iI', 12, 345)
    assert header_stamp_ns(little) == header_stamp_ns(big) == 12 * 10**9 + 345
    with pytest.raises(ReplayError, match='too short'):
        header_stamp_ns(b'\x00\x01\x00\x00')


def test_recorder_keeps_unassigned_queries_apart():
    from boq_ros.msg import LoopCandidateArray

    msg = LoopCandidateArray()
    msg.query.id = 2**64 - 1  # the node did not add this query (static map)
    msg.query.session = 'run'
    msg.header.stamp.sec = 3
    (record,) = CandidateRecorder().add(msg)
    assert (record.query_id, record.query_seq, record.query_stamp_ns) == (-1, -1, 3 * 10**9)
    assert not record.has_match and np.isfinite(record.similarity)


def test_recorder_takes_the_verified_candidate_and_its_base_pose():
    from boq_ros.msg import LoopCandidate, LoopCandidateArray

    msg = LoopCandidateArray()
    msg.query.id, msg.query.session, msg.query.camera = 7, 'run', 'cam'
    msg.header.stamp.sec = 9
    msg.accepted = True
    for rank in range(3):
        c = LoopCandidate(rank=rank, similarity=0.9 - 0.1 * rank)
        c.match.id, c.match.session, c.match.stamp.sec = rank, 'run', rank + 1
        c.status = LoopCandidate.STATUS_REJECTED
        c.matches, c.inliers = 30, 5
        msg.candidates.append(c)
    verified = msg.candidates[1]
    verified.status, verified.inliers = LoopCandidate.STATUS_VERIFIED, 48
    verified.pose_kind, verified.has_relative_pose = LoopCandidate.POSE_METRIC, True
    verified.relative_pose.pose.position.z = 5.0  # camera frame: not what the record keeps
    base = verified.relative_pose_base.pose
    base.position.x, base.position.y = 4.0, -0.5
    base.orientation.z, base.orientation.w = 0.6, 0.8
    records = CandidateRecorder().add(msg)
    assert [r.accepted for r in records] == [False, True, False]
    assert [(r.status, r.inliers, r.pose_kind) for r in records] == [(2, 5, 0), (1, 48, 1),
                                                                     (2, 5, 0)]
    assert records[1].relative_pose == (4.0, -0.5, 0.0, 0.0, 0.0, 0.6, 0.8)
    assert records[0].relative_pose is None and records[2].relative_pose is None
    for c in msg.candidates:  # verification off: the best candidate, appearance-only
        c.status, c.has_relative_pose = LoopCandidate.STATUS_APPEARANCE_ONLY, False
    assert [r.accepted for r in CandidateRecorder().add(msg)] == [True, False, False]
    msg.accepted = False
    assert not any(r.accepted for r in CandidateRecorder().add(msg))


def test_live_candidates_agree_with_offline(tmp_path, start_node, ros_domain_id):
    """The node, fed the bag over DDS, proposes what the offline pipeline proposes."""
    from boq_ros.demo import (
        CANDIDATE_TOPIC,
        GROUND_TRUTH_TOPIC,
        DemoRecording,
        NodeSettings,
        compare_records,
        demo_detector,
        ensure_recording,
        metric_differences,
        offline_run,
        write_params_file,
    )
    from boq_ros.eval.groundtruth import ground_truth_for_records
    from boq_ros.eval.metrics import EvalConfig, evaluate
    from boq_ros.extractor import ModelSettings
    from boq_ros.model.checkpoint import write_random_checkpoint
    from boq_ros.settings import VerificationSettings
    from boq_ros.trajectory import Trajectory

    recording = DemoRecording(frames=18, image_size=(96, 72))
    bag, _ = ensure_recording(tmp_path / 'recordings', recording)
    checkpoint = write_random_checkpoint(tmp_path / 'random.pth', 'resnet50-16384')
    model_settings = ModelSettings(checkpoint=str(checkpoint), device='cpu',
                                   resize_policy='height', input_size=64)
    model = model_settings.load()
    settings = NodeSettings(model_settings, tmp_path / 'maps', demo_detector(recording),
                            verification=VerificationSettings(verification=False))
    node = start_node(params_file=write_params_file(tmp_path / 'params.yaml',
                                                    settings.parameters()))
    options = ReplayOptions(topics=(IMAGE_TOPIC, ODOM_TOPIC), rate=5.0,
                            record_topic=CANDIDATE_TOPIC, lockstep=True,
                            subscriber_timeout_s=120.0, answer_timeout_s=60.0)
    summary, live = replay(bag, options, domain_id=ros_domain_id, peer_alive=node.alive,
                           progress=False)
    assert (summary.images, summary.answered) == (18, 18)
    assert summary.model_ids and summary.model_ids[0].startswith('resnet50-16384@')

    evaluation = EvalConfig(radius_m=5.0)
    (offline,), _ = offline_run(bag, model, settings, evaluation, progress=False)
    agreement = compare_records(live, offline.records, threshold=settings.detector.threshold)
    assert agreement.agree, agreement.format()
    assert agreement.live_queries == agreement.offline_queries == 18
    # Not vacuous: the second lap has candidates (the first is inside the exclusion window).
    assert sum(r.has_match for r in live) >= 8 and any(r.accepted for r in live)
    assert {r.query_id for r in live} == set(range(18))
    ground_truth, kept, unknown = ground_truth_for_records(
        live, {'demo': Trajectory.from_bag(bag, GROUND_TRUTH_TOPIC)},
        settings.detector.exclusion_seconds, settings.detector.exclusion_keyframes)
    assert (kept, unknown) == (live, 0)
    live_result = evaluate(live, ground_truth, evaluation)
    assert live_result.num_positive_queries > 0
    assert metric_differences(live_result, offline.result) == []
    assert node.stop() == 0  # clean shutdown on SIGINT
