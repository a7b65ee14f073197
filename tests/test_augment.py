"""Tests of `miniai.augment`: batch transforms, per-image crop and flip, `show_image_batch`, capturing predictions (and
test-time augmentation), random erasing and random copying.

All on tiny synthetic tensors and models.
"""
import copy
from functools import partial

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torch import nn

from miniai.learner import *
from miniai.datasets import *
from miniai.init import *
import miniai.augment as augment
from miniai.augment import *
from miniai.resnet import resnet

from conftest import DLs


# ---------------------------------------------------------------------------------------------------------------------
# Helpers

def img_batches(sizes, shape=(1, 8, 8), seed=0):
    "Batches of images `(bs, *shape)` with labels 0..9, one batch per entry of `sizes`."
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(bs, *shape, generator=g), torch.randint(0, 10, (bs,), generator=g)) for bs in sizes]


def tiny_cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3*8*8, 10))


def state(model): return {k: v.clone() for k, v in model.state_dict().items()}


def windows(xp, out, h, w, pad):
    "The offsets `(dy, dx)` at which `out` equals a window of the padded image `xp`."
    return [(dy, dx) for dy in range(2*pad + 1) for dx in range(2*pad + 1) if torch.equal(xp[:, dy:dy+h, dx:dx+w], out)]


def image_axes(fig=None):
    fig = fig or plt.gcf()
    return [ax for ax in fig.axes if ax.get_images()]


# ---------------------------------------------------------------------------------------------------------------------
# tfm_batch

def test_tfm_batch():
    x, y = torch.arange(4.), torch.tensor([1, 2])
    bx, by = tfm_batch((x, y), tfm_x=lambda o: o*2, tfm_y=lambda o: o + 10)
    assert torch.equal(bx, x*2) and torch.equal(by, torch.tensor([11, 12]))
    bx, by = tfm_batch((x, y))
    assert bx is x and by is y


def test_tfm_batch_in_batch_transform_cb():
    seen = []
    class Peek(Callback):
        order = 100
        def before_batch(self, learn): seen.append((learn.training, learn.batch[0].clone()))
    (x, y), = img_batches([4])
    cb = BatchTransformCB(partial(tfm_batch, tfm_x=TF.hflip), on_val=False)
    TrainLearner(tiny_cnn(), DLs([(x, y)]), F.cross_entropy, lr=0.1, cbs=[cb, Peek()]).fit(1)
    assert [s[0] for s in seen] == [True, False]
    assert torch.equal(seen[0][1], x.flip(-1)) and torch.equal(seen[1][1], x)


# ---------------------------------------------------------------------------------------------------------------------
# batch_crop_flip

def test_crop_flip_identity():
    x = torch.randn(16, 2, 7, 9)
    assert torch.equal(batch_crop_flip(x, pad=0, flip=False), x)
    assert torch.equal(batch_crop_flip(x, pad=0, flip=False, per_image=False), x)


@pytest.mark.parametrize('pad', [1, 2])
def test_crop_each_image_is_one_window(pad):
    torch.manual_seed(0)
    x = torch.randn(64, 2, 10, 9)
    out = batch_crop_flip(x, pad=pad, flip=False)
    assert out.shape == x.shape and out.dtype == x.dtype
    xp = F.pad(x, (pad,)*4)
    offs = [windows(xp[i], out[i], 10, 9, pad) for i in range(64)]
    assert all(len(o) == 1 for o in offs)
    assert len({o[0] for o in offs}) >= 4  # windows vary between images (9 or 25 possible)


def test_crop_per_batch_same_window_and_flip():
    torch.manual_seed(1)
    x = torch.randn(64, 1, 8, 8)
    xp = F.pad(x, (1,)*4)
    for _ in range(5):
        out = batch_crop_flip(x, pad=1, flip=False, per_image=False)
        offs = {tuple(windows(xp[i], out[i], 8, 8, 1)) for i in range(64)}
        assert len(offs) == 1 and len(next(iter(offs))) == 1
    flips = set()
    for _ in range(20):
        out = batch_crop_flip(x, pad=0, flip=True, per_image=False)
        f = [torch.equal(out[i], x[i].flip(-1)) for i in range(64)]
        assert all(torch.equal(out[i], x[i].flip(-1) if f[i] else x[i]) for i in range(64))
        assert len(set(f)) == 1  # one flip decision for the whole batch
        flips.add(f[0])
    assert flips == {True, False}


