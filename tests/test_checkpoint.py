"""Tests of `miniai.checkpoint`: atomic checkpoints, exact resume after an interruption, safe save/load."""
import os

import random
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn, optim
from torch.optim import lr_scheduler

from miniai.learner import *
from miniai.checkpoint import *
from miniai.activations import set_seed
from miniai.datasets import fashion_mnist_dls
from miniai.sgd import BatchSchedCB, OneCycleSched
from torcheval.metrics import MulticlassAccuracy


@pytest.fixture
def deterministic():
    yield
    torch.use_deterministic_algorithms(False)


def cnn():
    return nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, stride=2, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


N_EPOCHS = 3


def make_learner(dls, sched='torch', model=None):
    total = N_EPOCHS*len(dls.train)
    sched = (partial(lr_scheduler.OneCycleLR, max_lr=1e-2, total_steps=total) if sched == 'torch'
             else partial(OneCycleSched, max_lr=1e-2, total_steps=total))
    metrics = MetricsCB(accuracy=MulticlassAccuracy())
    metrics._log = lambda d: None
    return TrainLearner(model or cnn(), dls, F.cross_entropy, lr=1e-2, opt_func=optim.AdamW,
                        cbs=[metrics, BatchSchedCB(sched)])


class CtrlC(Callback):
    def __init__(self, epoch, it): self.epoch, self.it = epoch, it
    def after_batch(self, learn):
        if learn.training and learn.epoch == self.epoch and learn.iter == self.it: raise KeyboardInterrupt()


@pytest.mark.parametrize('sched', ['torch', 'ours'])
def test_interrupted_then_resumed_run_equals_uninterrupted_run(tmp_path, deterministic, sched):
    "The sample data, AdamW and 1cycle: 3 epochs straight vs 2 epochs + Ctrl-C in the 3rd + resume in a new learner."
    dls = fashion_mnist_dls(bs=256)  # MINIAI_QUICK: the shipped 5,000-image sample, shuffled
    set_seed(7, deterministic=True)
    straight = make_learner(dls, sched)
    straight.fit(N_EPOCHS)

    set_seed(7, deterministic=True)
    first = make_learner(dls, sched)
    ck = tmp_path/'run.pth'
    with pytest.raises(KeyboardInterrupt): first.fit(N_EPOCHS, cbs=[CheckpointCB(ck), CtrlC(2, 3)])
    assert ck.exists() and (tmp_path/'run-interrupted.pth').exists()
    assert not list(tmp_path.glob('.*tmp*'))  # no temporary files left behind

    set_seed(123)  # a different start: resume must restore everything that matters
    resumed = make_learner(dls, sched).resume(ck)
    sd, ref = resumed.model.state_dict(), straight.model.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in ref.items())
    assert resumed.metrics.history == straight.metrics.history
    assert [(h['epoch'], h['train']) for h in resumed.metrics.history] == [(e, t) for e in range(3) for t in (True, False)]
    assert resumed.opt.param_groups[0]['lr'] == straight.opt.param_groups[0]['lr']


def test_checkpoint_contents_and_every(tmp_path):
    dls = fashion_mnist_dls(bs=1024)
    learn = make_learner(dls)
    ck = tmp_path/'c.pth'
    learn.fit(3, cbs=CheckpointCB(ck, every=2))
    d = torch.load(ck, weights_only=True)  # plain data only
    assert d['epoch'] == 2 and d['n_epochs'] == 3 and d['complete']  # the last epoch is always saved
    assert {'model', 'opt', 'scheds', 'metrics', 'rng'} <= set(d) and len(d['metrics']) == 6
    assert set(d['rng']) >= {'torch', 'python', 'numpy'}
    assert not (tmp_path/'c-interrupted.pth').exists()
    with pytest.raises(ValueError, match='already finished'): make_learner(dls).resume(ck)
    with pytest.raises(ValueError, match='every must be a whole number >= 1'): CheckpointCB(ck, every=0)


def test_checkpoint_after_training_when_no_validation(tmp_path):
    dls = fashion_mnist_dls(bs=1024)
    learn = make_learner(dls)
    with pytest.raises(KeyboardInterrupt): learn.fit(3, valid=False, cbs=[CheckpointCB(tmp_path/'c.pth'), CtrlC(1, 1)])
    assert torch.load(tmp_path/'c.pth', weights_only=True)['epoch'] == 0


