"""The main job's pieces that need no ROS: recording, weights, node settings, process, agreement.

`boq-ros demo` generates (or reuses) a recording with ground truth, starts the loop-closure node
as a separate process on loopback-only DDS, replays the recording into it and evaluates what the
node published with the offline metrics. Everything here is ROS-free so it is testable on its
own; the DDS side is `boq_ros.ros.replay`.

With the loop-closure node runs the reference backend (`pose_graph_node`): the recording's
odometry drifts, and `drift_correction` scores the odometry and the backend's optimised keyframe
trajectory against the exact ground truth stored beside it (ATE, RPE), with a plot.

`compare_records` is the proof that the live node behaves like the offline pipeline: the same
queries, the same candidates, the same similarities (to a float tolerance) and acceptance.
"""
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
import hashlib
import json
import os
from pathlib import Path
import shutil
import signal
import subprocess
import sys
from typing import TYPE_CHECKING, Any, Literal

import yaml

from boq_ros.eval.groundtruth import GroundTruth
from boq_ros.eval.metrics import EvalConfig, EvalResult
from boq_ros.eval.records import CandidateRecord
from boq_ros.eval.trajectories import TrajectoryScore
from boq_ros.settings import (
    DetectorConfig,
    KeyframePolicy,
    ModelSettings,
    PoseGraphSettings,
    VerificationSettings,
)
from boq_ros.trajectory import Trajectory

if TYPE_CHECKING:  # torch: imported only where the model runs (the tests' conftest uses this)
    from boq_ros.model import BoQModel

SESSION = 'demo'
IMAGE_TOPIC = '/camera/image_raw'
CAMERA_INFO_TOPIC = '/camera/camera_info'
DEPTH_TOPIC = '/camera/depth/image_raw'
ODOM_TOPIC = '/odom'  # drifting odometry (synth.DEMO_DRIFT)
GROUND_TRUTH_TOPIC = '/ground_truth/odom'
CANDIDATE_TOPIC = '/loop_candidates'
NODE_NAME = 'boq_demo_node'
BACKEND_NAME = 'boq_demo_pose_graph'
WRONG_LOOP_FRACTION = 0.1  # the robustness row: this share of the loops made wrong
_RECORDING_VERSION = 3  # bump when the generator's output for the same parameters changes

RANDOM_WEIGHTS_NOTE = (
    'The model runs with RANDOMLY INITIALISED weights: no released BoQ checkpoint was given '
    '(--checkpoint) or found in the torch hub cache. Random BoQ descriptors are nearly parallel '
    '(cosine similarity 0.998-0.999 between any two images), so the numbers below show that '
    'the pipeline works end to end (camera -> DDS -> node -> candidates -> evaluation), not how '
    'well BoQ recognises places. For real numbers: `boq-ros weights download --preset '
    '{preset}`, or `boq-ros demo --checkpoint PATH`.')


class DemoError(ValueError):
    """Raised when the demo cannot run as asked (names the cause)."""


