"""Tests of `miniai.learner`: the callback loop, cancel exceptions, metrics, devices, progress bars and `lr_find`.

Everything runs on tiny synthetic data and models, except one check that a small MLP really learns on the quick-mode
Fashion-MNIST sample that ships with miniai.
"""


import copy, math, re
from types import SimpleNamespace

import matplotlib.pyplot as plt
import pytest
import torch
import torch.nn.functional as F
from torch import nn, optim

from miniai.learner import *  # first: it silences torcheval's import-time deprecation warning
from miniai.learner import def_device
from miniai.guards import BatchError, DivergenceCB
from torcheval.metrics import MulticlassAccuracy
from conftest import DLs


# ---------------------------------------------------------------------------------------------------------------------
# Helpers



def reg_batches(n, bs=4, ni=3, seed=0):
    "`n` regression batches `(x, y)` with `x` of shape `(bs, ni)` and `y` of shape `(bs, 1)`."
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(bs, ni, generator=g), torch.randn(bs, 1, generator=g)) for _ in range(n)]


def reg_dls(n_train=2, n_valid=1, **kw):
    return DLs(reg_batches(n_train, seed=1, **kw), reg_batches(n_valid, seed=2, **kw))


def lin(seed=0, ni=3, no=1):
    torch.manual_seed(seed)
    return nn.Linear(ni, no)


class EventLog(Callback):
    "Records the name of every `before_`/`after_`/`cleanup_` event it sees."
    def __init__(self, order=0): self.events, self.order = [], order
    def __getattr__(self, name):
        if name.startswith(('before_', 'after_', 'cleanup_')): return lambda learn: self.events.append(name)
        raise AttributeError(name)


def raiser(event, exc, when=lambda learn: True):
    "A callback that raises `exc` at `event` whenever `when(learn)` is true."
    cb = Callback()
    def _f(learn):
        if when(learn): raise exc()
    setattr(cb, event, _f)
    return cb


def batch_events(train):
    return (['before_batch', 'after_predict', 'after_loss'] + (['after_backward', 'after_step'] if train else [])
            + ['after_batch', 'cleanup_batch'])


def epoch_events(n_batches, train):
    return ['before_epoch'] + n_batches*batch_events(train) + ['after_epoch', 'cleanup_epoch']


def params(model): return [p.detach().clone() for p in model.parameters()]


def state(model): return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------------------------------------------------
# run_cbs

def test_run_cbs_sorts_by_order_with_ties_in_list_order_and_skips_missing_methods():
    calls = []
    class CB(Callback):
        def __init__(self, name, order=None):
            self.name = name
            if order is not None: self.order = order
        def before_fit(self, learn): calls.append((self.name, learn))
    class NoHandler(Callback): order = -5
    cbs = [CB('b', 1), CB('a'), NoHandler(), CB('z', -1), CB('c', 1), CB('d')]
    learn = object()
    run_cbs(cbs, 'before_fit', learn)
    assert calls == [('z', learn), ('a', learn), ('d', learn), ('b', learn), ('c', learn)]
    calls.clear()
    run_cbs(cbs, 'after_fit', learn)  # nobody handles it: nothing happens, no error
    assert calls == []
    assert Callback.order == 0


# ---------------------------------------------------------------------------------------------------------------------
# The loop's events

def test_event_order_for_a_fit_with_train_and_valid():
    log = EventLog()
    Learner(lin(), reg_dls(2, 1), F.mse_loss, cbs=[TrainCB(), log]).fit(2)
    one_epoch = epoch_events(2, True) + epoch_events(1, False)
    assert log.events == ['before_fit'] + 2*one_epoch + ['after_fit', 'cleanup_fit']
    # no backward/step in validation: 2 epochs x 2 training batches
    assert log.events.count('after_backward') == 4 and log.events.count('after_step') == 4
    assert log.events.count('after_predict') == 6


def test_cancel_batch_skips_only_that_batch():
    log = EventLog()
    first_train_batch = lambda l: l.training and l.epoch == 0 and l.iter == 0
    cancel = raiser('after_predict', CancelBatchException, first_train_batch)
    Learner(lin(), reg_dls(2, 1), F.mse_loss, cbs=[TrainCB(), log, cancel]).fit(1)
    cancelled = ['before_batch', 'after_predict', 'cleanup_batch']
    assert log.events == (['before_fit', 'before_epoch'] + cancelled + batch_events(True) + ['after_epoch', 'cleanup_epoch']
                          + epoch_events(1, False) + ['after_fit', 'cleanup_fit'])


