"""One process of the two-process test in test_distributed.py: run it with torchrun (or `accelerate launch`).

`python -m torch.distributed.run --nproc_per_node 2 tests/dist_worker.py OUT` trains a small MLP (no BatchNorm: its
per-process statistics would make the run differ from a single process) for one epoch on the shipped sample, data-parallel
on the CPU through miniai's AccelerateCB, and writes what each process ends with to OUT/rank{N}.pt.
"""
import os, sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torcheval.metrics import MulticlassAccuracy

from miniai.learner import Callback, MetricsCB, TrainLearner
from miniai.datasets import fashion_mnist_dls
from miniai.activations import set_seed
from miniai.checkpoint import CheckpointCB
from miniai.distributed import AccelerateCB

GLOBAL_BS, VALID_BS, SEED, LR = 200, 333, 0, 0.1  # 4,000 images: 20 even steps; 1,000 in 333s: a padded last batch

def get_model(): return nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))

class CapturePreds(Callback):
    "Keep the (gathered) validation predictions and targets that MetricsCB sees."
    order = MetricsCB.order + 1
    def before_fit(self, learn): self.preds, self.targs = [], []
    def after_batch(self, learn):
        if not learn.training: self.preds.append(learn.preds.detach().clone()); self.targs.append(learn.batch[1].clone())

def main(out):
    out = Path(out)
    (out/f"pid{os.environ.get('RANK', 0)}").write_text(str(os.getpid()))  # so the test can stop us if it must
    set_seed(SEED + int(os.environ.get('RANK', 0)))  # different seeds per process: DDP must make the copies equal
    model = get_model()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    cap = CapturePreds()
    learn = TrainLearner(model, fashion_mnist_dls(bs=GLOBAL_BS, valid_bs=VALID_BS), F.cross_entropy, lr=LR,
                         cbs=[MetricsCB(accuracy=MulticlassAccuracy()), cap, CheckpointCB(out/'ck.pth')])
    learn.to_distributed(cpu=True, seed=SEED)
    acc = next(cb for cb in learn.cbs if isinstance(cb, AccelerateCB)).accelerator
    learn.fit(1)
    learn.save('model', path=out)
    torch.save({'rank': acc.process_index, 'world': acc.num_processes, 'state': learn.model.state_dict(),
                'init': init, 'history': learn.metrics.history if acc.is_main_process else None,
                'preds': torch.cat(cap.preds), 'targs': torch.cat(cap.targs)}, out/f'rank{acc.process_index}.pt')

if __name__ == '__main__': main(sys.argv[1])
