"""The keyframe map in memory: add, search, filters, refusals, merge, removal, concurrency."""
import threading

import numpy as np
import pytest

from boq_ros.keyframe_map import (
    IndexSpec,
    KeyframeMap,
    KeyframeMeta,
    MapError,
    RecentWindow,
    SearchFilter,
)

DIM = 32


def unit(n: int, seed: int = 0, dim: int = DIM) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def metas(n: int, session: str = 's', robot: str = 'r', t0: int = 0) -> list[KeyframeMeta]:
    return [KeyframeMeta(stamp_ns=t0 + i * 10**8, session=session, robot_id=robot,
                         camera='cam', frame_id='cam_optical',
                         pose=(float(i), 0.0, 0.0, 0.0, 0.0, 0.0, 1.0), pose_frame='map',
                         pose_source='odometry:/odom', image_ref=f'bag.mcap#/img@{i}')
            for i in range(n)]


def new_map(index: IndexSpec = IndexSpec(), dim: int = DIM) -> KeyframeMap:
    return KeyframeMap(dim, model_id='resnet50-16384:test', preprocess={'policy': 'height'},
                       index=index)


def test_add_assigns_ids_and_seqs_per_session_and_keeps_metadata():
    m = new_map()
    a = m.add(unit(3), metas(3, 'a'))
    b = m.add(unit(2, 1), metas(2, 'b'))
    c = m.add(unit(2, 2), metas(2, 'a', t0=10**9))
    assert list(a) + list(b) + list(c) == list(range(7))
    assert [m.meta(i).seq for i in c] == [3, 4]
    assert m.session_size('a') == 5 and m.session_size('b') == 2 and m.session_size('x') == 0
    got = m.meta(1)
    assert (got.id, got.seq, got.session, got.robot_id, got.image_ref, got.pose[0]) == \
        (1, 1, 'a', 'r', 'bag.mcap#/img@1', 1.0)
    assert m.meta(0).pose_source == 'odometry:/odom'
    np.testing.assert_allclose(m.descriptor(4), unit(2, 1)[1])
    assert len(m) == 7 and m.sessions() == {'a': 5, 'b': 2}


def test_exact_search_matches_brute_force():
    m = new_map()
    x = unit(500)
    m.add(x, metas(500))
    q = unit(4, 9)
    res = m.search(q, 5)
    expected = np.argsort(-(q @ x.T), axis=1)[:, :5]
    np.testing.assert_array_equal(res.ids, expected)
    np.testing.assert_allclose(res.similarities, np.take_along_axis(q @ x.T, expected, 1),
                               atol=1e-5)


def test_filter_is_exact_when_most_top_results_are_excluded():
    m = new_map()
    x = unit(1000)
    m.add(x[:990], metas(990, 'own'))
    m.add(x[990:], metas(10, 'other', robot='r2'))
    q = x[:3]  # their best matches are all in 'own'
    res = m.search(q, 4, SearchFilter(exclude_sessions=frozenset({'own'})))
    sims = q @ x[990:].T
    np.testing.assert_array_equal(res.ids, 990 + np.argsort(-sims, axis=1)[:, :4])
    res = m.search(q, 12, SearchFilter(robots=frozenset({'r2'})))
    assert (res.ids[:, :10] >= 990).all() and (res.ids[:, 10:] == -1).all()
    assert np.isneginf(res.similarities[:, 10:]).all()
    assert (m.search(q, 2, SearchFilter(sessions=frozenset({'nope'}))).ids == -1).all()


def test_recent_window_excludes_by_stamp_or_seq():
    m = new_map()
    x = unit(100)
    m.add(x, metas(100, 'live'))
    stamp_cut = RecentWindow('live', since_stamp_ns=50 * 10**8, since_seq=10**9)
    res = m.search(x[60:61], 100, SearchFilter(recent=(stamp_cut,)))
    assert set(res.ids[0][res.ids[0] >= 0]) == set(range(50))
    seq_cut = RecentWindow('live', since_stamp_ns=2**62, since_seq=20)
    res = m.search(x[60:61], 100, SearchFilter(recent=(seq_cut,)))
    assert set(res.ids[0][res.ids[0] >= 0]) == set(range(20))
    other = RecentWindow('elsewhere', 0, 0)
    assert (m.search(x[:1], 1, SearchFilter(recent=(other,))).ids == 0).all()


