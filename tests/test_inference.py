"""Inference (miniai.inference): `learn.predict` on every kind of input and every bad one, export and `load_model`
(also in a fresh process), and the `miniai-predict` command run on real image files from the shipped sample."""
import contextlib, io, json, os, shutil, subprocess, sys, warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from miniai.checkpoint import CheckpointError
from miniai.datasets import CLASS_NAMES, XMEAN, XSTD, fashion_mnist_tensors
from miniai.inference import (ImageError, ImageNote, Prediction, Predictor, export_model, image_tensor, load_model,
                              load_run, main, model_config)
from miniai.learner import Learner, TrainCB, TrainLearner
from miniai.train import train


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    "A real run: `fast93` trained one epoch on the shipped sample, its folder written as miniai-train writes it."
    folder = tmp_path_factory.mktemp('inference')/'run'
    torch.set_num_threads(1)
    with contextlib.redirect_stdout(io.StringIO()): learn, res = train('fast93', epochs=1, out=folder, progress=False)
    return learn, res, folder


@pytest.fixture(scope='module')
def test_images():
    x, y = fashion_mnist_tensors()['test']
    return x[:40], y[:40]


@pytest.fixture(scope='module')
def pngs(tmp_path_factory, test_images):
    "Twelve real test images of the sample, as PNG files."
    d = tmp_path_factory.mktemp('pngs')
    x, _ = test_images
    files = [d/f'test{i:02d}.png' for i in range(12)]
    for f, im in zip(files, x): Image.fromarray(im.numpy()).save(f)
    return files


def probs_of(preds): return torch.stack([p.probs for p in preds])


# ---------------------------------------------------------------------------------------------------------------------
# learn.predict

def test_predict_every_input_kind_gives_the_same_answer(run, test_images, pngs):
    learn, _, _ = run
    x = test_images[0][0]
    im = Image.fromarray(x.numpy())
    kinds = [x, x.numpy(), x.float() / 255, x.double().numpy() / 255, x[None], x[None, None], x.numpy()[..., None],
             im, pngs[0], str(pngs[0])]
    preds = [learn.predict(k) for k in kinds]
    assert all(isinstance(p, Prediction) for p in preds)
    assert len({(p.label, p.idx) for p in preds}) == 1
    for p in preds[1:]: assert torch.allclose(p.probs, preds[0].probs, atol=1e-6)
    p = preds[0]
    assert p.label == CLASS_NAMES[p.idx] and p.prob == p.probs.max().item() and p.probs.sum().item() == pytest.approx(1, abs=1e-5)


def test_predict_normalises_as_in_training(run, test_images):
    "The probabilities match a pass over the test split's own loader, which the model was validated with."
    learn, _, _ = run
    x, y = test_images
    with learn.quiet(): logits, targs = learn.capture_preds()
    preds = learn.predict_batch(x)
    assert torch.equal(targs[:40], y)
    assert torch.allclose(probs_of(preds), logits[:40].float().softmax(1), atol=1e-3)
    # by hand: the model on (x/255 - mean)/std, in float32 (the learner computes in bfloat16 here)
    model = learn.model.float().eval()
    with torch.no_grad(): ref = model(((x[:, None].float() / 255 - XMEAN) / XSTD).contiguous()).softmax(1)
    assert torch.allclose(probs_of(preds), ref, atol=3e-2)
    assert (probs_of(preds).argmax(1) == ref.argmax(1)).float().mean() >= 0.95


def test_predict_batch_matches_predict_and_keeps_the_order(run, pngs):
    learn, _, _ = run
    batch = learn.predict_batch(pngs)
    assert [p.label for p in batch] == [learn.predict(f).label for f in pngs]
    assert [p.label for p in learn.predict_batch(pngs[::-1])] == [p.label for p in batch][::-1]


def test_predict_is_quiet(run, pngs, capsys):
    learn, res, _ = run
    history = [dict(h) for h in learn.metrics.history]
    learn.predict_batch(pngs)
    assert capsys.readouterr().out == '' and learn.metrics.history == history


def test_the_training_step_still_works():
    "`predict` with no argument is still the loop's step: a TrainLearner's own, or the callbacks' (TrainCB)."
    x, y = torch.randn(32, 3), torch.randn(32, 1)
    dls = [[(x, y)], [(x, y)]]
    dls = type('DLs', (), {'train': dls[0], 'valid': dls[1]})()
    for learn in (TrainLearner(torch.nn.Linear(3, 1), dls, F.mse_loss, lr=0.1),
                  Learner(torch.nn.Linear(3, 1), dls, F.mse_loss, lr=0.1, cbs=[TrainCB()])):
        before = [p.clone() for p in learn.model.parameters()]
        learn.fit(1)
        assert learn.preds.shape == (32, 1)
        assert any(not torch.equal(a, b) for a, b in zip(before, learn.model.parameters()))


