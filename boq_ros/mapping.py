"""Map building: recordings (bags or image folders) -> a keyframe map on disk, via the pipeline.

`boq-ros map build` is a thin wrapper over :func:`build_map`. Each recording is one session; its
frames go through the same :class:`~boq_ros.pipeline.FramePipeline` as the live node's (same
keyframe selection, same pose lookup, same skips), and its keyframes are added to the map with
their local features for geometric verification (unless verification is off). A bag's depth
topic and camera_info give those features depth and intrinsics, as live.
Adding a recording again (``append``) skips the keyframes the map already holds (same session,
camera and stamp) and counts them. A build that would add nothing fails and writes nothing.

Two steps, whoever runs them: :meth:`Describer.describe` turns one recording into keyframe
batches (what may run elsewhere), :class:`BuildState` adds them to the map in recording order
(what only the process holding the map does). :func:`build_map` runs both here, one recording
after the other; ``boq_ros.mapping_ray`` describes the recordings on Ray workers instead.
"""
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
import os
from pathlib import Path
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from boq_ros.bags import open_bag
from boq_ros.extractor import Extractor, ModelSettings
from boq_ros.keyframe_map import KeyframeMap, KeyframeMeta, LocalFeatures, MapError, MapSettings
from boq_ros.keyframes import KeyframePolicy
from boq_ros.pipeline import SKIP_CAUSES, FramePipeline, PipelineConfig
from boq_ros.settings import VerificationSettings
from boq_ros.sources import SourceError, bag_frames, image_folder, pose_topic
from boq_ros.verification import GeometricVerifier

if TYPE_CHECKING:
    from boq_ros.model import BoQModel

_PIPELINE_STAGES = ('read', 'decode', 'describe', 'features')
"""The pipeline's timing stages a build reports (boq_ros.pipeline.STAGES)."""


class MapBuildError(ValueError):
    """Raised when a build cannot produce a map; the message names the cause."""


@dataclass(frozen=True)
class Recording:
    """One recording to add as one session: a bag, or an image folder / glob.

    For a bag, `image_topics` empty means its only image topic; `pose_topic` gives every
    keyframe a pose (needed for distance keyframes). `session` '' takes the MapSettings session,
    else the recording's name. `depth_ok` describes 16-bit single-channel images of a folder
    instead of skipping them. `depth_topic` is a bag's depth image topic aligned to its (one)
    image topic; `camera_info_topic` its intrinsics ('': the conventional one if the bag has
    it).
    """

    path: Path
    kind: str = 'bag'  # 'bag' or 'images'
    image_topics: tuple[str, ...] = ()
    pose_topic: str | None = None
    pose_child_frame: str | None = None
    session: str = ''
    depth_ok: bool = False
    depth_topic: str = ''
    camera_info_topic: str = ''

    def __post_init__(self) -> None:
        object.__setattr__(self, 'path', Path(self.path))
        if self.kind not in ('bag', 'images'):
            raise MapBuildError(f"recording kind must be 'bag' or 'images', got {self.kind!r}")
        if (self.depth_topic or self.camera_info_topic) and (
                self.kind != 'bag' or len(self.image_topics) > 1):
            raise MapBuildError(f'{self.path}: a depth or camera_info topic belongs to one '
                                'image topic of a bag')


@dataclass
class BuildSummary:
    """What a build did, per the pipeline's counters: printed by `map build`."""

    out: Path
    frames: int = 0
    keyframes: int = 0
    skipped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SKIP_CAUSES, 0))
    already_in_map: int = 0
    without_pose: int = 0
    with_features: int = 0
    with_depth: int = 0
    total_keyframes: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """Return the summary as text lines."""
        skipped = ', '.join(f'{c} {n}' for c, n in self.skipped.items())
        stages = ', '.join(f'{k} {v:.1f} s' for k, v in self.seconds.items())
        return [*self.notes, f'frames read: {self.frames}',
                f'keyframes added: {self.keyframes} (map now holds {self.total_keyframes})',
                f'frames skipped: {sum(self.skipped.values())} ({skipped})',
                f'keyframes already in the map (skipped): {self.already_in_map}',
                f'keyframes without a pose: {self.without_pose}',
                f'keyframes with local features: {self.with_features} ({self.with_depth} with '
                'depth)', f'time: {stages}',
                f'map: {self.out}']


