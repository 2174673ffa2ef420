"""The model against an independent functional reference written from the facts file.

The reference below uses only torch.nn.functional primitives on the raw state dict (no module of
boq_ros.model): the released ResNet-50 / DINOv2 arithmetic, post-norm encoder layers, packed
multi-head attention, the query-axis fc and the DINOv2 positional-embedding resize with
scale_factor=(h + 0.1) / 37. Random weights squash differences between images in the final
descriptor, so features and attention maps are compared too, and the aggregator alone on
random feature maps.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from boq_ros.model import load_boq
from boq_ros.model.checkpoint import read_state_dict
from boq_ros.model.dinov2 import DinoViT

DESCRIPTOR_ATOL = 1e-5  # the fidelity requirement (fp32, CPU)


# ----- reference ---------------------------------------------------------------------------

def ref_mha(sd, p, q, k, v, heads):
    """Packed-projection multi-head attention; returns output and head-averaged weights."""
    wq, wk, wv = sd[p + 'in_proj_weight'].chunk(3)
    bq, bk, bv = sd[p + 'in_proj_bias'].chunk(3)
    b, lq, d = q.shape
    hd = d // heads

    def split(x, w, bias):
        return F.linear(x, w, bias).reshape(b, -1, heads, hd).transpose(1, 2)

    qh, kh, vh = split(q, wq, bq), split(k, wk, bk), split(v, wv, bv)
    weights = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(hd), dim=-1)
    out = (weights @ vh).transpose(1, 2).reshape(b, lq, d)
    return F.linear(out, sd[p + 'out_proj.weight'], sd[p + 'out_proj.bias']), weights.mean(1)


def ref_ln(sd, p, x, eps):
    return F.layer_norm(x, x.shape[-1:], sd[p + 'weight'], sd[p + 'bias'], eps)


def ref_aggregator(sd, feats, heads):
    p = 'aggregator.'
    x = F.conv2d(feats, sd[p + 'proj_c.weight'], sd[p + 'proj_c.bias'], padding=1)
    x = ref_ln(sd, p + 'norm_input.', x.flatten(2).permute(0, 2, 1), 1e-5)
    outs, attns = [], []
    n_blocks = len({k.split('.')[2] for k in sd if k.startswith(p + 'boqs.')})
    for i in range(n_blocks):
        bp = f'{p}boqs.{i}.'
        e = bp + 'encoder.'
        x = ref_ln(sd, e + 'norm1.', x + ref_mha(sd, e + 'self_attn.', x, x, x, heads)[0], 1e-5)
        ff = F.linear(F.relu(F.linear(x, sd[e + 'linear1.weight'], sd[e + 'linear1.bias'])),
                      sd[e + 'linear2.weight'], sd[e + 'linear2.bias'])
        x = ref_ln(sd, e + 'norm2.', x + ff, 1e-5)
        q = sd[bp + 'queries'].repeat(x.shape[0], 1, 1)
        q = ref_ln(sd, bp + 'norm_q.', q + ref_mha(sd, bp + 'self_attn.', q, q, q, heads)[0],
                   1e-5)
        out, attn = ref_mha(sd, bp + 'cross_attn.', q, x, x, heads)
        outs.append(ref_ln(sd, bp + 'norm_out.', out, 1e-5))
        attns.append(attn)
    out = torch.cat(outs, dim=1).permute(0, 2, 1)
    out = F.linear(out, sd[p + 'fc.weight'], sd[p + 'fc.bias']).flatten(1)
    return F.normalize(out, p=2, dim=-1), attns


def ref_bn(sd, p, x):
    return F.batch_norm(x, sd[p + 'running_mean'], sd[p + 'running_var'], sd[p + 'weight'],
                        sd[p + 'bias'], training=False, eps=1e-5)


def ref_resnet(sd, x):
    p = 'backbone.net.'
    x = F.relu(ref_bn(sd, p + '1.', F.conv2d(x, sd[p + '0.weight'], stride=2, padding=3)))
    x = F.max_pool2d(x, 3, stride=2, padding=1)
    for layer, blocks, stride in ((4, 3, 1), (5, 4, 2), (6, 6, 2)):
        for i in range(blocks):
            bp = f'{p}{layer}.{i}.'
            s = stride if i == 0 else 1
            y = F.relu(ref_bn(sd, bp + 'bn1.', F.conv2d(x, sd[bp + 'conv1.weight'])))
            y = F.relu(ref_bn(sd, bp + 'bn2.',
                              F.conv2d(y, sd[bp + 'conv2.weight'], stride=s, padding=1)))
            y = ref_bn(sd, bp + 'bn3.', F.conv2d(y, sd[bp + 'conv3.weight']))
            if i == 0:
                x = ref_bn(sd, bp + 'downsample.1.',
                           F.conv2d(x, sd[bp + 'downsample.0.weight'], stride=s))
            x = F.relu(x + y)
    return x


def ref_pos_embed(pos, h, w):
    if h == w == 37:
        return pos
    patch = pos[:, 1:].reshape(1, 37, 37, -1).permute(0, 3, 1, 2)
    patch = F.interpolate(patch, scale_factor=((h + 0.1) / 37, (w + 0.1) / 37), mode='bicubic',
                          antialias=False)
    return torch.cat([pos[:, :1], patch.permute(0, 2, 3, 1).reshape(1, h * w, -1)], dim=1)


def ref_dinov2(sd, x):
    p = 'backbone.dino.'
    b, _, height, width = x.shape
    h, w = height // 14, width // 14
    t = F.conv2d(x, sd[p + 'patch_embed.proj.weight'], sd[p + 'patch_embed.proj.bias'],
                 stride=14).flatten(2).transpose(1, 2)
    t = torch.cat([sd[p + 'cls_token'].expand(b, -1, -1), t], dim=1)
    t = t + ref_pos_embed(sd[p + 'pos_embed'], h, w)
    for i in range(12):
        bp = f'{p}blocks.{i}.'
        y = ref_ln(sd, bp + 'norm1.', t, 1e-6)
        qkv = F.linear(y, sd[bp + 'attn.qkv.weight'], sd[bp + 'attn.qkv.bias'])
        q, k, v = qkv.reshape(b, -1, 3, 12, 64).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-1, -2) / 8.0, dim=-1) @ v
        a = F.linear(a.transpose(1, 2).reshape(b, -1, 768), sd[bp + 'attn.proj.weight'],
                     sd[bp + 'attn.proj.bias'])
        t = t + a * sd[bp + 'ls1.gamma']
        y = ref_ln(sd, bp + 'norm2.', t, 1e-6)
        y = F.linear(F.gelu(F.linear(y, sd[bp + 'mlp.fc1.weight'], sd[bp + 'mlp.fc1.bias'])),
                     sd[bp + 'mlp.fc2.weight'], sd[bp + 'mlp.fc2.bias'])
        t = t + y * sd[bp + 'ls2.gamma']
    return t[:, 1:].permute(0, 2, 1).reshape(b, 768, h, w)


# ----- fixtures ----------------------------------------------------------------------------

@pytest.fixture(scope='module')
def resnet(resnet_checkpoint):
    return load_boq(resnet_checkpoint), read_state_dict(resnet_checkpoint)


@pytest.fixture(scope='module')
def dinov2(dinov2_checkpoint):
    return load_boq(dinov2_checkpoint), read_state_dict(dinov2_checkpoint)


def images(b, h, w, seed):
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max())


def check_against_reference(model, sd, x, ref_backbone, heads):
    with torch.inference_mode():
        feats = model.backbone(x)
        desc, attns = model.aggregator(feats)
        ref_feats = ref_backbone(sd, x)
        ref_desc, ref_attns = ref_aggregator(sd, ref_feats, heads)
    assert feats.shape == ref_feats.shape
    assert rel_err(feats, ref_feats) < 1e-5
    assert len(attns) == len(ref_attns) == 2
    for a, r in zip(attns, ref_attns):
        assert a.shape == r.shape == (x.shape[0], 64, feats.shape[2] * feats.shape[3])
        assert float((a - r).abs().max()) < 1e-6
    assert desc.dtype == torch.float32
    assert float((desc - ref_desc).abs().max()) < DESCRIPTOR_ATOL


# ----- tests -------------------------------------------------------------------------------

@pytest.mark.parametrize('preset_fixture,heads,dim', [('resnet', 8, 1024), ('dinov2', 6, 768)])
def test_aggregator_matches_reference_on_random_features(request, preset_fixture, heads, dim):
    model, sd = request.getfixturevalue(preset_fixture)
    feats = torch.randn(3, dim, 5, 7, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        desc, attns = model.aggregator(feats)
        ref_desc, ref_attns = ref_aggregator(sd, feats, heads)
    assert float((desc - ref_desc).abs().max()) < 1e-6
    for a, r in zip(attns, ref_attns):
        assert float((a - r).abs().max()) < 1e-6
    # These descriptors differ between inputs, so the comparison above can fail.
    assert float((ref_desc[0] - ref_desc[1]).abs().max()) > 1e-3


@pytest.mark.parametrize('shape', [(1, 384, 384), (2, 200, 264)], ids=['square', 'non-square'])
def test_resnet_matches_reference(resnet, shape):
    b, h, w = shape
    check_against_reference(*resnet, images(b, h, w, seed=h), ref_resnet, heads=8)


@pytest.mark.parametrize('shape', [(1, 518, 518), (1, 126, 126), (2, 154, 224)],
                         ids=['518-no-resize', 'square-resized', 'non-square'])
def test_dinov2_matches_reference(dinov2, shape):
    b, h, w = shape
    check_against_reference(*dinov2, images(b, h, w, seed=h), ref_dinov2, heads=6)


def test_dinov2_position_embedding_uses_scale_factor_offset(dinov2):
    model, sd = dinov2
    pos = sd['backbone.dino.pos_embed']
    dino = model.backbone.dino
    assert torch.equal(dino.position_embedding(37, 37, torch.float32), pos)
    for h, w in ((23, 23), (23, 31), (11, 16), (40, 37)):
        ours = dino.position_embedding(h, w, torch.float32)
        assert ours.shape == (1, h * w + 1, 768)
        assert torch.equal(ours, ref_pos_embed(pos, h, w))
    # The discriminating power of the check: size=(h, w) gives other numbers.
    patch = pos[:, 1:].reshape(1, 37, 37, -1).permute(0, 3, 1, 2)
    by_size = F.interpolate(patch, size=(23, 31), mode='bicubic').permute(0, 2, 3, 1)
    assert float((by_size.reshape(1, -1, 768) - ref_pos_embed(pos, 23, 31)[:, 1:]).abs().max()
                 ) > 1e-4


def test_resized_position_embedding_is_cached_until_the_weights_change():
    vit = DinoViT(dim=8, depth=1, heads=2, grid=4)
    with torch.no_grad():
        vit.pos_embed.normal_()
    first = vit.position_embedding(3, 5, torch.float32)
    assert vit.position_embedding(3, 5, torch.float32) is first
    pos = vit.pos_embed.detach()
    patch = pos[:, 1:].reshape(1, 4, 4, 8).permute(0, 3, 1, 2)
    expected = F.interpolate(patch, scale_factor=(3.1 / 4, 5.1 / 4), mode='bicubic')
    assert torch.equal(first[:, 1:], expected.permute(0, 2, 3, 1).reshape(1, 15, 8))
    state = vit.state_dict()
    state['pos_embed'] = state['pos_embed'] * 2
    vit.load_state_dict(state)  # copies in place: same storage, new version
    assert torch.allclose(vit.position_embedding(3, 5, torch.float32), 2 * first)
