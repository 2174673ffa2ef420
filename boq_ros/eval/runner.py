"""The offline evaluation: bag(s) -> keyframe descriptors -> the detector -> records -> metrics.

Loop closure (one bag): every keyframe queries a map that grows with the run, through the same
`LoopDetector` the node uses, so its exclusion window applies. Place recognition (a map bag and a
query bag): the map bag's keyframes form a static map that the query bag's keyframes search.
Descriptors are cached (see `cache.py`), so a re-run with other thresholds or radii only repeats
the search and the metrics. Keyframes without ground truth (outside the trajectory's time range
or in a gap of it) take no part.
"""
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
import os
from pathlib import Path
import time
from typing import Any, Literal

import numpy as np
from tqdm import tqdm

from boq_ros.bags import COMPRESSED_IMAGE_TYPE, IMAGE_TYPE, open_bag, stamp_to_ns
from boq_ros.detector import Detection, DetectorConfig, LoopDetector
from boq_ros.eval import report as report_mod
from boq_ros.eval.cache import (
    CachedDescriptors,
    DescriptorCache,
    bag_identity,
    cache_key,
    default_cache_dir,
)
from boq_ros.eval.groundtruth import GroundTruth, KeyframePositions, ground_truth_for_records
from boq_ros.eval.metrics import EvalConfig, EvalResult, evaluate
from boq_ros.eval.records import CandidateRecord, no_match_record, read_records, write_records
from boq_ros.extractor import Extractor
from boq_ros.images import decode_compressed, decode_image
from boq_ros.keyframe_map import KeyframeMap, KeyframeMeta
from boq_ros.keyframes import KeyframePolicy, KeyframeSelector
from boq_ros.model import BoQModel, load_boq
from boq_ros.preprocess import PreprocessConfig
from boq_ros.trajectory import Trajectory

STAGES = ('read', 'decode', 'model', 'search')


class EvalInputError(ValueError):
    """Raised for evaluation inputs that cannot work together (topics, ground truth, sessions)."""


@dataclass(frozen=True)
class GroundTruthSource:
    """Where true positions come from: a pose topic of the bag, or a TUM / KITTI file."""

    topic: str | None = None
    file: Path | None = None
    format: Literal['tum', 'kitti'] = 'tum'
    kitti_times: Path | None = None
    child_frame: str | None = None

    def __post_init__(self) -> None:
        if (self.topic is None) == (self.file is None):
            raise EvalInputError('ground truth needs exactly one of a topic or a file')
        if self.format not in ('tum', 'kitti'):
            raise EvalInputError(f'ground-truth format must be tum or kitti, got {self.format!r}')

    def describe(self) -> str:
        """Short human-readable origin, for reports."""
        if self.topic is not None:
            return f'topic {self.topic}'
        return f'{self.format} file {self.file}'

    def load(self, bag_path: Path, frame_stamps_ns: np.ndarray) -> Trajectory:
        """Load the trajectory; KITTI without a times file takes one pose per image frame."""
        if self.topic is not None:
            return Trajectory.from_bag(bag_path, self.topic, self.child_frame)
        if self.format == 'tum':
            return Trajectory.from_tum(self.file)
        return Trajectory.from_kitti(
            self.file, self.kitti_times if self.kitti_times is not None else frame_stamps_ns)


@dataclass(frozen=True)
class BagInput:
    """One recording to describe: its image topic, its ground truth and its session name."""

    path: Path
    image_topic: str
    ground_truth: GroundTruthSource
    session: str


@dataclass(frozen=True)
class EvalSpec:
    """Everything one `boq-ros eval` run needs, independent of the command line."""

    map_input: BagInput
    checkpoint: str
    query_input: BagInput | None = None
    backbone: str | None = None
    heights: tuple[int, ...] = ()
    policy: Literal['height', 'square'] = 'height'
    device: str = 'auto'
    precision: str = 'fp32'
    batch_size: int = 16
    keyframes: KeyframePolicy = field(default_factory=KeyframePolicy)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    cache_dir: Path | None = None
    use_cache: bool = True
    progress: bool = True
    random_weights: bool = False

    @property
    def task(self) -> str:
        """'loop_closure' (one bag) or 'place_recognition' (map and query bags)."""
        return 'loop_closure' if self.query_input is None else 'place_recognition'


