"Training a recipe and the `miniai-train` command (miniai.train), on the shipped sample."
import json, os, resource, shutil, signal, subprocess, sys, time
from pathlib import Path
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from miniai.augment import accuracy, tta_preds, tta_views
from miniai.datasets import fashion_mnist_dls
from miniai.learner import TrainLearner
from miniai.recipes import *
from miniai.resnet import resnet
from miniai.train import *
from miniai.train import main, parse_args, _settings


@pytest.fixture(scope='module')
def dls(): return fashion_mnist_dls(bs=256)


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


def test_ema_recipe_adds_the_average_and_cannot_resume(dls, tmp_path):
    (cb,) = [c for c in make_learner(get_recipe('speed93', ema=0.95), dls, progress=False).cbs if isinstance(c, EMACB)]
    assert cb.decay == 0.95
    assert not any(isinstance(c, EMACB) for c in make_learner(get_recipe('speed93'), dls, progress=False).cbs)
    with pytest.raises(ValueError, match="a run with ema can't be resumed"):
        train(get_recipe('speed93', ema=0.95), out=tmp_path/'run', resume=True, progress=False)


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
    import csv  # and the per-epoch log, one row for the epoch, train and valid side by side
    rows = list(csv.DictReader(open(tmp_path/'run'/'metrics.csv')))
    assert len(rows) == 1 and float(rows[0]['valid_accuracy']) == pytest.approx(saved['accuracy'], abs=1e-6)