def test_crop_flip_windows_with_flip():
    "With flip on, every output is a window of its padded input, mirrored or not."
    torch.manual_seed(2)
    x = torch.randn(64, 1, 8, 8)
    out = batch_crop_flip(x, pad=1, flip=True)
    xp = F.pad(x, (1,)*4)
    kinds = []
    for i in range(64):
        plain, mirrored = windows(xp[i], out[i], 8, 8, 1), windows(xp[i], out[i].flip(-1), 8, 8, 1)
        assert len(plain) + len(mirrored) == 1
        kinds.append(bool(mirrored))
    assert 0 < sum(kinds) < 64


def test_flip_probability_about_half():
    torch.manual_seed(3)
    x = torch.randn(4000, 1, 3, 4)
    out = batch_crop_flip(x, pad=0, flip=True)
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    same = (out == x).flatten(1).all(1)
    assert (flipped ^ same).all()
    assert 0.45 < flipped.float().mean().item() < 0.55


def test_crop_fill_value():
    x = torch.ones(32, 1, 4, 4)
    out = batch_crop_flip(x, pad=1, flip=False, fill=5.)
    assert set(out.unique().tolist()) <= {1., 5.}
    assert (out == 5.).any()


@pytest.mark.parametrize('shape', [(8, 8), (2, 8, 8), (1, 2, 2, 8, 8)])
def test_crop_flip_wrong_ndim(shape):
    with pytest.raises(ValueError, match=r'\(n, c, h, w\)'): batch_crop_flip(torch.zeros(shape))


def test_crop_flip_channels_last():
    x = torch.randn(16, 3, 6, 6)
    xcl = x.contiguous(memory_format=torch.channels_last)
    torch.manual_seed(4); a = batch_crop_flip(x, pad=1)
    torch.manual_seed(4); b = batch_crop_flip(xcl, pad=1)
    assert torch.equal(a, b)
    xp = F.pad(x, (1,)*4)
    for i in range(16):  # channels stay together: the same window for all channels of an image
        assert len(windows(xp[i], b[i], 6, 6, 1)) + len(windows(xp[i], b[i].flip(-1), 6, 6, 1)) == 1


def test_cropflip_module_calls_through():
    x = torch.randn(8, 1, 5, 5)
    m = CropFlip(pad=2, flip=False, per_image=False)
    assert (m.pad, m.flip, m.per_image) == (2, False, False)
    torch.manual_seed(5); a = m(x)
    torch.manual_seed(5); b = batch_crop_flip(x, 2, False, False)
    assert torch.equal(a, b)
    torch.manual_seed(6); a = CropFlip()(x)
    torch.manual_seed(6); b = batch_crop_flip(x)
    assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------------------------------
# show_image_batch

def test_show_image_batch_titles_and_count():
    (x, y), = img_batches([12])
    learn = TrainLearner(tiny_cnn(), DLs([(x, y)]), F.cross_entropy, lr=0.1)
    learn.show_image_batch(max_n=5)
    axs = image_axes()
    assert len(axs) == 5
    assert [ax.get_title() for ax in axs] == [CLASS_NAMES[int(l)] for l in y[:5]]
    for ax, im in zip(axs, x[:5]): np.testing.assert_array_equal(np.asarray(ax.get_images()[0].get_array()), im[0].numpy())