# ---------------------------------------------------------------------------------------------------------------------
# conversions and bad images

def notes(f):
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter('always')
        t = f()
    return t, [str(w.message) for w in ws if issubclass(w.category, ImageNote)]


def test_colour_and_size_are_converted_with_a_note(test_images):
    x = test_images[0][0]
    rgb = Image.merge('RGB', [Image.fromarray(x.numpy())] * 3)
    t, ns = notes(lambda: image_tensor(rgb))
    assert torch.equal(t, x) and ns == ['the PIL image (RGB, 28x28): converted from RGB to grayscale.']
    big = Image.fromarray(x.numpy()).resize((56, 40))
    t, ns = notes(lambda: image_tensor(big))
    assert t.shape == (28, 28) and 'resized from 56x40 to 28x28 (stretched: it is not square)' in ns[0]
    t, ns = notes(lambda: image_tensor(torch.stack([x] * 3)))  # a colour tensor, channels first
    assert torch.equal(t, x) and 'converted from RGB to grayscale' in ns[0]
    rgba = np.zeros((28, 28, 4), np.uint8); rgba[..., :3] = 200; rgba[5:20, 5:20, 3] = 255  # opaque square, transparent around
    t, ns = notes(lambda: image_tensor(rgba))
    assert 'transparent parts made black' in ns[0] and t[0, 0] == 0 and t[10, 10] > 150
    _, ns = notes(lambda: image_tensor(x))
    assert ns == []


def test_light_background_note_and_invert(test_images):
    x = test_images[0][0]
    t, ns = notes(lambda: image_tensor(255 - x))
    assert torch.equal(t, 255 - x) and 'border is mostly light' in ns[0] and 'invert=True' in ns[0]
    t, ns = notes(lambda: image_tensor(255 - x, invert=True))
    assert torch.equal(t, x) and ns == []


@pytest.mark.parametrize('bad,err,msg', [
    (torch.randn(28, 28), ImageError, 'normalised already'),
    (torch.full((28, 28), float('nan')), ImageError, 'NaN'),
    (np.full((28, 28), 300), ImageError, 'integer values from 300 to 300'),
    (np.zeros((28, 28), bool), ImageError, 'values of type bool'),
    (torch.zeros(2, 1, 28, 28), ImageError, 'has shape (2, 1, 28, 28)'),
    (torch.zeros(28), ImageError, 'has shape (28,)'),
    (np.zeros((0, 0)), ImageError, 'empty'),
    ([[0] * 28] * 28, TypeError, 'pass a file path, a PIL image'),
])
def test_bad_arrays_are_refused(run, bad, err, msg):
    with pytest.raises(err, match=msg.replace('(', r'\(').replace(')', r'\)')): image_tensor(bad)
    learn, _, _ = run
    with pytest.raises(err): learn.predict(bad)


def test_strict_refuses_conversions(test_images):
    x = test_images[0][0]
    with pytest.raises(ImageError, match=r'is a RGB image, but the model takes grayscale'):
        image_tensor(Image.merge('RGB', [Image.fromarray(x.numpy())] * 3), convert=False)
    with pytest.raises(ImageError, match='is 56x56 pixels, but the model takes 28x28'):
        image_tensor(Image.fromarray(x.numpy()).resize((56, 56)), convert=False)


