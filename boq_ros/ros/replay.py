"""Replay a recording onto live ROS 2 topics and record what the loop-closure node answers.

Users evaluate the live node on their own recordings. The bag's messages are published from the
raw recorded bytes (nothing is decoded and re-encoded, so the node sees exactly what was
recorded), paced by the bag clock with a rate factor, optionally with ``/clock`` for
``use_sim_time``. The node's candidate arrays are turned into the evaluator's candidate records,
so the offline metrics score what the live node published.

``lockstep`` publishes each image only after the node answered the previous one: no frame can
be dropped by a slow node, which is what a comparison with the offline pipeline needs.
"""
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
import importlib
import os
import struct
import threading
import time
from typing import Any, Literal

from boq_ros.bags import open_bag, stamp_to_ns
from boq_ros.eval.records import CandidateRecord, no_match_record
from boq_ros.ros.dds import check_dds_environment

IMAGE_TYPES = frozenset({'sensor_msgs/msg/Image', 'sensor_msgs/msg/CompressedImage'})
CANDIDATE_TYPE = 'boq_ros/msg/LoopCandidateArray'
_UINT64_MAX = 2**64 - 1  # KeyframeRef.id of a query the node did not add (its convert.NO_ID)
_POLL_S = 0.1  # how often waits check that the node is still alive
_GRACE_S = 0.5  # extra wait for the node's secondary subscriptions to match


class ReplayError(ValueError):
    """Raised when a replay cannot start or its inputs are unusable (names the cause)."""


@dataclass(frozen=True)
class ReplayOptions:
    """How to publish a bag and what to wait for."""

    topics: tuple[str, ...] | None = None  # None: every topic whose message type is importable
    remap: tuple[tuple[str, str], ...] = ()  # (bag topic, live topic)
    rate: float = 1.0  # bag seconds per wall second
    clock: bool = False  # publish rosgraph_msgs/Clock on /clock before each message
    start_offset_s: float = 0.0  # skip the first seconds of the bag
    qos: Literal['reliable', 'best_effort'] = 'reliable'
    depth: int = 100  # history depth of the publishers and of the recorder
    record_topic: str | None = None  # the node's candidate topic (LoopCandidateArray)
    lockstep: bool = False  # publish an image only after the previous one was answered
    depth_topics: tuple[str, ...] = ()  # image topics that are depth, not cameras: never answered
    # (live topic, count): also wait for this many subscriptions on each, e.g. a SLAM backend
    # beside the node on the odometry and the candidates (matched on the replay's own topics)
    listeners: tuple[tuple[str, int], ...] = ()
    subscriber_timeout_s: float = 20.0  # bounded wait for the node's endpoints before starting
    answer_timeout_s: float = 30.0  # max wait for one answer (lockstep) / the last answers
    allow_network: bool = False  # accept DDS discovery beyond localhost

    def validate(self) -> None:
        """Refuse settings that cannot work, naming the field."""
        if not self.rate > 0.0:
            raise ReplayError(f'rate must be > 0, got {self.rate}')
        if not self.start_offset_s >= 0.0:
            raise ReplayError(f'start_offset_s must be >= 0, got {self.start_offset_s}')
        if self.qos not in ('reliable', 'best_effort'):
            raise ReplayError(f"qos must be 'reliable' or 'best_effort', got {self.qos!r}")
        if self.depth < 1:
            raise ReplayError(f'depth must be >= 1, got {self.depth}')
        if self.lockstep and not self.record_topic:
            raise ReplayError("lockstep needs record_topic: it waits for the node's answers")
        for name in ('subscriber_timeout_s', 'answer_timeout_s'):
            if not getattr(self, name) > 0.0:
                raise ReplayError(f'{name} must be > 0, got {getattr(self, name)}')
        for old, new in self.remap:
            if not old or not new:
                raise ReplayError(f'remap entries need both topics, got {old!r} -> {new!r}')


