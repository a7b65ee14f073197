"""Rebuild the small real Fashion-MNIST sample shipped in miniai/data/fashion_mnist_sample.

Takes the first 400 images of each class from the training split and the first 100 of each class
from the test split of the full data (found the way `miniai.datasets.find_fashion_mnist` finds it),
keeping their original order, and writes them as gzipped IDX files. The new sample is written into a
temporary folder beside the old one and renamed into place only once it is complete and reads back,
so an interrupted run leaves the shipped sample as it was. Run: python tools/make_sample.py
"""
import os, shutil, sys, tempfile
from pathlib import Path

import torch
from miniai.datasets import DataFileError, IDX_FILES, _decode, _swap_in, fashion_mnist_tensors, idx_files, sample_dir, write_idx

PER_CLASS = {'train': 400, 'test': 100}

def balanced_idxs(y, per_class):
    "Indices of the first `per_class` items of each class, in their original order."
    keep = torch.cat([(y == c).nonzero().flatten()[:per_class] for c in range(10)])
    return keep.sort().values

def main():
    os.environ.pop('MINIAI_QUICK', None)  # the sample is cut from the full data, never from itself
    try: data = fashion_mnist_tensors(cache=False)
    except (FileNotFoundError, DataFileError) as e: sys.exit(f'make_sample: the full data is needed.\n{e}')
    dest = sample_dir()
    tmp = Path(tempfile.mkdtemp(prefix=f'.{dest.name}.', dir=dest.parent))
    try:
        for fn in dest.glob('*'):  # the licence and the README travel with the sample
            if fn.is_file() and not fn.name.endswith('.gz'): shutil.copy2(fn, tmp/fn.name)
        for split, (img_name, lbl_name) in IDX_FILES.items():
            x, y = data[split]
            idx = balanced_idxs(y, PER_CLASS[split])
            write_idx(tmp/f'{img_name}.gz', x[idx])
            write_idx(tmp/f'{lbl_name}.gz', y[idx].to(torch.uint8))
            print(f'{split}: {len(idx)} images')
        check = _decode(idx_files(tmp))  # reads back, with every check the loaders make
        assert all(len(check[s][1]) == 10*PER_CLASS[s] for s in PER_CLASS)
        _swap_in(tmp, dest)
    finally: shutil.rmtree(tmp, ignore_errors=True)
    print(f'-> {dest}')

if __name__ == '__main__': main()
