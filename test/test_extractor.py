"""Extractor: order, batching, fast path vs plain model, errors, attention maps."""
import copy

import numpy as np
import pytest
import torch

from boq_ros.extractor import DescriptorError, Extractor, optimized_copy
from boq_ros.model import load_boq
from boq_ros.model.checkpoint import read_state_dict, write_random_checkpoint
from boq_ros.preprocess import PreprocessConfig, preprocess_batch

SMALL = PreprocessConfig('height', 48)


@pytest.fixture(scope='module')
def model(resnet_checkpoint):
    return load_boq(resnet_checkpoint)


@pytest.fixture(scope='module')
def fast(model):
    return Extractor(model, device='cpu', preprocess=SMALL, batch_size=2)


@pytest.fixture(scope='module')
def plain(model):
    return Extractor(model, device='cpu', preprocess=SMALL, batch_size=2, optimize=False)


def camera(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_properties(fast, model):
    assert fast.dim == 16384 and fast.device == torch.device('cpu')
    assert fast.model_id == model.model_id and fast.preset == 'resnet50-16384'
    assert fast.preprocess_config == SMALL and fast.precision == 'fp32'
    assert fast.model is model


def test_order_batching_and_mixed_sizes(fast, plain, model):
    images = [camera(48, 64, 0), camera(60, 60, 1), camera(48, 64, 2), camera(96, 128, 3),
              camera(60, 60, 4)]
    encodings = ['rgb8', 'rgb8', 'bgr8', 'rgb8', 'rgb8']
    together = fast.extract(images, encodings)
    assert together.shape == (5, 16384) and together.dtype == np.float32
    assert np.allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    with torch.inference_mode():
        for i, (image, encoding) in enumerate(zip(images, encodings)):
            reference = model(preprocess_batch([image], encoding, SMALL))[0][0].numpy()
            assert np.abs(together[i] - reference).max() < 1e-5, i
    # The fast path (folded BatchNorm, no attention weights) stays within 1e-4 of plain.
    assert np.abs(together - plain.extract(images, encodings)).max() < 1e-4
    assert fast.extract([]).shape == (0, 16384)


def test_folded_model_matches_plain_model_on_random_features(model):
    folded, channels_last = optimized_copy(model, torch.device('cpu'), 'fp32')
    assert not channels_last
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        a, b = model.backbone(x), folded.backbone(x)
    assert float((a - b).abs().max() / a.abs().max()) < 1e-5


def test_attention_maps(fast, model):
    images = [camera(48, 64, 5), camera(96, 96, 6)]
    desc, maps = fast.extract_with_attention(images)
    assert np.abs(desc - fast.extract(images)).max() < 1e-5
    assert maps[0].shape == (2, 64, 3, 4) and maps[1].shape == (2, 64, 3, 3)
    with torch.inference_mode():
        _, attns = model(preprocess_batch(images[:1], 'rgb8', SMALL))
    expected = torch.stack(attns, 1)[0].reshape(2, 64, 3, 4).numpy()
    assert np.abs(maps[0] - expected).max() < 1e-5
    assert np.allclose(maps[1].sum(axis=(2, 3)), 1.0, atol=1e-5)


def test_reduced_precision_on_cpu(model):
    images = [camera(48, 64, 7)]
    bf16 = Extractor(model, device='cpu', precision='bf16', preprocess=SMALL).extract(images)
    fp32 = Extractor(model, device='cpu', preprocess=SMALL).extract(images)
    assert bf16.dtype == np.float32 and float(bf16[0] @ fp32[0]) > 0.999


def test_non_finite_output_raises(resnet_checkpoint):
    state = read_state_dict(resnet_checkpoint)
    state['aggregator.fc.bias'][0] = float('nan')
    extractor = Extractor(load_boq(state), device='cpu', preprocess=SMALL)
    with pytest.raises(DescriptorError, match='non-finite descriptors for 1 of 1 images'):
        extractor.extract([camera(48, 64, 0)])


def test_bad_arguments(model):
    with pytest.raises(ValueError, match="unknown precision 'int8'"):
        Extractor(model, device='cpu', precision='int8')
    with pytest.raises(ValueError, match='batch_size must be a positive integer'):
        Extractor(model, device='cpu', batch_size=0)
    with pytest.raises(ValueError, match="invalid device 'gpu0'"):
        Extractor(model, device='gpu0')
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match='CUDA is not available'):
            Extractor(model, device='cuda')
    assert Extractor(model, device='auto', preprocess=SMALL).device.type == (
        'cuda' if torch.cuda.is_available() else 'cpu')
    extractor = Extractor(model, device='cpu', preprocess=SMALL)
    with pytest.raises(ValueError, match='2 images but 1 encodings'):
        extractor.extract([camera(48, 64, 0)] * 2, ['rgb8'])
    with pytest.raises(ValueError, match='mono8 image must be'):
        extractor.extract([camera(48, 64, 0)], 'mono8')


def test_dinov2_extractor(tmp_path):
    path = write_random_checkpoint(tmp_path / 'd.pth', 'dinov2-12288')
    with pytest.raises(ValueError, match='multiples of 14'):
        Extractor.from_checkpoint(path, device='cpu', preprocess=PreprocessConfig('height', 48))
    extractor = Extractor.from_checkpoint(path, device='cpu',
                                          preprocess=PreprocessConfig('height', 28, 14))
    assert extractor.preset == 'dinov2-12288' and extractor.dim == 12288
    desc, maps = extractor.extract_with_attention([camera(40, 64, 0)], 'bgr8')
    assert desc.shape == (1, 12288) and maps[0].shape == (2, 64, 2, 3)  # 28 x 42 pixels


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_cuda_fast_path_matches_cpu(model, monkeypatch):
    monkeypatch.setattr(torch.backends.cuda.matmul, 'allow_tf32', False)
    images = [camera(48, 64, i) for i in range(3)] + [camera(96, 128, 3)[..., 0]]
    encodings = ['rgb8', 'bgr8', 'rgb8', 'mono8']
    cpu = Extractor(model, device='cpu', preprocess=SMALL, optimize=False).extract(
        images, encodings)
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        gpu = Extractor(copy.deepcopy(model), device='cuda', preprocess=SMALL, batch_size=4)
        # a batch of 3 replays the CUDA graph captured for 4 (padded), then a single image
        assert np.abs(gpu.extract(images, encodings) - cpu).max() < 1e-4
        assert np.abs(gpu.extract(images[:1]) - cpu[:1]).max() < 1e-4
    bf16 = Extractor(copy.deepcopy(model), device='cuda', precision='bf16', preprocess=SMALL)
    assert (bf16.extract(images, encodings) * cpu).sum(axis=1).min() > 0.999
