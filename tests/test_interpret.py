"Interpretation (miniai.interpret): the confusion matrix and what comes from it on known predictions, and one quiet pass over a real learner."
import contextlib, csv, io

import matplotlib
import pytest
import torch
import torch.nn.functional as F

from miniai.activations import set_seed
from miniai.datasets import CLASS_NAMES, DataLoaders, TensorLoader, fashion_mnist_tensors
from miniai.interpret import Interpretation
from miniai.learner import DeviceCB, MetricsCB, ProgressCB, TrainLearner
from miniai.loggers import CSVLoggerCB
from miniai.resnet import resnet
from torcheval.metrics import MulticlassAccuracy  # after miniai.learner, which quiets torcheval's import-time warning


def one_hot_probs(preds, n=10, p=0.9):
    "Probabilities that put `p` on each predicted class and share the rest."
    probs = torch.full((len(preds), n), (1 - p) / (n - 1))
    probs[torch.arange(len(preds)), torch.tensor(preds)] = p
    return probs


@pytest.fixture
def known():
    # class 0: 3 right, 1 taken for 6; class 6: 2 right, 2 taken for 0, 1 for 2; class 2: 1 right; class 9: 1 right
    targs = torch.tensor([0, 0, 0, 0, 6, 6, 6, 6, 6, 2, 9])
    preds = [0, 0, 0, 6, 6, 6, 0, 0, 2, 2, 9]
    return Interpretation(one_hot_probs(preds), targs, inps=torch.rand(11, 1, 28, 28))


def test_confusion_matrix_counts(known):
    cm = known.confusion_matrix()
    assert cm.shape == (10, 10) and cm.sum() == 11
    assert (cm[0, 0], cm[0, 6], cm[6, 6], cm[6, 0], cm[6, 2], cm[2, 2], cm[9, 9]) == (3, 1, 2, 2, 1, 1, 1)
    assert cm.sum().item() - cm.diag().sum().item() == 4
    assert known.accuracy == pytest.approx(7 / 11)
    assert 'accuracy 63.64%' in repr(known)


def test_per_class_accuracy(known):
    acc = known.per_class_accuracy()
    assert list(acc) == CLASS_NAMES
    assert acc['T-shirt/top'] == pytest.approx(0.75) and acc['Shirt'] == pytest.approx(0.4)
    assert acc['Pullover'] == 1 and acc['Ankle boot'] == 1
    assert acc['Trouser'] != acc['Trouser']  # NaN: no items of that class


def test_most_confused(known):
    assert known.most_confused() == [('Shirt', 'T-shirt/top', 2), ('T-shirt/top', 'Shirt', 1), ('Shirt', 'Pullover', 1)]
    assert known.most_confused(1) == [('Shirt', 'T-shirt/top', 2)]
    assert known.most_confused(min_count=2) == [('Shirt', 'T-shirt/top', 2)]


def test_losses_and_top_losses(known):
    logp = known.probs.log()
    assert known.losses == pytest.approx(F.nll_loss(logp, known.targs, reduction='none'), rel=1e-5)
    idxs, losses = known.top_losses(4)
    assert sorted(idxs.tolist()) == [3, 6, 7, 8]  # the four mistakes have the largest losses
    assert losses.tolist() == sorted(losses.tolist(), reverse=True)
    assert len(known.top_losses(100)[0]) == 11


def test_class_lookup(known):
    assert known._cls('Shirt') == 6 and known._cls(3) == 3
    with pytest.raises(ValueError, match="Unknown class 'shirt'"): known._cls('shirt')
    with pytest.raises(ValueError, match='out of range'): known._cls(10)


def test_bad_construction():
    with pytest.raises(ValueError, match='one target per item'): Interpretation(torch.rand(5, 10), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match='10 columns of probabilities but 3 class names'):
        Interpretation(torch.rand(5, 10), torch.zeros(5, dtype=torch.long), classes=['a', 'b', 'c'])
    with pytest.raises(ValueError, match='3 inputs for 5 targets'):
        Interpretation(torch.rand(5, 10), torch.zeros(5, dtype=torch.long), inps=torch.rand(3, 1, 28, 28))


def test_plots(known):
    ax = known.plot_confusion_matrix()
    assert [t.get_text() for t in ax.get_xticklabels()] == CLASS_NAMES
    assert [t.get_text() for t in ax.get_yticklabels()] == CLASS_NAMES
    texts = [t.get_text() for t in ax.texts]
    assert len(texts) == 100 and texts[0] == '3' and texts[6] == '1'  # row 0: 3 right, 1 taken for class 6
    ax = known.plot_confusion_matrix(normalise=True)
    assert [t.get_text() for t in ax.texts][:1] == ['0.75']
    fig = known.plot_top_losses(4)
    titles = [a.get_title() for a in fig.axes if a.get_title()]
    assert len(titles) == 4 and all('true: ' in t for t in titles)
    assert titles[0].splitlines()[1].startswith('true: ')
    fig = known.plot_confusions('Shirt', 'T-shirt/top')
    assert len([a for a in fig.axes if a.get_title()]) == 2
    assert all(a.get_title().startswith('T-shirt/top 0.90\ntrue: Shirt') for a in fig.axes if a.get_title())
    with pytest.raises(ValueError, match="No item of class 'Trouser'"): known.plot_confusions('Trouser', 'Bag')
    with pytest.raises(ValueError, match='no inputs'):
        Interpretation(known.probs, known.targs).plot_top_losses()


# ---------------------------------------------------------------------------------------------------------------------
# from a learner: one quiet pass

@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    data = fashion_mnist_tensors()  # the shipped sample
    dls = DataLoaders(TensorLoader(*[t[:1024] for t in data['train']], bs=128, shuffle=True),
                      TensorLoader(*[t[:300] for t in data['test']], bs=128))
    fn = tmp_path_factory.mktemp('interp')/'log.csv'
    set_seed(0)
    learn = TrainLearner(resnet(nfs=(8, 16, 32), first='conv'), dls, F.cross_entropy, lr=1e-2, opt_func=torch.optim.AdamW,
                         cbs=[DeviceCB(), MetricsCB(accuracy=MulticlassAccuracy()), ProgressCB(bars=False), CSVLoggerCB(fn)])
    with contextlib.redirect_stdout(io.StringIO()): learn.fit(2)
    return learn, fn


def test_from_learner_is_one_quiet_pass(trained, capsys):
    learn, fn = trained
    history = [dict(h) for h in learn.metrics.history]
    interp = Interpretation.from_learner(learn)
    assert capsys.readouterr().out == ''  # no table, no bars
    assert learn.metrics.history == history and len(list(csv.DictReader(open(fn)))) == 2
    assert len(interp) == 300 and interp.inps.shape == (300, 1, 28, 28)
    assert torch.equal(interp.targs, learn.dls.valid.y)
    assert interp.accuracy == pytest.approx(history[-1]['accuracy'], abs=1e-6)
    assert torch.allclose(interp.inps, torch.cat([xb for xb, _ in learn.dls.valid]))  # the images as the model saw them
    assert interp.probs.sum(1) == pytest.approx(torch.ones(300), abs=1e-5)


def test_from_learner_other_loader(trained):
    learn, _ = trained
    data = fashion_mnist_tensors()
    dl = TensorLoader(*[t[300:400] for t in data['test']], bs=64)
    interp = Interpretation.from_learner(learn, dl)
    assert len(interp) == 100 and torch.equal(interp.targs, data['test'][1][300:400])
    assert len(learn.dls.valid.x) == 300  # the learner's own loader is back