def test_a_failed_write_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    fn = tmp_path/'c.pth'
    atomic_save({'a': torch.ones(2)}, fn)
    def broken(obj, f):
        open(f, 'wb').write(b'half a file')
        raise OSError('disk full')
    monkeypatch.setattr(torch, 'save', broken)
    with pytest.raises(CheckpointError, match='disk full.*previous c.pth is intact'): atomic_save({'a': torch.zeros(2)}, fn)
    monkeypatch.undo()
    assert torch.equal(load_file(fn)['a'], torch.ones(2)) and list(tmp_path.iterdir()) == [fn]


def test_resume_refuses_interrupted_and_foreign_files(tmp_path):
    dls = fashion_mnist_dls(bs=1024)
    learn = make_learner(dls)
    with pytest.raises(KeyboardInterrupt): learn.fit(3, cbs=[CheckpointCB(tmp_path/'c.pth'), CtrlC(0, 2)])
    assert not (tmp_path/'c.pth').exists()
    with pytest.raises(CheckpointError, match='part-way through epoch 0'): make_learner(dls).resume(tmp_path/'c-interrupted.pth')
    make_learner(dls).load('c-interrupted', path=tmp_path)  # but its weights load
    learn.save('m', path=tmp_path)
    with pytest.raises(CheckpointError, match='not a checkpoint'): make_learner(dls).resume(tmp_path/'m.pth')
    good = tmp_path/'good.pth'
    with pytest.raises(KeyboardInterrupt): make_learner(dls).fit(3, cbs=[CheckpointCB(good), CtrlC(1, 0)])
    no_sched = TrainLearner(cnn(), dls, F.cross_entropy, lr=1e-2, opt_func=optim.AdamW)
    with pytest.raises(CheckpointError, match='1 scheduler callback.*this fit has 0'): no_sched.resume(good)


def test_save_and_load(tmp_path):
    dls = fashion_mnist_dls(bs=1024)
    learn = make_learner(dls)
    learn.fit(1)
    fn = learn.save('cnn', path=tmp_path, with_opt=True)
    assert fn == tmp_path/'cnn.pth' and 'opt' in torch.load(fn, weights_only=True)
    other = make_learner(dls).load('cnn', path=tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(learn.model.state_dict().values(), other.model.state_dict().values()))
    torch.save(learn.model.state_dict(), tmp_path/'bare.pth')  # a plain state dict loads too
    make_learner(dls).load('bare', path=tmp_path)