@dataclass(frozen=True)
class DemoRecording:
    """Parameters of the generated demo recording; equal parameters reuse the same files."""

    frames: int = 300  # all laps together
    laps: int = 3
    image_size: tuple[int, int] = (320, 240)  # width, height
    rate_hz: float = 5.0
    seed: int = 0
    storage: Literal['sqlite3', 'mcap'] = 'mcap'

    def validate(self) -> None:
        """Refuse parameters the generator cannot honour, naming the field."""
        if self.laps < 2:
            raise DemoError(f'laps must be >= 2 (a revisit needs a second lap), got {self.laps}')
        if self.frames < 4 * self.laps or self.frames % self.laps:
            raise DemoError(f'frames must be a multiple of laps ({self.laps}) and at least '
                            f'{4 * self.laps}, got {self.frames}')
        if not self.rate_hz > 0:
            raise DemoError(f'rate_hz must be > 0, got {self.rate_hz}')
        if self.storage not in ('sqlite3', 'mcap'):
            raise DemoError(f"storage must be 'sqlite3' or 'mcap', got {self.storage!r}")

    @property
    def lap_s(self) -> float:
        """Duration of one lap in seconds."""
        return self.frames / self.laps / self.rate_hz

    def key(self) -> str:
        """Identity of the recording's content (its directory name)."""
        text = json.dumps({'version': _RECORDING_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def ensure_recording(root: str | os.PathLike, spec: DemoRecording) -> tuple[Path, bool]:
    """Return the recording for `spec` under `root` and whether it was reused.

    A recording is generated into a temporary directory and renamed into place only when
    complete, so an interrupted run never leaves a half-written bag to be reused.
    """
    from boq_ros.synth import DEMO_DRIFT, generate_recording

    spec.validate()
    root = Path(root)
    target = root / f'recording-{spec.key()}'
    bag = target / ('demo.mcap' if spec.storage == 'mcap' else 'demo')
    if (target / 'recording.json').is_file() and bag.exists():
        return bag, True
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f'.tmp-{spec.key()}-{os.getpid()}'
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        generate_recording(tmp / bag.name, storage=spec.storage, laps=spec.laps,
                           frames_per_lap=spec.frames // spec.laps, image_size=spec.image_size,
                           rate_hz=spec.rate_hz, compressed=False, seed=spec.seed,
                           session=SESSION, odometry_drift=DEMO_DRIFT)
        (tmp / 'recording.json').write_text(json.dumps(asdict(spec), indent=1) + '\n')
        shutil.rmtree(target, ignore_errors=True)  # an incomplete leftover
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return bag, False


@dataclass(frozen=True)
class Weights:
    """The checkpoint the node will load, and whether it is random."""

    path: Path
    random: bool
    source: str  # one line for the user: where the weights come from


DEFAULT_PRESET = 'resnet50-16384'
"""The preset whose released weights the demo looks up when neither checkpoint nor preset is
given."""


def choose_weights(spec: str | None, preset: str, scratch: str | os.PathLike) -> Weights:
    """Given or cached released weights; otherwise random ones, written into `scratch` once.

    `spec` is a checkpoint path or a preset name (looked up in the torch hub cache, never
    downloaded); without it the released weights of `preset` ('' for DEFAULT_PRESET) are
    looked up.
    """
    from boq_ros.model.checkpoint import (
        CheckpointNotFoundError,
        resolve_checkpoint,
        write_random_checkpoint,
    )

    if spec:
        path = resolve_checkpoint(spec)
        return Weights(path, False, f'checkpoint {path}')
    preset = preset or DEFAULT_PRESET
    try:
        path = resolve_checkpoint(preset)
        return Weights(path, False, f'released {preset} weights ({path})')
    except CheckpointNotFoundError:
        pass
    path = Path(scratch) / f'random-{preset}-seed0.pth'
    if not path.is_file():
        write_random_checkpoint(path, preset, seed=0)
    return Weights(path, True, f'randomly initialised {preset} weights ({path})')


def demo_detector(recording: DemoRecording) -> DetectorConfig:
    """Candidate logic for the demo world: the exclusion window is half a lap; top 20 (R@20)."""
    return DetectorConfig(top_k=20, exclusion_seconds=recording.lap_s / 2,
                          exclusion_keyframes=recording.frames // recording.laps // 4,
                          threshold=0.6, mode='grow')


def demo_verification() -> VerificationSettings:
    """Verification as the node's defaults, except the time budget.

    The budget stops verifying further candidates when a query took too long; on a busy machine
    the node and the offline run would then stop at different candidates. The demo proves that
    both decide alike, so its budget never binds.
    """
    return VerificationSettings(verify_budget_s=60.0)


@dataclass(frozen=True)
class NodeSettings:
    """What the demo asks of the node; the offline run uses the very same settings objects.

    The model (checkpoint, device, resize policy and input size), keyframe and detector settings
    become node parameters of the same names, so neither side can round or name one differently.
    """

    model: ModelSettings
    map_directory: Path
    detector: DetectorConfig
    keyframes: KeyframePolicy = field(default_factory=KeyframePolicy)  # every frame is a query
    verification: VerificationSettings = field(default_factory=demo_verification)

    def parameters(self) -> dict[str, Any]:
        """Return the node's ROS parameters: the settings objects' fields and the demo's wiring."""
        return {
            'autostart': True,
            'image_topics': [IMAGE_TOPIC],
            'camera_info_topics': [CAMERA_INFO_TOPIC],
            'depth_topics': [DEPTH_TOPIC] if self.verification.verification else [],
            'input_qos': 'reliable',  # replay publishes reliably: nothing is lost on the way
            'input_qos_depth': 10,
            'odometry_topic': ODOM_TOPIC,
            'map_directory': str(self.map_directory),
            'session': SESSION,
            **asdict(self.model), **asdict(self.keyframes), **asdict(self.detector),
            **asdict(self.verification),
        }


def backend_parameters(run_dir: str | os.PathLike,
                       settings: PoseGraphSettings = PoseGraphSettings()) -> dict[str, Any]:
    """Return the pose graph node's ROS parameters: the demo's topics and files, `settings`."""
    run_dir = Path(run_dir)
    return {
        'odometry_topic': ODOM_TOPIC,
        'odometry_qos': 'reliable',  # replay publishes reliably: every pose arrives
        'candidates_topic': CANDIDATE_TOPIC,
        'graph_path': str(run_dir / 'pose_graph.g2o'),
        'trajectory_path': str(run_dir / 'optimised_keyframes.tum'),
        **asdict(settings),
    }


def backend_command(params_file: str | os.PathLike, name: str = BACKEND_NAME) -> list[str]:
    """Return the command that runs the pose graph node with a parameters file."""
    return [sys.executable, '-m', 'boq_ros.ros.pose_graph_node', '--ros-args', '-r',
            f'__node:={name}', '--params-file', str(params_file)]


def write_params_file(path: str | os.PathLike, parameters: Mapping[str, Any]) -> Path:
    """Write a --params-file that applies to the node whatever its name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({'/**': {'ros__parameters': dict(parameters)}},
                                   sort_keys=False))
    return path


def node_command(params_file: str | os.PathLike, name: str = NODE_NAME) -> list[str]:
    """Return the command that runs the loop-closure node with a parameters file."""
    return [sys.executable, '-m', 'boq_ros.ros.node', '--ros-args', '-r', f'__node:={name}',
            '--params-file', str(params_file)]


class NodeProcess:
    """A ROS node command as a child process (own process group), started at construction.

    Its output goes to a log file; `stop` shuts it down like Ctrl-C would. The demo runs the
    loop-closure node with it, the tests every node they start.
    """

    def __init__(self, cmd: Sequence[str], env: Mapping[str, str],
                 log_path: str | os.PathLike) -> None:
        self.cmd = [str(c) for c in cmd]
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, 'wb') as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(self.cmd, env=dict(env), stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True,
                                            preexec_fn=_interrupt_with_parent)

    def alive(self) -> bool:
        """Whether the process is running."""
        return self.process.poll() is None

    def log_text(self) -> str:
        """Return everything the process wrote so far."""
        try:
            return self.log_path.read_text(errors='replace')
        except OSError:
            return ''

    def log_tail(self, lines: int = 30) -> str:
        """Return the end of the process's output, for error messages."""
        return '\n'.join(self.log_text().splitlines()[-lines:])

    def stop(self, timeout: float = 20.0) -> int:
        """Send SIGINT (clean shutdown), kill the group only after `timeout`; exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode


def _interrupt_with_parent() -> None:
    """In the child: get SIGINT when the parent dies (Linux), so no node outlives its starter.

    The child runs in its own session (a terminal's Ctrl-C reaches the parent only, which then
    stops it cleanly); a parent killed outright would otherwise leave it running on the domain.
    """
    if sys.platform.startswith('linux'):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGINT)


@dataclass(frozen=True)
class Agreement:
    """How the live node's records compare with the offline pipeline's."""

    live_queries: int
    offline_queries: int
    missing_queries: tuple[int, ...]  # stamps the offline pipeline queried and the node did not
    extra_queries: tuple[int, ...]  # stamps the node queried and the offline pipeline did not
    mismatches: tuple[str, ...]  # one line per query whose candidates differ
    max_similarity_diff: float

    @property
    def agree(self) -> bool:
        """Same queries, same candidates, similarities within tolerance."""
        return not (self.missing_queries or self.extra_queries or self.mismatches)

    def format(self) -> str:
        """One paragraph for the user."""
        head = (f'live vs offline: {self.live_queries} / {self.offline_queries} queries, '
                f'max |similarity difference| {self.max_similarity_diff:.2e}')
        if self.agree:
            return head + ': they agree'
        lines = [head + ': they DIFFER']
        if self.missing_queries:
            lines.append(f'  {len(self.missing_queries)} queries never answered live')
        if self.extra_queries:
            lines.append(f'  {len(self.extra_queries)} live queries unknown offline')
        lines += [f'  {m}' for m in self.mismatches[:10]]
        return '\n'.join(lines)


def _by_query(records: Sequence[CandidateRecord]) -> dict[int, list[CandidateRecord]]:
    out: dict[int, list[CandidateRecord]] = {}
    for record in records:
        out.setdefault(record.query_stamp_ns, []).append(record)
    for rows in out.values():
        rows.sort(key=lambda r: r.rank)
    return out


def compare_records(live: Sequence[CandidateRecord], offline: Sequence[CandidateRecord],
                    tolerance: float = 1e-4, threshold: float | None = None) -> Agreement:
    """Compare two runs query by query (queries keyed by their sensor stamp).

    Candidates must be the same keyframes (id and stamp) with the same similarities (within
    `tolerance`) at the same ranks. Float rounding may only reorder near-ties: two candidates
    whose similarities are within `tolerance` may swap ranks, and the last rank may hold either
    of two such candidates. The accepted candidate must be the same unless the best similarity
    is within `tolerance` of `threshold`, and each candidate verified on both sides must have
    the same status and inlier count.
    """
    live_q, off_q = _by_query(live), _by_query(offline)
    mismatches = []
    max_diff = 0.0
    for stamp in sorted(set(live_q) & set(off_q)):
        a, b = live_q[stamp], off_q[stamp]
        problem, diff = _compare_query(a, b, tolerance, threshold)
        max_diff = max(max_diff, diff)
        if problem:
            mismatches.append(f'query at {stamp} ns: {problem}')
    return Agreement(len(live_q), len(off_q), tuple(sorted(set(off_q) - set(live_q))),
                     tuple(sorted(set(live_q) - set(off_q))), tuple(mismatches), max_diff)


def _compare_query(a: list[CandidateRecord], b: list[CandidateRecord], tolerance: float,
                   threshold: float | None) -> tuple[str, float]:
    a = [r for r in a if r.has_match]
    b = [r for r in b if r.has_match]
    if len(a) != len(b):
        return f'{len(a)} candidates live, {len(b)} offline', 0.0
    if not a:
        return '', 0.0
    diff = max(abs(x.similarity - y.similarity) for x, y in zip(a, b))
    if diff > tolerance:
        return f'similarities at equal ranks differ by up to {diff:.2e}', diff
    sim_a = {(r.match_id, r.match_stamp_ns): r.similarity for r in a}
    sim_b = {(r.match_id, r.match_stamp_ns): r.similarity for r in b}
    for key in sim_a.keys() & sim_b.keys():
        if abs(sim_a[key] - sim_b[key]) > tolerance:
            return f'keyframe {key[0]}: similarity {sim_a[key]:.6f} live, ' \
                   f'{sim_b[key]:.6f} offline', diff
    # A keyframe on one side only must be a near-tie at the end of the top-k.
    for side, own, other, last in (('live', sim_a, sim_b, a[-1].similarity),
                                   ('offline', sim_b, sim_a, b[-1].similarity)):
        for key in own.keys() - other.keys():
            if abs(own[key] - last) > tolerance:
                return f'keyframe {key[0]} proposed {side} only', diff
    near_threshold = threshold is not None and abs(a[0].similarity - threshold) <= tolerance
    accepted_a = [r.match_id for r in a if r.accepted]
    accepted_b = [r.match_id for r in b if r.accepted]
    if accepted_a != accepted_b and not near_threshold:
        return f'accepted {accepted_a or "none"} live, {accepted_b or "none"} offline', diff
    verdict_b = {r.match_id: (r.status, r.inliers) for r in b}
    for r in a:  # verification is deterministic: the same verdict from the same evidence
        if r.match_id in verdict_b and verdict_b[r.match_id] != (r.status, r.inliers):
            return (f'keyframe {r.match_id}: status/inliers {(r.status, r.inliers)} live, '
                    f'{verdict_b[r.match_id]} offline'), diff
    return '', diff


def metric_differences(a: EvalResult, b: EvalResult, tolerance: float = 1e-4) -> list[str]:
    """Name every metric (and PR-curve point) on which two evaluations differ.

    Counts must be equal; real numbers (rates, similarity thresholds) within `tolerance`, which
    is far below the smallest change a different decision makes to a rate (1 / queries).
    """
    out: list[str] = []
    _diff('', a.to_dict(), b.to_dict(), tolerance, out)
    return out


def _diff(path: str, a: Any, b: Any, tolerance: float, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(a.keys() | b.keys()):
            _diff(f'{path}.{key}' if path else key, a.get(key), b.get(key), tolerance, out)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.append(f'{path}: {len(a)} values vs {len(b)}')
        else:
            for i, (x, y) in enumerate(zip(a, b)):
                _diff(f'{path}[{i}]', x, y, tolerance, out)
    elif isinstance(a, float) or isinstance(b, float):
        numbers = isinstance(a, int | float) and isinstance(b, int | float)
        if not numbers or abs(a - b) > tolerance:
            out.append(f'{path}: {a} vs {b}')
    elif a != b:
        out.append(f'{path}: {a} vs {b}')


@dataclass
class DemoRun:
    """One evaluated source of candidates (the live node, or the offline pipeline)."""

    label: str
    records: list[CandidateRecord]
    result: EvalResult
    frames: int
    timings_s: dict[str, float]
    skipped: dict[str, int] | None = None  # frames skipped by cause; None: not known (live)
    verification: dict[str, Any] | None = None  # what verification did (offline: eval's)

    def summary(self) -> dict[str, Any]:
        """Return the report's entry for this run (the layout `boq-ros eval` writes)."""
        total = sum(self.timings_s.values())
        return {'label': self.label, 'frames': self.frames,
                'keyframes': len({r.query_stamp_ns for r in self.records}),
                'skipped': self.skipped, 'cached': False,
                'timings_s': self.timings_s,
                'frames_per_s': self.frames / total if total > 0 else None,
                'metrics': self.result.to_dict(), 'verification': self.verification}


def write_report(out_dir: str | os.PathLike, runs: Sequence[DemoRun], ground_truth: GroundTruth,
                 inputs: Mapping[str, Any], detector: DetectorConfig, evaluation: EvalConfig,
                 extra: Mapping[str, Any], correction: 'DriftCorrection | None' = None
                 ) -> dict[str, Any]:
    """Write report.json, summary.md and the plots of the runs (the first one is the node)."""
    from boq_ros.eval import report as report_mod

    plots = report_mod.plot_loop_closure(
        out_dir, [(r.label, r.result) for r in runs], ground_truth,
        f'{runs[0].label}: accepted loops (threshold {detector.threshold:g})')
    if correction is not None:
        plots.append(correction.plot.name)
        extra = {**extra, 'trajectories': correction.to_dict()}
    return report_mod.write_report(out_dir, task='loop_closure', inputs=inputs,
                                   detector=asdict(detector), evaluation=evaluation,
                                   runs=[r.summary() for r in runs], plots=plots, extra=extra)


@dataclass(frozen=True)
class DriftCorrection:
    """The keyframe trajectories scored against ground truth, and where the plot is."""

    scores: list[TrajectoryScore]
    plot: Path
    wrong_loops: int  # loops made wrong in the robustness rows

    def ratio(self, label: str) -> float:
        """Odometry's ATE over that of the trajectory `label` (how many times lower)."""
        by_label = {s.label: s for s in self.scores}
        return by_label['odometry alone'].ate.rmse / by_label[label].ate.rmse

    def to_dict(self) -> dict[str, Any]:
        """Return the report's entry."""
        return {'scores': [s.to_dict() for s in self.scores], 'plot': str(self.plot),
                'wrong_loops': self.wrong_loops, 'alignment': 'SE(3) (Umeyama, no scale)'}


LIVE_LABEL = 'pose graph node (live loops)'


def drift_correction(bag: Path, live_records: Sequence[CandidateRecord], live_estimate: Trajectory,
                     offline_records: Sequence[CandidateRecord] | None,
                     settings: PoseGraphSettings, out_dir: Path) -> DriftCorrection:
    """Score odometry and the optimised trajectories at the live node's keyframe stamps.

    Rows: the odometry alone; the pose graph node's estimate from the loops the live node
    published; with offline records, the same backend run offline on them, then on them with
    WRONG_LOOP_FRACTION of the loops made wrong (with the default robust kernel, and without a
    kernel: what the kernel is worth).
    """
    from dataclasses import replace

    from boq_ros.eval.trajectories import DriftStudy, plot_trajectories
    from boq_ros.slam import with_wrong_loops

    ground_truth = Trajectory.from_bag(bag, GROUND_TRUTH_TOPIC)
    odometry = Trajectory.from_bag(bag, ODOM_TOPIC)
    live = DriftStudy(live_records, odometry, ground_truth)
    scores = [live.odometry_score(), live.estimate_score(LIVE_LABEL, live_estimate, live.loops)]
    wrong = 0
    if offline_records is not None:
        offline = DriftStudy(offline_records, odometry, ground_truth)
        scores.append(offline.graph_score('offline pose graph', settings))
        corrupted, wrong = with_wrong_loops(offline.inputs, WRONG_LOOP_FRACTION)
        scores.append(offline.graph_score(
            f'offline, {wrong} loops wrong ({settings.robust_kernel})', settings, corrupted))
        scores.append(offline.graph_score(f'offline, {wrong} loops wrong (no robust kernel)',
                                          replace(settings, robust_kernel='none'), corrupted))
    plot = plot_trajectories(out_dir / 'trajectories.png', live.reference,
                             {'odometry alone': scores[0].ate, LIVE_LABEL: scores[1].ate},
                             live.edges(), LIVE_LABEL)
    return DriftCorrection(scores, plot, wrong)


def offline_run(bag: Path, model: 'BoQModel', settings: NodeSettings, evaluation: EvalConfig,
                progress: bool = True) -> tuple[list[DemoRun], Any]:
    """Run `boq-ros eval`'s runner on the recording with the node's model and settings objects.

    Both sides run the frame pipeline (boq_ros.pipeline) and the detector with the same
    settings; one image per forward pass, as the node with one camera computes them. Returns
    the run that decides as the node does (verified when the node verifies) first, then the
    appearance-only run from the same descriptors, for comparison.
    """
    from boq_ros.eval.runner import BagInput, EvalSpec, GroundTruthSource, run_once
    from boq_ros.settings import PipelineConfig

    spec = EvalSpec(
        map_input=BagInput(bag, IMAGE_TOPIC, GroundTruthSource(topic=GROUND_TRUTH_TOPIC),
                           SESSION, depth_topic=DEPTH_TOPIC, camera_info_topic=CAMERA_INFO_TOPIC),
        model=settings.model, pipeline=PipelineConfig(batch_size=1),
        keyframes=settings.keyframes, detector=settings.detector,
        verification=settings.verification, evaluation=evaluation, use_cache=False,
        progress=progress)
    outcome = run_once(spec, settings.model.extractor(model, batch_size=1), None)
    labelled = [('offline pipeline', outcome)]
    if outcome.verified is not None:
        labelled = [('offline pipeline', outcome.verified), ('offline, appearance only', outcome)]
    return [DemoRun(label, o.records, o.result, o.summary['frames'], dict(o.summary['timings_s']),
                    dict(o.summary['skipped']), o.summary.get('verification'))
            for label, o in labelled], outcome
