"Recipes (miniai.recipes): valid, overridable on a copy, bad values refused, and the batch transforms they ask for."
import pytest
import torch

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
