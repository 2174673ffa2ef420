"""The Milvus store against real engines: a Milvus 2.3.5 standalone server (the `milvus` wheel's
binary, in private namespaces, reachable on 127.0.0.1 only) and milvus-lite.

Exact search on both must give what the FAISS map's flat index gives on the same keyframes; two
writer processes and a reader lose nothing; a server killed mid-stream loses no keyframe.
"""
from collections.abc import Iterator
import json
from pathlib import Path
import subprocess
import sys
import time

import numpy as np
import pytest

from boq_ros.keyframe_map import (
    KeyframeMap,
    KeyframeMeta,
    LocalFeatures,
    MapError,
    MapNotFound,
    RecentWindow,
    SearchFilter,
)
from boq_ros.keyframe_map.milvus import StoreUnavailable, filter_expression, parse_location
from boq_ros.keyframe_map.milvus_local import LocalMilvus, available
from boq_ros.keyframe_map.uri import open_store, save_copy

DIM = 48
PREPROCESS = {'resize': 'test'}
SERVER_SKIP = available()
pytest.importorskip('pymilvus', reason='pymilvus is not installed')


@pytest.fixture(scope='module')
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMilvus]:
    if SERVER_SKIP:
        pytest.skip(SERVER_SKIP)
    with LocalMilvus(tmp_path_factory.mktemp('milvus')) as local:
        yield local


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def keyframes(n: int, seed: int = 0, sessions: int = 3, prefix: str = 's'
              ) -> tuple[np.ndarray, list[KeyframeMeta], list[LocalFeatures | None]]:
    rng = np.random.default_rng(seed)
    metas = [KeyframeMeta(stamp_ns=10_000 + 1000 * i, session=f'{prefix}{i % sessions}',
                          robot_id=f'robot "{i % 2}"', camera='front', frame_id='cam',
                          pose=(i * 0.5, 1 / 3, 0.0, 0.0, 0.0, 0.0, 1.0) if i % 2 else None,
                          pose_frame='map', pose_source='odometry', image_ref=f'img/{i}.png')
             for i in range(n)]
    features = [LocalFeatures('sift', rng.random((7, 2), np.float32) * 60,
                              rng.integers(0, 256, (7, 128), dtype=np.uint8), (64, 48),
                              (50.0, 50.0, 32.0, 24.0), rng.random(7, np.float32))
                if i % 4 == 0 else None for i in range(n)]
    return unit(rng, n), metas, features


def store_uri(kind: str, server_uri: str | None, tmp_path: Path, name: str,
              query: str = 'consistency=strong') -> str:
    if kind == 'lite':
        return f'milvus-lite:{tmp_path / name}.db'
    return f'{server_uri}/{name}?{query}'


@pytest.fixture(params=['lite', 'server'])
def engine(request: pytest.FixtureRequest) -> str | None:
    """None for milvus-lite, the server's URI for the server."""
    if request.param == 'server':
        return request.getfixturevalue('server').uri
    return None


def open_new(engine: str | None, tmp_path: Path, name: str) -> object:
    uri = (f'milvus-lite:{tmp_path / name}.db' if engine is None
           else f'{engine}/{name}?consistency=strong')
    return open_store(uri, model_id='test-model', dim=DIM, preprocess=PREPROCESS, create=True)


def by_key(store: object, ids: np.ndarray) -> list[list[tuple[str, int] | None]]:
    """Hits named by what identifies a keyframe in any store (ids differ between stores)."""
    return [[(store.meta(i).session, store.meta(i).stamp_ns) if i >= 0 else None for i in row]
            for row in ids.tolist()]


FILTERS = [
    None,
    SearchFilter(sessions={'s0', 's2'}),
    SearchFilter(robots={'robot "1"'}),
    SearchFilter(exclude_sessions={'s1'}),
    SearchFilter(recent=(RecentWindow('s0', 10_000 + 1000 * 60, 10),
                         RecentWindow('s2', 10_000 + 1000 * 30, 1000))),
    SearchFilter(sessions=set()),
]


