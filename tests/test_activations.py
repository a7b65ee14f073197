"""Tests of `miniai.activations`: `set_seed`, `Hook`/`Hooks`, `HooksCallback`, the statistics hook `append_stats` with
`get_hist`/`get_min`, and `ActivationStats` with its three plots.

Everything runs on hand-made tensors and tiny models on synthetic batches, on the CPU.
"""
import os


import math, random
from types import SimpleNamespace

import fastcore.all as fc
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from miniai.learner import *  # first: it silences torcheval's import-time deprecation warning
from miniai.activations import *
from conftest import DLs


# ---------------------------------------------------------------------------------------------------------------------
# Helpers



def reg_batches(n, bs=4, ni=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(bs, ni, generator=g), torch.randn(bs, 1, generator=g)) for _ in range(n)]


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))


def img_batches(n, bs=4, seed=0):
    "`n` classification batches of `(bs, 1, 8, 8)` images with labels in 0..9."
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(bs, 1, 8, 8, generator=g), torch.randint(0, 10, (bs,), generator=g)) for _ in range(n)]


def tiny_cnn(seed=0):
    "Three convolutions (8x8 -> 4x4 -> 2x2 -> 1x1) to 10 logits."
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, 2, 1), nn.ReLU(), nn.Conv2d(4, 8, 3, 2, 1), nn.ReLU(),
                         nn.Conv2d(8, 10, 3, 2, 1), nn.Flatten())


def raiser(event, exc):
    cb = Callback()
    def _f(learn): raise exc()
    setattr(cb, event, _f)
    return cb


def n_hooks(model): return sum(len(m._forward_hooks) for m in model.modules())


# ---------------------------------------------------------------------------------------------------------------------
# set_seed

def draws(): return torch.rand(3).tolist(), random.random(), np.random.rand(2).tolist()


def test_set_seed_repeats_torch_random_and_numpy_draws():
    set_seed(42); a = draws()
    set_seed(42); b = draws()
    set_seed(43); c = draws()
    assert a == b
    for x, y in zip(a, c): assert x != y  # each of the three generators depends on the seed


@pytest.fixture
def restore_determinism(monkeypatch):
    monkeypatch.delenv('CUBLAS_WORKSPACE_CONFIG', raising=False)  # restored (absent or not) after the test
    old = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    yield
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = old


def test_set_seed_deterministic_flag_switches_on_and_off(restore_determinism):
    torch.backends.cudnn.benchmark = True
    set_seed(1, deterministic=True)
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert os.environ.get('CUBLAS_WORKSPACE_CONFIG')  # cuBLAS needs it for repeatable results
    a = torch.rand(2).tolist()
    set_seed(1)
    assert not torch.are_deterministic_algorithms_enabled()
    assert not torch.backends.cudnn.deterministic
    assert torch.rand(2).tolist() == a  # the seed is the same either way


# ---------------------------------------------------------------------------------------------------------------------
# Hook and Hooks

def test_hook_calls_f_with_hook_module_input_output_and_remove_stops_it():
    lin, calls = nn.Linear(2, 3), []
    h = Hook(lin, lambda *args: calls.append(args))
    x = torch.randn(4, 2)
    out = lin(x)
    assert len(calls) == 1
    hook, mod, inp, outp = calls[0]
    assert hook is h and mod is lin and outp is out
    assert isinstance(inp, tuple) and len(inp) == 1 and inp[0] is x
    assert h.name == 'Linear'
    h.remove()
    lin(x)
    assert len(calls) == 1 and not lin._forward_hooks
    h.remove()  # a second remove is harmless
    assert not lin._forward_hooks


def test_hook_can_keep_state_on_itself():
    def count(hook, mod, inp, outp): hook.n = getattr(hook, 'n', 0) + 1
    lin = nn.Linear(2, 2)
    h = Hook(lin, count)
    for _ in range(3): lin(torch.zeros(1, 2))
    assert h.n == 3
    h.remove()


def test_hooks_context_manager_removes_all_hooks_on_exit():
    model, seen = mlp(), []
    x = torch.randn(2, 3)
    with Hooks(model, lambda h, m, i, o: seen.append(m)) as hooks:
        assert isinstance(hooks, Hooks) and len(hooks) == 3
        assert n_hooks(model) == 3
        model(x)
    assert seen == list(model)
    assert all(not m._forward_hooks for m in model.modules())
    model(x)
    assert len(seen) == 3