def test_bad_files(run, tmp_path, pngs):
    learn, _, _ = run
    with pytest.raises(FileNotFoundError, match='No image file'): learn.predict(tmp_path/'missing.png')
    (tmp_path/'text.png').write_text('not an image')
    with pytest.raises(ImageError, match='not an image file that PIL can read'): learn.predict(tmp_path/'text.png')
    data = pngs[0].read_bytes()
    (tmp_path/'cut.png').write_bytes(data[:len(data) // 2])
    with pytest.raises(ImageError, match='could not be read as an image'): learn.predict(tmp_path/'cut.png')
    with pytest.raises(ImageError, match='is a folder'): learn.predict(tmp_path)
    with pytest.raises(ImageError, match='item 1: the Tensor'): learn.predict_batch([pngs[0], torch.randn(28, 28)])
    with pytest.raises(ValueError, match='No images'): learn.predict_batch([])


# ---------------------------------------------------------------------------------------------------------------------
# export and load

def test_export_and_load_back(run, tmp_path, pngs):
    learn, _, _ = run
    fn = learn.export(tmp_path/'m.pth', 'fast93')
    d = torch.load(fn, weights_only=True)  # plain data only
    assert d['format'] == 'miniai-classifier' and d['arch'] == 'resnet' and d['model'] == {'first': 'conv'} and d['classes'] == CLASS_NAMES
    assert (d['mean'], d['std'], d['size']) == (XMEAN, XSTD, [28, 28])
    pr = load_model(fn)
    assert isinstance(pr, Predictor) and not pr.model.training
    got, want = pr.predict_batch(pngs), learn.predict_batch(pngs)
    assert torch.allclose(probs_of(got), probs_of(want), atol=3e-2)
    assert sum(a.label == b.label for a, b in zip(got, want)) >= len(pngs) - 1  # bf16 against float32: a near tie may flip
    assert pr.predict(pngs[0]).label == got[0].label


def test_export_refusals(run, tmp_path):
    learn, _, _ = run
    fn = learn.export(tmp_path/'m.pth', 'fast93')
    with pytest.raises(FileExistsError, match='overwrite=True'): learn.export(fn, 'fast93')
    learn.export(fn, 'fast93', overwrite=True)
    with pytest.raises(ValueError, match='build a different model'): learn.export(tmp_path/'w.pth', 'beyond5')
    with pytest.raises(ValueError, match="don't build a `resnet`"): learn.export(tmp_path/'w.pth', {'depth': 3})
    with pytest.raises(ValueError, match='not plain data'): model_config({'act': torch.nn.ReLU})
    with pytest.raises(IsADirectoryError): learn.export(tmp_path, 'fast93')
    assert not (tmp_path/'w.pth').exists()


def test_load_run_folder(run, pngs):
    learn, _, folder = run
    pr = load_model(folder)
    assert pr.source == str(folder)
    assert [p.label for p in pr.predict_batch(pngs)] == [p.label for p in load_run(folder).predict_batch(pngs)]
    assert torch.allclose(probs_of(pr.predict_batch(pngs)), probs_of(learn.predict_batch(pngs)), atol=3e-2)


def test_load_errors(run, tmp_path):
    learn, _, folder = run
    with pytest.raises(FileNotFoundError, match='No model at'): load_model(tmp_path/'nothing.pth')
    with pytest.raises(FileNotFoundError, match='has no model.pth'): load_model(tmp_path)
    half = tmp_path/'half'; half.mkdir(); shutil.copy(folder/'model.pth', half)
    with pytest.raises(FileNotFoundError, match='no metrics.json'): load_model(half)
    (half/'metrics.json').write_text('{"recipe": "fast93"}')
    with pytest.raises(ValueError, match='records no model settings'): load_model(half)
    (half/'metrics.json').write_text('{not json')
    with pytest.raises(ValueError, match='not readable JSON'): load_model(half)
    (half/'metrics.json').write_text(json.dumps({'config': {'model': {}}}))  # beyond5's settings: a different model
    with pytest.raises(CheckpointError, match='build a different model'): load_model(half)
    with pytest.raises(CheckpointError, match='only weights'): load_model(folder/'model.pth')
    (tmp_path/'bad.pth').write_bytes(b'garbage')
    with pytest.raises(CheckpointError, match='could not be read'): load_model(tmp_path/'bad.pth')
    torch.save({'format': 'something else'}, tmp_path/'other.pth')
    with pytest.raises(CheckpointError, match='not a model exported by miniai'): load_model(tmp_path/'other.pth')


def test_fresh_process_needs_only_the_file(run, tmp_path, pngs):
    learn, _, _ = run
    fn = learn.export(tmp_path/'m.pth', 'fast93')
    code = ("import json, sys\nfrom miniai.inference import load_model\n"
            "print(json.dumps([p.label for p in load_model(sys.argv[1]).predict_batch(sys.argv[2:])]))\n"
            "print('learner' in sys.modules or any('miniai.train' == m for m in sys.modules))\n")
    r = subprocess.run([sys.executable, '-c', code, str(fn)] + list(map(str, pngs)), capture_output=True, text=True, timeout=300,
                       env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert r.returncode == 0, r.stderr
    labels, imported_train = r.stdout.splitlines()
    assert json.loads(labels) == [p.label for p in load_model(fn).predict_batch(pngs)]
    assert imported_train == 'False'  # the training command's module is not needed to load and use the model


# ---------------------------------------------------------------------------------------------------------------------
# miniai-predict, in a subprocess, on real image files

def predict_cmd(*args):
    exe = shutil.which('miniai-predict') or shutil.which('miniai-predict', path=str(Path(sys.executable).parent))
    cmd = [exe] if exe else [sys.executable, '-c', 'from miniai.inference import main; main()']
    return subprocess.run(cmd + list(map(str, args)), capture_output=True, text=True, timeout=300,
                          env={**os.environ, 'OMP_NUM_THREADS': '1'})


def test_cli_classifies_files_with_a_run_folder(run, pngs, test_images):
    _, _, folder = run
    r = predict_cmd(folder, *pngs)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == len(pngs) and r.stderr == ''
    want = load_model(folder).predict_batch(pngs)
    for line, f, p in zip(lines, pngs, want):
        name, rest = line.split(maxsplit=1)
        label, prob = rest.rsplit(' ', 1)
        assert name == str(f) and label == p.label
        assert float(prob.rstrip('%')) == pytest.approx(100 * p.prob, abs=0.2)  # another process: the last digit may differ
    right = sum(p.idx == y for p, y in zip(want, test_images[1][:len(pngs)].tolist()))
    assert right >= 6  # one epoch on the sample gets most of them


def test_cli_json_and_top(run, pngs):
    _, _, folder = run
    r = predict_cmd(folder, *pngs[:3], '--json', '--top', '3')
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [row['file'] for row in rows] == list(map(str, pngs[:3]))
    for row in rows:
        assert len(row['top']) == 3 and row['top'][0] == [row['label'], row['probability']]
        assert row['label'] == CLASS_NAMES[row['index']] and row['top'][0][1] >= row['top'][1][1] >= row['top'][2][1]


def test_cli_with_an_exported_file_converts_and_reports(run, tmp_path, pngs):
    learn, _, _ = run
    fn = learn.export(tmp_path/'m.pth', 'fast93')
    Image.open(pngs[0]).convert('RGB').resize((64, 64)).save(tmp_path/'colour.jpg')
    r = predict_cmd(fn, tmp_path/'colour.jpg', pngs[1])
    assert r.returncode == 0, r.stderr
    assert 'note: ' in r.stderr and 'converted from RGB to grayscale, resized from 64x64 to 28x28' in r.stderr
    assert len(r.stdout.splitlines()) == 2
    r = predict_cmd(fn, tmp_path/'colour.jpg', pngs[1], '--strict')
    assert r.returncode == 1 and 'is a RGB image' in r.stderr and 'Traceback' not in r.stderr
    assert r.stdout.split()[0] == str(pngs[1])  # the good image is still classified


@pytest.mark.parametrize('kind', ['missing', 'corrupt', 'folder'])
def test_cli_bad_image_exits_1_without_traceback(run, tmp_path, pngs, kind):
    _, _, folder = run
    bad = tmp_path/'bad.png'
    if kind == 'corrupt': bad.write_bytes(b'\x89PNG\r\n\x1a\n garbage')
    if kind == 'folder': bad = tmp_path
    r = predict_cmd(folder, pngs[0], bad)
    assert r.returncode == 1 and 'Traceback' not in r.stderr
    assert str(bad) in r.stderr and '1 of 2 image(s) could not be classified' in r.stderr
    assert len(r.stdout.splitlines()) == 1  # the good one


@pytest.mark.parametrize('kind,msg', [('nothing', 'No model at'), ('empty', 'has no model.pth'), ('corrupt', 'could not be read'),
                                      ('weights', 'only weights')])
def test_cli_bad_model_exits_1_without_traceback(run, tmp_path, pngs, kind, msg):
    _, _, folder = run
    model = {'nothing': tmp_path/'nothing', 'empty': tmp_path, 'corrupt': tmp_path/'bad.pth', 'weights': folder/'model.pth'}[kind]
    if kind == 'corrupt': model.write_bytes(b'garbage')
    r = predict_cmd(model, pngs[0])
    assert r.returncode == 1 and msg in r.stderr and 'Traceback' not in r.stderr and r.stdout == ''


def test_cli_usage_errors():
    r = predict_cmd('--top', '0', 'm', 'x.png')
    assert r.returncode == 2 and 'must be at least 1' in r.stderr
    r = predict_cmd('only-a-model')
    assert r.returncode == 2 and 'the following arguments are required: IMAGE' in r.stderr


def test_main_in_process(run, pngs, capsys):
    _, _, folder = run
    main([str(folder), str(pngs[0]), '--top', '2'])
    out = capsys.readouterr().out
    assert out.startswith(str(pngs[0])) and out.count('%') == 2
    with pytest.raises(SystemExit) as e: main([str(folder), str(pngs[0].parent/'missing.png')])
    assert 'could not be classified' in str(e.value.code)


def test_export_another_builder(tmp_path, pngs):
    "A recipe with another model builder (`arch`): the lesson's CNN, exported untrained and loaded back."
    from miniai.recipes import get_recipe
    r = get_recipe('cnn')
    model = r.build_model().eval()
    fn = export_model(model, tmp_path/'cnn.pth', 'cnn')
    assert torch.load(fn, weights_only=True)['arch'] == 'cnn'
    pr = load_model(fn)
    x = torch.stack([image_tensor(f) for f in pngs])
    with torch.no_grad(): want = model(((x[:, None].float() / 255 - XMEAN) / XSTD)).softmax(1)
    assert torch.allclose(probs_of(pr.predict_batch(pngs)), want, atol=1e-5)
