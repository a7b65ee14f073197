"""Tests of the learner's guards: bad input gets a miniai message saying what to fix, diverging runs stop with a
`DivergedError`, and an interrupted fit (Ctrl-C) leaves a learner that works.

One test per bad input; `BAD_INPUTS` at the bottom lists them.
"""

import math
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import lr_scheduler

from miniai.learner import *
from miniai.guards import BatchError, DivergedError
from miniai.activations import ActivationStats, Hooks
from miniai.datasets import DataFileError, read_idx, write_idx
from miniai.sgd import BatchSchedCB
from torcheval.metrics import MulticlassAccuracy
from conftest import DLs




def img_batches(n=2, bs=4, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(bs, 1, 28, 28, generator=g), torch.randint(0, 10, (bs,), generator=g)) for _ in range(n)]


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(28*28, 16), nn.ReLU(), nn.Linear(16, 10))


def learner(model=None, batches=None, loss_func=F.cross_entropy, **kw):
    return TrainLearner(model or mlp(), DLs(img_batches() if batches is None else batches), loss_func, **{'lr': 0.1, **kw})


def no_hooks(model): return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


# ---------------------------------------------------------------------------------------------------------------------
# Bad input, one test each

def test_bad_wrong_shape_names_layer_and_shapes():
    learn = learner(batches=[(torch.randn(4, 1, 14, 28), torch.zeros(4, dtype=torch.long))])
    with pytest.raises(BatchError) as ei: learn.fit(1)
    msg = str(ei.value)
    assert 'training batch 0 of epoch 0' in msg and '(4, 1, 14, 28) float32' in msg
    assert 'layer `1`' in msg and 'Linear(in_features=784' in msg and '(4, 392)' in msg
    assert isinstance(ei.value.__cause__, RuntimeError) and str(ei.value.__cause__) in msg  # original kept
    assert no_hooks(learn.model) and learn.model.training  # the search for the layer left nothing behind


def test_bad_wrong_dtype():
    learn = learner(batches=[(torch.zeros(4, 1, 28, 28, dtype=torch.uint8), torch.zeros(4, dtype=torch.long))])
    with pytest.raises(BatchError, match=r'uint8.*layer `1`'): learn.fit(1)


def test_bad_shape_in_a_nested_module_names_the_innermost():
    model = nn.Sequential(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU()), nn.Sequential(nn.Conv2d(8, 4, 3)))
    learn = learner(model, loss_func=lambda p, y: p.mean())
    with pytest.raises(BatchError, match=r'layer `1\.0`: Conv2d\(8, 4'): learn.fit(1)


def test_bad_labels_out_of_range_for_the_loss():
    x, y = img_batches(1)[0]
    learn = learner(batches=[(x, y + 10)])
    with pytest.raises(BatchError) as ei: learn.fit(1)
    msg = str(ei.value)
    assert 'loss function failed' in msg and 'from 0 to 9' in msg and 'outputs' in msg and 'predictions tensor (4, 10)' in msg


def test_bad_negative_labels():
    x, y = img_batches(1)[0]
    with pytest.raises(BatchError, match='from 0 to 9'): learner(batches=[(x, y - 20)]).fit(1)


def test_bad_float_labels_for_cross_entropy():
    x, _ = img_batches(1)[0]
    learn = learner(batches=[(x, torch.rand(4, 3))])
    with pytest.raises(BatchError, match='loss function failed.*targets'): learn.fit(1)


def test_bad_empty_loader():
    with pytest.raises(ValueError, match=r'dls\.train\) yielded no batch'): learner(batches=[]).fit(1)
    with pytest.raises(ValueError, match=r'dls\.valid.*valid=False'):
        TrainLearner(mlp(), DLs(img_batches(), []), F.cross_entropy, lr=0.1).fit(1)


def test_bad_empty_loader_without_len():
    class Gen:
        def __iter__(self): return iter(())
    learn = TrainLearner(mlp(), DLs(Gen()), F.cross_entropy, lr=0.1)
    with pytest.raises(ValueError, match='no batch'): learn.fit(1)


