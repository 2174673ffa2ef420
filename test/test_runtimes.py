"""Inference runtimes: each reproduces the torch fp32 descriptors, `auto` picks and falls back.

Exports go to a cache directory of this module (one ResNet-50 file for every shape, one DINOv2
file per shape), so the exporter runs a few times for the whole file.
"""
from pathlib import Path
import warnings

import numpy as np
import pytest
import torch

from boq_ros import runtimes
from boq_ros.extractor import Extractor
from boq_ros.model import load_boq
from boq_ros.runtimes import export
from boq_ros.runtimes.openvino import cpu_capabilities
from boq_ros.settings import ModelSettings, SettingError

CPU = torch.device('cpu')
SHAPE = (64, 96)
HAS_BF16 = 'BF16' in cpu_capabilities()


@pytest.fixture(scope='module')
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp('runtimes')


@pytest.fixture(scope='module')
def resnet(resnet_checkpoint: Path):
    return load_boq(resnet_checkpoint)


def _extractor(checkpoint: Path, cache: Path, runtime: str, precision: str = 'fp32',
               **kwargs) -> Extractor:
    return Extractor(load_boq(checkpoint), device='cpu', runtime=runtime, precision=precision,
                     cache_dir=cache, **kwargs)


def _batch(n: int, shape: tuple[int, int] = SHAPE, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, *shape, generator=torch.Generator().manual_seed(seed))


def test_candidates_follow_the_auto_order_and_skip_what_cannot_run():
    assert runtimes.candidates('auto', CPU, 'fp32') == (['openvino', 'onnxruntime', 'torch'], {})
    names, skipped = runtimes.candidates('auto', CPU, 'bf16')
    assert names == ['openvino', 'torch']
    assert 'fp32 only' in skipped['onnxruntime']
    assert runtimes.candidates('torch', CPU, 'bf16') == (['torch'], {})


@pytest.mark.parametrize(('runtime', 'precision', 'message'), [
    ('tensorrt', 'fp16', 'tensorrt runs on cuda, not cpu'),
    ('compile', 'fp32', 'compile runs on cuda, not cpu'),
    ('onnxruntime', 'bf16', 'onnxruntime runs fp32 only'),
])
def test_an_explicit_runtime_that_cannot_run_says_why(resnet_checkpoint, cache, runtime,
                                                      precision, message):
    with pytest.raises(runtimes.RuntimeUnavailable, match=message):
        _extractor(resnet_checkpoint, cache, runtime, precision)


def test_missing_gpu_packages_name_the_install_line():
    reason = runtimes.RUNTIMES['tensorrt'].unavailable(torch.device('cuda'), 'fp16')
    assert 'tensorrt is not installed' in reason and 'pip install torch-tensorrt' in reason


def test_unknown_runtime_is_refused(resnet_checkpoint, cache):
    with pytest.raises(ValueError, match="unknown runtime 'tvm'"):
        _extractor(resnet_checkpoint, cache, 'tvm')
    with pytest.raises(SettingError, match='runtime'):
        ModelSettings(runtime='tvm')


@pytest.mark.parametrize('runtime', ['openvino', 'onnxruntime'])
def test_fp32_runtimes_reproduce_torch(resnet_checkpoint, cache, runtime):
    torch_path = _extractor(resnet_checkpoint, cache, 'torch')
    other = _extractor(resnet_checkpoint, cache, runtime, batch_size=4)
    x = _batch(5)
    reference = torch_path.describe_tensor(x).numpy()
    got = other.describe_tensor(x).numpy()
    assert np.abs(got - reference).max() <= runtimes.FP32_MAX_ABS
    # Dynamic batch: any batch size gives the same numbers, sample by sample.
    single = np.concatenate([other.describe_tensor(x[i:i + 1]).numpy() for i in range(5)])
    assert np.abs(single - got).max() <= 1e-6
    status = other.runtime_status()
    assert list(status) == ['64x96'] and status['64x96'].startswith(f'{runtime} fp32, max abs')


