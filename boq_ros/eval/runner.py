"""The offline evaluation: bag(s) -> keyframe descriptors -> the detector -> records -> metrics.

Frames go through the node's own :class:`boq_ros.pipeline.FramePipeline` (decoding, keyframe
selection, pose lookup, batching, description), so eval selects, describes and skips exactly
what the node would, and counts the skipped frames by cause. Loop closure (one bag): every
keyframe queries a map that grows with the run, through the same `LoopDetector` the node uses,
so its exclusion window applies. Place recognition (a map bag and a query bag): the map bag's
keyframes form a static map that the query bag's keyframes search. Descriptors are cached (see
`cache.py`), so a re-run with other thresholds or radii only repeats the search and the
metrics. Keyframes without ground truth (outside the trajectory's time range or in a gap of it)
take no part.

With verification on (``EvalSpec.verification``), the pipeline also computes each keyframe's
local features (cached with the descriptors), and the detector runs twice from the same
descriptors: appearance-only (no verifier, as with verification off) and verified (the node's
GeometricVerifier), so that one report shows what verification changes.
"""
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
import os
from pathlib import Path
import time
from typing import Any, Literal

import numpy as np
from tqdm import tqdm

from boq_ros import sources
from boq_ros.bags import open_bag
from boq_ros.detector import REJECTION_CAUSES, Detection, LoopDetector
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
from boq_ros.eval.records import (
    STATUS_VERIFIED,
    CandidateRecord,
    no_match_record,
    read_records,
    write_records,
)
from boq_ros.eval.trajectories import DriftStudy, plot_trajectories
from boq_ros.extractor import Extractor
from boq_ros.keyframe_map import KeyframeMap, KeyframeMeta, LocalFeatures
from boq_ros.model import BoQModel
from boq_ros.model.checkpoint import is_released
from boq_ros.pipeline import (
    SKIP_CAUSES,
    SKIPPED_AS,
    CameraInfoUpdate,
    DepthFrame,
    Frame,
    FramePipeline,
)
from boq_ros.preprocess import PreprocessConfig
from boq_ros.settings import (
    DetectorConfig,
    KeyframePolicy,
    ModelSettings,
    PipelineConfig,
    PoseGraphSettings,
    VerificationSettings,
)
from boq_ros.trajectory import Trajectory
from boq_ros.verification import GeometricVerifier
from boq_ros.verification.verifier import xyz_quaternion

STAGES = ('read', 'decode', 'describe', 'search')
"""The stages of ``boq_ros.pipeline.STAGES`` an appearance-only run times, in report order."""
VERIFIED_STAGES = ('read', 'decode', 'describe', 'features', 'search', 'verify')
"""Those of a verified run: plus local features and verification (not counted in search)."""

class EvalInputError(ValueError):
    """Raised for evaluation inputs that cannot work together (topics, ground truth, sessions)."""


class NoUsableFrameError(EvalInputError):
    """Raised when a recording's image topic yields no keyframe; names the skip causes."""


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

    @property
    def needs_frames(self) -> bool:
        """KITTI without a times file: one pose per image frame, known only once read."""
        return self.file is not None and self.format == 'kitti' and self.kitti_times is None

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
    """One recording to describe: its image topic, its ground truth and its session name.

    With verification: `depth_topic` is the depth image aligned to the image topic (None: no
    depth, poses are then up to scale), `camera_info_topic` its intrinsics (None: the
    conventional ``.../camera_info`` beside the image topic when the bag has it; '': none, an
    uncalibrated camera).
    """

    path: Path
    image_topic: str
    ground_truth: GroundTruthSource
    session: str
    depth_topic: str | None = None
    camera_info_topic: str | None = None

    def camera_topics(self) -> tuple[dict[str, str] | None, dict[str, str] | None]:
        """Return the depth and camera_info arguments of ``sources.bag_frames``."""
        depth = {self.image_topic: self.depth_topic} if self.depth_topic else None
        info = None
        if self.camera_info_topic is not None:
            info = {self.image_topic: self.camera_info_topic} if self.camera_info_topic else {}
        return depth, info


