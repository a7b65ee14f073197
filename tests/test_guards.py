"""Bad inputs and faults around the `Learner` (issue 12): each gets a clear error naming what was wrong and how to fix
it, or works as a user would expect; none ends in a bare traceback from inside PyTorch, nor in a silent wrong result.

The checks live in `miniai.guards` (notebook 09a_guards); these tests drive them through `Learner.fit`, as a user does.
"""
import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn, optim
from torch.optim import lr_scheduler
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from miniai.learner import *
from miniai.guards import BatchError, DivergedError, DivergenceCB, check_callback
from miniai.datasets import DataLoaders
from miniai.activations import ActivationStats
from miniai.checkpoint import CheckpointCB
from miniai.sgd import BatchSchedCB, RecorderCB
from miniai.accel import MixedPrecisionCB
from torcheval.metrics import MulticlassAccuracy


def mlp(): return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))

X, Y = torch.randn(6, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2])

class Batches:
    "The same batches for training and validation."
    def __init__(self, *batches): self.train = self.valid = list(batches)

def learner(batches=((X, Y),), model=None, loss=F.cross_entropy, cbs=(TrainCB,), **kwargs):
    return Learner(model or mlp(), Batches(*batches), loss, cbs=[c() for c in cbs], **kwargs)


# ---------------------------------------------------------------------------------------------------------------------
# The model and the loss

def test_model_returning_a_tuple_says_so():
    class Two(nn.Module):
        def __init__(self): super().__init__(); self.m = mlp()
        def forward(self, x): return self.m(x), self.m(x)
    with pytest.raises(BatchError, match=r'model returned \(tensor .*, tensor .*\), not one tensor'): learner(model=Two()).fit(1)

def test_model_returning_a_dict_says_so():
    class Dict(nn.Module):
        def __init__(self): super().__init__(); self.m = mlp()
        def forward(self, x): return {'logits': self.m(x)}
    with pytest.raises(BatchError, match=r"model returned \{'logits'"): learner(model=Dict()).fit(1)

def test_model_returning_a_tuple_trains_with_a_loss_that_takes_it():
    class Two(nn.Module):
        def __init__(self): super().__init__(); self.m = mlp()
        def forward(self, x): return self.m(x), self.m(x)
    learner(model=Two(), loss=lambda p, y: F.cross_entropy(p[0], y) + F.cross_entropy(p[1], y)).fit(1)

def test_loss_returning_a_non_scalar():
    with pytest.raises(ValueError, match=r"shape \(6,\), not a single number.*reduction='mean'"):
        learner(loss=partial(F.cross_entropy, reduction='none')).fit(1)

def test_loss_returning_a_python_float():
    with pytest.raises(TypeError, match=r"returned float .*not a tensor.*don't call .item\(\)"):
        learner(loss=lambda p, y: F.cross_entropy(p, y).item()).fit(1)

def test_loss_class_passed_without_parentheses():
    with pytest.raises(TypeError, match=r'loss_func is the class CrossEntropyLoss.*CrossEntropyLoss\(\)'):
        learner(loss=nn.CrossEntropyLoss).fit(1)

def test_loss_module_instance_works():
    learner(loss=nn.CrossEntropyLoss()).fit(1)

def test_default_mse_with_broadcasting_shapes_is_refused():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 1))  # (6, 1) predictions against (6,) targets: would broadcast
    with pytest.raises(ValueError, match=r'predictions \(6, 1\), targets \(6,\)'):
        learner(model=model, loss=F.mse_loss, batches=((X, Y.float()),)).fit(1)
    with pytest.raises(ValueError, match='element by element'):
        learner(model=model, loss=nn.MSELoss(), batches=((X, Y.float()),)).fit(1)

def test_default_mse_with_matching_shapes_trains():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 1))
    learner(model=model, loss=F.mse_loss, batches=((X, Y.float()[:, None]),)).fit(1)