def test_show_image_batch_applies_callbacks_and_does_not_train():
    (x, y), = img_batches([12])
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(128, 10))
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    ones = BatchTransformCB(lambda b: (torch.ones_like(b[0]), b[1]))
    learn = TrainLearner(model, DLs([(x, y)]), F.cross_entropy, lr=10., cbs=[ones])
    before = state(model)
    learn.show_image_batch(max_n=4)                          # the learner's own callbacks apply ...
    assert all(np.all(np.asarray(ax.get_images()[0].get_array()) == 1) for ax in image_axes())
    plt.close('all')
    zeros = BatchTransformCB(lambda b: (torch.zeros_like(b[0]), b[1]))
    learn.show_image_batch(max_n=4, cbs=[zeros])             # ... and so do the given ones, after them
    axs = image_axes()
    assert len(axs) == 4
    assert all(np.all(np.asarray(ax.get_images()[0].get_array()) == 0) for ax in axs)
    assert calls == []                                       # the model never ran ...
    after = state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)  # ... so no weight or BN statistic changed
    assert learn.cbs == [ones]                               # the extra callbacks are gone again


def test_show_image_batch_passes_kwargs():
    (x, y), = img_batches([6])
    learn = TrainLearner(tiny_cnn(), DLs([(x, y)]), F.cross_entropy, lr=0.1)
    learn.show_image_batch(max_n=6, ncols=6, imsize=1)
    fig = plt.gcf()
    assert len(image_axes(fig)) == 6
    assert tuple(fig.get_size_inches()) == (6., 1.)


def test_show_image_batch_own_titles():
    (x, y), = img_batches([4])
    learn = TrainLearner(tiny_cnn(), DLs([(x, y)]), F.cross_entropy, lr=0.1)
    learn.show_image_batch(max_n=3, titles=['a', 'b', 'c'])
    assert [ax.get_title() for ax in image_axes()] == ['a', 'b', 'c']


@pytest.mark.parametrize('what', ['show', 'capture'])
def test_no_lr_needed_to_look(what):
    batches = img_batches([4])
    learn = MomentumLearner(tiny_cnn(), DLs(batches), F.cross_entropy)  # lr=None: given to each fit instead
    if what == 'show':
        learn.show_image_batch(max_n=2)
        assert len(image_axes()) == 2
    else:
        preds, targs = learn.capture_preds()
        assert torch.equal(targs, batches[0][1])


def test_show_image_batch_empty_loader():
    learn = TrainLearner(tiny_cnn(), DLs([]), F.cross_entropy, lr=0.1)
    with pytest.raises(ValueError, match='no batch'): learn.show_image_batch()


# ---------------------------------------------------------------------------------------------------------------------
# CapturePreds and capture_preds

def test_capture_preds_in_order():
    batches = img_batches([4, 4, 2], seed=7)
    x = torch.cat([b[0] for b in batches]); y = torch.cat([b[1] for b in batches])
    model = tiny_cnn()
    learn = TrainLearner(model, DLs(img_batches([3]), batches), F.cross_entropy, lr=0.1)
    before = state(model)
    preds, targs = learn.capture_preds()
    assert preds.shape == (10, 10) and targs.shape == (10,)
    assert torch.equal(targs, y)
    with torch.no_grad(): expected = model.eval()(x)
    torch.testing.assert_close(preds, expected)
    assert all(torch.equal(v, state(model)[k]) for k, v in before.items())  # validation only: no training
    res = learn.capture_preds(inps=True)
    assert len(res) == 3
    torch.testing.assert_close(res[0], expected); assert torch.equal(res[1], y); assert torch.equal(res[2], x)


def test_capture_preds_keeps_the_training_history_and_prints_nothing(capsys):
    metrics, progress = MetricsCB(), ProgressCB()
    learn = TrainLearner(tiny_cnn(), DLs(img_batches([4, 4])), F.cross_entropy, lr=0.1, cbs=[metrics, progress])
    learn.fit(1)
    history = copy.deepcopy(metrics.history)
    capsys.readouterr()
    learn.capture_preds()
    assert metrics.history == history and capsys.readouterr().out == ''  # a quiet pass: no table, history untouched
    assert list(learn.cbs) == [metrics, progress]


