"Recipes, test-time views and the `miniai-train` command (miniai.beyond), on the shipped sample."
import json, shutil, subprocess
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from miniai.beyond import *
from miniai.beyond import main, parse_args
from miniai.datasets import fashion_mnist_dls
from miniai.init import BatchTransformCB
from miniai.learner import MetricsCB, ProgressCB, TrainLearner
from miniai.resnet import summary  # noqa: F401  (patches Learner.summary)


@pytest.fixture(scope='module')
def dls(): return fashion_mnist_dls(bs=256)


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
    with pytest.raises(RuntimeError): resnet(head='flatten')(torch.randn(3, 1, 64, 64))  # a 2x2 grid left


def test_resnet_dropout_adds_a_layer():
    assert any(isinstance(m, torch.nn.Dropout) for m in resnet(drop=0.2))
    assert not any(isinstance(m, torch.nn.Dropout) for m in resnet())


@pytest.mark.parametrize('kwargs,msg', [(dict(head='avg'), "head must be 'pool'"), (dict(first='stem'), "first must be 'block'"),
                                        (dict(nfs=(16,)), 'at least two')])
def test_resnet_bad_arguments(kwargs, msg):
    with pytest.raises(ValueError, match=msg): resnet(**kwargs)


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


def _learner(dls):
    learn = TrainLearner(resnet(first='conv', nfs=(8, 16, 32)), dls, F.cross_entropy, lr=0.01, cbs=[MetricsCB(), ProgressCB()])
    learn.fit(1, train=False)  # evaluation only; leaves a history to be kept
    return learn


def test_tta_preds_with_the_identity_view_is_the_softmax_of_capture_preds(dls):
    learn = _learner(dls)
    learn.model.eval()
    preds, targs = learn.capture_preds()
    probs, targs2 = tta_preds(learn, tta_views('none'))
    assert torch.equal(targs, targs2) and torch.equal(targs, dls.valid.y)
    torch.testing.assert_close(probs, preds.float().softmax(1))


def test_tta_preds_averages_the_views_and_keeps_callbacks_and_history(dls):
    learn = _learner(dls)
    cbs = list(learn.cbs)
    p_id, _ = learn.capture_preds()
    p_fl, _ = learn.capture_preds(cbs=[BatchTransformCB(lambda b: (b[0].flip(-1), b[1]), on_train=False)])
    probs, targs = tta_preds(learn, tta_views('flip'))
    torch.testing.assert_close(probs, (p_id.softmax(1) + p_fl.softmax(1)) / 2)
    learn2 = _learner(dls)
    h2 = list(learn2.metrics.history)
    tta_preds(learn2, tta_views('flip'))
    assert learn2.metrics.history == h2 and [type(c) for c in learn2.cbs] == [type(c) for c in cbs]
    assert accuracy(probs, targs) == (probs.argmax(1) == targs).float().mean().item()
    assert accuracy(torch.eye(3), torch.tensor([0, 1, 0])) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match='views is empty'): tta_preds(learn, [])


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


def test_set_precision(dls):
    learn = TrainLearner(resnet(), dls, F.cross_entropy)
    with pytest.raises(ValueError, match='precision must be one of auto, bf16'): set_precision(learn, 'int8')
    names = lambda l: sorted(type(c).__name__ for c in l.cbs)
    assert names(set_precision(TrainLearner(resnet(), dls, F.cross_entropy), 'fp32')) == ['ChannelsLastCB']
    for prec, dtype in [('bf16', torch.bfloat16), ('fp16', torch.float16), ('auto', None)]:
        learn = set_precision(TrainLearner(resnet(), dls, F.cross_entropy), prec)
        assert names(learn) == ['ChannelsLastCB', 'MixedPrecisionCB']
        assert next(c for c in learn.cbs if type(c).__name__ == 'MixedPrecisionCB').dtype == dtype
    assert used_dtype(TrainLearner(resnet(), dls, F.cross_entropy)) == 'float32'


def test_label_smoothing_reaches_the_loss(dls):
    learn = make_learner(Recipe('smoothed', dict(), label_smoothing=0.1), dls, progress=False)
    assert learn.loss_func.keywords == {'label_smoothing': 0.1}
    assert make_learner(get_recipe('lesson5'), dls, progress=False).loss_func is F.cross_entropy


