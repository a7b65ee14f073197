"""The lesson's two plain-CNN results, over several seeds: how far is one run from the typical one?

`cnn`: lesson 11's `get_model` (stride-2 convs, 8 to 64 channels, BatchNorm, GeneralRelu(0.1, 0.4), Kaiming init),
AdamW, 1cycle with peak lr 6e-2, 5 epochs, batch 1024: the lesson reports 90.6%.
`deeper`: the same with a stride-1 first conv and 8 to 128 channels (notebook 13's `get_deeper`), same training: 91.7%.
Both are recipes of `miniai.recipes`, trained by `miniai.train.train`, the function behind `miniai-train`.
The lesson trained in fp32 on a GPU; `--precision fp32` is that (the default), `bf16` is miniai's fast CPU setup.

Usage: python bench/lesson_seeds.py [--models cnn deeper] [--seeds 42 1 2] [--epochs 5] [--lr 0.06] [--bs 1024]
                                    [--precision fp32|bf16] [--threads N] [--out FILE]
Prints one line per run and a summary table (mean, lowest, highest); `--out` also writes them to FILE.
"""
import argparse, statistics

import torch

from miniai.datasets import fashion_mnist_dls, find_fashion_mnist
from miniai.accel import machine_info
from miniai.train import number_arg, train

LESSON = {'cnn': 0.906, 'deeper': 0.917}

def run(name, seed, dls, epochs, lr, precision):
    "Train recipe `name` from `seed`; return its final test accuracy and the seconds it took."
    _, res = train(name, epochs=epochs, bs=dls.train.bs, lr=lr, precision=precision, seed=seed, progress=False, dls=dls)
    return res['accuracy'], res['train_seconds']

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--models', nargs='+', choices=list(LESSON), default=list(LESSON))
    p.add_argument('--seeds', nargs='+', type=number_arg(int, 'a seed', minimum=0, maximum=2**32 - 1), default=[42, 1, 2])
    p.add_argument('--epochs', type=number_arg(int, '--epochs', minimum=1), default=5)
    p.add_argument('--lr', type=number_arg(float, '--lr', positive=True), default=6e-2)
    p.add_argument('--bs', type=number_arg(int, '--bs', minimum=1), default=1024, help="training batch size (the lesson's: 1024)")
    p.add_argument('--precision', choices=['fp32', 'bf16'], default='fp32')
    p.add_argument('--threads', type=number_arg(int, '--threads', minimum=1), default=None)
    p.add_argument('--out', default=None, help='also write the lines printed to this file')
    args = p.parse_args()
    if args.threads: torch.set_num_threads(args.threads)
    lines = []
    def say(s): print(s, flush=True); lines.append(s)
    say(f'lesson_seeds: {args.epochs} epochs, lr {args.lr}, batch size {args.bs}, {args.precision}, '
        f'data {find_fashion_mnist()[1]}, {machine_info()}')
    dls = fashion_mnist_dls(bs=args.bs)
    accs = {}
    for name in args.models:
        for seed in args.seeds:
            acc, secs = run(name, seed, dls, args.epochs, args.lr, args.precision)
            accs.setdefault(name, []).append(acc)
            say(f'{name:7s} seed {seed:10d}: {acc:.2%} in {secs:.0f} s')
    say(f'{"model":7s} {"runs":>4s} {"mean":>7s} {"lowest":>7s} {"highest":>7s} {"lesson":>7s}')
    for name, a in accs.items():
        say(f'{name:7s} {len(a):4d} {statistics.mean(a):7.2%} {min(a):7.2%} {max(a):7.2%} {LESSON[name]:7.1%}')
    if args.out:
        with open(args.out, 'w') as f: f.write('\n'.join(lines) + '\n')

if __name__ == '__main__': main()
