"""Strict checkpoint handling: the released format loads, everything else is refused clearly."""
import collections
import json
import shutil
import urllib.error

import pytest
import torch

from boq_ros.model import CheckpointError, load_boq
from boq_ros.model.checkpoint import (
    CheckpointNotFoundError,
    cache_path,
    download_checkpoint,
    expected_tensors,
    is_released,
    read_state_dict,
    release_record_path,
    resolve_checkpoint,
    validate_state_dict,
    write_random_checkpoint,
)
from boq_ros.model.presets import PRESETS, get_preset


@pytest.fixture(scope='module')
def resnet_file(tmp_path_factory):
    return write_random_checkpoint(tmp_path_factory.mktemp('r') / 'r.pth', 'resnet50-16384')


@pytest.fixture(scope='module')
def dinov2_file(tmp_path_factory):
    return write_random_checkpoint(tmp_path_factory.mktemp('d') / 'd.pth', 'dinov2-12288')


@pytest.fixture
def resnet_state(resnet_file):
    return read_state_dict(resnet_file)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    return tmp_path / 'torch' / 'hub' / 'checkpoints'


def test_key_lists_are_complete():
    r, d = expected_tensors('resnet50-16384'), expected_tensors('dinov2-12288')
    assert (len(r), len(d)) == (314, 231)
    assert r['backbone.net.0.weight'] == ((64, 3, 7, 7), 'float32')
    assert r['backbone.net.1.num_batches_tracked'] == ((), 'int64')
    assert d['backbone.dino.pos_embed'] == ((1, 1370, 768), 'float32')
    assert 'backbone.dino.mask_token' in d and 'backbone.dino.norm.weight' in d


@pytest.mark.parametrize('preset', list(PRESETS))
def test_random_checkpoint_has_the_released_format_and_round_trips(
        preset, request):
    path = request.getfixturevalue('resnet_file' if preset.startswith('resnet') else 'dinov2_file')
    state = read_state_dict(path)
    expected = expected_tensors(preset)
    assert list(state) == list(expected)
    for key, (shape, dtype) in expected.items():
        assert tuple(state[key].shape) == shape and str(state[key].dtype) == f'torch.{dtype}'
    running_vars = [v for k, v in state.items() if k.endswith('running_var')]
    assert all(float(v.min()) > 0 for v in running_vars)
    model = load_boq(path)
    assert model.config.name == preset
    ours = model.state_dict()
    assert all(torch.equal(ours[k], state[k]) for k in expected)

def test_random_checkpoints_are_seeded(resnet_file, resnet_state, tmp_path):
    same = read_state_dict(write_random_checkpoint(tmp_path / 'a.pth', 'resnet50-16384'))
    other = read_state_dict(write_random_checkpoint(tmp_path / 'b.pth', 'resnet50-16384', 1))
    assert all(torch.equal(same[k], v) for k, v in resnet_state.items())
    assert not torch.equal(other['aggregator.fc.weight'], resnet_state['aggregator.fc.weight'])


def test_missing_unexpected_and_misshaped_keys(resnet_state):
    config = get_preset('resnet50-16384')
    state = dict(resnet_state)
    dropped = [k for k in state if k.startswith('backbone.net.6.')][:23]
    for key in dropped:
        del state[key]
    with pytest.raises(CheckpointError, match=f'23 missing keys: {dropped[0]}'):
        validate_state_dict(state, config)
    state = dict(resnet_state, **{'aggregator.extra.weight': torch.zeros(3)})
    with pytest.raises(CheckpointError, match='1 unexpected keys: aggregator.extra.weight'):
        validate_state_dict(state, config)
    state = dict(resnet_state, **{'aggregator.fc.weight': torch.zeros(32, 64)})
    with pytest.raises(CheckpointError, match=r'aggregator.fc.weight has shape \(32, 64\), '
                                              r'expected \(32, 128\)'):
        validate_state_dict(state, config)
    state = dict(resnet_state, **{'aggregator.fc.bias': torch.zeros(32, dtype=torch.float16)})
    with pytest.raises(CheckpointError, match='fc.bias has dtype torch.float16, expected float32'):
        validate_state_dict(state, config)
    with pytest.raises(CheckpointError, match='missing keys'):
        load_boq(dict(list(resnet_state.items())[:-1]))


def test_file_for_the_other_backbone(dinov2_file, resnet_file):
    with pytest.raises(CheckpointError, match='checkpoint is for dinov2, not resnet50'):
        load_boq(dinov2_file, 'resnet50')
    with pytest.raises(CheckpointError, match='checkpoint is for resnet50, not dinov2'):
        load_boq(resnet_file, preset='dinov2-12288')
    with pytest.raises(ValueError, match='preset dinov2-12288 uses backbone dinov2, not resnet50'):
        load_boq(dinov2_file, 'resnet50', preset='dinov2-12288')
    with pytest.raises(ValueError, match="unknown backbone 'vgg16'"):
        load_boq(resnet_file, 'vgg16')


