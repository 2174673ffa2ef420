import json
import math

import cv2
import numpy as np
import pytest

from boq_ros.bags import (
    BagWriteError,
    make_camera_info_msg,
    open_bag,
    stamp_to_ns,
    write_bag,
)
from boq_ros.images import decode_depth
from boq_ros.pipeline import Frame, decode
from boq_ros.sources import bag_frames
from boq_ros.synth import (
    CAMERA_INFO_TOPIC,
    COMPRESSED_TOPIC,
    DEMO_DRIFT,
    DEPTH_TOPIC,
    GROUND_TRUTH_TOPIC,
    IMAGE_TOPIC,
    ODOM_TOPIC,
    TF_TOPIC,
    OdometryDrift,
    SynthError,
    World,
    camera_intrinsics,
    camera_pose_world,
    depth_to_mm,
    generate_query_recording,
    generate_recording,
    recording_trajectories,
)
from boq_ros.trajectory import Trajectory

SMALL = {'laps': 2, 'frames_per_lap': 8, 'image_size': (64, 48), 'odom_rate_hz': 10.0}


def rgb_frames(path, topic=None):
    with open_bag(path) as bag:
        colour = [t for t in bag.image_topics() if t != DEPTH_TOPIC]  # depth is an Image too
        frames = [f for f in bag_frames(bag, colour if topic is None else [topic])
                  if isinstance(f, Frame)]  # not the camera_info updates that come with them
    decoded = [decode(f.image) for f in frames]
    return [a if encoding == 'rgb8' else a[..., ::-1] for a, encoding in decoded], frames


def thumbnail(image):
    """Per-channel standardised 16x12 thumbnail: blind to gain and colour cast."""
    small = cv2.resize(image, (16, 12), interpolation=cv2.INTER_AREA).astype(np.float64)
    small = (small - small.mean((0, 1))) / (small.std((0, 1)) + 1e-6)
    return small.ravel() / np.linalg.norm(small)


def test_recording_is_deterministic_and_seed_dependent(tmp_path):
    generate_recording(tmp_path / 'a', **SMALL)
    generate_recording(tmp_path / 'b', **SMALL)
    generate_recording(tmp_path / 'c', seed=1, **SMALL)
    raws = {}
    for name in 'abc':
        with open_bag(tmp_path / name) as bag:
            raws[name] = [(m.topic, m.log_time_ns, m.raw) for m in bag.messages()]
    assert raws['a'] == raws['b']
    images_a = [r for r in raws['a'] if r[0] == IMAGE_TOPIC]
    images_c = [r for r in raws['c'] if r[0] == IMAGE_TOPIC]
    assert all(x[2] != y[2] for x, y in zip(images_a, images_c))


def test_info_matches_the_bag(tmp_path):
    info = generate_recording(tmp_path / 'bag', storage='mcap', tf=True, **SMALL)
    assert info.n_frames == 16 and info.storage == 'mcap' and info.session == 'demo'
    assert info.duration_s == pytest.approx(15 / 5.0)
    with open_bag(info.path) as bag:
        assert bag.storage == 'mcap'
        assert {t: i.msgtype for t, i in bag.topics.items()} == info.topics
        assert bag.topics[IMAGE_TOPIC].count == bag.topics[COMPRESSED_TOPIC].count == 16
        assert bag.topics[ODOM_TOPIC].count == bag.topics[TF_TOPIC].count == 31
        frames, images = rgb_frames(tmp_path / 'bag', IMAGE_TOPIC)
        log_times = [m.log_time_ns for m in bag.messages([IMAGE_TOPIC])]
        odom = Trajectory.from_bag(bag, ODOM_TOPIC)
        tf = Trajectory.from_bag(bag, TF_TOPIC, child_frame='base_link')
    assert [i.stamp_ns for i in images] == info.frame_stamps_ns.tolist()
    assert log_times == [i.stamp_ns + 3_000_000 for i in images]
    assert images[0].frame_id == 'camera' and frames[0].shape == (48, 64, 3)
    for trajectory in (odom, tf):
        np.testing.assert_array_equal(trajectory.stamps_ns, info.trajectory.stamps_ns)
        np.testing.assert_allclose(trajectory.positions, info.trajectory.positions)
    positions, orientations, valid = odom.interpolate(info.frame_stamps_ns)
    assert valid.all()
    np.testing.assert_allclose(positions, info.frame_positions, atol=0.05)
    yaw = 2 * np.arctan2(orientations[:, 2], orientations[:, 3])
    np.testing.assert_allclose(np.angle(np.exp(1j * (yaw - info.frame_yaws))), 0, atol=0.01)


