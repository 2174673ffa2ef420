"""The frame pipeline: pose waits, selection, per-frame isolation of failures, stage timings."""
import math

import numpy as np
import pytest

from boq_ros.extractor import Extractor
from boq_ros.images import encode_image
from boq_ros.keyframes import KeyframePolicy
from boq_ros.pipeline import (
    SKIP_CAUSES,
    STAGES,
    ArrayImage,
    CameraInfoUpdate,
    CompressedImage,
    DepthFrame,
    Frame,
    FramePipeline,
    PipelineConfig,
    RawImage,
)
from boq_ros.poses import PoseBuffer
from boq_ros.preprocess import PreprocessConfig
from boq_ros.verification import CameraModel

MS = 1_000_000
S = 1000 * MS


@pytest.fixture(scope='module')
def extractor(resnet_checkpoint):
    return Extractor.from_checkpoint(resnet_checkpoint, device='cpu',
                                     preprocess=PreprocessConfig('square', 32))


def image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (24, 32, 3), dtype=np.uint8)


def raw(seed: int) -> RawImage:
    fields = encode_image(image(seed), 'rgb8')
    return RawImage('rgb8', fields['height'], fields['width'], fields['step'], fields['data'])


def frame(t_ns: int, camera: str = 'cam', payload=None) -> Frame:
    return Frame(t_ns, camera, payload if payload is not None else raw(t_ns % 97))


def pipe(extractor, policy=KeyframePolicy(), poses=None, **kwargs) -> FramePipeline:
    return FramePipeline(extractor, policy, session='s', poses=poses, **kwargs)


def test_a_frame_waits_for_the_odometry_just_after_it(extractor):
    p = pipe(extractor, poses=PoseBuffer(0.1, frame='odom', source='odometry:/odom'))
    assert p.add_pose(0, (0, 0, 0)) == []
    assert p.offer(frame(50 * MS)) == []  # the pose after the image has not arrived yet
    selected = p.add_pose(100 * MS, (1, 0, 0))
    assert [s.frame.stamp_ns for s in selected] == [50 * MS]
    assert selected[0].pose[:3] == pytest.approx((0.5, 0, 0))  # interpolated
    meta = p.meta(selected[0])
    assert (meta.pose_frame, meta.pose_source, meta.session) == ('odom', 'odometry:/odom', 's')
    assert [s.pose[:3] for s in p.offer(frame(80 * MS))] == [pytest.approx((0.8, 0, 0))]


def test_a_stopped_pose_stream_holds_no_frame_back(extractor):
    p = pipe(extractor, poses=PoseBuffer(0.1))
    assert p.offer(Frame(0, 'cam', raw(0), received_ns=5)) == []  # the first pose may be late
    assert [s.frame.stamp_ns for s in p.release_waiting(received_before_ns=6)] == [0]
    assert p.offer(frame(10)) != []  # it waited in vain: no pose stream, no more waiting
    p.add_pose(S, (0, 0, 0))
    assert p.offer(frame(S + 50 * MS)) == []  # just behind: wait
    # a frame more than a tolerance later means the stream stopped: decide with what is known
    selected = p.offer(frame(S + 200 * MS))
    assert [(s.frame.stamp_ns, s.pose is not None) for s in selected] == [
        (S + 50 * MS, True), (S + 200 * MS, False)]


def test_waiting_frames_are_bounded_and_finish_decides_them(extractor):
    p = pipe(extractor, KeyframePolicy(keyframe_wait_frames=2), poses=PoseBuffer(10.0))
    p.add_pose(0, (0, 0, 0))
    assert p.offer(frame(1 * MS)) == [] and p.offer(frame(2 * MS)) == []
    assert [s.frame.stamp_ns for s in p.offer(frame(3 * MS))] == [1 * MS]  # oldest decided
    assert [s.frame.stamp_ns for s in p.finish()] == [2 * MS, 3 * MS]


def test_external_mode_selects_frames_the_slam_system_names(extractor):
    p = pipe(extractor, KeyframePolicy('external', keyframe_stamp_tolerance_s=0.01))
    assert p.offer(frame(S)) == [] and p.offer(frame(2 * S)) == []
    assert [s.frame.stamp_ns for s in p.add_keyframe_stamp(2 * S + 5 * MS)] == [2 * S]
    assert p.add_keyframe_stamp(5 * S) == []


def test_distance_keyframes_without_poses_are_refused_or_counted(extractor):
    with pytest.raises(ValueError, match='distance needs poses'):
        pipe(extractor, KeyframePolicy('distance'))
    skipped = []
    p = pipe(extractor, KeyframePolicy('distance'), poses=PoseBuffer(0.05),
             on_skip=lambda cause, text: skipped.append((cause, text)))
    p.add_pose(0, (0, 0, 0))
    assert p.offer(frame(S)) == []
    assert p.stats.skipped()['no_pose'] == 1 and skipped[0][0] == 'no_pose'
    assert 'no pose within pose_tolerance_s' in skipped[0][1]