def test_unreadable_files(tmp_path, resnet_file):
    truncated = tmp_path / 'truncated.pth'
    data = resnet_file.read_bytes()
    truncated.write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match='truncated or corrupt'):
        load_boq(truncated)
    empty = tmp_path / 'empty.pth'
    empty.touch()
    with pytest.raises(CheckpointError, match='empty'):
        load_boq(empty)
    with pytest.raises(CheckpointNotFoundError, match='no checkpoint file') as info:
        load_boq(tmp_path / 'nope.pth')
    assert isinstance(info.value, OSError) and isinstance(info.value, ValueError)


@pytest.mark.filterwarnings('ignore:Detected pickle protocol')
def test_damaged_files_are_refused_whatever_torch_load_raises(tmp_path):
    """torch.load of a damaged file raises KeyError, IndexError, struct.error, ...: all refused."""
    path = tmp_path / 'small.pth'
    torch.save({'a': torch.arange(10.0), 'b': torch.zeros(2, 3, dtype=torch.int64)}, path)
    data = path.read_bytes()
    legacy = tmp_path / 'legacy.pth'
    torch.save({'a': torch.arange(10.0)}, legacy, _use_new_zipfile_serialization=False)
    generator = torch.Generator().manual_seed(0)
    damaged = [b'hello world', b'{"a": 1}', legacy.read_bytes()[:200]]
    for source in (data, legacy.read_bytes()):
        for cut in range(1, len(source), max(1, len(source) // 40)):
            damaged.append(source[:cut])
        for _ in range(40):
            flipped = bytearray(source)
            where = torch.randint(len(source), (3,), generator=generator).tolist()
            for i, value in zip(where, torch.randint(256, (3,), generator=generator).tolist()):
                flipped[i] = value
            damaged.append(bytes(flipped))
    target = tmp_path / 'damaged.pth'
    for blob in damaged:
        target.write_bytes(blob)
        try:
            read_state_dict(target)
        except CheckpointError as e:
            assert 'truncated or corrupt' in str(e) or 'not a plain state dict' in str(e), e
    target.write_bytes(b'hello world')
    with pytest.raises(CheckpointError, match=r'truncated or corrupt file \(KeyError'):
        read_state_dict(target)
    target.write_bytes(b'\x80\x02' + bytes(range(40)))
    with pytest.raises(CheckpointError, match=r'refuses it \(Unsupported operand 0\).*corrupt'):
        read_state_dict(target)


def test_pickles_that_are_not_flat_state_dicts(tmp_path, resnet_state):
    module = tmp_path / 'module.pth'
    torch.save(torch.nn.Linear(2, 2), module)  # a whole pickled module
    with pytest.raises(CheckpointError, match='not a plain state dict'):
        read_state_dict(module)
    wrapped = tmp_path / 'wrapped.pth'
    torch.save({'state_dict': resnet_state, 'epoch': 3}, wrapped)
    with pytest.raises(CheckpointError, match="wrapper dict .*the value of 'state_dict'"):
        load_boq(wrapped)
    listed = tmp_path / 'list.pth'
    torch.save([torch.zeros(1)], listed)
    with pytest.raises(CheckpointError, match='holds a list'):
        load_boq(listed)
    mixed = tmp_path / 'mixed.pth'
    torch.save(collections.OrderedDict(a=torch.zeros(1), b=3), mixed)
    with pytest.raises(CheckpointError, match=r'1 non-tensor entries: b \(int\)'):
        load_boq(mixed)
    with pytest.raises(CheckpointError, match="wrapper dict .*the value of 'state_dict'"):
        load_boq({'state_dict': resnet_state, 'epoch': 3})  # in memory: same message
    with pytest.raises(CheckpointError, match='refuses it .*GLOBAL torch.nn.modules.linear'):
        read_state_dict(module)
    prefixed = {f'model.{k}': v for k, v in list(resnet_state.items())[:3]}
    with pytest.raises(CheckpointError, match='cannot tell the backbone.*model.backbone.net.0'):
        load_boq(prefixed)


def test_presets_resolve_through_the_torch_hub_cache(hub, resnet_file, monkeypatch):
    with pytest.raises(CheckpointNotFoundError,
                       match='boq-ros weights download --preset resnet50-16384'):
        resolve_checkpoint('resnet50-16384')
    assert cache_path('resnet50-16384') == hub / 'resnet50_16384.pth'
    hub.mkdir(parents=True)
    (hub / 'resnet50_16384.pth').write_bytes(resnet_file.read_bytes())
    assert resolve_checkpoint('resnet50-16384') == hub / 'resnet50_16384.pth'
    assert load_boq('resnet50-16384').model_id == load_boq(resnet_file).model_id
    with pytest.raises(CheckpointNotFoundError, match="no checkpoint file 'resnet-50'"):
        resolve_checkpoint('resnet-50')


def test_download_failure_is_explained_and_never_leaves_a_file(hub, monkeypatch):
    calls = []

    def offline(url, dst, progress=True):
        calls.append(url)
        raise urllib.error.URLError('Temporary failure in name resolution')

    monkeypatch.setattr(torch.hub, 'download_url_to_file', offline)
    with pytest.raises(CheckpointError, match='could not download .*dinov2_12288.pth.*copy'):
        resolve_checkpoint('dinov2-12288', download=True)
    assert calls == [get_preset('dinov2-12288').url]
    assert not cache_path('dinov2-12288').exists()


def test_downloaded_file_is_validated(hub, monkeypatch, tmp_path):
    def fake_download(url, dst, progress=True):
        torch.save({'backbone.net.0.weight': torch.zeros(1)}, dst)

    monkeypatch.setattr(torch.hub, 'download_url_to_file', fake_download)
    with pytest.raises(CheckpointError, match='missing keys'):
        download_checkpoint('resnet50-16384', progress=False)
    assert not cache_path('resnet50-16384').exists()


def fake_release(source):
    """Stand in for torch.hub's URL fetch: 'download' a local file, remembering the URLs."""
    urls = []

    def download(url, dst, progress=True):
        urls.append(url)
        shutil.copyfile(source, dst)

    return download, urls


def test_only_downloaded_files_are_released(hub, monkeypatch, resnet_file, tmp_path):
    download, urls = fake_release(resnet_file)
    monkeypatch.setattr(torch.hub, 'download_url_to_file', download)
    assert not is_released(resnet_file)  # nothing downloaded yet: no record
    path = download_checkpoint('resnet50-16384', progress=False)
    assert urls == [get_preset('resnet50-16384').url]
    record = json.loads(release_record_path().read_text())
    assert release_record_path().parent == path.parent == hub
    assert record == {'resnet50_16384.pth': {'sha256': load_boq(path).checksum,
                                             'url': get_preset('resnet50-16384').url}}
    assert is_released(path) and is_released('resnet50-16384')
    assert is_released(load_boq(path))
    assert is_released(resnet_file)  # the same bytes elsewhere are the same release

    other = write_random_checkpoint(tmp_path / 'other.pth', 'resnet50-16384', seed=1)
    assert not is_released(other) and not is_released(load_boq(other))
    modified = tmp_path / 'modified.pth'
    data = bytearray(resnet_file.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte of a tensor: still a loadable checkpoint
    modified.write_bytes(bytes(data))
    assert load_boq(modified).config.name == 'resnet50-16384'
    assert not is_released(modified)
    assert not is_released(load_boq(read_state_dict(resnet_file)))  # in memory: no file
    assert not is_released(tmp_path / 'missing.pth')
    assert not is_released('dinov2-12288')


def test_random_checkpoints_never_count_as_released(hub, monkeypatch, resnet_file):
    # Written under the released name in the cache, a random file still has no record.
    path = write_random_checkpoint(cache_path('resnet50-16384'), 'resnet50-16384', seed=2)
    assert not release_record_path().exists() and not is_released(path)
    download, _ = fake_release(resnet_file)
    monkeypatch.setattr(torch.hub, 'download_url_to_file', download)
    download_checkpoint('resnet50-16384', progress=False)
    write_random_checkpoint(cache_path('resnet50-16384'), 'resnet50-16384', seed=2)
    assert not is_released('resnet50-16384')  # overwritten after the download


def test_release_record_is_checked_not_trusted(hub, resnet_file):
    hub.mkdir(parents=True)
    checksum = load_boq(resnet_file).checksum
    cases = [
        {'resnet50_16384.pth': {'sha256': checksum, 'url': 'https://example.com/x.pth'}},
        {'mine.pth': {'sha256': checksum, 'url': get_preset('resnet50-16384').url}},
        [checksum],
    ]
    for record in cases:
        release_record_path().write_text(json.dumps(record))
        assert not is_released(resnet_file), record
    release_record_path().write_text('{"truncated')
    assert not is_released(resnet_file)


def test_failed_download_records_nothing(hub, monkeypatch):
    def broken(url, dst, progress=True):
        torch.save({'backbone.net.0.weight': torch.zeros(1)}, dst)

    monkeypatch.setattr(torch.hub, 'download_url_to_file', broken)
    with pytest.raises(CheckpointError, match='missing keys'):
        download_checkpoint('resnet50-16384', progress=False)
    assert not release_record_path().exists()
