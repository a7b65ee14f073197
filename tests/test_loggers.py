"The run loggers (miniai.loggers): the CSV and TensorBoard files are read back, the CSV one with the csv module and the TensorBoard one with tensorboard's own reader."
import contextlib, csv, io, sys, warnings

import pytest
import torch
import torch.nn.functional as F

from miniai.activations import set_seed
from miniai.datasets import DataLoaders, TensorLoader, fashion_mnist_tensors
from miniai.learner import Callback, DeviceCB, MetricsCB, TrainLearner
from miniai.loggers import CSVLoggerCB, TensorBoardCB, read_scalars
from miniai.resnet import resnet
from torcheval.metrics import MulticlassAccuracy  # after miniai.learner, which quiets torcheval's import-time warning


@pytest.fixture(scope='module')
def dls():
    data = fashion_mnist_tensors()  # the shipped sample (tests run in quick mode)
    return DataLoaders(TensorLoader(*[t[:512] for t in data['train']], bs=128, shuffle=True),
                       TensorLoader(*[t[:256] for t in data['test']], bs=128))


def learner(dls, *cbs, metrics=True):
    set_seed(0)
    base = [DeviceCB()] + ([MetricsCB(accuracy=MulticlassAccuracy())] if metrics else [])
    return TrainLearner(resnet(nfs=(4, 8), first='conv'), dls, F.cross_entropy, lr=1e-2, opt_func=torch.optim.AdamW,
                        cbs=base + list(cbs))


def fit(learn, *args, **kwargs):
    with contextlib.redirect_stdout(io.StringIO()): learn.fit(*args, **kwargs)  # MetricsCB prints its table


def rows(fn): return list(csv.DictReader(open(fn, newline='')))


COLUMNS = ['epoch', 'train_loss', 'train_accuracy', 'valid_loss', 'valid_accuracy', 'lr', 'seconds']


# ---------------------------------------------------------------------------------------------------------------------
# CSVLoggerCB

def test_csv_one_row_per_epoch_matching_the_metrics(dls, tmp_path):
    fn = tmp_path/'m.csv'
    learn = learner(dls, CSVLoggerCB(fn))
    fit(learn, 3)
    rs = rows(fn)
    assert list(rs[0]) == COLUMNS
    assert [r['epoch'] for r in rs] == ['0', '1', '2']
    hist = learn.metrics.history
    for e, r in enumerate(rs):
        tr, va = hist[2*e], hist[2*e + 1]
        assert tr['train'] and not va['train']
        assert float(r['train_loss']) == pytest.approx(tr['loss'], rel=1e-5)
        assert float(r['train_accuracy']) == pytest.approx(tr['accuracy'], rel=1e-5)
        assert float(r['valid_loss']) == pytest.approx(va['loss'], rel=1e-5)
        assert float(r['valid_accuracy']) == pytest.approx(va['accuracy'], rel=1e-5)
        assert float(r['lr']) == pytest.approx(1e-2) and float(r['seconds']) > 0
    assert fn.read_text().endswith('\n') and '\r' not in fn.read_text()


def test_csv_fit_without_validation_and_validation_only(dls, tmp_path):
    fn = tmp_path/'m.csv'
    learn = learner(dls, CSVLoggerCB(fn))
    fit(learn, 2, valid=False)
    rs = rows(fn)
    assert [r['epoch'] for r in rs] == ['0', '1']
    assert all(r['train_loss'] and not r['valid_loss'] for r in rs)
    fit(learn, 1, train=False)  # the same callback object: its rows go on in the same file
    rs = rows(fn)
    assert len(rs) == 3 and rs[2]['valid_loss'] and not rs[2]['train_loss'] and not rs[2]['lr']


def test_csv_refuses_an_existing_file_unless_asked(dls, tmp_path):
    fn = tmp_path/'m.csv'
    fit(learner(dls, CSVLoggerCB(fn)), 2)
    before = fn.read_text()
    with pytest.raises(FileExistsError, match='already exists, with 2 rows.*append=True.*overwrite=True'):
        fit(learner(dls, CSVLoggerCB(fn)), 1)
    assert fn.read_text() == before  # untouched
    fit(learner(dls, CSVLoggerCB(fn, append=True)), 1)
    assert [r['epoch'] for r in rows(fn)] == ['0', '1', '0']
    fit(learner(dls, CSVLoggerCB(fn, overwrite=True)), 1)
    assert [r['epoch'] for r in rows(fn)] == ['0']


def test_csv_append_needs_the_same_columns(dls, tmp_path):
    fn = tmp_path/'m.csv'
    fn.write_text('epoch,loss\n0,1.0\n')
    with pytest.raises(ValueError, match="has the columns epoch, loss, but this run logs epoch, train_loss"):
        fit(learner(dls, CSVLoggerCB(fn, append=True)), 1)
    assert fn.read_text() == 'epoch,loss\n0,1.0\n'