@dataclass
class ReplaySummary:
    """What a replay did, for the summary line and for callers that check for losses."""

    published: dict[str, int] = field(default_factory=dict)  # live topic -> messages
    recording: bool = False  # whether the node's answers were recorded
    images: int = 0  # image messages published on topics the node subscribes to
    answered: int = 0  # of those, answered by the node (when recording)
    recorded: int = 0  # candidate arrays received
    records: int = 0  # candidate records produced from them
    skipped_topics: dict[str, str] = field(default_factory=dict)  # bag topic -> why
    model_ids: list[str] = field(default_factory=list)  # models the node said it ran
    bag_s: float = 0.0  # bag time replayed
    wall_s: float = 0.0
    max_lag_s: float = 0.0  # worst delay behind the paced schedule (not counting lockstep waits)
    interrupted: bool = False

    @property
    def dropped(self) -> int:
        """Images published to a listening node that it never answered (0 unless recording)."""
        return self.images - self.answered if self.recording else 0

    def format(self) -> str:
        """Human-readable summary for the command line."""
        lines = [f'published {sum(self.published.values())} messages in {self.wall_s:.1f} s '
                 f'(bag time {self.bag_s:.1f} s, worst lag {self.max_lag_s * 1e3:.0f} ms)']
        lines += [f'  {topic}: {count}' for topic, count in sorted(self.published.items())]
        for topic, why in sorted(self.skipped_topics.items()):
            lines.append(f'  skipped {topic}: {why}')
        if self.recording:
            lines.append(f'images the node listens to: {self.images}, answered {self.answered}, '
                         f'dropped {self.dropped}')
            lines.append(f'recorded {self.recorded} candidate arrays ({self.records} records)')
        else:
            lines.append(f'images published to a subscriber: {self.images}')
        if self.interrupted:
            lines.append('interrupted: the results are partial')
        return '\n'.join(lines)


def message_class(msgtype: str) -> type:
    """Import the rclpy class of a ROS 2 type name such as ``sensor_msgs/msg/Image``."""
    parts = msgtype.split('/')
    if len(parts) != 3 or parts[1] != 'msg' or not all(parts):
        raise ReplayError(f'not a ROS 2 message type name: {msgtype!r}')
    package, _, name = parts
    try:
        return getattr(importlib.import_module(f'{package}.msg'), name)
    except (ImportError, AttributeError):
        raise ReplayError(f'message type {msgtype} is not available to rclpy here (no '
                          f'installed Python package {package}.msg with {name})') from None


def header_stamp_ns(raw: bytes | memoryview) -> int:
    """Stamp of the std_msgs/Header that starts a CDR-serialised message, in nanoseconds."""
    if len(raw) < 12:
        raise ReplayError(f'message of {len(raw)} bytes is too short to start with a header')
    order = '<' if raw[1] & 1 else '>'
    sec, nanosec = struct.unpack_from(order + 'iI', raw, 4)
    return sec * 1_000_000_000 + nanosec


def accepted_index(msg: Any) -> int | None:
    """Return the index of the accepted candidate: the VERIFIED one, else the best.

    None when the array is not accepted (as ``boq_ros.detector.Detection.match``).
    """
    if not msg.accepted or not msg.candidates:
        return None
    verified = type(msg.candidates[0]).STATUS_VERIFIED
    return next((i for i, c in enumerate(msg.candidates) if c.status == verified), 0)


def _pose(msg: Any) -> tuple[float, ...]:
    """Return (x y z qx qy qz qw) of a geometry_msgs/PoseWithCovariance."""
    p, q = msg.pose.position, msg.pose.orientation
    return (float(p.x), float(p.y), float(p.z), float(q.x), float(q.y), float(q.z),
            float(q.w))


def _covariance(msg: Any) -> tuple[float, ...] | None:
    """Return the 36 covariance values of a PoseWithCovariance; None when unknown (all -1)."""
    values = tuple(float(v) for v in msg.covariance)
    return None if all(v == -1.0 for v in values) else values


