"""BoQModel behaviour: shapes, norms, determinism, batching, eval-only, identity."""
import hashlib
import subprocess
import sys

import pytest
import torch

import boq_ros.model
from boq_ros.model import PRESETS, BoQModel, load_boq
from boq_ros.model.checkpoint import read_state_dict
from boq_ros.model.presets import BoQConfig, get_preset


@pytest.fixture(scope='module')
def resnet(resnet_checkpoint):
    return load_boq(resnet_checkpoint)


@pytest.fixture(scope='module')
def dinov2(dinov2_checkpoint):
    return load_boq(dinov2_checkpoint)


def batch(b, h, w, seed=0):
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_cli_parser_and_presets_do_not_import_torch():
    """`boq-ros --help` must not pay seconds for torch; `from boq_ros.model import` still works."""
    code = ('import sys; import boq_ros.cli as c; c.build_parser(); '
            'from boq_ros.model import PRESETS, get_preset; '
            'assert "torch" not in sys.modules, "torch imported"; '
            'from boq_ros.model import load_boq, BoQModel, CheckpointError; '
            'assert load_boq.__name__ == "load_boq" and "torch" in sys.modules')
    subprocess.run([sys.executable, '-c', code], check=True, timeout=60)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        boq_ros.model.nope  # noqa: B018


def test_presets_describe_the_released_models():
    r, d = get_preset('resnet50-16384'), get_preset('dinov2-12288')
    assert (r.backbone, r.proj_dim, r.num_heads, r.ff_dim, r.descriptor_dim) == (
        'resnet50', 512, 8, 2048, 16384)
    assert (d.backbone, d.proj_dim, d.num_heads, d.ff_dim, d.descriptor_dim) == (
        'dinov2', 384, 6, 1536, 12288)
    assert all((c.num_queries, c.num_blocks, c.out_rows) == (64, 2, 32) for c in PRESETS.values())
    with pytest.raises(ValueError, match="unknown preset 'resnet18'"):
        get_preset('resnet18')
    with pytest.raises(ValueError, match='not divisible by num_heads'):
        BoQConfig('x', 'resnet50', 1024, 16, proj_dim=100, num_heads=8)


def test_configurable_aggregator_sizes():
    config = BoQConfig('small', 'resnet50', 1024, 16, proj_dim=128, num_queries=8, num_blocks=1,
                       num_heads=2, ff_dim=256, out_rows=4)
    model = BoQModel(config)
    with torch.inference_mode():
        desc, attns = model(batch(2, 64, 96))
    assert desc.shape == (2, 128 * 4) and len(attns) == 1 and attns[0].shape == (2, 8, 4 * 6)
    assert torch.allclose(desc.norm(dim=1), torch.ones(2))


@pytest.mark.parametrize('shape', [(2, 128, 160), (1, 100, 75)])
def test_resnet_outputs(resnet, shape):
    with torch.inference_mode():
        desc, attns = resnet(batch(*shape))
        again, _ = resnet(batch(*shape))
    b, h, w = shape
    grid = -(-h // 16) * -(-w // 16)
    assert desc.shape == (b, 16384) and desc.dtype == torch.float32
    assert torch.allclose(desc.norm(dim=1), torch.ones(b), atol=1e-6)
    assert [a.shape for a in attns] == [(b, 64, grid)] * 2
    assert torch.allclose(attns[0].sum(-1), torch.ones(b, 64), atol=1e-5)
    assert torch.equal(desc, again)


def test_batch_equals_single_calls_and_describe(resnet):
    x = batch(3, 96, 128, seed=3)
    with torch.inference_mode():
        together, attns = resnet(x)
        singles = torch.cat([resnet(x[i:i + 1])[0] for i in range(3)])
        described = resnet.describe(x)
    assert float((together - singles).abs().max()) < 1e-6
    assert float((together - described).abs().max()) < 1e-6


def test_dinov2_outputs_and_size_check(dinov2):
    x = batch(2, 42, 56)
    with torch.inference_mode():
        desc, attns = dinov2(x)
        single = dinov2(x[1:])[0]
    assert desc.shape == (2, 12288)
    assert torch.allclose(desc.norm(dim=1), torch.ones(2), atol=1e-6)
    assert [a.shape for a in attns] == [(2, 64, 3 * 4)] * 2
    assert float((desc[1:] - single).abs().max()) < 1e-6
    with pytest.raises(ValueError, match='multiples of 14, got 40x56'):
        dinov2(batch(1, 40, 56))


def test_model_is_eval_only_and_frozen(resnet):
    assert not resnet.training
    assert not any(m.training for m in resnet.modules())
    with pytest.raises(RuntimeError, match='inference-only'):
        resnet.train()
    with pytest.raises(RuntimeError, match='inference-only'):
        resnet.backbone.train(True)
    assert not any(m.training for m in resnet.modules())
    resnet.eval()
    resnet.train(False)
    assert not any(p.requires_grad for p in resnet.parameters())


def test_identity_of_the_weights(resnet, resnet_checkpoint):
    assert resnet.config is get_preset('resnet50-16384')
    assert resnet.checksum == hashlib.sha256(resnet_checkpoint.read_bytes()).hexdigest()
    assert resnet.model_id == f'resnet50-16384@{resnet.checksum[:8]}'
    in_memory = load_boq(read_state_dict(resnet_checkpoint))
    assert in_memory.checksum == '' and in_memory.model_id == 'resnet50-16384@unsaved'


def test_state_dict_round_trip_is_exact(resnet, resnet_checkpoint):
    saved = read_state_dict(resnet_checkpoint)
    ours = resnet.state_dict()
    assert list(ours) == list(saved)
    assert all(torch.equal(ours[k], saved[k]) for k in saved)
