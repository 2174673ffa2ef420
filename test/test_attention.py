"""Attention heat maps: API, rendered grid, and the `attention` / `weights` subcommands."""
import argparse
import urllib.error

import cv2
import matplotlib.image
import numpy as np
import pytest
import torch

from boq_ros.attention import attention_heatmaps, display_rgb, render_attention
from boq_ros.cli import attention as attention_cli
from boq_ros.cli import command_name, run_command
from boq_ros.cli import weights as weights_cli
from boq_ros.extractor import Extractor
from boq_ros.preprocess import PreprocessConfig


@pytest.fixture(scope='module')
def extractor(resnet_checkpoint):
    return Extractor.from_checkpoint(resnet_checkpoint, device='cpu',
                                     preprocess=PreprocessConfig('height', 48))


def camera(h=40, w=60, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def run_cli(module, argv):
    parser = argparse.ArgumentParser(prog='boq-ros')
    module.register(parser.add_subparsers(dest='command', required=True))
    args = parser.parse_args(argv)
    return run_command(args, command_name(parser, args))


def test_heatmaps_are_the_upsampled_query_maps(extractor):
    image = camera()
    maps = attention_heatmaps(extractor, image, 'rgb8', [0, 5, 63], block=1)
    assert maps.shape == (3, 40, 60) and maps.dtype == np.float32
    _, grids = extractor.extract_with_attention([image])
    grid = torch.from_numpy(grids[0][1, [0, 5, 63]])[None]
    expected = torch.nn.functional.interpolate(grid, size=(40, 60), mode='bilinear')[0].numpy()
    assert np.abs(maps - expected).max() < 1e-7
    assert (maps >= 0).all()
    with pytest.raises(ValueError, match=r'queries \[64\] out of range'):
        attention_heatmaps(extractor, image, 'rgb8', [1, 64])
    with pytest.raises(ValueError, match='block 2 out of range'):
        attention_heatmaps(extractor, image, 'rgb8', [1], block=2)
    with pytest.raises(ValueError, match='no queries'):
        attention_heatmaps(extractor, image, 'rgb8', [])


def test_display_conversion():
    image = camera()
    assert np.array_equal(display_rgb(image[..., ::-1], 'bgr8'), image)
    wide = np.full((4, 4), 1000, np.uint16)
    assert display_rgb(wide, 'mono16').shape == (4, 4, 3)
    assert display_rgb(wide, 'mono16').max() == 255


def test_render_grid(extractor, tmp_path):
    out = render_attention([camera(seed=1), camera(30, 30, 2)[..., 0]], extractor, [3, 7],
                           tmp_path / 'grid.png', encodings=['rgb8', 'mono8'],
                           labels=['a', 'b'])
    picture = matplotlib.image.imread(out)
    assert picture.ndim == 3 and picture.shape[0] > 200 and picture.shape[1] > 400
    assert picture[..., :3].std() > 0.05  # something was drawn
    with pytest.raises(ValueError, match='2 images but 1 labels'):
        render_attention([camera(), camera()], extractor, [1], tmp_path / 'x.png', labels=['a'])


def test_attention_command(resnet_checkpoint, tmp_path, capsys):
    paths = [tmp_path / 'a.png', tmp_path / 'b.png']
    cv2.imwrite(str(paths[0]), camera(seed=3))
    cv2.imwrite(str(paths[1]), (camera(seed=4)[..., 0].astype(np.uint16) * 200))
    out = tmp_path / 'att.png'
    argv = ['attention', *map(str, paths), '--checkpoint', str(resnet_checkpoint),
            '--queries', '0', '5', '--block', '1', '--device', 'cpu', '--input-size', '48',
            '--out', str(out)]
    assert run_cli(attention_cli, argv) == 0
    assert out.is_file() and f'wrote {out}' in capsys.readouterr().out
    assert run_cli(attention_cli, [*argv[:1], str(tmp_path / 'missing.png'), *argv[3:]]) == 1
    assert 'cannot read image' in capsys.readouterr().err
    argv_bad = [*argv[:-1], str(tmp_path / 'bad.png')]
    argv_bad[argv_bad.index('--queries') + 1] = '99'
    assert run_cli(attention_cli, argv_bad) == 1
    assert 'queries [99] out of range' in capsys.readouterr().err


def test_weights_command(tmp_path, monkeypatch, capsys, resnet_checkpoint):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    hub = tmp_path / 'hub' / 'checkpoints'
    assert run_cli(weights_cli, ['weights', 'list']) == 0
    assert capsys.readouterr().out.count('not downloaded') == 2
    hub.mkdir(parents=True)
    (hub / 'resnet50_16384.pth').write_bytes(resnet_checkpoint.read_bytes())
    assert run_cli(weights_cli, ['weights', 'list']) == 0
    listing = capsys.readouterr().out
    assert 'not downloaded' in listing.split('\n')[1] and ' MB ' in listing.split('\n')[0]

    def offline(url, dst, progress=True):
        raise urllib.error.URLError('network is unreachable')

    monkeypatch.setattr(torch.hub, 'download_url_to_file', offline)
    assert run_cli(weights_cli, ['weights', 'download', '--preset', 'all']) == 1
    captured = capsys.readouterr()
    assert 'resnet50-16384: already cached' in captured.out
    assert 'could not download' in captured.err and 'dinov2_12288.pth' in captured.err
