"Tests for miniai.sgd: from-scratch optimizers and schedulers against PyTorch's, and the scheduler/recorder/annealer callbacks."
import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn, optim
from torch.optim import lr_scheduler

from miniai.datasets import DataLoaders
from miniai.learner import Callback, TrainLearner
from miniai.sgd import (SGD, Adam, AutoAnnealCB, BaseSchedCB, BatchSchedCB, CosineSched, EpochSchedCB, HasLearnCB,
                        Momentum, OneCycleSched, RecorderCB, RMSProp)


# ---------------------------------------------------------------- helpers

def weights_after(opt_func, n=4, seed=0):
    "Weights of a small linear regression after `n` steps of `opt_func(params)`."
    torch.manual_seed(seed)
    model, x, y = nn.Linear(5, 3), torch.randn(16, 5), torch.randn(16, 3)
    opt = opt_func(model.parameters())
    for _ in range(n):
        F.mse_loss(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    return [p.detach().clone() for p in model.parameters()]


def assert_same(ours, theirs, atol=1e-6):
    for a, b in zip(weights_after(ours), weights_after(theirs)): torch.testing.assert_close(a, b, atol=atol, rtol=0)


def two_group_opt(opt_func, **kw):
    m = nn.Linear(2, 2)
    return opt_func([{'params': [m.weight]}, {'params': [m.bias], 'lr': 0.5}], lr=0.1, **kw)


def mom_of(g): return g['betas'][0] if 'betas' in g else g.get('momentum')


def trace(sched_func, opt, steps):
    "(lrs, momentums) of every group, at creation and after each of `steps` steps."
    sched, out = sched_func(opt), []
    for i in range(steps + 1):
        out.append(([float(v) for v in sched.get_last_lr()], [mom_of(g) for g in opt.param_groups],
                    [g['lr'] for g in opt.param_groups]))
        if i < steps:
            opt.step()
            sched.step()
    return out


def assert_same_schedule(ours, theirs, steps, make_opt):
    a, b = trace(ours, make_opt(), steps), trace(theirs, make_opt(), steps)
    assert len(a) == len(b) == steps + 1
    for i, ((lr1, m1, g1), (lr2, m2, g2)) in enumerate(zip(a, b)):
        assert lr1 == pytest.approx(lr2, abs=1e-6, rel=0), f'lr at step {i}'
        assert g1 == pytest.approx(g2, abs=1e-6, rel=0), f'group lr at step {i}'
        if m2[0] is not None: assert m1 == pytest.approx(m2, abs=1e-6, rel=0), f'momentum at step {i}'


class ListDL(list):
    "A list of batches, standing in for a DataLoader."


def tiny_dls(n_train=5, n_valid=3, bs=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    def batches(n): return ListDL((torch.randn(bs, 4, generator=g), torch.randint(0, 3, (bs,), generator=g)) for _ in range(n))
    return DataLoaders(batches(n_train), batches(n_valid))


def tiny_learner(opt_func=optim.SGD, lr=0.1, dls=None, cbs=()):
    torch.manual_seed(0)
    return TrainLearner(nn.Linear(4, 3), dls or tiny_dls(), F.cross_entropy, lr=lr, cbs=list(cbs), opt_func=opt_func)


# ---------------------------------------------------------------- optimizers

def test_sgd_with_weight_decay_matches_torch():
    assert_same(partial(SGD, lr=0.1, wd=0.01), partial(optim.SGD, lr=0.1, weight_decay=0.01))
    assert_same(partial(SGD, lr=0.1), partial(optim.SGD, lr=0.1))


def test_momentum_matches_dampened_torch_sgd():
    assert_same(partial(Momentum, lr=0.1, mom=0.9), partial(optim.SGD, lr=0.1, momentum=0.9, dampening=0.9))
    assert_same(partial(Momentum, lr=0.05, mom=0.5), partial(optim.SGD, lr=0.05, momentum=0.5, dampening=0.5))


def test_adam_matches_torch_adam_and_adamw():
    assert_same(partial(Adam, lr=0.01, eps=1e-5), partial(optim.Adam, lr=0.01, betas=(0.9, 0.99), eps=1e-5))
    assert_same(partial(Adam, lr=0.01, wd=0.1, beta1=0.8, beta2=0.999, eps=1e-8),
                partial(optim.AdamW, lr=0.01, weight_decay=0.1, betas=(0.8, 0.999), eps=1e-8))


def test_rmsprop_by_hand():
    p = nn.Parameter(torch.tensor([1., -2.]))
    opt = RMSProp([p], lr=0.1, sqr_mom=0.9, eps=0.)
    p.grad = torch.tensor([2., 0.5]); opt.step()
    torch.testing.assert_close(p.data, torch.tensor([0.9, -2.1]))
    p.grad = torch.tensor([1., 0.5]); opt.step()
    torch.testing.assert_close(p.data, torch.tensor([0.9 - 0.1/math.sqrt(0.9*4 + 0.1), -2.2]))


def test_optimizer_state_is_per_optimizer_and_zero_grad():
    p = nn.Parameter(torch.ones(2))
    opt = Adam([p], lr=0.1)
    p.grad = torch.ones(2); opt.step()
    assert set(opt.state[p]) == {'step', 'avg', 'sqr_avg'} and opt.state[p]['step'] == 1
    opt.zero_grad()
    assert p.grad is None
    opt.step()  # no gradient: nothing happens, no error
    assert Adam([p], lr=0.1).state == {} and not hasattr(p, 'avg')


def test_scratch_optimizers_train_in_learner():
    for opt_func, lr in [(partial(SGD, wd=1e-4), 0.5), (Momentum, 0.5), (RMSProp, 1e-2), (Adam, 1e-2)]:
        learn = tiny_learner(opt_func, lr)
        before = [p.detach().clone() for p in learn.model.parameters()]
        learn.fit(2)
        assert any(not torch.equal(a, b) for a, b in zip(before, learn.model.parameters()))


# ---------------------------------------------------------------- schedulers vs PyTorch

@pytest.mark.parametrize('T_max,eta_min,steps', [(100, 0., 250), (7, 0.01, 40), (1, 0., 5)])
def test_cosine_matches_torch(T_max, eta_min, steps):
    for opt_func in (optim.AdamW, partial(optim.SGD, momentum=0.9)):
        assert_same_schedule(partial(CosineSched, T_max=T_max, eta_min=eta_min),
                             partial(lr_scheduler.CosineAnnealingLR, T_max=T_max, eta_min=eta_min), steps,
                             partial(two_group_opt, opt_func))


ONE_CYCLE_SETTINGS = [{}, dict(three_phase=True), dict(anneal_strategy='linear'),
                      dict(anneal_strategy='linear', three_phase=True),
                      dict(pct_start=0.25, div_factor=10., final_div_factor=100.), dict(max_lr=[0.06, 0.02]),
                      dict(base_momentum=[0.8, 0.85], max_momentum=0.9), dict(cycle_momentum=False)]


@pytest.mark.parametrize('kw', ONE_CYCLE_SETTINGS)
@pytest.mark.parametrize('total', [10, 177])
@pytest.mark.parametrize('opt_func', [optim.AdamW, partial(optim.SGD, momentum=0.9), optim.SGD])
def test_one_cycle_matches_torch(kw, total, opt_func):
    kw = {'max_lr': 6e-2, **kw}
    assert_same_schedule(partial(OneCycleSched, total_steps=total, **kw),
                         partial(lr_scheduler.OneCycleLR, total_steps=total, **kw), total, partial(two_group_opt, opt_func))


def test_one_cycle_epochs_and_steps_per_epoch():
    assert_same_schedule(partial(OneCycleSched, max_lr=0.1, epochs=3, steps_per_epoch=7),
                         partial(lr_scheduler.OneCycleLR, max_lr=0.1, epochs=3, steps_per_epoch=7), 21,
                         partial(two_group_opt, optim.AdamW))


def test_one_cycle_refusals():
    def opt(): return optim.AdamW(nn.Linear(2, 1).parameters())
    s = OneCycleSched(opt(), max_lr=0.1, total_steps=3)
    for _ in range(3): s.step()
    with pytest.raises(ValueError, match='past its total_steps'): s.step()
    with pytest.raises(ValueError, match='cycle_momentum=False'):
        OneCycleSched(optim.Adagrad(nn.Linear(2, 1).parameters()), max_lr=0.1, total_steps=3)
    OneCycleSched(optim.Adagrad(nn.Linear(2, 1).parameters()), max_lr=0.1, total_steps=3, cycle_momentum=False)
    with pytest.raises(ValueError, match='total_steps'): OneCycleSched(opt(), max_lr=0.1)
    with pytest.raises(ValueError, match='positive integer'): OneCycleSched(opt(), max_lr=0.1, total_steps=0)
    with pytest.raises(ValueError, match='pct_start'): OneCycleSched(opt(), max_lr=0.1, total_steps=5, pct_start=1.5)
    with pytest.raises(ValueError, match='anneal_strategy'): OneCycleSched(opt(), max_lr=0.1, total_steps=5, anneal_strategy='exp')
    with pytest.raises(ValueError, match='parameter groups'): OneCycleSched(opt(), max_lr=[0.1, 0.2], total_steps=5)
    with pytest.raises(ValueError, match='T_max'): CosineSched(opt(), T_max=0)


# ---------------------------------------------------------------- callbacks

class CountSteps(Callback):
    "Counts how often a scheduler is stepped, and in which phase."
    def __init__(self): self.calls = []
    def __call__(self, opt):
        cb = self
        class _S:
            def step(self_): cb.calls.append(cb.learn.training)
        return _S()
    def before_fit(self, learn): self.learn = learn


def test_batch_sched_steps_only_while_training():
    counter = CountSteps()
    learn = tiny_learner(dls=tiny_dls(5, 3), cbs=[counter])
    learn.fit(2, cbs=BatchSchedCB(counter))
    assert counter.calls == [True]*10


def test_epoch_sched_steps_once_per_epoch():
    counter = CountSteps()
    learn = tiny_learner(dls=tiny_dls(5, 3), cbs=[counter])
    learn.fit(3, cbs=EpochSchedCB(counter))
    assert counter.calls == [True]*3
    learn.fit(1, train=False, cbs=EpochSchedCB(counter))
    assert counter.calls == [True]*3


def test_epoch_cosine_values():
    rec = RecorderCB(lr=lambda cb: cb.pg['lr'])
    learn = tiny_learner(optim.AdamW, lr=6e-3, dls=tiny_dls(4, 2))
    learn.fit(3, cbs=[EpochSchedCB(partial(lr_scheduler.CosineAnnealingLR, T_max=3)), rec])
    assert rec.recs['lr'] == pytest.approx([6e-3]*4 + [4.5e-3]*4 + [1.5e-3]*4)


def test_recorder_records_training_batches_only():
    rec = RecorderCB(lr=lambda cb: cb.pg['lr'], it=lambda cb: cb.learn.iter, loss=lambda cb: cb.learn.loss.item())
    learn = tiny_learner(dls=tiny_dls(5, 3))
    learn.fit(2, cbs=rec)
    assert rec.recs['it'] == list(range(5))*2 and rec.recs['lr'] == [0.1]*10 and len(rec.recs['loss']) == 10
    assert rec.learn is None  # HasLearnCB drops the learner after the fit
    learn.fit(1, train=False, cbs=rec)
    assert rec.recs == {'lr': [], 'it': [], 'loss': []}
    axs = list(rec.plot())
    assert len(axs) == 3


def test_has_learn_cb_drops_learner_even_on_error():
    class Boom(Callback):
        def after_batch(self, learn): raise RuntimeError('boom')
    hl = HasLearnCB()
    learn = tiny_learner(cbs=[hl, Boom()])
    with pytest.raises(RuntimeError): learn.fit(1)
    assert hl.learn is None


def test_lesson_one_cycle_usage_with_recorder():
    def _lr(cb): return cb.pg['lr']
    def _beta1(cb): return cb.pg['betas'][0]
    dls, epochs = tiny_dls(6, 2), 2
    recs = {}
    for name, sched_cls in (('torch', lr_scheduler.OneCycleLR), ('ours', OneCycleSched)):
        rec = RecorderCB(lr=_lr, mom=_beta1)
        sched = partial(sched_cls, max_lr=6e-2, total_steps=len(dls.train)*epochs)
        learn = tiny_learner(optim.AdamW, lr=6e-2, dls=dls, cbs=[BatchSchedCB(sched), rec])
        learn.fit(epochs)
        recs[name] = rec.recs
        assert len(rec.recs['lr']) == 12 and max(rec.recs['lr']) == pytest.approx(6e-2, rel=0.05)
    assert recs['ours']['lr'] == pytest.approx(recs['torch']['lr'], abs=1e-6)
    assert recs['ours']['mom'] == pytest.approx(recs['torch']['mom'], abs=1e-6)


def test_sched_cb_names_itself_when_the_scheduler_cannot_be_built():
    learn = tiny_learner()
    with pytest.raises(TypeError, match=r'BatchSchedCB could not create its scheduler.*CosineAnnealingLR'):
        learn.fit(1, cbs=BatchSchedCB(lr_scheduler.CosineAnnealingLR))
    with pytest.raises(ValueError, match=r'EpochSchedCB could not create.*OneCycleLR'):
        learn.fit(1, cbs=EpochSchedCB(partial(lr_scheduler.OneCycleLR, max_lr=0.1)))
    assert not any(isinstance(cb, BaseSchedCB) for cb in learn.cbs)  # removed again after the failed fits


# ---------------------------------------------------------------- auto annealer

def fake_learner(p, lr=1., n_train=2):
    class NS: pass
    learn = NS()
    learn.model, learn.opt = nn.ParameterList([p]), optim.SGD([p], lr=lr)
    learn.dls = NS(); learn.dls.train = [0]*n_train
    return learn


def test_auto_annealer_rule():
    p = nn.Parameter(torch.zeros(1))
    learn = fake_learner(p)
    cb = AutoAnnealCB(every=2)
    cb.before_fit(learn)
    for g in [2, 2, 3**0.5, 3**0.5, 1.4**0.5, 1.4**0.5, 1, 1, 0.4**0.5, 0.4**0.5]:
        p.grad = torch.tensor([float(g)]); cb.after_backward(learn)
    assert cb.sqr_grads == pytest.approx([4, 3, 1.4, 1, 0.4], rel=1e-5)
    assert cb.lrs == [1, 1, 0.25, 0.25, 0.0625] and learn.opt.param_groups[0]['lr'] == 0.0625


def test_auto_annealer_keeps_lr_when_gradients_do_not_fall():
    p = nn.Parameter(torch.zeros(1))
    learn = fake_learner(p, lr=0.3, n_train=3)  # default window: one epoch of 3 batches
    cb = AutoAnnealCB()
    cb.before_fit(learn)
    for g in [1., 2., 1.5]*4:
        p.grad = torch.tensor([float(g)]); cb.after_backward(learn)
    assert len(cb.sqr_grads) == 4 and cb.lrs == [0.3]*4


def test_auto_annealer_in_a_fit_lowers_lr():
    learn = tiny_learner(optim.SGD, lr=0.5, dls=tiny_dls(8, 1))
    cb = AutoAnnealCB(every=1, ratio=1.0, div=2.)  # each batch whose squared gradients are a new low halves the LR
    learn.fit(1, cbs=cb)
    assert len(cb.lrs) == 8 and cb.lrs[-1] < 0.5 and learn.opt.param_groups[0]['lr'] == cb.lrs[-1]