@dataclass(frozen=True)
class EvalSpec:
    """Everything one `boq-ros eval` run needs, in the shared settings vocabulary.

    `input_sizes` is the resolution study: one run per model input size (each as
    ``ModelSettings.input_size``: 0 is the preset's default, else at least 16, rounded to the
    backbone's patch multiple); empty means ``model.input_size`` alone. The detector runs with
    at least max(recall_ks) candidates per query, so that every Recall@K is defined.
    `verification` on: every run is reported appearance-only and verified.
    """

    map_input: BagInput
    model: ModelSettings
    query_input: BagInput | None = None
    input_sizes: tuple[int, ...] = ()
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    keyframes: KeyframePolicy = field(default_factory=KeyframePolicy)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    verification: VerificationSettings = field(default_factory=VerificationSettings)
    cache_dir: Path | None = None
    use_cache: bool = True
    progress: bool = True
    odometry_topic: str | None = None  # the map bag's odometry: run the pose graph on it
    pose_graph: PoseGraphSettings = field(default_factory=PoseGraphSettings)

    def __post_init__(self) -> None:
        self.detector.validate()
        self.evaluation.validate()
        self.model_settings()  # refuses an input size below the minimum
        if self.keyframes.keyframe_mode == 'external':
            raise EvalInputError('keyframe mode external needs a SLAM system; offline use '
                                 'every_frame, interval or distance')
        for source in self.inputs:
            if self.keyframes.keyframe_mode == 'distance' and source.ground_truth.topic is None:
                raise EvalInputError(
                    'keyframe mode distance takes its poses from the pose topic of the bag, as '
                    'the node takes odometry: give --pose-topic')
        if self.odometry_topic is not None and self.query_input is not None:
            raise EvalInputError('the pose graph (--odometry-topic) corrects one run: give one '
                                 'bag, not --query-bag')
        if self.query_input is not None and self.query_input.session == self.map_input.session:
            raise EvalInputError(f'map and query sessions must differ, both are '
                                 f'{self.map_input.session!r}')

    @property
    def task(self) -> str:
        """'loop_closure' (one bag) or 'place_recognition' (map and query bags)."""
        return 'loop_closure' if self.query_input is None else 'place_recognition'

    @property
    def inputs(self) -> list[BagInput]:
        """The recordings described: the map bag, then the query bag if any."""
        return [self.map_input] + ([] if self.query_input is None else [self.query_input])

    def model_settings(self) -> list[ModelSettings]:
        """Return the model settings of each run of the study (SettingError if invalid)."""
        return [replace(self.model, input_size=size)
                for size in self.input_sizes or (self.model.input_size,)]

    def detector_config(self) -> DetectorConfig:
        """Return the detector as run: grow (one bag) or static (map and query bags).

        It proposes at least max(recall_ks) candidates, so that every Recall@K is defined.
        """
        return replace(self.detector, mode='grow' if self.query_input is None else 'static',
                       top_k=max(self.detector.top_k, *self.evaluation.recall_ks))


    @property
    def verifies(self) -> bool:
        """Whether the verified run is made (and local features computed)."""
        return self.verification.verification


@dataclass
class DescribedBag:
    """Keyframe descriptors of one bag at one preprocessing, with their true poses."""

    entry: CachedDescriptors
    cached: bool
    positions: np.ndarray
    valid: np.ndarray
    orientations: np.ndarray | None = None  # None: the ground truth has none


def _noting_stamps(frames: Iterable[Frame | DepthFrame | CameraInfoUpdate], stamps: list[int]
                   ) -> Iterator[Frame | DepthFrame | CameraInfoUpdate]:
    """Yield the frames, noting each image's stamp (KITTI ground truth: a pose per frame)."""
    for frame in frames:
        if isinstance(frame, Frame):
            stamps.append(frame.stamp_ns)
        yield frame