class CandidateRecorder:
    """Turns the node's candidate arrays into candidate records, as the offline runner makes them.

    A candidate array does not carry the keyframes' sequence numbers within their session; in a
    growing map they are the order in which the session's keyframes were queried, so the recorder
    numbers the queries it sees per session and looks matches up among them (-1 for a match it
    never saw queried, e.g. a keyframe of a map loaded before the replay).
    """

    def __init__(self) -> None:
        self.records: list[CandidateRecord] = []
        self.model_ids: list[str] = []  # in order of first appearance
        self._next_seq: dict[str, int] = {}
        self._seq_of: dict[int, int] = {}

    def add(self, msg: Any) -> list[CandidateRecord]:
        """Convert one LoopCandidateArray; return (and keep) its records."""
        if msg.model not in self.model_ids:
            self.model_ids.append(msg.model)
        query = msg.query
        session = query.session
        query_id = -1 if query.id == _UINT64_MAX else int(query.id)
        if query_id >= 0:
            query_seq = self._next_seq.get(session, 0)
            self._next_seq[session] = query_seq + 1
            self._seq_of[query_id] = query_seq
        else:
            query_seq = -1
        query_stamp = stamp_to_ns(msg.header.stamp)
        if not msg.candidates:
            records = [no_match_record(query_id, query_stamp, session, query.camera, query_seq)]
        else:
            accepted = accepted_index(msg)
            records = [
                CandidateRecord(
                    query_id=query_id, query_stamp_ns=query_stamp, query_session=session,
                    query_camera=query.camera, query_seq=query_seq,
                    match_id=int(c.match.id), match_stamp_ns=stamp_to_ns(c.match.stamp),
                    match_session=c.match.session,
                    match_seq=self._seq_of.get(int(c.match.id), -1),
                    similarity=float(c.similarity), rank=int(c.rank), accepted=i == accepted,
                    status=int(c.status), inliers=int(c.inliers), pose_kind=int(c.pose_kind),
                    relative_pose=_pose(c.relative_pose_base) if c.has_relative_pose else None,
                    covariance=_covariance(c.relative_pose_base) if c.has_relative_pose else None)
                for i, c in enumerate(msg.candidates)]
        for record in records:
            record.validate()
        self.records.extend(records)
        return records


@dataclass(frozen=True)
class _Stream:
    topic: str  # live topic
    msgtype: str
    is_image: bool


def _select_streams(bag_topics: dict[str, Any], options: ReplayOptions,
                    summary: ReplaySummary) -> dict[str, _Stream]:
    remap = dict(options.remap)
    unknown = sorted(set(remap) - set(bag_topics))
    if unknown:
        raise ReplayError(f'cannot remap topics the bag does not have: {", ".join(unknown)}')
    if options.topics is not None:
        missing = sorted(set(options.topics) - set(bag_topics))
        if missing:
            raise ReplayError(f'the bag has no topic {", ".join(missing)} '
                              f'(it has {", ".join(sorted(bag_topics))})')
        wanted = list(dict.fromkeys(options.topics))
    else:
        wanted = sorted(bag_topics)
    streams = {}
    for topic in wanted:
        msgtype = bag_topics[topic].msgtype
        try:
            message_class(msgtype)
        except ReplayError as exc:
            if options.topics is not None:
                raise
            summary.skipped_topics[topic] = str(exc)
            continue
        streams[topic] = _Stream(remap.get(topic, topic), msgtype,
                                 msgtype in IMAGE_TYPES and topic not in options.depth_topics)
    if not streams:
        raise ReplayError('nothing to replay: no topic of the bag has a message type rclpy has')
    return streams


class _RosSide:
    """The rclpy context, publishers and recorder of one replay."""

    def __init__(self, streams: dict[str, _Stream], options: ReplayOptions,
                 domain_id: int | None, on_answer: Callable[[Any], None]) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

        self._rclpy = rclpy
        reliability = (ReliabilityPolicy.RELIABLE if options.qos == 'reliable'
                       else ReliabilityPolicy.BEST_EFFORT)
        qos = QoSProfile(depth=options.depth, history=HistoryPolicy.KEEP_LAST,
                         reliability=reliability, durability=DurabilityPolicy.VOLATILE)
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        try:
            self.node = rclpy.create_node(f'boq_ros_replay_{os.getpid()}', context=self.context,
                                          start_parameter_services=False)
            self.publishers = {
                topic: self.node.create_publisher(message_class(s.msgtype), s.topic, qos)
                for topic, s in streams.items()}
            self.clock = None
            if options.clock:
                from rosgraph_msgs.msg import Clock

                self._clock_msg = Clock()
                # Reliable, depth 1: matches reliable and best-effort /clock subscribers alike.
                clock_qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
                self.clock = self.node.create_publisher(Clock, '/clock', clock_qos)
            self.subscription = None
            if options.record_topic:
                # Reliable and deep: every answer of the node must reach the recorder.
                self.subscription = self.node.create_subscription(
                    message_class(CANDIDATE_TYPE), options.record_topic, on_answer,
                    QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE))
            self.executor = SingleThreadedExecutor(context=self.context)
            self.executor.add_node(self.node)
            self._thread = threading.Thread(target=self.executor.spin, daemon=True,
                                            name='boq_ros_replay_spin')
            self._thread.start()
        except BaseException:
            rclpy.shutdown(context=self.context)
            raise

    def publish_clock(self, bag_ns: int) -> None:
        if self.clock is not None:
            self._clock_msg.clock.sec, self._clock_msg.clock.nanosec = divmod(bag_ns, 10**9)
            self.clock.publish(self._clock_msg)

    def listened(self, topic: str) -> bool:
        """Whether some subscriber (the node) is matched to the bag topic's publisher."""
        return self.publishers[topic].get_subscription_count() > 0

    def subscriptions(self, topic: str) -> int:
        """Subscriptions of a live topic: matched ones if the replay publishes it, else seen."""
        for publisher in self.publishers.values():
            if publisher.topic_name == topic:
                return publisher.get_subscription_count()
        return self.node.count_subscribers(topic)

    def node_publishing(self) -> bool:
        return self.subscription is None or self.subscription.get_publisher_count() > 0

    def close(self) -> None:
        self.executor.shutdown()
        self._thread.join(timeout=5.0)
        self.node.destroy_node()
        self._rclpy.shutdown(context=self.context)