def test_cancel_batch_prevents_the_optimizer_step():
    model = lin()
    w0 = params(model)
    Learner(model, reg_dls(3, 1), F.mse_loss, cbs=[TrainCB(), raiser('after_loss', CancelBatchException)]).fit(2)
    assert all(torch.equal(a, b) for a, b in zip(w0, params(model)))


def test_cancel_epoch_ends_the_epoch_but_next_epoch_runs():
    log = EventLog()
    cancel = raiser('after_batch', CancelEpochException, lambda l: l.training and l.epoch == 0 and l.iter == 0)
    Learner(lin(), reg_dls(3, 1), F.mse_loss, cbs=[TrainCB(), log, cancel]).fit(2)
    epoch0 = (['before_epoch'] + batch_events(True)[:-1] + ['cleanup_batch', 'cleanup_epoch']  # after_batch logged, then cancel
              + epoch_events(1, False))
    epoch1 = epoch_events(3, True) + epoch_events(1, False)
    assert log.events == ['before_fit'] + epoch0 + epoch1 + ['after_fit', 'cleanup_fit']


def test_cancel_fit_stops_everything_but_runs_cleanups():
    log = EventLog()
    Learner(lin(), reg_dls(3, 2), F.mse_loss, cbs=[TrainCB(), log, raiser('after_step', CancelFitException)]).fit(5)
    assert log.events == ['before_fit', 'before_epoch', 'before_batch', 'after_predict', 'after_loss', 'after_backward',
                          'after_step', 'cleanup_batch', 'cleanup_epoch', 'cleanup_fit']


def test_cancel_fit_in_before_fit_runs_no_epoch():
    log = EventLog()
    model = lin()
    w0 = params(model)
    Learner(model, reg_dls(), F.mse_loss, cbs=[TrainCB(), log, raiser('before_fit', CancelFitException)]).fit(3)
    assert log.events == ['before_fit', 'cleanup_fit']
    assert all(torch.equal(a, b) for a, b in zip(w0, params(model)))


def test_other_exceptions_propagate_after_cleanups():
    log = EventLog()
    learn = Learner(lin(), reg_dls(), F.mse_loss, cbs=[TrainCB(), log, raiser('after_loss', KeyError)])
    with pytest.raises(KeyError): learn.fit(1)
    assert log.events == ['before_fit', 'before_epoch', 'before_batch', 'after_predict', 'after_loss',
                          'cleanup_batch', 'cleanup_epoch', 'cleanup_fit']


# ---------------------------------------------------------------------------------------------------------------------
# fit's arguments

def test_fit_callbacks_are_temporary():
    train_cb = TrainCB()
    user_list = [train_cb]
    learn = Learner(lin(), reg_dls(), F.mse_loss, cbs=user_list)
    tmp1, tmp2 = EventLog(), EventLog()
    seen = []
    class Look(Callback):
        def before_fit(self, learn): seen.append(list(learn.cbs))
    look = Look()
    learn.fit(1, cbs=[tmp1, look])
    assert seen[0][:3] == [train_cb, tmp1, look] and len(seen) == 1
    assert len(seen[0]) == 4 and type(seen[0][3]).__name__ == 'DivergenceCB'  # the default guard, for this fit only
    assert tmp1.events[0] == 'before_fit' and tmp1.events[-1] == 'cleanup_fit'
    assert list(learn.cbs) == [train_cb] and user_list == [train_cb]
    learn.fit(1, cbs=tmp2)  # a single callback, not in a list
    assert tmp2.events and list(learn.cbs) == [train_cb]
    n = len(tmp1.events)
    learn.fit(1)
    assert len(tmp1.events) == n  # a removed callback no longer runs


class Boom(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 1)
    def forward(self, x): raise ValueError('boom in forward')


def test_fit_callbacks_are_removed_when_the_fit_raises():
    train_cb = TrainCB()
    learn = Learner(Boom(), reg_dls(), F.mse_loss, cbs=[train_cb])
    tmp = EventLog()
    with pytest.raises(BatchError, match='boom in forward') as ei: learn.fit(2, cbs=[tmp])
    assert isinstance(ei.value.__cause__, ValueError)
    assert list(learn.cbs) == [train_cb]
    assert tmp.events == ['before_fit', 'before_epoch', 'before_batch', 'cleanup_batch', 'cleanup_epoch', 'cleanup_fit']