def describe_bag(source: BagInput, extractor: Extractor, keyframes: KeyframePolicy,
                 config: PipelineConfig | None = None, progress: bool = False,
                 verification: VerificationSettings | None = None) -> CachedDescriptors:
    """Describe the keyframes of a bag's image topic with the node's frame pipeline.

    Distance keyframes take their poses from the ground-truth pose topic, fed as the bag clock
    passes them, as odometry reaches the node. With `verification` on, the keyframes' local
    features too (with the source's depth and camera_info topics). NoUsableFrameError when no
    keyframe results.
    """
    verifier = (GeometricVerifier(verification)
                if verification is not None and verification.verification else None)
    first_skip: list[str] = []

    def on_skip(cause: str, message: str) -> None:
        if not first_skip:
            first_skip.append(message)

    frame_stamps: list[int] = []
    keyframes_out = []
    with open_bag(source.path) as bag:
        poses, track = None, None
        if keyframes.keyframe_mode == 'distance':
            track = sources.pose_topic(bag, source.ground_truth.topic,
                                       source.ground_truth.child_frame)
            poses = track.buffer(keyframes.pose_tolerance_s)
        pipeline = FramePipeline(extractor, keyframes, config, session=source.session,
                                 poses=poses, on_skip=on_skip, verifier=verifier)
        depth, info = source.camera_topics() if verifier is not None else (None, {})
        frames = _noting_stamps(sources.bag_frames(bag, [source.image_topic], depth, info),
                                frame_stamps)
        info = bag.topics.get(source.image_topic)
        with tqdm(total=info.count if info else None, unit='frame', disable=not progress,
                  desc=f'{source.path.name} @ {extractor.preprocess_config.size} px') as bar:
            for batch in pipeline.run(frames, track.poses if track else (), on_frame=bar.update):
                keyframes_out += batch
    skipped = pipeline.stats.skipped()
    if not keyframes_out:
        causes = ''.join(f', {n} {SKIPPED_AS[c]}' for c, n in skipped.items() if n)
        raise NoUsableFrameError(
            f'no usable frame on {source.image_topic} in {source.path.name}: '
            f'{len(frame_stamps)} frames{causes}'
            + (f' (first: {first_skip[0]})' if first_skip else ''))
    stages = VERIFIED_STAGES if verifier is not None else STAGES
    totals = pipeline.stats.totals
    return CachedDescriptors(
        np.stack([kf.descriptor for kf in keyframes_out]).astype(np.float32, copy=False),
        np.array([kf.meta.stamp_ns for kf in keyframes_out], np.int64),
        [kf.frame.frame_id for kf in keyframes_out], np.array(frame_stamps, np.int64),
        {stage: pipeline.stats.seconds[stage] for stage in stages
         if stage not in ('search', 'verify')},
        skipped, None if verifier is None else [kf.features for kf in keyframes_out],
        {} if verifier is None else {name: totals.get(name, 0)
                                     for name in ('feature_errors', 'depth_errors')})


