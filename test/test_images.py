import cv2
import numpy as np
import pytest

from boq_ros.images import (
    ImageDecodeError,
    decode_compressed,
    decode_depth,
    decode_image,
    encode_compressed,
    encode_image,
)


def smooth_rgb(height=48, width=64, seed=0):
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    blurred = cv2.GaussianBlur(noise, (0, 0), 4)
    return cv2.normalize(blurred, None, 0, 255, cv2.NORM_MINMAX)


@pytest.mark.parametrize('encoding, canonical, shape, dtype', [
    ('rgb8', 'rgb8', (5, 7, 3), np.uint8),
    ('bgr8', 'bgr8', (5, 7, 3), np.uint8),
    ('rgba8', 'rgba8', (5, 7, 4), np.uint8),
    ('bgra8', 'bgra8', (5, 7, 4), np.uint8),
    ('mono8', 'mono8', (5, 7), np.uint8),
    ('mono16', 'mono16', (5, 7), np.uint16),
    ('8UC1', 'mono8', (5, 7), np.uint8),
    ('8UC3', 'bgr8', (5, 7, 3), np.uint8),
    ('8UC4', 'bgra8', (5, 7, 4), np.uint8),
    ('16UC1', 'mono16', (5, 7), np.uint16),
])
def test_plain_encodings_round_trip_without_copy(encoding, canonical, shape, dtype):
    array = np.random.default_rng(1).integers(0, np.iinfo(dtype).max, shape, dtype=dtype)
    fields = encode_image(array, encoding)
    assert fields['step'] == shape[1] * (shape[2] if len(shape) == 3 else 1) * array.itemsize
    decoded, got = decode_image(**fields)
    assert got == canonical
    np.testing.assert_array_equal(decoded, array)
    assert np.shares_memory(decoded, np.frombuffer(fields['data'], np.uint8))


def test_row_padding_is_skipped():
    array = np.arange(4 * 6, dtype=np.uint8).reshape(4, 6)
    padded = np.zeros((4, 10), np.uint8)
    padded[:, :6] = array
    decoded, _ = decode_image('mono8', 4, 6, 10, padded.tobytes())
    np.testing.assert_array_equal(decoded, array)
    with pytest.raises(ImageDecodeError, match='data has 45 bytes, not step 10 x height 4 = 40'):
        decode_image('mono8', 4, 6, 10, padded.tobytes() + b'extra')  # longer is refused too


def test_mono16_big_endian_is_byteswapped():
    array = np.array([[1, 256, 65535], [4660, 0, 43981]], dtype=np.uint16)
    data = array.astype('>u2').tobytes()
    decoded, encoding = decode_image('mono16', 2, 3, 6, data, is_bigendian=True)
    assert encoding == 'mono16' and decoded.dtype == np.uint16
    np.testing.assert_array_equal(decoded, array)


def test_16bit_colour_is_scaled_to_8bit():
    array = np.full((2, 2, 3), 0x1234, np.uint16)
    array[..., 2] = 0xFF00
    decoded, encoding = decode_image(**encode_image(array, 'rgb16'))
    assert encoding == 'rgb8'
    np.testing.assert_array_equal(decoded[0, 0], [0x12, 0x12, 0xFF])


@pytest.mark.parametrize('pattern', ['rggb', 'bggr', 'gbrg', 'grbg'])
@pytest.mark.parametrize('bits', [8, 16])
def test_bayer_patterns_demosaic_to_rgb(pattern, bits):
    rgb = smooth_rgb()
    channel = {'r': 0, 'g': 1, 'b': 2}
    mosaic = np.zeros(rgb.shape[:2], np.uint16 if bits == 16 else np.uint8)
    for k, (dy, dx) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        values = rgb[dy::2, dx::2, channel[pattern[k]]].astype(mosaic.dtype)
        mosaic[dy::2, dx::2] = values * 257 if bits == 16 else values
    decoded, encoding = decode_image(**encode_image(mosaic, f'bayer_{pattern}{bits}'))
    assert encoding == 'rgb8' and decoded.shape == rgb.shape
    error = np.abs(decoded[4:-4, 4:-4].astype(int) - rgb[4:-4, 4:-4]).mean()
    assert error < 4, f'{pattern}: mean error {error}'