def test_one_resnet_file_serves_every_shape(resnet_checkpoint, cache, resnet):
    extractor = _extractor(resnet_checkpoint, cache, 'openvino')
    for shape in (SHAPE, (96, 128), (80, 80)):
        reference = _extractor(resnet_checkpoint, cache, 'torch').describe_tensor(_batch(2, shape))
        got = extractor.describe_tensor(_batch(2, shape))
        assert torch.allclose(got, reference, atol=runtimes.FP32_MAX_ABS, rtol=0)
    files = sorted(p.name for p in cache.rglob('*.onnx'))
    assert export.onnx_path(resnet, SHAPE, cache).name in files
    assert not [f for f in files if f.startswith('resnet50') and 'any' not in f]


@pytest.mark.skipif(not HAS_BF16, reason='this CPU has no bf16 units (OpenVINO runs fp32)')
def test_openvino_bf16_passes_the_cosine_rule(resnet_checkpoint, cache):
    extractor = _extractor(resnet_checkpoint, cache, 'openvino', 'bf16')
    reference = _extractor(resnet_checkpoint, cache, 'torch').describe_tensor(_batch(3))
    got = extractor.describe_tensor(_batch(3))
    cosine = torch.nn.functional.cosine_similarity(got, reference).min()
    assert cosine >= runtimes.REDUCED_MIN_COSINE
    assert (got - reference).abs().max() > 1e-6  # really bf16, not fp32 in disguise
    assert extractor.runtime_status()['64x96'].startswith('openvino bf16')


def test_bf16_without_cpu_support_runs_and_reports_fp32(resnet_checkpoint, cache, monkeypatch):
    monkeypatch.setattr('boq_ros.runtimes.openvino.cpu_capabilities',
                        lambda: frozenset({'FP32', 'INT8'}))
    extractor = _extractor(resnet_checkpoint, cache, 'openvino', 'bf16')
    reference = _extractor(resnet_checkpoint, cache, 'torch').describe_tensor(_batch(2))
    assert (extractor.describe_tensor(_batch(2)) - reference).abs().max() <= 1e-6
    assert extractor.runtime_status()['64x96'].startswith('openvino fp32')


def test_dinov2_exports_per_shape_and_reproduces_torch(dinov2_checkpoint, cache):
    torch_path = _extractor(dinov2_checkpoint, cache, 'torch')
    extractor = _extractor(dinov2_checkpoint, cache, 'onnxruntime')
    x = _batch(2, (56, 84))
    assert (extractor.describe_tensor(x) - torch_path.describe_tensor(x)).abs().max() <= 1e-4
    assert list(cache.rglob('dinov2-12288-56x84-*.onnx'))


def test_the_cached_file_is_reused_and_a_damaged_one_exported_again(
        resnet_checkpoint, cache, resnet, monkeypatch):
    path = export.export_onnx(resnet, SHAPE, cache)
    calls = []
    real = torch.onnx.export
    monkeypatch.setattr(torch.onnx, 'export', lambda *a, **k: calls.append(1) or real(*a, **k))
    _extractor(resnet_checkpoint, cache, 'onnxruntime').describe_tensor(_batch(1))
    assert calls == []  # served from the cache
    path.write_bytes(b'not an onnx file')
    got = _extractor(resnet_checkpoint, cache, 'onnxruntime').describe_tensor(_batch(2))
    assert calls == [1]
    reference = _extractor(resnet_checkpoint, cache, 'torch').describe_tensor(_batch(2))
    assert (got - reference).abs().max() <= runtimes.FP32_MAX_ABS


def test_other_weights_get_their_own_file(resnet_checkpoint, tmp_path, cache, resnet):
    from boq_ros.model.checkpoint import write_random_checkpoint

    other = load_boq(write_random_checkpoint(tmp_path / 'other.pth', 'resnet50-16384', seed=1))
    assert export.onnx_path(other, SHAPE, cache) != export.onnx_path(resnet, SHAPE, cache)
    in_memory = load_boq(dict(resnet.state_dict()))  # no file: keyed by the tensors
    assert export.onnx_path(in_memory, SHAPE, cache).parent.name == (
        runtimes.base.weights_key(in_memory)[:16])


