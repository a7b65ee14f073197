"Tests for miniai.datasets, on tiny synthetic IDX files and the shipped sample (conftest.py sets MINIAI_QUICK=1)."
import gzip, math, shutil, zlib

import numpy as np
import pytest
import torch

import miniai.datasets as md
from miniai.datasets import (CLASS_NAMES, IDX_FILES, XMEAN, XSTD, DataFileError, DataLoaders, TensorLoader,
                             collate_dict, fashion_mnist_dls, fashion_mnist_tensors, find_fashion_mnist, idx_files,
                             inplace, load_fashion_mnist, read_idx, sample_dir, show_images, write_idx)

N_TRAIN, N_TEST = 4000, 1000  # the shipped sample: 400 + 100 real images per class


# ---------------------------------------------------------------- helpers

def make_fm_dir(folder, n_train=6, n_test=4, train_labels=None, gz=True, seed=0):
    "Write a tiny but well-formed set of the four Fashion-MNIST IDX files into `folder`."
    g = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    ext = '.gz' if gz else ''
    for split, n in (('train', n_train), ('test', n_test)):
        img_name, lbl_name = IDX_FILES[split]
        write_idx(folder/f'{img_name}{ext}', torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=g))
        y = torch.arange(n, dtype=torch.uint8) % 10
        if split == 'train' and train_labels is not None: y = torch.tensor(train_labels, dtype=torch.uint8)
        write_idx(folder/f'{lbl_name}{ext}', y)
    return folder


def idx_bytes(elem_type, dims, payload):
    "Raw bytes of an IDX file with the given element type byte, dimensions and payload."
    return bytes([0, 0, elem_type, len(dims)]) + b''.join(d.to_bytes(4, 'big') for d in dims) + payload


@pytest.fixture
def no_quick(monkeypatch):
    "Turn quick mode off for a test that exercises the search for the full data."
    monkeypatch.delenv('MINIAI_QUICK', raising=False)


@pytest.fixture(scope='session')
def sample():
    "The sample's tensors, decoded straight from its files (no cache involved)."
    return md._decode(idx_files(sample_dir()))


@pytest.fixture(scope='session')
def dsd():
    "The lesson's DatasetDict in quick mode (built once; the session's cache folder comes from conftest)."
    return load_fashion_mnist()


xmean, xstd = 0.28, 0.35

@inplace
def transformi(b):
    "The lesson's transform: PIL images -> normalised (1, 28, 28) tensors."
    import torchvision.transforms.functional as TF
    b['image'] = [(TF.to_tensor(o) - xmean)/xstd for o in b['image']]


# ---------------------------------------------------------------- IDX files