def test_exact_search_equals_the_faiss_map(engine: str | None, tmp_path: Path) -> None:
    x, metas, features = keyframes(240)
    store = open_new(engine, tmp_path, 'equal')
    faiss = KeyframeMap(DIM, model_id='test-model', preprocess=PREPROCESS)
    for start in range(0, 240, 40):
        part = slice(start, start + 40)
        store.add(x[part], metas[part], features[part])
        faiss.add(x[part], metas[part], features[part])
    assert len(store) == len(faiss) == 240
    queries = unit(np.random.default_rng(7), 12)
    for flt in FILTERS:
        got, want = store.search(queries, 15, flt), faiss.search(queries, 15, flt)
        assert by_key(store, got.ids) == by_key(faiss, want.ids), flt
        finite = np.isfinite(want.similarities)
        assert (np.isfinite(got.similarities) == finite).all()
        np.testing.assert_allclose(got.similarities[finite], want.similarities[finite],
                                   atol=1e-5)
    ids = store.find(metas)
    assert (ids >= 0).all() and len(set(ids.tolist())) == 240
    for i in (0, 1, 4, 239):
        meta, want = store.meta(ids[i]), faiss.meta(i)
        assert (meta.session, meta.seq, meta.stamp_ns, meta.pose, meta.robot_id,
                meta.image_ref) == (want.session, want.seq, want.stamp_ns, want.pose,
                                    want.robot_id, want.image_ref)
        np.testing.assert_array_equal(store.descriptor(ids[i]), faiss.descriptor(i))
        mine, theirs = store.features(ids[i]), faiss.features(i)
        assert (mine is None) == (theirs is None)
        if mine is not None:
            for field in ('keypoints', 'descriptors', 'depth'):
                np.testing.assert_array_equal(getattr(mine, field), getattr(theirs, field))
            assert (mine.image_size, mine.intrinsics) == (theirs.image_size, theirs.intrinsics)
    assert store.sessions() == faiss.sessions() == {'s0': 80, 's1': 80, 's2': 80}
    assert store.session_size('s1') == 80
    assert store.statistics()['with_features'] == faiss.statistics()['with_features'] == 60
    assert store.provenance(ids[3]) == (store.map_id, int(ids[3]))
    store.close()


def test_reopen_merge_copy_and_remove(engine: str | None, tmp_path: Path) -> None:
    x, metas, features = keyframes(60)
    store = open_new(engine, tmp_path, 'merge')
    ids = store.add(x, metas, features)
    uri = store.uri
    store.close()
    with pytest.raises(MapError, match="built with model 'test-model', expected 'other'"):
        open_store(uri, model_id='other', dim=DIM)
    with pytest.raises(MapError, match='48-d, expected 64-d'):
        open_store(uri, model_id='test-model', dim=64)
    store = open_store(uri, model_id='test-model', dim=DIM)
    assert len(store) == 60 and store.session_size('s0') == 20
    # Milvus -> FAISS keeps provenance; FAISS -> Milvus too, and refuses shared sessions
    faiss = KeyframeMap(DIM, model_id='test-model', preprocess=PREPROCESS)
    faiss.merge(store)
    assert len(faiss) == 60 and faiss.provenance(5) == (store.map_id, int(ids[5]))
    assert faiss.features(0) is not None and faiss.features(1) is None
    with pytest.raises(MapError, match='both maps hold session'):
        store.merge(faiss)
    other = KeyframeMap(DIM, model_id='test-model', preprocess=PREPROCESS)
    y, more, more_features = keyframes(10, seed=3, prefix='t')
    other.add(y, more, more_features)
    store.merge(other)
    assert len(store) == 70 and store.sessions()['t1'] == 3
    merged = store.find(more[:1])[0]
    assert store.provenance(merged) == (other.map_id, 0)
    saved = save_copy(store, tmp_path / 'copy')
    assert len(KeyframeMap.load(saved)) == 70
    assert store.remove_session('s1') == 20 and len(store) == 50
    assert store.find(metas[1:2])[0] == -1 and 's1' not in store.sessions()
    sp = store.savepoint()
    store.add(x[:3], [KeyframeMeta(stamp_ns=1, session='u')] * 3)
    store.rollback(sp)
    assert len(store) == 50 and store.session_size('u') == 0
    store.close()


@pytest.mark.parametrize('uri, cause', [
    ('milvus://', 'expected milvus://HOST:PORT/COLLECTION'),
    ('milvus://host:99999/c', 'port'),
    ('milvus://host/1bad', 'collection name'),
    ('milvus://host/', 'collection name'),
    ('milvus://host/c?index=ivf', "index 'ivf'"),
    ('milvus://host/c?nprobe=many', 'must be numbers'),
    ('milvus://host/c?colour=red', 'unknown option'),
    ('milvus://host/c?consistency=always', "consistency 'always'"),
    ('milvus://host/c?collection=d', 'the collection is the path'),
    ('milvus-lite:', 'name the milvus-lite file'),
    ('milvus-lite:map.txt', 'must end in .db'),
    ('milvus-lite:map.db?index=hnsw', 'exact search only'),
])
def test_bad_uris_say_what_is_wrong(uri: str, cause: str) -> None:
    with pytest.raises(MapError, match=cause):
        parse_location(uri)


def test_other_schemes_and_missing_maps(tmp_path: Path) -> None:
    with pytest.raises(MapError, match='unknown scheme'):
        open_store('qdrant://host/c')
    with pytest.raises(MapNotFound, match='no such map'):
        open_store(f'milvus-lite:{tmp_path}/none.db', model_id='m', dim=DIM)


def test_filter_expressions_quote_what_users_name() -> None:
    expr = filter_expression(SearchFilter(sessions={'a"b\\c'}, recent=(
        RecentWindow('x', 5, 6),)))
    assert expr == ('(session in ["a\\"b\\\\c"]) and (not (session == "x" and '
                    '(stamp_ns >= 5 or seq >= 6)))')
    assert filter_expression(SearchFilter(robots=set())) == 'id < 0'


