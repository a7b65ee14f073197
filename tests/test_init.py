"""Tests of `miniai.init`: `GeneralRelu`, `init_weights`, the `conv`/`get_model` builders, `BatchTransformCB`,
`lsuv_init` and `clean_mem`.

Everything runs on hand-made tensors and tiny models on the CPU; the statistical checks of `init_weights` use layers big
enough for a tight tolerance.
"""

import gc, math, sys, weakref
from functools import partial
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from miniai.learner import *  # first: it silences torcheval's import-time deprecation warning
from miniai.learner import def_device
from miniai.activations import *
from miniai.init import *
from conftest import DLs


def n_params(m): return sum(p.numel() for p in m.parameters())


def snapshot(m): return {k: v.detach().clone() for k, v in m.state_dict().items()}


# ---------------------------------------------------------------------------------------------------------------------
# GeneralRelu

X = torch.tensor([-2., -0.5, 0., 0.5, 1., 3.])


@pytest.mark.parametrize('kw,expected', [
    ({}, [0., 0., 0., 0.5, 1., 3.]),
    (dict(leak=0.1), [-0.2, -0.05, 0., 0.5, 1., 3.]),
    (dict(sub=0.4), [-0.4, -0.4, -0.4, 0.1, 0.6, 2.6]),
    (dict(maxv=1.5), [0., 0., 0., 0.5, 1., 1.5]),
    (dict(leak=0.1, sub=0.4), [-0.6, -0.45, -0.4, 0.1, 0.6, 2.6]),
    (dict(leak=0.1, sub=0.4, maxv=2.), [-0.6, -0.45, -0.4, 0.1, 0.6, 2.]),  # 3 - 0.4 = 2.6, then the ceiling: sub first
])
def test_generalrelu_values(kw, expected):
    x = X.clone()
    assert torch.allclose(GeneralRelu(**kw)(x), torch.tensor(expected), atol=1e-6)
    assert torch.equal(x, X)  # the input is left alone


def test_generalrelu_defaults_equal_relu():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 5)
    assert torch.equal(GeneralRelu()(x), F.relu(x))
    assert torch.equal(GeneralRelu()(x), nn.ReLU()(x))


def test_generalrelu_gradients():
    x = X.clone().requires_grad_()
    GeneralRelu(leak=0.1, sub=0.4, maxv=2.)(x).sum().backward()
    assert torch.allclose(x.grad, torch.tensor([0.1, 0.1, 0.1, 1., 1., 0.]))  # slope 0 above the ceiling


# ---------------------------------------------------------------------------------------------------------------------
# init_weights

def kaiming_std(fan_in, leaky=0.): return math.sqrt(2/((1 + leaky**2)*fan_in))


@pytest.mark.parametrize('make,fan_in', [(lambda: nn.Linear(500, 400), 500), (lambda: nn.Conv2d(64, 128, 3), 64*9)])
@pytest.mark.parametrize('leaky', [0., 0.1])
def test_init_weights_kaiming_std(make, fan_in, leaky):
    torch.manual_seed(0)
    m = make()
    before = m.weight.std().item()
    kw = {} if leaky == 0 else dict(leaky=leaky)
    init_weights(m, **kw)
    assert m.weight.std().item() == pytest.approx(kaiming_std(fan_in, leaky), rel=0.02)
    assert m.weight.mean().item() == pytest.approx(0., abs=0.01*kaiming_std(fan_in))
    assert m.weight.std().item() > 1.5*before  # PyTorch's default init is much smaller: it really changed
    assert m.weight.abs().max().item() > 3.5*m.weight.std().item()  # normal, not uniform (whose max is 1.73 std)


def test_init_weights_leaky_scales_by_exactly_sqrt_1_over_1_plus_leak_squared():
    "Same random draws with and without `leaky`: the weights differ by the gain ratio sqrt(1/1.01) (too small for a std test)."
    m0, m1 = nn.Linear(50, 40), nn.Linear(50, 40)
    torch.manual_seed(3); init_weights(m0)
    torch.manual_seed(3); init_weights(m1, leaky=0.1)
    assert torch.allclose(m1.weight, m0.weight*math.sqrt(1/1.01), rtol=1e-5, atol=1e-7)


