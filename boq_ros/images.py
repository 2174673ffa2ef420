"""ROS image fields and compressed image bytes to numpy arrays, and back.

Cameras publish many pixel layouts (Bayer mosaics, 16-bit, packed YUV, row padding, big-endian)
and recordings carry JPEG/PNG bytes; everything downstream wants one of six plain layouts. This
module is the single place that validates untrusted image bytes (sizes are checked before any
allocation or decompression) so that the bag reader, the live node and the tests agree; depth
images are decoded to metres by :func:`decode_depth` under the same checks.
It is ROS-free: it works on the fields of ``sensor_msgs/Image`` and
``sensor_msgs/CompressedImage``.
"""
from __future__ import annotations

import io
import operator
from typing import NamedTuple

import cv2
import numpy as np
from PIL import Image

from boq_ros.settings import DEFAULT_MAX_PIXELS

MAX_PIXELS_PER_BYTE = 2000
"""Most pixels a compressed byte may claim. Even a uniform 8000x8000 JPEG or a PNG of zeros
(zlib's limit is ~1032:1 per channel byte) stays below it; a small message claiming a huge image
is a decompression bomb."""

CANONICAL_ENCODINGS = ('rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8', 'mono16')
"""Encodings of the arrays this module returns."""


class ImageDecodeError(ValueError):
    """Raised for image bytes that cannot be decoded; the message names the cause."""


class _Layout(NamedTuple):
    dtype: np.dtype
    channels: int
    canonical: str
    convert: int | None = None  # cv2 colour conversion code (Bayer, YUV)


_U8 = np.dtype(np.uint8)
_U16 = np.dtype(np.uint16)

# sensor_msgs/image_encodings.hpp names. OpenCV names Bayer patterns after the second row, so
# ROS 'rggb' is cv2 'BG' (cv2.COLOR_BayerRGGB2RGB is the same code in current OpenCV).
_LAYOUTS: dict[str, _Layout] = {
    'rgb8': _Layout(_U8, 3, 'rgb8'),
    'bgr8': _Layout(_U8, 3, 'bgr8'),
    'rgba8': _Layout(_U8, 4, 'rgba8'),
    'bgra8': _Layout(_U8, 4, 'bgra8'),
    'mono8': _Layout(_U8, 1, 'mono8'),
    'mono16': _Layout(_U16, 1, 'mono16'),
    '8UC1': _Layout(_U8, 1, 'mono8'),
    '8UC3': _Layout(_U8, 3, 'bgr8'),
    '8UC4': _Layout(_U8, 4, 'bgra8'),
    '16UC1': _Layout(_U16, 1, 'mono16'),
    'rgb16': _Layout(_U16, 3, 'rgb8'),
    'bgr16': _Layout(_U16, 3, 'bgr8'),
    'rgba16': _Layout(_U16, 4, 'rgba8'),
    'bgra16': _Layout(_U16, 4, 'bgra8'),
    'bayer_rggb8': _Layout(_U8, 1, 'rgb8', cv2.COLOR_BayerBG2RGB),
    'bayer_bggr8': _Layout(_U8, 1, 'rgb8', cv2.COLOR_BayerRG2RGB),
    'bayer_gbrg8': _Layout(_U8, 1, 'rgb8', cv2.COLOR_BayerGR2RGB),
    'bayer_grbg8': _Layout(_U8, 1, 'rgb8', cv2.COLOR_BayerGB2RGB),
    'bayer_rggb16': _Layout(_U16, 1, 'rgb8', cv2.COLOR_BayerBG2RGB),
    'bayer_bggr16': _Layout(_U16, 1, 'rgb8', cv2.COLOR_BayerRG2RGB),
    'bayer_gbrg16': _Layout(_U16, 1, 'rgb8', cv2.COLOR_BayerGR2RGB),
    'bayer_grbg16': _Layout(_U16, 1, 'rgb8', cv2.COLOR_BayerGB2RGB),
    'yuv422': _Layout(_U8, 2, 'rgb8', cv2.COLOR_YUV2RGB_UYVY),
    'uyvy': _Layout(_U8, 2, 'rgb8', cv2.COLOR_YUV2RGB_UYVY),
    'yuv422_yuy2': _Layout(_U8, 2, 'rgb8', cv2.COLOR_YUV2RGB_YUY2),
    'yuyv': _Layout(_U8, 2, 'rgb8', cv2.COLOR_YUV2RGB_YUY2),
}