@dataclass(frozen=True)
class MapEntry:
    """One described keyframe as the map takes it (what a worker sends back: no image)."""

    descriptor: np.ndarray
    meta: KeyframeMeta
    features: LocalFeatures | None


@dataclass
class RecordingCounts:
    """What the pipeline counted over one recording: its session and cameras, frames, skips."""

    session: str
    cameras: tuple[str, ...]
    frames: int
    skipped: dict[str, int]
    seconds: dict[str, float]


@dataclass(frozen=True)
class BuildJob:
    """The settings every process that describes recordings needs, the same everywhere."""

    model: ModelSettings
    keyframes: KeyframePolicy
    pipeline: PipelineConfig
    map_settings: MapSettings
    verification: VerificationSettings
    stored_preprocess: dict[str, Any] | None = None  # the appended map's resize settings

    def describer(self, loaded: 'BoQModel | None' = None) -> 'Describer':
        """Load the model (unless `loaded`) and make this process's describer, once."""
        loaded = loaded if loaded is not None else self.model.load()
        extractor = self.model.extractor(loaded, self.pipeline.batch_size,
                                         self.stored_preprocess)
        verification = self.verification
        return Describer(self, extractor, GeometricVerifier(verification)
                         if verification.verification else None)


@dataclass
class Describer:
    """A process's extractor and verifier: turns recordings into keyframe batches."""

    job: BuildJob
    extractor: Extractor
    verifier: GeometricVerifier | None

    def describe(self, rec: Recording, on_batch: Callable[[list[MapEntry]], None], *,
                 claim: Callable[[str, tuple[str, ...]], None] | None = None,
                 on_frame: Callable[[], None] | None = None,
                 say: Callable[[str], None] = lambda text: None) -> RecordingCounts:
        """Run `rec` through the pipeline; every batch of keyframes goes to `on_batch`, in order.

        `claim` is told the session and cameras before any frame is described (so that a
        collision fails before the work); `on_frame` is called per frame read, `say` gets the
        announcements (where stamps come from, features lost).
        """
        job = self.job
        session = rec.session or job.map_settings.session or rec.path.stem
        with ExitStack() as stack:
            poses: Any = ()
            buffer = None
            if rec.kind == 'images':
                folder = image_folder(rec.path)
                session = rec.session or job.map_settings.session or folder.camera  # a glob
                say(f'{rec.path}: {len(folder.files)} images, stamps from {folder.stamp_rule}'
                    + (f'; {folder.ignored} other files ignored' if folder.ignored else ''))
                frames = folder.frames(rec.depth_ok)
                cameras = (folder.camera,)
            else:
                bag = stack.enter_context(open_bag(rec.path))
                topics = list(rec.image_topics) or [
                    t for t in bag.image_topics() if t != rec.depth_topic]
                if not rec.image_topics and len(topics) != 1:
                    raise SourceError(f'{rec.path} has image topics {topics}; choose with '
                                      '--image-topic (a depth topic goes to --depth-topic)')
                if rec.pose_topic:
                    stream = pose_topic(bag, rec.pose_topic, rec.pose_child_frame)
                    poses = stream.poses
                    buffer = stream.buffer(job.keyframes.pose_tolerance_s)
                frames = bag_frames(
                    bag, topics, {topics[0]: rec.depth_topic} if rec.depth_topic else None,
                    {topics[0]: rec.camera_info_topic} if rec.camera_info_topic else None)
                cameras = tuple(topics)
            if claim is not None:
                claim(session, cameras)
            pipe = FramePipeline(self.extractor, job.keyframes, job.pipeline, session=session,
                                 robot_id=job.map_settings.robot_id, poses=buffer,
                                 verifier=self.verifier, on_note=say)
            for batch in pipe.run(frames, poses, on_frame):
                if batch:
                    on_batch([MapEntry(kf.descriptor, kf.meta, kf.features) for kf in batch])
        stats = pipe.stats
        return RecordingCounts(session, cameras, stats.totals.get('frames', 0), stats.skipped(),
                               {stage: stats.seconds[stage] for stage in _PIPELINE_STAGES})


