"""The map on disk: round trips for every index kind, refusals on load, atomic save under kill."""
import json
import os
from pathlib import Path
import shutil
import subprocess
import sys

import numpy as np
import pytest

from boq_ros.keyframe_map import (
    SCHEMA_VERSION,
    IndexSpec,
    KeyframeMap,
    KeyframeMeta,
    LocalFeatures,
    MapError,
    RecentWindow,
    SearchFilter,
)

DIM = 32


def unit(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def metas(n: int, session: str = 's') -> list[KeyframeMeta]:
    return [KeyframeMeta(stamp_ns=i * 10**7, session=session, robot_id='r', camera='c',
                         image_ref=f'x.db3#/img@{i}' if i % 2 else '',
                         pose=(i, 0, 0, 0, 0, 0, 1) if i % 3 else None) for i in range(n)]


def small_map(n: int = 40, index: IndexSpec = IndexSpec(), **kw) -> KeyframeMap:
    m = KeyframeMap(DIM, model_id='resnet50-16384:abc', preprocess={'size': 384}, index=index,
                    **kw)
    m.add(unit(n), metas(n))
    return m


@pytest.mark.parametrize('spec, n', [
    (IndexSpec(), 40), (IndexSpec('flat_fp16'), 40), (IndexSpec('hnsw', hnsw_m=8), 300),
    (IndexSpec('flat', pca_dim=8, pca_whiten=True), 300),
    (IndexSpec('ivfpq', pca_dim=16, pq_m=4, ivf_nlist=16), 10_000),
    (IndexSpec('ivfpq', pq_m=8), 50)])
@pytest.mark.parametrize('mmap', [True, False])
def test_round_trip_every_index_kind(tmp_path, spec, n, mmap):
    m = small_map(n, spec, storage_dtype='float16' if spec.kind == 'flat_fp16' else 'float32')
    m.remove_session('none')
    q = unit(5, 4)
    flt = SearchFilter(recent=(RecentWindow('s', 2**62, n // 2),))
    before = m.search(q, 4, flt)
    out = m.save(tmp_path / 'map')
    assert sorted(p.name for p in tmp_path.iterdir()) == ['map']  # no temp dirs left behind
    loaded = KeyframeMap.load(out, expect_model_id='resnet50-16384:abc', expect_dim=DIM,
                              mmap=mmap)
    after = loaded.search(q, 4, flt)
    np.testing.assert_array_equal(after.ids, before.ids)
    np.testing.assert_allclose(after.similarities, before.similarities, atol=1e-6)
    assert loaded.map_id == m.map_id and len(loaded) == n
    assert loaded.schema.index == spec.to_dict()
    assert loaded.schema.index_state == m.schema.index_state
    assert loaded.meta(n - 1) == m.meta(n - 1) and loaded.meta(1) == m.meta(1)
    np.testing.assert_array_equal(loaded.descriptor(3), m.descriptor(3))
    cached = (out / 'index.faiss').exists()
    fallback = n < spec.min_keyframes()
    assert ('fallback' in loaded.schema.index_state) == fallback
    assert cached == (not fallback and (spec.kind == 'hnsw' or spec.min_keyframes() > 0))
    loaded.add(unit(2, 5), metas(2, 'new'))  # a loaded (memory-mapped) map keeps growing
    assert list(loaded.search(unit(2, 5), 1).ids[:, 0]) == [n, n + 1]
    loaded.save(out)
    assert len(KeyframeMap.load(out)) == n + 2


def test_save_writes_live_rows_only_and_keeps_ids(tmp_path):
    m = small_map(10)
    m.add(unit(5, 1), metas(5, 'gone'))
    m.add(unit(5, 2), metas(5, 'kept'))
    m.remove_session('gone')
    loaded = KeyframeMap.load(m.save(tmp_path / 'map'))
    assert len(loaded) == 15 and loaded.sessions() == {'s': 10, 'kept': 5}
    assert loaded.meta(17).session == 'kept' and loaded.meta(17).seq == 2
    assert list(loaded.add(unit(1, 3), metas(1))) == [20]  # ids are never reused
    assert loaded.schema.history[-1]['event'] == 'remove_session'


def test_load_with_another_index_spec_rebuilds(tmp_path):
    path = small_map(300, IndexSpec('hnsw', hnsw_m=8)).save(tmp_path / 'map')
    flat = KeyframeMap.load(path, index=IndexSpec())
    assert flat.index_spec == IndexSpec()
    assert flat.search(unit(300)[7:8], 1).ids[0, 0] == 7


def _edit_schema(path: Path, **changes) -> None:
    data = json.loads((path / 'schema.json').read_text())
    data.update(changes)
    (path / 'schema.json').write_text(json.dumps(data))


def _flip_byte(path: Path, offset: int = -5) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize('damage, message', [
    (lambda p: _edit_schema(p, schema_version=SCHEMA_VERSION + 1),
     f'schema version {SCHEMA_VERSION + 1} is not supported'),
    (lambda p: _edit_schema(p, dim=DIM * 2), r'\[40, 64\]'),
    (lambda p: _edit_schema(p, count=41), r'\[41, 32\]'),
    (lambda p: _flip_byte(p / 'descriptors.npy'), 'descriptors.npy fails its checksum'),
    (lambda p: _flip_byte(p / 'keyframes.npy'), 'keyframes.npy fails its checksum'),
    (lambda p: (p / 'strings.json').write_text('{}'), 'strings.json has 2 bytes'),
    (lambda p: (p / 'descriptors.npy').write_bytes((p / 'descriptors.npy').read_bytes()[:999]),
     'descriptors.npy has 999 bytes'),
    (lambda p: (p / 'image_refs.npy').unlink(), 'image_refs.npy is missing'),
    (lambda p: (p / 'schema.json').write_text('{"schema_version": 1'), 'not valid JSON'),
    (lambda p: (p / 'schema.json').unlink(), 'schema.json is missing'),
    (lambda p: _edit_schema(p, model_id=None), "field 'model_id' should be str"),
    (lambda p: _edit_schema(p, index={'kind': 'flat', 'nprobe': 3}), 'unknown index field'),
])
def test_damaged_maps_are_refused_naming_the_cause(tmp_path, damage, message):
    path = small_map().save(tmp_path / 'map')
    damage(path)
    with pytest.raises(MapError, match=message):
        KeyframeMap.load(path)


def test_model_and_dim_mismatch_and_missing_map_are_refused(tmp_path):
    path = small_map().save(tmp_path / 'map')
    with pytest.raises(MapError, match="built with model 'resnet50-16384:abc', expected 'dino'"):
        KeyframeMap.load(path, expect_model_id='dino')
    with pytest.raises(MapError, match='32-d, expected 12288-d'):
        KeyframeMap.load(path, expect_dim=12288)
    # the schema is checked before any file is hashed: a wrong model fails at once, by name
    (path / 'keyframes.npy').write_bytes(b'\0' * (path / 'keyframes.npy').stat().st_size)
    with pytest.raises(MapError, match="built with model 'resnet50-16384:abc'"):
        KeyframeMap.load(path, expect_model_id='dino')
    with pytest.raises(MapError, match='no keyframe map at'):
        KeyframeMap.load(tmp_path / 'nothing')
    (tmp_path / 'notes').mkdir()
    (tmp_path / 'notes' / 'a.txt').write_text('mine')
    with pytest.raises(MapError, match='not a keyframe map'):
        small_map().save(tmp_path / 'notes')
    assert (tmp_path / 'notes' / 'a.txt').read_text() == 'mine'


def test_corrupt_index_cache_is_rebuilt_not_trusted(tmp_path):
    m = small_map(300, IndexSpec('hnsw', hnsw_m=8))
    path = m.save(tmp_path / 'map')
    _flip_byte(path / 'index.faiss', 100)
    loaded = KeyframeMap.load(path)
    assert loaded.search(unit(300)[9:10], 1).ids[0, 0] == 9


def test_verify_false_skips_only_the_descriptor_hash(tmp_path):
    path = small_map().save(tmp_path / 'map')
    _flip_byte(path / 'descriptors.npy', -1)
    assert len(KeyframeMap.load(path, verify=False)) == 40
    _flip_byte(path / 'keyframes.npy')
    with pytest.raises(MapError, match='keyframes.npy fails its checksum'):
        KeyframeMap.load(path, verify=False)


def orb(n: int) -> LocalFeatures:
    return LocalFeatures('orb', np.full((n, 2), 3, np.float32), np.full((n, 32), n, np.uint8),
                         (64, 48), depth=np.full(n, 1.5, np.float32))


CRASHING_WRITER = """
import os, signal, sys
import numpy as np
from boq_ros.keyframe_map import KeyframeMap, KeyframeMeta, LocalFeatures
path, crash_at, features = sys.argv[1], int(sys.argv[2]), sys.argv[3] == 'features'
m = KeyframeMap.load(path)
x = np.eye(32, dtype=np.float32)[:20]
f = LocalFeatures('orb', np.zeros((7, 2), np.float32), np.ones((7, 32), np.uint8), (64, 48))
m.add(x, [KeyframeMeta(stamp_ns=i, session='second') for i in range(20)],
      [f] * 20 if features else None)
calls = 0
def deadly(real):
    def call(*args):
        global calls
        calls += 1
        if calls == crash_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args)
    return call
os.fsync, os.rename = deadly(os.fsync), deadly(os.rename)
m.save(path)
print('saved after', calls, 'fsync/rename calls')
"""


@pytest.mark.parametrize('features', ['features', 'none'])
def test_kill_at_every_step_of_a_save_leaves_a_loadable_map(tmp_path, features):
    seen = set()
    for crash_at in range(1, 40):
        m = small_map(40, IndexSpec('hnsw', hnsw_m=8))
        if features == 'features':
            m.add(unit(1, 9), metas(1, 'with'), [orb(5)])
        path = m.save(tmp_path / f'map{crash_at}')
        start = len(m)
        proc = subprocess.run([sys.executable, '-c', CRASHING_WRITER, str(path), str(crash_at),
                               features], capture_output=True, text=True, timeout=60)
        loaded = KeyframeMap.load(path)
        assert len(loaded) in (start, start + 20)
        if features == 'features':
            assert loaded.features(40).descriptors[0, 0] == 5
            assert len(loaded) == start or loaded.features(start).kind == 'orb'
        seen.add(len(loaded) - start)
        if proc.returncode == 0:
            assert 'saved after' in proc.stdout and len(loaded) == start + 20
            break
        assert proc.returncode == -9, proc.stderr
        shutil.rmtree(path)
    else:
        pytest.fail('the writer never completed a save')
    assert seen == {0, 20} and crash_at > (10 if features == 'features' else 5)


def test_save_while_another_thread_adds(tmp_path):
    import threading
    m = small_map(40)
    x = np.random.default_rng(1).standard_normal((2000, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    done = threading.Event()

    def writer() -> None:
        for i in range(0, 2000, 50):
            m.add(x[i:i + 50], metas(50, f's{i}'))
        done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    saves = 0
    while not done.is_set() or saves < 3:
        loaded = KeyframeMap.load(m.save(tmp_path / 'map'))
        n = len(loaded)
        assert (n - 40) % 50 == 0 and loaded.schema.next_id == n
        if n > 40:
            np.testing.assert_array_equal(loaded.descriptor(n - 1), x[n - 41])
        saves += 1
    thread.join()
    assert len(KeyframeMap.load(m.save(tmp_path / 'map'))) == 2040


def test_a_reader_that_finishes_a_save_between_its_renames_does_not_break_it(tmp_path,
                                                                               monkeypatch):
    from boq_ros.keyframe_map import store
    target = small_map(10).save(tmp_path / 'map')
    m = small_map(20)
    real_rename = os.rename
    seen = []

    def rename(src, dst):
        real_rename(src, dst)
        if '.old-' in str(dst):  # the old map is out of the way: a reader loads right now
            seen.append(len(KeyframeMap.load(target)))

    monkeypatch.setattr(store.os, 'rename', rename)
    assert m.save(target, replace_other=True) == target
    monkeypatch.undo()
    assert seen == [20] and len(KeyframeMap.load(target)) == 20
    assert sorted(p.name for p in tmp_path.iterdir()) == ['map']


def test_a_reader_finishing_a_swap_that_the_writer_finishes_first_still_loads(tmp_path,
                                                                               monkeypatch):
    from boq_ros.keyframe_map import store
    target = small_map(10).save(tmp_path / 'map')
    target.rename(tmp_path / '.map.new-abc')  # a save between its two renames
    real_rename = os.rename

    def rename(src, dst):
        real_rename(src, dst)  # the writer's own rename lands first ...
        raise FileNotFoundError(src)  # ... so the reader's fails

    monkeypatch.setattr(store.os, 'rename', rename)
    assert len(KeyframeMap.load(target)) == 10


def test_save_never_replaces_another_map_unless_asked(tmp_path):
    first = small_map(10)
    target = first.save(tmp_path / 'map')
    assert first.save(target) == target  # an earlier save of the same map: replaced
    other = small_map(5)
    with pytest.raises(MapError, match='refusing to replace the map at .*: it is another map'):
        other.save(target)
    assert len(KeyframeMap.load(target)) == 10
    other.save(target, replace_other=True)
    assert len(KeyframeMap.load(target)) == 5
