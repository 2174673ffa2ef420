"""Preprocessing: documented sizes, every encoding, and the authors' torchvision pipeline."""
import numpy as np
from PIL import Image
import pytest
import torch
from torchvision import transforms as T

from boq_ros.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PreprocessConfig,
    preprocess,
    preprocess_batch,
)


def rgb(h=48, w=64, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def authors_pipeline(image, size):
    """The authors' README transform, via PIL and torchvision (independent of our code)."""
    transform = T.Compose([
        T.ToTensor(),
        T.Resize(size, interpolation=T.InterpolationMode.BICUBIC, antialias=True),
        T.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
    ])
    return transform(Image.fromarray(image))


def test_default_sizes():
    assert PreprocessConfig.default_for('resnet50-16384') == PreprocessConfig('height', 384, 1)
    assert PreprocessConfig.default_for('resnet50-16384', 'square') == PreprocessConfig(
        'square', 384, 1)
    assert PreprocessConfig.default_for('dinov2-12288') == PreprocessConfig('height', 322, 14)
    assert PreprocessConfig.default_for('dinov2', 'square') == PreprocessConfig('square', 322, 14)
    resnet = PreprocessConfig.default_for('resnet50-16384')
    dino = PreprocessConfig.default_for('dinov2-12288')
    assert resnet.output_size(480, 640) == (384, 512)
    assert resnet.output_size(720, 1280) == (384, 683)
    assert dino.output_size(480, 640) == (322, 434)  # 429.3 -> 31 patches
    assert dino.output_size(1080, 1920) == (322, 574)
    assert dino.output_size(2000, 10) == (322, 14)  # never below one patch
    assert PreprocessConfig('square', 322, 14).output_size(480, 640) == (322, 322)


def test_config_validation_and_schema_round_trip():
    config = PreprocessConfig('height', 322, 14)
    assert PreprocessConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown resize policy 'crop'"):
        PreprocessConfig('crop', 384)
    with pytest.raises(ValueError, match='size 320 is not a multiple of 14'):
        PreprocessConfig('height', 320, 14)
    with pytest.raises(ValueError, match='size must be a positive integer'):
        PreprocessConfig('height', 0)
    with pytest.raises(ValueError, match='exactly the fields'):
        PreprocessConfig.from_dict({'policy': 'height', 'size': 384})
    with pytest.raises(ValueError, match='no preprocessing defaults'):
        PreprocessConfig.default_for('vgg16')


@pytest.mark.parametrize('policy,size', [('square', (40, 40)), ('height', (40, 53))])
def test_matches_the_authors_torchvision_pipeline(policy, size):
    image = rgb(48, 64)
    ours = preprocess(image, 'rgb8', PreprocessConfig(policy, 40))
    assert ours.shape == (3, *size) and ours.dtype == torch.float32
    assert float((ours - authors_pipeline(image, size)).abs().max()) < 1e-5


def test_upsampling_and_no_op_resize():
    image = rgb(30, 40)
    ours = preprocess(image, 'rgb8', PreprocessConfig('height', 60))
    assert float((ours - authors_pipeline(image, (60, 80))).abs().max()) < 1e-5
    same = preprocess(image, 'rgb8', PreprocessConfig('height', 30))
    expected = (torch.from_numpy(image).permute(2, 0, 1) / 255.0
                - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(
        3, 1, 1)
    assert float((same - expected).abs().max()) < 1e-6


def test_encodings_agree():
    config = PreprocessConfig('height', 32)
    image = rgb()
    reference = preprocess(image, 'rgb8', config)
    bgr = image[..., ::-1]
    alpha = np.full((*image.shape[:2], 1), 7, np.uint8)
    for array, encoding in ((bgr, 'bgr8'), (bgr, '8UC3'),
                            (np.concatenate([image, alpha], 2), 'rgba8'),
                            (np.concatenate([bgr, alpha], 2), 'bgra8'),
                            (np.concatenate([bgr, alpha], 2), '8UC4')):
        assert torch.equal(preprocess(array, encoding, config), reference), encoding


def test_mono_and_16_bit():
    config = PreprocessConfig('square', 16)
    gray = rgb()[..., 0]
    mono = preprocess(gray, 'mono8', config)
    assert torch.equal(mono, preprocess(gray[..., None], '8UC1', config))
    as_rgb = preprocess(np.repeat(gray[..., None], 3, axis=2), 'rgb8', config)
    assert float((mono - as_rgb).abs().max()) < 1e-6
    # 16-bit: scaled by 65535, so 257 * v equals the 8-bit value v.
    wide = gray.astype(np.uint16) * 257
    assert float((preprocess(wide, 'mono16', config) - mono).abs().max()) < 1e-5
    assert torch.equal(preprocess(wide, '16UC1', config),
                       preprocess(wide.astype('>u2'), 'mono16', config))
    white = preprocess(np.full((8, 8), 65535, np.uint16), 'mono16', PreprocessConfig('height', 8))
    expected = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(white[:, 0, 0], expected)


def test_bad_input_is_refused():
    config = PreprocessConfig('height', 32)
    with pytest.raises(ValueError, match="unsupported image encoding 'yuv422'"):
        preprocess(rgb(), 'yuv422', config)
    with pytest.raises(ValueError, match=r'rgb8 image must be HxWx3, got shape \(48, 64\)'):
        preprocess(rgb()[..., 0], 'rgb8', config)
    with pytest.raises(ValueError, match='mono16 image must have dtype uint16, got uint8'):
        preprocess(rgb()[..., 0], 'mono16', config)
    with pytest.raises(ValueError, match='bgra8 image must be HxWx4'):
        preprocess(rgb(), 'bgra8', config)
    with pytest.raises(ValueError, match='empty'):
        preprocess(np.zeros((0, 5, 3), np.uint8), 'rgb8', config)
    with pytest.raises(ValueError, match='numpy array'):
        preprocess([[1, 2]], 'mono8', config)
    with pytest.raises(ValueError, match='share an output size'):
        preprocess_batch([rgb(48, 64), rgb(48, 96)], 'rgb8', config)
    with pytest.raises(ValueError, match=r"unsupported image encoding \['rgb8'\]"):
        preprocess(rgb(), ['rgb8'], config)


def test_height_policy_refuses_strips_that_would_become_huge():
    config = PreprocessConfig('height', 384)
    assert config.output_size(100, 1600) == (384, 6144)  # 16:1 still accepted
    # A 4000x1 strip would be resized to 384 x 1,536,000 (a 7 GB float tensor).
    with pytest.raises(ValueError, match=r'4000x1 is too wide.*1536000x384, more than 16 times'):
        preprocess(np.zeros((1, 4000, 3), np.uint8), 'rgb8', config)
    assert PreprocessConfig('square', 32).output_size(1, 4000) == (32, 32)
    assert config.output_size(4000, 1) == (384, 1)  # tall: small, accepted


def test_batch_equals_single_images_across_shapes_and_encodings():
    config = PreprocessConfig('height', 24)
    images = [rgb(48, 64, 1), rgb(48, 64, 2)[..., ::-1], rgb(96, 128, 3), rgb(48, 64, 4)]
    encodings = ['rgb8', 'bgr8', 'rgb8', 'rgb8']
    together = preprocess_batch(images, encodings, config)
    assert together.shape == (4, 3, 24, 32)
    for i, (image, encoding) in enumerate(zip(images, encodings)):
        assert float((together[i] - preprocess(image, encoding, config)).abs().max()) < 1e-6