SUPPORTED_ENCODINGS = tuple(_LAYOUTS)
"""Every ``sensor_msgs/Image`` encoding that :func:`decode_image` accepts."""


def _layout(encoding: object) -> _Layout:
    layout = _LAYOUTS.get(encoding) if isinstance(encoding, str) else None
    if layout is None:
        raise ImageDecodeError(
            f'unsupported image encoding {encoding!r} (supported: {", ".join(_LAYOUTS)})')
    return layout


def _byte_view(data: bytes | memoryview | np.ndarray) -> np.ndarray:
    """Return the bytes as a flat uint8 array without copying when possible."""
    if isinstance(data, np.ndarray):
        if data.dtype.hasobject:
            raise ImageDecodeError(f'image data must hold bytes, got an array of {data.dtype}')
        return np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except BufferError:  # a strided memoryview: numpy copies it
        return _byte_view(np.asarray(data))
    except TypeError:
        raise ImageDecodeError(
            f'image data must be bytes-like (bytes, array, memoryview), got '
            f'{type(data).__name__}') from None


def _integer(name: str, value: object) -> int:
    """Return a size field as a Python int (numpy integers would overflow in the checks)."""
    try:
        if isinstance(value, bool | np.bool_):
            raise TypeError
        return operator.index(value)
    except TypeError:
        raise ImageDecodeError(f'{name} must be an integer, got {value!r}') from None


def _check_pixels(height: int, width: int, max_pixels: int) -> None:
    if height <= 0 or width <= 0:
        raise ImageDecodeError(f'image has zero size ({width}x{height})')
    if height * width > max_pixels:
        raise ImageDecodeError(
            f'image of {width}x{height} = {width * height} pixels exceeds max_pixels={max_pixels}')


def _rows(encoding: str, height: object, width: object, step: object,
          data: bytes | memoryview | np.ndarray, pixel_bytes: int, max_pixels: int
          ) -> tuple[int, int, int, np.ndarray, int]:
    """Check an Image's size fields against its data; return them, its bytes and a row's size.

    Untrusted sizes are checked before anything is allocated.
    """
    height, width, step = (_integer(n, v) for n, v in
                           (('height', height), ('width', width), ('step', step)))
    _check_pixels(height, width, max_pixels)
    row_bytes = width * pixel_bytes
    if step < row_bytes:
        raise ImageDecodeError(
            f'step {step} is smaller than width {width} x {pixel_bytes} bytes per pixel '
            f'({encoding}) = {row_bytes}')
    buf = _byte_view(data)
    if buf.size != step * height:
        raise ImageDecodeError(
            f'data has {buf.size} bytes, not step {step} x height {height} = {step * height}')
    return height, width, step, buf, row_bytes


