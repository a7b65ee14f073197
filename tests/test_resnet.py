"""Tests of `miniai.resnet`: `ResBlock`, the FLOP count, `Learner.summary` and `GlobalAvgPool`.

The summary figures of the lesson's global-average-pooling ResNets are checked exactly, on one validation batch of the
quick-mode Fashion-MNIST sample (the models are only built and run forward once, never trained).
"""
import copy, re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from miniai.learner import *
from miniai.datasets import *
from miniai.init import *
from miniai.resnet import *
from miniai.resnet import _conv_block, _flops, _grid_after

from conftest import DLs


# ---------------------------------------------------------------------------------------------------------------------
# Helpers

def get_gap(act=act_gr, nfs=(16, 32, 64, 128, 256), norm=nn.BatchNorm2d, to512=True, first_block=True):
    "The lesson's global-average-pooling ResNet (notebook 13)."
    first = (ResBlock(1, nfs[0], ks=5, stride=1, act=act, norm=norm) if first_block
             else conv(1, nfs[0], ks=5, stride=1, act=act, norm=norm))
    layers = [first] + [ResBlock(nfs[i], nfs[i+1], stride=2, act=act, norm=norm) for i in range(len(nfs) - 1)]
    if to512: layers.append(ResBlock(nfs[-1], 512, act=act, norm=norm))
    nout = 512 if to512 else nfs[-1]
    return nn.Sequential(*layers, GlobalAvgPool(), nn.Linear(nout, 10, bias=False), nn.BatchNorm1d(10))


@pytest.fixture(scope='module')
def dls(): return fashion_mnist_dls(bs=64)


VARIANTS = {'gap512': {}, 'gap': dict(to512=False), 'gap_conv': dict(to512=False, first_block=False)}

@pytest.fixture(scope='module')
def summaries(dls):
    "Each lesson variant's model and its `TrainLearner(model, dls, F.cross_entropy).summary()`, computed once."
    res = {}
    for k, kw in VARIANTS.items():
        model = get_gap(**kw)
        res[k] = model, TrainLearner(model, dls, F.cross_entropy).summary()
    return res


def state(model): return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a: assert torch.equal(a[k], b[k]), k


# ---------------------------------------------------------------------------------------------------------------------
# ResBlock

def test_act_gr():
    a = act_gr()
    assert isinstance(a, GeneralRelu) and a.leak == 0.1 and a.sub == 0.4 and a.maxv is None
    torch.testing.assert_close(a(torch.tensor([-1., 0., 2.])), torch.tensor([-0.5, -0.4, 1.6]))


def test_conv_block_structure():
    b = _conv_block(3, 8, stride=2, norm=nn.BatchNorm2d, ks=5)
    c1, c2 = b[0][0], b[1][0]
    assert (c1.in_channels, c1.out_channels, c1.stride, c1.kernel_size, c1.padding) == (3, 8, (1, 1), (5, 5), (2, 2))
    assert (c2.in_channels, c2.out_channels, c2.stride, c2.kernel_size) == (8, 8, (2, 2), (5, 5))
    assert isinstance(b[0][1], nn.BatchNorm2d) and isinstance(b[0][2], GeneralRelu)
    assert len(b[1]) == 2 and isinstance(b[1][1], nn.BatchNorm2d)  # no activation after the second conv


def test_resblock_same_channels_identity_path():
    rb = ResBlock(8, 8)
    assert isinstance(rb.idconv, nn.Identity) and isinstance(rb.pool, nn.Identity)
    assert isinstance(rb.act, GeneralRelu)
    assert rb(torch.randn(2, 8, 9, 9)).shape == (2, 8, 9, 9)


def test_resblock_zero_bn_eval_returns_input_exactly():
    rb = ResBlock(8, 8, norm=nn.BatchNorm2d, act=None, zero_bn=True).eval()
    assert isinstance(rb.act, nn.Identity)
    assert torch.equal(rb.convs[1][1].weight, torch.zeros(8))
    x = torch.randn(2, 8, 7, 7)
    assert torch.equal(rb(x), x)


