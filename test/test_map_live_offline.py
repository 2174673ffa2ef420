"""A map grown live by the node and one built offline from the same recording store the same poses.

Odometry runs at 7 Hz and the camera at 5 Hz, so almost every image falls between two odometry
stamps and its pose is interpolated; on the wire the odometry after an image comes after it, so
the node must wait for it (the pipeline's pose lookup) to store what `map build` stores.
"""
from boq_ros.srv import SaveMap
import numpy as np

from boq_ros.demo import write_params_file
from boq_ros.keyframe_map import KeyframeMap
from boq_ros.mapping import Recording, build_map
from boq_ros.ros.replay import ReplayOptions, replay
from boq_ros.settings import KeyframePolicy, MapSettings, ModelSettings
from boq_ros.synth import IMAGE_TOPIC, ODOM_TOPIC, generate_recording

TOLERANCE_S = 0.2


def test_live_and_offline_maps_store_the_same_poses(tmp_path, start_node, ros_domain_id,
                                                    resnet_checkpoint, ros_node):
    rec = generate_recording(tmp_path / 'walk.mcap', storage='mcap', laps=1, frames_per_lap=12,
                             image_size=(48, 36), rate_hz=5.0, odom_rate_hz=7.0)
    maps = tmp_path / 'maps'
    model = ModelSettings(str(resnet_checkpoint), device='cpu', resize_policy='square',
                          input_size=32)
    params = {'checkpoint': model.checkpoint, 'device': 'cpu', 'resize_policy': 'square',
              'input_size': 32, 'image_topics': [IMAGE_TOPIC], 'input_qos': 'reliable',
              'input_qos_depth': 50, 'queue_size': 50, 'odometry_topic': ODOM_TOPIC,
              'odometry_qos': 'reliable',  # not one pose lost while the endpoints match
              'pose_tolerance_s': TOLERANCE_S, 'map_directory': str(maps), 'session': 'walk',
              'exclusion_keyframes': 0, 'exclusion_seconds': 0.0}
    node = start_node(params_file=write_params_file(tmp_path / 'params.yaml', params))
    options = ReplayOptions(topics=(IMAGE_TOPIC, ODOM_TOPIC), rate=4.0,
                            record_topic='/loop_candidates', lockstep=True,
                            subscriber_timeout_s=120.0, answer_timeout_s=60.0)
    summary, _ = replay(rec.path, options, domain_id=ros_domain_id, peer_alive=node.alive,
                        progress=False)
    assert (summary.images, summary.answered) == (rec.n_frames, rec.n_frames)
    saved = ros_node.call(SaveMap, '/vpr_node/save_map', SaveMap.Request(path='live'))
    assert saved.success and saved.keyframes == rec.n_frames, saved.message
    assert node.stop() == 0

    built = build_map([Recording(rec.path, image_topics=(IMAGE_TOPIC,), pose_topic=ODOM_TOPIC)],
                      tmp_path / 'offline', model=model,
                      keyframes=KeyframePolicy(pose_tolerance_s=TOLERANCE_S),
                      map_settings=MapSettings(session='walk'))
    live, offline = KeyframeMap.load(maps / 'live'), KeyframeMap.load(built.out)
    assert len(live) == len(offline) == rec.n_frames
    interpolated = 0
    for i in range(rec.n_frames):
        a, b = live.meta(i), offline.meta(i)
        assert (a.stamp_ns, a.session, a.camera, a.frame_id) == (
            b.stamp_ns, b.session, b.camera, b.frame_id)
        assert (a.pose_frame, a.pose_source) == (b.pose_frame, b.pose_source) == (
            'odom', f'odometry:{ODOM_TOPIC}')
        np.testing.assert_allclose(a.pose, b.pose, rtol=0, atol=1e-12)
        interpolated += a.stamp_ns % (10**9 // 7) != 0
        # and near the true pose at the image (the robot drives a ring: the interpolation is
        # along the chord between two odometry poses, up to ~0.3 m inside the arc)
        frame = int(np.flatnonzero(rec.frame_stamps_ns == a.stamp_ns)[0])
        np.testing.assert_allclose(a.pose[:3], rec.frame_positions[frame], atol=0.5)
    assert interpolated >= rec.n_frames - 2