def test_init_weights_with_model_apply_leaves_other_modules_and_biases_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), GeneralRelu(sub=0.4), nn.Flatten(),
                          nn.Embedding(10, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    model[1].weight.data.uniform_(); model[5].weight.data.uniform_()  # not ones, so a re-init would show
    before = snapshot(model)
    model.apply(init_weights)
    after = snapshot(model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {'0.weight', '6.weight'}  # only conv and linear weights: BN, embedding, layer norm, biases untouched


# ---------------------------------------------------------------------------------------------------------------------
# conv

def test_conv_layer_order_and_settings():
    c = conv(3, 8, norm=nn.BatchNorm2d)
    assert [type(l) for l in c] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    cv = c[0]
    assert (cv.in_channels, cv.out_channels, cv.kernel_size, cv.stride, cv.padding) == (3, 8, (3, 3), (2, 2), (1, 1))
    assert c[1].num_features == 8
    assert c(torch.randn(2, 3, 9, 9)).shape == (2, 8, 5, 5)


@pytest.mark.parametrize('ks,stride,size,out', [(1, 1, 7, 7), (3, 1, 7, 7), (5, 1, 7, 7), (5, 2, 8, 4), (3, 2, 28, 14)])
def test_conv_padding_is_ks_over_2_and_stride(ks, stride, size, out):
    c = conv(2, 4, ks=ks, stride=stride)
    assert c[0].padding == (ks//2, ks//2) and c[0].stride == (stride, stride) and c[0].kernel_size == (ks, ks)
    assert c(torch.randn(1, 2, size, size)).shape == (1, 4, out, out)


def test_conv_bias_default_is_true_even_with_batchnorm_and_false_is_honoured():
    assert conv(1, 8)[0].bias is not None
    assert conv(1, 8, norm=nn.BatchNorm2d)[0].bias is not None  # as in the lesson: its parameter counts rely on it
    assert conv(1, 8, bias=False)[0].bias is None
    assert conv(1, 8, norm=nn.BatchNorm2d, bias=False)[0].bias is None
    assert conv(1, 8, bias=True)[0].bias is not None


def test_conv_act_and_norm_none_are_left_out():
    assert [type(l) for l in conv(1, 8, act=None)] == [nn.Conv2d]
    assert [type(l) for l in conv(1, 8, act=None, norm=nn.BatchNorm2d)] == [nn.Conv2d, nn.BatchNorm2d]
    assert [type(l) for l in conv(1, 8, norm=None)] == [nn.Conv2d, nn.ReLU]
    c = conv(1, 8, act=partial(GeneralRelu, leak=0.1, sub=0.4))
    assert isinstance(c[1], GeneralRelu) and (c[1].leak, c[1].sub) == (0.1, 0.4)


def test_conv_param_counts():
    assert n_params(conv(1, 8)) == 8*9 + 8
    assert n_params(conv(1, 8, bias=False)) == 8*9
    assert n_params(conv(1, 8, norm=nn.BatchNorm2d)) == 8*9 + 8 + 2*8
    assert n_params(conv(8, 16, ks=5, act=GeneralRelu)) == 16*8*25 + 16


# ---------------------------------------------------------------------------------------------------------------------
# get_model

def test_get_model_default():
    torch.manual_seed(0)
    m = get_model()
    assert len(m) == 6 and isinstance(m[-1], nn.Flatten)
    assert [b[0].out_channels for b in m[:5]] == [8, 16, 32, 64, 10]
    assert [type(l) for l in m[4]] == [nn.Conv2d] and m[4][0].bias is not None  # a bare conv to the logits
    assert all(isinstance(b[-1], nn.ReLU) for b in m[:4])
    assert n_params(m) == 80 + 1168 + 4640 + 18496 + 5770 == 30154
    assert next(m.parameters()).device.type == torch.device(def_device).type
    assert m(torch.randn(3, 1, 28, 28, device=def_device)).shape == (3, 10)


def test_get_model_with_batchnorm_and_generalrelu():
    torch.manual_seed(0)
    m = get_model(partial(GeneralRelu, leak=0.1, sub=0.4), norm=nn.BatchNorm2d)
    assert all([type(l) for l in b] == [nn.Conv2d, nn.BatchNorm2d, GeneralRelu] for b in m[:4])
    assert [type(l) for l in m[4]] == [nn.Conv2d]  # no norm, no act on the last conv
    assert n_params(m) == 30154 + 2*(8 + 16 + 32 + 64)
    assert m(torch.randn(4, 1, 28, 28, device=def_device)).shape == (4, 10)


@pytest.mark.parametrize('nfs,size', [([1, 4, 8, 16, 32], 28), ((1, 4, 8, 16), 16), ([1, 4], 3)])
def test_get_model_custom_nfs(nfs, size):
    torch.manual_seed(0)
    m = get_model(nfs=nfs, norm=nn.BatchNorm2d)
    assert len(m) == len(nfs) + 1
    assert [b[0].out_channels for b in m[:-1]] == list(nfs[1:]) + [10]
    assert m(torch.randn(4, 1, size, size, device=def_device)).shape == (4, 10)


# ---------------------------------------------------------------------------------------------------------------------
# BatchTransformCB



def reg_batches(n, seed):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 3, generator=g) + 5, torch.randn(4, 1, generator=g)) for _ in range(n)]


