"""Benchmark of the loop-closure node over real DDS; prints a table.

    python benchmarks/bench_node.py                 # latency at 2 Hz, then a 120 s flood
    python benchmarks/bench_node.py --flood-s 20    # a shorter flood
    python benchmarks/bench_node.py --core-only --device cuda   # no ROS: forward + search
    python benchmarks/bench_node.py --verification  # 2 Hz with geometric verification, per height

1. Bare pipeline in this process: model forward of one 640x480 frame, then the detector on a
   10k-keyframe map of synthetic unit descriptors (mode static, exact search).
2. The node (subprocess, mode static, that map, no odometry) with one camera at 2 Hz: latency
   from the publication of an image to the reception of its candidate array, p50/p99, the
   node's stage times (from its /diagnostics) and its overhead: p50 end to end over its own mean
   forward + search time, minus 1 (same process, same moment: robust on a shared machine).
3. Flood: 4 cameras at 30 Hz for --flood-s seconds; the node's memory (VmRSS) over time, latency
   of answered frames, and dropped frames (its keep-latest queues), from /diagnostics.
4. --verification (instead of 1-3): the node in grow mode with geometric verification at its
   defaults, one 640x480 camera with camera_info, aligned 16UC1 depth and odometry, driving two
   laps of the synthetic street (boq_ros.synth) paced at 2 Hz like a camera (not lock-step;
   queue_size 1 drops what the worker cannot keep up with). threshold -1 gives every query
   candidates to verify once past the exclusion window: the worst case. One node per model
   input height (--heights); a height sustains 2 Hz when no frame is lost or dropped and the
   p99 latency is below the 0.5 s frame period.

Weights are random (write_random_checkpoint): timings do not depend on their values. DDS stays on
this machine (boq_ros.ros.dds).
"""
from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
import tempfile
import threading
import time
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

if TYPE_CHECKING:
    from boq_ros.extractor import Extractor

S = 10**9


def percentile(values, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float('nan')


def ms(seconds: float) -> str:
    return f'{1e3 * seconds:.1f} ms'


def synthetic_map(extractor: Extractor, count: int, seed: int = 0):
    """A map of `count` random unit descriptors with poses, as if built by this model."""
    from boq_ros.keyframe_map import KeyframeMap, KeyframeMeta

    kmap = KeyframeMap(extractor.dim, model_id=extractor.model_id,
                       preprocess=extractor.preprocess_config.to_dict())
    rng = np.random.default_rng(seed)
    for start in range(0, count, 1000):
        n = min(1000, count - start)
        descs = rng.standard_normal((n, extractor.dim), dtype=np.float32)
        descs /= np.linalg.norm(descs, axis=1, keepdims=True)
        metas = [KeyframeMeta(stamp_ns=(start + i) * S // 10, session='prebuilt',
                              camera='/map_cam', pose=(float(start + i), 0.0, 0.0, 0, 0, 0, 1.0),
                              pose_frame='map') for i in range(n)]
        kmap.add(descs, metas)
    return kmap


def bare_pipeline(extractor: Extractor, kmap, frame: np.ndarray, repeats: int
                  ) -> dict[str, list[float]]:
    """Forward and detector times of the core alone (what the node wraps)."""
    from boq_ros.detector import DetectorConfig, LoopDetector
    from boq_ros.keyframe_map import KeyframeMeta

    detector = LoopDetector(kmap, DetectorConfig(mode='static', threshold=0.9))
    extractor.extract([frame], 'rgb8')  # warm-up
    times: dict[str, list[float]] = {'forward': [], 'search': [], 'forward x4': []}
    for i in range(repeats):
        t0 = time.perf_counter()
        desc = extractor.extract([frame], 'rgb8')[0]
        t1 = time.perf_counter()
        detector.process(desc, KeyframeMeta(stamp_ns=i, session='query'))
        t2 = time.perf_counter()
        extractor.extract([frame] * 4, 'rgb8')
        t3 = time.perf_counter()
        times['forward'].append(t1 - t0)
        times['search'].append(t2 - t1)
        times['forward x4'].append(t3 - t2)
    return times


def core_only(extractor: Extractor, frame: np.ndarray, keyframes: int, repeats: int
              ) -> dict[str, list[float]]:
    """Forward and exact search on the device, without the map module (no faiss needed).

    The search is what the map's torch backend does for index_device cuda: one matrix product
    of the query with every stored descriptor, then top-k.
    """
    import torch

    device = extractor.device
    db = torch.nn.functional.normalize(
        torch.randn(keyframes, extractor.dim, device=device), dim=1)
    times: dict[str, list[float]] = {'forward': [], 'search': [], 'forward x4': []}
    for i in range(repeats + 2):  # the first two are warm-up
        t0 = time.perf_counter()
        desc = extractor.extract([frame], 'rgb8')[0]
        t1 = time.perf_counter()
        query = torch.from_numpy(desc).to(device)
        (db @ query).topk(min(25, keyframes)).indices.cpu()
        t2 = time.perf_counter()
        extractor.extract([frame] * 4, 'rgb8')
        t3 = time.perf_counter()
        if i >= 2:
            times['forward'].append(t1 - t0)
            times['search'].append(t2 - t1)
            times['forward x4'].append(t3 - t2)
    return times


def rss_mb(pid: int) -> float:
    for line in Path(f'/proc/{pid}/status').read_text().splitlines():
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) / 1024
    return float('nan')