@dataclass
class DescribedBag:
    """Keyframe descriptors of one bag at one preprocessing, with their true positions."""

    entry: CachedDescriptors
    cached: bool
    positions: np.ndarray
    valid: np.ndarray


def preprocess_configs(model: BoQModel, policy: str,
                       heights: Sequence[int]) -> list[PreprocessConfig]:
    """One preprocessing per requested height (the preset default when none is given).

    For DINOv2 a height is rounded to the nearest multiple of the 14-pixel patch.
    """
    base = PreprocessConfig.default_for(model.config.name, policy)
    if not heights:
        return [base]
    configs = []
    for height in heights:
        if isinstance(height, bool) or not isinstance(height, int) or height < 16:
            raise EvalInputError(f'heights must be integers >= 16, got {height!r}')
        size = max(1, round(height / base.multiple)) * base.multiple
        configs.append(PreprocessConfig(policy, size, base.multiple))
    return list(dict.fromkeys(configs))


def _timed(iterator: Iterator[Any], timings: dict[str, float], stage: str) -> Iterator[Any]:
    """Yield from `iterator`, adding the time spent inside it to timings[stage]."""
    while True:
        start = time.perf_counter()
        try:
            item = next(iterator)
        except StopIteration:
            timings[stage] += time.perf_counter() - start
            return
        timings[stage] += time.perf_counter() - start
        yield item


def decode_message(message: Any) -> tuple[np.ndarray, str, int, str]:
    """Decode a recorded Image / CompressedImage: (array, encoding, stamp_ns, frame_id)."""
    msg = message.decode()
    if message.msgtype == IMAGE_TYPE:
        array, encoding = decode_image(msg.encoding, msg.height, msg.width, msg.step, msg.data,
                                       bool(msg.is_bigendian))
    else:
        array, encoding = decode_compressed(msg.format, msg.data)
    return array, encoding, stamp_to_ns(msg.header.stamp), msg.header.frame_id


def describe_bag(source: BagInput, extractor: Extractor, policy: KeyframePolicy,
                 trajectory: Trajectory | None = None, progress: bool = False
                 ) -> CachedDescriptors:
    """Read, decode, select keyframes and describe them, timing each stage.

    A distance keyframe policy is fed the poses of `trajectory` as the bag clock passes them,
    as the node is fed odometry.
    """
    if policy.mode == 'external':
        raise EvalInputError('keyframe mode external needs a SLAM system; offline use '
                             'every_frame, interval or distance')
    if policy.mode == 'distance' and trajectory is None:
        raise EvalInputError('keyframe mode distance needs a trajectory (odometry)')
    timings = dict.fromkeys(('read', 'decode', 'model'), 0.0)
    with open_bag(source.path) as bag:
        info = bag.topics.get(source.image_topic)
        if info is None:
            raise EvalInputError(f'topic {source.image_topic!r} is not in {source.path} '
                                 f'(image topics: {", ".join(bag.image_topics()) or "none"})')
        if info.msgtype not in (IMAGE_TYPE, COMPRESSED_IMAGE_TYPE):
            raise EvalInputError(f'topic {source.image_topic!r} carries {info.msgtype}, '
                                 'not camera images')
        selector = KeyframeSelector(policy)
        fed = 0  # trajectory poses given to the selector so far
        tolerance_ns = int(policy.pose_tolerance_s * 1e9)
        images: list[np.ndarray] = []
        encodings: list[str] = []
        stamps: list[int] = []
        all_stamps: list[int] = []
        frame_ids: list[str] = []
        descriptors: list[np.ndarray] = []

        def flush() -> None:
            start = time.perf_counter()
            descriptors.append(extractor.extract(images, encodings))
            timings['model'] += time.perf_counter() - start
            images.clear()
            encodings.clear()

        messages = _timed(iter(bag.messages([source.image_topic])), timings, 'read')
        bar = tqdm(messages, total=info.count, unit='frame', disable=not progress,
                   desc=f'{source.path.name} @ {extractor.preprocess_config.size} px')
        for message in bar:
            start = time.perf_counter()
            try:
                array, encoding, stamp, frame_id = decode_message(message)
            except ValueError:
                timings['decode'] += time.perf_counter() - start
                continue  # a corrupt frame is skipped, as the node skips it
            timings['decode'] += time.perf_counter() - start
            all_stamps.append(stamp)
            if trajectory is not None and policy.mode == 'distance':
                while fed < len(trajectory) and trajectory.stamps_ns[fed] <= stamp + tolerance_ns:
                    orientation = (None if trajectory.orientations is None
                                   else trajectory.orientations[fed])
                    selector.update_pose(int(trajectory.stamps_ns[fed]),
                                         trajectory.positions[fed], orientation)
                    fed += 1
            if not selector.offer(stamp, source.image_topic):
                continue
            images.append(array)
            encodings.append(encoding)
            stamps.append(stamp)
            frame_ids.append(frame_id)
            if len(images) >= extractor.batch_size:
                flush()
        if images:
            flush()
    desc = (np.concatenate(descriptors) if descriptors
            else np.zeros((0, extractor.dim), np.float32))
    return CachedDescriptors(desc, np.asarray(stamps, np.int64), frame_ids,
                             np.asarray(all_stamps, np.int64), timings)