@pytest.mark.parametrize('on_train,on_val', [(True, True), (True, False), (False, True), (False, False)])
def test_batchtransformcb_applies_in_train_and_valid_as_asked(on_train, on_val):
    seen = []
    class Look(Callback):
        order = 5
        def after_predict(self, learn): seen.append((learn.training, bool((learn.batch[0] == 0).all())))
    zero_x = lambda b: (torch.zeros_like(b[0]), b[1])
    torch.manual_seed(0)
    learn = Learner(nn.Linear(3, 1), DLs(reg_batches(2, 1), reg_batches(1, 2)), F.mse_loss, lr=0.01,
                    cbs=[TrainCB(), BatchTransformCB(zero_x, on_train=on_train, on_val=on_val), Look()])
    learn.fit(1)
    assert seen == [(True, on_train)]*2 + [(False, on_val)]


def test_batchtransformcb_runs_after_devicecb():
    assert BatchTransformCB(lambda b: b).order > DeviceCB().order
    devices = []
    def tfm(b):
        devices.append(b[0].device.type)
        return b
    learn = SimpleNamespace(batch=(torch.ones(2, 3), torch.zeros(2)), training=True)
    run_cbs([BatchTransformCB(tfm), DeviceCB(device='meta')], 'before_batch', learn)  # listed first, runs second
    assert devices == ['meta']
    assert learn.batch[0].device.type == 'meta'


# ---------------------------------------------------------------------------------------------------------------------
# lsuv_init

def out_stats(m, model, xb):
    res = {}
    h = m.register_forward_hook(lambda mod, i, o: res.update(mean=o.mean().item(), std=o.std().item()))
    with torch.no_grad(): model(xb)
    h.remove()
    return res['mean'], res['std']


def mlp(act):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 30), act, nn.Linear(30, 5))


def test_lsuv_init_brings_a_layer_to_mean_0_std_1_and_removes_its_hook():
    model = mlp(GeneralRelu(leak=0.1, sub=0.4))
    torch.manual_seed(1)
    xb = torch.randn(64, 20)*3 + 1
    assert abs(out_stats(model[1], model, xb)[1] - 1) > 0.1  # it is not there to start with
    mean, std = lsuv_init(model, model[1], model[0], xb)
    assert abs(mean) <= 1e-3 and abs(std - 1) <= 1e-3
    m2, s2 = out_stats(model[1], model, xb)
    assert abs(m2) <= 1e-3 and abs(s2 - 1) <= 1e-3
    assert n_params(model) == 20*30 + 30 + 30*5 + 5
    assert all(not m._forward_hooks for m in model.modules())


def test_lsuv_init_every_layer_of_a_conv_model_as_in_the_lesson():
    model = get_model(partial(GeneralRelu, leak=0.1, sub=0.4), nfs=[1, 4, 8]).cpu()
    torch.manual_seed(1)
    xb = torch.randn(16, 1, 8, 8)
    relus = [o for o in model.modules() if isinstance(o, GeneralRelu)]
    convs = [o for o in model.modules() if isinstance(o, nn.Conv2d)]
    for ms in zip(relus, convs): lsuv_init(model, *ms, xb)
    for r in relus:  # later layers don't change earlier ones' outputs, so all still hold
        mean, std = out_stats(r, model, xb)
        assert abs(mean) <= 1e-3 and abs(std - 1) <= 1e-3
    assert all(not m._forward_hooks for m in model.modules())