def test_capture_preds_on_another_loader():
    train, other = img_batches([4]), img_batches([3, 2], seed=5)
    learn = TrainLearner(tiny_cnn(), DLs(train), F.cross_entropy, lr=0.1)
    preds, targs = learn.capture_preds(dl=other)
    assert torch.equal(targs, torch.cat([b[1] for b in other])) and preds.shape == (5, 10)
    assert learn.dls.valid is train  # the learner's own loaders are back


def test_capture_preds_uses_eval_mode():
    "BatchNorm in eval mode uses running stats: preds must match model.eval()(x), not train-mode batch statistics."
    batches = img_batches([5, 5], seed=8)
    x = torch.cat([b[0] for b in batches])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(128, 10))
    with torch.no_grad(): model[1].running_mean.fill_(0.3)
    learn = TrainLearner(model.train(), DLs(batches), F.cross_entropy, lr=0.1)
    preds, _ = learn.capture_preds()
    with torch.no_grad(): expected = copy.deepcopy(model).eval()(x)
    torch.testing.assert_close(preds, expected)


def test_capture_preds_callback_directly():
    batches = img_batches([3, 3], seed=9)
    cp = CapturePreds(inps=True)
    model = tiny_cnn()
    TrainLearner(model, DLs(batches), F.cross_entropy, lr=0.).fit(1, train=False, cbs=[cp])
    x = torch.cat([b[0] for b in batches])
    with torch.no_grad(): torch.testing.assert_close(cp.all_preds, model(x))
    assert torch.equal(cp.all_targs, torch.cat([b[1] for b in batches])) and torch.equal(cp.all_inps, x)
    cp2 = CapturePreds()
    TrainLearner(model, DLs(batches), F.cross_entropy, lr=0.).fit(1, train=False, cbs=[cp2])
    assert cp2.all_inps is None


def test_capture_preds_bf16_to_float():
    from miniai.accel import MixedPrecisionCB
    batches = img_batches([4], seed=10)
    learn = TrainLearner(tiny_cnn(), DLs(batches), F.cross_entropy, lr=0.1, cbs=[MixedPrecisionCB(torch.bfloat16)])
    preds, targs = learn.capture_preds()
    assert preds.dtype == torch.float32
    with torch.no_grad(): torch.testing.assert_close(preds, learn.model(batches[0][0]), atol=0.05, rtol=0.05)


def test_tta_average():
    batches = img_batches([4, 3], seed=11)
    x = torch.cat([b[0] for b in batches]); y = torch.cat([b[1] for b in batches])
    model = tiny_cnn(seed=1)
    learn = TrainLearner(model, DLs(batches), F.cross_entropy, lr=0.1)
    ap1, at1 = learn.capture_preds()
    ttacb = BatchTransformCB(partial(tfm_batch, tfm_x=TF.hflip), on_val=True)
    ap2, at2, inps = learn.capture_preds(cbs=[ttacb], inps=True)
    assert torch.equal(at1, y) and torch.equal(at2, y)
    assert torch.equal(inps, x.flip(-1))          # inputs as the model saw them
    assert ttacb not in learn.cbs
    ap = torch.stack([ap1, ap2]).mean(0)
    with torch.no_grad(): expected = (model(x) + model(x.flip(-1))) / 2
    torch.testing.assert_close(ap, expected)
    assert not torch.allclose(ap1, ap2)           # the flip really changed the predictions


# ---------------------------------------------------------------------------------------------------------------------
# rand_erase

@pytest.fixture
def count_patches(monkeypatch):
    "Record every patch `_rand_patch` hands out."
    got = []
    orig = augment._rand_patch
    def _rec(h, w, pct):
        res = orig(h, w, pct)
        got.append(res)
        return res
    monkeypatch.setattr(augment, '_rand_patch', _rec)
    return got


def test_rand_erase_range_and_changes(count_patches):
    torch.manual_seed(0)
    x = torch.rand(8, 1, 12, 12) * 3 - 1
    orig = x.clone()
    out = rand_erase(x, pct=0.3, max_num=3, min_num=1)
    assert out is x                                       # in place, like the lesson's
    assert out.min() >= orig.min() and out.max() <= orig.max()
    changed = (out != orig)
    assert changed.any()
    mask = torch.zeros(12, 12, dtype=torch.bool)
    for rs, cs in count_patches: mask[rs, cs] = True
    assert not changed[..., ~mask].any()                  # only inside the drawn patches
    assert changed.float().mean() > 0.5 * mask.float().mean()