def _describe_cached(source: BagInput, extractor: Extractor, spec: EvalSpec,
                     cache: DescriptorCache | None) -> DescribedBag:
    """Describe a bag (from the cache when possible) and look up its keyframes' true positions."""
    trajectory = None
    if source.ground_truth.topic is not None or source.ground_truth.format == 'tum' or (
            source.ground_truth.kitti_times is not None):
        trajectory = source.ground_truth.load(source.path, np.zeros(0, np.int64))
    parts = {'bag': bag_identity(source.path), 'topic': source.image_topic,
             'model_id': extractor.model_id, 'preprocess': extractor.preprocess_config.to_dict(),
             'precision': extractor.precision, 'keyframes': asdict(spec.keyframes),
             'keyframe_odometry': (source.ground_truth.describe()
                                   if spec.keyframes.mode == 'distance' else None)}
    key = cache_key(parts)
    entry = cache.load(key) if cache is not None else None
    cached = entry is not None
    if entry is None:
        entry = describe_bag(source, extractor, spec.keyframes, trajectory, spec.progress)
        if cache is not None:
            cache.store(key, entry, parts)
    if trajectory is None:  # KITTI without a times file: one pose per image frame
        trajectory = source.ground_truth.load(source.path, entry.frame_stamps_ns)
    positions, _, valid = trajectory.interpolate(entry.stamps_ns)
    return DescribedBag(entry, cached, positions, valid)


def records_from_detection(detection: Detection) -> list[CandidateRecord]:
    """Candidate records of one decision, as the replay recorder makes them from messages."""
    q = detection.query
    if not detection.candidates:
        return [no_match_record(q.id, q.stamp_ns, q.session, q.camera, q.seq)]
    return [CandidateRecord(
        query_id=q.id, query_stamp_ns=q.stamp_ns, query_session=q.session, query_camera=q.camera,
        query_seq=q.seq, match_id=c.keyframe_id, match_stamp_ns=c.meta.stamp_ns,
        match_session=c.meta.session, match_seq=c.meta.seq, similarity=float(c.similarity),
        rank=c.rank, accepted=detection.accepted and c.rank == 0)
        for c in detection.candidates]


def _metas(described: DescribedBag, source: BagInput) -> list[KeyframeMeta]:
    entry = described.entry
    return [KeyframeMeta(stamp_ns=int(entry.stamps_ns[i]), session=source.session,
                         camera=source.image_topic, frame_id=entry.frame_ids[i])
            for i in np.flatnonzero(described.valid)]


def _positions(described: DescribedBag, session: str) -> KeyframePositions:
    rows = np.flatnonzero(described.valid)
    return KeyframePositions((session,) * len(rows), described.entry.stamps_ns[rows],
                             np.arange(len(rows)), described.positions[rows])


def _detect(detector: LoopDetector, descriptors: np.ndarray, metas: list[KeyframeMeta],
            progress: bool, step: int = 512) -> list[Detection]:
    """Run the detector over a whole recording, with a progress bar (same result as one call)."""
    detections: list[Detection] = []
    with tqdm(total=len(metas), unit='keyframe', desc='search', disable=not progress) as bar:
        for start in range(0, len(metas), step):
            detections += detector.process_batch(descriptors[start:start + step],
                                                 metas[start:start + step])
            bar.update(min(step, len(metas) - start))
    return detections