def test_resblock_zero_bn_needs_norm_and_is_off_by_default():
    assert not torch.equal(ResBlock(8, 8, norm=nn.BatchNorm2d).convs[1][1].weight, torch.zeros(8))
    rb = ResBlock(8, 8, zero_bn=True)  # no norm: nothing to zero, and no error
    assert not torch.equal(rb.convs[1][0].weight, torch.zeros_like(rb.convs[1][0].weight))


def test_resblock_without_zero_bn_is_not_identity():
    rb = ResBlock(8, 8, norm=nn.BatchNorm2d, act=None).eval()
    x = torch.randn(2, 8, 7, 7)
    assert not torch.allclose(rb(x), x)


def test_resblock_changing_channels_uses_1x1_conv():
    rb = ResBlock(4, 8)
    convs = [m for m in rb.idconv.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1
    c = convs[0]
    assert (c.in_channels, c.out_channels, c.kernel_size, c.stride) == (4, 8, (1, 1), (1, 1))
    assert not any(isinstance(m, (GeneralRelu, nn.ReLU)) for m in rb.idconv.modules())  # no activation on that path
    x = torch.randn(2, 4, 6, 6)
    assert rb(x).shape == (2, 8, 6, 6)
    with torch.no_grad():  # the block really is act(convs(x) + idconv(x))
        torch.testing.assert_close(rb(x), rb.act(rb.convs(x) + c(x)))


@pytest.mark.parametrize('size,out', [(8, 4), (7, 4), (28, 14), (5, 3), (1, 1)])
@pytest.mark.parametrize('ks', [3, 5])
def test_resblock_stride2_halves_rounding_up(size, out, ks):
    rb = ResBlock(3, 6, stride=2, ks=ks, norm=nn.BatchNorm2d)
    assert isinstance(rb.pool, nn.AvgPool2d)
    assert rb(torch.randn(2, 3, size, size)).shape == (2, 6, out, out)
    assert ResBlock(6, 6, stride=2, ks=ks)(torch.randn(2, 6, size, size)).shape == (2, 6, out, out)


def test_resblock_stride2_identity_path_is_average_pool():
    rb = ResBlock(2, 2, stride=2, norm=nn.BatchNorm2d, act=None, zero_bn=True).eval()
    x = torch.randn(1, 2, 4, 4)
    torch.testing.assert_close(rb(x), F.avg_pool2d(x, 2))


@pytest.mark.parametrize('stride', [0, 3, 4])
def test_resblock_bad_stride(stride):
    with pytest.raises(ValueError, match='stride'): ResBlock(4, 4, stride=stride)


@pytest.mark.parametrize('train', [True, False])
def test_gradient_flows_through_identity_path(train):
    "With the residual branch zeroed (zero_bn) the identity path still passes the gradient unchanged."
    rb = ResBlock(4, 4, norm=nn.BatchNorm2d, act=None, zero_bn=True).train(train)
    x = torch.randn(3, 4, 5, 5, requires_grad=True)
    rb(x).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
    assert rb.convs[1][1].weight.grad is not None and rb.convs[1][1].weight.grad.abs().sum() > 0  # BN scale learns


def test_gradient_reaches_first_layer_of_deep_resnet():
    torch.manual_seed(0)
    model = nn.Sequential(*[ResBlock(4, 4, norm=nn.BatchNorm2d) for _ in range(10)])
    x = torch.randn(2, 4, 6, 6)
    model(x).sum().backward()
    assert model[0].convs[0][0].weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------------------------------
# _flops

@pytest.mark.parametrize('wshape,out_shape,expected', [
    ((10,), (2, 10), 10),                                  # bias / BatchNorm scale: its size
    ((10, 5), (2, 10), 50),                                # linear weight: its size
    ((4, 2, 3), (5, 4, 7), 24*7),                          # conv1d kernel: size times output length
    ((4, 2, 3, 3), (5, 4, 6, 7), 72*6*7),                  # conv2d kernel: size times output grid
    ((4, 2, 3, 3, 3), (5, 4, 2, 6, 7), 216*2*6*7),         # conv3d kernel: size times output volume
    ((4, 2, 3, 3), (5, 4), 72),                            # output without a grid: just the size
])
def test_flops(wshape, out_shape, expected):
    assert _flops(torch.zeros(wshape), out_shape) == expected
    assert _flops(torch.zeros(wshape), torch.Size(out_shape)) == expected


# ---------------------------------------------------------------------------------------------------------------------
# Learner.summary on the lesson's models

@pytest.mark.parametrize('variant,n_params,mflops,per_layer,first', [
    ('gap512', 4_907_588, 33.0, 44.4, 'ResBlock'),
    ('gap', 1_231_428, 18.3, 29.7, 'ResBlock'),
    ('gap_conv', 1_224_948, 13.3, 24.7, 'Sequential'),
])
def test_summary_lesson_figures(dls, summaries, variant, n_params, mflops, per_layer, first):
    model, s = summaries[variant]
    assert isinstance(s, ModelSummary)
    assert s.params == n_params == sum(p.numel() for p in model.parameters())
    assert round(s.mflops, 1) == mflops
    assert round(s.mflops_per_layer, 1) == per_layer
    assert len(s.rows) == len(model)
    assert [r[0] for r in s.rows] == [first] + ['ResBlock']*(len(model) - 4) + ['GlobalAvgPool', 'Linear', 'BatchNorm1d']
    xb = next(iter(dls.valid))[0]
    assert xb.shape == (128, 1, 28, 28)                         # the valid loader's batch: twice bs
    assert s.rows[0][1] == tuple(xb.shape)                      # input column shows that batch
    assert s.rows[0][2] == (128, 16, 28, 28)
    assert s.rows[-1][2] == (128, 10)
    for prev, row in zip(s.rows, s.rows[1:]): assert row[1] == prev[2]  # shapes chain from layer to layer
    total = f'Total params: {n_params:,}; MFLOPS: {mflops:.1f} (per layer: {per_layer:.1f})'
    assert repr(s).splitlines()[-1] == total
    assert s._repr_markdown_().splitlines()[-1] == total


def test_summary_row_figures(summaries):
    "Per-layer figures of the first block of the wide model, worked out by hand."
    s = summaries['gap512'][1]
    # ResBlock(1, 16, ks=5): conv 1->16 (400 + 16 bias), BN(16) (32), conv 16->16 (6400 + 16), BN(16) (32), idconv 1x1 (16 + 16)
    assert s.rows[0][3] == 416 + 32 + 6416 + 32 + 32 == 6928
    # 4-d weights times the 28x28 output grid, the rest once each
    assert s.rows[0][4] == pytest.approx(((400 + 6400 + 16)*28*28 + 16 + 32 + 16 + 32 + 16) / 1e6)
    assert s.rows[0][5] == pytest.approx(s.rows[0][4])  # stride 1: every conv runs at the block's output grid
    assert s.rows[6] == ('GlobalAvgPool', (128, 512, 2, 2), (128, 512), 0, 0.0, 0.0)
    assert s.rows[7][3] == 5120 and s.rows[7][4] == pytest.approx(5120/1e6) == s.rows[7][5]


def test_summary_per_layer_counts_stride2_block_at_each_convs_grid(summaries):
    "A stride-2 block's first conv runs at its input grid: the lesson's count charges it a quarter of that."
    s = summaries['gap'][1]
    # ResBlock(16, 32, stride=2) on 28x28: conv 16->32 3x3 at 28x28, conv 32->32 3x3 at 14x14, idconv 1x1 16->32 at 14x14
    convs = 16*32*9*28*28 + 32*32*9*14*14 + 16*32*14*14
    small = 32 + 32 + 32 + 32 + 32 + 32 + 32  # two conv biases, two BatchNorms (scale and shift), the idconv's bias
    assert s.rows[1][4] == pytest.approx(((16*32*9 + 32*32*9 + 16*32)*14*14 + small) / 1e6)
    assert s.rows[1][5] == pytest.approx((convs + small) / 1e6)
    assert s.rows[1][5] > s.rows[1][4] * 1.9


@pytest.mark.parametrize('variant', ['gap512', 'gap', 'gap_conv'])
def test_summary_per_layer_agrees_with_torch_flop_counter(variant):
    "PyTorch's own counter, on one image: 2 FLOPs per multiply-add of the conv and linear weights; no biases or BatchNorm."
    from torch.utils.flop_counter import FlopCounterMode
    model = get_gap(**VARIANTS[variant]).eval()
    x = torch.randn(1, 1, 28, 28)
    s = Learner(model).summary(xb=x)
    with FlopCounterMode(display=False) as counter, torch.no_grad(): model(x)
    once = sum(p.numel() for n, p in model.named_parameters() if p.ndim < 2)  # biases and BatchNorm, once per image
    assert s.mflops_per_layer == pytest.approx((counter.get_total_flops() / 2 + once) / 1e6, rel=1e-6)


@pytest.mark.parametrize('train', [True, False])
def test_summary_no_side_effects(dls, train):
    model = get_gap(to512=False).train(train)
    before = state(model)
    ntracked = model[1].convs[0][1].num_batches_tracked.item()
    TrainLearner(model, dls, F.cross_entropy).summary()
    assert_same_state(before, state(model))  # weights and BatchNorm running stats unchanged
    assert model[1].convs[0][1].num_batches_tracked.item() == ntracked
    assert all(m.training == train for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    assert model[0]._forward_hooks == {} and all(not m._forward_hooks for m in model.modules())  # hooks removed


def test_summary_restores_mixed_modes():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten())
    model.train()
    model[1].eval()  # e.g. a frozen BatchNorm while fine-tuning
    modes = [m.training for m in model.modules()]
    Learner(model).summary(xb=torch.randn(2, 1, 5, 5))
    assert [m.training for m in model.modules()] == modes


def test_summary_restores_modes_after_error():
    class Boom(nn.Module):
        def forward(self, x): raise RuntimeError('boom')
    model = nn.Sequential(nn.Linear(3, 3), Boom()).train()
    with pytest.raises(RuntimeError, match='boom'): Learner(model).summary(xb=torch.randn(2, 3))
    assert model.training and model[0].training
    assert all(not m._forward_hooks for m in model.modules())


def test_summary_reprs(summaries):
    s = summaries['gap'][1]
    md = s._repr_markdown_().splitlines()
    assert md[0] == '|Module|Input|Output|Num params|MFLOPS|per layer|'
    assert re.fullmatch(r'\|[-:|]+\|', md[1])
    body = [l for l in md[2:] if l.startswith('|')]
    assert len(body) == len(s.rows) == 8
    assert body[0] == '|ResBlock|(128, 1, 28, 28)|(128, 16, 28, 28)|6,928|5.3|5.3|'
    assert md[-1] == 'Total params: 1,231,428; MFLOPS: 18.3 (per layer: 29.7)'
    txt = repr(s).splitlines()
    assert len(txt) == 1 + 8 + 1
    assert txt[0].split() == ['Module', 'Input', 'Output', 'Num', 'params', 'MFLOPS', 'per', 'layer']
    for line, row in zip(txt[1:-1], s.rows):
        assert line.startswith(row[0]) and line.split()[-2:] == [f'{row[4]:.1f}', f'{row[5]:.1f}'] and f'{row[3]:,}' in line
    assert txt[-1] == 'Total params: 1,231,428; MFLOPS: 18.3 (per layer: 29.7)'
    assert 'ResBlock       (128, 1, 28, 28)' in txt[1]  # columns aligned


def test_summary_conv1d_model_with_xb():
    model = nn.Sequential(nn.Conv1d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(40, 3))
    s = Learner(model).summary(xb=torch.randn(5, 2, 10))
    assert [r[0] for r in s.rows] == ['Conv1d', 'ReLU', 'Flatten', 'Linear']
    assert s.rows[0][1:4] == ((5, 2, 10), (5, 4, 10), 28)
    assert s.rows[0][4] == pytest.approx((24*10 + 4) / 1e6) == s.rows[0][5]
    assert s.rows[3][1:4] == ((5, 40), (5, 3), 123)
    assert s.rows[3][4] == pytest.approx(123 / 1e6)
    assert s.params == 151


def test_summary_uses_traincb_n_inp():
    class Two(nn.Module):
        def __init__(self): super().__init__(); self.lin = nn.Linear(3, 2)
        def forward(self, a, b): return self.lin(a + b)
    learn = Learner(Two(), DLs([(torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 2))]), F.mse_loss, cbs=[TrainCB(n_inp=2)])
    learn.fit(1)  # trains fine with both inputs ...
    s = learn.summary()  # ... so summary should use both too
    assert s.rows == [('Linear', (4, 3), (4, 2), 8, pytest.approx(8/1e6), pytest.approx(8/1e6))]


