import cv2
import numpy as np
import pytest

from boq_ros.bags import open_bag
from boq_ros.pipeline import decode
from boq_ros.sources import bag_frames
from boq_ros.synth import (
    COMPRESSED_TOPIC,
    IMAGE_TOPIC,
    ODOM_TOPIC,
    TF_TOPIC,
    SynthError,
    World,
    generate_query_recording,
    generate_recording,
)
from boq_ros.trajectory import Trajectory

SMALL = {'laps': 2, 'frames_per_lap': 8, 'image_size': (64, 48), 'odom_rate_hz': 10.0}


def rgb_frames(path, topic=None):
    with open_bag(path) as bag:
        frames = list(bag_frames(bag, bag.image_topics() if topic is None else [topic]))
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