def _describe_cached(source: BagInput, extractor: Extractor, spec: EvalSpec,
                     cache: DescriptorCache | None) -> DescribedBag:
    """Describe a bag (from the cache when possible) and look up its keyframes' true positions."""
    trajectory = None
    if not source.ground_truth.needs_frames:  # ground-truth errors before the slow part
        trajectory = source.ground_truth.load(source.path, np.zeros(0, np.int64))
    distance = spec.keyframes.keyframe_mode == 'distance'
    v = spec.verification
    parts = {'bag': bag_identity(source.path), 'topic': source.image_topic,
             'model_id': extractor.model_id, 'preprocess': extractor.preprocess_config.to_dict(),
             'precision': extractor.precision, 'keyframes': asdict(spec.keyframes),
             'keyframe_poses': source.ground_truth.describe() if distance else None,
             'max_image_pixels': spec.pipeline.max_image_pixels,
             'features': {'feature_kind': v.feature_kind, 'max_keypoints': v.max_keypoints,
                          'depth_range_m': list(v.depth_range_m),
                          'feature_device': v.feature_device,
                          'depth_topic': source.depth_topic,
                          'camera_info_topic': source.camera_info_topic,
                          'depth_stamp_tolerance_s': spec.pipeline.depth_stamp_tolerance_s}
             if spec.verifies else None}
    key = cache_key(parts)
    entry = cache.load(key) if cache is not None else None
    cached = entry is not None
    if entry is None:
        entry = describe_bag(source, extractor, spec.keyframes, spec.pipeline, spec.progress,
                             spec.verification)
        if cache is not None:
            cache.store(key, entry, parts)
    if trajectory is None:
        trajectory = source.ground_truth.load(source.path, entry.frame_stamps_ns)
    positions, orientations, valid = trajectory.interpolate(entry.stamps_ns)
    if not valid.any():
        raise EvalInputError(
            f'none of the {len(valid)} keyframes on {source.image_topic} in {source.path.name} '
            f'has ground truth ({source.ground_truth.describe()}): their stamps are outside the '
            'trajectory or in its gaps')
    return DescribedBag(entry, cached, positions, valid, orientations)


def records_from_detection(detection: Detection) -> list[CandidateRecord]:
    """Candidate records of one decision, as the replay recorder makes them from messages.

    The accepted record is that of ``detection.match`` (the verified candidate at any rank, or
    the best one appearance-only); `relative_pose` is the verified base-frame pose if any.
    """
    q = detection.query
    if not detection.candidates:
        return [no_match_record(q.id, q.stamp_ns, q.session, q.camera, q.seq)]
    match = detection.match
    records = []
    for c in detection.candidates:
        v = c.verification
        pose = cov = None
        if v is not None and v.verified and v.relative_pose_base is not None:
            pose = xyz_quaternion(v.relative_pose_base)
            if v.covariance_base is not None:
                cov = tuple(float(x) for x in np.asarray(v.covariance_base).reshape(36))
        records.append(CandidateRecord(
            query_id=q.id, query_stamp_ns=q.stamp_ns, query_session=q.session,
            query_camera=q.camera, query_seq=q.seq, match_id=c.keyframe_id,
            match_stamp_ns=c.meta.stamp_ns, match_session=c.meta.session, match_seq=c.meta.seq,
            similarity=float(c.similarity), rank=c.rank, accepted=c is match,
            status=int(c.status), inliers=0 if v is None else int(v.inliers),
            pose_kind=0 if v is None else int(v.pose_kind), relative_pose=pose, covariance=cov))
    return records


def _metas(described: DescribedBag, source: BagInput) -> list[KeyframeMeta]:
    entry = described.entry
    return [KeyframeMeta(stamp_ns=int(entry.stamps_ns[i]), session=source.session,
                         camera=source.image_topic, frame_id=entry.frame_ids[i])
            for i in np.flatnonzero(described.valid)]


def _features(described: DescribedBag) -> list[LocalFeatures | None] | None:
    features = described.entry.features
    if features is None:
        return None
    return [features[i] for i in np.flatnonzero(described.valid)]


def _positions(described: DescribedBag, session: str) -> KeyframePositions:
    rows = np.flatnonzero(described.valid)
    quats = None if described.orientations is None else described.orientations[rows]
    return KeyframePositions((session,) * len(rows), described.entry.stamps_ns[rows],
                             np.arange(len(rows)), described.positions[rows], quats)