def test_error_of_any_type_in_the_model_is_explained():
    class KeyFails(nn.Module):
        def __init__(self): super().__init__(); self.w = nn.Parameter(torch.zeros(1))
        def forward(self, x): return {}['missing']
    with pytest.raises(BatchError, match=r"(?s)model failed on training batch 0 of epoch 0.*KeyError") as ei:
        learner(model=KeyFails()).fit(1)
    assert isinstance(ei.value.__cause__, KeyError)


# ---------------------------------------------------------------------------------------------------------------------
# Batches

def test_bare_tensor_batches_without_labels_are_refused():
    "Today's bug: trained silently on image-against-image."
    with pytest.raises(TypeError, match='single tensor .*not a tuple of inputs and targets'): learner(batches=(X,), loss=F.mse_loss).fit(1)

def test_dict_batches_are_refused_with_collate_advice():
    with pytest.raises(TypeError, match=r"dict with keys \['image', 'label'\].*collate_dict"):
        learner(batches=({'image': X, 'label': Y},)).fit(1)

def test_numpy_batches_are_refused():
    with pytest.raises(TypeError, match='NumPy arrays.*torch.from_numpy'): learner(batches=((X.numpy(), Y.numpy()),)).fit(1)

def test_batch_with_too_few_items():
    with pytest.raises(TypeError, match=r'1 item\(s\)'): learner(batches=((X,),)).fit(1)

def test_custom_steps_may_use_dict_batches():
    class DictLearner(Learner):
        def predict(self): self.preds = self.model(self.batch['x'])
        def get_loss(self): self.loss = self.loss_func(self.preds, self.batch['y'])
        def backward(self): self.loss.backward()
        def step(self): self.opt.step()
        def zero_grad(self): self.opt.zero_grad()
    DictLearner(mlp(), Batches({'x': X, 'y': Y}), F.cross_entropy).fit(1)

def test_last_training_batch_of_one_in_a_batchnorm_model_is_refused_up_front():
    bn = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
    dl = DataLoader(TensorDataset(torch.randn(5, 1, 4, 4), torch.zeros(5, dtype=torch.long)), batch_size=2)
    with pytest.raises(ValueError, match=r'last batch holds 1 item.*drop_last=True'):
        Learner(bn, DataLoaders(dl, dl), F.cross_entropy, cbs=[TrainCB()]).fit(1)
    dl = DataLoader(dl.dataset, batch_size=2, drop_last=True)
    Learner(bn, DataLoaders(dl, dl), F.cross_entropy, cbs=[TrainCB()]).fit(1)  # with drop_last it trains

def test_batch_of_one_in_batchnorm_from_an_unmeasurable_loader_gets_advice():
    bn = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
    with pytest.raises(BatchError, match='BatchNorm layer cannot train on a batch of one'):
        learner(model=bn, batches=((X[:1], Y[:1]),)).fit(1)


class Stream(IterableDataset):
    def __init__(self, n): self.n = n
    def __iter__(self): return iter([(X[i % 6], Y[i % 6]) for i in range(self.n)])

def test_loader_without_a_length_trains(capsys):
    dl = DataLoader(Stream(12), batch_size=4)
    with pytest.raises(TypeError): len(dl)
    metrics = MetricsCB(accuracy=MulticlassAccuracy(num_classes=3))
    Learner(mlp(), DataLoaders(dl, dl), F.cross_entropy, cbs=[TrainCB(), metrics, ProgressCB(plot=True, bars=True)]).fit(2)
    assert len(metrics.history) == 4

def test_empty_loader_without_a_length_is_an_error():
    dl = DataLoader(Stream(0), batch_size=4)
    with pytest.raises(ValueError, match=r'dls.train\) yielded no batch'):
        Learner(mlp(), DataLoaders(dl, dl), F.cross_entropy, cbs=[TrainCB(), MetricsCB()]).fit(1)


# ---------------------------------------------------------------------------------------------------------------------
# Parameters and optimizers

def test_model_without_parameters():
    with pytest.raises(ValueError, match='no parameters.*opt_func=None'): learner(model=nn.Flatten(), loss=lambda p, y: p.sum()).fit(1)