def test_each_frame_fails_alone_and_is_counted_by_cause(extractor):
    skipped = []
    p = pipe(extractor, on_skip=lambda cause, text: skipped.append(cause))
    bad_step = RawImage('rgb8', 24, 32, 10, b'\0' * 240)
    selected = [s for f in (frame(0), frame(1, payload=bad_step),
                            frame(2, payload=CompressedImage('jpeg', b'\xff\xd8 cut')),
                            frame(3, payload=ArrayImage(image(3), 'rgb8')))
                for s in p.offer(f)]
    keyframes = p.describe(selected)
    assert [k.frame.stamp_ns for k in keyframes] == [0, 3]
    assert p.stats.skipped() == {**dict.fromkeys(SKIP_CAUSES, 0), 'decode': 2}
    assert skipped == ['decode', 'decode']
    assert p.stats.totals['frames'] == 4 and p.stats.totals['keyframes'] == 2
    alone = extractor.extract([image(3)], 'rgb8')[0]
    np.testing.assert_allclose(keyframes[1].descriptor, alone, atol=1e-5)
    assert set(p.stats.seconds) == set(STAGES) and p.stats.seconds['describe'] > 0


def test_run_equals_offering_frame_by_frame(extractor):
    frames = [frame(k * 200 * MS) for k in range(7)]
    poses = [(k * 150 * MS, (float(k), 0.0, 0.0, *(math.nan,) * 4)) for k in range(11)]
    policy = KeyframePolicy('distance', keyframe_distance_m=1.0, pose_tolerance_s=0.1)
    batched = pipe(extractor, policy, PoseBuffer(0.1), config=PipelineConfig(batch_size=2))
    run = [k for batch in batched.run(frames, poses) for k in batch]
    by_hand = pipe(extractor, policy, PoseBuffer(0.1))
    selected, fed = [], 0
    for f in frames:
        while fed < len(poses) and poses[fed][0] <= f.stamp_ns + 100 * MS:
            selected += by_hand.add_pose(poses[fed][0], poses[fed][1][:3])
            fed += 1
        selected += by_hand.offer(f)
    selected += by_hand.finish()
    assert [(k.meta.stamp_ns, k.meta.pose) for k in run] == [
        (by_hand.meta(s).stamp_ns, by_hand.meta(s).pose) for s in selected]
    assert len(run) >= 3 and batched.stats.seconds['read'] >= 0