def _detect(detector: LoopDetector, descriptors: np.ndarray, metas: list[KeyframeMeta],
            features: list[LocalFeatures | None] | None, progress: bool, desc: str = 'search',
            step: int = 512) -> list[Detection]:
    """Run the detector over a whole recording, with a progress bar (same result as one call)."""
    detections: list[Detection] = []
    with tqdm(total=len(metas), unit='keyframe', desc=desc, disable=not progress) as bar:
        for start in range(0, len(metas), step):
            detections += detector.process_batch(
                descriptors[start:start + step], metas[start:start + step],
                None if features is None else features[start:start + step])
            bar.update(min(step, len(metas) - start))
    return detections


@dataclass
class RunOutcome:
    """One evaluated configuration (one input size): what the report and plots need.

    With verification, `verified` is the verified run from the same descriptors (its own label,
    records, result and summary; the same ground truth and descriptors); None otherwise.
    """

    label: str
    preprocess: PreprocessConfig
    records: list[CandidateRecord]
    result: EvalResult
    ground_truth: GroundTruth
    map_descriptors: np.ndarray
    query_descriptors: np.ndarray
    summary: dict[str, Any]
    verified: 'RunOutcome | None' = None

    @property
    def runs(self) -> list['RunOutcome']:
        """Return the appearance-only run, then the verified one if any (report order)."""
        return [self] if self.verified is None else [self, self.verified]


@dataclass
class _Search:
    """One detector pass over the queries."""

    detections: list[Detection]
    search_s: float  # detector time, verification excluded
    verify_s: float


def _search(spec: EvalSpec, extractor: Extractor, map_desc: np.ndarray,
            map_metas: list[KeyframeMeta], map_features: list[LocalFeatures | None] | None,
            queries: tuple[np.ndarray, list[KeyframeMeta], list[LocalFeatures | None] | None]
            | None, verify: bool) -> _Search:
    """Run the detector over the queries (None: the map run queries the map it grows)."""
    kmap = KeyframeMap(extractor.dim, model_id=extractor.model_id,
                       preprocess=extractor.preprocess_config.to_dict())
    verifier = GeometricVerifier(spec.verification, kmap) if verify else None
    detector = LoopDetector(kmap, spec.detector_config(), verifier)
    if queries is None:  # loop closure: the recording queries the map it grows
        queries = (map_desc, map_metas, map_features)
    else:  # place recognition: the map run is a static map (not timed: no search)
        kmap.add(map_desc, map_metas, map_features if verify else None)
    descs, metas, features = queries
    start = time.perf_counter()
    detections = _detect(detector, descs, metas, features if verify else None, spec.progress,
                         'verify' if verify else 'search')
    total = time.perf_counter() - start
    verify_s = sum(c.verification.seconds for d in detections for c in d.candidates
                   if c.verification is not None)
    return _Search(detections, max(total - verify_s, 0.0), verify_s)


def _spread_ms(seconds: list[float]) -> dict[str, float | None]:
    if not seconds:
        return {'median': None, 'p90': None}
    values = 1000 * np.array(seconds)
    return {'median': float(np.median(values)), 'p90': float(np.percentile(values, 90))}


def verification_summary(detections: list[Detection], settings: VerificationSettings,
                         inputs: list[DescribedBag]) -> dict[str, Any]:
    """Say what verification did: candidates tried, rejections by cause, time, features."""
    rejected = dict.fromkeys(REJECTION_CAUSES, 0)
    tried = verified = 0
    per_query: list[float] = []
    for detection in detections:
        results = [c.verification for c in detection.candidates if c.verification is not None]
        if not results:
            continue
        per_query.append(sum(v.seconds for v in results))
        for v in results:
            tried += 1
            if v.verified:
                verified += 1
            else:
                rejected[v.cause] = rejected.get(v.cause, 0) + 1
    features = [f for d in inputs for f in (d.entry.features or [])]
    notes: dict[str, int] = {}
    for described in inputs:
        for name, count in described.entry.feature_notes.items():
            notes[name] = notes.get(name, 0) + count
    return {
        'feature_kind': settings.feature_kind, 'queries_verified': len(per_query),
        'candidates_tried': tried, 'candidates_verified': verified,
        'rejected_by_cause': rejected, 'ms_per_query': _spread_ms(per_query),
        'keyframes_with_features': sum(f is not None for f in features),
        'keyframes_calibrated': sum(f is not None and f.intrinsics is not None
                                    for f in features),
        'keyframes_with_depth': sum(f is not None and f.depth is not None for f in features),
        'feature_errors': notes.get('feature_errors', 0),
        'depth_errors': notes.get('depth_errors', 0),
    }