def test_model_without_parameters_runs_with_opt_func_none():
    learner(model=nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).requires_grad_(False), opt_func=None).fit(1, train=False)

def test_all_parameters_frozen():
    with pytest.raises(ValueError, match='frozen'): learner(model=mlp().requires_grad_(False)).fit(1)
    learner(model=mlp().requires_grad_(False)).fit(1, train=False)  # validating a frozen model is fine

def test_opt_func_as_an_optimizer_instance():
    with pytest.raises(TypeError, match=r'opt_func is an optimizer \(AdamW\).*opt_func=optim.AdamW'):
        learner(opt_func=optim.AdamW(mlp().parameters())).fit(1)

def test_opt_func_none_with_training_says_there_is_no_optimizer():
    with pytest.raises(AttributeError, match='opt_func is None'): learner(opt_func=None).fit(1)

def test_loaders_as_a_tuple():
    dl = DataLoader(TensorDataset(X, Y), batch_size=3)
    with pytest.raises(TypeError, match=r'tuple of two loaders.*DataLoaders\(\*dls\)'):
        Learner(mlp(), (dl, dl), F.cross_entropy, cbs=[TrainCB()]).fit(1)

def test_loaders_as_a_single_dataloader():
    dl = DataLoader(TensorDataset(X, Y), batch_size=3)
    with pytest.raises(TypeError, match=r'got DataLoader.*DataLoaders\(train_dl, valid_dl\)'):
        Learner(mlp(), dl, F.cross_entropy, cbs=[TrainCB()]).fit(1)

def test_valid_loader_missing():
    class TrainOnly: train, valid = [(X, Y)], None
    with pytest.raises(ValueError, match='dls.valid is missing.*valid=False'): Learner(mlp(), TrainOnly(), F.cross_entropy, cbs=[TrainCB()]).fit(1)
    Learner(mlp(), TrainOnly(), F.cross_entropy, cbs=[TrainCB()]).fit(1, valid=False)

def test_one_cycle_schedule_shorter_than_the_fit():
    sched = partial(lr_scheduler.OneCycleLR, max_lr=0.1, total_steps=2)
    with pytest.raises(ValueError, match=r'has 2 steps, but this fit takes 3.*total_steps=len\(dls.train\)\*n_epochs'):
        learner().fit(3, cbs=BatchSchedCB(sched))
    learner().fit(2, cbs=BatchSchedCB(sched))  # exactly long enough


# ---------------------------------------------------------------------------------------------------------------------
# Callbacks

def test_misspelled_events_name_the_nearest_event():
    for typo, right in (('after_bach', 'after_batch'), ('before_epcoh', 'before_epoch'), ('befor_fit', 'before_fit'),
                        ('after_los', 'after_loss'), ('cleanup_fitt', 'cleanup_fit')):
        cb = type('Typo', (Callback,), {typo: lambda self, learn: None})()
        with pytest.raises(AttributeError, match=f'Typo.{typo} is not an event.*did you mean `{right}`'): learner().fit(1, cbs=cb)

def test_callback_class_instead_of_instance():
    with pytest.raises(TypeError, match=r'MetricsCB is a callback class: pass an instance, `MetricsCB\(\)`'):
        learner().fit(1, cbs=MetricsCB)

def test_library_callbacks_pass_the_event_check():
    for cb in (TrainCB(), DeviceCB(), MetricsCB(), ProgressCB(), LRFinderCB(), SingleBatchCB(), CheckpointCB('x.pth'),
               BatchSchedCB(lambda o: None), RecorderCB(lr=lambda cb: 0), ActivationStats(), MixedPrecisionCB(), DivergenceCB()):
        check_callback(cb)

