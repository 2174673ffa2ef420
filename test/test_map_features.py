"""Local features stored with keyframes: validation, growth, undo, merge, disk, old maps."""
import json
from pathlib import Path
import threading

import numpy as np
import pytest

from boq_ros.cli import main
from boq_ros.keyframe_map import (
    SCHEMA_VERSION,
    KeyframeMap,
    KeyframeMeta,
    LocalFeatures,
    MapError,
)
from boq_ros.keyframe_map.features import FEATURE_DTYPE

DIM = 16
BASE_FILES = {'schema.json', 'descriptors.npy', 'keyframes.npy', 'strings.json',
              'image_refs.npy'}


def unit(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def metas(n: int, session: str = 's', t0: int = 0) -> list[KeyframeMeta]:
    return [KeyframeMeta(stamp_ns=t0 + i, session=session, camera='cam') for i in range(n)]


def sift(n: int, seed: int = 0, depth: bool = True, calibrated: bool = True) -> LocalFeatures:
    rng = np.random.default_rng(seed)
    d = rng.uniform(0.3, 20, n).astype(np.float32)
    d[::3] = np.nan
    return LocalFeatures('sift', rng.uniform(0, 640, (n, 2)).astype(np.float32),
                         rng.integers(0, 256, (n, 128), dtype=np.uint8), (640, 480),
                         (525.0, 525.5, 319.5, 239.5) if calibrated else None,
                         d if depth else None)


def xfeat(n: int, seed: int = 0) -> LocalFeatures:
    rng = np.random.default_rng(seed)
    return LocalFeatures('xfeat', rng.uniform(0, 320, (n, 2)).astype(np.float32),
                         rng.standard_normal((n, 64)).astype(np.float16), (320, 240))


def new_map() -> KeyframeMap:
    return KeyframeMap(DIM, model_id='m', preprocess={})


def assert_same(got: LocalFeatures | None, want: LocalFeatures | None) -> None:
    assert (got is None) == (want is None)
    if want is None:
        return
    assert (got.kind, got.image_size, got.intrinsics) == \
        (want.kind, want.image_size, want.intrinsics)
    assert got.descriptors.dtype == want.descriptors.dtype
    np.testing.assert_array_equal(got.keypoints, want.keypoints)
    np.testing.assert_array_equal(got.descriptors, want.descriptors)
    assert (got.depth is None) == (want.depth is None)
    if want.depth is not None:
        np.testing.assert_array_equal(got.depth, want.depth)  # NaN where NaN


def mixed() -> list[LocalFeatures | None]:
    return [sift(50, 1), None, xfeat(30, 2), sift(0, 3), sift(20, 4, depth=False,
                                                            calibrated=False)]


F32 = np.float32


@pytest.mark.parametrize('change, field', [
    (dict(kind='SIFT'), 'kind'), (dict(kind='a.b'), 'kind'), (dict(kind=''), 'kind'),
    (dict(keypoints=np.zeros((4, 2))), 'keypoints'),
    (dict(keypoints=np.zeros((4, 3), F32)), 'keypoints'),
    (dict(keypoints=np.full((4, 2), np.nan, F32)), 'keypoints contain NaN'),
    (dict(descriptors=np.zeros((3, 8), np.uint8)), r'descriptors must be an \[4, D\]'),
    (dict(descriptors=np.zeros((4, 8), np.float32)), 'descriptors'),
    (dict(descriptors=np.full((4, 8), np.inf, np.float16)), 'descriptors contain'),
    (dict(image_size=(640, 0)), 'image_size'), (dict(image_size=(640.0, 480)), 'image_size'),
    (dict(intrinsics=(0.0, 1.0, 2.0, 3.0)), 'intrinsics'),
    (dict(intrinsics=(1.0, 1.0, 2.0)), 'intrinsics'),
    (dict(intrinsics=(1.0, 1.0, np.nan, 3.0)), 'intrinsics'),
    (dict(depth=np.ones(3, F32)), r'depth must be a \[4\] float32'),
    (dict(depth=np.ones(4)), 'depth must be'),
    (dict(depth=np.array([1, 0, np.nan, 2], F32)), 'positive metres'),
    (dict(depth=np.array([1, np.inf, 2, 2], F32)), 'positive metres'),
])
def test_bad_local_features_are_refused_naming_the_field(change, field):
    good = dict(kind='orb', keypoints=np.zeros((4, 2), F32),
                descriptors=np.zeros((4, 32), np.uint8), image_size=(640, 480))
    LocalFeatures(**good)
    with pytest.raises(MapError, match=field):
        LocalFeatures(**{**good, **change})


def test_local_features_normalise_tuples_and_count_bytes():
    f = LocalFeatures('orb', np.zeros((4, 2), F32), np.zeros((4, 32), np.uint8),
                      [np.int64(64), 48], np.array([500, 500, 32, 24]), np.ones(4, F32))
    assert f.image_size == (64, 48) and f.intrinsics == (500.0, 500.0, 32.0, 24.0)
    assert f.nbytes == 4 * (8 + 32 + 4)
    assert sift(1000).nbytes == 140_000  # 1000 SIFT keypoints with depth


@pytest.mark.parametrize('mmap', [True, False])
def test_round_trip_with_and_without_features(tmp_path, mmap):
    m = new_map()
    feats = mixed()
    m.add(unit(5), metas(5), feats)
    m.add(unit(3, 1), metas(3, 'plain'))  # no features at all
    m.add(unit(1, 2), metas(1, 'late'), [sift(7, 9)])
    for i, f in enumerate([*feats, None, None, None, sift(7, 9)]):
        assert_same(m.features(i), f)
    path = m.save(tmp_path / 'map')
    files = {p.name for p in path.iterdir()}
    assert files == BASE_FILES | {'features.npy', 'features_keypoints.npy', 'features_depth.npy',
                                  'features_descriptors_sift.npy',
                                  'features_descriptors_xfeat.npy'}
    schema = json.loads((path / 'schema.json').read_text())
    assert schema['schema_version'] == SCHEMA_VERSION == 3
    assert schema['local_features'] == [{'kind': 'sift', 'dim': 128, 'dtype': 'uint8'},
                                        {'kind': 'xfeat', 'dim': 64, 'dtype': 'float16'}]
    assert np.load(path / 'features_keypoints.npy').shape == (107, 2)
    assert np.load(path / 'features_depth.npy').shape == (57,)  # only keyframes with depth
    assert np.load(path / 'features.npy').dtype == FEATURE_DTYPE
    loaded = KeyframeMap.load(path, mmap=mmap)
    assert isinstance(loaded._features.keypoints._chunks[0], np.memmap) == mmap  # lazy
    for i in range(9):
        assert_same(loaded.features(i), m.features(i))
    loaded.add(unit(2, 3), metas(2, 'more'), [None, xfeat(5, 7)])  # grows past the memory map
    again = KeyframeMap.load(loaded.save(path))
    assert_same(again.features(10), xfeat(5, 7))
    assert again.features(9) is None
    assert_same(again.features(0), feats[0])


def test_a_map_without_features_keeps_the_version_1_file_layout(tmp_path):
    m = new_map()
    m.add(unit(4), metas(4), [None] * 4)
    path = m.save(tmp_path / 'map')
    assert {p.name for p in path.iterdir()} == BASE_FILES
    schema = json.loads((path / 'schema.json').read_text())
    assert schema['local_features'] == [] and set(schema['files']) == BASE_FILES - {'schema.json'}
    assert KeyframeMap.load(path).features(3) is None


def test_a_version_1_map_loads_without_features(tmp_path):
    m = new_map()
    m.add(unit(6), metas(6))
    path = m.save(tmp_path / 'map')
    # Version 1 had the same files and this schema without local_features.
    schema = json.loads((path / 'schema.json').read_text())
    del schema['local_features']
    schema['schema_version'] = 1
    (path / 'schema.json').write_text(json.dumps(schema))
    old = KeyframeMap.load(path)
    assert len(old) == 6 and all(old.features(i) is None for i in range(6))
    assert old.statistics()['with_features'] == 0
    old.add(unit(1, 1), metas(1, 'new'), [sift(10)])
    upgraded = KeyframeMap.load(old.save(path))
    assert upgraded.schema.local_features[0]['kind'] == 'sift'
    assert_same(upgraded.features(6), sift(10))
    assert json.loads((path / 'schema.json').read_text())['schema_version'] == 3
    schema['schema_version'] = 2  # version 2 must name its feature kinds
    (path / 'schema.json').write_text(json.dumps(schema))
    with pytest.raises(MapError, match="missing field 'local_features'"):
        KeyframeMap.load(path)


def test_bad_feature_inputs_are_refused_and_the_map_is_unchanged():
    m = new_map()
    m.add(unit(1), metas(1), [sift(5)])
    with pytest.raises(MapError, match='got 1 local features entries for 2 keyframes'):
        m.add(unit(2, 1), metas(2, 'x'), [sift(3)])
    with pytest.raises(MapError, match=r'features\[1\]: expected LocalFeatures or None'):
        m.add(unit(2, 1), metas(2, 'x'), [None, 'sift'])
    wide = LocalFeatures('sift', np.zeros((2, 2), F32), np.zeros((2, 64), np.uint8), (8, 8))
    with pytest.raises(MapError, match=r'features\[0\]: sift descriptors are 64 x uint8, this '
                                       r'map stores 128 x uint8'):
        m.add(unit(1, 1), metas(1, 'x'), [wide])
    other = LocalFeatures('orb', np.zeros((2, 2), F32), np.zeros((2, 32), np.uint8), (8, 8))
    bad = LocalFeatures('orb', np.zeros((2, 2), F32), np.zeros((2, 32), np.float16), (8, 8))
    with pytest.raises(MapError, match=r'features\[1\]: orb descriptors are 32 x float16'):
        m.add(unit(2, 1), metas(2, 'x'), [other, bad])
    assert len(m) == 1 and m.schema.local_features == ({'kind': 'sift', 'dim': 128,
                                                         'dtype': 'uint8'},)
    with pytest.raises(MapError, match='no keyframe with id 1'):
        m.features(1)


def test_rollback_removes_features_and_kinds_added_since_the_savepoint(tmp_path):
    m = new_map()
    m.add(unit(2), metas(2), [sift(10, 1), None])
    point = m.savepoint()
    m.add(unit(3, 1), metas(3, 'b'), [sift(4, 2), xfeat(6, 3), None])
    m.rollback(point)
    assert len(m) == 2 and m.statistics()['feature_kinds'] == {'sift': 1}
    assert [k['kind'] for k in m.schema.local_features] == ['sift']
    with pytest.raises(MapError, match='no keyframe with id 2'):
        m.features(2)
    # the rolled back kind is forgotten: another shape for 'xfeat' is fine now
    wide = LocalFeatures('xfeat', np.zeros((1, 2), F32), np.zeros((1, 32), np.float16), (8, 8))
    assert list(m.add(unit(2, 4), metas(2, 'b'), [wide, sift(3, 5)])) == [2, 3]
    assert_same(m.features(0), sift(10, 1))
    assert_same(m.features(2), wide)
    assert_same(m.features(3), sift(3, 5))
    assert len(m._features.keypoints) == 14 and len(m._features.depth) == 13
    loaded = KeyframeMap.load(m.save(tmp_path / 'map'))
    assert_same(loaded.features(3), sift(3, 5))


def test_an_add_that_fails_half_way_leaves_no_features_behind(monkeypatch):
    m = new_map()
    m.add(unit(2), metas(2), [sift(10, 1), None])
    real = type(m._features.descriptors[0]).append
    calls = []

    def fail_second(self, block):  # the second keyframe's descriptors: half way through
        calls.append(1)
        if len(calls) == 4:
            raise MemoryError('full')
        real(self, block)

    monkeypatch.setattr(type(m._features.descriptors[0]), 'append', fail_second)
    with pytest.raises(MemoryError):
        m.add(unit(2, 1), metas(2, 'b'), [xfeat(5, 2), sift(7, 3)])
    monkeypatch.undo()
    assert len(m) == 2 and len(m._features.keypoints) == 10 and len(m._features.kinds) == 1
    assert m._features.count == 1
    ids = m.add(unit(1, 2), metas(1, 'b'), [xfeat(3, 4)])
    assert_same(m.features(int(ids[0])), xfeat(3, 4))
    assert_same(m.features(0), sift(10, 1))


def test_remove_session_hides_features_and_save_compacts_them(tmp_path):
    m = new_map()
    m.add(unit(3), metas(3, 'gone'), [sift(10, i) for i in range(3)])
    m.add(unit(2, 1), metas(2, 'kept'), [sift(5, 7), None])
    assert m.remove_session('gone') == 3
    with pytest.raises(MapError, match='no keyframe with id 1'):
        m.features(1)
    assert m.statistics()['with_features'] == 1
    path = m.save(tmp_path / 'map')
    assert np.load(path / 'features_keypoints.npy').shape == (5, 2)
    loaded = KeyframeMap.load(path)
    assert_same(loaded.features(3), sift(5, 7))
    assert loaded.features(4) is None
    m.remove_session('kept')  # no live keyframe holds features: the kind stays, files empty
    loaded = KeyframeMap.load(m.save(tmp_path / 'map'))
    assert len(loaded) == 0 and loaded.schema.local_features[0]['kind'] == 'sift'


def test_merge_moves_features_with_their_keyframes(tmp_path):
    a, b = new_map(), new_map()
    a.add(unit(2), metas(2, 'a'), [xfeat(4, 1), None])
    b.add(unit(3, 1), metas(3, 'b'), [sift(6, 2), None, sift(0, 3)])
    b.add(unit(1, 2), metas(1, 'c'), [xfeat(2, 4)])
    b.remove_session('c')
    from_disk = KeyframeMap.load(b.save(tmp_path / 'b'))  # memory-mapped source
    a.merge(from_disk)
    assert len(a) == 5 and a.provenance(2) == (b.map_id, 0)
    assert_same(a.features(2), sift(6, 2))
    assert a.features(3) is None
    assert_same(a.features(4), sift(0, 3))
    assert_same(a.features(0), xfeat(4, 1))
    assert a.statistics()['feature_kinds'] == {'xfeat': 1, 'sift': 2}
    loaded = KeyframeMap.load(a.save(tmp_path / 'a'))
    assert_same(loaded.features(2), sift(6, 2))
    other = new_map()
    wide = LocalFeatures('xfeat', np.zeros((1, 2), F32), np.zeros((1, 8), np.float16), (8, 8))
    other.add(unit(1, 5), metas(1, 'd'), [wide])
    with pytest.raises(MapError, match=r'cannot merge map .*: its xfeat descriptors are 8 x '
                                       r'float16, this map stores 64 x float16'):
        a.merge(other)
    assert len(a) == 5


def test_concurrent_search_and_features_while_adding_with_features():
    m = new_map()
    x = unit(600)
    m.add(x[:20], metas(20, 'seed'), [sift(8, i) for i in range(20)])
    errors: list[BaseException] = []
    done = threading.Event()

    def writer() -> None:
        try:
            for i in range(20, 600, 20):
                m.add(x[i:i + 20], metas(20, f's{i}'),
                      [sift(8, j) if j % 2 else xfeat(5, j) for j in range(i, i + 20)])
        except BaseException as exc:  # noqa: BLE001 (reported by the main thread)
            errors.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    reads = 0
    while not done.is_set() or reads < 20:
        res = m.search(x[reads % 600:reads % 600 + 1], 3)
        best = int(res.ids[0, 0])
        got = m.features(best)
        assert_same(got, sift(8, best) if best < 20 or best % 2 else xfeat(5, best))
        reads += 1
    thread.join()
    assert not errors and len(m) == 600
    assert m.statistics()['feature_kinds'] == {'sift': 310, 'xfeat': 290}


def _flip(path: Path, offset: int = -3) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize('name', ['features.npy', 'features_keypoints.npy',
                                  'features_depth.npy', 'features_descriptors_sift.npy',
                                  'features_descriptors_xfeat.npy'])
def test_corrupt_truncated_or_missing_feature_files_are_refused(tmp_path, name):
    m = new_map()
    m.add(unit(5), metas(5), mixed())
    path = m.save(tmp_path / 'map')
    _flip(path / name)
    with pytest.raises(MapError, match=f'{name} fails its checksum'):
        KeyframeMap.load(path)
    (path / name).write_bytes((path / name).read_bytes()[:100])
    with pytest.raises(MapError, match=f'{name} has 100 bytes, schema.json says'):
        KeyframeMap.load(path, verify=False)
    (path / name).unlink()
    with pytest.raises(MapError, match=f'{name} is missing'):
        KeyframeMap.load(path)


def test_verify_false_skips_hashing_the_feature_arrays_not_their_table(tmp_path):
    m = new_map()
    m.add(unit(5), metas(5), mixed())
    path = m.save(tmp_path / 'map')
    _flip(path / 'features_descriptors_sift.npy', -1)
    assert KeyframeMap.load(path, verify=False).features(3).kind == 'sift'
    _flip(path / 'features.npy')
    with pytest.raises(MapError, match='features.npy fails its checksum'):
        KeyframeMap.load(path, verify=False)


def test_inconsistent_feature_table_is_refused(tmp_path):
    m = new_map()
    m.add(unit(2), metas(2), [sift(5), None])
    path = m.save(tmp_path / 'map')
    table = np.load(path / 'features.npy')
    table['count'][0] = 6  # beyond the keypoints file
    np.save(path / 'features.npy', table)
    schema = json.loads((path / 'schema.json').read_text())
    schema['files']['features.npy'] = {
        'bytes': (path / 'features.npy').stat().st_size,
        'sha256': __import__('hashlib').sha256((path / 'features.npy').read_bytes()).hexdigest()}
    (path / 'schema.json').write_text(json.dumps(schema))
    with pytest.raises(MapError, match='features.npy: ranges point outside '
                                       'features_keypoints.npy'):
        KeyframeMap.load(path)
    schema['local_features'] = [{'kind': 'sift', 'dim': 0, 'dtype': 'uint8'}]
    (path / 'schema.json').write_text(json.dumps(schema))
    with pytest.raises(MapError, match=r'local_features\[0\] must be'):
        KeyframeMap.load(path)


def test_statistics_and_map_info_report_features(tmp_path, capsys):
    m = new_map()
    m.add(unit(3), metas(3), [sift(1000, 1), sift(1000, 2), None])
    m.add(unit(1, 1), metas(1, 'b'), [xfeat(100, 3)])
    stats = m.statistics()
    assert stats['with_features'] == 3
    assert stats['feature_kinds'] == {'sift': 2, 'xfeat': 1}
    assert stats['feature_bytes'] == 2 * 140_000 + 100 * (8 + 128)
    assert stats['feature_bytes_per_keyframe'] == round((2 * 140_000 + 13_600) / 3, 1)
    path = m.save(tmp_path / 'map')
    assert main(['map', 'info', str(path), '--json']) == 0
    info = json.loads(capsys.readouterr().out)
    assert {k: info['statistics'][k] for k in stats} == stats
    assert main(['map', 'info', str(path)]) == 0
    out = capsys.readouterr().out
    assert 'local_features:             sift (128 x uint8), xfeat (64 x float16)' in out
    assert 'feature_bytes_per_keyframe: 97866.7' in out
    one = new_map()
    one.add(unit(1), metas(1), [sift(1000)])
    assert one.statistics()['feature_bytes_per_keyframe'] == 140_000
    assert new_map().statistics()['feature_bytes'] == 0


def test_intrinsics_must_be_numbers():
    with pytest.raises(MapError, match='intrinsics'):
        LocalFeatures('orb', np.zeros((1, 2), F32), np.zeros((1, 32), np.uint8), (8, 8),
                      ('500', '500', '4', '4'))