def test_rand_erase_noise_statistics():
    "Erasing noise follows the batch's mean and std (before clamping): a large erased area keeps the batch stats."
    torch.manual_seed(1)
    x = torch.randn(64, 1, 20, 20) * 2 + 5
    m, s = x.mean().item(), x.std().item()
    out = rand_erase(x, pct=1., max_num=1, min_num=1)      # the whole image becomes noise
    assert abs(out.mean().item() - m) < 0.1 and abs(out.std().item() - s) < 0.15


def test_rand_erase_number_of_patches(count_patches):
    torch.manual_seed(2)
    counts = []
    for _ in range(200):
        n0 = len(count_patches)
        rand_erase(torch.randn(2, 1, 10, 10), pct=0.2, max_num=3, min_num=1)
        counts.append(len(count_patches) - n0)
    assert set(counts) == {1, 2, 3}
    counts = []
    for _ in range(100):
        n0 = len(count_patches)
        rand_erase(torch.randn(2, 1, 10, 10), pct=0.2, max_num=2)  # default min_num=0, as in the lesson
        counts.append(len(count_patches) - n0)
    assert set(counts) == {0, 1, 2}


def test_rand_erase_patch_size(count_patches):
    rand_erase(torch.randn(2, 1, 10, 20), pct=0.3, max_num=2, min_num=2)
    assert len(count_patches) == 2
    for rs, cs in count_patches:
        assert rs.stop - rs.start == 3 and cs.stop - cs.start == 6
        assert 0 <= rs.start and rs.stop <= 10 and 0 <= cs.start and cs.stop <= 20


@pytest.mark.parametrize('f', [rand_erase, rand_copy])
@pytest.mark.parametrize('pct', [-0.1, 1.5])
def test_bad_pct(f, pct):
    with pytest.raises(ValueError, match='pct'): f(torch.randn(2, 1, 8, 8), pct=pct)


@pytest.mark.parametrize('f', [rand_erase, rand_copy])
@pytest.mark.parametrize('mn,mx', [(3, 2), (-1, 2)])
def test_bad_num(f, mn, mx):
    with pytest.raises(ValueError, match='min_num'): f(torch.randn(2, 1, 8, 8), max_num=mx, min_num=mn)


def test_rand_erase_zero_patches_is_identity():
    x = torch.randn(2, 1, 8, 8)
    orig = x.clone()
    assert torch.equal(rand_erase(x, max_num=0), orig)
    assert torch.equal(rand_copy(x, max_num=0), orig)


@pytest.mark.parametrize('module,fn,kw,changes', [(RandErase, rand_erase, dict(pct=0.25, max_num=3, min_num=2), True),
                                               (RandCopy, rand_copy, dict(pct=0.3, max_num=2, min_num=1), False)])
def test_rand_modules_call_through(module, fn, kw, changes):
    m = module(**kw)
    assert (m.pct, m.max_num, m.min_num) == tuple(kw.values())
    x = torch.randn(4, 1, 8, 8)
    torch.manual_seed(3); a = m(x.clone())
    torch.manual_seed(3); b = fn(x.clone(), *kw.values())
    assert torch.equal(a, b) and (not changes or not torch.equal(a, x))


def test_erase_and_copy_in_batch_transform():
    "As the lesson uses them: after the crop-and-flip, inside `BatchTransformCB`, on training batches only."
    seen = []
    class Peek(Callback):
        order = 100
        def before_batch(self, learn): seen.append(learn.batch[0].clone())
    (x, y), = img_batches([8], seed=12)
    orig = x.clone()
    tfms = nn.Sequential(CropFlip(), RandErase(pct=0.3, min_num=1), RandCopy(pct=0.3, min_num=1))
    cb = BatchTransformCB(partial(tfm_batch, tfm_x=tfms), on_val=False)
    TrainLearner(tiny_cnn(), DLs([(x, y)], [(x.clone(), y)]), F.cross_entropy, lr=0.1, cbs=[cb, Peek()]).fit(1)
    assert len(seen) == 2
    assert seen[0].shape == orig.shape and not torch.equal(seen[0], orig)
    assert torch.equal(seen[1], orig)  # validation batches are left alone