def test_fit_lr_overrides_for_that_fit_only():
    class LRSpy(Callback):
        def __init__(self): self.lrs = []
        def after_batch(self, learn): self.lrs.append(learn.opt.param_groups[0]['lr'])
    learn = Learner(lin(), reg_dls(2, 1), F.mse_loss, lr=0.1, cbs=[TrainCB()])
    spy = LRSpy()
    learn.fit(2, lr=0.5, cbs=spy)
    assert spy.lrs == [0.5]*6
    assert learn.lr == 0.1
    spy = LRSpy()
    learn.fit(1, cbs=spy)
    assert spy.lrs == [0.1]*3


def test_fit_lr_is_the_step_size():
    model = lin()
    (x, y), = batches = reg_batches(1, seed=3)
    w0 = params(model)
    F.mse_loss(model(x), y).backward()
    expected = [w - 0.3*p.grad for w, p in zip(w0, model.parameters())]
    model.zero_grad()
    learn = Learner(model, DLs(batches), F.mse_loss, lr=0.01, cbs=[TrainCB()])
    learn.fit(1, valid=False, lr=0.3)
    for e, p in zip(expected, model.parameters()): torch.testing.assert_close(p.detach(), e)


def test_fit_makes_a_fresh_optimizer_each_time():
    learn = Learner(lin(), reg_dls(), F.mse_loss, cbs=[TrainCB()], opt_func=optim.Adam)
    learn.fit(1)
    opt1 = learn.opt
    assert isinstance(opt1, optim.Adam)
    learn.fit(1)
    assert learn.opt is not opt1


def test_train_false_runs_only_validation():
    model = lin()
    w0 = params(model)
    log = EventLog()
    learn = Learner(model, reg_dls(3, 2), F.mse_loss, cbs=[TrainCB(), log])
    learn.fit(2, train=False)
    assert log.events == ['before_fit'] + 2*epoch_events(2, False) + ['after_fit', 'cleanup_fit']
    assert all(torch.equal(a, b) for a, b in zip(w0, params(model)))
    assert not learn.model.training


def test_valid_false_runs_no_validation():
    phases = []
    class Phase(Callback):
        def before_epoch(self, learn): phases.append((learn.epoch, learn.training, learn.dl))
    dls = reg_dls(2, 2)
    model = lin()
    w0 = params(model)
    Learner(model, dls, F.mse_loss, cbs=[TrainCB(), Phase()]).fit(3, valid=False)
    assert phases == [(0, True, dls.train), (1, True, dls.train), (2, True, dls.train)]
    assert not all(torch.equal(a, b) for a, b in zip(w0, params(model)))


# ---------------------------------------------------------------------------------------------------------------------
# What the learner exposes while it fits

def test_training_flag_model_mode_and_grad_per_phase():
    rec = []
    class Spy(Callback):
        def after_predict(self, learn):
            rec.append((learn.training, learn.model.training, torch.is_grad_enabled(), learn.preds.requires_grad))
    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.Linear(4, 1))
    learn = Learner(model, reg_dls(2, 1), F.mse_loss, cbs=[TrainCB(), Spy()])
    learn.fit(2)
    tr, va = (True,)*4, (False,)*4
    assert rec == [tr, tr, va]*2
    assert torch.is_grad_enabled()  # restored after the fit


def test_learner_attributes_during_fit():
    dls = reg_dls(3, 2)
    rec = []
    class Spy(Callback):
        def after_loss(self, learn):
            dl = dls.train if learn.training else dls.valid
            assert learn.dl is dl and learn.batch is dl[learn.iter]
            torch.testing.assert_close(learn.loss, F.mse_loss(learn.preds, learn.batch[1]))
            assert learn.preds.shape == (4, 1) and isinstance(learn.opt, optim.SGD)
            rec.append((learn.epoch, learn.iter, learn.n_epochs, learn.training))
    model = lin()
    learn = Learner(model, dls, F.mse_loss, cbs=[TrainCB(), Spy()])
    learn.fit(2)
    expected = [(e, i, 2, t) for e in range(2) for t, n in ((True, 3), (False, 2)) for i in range(n)]
    assert rec == expected
    assert learn.model is model and learn.dls is dls