def test_summary_xb_tuple_and_leaf_model():
    "A model without children is summarised as one row; `xb` may be a tuple of inputs."
    s = Learner(nn.Linear(3, 2)).summary(xb=(torch.randn(4, 3),))
    assert s.rows == [('Linear', (4, 3), (4, 2), 8, pytest.approx(8/1e6), pytest.approx(8/1e6))]


# ---------------------------------------------------------------------------------------------------------------------
# GlobalAvgPool

def test_global_avg_pool():
    x = torch.randn(2, 3, 4, 5)
    out = GlobalAvgPool()(x)
    assert out.shape == (2, 3)
    torch.testing.assert_close(out, x.mean((2, 3)))
    torch.testing.assert_close(out[1, 2], x[1, 2].sum() / 20)


# ---------------------------------------------------------------------------------------------------------------------
# resnet(): one builder for the family

@pytest.mark.parametrize('kwargs,params,mflops', [
    (dict(nfs=(16, 32, 64, 128, 256, 512), head='flatten'), 4_907_588, 22.0),
    (dict(), 1_231_428, 18.3),
    (dict(first='conv'), 1_224_948, 13.3)])
def test_resnet_variants_match_the_lesson_figures(dls, kwargs, params, mflops):
    s = TrainLearner(resnet(**kwargs), dls, F.cross_entropy).summary()
    assert (s.params, round(s.mflops, 1)) == (params, mflops)


