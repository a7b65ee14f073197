"The benchmark scripts in bench/: they run (on the shipped sample), report what they measured and refuse bad options."
import json, os, subprocess, sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT/'bench'))
import lesson_seeds  # noqa: E402
from miniai.recipes import ARCHS, RECIPES  # noqa: E402


def _run(*args, **env):
    return subprocess.run([sys.executable, str(ROOT/'bench'/'lesson_seeds.py'), *args], capture_output=True, text=True,
                          env={**os.environ, 'MINIAI_QUICK': '1', **env}, cwd=ROOT, timeout=600)


def test_lesson_seeds_models_are_recipes_with_the_lessons_shapes():
    x = torch.randn(2, 1, 28, 28)
    for name in lesson_seeds.LESSON:
        r = RECIPES[name]
        assert (r.epochs, r.lr, r.bs, r.aug, r.tta) == (5, 6e-2, 1024, 'none', 'none'), name  # the lesson's training
        assert ARCHS[r.arch](**r.model)(x).shape == (2, 10), name
    deeper = ARCHS['deeper']()
    convs = [m for m in deeper.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 16, 32, 64, 128, 10] and convs[0].stride == (1, 1)


def test_lesson_seeds_reports_each_run_and_the_summary(tmp_path):
    out = tmp_path/'seeds.txt'
    r = _run('--models', 'cnn', '--seeds', '1', '2', '--epochs', '1', '--bs', '512', '--threads', '1', '--out', str(out))
    assert r.returncode == 0, r.stderr
    lines = out.read_text().splitlines()
    assert 'batch size 512' in lines[0] and 'shipped sample' in lines[0]
    runs = [l for l in lines if l.startswith('cnn     seed')]
    assert len(runs) == 2 and all('%' in l for l in runs)
    summary = lines[-1].split()
    assert summary[:2] == ['cnn', '2'] and summary[-1] == '90.6%'
    accs = [float(l.split(':')[1].split('%')[0]) for l in runs]
    assert float(summary[2].rstrip('%')) == pytest.approx(sum(accs) / 2, abs=0.01)


@pytest.mark.parametrize('args,msg', [(['--seeds', '-1'], 'a seed must be at least 0'), (['--epochs', '0'], '--epochs must be at least 1'),
                                      (['--models', 'vgg'], "invalid choice: 'vgg'"), (['--precision', 'fp8'], "invalid choice: 'fp8'")])
def test_lesson_seeds_refuses_bad_options(args, msg):
    r = _run(*args)
    assert r.returncode == 2 and msg in r.stderr


# ---------------------------------------------------------------------------------------------------------------------
# bench/time_to_accuracy.py

import time_to_accuracy as tta  # noqa: E402


def _tta(*args, **env):
    return subprocess.run([sys.executable, str(ROOT/'bench'/'time_to_accuracy.py'), *args], capture_output=True, text=True,
                          env={**os.environ, 'MINIAI_QUICK': '1', **env}, cwd=ROOT, timeout=600)


def test_time_to_accuracy_limits_follow_the_processor():
    assert (tta.limit_for(93.0, True), tta.limit_for(93.0, False)) == (60, 120)
    assert (tta.limit_for(94.0, True), tta.limit_for(94.0, False)) == (300, 600)


def test_time_to_accuracy_summary_counts_runs_that_reach_the_target_in_time():
    runs = [dict(final=0.931, seconds=50.), dict(final=0.935, seconds=70.), dict(final=0.925, seconds=40.)]
    s = tta.summarise(runs, 93.0, 60)
    assert s['reached'] == 1 and not s['met']  # too slow once, not accurate enough once
    assert s['acc_mean'] == pytest.approx(93.0333, abs=1e-3) and (s['acc_min'], s['acc_max']) == pytest.approx((92.5, 93.5))
    assert s['sec_mean'] == pytest.approx(160 / 3) and s['sec_max'] == 70.
    assert tta.summarise(runs[:1], 93.0, 60)['met'] and 'reached' not in tta.summarise(runs)


def test_time_to_accuracy_counts_an_exact_hit_as_reached():
    "9,400 of 10,000 right is 94%, though float32 holds it as 0.93999999761: the run reaches the target."
    import numpy as np
    final = float(np.float32(9400) / np.float32(10000))
    assert final < 0.94  # the trap: in float32 the share is a hair under
    s = tta.summarise([dict(final=final, seconds=250.)], 94.0, 300)
    assert s['reached'] == 1 and s['met'] and s['acc_min'] == 94.0
    assert not tta.summarise([dict(final=float(np.float32(9399) / np.float32(10000)), seconds=250.)], 94.0, 300)['met']