def decode_image(encoding: str, height: int, width: int, step: int,
                 data: bytes | memoryview | np.ndarray, is_bigendian: bool = False,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, str]:
    """Turn ``sensor_msgs/Image`` fields into an array in one of the canonical encodings.

    Returns ``(array, encoding)``: HxW for mono8/mono16, HxWxC otherwise. Plain layouts are
    returned as views of ``data`` (read-only when ``data`` is ``bytes``); Bayer, YUV, 16-bit
    colour (scaled to 8 bits, as cv_bridge does) and big-endian data are converted.
    """
    layout = _layout(encoding)
    height, width, step, buf, row_bytes = _rows(encoding, height, width, step, data,
                                                layout.channels * layout.dtype.itemsize,
                                                max_pixels)
    if layout.convert is not None and layout.channels == 2 and width % 2:
        raise ImageDecodeError(f'{encoding} needs an even width, got {width}')

    rows = buf[:step * height].reshape(height, step)[:, :row_bytes]
    if layout.dtype == _U16:
        rows = rows.view('>u2' if is_bigendian else '<u2')
        if rows.dtype != _U16:
            rows = rows.astype(_U16)
    shape = (height, width) if layout.channels == 1 else (height, width, layout.channels)
    array = rows.reshape(shape)

    if layout.convert is not None:
        try:
            array = cv2.cvtColor(np.ascontiguousarray(array), layout.convert)
        except cv2.error as err:
            raise ImageDecodeError(f'cannot convert {encoding} {width}x{height}: {err}') from err
    if array.dtype == _U16 and layout.canonical != 'mono16':
        array = (array >> 8).astype(_U8)
    return array, layout.canonical


DEPTH_ENCODINGS = ('16UC1', 'mono16', '32FC1')
"""Depth image encodings that :func:`decode_depth` accepts: millimetres as uint16 (RealSense,
Kinect, 7-Scenes) or metres as float32 (depth_image_proc, simulators)."""

_DEPTH_DTYPES = {'16UC1': _U16, 'mono16': _U16, '32FC1': np.dtype(np.float32)}


