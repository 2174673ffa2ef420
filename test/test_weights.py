"""`boq-ros weights`: downloads are recorded as releases, and `list` says which files are."""
import shutil
import urllib.error

import torch

from boq_ros.cli import main
from boq_ros.model.checkpoint import cache_path, is_released, write_random_checkpoint


def test_download_records_a_release_and_list_shows_it(tmp_path, monkeypatch, capsys,
                                                      resnet_checkpoint):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    urls = []

    def fetch(url, dst, progress=True):
        urls.append(url)
        shutil.copyfile(resnet_checkpoint, dst)

    monkeypatch.setattr(torch.hub, 'download_url_to_file', fetch)
    assert main(['weights', 'download', '--preset', 'resnet50-16384']) == 0
    assert 'recorded as a release' in capsys.readouterr().out
    assert len(urls) == 1 and is_released(cache_path('resnet50-16384'))

    write_random_checkpoint(cache_path('dinov2-12288'), 'dinov2-12288')  # copied by hand
    assert main(['weights', 'list']) == 0
    resnet, dinov2 = capsys.readouterr().out.splitlines()
    assert 'verified release' in resnet and 'unverified' not in resnet
    assert 'unverified' in dinov2 and ' MB ' in dinov2

    assert main(['weights', 'download', '--preset', 'all']) == 0
    out = capsys.readouterr().out
    assert 'resnet50-16384: already cached' in out and '(verified release)' in out
    assert 'dinov2-12288: already cached' in out and 'use --force' in out
    assert len(urls) == 1


def test_download_failure_is_reported_once(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))

    def offline(url, dst, progress=True):
        raise urllib.error.URLError('network is unreachable')

    monkeypatch.setattr(torch.hub, 'download_url_to_file', offline)
    assert main(['weights', 'download', '--preset', 'dinov2-12288']) == 1
    err = capsys.readouterr().err
    assert err.startswith('boq-ros weights download: error: could not download ')
    assert err.count('error:') == 1
    assert main(['weights', 'list']) == 0
    assert capsys.readouterr().out.count('not downloaded') == 2