@pytest.mark.parametrize('spec', [
    IndexSpec('flat_fp16'), IndexSpec('hnsw', hnsw_m=16), IndexSpec('flat', pca_dim=16),
    IndexSpec('ivfpq', pca_dim=16, pq_m=4, ivf_nlist=32), IndexSpec('hnsw', pca_dim=16,
                                                                     pca_whiten=True)])
def test_every_index_kind_finds_near_duplicates_and_filters(spec):
    m = new_map(spec)
    x = unit(10_000)
    m.add(x, metas(10_000))
    assert 'fallback' not in m.schema.index_state
    noisy = x[:20] + 0.05 * unit(20, 3)
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    res = m.search(noisy, 3)
    assert (res.ids[:, 0] == np.arange(20)).mean() >= 0.95
    np.testing.assert_allclose(res.similarities[:, 0], np.sum(noisy * x[res.ids[:, 0]], 1),
                               atol=2e-3)
    res = m.search(noisy, 3, SearchFilter(recent=(RecentWindow('s', 2**62, 5000),)))
    assert ((res.ids >= 0) & (res.ids < 5000)).all()


def test_trained_kinds_fall_back_to_exact_below_their_minimum_then_train():
    m = new_map(IndexSpec('flat', pca_dim=16))
    m.add(unit(20), metas(20))
    assert m.schema.index_state.startswith('exact fallback') and '32' in m.schema.index_state
    assert (m.search(unit(20)[:3], 1).ids[:, 0] == [0, 1, 2]).all()
    m.add(unit(20, 1), metas(20))
    assert m.schema.index_state.startswith('trained')


@pytest.mark.parametrize('bad, message', [
    (np.ones((2, DIM + 1), np.float32), 'expected shape'),
    (np.ones(DIM, np.float32), 'expected shape'),
    (np.full((2, DIM), np.nan, np.float32), 'NaN'),
    (2 * unit(2), 'not L2-normalised'),
    (unit(2).astype(np.int64), 'floating'),
])
def test_bad_descriptors_are_refused_and_the_map_is_unchanged(bad, message):
    m = new_map()
    m.add(unit(5), metas(5))
    before = m.search(unit(1, 7), 5)
    with pytest.raises(MapError, match=message):
        m.add(bad, metas(len(bad)) if bad.ndim == 2 else metas(1))
    assert len(m) == 5 and m.session_size('s') == 5
    np.testing.assert_array_equal(m.search(unit(1, 7), 5).ids, before.ids)
    assert list(m.add(unit(1, 8), metas(1))) == [5]


@pytest.mark.parametrize('meta, message', [
    (KeyframeMeta(stamp_ns=1.5), 'stamp_ns must be an integer'),
    (KeyframeMeta(stamp_ns=-1), 'outside'),
    (KeyframeMeta(stamp_ns=1, session=3), 'session must be a str'),
    (KeyframeMeta(stamp_ns=1, pose=(0, 0, 0)), 'pose must be 7'),
    (KeyframeMeta(stamp_ns=1, pose=(0, 0, 0, 0, 0, 0, 2)), 'quaternion'),
    (KeyframeMeta(stamp_ns=1, pose=(0, 0, np.nan, 0, 0, 0, 1)), 'finite position'),
    (KeyframeMeta(stamp_ns=1, image_ref='img_\udcff.png'), 'image_ref is not valid UTF-8'),
])
def test_bad_metadata_is_refused(meta, message):
    m = new_map()
    with pytest.raises(MapError, match=message):
        m.add(unit(2), [KeyframeMeta(stamp_ns=0), meta])
    assert len(m) == 0 and m.session_size('') == 0