def test_hooks_context_manager_removes_all_hooks_when_the_body_raises():
    model = mlp()
    with pytest.raises(ZeroDivisionError):  # the error is not swallowed
        with Hooks(model, lambda *a: None):
            assert n_hooks(model) == 3
            1/0
    assert all(not m._forward_hooks for m in model.modules())


def test_hooks_delitem_removes_that_hook_only():
    model, seen = mlp(), []
    hooks = Hooks(model, lambda h, m, i, o: seen.append(m))
    middle = hooks[1]
    del hooks[1]
    assert len(hooks) == 2 and all(h is not middle for h in hooks)
    assert not model[1]._forward_hooks and model[0]._forward_hooks and model[2]._forward_hooks
    model(torch.randn(2, 3))
    assert seen == [model[0], model[2]]
    del hooks[-2:]  # slices too
    assert len(hooks) == 0 and n_hooks(model) == 0
    hooks.remove()


# ---------------------------------------------------------------------------------------------------------------------
# HooksCallback

def fit_with(cb, model=None, n_train=2, n_valid=1, extra=()):
    model = mlp() if model is None else model
    learn = Learner(model, DLs(reg_batches(n_train, seed=1), reg_batches(n_valid, seed=2)), F.mse_loss,
                    cbs=[TrainCB(), cb, *extra])
    learn.fit(1)
    return learn


def recorder():
    calls = []
    def f(hook, mod, inp, outp): calls.append((mod, mod.training))
    return f, calls


def test_hookscallback_hooks_the_modules_mod_filter_selects_in_training_only_by_default():
    model = mlp()
    f, calls = recorder()
    cb = HooksCallback(f, mod_filter=fc.risinstance(nn.Linear))
    fit_with(cb, model)
    assert calls == [(model[0], True), (model[2], True)]*2  # 2 training batches; the validation batch is not hooked
    assert len(cb) == 2 and [h.name for h in cb] == ['Linear', 'Linear']
    assert n_hooks(model) == 0  # removed after the fit


@pytest.mark.parametrize('on_train,on_valid,expected', [(True, False, [True]*2), (False, True, [False]),
                                                        (True, True, [True, True, False]), (False, False, [])])
def test_hookscallback_on_train_and_on_valid(on_train, on_valid, expected):
    model = mlp()
    f, calls = recorder()
    fit_with(HooksCallback(f, mod_filter=fc.risinstance(nn.ReLU), on_train=on_train, on_valid=on_valid), model)
    assert [m for m, _ in calls] == [model[1]]*len(expected)
    assert [t for _, t in calls] == expected


def test_hookscallback_mods_overrides_the_filter():
    model = mlp()
    f, calls = recorder()
    cb = HooksCallback(f, mod_filter=fc.risinstance(nn.ReLU), mods=[model[2]])
    fit_with(cb, model)
    assert [m for m, _ in calls] == [model[2]]*2


def test_hookscallback_default_filter_hooks_every_module():
    model = mlp()
    cb = HooksCallback(lambda *a: None)
    fit_with(cb, model)
    assert len(cb) == len(list(model.modules())) == 4  # the Sequential itself and its 3 children


def test_hookscallback_removes_its_hooks_when_the_fit_raises():
    model = mlp()
    f, calls = recorder()
    cb = HooksCallback(f, mod_filter=fc.risinstance(nn.Linear))
    learn = Learner(model, DLs(reg_batches(2), reg_batches(1)), F.mse_loss, cbs=[TrainCB(), cb, raiser('after_loss', KeyError)])
    with pytest.raises(KeyError): learn.fit(1)
    assert len(calls) == 2  # the hooks did run before the error
    assert len(cb) == 2 and n_hooks(model) == 0
    model(torch.randn(2, 3))
    assert len(calls) == 2


# ---------------------------------------------------------------------------------------------------------------------
# append_stats, get_hist, get_min