def test_getattr_unknown_names_raise_attribute_error():
    learn = Learner(lin(), reg_dls())
    assert not hasattr(learn, 'no_such_thing')
    assert not hasattr(learn, 'preds')  # only exists once a fit has predicted
    with pytest.raises(AttributeError, match='no_such_thing'): learn.no_such_thing
    assert getattr(learn, 'no_such_thing', 42) == 42


def test_getattr_dispatches_the_five_training_steps_to_callbacks():
    calls = []
    class Steps(Callback):
        pass
    steps = Steps()
    names = ['predict', 'get_loss', 'backward', 'step', 'zero_grad']
    for nm in names: setattr(steps, nm, lambda learn, nm=nm: calls.append((nm, learn)))
    learn = Learner(lin(), reg_dls(), cbs=[steps])
    for nm in names: getattr(learn, nm)()
    assert calls == [(nm, learn) for nm in names]
    Learner(lin(), reg_dls()).zero_grad()  # nobody handles it: a no-op


def test_train_learner_methods_take_precedence_over_callbacks():
    class Intruder(Callback):
        def predict(self, learn): raise AssertionError('callback predict should not run for TrainLearner')
    learn = TrainLearner(lin(), reg_dls(), F.mse_loss, cbs=[Intruder()])
    learn.fit(1)
    assert learn.preds.shape == (4, 1)


# ---------------------------------------------------------------------------------------------------------------------
# TrainCB and several inputs

class TwoIn(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(3, 1), nn.Linear(2, 1)
    def forward(self, x1, x2): return self.a(x1) + self.b(x2)


def test_traincb_with_two_inputs():
    g = torch.Generator().manual_seed(5)
    batches = [(torch.randn(4, 3, generator=g), torch.randn(4, 2, generator=g), torch.randn(4, 1, generator=g))
               for _ in range(3)]
    checked = []
    class Spy(Callback):
        def after_loss(self, learn):
            x1, x2, y = learn.batch
            with torch.no_grad(): expected = learn.model(x1, x2)
            torch.testing.assert_close(learn.preds.detach(), expected)
            torch.testing.assert_close(learn.loss, F.mse_loss(learn.preds, y))
            checked.append(learn.n_inp)
    model = TwoIn()
    w0 = params(model)
    learn = Learner(model, DLs(batches), F.mse_loss, cbs=[TrainCB(n_inp=2), Spy()])
    learn.fit(1)
    assert checked == [2]*6 and learn.n_inp == 1  # TrainCB sets n_inp for its fit only
    assert not all(torch.equal(a, b) for a, b in zip(w0, params(model)))


# ---------------------------------------------------------------------------------------------------------------------
# MetricsCB

class AddBias(nn.Module):
    "Returns its input (logits) plus a zero bias; with lr=0 its predictions are exactly the batch's inputs."
    def __init__(self, n=3):
        super().__init__()
        self.b = nn.Parameter(torch.zeros(n))
    def forward(self, x): return x + self.b


def _cls_batches(sizes, seed):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 3, generator=g), torch.randint(0, 3, (n,), generator=g)) for n in sizes]


def _expected(batches):
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    acc = (x.argmax(1) == y).float().mean().item()
    loss = F.cross_entropy(x, y).item()  # the mean over all items = the batch means weighted by batch size
    unweighted = sum(F.cross_entropy(*b).item() for b in batches)/len(batches)
    return acc, loss, unweighted


