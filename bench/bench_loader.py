#!/usr/bin/env python
"""Time one pass over Fashion-MNIST's training batches two ways, side by side:

(a) the lesson's path: `load_fashion_mnist()` -> `with_transform(transformi)` -> `DataLoaders.from_dd(tds, bs)`,
    with `num_workers=0` (and, with `--workers N`, also with N worker processes);
(b) the fast tensor path: `fashion_mnist_dls(bs)`.

Both are built and given one warm-up batch before any timing; each pass is timed `--repeats` times (the paths
taking turns) and the best is kept. Exits with status 1 if the lesson path (num_workers=0) is less than `--min-ratio` times slower than the
fast path.

    python bench/bench_loader.py            # the full data, found the usual way
    python bench/bench_loader.py --quick    # the 5,000-image sample shipped with miniai
"""
import argparse, datetime, os, platform, sys, time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--bs', type=int, default=1024, help='training batch size (default: 1024)')
    p.add_argument('--quick', action='store_true', help='use the small sample shipped with miniai (sets MINIAI_QUICK=1)')
    p.add_argument('--workers', type=int, default=0, metavar='N',
                   help='also time the lesson path with a DataLoader of N worker processes (default: 0, off)')
    p.add_argument('--repeats', type=int, default=3, help='timed passes per path; the best is kept (default: 3)')
    p.add_argument('--threads', type=int, default=None, metavar='N',
                   help="torch intra-op threads (default: torch's own choice)")
    p.add_argument('--min-ratio', type=float, default=20.0,
                   help='fail unless the fast path is at least this many times faster than the lesson path '
                        'with num_workers=0 (default: 20)')
    args = p.parse_args(argv)
    if args.bs < 1: p.error('--bs must be positive')
    if args.repeats < 1: p.error('--repeats must be positive')
    if args.workers < 0: p.error('--workers must be 0 or more')
    if args.threads is not None and args.threads < 1: p.error('--threads must be positive')
    return args


def cpu_model():
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'): return line.split(':', 1)[1].strip()
    except OSError: pass
    return platform.processor() or platform.machine() or 'unknown'


def time_pass(dl):
    "Seconds for one full pass over `dl`, and the number of batches and images it gave."
    n_batches = n_items = 0
    t0 = time.perf_counter()
    for xb, yb in dl:
        n_batches += 1
        n_items += len(yb)
    return time.perf_counter() - t0, n_batches, n_items


def load_average():
    try: return ', '.join(f'{v:.2f}' for v in os.getloadavg())
    except OSError: return 'unknown'


def main(argv=None):
    args = parse_args(argv)
    if args.quick: os.environ['MINIAI_QUICK'] = '1'
    os.environ.setdefault('MPLBACKEND', 'Agg')

    import torch
    import torchvision.transforms.functional as TF
    from miniai.datasets import DataLoaders, fashion_mnist_dls, find_fashion_mnist, inplace, load_fashion_mnist

    if args.threads: torch.set_num_threads(args.threads)
    xmean, xstd = 0.28, 0.35

    @inplace
    def transformi(b): b['image'] = [(TF.to_tensor(o) - xmean)/xstd for o in b['image']]

    print('miniai loader benchmark')
    print(f'  date        {datetime.datetime.now().astimezone().isoformat(timespec="seconds")}')
    print(f'  cpu         {cpu_model()} ({os.cpu_count()} logical cores, {len(os.sched_getaffinity(0))} usable)')
    print(f'  load avg    {load_average()} (1, 5, 15 min, before the run)')
    print(f'  torch       {torch.__version__}, {torch.get_num_threads()} threads; python {platform.python_version()}')
    print(f'  data        {find_fashion_mnist()[1]}')
    print(f'  batch size  {args.bs}; best of {args.repeats} passes over the training batches')

    # Build everything before timing: the DatasetDict (and its cache), the decoded tensors, and one batch each.
    t0 = time.perf_counter()
    tds = load_fashion_mnist().with_transform(transformi)
    t_build_dd = time.perf_counter() - t0
    t0 = time.perf_counter()
    fast = fashion_mnist_dls(args.bs).train
    t_build_fast = time.perf_counter() - t0
    print(f'  setup       DatasetDict {t_build_dd:.2f}s, tensors {t_build_fast:.2f}s (not timed below)')

    paths = [('lesson: from_dd, num_workers=0', DataLoaders.from_dd(tds, args.bs).train)]
    if args.workers:
        paths.append((f'lesson: from_dd, num_workers={args.workers}',
                      DataLoaders.from_dd(tds, args.bs, num_workers=args.workers).train))
    paths.append(('fast: fashion_mnist_dls', fast))

    for _, dl in paths: next(iter(dl))  # warm-up batch

    # Interleave the repeats (a, b, a, b, ...) so that a passing change in the machine's load hits every path alike.
    runs = {name: [] for name, _ in paths}
    for _ in range(args.repeats):
        for name, dl in paths: runs[name].append(time_pass(dl))
    results = [(name, *min(runs[name], key=lambda r: r[0])) for name, _ in paths]
    w = max(len(r[0]) for r in results)
    print()
    print(f'{"path":<{w}}  {"s/pass":>9}  {"batches":>7}  {"images/s":>11}')
    for name, secs, nb, ni in results:
        print(f'{name:<{w}}  {secs:9.3f}  {nb:7d}  {ni/secs:11,.0f}')
    print()

    t_fast = results[-1][1]
    for name, secs, *_ in results[:-1]:
        print(f'ratio ({name} / fast): {secs/t_fast:.1f}x')
    ratio = results[0][1] / t_fast
    if ratio < args.min_ratio:
        print(f'FAIL: the fast path is only {ratio:.1f}x faster than the lesson path; expected at least {args.min_ratio:g}x.')
        return 1
    print(f'OK: the fast path is {ratio:.1f}x faster than the lesson path (minimum {args.min_ratio:g}x).')
    return 0


if __name__ == '__main__':
    sys.exit(main())