def test_time_to_accuracy_reports_each_seed_the_machine_and_the_target(tmp_path):
    out = tmp_path/'tta.txt'
    r = _tta('fast93', '--seeds', '3', '4', '--epochs', '1', '--threads', '1', '--target', '93', '--views', 'none', 'flip+shift', '--out', str(out))
    assert r.returncode == 0, r.stderr  # quick mode: a missed target is reported, not failed
    lines = out.read_text().splitlines()
    assert lines[0].startswith('time to accuracy, ') and 'torch thread' in lines[0]
    assert 'native bfloat16' in lines[1] and 'shipped sample' in lines[2] and 'in at most' in lines[3]
    seeds = [l for l in lines if l.startswith('fast93     seed')]
    assert [int(l.split()[2].rstrip(':')) for l in seeds] == [3, 4] and all(' s (1 epochs, batch 256' in l for l in seeds)
    assert lines[-1].startswith('fast93     2 seeds: mean ') and ('MET' in lines[-1] or 'MISSED' in lines[-1])
    report = json.loads(out.with_suffix('.json').read_text())
    assert report['quick'] and report['target'] == 93.0 and report['limit_seconds'] in (60, 120)
    assert [r['seed'] for r in report['runs']['fast93']] == [3, 4] and report['cpu']['capability']
    assert report['summaries']['fast93']['n'] == 2
    views = [l for l in lines if 'untimed, with other views: none ' in l and ', flip+shift ' in l]
    assert len(views) == 2 and all(set(r['views']) == {'none', 'flip+shift'} for r in report['runs']['fast93'])
    run = report['runs']['fast93'][0]
    assert run['views']['none'] == pytest.approx(run['accuracy'], abs=1e-6)  # no views: the plain accuracy again


@pytest.mark.parametrize('args,msg', [(['fast93', '--seeds', '-1'], 'a seed must be at least 0'),
                                      (['fast93', '--epochs', '0'], '--epochs must be at least 1'),
                                      (['vgg16'], "unknown recipe 'vgg16'"), (['fast93', '--target', '95'], "invalid choice: 95.0"),
                                      (['fast93', '--out', 'report.json'], 'ends in .txt'),
                                      (['fast93', '--views', 'mirror'], "--views: tta_views: unknown kind 'mirror'")])
def test_time_to_accuracy_refuses_bad_options(args, msg):
    r = _tta(*args)
    assert r.returncode == 2 and msg in r.stderr, r.stderr


def test_time_to_accuracy_recipe_changes_for_ablations():
    r = tta.parse_spec("fast93:epochs=3,tta='none',model.nfs=(8, 16, 32)")
    assert (r.epochs, r.tta, r.model) == (3, 'none', dict(first='conv', nfs=(8, 16, 32)))
    assert RECIPES['fast93'].epochs == 5 and 'nfs' not in RECIPES['fast93'].model  # the table's recipe is untouched
    assert tta.parse_spec('fast93') == RECIPES['fast93']
    for spec, msg in [('fast93:epochs', 'a change is key=value'), ('fast93:tta=none', 'must be a Python literal'),
                      ('fast93:epochs=0', 'epochs must be a whole number'), ('fast93:colour=1', 'not a Recipe field'),
                      ('fast93:model.depth=3', "doesn't take"), ('fast95', "unknown recipe 'fast95'")]:
        with pytest.raises(ValueError, match=msg): tta.parse_spec(spec)


@pytest.mark.parametrize('name,spec', [
    ('target93', 'speed93:lr=2e-2,label_smoothing=0.1'),
    ('target94', 'speed93:model.nfs=(16,32,64,128,256),model.pool_stem=True,epochs=16,pad=1,lr=2e-2,label_smoothing=0.1')])
def test_speed_run_recipes_are_the_timed_changes(name, spec):
    "The named speed-run recipes train exactly what bench/results timed as changes of speed93, so its figures are theirs."
    from dataclasses import replace
    assert replace(tta.parse_spec(spec), desc=RECIPES[name].desc) == RECIPES[name]
    assert replace(RECIPES['speed93'], desc=RECIPES[name].desc) != RECIPES[name]  # the comparison sees the changes