def test_metricscb_values_against_hand_computation(capsys):
    train, valid = _cls_batches([5, 2], seed=10), _cls_batches([1, 4, 3], seed=11)
    tr_acc, tr_loss, tr_unw = _expected(train)
    va_acc, va_loss, va_unw = _expected(valid)
    assert abs(tr_loss - tr_unw) > 1e-3 and abs(va_loss - va_unw) > 1e-3  # so weighting matters
    assert abs(tr_acc - va_acc) > 1e-3 and abs(tr_loss - va_loss) > 1e-3   # so train and eval can be told apart
    metrics = MetricsCB(accuracy=MulticlassAccuracy())
    learn = Learner(AddBias(), DLs(train, valid), F.cross_entropy, lr=0., cbs=[TrainCB(), metrics])
    learn.fit(2)
    assert learn.metrics is metrics
    h = metrics.history
    assert [(r['epoch'], r['train']) for r in h] == [(0, True), (0, False), (1, True), (1, False)]
    for r in h:
        acc, loss = (tr_acc, tr_loss) if r['train'] else (va_acc, va_loss)
        assert set(r) == {'accuracy', 'loss', 'epoch', 'train'}
        assert r['accuracy'] == pytest.approx(acc, abs=1e-6)
        assert r['loss'] == pytest.approx(loss, rel=1e-5)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines == [str({'accuracy': f'{tr_acc:.3f}', 'loss': f'{tr_loss:.3f}', 'epoch': 0, 'train': 'train'}),
                     str({'accuracy': f'{va_acc:.3f}', 'loss': f'{va_loss:.3f}', 'epoch': 0, 'train': 'eval'}),
                     str({'accuracy': f'{tr_acc:.3f}', 'loss': f'{tr_loss:.3f}', 'epoch': 1, 'train': 'train'}),
                     str({'accuracy': f'{va_acc:.3f}', 'loss': f'{va_loss:.3f}', 'epoch': 1, 'train': 'eval'})]
    learn.fit(1)
    assert len(metrics.history) == 2  # history starts afresh with each fit


def test_metricscb_positional_metric_named_by_class():
    metrics = MetricsCB(MulticlassAccuracy())
    assert list(metrics.metrics) == ['MulticlassAccuracy']
    train = _cls_batches([4, 3], seed=12)
    Learner(AddBias(), DLs(train), F.cross_entropy, lr=0., cbs=[TrainCB(), metrics]).fit(1, valid=False)
    acc, _, _ = _expected(train)
    assert metrics.history[0]['MulticlassAccuracy'] == pytest.approx(acc, abs=1e-6)
    assert isinstance(metrics.loss, type(metrics.all_metrics['loss']))


class AddTwo(nn.Module):
    "Logits = x1 + x2 (+ a zero bias so an optimizer can be made)."
    def __init__(self):
        super().__init__()
        self.b = nn.Parameter(torch.zeros(3))
    def forward(self, x1, x2): return x1 + x2 + self.b


def test_metricscb_uses_batch_n_inp_as_target():
    g = torch.Generator().manual_seed(13)
    batches = [(torch.randn(n, 3, generator=g), torch.randn(n, 3, generator=g), torch.randint(0, 3, (n,), generator=g))
               for n in (5, 2)]
    x = torch.cat([b[0] + b[1] for b in batches])
    y = torch.cat([b[2] for b in batches])
    acc, loss = (x.argmax(1) == y).float().mean().item(), F.cross_entropy(x, y).item()
    metrics = MetricsCB(accuracy=MulticlassAccuracy())
    Learner(AddTwo(), DLs(batches), F.cross_entropy, lr=0., cbs=[TrainCB(n_inp=2), metrics]).fit(1, valid=False)
    assert metrics.history[0]['accuracy'] == pytest.approx(acc, abs=1e-6)
    assert metrics.history[0]['loss'] == pytest.approx(loss, rel=1e-5)


# ---------------------------------------------------------------------------------------------------------------------
# TrainLearner and MomentumLearner

def mlp(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1))


def test_train_learner_matches_traincb():
    dls = reg_dls(4, 2)
    m1, m2 = mlp(0), mlp(0)
    w0 = params(m1)
    Learner(m1, dls, F.mse_loss, lr=0.05, cbs=[TrainCB()]).fit(2)
    TrainLearner(m2, dls, F.mse_loss, lr=0.05).fit(2)
    assert not all(torch.equal(a, b) for a, b in zip(w0, params(m1)))
    for a, b in zip(params(m1), params(m2)): assert torch.equal(a, b)


def test_momentum_learner_matches_sgd_with_momentum():
    dls = reg_dls(4, 2)
    m1, m2 = mlp(1), mlp(1)
    MomentumLearner(m1, dls, F.mse_loss, lr=0.05, mom=0.7).fit(2)
    Learner(m2, dls, F.mse_loss, lr=0.05, cbs=[TrainCB()], opt_func=lambda ps, lr: optim.SGD(ps, lr, momentum=0.7)).fit(2)
    for a, b in zip(params(m1), params(m2)): torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    m3 = mlp(1)
    TrainLearner(m3, dls, F.mse_loss, lr=0.05).fit(2)
    assert not all(torch.allclose(a, b) for a, b in zip(params(m1), params(m3)))  # momentum made a difference