def test_csv_append_cuts_off_a_half_written_line(dls, tmp_path):
    fn = tmp_path/'m.csv'
    fit(learner(dls, CSVLoggerCB(fn)), 1)
    with fn.open('a') as f: f.write('1,0.7,0.5')  # a run killed while writing its second row
    with pytest.warns(UserWarning, match='unfinished line'):
        fit(learner(dls, CSVLoggerCB(fn, append=True)), 1)
    rs = rows(fn)
    assert [r['epoch'] for r in rs] == ['0', '0'] and all(r['seconds'] for r in rs)


class StopAt(Callback):
    "Raise KeyboardInterrupt (a Ctrl-C) in batch 1 of epoch `epoch`."
    def __init__(self, epoch): self.epoch = epoch
    def before_batch(self, learn):
        if learn.epoch == self.epoch and learn.iter == 1: raise KeyboardInterrupt


@pytest.mark.parametrize('valid', [True, False])
def test_csv_an_interrupted_run_keeps_its_finished_epochs(dls, tmp_path, valid):
    fn = tmp_path/'m.csv'
    with pytest.raises(KeyboardInterrupt): fit(learner(dls, CSVLoggerCB(fn), StopAt(2)), 5, valid=valid)
    assert [r['epoch'] for r in rows(fn)] == ['0', '1']  # epoch 2 was cut short: no row for it


def test_csv_rows_are_on_disk_during_the_run(dls, tmp_path):
    fn = tmp_path/'m.csv'
    seen = []
    class Peek(Callback):
        order = 50  # after the logger
        def after_epoch(self, learn):
            if not learn.training: seen.append(len(rows(fn)))  # another reader, while the run goes on
    fit(learner(dls, CSVLoggerCB(fn), Peek()), 3)
    assert seen == [1, 2, 3]


def test_csv_quiet_pass_adds_no_row(dls, tmp_path):
    fn = tmp_path/'m.csv'
    learn = learner(dls, CSVLoggerCB(fn))
    fit(learn, 1)
    assert CSVLoggerCB.side_effects is True and TensorBoardCB.side_effects is True
    with learn.quiet(): fit(learn, 1, train=False)
    assert len(rows(fn)) == 1


def test_csv_bad_setups(dls, tmp_path):
    with pytest.raises(ValueError, match='not both'): CSVLoggerCB(tmp_path/'m.csv', append=True, overwrite=True)
    with pytest.raises(ValueError, match='no MetricsCB'): fit(learner(dls, CSVLoggerCB(tmp_path/'m.csv'), metrics=False), 1)
    with pytest.raises(IsADirectoryError, match='is a folder'): fit(learner(dls, CSVLoggerCB(tmp_path)), 1)
    fit(learner(dls, CSVLoggerCB(tmp_path/'new'/'sub'/'m.csv')), 1)  # missing folders are created
    assert len(rows(tmp_path/'new'/'sub'/'m.csv')) == 1


# ---------------------------------------------------------------------------------------------------------------------
# TensorBoardCB, read back with tensorboard's EventAccumulator

def test_tensorboard_events_read_back(dls, tmp_path):
    learn = learner(dls, TensorBoardCB(tmp_path/'tb'))
    fit(learn, 2)
    sc = read_scalars(tmp_path/'tb')
    assert set(sc) == {'batch/train_loss', 'epoch/train_loss', 'epoch/train_accuracy', 'epoch/valid_loss',
                       'epoch/valid_accuracy', 'epoch/lr'}
    assert [s for s, _ in sc['batch/train_loss']] == list(range(8))  # 4 batches an epoch
    hist = learn.metrics.history
    for tag, h in (('epoch/train_loss', hist[0::2]), ('epoch/valid_accuracy', hist[1::2])):
        assert [s for s, _ in sc[tag]] == [0, 1]
        assert [v for _, v in sc[tag]] == pytest.approx([o[tag.split('_')[-1]] for o in h], rel=1e-6)
    assert [v for _, v in sc['epoch/lr']] == pytest.approx([1e-2, 1e-2])
    assert all(v > 0 for _, v in sc['batch/train_loss'])


def test_tensorboard_every_and_closing(dls, tmp_path):
    cb = TensorBoardCB(tmp_path/'tb', every=3)
    learn = learner(dls, cb)
    fit(learn, 2)
    assert cb.writer is None  # closed when the fit ended
    assert [s for s, _ in read_scalars(tmp_path/'tb')['batch/train_loss']] == [0, 3, 6]
    with pytest.raises(KeyboardInterrupt): fit(learner(dls, cb, StopAt(1)), 3)
    assert cb.writer is None  # closed after a Ctrl-C too


def test_tensorboard_bad_setups(dls, tmp_path, monkeypatch):
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match='every'): TensorBoardCB(tmp_path, every=bad)
    (tmp_path/'file').write_text('')
    with pytest.raises(NotADirectoryError): TensorBoardCB(tmp_path/'file')
    with pytest.raises(ValueError, match='no MetricsCB'): fit(learner(dls, TensorBoardCB(tmp_path/'tb'), metrics=False), 1)
    with pytest.raises(FileNotFoundError): read_scalars(tmp_path/'nothing')
    monkeypatch.setitem(sys.modules, 'torch.utils.tensorboard', None)  # as if tensorboard were not installed
    with pytest.raises(ImportError, match=r'pip install tensorboard'): fit(learner(dls, TensorBoardCB(tmp_path/'tb2')), 1)