# ---------------------------------------------------------------------------------------------------------------------
# Test-time views: shift, tta_views, tta_preds, accuracy (on the shipped Fashion-MNIST sample)

@pytest.fixture(scope='module')
def fmnist(): return fashion_mnist_dls(bs=256)


def test_shift_moves_pixels_and_fills():
    x = torch.arange(16.).reshape(1, 1, 4, 4)
    assert torch.equal(shift(x, 1, 0)[..., 1:, :], x[..., :-1, :])
    assert torch.equal(shift(x, 1, 0)[..., 0, :], torch.zeros(1, 1, 4))
    assert torch.equal(shift(x, 0, -2, fill=-1.)[..., :2], x[..., 2:])
    assert (shift(x, 0, -2, fill=-1.)[..., 2:] == -1).all()
    assert torch.equal(shift(x, -1, 1), shift(shift(x, -1, 0), 0, 1)[..., :, :])


def test_tta_views():
    assert len(tta_views('none')) == 1 and len(tta_views('flip')) == 2 and len(tta_views('flip+shift')) == 6
    x = torch.randn(2, 1, 5, 5)
    assert torch.equal(tta_views('flip')[1](x), x.flip(-1))
    views = tta_views('flip+shift')
    assert torch.equal(views[0](x), x) and torch.equal(views[1](x), x.flip(-1))
    assert [torch.equal(v(x), shift(x, dy, dx)) for v, (dy, dx) in zip(views[2:], [(1, 0), (-1, 0), (0, 1), (0, -1)])] == [True] * 4
    shifts = tta_views('shift')
    assert len(shifts) == 5 and torch.equal(shifts[0](x), x)
    assert [torch.equal(a(x), b(x)) for a, b in zip(shifts[1:], views[2:])] == [True] * 4  # the same shifts, no mirror
    with pytest.raises(ValueError, match="unknown kind 'rotate'"): tta_views('rotate')


def _learner(fmnist):
    learn = TrainLearner(resnet(first='conv', nfs=(8, 16, 32)), fmnist, F.cross_entropy, lr=0.01, cbs=[MetricsCB(), ProgressCB()])
    learn.fit(1, train=False)  # evaluation only; leaves a history to be kept
    return learn


def test_tta_preds_with_the_identity_view_is_the_softmax_of_capture_preds(fmnist):
    learn = _learner(fmnist)
    learn.model.eval()
    preds, targs = learn.capture_preds()
    probs, targs2 = tta_preds(learn, tta_views('none'))
    assert torch.equal(targs, targs2) and torch.equal(targs, fmnist.valid.y)
    torch.testing.assert_close(probs, preds.float().softmax(1))


def test_tta_preds_averages_the_views_and_keeps_callbacks_and_history(fmnist):
    learn = _learner(fmnist)
    cbs = list(learn.cbs)
    p_id, _ = learn.capture_preds()
    p_fl, _ = learn.capture_preds(cbs=[BatchTransformCB(lambda b: (b[0].flip(-1), b[1]), on_train=False)])
    probs, targs = tta_preds(learn, tta_views('flip'))
    torch.testing.assert_close(probs, (p_id.softmax(1) + p_fl.softmax(1)) / 2)
    learn2 = _learner(fmnist)
    h2 = list(learn2.metrics.history)
    tta_preds(learn2, tta_views('flip'))
    assert learn2.metrics.history == h2 and [type(c) for c in learn2.cbs] == [type(c) for c in cbs]
    assert accuracy(probs, targs) == (probs.argmax(1) == targs).float().mean().item()
    assert accuracy(torch.eye(3), torch.tensor([0, 1, 0])) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match='views is empty'): tta_preds(learn, [])