class BuildState:
    """The map being built and its summary: described recordings are added here, in order."""

    def __init__(self, kmap: KeyframeMap, summary: BuildSummary, verifying: bool,
                 on_frames: Callable[[int], None], say: Callable[[str], None]) -> None:
        self.kmap, self.summary, self.verifying = kmap, summary, verifying
        self.on_frames, self.say = on_frames, say
        self._streams: dict[tuple[str, str], Path] = {}  # (session, camera) -> its recording

    def claim(self, path: Path, session: str, cameras: Sequence[str]) -> None:
        """Take the (session, camera) streams of a recording; two recordings cannot share one."""
        for camera in cameras:  # a keyframe is known by its session, camera and stamp
            other = self._streams.setdefault((session, camera), path)
            if other != path:
                raise MapBuildError(
                    f'{other} and {path} would both be session {session!r}, camera '
                    f'{camera!r}: their keyframes would be taken for one another; give each '
                    'its own session (separate builds with --session, appended)')

    def add(self, batch: Sequence[MapEntry]) -> None:
        """Add a batch of keyframes, skipping (and counting) those the map already holds."""
        summary = self.summary
        metas = [entry.meta for entry in batch]
        new = self.kmap.find(metas) < 0
        summary.already_in_map += int((~new).sum())
        summary.without_pose += sum(m.pose is None for m, n in zip(metas, new) if n)
        if not new.any():
            return
        start = time.perf_counter()
        entries = [entry for entry, n in zip(batch, new) if n]
        features = [entry.features for entry in entries]
        self.kmap.add(np.stack([entry.descriptor for entry in entries]),
                      [entry.meta for entry in entries], features if self.verifying else None)
        summary.with_features += sum(f is not None for f in features)
        summary.with_depth += sum(f is not None and f.depth is not None for f in features)
        summary.seconds['map add'] = summary.seconds.get('map add', 0.0) + (
            time.perf_counter() - start)
        summary.keyframes += len(entries)

    def count(self, counts: RecordingCounts) -> None:
        """Add a described recording's pipeline counts to the summary."""
        summary = self.summary
        summary.frames += counts.frames
        for cause, n in counts.skipped.items():
            summary.skipped[cause] += n
        for stage, seconds in counts.seconds.items():
            summary.seconds[stage] = summary.seconds.get(stage, 0.0) + seconds


Runner = Callable[[Sequence[Recording], BuildJob, BuildState], None]
"""Describes `recordings` with `job` somewhere and adds them to the state, in order
(``boq_ros.mapping_ray.RayRunner``)."""


