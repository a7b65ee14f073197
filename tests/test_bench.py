"The benchmark scripts in bench/: they run (on the shipped sample), report what they measured and refuse bad options."
import os, subprocess, sys
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