class Peer:
    """The test-side ROS node: camera publishers, candidate and diagnostics subscriptions."""

    def __init__(self, domain_id: int, cameras: int) -> None:
        from boq_ros.msg import LoopCandidateArray
        from diagnostic_msgs.msg import DiagnosticArray
        import rclpy
        from rclpy.executors import MultiThreadedExecutor
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import Image

        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node('bench_peer', context=self.context)
        self.cameras = [self.node.create_publisher(Image, f'/cam{i}/image',
                                                   qos_profile_sensor_data)
                        for i in range(cameras)]
        self.lock = threading.Lock()
        self.sent: dict[tuple[str, int], float] = {}
        self.latency: list[float] = []
        self.diagnostics: dict[str, str] = {}
        self.history: list[dict[str, str]] = []
        self.node.create_subscription(LoopCandidateArray, '/loop_candidates', self._answer, 1000)
        self.node.create_subscription(DiagnosticArray, '/diagnostics', self._diag, 10)
        self.executor = MultiThreadedExecutor(num_threads=2, context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _answer(self, msg) -> None:
        now = time.monotonic()
        key = (msg.query.camera, msg.query.stamp.sec * S + msg.query.stamp.nanosec)
        with self.lock:
            sent = self.sent.pop(key, None)
            if sent is not None:
                self.latency.append(now - sent)

    def _diag(self, msg) -> None:
        for status in msg.status:
            if status.name.startswith('/vpr_node:'):
                self.diagnostics = {kv.key: kv.value for kv in status.values}
                self.history.append(self.diagnostics)

    def publish(self, cam: int, msg, stamp_ns: int) -> None:
        msg.header.stamp.sec, msg.header.stamp.nanosec = stamp_ns // S, stamp_ns % S
        with self.lock:
            self.sent[(f'/cam{cam}/image', stamp_ns)] = time.monotonic()
        self.cameras[cam].publish(msg)

    def take_latency(self) -> list[float]:
        with self.lock:
            out, self.latency = self.latency, []
            self.sent.clear()
            return out

    def close(self) -> None:
        import rclpy

        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


def paced(rate_hz: float, duration_s: float):
    """Yield tick indices at `rate_hz` (sleeping between them) for `duration_s` seconds."""
    start = time.monotonic()
    for tick in range(int(rate_hz * duration_s)):
        delay = start + tick / rate_hz - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        yield tick


def wait_for(condition, timeout: float, what: str, proc) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise RuntimeError(f'the node exited ({proc.returncode}) while waiting for {what}')
        if time.monotonic() > deadline:
            raise RuntimeError(f'timed out waiting for {what}')
        time.sleep(0.05)


def stage_mean_s(history: list[dict[str, str]], stage: str) -> float:
    """Average a stage's per-window means over /diagnostics windows (empty windows: skipped)."""
    values = [float(d[f'latency_{stage}_ms_mean']) for d in history]
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) / 1e3 if values else float('nan')