def test_auto_skips_a_runtime_that_fails_the_check(resnet_checkpoint, cache, monkeypatch):
    def wrong(self, shape):
        return lambda batch: torch.zeros(batch.shape[0], 16384)

    monkeypatch.setattr(runtimes.RUNTIMES['openvino'], 'runner', wrong)
    auto = _extractor(resnet_checkpoint, cache, 'auto')
    with pytest.warns(UserWarning, match='runtime openvino not used for 64x96: .*max abs'):
        got = auto.describe_tensor(_batch(2))
    assert auto.runtime_status()['64x96'].startswith('onnxruntime fp32')
    reference = _extractor(resnet_checkpoint, cache, 'torch').describe_tensor(_batch(2))
    assert (got - reference).abs().max() <= runtimes.FP32_MAX_ABS
    explicit = _extractor(resnet_checkpoint, cache, 'openvino')
    with pytest.raises(runtimes.FidelityError, match='does not reproduce the torch fp32'):
        explicit.describe_tensor(_batch(2))


def test_auto_ends_with_torch_when_nothing_else_passes(resnet_checkpoint, cache, monkeypatch):
    def broken(self, shape):
        return lambda batch: torch.full((batch.shape[0], 16384), float('nan'))

    for name in ('openvino', 'onnxruntime'):
        monkeypatch.setattr(runtimes.RUNTIMES[name], 'runner', broken)
    auto = _extractor(resnet_checkpoint, cache, 'auto')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        auto.describe_tensor(_batch(1))
    assert len(caught) == 2
    assert auto.runtime_status() == {'64x96': 'torch fp32'}


def test_extract_from_camera_images_and_settings(resnet_checkpoint, cache, monkeypatch):
    monkeypatch.setenv('XDG_CACHE_HOME', str(cache / 'xdg'))
    settings = ModelSettings(checkpoint=str(resnet_checkpoint), device='cpu', input_size=64)
    extractor = settings.extractor(settings.load(), batch_size=2)
    assert extractor.runtime == 'auto'
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (120, 160, 3), dtype=np.uint8) for _ in range(3)]
    got = extractor.extract(images, 'bgr8')
    reference = _extractor(resnet_checkpoint, cache, 'torch',
                           preprocess=extractor.preprocess_config).extract(images, 'bgr8')
    assert np.abs(got - reference).max() <= runtimes.FP32_MAX_ABS
    assert next(iter(extractor.runtime_status().values())).startswith('openvino fp32')
    assert list((cache / 'xdg' / 'boq_ros' / 'runtimes').rglob('*.onnx'))


def test_an_unwritable_cache_falls_back_under_auto_and_raises_when_explicit(
        resnet_checkpoint, tmp_path):
    blocker = tmp_path / 'a_file'
    blocker.write_text('not a directory')
    auto = _extractor(resnet_checkpoint, blocker / 'cache', 'auto')
    with pytest.warns(UserWarning, match='cannot write the ONNX export'):
        auto.describe_tensor(_batch(1))
    assert auto.runtime_status() == {'64x96': 'torch fp32'}
    with pytest.raises(runtimes.RuntimeUnavailable, match='Not a directory'):
        _extractor(resnet_checkpoint, blocker / 'cache', 'openvino').describe_tensor(_batch(1))


def test_the_resnet_file_takes_the_smallest_inputs(resnet_checkpoint, cache):
    extractor = _extractor(resnet_checkpoint, cache, 'onnxruntime')
    torch_path = _extractor(resnet_checkpoint, cache, 'torch')
    for shape in ((16, 16), (16, 21), (300, 17)):
        x = _batch(2, shape)
        assert (extractor.describe_tensor(x) - torch_path.describe_tensor(x)).abs().max() <= 1e-4


def test_bench_model_prints_the_table(tmp_path):
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / 'benchmarks' / 'bench_model.py'
    result = subprocess.run(
        [sys.executable, str(script), '--presets', 'resnet50-16384', '--sizes', '32x48',
         '--batches', '2', '--iters', '1', '--runtimes', 'torch', 'onnxruntime', 'tensorrt',
         '--precisions', 'fp32'], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line.split('|')[1:-1] for line in result.stdout.splitlines()
            if line.startswith('| resnet50')]
    assert [(r[3].strip(), r[4].strip()) for r in rows] == [
        ('eager', 'fp32'), ('torch', 'fp32'), ('onnxruntime', 'fp32')]
    assert all(float(r[9]) <= runtimes.FP32_MAX_ABS for r in rows)  # max abs to eager
    assert 'skipped tensorrt fp32: tensorrt runs on cuda, not cpu' in result.stdout