@pytest.mark.parametrize('encoding, code', [
    ('yuv422', cv2.COLOR_RGB2YUV_UYVY),
    ('yuv422_yuy2', cv2.COLOR_RGB2YUV_YUY2),
])
def test_packed_yuv_decodes_to_rgb(encoding, code):
    rgb = smooth_rgb()
    packed = cv2.cvtColor(rgb, code)
    decoded, got = decode_image(**encode_image(packed, encoding))
    assert got == 'rgb8'
    assert np.abs(decoded.astype(int) - rgb).mean() < 6


@pytest.mark.parametrize('args, message', [
    (('rgb8', 0, 4, 12, b''), 'zero size'),
    (('rgb8', 4, 4, 11, bytes(48)), 'step 11 is smaller than width 4 x 3'),
    (('mono16', 4, 4, 8, bytes(31)), 'data has 31 bytes, not step 8 x height 4 = 32'),
    (('rgb9', 4, 4, 12, bytes(48)), "unsupported image encoding 'rgb9'"),
    (('yuv422', 2, 3, 6, bytes(12)), 'even width'),
])
def test_decode_image_refusals(args, message):
    with pytest.raises(ImageDecodeError, match=message):
        decode_image(*args)


@pytest.mark.parametrize('args, message', [
    (('rgb8', 4, 4, 12, [0] * 48), 'must be bytes-like .*got list'),
    (('rgb8', 4, 4, 12, None), 'must be bytes-like .*got NoneType'),
    (('mono8', 4, 4, 4, 'a' * 16), 'must be bytes-like .*got str'),
    (('mono8', 4, 4, 4, np.array([object()] * 16)), 'must hold bytes.*object'),
    (('rgb8', 4.0, 4, 12, bytes(48)), 'height must be an integer, got 4.0'),
    (('rgb8', 4, 4, '12', bytes(48)), "step must be an integer, got '12'"),
    (('rgb8', True, 4, 12, bytes(48)), 'height must be an integer, got True'),
    ((['rgb8'], 4, 4, 12, bytes(48)), r"unsupported image encoding \['rgb8'\]"),
    # numpy uint32 fields would wrap around: 65536 x 65537 = 65536 (mod 2**32) pixels.
    (('mono8', np.uint32(65536), np.uint32(65537), np.uint32(65537), bytes(65536)),
     'exceeds max_pixels'),
])
def test_decode_image_refuses_malformed_fields(args, message):
    with pytest.raises(ImageDecodeError, match=message):
        decode_image(*args)


def test_decode_image_accepts_any_buffer_layout():
    image = np.arange(4 * 6, dtype=np.uint8).reshape(4, 6)
    strided = memoryview(np.repeat(image.reshape(-1), 2))[::2]  # not C-contiguous
    assert np.array_equal(decode_image('mono8', 4, 6, 6, strided)[0], image)
    sizes = np.uint16(4), np.int64(6), np.uint32(6)  # numpy scalars, as some readers give
    assert np.array_equal(decode_image('mono8', *sizes, image.tobytes())[0], image)


def test_decode_image_refuses_too_many_pixels_before_touching_data():
    with pytest.raises(ImageDecodeError, match='exceeds max_pixels'):
        decode_image('mono8', 20000, 20000, 20000, b'')
    with pytest.raises(ImageDecodeError, match='exceeds max_pixels=100'):
        decode_image('mono8', 10, 11, 11, bytes(110), max_pixels=100)