def run_node(args, tmp: Path, ckpt: Path, frame: np.ndarray, rows: list) -> None:
    """Run phases 2 and 3 against a node subprocess, appending table rows."""
    from std_msgs.msg import Header

    from boq_ros.demo import NodeProcess, node_command, write_params_file
    from boq_ros.ros.convert import image_msg
    from boq_ros.ros.dds import safe_dds_environment
    from boq_ros.ros.node import STAGES

    stage_names = [s for s in STAGES if s != 'total']  # /diagnostics latency_<stage>_ms_mean

    domain = args.domain_id if args.domain_id is not None else os.getpid() % 100 + 1
    env = safe_dds_environment(domain, tmp / 'ros_log')
    os.environ.update(env)  # this process's peer too: loopback only, the 16 MiB SHM profile
    config = {'checkpoint': str(ckpt), 'device': args.device, 'input_size': args.input_size,
              'precision': args.precision, 'runtime': args.runtime,
              'map_directory': str(tmp / 'maps'), 'map_path': 'prebuilt', 'mode': 'static',
              'image_topics': [f'cam{i}/image' for i in range(4)], 'threshold': 0.9,
              'diagnostics_period_s': 1.0,
              'odometry_topic': '',  # no odometry here: frames must not wait for a pose
              'verification': False}  # retrieval alone (--verification measures verifying)
    node = NodeProcess(node_command(write_params_file(tmp / 'bench.yaml', config), 'vpr_node'),
                       env, tmp / 'node.log')
    proc = node.process
    peer = Peer(domain, 4)
    try:
        wait_for(lambda: all(p.get_subscription_count() for p in peer.cameras), 300,
                 'the node to subscribe', proc)
        msgs = [image_msg(frame, 'rgb8', Header(frame_id=f'cam{i}')) for i in range(4)]
        for tick in paced(1.0, 300.0):  # warm-up: until the node has answered a frame
            peer.publish(0, msgs[0], tick * S)
            if peer.latency:
                break
        time.sleep(3.0)
        peer.take_latency()
        first_status = len(peer.history)
        answered0 = int(peer.diagnostics.get('answered_total', 0))
        # 1. one camera at 2 Hz
        for tick in paced(2.0, args.latency_frames / 2.0):
            peer.publish(0, msgs[0], (1000 + tick) * S)
        time.sleep(5.0)  # let the last answers arrive before counting
        latency = peer.take_latency()
        answered = int(peer.diagnostics.get('answered_total', 0)) - answered0
        rows.append(('2 Hz, 1 camera: frames sent / answered (received; node answered_total)',
                     f'{args.latency_frames} / {len(latency)}; {answered}'))
        rows.append(('2 Hz, 1 camera: end-to-end p50 / p99',
                     f'{ms(percentile(latency, 50))} / {ms(percentile(latency, 99))}'))
        stages = {stage: stage_mean_s(peer.history[first_status:], stage)
                  for stage in stage_names}
        rows.append((f'2 Hz: node stages (mean) {"/".join(stage_names)}',
                     ' / '.join(ms(v) for v in stages.values())))
        core = stages['describe'] + stages['search']
        rows.append(('2 Hz: node overhead over its forward + search (p50 e2e)',
                     f'{100 * (percentile(latency, 50) / core - 1):+.1f} %'))
        if args.flood_s <= 0:
            return
        # 2. the flood
        drops0 = int(peer.diagnostics.get('queue_drops_total', 0))
        rss = []
        sent = 0
        for tick in paced(30.0, args.flood_s):
            for cam in range(4):
                peer.publish(cam, msgs[cam], (5000 * S) + tick * S // 30)
                sent += 1
            if tick % 30 == 0:
                rss.append(rss_mb(proc.pid))
        time.sleep(5.0)
        latency = peer.take_latency()
        diag = dict(peer.diagnostics)
        drops = int(diag.get('queue_drops_total', 0)) - drops0
        rows.append((f'flood 4 x 30 Hz, {args.flood_s:.0f} s: sent / answered / dropped',
                     f'{sent} / {len(latency)} / {drops}'))
        rows.append(('flood: latency p50 / p99 / max',
                     f'{ms(percentile(latency, 50))} / {ms(percentile(latency, 99))} / '
                     f'{ms(max(latency, default=float("nan")))}'))
        tenth = max(1, len(rss) // 10)
        rows.append(('flood: node RSS first / last 10 % / max',
                     f'{np.mean(rss[:tenth]):.0f} / {np.mean(rss[-tenth:]):.0f} / '
                     f'{max(rss):.0f} MiB'))
        rows.append(('flood: errors (decode/descriptor/map/internal)',
                     '/'.join(diag.get(f'{k}_errors_total', '?')
                              for k in ('decode', 'descriptor', 'map', 'internal'))))
        if proc.poll() is not None:
            raise RuntimeError(f'the node died during the flood: see {tmp / "node.log"}')
    finally:
        peer.close()
        node.stop(30)


RING_RADIUS_M = 20.0  # the synthetic street's track (boq_ros.synth.World.TRACK_RADIUS)
LAP2_OFFSET_M = 0.4  # the second lap runs this much further out: no pixel-identical revisits
FRAME_PERIOD_S = 0.5  # 2 Hz
WARMUP_FRAMES = 2  # answered lock-step before the drive (first forward, SIFT are slow once);
# they are views of the drive's first place and join the map like its frames
DRIVE_START_S = 5.0  # stamp of the first drive frame (the warm-up frames are stamped before)
VERIFICATION_STAGES = ('describe', 'features', 'search', 'verify')


class StreetFrame(NamedTuple):
    """Everything a camera and its robot publish for one view, built before timing starts."""

    stamp_ns: int
    lap: int  # 0 for the warm-up frames
    info: Any  # sensor_msgs/CameraInfo
    odometry: list  # nav_msgs/Odometry around the stamp
    depth: Any  # sensor_msgs/Image 16UC1, aligned to the image
    image: Any  # sensor_msgs/Image rgb8


def street_view(angle: float, offset: float) -> tuple[float, float, float]:
    """Return the camera (x, y, yaw) at `angle` on the ring, `offset` m outwards, facing along."""
    r = RING_RADIUS_M + offset
    return r * math.cos(angle), r * math.sin(angle), angle + math.pi / 2


def street_frame(world, size: tuple[int, int], stamp_ns: int, angle: float, offset: float,
                 lap: int) -> StreetFrame:
    """Render one view and build its messages (as test/test_node_verification.py does)."""
    from nav_msgs.msg import Odometry
    from sensor_msgs.msg import CameraInfo
    from std_msgs.msg import Header

    from boq_ros.ros.convert import image_msg
    from boq_ros.settings import VerificationSettings
    from boq_ros.synth import camera_intrinsics, camera_pose_world, depth_to_mm
    from boq_ros.verification.verifier import transform_from, xyz_quaternion

    def header(ns: int, frame_id: str) -> Header:
        h = Header(frame_id=frame_id)
        h.stamp.sec, h.stamp.nanosec = ns // S, ns % S
        return h

    view = street_view(angle, offset)
    rgb, depth_m = world.render(*view, size, with_depth=True)
    fx, fy, cx, cy = camera_intrinsics(size)
    info = CameraInfo(header=header(stamp_ns, 'camera'), width=size[0], height=size[1],
                      distortion_model='plumb_bob')
    info.k = [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0]
    info.d = [0.0] * 5
    # The base pose whose camera, at the node's default camera_in_base, is the rendered view.
    camera_in_base = transform_from(VerificationSettings().camera_in_base)
    pose = xyz_quaternion(camera_pose_world(*view) @ np.linalg.inv(camera_in_base))
    odometry = []
    for dt_ns in (-S // 50, 0, S // 50):  # around the stamp, as a 50 Hz stream gives
        msg = Odometry(header=header(stamp_ns + dt_ns, 'odom'), child_frame_id='base_link')
        p = msg.pose.pose
        (p.position.x, p.position.y, p.position.z, p.orientation.x, p.orientation.y,
         p.orientation.z, p.orientation.w) = pose
        odometry.append(msg)
    depth = image_msg(depth_to_mm(depth_m), '16UC1', header(stamp_ns, 'camera'))
    image = image_msg(rgb, 'rgb8', header(stamp_ns, 'camera'))
    return StreetFrame(stamp_ns, lap, info, odometry, depth, image)


def street_drive(size: tuple[int, int], lap_frames: int
                 ) -> tuple[list[StreetFrame], list[StreetFrame]]:
    """Return the warm-up frames (the first view) and two laps at 2 Hz, all rendered now."""
    from boq_ros.synth import World

    world = World(0)
    warmup = [street_frame(world, size, i * S // 2, 0.0, 0.0, 0) for i in range(WARMUP_FRAMES)]
    drive = []
    for lap, offset in ((1, 0.0), (2, LAP2_OFFSET_M)):
        for i in range(lap_frames):
            tick = (lap - 1) * lap_frames + i
            stamp_ns = round((DRIVE_START_S + tick * FRAME_PERIOD_S) * S)
            drive.append(street_frame(world, size, stamp_ns, 2 * math.pi * i / lap_frames,
                                      offset, lap))
    return warmup, drive


class StreetPeer(Peer):
    """The peer with camera_info, depth and odometry publishers beside the image."""

    def __init__(self, domain_id: int) -> None:
        self.accepted: list[int] = []  # query stamps of accepted loops (before any answer)
        super().__init__(domain_id, 1)
        from nav_msgs.msg import Odometry
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import CameraInfo, Image

        qos = qos_profile_sensor_data  # what the node subscribes with (input_qos sensor_data)
        self.info = self.node.create_publisher(CameraInfo, '/cam0/camera_info', qos)
        self.depth = self.node.create_publisher(Image, '/cam0/depth', qos)
        self.odometry = self.node.create_publisher(Odometry, '/odom', qos)

    def publishers(self) -> list:
        return [*self.cameras, self.info, self.depth, self.odometry]

    def _answer(self, msg) -> None:
        super()._answer(msg)
        if msg.accepted:
            with self.lock:
                self.accepted.append(msg.query.stamp.sec * S + msg.query.stamp.nanosec)

    def send(self, frame: StreetFrame, gap_s: float = 0.0) -> None:
        """Publish a view's camera_info, odometry and depth, then (after `gap_s`) its image."""
        self.info.publish(frame.info)
        for msg in frame.odometry:
            self.odometry.publish(msg)
        self.depth.publish(frame.depth)
        if gap_s:
            time.sleep(gap_s)
        self.publish(0, frame.image, frame.stamp_ns)


def wait_quiet(peer: Peer, quiet_s: float, timeout_s: float) -> None:
    """Wait until no answer arrived for `quiet_s`: the node has answered what it kept."""
    deadline = time.monotonic() + timeout_s
    count, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        with peer.lock:
            now_count = len(peer.latency)
        if now_count != count:
            count, since = now_count, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.1)


def run_verification_node(args, tmp: Path, ckpt: Path, height: int,
                          warmup: list[StreetFrame], drive: list[StreetFrame]) -> dict:
    """Drive the street past a fresh node at one model input height; return its table row."""
    from boq_ros.demo import NodeProcess, node_command, write_params_file
    from boq_ros.detector import REJECTION_CAUSES
    from boq_ros.ros.dds import safe_dds_environment

    domain = args.domain_id if args.domain_id is not None else os.getpid() % 100 + 1
    env = safe_dds_environment(domain, tmp / 'ros_log')
    os.environ.update(env)  # this process's peer too: loopback only, the 16 MiB SHM profile
    run_dir = tmp / f'h{height}'
    (run_dir / 'maps').mkdir(parents=True)
    config = {'checkpoint': str(ckpt), 'device': args.device, 'precision': args.precision,
              'runtime': args.runtime, 'resize_policy': 'height', 'input_size': height,
              'map_directory': str(run_dir / 'maps'), 'mode': 'grow', 'session': 'bench',
              'image_topics': ['/cam0/image'], 'depth_topics': ['/cam0/depth'],
              'odometry_topic': '/odom',  # camera_info: the default, /cam0/camera_info
              'threshold': -1.0, 'exclusion_seconds': 10.0, 'exclusion_keyframes': 10,
              'top_k': 10, 'diagnostics_period_s': 1.0}  # verification: the node's defaults
    node = NodeProcess(node_command(write_params_file(run_dir / 'bench.yaml', config),
                                    'vpr_node'), env, run_dir / 'node.log')
    proc = node.process
    peer = StreetPeer(domain)
    try:
        wait_for(lambda: all(p.get_subscription_count() for p in peer.publishers()), 300,
                 'the node to subscribe', proc)
        wait_for(lambda: peer.diagnostics.get('state') == 'active', 60,
                 'the node to be active', proc)
        time.sleep(1.0)  # the node's readers match ours a moment after ours match theirs
        for frame in warmup:  # lock-step, with camera_info and depth in before the image
            peer.send(frame, gap_s=0.2)
            wait_for(lambda: peer.latency, 120, 'a warm-up answer', proc)
            peer.take_latency()
        time.sleep(2 * float(config['diagnostics_period_s']))
        seen = len(peer.history)
        wait_for(lambda: len(peer.history) > seen, 10, 'a fresh /diagnostics status', proc)
        before = dict(peer.diagnostics)
        first_status = len(peer.history)
        with peer.lock:
            peer.accepted.clear()
        for tick in paced(1 / FRAME_PERIOD_S, len(drive) * FRAME_PERIOD_S):
            peer.send(drive[tick])
        wait_quiet(peer, quiet_s=3.0, timeout_s=60.0)
        seen = len(peer.history)  # two statuses later, the counters include the last answer
        wait_for(lambda: len(peer.history) > seen + 1, 10, 'the final /diagnostics', proc)
        if proc.poll() is not None:
            raise RuntimeError(f'the node died during the drive: see {run_dir / "node.log"}')
        latency = peer.take_latency()
        after = dict(peer.diagnostics)
        history = peer.history[first_status:]
        with peer.lock:
            accepted = list(peer.accepted)
    finally:
        peer.close()
        node.stop(30)

    def delta(key: str) -> int:
        return int(after.get(key, 0)) - int(before.get(key, 0))

    lap_of = {f.stamp_ns: f.lap for f in drive}
    verified = delta('verified_total')
    drops = delta('queue_drops_total')
    p99 = percentile(latency, 99)
    return {
        'height': height, 'sent': len(drive), 'received': delta('frames_total'),
        'answered': len(latency), 'drops': drops,
        'p50': percentile(latency, 50), 'p99': p99,
        'stages': {stage: stage_mean_s(history, stage) for stage in VERIFICATION_STAGES},
        'accepted': [sum(lap_of.get(s) == lap for s in accepted) for lap in (1, 2)],
        'verified': verified,
        'tried': verified + sum(delta(f'verification_{c}_total') for c in REJECTION_CAUSES),
        'errors': sum(delta(f'{k}_errors_total') for k in (
            'decode', 'descriptor', 'map', 'input', 'internal', 'feature', 'depth',
            'camera_info')),
        'sustains': drops == 0 and len(latency) == len(drive) and p99 < FRAME_PERIOD_S,
    }


def verification_table(rows: list[dict]) -> list[str]:
    """Format the per-height rows as one table, then the conclusion line."""
    head = ('input h', 'answered', 'recv', 'drops', 'e2e p50', 'e2e p99', 'describe',
            'features', 'search*', 'verify', 'accepted l1/l2', 'verified/tried', 'errors',
            '2 Hz')
    table = [head]
    for r in rows:
        table.append((
            str(r['height']), f'{r["answered"]}/{r["sent"]}', str(r['received']),
            str(r['drops']), ms(r['p50']), ms(r['p99']),
            *(ms(r['stages'][stage]) for stage in VERIFICATION_STAGES),
            '/'.join(map(str, r['accepted'])), f'{r["verified"]}/{r["tried"]}',
            str(r['errors']), 'yes' if r['sustains'] else 'no'))
    widths = [max(len(line[i]) for line in table) for i in range(len(head))]
    lines = ['  '.join(cell.rjust(w) for cell, w in zip(line, widths)) for line in table]
    lines.append("stage times: the node's means (/diagnostics) per keyframe, verify per query "
                 'that verified any candidate; *search includes verify (the detector verifies '
                 'while it decides)')
    lines.append('2 Hz: every frame answered, none dropped, p99 < 0.5 s (the frame period)')
    good = [r['height'] for r in rows if r['sustains']]
    lines.append(f'sustains 2 Hz at input height {max(good)}' if good else
                 'sustains 2 Hz at input height: none of '
                 + ' '.join(str(r['height']) for r in rows))
    return lines


def run_verification(args, tmp: Path, ckpt: Path) -> list[str]:
    """Run the verification scenario for every height in turn; return the printed lines."""
    size = (args.width, args.height)
    t0 = time.perf_counter()
    warmup, drive = street_drive(size, args.lap_frames)
    load = ' '.join(f'{v:.2f}' for v in os.getloadavg())
    lines = [f'verification at defaults, grow, threshold -1, top_k 10, {args.device}; '
             f'{size[0]}x{size[1]} camera, 2 laps x {args.lap_frames} frames at 2 Hz '
             f'(rendered in {time.perf_counter() - t0:.1f} s); load average {load}']
    rows = [run_verification_node(args, tmp, ckpt, height, warmup, drive)
            for height in args.heights]
    load = ' '.join(f'{v:.2f}' for v in os.getloadavg())
    return lines + verification_table(rows) + [f'load average at the end {load}']


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--keyframes', type=int, default=10_000)
    parser.add_argument('--latency-frames', type=int, default=40, help='frames sent at 2 Hz')
    parser.add_argument('--flood-s', type=float, default=120.0,
                        help='flood duration (0: no flood)')
    parser.add_argument('--width', type=int, default=640)
    parser.add_argument('--height', type=int, default=480)
    parser.add_argument('--input-size', type=int, default=384, help='model input height')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--precision', default='fp32', choices=('fp32', 'fp16', 'bf16'))
    parser.add_argument('--runtime', default='auto',
                        help="inference runtime (default auto, the node's default)")
    parser.add_argument('--repeats', type=int, default=5, help='bare pipeline repetitions')
    parser.add_argument('--domain-id', type=int, default=None)
    parser.add_argument('--core-only', action='store_true', help='no ROS: model and search')
    parser.add_argument('--verification', action='store_true',
                        help='only the node with geometric verification at 2 Hz, per height')
    parser.add_argument('--heights', type=int, nargs='+', default=[384, 256, 192],
                        help='model input heights of --verification (resize_policy height)')
    parser.add_argument('--lap-frames', type=int, default=60,
                        help='frames per lap of the street (--verification)')
    args = parser.parse_args()
    # Importing boq_ros sets OMP_WAIT_POLICY=PASSIVE before torch and faiss load, as in the node
    # (see boq_ros/__init__.py): the bare pipeline runs under the same condition.
    from boq_ros.extractor import Extractor
    from boq_ros.model import load_boq
    from boq_ros.model.checkpoint import write_random_checkpoint
    from boq_ros.preprocess import PreprocessConfig
    import boq_ros.ros  # noqa: F401

    if args.verification:
        with tempfile.TemporaryDirectory(prefix='bench_node_') as name:
            tmp = Path(name)
            ckpt = write_random_checkpoint(tmp / 'random.pth', 'resnet50-16384')
            print('\n'.join(run_verification(args, tmp, ckpt)))
        return
    rows: list[tuple[str, object]] = []
    with tempfile.TemporaryDirectory(prefix='bench_node_') as name:
        tmp = Path(name)
        ckpt = write_random_checkpoint(tmp / 'random.pth', 'resnet50-16384')
        extractor = Extractor(load_boq(ckpt), device=args.device, precision=args.precision,
                              runtime=args.runtime,
                              preprocess=PreprocessConfig('height', args.input_size))
        frame = np.random.default_rng(1).integers(0, 256, (args.height, args.width, 3),
                                                  dtype=np.uint8)
        if args.core_only:
            bare = core_only(extractor, frame, args.keyframes, args.repeats)
        else:
            t0 = time.perf_counter()
            kmap = synthetic_map(extractor, args.keyframes)
            rows.append((f'synthetic map: {args.keyframes} keyframes built in',
                         f'{time.perf_counter() - t0:.1f} s'))
            bare = bare_pipeline(extractor, kmap, frame, args.repeats)
        extractor.extract([frame], 'bgr8')  # export / compile / check before any timing
        where = f'{extractor.device} {args.runtime}: ' \
                f'{"; ".join(extractor.runtime_status().values()) or args.precision}, ' \
                f'{args.width}x{args.height} -> h{args.input_size}'
        for key, values in bare.items():
            what = f'{args.keyframes} keyframes, {extractor.device}' if key == 'search' else where
            rows.append((f'bare {key} p50 ({what})', ms(percentile(values, 50))))
        if not args.core_only:
            (tmp / 'maps').mkdir()
            kmap.save(tmp / 'maps' / 'prebuilt')
            del kmap, extractor
            run_node(args, tmp, ckpt, frame, rows)
    width = max(len(k) for k, _ in rows)
    print(f'{"measure":<{width}}  value')
    for key, value in rows:
        print(f'{key:<{width}}  {value}')


if __name__ == '__main__':
    main()