def test_momentum_learner_zero_grad_keeps_mom_times_grad():
    seen = []
    class Spy(Callback):
        def after_step(self, learn): self.g = [p.grad.clone() for p in learn.model.parameters()]
        def after_batch(self, learn):
            for g, p in zip(self.g, learn.model.parameters()): torch.testing.assert_close(p.grad, 0.6*g)
            seen.append(learn.iter)
    MomentumLearner(mlp(2), reg_dls(3, 1), F.mse_loss, lr=0.01, mom=0.6, cbs=[Spy()]).fit(1, valid=False)
    assert seen == [0, 1, 2]


# ---------------------------------------------------------------------------------------------------------------------
# Devices

def test_to_device_and_to_cpu_on_nested_structures():
    t = torch.ones(2, requires_grad=True)
    x = {'a': [t*2, (torch.arange(3), 'text')], 'b': 7, 'c': torch.zeros(1, dtype=torch.bfloat16)}
    m = to_device(x, 'meta')
    assert isinstance(m['a'], list) and isinstance(m['a'][1], tuple) and m['b'] == 7 and m['a'][1][1] == 'text'
    assert all(o.device.type == 'meta' for o in (m['a'][0], m['a'][1][0], m['c']))
    c = to_cpu(x)
    assert isinstance(c['a'], list) and isinstance(c['a'][1], tuple) and c['b'] == 7 and c['a'][1][1] == 'text'
    assert not c['a'][0].requires_grad and torch.equal(c['a'][0], torch.full((2,), 2.))
    assert c['c'].dtype == torch.float32 and c['a'][1][0].dtype == torch.int64
    assert to_cpu(torch.tensor([1.5], dtype=torch.float16)).dtype == torch.float32
    assert to_cpu(torch.tensor([1.5], dtype=torch.float64)).dtype == torch.float64
    assert to_cpu(torch.tensor([1.5], dtype=torch.bfloat16)).item() == 1.5


def test_devicecb_moves_model_and_batch():
    assert DeviceCB().device == def_device
    seen = []
    class Spy(Callback):
        order = 1  # after DeviceCB's before_batch
        def after_predict(self, learn):
            seen.append({learn.batch[0].device.type, learn.batch[1].device.type, learn.preds.device.type,
                         next(learn.model.parameters()).device.type})
    # 'meta' tensors need no accelerator, and show that the move really happens
    Learner(lin(), reg_dls(2, 1), F.mse_loss, cbs=[TrainCB(), DeviceCB('meta'), Spy()]).fit(1)
    assert seen == [{'meta'}]*3
    seen.clear()
    model = lin()
    Learner(model, reg_dls(2, 1), F.mse_loss, cbs=[TrainCB(), DeviceCB('cpu'), Spy()]).fit(1)
    assert seen == [{'cpu'}]*3 and next(model.parameters()).device.type == 'cpu'


def test_devicecb_handles_a_model_without_to():
    cb = DeviceCB('meta')
    learn = SimpleNamespace(model=lambda x: x, batch=(torch.ones(1), [torch.zeros(2)]))
    cb.before_fit(learn)  # no error
    cb.before_batch(learn)
    assert learn.batch[0].device.type == 'meta' and learn.batch[1][0].device.type == 'meta'


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
def test_devicecb_cuda_with_metrics():
    metrics = MetricsCB(accuracy=MulticlassAccuracy())
    train = _cls_batches([5, 2], seed=10)
    acc, loss, _ = _expected(train)
    learn = Learner(AddBias(), DLs(train), F.cross_entropy, lr=0., cbs=[TrainCB(), DeviceCB('cuda'), metrics])
    learn.fit(1, valid=False)
    assert learn.preds.device.type == 'cuda'
    assert metrics.history[0]['accuracy'] == pytest.approx(acc, abs=1e-6)
    assert metrics.history[0]['loss'] == pytest.approx(loss, rel=1e-5)


# ---------------------------------------------------------------------------------------------------------------------
# SingleBatchCB

def test_single_batch_cb_runs_exactly_one_batch():
    log = EventLog()
    learn = Learner(lin(), reg_dls(5, 3), F.mse_loss, cbs=[TrainCB(), log, SingleBatchCB()])
    learn.fit(3)
    assert log.events == ['before_fit', 'before_epoch'] + batch_events(True) + ['cleanup_epoch', 'cleanup_fit']
    assert isinstance(learn.opt, optim.SGD) and learn.iter == 0 and learn.epoch == 0