# |x| = 12 and 11 lie beyond 10: not counted. Bins are 0.25 wide: 0, 0.1, 0.2 -> bin 0; 0.3 -> 1; 2.6 -> 10; 3 -> 12; 9.9 -> 39
HAND = torch.tensor([-12., -3., -0.1, 0., 0.2, 0.3, 2.6, 9.9, 11.])
HAND_HIST = [0]*40
for i, n in {0: 3, 1: 1, 10: 1, 12: 1, 39: 1}.items(): HAND_HIST[i] = n


def test_append_stats_records_mean_std_and_a_40_bin_histogram_of_abs_values():
    hook = SimpleNamespace()
    append_stats(hook, None, None, HAND)
    means, stds, hists = hook.stats
    assert means == [pytest.approx(HAND.mean().item())] and stds == [pytest.approx(HAND.std().item())]
    assert len(hists) == 1 and isinstance(hists[0], list) and len(hists[0]) == 40
    assert hists[0] == HAND_HIST
    assert sum(hists[0]) == 7  # the two values beyond 10 are left out
    append_stats(hook, None, None, torch.full((2, 3), 0.6))
    assert len(means) == len(stds) == len(hists) == 2
    assert means[1] == pytest.approx(0.6, abs=1e-6) and stds[1] == pytest.approx(0., abs=1e-6) and hists[1][2] == 6


def test_append_stats_keeps_plain_python_numbers_not_tensors():
    hook = SimpleNamespace()
    x = torch.randn(3, 4, requires_grad=True)*2
    append_stats(hook, None, None, x)
    means, stds, hists = hook.stats
    assert type(means[0]) is float and type(stds[0]) is float
    assert all(isinstance(c, (int, float)) for c in hists[0])


def stats_hook(*tensors):
    h = SimpleNamespace()
    for t in tensors: append_stats(h, None, None, t)
    return h


def test_get_hist_is_40_by_n_batches_of_log1p_counts():
    h = stats_hook(HAND, torch.zeros(5), torch.full((3,), 9.95))
    hist = get_hist(h)
    assert hist.shape == (40, 3)
    assert torch.allclose(hist[:, 0], torch.tensor(HAND_HIST).float().log1p())
    assert hist[0, 1] == pytest.approx(math.log1p(5)) and hist[1:, 1].abs().sum() == 0
    assert hist[39, 2] == pytest.approx(math.log1p(3)) and hist[:39, 2].abs().sum() == 0


def test_get_min_is_the_fraction_in_the_lowest_bins():
    h = stats_hook(HAND, torch.zeros(5), torch.full((3,), 9.95))
    assert get_min(h).tolist() == pytest.approx([3/7, 1., 0.])
    assert get_min(h, nbins=2).tolist() == pytest.approx([4/7, 1., 0.])
    assert get_min(stats_hook(torch.full((4,), 20.))).tolist() == [0.]  # nothing counted: 0, not nan


# ---------------------------------------------------------------------------------------------------------------------
# ActivationStats

@pytest.fixture(scope='module')
def fitted():
    "A tiny CNN fitted for 3 training batches (and 1 validation batch) with `ActivationStats` on its convolutions."
    model = tiny_cnn()
    convs = [m for m in model if isinstance(m, nn.Conv2d)]
    ref = {m: [] for m in convs}  # our own record of the training-mode outputs' means and stds
    def _ref(mod, inp, outp):
        if mod.training: ref[mod].append((outp.mean().item(), outp.std().item()))
    handles = [m.register_forward_hook(_ref) for m in convs]
    astats = ActivationStats(fc.risinstance(nn.Conv2d))
    learn = Learner(model, DLs(img_batches(3, seed=1), img_batches(1, seed=2)), F.cross_entropy, lr=0.1,
                    cbs=[TrainCB(), astats])
    learn.fit(1)
    for h in handles: h.remove()
    return SimpleNamespace(model=model, convs=convs, astats=astats, ref=ref)


def test_activationstats_records_stats_for_each_selected_module(fitted):
    hooks = list(fitted.astats)
    assert len(hooks) == 3 and [h.name for h in hooks] == ['Conv2d']*3
    for h, m in zip(hooks, fitted.convs):
        means, stds, hists = h.stats
        assert len(means) == len(stds) == len(hists) == 3  # training batches only
        assert means == pytest.approx([a for a, _ in fitted.ref[m]], abs=1e-6)
        assert stds == pytest.approx([s for _, s in fitted.ref[m]], abs=1e-6)
        assert all(len(hh) == 40 for hh in hists)
    assert n_hooks(fitted.model) == 0