def decode_depth(encoding: str, height: int, width: int, step: int,
                 data: bytes | memoryview | np.ndarray, is_bigendian: bool = False,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Turn depth ``sensor_msgs/Image`` fields into float32 metres (HxW), NaN where invalid.

    Depth cameras mark missing measurements differently: uint16 millimetres use 0 (and the
    saturated 65535), float metres use 0, NaN or inf; negative values are never a distance.
    One NaN convention lets geometric checks use any of them. Always returns a new array.
    """
    dtype = _DEPTH_DTYPES.get(encoding) if isinstance(encoding, str) else None
    if dtype is None:
        raise ImageDecodeError(f'unsupported depth encoding {encoding!r} (supported: '
                               f'{", ".join(DEPTH_ENCODINGS)})')
    height, width, step, buf, row_bytes = _rows(encoding, height, width, step, data,
                                                dtype.itemsize, max_pixels)
    rows = np.ascontiguousarray(buf.reshape(height, step)[:, :row_bytes])
    values = rows.view(dtype.newbyteorder('>' if is_bigendian else '<')).reshape(height, width)
    if dtype == _U16:
        depth = values.astype(np.float32) / np.float32(1000.0)
        depth[(values == 0) | (values == 0xFFFF)] = np.nan
        return depth
    depth = values.astype(np.float32)
    depth[~(np.isfinite(depth) & (depth > 0))] = np.nan
    return depth


_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
_JPEG_SOI = b'\xff\xd8'
# Start-of-frame markers (baseline, extended, progressive, lossless, arithmetic variants).
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7,
                       0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})


def _png_size(buf: np.ndarray) -> tuple[int, int]:
    header = buf[:26].tobytes()
    if len(header) < 24 or header[12:16] != b'IHDR':
        raise ImageDecodeError('PNG data is truncated before its IHDR header')
    return int.from_bytes(header[20:24], 'big'), int.from_bytes(header[16:20], 'big')


def _jpeg_size(buf: np.ndarray) -> tuple[int, int]:
    """Walk the JPEG segments to the first scan; return (height, width) of the frame header.

    Refuses data without an end-of-image marker after the first scan (truncated); bytes after
    that marker (some cameras append metadata) are allowed.
    """
    n = buf.size
    i = 2
    size = None
    while i + 4 <= n:
        if buf[i] != 0xFF:
            raise ImageDecodeError(f'corrupt JPEG data: no segment marker at byte {i}')
        marker = int(buf[i + 1])
        if marker == 0xFF:
            i += 1
            continue
        if marker in _JPEG_STANDALONE:
            i += 2
            continue
        if marker == 0xDA and size is not None:  # the first scan: entropy-coded data follows
            if buf[i:].tobytes().rfind(b'\xff\xd9') < 0:
                raise ImageDecodeError('JPEG data is truncated (no end-of-image marker)')
            return size
        if marker in (0xDA, 0xD9):
            raise ImageDecodeError('corrupt JPEG data: scan or end before the frame header')
        if marker in _JPEG_SOF:
            if i + 9 > n:
                break
            size = (int(buf[i + 5]) << 8 | int(buf[i + 6]), int(buf[i + 7]) << 8 | int(buf[i + 8]))
        i += 2 + (int(buf[i + 2]) << 8 | int(buf[i + 3]))
    if size is not None:
        raise ImageDecodeError('JPEG data is truncated before its first scan')
    raise ImageDecodeError('JPEG data is truncated before its frame header')


def decode_compressed(fmt: str, data: bytes | memoryview | np.ndarray,
                      max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, str]:
    """Decode ``sensor_msgs/CompressedImage`` JPEG or PNG bytes, refusing oversized images.

    The image size is read from the JPEG frame header or PNG IHDR before decompressing, so a
    small message cannot make the decoder allocate gigabytes. ``fmt`` is the message's format
    string ('jpeg', 'rgb8; jpeg compressed bgr8', ...); the container is recognised from the
    bytes. Returns ``(array, encoding)``: JPEG gives rgb8 or mono8, PNG mono8, mono16, bgr8 or
    bgra8 (16-bit colour PNG is scaled to 8 bits).
    """
    if not isinstance(fmt, str):
        raise ImageDecodeError(f'compressed image format must be a string, got {fmt!r}')
    if 'compresseddepth' in fmt.lower():
        raise ImageDecodeError(f'compressedDepth images are not supported (format {fmt!r})')
    buf = _byte_view(data)
    head = buf[:8].tobytes()
    if head.startswith(_PNG_SIGNATURE):
        kind = 'PNG'
        height, width = _png_size(buf)
    elif head.startswith(_JPEG_SOI):
        kind = 'JPEG'
        height, width = _jpeg_size(buf)
    else:
        raise ImageDecodeError(
            f'compressed data (format {fmt!r}) is neither JPEG nor PNG: starts with {head.hex()}')
    _check_pixels(height, width, max_pixels)
    if height * width > MAX_PIXELS_PER_BYTE * buf.size:
        raise ImageDecodeError(
            f'{kind} data of {buf.size} bytes claims {width}x{height} pixels, more than '
            f'{MAX_PIXELS_PER_BYTE} per byte: a decompression bomb, not a camera image')
    if kind == 'JPEG':
        return _decode_jpeg(buf, height, width)
    try:
        array = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error as err:
        raise ImageDecodeError(f'corrupt {kind} data: {err}') from err
    if array is None:
        raise ImageDecodeError(f'corrupt or truncated {kind} data')
    if array.shape[:2] != (height, width):
        raise ImageDecodeError(
            f'corrupt {kind} data: header says {width}x{height}, decoded '
            f'{array.shape[1]}x{array.shape[0]}')
    if array.ndim == 2:
        return array, 'mono16' if array.dtype == _U16 else 'mono8'
    if array.dtype == _U16:
        array = (array >> 8).astype(_U8)
    return array, 'bgra8' if array.shape[2] == 4 else 'bgr8'


def _decode_jpeg(buf: np.ndarray, height: int, width: int) -> tuple[np.ndarray, str]:
    """Decode JPEG strictly: corrupt scan data is an error, not a picture of noise.

    OpenCV's decoder only warns on stderr about corrupt entropy-coded data and returns what it
    made of it; Pillow's (the same libjpeg-turbo, the same pixels) raises.
    """
    try:
        with Image.open(io.BytesIO(buf.tobytes()), formats=['JPEG']) as image:
            image.load()
            mode, size = image.mode, image.size
            array = np.asarray(image if mode in ('L', 'RGB') else image.convert('RGB'))
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise ImageDecodeError(f'corrupt JPEG data: {err}') from None
    if size != (width, height):
        raise ImageDecodeError(f'corrupt JPEG data: header says {width}x{height}, decoded '
                               f'{size[0]}x{size[1]}')
    return array, 'mono8' if mode == 'L' else 'rgb8'


def _check_array(array: np.ndarray, encoding: str) -> _Layout:
    layout = _layout(encoding)
    expected = (2,) if layout.channels == 1 else (3,)
    if array.ndim not in expected or (layout.channels > 1 and array.shape[2] != layout.channels):
        want = 'HxW' if layout.channels == 1 else f'HxWx{layout.channels}'
        raise ImageDecodeError(f'{encoding} needs a {want} array, got shape {array.shape}')
    if array.dtype != layout.dtype:
        raise ImageDecodeError(f'{encoding} needs dtype {layout.dtype}, got {array.dtype}')
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageDecodeError(f'image has zero size ({array.shape[1]}x{array.shape[0]})')
    return layout


def encode_image(array: np.ndarray, encoding: str) -> dict:
    """Give the ``sensor_msgs/Image`` fields (little-endian, unpadded) for an array."""
    layout = _check_array(array, encoding)
    height, width = array.shape[:2]
    data = np.ascontiguousarray(array, dtype=layout.dtype.newbyteorder('<')).tobytes()
    return {
        'encoding': encoding,
        'height': height,
        'width': width,
        'step': width * layout.channels * layout.dtype.itemsize,
        'is_bigendian': False,
        'data': data,
    }


_TO_BGR = {'rgb8': cv2.COLOR_RGB2BGR, 'rgba8': cv2.COLOR_RGBA2BGRA}


def encode_compressed(array: np.ndarray, encoding: str, fmt: str = 'jpeg',
                      quality: int = 90) -> tuple[str, bytes]:
    """Compress a canonical-encoding array as image_transport's compressed plugin does.

    Returns ``(format, bytes)`` with a format string such as 'rgb8; jpeg compressed bgr8'.
    JPEG drops alpha and cannot hold mono16; ``quality`` (1-100) applies to JPEG only.
    """
    if encoding not in CANONICAL_ENCODINGS:
        raise ImageDecodeError(
            f'cannot compress encoding {encoding!r} (use one of {", ".join(CANONICAL_ENCODINGS)})')
    _check_array(array, encoding)
    if fmt not in ('jpeg', 'png'):
        raise ImageDecodeError(f'unsupported compression format {fmt!r} (use jpeg or png)')
    if not 1 <= quality <= 100:
        raise ImageDecodeError(f'JPEG quality must be in 1..100, got {quality}')
    image = cv2.cvtColor(array, _TO_BGR[encoding]) if encoding in _TO_BGR else array
    if fmt == 'jpeg':
        if encoding == 'mono16':
            raise ImageDecodeError('JPEG cannot hold mono16 images; use png')
        if image.ndim == 3 and image.shape[2] == 4:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
        params = [cv2.IMWRITE_JPEG_QUALITY, quality]
    else:
        params = [cv2.IMWRITE_PNG_COMPRESSION, 1]
    target = {1: encoding, 3: 'bgr8', 4: 'bgra8'}[1 if image.ndim == 2 else image.shape[2]]
    ok, encoded = cv2.imencode('.jpg' if fmt == 'jpeg' else '.png', image, params)
    if not ok:
        raise ImageDecodeError(f'OpenCV could not encode a {encoding} image as {fmt}')
    return f'{encoding}; {fmt} compressed {target}', encoded.tobytes()