@pytest.mark.parametrize('n', [0, -1, 2.5, '3', True, None])
def test_bad_n_epochs(n):
    with pytest.raises(ValueError, match='positive whole number of epochs'): learner().fit(n)


@pytest.mark.parametrize('lr', [-0.1, math.nan, math.inf])
def test_bad_lr_value(lr):
    with pytest.raises(ValueError, match='finite number >= 0'): learner().fit(1, lr=lr)


@pytest.mark.parametrize('lr', ['0.1', [0.1], True])
def test_bad_lr_type(lr):
    with pytest.raises(TypeError, match='must be a number'): learner().fit(1, lr=lr)
    with pytest.raises(TypeError, match='must be a number'): learner(lr=lr).fit(1)


def test_lr_zero_and_tensor_are_fine():
    learner().fit(1, lr=0.)
    learner().fit(1, lr=torch.tensor(0.01))


def test_bad_old_style_callback_signature():
    class Old(Callback):
        def before_fit(self): self.learn = None
    with pytest.raises(TypeError, match=r'Old\.before_fit takes no arguments.*def before_fit\(self, learn\)'):
        learner(cbs=[Old()]).fit(1)
    with pytest.raises(TypeError, match=r'def after_batch\(self, learn\)'):  # caught when the fit starts, before any batch
        learner(cbs=[type('O', (Callback,), {'after_batch': lambda self: None})()]).fit(1)


def test_a_type_error_inside_a_good_callback_is_not_misreported():
    class Bad(Callback):
        def before_fit(self, learn): raise TypeError('my own bug')
    with pytest.raises(TypeError, match='^my own bug$'): learner(cbs=[Bad()]).fit(1)


def test_bad_scheduler_from_opt_before_fit():
    learn = learner()
    with pytest.raises(AttributeError, match=r"no optimizer yet.*in a callback's `before_fit`, from `learn.opt`"):
        lr_scheduler.OneCycleLR(learn.opt, max_lr=0.1, total_steps=10)
    assert not hasattr(learn, 'opt')  # still an AttributeError for hasattr
    with pytest.raises(AttributeError, match='once `fit` has started'): learn.batch


def test_bad_scheduler_object_instead_of_factory():
    opt = torch.optim.SGD(mlp().parameters(), 0.1)
    sched = lr_scheduler.StepLR(opt, 1)
    with pytest.raises(TypeError, match='could not create its scheduler.*optimizer as its only argument'):
        learner(cbs=[BatchSchedCB(sched)]).fit(1)


def test_bad_missing_data_file(tmp_path):
    with pytest.raises(DataFileError, match='Could not read'): read_idx(tmp_path/'train-images-idx3-ubyte.gz')


def test_bad_corrupt_data_file(tmp_path):
    fn = tmp_path/'x-idx3-ubyte'
    write_idx(fn, torch.zeros(10, 4, 4, dtype=torch.uint8))
    fn.write_bytes(fn.read_bytes()[:-7])
    with pytest.raises(DataFileError, match='truncated or corrupt; delete it and fetch it again'): read_idx(fn)
    (tmp_path/'y.gz').write_bytes(b'not gzip at all')
    with pytest.raises(DataFileError, match='corrupt'): read_idx(tmp_path/'y.gz')


# ---------------------------------------------------------------------------------------------------------------------
# Diverging runs

def test_nan_loss_stops_with_epoch_batch_and_lr():
    n = [0]
    def loss(p, y):
        l = F.cross_entropy(p, y)
        if not torch.is_grad_enabled(): return l
        n[0] += 1
        return l*math.nan if n[0] == 4 else l  # 2 training batches an epoch: the 4th is epoch 1, batch 1
    learn = learner(batches=img_batches(2), loss_func=loss)
    with pytest.raises(DivergedError) as ei: learn.fit(3)
    msg = str(ei.value)
    assert 'loss is nan at epoch 1, batch 1' in msg and 'learning rate 0.1' in msg and 'lower learning rate' in msg
    assert isinstance(ei.value, RuntimeError)