def test_resnet_output_shape_and_pooling_on_bigger_images():
    assert resnet()(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    assert resnet()(torch.randn(3, 1, 64, 64)).shape == (3, 10)  # the pooled head takes any size
    wider = resnet((16, 32, 64, 128, 256, 512), head='flatten')
    with pytest.raises(RuntimeError): wider(torch.randn(3, 1, 64, 64))  # a 2x2 grid left: the flattened head is for 28x28


@pytest.mark.parametrize('size,blocks,grid', [(28, 5, 1), (28, 4, 2), (14, 4, 1), (14, 3, 2), (28, 0, 28), (7, 1, 4)])
def test_grid_after_halves_rounding_up(size, blocks, grid):
    assert _grid_after(size, blocks) == grid


def test_resnet_pool_stem_max_pools_to_14x14_and_keeps_the_layers():
    m = resnet((16, 32, 64, 128, 256), head='flatten', first='conv', pool_stem=True)
    assert isinstance(m[1], torch.nn.MaxPool2d)
    assert m[:2](torch.randn(3, 1, 28, 28)).shape == (3, 16, 14, 14)
    assert m(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    plain = resnet(first='conv')
    assert sum(p.numel() for p in m.parameters()) == sum(p.numel() for p in plain.parameters())
    assert not any(isinstance(l, torch.nn.MaxPool2d) for l in plain)


def test_resnet_flatten_head_needs_a_1x1_grid():
    with pytest.raises(ValueError, match=r"4 stride-2 blocks leave 28x28 images at 2x2: add channel counts"): resnet(head='flatten')
    with pytest.raises(ValueError, match=r"at 2x2 after the pooled stem"): resnet((16, 32, 64, 128), head='flatten', pool_stem=True)
    resnet((16, 32, 64, 128, 256, 512), head='flatten', pool_stem=True)  # one block more than needed: a 1x1 grid stays 1x1


def test_resnet_dropout_adds_a_layer():
    assert any(isinstance(m, torch.nn.Dropout) for m in resnet(drop=0.2))
    assert not any(isinstance(m, torch.nn.Dropout) for m in resnet())


@pytest.mark.parametrize('kwargs,msg', [(dict(head='avg'), "head must be 'pool'"), (dict(first='stem'), "first must be 'block'"),
                                        (dict(nfs=(16,)), 'at least two')])
def test_resnet_bad_arguments(kwargs, msg):
    with pytest.raises(ValueError, match=msg): resnet(**kwargs)