class NodeGone(ReplayError):
    """Raised when the node being replayed into stopped (reported by the caller's check)."""


class _Answers:
    """How often the node answered each query stamp, with a condition to wait on.

    Counted, not a set: synchronised cameras publish images with the same stamp, one answer each.
    """

    def __init__(self, recorder: CandidateRecorder,
                 sink: Callable[[list[CandidateRecord]], None] | None,
                 peer_alive: Callable[[], bool] | None) -> None:
        self._recorder = recorder
        self._sink = sink
        self._peer_alive = peer_alive
        self._cond = threading.Condition()
        self.stamps: Counter[int] = Counter()
        self.arrays = 0
        self.last_time = time.monotonic()
        self.error: BaseException | None = None

    def __call__(self, msg: Any) -> None:
        try:
            records = self._recorder.add(msg)
            if self._sink is not None:
                self._sink(records)
        except Exception as exc:  # surfaced in the main thread, never lost in the executor
            self.error = exc
        with self._cond:
            self.stamps[stamp_to_ns(msg.header.stamp)] += 1
            self.arrays += 1
            self.last_time = time.monotonic()
            self._cond.notify_all()

    def check(self) -> None:
        """Raise if recording failed or the node is gone."""
        if self.error is not None:
            raise ReplayError(f'cannot record an answer of the node: {self.error}')
        if self._peer_alive is not None and not self._peer_alive():
            raise NodeGone('the node stopped during the replay')

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until `predicate` holds (True) or `timeout` passes (False)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                self.check()
                left = deadline - time.monotonic()
                if left <= 0.0:
                    return False
                self._cond.wait(min(left, _POLL_S))
        return True

    def answered(self, expected: Counter[int]) -> int:
        """How many of the `expected` images (count per stamp) were answered."""
        with self._cond:  # the executor may still be adding answers
            return (expected & self.stamps).total()

    def wait_all(self, expected: Counter[int], idle_timeout: float) -> None:
        """Wait until every image is answered or no answer came for `idle_timeout` seconds."""
        with self._cond:
            while expected - self.stamps:
                self.check()
                left = self.last_time + idle_timeout - time.monotonic()
                if left <= 0.0:
                    return
                self._cond.wait(min(left, _POLL_S))


def replay(bag_path: str | os.PathLike, options: ReplayOptions = ReplayOptions(), *,
           domain_id: int | None = None,
           on_records: Callable[[list[CandidateRecord]], None] | None = None,
           peer_alive: Callable[[], bool] | None = None,
           progress: bool = True) -> tuple[ReplaySummary, list[CandidateRecord]]:
    """Publish the bag, record the node's answers, and return the summary and the records.

    `on_records` receives the records of each answer as it arrives (e.g. to append them to a
    file so a crash loses nothing). `peer_alive` lets a caller that started the node abort every
    wait as soon as the node died (NodeGone). Ctrl-C stops the replay and returns what was
    recorded, with ``summary.interrupted`` set.
    """
    options.validate()
    if not options.allow_network:
        try:
            check_dds_environment()
        except RuntimeError as exc:
            raise ReplayError(str(exc)) from None
    summary = ReplaySummary(recording=bool(options.record_topic))
    recorder = CandidateRecorder()
    answers = _Answers(recorder, on_records, peer_alive)
    with open_bag(bag_path) as bag:
        streams = _select_streams(bag.topics, options, summary)
        ros = _RosSide(streams, options, domain_id, answers)
        try:
            listened = _ready(ros, streams, options, answers)
            _publish(bag, ros, streams, listened, options, answers, summary, progress)
        except KeyboardInterrupt:
            summary.interrupted = True
        finally:
            ros.close()
    if answers.error is not None:
        raise ReplayError(f'cannot record an answer of the node: {answers.error}')
    summary.recorded = answers.arrays
    summary.records = len(recorder.records)
    summary.model_ids = list(recorder.model_ids)
    return summary, recorder.records