def run_once(spec: EvalSpec, extractor: Extractor,
             cache: DescriptorCache | None) -> RunOutcome:
    """Describe, detect and evaluate at the extractor's preprocessing.

    With verification on, the detector runs twice from the same descriptors: the returned
    outcome is appearance-only, its `verified` the verified run.
    """
    described_map = _describe_cached(spec.map_input, extractor, spec, cache)
    described_query = (described_map if spec.query_input is None
                       else _describe_cached(spec.query_input, extractor, spec, cache))
    map_desc = described_map.entry.descriptors[described_map.valid]
    map_metas = _metas(described_map, spec.map_input)
    map_features = _features(described_map)
    queries = None
    if spec.query_input is None:
        query_desc = map_desc
        gt_map = gt_query = _positions(described_map, spec.map_input.session)
        inputs = [described_map]
    else:
        query_desc = described_query.entry.descriptors[described_query.valid]
        queries = (query_desc, _metas(described_query, spec.query_input),
                   _features(described_query))
        gt_map = _positions(described_map, spec.map_input.session)
        gt_query = _positions(described_query, spec.query_input.session)
        inputs = [described_map, described_query]
    ground_truth = GroundTruth(gt_map, gt_query, spec.detector.exclusion_seconds,
                               spec.detector.exclusion_keyframes)
    # Stage timings are those measured when the descriptors were computed (stored with them in
    # the cache), so that a re-run from the cache still reports the pipeline's throughput.
    measured: dict[str, float] = {}
    skipped = dict.fromkeys(SKIP_CAUSES, 0)
    for described in inputs:
        for stage, seconds in described.entry.timings_s.items():
            measured[stage] = measured.get(stage, 0.0) + seconds
        for cause, count in described.entry.skipped.items():
            skipped[cause] = skipped.get(cause, 0) + count
    pre = extractor.preprocess_config
    common = {
        'preprocess': pre.to_dict(), 'frames': sum(d.entry.frames for d in inputs),
        'keyframes': sum(len(d.entry.stamps_ns) for d in inputs), 'skipped': skipped,
        'keyframes_without_ground_truth': int(sum((~d.valid).sum() for d in inputs)),
        'cached': all(d.cached for d in inputs),
    }

    def outcome(label: str, search: _Search, stages: tuple[str, ...],
                pr_score: str) -> RunOutcome:
        records = [r for d in search.detections for r in records_from_detection(d)]
        result = evaluate(records, ground_truth, spec.evaluation, pr_score)
        timings = {stage: measured.get(stage, 0.0) for stage in stages}
        timings['search'] = search.search_s
        if 'verify' in timings:
            timings['verify'] = search.verify_s
        total = sum(timings.values())
        frames = common['frames']
        summary = {'label': label, **common, 'timings_s': timings,
                   'frames_per_s': frames / total if total > 0 else None,
                   'verification': None, 'metrics': result.to_dict()}
        return RunOutcome(label, pre, records, result, ground_truth, map_desc, query_desc,
                          summary)

    label = f'{pre.policy} {pre.size} px'
    appearance = outcome(label, _search(spec, extractor, map_desc, map_metas, map_features,
                                        queries, verify=False), STAGES, 'similarity')
    if spec.verifies:
        search = _search(spec, extractor, map_desc, map_metas, map_features, queries,
                         verify=True)
        verified = outcome(f'{label} + {spec.verification.feature_kind}', search,
                           VERIFIED_STAGES, 'inliers')
        verified.summary['verification'] = verification_summary(search.detections,
                                                                spec.verification, inputs)
        appearance.verified = verified
    return appearance