def build_map(recordings: Sequence[Recording], out: str | os.PathLike, *,
              model: ModelSettings, keyframes: KeyframePolicy | None = None,
              pipeline: PipelineConfig | None = None, map_settings: MapSettings | None = None,
              verification: VerificationSettings | None = None, append: bool = False,
              on_frames: Callable[[int], None] | None = None,
              on_note: Callable[[str], None] | None = None,
              runner: Runner | None = None) -> BuildSummary:
    """Describe the keyframes of `recordings` into the map at `out` (created, or appended to).

    `on_frames` is told how many frames were read since it was last told (a progress bar: per
    frame here, per recording on Ray); `on_note` gets announcements as they happen (where
    stamps come from). `runner` describes the recordings elsewhere (Ray workers); None: in
    this process, one after the other. Raises MapBuildError (nothing written) when no keyframe
    would be added, MapError for a map of another model or preprocessing.
    """
    out = Path(out)
    keyframes = keyframes or KeyframePolicy()
    map_settings = map_settings or MapSettings()
    if not recordings:
        raise MapBuildError('no recording given')
    fresh = _check_out(out, append)
    for rec in recordings:
        if keyframes.keyframe_mode == 'distance' and not rec.pose_topic:
            raise MapBuildError(f'keyframe mode distance needs a pose topic ({rec.path})')
        if rec.kind == 'images' and rec.pose_topic:
            raise MapBuildError(f'{rec.path}: image folders carry no poses (a pose topic needs '
                                'a bag)')
        if keyframes.keyframe_mode == 'external':
            raise MapBuildError('keyframe mode external needs a SLAM system; offline use '
                                'every_frame, interval or distance')
    loaded = model.load()
    kmap = open_map(out, fresh, loaded, model, map_settings)
    job = BuildJob(model, keyframes, pipeline or PipelineConfig(), map_settings,
                   verification or VerificationSettings(),
                   None if fresh else kmap.preprocess)
    if not fresh:  # other resize settings than the map's: refused before any worker starts
        model.preprocess_for(loaded.config.name, kmap.preprocess)
    summary = BuildSummary(out)
    state = BuildState(kmap, summary, job.verification.verification,
                       on_frames or (lambda n: None), on_note or (lambda text: None))
    if runner is None:
        describer = job.describer(loaded)
        for rec in recordings:
            state.count(describer.describe(rec, state.add, claim=partial(state.claim, rec.path),
                                           on_frame=lambda: state.on_frames(1), say=state.say))
    else:
        runner(recordings, job, state)
    if summary.keyframes == 0:
        why = ', '.join(f'{n} {c}' for c, n in summary.skipped.items() if n)
        raise MapBuildError(
            f'no keyframe to add from {", ".join(str(r.path) for r in recordings)}: '
            f'{summary.frames} frames read' + (f', skipped: {why}' if why else '') +
            (f', {summary.already_in_map} already in the map' if summary.already_in_map
             else ''))
    start = time.perf_counter()
    kmap.refresh_index()  # learn PCA / IVF and tune on the whole map, not its first keyframes
    summary.seconds['index'] = time.perf_counter() - start
    start = time.perf_counter()
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()  # an empty directory (a mount point, mkdir'ed beforehand) is a new map
    out.parent.mkdir(parents=True, exist_ok=True)
    summary.out = kmap.save(out)
    summary.seconds['save'] = time.perf_counter() - start
    summary.total_keyframes = len(kmap)
    return summary


def open_map(out: Path, fresh: bool, loaded: 'BoQModel', model: ModelSettings,
             map_settings: MapSettings) -> KeyframeMap:
    """Open the map at `out` to append to, or make a new one for `loaded` (the one place)."""
    if not fresh:
        return KeyframeMap.load(out, expect_model_id=loaded.model_id,
                                expect_dim=loaded.descriptor_dim)
    return KeyframeMap(loaded.descriptor_dim, model_id=loaded.model_id,
                       preprocess=model.preprocess_for(loaded.config.name).to_dict(),
                       index=map_settings.index_spec())


def _check_out(out: Path, append: bool) -> bool:
    """Check before any work that `out` can take the map; True for a new map."""
    if out.is_file():
        raise MapBuildError(f'{out} is a file, not a map directory: choose another output')
    if out.is_dir() and any(out.iterdir()):
        if not (out / 'schema.json').is_file():
            raise MapBuildError(f'{out} exists and is not a keyframe map: choose another output')
        if not append:
            raise MapError(f'{out} exists; pass append (--append) to add to it')
        return False
    ancestor = out.absolute()
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise MapBuildError(f'cannot create {out}: {ancestor} is a file')
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise MapBuildError(f'cannot create {out}: {ancestor} is not writable')
    return True