def test_cleanups_survive_a_before_fit_that_never_ran(tmp_path):
    "A failing first callback (here: a scheduler that can't be made) must surface, not an AttributeError from a cleanup."
    class Fails(Callback):
        order = -100
        def before_fit(self, learn): raise RuntimeError('the real error')
    cbs = [MetricsCB(), ProgressCB(bars=True, plot=True), CheckpointCB(tmp_path/'c.pth'), ActivationStats(), MixedPrecisionCB(),
           RecorderCB(lr=lambda cb: 0), LRFinderCB(), DivergenceCB()]
    with pytest.raises(RuntimeError, match='the real error') as ei: learner().fit(1, cbs=[Fails(), *cbs])
    assert ei.value.__context__ is None  # nothing raised on top of it
    for cb in cbs:  # and each cleanup alone, on a learner that never fit
        for event in ('cleanup_batch', 'cleanup_epoch', 'cleanup_fit'): getattr(cb, event, lambda learn: None)(learner())

def test_missing_cuda_says_so_and_is_not_buried():
    if torch.cuda.is_available(): pytest.skip('this machine has a GPU')
    with pytest.raises(RuntimeError, match=r"no cuda device on this machine.*DeviceCB\(\)") as ei:
        learner().fit(1, cbs=[DeviceCB('cuda'), ProgressCB(bars=True), MetricsCB()])
    assert ei.value.__context__ is None

def test_failing_scheduler_is_not_buried():
    with pytest.raises(TypeError, match='could not create its scheduler'):
        learner().fit(1, cbs=[BatchSchedCB(lambda opt, x: None), ProgressCB(bars=True), CheckpointCB('never.pth')])


# ---------------------------------------------------------------------------------------------------------------------
# Nested fits and quiet passes

def test_nested_fit_is_refused_and_the_outer_fit_is_intact():
    class Nested(Callback):
        def after_epoch(self, learn):
            if not learn.training: learn.fit(1)
    metrics = MetricsCB()
    learn = learner(cbs=(TrainCB,))
    learn.cbs.append(metrics)
    with pytest.raises(RuntimeError, match='already fitting'): learn.fit(2, cbs=Nested())
    assert [type(cb) for cb in learn.cbs] == [TrainCB, MetricsCB]
    learn.fit(2)  # and the learner works afterwards
    assert [h['epoch'] for h in metrics.history] == [0, 0, 1, 1]

def test_quiet_pass_keeps_history_and_restores_callbacks():
    metrics = MetricsCB()
    learn = learner()
    learn.cbs += [metrics, ProgressCB(bars=False)]
    learn.fit(1)
    before = list(metrics.history)
    with learn.quiet():
        assert [type(cb) for cb in learn.cbs] == [TrainCB]
        learn.fit(1, train=False)
    assert metrics.history == before and len(learn.cbs) == 3

def test_quiet_pass_with_another_loader_and_restores_on_error():
    learn = learner()
    dls = learn.dls
    seen = []
    class Count(Callback):
        def after_batch(self, learn): seen.append(len(learn.batch[0]))
    with learn.quiet(valid=[(X[:2], Y[:2])]): learn.fit(1, train=False, cbs=Count())
    assert seen == [2] and learn.dls is dls
    with pytest.raises(ValueError), learn.quiet(): raise ValueError()
    assert learn.dls is dls and len(learn.cbs) == 1

def test_lr_find_writes_no_checkpoint_and_keeps_history(tmp_path):
    metrics, ck = MetricsCB(), CheckpointCB(tmp_path/'c.pth')
    learn = learner(batches=[(X, Y)]*4)
    learn.cbs += [metrics, ck]
    learn.fit(1)
    before, stamp = list(metrics.history), (tmp_path/'c.pth').stat().st_mtime_ns
    learn.lr_find(max_epochs=3)
    assert metrics.history == before and (tmp_path/'c.pth').stat().st_mtime_ns == stamp
    assert sorted(p.name for p in tmp_path.iterdir()) == ['c.pth']


# ---------------------------------------------------------------------------------------------------------------------
# Divergence

def test_divergence_is_a_default_callback_for_the_fit_only():
    seen = []
    class Look(Callback):
        def before_fit(self, learn): seen.extend(type(cb).__name__ for cb in learn.cbs)
    learn = learner()
    learn.fit(1, cbs=Look())
    assert 'DivergenceCB' in seen and [type(cb) for cb in learn.cbs] == [TrainCB]