# ---------------------------------------------------------------------------------------------------------------------
# ProgressCB (console mode: tests don't run in a notebook)

def _table_rows(out):
    "Lines of the metrics table fastprogress writes in a terminal, split on newlines and carriage returns."
    return [l.split() for l in re.split(r'[\r\n]', out) if l.strip() and not any(c in l for c in ('|', '█', 'Epoch'))]


def test_progresscb_prints_a_table_in_console(capsys):
    train, valid = _cls_batches([5, 2], seed=10), _cls_batches([1, 4, 3], seed=11)
    metrics = MetricsCB(MulticlassAccuracy())
    learn = Learner(AddBias(), DLs(train, valid), F.cross_entropy, lr=0.1, cbs=[TrainCB(), metrics, ProgressCB()])
    learn.fit(2)
    out = capsys.readouterr().out
    rows = _table_rows(out)
    assert rows[0] == ['MulticlassAccuracy', 'loss', 'epoch', 'train']
    assert [r[2:] for r in rows[1:]] == [['0', 'train'], ['0', 'eval'], ['1', 'train'], ['1', 'eval']]
    for r, h in zip(rows[1:], metrics.history):
        assert r[:2] == [f"{h['MulticlassAccuracy']:.3f}", f"{h['loss']:.3f}"]
    assert "{'" not in out  # ProgressCB took over MetricsCB's printing
    assert 'Epoch' not in out and '\r' not in out  # output is not a terminal: a plain table, no progress bars


def test_progresscb_bars_forced_in_console(capsys):
    train, valid = _cls_batches([5, 2], seed=10), _cls_batches([1, 4, 3], seed=11)
    learn = Learner(AddBias(), DLs(train, valid), F.cross_entropy, lr=0.1, cbs=[TrainCB(), MetricsCB(), ProgressCB(bars=True)])
    learn.fit(2)
    out = capsys.readouterr().out
    assert 'Epoch 2/2' in out  # the master bar was shown
    assert len(_table_rows(out)) == 5


def test_progresscb_plot_true_records_losses_in_console(capsys):
    train, valid = _cls_batches([5, 2, 3], seed=20), _cls_batches([4], seed=21)
    metrics = MetricsCB()
    prog = ProgressCB(plot=True)
    Learner(AddBias(), DLs(train, valid), F.cross_entropy, lr=0.1, cbs=[TrainCB(), metrics, prog]).fit(2)
    assert len(prog.losses) == 6 and all(math.isfinite(l) for l in prog.losses)
    assert prog.val_losses == pytest.approx([h['loss'] for h in metrics.history if not h['train']])
    assert len(_table_rows(capsys.readouterr().out)) == 5


def test_progresscb_without_metricscb():
    log = EventLog()
    Learner(lin(), reg_dls(2, 1), F.mse_loss, cbs=[TrainCB(), ProgressCB(), log]).fit(2)
    assert log.events.count('after_epoch') == 4 and log.events[-1] == 'cleanup_fit'


# ---------------------------------------------------------------------------------------------------------------------
# lr_find

def lrf_dls(n=25, seed=0, bs=128):
    "Linear regression data: the loss falls, then explodes once the LR passes about 1."
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(4, 1, generator=g)
    def b():
        x = torch.randn(bs, 4, generator=g)
        return x, x@w + 0.1*torch.randn(bs, 1, generator=g)
    return DLs([b() for _ in range(n)], [b() for _ in range(2)])


class PhaseCount(Callback):
    "Counts batches that got a loss, and finished epochs, per phase; snapshots the model's state at `cleanup_fit`."
    def __init__(self): self.losses, self.epochs, self.snap = {True: 0, False: 0}, [], None
    def after_loss(self, learn): self.losses[learn.training] += 1
    def after_epoch(self, learn): self.epochs.append(learn.training)
    def cleanup_fit(self, learn): self.snap = state(learn.model)