def test_train_writes_tensorboard_events_when_asked(tmp_path):
    pytest.importorskip('tensorboard')
    from miniai.loggers import read_scalars
    train('fast93', epochs=1, out=tmp_path/'run', progress=False, tensorboard=tmp_path/'tb')
    assert 'epoch/valid_accuracy' in read_scalars(tmp_path/'tb')


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
    assert (a.recipe, str(a.out), a.bars, a.resume, a.overwrite) == (None, 'runs/beyond5', None, False, False)
    assert _settings(a) == ('beyond5', dict(epochs=None, bs=None, lr=None, precision='auto', seed=42))
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
    assert 'Warning' not in r.stderr, r.stderr  # no library warnings (torcheval's import-time one included)
    r = subprocess.run(['miniai-train', '--epochs', '-3'], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and '--epochs must be at least 1' in r.stderr



# ---------------------------------------------------------------------------------------------------------------------
# The run folder: no silent replacement, all-or-nothing writes, Ctrl-C, full disks, explained failures

ROOT = Path(__file__).resolve().parents[1]
QUICK = ['--quick', '--no-bars', '--threads', '1']


def _cli(*args, limit=None, **kw):
    "Run miniai-train in a subprocess (with a file-size limit of `limit` bytes): the `Popen`."
    preexec = (lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))) if limit else None
    return subprocess.Popen([sys.executable, '-c', 'from miniai.train import main; main()', *map(str, args)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=preexec,
                            env={**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONUNBUFFERED': '1'}, **kw)


def _files(folder): return sorted(p.name for p in Path(folder).iterdir())


def _tiny_res():
    return dict(recipe='x', accuracy=0.5, history=[dict(loss=1., accuracy=0.4, epoch=0, train=True), dict(loss=1., accuracy=0.5, epoch=0, train=False)])


def test_a_folder_with_a_run_is_not_replaced_silently(tmp_path, capsys):
    out = tmp_path/'run'; out.mkdir()
    (out/'metrics.json').write_text('{}')
    with pytest.raises(FileExistsError, match=r'already holds a run \(metrics.json\).*--resume.*--out.*--overwrite'): check_out(out)
    with pytest.raises(FileExistsError, match='already holds a run'): train('fast93', epochs=1, out=out, progress=False)
    assert (out/'metrics.json').read_text() == '{}'
    with pytest.raises(SystemExit) as e: parse_args(['--out', str(out)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and 'already holds a run' in err and '--resume' in err and '--overwrite' in err
    assert check_out(out, overwrite=True) == out
    with pytest.raises(FileNotFoundError, match='Nothing to resume.*no checkpoint.pth.*it holds metrics.json'): check_out(out, resume=True)
    with pytest.raises(SystemExit): parse_args(['--out', str(out), '--resume', '--overwrite'])  # one or the other
    assert 'not allowed with argument' in capsys.readouterr().err


def test_save_run_writes_all_three_files_or_none(tmp_path, dls, monkeypatch):
    learn = TrainLearner(resnet(nfs=(8, 16)), dls, F.cross_entropy)
    out = tmp_path/'run'
    save_run(learn, _tiny_res(), out)
    before = {f: (out/f).read_bytes() for f in _files(out)}
    import miniai.train as mt
    def full_disk(*args, **kwargs): raise OSError(28, 'No space left on device')
    monkeypatch.setattr(mt, 'plot_history', full_disk)  # the last of the three files fails
    with pytest.raises(OSError, match=r"Could not write the run's files.*No space left on device.*Nothing in .* was replaced"):
        save_run(learn, dict(_tiny_res(), accuracy=0.9), out)
    assert {f: (out/f).read_bytes() for f in _files(out)} == before  # the earlier run's files, intact; no temporary files


def test_save_run_under_a_file_size_limit_keeps_the_earlier_files(tmp_path):
    "A real full disk: RLIMIT_FSIZE makes every write past 64 KB fail, as a full disk does (torch.save then raises RuntimeError)."
    out = tmp_path/'run'
    code = ("import resource, sys, torch.nn.functional as F\n"
            "from miniai.datasets import fashion_mnist_dls\nfrom miniai.learner import TrainLearner\n"
            "from miniai.resnet import resnet\nfrom miniai.train import save_run\n"
            "res = dict(recipe='x', accuracy=0.5, history=[dict(loss=1., accuracy=0.4, epoch=0, train=True), dict(loss=1., accuracy=0.5, epoch=0, train=False)])\n"
            "learn = TrainLearner(resnet(), fashion_mnist_dls(bs=64), F.cross_entropy)\n"
            "if sys.argv[1] == 'limit': resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))\n"
            "try: save_run(learn, res, sys.argv[2])\nexcept OSError as e: sys.exit(f'save_run: {e}')\n")
    run = lambda how: subprocess.run([sys.executable, '-c', code, how, str(out)], capture_output=True, text=True, timeout=300)
    assert run('free').returncode == 0
    before = {f: (out/f).read_bytes() for f in _files(out)}
    assert len(before['model.pth']) > 65536
    r = run('limit')
    assert r.returncode == 1 and "Could not write the run's files" in r.stderr and 'Traceback' not in r.stderr, r.stderr
    assert {f: (out/f).read_bytes() for f in _files(out)} == before


def test_ctrl_c_saves_the_run_and_resume_finishes_it(tmp_path):
    out = tmp_path/'run'
    p = _cli('fast93', '--epochs', 4, '--bs', 128, '--out', out, *QUICK)
    deadline = time.time() + 300
    while not (out/'checkpoint.pth').exists() and p.poll() is None and time.time() < deadline: time.sleep(0.05)
    p.send_signal(signal.SIGINT)  # Ctrl-C, during the second epoch
    stdout, stderr = p.communicate(timeout=300)
    assert p.returncode == 130, stderr
    assert 'Traceback' not in stderr and 'interrupted' in stderr and f'miniai-train --out {out} --resume' in stderr, stderr
    assert 'checkpoint.pth' in _files(out) and 'run.json' in _files(out) and 'model.pth' not in _files(out)
    p = _cli('--out', out, '--resume', *QUICK)
    stdout, stderr = p.communicate(timeout=600)
    assert p.returncode == 0, stderr
    assert 'resuming the run' in stdout and '4 epoch(s), batch size 128' in stdout
    assert _files(out) == ['metrics.csv', 'metrics.json', 'model.pth', 'plot.png']  # finished: no checkpoint, no run.json left
    assert [r.split(',')[0] for r in (out/'metrics.csv').read_text().splitlines()[1:]] == ['0', '1', '2', '3']  # every epoch once
    saved = json.loads((out/'metrics.json').read_text())
    assert [h['epoch'] for h in saved['history']] == [0, 0, 1, 1, 2, 2, 3, 3]  # the epochs before Ctrl-C, kept
    assert saved['resumed_at_epoch'] >= 1 and saved['config']['bs'] == 128 and saved['recipe'] == 'fast93'


def test_resume_refuses_other_settings(tmp_path):
    out = tmp_path/'run'; out.mkdir()
    (out/'checkpoint.pth').write_bytes(b'')
    (out/'run.json').write_text(json.dumps(dict(recipe='fast93', config={}, precision='auto', seed=42)))
    with pytest.raises(ValueError, match="started with recipe 'fast93'.*this one has recipe 'beyond5'"):
        train('beyond5', out=out, resume=True, progress=False)
    (out/'run.json').write_text('{not json')
    with pytest.raises(Exception, match="run.json, the record of how the run there was started, can't be read"):
        train('beyond5', out=out, resume=True, progress=False)
    with pytest.raises(ValueError, match='pass that folder as out'): train('beyond5', resume=True)


def test_a_full_disk_during_training_ends_in_one_message_and_keeps_the_earlier_run(tmp_path):
    out = tmp_path/'run'
    p = _cli('fast93', '--epochs', 1, '--out', out, *QUICK)
    assert p.communicate(timeout=600) and p.returncode == 0
    before = {f: (out/f).read_bytes() for f in _files(out)}
    p = _cli('fast93', '--epochs', 1, '--out', out, '--overwrite', *QUICK, limit=1_000_000)  # smaller than a checkpoint
    stdout, stderr = p.communicate(timeout=600)
    assert p.returncode == 1 and 'Traceback' not in stderr and '\nminiai-train: ' in '\n' + stderr, stderr
    assert {f: (out/f).read_bytes() for f in before} == before  # model.pth, metrics.json, plot.png: the earlier run's, intact
    assert not [f for f in _files(out) if '.tmp' in f]


def test_a_diverged_run_ends_in_one_message(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv('MINIAI_QUICK', '1')
    with pytest.raises(SystemExit) as e:
        main(['fast93', '--epochs', '1', '--lr', '1e30', '--out', str(tmp_path/'run'), '--no-bars'])
    assert e.value.code != 0 and isinstance(e.value.code, str) and e.value.code.startswith('miniai-train: ')
    assert 'diverged' in e.value.code.lower() or 'nan' in e.value.code.lower(), e.value.code
    assert '--overwrite starts it again' in e.value.code


def test_broken_data_files_end_in_one_message(tmp_path, capsys):
    data = tmp_path/'data'; data.mkdir()
    for n in ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte', 't10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'):
        (data/n).write_bytes(b'not an IDX file')
    p = _cli('fast93', '--epochs', 1, '--data', data, '--out', tmp_path/'run', '--no-bars', '--threads', 1)
    stdout, stderr = p.communicate(timeout=300)
    assert p.returncode == 1 and 'Traceback' not in stderr and '\nminiai-train: ' in '\n' + stderr, stderr