@pytest.mark.parametrize('spec, n', [(IndexSpec(), 5), (IndexSpec('flat', pca_dim=4), 6)])
def test_an_add_that_fails_half_way_leaves_the_map_unchanged(monkeypatch, spec, n):
    # 6 + 2 keyframes reach the PCA minimum (8): the failing add is the one that trains.
    m = new_map(spec)
    m.add(unit(n), metas(n))
    before = m.search(unit(2, 7), 3)
    state = m.index_spec, m.schema.index_state

    def fail(*args):
        raise MemoryError('index full')

    monkeypatch.setattr(type(m._search), 'add', fail)
    with pytest.raises(MemoryError):
        m.add(unit(2, 1), metas(2, 'new'))
    monkeypatch.undo()
    assert len(m) == n and m.session_size('new') == 0 and set(m.sessions()) == {'s'}
    assert (m.index_spec, m.schema.index_state) == state
    after = m.search(unit(2, 7), 3)
    np.testing.assert_array_equal(after.ids, before.ids)
    np.testing.assert_allclose(after.similarities, before.similarities, atol=1e-6)
    # the next add continues the ids and seqs, and its keyframes are found under their ids
    x = unit(2, 9)
    ids = m.add(x, metas(2, 'new'))
    assert list(ids) == [n, n + 1] and [m.meta(i).seq for i in ids] == [0, 1]
    assert [m.meta(i).image_ref for i in ids] == ['bag.mcap#/img@0', 'bag.mcap#/img@1']
    assert list(m.search(x, 1).ids[:, 0]) == list(ids)


def test_other_refusals_name_the_cause():
    with pytest.raises(MapError, match='metric'):
        KeyframeMap(DIM, model_id='m', preprocess={}, metric='l2')
    with pytest.raises(MapError, match='pca_dim 64 must be below'):
        new_map(IndexSpec('flat', pca_dim=64))
    with pytest.raises(MapError, match='kind'):
        IndexSpec('lsh')
    with pytest.raises(MapError, match='only the flat kinds'):
        IndexSpec('hnsw', device='cuda')
    with pytest.raises(MapError, match='pq_m 5 must divide'):
        new_map(IndexSpec('ivfpq', pq_m=5))
    m = new_map()
    with pytest.raises(MapError, match='2 descriptors but 1 metadata'):
        m.add(unit(2), metas(1))
    with pytest.raises(MapError, match='no keyframe with id 0'):
        m.meta(0)
    with pytest.raises(MapError, match='k must be'):
        m.search(unit(1), 0)


def test_remove_session_hides_it_and_never_reuses_ids():
    m = new_map()
    x = unit(30)
    m.add(x[:10], metas(10, 'a'))
    m.add(x[10:20], metas(10, 'b'))
    assert m.remove_session('a') == 10 and m.remove_session('a') == 0
    assert len(m) == 10 and m.session_size('a') == 0
    with pytest.raises(MapError, match='no keyframe with id 3'):
        m.meta(3)
    assert (m.search(x[:10], 10).ids >= 10).all()
    assert list(m.add(x[20:], metas(10, 'a'))) == list(range(20, 30))
    assert m.meta(20).seq == 0


def test_merge_remaps_ids_and_keeps_provenance():
    a, b = new_map(), new_map()
    xa, xb = unit(20), unit(15, 1)
    a.add(xa, metas(20, 'a'))
    b.add(xb, metas(15, 'b', robot='r2'))
    b.remove_session('nothing')
    a.merge(b)
    assert len(a) == 35 and a.sessions() == {'a': 20, 'b': 15}
    assert a.meta(27).session == 'b' and a.meta(27).seq == 7 and a.meta(27).robot_id == 'r2'
    assert a.provenance(27) == (b.map_id, 7) and a.provenance(3) == (a.map_id, 3)
    np.testing.assert_allclose(a.descriptor(27), xb[7])
    assert a.search(xb[7:8], 1).ids[0, 0] == 27
    assert a.schema.history[-1]['source_map'] == b.map_id
    assert a.session_size('b') == 15
    with pytest.raises(MapError, match=r"session\(s\) \['b'\]"):
        a.merge(b)
    other_model = KeyframeMap(DIM, model_id='dinov2-12288:x', preprocess={'policy': 'height'})
    with pytest.raises(MapError, match='model_id differs'):
        a.merge(other_model)
    with pytest.raises(MapError, match='into itself'):
        a.merge(a)


def test_concurrent_add_and_search():
    m = new_map(IndexSpec('flat', pca_dim=8))
    x = unit(4000)
    m.add(x[:100], metas(100, 'seed'))
    errors: list[BaseException] = []
    done = threading.Event()

    def writer() -> None:
        try:
            for i in range(100, 4000, 100):
                m.add(x[i:i + 100], metas(100, f's{i}'))
        except BaseException as exc:  # noqa: BLE001 (reported by the main thread)
            errors.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    searches = 0
    while not done.is_set() or searches < 20:
        q = x[searches % 100: searches % 100 + 2]
        res = m.search(q, 5)
        ids = res.ids[res.ids >= 0]
        assert len(ids) and ids.max() < 4000
        np.testing.assert_allclose(res.similarities[0, 0], q[0] @ x[res.ids[0, 0]], atol=1e-5)
        searches += 1
    thread.join()
    assert not errors and len(m) == 4000 and 'trained' in m.schema.index_state
    assert (m.search(x[:50], 1).ids[:, 0] == np.arange(50)).all()