def test_load_reports_a_different_architecture(tmp_path):
    dls = fashion_mnist_dls(bs=1024)
    make_learner(dls).save('cnn', path=tmp_path)
    wider = nn.Sequential(nn.Conv2d(1, 6, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, stride=2, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    with pytest.raises(CheckpointError, match=r"different architecture.*0\.weight \(saved \(4, 1, 3, 3\), model \(6, 1, 3, 3\)\)"):
        make_learner(dls, model=wider).load('cnn', path=tmp_path)
    extra = nn.Sequential(*cnn(), nn.Linear(10, 10))
    with pytest.raises(CheckpointError, match=r'missing from the file: 7\.weight, 7\.bias.*strict=False'):
        make_learner(dls, model=extra).load('cnn', path=tmp_path)
    make_learner(dls, model=extra).load('cnn', path=tmp_path, strict=False)


def test_load_missing_corrupt_and_unsafe_files(tmp_path):
    dls = fashion_mnist_dls(bs=1024)
    learn = make_learner(dls)
    fn = learn.save('cnn', path=tmp_path)
    with pytest.raises(FileNotFoundError, match='No checkpoint or saved model.*That folder has: cnn.pth'): learn.load('cnn2', path=tmp_path)
    (tmp_path/'cut.pth').write_bytes(fn.read_bytes()[:500])
    with pytest.raises(CheckpointError, match='corrupt, truncated'): learn.load('cut', path=tmp_path)
    torch.save({'model': learn.model.state_dict(), 'thing': random.Random()}, tmp_path/'unsafe.pth')
    with pytest.raises(CheckpointError, match='other than tensors and numbers'): learn.load('unsafe', path=tmp_path)


def test_rng_states_round_trip():
    st = rng_states()
    a = (torch.rand(3), random.random(), np.random.rand())
    set_rng_states(st)
    b = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]


# ---------------------------------------------------------------------------------------------------------------------
# Faults and misuse around checkpoints (issue 12)

def _checkpointed(tmp_path, n_epochs=2, **kwargs):
    "A learner that ran `n_epochs` of `N_EPOCHS` with a CheckpointCB, then was interrupted: its checkpoint file."
    dls = fashion_mnist_dls(bs=1024)
    learn = make_learner(dls, **kwargs)
    with pytest.raises(KeyboardInterrupt): learn.fit(N_EPOCHS, cbs=[CheckpointCB(tmp_path/'c.pth'), CtrlC(n_epochs, 1)])
    return tmp_path/'c.pth'

def test_resume_with_another_optimizer_is_refused(tmp_path):
    fn = _checkpointed(tmp_path)
    learn = make_learner(fashion_mnist_dls(bs=1024))
    learn.opt_func = optim.SGD
    with pytest.raises(CheckpointError, match='saved by a run with a AdamW optimizer.*makes a SGD'): learn.resume(fn)

def test_resume_past_the_end_of_a_one_cycle_schedule_is_refused(tmp_path):
    fn = _checkpointed(tmp_path)
    with pytest.raises(CheckpointError, match=r"OneCycleLR schedule has \d+ steps.*can't be extended"):
        make_learner(fashion_mnist_dls(bs=1024)).resume(fn, n_epochs=N_EPOCHS + 2)

def test_resume_with_another_batch_size(tmp_path):
    fn = _checkpointed(tmp_path)
    with pytest.raises(CheckpointError, match='schedule has'):  # the per-batch schedule no longer fits
        make_learner(fashion_mnist_dls(bs=512)).resume(fn)
    def plain(bs):
        metrics = MetricsCB(); metrics._log = lambda d: None
        return TrainLearner(cnn(), fashion_mnist_dls(bs=bs), F.cross_entropy, lr=1e-2, opt_func=optim.AdamW, cbs=[metrics])
    with pytest.raises(KeyboardInterrupt): plain(1024).fit(N_EPOCHS, cbs=[CheckpointCB(tmp_path/'p.pth'), CtrlC(1, 1)])
    with pytest.warns(UserWarning, match="batches per epoch.*won't reproduce"): plain(512).resume(tmp_path/'p.pth')

def test_fp16_resume_restores_the_loss_scale(tmp_path):
    from miniai.accel import MixedPrecisionCB
    dls = fashion_mnist_dls(bs=1024)
    mp = MixedPrecisionCB(torch.float16)
    learn = make_learner(dls)
    learn.cbs.append(mp)
    learn.fit(2, cbs=CheckpointCB(tmp_path/'c.pth'))
    mp.scaler.update(123.0)  # a scale no fresh scaler starts from, as after some overflows
    from miniai.checkpoint import checkpoint
    learn.epoch = 0
    ck = checkpoint(learn)
    assert ck['cbs']['MixedPrecisionCB']['scaler']['scale'] == 123.0
    atomic_save(ck, tmp_path/'c.pth')
    seen = []
    class Look(Callback):
        order = 200
        def before_batch(self, learn): seen.append(mp2.scaler.get_scale())
    mp2 = MixedPrecisionCB(torch.float16)
    again = make_learner(dls)
    again.cbs.append(mp2)
    again.resume(tmp_path/'c.pth', n_epochs=2, cbs=Look())
    assert seen[0] == 123.0

def test_checkpoint_path_that_is_a_folder_is_refused_at_once(tmp_path):
    with pytest.raises(IsADirectoryError, match='is a folder'): CheckpointCB(tmp_path)
    cb = CheckpointCB(tmp_path/'later')
    (tmp_path/'later').mkdir()
    learn = make_learner(fashion_mnist_dls(bs=1024))
    with pytest.raises(IsADirectoryError): learn.fit(1, cbs=cb)
    assert learn.metrics.history == []  # refused before any training

def test_checkpoint_under_a_file_is_refused(tmp_path):
    (tmp_path/'f').write_text('x')
    with pytest.raises(NotADirectoryError, match='not a folder'): CheckpointCB(tmp_path/'f'/'c.pth')

def test_stale_temporary_files_of_a_killed_save_are_removed(tmp_path):
    import subprocess, sys
    dead = subprocess.Popen([sys.executable, '-c', 'pass']); dead.wait()  # a pid that no longer runs
    stale = tmp_path/f'.c.pth.tmp{dead.pid}'
    stale.write_bytes(b'half a checkpoint')
    live = tmp_path/f'.c.pth.tmp{os.getppid()}'  # a live process's save in progress: left alone
    live.write_bytes(b'in progress')
    atomic_save({'a': torch.ones(1)}, tmp_path/'c.pth')
    assert not stale.exists() and live.exists()

def test_file_size_limit_during_a_save_keeps_the_last_good_file(tmp_path):
    "A real write failure (RLIMIT_FSIZE, as a full disk does), in a subprocess: a clear error, the old file intact."
    import subprocess, sys, textwrap
    fn = tmp_path/'c.pth'
    atomic_save({'a': torch.ones(10)}, fn)
    good = fn.read_bytes()
    code = textwrap.dedent(f'''
        import resource, torch
        from miniai.checkpoint import atomic_save, CheckpointError
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        try: atomic_save({{'a': torch.zeros(100_000)}}, {str(fn)!r})
        except CheckpointError as e: print('CLEAR:', e); raise SystemExit(3)
    ''')
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 3, r.stderr
    assert 'file-size limit' in r.stdout and 'previous c.pth is intact' in r.stdout
    assert fn.read_bytes() == good and sorted(p.name for p in tmp_path.iterdir()) == ['c.pth']

def test_kill_during_checkpointing_leaves_a_loadable_file(tmp_path):
    "kill -9 while a process saves checkpoints in a loop: the file is always a complete one."
    import signal, subprocess, sys, textwrap, time
    fn = tmp_path/'c.pth'
    code = textwrap.dedent(f'''
        import torch
        from miniai.checkpoint import atomic_save
        i = 0
        while True:
            atomic_save({{'i': torch.tensor(i), 'w': torch.randn(200_000)}}, {str(fn)!r}); i += 1
    ''')
    p = subprocess.Popen([sys.executable, '-c', code])
    try:
        t0 = time.time()
        while not fn.exists() and time.time() - t0 < 60: time.sleep(0.05)
        time.sleep(0.5)
    finally:
        p.send_signal(signal.SIGKILL); p.wait()
    assert load_file(fn)['w'].shape == (200_000,)
    atomic_save({'i': torch.tensor(-1)}, fn)  # the next save cleans up what the killed one left
    assert sorted(q.name for q in tmp_path.iterdir()) == ['c.pth']


def test_another_runs_checkpoint_is_not_overwritten(tmp_path):
    dls = fashion_mnist_dls(bs=1024)
    make_learner(dls).fit(1, cbs=CheckpointCB(tmp_path/'c.pth'))
    first = (tmp_path/'c.pth').read_bytes()
    with pytest.raises(FileExistsError, match=r"already holds a checkpoint.*learn.resume.*overwrite=True"):
        make_learner(dls).fit(1, cbs=CheckpointCB(tmp_path/'c.pth'))
    assert (tmp_path/'c.pth').read_bytes() == first
    make_learner(dls).fit(1, cbs=CheckpointCB(tmp_path/'c.pth', overwrite=True))  # when asked to
    cb, learn = CheckpointCB(tmp_path/'d.pth'), make_learner(dls)
    learn.fit(1, cbs=cb); learn.fit(1, cbs=cb)  # the same callback may go on writing its own file


def test_checkpoint_every_takes_numpy_integers(tmp_path):
    assert CheckpointCB(tmp_path/'c.pth', every=np.int64(2)).every == 2


def test_resume_with_bad_n_epochs_and_a_folder(tmp_path):
    learn = make_learner(fashion_mnist_dls(bs=1024))
    with pytest.raises(ValueError, match='positive whole number of epochs'): learn.resume(tmp_path/'c.pth', n_epochs='5')
    with pytest.raises(IsADirectoryError, match='is a folder'): learn.resume(tmp_path)


def test_save_names_with_dots_get_pth(tmp_path):
    learn = make_learner(fashion_mnist_dls(bs=1024))
    assert learn.save('m.v2', path=tmp_path).name == 'm.v2.pth'
    learn.load('m.v2', path=tmp_path)