# ---------------------------------------------------------------------------------------------------------------------
# bench/epoch_breakdown.py

def _breakdown(*args):
    return subprocess.run([sys.executable, str(ROOT/'bench'/'epoch_breakdown.py'), *args], capture_output=True, text=True,
                          env={**os.environ, 'MINIAI_QUICK': '1'}, cwd=ROOT, timeout=600)


def test_epoch_breakdown_reports_each_part_and_their_sum(tmp_path):
    out = tmp_path/'breakdown.txt'
    r = _breakdown('speed93', '--batches', '3', '--repeats', '1', '--threads', '1', '--out', str(out))
    assert r.returncode == 0, r.stderr
    lines = out.read_text().splitlines()
    assert lines[0].startswith('epoch breakdown of speed93, ') and 'AMX' in lines[1] and 'shipped sample' in lines[2]
    assert '3 of 16 training batches' in lines[2] and "{'accuracy'" not in r.stdout  # MetricsCB's lines are kept out
    parts = {l.split()[0]: float(l.split()[1]) for l in lines[4:]}
    assert list(parts) == ['loader', 'steps', 'learner', 'augment', 'valid', 'epoch', 'tta']
    assert parts['steps'] > 0 and parts['valid'] > 0 and parts['tta'] > 0
    assert parts['epoch'] == pytest.approx(sum(parts[k] for k in ('loader', 'steps', 'learner', 'augment', 'valid')), abs=0.02)


@pytest.mark.parametrize('args,msg', [(['vgg16'], "Unknown recipe 'vgg16'"), (['--batches', '0'], '--batches must be at least 1'),
                                      (['--out', 'b.json'], 'ends in .txt'), (['--precision', 'fp16'], "invalid choice: 'fp16'")])
def test_epoch_breakdown_refuses_bad_options(args, msg):
    r = _breakdown(*args)
    assert r.returncode == 2 and msg in r.stderr, r.stderr


# ---------------------------------------------------------------------------------------------------------------------
# bench/bench_train.py

import bench_train  # noqa: E402


def _train(*args):
    return subprocess.run([sys.executable, str(ROOT/'bench'/'bench_train.py'), *args], capture_output=True, text=True,
                          env={**os.environ, 'MINIAI_QUICK': '1'}, cwd=ROOT, timeout=600)


def test_bench_train_speedup_target_follows_the_precision():
    assert bench_train.min_speedup_for('bf16') == (3.0, 'the target where the fast path trains in bf16')
    assert bench_train.min_speedup_for('fp32')[0] == 1.2 < bench_train.min_speedup_for('fp16')[0]
    assert bench_train.min_speedup_for('fp32', 2.5) == (2.5, 'given')


def test_bench_train_reports_three_paths_and_both_checks():
    r = _train('--train-batches', '2', '--repeats', '1', '--lesson-repeats', '1', '--threads', '1', '--bs', '256')
    assert r.returncode == 0, r.stderr  # quick mode: the checks are reported, not failed
    out = r.stdout.splitlines()
    assert out[0] == 'miniai training benchmark' and 'torch thread' in out[1] and 'mixed precision: ' in r.stdout
    rows = {l[:38].strip(): l[38:].split() for l in out if l.startswith(('bare PyTorch', 'miniai Learner', "lesson's setup"))}
    assert len(rows) == 3 and rows["lesson's setup (per-item data, fp32)"][:2] == ['fp32,', 'NCHW']
    for cells in rows.values():
        secs, scaled = float(cells[2]), float(cells[3])
        assert 0 < secs and scaled > 0 and cells[-1].endswith('%')
    prec = rows['bare PyTorch loop'][0].rstrip(',')
    assert f'(minimum {bench_train.MIN_SPEEDUP[prec]:g}x: the target where the fast path trains in {prec})' in r.stdout
    assert 'miniai overhead over the bare loop, per full epoch: ' in r.stdout
    assert 'the sample is too small' in r.stdout and 'FAILED' not in r.stdout


@pytest.mark.parametrize('args,msg', [(['--bs', '0'], '--bs must be at least 1'), (['--min-speedup', '-1'], '--min-speedup must be a number of at least 0'),
                                      (['--max-overhead', 'nan'], '--max-overhead must be a number'), (['--model', 'vgg'], "invalid choice: 'vgg'")])
def test_bench_train_refuses_bad_options(args, msg):
    r = _train(*args)
    assert r.returncode == 2 and msg in r.stderr, r.stderr