@dataclass
class RunOutcome:
    """One evaluated configuration (one inference height): what the report and plots need."""

    label: str
    preprocess: PreprocessConfig
    records: list[CandidateRecord]
    result: EvalResult
    ground_truth: GroundTruth
    map_descriptors: np.ndarray
    query_descriptors: np.ndarray
    summary: dict[str, Any]


def run_once(spec: EvalSpec, extractor: Extractor,
             cache: DescriptorCache | None) -> RunOutcome:
    """Describe, detect and evaluate at the extractor's preprocessing."""
    if spec.query_input is not None and spec.query_input.session == spec.map_input.session:
        raise EvalInputError(f'map and query sessions must differ, both are '
                             f'{spec.map_input.session!r}')
    described_map = _describe_cached(spec.map_input, extractor, spec, cache)
    described_query = (described_map if spec.query_input is None
                       else _describe_cached(spec.query_input, extractor, spec, cache))
    map_desc = described_map.entry.descriptors[described_map.valid]
    map_metas = _metas(described_map, spec.map_input)
    kmap = KeyframeMap(extractor.dim, model_id=extractor.model_id,
                       preprocess=extractor.preprocess_config.to_dict())
    start = time.perf_counter()
    if spec.query_input is None:
        detector = LoopDetector(kmap, replace(spec.detector, mode='grow'))
        detections = _detect(detector, map_desc, map_metas, spec.progress)
        query_desc = map_desc
        gt_map = gt_query = _positions(described_map, spec.map_input.session)
    else:
        if len(map_desc):
            kmap.add(map_desc, map_metas)
        detector = LoopDetector(kmap, replace(spec.detector, mode='static'))
        query_desc = described_query.entry.descriptors[described_query.valid]
        detections = _detect(detector, query_desc, _metas(described_query, spec.query_input),
                             spec.progress)
        gt_map = _positions(described_map, spec.map_input.session)
        gt_query = _positions(described_query, spec.query_input.session)
    search_s = time.perf_counter() - start
    records = [r for d in detections for r in records_from_detection(d)]
    ground_truth = GroundTruth(gt_map, gt_query, spec.detector.exclusion_seconds,
                               spec.detector.exclusion_keyframes)
    result = evaluate(records, ground_truth, spec.evaluation)
    inputs = [described_map] if spec.query_input is None else [described_map, described_query]
    # Stage timings are those measured when the descriptors were computed (stored with them in
    # the cache), so that a re-run from the cache still reports the pipeline's throughput.
    timings = dict.fromkeys(STAGES, 0.0)
    for described in inputs:
        for stage, seconds in described.entry.timings_s.items():
            timings[stage] += seconds
    timings['search'] = search_s
    frames = sum(d.entry.frames for d in inputs)
    keyframes = sum(len(d.entry.stamps_ns) for d in inputs)
    total = sum(timings.values())
    pre = extractor.preprocess_config
    label = f'{pre.policy} {pre.size} px'
    summary = {
        'label': label, 'preprocess': pre.to_dict(), 'frames': frames, 'keyframes': keyframes,
        'keyframes_without_ground_truth': int(sum((~d.valid).sum() for d in inputs)),
        'cached': all(d.cached for d in inputs),
        'timings_s': timings, 'frames_per_s': frames / total if total > 0 else None,
        'metrics': result.to_dict(),
    }
    return RunOutcome(label, pre, records, result, ground_truth, map_desc, query_desc, summary)