def test_position_only_pose_is_kept_with_unknown_orientation():
    m = new_map()
    nan = float('nan')
    m.add(unit(1), [KeyframeMeta(stamp_ns=5, pose=(1.0, 2.0, 3.0, nan, nan, nan, nan),
                                 pose_source='navsatfix:/fix')])
    pose = m.meta(0).pose
    assert pose[:3] == (1.0, 2.0, 3.0) and all(np.isnan(pose[3:]))


def _cuda_available() -> bool:
    import importlib.util
    if importlib.util.find_spec('torch') is None:
        return False
    import torch
    return torch.cuda.is_available()


@pytest.mark.parametrize('half', [False, True])
def test_torch_exact_backend_logic_on_cpu(half):
    """The GPU backend's code (masking, padding, growth) runs on a CPU tensor here."""
    from boq_ros.keyframe_map.index import _TorchBackend
    x = unit(1500)
    backend = _TorchBackend(DIM, half, 'cpu')
    backend.add(x[:1000])
    backend.add(x[1000:])  # grows past the initial 1024 rows
    mask = np.zeros(1500, bool)
    mask[1200:1203] = True
    sims, rows = backend.search(x[:4], 5, mask)
    expected = 1200 + np.argsort(-(x[:4] @ x[1200:1203].T), axis=1)
    np.testing.assert_array_equal(rows[:, :3], expected)
    assert (rows[:, 3:] == -1).all() and np.isneginf(sims[:, 3:]).all()
    np.testing.assert_allclose(sims[:, :3], np.take_along_axis(x[:4] @ x.T, rows[:, :3], 1),
                               atol=2e-3 if half else 1e-5)
    assert (backend.search(x[:4], 1, None)[1][:, 0] == np.arange(4)).all()


@pytest.mark.skipif(not _cuda_available(), reason='needs CUDA')
@pytest.mark.parametrize('kind', ['flat', 'flat_fp16'])
def test_gpu_exact_search_matches_cpu(kind):
    x = unit(3000)
    cpu, gpu = new_map(IndexSpec(kind)), new_map(IndexSpec(kind, device='cuda'))
    for m in (cpu, gpu):
        m.add(x[:2000], metas(2000, 'a'))
        m.add(x[2000:], metas(1000, 'b'))
    flt = SearchFilter(exclude_sessions=frozenset({'a'}))
    q = x[:8]
    for f in (None, flt):
        a, b = cpu.search(q, 5, f), gpu.search(q, 5, f)
        np.testing.assert_allclose(a.similarities, b.similarities, atol=2e-3)
        same = np.abs(np.diff(a.similarities, axis=1)).min() > 4e-3 or kind == 'flat'
        np.testing.assert_array_equal(a.ids if same else a.ids[:, 0],
                                      b.ids if same else b.ids[:, 0])
    assert (gpu.search(q, 1500, flt).ids[:, 1000:] == -1).all()


def test_a_merge_that_fails_half_way_leaves_the_map_unchanged(monkeypatch):
    m, failing, other = new_map(), new_map(), new_map()
    m.add(unit(4), metas(4, 'a'))
    failing.add(unit(3, 5), metas(3, 'b'))
    other.add(unit(3, 1), metas(3, 'b'))
    monkeypatch.setattr(type(m._search), 'add', lambda *args: (_ for _ in ()).throw(
        MemoryError('index full')))
    with pytest.raises(MemoryError):
        m.merge(failing)
    monkeypatch.undo()
    assert len(m) == 4 and set(m.sessions()) == {'a'} and m.schema.next_id == 4
    m.merge(other)
    assert len(m) == 7 and list(m.search(unit(3, 1), 1).ids[:, 0]) == [4, 5, 6]
    np.testing.assert_array_equal(m.descriptor(6), unit(3, 1)[2])
    assert m.meta(6).image_ref == 'bag.mcap#/img@2' and m.provenance(6)[1] == 2