def _ready(ros: _RosSide, streams: dict[str, _Stream], options: ReplayOptions,
           answers: _Answers) -> set[str]:
    """Bounded wait for the node's endpoints; return the bag topics it subscribes to."""
    def ready() -> bool:
        return (ros.node_publishing() and any(ros.listened(t) for t in streams)
                and all(ros.subscriptions(t) >= n for t, n in options.listeners))

    if not answers.wait_for(ready, options.subscriber_timeout_s):
        waited = f'after {options.subscriber_timeout_s:.0f} s'
        if not ros.node_publishing():
            raise ReplayError(f'nothing publishes {options.record_topic} {waited}: is the node '
                              'running on this ROS_DOMAIN_ID?')
        for topic, count in options.listeners:
            if ros.subscriptions(topic) < count:
                raise ReplayError(f'{ros.subscriptions(topic)} of the {count} expected '
                                  f'subscriptions on {topic} {waited}')
        topics = ', '.join(s.topic for s in streams.values())
        raise ReplayError(f'nothing subscribes to any of {topics} {waited}: is the node '
                          'running on this ROS_DOMAIN_ID, with these topics?')
    # The node's other subscriptions (odometry, more cameras) get a short grace period to match.
    answers.wait_for(lambda: all(ros.listened(t) for t in streams), _GRACE_S)
    return {t for t in streams if ros.listened(t)}


def _publish(bag: Any, ros: _RosSide, streams: dict[str, _Stream], listened: set[str],
             options: ReplayOptions, answers: _Answers, summary: ReplaySummary,
             progress: bool) -> None:
    from tqdm import tqdm

    first_ns = bag.start_ns + int(round(options.start_offset_s * 1e9))
    expected: Counter[int] = Counter()  # images published per stamp
    wall_start = time.monotonic()
    anchor_wall, anchor_ns = wall_start, first_ns
    waited = False
    unanswered: tuple[int, int] | None = None  # lockstep: the last image published (stamp, n)
    last_ns = first_ns
    bar = tqdm(total=sum(bag.topics[t].count for t in streams), unit='msg', desc='replay',
               disable=not progress, leave=False)
    try:
        for message in bag.messages(list(streams)):
            bar.update(1)
            if message.log_time_ns < first_ns:
                continue
            answers.check()
            stream = streams[message.topic]
            image = stream.is_image and message.topic in listened
            if image and unanswered is not None:
                # Lockstep: the next image waits for the answer to the last one; the other
                # topics flow meanwhile (the node may need the odometry after an image).
                stamp, n = unanswered
                answers.wait_for(lambda s=stamp, n=n: answers.stamps[s] >= n,
                                 options.answer_timeout_s)
                unanswered, waited = None, True
            target = anchor_wall + (message.log_time_ns - anchor_ns) / 1e9 / options.rate
            delay = target - time.monotonic()
            if delay > 0.0:
                time.sleep(delay)
            elif waited:  # late because the node was slow, not this process: shift the schedule
                anchor_wall, anchor_ns = time.monotonic(), message.log_time_ns
            else:
                summary.max_lag_s = max(summary.max_lag_s, -delay)
            waited = False
            ros.publish_clock(message.log_time_ns)
            ros.publishers[message.topic].publish(message.raw)  # CDR as recorded
            summary.published[stream.topic] = summary.published.get(stream.topic, 0) + 1
            last_ns = message.log_time_ns
            if image:
                summary.images += 1
                if options.record_topic:
                    stamp = header_stamp_ns(message.raw)
                    expected[stamp] += 1
                    if options.lockstep:
                        unanswered = (stamp, expected[stamp])
                bar.set_postfix(answered=answers.arrays, refresh=False)
        if options.record_topic:
            answers.wait_all(expected, options.answer_timeout_s)
    finally:
        bar.close()
        summary.wall_s = time.monotonic() - wall_start
        summary.bag_s = max(0.0, (last_ns - first_ns) / 1e9)
        summary.answered = answers.answered(expected)