@pytest.mark.parametrize('name', ['x.gz', 'x'])
def test_idx_round_trip(tmp_path, name):
    t = torch.randint(0, 256, (3, 5, 7), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    write_idx(tmp_path/name, t)
    raw = (tmp_path/name).read_bytes()
    assert (raw[:2] == b'\x1f\x8b') == name.endswith('.gz')  # gzipped exactly when the name says so
    got = read_idx(tmp_path/name)
    assert got.dtype == torch.uint8 and got.shape == (3, 5, 7)
    assert torch.equal(got, t)


def test_write_idx_rejects_non_uint8(tmp_path):
    with pytest.raises(TypeError, match='uint8'): write_idx(tmp_path/'x', torch.zeros(2, 2))


def test_truncated_raw_file_names_file(tmp_path):
    write_idx(tmp_path/'images-raw', torch.zeros(2, 4, 4, dtype=torch.uint8))
    raw = (tmp_path/'images-raw').read_bytes()
    (tmp_path/'images-raw').write_bytes(raw[:-3])
    with pytest.raises(DataFileError, match='truncated') as e: read_idx(tmp_path/'images-raw')
    assert 'images-raw' in str(e.value)
    (tmp_path/'images-raw').write_bytes(raw[:10])  # cut inside the header
    with pytest.raises(DataFileError, match='header') as e: read_idx(tmp_path/'images-raw')
    assert 'images-raw' in str(e.value)


def test_truncated_gz_file_names_file(tmp_path):
    write_idx(tmp_path/'labels-cut.gz', torch.arange(200, dtype=torch.uint8))
    data = (tmp_path/'labels-cut.gz').read_bytes()
    (tmp_path/'labels-cut.gz').write_bytes(data[:len(data)//2])
    with pytest.raises(DataFileError) as e: read_idx(tmp_path/'labels-cut.gz')
    assert 'labels-cut.gz' in str(e.value)


def test_gz_whose_payload_is_short_names_file(tmp_path):
    "A well-formed gzip stream holding a truncated IDX payload is caught by the length check."
    raw = idx_bytes(0x08, (10, 28, 28), bytes(100))
    (tmp_path/'short-payload.gz').write_bytes(gzip.compress(raw))
    with pytest.raises(DataFileError, match='truncated') as e: read_idx(tmp_path/'short-payload.gz')
    assert 'short-payload.gz' in str(e.value) and '7,840' in str(e.value)


def test_corrupt_gz_stream_is_data_file_error(tmp_path):
    # Found by flipping bytes of the sample's gzip files: flipping this bit corrupts a deflate block header.
    data = bytearray(gzip.compress(bytes(range(256))*64 + bytes(4096), mtime=0))
    bad = None
    for pos in range(10, len(data) - 8):
        d = bytearray(data); d[pos] ^= 0xFF
        try: gzip.decompress(bytes(d))
        except zlib.error: bad = d; break
        except (OSError, EOFError): pass
    assert bad is not None, 'could not build a gzip file that makes zlib itself fail'
    (tmp_path/'corrupt.gz').write_bytes(bytes(bad))
    with pytest.raises(DataFileError, match='corrupt.gz'): read_idx(tmp_path/'corrupt.gz')


def test_bad_magic(tmp_path):
    (tmp_path/'junk').write_bytes(b'hello world, this is not IDX')
    with pytest.raises(DataFileError, match='not an IDX file') as e: read_idx(tmp_path/'junk')
    assert 'junk' in str(e.value)
    (tmp_path/'empty').write_bytes(b'')
    with pytest.raises(DataFileError, match='empty file'): read_idx(tmp_path/'empty')


def test_wrong_element_type(tmp_path):
    # 0x0D is IDX's float32: valid IDX, but not something Fashion-MNIST contains
    (tmp_path/'floats').write_bytes(idx_bytes(0x0D, (2,), bytes(8)))
    with pytest.raises(DataFileError, match='element type 0x0d') as e: read_idx(tmp_path/'floats')
    assert 'floats' in str(e.value)


# ---------------------------------------------------------------- checks made by the loader

def test_label_count_mismatch_detected(tmp_path):
    folder = make_fm_dir(tmp_path/'fm', n_train=6, train_labels=[0, 1, 2, 3, 4])
    files, source = find_fashion_mnist(folder)  # all four files are present...
    assert 'path argument' in source and files['train'][1].name == 'train-labels-idx1-ubyte.gz'
    with pytest.raises(DataFileError, match='6 images but') as e: fashion_mnist_tensors(folder, cache=False)
    msg = str(e.value)  # ...but decoding them names both files and both counts
    assert 'train-images-idx3-ubyte.gz' in msg and 'train-labels-idx1-ubyte.gz' in msg and '5 labels' in msg


def test_label_out_of_range_rejected(tmp_path):
    folder = make_fm_dir(tmp_path/'fm', n_train=4, train_labels=[0, 9, 10, 3])
    with pytest.raises(DataFileError, match='label 10') as e: fashion_mnist_tensors(folder, cache=False)
    assert 'train-labels-idx1-ubyte.gz' in str(e.value)


def test_synthetic_folder_decodes(tmp_path):
    "The well-formed synthetic folder itself loads, so the failures above come from the defects we planted."
    folder = make_fm_dir(tmp_path/'fm', n_train=6, n_test=4, gz=False)
    data = fashion_mnist_tensors(folder, cache=False)
    assert data['train'][0].shape == (6, 28, 28) and data['test'][0].shape == (4, 28, 28)
    assert data['train'][1].dtype == torch.int64 and data['train'][1].tolist() == [0, 1, 2, 3, 4, 5]
    assert torch.equal(data['train'][0], read_idx(folder/'train-images-idx3-ubyte'))


# ---------------------------------------------------------------- finding the data

def test_quick_mode_uses_sample():
    files, source = find_fashion_mnist()
    assert 'shipped sample' in source and 'MINIAI_QUICK' in source
    assert files == idx_files(sample_dir())


def test_explicit_path_without_files(tmp_path, no_quick):
    empty = tmp_path/'nothing here'
    empty.mkdir()
    make_fm_dir(tmp_path/'three')
    (tmp_path/'three'/'t10k-labels-idx1-ubyte.gz').unlink()
    for folder in (empty, tmp_path/'three'):
        with pytest.raises(FileNotFoundError) as e: find_fashion_mnist(folder)
        assert str(folder) in str(e.value) and 't10k-labels-idx1-ubyte' in str(e.value)


def test_explicit_path_wins_even_in_quick_mode(tmp_path):
    with pytest.raises(FileNotFoundError, match='The path you passed'): find_fashion_mnist(tmp_path)


def test_miniai_data_empty_folder(tmp_path, monkeypatch, no_quick):
    monkeypatch.setenv('MINIAI_DATA', str(tmp_path))
    with pytest.raises(FileNotFoundError) as e: find_fashion_mnist()
    assert 'MINIAI_DATA' in str(e.value) and str(tmp_path) in str(e.value)


def test_miniai_data_with_files(tmp_path, monkeypatch, no_quick, cache_home):
    folder = make_fm_dir(tmp_path/'fm', n_train=7)
    monkeypatch.setenv('MINIAI_DATA', str(folder))
    files, source = find_fashion_mnist()
    assert source == f'MINIAI_DATA ({folder})' and files['test'][0].parent == folder
    assert fashion_mnist_tensors()['train'][0].shape == (7, 28, 28)


def test_nothing_anywhere(tmp_path, monkeypatch, no_quick, cache_home):
    monkeypatch.delenv('MINIAI_DATA', raising=False)
    system = tmp_path/'usr_share_datasets'
    system.mkdir()
    monkeypatch.setattr(md, 'SYSTEM_DIRS', [system])
    def offline(dest): raise ConnectionError('no network in this test')
    monkeypatch.setattr(md, '_fetch_from_hub', offline)
    with pytest.raises(FileNotFoundError) as e: find_fashion_mnist()
    msg = str(e.value)
    assert 'apt-get install dataset-fashion-mnist' in msg
    assert 'MINIAI_DATA' in msg and 'MINIAI_QUICK=1' in msg
    assert 'Hugging Face hub' in msg and md.HUB_NAME in msg
    assert 'ConnectionError: no network in this test' in msg  # why the hub failed
    assert str(system) in msg and str(cache_home/'fashion_mnist') in msg  # where it looked


def test_download_false_skips_hub(tmp_path, monkeypatch, no_quick, cache_home):
    monkeypatch.delenv('MINIAI_DATA', raising=False)
    monkeypatch.setattr(md, 'SYSTEM_DIRS', [tmp_path])
    def fail(dest): raise AssertionError('the hub must not be asked when download=False')
    monkeypatch.setattr(md, '_fetch_from_hub', fail)
    with pytest.raises(FileNotFoundError, match='was not found'): find_fashion_mnist(download=False)


def test_system_dir_found(tmp_path, monkeypatch, no_quick, cache_home):
    monkeypatch.delenv('MINIAI_DATA', raising=False)
    folder = make_fm_dir(tmp_path/'pkg')
    monkeypatch.setattr(md, 'SYSTEM_DIRS', [tmp_path/'elsewhere', folder])
    files, source = find_fashion_mnist()
    assert source == f'system package ({folder})' and files == idx_files(folder)


def test_explicit_sample_folder_works(tmp_path, no_quick, cache_home, sample):
    "A folder holding the sample files (gzipped, or not) loads through the path argument."
    gz, raw = tmp_path/'gz', tmp_path/'raw'
    shutil.copytree(sample_dir(), gz)
    raw.mkdir()
    for fn in gz.glob('*.gz'): (raw/fn.stem).write_bytes(gzip.decompress(fn.read_bytes()))
    for folder in (gz, raw):
        files, source = find_fashion_mnist(folder)
        assert source == f'path argument ({folder})'
        assert all(f.parent == folder for pair in files.values() for f in pair)
        data = fashion_mnist_tensors(folder)
        assert data['train'][0].shape == (N_TRAIN, 28, 28) and data['test'][0].shape == (N_TEST, 28, 28)
        for split in ('train', 'test'):
            assert torch.equal(data[split][0], sample[split][0]) and torch.equal(data[split][1], sample[split][1])


# ---------------------------------------------------------------- the decoded-tensor cache

def test_tensor_cache_is_used(cache_home, monkeypatch):
    first = fashion_mnist_tensors()
    cached = list((cache_home/'decoded').glob('fashion_mnist-*.pt'))
    assert len(cached) == 1
    def no_decoding(files): raise AssertionError('decoded again instead of loading the cache')
    monkeypatch.setattr(md, '_decode', no_decoding)
    second = fashion_mnist_tensors()
    for split in ('train', 'test'):
        assert torch.equal(first[split][0], second[split][0]) and torch.equal(first[split][1], second[split][1])
    assert second['train'][0].dtype == torch.uint8 and second['train'][1].dtype == torch.int64
    assert second['train'][0].shape == (N_TRAIN, 28, 28)


def test_corrupt_tensor_cache_is_rebuilt(cache_home, monkeypatch, sample):
    fashion_mnist_tensors()
    (cache_fn,) = (cache_home/'decoded').glob('fashion_mnist-*.pt')
    good = cache_fn.read_bytes()
    cache_fn.write_bytes(good[:len(good)//3])  # a half-written cache file
    calls = []
    decode = md._decode
    monkeypatch.setattr(md, '_decode', lambda files: calls.append(1) or decode(files))
    data = fashion_mnist_tensors()
    assert calls == [1], 'a broken cache must be decoded again, not trusted'
    assert torch.equal(data['train'][0], sample['train'][0]) and torch.equal(data['test'][1], sample['test'][1])
    rebuilt = torch.load(cache_fn, weights_only=True)  # and a good cache file is back in its place
    assert torch.equal(rebuilt['test'][0], sample['test'][0])
    assert not list(cache_fn.parent.glob('*.tmp*')), 'no temporary files left behind'


def test_no_cache_writes_nothing(cache_home):
    fashion_mnist_tensors(cache=False)
    assert not cache_home.exists()


def test_unwritable_cache_only_costs_the_cache(cache_home, monkeypatch):
    def unwritable(obj, f, *args, **kwargs):  # what torch.save raises when it cannot open the file for writing
        raise RuntimeError(f'[enforce fail at inline_container.cc] . open file failed with strerror: '
                           f'Read-only file system')
    monkeypatch.setattr(torch, 'save', unwritable)
    assert fashion_mnist_tensors()['train'][0].shape == (N_TRAIN, 28, 28)


# ---------------------------------------------------------------- TensorLoader

@pytest.fixture(scope='module')
def small():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (103, 28, 28), dtype=torch.uint8, generator=g), torch.arange(103)


def test_tensor_loader_batches(small):
    x, y = small
    tl = TensorLoader(x, y, bs=10)
    batches = list(tl)
    assert len(tl) == len(batches) == 11
    for xb, yb in batches[:-1]:
        assert xb.shape == (10, 1, 28, 28) and xb.dtype == torch.float32
        assert yb.shape == (10,) and yb.dtype == torch.int64
    assert batches[-1][0].shape == (3, 1, 28, 28) and batches[-1][1].shape == (3,)  # last, partial batch
    assert torch.equal(torch.cat([yb for _, yb in batches]), y)  # unshuffled: items in order


def test_tensor_loader_drop_last(small):
    x, y = small
    tl = TensorLoader(x, y, bs=10, drop_last=True)
    batches = list(tl)
    assert len(tl) == len(batches) == 10
    assert all(xb.shape[0] == 10 for xb, _ in batches)
    assert len(TensorLoader(x[:5], y[:5], bs=10, drop_last=True)) == 0
    assert len(TensorLoader(x, y, bs=103)) == 1 and len(TensorLoader(x, y, bs=1)) == 103


def test_tensor_loader_normalisation(small):
    x, y = small
    xb, _ = next(iter(TensorLoader(x, y, bs=16)))
    expected = ((x[:16].float()/255 - 0.28)/0.35)[:, None]
    assert torch.allclose(xb, expected, atol=1e-6)
    assert (XMEAN, XSTD) == (0.28, 0.35)
    xb2, _ = next(iter(TensorLoader(x, y, bs=16, mean=0.5, std=2.0)))
    assert torch.allclose(xb2, ((x[:16].float()/255 - 0.5)/2.0)[:, None], atol=1e-6)


def test_tensor_loader_shuffle(small):
    x, y = small
    tl = TensorLoader(x, y, bs=10, shuffle=True)
    torch.manual_seed(42)
    e1 = [(xb, yb) for xb, yb in tl]
    e2 = torch.cat([yb for _, yb in tl])
    y1 = torch.cat([yb for _, yb in e1])
    assert sorted(y1.tolist()) == list(range(103)), 'every item exactly once per epoch'
    assert sorted(e2.tolist()) == list(range(103))
    assert not torch.equal(y1, y), 'shuffled'
    assert not torch.equal(y1, e2), 'a new order each epoch'
    xs = torch.cat([xb for xb, _ in e1])  # images stay with their labels
    assert torch.allclose(xs, ((x[y1].float()/255 - XMEAN)/XSTD)[:, None], atol=1e-6)
    torch.manual_seed(42)
    assert torch.equal(torch.cat([yb for _, yb in tl]), y1), 'torch.manual_seed repeats the order'


def test_tensor_loader_bad_args(small):
    x, y = small
    for bs in (0, -4):
        with pytest.raises(ValueError, match='Batch size'): TensorLoader(x, y, bs=bs)
    with pytest.raises(ValueError, match="Batch size"): TensorLoader(x, y, bs="many")
    with pytest.raises(ValueError, match="Batch size"): TensorLoader(x, y, bs=2.5)  # never silently truncated to 2
    with pytest.raises(ValueError, match='103 images but 100 labels'): TensorLoader(x, y[:100])


def test_fashion_mnist_dls(cache_home):
    dls = fashion_mnist_dls(64)
    assert dls.train.bs == 64 and dls.valid.bs == 128  # validation batches twice as big by default
    assert dls.train.shuffle and not dls.valid.shuffle
    assert len(dls.train) == math.ceil(N_TRAIN/64) and len(dls.valid) == math.ceil(N_TEST/128)
    xb, yb = next(iter(dls.valid))
    assert xb.shape == (128, 1, 28, 28) and xb.dtype == torch.float32 and yb.dtype == torch.int64
    xb, yb = next(iter(dls.train))
    assert xb.shape == (64, 1, 28, 28)
    assert fashion_mnist_dls(64, valid_bs=100).valid.bs == 100


def test_fashion_mnist_dls_valid_order(cache_home, sample):
    dls = fashion_mnist_dls(100)
    ys = torch.cat([yb for _, yb in dls.valid])
    assert torch.equal(ys, sample['test'][1])  # the validation set is never shuffled


# ---------------------------------------------------------------- the lesson's DatasetDict path

def test_load_fashion_mnist_quick(dsd, sample):
    from datasets import ClassLabel, DatasetDict
    assert isinstance(dsd, DatasetDict)
    assert list(dsd) == ['train', 'test']
    assert dsd['train'].num_rows == N_TRAIN and dsd['test'].num_rows == N_TEST
    assert list(dsd['train'].features) == ['image', 'label']
    label = dsd['train'].features['label']
    assert isinstance(label, ClassLabel) and label.num_classes == 10 and label.names == CLASS_NAMES
    img = dsd['train'][0]['image']
    assert img.size == (28, 28) and img.mode == 'L'
    for split in ('train', 'test'):
        assert dsd[split]['label'][:] == sample[split][1].tolist()
    test_pixels = np.stack([np.array(im) for im in dsd['test']['image']])
    assert np.array_equal(test_pixels, sample['test'][0].numpy()), 'same pixels as the tensor path'
    for i in (0, 1234, N_TRAIN - 1):
        assert np.array_equal(np.array(dsd['train'][i]['image']), sample['train'][0][i].numpy())


def test_load_fashion_mnist_arrow_cache(cache_home, sample):
    first = load_fashion_mnist()
    assert (cache_home/'arrow').is_dir() and list((cache_home/'arrow').glob('*/dataset_dict.json'))
    second = load_fashion_mnist()  # from the Arrow cache this time
    assert second['test']['label'][:] == sample['test'][1].tolist()
    assert np.array_equal(np.array(second['test'][999]['image']), np.array(first['test'][999]['image']))


def test_from_dd_matches_tensor_loader(dsd, sample):
    tds = dsd.with_transform(transformi)
    dls = DataLoaders.from_dd(tds, 32)
    xb, yb = next(iter(dls.train))
    assert xb.shape == (32, 1, 28, 28) and xb.dtype == torch.float32 and yb.shape == (32,)
    assert dls.valid.batch_size == 64
    batch = next(iter(dls.valid))
    assert isinstance(batch, tuple) and len(batch) == 2
    xv, yv = batch
    xf, yf = next(iter(TensorLoader(*sample['test'], bs=64)))
    assert xv.shape == xf.shape == (64, 1, 28, 28)
    assert torch.equal(yv, yf)
    assert torch.allclose(xv, xf, atol=1e-6), 'both paths give the same normalised batch'


def test_data_loaders_needs_two():
    with pytest.raises(ValueError, match='training and a validation'): DataLoaders([1, 2])
    from datasets import Dataset, DatasetDict
    one = DatasetDict({'train': Dataset.from_dict({'a': [1, 2]})})
    with pytest.raises(ValueError, match='train'): DataLoaders.from_dd(one, 2)
    dls = DataLoaders('t', 'v')
    assert (dls.train, dls.valid) == ('t', 'v')


def test_collate_dict_feature_order():
    from datasets import Dataset
    ds = Dataset.from_dict({'b': [10, 20], 'a': [1, 2]})
    f = collate_dict(ds)
    out = f([{'a': 1, 'b': 10}, {'a': 2, 'b': 20}])  # item keys in another order than the features
    assert isinstance(out, tuple) and len(out) == 2
    assert torch.equal(out[0], torch.tensor([10, 20])) and torch.equal(out[1], torch.tensor([1, 2]))


def test_inplace():
    @inplace
    def add_one(d): d['x'] = d['x'] + 1
    d = {'x': 1}
    assert add_one(d) is d and d == {'x': 2}


# ---------------------------------------------------------------- showing images

def test_show_images_titles(small):
    import matplotlib.pyplot as plt
    x, _ = small
    show_images(x[:5, None], labels=torch.tensor([0, 9, 3, 3, 7]))
    axs = plt.gcf().axes
    assert len(axs) == 6  # a 2x3 grid for 5 images...
    assert [ax.get_title() for ax in axs[:5]] == [CLASS_NAMES[i] for i in (0, 9, 3, 3, 7)]
    assert not axs[5].axison and axs[5].get_title() == ''  # ...whose spare axis is hidden
    assert axs[0].images[0].get_array().shape == (28, 28)
    plt.close('all')
    show_images(list(x[:2]), titles=['left', 'right'])
    assert [ax.get_title() for ax in plt.gcf().axes] == ['left', 'right']


def test_show_images_too_few_titles(small):
    x, _ = small
    with pytest.raises(ValueError, match='4 images but only 3 titles'): show_images(x[:4], titles=['a', 'b', 'c'])