def test_compressed_frames_match_raw_frames(tmp_path):
    generate_recording(tmp_path / 'bag', **SMALL)
    raw, _ = rgb_frames(tmp_path / 'bag', IMAGE_TOPIC)
    jpeg, images = rgb_frames(tmp_path / 'bag', COMPRESSED_TOPIC)
    assert decode(images[0].image)[1] == 'rgb8'  # the JPEG decoder gives RGB
    for a, b in zip(raw, jpeg):
        assert np.abs(a.astype(int) - b).mean() < 12  # JPEG artefacts on a 64x48 image


def test_revisits_are_geometric_and_look_alike(tmp_path):
    per_lap = 30
    info = generate_recording(tmp_path / 'bag', laps=2, frames_per_lap=per_lap,
                              image_size=(160, 120), compressed=False)
    positions = info.frame_positions
    distance = np.linalg.norm(positions[:, None] - positions[None], axis=2)
    revisit = np.array([distance[i, i + per_lap] for i in range(per_lap)])
    assert revisit.max() < 2.5 and revisit.max() > 0.5  # the same place, another viewpoint
    assert info.frame_laps.tolist() == [0] * per_lap + [1] * per_lap
    yaw_change = np.abs(np.angle(np.exp(1j * (info.frame_yaws[per_lap:]
                                              - info.frame_yaws[:per_lap]))))
    assert yaw_change.max() > 0.05

    frames, _ = rgb_frames(info.path)
    features = np.array([thumbnail(f) for f in frames])
    similarity = features[per_lap:] @ features[:per_lap].T
    far = distance[per_lap:, :per_lap] > 20
    same_place = np.diag(similarity)
    assert same_place.mean() > similarity[far].mean() + 0.2
    best = np.argmax(similarity, axis=1)
    correct = distance[per_lap + np.arange(per_lap), best] < 5
    assert correct.mean() >= 0.7


def test_query_session_revisits_the_same_world(tmp_path):
    kwargs = {'laps': 1, 'frames_per_lap': 30, 'image_size': (160, 120)}
    reference = generate_recording(tmp_path / 'map', raw=False, **kwargs)
    query = generate_query_recording(tmp_path / 'query', compressed=False, **kwargs)
    assert query.session == 'query'
    assert query.frame_stamps_ns[0] - reference.frame_stamps_ns[0] == 86_400 * 10**9
    distance = np.linalg.norm(query.frame_positions[:, None]
                              - reference.frame_positions[None], axis=2)
    assert distance.min(axis=1).max() < 2.5
    map_features = np.array([thumbnail(f) for f in rgb_frames(reference.path)[0]])
    query_features = np.array([thumbnail(f) for f in rgb_frames(query.path)[0]])
    best = np.argmax(query_features @ map_features.T, axis=1)
    assert (distance[np.arange(30), best] < 5).mean() >= 0.7


def test_generator_refusals(tmp_path):
    with pytest.raises(SynthError, match='raw and compressed are both False'):
        generate_recording(tmp_path / 'a', raw=False, compressed=False)
    with pytest.raises(SynthError, match='laps >= 1'):
        generate_recording(tmp_path / 'a', laps=0)
    with pytest.raises(SynthError, match='image_size'):
        generate_recording(tmp_path / 'a', image_size=(8, 8))
    with pytest.raises(SynthError, match='rates must be positive'):
        generate_recording(tmp_path / 'a', rate_hz=0)
    with pytest.raises(SynthError, match='variant >= 1'):
        generate_query_recording(tmp_path / 'a', variant=0)
    with pytest.raises(SynthError, match='seed must be >= 0'):
        generate_recording(tmp_path / 'a', seed=-1)
    with pytest.raises(SynthError, match='not on the street'):
        World(0).render(0.0, 0.0, 0.0)
    (tmp_path / 'exists').mkdir()
    with pytest.raises(FileExistsError):
        generate_recording(tmp_path / 'exists', **SMALL)


def back_project(depth, intrinsics, pose, u=None, v=None):
    """World points of pixels (all, or at sub-pixel u, v) with z-depth, as a consumer would."""
    fx, fy, cx, cy = intrinsics
    if u is None:
        v, u = np.mgrid[0:depth.shape[0], 0:depth.shape[1]]
    camera = np.stack([(u - cx) / fx * depth, (v - cy) / fy * depth, depth], axis=-1)
    return camera @ pose[:3, :3].T + pose[:3, 3]