def test_diverged_loss_stops_before_the_step():
    learn = learner(loss_func=lambda p, y: F.cross_entropy(p, y)*math.inf)
    w = [p.detach().clone() for p in learn.model.parameters()]
    with pytest.raises(DivergedError, match='loss is inf at epoch 0, batch 0'): learn.fit(1)
    assert all(torch.equal(a, b) for a, b in zip(w, learn.model.parameters()))


def test_nan_validation_loss_is_not_divergence():
    learn = learner(loss_func=lambda p, y: F.cross_entropy(p, y)*(1. if torch.is_grad_enabled() else math.nan))
    learn.fit(1)


def test_lr_find_treats_divergence_as_its_stop_signal():
    learn = learner(batches=img_batches(8))
    res = learn.lr_find(gamma=10, start_lr=1e-3, max_epochs=20)
    assert res.lrs and res.suggestion is not None
    learn.fit(1)  # the check is back on for an ordinary fit
    with pytest.raises(DivergedError): learn.fit(1, lr=1e12)


# ---------------------------------------------------------------------------------------------------------------------
# Interruption (Ctrl-C) and hooks

class CtrlC(Callback):
    def __init__(self, epoch=0, it=1): self.epoch, self.it = epoch, it
    def after_batch(self, learn):
        if learn.training and learn.epoch == self.epoch and learn.iter == self.it: raise KeyboardInterrupt()


@pytest.mark.parametrize('mode', [True, False])
def test_keyboard_interrupt_leaves_the_learner_usable(mode, capsys):
    metrics = MetricsCB(accuracy=MulticlassAccuracy())
    base = [metrics]
    learn = learner(batches=img_batches(4), cbs=base)
    learn.model.train(mode)
    astats, prog = ActivationStats(lambda m: isinstance(m, nn.Linear)), ProgressCB(bars=True)
    with pytest.raises(KeyboardInterrupt): learn.fit(2, cbs=[astats, prog, CtrlC()])
    assert list(learn.cbs) == base               # temporary callbacks removed
    assert no_hooks(learn.model)                 # hooks removed
    assert learn.model.training == mode          # train/eval mode as before the fit
    assert prog.mbar is None and torch.is_grad_enabled()  # the bars were closed
    learn.fit(1)                                 # and the next fit works
    assert [h['epoch'] for h in metrics.history] == [0, 0]


def test_keyboard_interrupt_in_validation_restores_train_mode():
    class StopInValid(Callback):
        def after_batch(self, learn):
            if not learn.training: raise KeyboardInterrupt()
    learn = learner()
    with pytest.raises(KeyboardInterrupt): learn.fit(1, cbs=StopInValid())
    assert learn.model.training
    learn.fit(1)


def test_model_error_restores_mode_and_removes_hooks():
    learn = learner(batches=[(torch.randn(4, 5), torch.zeros(4, dtype=torch.long))])
    learn.model.eval()
    with pytest.raises(BatchError): learn.fit(1, cbs=ActivationStats(lambda m: isinstance(m, nn.Linear)))
    assert not learn.model.training and no_hooks(learn.model)


def test_hooks_context_manager_removes_on_error():
    model = mlp()
    with pytest.raises(ZeroDivisionError):
        with Hooks(model, lambda *a: None):
            assert not no_hooks(model)
            1/0
    assert no_hooks(model)


# The bad inputs tested above, for the record (the report counts them).
BAD_INPUTS = ['batch of the wrong shape', 'batch of the wrong dtype', 'wrong shape inside a nested module',
              'labels above the range for the loss', 'negative labels', 'float labels for cross-entropy',
              'empty data loader (train and valid)', 'empty loader without a length', 'fit(n_epochs) not a positive int',
              'negative/NaN/infinite lr', 'non-numeric lr', 'callback with the old signature',
              'scheduler built from learn.opt before fit', 'scheduler object instead of a factory',
              'missing data file', 'corrupt data file']
