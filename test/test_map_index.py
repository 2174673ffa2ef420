"""The map's index: parameters tuned from target recalls, rebuilds beside searches, rows on disk.

Small maps (32-d, a few thousand keyframes) keep these fast; speed itself is measured by
benchmarks/bench_map.py, never asserted here.
"""
import json
import threading

import numpy as np
import pytest

from boq_ros.cli import main
from boq_ros.keyframe_map import IndexSpec, KeyframeMap, KeyframeMeta, MapError, MapSettings
from boq_ros.keyframe_map.index import SearchIndex
from boq_ros.keyframe_map.rows import FileRows
from boq_ros.keyframe_map.tuning import TUNE_MIN_KEYFRAMES
from boq_ros.settings import SettingError

DIM = 32
WAIT = 60  # seconds: a safety net so that a regression fails instead of hanging


def clustered(n: int, seed: int = 0) -> np.ndarray:
    """Unit vectors around 50 centres (neighbours exist, as between keyframes of one place)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((50, DIM)).astype(np.float32)
    x = centres[rng.integers(0, 50, n)] + 0.5 * rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def metas(n: int, session: str = 's', t0: int = 0) -> list[KeyframeMeta]:
    return [KeyframeMeta(stamp_ns=t0 + i, session=session) for i in range(n)]


def new_map(spec: IndexSpec, n: int = 0, seed: int = 0) -> KeyframeMap:
    m = KeyframeMap(DIM, model_id='resnet50-16384:test', preprocess={}, index=spec)
    if n:
        m.add(clustered(n, seed), metas(n))
    return m


def brute_force(m: KeyframeMap, x: np.ndarray, q: np.ndarray, k: int = 10) -> np.ndarray:
    return np.argsort(-(q @ x.T), axis=1)[:, :k]


def test_search_parameters_are_tuned_to_the_target_recalls_and_stored(tmp_path, capsys):
    everything = clustered(12_200)
    x, q = everything[:12_000], everything[12_000:]  # q: like the map's, not in it
    m = new_map(IndexSpec('ivfsq8', ivf_nlist=64))
    m.add(x, metas(len(x)))
    tuning = m.schema.index_tuning
    assert tuning['status'] == 'tuned' and tuning['targets_met']
    assert tuning['recall_at_1'] >= 0.99 and tuning['recall_at_10'] >= 0.95
    assert tuning['queries'] == 1000 and tuning['keyframes'] == 12_000
    knobs = m._search.knobs
    assert (knobs['ivf_nprobe'], knobs['rerank']) == (tuning['ivf_nprobe'], tuning['rerank'])
    assert f"ivf_nprobe {tuning['ivf_nprobe']}" in m.schema.index_state
    # the chosen parameters answer queries the tuning never saw about as well
    found = m.search(q, 10).ids
    truth = brute_force(m, x, q)
    assert np.mean(found[:, 0] == truth[:, 0]) >= 0.95
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth)]) >= 0.9
    # a reloaded map searches the same way (the index cache and the tuning come back)
    path = m.save(tmp_path / 'map')
    again = KeyframeMap.load(path)
    assert again.schema.index_tuning == tuning and again._search.knobs == knobs
    assert again.schema.index_state == m.schema.index_state
    np.testing.assert_array_equal(again.search(q, 10).ids, found)
    assert main(['map', 'info', str(path)]) == 0
    out = capsys.readouterr().out
    assert f"ivf_nprobe={tuning['ivf_nprobe']}" in out and 'status=tuned' in out
    assert main(['map', 'info', str(path), '--json']) == 0
    assert json.loads(capsys.readouterr().out)['schema']['index_tuning'] == tuning


def test_lower_targets_choose_cheaper_parameters():
    x = clustered(12_000)
    strict = new_map(IndexSpec('ivfsq8', ivf_nlist=64))
    loose = new_map(IndexSpec('ivfsq8', ivf_nlist=64, target_recall_at_1=0.5,
                              target_recall_at_10=0.5))
    for m in (strict, loose):
        m.add(x, metas(len(x)))
    a, b = strict._search.knobs, loose._search.knobs
    assert b['ivf_nprobe'] <= a['ivf_nprobe'] and b['rerank'] <= a['rerank']
    assert (b['ivf_nprobe'], b['rerank']) != (a['ivf_nprobe'], a['rerank'])
    assert loose.schema.index_tuning['recall_at_10'] >= 0.5


def test_fixed_parameters_are_measured_not_changed():
    m = new_map(IndexSpec('ivfsq8', ivf_nlist=64, ivf_nprobe=1, rerank=10), 12_000)
    tuning = m.schema.index_tuning
    assert tuning['status'] == 'fixed' and (tuning['ivf_nprobe'], tuning['rerank']) == (1, 10)
    assert m._search.knobs['ivf_nprobe'] == 1 and m._search.knobs['rerank'] == 10
    if not tuning['targets_met']:
        assert 'below the targets 0.99 / 0.95' in m.schema.index_state


def test_a_map_too_small_to_tune_says_so_then_tunes_once_it_can():
    m = new_map(IndexSpec('hnsw', hnsw_m=8), 300)
    assert m.schema.index_tuning['status'] == 'too small'
    assert f'not tuned (a map of 300 keyframes; tunes at {TUNE_MIN_KEYFRAMES})' in \
        m.schema.index_state
    m.add(clustered(TUNE_MIN_KEYFRAMES, 1), metas(TUNE_MIN_KEYFRAMES, 'more'))
    assert m.schema.index_tuning['status'] == 'tuned'
    assert m.schema.index_tuning['keyframes'] == 300 + TUNE_MIN_KEYFRAMES
    # below their training minimum the trained kinds stay exact, untuned
    small = new_map(IndexSpec('ivfsq8'), 500)
    assert small.schema.index_state.startswith('exact fallback') and not small.schema.index_tuning
    exact = new_map(IndexSpec('flat'), 2000)
    assert exact.schema.index_tuning == {} and exact.schema.index_state == \
        'ready (nothing to train)'


def test_a_map_saved_before_tuning_loads_with_its_fixed_parameters(tmp_path):
    m = new_map(IndexSpec('ivfpq', pca_dim=16, pq_m=4, ivf_nlist=16), 10_000)
    path = m.save(tmp_path / 'map')
    schema = json.loads((path / 'schema.json').read_text())
    # Version 2 wrote every search parameter with a number and knew no targets or tuning.
    schema['schema_version'] = 2
    del schema['index_tuning']
    for name in ('target_recall_at_1', 'target_recall_at_10', 'tune_queries'):
        del schema['index'][name]
    schema['index'].update(ivf_nprobe=16, hnsw_ef_search=128, rerank=32)
    (path / 'schema.json').write_text(json.dumps(schema))
    old = KeyframeMap.load(path)
    assert old.index_spec.ivf_nprobe == 16 and old.index_spec.rerank == 32
    assert old._search.knobs['ivf_nprobe'] == 16 and old._search.knobs['rerank'] == 32
    assert old.schema.index_tuning == {}
    assert old.schema.index_state == 'trained on 10000 keyframes; fixed ivf_nprobe 16, rerank 32'
    q = clustered(5, 3)
    before = old.search(q, 4)
    upgraded = KeyframeMap.load(old.save(path))
    assert json.loads((path / 'schema.json').read_text())['schema_version'] == 3
    np.testing.assert_array_equal(upgraded.search(q, 4).ids, before.ids)
    # tuning an old map is a rebuild with the parameters left to tuning
    upgraded.rebuild_index(IndexSpec('ivfpq', pca_dim=16, pq_m=4, ivf_nlist=16))
    assert upgraded.schema.index_tuning['status'] == 'tuned'


@pytest.mark.parametrize('make, message', [
    (lambda: IndexSpec(target_recall_at_1=1.5), r'target_recall_at_1 must be a number in \(0, 1'),
    (lambda: IndexSpec(target_recall_at_10=0), r'target_recall_at_10 must be a number in \(0, 1'),
    (lambda: IndexSpec(target_recall_at_1='high'), 'target_recall_at_1 must be a number'),
    (lambda: IndexSpec('ivfsq8', ivf_nprobe=0), 'ivf_nprobe must be a positive integer, or None'),
    (lambda: IndexSpec('hnsw', hnsw_ef_search=2.5), 'hnsw_ef_search must be a positive integer'),
    (lambda: IndexSpec('hnsw', rerank=-1), 'rerank must be an integer >= 0, or None'),
    (lambda: IndexSpec('ivfpq', ivf_nlist=8, ivf_nprobe=16), 'ivf_nprobe 16 exceeds ivf_nlist 8'),
    (lambda: IndexSpec(tune_queries=10), r'tune_queries must be an integer in \[100, 100000\]'),
    (lambda: IndexSpec('hnsw', hnsw_m=1), 'hnsw_m must be an integer >= 2'),
    (lambda: new_map(IndexSpec()).rebuild_index('hnsw'), 'index must be an IndexSpec'),
])
def test_bad_index_parameters_are_refused_by_name(make, message):
    with pytest.raises(MapError, match=message):
        make()


def test_bad_settings_and_saved_tuning_are_refused_by_name(tmp_path):
    with pytest.raises(SettingError, match=r'target_recall_at_1 must be in \(0, 1\]'):
        MapSettings(target_recall_at_1=0.0)
    with pytest.raises(SettingError, match=r'target_recall_at_10 must be in \(0, 1\]'):
        MapSettings(target_recall_at_10=1.01)
    spec = MapSettings(index_kind='ivfsq8', target_recall_at_1=0.9).index_spec()
    assert spec.target_recall_at_1 == 0.9 and spec.ivf_nprobe is None and spec.rerank is None
    path = new_map(IndexSpec('hnsw', hnsw_m=8), 1000).save(tmp_path / 'map')
    schema = json.loads((path / 'schema.json').read_text())
    schema['index_tuning']['rerank'] = -3
    (path / 'schema.json').write_text(json.dumps(schema))
    with pytest.raises(MapError, match='index_tuning rerank must be an integer >= 0, got -3'):
        KeyframeMap.load(path)


def _paused_training(monkeypatch, pauses: int = 1):
    """Make the next `pauses` trainings wait for `release` after setting `started`."""
    started, release = threading.Event(), threading.Event()
    calls = []
    train = SearchIndex._train

    def paused(self, rows):
        calls.append(len(rows))
        if len(calls) <= pauses:
            started.set()
            assert release.wait(WAIT), 'the test never released the rebuild'
        return train(self, rows)

    monkeypatch.setattr(SearchIndex, '_train', paused)
    return started, release, calls


def _in_thread(target, *args):
    errors: list[BaseException] = []
    done = threading.Event()

    def run():
        try:
            target(*args)
        except BaseException as exc:  # noqa: BLE001 (reported by the main thread)
            errors.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, done, errors


def test_searches_and_writes_go_on_while_the_index_is_rebuilt(monkeypatch):
    x = clustered(3100)
    m = new_map(IndexSpec('flat'))
    m.add(x[:2000], metas(2000))
    gone = m.add(x[3000:], metas(100, 'gone'))
    started, release, _ = _paused_training(monkeypatch)
    target = IndexSpec('flat', pca_dim=8, rerank=20)
    _, rebuilt, errors = _in_thread(m.rebuild_index, target)
    assert started.wait(WAIT)
    # The rebuild is now blocked inside its training until `release` is set, which happens
    # only after these calls returned: they were answered while it was in progress.
    _, searched, search_errors = _in_thread(m.search, x[:5], 3)
    assert searched.wait(WAIT) and not search_errors, 'a search waited for the rebuild'
    ids = m.add(x[2000:3000], metas(1000, 'during'))
    assert m.remove_session('gone') == 100
    assert not rebuilt.is_set() and m.index_spec == IndexSpec('flat')  # still the old index
    np.testing.assert_array_equal(m.search(x[2000:2003], 1).ids[:, 0], ids[:3])
    release.set()
    assert rebuilt.wait(WAIT) and not errors
    assert m.index_spec == target and m.schema.index_trained_on == 2100
    # the writes made during the rebuild are in the new index: added keyframes are found,
    # removed ones are not
    np.testing.assert_array_equal(m.search(x[2000:3000], 1).ids[:, 0], ids)
    assert not np.isin(m.search(x[3000:], 5).ids, gone).any()
    np.testing.assert_array_equal(m.search(x[:50], 1).ids[:, 0], np.arange(50))


def test_a_rollback_into_the_rows_being_rebuilt_restarts_the_rebuild(monkeypatch):
    x = clustered(2600)
    m = new_map(IndexSpec('flat'))
    m.add(x[:2000], metas(2000))
    savepoint = m.savepoint()
    m.add(x[2000:2300], metas(300, 'undone'))
    started, release, calls = _paused_training(monkeypatch)
    rebuild, rebuilt, errors = _in_thread(m.rebuild_index, IndexSpec('flat', pca_dim=8))
    assert started.wait(WAIT)
    m.rollback(savepoint)  # cuts into the 2300 rows the rebuild is indexing
    ids = m.add(x[2300:], metas(300, 'kept'))  # the same ids, other descriptors
    assert list(ids) == list(range(2000, 2300))
    release.set()
    assert rebuilt.wait(WAIT) and not errors
    assert calls == [2300, 2300]  # the first build was thrown away, the second is current
    assert m.index_spec.pca_dim == 8 and m.schema.index_trained_on == 2300
    np.testing.assert_array_equal(m.search(x[2300:], 1).ids[:, 0], ids)
    assert m.sessions() == {'s': 2000, 'kept': 300}


def test_a_rollback_drops_rows_from_a_trained_index_without_retraining():
    m = new_map(IndexSpec('ivfsq8', ivf_nlist=64), 10_000)
    search, tuning = m._search, m.schema.index_tuning
    savepoint = m.savepoint()
    extra = clustered(50, 9)
    m.add(extra, metas(50, 'x'))
    m.rollback(savepoint)
    assert m._search is search and len(search.backend) == 10_000
    assert m.schema.index_tuning == tuning
    ids = m.add(extra[:5], metas(5, 'y'))
    np.testing.assert_array_equal(m.search(extra[:5], 1).ids[:, 0], ids)


def test_refresh_index_retunes_a_grown_map_without_rebuilding_it():
    m = new_map(IndexSpec('hnsw', hnsw_m=8), TUNE_MIN_KEYFRAMES)
    backend = m._search.backend
    assert m.schema.index_tuning['keyframes'] == TUNE_MIN_KEYFRAMES
    assert m.refresh_index() == ''
    m.add(clustered(2 * TUNE_MIN_KEYFRAMES + 10, 1), metas(2 * TUNE_MIN_KEYFRAMES + 10, 'b'))
    assert m.refresh_index() == 'tuned'
    assert m._search.backend is backend
    assert m.schema.index_tuning['keyframes'] == 3 * TUNE_MIN_KEYFRAMES + 10
    trained = new_map(IndexSpec('flat', pca_dim=8), 1200)
    trained.add(clustered(3000, 2), metas(3000, 'b'))
    assert trained.refresh_index() == 'rebuilt' and trained.schema.index_trained_on == 4200


def test_a_loaded_map_reads_its_descriptors_from_the_file(tmp_path):
    x = clustered(3000)
    m = new_map(IndexSpec('flat', pca_dim=8))
    m.add(x, metas(3000))
    path = m.save(tmp_path / 'map')
    loaded = KeyframeMap.load(path)
    assert isinstance(loaded._rows._chunks[0], FileRows)
    rows = np.array([2999, 5, 6, 7, 1000, 5])
    np.testing.assert_array_equal(loaded._rows.take(rows), x[rows])
    np.testing.assert_array_equal(loaded.search(x[:20], 3).ids, m.search(x[:20], 3).ids)
    loaded.add(x[:2], metas(2, 'again'))
    loaded.save(path)  # replaces the directory it reads from: the open file stays readable
    np.testing.assert_array_equal(loaded.descriptor(1234), x[1234])
    assert len(KeyframeMap.load(path)) == 3002
    assert isinstance(KeyframeMap.load(path, mmap=False)._rows._chunks[0], np.ndarray)