@pytest.mark.parametrize('encoding, fmt, stored, expect', [
    ('rgb8', 'jpeg', 'bgr8', 'rgb8'),  # the JPEG decoder gives RGB
    ('bgr8', 'jpeg', 'bgr8', 'rgb8'),
    ('mono8', 'jpeg', 'mono8', 'mono8'),
    ('rgb8', 'png', 'bgr8', 'bgr8'),
    ('rgba8', 'png', 'bgra8', 'bgra8'),
    ('mono8', 'png', 'mono8', 'mono8'),
    ('mono16', 'png', 'mono16', 'mono16'),
])
def test_compressed_round_trip(encoding, fmt, stored, expect):
    rgb = smooth_rgb()
    array = {
        'rgb8': rgb,
        'bgr8': rgb[..., ::-1].copy(),
        'rgba8': np.dstack([rgb, np.full(rgb.shape[:2], 200, np.uint8)]),
        'mono8': rgb[..., 0].copy(),
        'mono16': rgb[..., 0].astype(np.uint16) * 250,
    }[encoding]
    fmt_string, data = encode_compressed(array, encoding, fmt)
    assert fmt_string == f'{encoding}; {fmt} compressed {stored}'
    decoded, got = decode_compressed(fmt_string, data)
    assert got == expect
    if expect == 'rgb8':
        reference = rgb
    elif expect == 'bgr8':
        reference = rgb[..., ::-1]
    elif expect == 'bgra8':
        reference = array[..., [2, 1, 0, 3]]
    else:
        reference = array
    if fmt == 'png':
        np.testing.assert_array_equal(decoded, reference)
    else:
        assert np.abs(decoded.astype(int) - reference).mean() < 6


def test_compressed_accepts_memoryview_and_array():
    _, data = encode_compressed(smooth_rgb(), 'rgb8')
    for form in (memoryview(data), np.frombuffer(data, np.uint8)):
        assert decode_compressed('jpeg', form)[0].shape == (48, 64, 3)


def _png_header_only(width, height):
    import struct
    import zlib
    ihdr = struct.pack('>IIBBBBB', width, height, 8, 0, 0, 0, 0)
    chunk = struct.pack('>I', 13) + b'IHDR' + ihdr
    return b'\x89PNG\r\n\x1a\n' + chunk + struct.pack('>I', zlib.crc32(chunk[4:]))


def _jpeg_with_size(width, height):
    _, data = encode_compressed(np.zeros((8, 8), np.uint8), 'mono8')
    buf = bytearray(data)
    sof = buf.index(b'\xff\xc0')
    buf[sof + 5:sof + 9] = height.to_bytes(2, 'big') + width.to_bytes(2, 'big')
    return bytes(buf)


def test_decompression_bombs_are_refused_from_the_header():
    with pytest.raises(ImageDecodeError, match='20000x20000 = 400000000 pixels exceeds'):
        decode_compressed('png', _png_header_only(20000, 20000))
    with pytest.raises(ImageDecodeError, match='20000x20000'):
        decode_compressed('jpeg', _jpeg_with_size(20000, 20000))
    with pytest.raises(ImageDecodeError, match='exceeds max_pixels=63'):
        decode_compressed('jpeg', encode_compressed(smooth_rgb(8, 8), 'rgb8')[1], max_pixels=63)