def _extractors(spec: EvalSpec, model: BoQModel) -> list[Extractor]:
    """One extractor per distinct preprocessing of the resolution study."""
    extractors: dict[PreprocessConfig, Extractor] = {}
    for settings in spec.model_settings():
        pre = settings.preprocess_for(model.config.name)
        if pre not in extractors:
            extractors[pre] = settings.extractor(model, spec.pipeline.batch_size)
    return list(extractors.values())


def run_evaluation(spec: EvalSpec, out_dir: str | os.PathLike,
                   model: BoQModel | None = None) -> dict[str, Any]:
    """Evaluate at each input size; write report.json, summary.md, records and plots.

    Everything is computed before `out_dir` is written, and written beside it first: a failed
    evaluation leaves no (empty or partial) `out_dir`.
    """
    model = model or spec.model.load()
    cache = (DescriptorCache(spec.cache_dir or default_cache_dir()) if spec.use_cache
             else None)
    extractors = _extractors(spec, model)
    outcomes = [run_once(spec, extractor, cache) for extractor in extractors]
    several = len(outcomes) > 1
    runs: list[RunOutcome] = []
    files: list[str] = []
    with report_mod.staged_output(out_dir) as out:
        plots = ['pr_curve.png']
        for outcome in outcomes:
            suffix = f'_{outcome.preprocess.size}' if several else ''
            title = f'{model.model_id}, {outcome.label}'
            report_mod.plot_similarity_matrix(out / f'similarity{suffix}.png',
                                              outcome.query_descriptors,
                                              outcome.map_descriptors, title)
            plots.append(f'similarity{suffix}.png')
            for run in outcome.runs:
                name = suffix + ('_verified' if run is outcome.verified else '')
                write_records(out / f'records{name}.jsonl', run.records)
                files.append(f'records{name}.jsonl')
                report_mod.plot_trajectory(out / f'trajectory{name}.png', run.ground_truth,
                                           run.result,
                                           f'{model.model_id}, {run.label}: accepted loops '
                                           f'(threshold {spec.detector.threshold:g})')
                plots.append(f'trajectory{name}.png')
                runs.append(run)
        report_mod.plot_pr_curves(out / 'pr_curve.png', [(r.label, r.result) for r in runs])
        extra = {}
        if spec.odometry_topic is not None:
            verified = [(o.verified.label, o.verified.records) for o in outcomes
                        if o.verified is not None]
            extra['trajectories'] = _drift(spec.map_input, spec.odometry_topic, verified,
                                           spec.pose_graph, out / 'trajectories.png')
            plots.append('trajectories.png')
        detector = spec.detector_config()
        return report_mod.write_report(
            out, task=spec.task,
            inputs={
                'bag': str(spec.map_input.path),
                'query_bag': None if spec.query_input is None else str(spec.query_input.path),
                'image_topic': spec.map_input.image_topic,
                'ground_truth': spec.map_input.ground_truth.describe(),
                'map': _describe_input(spec.map_input),
                'query': None if spec.query_input is None else _describe_input(spec.query_input),
                'checkpoint': spec.model.checkpoint, 'model_id': model.model_id,
                'device': str(extractors[0].device), 'precision': spec.model.precision,
                'pipeline': asdict(spec.pipeline), 'keyframes': asdict(spec.keyframes),
                'verification': asdict(spec.verification),
                'random_weights': not is_released(model),
            },
            detector={**asdict(spec.detector), 'mode': detector.mode,
                      'candidates_per_query': detector.top_k},
            evaluation=spec.evaluation, runs=[r.summary for r in runs], plots=plots,
            files=files, extra=extra)