def test_own_divergence_cb_is_not_doubled():
    seen = []
    class Look(Callback):
        def before_fit(self, learn): seen.extend(type(cb).__name__ for cb in learn.cbs)
    learner().fit(1, cbs=[DivergenceCB(every=4), Look()])
    assert seen.count('DivergenceCB') == 1

def test_divergence_checks_a_cpu_loss_at_once_and_a_device_flag_when_it_looks():
    from types import SimpleNamespace
    cb = DivergenceCB(every=3)
    learn = SimpleNamespace(training=True, epoch=0, iter=2, loss=torch.tensor(math.nan))
    with pytest.raises(DivergedError, match='loss is nan at epoch 0, batch 2'): cb.after_loss(learn)
    learn.training = False
    cb.after_loss(learn)  # a NaN validation loss is not divergence
    cb.bad = torch.tensor(True)  # what accumulates on a GPU between looks
    with pytest.raises(DivergedError, match='not finite at epoch 0, by batch 2'): cb.after_epoch(learn)
    cb.before_epoch(learn)
    cb.after_epoch(learn)  # a new epoch starts clean


# ---------------------------------------------------------------------------------------------------------------------
# Found by a fault hunt over the first version of the guards

def test_schedulers_are_left_out_of_lr_find():
    from torch.optim.lr_scheduler import StepLR
    learn = learner(batches=[(X, Y)]*8)
    learn.cbs.append(BatchSchedCB(partial(StepLR, step_size=1, gamma=0.01)))
    res = learn.lr_find(max_epochs=2)
    assert all(b > a for a, b in zip(res.lrs, res.lrs[1:]))  # the finder's own schedule, not the StepLR's

def test_mse_through_a_partial_still_checks_shapes():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 1))
    with pytest.raises(ValueError, match='element by element'):
        learner(model=model, loss=partial(F.mse_loss, reduction='mean'), batches=((X, Y.float()),)).fit(1)

def test_metric_named_loss_class_or_non_metric_is_refused():
    with pytest.raises(ValueError, match='`loss` is taken'): MetricsCB(loss=MulticlassAccuracy())
    with pytest.raises(TypeError, match=r'is a class: pass an instance'): MetricsCB(accuracy=MulticlassAccuracy)
    with pytest.raises(TypeError, match='not a metric'): MetricsCB(acc=lambda p, y: 0)

def test_metric_for_another_number_of_classes_names_the_metric():
    with pytest.raises(ValueError, match=r'metric `acc` \(MulticlassAccuracy\) failed on predictions tensor \(6, 3\)'):
        learner(cbs=(TrainCB, lambda: MetricsCB(acc=MulticlassAccuracy(num_classes=2)))).fit(1)

def test_metrics_with_tuple_predictions_say_so():
    class Two(nn.Module):
        def __init__(self): super().__init__(); self.m = mlp()
        def forward(self, x): return self.m(x), self.m(x)
    learn = learner(model=Two(), loss=lambda p, y: F.cross_entropy(p[0], y), cbs=(TrainCB, lambda: MetricsCB(acc=MulticlassAccuracy())))
    with pytest.raises(TypeError, match='needs one tensor of predictions'): learn.fit(1)

def test_lr_find_refuses_a_gamma_that_does_not_grow():
    for g in (1.0, 0.5):
        with pytest.raises(ValueError, match='gamma must be a number > 1'): learner().lr_find(gamma=g)
    with pytest.raises(TypeError, match='gamma must be a number'): learner().lr_find(gamma='1.3')
    with pytest.raises(ValueError, match='lr_find: max_epochs'): learner().lr_find(max_epochs=0)

def test_fit_with_nothing_to_do_or_non_bool_flags():
    with pytest.raises(ValueError, match='nothing to do'): learner().fit(1, train=False, valid=False)
    with pytest.raises(TypeError, match='must be True or False'): learner().fit(1, train='no')