def test_intrinsics_and_camera_pose_conventions():
    assert camera_intrinsics((320, 240), math.radians(90)) == pytest.approx(
        (160.0, 160.0, 159.5, 119.5))
    fx, fy, cx, cy = camera_intrinsics((97, 61), math.radians(60))
    assert fx == fy == pytest.approx(97 / (2 * math.tan(math.radians(30))))
    assert (cx, cy) == (48.0, 30.0)  # the middle pixel of an odd size is the principal point
    with pytest.raises(SynthError, match='hfov_rad must be within'):
        camera_intrinsics((320, 240), math.pi)
    with pytest.raises(SynthError, match='image_size must be positive'):
        camera_intrinsics((0, 240))
    pose = camera_pose_world(20.0, 1.0, math.radians(90))  # looking along world +y
    np.testing.assert_allclose(pose[:3, :3].T @ pose[:3, :3], np.eye(3), atol=1e-12)
    assert np.linalg.det(pose[:3, :3]) == pytest.approx(1.0)
    np.testing.assert_allclose(pose[:3, 2], [0, 1, 0], atol=1e-12)  # optical z: forward
    np.testing.assert_allclose(pose[:3, 0], [1, 0, 0], atol=1e-12)  # x: right of +y is +x
    np.testing.assert_allclose(pose[:3, 1], [0, 0, -1], atol=1e-12)  # y: down
    np.testing.assert_allclose(pose[:, 3], [20.0, 1.0, World.CAMERA_HEIGHT, 1.0])


def test_depth_is_exact_geometry_from_the_same_ray_cast():
    world = World(0)
    size = (320, 240)
    intrinsics = camera_intrinsics(size, math.radians(90))
    for x, y, yaw in [(20.0, 0.3, math.pi / 2 + 0.05), (-13.0, 14.0, 3.9), (0.0, -22.0, 0.4)]:
        rgb, depth = world.render(x, y, yaw, size, with_depth=True)
        np.testing.assert_array_equal(rgb, world.render(x, y, yaw, size))
        assert depth.dtype == np.float32 and depth.shape == (240, 320)
        points = back_project(depth.astype(np.float64), intrinsics, camera_pose_world(x, y, yaw))
        radius, height = np.hypot(points[..., 0], points[..., 1]), points[..., 2]
        valid = depth > 0
        on_wall = valid & np.isclose(radius, World.INNER_RADIUS, rtol=0, atol=1e-3)
        on_wall |= valid & np.isclose(radius, World.OUTER_RADIUS, rtol=0, atol=1e-3)
        on_ground = valid & ~on_wall & (np.abs(height) < 1e-3)
        assert (on_wall | on_ground)[valid].all()  # every pixel with depth is on a surface
        assert on_wall.mean() > 0.2 and on_ground.mean() > 0.05 and (~valid).mean() > 0.02
        assert (height[on_wall] > -1e-3).all() and (height[on_wall] < World.WALL_HEIGHT).all()
        ground_radius = radius[on_ground]
        assert ground_radius.min() > World.INNER_RADIUS - 1e-3
        assert ground_radius.max() < World.OUTER_RADIUS + 1e-3
        # The rows either side of the horizon see the walls at camera height (half a pixel off).
        horizon = height[119:121][on_wall[119:121]]
        half_pixel = depth[119:121].max() * 0.5 / intrinsics[1]
        np.testing.assert_allclose(horizon, World.CAMERA_HEIGHT, atol=half_pixel + 1e-6)
        # Sky (no depth) lies above the roofs, all higher than the camera: never below the
        # horizon.
        assert valid[120:].all()


def test_depth_to_mm_marks_what_does_not_fit():
    np.testing.assert_array_equal(depth_to_mm(np.array([0.0, 0.0004, 0.0006, 1.2344, 65.534,
                                                       65.535, 80.0])),
                                  [0, 0, 1, 1234, 65534, 0, 0])


