"Recipes (miniai.recipes): valid, overridable on a copy, bad values refused, and the batch transforms they ask for."
import pytest
import torch
import torch.nn.functional as F

from miniai.datasets import DataLoaders
from miniai.learner import Callback, CancelEpochException, Learner, TrainCB

from miniai.recipes import *


def test_recipes_are_valid_and_overridable():
    assert {'lesson5', 'lesson20', 'lesson50', 'beyond5', 'beyond20', 'beyond50', 'fast93'} <= set(RECIPES)
    assert get_recipe('lesson50').erase and get_recipe('lesson20').aug == 'batch'
    r = get_recipe('beyond5', epochs=2, bs=None, lr=0.02)
    assert (r.epochs, r.bs, r.lr) == (2, 256, 0.02) and RECIPES['beyond5'].epochs == 5  # the table itself is unchanged
    assert get_recipe(r) == r
    get_recipe('lesson5').model['head'] = 'pool'  # a copy: the table's recipes share nothing with what get_recipe returns
    assert RECIPES['lesson5'].model['head'] == RECIPES['lesson20'].model['head'] == 'flatten'


@pytest.mark.parametrize('kwargs,err,msg', [
    (dict(epochs=0), ValueError, 'epochs must be'), (dict(bs=2.5), ValueError, 'bs must be'), (dict(epochs=True), ValueError, 'epochs must be'),
    (dict(lr=-1), ValueError, 'lr must be'), (dict(lr=float('nan')), ValueError, 'lr must be'), (dict(aug='both'), ValueError, 'aug must be'),
    (dict(tta='rotate'), ValueError, 'unknown kind'), (dict(label_smoothing=1.5), ValueError, 'label_smoothing'),
    (dict(ema=1.), ValueError, r'ema must be a number in \[0, 1\)'), (dict(ema=True), ValueError, 'ema must be'), (dict(ema='0.9'), ValueError, 'ema must be'),
    (dict(lrate=1.), TypeError, 'not a Recipe field'), (dict(lr=True), ValueError, 'lr must be'), (dict(wd=-0.1), ValueError, 'wd must be'),
    (dict(pad=-1), ValueError, 'pad must be'), (dict(model=dict(depth=3)), ValueError, "model has depth, which `resnet` doesn't take")])
def test_bad_recipe_values(kwargs, err, msg):
    with pytest.raises(err, match=msg): get_recipe('beyond5', **kwargs)


def test_unknown_recipe_lists_the_known_ones():
    with pytest.raises(ValueError, match='lesson5, lesson20'): get_recipe('lesson21')


def test_augment_cbs():
    assert augment_cbs(get_recipe('lesson5')) == []
    (cb,) = augment_cbs(Recipe('crop, flip and erase', dict(), aug='image', pad=2, erase=True))
    assert cb.on_train and not cb.on_val
    tfms = cb.tfm.keywords['tfm_x']
    assert [type(t).__name__ for t in tfms] == ['CropFlip', 'RandErase'] and tfms[0].per_image and tfms[0].pad == 2
    (cb,) = augment_cbs(get_recipe('lesson20'))
    assert not cb.tfm.keywords['tfm_x'][0].per_image


def test_pad_0_means_flips_only():
    (cb,) = augment_cbs(get_recipe('beyond5'))
    x = torch.randn(64, 1, 6, 6)
    out = cb.tfm.keywords['tfm_x'](x)
    same, mirrored = [(out == v).flatten(1).all(1) for v in (x, x.flip(-1))]
    assert (same | mirrored).all() and same.any() and mirrored.any()  # each image kept or mirrored whole, never moved


# ---------------------------------------------------------------------------------------------------------------------
# EMACB: an exponential moving average of the weights

class _Watch(Callback):
    "Records the weights after each step and at the start of each validation pass; can cancel validation passes."
    def __init__(self, cancel=False): self.steps, self.valid, self.cancel = [], [], cancel
    def after_step(self, learn): self.steps.append(next(learn.model.parameters()).detach().clone())
    def before_batch(self, learn):
        if learn.training or learn.iter: return
        self.valid.append(next(learn.model.parameters()).detach().clone())
        if self.cancel: raise CancelEpochException()


def _fit(decay, cancel=False, epochs=2, model=None):
    torch.manual_seed(0)
    dls = DataLoaders(*[[(torch.randn(4, 3), torch.randn(4, 1)) for _ in range(3)]] * 2)
    model = model or torch.nn.Linear(3, 1)
    start, ema, watch = next(model.parameters()).detach().clone(), EMACB(decay), _Watch(cancel)
    Learner(model, dls, F.mse_loss, lr=0.1, cbs=[TrainCB(), ema, watch]).fit(epochs)
    return model, start, ema, watch


def _expected(start, steps, decay):
    avg, out = start, []
    for w in steps: avg = decay * avg + (1 - decay) * w; out.append(avg)
    return out


@pytest.mark.parametrize('cancel', [False, True])
def test_ema_validates_with_the_average_and_trains_on(cancel):
    model, start, ema, watch = _fit(0.7, cancel)
    exp = _expected(start, watch.steps, 0.7)
    assert len(watch.steps) == 6 and len(watch.valid) == 2
    torch.testing.assert_close(watch.valid[0], exp[2]); torch.testing.assert_close(watch.valid[1], exp[5])
    torch.testing.assert_close(next(model.parameters()), exp[5])  # the average stays in the model after the fit


def test_ema_second_epoch_trains_from_the_live_weights():  # also after the validation pass swapped the average in
    with_ema = _fit(0.9)[3].steps
    torch.manual_seed(0)  # the same run without the average: its steps must be the same ones
    dls = DataLoaders(*[[(torch.randn(4, 3), torch.randn(4, 1)) for _ in range(3)]] * 2)
    watch = _Watch()
    Learner(torch.nn.Linear(3, 1), dls, F.mse_loss, lr=0.1, cbs=[TrainCB(), watch]).fit(2)
    for a, b in zip(with_ema, watch.steps): torch.testing.assert_close(a, b)


def test_ema_averages_batchnorm_statistics_and_copies_counters():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 1))
    _, _, ema, _ = _fit(0.5, model=model)
    assert ema.avg['1.num_batches_tracked'] == 6
    torch.testing.assert_close(model[1].running_mean, ema.avg['1.running_mean'])
    assert not torch.equal(ema.avg['1.running_mean'], torch.zeros(4))


@pytest.mark.parametrize('decay', [0, 1, 1.5, -0.1, True, '0.9', None])
def test_ema_bad_decay(decay):
    with pytest.raises(ValueError, match='decay must be a number between 0 and 1'): EMACB(decay)