def test_lsuv_init_needs_a_bias():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 30, bias=False), GeneralRelu(leak=0.1, sub=0.4))
    w = model[0].weight.detach().clone()
    with pytest.raises(ValueError, match='bias'): lsuv_init(model, model[1], model[0], torch.randn(8, 20))
    assert torch.equal(model[0].weight, w) and all(not m._forward_hooks for m in model.modules())
    c = conv(1, 4, bias=False, act=partial(GeneralRelu, sub=0.4))
    with pytest.raises(ValueError, match='bias'): lsuv_init(c, c[1], c[0], torch.randn(2, 1, 8, 8))


@pytest.mark.parametrize('max_iter', [5, 50])
def test_lsuv_init_with_plain_relu_raises_instead_of_looping_forever(max_iter):
    model = mlp(nn.ReLU())
    torch.manual_seed(1)
    xb = torch.randn(64, 20)
    with pytest.raises(RuntimeError, match='LSUV'): lsuv_init(model, model[1], model[0], xb, max_iter=max_iter)
    assert all(not m._forward_hooks for m in model.modules())


def test_lsuv_init_with_a_constant_output_raises_at_once():
    model = mlp(nn.ReLU())
    with torch.no_grad(): model[0].weight.zero_(); model[0].bias.fill_(-1.)  # every unit dead: output all zeros
    with pytest.raises(RuntimeError, match='std 0'): lsuv_init(model, model[1], model[0], torch.randn(8, 20))
    assert all(not m._forward_hooks for m in model.modules())


def test_lsuv_init_with_a_module_the_model_never_calls_raises_a_clear_error():
    model = mlp(GeneralRelu(sub=0.4))
    stray = GeneralRelu(sub=0.4)
    with pytest.raises((ValueError, RuntimeError), match='never|not called|not run'):
        lsuv_init(model, stray, model[0], torch.randn(8, 20))


# ---------------------------------------------------------------------------------------------------------------------
# clean_mem

@pytest.fixture
def keep_sys_last():
    "Put back whatever `sys.last_*` pytest (or anything else) had before the test."
    names = ('last_type', 'last_value', 'last_traceback', 'last_exc')
    old = {n: getattr(sys, n) for n in names if hasattr(sys, n)}
    yield
    for n in names:
        if n in old: setattr(sys, n, old[n])
        elif hasattr(sys, n): delattr(sys, n)


def _fail(refs):
    big = torch.ones(1000)
    refs.append(weakref.ref(big))
    raise ValueError('boom')


def test_clean_mem_frees_a_tensor_held_only_by_the_last_traceback(keep_sys_last):
    refs = []
    try: _fail(refs)
    except ValueError as e: sys.last_type, sys.last_value, sys.last_traceback = type(e), e, e.__traceback__
    gc.collect()
    assert refs[0]() is not None  # the traceback's frame keeps it alive...
    clean_mem()
    assert refs[0]() is None  # ...until clean_mem lets go
    assert not hasattr(sys, 'last_traceback') and not hasattr(sys, 'last_value')


def test_clean_mem_clears_the_last_tracebacks_frames_even_if_the_traceback_is_kept_elsewhere(keep_sys_last):
    refs, kept = [], []
    try: _fail(refs)
    except ValueError as e:
        sys.last_type, sys.last_value, sys.last_traceback = type(e), e, e.__traceback__
        kept.append(e.__traceback__)
    clean_mem()
    assert refs[0]() is None and kept[0].tb_next.tb_frame.f_locals == {}


def test_clean_mem_runs_without_ipython(monkeypatch, keep_sys_last):
    monkeypatch.setitem(sys.modules, 'IPython', None)  # `import IPython` now fails
    with pytest.raises(ImportError): import IPython
    clean_mem()
    clean_mem()  # nothing to clean: still fine