def test_recording_carries_camera_info_and_aligned_depth(tmp_path):
    info = generate_recording(tmp_path / 'bag', storage='mcap', **SMALL)
    assert info.topics[CAMERA_INFO_TOPIC] == 'sensor_msgs/msg/CameraInfo'
    assert info.topics[DEPTH_TOPIC] == 'sensor_msgs/msg/Image'
    assert info.image_size == (64, 48)
    assert info.intrinsics == camera_intrinsics((64, 48), math.radians(90))
    assert info.frame_camera_poses.shape == (16, 4, 4)
    for k in (0, 9):
        x, y, _ = info.frame_positions[k]
        np.testing.assert_array_equal(info.frame_camera_poses[k],
                                      camera_pose_world(x, y, info.frame_yaws[k]))
    fx, fy, cx, cy = info.intrinsics
    with open_bag(info.path) as bag:
        assert {t: i.msgtype for t, i in bag.topics.items()} == info.topics
        assert bag.topics[CAMERA_INFO_TOPIC].count == bag.topics[DEPTH_TOPIC].count == 16
        camera_messages = [(m.topic, m.log_time_ns, m.decode())
                           for m in bag.messages([CAMERA_INFO_TOPIC, DEPTH_TOPIC, IMAGE_TOPIC])]
    # Per frame: camera info, then depth, then the image, all with the image's stamp and frame.
    offsets = {CAMERA_INFO_TOPIC: 2_000_000, DEPTH_TOPIC: 2_500_000, IMAGE_TOPIC: 3_000_000}
    assert [t for t, _, _ in camera_messages] == [CAMERA_INFO_TOPIC, DEPTH_TOPIC, IMAGE_TOPIC] * 16
    for n, (topic, log_ns, msg) in enumerate(camera_messages):
        stamp = stamp_to_ns(msg.header.stamp)
        assert stamp == info.frame_stamps_ns[n // 3] and log_ns == stamp + offsets[topic]
        assert msg.header.frame_id == 'camera'
    camera_info = camera_messages[0][2]
    assert (camera_info.width, camera_info.height) == (64, 48)
    assert camera_info.distortion_model == 'plumb_bob'
    np.testing.assert_array_equal(camera_info.d, np.zeros(5))
    np.testing.assert_array_equal(camera_info.k, [fx, 0, cx, 0, fy, cy, 0, 0, 1])
    np.testing.assert_array_equal(camera_info.r, np.eye(3).ravel())
    np.testing.assert_array_equal(camera_info.p, [fx, 0, cx, 0, 0, fy, cy, 0, 0, 0, 1, 0])
    world = World(0)
    for n in (1, 31):  # frames 0 and 10 (lap 1: other lighting, depth all the same)
        msg = camera_messages[n][2]
        assert msg.encoding == '16UC1' and (msg.width, msg.height, msg.step) == (64, 48, 128)
        depth = decode_depth(msg.encoding, msg.height, msg.width, msg.step, msg.data,
                             bool(msg.is_bigendian))
        k = n // 3
        x, y, _ = info.frame_positions[k]
        _, exact = world.render(x, y, info.frame_yaws[k], (64, 48), with_depth=True)
        np.testing.assert_array_equal(np.isnan(depth), exact == 0)
        np.testing.assert_allclose(depth[exact > 0], exact[exact > 0], atol=5e-4, rtol=0)


def test_camera_info_message_maker(tmp_path):
    k = np.array([[500.0, 0, 319.5], [0, 501.0, 239.5], [0, 0, 1]])
    p = np.arange(12.0)
    msg = make_camera_info_msg(5, 'cam', 640, 480, k, [0.1, -0.2, 0, 0, 0.01],
                               distortion_model='rational_polynomial', p=p)
    assert msg.distortion_model == 'rational_polynomial' and msg.header.frame_id == 'cam'
    np.testing.assert_array_equal(msg.k, k.ravel())
    np.testing.assert_array_equal(msg.p, p)
    assert not msg.roi.do_rectify and msg.binning_x == msg.binning_y == 0
    with write_bag(tmp_path / 'bag') as bag:  # serialisable as a Kilted CameraInfo
        bag.write(CAMERA_INFO_TOPIC, 'sensor_msgs/msg/CameraInfo', msg, 5)
    with open_bag(tmp_path / 'bag') as bag:
        (message,) = bag.messages()
        np.testing.assert_array_equal(message.decode().d, [0.1, -0.2, 0, 0, 0.01])
    with pytest.raises(BagWriteError, match='k needs 9 values'):
        make_camera_info_msg(0, 'cam', 640, 480, np.eye(4), [])
    with pytest.raises(BagWriteError, match='p needs 12 values'):
        make_camera_info_msg(0, 'cam', 640, 480, k, [], p=np.eye(3))
    with pytest.raises(BagWriteError, match='positive size, got 0x480'):
        make_camera_info_msg(0, 'cam', 0, 480, k, [])


def test_camera_topics_are_optional_and_leave_the_others_unchanged(tmp_path):
    full = generate_recording(tmp_path / 'full', tf=True, **SMALL)
    plain = generate_recording(tmp_path / 'plain', tf=True, camera_info=False, depth=False,
                               **SMALL)
    only_info = generate_recording(tmp_path / 'info', camera_info=True, depth=False, **SMALL)
    assert CAMERA_INFO_TOPIC not in plain.topics and DEPTH_TOPIC not in plain.topics
    assert DEPTH_TOPIC not in only_info.topics and CAMERA_INFO_TOPIC in only_info.topics
    assert set(full.topics) - set(plain.topics) == {CAMERA_INFO_TOPIC, DEPTH_TOPIC}
    np.testing.assert_array_equal(full.frame_camera_poses, plain.frame_camera_poses)
    with open_bag(full.path) as bag:
        messages = [(m.topic, m.log_time_ns, m.raw) for m in bag.messages()
                    if m.topic not in (CAMERA_INFO_TOPIC, DEPTH_TOPIC)]
    with open_bag(plain.path) as bag:
        assert [(m.topic, m.log_time_ns, m.raw) for m in bag.messages()] == messages


def test_pixels_seen_in_two_frames_back_project_to_the_same_point(tmp_path):
    per_lap = 30
    info = generate_recording(tmp_path / 'bag', laps=2, frames_per_lap=per_lap,
                              image_size=(320, 240), raw=False, compressed=True,
                              camera_info=False)
    with open_bag(info.path) as bag:
        depths = [decode_depth(m.encoding, m.height, m.width, m.step, m.data)
                  for m in (message.decode() for message in bag.messages([DEPTH_TOPIC]))]
    fx, fy, cx, cy = info.intrinsics
    checked = 0
    for a, b in [(3, 4), (12, 13), (5, 5 + per_lap), (20, 21 + per_lap)]:
        pose_a, pose_b = info.frame_camera_poses[a], info.frame_camera_poses[b]
        points = back_project(depths[a].astype(np.float64), info.intrinsics, pose_a)[::4, ::4]
        points = points[np.isfinite(points).all(axis=-1)]
        # Where each point falls in frame b, and whether the inner wall hides it from there.
        camera_b = (points - pose_b[:3, 3]) @ pose_b[:3, :3]
        u, v = fx * camera_b[:, 0] / camera_b[:, 2] + cx, fy * camera_b[:, 1] / camera_b[:, 2] + cy
        inside = (camera_b[:, 2] > 0.1) & (u >= 0) & (u < 319) & (v >= 0) & (v < 239)
        centre = pose_b[:2, 3]
        ray = points[:, :2] - centre
        s = np.clip(-(ray @ centre) / np.einsum('ij,ij->i', ray, ray), 0, 1)
        hidden = np.hypot(*(centre + s[:, None] * ray).T) < World.INNER_RADIUS - 1e-3
        seen = inside & ~hidden
        u, v, points = u[seen], v[seen], points[seen]
        # Depth at the sub-pixel position, bilinear over the four pixels around it.
        u0, v0 = np.floor(u).astype(int), np.floor(v).astype(int)
        du, dv = u - u0, v - v0
        d = depths[b]
        z = ((1 - du) * (1 - dv) * d[v0, u0] + du * (1 - dv) * d[v0, u0 + 1]
             + (1 - du) * dv * d[v0 + 1, u0] + du * dv * d[v0 + 1, u0 + 1])
        again = back_project(z.astype(np.float64), info.intrinsics, pose_b, u, v)
        error = np.linalg.norm(again - points, axis=1)
        # Wall points whose four pixels in frame b all see the same wall (above the ground):
        # interpolation is then exact to well below a centimetre.
        grid_b = back_project(d.astype(np.float64), info.intrinsics, pose_b)
        corners = [grid_b[v0 + i, u0 + j] for i in (0, 1) for j in (0, 1)]
        radius = np.hypot(points[:, 0], points[:, 1])
        same_wall = np.all([(np.abs(np.hypot(c[:, 0], c[:, 1]) - radius) < 1e-3) & (c[:, 2] > 1e-3)
                            for c in corners], axis=0)
        assert same_wall.sum() > 300 and error[same_wall].max() < 0.01
        # All points, ground included: the few misses straddle an occluding edge or the crease
        # between wall and ground, where bilinear interpolation mixes two surfaces.
        error = error[np.isfinite(error)]  # a neighbour in the sky: no depth to interpolate
        assert len(error) > 500 and np.median(error) < 0.002
        assert (error < 0.01).mean() > 0.97
        checked += len(error)
    assert checked > 4000


ODOMETRY_TOPICS = (ODOM_TOPIC, TF_TOPIC, GROUND_TRUTH_TOPIC)
DEMO = {'laps': 3, 'frames_per_lap': 100, 'rate_hz': 5.0, 'seed': 0}  # boq_ros.demo's recording


def poses(path, topic):
    """(stamp, log time, x, y, z, qx, qy, qz, qw) of every message of an Odometry or TF topic."""
    rows = []
    with open_bag(path) as bag:
        for message in bag.messages([topic]):
            msg = message.decode()
            if topic == TF_TOPIC:
                (msg,) = msg.transforms
                p, q = msg.transform.translation, msg.transform.rotation
            else:
                p, q = msg.pose.pose.position, msg.pose.pose.orientation
            rows.append((stamp_to_ns(msg.header.stamp), message.log_time_ns,
                         p.x, p.y, p.z, q.x, q.y, q.z, q.w))
    return np.array(rows)


def yaw_of(quaternions):
    return 2 * np.arctan2(quaternions[:, 2], quaternions[:, 3])


def base_increments(trajectory):
    """Forward, lateral (m) and heading change (rad) between consecutive poses, in the base."""
    x, y = trajectory.positions[:, 0], trajectory.positions[:, 1]
    yaw = yaw_of(trajectory.orientations)
    c, s = np.cos(yaw[:-1]), np.sin(yaw[:-1])
    dx, dy = np.diff(x), np.diff(y)
    return c * dx + s * dy, c * dy - s * dx, np.angle(np.exp(1j * np.diff(yaw)))


def ate_rmse(truth, estimate):
    """RMSE of positions after the rigid motion (Umeyama, no scale) that best aligns them."""
    mu_t, mu_e = truth.mean(axis=0), estimate.mean(axis=0)
    u, _, vt = np.linalg.svd((estimate - mu_e).T @ (truth - mu_t))
    flip = np.diag([1.0, 1.0, np.sign(np.linalg.det(vt.T @ u.T))])
    rotation = vt.T @ flip @ u.T
    aligned = (estimate - mu_e) @ rotation.T + mu_t
    return float(np.sqrt(((aligned - truth) ** 2).sum(axis=1).mean()))


def test_without_drift_odom_is_the_exact_ground_truth(tmp_path):
    info = generate_recording(tmp_path / 'bag', tf=True, **SMALL)
    assert GROUND_TRUTH_TOPIC not in info.topics and info.odometry is info.trajectory
    planned = recording_trajectories(**{k: v for k, v in SMALL.items() if k != 'image_size'})
    np.testing.assert_array_equal(planned.frame_stamps_ns, info.frame_stamps_ns)
    truth = planned.ground_truth
    assert planned.odometry is truth
    odom = poses(info.path, ODOM_TOPIC)
    np.testing.assert_array_equal(odom[:, 0], truth.stamps_ns)
    np.testing.assert_array_equal(odom[:, 2:5], truth.positions)
    np.testing.assert_allclose(odom[:, 5:], truth.orientations, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(poses(info.path, TF_TOPIC), odom)


def test_drift_changes_only_the_odometry_and_keeps_the_truth(tmp_path):
    drift = OdometryDrift(translation_noise=0.05, heading_noise_per_sqrt_m=0.01,
                          heading_bias_per_m=0.003, scale_bias=-0.02)
    exact = generate_recording(tmp_path / 'exact', tf=True, **SMALL)
    drifted = generate_recording(tmp_path / 'drifted', tf=True, odometry_drift=drift, **SMALL)
    assert drifted.topics == {**exact.topics, GROUND_TRUTH_TOPIC: 'nav_msgs/msg/Odometry'}
    with open_bag(exact.path) as bag:
        others = [(m.topic, m.log_time_ns, m.raw) for m in bag.messages()
                  if m.topic not in ODOMETRY_TOPICS]
    with open_bag(drifted.path) as bag:
        assert {t: i.msgtype for t, i in bag.topics.items()} == drifted.topics
        assert [(m.topic, m.log_time_ns, m.raw) for m in bag.messages()
                if m.topic not in ODOMETRY_TOPICS] == others  # images, depth, info: same bytes
        ground_truth_msg = next(bag.messages([GROUND_TRUTH_TOPIC])).decode()
    assert (ground_truth_msg.header.frame_id, ground_truth_msg.child_frame_id) == (
        'world', 'base_link')
    # /ground_truth/odom is what /odom was without drift, message for message.
    np.testing.assert_array_equal(poses(drifted.path, GROUND_TRUTH_TOPIC),
                                  poses(exact.path, ODOM_TOPIC))
    for name in ('frame_stamps_ns', 'frame_positions', 'frame_yaws', 'frame_camera_poses'):
        np.testing.assert_array_equal(getattr(drifted, name), getattr(exact, name))
    np.testing.assert_array_equal(drifted.trajectory.positions, exact.trajectory.positions)
    # The ground truth topic is the rendered cameras' trajectory.
    truth = Trajectory.from_bag(drifted.path, GROUND_TRUTH_TOPIC)
    xyz, quaternions, valid = truth.interpolate(drifted.frame_stamps_ns)
    cameras = drifted.frame_camera_poses
    assert valid.all()
    np.testing.assert_allclose(xyz[:, :2], cameras[:, :2, 3], rtol=0, atol=1e-9)
    heading = np.arctan2(cameras[:, 1, 2], cameras[:, 0, 2])  # optical z: the base's heading
    np.testing.assert_allclose(np.angle(np.exp(1j * (yaw_of(quaternions) - heading))), 0,
                               atol=1e-9)
    # /odom carries the drifted odometry, /tf follows it; it starts at the true first pose.
    odom = poses(drifted.path, ODOM_TOPIC)
    np.testing.assert_array_equal(odom[:, :2], poses(drifted.path, GROUND_TRUTH_TOPIC)[:, :2])
    np.testing.assert_array_equal(poses(drifted.path, TF_TOPIC), odom)
    np.testing.assert_array_equal(odom[:, 2:5], drifted.odometry.positions)
    np.testing.assert_allclose(odom[:, 5:], drifted.odometry.orientations, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(odom[0, 2:], poses(exact.path, ODOM_TOPIC)[0, 2:])
    assert np.linalg.norm(odom[-1, 2:5] - exact.trajectory.positions[-1]) > 1.0
    # The same numbers as recording_trajectories, which renders nothing.
    planned = recording_trajectories(odometry_drift=drift, **{
        k: v for k, v in SMALL.items() if k != 'image_size'})
    np.testing.assert_array_equal(planned.odometry.positions, drifted.odometry.positions)
    np.testing.assert_array_equal(planned.ground_truth.positions, drifted.trajectory.positions)


def test_drift_is_seeded_and_independent_of_the_images():
    kwargs = {**DEMO, 'laps': 1, 'odometry_drift': DEMO_DRIFT}
    first = recording_trajectories(**kwargs).odometry
    np.testing.assert_array_equal(recording_trajectories(**kwargs).odometry.positions,
                                  first.positions)
    for other in ({'seed': 1}, {'variant': 1}):
        moved = recording_trajectories(**{**kwargs, **other}).odometry
        assert not np.allclose(moved.positions[-1], first.positions[-1], atol=0.01), other
    zero = recording_trajectories(**{**kwargs, 'odometry_drift': OdometryDrift()})
    np.testing.assert_allclose(zero.odometry.positions, zero.ground_truth.positions, atol=1e-9)
    np.testing.assert_allclose(zero.odometry.orientations, zero.ground_truth.orientations,
                               atol=1e-9)


def test_demo_drift_is_smooth_realistic_and_5_m_ate(tmp_path):
    info = generate_recording(tmp_path / 'demo.mcap', storage='mcap', image_size=(320, 240),
                              compressed=False, camera_info=False, depth=False,
                              odometry_drift=DEMO_DRIFT, **DEMO)
    truth = Trajectory.from_bag(info.path, GROUND_TRUTH_TOPIC)
    odometry = Trajectory.from_bag(info.path, ODOM_TOPIC)
    np.testing.assert_array_equal(odometry.positions, info.odometry.positions)
    frames_truth, _, valid = truth.interpolate(info.frame_stamps_ns)
    frames_odometry, _, valid_odometry = odometry.interpolate(info.frame_stamps_ns)
    assert valid.all() and valid_odometry.all() and len(frames_truth) == 300
    ate = ate_rmse(frames_truth, frames_odometry)
    assert 4.0 <= ate <= 6.0
    # Mostly heading drift: without the translation terms, nearly the same error.
    heading_only = OdometryDrift(heading_noise_per_sqrt_m=DEMO_DRIFT.heading_noise_per_sqrt_m,
                                 heading_bias_per_m=DEMO_DRIFT.heading_bias_per_m)
    planned = recording_trajectories(odometry_drift=heading_only, **DEMO)
    positions, _, _ = planned.odometry.interpolate(info.frame_stamps_ns)
    assert ate_rmse(frames_truth, positions) > 0.8 * ate
    # Each increment is close to the true one (no jumps) ...
    step = np.linalg.norm(np.diff(truth.positions, axis=0), axis=1)
    true_forward, true_lateral, true_turn = base_increments(truth)
    forward, lateral, turn = base_increments(odometry)
    translation_error = np.hypot(forward - true_forward, lateral - true_lateral)
    assert (translation_error < 0.1 * step).all()
    assert np.abs(turn - true_turn).max() < 0.01  # rad per 20 Hz step (0.32 m)
    assert (turn - true_turn).mean() == pytest.approx(
        DEMO_DRIFT.heading_bias_per_m * step.mean(), rel=0.2)  # the bias, under the noise
    # ... and the error grows with the distance travelled.
    error = np.linalg.norm(odometry.positions - truth.positions, axis=1)
    third = len(error) // 3
    assert error[0] == 0.0 and error[:third // 4].max() < 0.5
    assert error[:third].max() < error[third:].max() and error[-1] > 10.0
    heading_error = np.angle(np.exp(1j * (yaw_of(odometry.orientations)
                                          - yaw_of(truth.orientations))))
    assert np.abs(np.diff(heading_error)).max() < 0.01
    assert 0.3 < abs(heading_error[-1]) < 1.2


@pytest.mark.parametrize(('values', 'message'), [
    ({'translation_noise': -0.01}, r'translation_noise must be within \[0.0, 0.5\], got -0.01'),
    ({'heading_noise_per_sqrt_m': float('nan')}, r'heading_noise_per_sqrt_m must be within'),
    ({'heading_bias_per_m': 0.5}, r'heading_bias_per_m must be within \[-0.1, 0.1\] rad/m'),
    ({'scale_bias': -1.0}, r'scale_bias must be within \[-0.5, 0.5\], got -1.0'),
    ({'scale_bias': '0.01'}, r"scale_bias must be a number, got '0.01'"),
    ({'translation_noise': True}, r'translation_noise must be a number, got True'),
])
def test_odometry_drift_refusals(values, message):
    with pytest.raises(SynthError, match=message):
        OdometryDrift(**values)


def test_eval_scores_against_the_ground_truth_topic(tmp_path, capsys):
    from boq_ros.cli import main
    from boq_ros.eval.records import CandidateRecord, write_records

    per_lap = 12
    info = generate_recording(tmp_path / 'bag', laps=2, frames_per_lap=per_lap,
                              image_size=(32, 24), camera_info=False, depth=False,
                              odometry_drift=DEMO_DRIFT)
    stamps = info.frame_stamps_ns.tolist()
    # Every frame of lap 1 proposes the same place of lap 0: the true revisit.
    records = [CandidateRecord(q, stamps[q], 'demo', 'camera', q, q - per_lap,
                               stamps[q - per_lap], 'demo', q - per_lap, 0.9, 0, True)
               for q in range(per_lap, 2 * per_lap)]
    write_records(tmp_path / 'records.jsonl', records)
    argv = ['eval', str(info.path), '--records', str(tmp_path / 'records.jsonl'),
            '--radius-m', '3', '--exclusion-seconds', '1', '--exclusion-keyframes', '2',
            '--no-progress']
    assert main([*argv, '--pose-topic', ODOM_TOPIC, '--out', str(tmp_path / 'odom')]) == 2
    error = capsys.readouterr().err
    assert (f'--pose-topic /odom is not ground truth: {info.path} holds exact poses on '
            f'/ground_truth/odom; score against them (--pose-topic /ground_truth/odom)') in error
    assert not (tmp_path / 'odom').exists()
    assert main([*argv, '--pose-topic', GROUND_TRUTH_TOPIC, '--out', str(tmp_path / 'gt')]) == 0
    report = json.loads((tmp_path / 'gt' / 'report.json').read_text())
    assert report['inputs']['ground_truth'] == 'topic /ground_truth/odom'
    assert report['runs'][0]['metrics']['recall_at']['1'] == 1.0
    # Without drift, /odom is the ground truth and the bag has no other: nothing to refuse.
    exact = generate_recording(tmp_path / 'exact', laps=2, frames_per_lap=per_lap,
                               image_size=(32, 24), camera_info=False, depth=False)
    argv[1] = str(exact.path)
    assert main([*argv, '--pose-topic', ODOM_TOPIC, '--out', str(tmp_path / 'exact_out')]) == 0
    exact_report = json.loads((tmp_path / 'exact_out' / 'report.json').read_text())
    assert exact_report['runs'][0]['metrics'] == report['runs'][0]['metrics']
