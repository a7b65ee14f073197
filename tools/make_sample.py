"""Rebuild the small real Fashion-MNIST sample shipped in miniai/data/fashion_mnist_sample.

Takes the first 400 images of each class from the training split and the first 100 of each class
from the test split of the full data (found the way `miniai.datasets.find_fashion_mnist` finds it),
keeping their original order, and writes them as gzipped IDX files. Run: python tools/make_sample.py
"""
import os, torch
from miniai.datasets import IDX_FILES, sample_dir, write_idx, fashion_mnist_tensors

PER_CLASS = {'train': 400, 'test': 100}

def balanced_idxs(y, per_class):
    "Indices of the first `per_class` items of each class, in their original order."
    keep = torch.cat([(y == c).nonzero().flatten()[:per_class] for c in range(10)])
    return keep.sort().values

if __name__ == '__main__':
    os.environ.pop('MINIAI_QUICK', None)
    data, dest = fashion_mnist_tensors(cache=False), sample_dir()
    dest.mkdir(parents=True, exist_ok=True)
    for split, (img_name, lbl_name) in IDX_FILES.items():
        x, y = data[split]
        idx = balanced_idxs(y, PER_CLASS[split])
        write_idx(dest/f'{img_name}.gz', x[idx])
        write_idx(dest/f'{lbl_name}.gz', y[idx].to(torch.uint8))
        print(f'{split}: {len(idx)} images -> {dest}')
