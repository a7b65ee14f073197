"""Data-parallel training through Accelerate, for real: two processes on this CPU (gloo on the loopback interface).

`dist_worker.py` runs under `torch.distributed.run` (torchrun) with 2 processes, one PyTorch thread each; the test
compares what they end with to each other and to a single-process epoch with the same global batch.
"""
import os, signal, socket, subprocess, sys, time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torcheval.metrics import MulticlassAccuracy

def _has_accelerate():
    try: import accelerate
    except ImportError: return False
    return True

needs_accelerate = pytest.mark.skipif(not _has_accelerate(),
                                      reason='Hugging Face Accelerate is not installed: pip install -e ".[distributed]"')
WORKER = Path(__file__).parent/'dist_worker.py'
TIMEOUT = 150

def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]

def _kill(pid, sig):
    try: os.kill(pid, sig)
    except (ProcessLookupError, PermissionError): pass

def _is_worker(pid):
    "Whether `pid` is still one of our workers (and not a process that got its id since)."
    try: return WORKER.name in Path(f'/proc/{pid}/cmdline').read_bytes().decode(errors='replace')
    except OSError: return False

def run_two(out):
    "Run the worker in 2 processes; whatever happens, leave none of them running; return their output."
    out = Path(out)
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1', 'MINIAI_QUICK': '1', 'GLOO_SOCKET_IFNAME': 'lo',
           'MPLBACKEND': 'Agg', 'PYTHONUNBUFFERED': '1'}
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nnodes', '1', '--nproc_per_node', '2',
           '--master_addr', '127.0.0.1', '--master_port', str(free_port()), str(WORKER), str(out)]
    log = out/'log.txt'  # a file, not a pipe: a stray process holding a pipe open could block us
    with open(log, 'w') as f:
        p = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try: p.wait(timeout=TIMEOUT)
        finally:
            # torchrun starts each worker in a session of its own: a SIGTERM lets it stop them; then kill what is left,
            # the launcher's group and the workers (they write their process ids to OUT/pid{rank} first thing)
            if p.poll() is None:
                p.terminate()
                try: p.wait(timeout=15)
                except subprocess.TimeoutExpired: pass
            _kill(-p.pid, signal.SIGKILL)
            for fn in out.glob('pid*'):
                pid = fn.read_text().strip()
                if pid.isdigit() and _is_worker(int(pid)): _kill(int(pid), signal.SIGKILL)
            p.wait()
    output = log.read_text()
    assert p.returncode == 0, f'the 2-process run failed (exit {p.returncode}):\n{output[-6000:]}'
    return output

@pytest.fixture(scope='module')
def two_procs(tmp_path_factory):
    out = tmp_path_factory.mktemp('dist')
    t0 = time.monotonic()
    output = run_two(out)
    print(f'2-process run: {time.monotonic() - t0:.1f}s')
    return out, output, [torch.load(out/f'rank{r}.pt', weights_only=True) for r in range(2)]

@needs_accelerate
def test_ranks_agree(two_procs):
    out, output, (r0, r1) = two_procs
    assert (r0['rank'], r0['world'], r1['rank'], r1['world']) == (0, 2, 1, 2)
    for k in r0['state']: torch.testing.assert_close(r0['state'][k], r1['state'][k], rtol=0, atol=0)
    assert r0['history'] and r1['history'] is None  # the other processes' fits are quiet: no metrics of their own
    torch.testing.assert_close(r0['preds'], r1['preds'])  # but they took part in gathering the same predictions
    # only the main process prints (one train and one eval line) and writes files
    assert sum(l.startswith("{'accuracy'") for l in output.splitlines()) == 2, output
    assert (out/'ck.pth').is_file() and (out/'model.pth').is_file()

@needs_accelerate
def test_matches_single_process(two_procs):
    "One distributed epoch = one single-process epoch with the same global batch and order, to float tolerance."
    sys.path.insert(0, str(WORKER.parent))
    import dist_worker as w
    from miniai.datasets import TensorLoader, DataLoaders, fashion_mnist_tensors
    from miniai.distributed import DistLoader
    from miniai.learner import TrainLearner
    _, _, (r0, _) = two_procs
    (x, y), (xt, yt) = fashion_mnist_tensors()['train'], fashion_mnist_tensors()['test']
    order = DistLoader(TensorLoader(x, y, bs=w.GLOBAL_BS, shuffle=True), seed=w.SEED).global_order()  # epoch 0's order
    model = w.get_model()
    model.load_state_dict(r0['init'])  # process 0's initial weights, which DDP gave every process
    dls = DataLoaders(TensorLoader(x[order], y[order], bs=w.GLOBAL_BS), TensorLoader(xt, yt, bs=w.VALID_BS))
    TrainLearner(model, dls, F.cross_entropy, lr=w.LR).fit(1, valid=False)
    for k, v in model.state_dict().items(): torch.testing.assert_close(r0['state'][k], v, rtol=1e-4, atol=1e-5)

@needs_accelerate
def test_gathered_accuracy(two_procs):
    "The validation metric covers each test image once (padding dropped), as one process computes it on the same predictions."
    from miniai.datasets import fashion_mnist_tensors
    _, _, (r0, r1) = two_procs
    _, yt = fashion_mnist_tensors()['test']
    torch.testing.assert_close(r0['targs'], yt)  # 1,000 targets, in order, none twice (the last batch was padded)
    torch.testing.assert_close(r0['preds'], r1['preds'])
    acc = MulticlassAccuracy().update(r0['preds'], yt).compute().item()
    valid = next(h for h in r0['history'] if not h['train'])
    assert valid['accuracy'] == pytest.approx(acc, abs=1e-7)
    assert valid['loss'] == pytest.approx(F.cross_entropy(r0['preds'], yt).item(), rel=1e-5)

def test_without_accelerate_says_how_to_install(monkeypatch):
    "miniai imports without Accelerate; the distributed entry point says how to install it."
    import builtins
    real_import = builtins.__import__
    def no_accelerate(name, *args, **kwargs):
        if name == 'accelerate' or name.startswith('accelerate.'): raise ImportError(f'No module named {name!r}')
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, '__import__', no_accelerate)
    from miniai.distributed import AccelerateCB
    with pytest.raises(ImportError, match=r'pip install -e "\.\[distributed\]"'): AccelerateCB()


@needs_accelerate
def test_other_processes_refuse_loud_callbacks_unless_quiet(monkeypatch):
    "On a process other than the main one, AccelerateCB refuses callbacks with side effects; to_distributed makes fits quiet."
    from miniai.distributed import AccelerateCB
    from miniai.learner import Learner, MetricsCB, TrainCB
    monkeypatch.setattr(AccelerateCB, 'is_main', property(lambda self: False))
    cb = AccelerateCB(cpu=True)
    learn = Learner(nn.Linear(2, 2), None, F.mse_loss, cbs=[TrainCB(), MetricsCB()])
    with pytest.raises(RuntimeError, match=r'not the main one.*MetricsCB.*to_distributed\(\)'): cb._check_quiet(learn)
    with learn.quiet(): cb._check_quiet(learn)  # a quiet fit has no such callbacks