def test_train_writes_model_metrics_and_plot(tmp_path):
    learn, res = train('fast93', epochs=1, out=tmp_path/'run', progress=False)
    saved = json.loads((tmp_path/'run'/'metrics.json').read_text())
    assert saved['accuracy'] == res['accuracy'] == res['history'][-1]['accuracy']
    assert [h['train'] for h in saved['history']] == [True, False]
    assert saved['config']['epochs'] == 1 and saved['recipe'] == 'fast93' and 'shipped sample' in saved['data']
    assert saved['accuracy'] > 0.3 and saved['tta'] == 'flip' and saved['dtype'] in ('bfloat16', 'float32')
    # the saved weights give back the saved test-time accuracy
    learn2 = make_learner(get_recipe('fast93', epochs=1), learn.dls, progress=False)
    learn2.model.load_state_dict(torch.load(tmp_path/'run'/'model.pth', weights_only=True))
    assert accuracy(*tta_preds(learn2, tta_views('flip'))) == pytest.approx(saved['tta_accuracy'], abs=2e-3)
    assert (tmp_path/'run'/'plot.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_train_is_repeatable_with_a_seed():
    r = replace(get_recipe('fast93'), model=dict(first='conv', nfs=(8, 16, 32)), epochs=1, tta='none')
    losses = [train(r, seed=s, progress=False)[1]['history'][-1]['loss'] for s in (3, 3, 4)]
    assert losses[0] == losses[1] != losses[2]


def test_save_run_refuses_a_file(tmp_path, dls):
    f = tmp_path/'file'; f.write_text('x')
    learn = TrainLearner(resnet(nfs=(8, 16)), dls, F.cross_entropy)
    res = dict(recipe='x', accuracy=0.5, history=[dict(loss=1., accuracy=0.4, epoch=0, train=True), dict(loss=1., accuracy=0.5, epoch=0, train=False)])
    with pytest.raises(NotADirectoryError, match='it is a file'): save_run(learn, res, f)
    save_run(learn, res, tmp_path/'new'/'folder')
    assert sorted(p.name for p in (tmp_path/'new'/'folder').iterdir()) == ['metrics.json', 'model.pth', 'plot.png']


def test_train_refuses_loaders_with_another_batch_size(dls):
    with pytest.raises(ValueError, match="batch size is 256 but the recipe says 1024"): train('lesson5', dls=dls, progress=False)


@pytest.mark.parametrize('argv,msg', [
    (['--epochs', '0'], '--epochs must be at least 1'), (['--epochs', 'two'], '--epochs must be a whole number'),
    (['--bs', '2.5'], '--bs must be a whole number'), (['--lr', '0'], '--lr must be greater than 0'),
    (['--lr', 'inf'], '--lr must be finite'), (['--lr', 'fast'], '--lr must be a number'),
    (['--seed', '-1'], '--seed must be at least 0'), (['--precision', 'int8'], "invalid choice: 'int8'"),
    (['lesson7'], "invalid choice: 'lesson7'"), (['--threads', '0'], '--threads must be at least 1'),
    (['--data', '/nonexistent/folder'], 'is not a folder'), (['--seed', str(2**32)], '--seed must be at most 4294967295'),
    (['--data', '/tmp', '--quick'], 'not both'), (['--out', '/proc/miniai-run'], "can't create that folder")])
def test_cli_bad_values(argv, msg, capsys):
    with pytest.raises(SystemExit) as e: parse_args(argv)
    assert e.value.code == 2 and msg in capsys.readouterr().err


def test_cli_out_must_not_be_a_file(tmp_path, capsys):
    f = tmp_path/'f'; f.write_text('x')
    with pytest.raises(SystemExit): parse_args(['--out', str(f)])
    assert 'is a file' in capsys.readouterr().err


def test_cli_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # parse_args creates the output folder
    a = parse_args([])
    assert (a.recipe, a.precision, a.seed, str(a.out), a.epochs, a.bars) == ('beyond5', 'auto', 42, 'runs/beyond5', None, None)
    assert parse_args(['--no-bars']).bars is False


def test_cli_trains_and_reports(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv('MINIAI_QUICK', '1')  # main sets it for --quick; monkeypatch restores it afterwards
    assert main(['fast93', '--quick', '--epochs', '1', '--bs', '512', '--lr', '0.02', '--seed', '1', '--out', str(tmp_path),
                 '--no-bars']) is None
    out = capsys.readouterr().out
    assert 'test accuracy' in out and 'with flip TTA' in out and 'wrote' in out
    assert 'accuracy        loss       epoch       train' in out  # the per-epoch table, without bars
    saved = json.loads((tmp_path/'metrics.json').read_text())
    assert (saved['config']['bs'], saved['config']['lr'], saved['seed'], saved['recipe'], saved['config']['epochs']) == (512, 0.02, 1, 'fast93', 1)
    assert len(saved['history']) == 2 and 'shipped sample' in saved['data']


@pytest.mark.skipif(shutil.which('miniai-train') is None, reason='the package is not installed (pip install -e .)')
def test_console_script_is_installed():
    r = subprocess.run(['miniai-train', '--help'], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and 'beyond20' in r.stdout and 'lesson50' in r.stdout
    r = subprocess.run(['miniai-train', '--epochs', '-3'], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and '--epochs must be at least 1' in r.stderr
