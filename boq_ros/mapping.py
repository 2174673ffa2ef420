"""Map building: recordings (bags or image folders) -> a keyframe map on disk, via the pipeline.

`boq-ros map build` is a thin wrapper over :func:`build_map`. Each recording is one session; its
frames go through the same :class:`~boq_ros.pipeline.FramePipeline` as the live node's (same
keyframe selection, same pose lookup, same skips), and its keyframes are added to the map with
their local features for geometric verification (unless verification is off). A bag's depth
topic and camera_info give those features depth and intrinsics, as live.
Adding a recording again (``append``) skips the keyframes the map already holds (same session,
camera and stamp) and counts them. A build that would add nothing fails and writes nothing.
"""
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
import os
from pathlib import Path
import time
from typing import Any

import numpy as np

from boq_ros.bags import open_bag
from boq_ros.extractor import Extractor, ModelSettings
from boq_ros.keyframe_map import KeyframeMap, MapError, MapSettings
from boq_ros.keyframes import KeyframePolicy
from boq_ros.pipeline import SKIP_CAUSES, FramePipeline, PipelineConfig
from boq_ros.settings import VerificationSettings
from boq_ros.sources import SourceError, bag_frames, image_folder, pose_topic
from boq_ros.verification import GeometricVerifier


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


def build_map(recordings: Sequence[Recording], out: str | os.PathLike, *,
              model: ModelSettings, keyframes: KeyframePolicy | None = None,
              pipeline: PipelineConfig | None = None, map_settings: MapSettings | None = None,
              verification: VerificationSettings | None = None, append: bool = False,
              on_frame: Callable[[], None] | None = None,
              on_note: Callable[[str], None] | None = None) -> BuildSummary:
    """Describe the keyframes of `recordings` into the map at `out` (created, or appended to).

    `on_frame` is called per frame read (a progress bar); `on_note` gets announcements as they
    happen (where stamps come from). Raises MapBuildError (nothing written) when no keyframe
    would be added, MapError for a map of another model or preprocessing.
    """
    out = Path(out)
    keyframes = keyframes or KeyframePolicy()
    pipeline = pipeline or PipelineConfig()
    map_settings = map_settings or MapSettings()
    verification = verification or VerificationSettings()
    verifier = GeometricVerifier(verification) if verification.verification else None
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
    stored = None
    if not fresh:
        kmap = KeyframeMap.load(out, expect_model_id=loaded.model_id,
                                expect_dim=loaded.descriptor_dim)
        stored = kmap.preprocess
    extractor = model.extractor(loaded, pipeline.batch_size, stored)
    if stored is None:
        kmap = KeyframeMap(extractor.dim, model_id=extractor.model_id,
                           preprocess=extractor.preprocess_config.to_dict(),
                           index=map_settings.index_spec())
    summary = BuildSummary(out)
    say = on_note or (lambda text: None)
    streams: dict[tuple[str, str], Path] = {}  # (session, camera) -> its recording
    for rec in recordings:
        _add_recording(rec, kmap, extractor, keyframes, pipeline, map_settings, verifier,
                       summary, on_frame, say, streams)
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


def _add_recording(rec: Recording, kmap: KeyframeMap, extractor: Extractor,
                   keyframes: KeyframePolicy, config: PipelineConfig, map_settings: MapSettings,
                   verifier: GeometricVerifier | None, summary: BuildSummary,
                   on_frame: Callable[[], None] | None, say: Callable[[str], None],
                   streams: dict[tuple[str, str], Path]) -> None:
    session = rec.session or map_settings.session or rec.path.stem
    with ExitStack() as stack:
        poses: Any = ()
        buffer = None
        if rec.kind == 'images':
            folder = image_folder(rec.path)
            session = rec.session or map_settings.session or folder.camera  # a glob: its folder
            say(f'{rec.path}: {len(folder.files)} images, stamps from {folder.stamp_rule}'
                + (f'; {folder.ignored} other files ignored' if folder.ignored else ''))
            frames = folder.frames(rec.depth_ok)
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
                buffer = stream.buffer(keyframes.pose_tolerance_s)
            frames = bag_frames(
                bag, topics, {topics[0]: rec.depth_topic} if rec.depth_topic else None,
                {topics[0]: rec.camera_info_topic} if rec.camera_info_topic else None)
        cameras = [folder.camera] if rec.kind == 'images' else topics
        for camera in cameras:  # a keyframe is known by its session, camera and stamp
            other = streams.setdefault((session, camera), rec.path)
            if other != rec.path:
                raise MapBuildError(
                    f'{other} and {rec.path} would both be session {session!r}, camera '
                    f'{camera!r}: their keyframes would be taken for one another; give each '
                    'its own session (separate builds with --session, appended)')
        pipe = FramePipeline(extractor, keyframes, config, session=session,
                             robot_id=map_settings.robot_id, poses=buffer, verifier=verifier,
                             on_note=say)
        for batch in pipe.run(frames, poses, on_frame):
            if not batch:
                continue
            metas = [kf.meta for kf in batch]
            new = kmap.find(metas) < 0
            summary.already_in_map += int((~new).sum())
            summary.without_pose += sum(m.pose is None for m, n in zip(metas, new) if n)
            if new.any():
                start = time.perf_counter()
                features = [kf.features for kf, n in zip(batch, new) if n]
                kmap.add(np.stack([kf.descriptor for kf, n in zip(batch, new) if n]),
                         [m for m, n in zip(metas, new) if n],
                         features if verifier is not None else None)
                summary.with_features += sum(f is not None for f in features)
                summary.with_depth += sum(f is not None and f.depth is not None
                                          for f in features)
                summary.seconds['map add'] = summary.seconds.get('map add', 0.0) + (
                    time.perf_counter() - start)
                summary.keyframes += int(new.sum())
    stats = pipe.stats
    summary.frames += stats.totals.get('frames', 0)
    for cause, count in stats.skipped().items():
        summary.skipped[cause] += count
    for stage in ('read', 'decode', 'describe', 'features'):
        summary.seconds[stage] = summary.seconds.get(stage, 0.0) + stats.seconds[stage]