def _drift(source: BagInput, odometry_topic: str,
           runs: Sequence[tuple[str, Sequence[CandidateRecord]]], settings: PoseGraphSettings,
           plot: Path) -> dict[str, Any]:
    """Run the pose graph on each run's loops; score it and the odometry against ground truth.

    `runs` are (label, records) of verified runs (appearance-only loops carry no pose).
    """
    if not runs:
        raise EvalInputError('the pose graph (--odometry-topic) needs verified loops: leave '
                             'verification on')
    odometry = Trajectory.from_bag(source.path, odometry_topic)
    stamps = np.array(sorted({r.query_stamp_ns for r in runs[0][1]}), np.int64)
    ground_truth = source.ground_truth.load(source.path, stamps)
    studies = [DriftStudy(records, odometry, ground_truth) for _, records in runs]
    scores = [studies[0].odometry_score()] + [
        study.graph_score(f'pose graph, {label}', settings)
        for study, (label, _) in zip(studies, runs)]
    plot_trajectories(plot, studies[0].reference,
                      {s.label: s.ate for s in scores[:2]}, studies[0].edges(), scores[1].label)
    return {'scores': [s.to_dict() for s in scores], 'odometry_topic': odometry_topic,
            'alignment': 'SE(3) (Umeyama, no scale)', 'plot': plot.name}


def _describe_input(source: BagInput) -> dict[str, Any]:
    return {'path': str(source.path), 'image_topic': source.image_topic,
            'session': source.session, 'ground_truth': source.ground_truth.describe(),
            'depth_topic': source.depth_topic,
            'camera_info_topic': source.camera_info_topic}


def run_records_evaluation(records_path: str | os.PathLike, source: BagInput,
                           exclusion_seconds: float, exclusion_keyframes: int,
                           evaluation: EvalConfig, out_dir: str | os.PathLike,
                           odometry_topic: str | None = None,
                           pose_graph: PoseGraphSettings = PoseGraphSettings()
                           ) -> dict[str, Any]:
    """Evaluate recorded candidates (e.g. what the live node published during a replay).

    Ground truth comes from `source` (the replayed bag); the map is taken to be the keyframes
    the records mention (a map that grew during the recording). Records of a verifying node
    (a verified candidate, or inliers) are scored as a verified run: the PR curve over the
    accepted loops' inliers.
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
    if not len(ground_truth.queries):
        raise EvalInputError(f'none of the {len(records)} records of {records_path} names a '
                             f'keyframe with ground truth ({source.ground_truth.describe()})')
    verified = any(r.status == STATUS_VERIFIED or r.inliers > 0 for r in kept)
    result = evaluate(kept, ground_truth, evaluation, 'inliers' if verified else 'similarity')
    with report_mod.staged_output(out_dir) as out:
        plots = report_mod.plot_loop_closure(out, [('recorded', result)], ground_truth,
                                             f'{Path(records_path).name}: accepted loops')
        extra = {}
        if odometry_topic is not None:
            extra['trajectories'] = _drift(source, odometry_topic,
                                           [('recorded', records)], pose_graph,
                                           out / 'trajectories.png')
            plots.append('trajectories.png')
        return report_mod.write_report(
            out, task='loop_closure',
            inputs={'bag': str(source.path), 'query_bag': None, 'records': str(records_path),
                    'image_topic': '-', 'ground_truth': source.ground_truth.describe(),
                    'model_id': '(as recorded)'},
            detector={'exclusion_seconds': exclusion_seconds,
                      'exclusion_keyframes': exclusion_keyframes},
            evaluation=evaluation,
            runs=[{'label': 'recorded', 'frames': ground_truth.queries.stamps_ns.size,
                   'keyframes': ground_truth.queries.stamps_ns.size, 'skipped': None,
                   'records_without_ground_truth': dropped, 'cached': False, 'timings_s': {},
                   'frames_per_s': None, 'metrics': result.to_dict()}],
            plots=plots, extra=extra)