def run_evaluation(spec: EvalSpec, out_dir: str | os.PathLike,
                   model: BoQModel | None = None) -> dict[str, Any]:
    """Evaluate at each requested height; write report.json, summary.md, records and plots."""
    spec.detector.validate()
    spec.evaluation.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model or load_boq(spec.checkpoint, spec.backbone)
    cache = (DescriptorCache(spec.cache_dir or default_cache_dir()) if spec.use_cache
             else None)
    outcomes = []
    for pre in preprocess_configs(model, spec.policy, spec.heights):
        extractor = Extractor(model, device=spec.device, precision=spec.precision,
                              preprocess=pre, batch_size=spec.batch_size)
        outcomes.append(run_once(spec, extractor, cache))
    plots = []
    several = len(outcomes) > 1
    for outcome in outcomes:
        suffix = f'_{outcome.preprocess.size}' if several else ''
        write_records(out / f'records{suffix}.jsonl', outcome.records)
        title = f'{model.model_id}, {outcome.label}'
        report_mod.plot_similarity_matrix(out / f'similarity{suffix}.png',
                                          outcome.query_descriptors, outcome.map_descriptors,
                                          title)
        report_mod.plot_trajectory(out / f'trajectory{suffix}.png', outcome.ground_truth,
                                   outcome.result,
                                   f'{title}: accepted loops (threshold '
                                   f'{spec.detector.threshold:g})')
        plots += [f'similarity{suffix}.png', f'trajectory{suffix}.png']
    report_mod.plot_pr_curves(out / 'pr_curve.png',
                              [(o.label, o.result) for o in outcomes])
    plots.insert(0, 'pr_curve.png')

    def describe(source: BagInput | None) -> dict[str, Any] | None:
        if source is None:
            return None
        return {'path': str(source.path), 'image_topic': source.image_topic,
                'session': source.session, 'ground_truth': source.ground_truth.describe()}

    return report_mod.write_report(
        out, task=spec.task,
        inputs={
            'bag': str(spec.map_input.path),
            'query_bag': None if spec.query_input is None else str(spec.query_input.path),
            'image_topic': spec.map_input.image_topic,
            'ground_truth': spec.map_input.ground_truth.describe(),
            'map': describe(spec.map_input), 'query': describe(spec.query_input),
            'checkpoint': spec.checkpoint, 'model_id': model.model_id,
            'device': str(extractor.device), 'precision': spec.precision,
            'keyframes': asdict(spec.keyframes), 'random_weights': spec.random_weights,
        },
        detector={**asdict(spec.detector),
                  'mode': 'grow' if spec.query_input is None else 'static'},
        evaluation=spec.evaluation, runs=[o.summary for o in outcomes], plots=plots,
        files=[f'records_{o.preprocess.size}.jsonl' if several else 'records.jsonl'
               for o in outcomes])


def run_records_evaluation(records_path: str | os.PathLike, source: BagInput,
                           exclusion_seconds: float, exclusion_keyframes: int,
                           evaluation: EvalConfig, out_dir: str | os.PathLike
                           ) -> dict[str, Any]:
    """Evaluate recorded candidates (e.g. what the live node published during a replay).

    Ground truth comes from `source` (the replayed bag); the map is taken to be the keyframes
    the records mention (a map that grew during the recording).
    """
    evaluation.validate()
    records = read_records(records_path)
    if not records:
        raise EvalInputError(f'{records_path} holds no records')
    stamps = np.array(sorted({r.query_stamp_ns for r in records}), np.int64)
    trajectory = source.ground_truth.load(source.path, stamps)
    sessions = {r.query_session for r in records} | {r.match_session for r in records
                                                     if r.has_match}
    ground_truth, kept, dropped = ground_truth_for_records(
        records, dict.fromkeys(sessions, trajectory), exclusion_seconds, exclusion_keyframes)
    result = evaluate(kept, ground_truth, evaluation)
    plots = report_mod.plot_loop_closure(out_dir, [('recorded', result)], ground_truth,
                                         f'{Path(records_path).name}: accepted loops')
    return report_mod.write_report(
        out_dir, task='loop_closure',
        inputs={'bag': str(source.path), 'query_bag': None, 'records': str(records_path),
                'image_topic': '-', 'ground_truth': source.ground_truth.describe(),
                'model_id': '(as recorded)'},
        detector={'exclusion_seconds': exclusion_seconds,
                  'exclusion_keyframes': exclusion_keyframes},
        evaluation=evaluation,
        runs=[{'label': 'recorded', 'frames': ground_truth.queries.stamps_ns.size,
               'keyframes': ground_truth.queries.stamps_ns.size,
               'records_without_ground_truth': dropped, 'cached': False, 'timings_s': {},
               'frames_per_s': None, 'metrics': result.to_dict()}],
        plots=plots)
