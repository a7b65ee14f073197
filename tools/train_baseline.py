"""Train the lesson's baseline CNN on the real Fashion-MNIST and print its test accuracy and wall time.

The model is lesson 11's `get_model` (stride-2 convs, 8 to 64 channels) with BatchNorm, a leaky,
shifted `GeneralRelu` and Kaiming init, trained with AdamW and a one-cycle learning-rate schedule.
Usage: python tools/train_baseline.py [--epochs 3] [--bs 1024] [--lr 0.06] [--seed 42]
"""
import argparse, time
from functools import partial

import torch.nn.functional as F
from torch import nn, optim
from torch.optim.lr_scheduler import OneCycleLR
from torcheval.metrics import MulticlassAccuracy

from miniai.datasets import fashion_mnist_dls, find_fashion_mnist
from miniai.learner import Callback, TrainLearner, MetricsCB, DeviceCB, ProgressCB
from miniai.activations import set_seed
from miniai.accel import machine_info
from miniai.init import GeneralRelu, get_model, init_weights

class OneCycleCB(Callback):
    "Step PyTorch's `OneCycleLR` after every training batch."
    def __init__(self, max_lr, total_steps): self.max_lr, self.total_steps = max_lr, total_steps
    def before_fit(self, learn): self.sched = OneCycleLR(learn.opt, self.max_lr, total_steps=self.total_steps)
    def after_batch(self, learn):
        if learn.training: self.sched.step()

def positive(kind):
    def _f(s):
        v = kind(s)
        if v <= 0: raise argparse.ArgumentTypeError(f'must be positive, got {s}')
        return v
    return _f

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--epochs', type=positive(int), default=3)
    p.add_argument('--bs', type=positive(int), default=1024)
    p.add_argument('--lr', type=positive(float), default=6e-2)
    p.add_argument('--seed', type=int, default=42)
    args = p.parse_args()

    print(f'data: {find_fashion_mnist()[1]}')
    set_seed(args.seed)
    dls = fashion_mnist_dls(bs=args.bs)
    act = partial(GeneralRelu, leak=0.1, sub=0.4)
    model = get_model(act, norm=nn.BatchNorm2d).apply(partial(init_weights, leaky=0.1))
    metrics = MetricsCB(accuracy=MulticlassAccuracy())
    cbs = [DeviceCB(), metrics, ProgressCB(), OneCycleCB(args.lr, args.epochs*len(dls.train))]
    learn = TrainLearner(model, dls, F.cross_entropy, lr=args.lr, cbs=cbs, opt_func=optim.AdamW)
    start = time.perf_counter()
    learn.fit(args.epochs)
    secs = time.perf_counter() - start
    acc = metrics.history[-1]['accuracy']
    print(f'\ntest accuracy after {args.epochs} epochs: {acc:.2%} ({len(dls.valid.x):,} test images); '
          f'wall time {secs:.1f}s ({secs/args.epochs:.1f}s/epoch) on {machine_info()}')

if __name__ == '__main__': main()