def test_lr_find_grows_lr_geometrically_and_stops_on_explosion():
    torch.manual_seed(0)
    count = PhaseCount()
    learn = Learner(nn.Linear(4, 1), lrf_dls(n=8), F.mse_loss, lr=0.1, cbs=[TrainCB(), count])
    cbs_before = list(learn.cbs)
    res = learn.lr_find(gamma=1.5, max_mult=3, start_lr=1e-3, max_epochs=10)
    lrs, losses = res.lrs, res.losses
    assert len(lrs) == len(losses) > 10
    assert lrs[0] == pytest.approx(1e-3)
    for a, b in zip(lrs, lrs[1:]): assert b/a == pytest.approx(1.5)
    # it stopped at the first loss above 3x the lowest before it, and not earlier
    assert losses[-1] > 3*min(losses[:-1])
    for i in range(1, len(losses) - 1): assert losses[i] <= 3*min(losses[:i])
    # the LR kept growing across epochs, and validation was skipped: no validation loss recorded, no validation epoch completed
    assert len(losses) > 16 and count.epochs == [True]*(len(losses)//8)
    assert count.losses[True] == len(losses)
    assert lrs[0] <= res.suggestion < lrs[-1]
    assert learn.lr == 0.1 and list(learn.cbs) == cbs_before
    assert plt.gca().get_xscale() == 'log'
    assert repr(res).startswith('LRFindResult(suggestion=')


def test_lr_find_stops_on_nan():
    calls = []
    def loss_func(p, y):
        calls.append(1)
        loss = F.mse_loss(p, y)
        return loss*float('nan') if len(calls) > 5 else loss
    torch.manual_seed(0)
    learn = Learner(nn.Linear(4, 1), lrf_dls(), loss_func, cbs=[TrainCB()])
    res = learn.lr_find(gamma=1.1, start_lr=1e-4)
    assert len(res.losses) == 6 and len(res.lrs) == 6
    assert math.isnan(res.losses[-1]) and all(math.isfinite(l) for l in res.losses[:-1])
    assert len(calls) == 6
    assert res.suggestion is not None and math.isfinite(res.suggestion)


def test_lr_find_restores_weights_and_batchnorm_buffers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))
    before = state(model)
    count = PhaseCount()
    learn = Learner(model, lrf_dls(), F.mse_loss, cbs=[TrainCB(), count])
    learn.lr_find(start_lr=1e-2, max_epochs=2)
    # the finder did change them...
    for k in ('0.weight', '1.running_mean', '1.running_var', '1.num_batches_tracked', '3.bias'):
        assert not torch.equal(count.snap[k], before[k]), k
    # ...and lr_find put every one back
    after = model.state_dict()
    assert set(after) == set(before)
    for k, v in before.items(): assert torch.equal(after[k], v), k


def test_lr_find_restores_weights_when_the_fit_raises():
    calls = []
    def loss_func(p, y):
        calls.append(1)
        if len(calls) > 3: raise RuntimeError('loss broke')
        return F.mse_loss(p, y)
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    before = state(model)
    learn = Learner(model, lrf_dls(), loss_func, cbs=[TrainCB()])
    with pytest.raises(RuntimeError, match='loss broke'): learn.lr_find(start_lr=0.1)
    assert len(learn.cbs) == 1
    for k, v in before.items(): assert torch.equal(model.state_dict()[k], v)


def test_lr_find_result_repr_when_first_loss_is_nan():
    learn = Learner(nn.Linear(4, 1), lrf_dls(), lambda p, y: F.mse_loss(p, y)*float('nan'), cbs=[TrainCB()])
    res = learn.lr_find()
    assert len(res.lrs) == 1 and res.suggestion is None
    assert 'LRFindResult' in repr(res)


# ---------------------------------------------------------------------------------------------------------------------
# A model really learns

def test_mlp_learns_fashion_mnist_sample():
    from miniai.datasets import fashion_mnist_dls, quick_mode
    assert quick_mode()
    dls = fashion_mnist_dls(bs=256)
    torch.manual_seed(42)
    model = nn.Sequential(nn.Flatten(), nn.Linear(28*28, 50), nn.ReLU(), nn.Linear(50, 10))
    metrics = MetricsCB(accuracy=MulticlassAccuracy())
    Learner(model, dls, F.cross_entropy, lr=0.2, cbs=[TrainCB(), DeviceCB('cpu'), metrics]).fit(3)
    h = metrics.history
    assert [(r['epoch'], r['train']) for r in h] == [(e, t) for e in range(3) for t in (True, False)]
    assert h[-1]['accuracy'] > 0.6, h
    assert h[-2]['loss'] < h[0]['loss']