def test_an_unreachable_server_is_named(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    start = time.monotonic()
    with pytest.raises(StoreUnavailable, match=f'cannot reach Milvus at http://127.0.0.1:{port}'):
        open_store(f'milvus://127.0.0.1:{port}/c?timeout_s=3', model_id='m', dim=DIM,
                   preprocess={}, create=True)
    assert time.monotonic() - start < 30


def test_a_collection_that_is_not_a_map_is_refused(server: LocalMilvus) -> None:
    from pymilvus import MilvusClient

    client = MilvusClient(uri=f'http://127.0.0.1:{server.port}')
    client.create_collection('foreign', dimension=DIM)
    client.close()
    with pytest.raises(MapError, match="'foreign' is not a boq_ros keyframe map"):
        open_store(f'{server.uri}/foreign', model_id='m', dim=DIM)


WRITER = """
import sys
import numpy as np
sys.path.insert(0, {test_dir!r})
from test_map_milvus import keyframes
from boq_ros.keyframe_map.uri import open_store
x, metas, features = keyframes(80, seed={seed}, sessions=1, prefix={prefix!r})
store = open_store({uri!r}, model_id='test-model', dim=48, preprocess={{'resize': 'test'}},
                   create=True)
for start in range(0, 80, 10):
    store.add(x[start:start + 10], metas[start:start + 10], features[start:start + 10])
    assert store.health()['pending_keyframes'] == 0, store.health()
store.close()
"""


def test_two_writer_processes_and_a_reader_lose_nothing(server: LocalMilvus) -> None:
    uri = f'{server.uri}/fleet?consistency=strong'
    reader = open_store(uri, model_id='test-model', dim=DIM, preprocess=PREPROCESS, create=True)
    writers = [subprocess.Popen([sys.executable, '-c', WRITER.format(
        test_dir=str(Path(__file__).parent), seed=seed, prefix=prefix, uri=uri)])
        for seed, prefix in ((1, 'robotA-'), (2, 'robotB-'))]
    searches = 0
    while any(w.poll() is None for w in writers):
        result = reader.search(unit(np.random.default_rng(searches), 2), 5)
        assert (result.ids[result.ids >= 0] > 0).all()
        searches += 1
    assert [w.returncode for w in writers] == [0, 0]
    assert searches > 0
    assert reader.sessions() == {'robotA-0': 80, 'robotB-0': 80}
    ids = [b.ids for b in reader.keyframes(batch=64)]
    ids = np.concatenate(ids)
    assert len(ids) == len(set(ids.tolist())) == 160 and (np.diff(ids) > 0).all()
    for seed, prefix in ((1, 'robotA-'), (2, 'robotB-')):
        x, metas, _ = keyframes(80, seed=seed, sessions=1, prefix=prefix)
        found = reader.find(metas)
        assert (found >= 0).all()
        assert [reader.meta(i).seq for i in found] == list(range(80))
        np.testing.assert_array_equal(reader.descriptor(found[77]), x[77])
    reader.close()


def test_a_server_restart_loses_no_keyframe(tmp_path: Path) -> None:
    if SERVER_SKIP:
        pytest.skip(SERVER_SKIP)
    x, metas, features = keyframes(90, seed=5)
    with LocalMilvus(tmp_path / 'restart') as local:
        store = open_store(f'{local.uri}/restart?consistency=strong&timeout_s=3',
                           model_id='test-model', dim=DIM, preprocess=PREPROCESS, create=True)
        store.add(x[:30], metas[:30], features[:30])
        local.kill()
        ids = [store.add(x[i:i + 10], metas[i:i + 10], features[i:i + 10])
               for i in range(30, 60, 10)]  # the server is gone: kept here, searchable
        health = store.health()
        assert health['failed_writes'] >= 1 and health['pending_keyframes'] == 30, health
        found = store.search(x[45:46], 1)
        assert found.ids[0, 0] == ids[1][5] and found.similarities[0, 0] > 0.999
        local.start()
        store.add(x[60:], metas[60:], features[60:])
        deadline = time.monotonic() + 60
        while store.flush() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert store.health()['pending_keyframes'] == 0, store.health()
        assert len(store) == 90
        stored = store.find(metas)
        assert (stored >= 0).all() and len(set(stored.tolist())) == 90
        got = store.features(stored[40])
        np.testing.assert_array_equal(got.descriptors, features[40].descriptors)
        assert sum(s for s in store.sessions().values()) == 90  # nothing stored twice
        store.close()


def test_map_info_of_a_store(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from boq_ros.cli import main

    x, metas, features = keyframes(12)
    uri = f'milvus-lite:{tmp_path}/info.db'
    store = open_store(uri, model_id='test-model', dim=DIM, preprocess=PREPROCESS, create=True)
    store.add(x, metas, features)
    store.close()  # Milvus Lite: one process holds a file; `map info` runs in this one
    capsys.readouterr()
    assert main(['map', 'info', uri, '--json']) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info['engine'], info['keyframes'], info['sessions']) == (
        'milvus-lite', 12, {'s0': 4, 's1': 4, 's2': 4})
