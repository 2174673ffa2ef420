"""Benchmark of the loop-closure node over real DDS; prints a table.

    python benchmarks/bench_node.py                 # latency at 2 Hz, then a 120 s flood
    python benchmarks/bench_node.py --flood-s 20    # a shorter flood
    python benchmarks/bench_node.py --core-only --device cuda   # no ROS: forward + search

1. Bare pipeline in this process: model forward of one 640x480 frame, then the detector on a
   10k-keyframe map of synthetic unit descriptors (mode static, exact search).
2. The node (subprocess, mode static, that map, no odometry) with one camera at 2 Hz: latency
   from the publication of an image to the reception of its candidate array, p50/p99, the
   node's stage times (from its /diagnostics) and its overhead: p50 end to end over its own mean
   forward + search time, minus 1 (same process, same moment: robust on a shared machine).
3. Flood: 4 cameras at 30 Hz for --flood-s seconds; the node's memory (VmRSS) over time, latency
   of answered frames, and dropped frames (its keep-latest queues), from /diagnostics.

Weights are random (write_random_checkpoint): timings do not depend on their values. DDS stays on
this machine (boq_ros.ros.dds).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
import tempfile
import threading
import time
from typing import TYPE_CHECKING

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
              'map_directory': str(tmp / 'maps'), 'map_path': 'prebuilt', 'mode': 'static',
              'image_topics': [f'cam{i}/image' for i in range(4)], 'threshold': 0.9,
              'diagnostics_period_s': 1.0,
              'odometry_topic': ''}  # no odometry here: frames must not wait for a pose
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
        stages = {stage: np.nanmean([float(d[f'latency_{stage}_ms_mean'])
                                     for d in peer.history[first_status:]]) / 1e3
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
    parser.add_argument('--repeats', type=int, default=5, help='bare pipeline repetitions')
    parser.add_argument('--domain-id', type=int, default=None)
    parser.add_argument('--core-only', action='store_true', help='no ROS: model and search')
    args = parser.parse_args()
    # boq_ros.ros sets OMP_WAIT_POLICY=PASSIVE before torch and faiss load, as in the node (see
    # boq_ros/ros/__init__.py): the bare pipeline runs under the same condition.
    from boq_ros.extractor import Extractor
    from boq_ros.model import load_boq
    from boq_ros.model.checkpoint import write_random_checkpoint
    from boq_ros.preprocess import PreprocessConfig
    import boq_ros.ros  # noqa: F401

    rows: list[tuple[str, object]] = []
    with tempfile.TemporaryDirectory(prefix='bench_node_') as name:
        tmp = Path(name)
        ckpt = write_random_checkpoint(tmp / 'random.pth', 'resnet50-16384')
        extractor = Extractor(load_boq(ckpt), device=args.device, precision=args.precision,
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
        where = f'{extractor.device} {args.precision}, {args.width}x{args.height} -> ' \
                f'h{args.input_size}'
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