def test_activationstats_keeps_no_tensors(fitted):
    for h in fitted.astats:
        assert not any(isinstance(v, torch.Tensor) for v in vars(h).values())
        means, stds, hists = h.stats
        assert all(type(v) is float for v in means + stds)
        assert all(type(hh) is list and all(isinstance(c, (int, float)) for c in hh) for hh in hists)


def test_color_dim_draws_one_image_per_module(fitted):
    plt.close('all')
    fitted.astats.color_dim()
    fig = plt.gcf()
    axs = [ax for ax in fig.axes if ax.images]
    assert len(axs) == 3
    for i, ax in enumerate(axs):
        assert ax.images[0].get_array().shape == (40, 3)
        assert ax.get_title() == f'{i}: Conv2d'


def test_dead_chart_draws_one_line_per_module(fitted):
    plt.close('all')
    fitted.astats.dead_chart()
    fig = plt.gcf()
    axs = [ax for ax in fig.axes if ax.lines]
    assert len(axs) == 3
    for i, (ax, h) in enumerate(zip(axs, fitted.astats)):
        y = ax.lines[0].get_ydata()
        assert len(y) == 3 and np.allclose(y, get_min(h).numpy())
        assert ax.get_ylim() == (0, 1) and ax.get_title() == f'{i}: Conv2d'


def test_plot_stats_draws_means_and_stds_of_each_module(fitted):
    plt.close('all')
    fitted.astats.plot_stats()
    fig = plt.gcf()
    assert len(fig.axes) == 2
    means_ax, stds_ax = fig.axes
    assert means_ax.get_title() == 'Means' and stds_ax.get_title() == 'Stdevs'
    hooks = list(fitted.astats)
    assert [list(l.get_ydata()) for l in means_ax.lines] == [h.stats[0] for h in hooks]
    assert [list(l.get_ydata()) for l in stds_ax.lines] == [h.stats[1] for h in hooks]


def test_activationstats_single_module_plots():
    astats = ActivationStats(lambda m: isinstance(m, nn.Conv2d) and m.out_channels == 10)
    Learner(tiny_cnn(), DLs(img_batches(2), img_batches(1)), F.cross_entropy, cbs=[TrainCB(), astats]).fit(1)
    assert len(astats) == 1
    for plot in (astats.color_dim, astats.dead_chart):
        plt.close('all')
        plot()
        assert len([ax for ax in plt.gcf().axes if ax.images or ax.lines]) == 1


@pytest.mark.parametrize('plot', ['color_dim', 'dead_chart', 'plot_stats'])
def test_plots_before_any_fit_raise_a_clear_error(plot):
    with pytest.raises(ValueError, match='fit'): getattr(ActivationStats(fc.risinstance(nn.Conv2d)), plot)()


def test_plots_raise_when_the_filter_selects_nothing():
    astats = ActivationStats(fc.risinstance(nn.LSTM))
    Learner(tiny_cnn(), DLs(img_batches(1), img_batches(1)), F.cross_entropy, cbs=[TrainCB(), astats]).fit(1)
    assert len(astats) == 0
    with pytest.raises(ValueError, match='mod_filter'): astats.plot_stats()


@pytest.mark.parametrize('where', ['init', 'fit'])
def test_one_activation_stats_passed_alone_is_not_dropped(where):
    "A hook-holding callback is iterable; passed alone as `cbs` it must join the fit, not be unpacked into nothing."
    astats = ActivationStats(fc.risinstance(nn.Conv2d))
    kw = dict(cbs=astats) if where == 'init' else {}
    learn = TrainLearner(tiny_cnn(), DLs(img_batches(3)), F.cross_entropy, lr=0.01, **kw)
    learn.fit(1, **({} if where == 'init' else dict(cbs=astats)))
    assert [len(h.stats[0]) for h in astats] == [3, 3, 3]  # three convs, three training batches each