def test_corrupt_compressed_data_is_refused():
    _, jpeg = encode_compressed(smooth_rgb(), 'rgb8')
    _, png = encode_compressed(smooth_rgb(), 'rgb8', 'png')
    with pytest.raises(ImageDecodeError, match='JPEG data is truncated'):
        decode_compressed('jpeg', jpeg[:len(jpeg) // 2])
    with pytest.raises(ImageDecodeError, match='truncated before its frame header'):
        decode_compressed('jpeg', jpeg[:6])
    with pytest.raises(ImageDecodeError, match='corrupt or truncated PNG'):
        decode_compressed('png', png[:len(png) // 2])
    with pytest.raises(ImageDecodeError, match='starts with 6761726261676521'):
        decode_compressed('jpeg', b'garbage!' * 10)
    with pytest.raises(ImageDecodeError, match='neither JPEG nor PNG'):
        decode_compressed('jpeg', b'')
    with pytest.raises(ImageDecodeError, match='compressedDepth images are not supported'):
        decode_compressed('16UC1; compressedDepth png', png)
    with pytest.raises(ImageDecodeError, match='format must be a string, got None'):
        decode_compressed(None, png)
    with pytest.raises(ImageDecodeError, match='must be bytes-like .*got list'):
        decode_compressed('png', list(png))


def test_encode_refusals():
    with pytest.raises(ImageDecodeError, match='rgb8 needs a HxWx3 array'):
        encode_image(np.zeros((4, 4), np.uint8), 'rgb8')
    with pytest.raises(ImageDecodeError, match='mono16 needs dtype uint16'):
        encode_image(np.zeros((4, 4), np.uint8), 'mono16')
    with pytest.raises(ImageDecodeError, match='zero size'):
        encode_image(np.zeros((0, 4), np.uint8), 'mono8')
    with pytest.raises(ImageDecodeError, match='JPEG cannot hold mono16'):
        encode_compressed(np.zeros((4, 4), np.uint16), 'mono16', 'jpeg')
    with pytest.raises(ImageDecodeError, match="unsupported compression format 'webp'"):
        encode_compressed(np.zeros((4, 4), np.uint8), 'mono8', 'webp')
    with pytest.raises(ImageDecodeError, match='cannot compress encoding'):
        encode_compressed(np.zeros((4, 4), np.uint8), 'bayer_rggb8')


def test_compressed_bombs_trailing_bytes_and_truncation():
    import cv2

    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    jpeg = cv2.imencode('.jpg', image)[1].tobytes()
    decoded, _ = decode_compressed('jpeg', jpeg + b'camera metadata after EOI')
    assert decoded.shape == (48, 64, 3)  # bytes after the end-of-image marker are allowed
    with pytest.raises(ImageDecodeError, match='no end-of-image marker'):
        decode_compressed('jpeg', jpeg[:-2] + b'\0' * 30)
    # a small JPEG whose frame header claims 8000x8000: refused before decoding
    sof = jpeg.index(b'\xff\xc0')
    bomb = bytearray(jpeg)
    bomb[sof + 5:sof + 9] = (8000).to_bytes(2, 'big') * 2
    with pytest.raises(ImageDecodeError, match='claims 8000x8000 pixels.*decompression bomb'):
        decode_compressed('jpeg', bytes(bomb))
    flat = cv2.imencode('.png', np.zeros((1000, 1000), np.uint8))[1].tobytes()
    assert decode_compressed('png', flat)[0].shape == (1000, 1000)  # zlib's ratio is allowed


def test_corrupt_jpeg_scan_data_is_refused_not_decoded_into_noise():
    import cv2

    image = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 256, (120, 160, 3),
                                                               dtype=np.uint8), (9, 9), 3)
    jpeg = bytearray(cv2.imencode('.jpg', image)[1].tobytes())
    scan = jpeg.index(b'\xff\xda')
    rng = np.random.default_rng(1)
    for k in range(scan + 40, len(jpeg) - 10, 7):  # scramble the entropy-coded data
        jpeg[k] = int(rng.integers(0, 255))
    with pytest.raises(ImageDecodeError, match='corrupt JPEG data'):
        decode_compressed('jpeg', bytes(jpeg))


@pytest.mark.parametrize('encoding', ['16UC1', 'mono16'])
def test_depth_millimetres_become_metres_with_nan_where_invalid(encoding):
    mm = np.array([[0, 1, 1234], [65534, 65535, 500]], np.uint16)
    depth = decode_depth(encoding, 2, 3, 6, mm.tobytes())
    assert depth.dtype == np.float32 and depth.shape == (2, 3) and depth.flags.writeable
    np.testing.assert_array_equal(np.isnan(depth), [[True, False, False], [False, True, False]])
    np.testing.assert_allclose(depth[[0, 0, 1, 1], [1, 2, 0, 2]], [0.001, 1.234, 65.534, 0.5],
                               rtol=1e-7)
    swapped = decode_depth(encoding, 2, 3, 6, mm.astype('>u2').tobytes(), is_bigendian=True)
    np.testing.assert_array_equal(swapped, depth)


def test_depth_float_metres_with_nan_where_invalid():
    metres = np.array([[0.0, 1.5, np.nan], [np.inf, -2.0, 30.25]], np.float32)
    depth = decode_depth('32FC1', 2, 3, 12, metres.tobytes())
    np.testing.assert_array_equal(np.isnan(depth), [[True, False, True], [True, True, False]])
    assert depth[0, 1] == 1.5 and depth[1, 2] == 30.25 and depth.dtype == np.float32
    swapped = decode_depth('32FC1', 2, 3, 12, metres.astype('>f4').tobytes(), is_bigendian=True)
    np.testing.assert_array_equal(swapped, depth)
    from_array = decode_depth('32FC1', 2, 3, 12, metres)
    metres[0, 1] = 7.0  # the result is a copy, never a view of the message data
    assert from_array[0, 1] == 1.5


@pytest.mark.parametrize('encoding, dtype, pad', [('16UC1', '<u2', 3), ('32FC1', '<f4', 5)])
def test_depth_row_padding_is_skipped(encoding, dtype, pad):
    values = np.arange(1, 13, dtype=dtype).reshape(3, 4)
    row_bytes = 4 * values.itemsize
    padded = np.zeros((3, row_bytes + pad), np.uint8)
    padded[:, :row_bytes] = values.view(np.uint8)
    depth = decode_depth(encoding, 3, 4, row_bytes + pad, padded)
    scale = 1000.0 if encoding == '16UC1' else 1.0
    np.testing.assert_allclose(depth, values / scale, rtol=1e-6)


@pytest.mark.parametrize('args, message', [
    (('16UC1', 2, 3, 5, bytes(10)), r'step 5 is smaller than width 3 x 2 bytes per pixel '
                                    r'\(16UC1\) = 6'),
    (('32FC1', 2, 3, 8, bytes(16)), r'step 8 is smaller than width 3 x 4 bytes per pixel '
                                    r'\(32FC1\) = 12'),
    (('16UC1', 2, 3, 6, bytes(11)), 'data has 11 bytes, not step 6 x height 2 = 12'),
    (('32FC1', 2, 3, 12, bytes(25)), 'data has 25 bytes, not step 12 x height 2 = 24'),
    (('16UC1', 0, 3, 6, b''), r'zero size \(3x0\)'),
    (('rgb8', 2, 3, 9, bytes(18)), "unsupported depth encoding 'rgb8' .*16UC1, mono16, 32FC1"),
    (('8UC1', 2, 3, 3, bytes(6)), "unsupported depth encoding '8UC1'"),
    ((None, 2, 3, 6, bytes(12)), 'unsupported depth encoding None'),
    (('16UC1', 2.0, 3, 6, bytes(12)), 'height must be an integer, got 2.0'),
    (('16UC1', 2, 3, True, bytes(12)), 'step must be an integer, got True'),
    (('16UC1', 2, 3, 6, [0] * 12), 'must be bytes-like'),
])
def test_decode_depth_refusals(args, message):
    with pytest.raises(ImageDecodeError, match=message):
        decode_depth(*args)


def test_decode_depth_refuses_too_many_pixels_before_touching_data():
    with pytest.raises(ImageDecodeError, match='exceeds max_pixels=100'):
        decode_depth('16UC1', 10, 11, 22, bytes(220), max_pixels=100)
    with pytest.raises(ImageDecodeError, match='20000x20000 = 400000000 pixels exceeds'):
        decode_depth('32FC1', 20000, 20000, 80000, b'')


def test_depth_of_an_encoded_image_round_trips():
    mm = np.random.default_rng(3).integers(1, 65535, (24, 32), dtype=np.uint16)
    depth = decode_depth(**encode_image(mm, '16UC1'))
    np.testing.assert_allclose(depth, mm / 1000.0, rtol=1e-6)
