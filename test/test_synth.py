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
    DEPTH_TOPIC,
    IMAGE_TOPIC,
    ODOM_TOPIC,
    TF_TOPIC,
    SynthError,
    World,
    camera_intrinsics,
    camera_pose_world,
    depth_to_mm,
    generate_query_recording,
    generate_recording,
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