def test_two_callbacks_implementing_the_same_step():
    with pytest.raises(TypeError, match=r'TrainCB and TrainCB both implement `predict`'): learner(cbs=(TrainCB, TrainCB)).fit(1)

def test_nothing_to_train_without_an_optimizer():
    with pytest.raises(ValueError, match='nothing to train.*fit\\(train=False\\)'): learner(model=nn.Flatten(), opt_func=None).fit(1)

def test_constructor_arguments_are_checked_where_given():
    with pytest.raises(TypeError, match="TrainCB: n_inp must be a whole number"): TrainCB(n_inp='1')
    with pytest.raises(ValueError, match="TrainCB: n_inp must be a whole number >= 1"): TrainCB(n_inp=0)
    with pytest.raises(TypeError, match="MomentumLearner: mom must be a number"): MomentumLearner(mlp(), None, F.mse_loss, mom='0.9')
    with pytest.raises(ValueError, match="DivergenceCB: every"): DivergenceCB(every=0)
    with pytest.raises(TypeError, match="order must be a number"): learner().fit(1, cbs=type('C', (Callback,), {'order': 'first'})())
    with pytest.raises(TypeError, match='cbs is a dict'): learner().fit(1, cbs={'m': MetricsCB()})

def test_helper_methods_are_not_taken_for_misspelled_events():
    class Helpers(Callback):
        def after_training_report(self, learn): pass
        def after(self, learn): pass
        def cleanup(self): pass
        def get_losses(self): pass
        def backwards(self, a, b): pass
    learner().fit(1, cbs=Helpers())

def test_a_bug_in_a_predict_callback_is_not_blamed_on_the_model():
    class MyPredict(TrainCB):
        def predict(self, learn): learn.preds = learn.model(learn.batch[0]) + undefined_name  # noqa: F821
    with pytest.raises(BatchError, match=r'(?s)NameError.*model itself runs on this batch'): learner(cbs=(MyPredict,)).fit(1)

def test_model_and_batch_on_different_devices():
    learn = learner(cbs=(TrainCB,))
    learn.model.to('meta')
    with pytest.raises(BatchError, match=r'different devices \(cpu, meta\).*DeviceCB\(\)'): learn.fit(1)

def test_epoch_schedule_shorter_than_the_fit():
    from miniai.sgd import EpochSchedCB
    sched = partial(lr_scheduler.OneCycleLR, max_lr=0.1, total_steps=1)
    with pytest.raises(ValueError, match='has 1 steps, but this fit takes 3 epochs'): learner().fit(3, cbs=EpochSchedCB(sched))

def test_scheduler_that_fails_to_build_for_any_reason():
    with pytest.raises(ValueError, match='could not create its scheduler'):
        learner().fit(1, cbs=BatchSchedCB(lambda opt: 1/0))

def test_lesson_sgd_with_a_scheduler_says_it_needs_param_groups():
    from miniai.sgd import SGD
    with pytest.raises(TypeError, match='param_groups'): learner(opt_func=SGD).fit(1, cbs=BatchSchedCB(lambda o: None))

def test_recorder_and_hook_arguments():
    with pytest.raises(TypeError, match='must be a function'): RecorderCB(lr='lr')
    with pytest.raises(ValueError, match='nothing recorded yet'): RecorderCB(lr=lambda cb: 0).plot()
    with pytest.raises(TypeError, match=r'fc.risinstance\(nn.Linear\)'): ActivationStats(nn.Linear)
    from miniai.activations import HooksCallback, append_stats
    assert len(HooksCallback(append_stats, mods=nn.Linear(2, 2)).mods) == 1

def test_init_arguments():
    from miniai.init import get_model, lsuv_init
    with pytest.raises(TypeError, match='pass the class'): get_model(act=nn.ReLU())
    lin = nn.Linear(4, 3)
    with pytest.raises(ValueError, match='batch of several items'): lsuv_init(lin, lin, lin, torch.randn(1, 4))