# -- one outlier stamp never poisons what follows ---------------------------------------------
def test_one_far_future_pose_is_refused_and_distance_keyframes_go_on(extractor):
    from boq_ros.pipeline import OutlierStamp

    policy = KeyframePolicy('distance', keyframe_distance_m=1.0, pose_tolerance_s=0.1)
    p = pipe(extractor, policy, PoseBuffer(0.1))
    taken = []
    for k in range(10):
        t = k * 100 * MS
        if k == 3:
            with pytest.raises(OutlierStamp, match='far from the stream'):
                p.add_pose(t + 10**6 * S, (99, 0, 0))  # one message from a broken clock
        taken += p.add_pose(t, (0.5 * k, 0, 0)) + p.offer(frame(t))
    taken += p.finish()
    assert [s.frame.stamp_ns // (100 * MS) for s in taken] == [0, 2, 4, 6, 8]
    assert p.stats.totals['outlier_pose_stamps'] == 1


def test_a_looping_recording_starts_a_new_time_base(extractor):
    notes = []
    p = pipe(extractor, KeyframePolicy('interval', keyframe_interval_s=1.0),
             on_note=notes.append, on_skip=lambda cause, text: None)
    stamps = [1000 * S + k * S for k in range(5)] + [k * S for k in range(5)]  # bag looped
    taken = [s.frame.stamp_ns for t in stamps for s in p.offer(frame(t))]
    # the first two stamps of the loop are outliers; the third confirms the new time base,
    # whose interval selection starts afresh
    assert taken == [*stamps[:5], 2 * S, 3 * S, 4 * S]
    assert p.stats.skipped()['stamp'] == 2 and p.stats.totals['time_bases'] == 1
    assert len(notes) == 1 and 'new time base for camera stamps' in notes[0]


def test_a_single_outlier_frame_is_skipped_alone(extractor):
    p = pipe(extractor)
    stamps = [k * S for k in range(3)] + [10**6 * S] + [k * S for k in range(3, 6)]
    taken = [s.frame.stamp_ns for t in stamps for s in p.offer(frame(t))]
    assert taken == [k * S for k in range(6)] and p.stats.skipped()['stamp'] == 1


def test_a_live_pause_is_no_jump(extractor):
    p = pipe(extractor)
    assert p.offer(Frame(0, 'cam', raw(0), received_ns=1)) != []
    # 60 s later on the node's clock, the camera resumes 60 s later: a pause, not an outlier
    assert p.offer(Frame(60 * S, 'cam', raw(1), received_ns=60 * S + 1)) != []
    assert p.stats.skipped()['stamp'] == 0


def test_keyframe_stamps_restarting_earlier_start_a_new_time_base(extractor):
    from boq_ros.pipeline import OutlierStamp

    p = pipe(extractor, KeyframePolicy('external', keyframe_stamp_tolerance_s=0.01))
    p.add_keyframe_stamp(1000 * S)
    assert [s.frame.stamp_ns for s in p.offer(frame(1000 * S))] == [1000 * S]
    for t in (1 * S, 2 * S):  # the SLAM system restarted 1000 s earlier: refused twice...
        with pytest.raises(OutlierStamp):
            p.add_keyframe_stamp(t)
    p.add_keyframe_stamp(3 * S)  # ...then a new time base
    assert p.stats.totals['outlier_keyframe_stamps'] == 2
    assert p.stats.totals['time_bases'] == 1


def _depth(t_ns: int, step_short: int = 0) -> DepthFrame:
    mm = np.full((24, 32), 2000, np.uint16)  # 2 m everywhere
    fields = encode_image(mm, 'mono16')
    return DepthFrame(t_ns, 'cam', RawImage('16UC1', 24, 32, fields['step'] - step_short,
                                            fields['data']))


def test_a_frame_waits_for_its_depth_and_the_camera_model(extractor):
    p = pipe(extractor)
    p.expect_depth('cam')
    p.expect_camera_model('cam')
    assert p.offer(frame(10 * MS)) == []  # neither depth nor intrinsics yet
    assert p.add_depth(_depth(10 * MS)) == []  # still no intrinsics
    camera = CameraModel(32, 24, 30.0, 30.0, 15.5, 11.5)
    (selected,) = p.set_camera_model(CameraInfoUpdate('cam', camera))
    assert selected.depth is not None and selected.camera_model == camera
    assert p.set_camera_model(CameraInfoUpdate('cam', None, 'K is all zero')) == []
    assert p.stats.totals['camera_info_errors'] == 1
    # The depth stream passed the frame's stamp: decided without depth, held no longer.
    assert p.offer(frame(20 * MS)) == []
    (late,) = p.add_depth(_depth(30 * MS))
    assert late.frame.stamp_ns == 20 * MS and late.depth is None
    (near,) = p.offer(frame(30 * MS + 2 * MS))  # within depth_stamp_tolerance_s (5 ms)
    assert near.depth is not None


def test_local_features_come_with_the_keyframe_and_a_bad_depth_loses_only_depth(extractor):
    from boq_ros.settings import VerificationSettings
    from boq_ros.synth import World, camera_intrinsics
    from boq_ros.verification import GeometricVerifier

    rgb = World(0).render(20.0, 0.0, math.pi / 2, (32, 24))
    notes: list[str] = []
    p = pipe(extractor, verifier=GeometricVerifier(VerificationSettings()),
             on_note=notes.append)
    p.set_camera_model(CameraInfoUpdate('cam', CameraModel(32, 24,
                                                           *camera_intrinsics((32, 24)))))
    p.add_depth(_depth(0))
    p.add_depth(_depth(MS * 100, step_short=2))  # a row shorter than the image: refused
    good = p.describe(p.offer(Frame(0, 'cam', ArrayImage(rgb))))
    bad = p.describe(p.offer(Frame(100 * MS, 'cam', ArrayImage(rgb))))
    assert good[0].features.intrinsics is not None and good[0].features.depth is not None
    assert bad[0].features is not None and bad[0].features.depth is None
    assert p.stats.totals['depth_errors'] == 1 and 'depth image' in notes[-1]
    assert p.stats.seconds['features'] > 0


def test_one_future_depth_stamp_does_not_switch_depth_off(extractor):
    from boq_ros.pipeline import OutlierStamp

    p = pipe(extractor, config=PipelineConfig(time_jump_s=10.0))
    p.expect_depth('cam')
    p.add_depth(_depth(0))
    assert p.offer(frame(0))[0].depth is not None
    with pytest.raises(OutlierStamp):
        p.add_depth(_depth(10**6 * S))  # a clock glitch, a million seconds ahead
    assert p.stats.totals['outlier_depth_stamps'] == 1
    assert p.offer(frame(100 * MS)) == []  # still waits for its own depth
    (later,) = p.add_depth(_depth(100 * MS))
    assert later.depth is not None


def test_a_depth_topic_cannot_also_be_the_camera(tmp_path):
    from boq_ros.bags import open_bag
    from boq_ros.sources import SourceError, bag_frames
    from boq_ros.synth import IMAGE_TOPIC, generate_recording

    generate_recording(tmp_path / 'r.mcap', laps=1, frames_per_lap=4, image_size=(32, 24),
                       storage='mcap')
    with open_bag(tmp_path / 'r.mcap') as bag, pytest.raises(SourceError, match='both'):
        next(bag_frames(bag, [IMAGE_TOPIC], {IMAGE_TOPIC: IMAGE_TOPIC}))
