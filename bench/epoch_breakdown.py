#!/usr/bin/env python
"""Where an epoch of a recipe spends its time: the data loader, the augmentation, the training steps themselves, what
the Learner and its callbacks add around them, the validation pass, and the test-time views.

Each part is timed on its own, on the real data, in the recipe's precision (channels-last, and bf16 autocast where
the processor has it, as `train` does):

    loader      one pass of the training loader, doing nothing with the batches
    steps       a hand-written loop of training steps (forward, loss, backward, AdamW, zero_grad) on those batches
    learner     the recipe's `Learner` without its augmentation, training on the same batches: minus `steps`, what the
                Learner and its callbacks (metrics, 1cycle, mixed precision, channels-last) cost
    augment     the same Learner with the recipe's augmentation, minus `learner`
    valid       one validation pass of that Learner over the test set, with its metrics
    tta         the recipe's test-time views over the test set, with the trained model

The training parts run on the first `--batches` batches of an epoch (all of them by default) and are scaled to a
full epoch; each is the best of `--repeats` tries, taken in turns, so that the first try's warm-up (oneDNN prepares
its kernels on the first steps) and a busy moment of a shared machine count less. The report (`--out`, a .txt file) records the processor, the threads and the date.

    python bench/epoch_breakdown.py speed93 --threads 2 --out bench/results/breakdown.txt
    python bench/epoch_breakdown.py speed93 --batches 4 --repeats 1 --quick   # a smoke test on the shipped sample
"""
import argparse, contextlib, io, itertools, os, sys, time
from pathlib import Path


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('recipe', nargs='?', default='speed93', help="a recipe of miniai.recipes.RECIPES (default: speed93)")
    p.add_argument('--batches', type=int, default=None, help='training batches to time (default: a whole epoch)')
    p.add_argument('--repeats', type=int, default=2, help='tries of each part, keeping the fastest (default: 2)')
    p.add_argument('--threads', type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument('--precision', default='auto', choices=['auto', 'bf16', 'fp32'], help="default: auto")
    p.add_argument('--out', type=Path, default=None, help='the report (.txt)')
    p.add_argument('--quick', action='store_true', help='use the small sample shipped with miniai (sets MINIAI_QUICK=1)')
    args = p.parse_args(argv)
    for k in ('batches', 'repeats', 'threads'):
        if getattr(args, k) is not None and getattr(args, k) < 1: p.error(f'--{k} must be at least 1')
    if args.out is not None and args.out.suffix != '.txt': p.error('--out is the text report: its name ends in .txt')
    from miniai.recipes import get_recipe
    try: args.r = get_recipe(args.recipe)
    except ValueError as e: p.error(str(e))
    return args


def timed(f):
    "Seconds `f()` takes (what it prints, such as `MetricsCB`'s lines, is dropped)."
    with contextlib.redirect_stdout(io.StringIO()):
        t0 = time.perf_counter(); f(); return time.perf_counter() - t0


def bare_steps(model, batches, loss_func, opt, dtype):
    "The training loop with nothing around it: what a step costs by itself."
    import torch
    model.train()
    for xb, yb in batches:
        with torch.autocast('cpu', dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss = loss_func(model(xb.contiguous(memory_format=torch.channels_last)), yb)
        loss.backward(); opt.step(); opt.zero_grad()


def main(argv=None):
    args = parse_args(argv)
    if args.quick: os.environ['MINIAI_QUICK'] = '1'
    import torch
    if args.threads: torch.set_num_threads(args.threads)
    from torch import optim
    from miniai.accel import cpu_features, fast_dtype, machine_info
    from miniai.augment import tta_preds, tta_views
    from miniai.datasets import DataLoaders, fashion_mnist_dls, quick_mode
    from miniai.recipes import get_recipe
    from miniai.train import make_learner

    r = args.r
    dls = fashion_mnist_dls(bs=r.bs)
    n_all = len(dls.train)
    n = min(args.batches or n_all, n_all)
    batches = list(itertools.islice(dls.train, n))
    part = DataLoaders(batches, dls.valid)
    dtype = {'auto': fast_dtype('cpu')[0], 'bf16': torch.bfloat16, 'fp32': None}[args.precision]  # None: float32
    plain = get_recipe(r, aug='none', erase=False)
    with contextlib.redirect_stdout(io.StringIO()):  # to_fast says which path it chose: the report says it below
        learners = {k: make_learner(rec, part, args.precision, progress=False) for k, rec in (('plain', plain), ('full', r))}
    model = plain.build_model().to(memory_format=torch.channels_last)
    opt = optim.AdamW(model.parameters(), r.lr, weight_decay=r.wd)
    loss_func = learners['plain'].loss_func

    parts = {'loader': lambda: sum(1 for _ in itertools.islice(dls.train, n)),
             'steps': lambda: bare_steps(model, batches, loss_func, opt, dtype),
             'learner': lambda: learners['plain'].fit(1, valid=False),
             'augment': lambda: learners['full'].fit(1, valid=False),
             'valid': lambda: learners['full'].fit(1, train=False),
             'tta': lambda: tta_preds(learners['full'], tta_views(r.tta))}
    best = {}
    for _ in range(args.repeats):
        for k, f in parts.items(): best[k] = min(best.get(k, float('inf')), timed(f))
    scale = n_all / n  # the training parts ran on n of the epoch's n_all batches
    epoch = {'loader': best['loader'] * scale, 'steps': best['steps'] * scale,
             'learner': (best['learner'] - best['steps']) * scale, 'augment': (best['augment'] - best['learner']) * scale,
             'valid': best['valid']}
    total, cpu = sum(epoch.values()), cpu_features()
    lines = [f'epoch breakdown of {args.recipe}, {machine_info()}',
             f"  CPU: kernels {cpu['capability']}, native bfloat16 {'yes' if cpu['bf16'] else 'no'}, "
             f"AMX {'yes' if cpu['amx'] else 'no'}; computing in {str(dtype or torch.float32).replace('torch.', '')}, channels-last",
             f"  data: {'the shipped sample (quick mode: figures not meaningful)' if quick_mode() else 'full Fashion-MNIST (60,000 / 10,000)'}; "
             f"batch {r.bs}, {n} of {n_all} training batches timed and scaled to the epoch; best of {args.repeats}",
             f"  {'part':10s} {'s an epoch':>10s} {'share':>6s}"]
    for k, s in epoch.items(): lines.append(f'  {k:10s} {s:10.2f} {s / total:6.1%}')
    lines.append(f"  {'epoch':10s} {total:10.2f}   (x {r.epochs} epochs = {total * r.epochs:.1f} s)")
    lines.append(f"  {'tta':10s} {best['tta']:10.2f}   (once, at the end: views {r.tta!r})")
    print('\n'.join(lines))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text('\n'.join(lines) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
