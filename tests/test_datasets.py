"Tests for miniai.datasets, on tiny synthetic IDX files and the shipped sample (conftest.py sets MINIAI_QUICK=1)."
import gzip, math, os, shutil, zlib
from pathlib import Path

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
    assert rebuilt['version'] == md._CACHE_VERSION and torch.equal(rebuilt['data']['test'][0], sample['test'][0])
    assert list(cache_fn.parent.iterdir()) == [cache_fn], 'no temporary files left behind'


def test_no_cache_writes_nothing(cache_home):
    fashion_mnist_tensors(cache=False)
    assert not cache_home.exists()


def test_unwritable_cache_only_costs_the_cache(cache_home, monkeypatch):
    def unwritable(obj, f, *args, **kwargs):  # what torch.save raises when it cannot open the file for writing
        raise RuntimeError(f'[enforce fail at inline_container.cc] . open file failed with strerror: '
                           f'Read-only file system')
    monkeypatch.setattr(torch, 'save', unwritable)
    monkeypatch.setattr(md, '_warned', set())
    with pytest.warns(md.CacheWarning, match='Read-only file system'):
        assert fashion_mnist_tensors()['train'][0].shape == (N_TRAIN, 28, 28)
    assert not list((cache_home/'decoded').iterdir()), 'no temporary file left behind'


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


# ================================================================ bad input and faults on the data path (issue 12)
# Each test's name says the bad input; each checks a clear message, or that the right thing happens.

# ---------------------------------------------------------------- MINIAI_QUICK

@pytest.mark.parametrize('value', ['no', 'off', 'false', '0', '', 'FALSE', ' Off ', 'No'])
def test_miniai_quick_off_words_keep_quick_mode_off(monkeypatch, value, tmp_path, cache_home):
    monkeypatch.setenv('MINIAI_QUICK', value)
    assert md.quick_mode() is False
    monkeypatch.delenv('MINIAI_DATA', raising=False)
    monkeypatch.setattr(md, 'SYSTEM_DIRS', [make_fm_dir(tmp_path/'full', n_train=9)])
    _, source = find_fashion_mnist()
    assert source.startswith('system package'), 'the full data, not the sample'
    assert fashion_mnist_tensors()['train'][0].shape == (9, 28, 28)


@pytest.mark.parametrize('value', ['1', 'true', 'yes', 'on', 'YES', 'True', ' on'])
def test_miniai_quick_on_words_turn_quick_mode_on(monkeypatch, value):
    monkeypatch.setenv('MINIAI_QUICK', value)
    assert md.quick_mode() is True
    assert 'shipped sample' in find_fashion_mnist()[1]


def test_miniai_quick_unset_is_off(monkeypatch):
    monkeypatch.delenv('MINIAI_QUICK', raising=False)
    assert md.quick_mode() is False


@pytest.mark.parametrize('value', ['maybe', '2', 'y', 'quick', 'nope'])
def test_miniai_quick_unknown_word_is_refused(monkeypatch, value):
    monkeypatch.setenv('MINIAI_QUICK', value)
    for f in (md.quick_mode, find_fashion_mnist, fashion_mnist_dls):
        with pytest.raises(ValueError) as e: f()
        msg = str(e.value)
        assert f'MINIAI_QUICK={value!r}' in msg
        assert all(w in msg for w in ('1', 'true', 'yes', 'on', '0', 'false', 'no', 'off')), msg


# ---------------------------------------------------------------- float images in TensorLoader

def test_tensor_loader_float_images_already_normalised_are_not_normalised_twice(small):
    x, y = small
    xb_u8, _ = next(iter(TensorLoader(x, y, bs=16)))
    xf = (x.float()/255 - XMEAN)/XSTD
    tl = TensorLoader(xf, y, bs=16)
    xb_f, _ = next(iter(tl))
    assert torch.equal(xb_f, xf[:16, None]), 'float images are used exactly as given'
    assert torch.allclose(xb_f, xb_u8, atol=1e-6)
    assert tl.mean is None and tl.std is None


def test_tensor_loader_float_images_0_to_1_are_refused(small):
    x, y = small
    with pytest.raises(ValueError, match='not been normalised') as e: TensorLoader(x.float()/255, y)
    assert 'uint8' in str(e.value) and '(x - XMEAN)/XSTD' in str(e.value)


def test_tensor_loader_float_images_0_to_255_are_refused(small):
    x, y = small
    with pytest.raises(ValueError, match='not been normalised') as e: TensorLoader(x.float(), y)
    assert '(x/255 - XMEAN)/XSTD' in str(e.value) and '255' in str(e.value)


def test_tensor_loader_mean_std_with_float_images_refused(small):
    x, y = small
    xf = (x.float()/255 - XMEAN)/XSTD
    for kw in (dict(mean=0.5), dict(std=0.5), dict(mean=XMEAN, std=XSTD)):
        with pytest.raises(ValueError, match='would be ignored'): TensorLoader(xf, y, **kw)


def test_tensor_loader_int64_images_refused(small):
    x, y = small
    with pytest.raises(TypeError, match=r'uint8 pixels.*int64.*x.to\(torch.uint8\)'): TensorLoader(x.long(), y)


def test_tensor_loader_numpy_arrays_and_label_lists_work(small):
    x, y = small
    tl = TensorLoader(x.numpy(), y.numpy(), bs=10)
    xb, yb = next(iter(tl))
    assert torch.allclose(xb, next(iter(TensorLoader(x, y, bs=10)))[0]) and torch.equal(yb, y[:10])
    assert torch.equal(next(iter(TensorLoader(x[:3], [4, 5, 6], bs=3)))[1], torch.tensor([4, 5, 6]))


def test_tensor_loader_images_as_list_refused(small):
    x, y = small
    with pytest.raises(TypeError, match='tensor or a NumPy array, got list'): TensorLoader(list(x), y)


@pytest.mark.parametrize('kw', [dict(std=0), dict(std=-1.0), dict(std='0.35'), dict(mean='a'), dict(mean=float('nan'))])
def test_tensor_loader_bad_mean_or_std_refused(small, kw):
    x, y = small
    with pytest.raises(ValueError, match='mean and std should be numbers'): TensorLoader(x, y, **kw)


def test_tensor_loader_numpy_mean_std_work(small):
    x, y = small
    xb, _ = next(iter(TensorLoader(x, y, bs=4, mean=np.float32(0.5), std=torch.tensor(2.0))))
    assert torch.allclose(xb, ((x[:4].float()/255 - 0.5)/2)[:, None], atol=1e-6)


@pytest.mark.parametrize('shape', [(28, 28), (2, 1, 1, 28, 28), (5,)])
def test_tensor_loader_images_of_wrong_rank_refused(shape):
    x = torch.zeros(shape, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r'\(n, h, w\) or \(n, c, h, w\)'): TensorLoader(x, torch.zeros(shape[0]))


def test_tensor_loader_no_images_refused():
    with pytest.raises(ValueError, match='no images'): TensorLoader(torch.zeros(0, 28, 28, dtype=torch.uint8), torch.zeros(0))


# ---------------------------------------------------------------- the decoded-tensor cache: checked and versioned

def _cache_file(cache_home):
    (fn,) = (cache_home/'decoded').glob('fashion_mnist-*.pt')
    return fn


def _count_decodes(monkeypatch):
    calls, decode = [], md._decode
    monkeypatch.setattr(md, '_decode', lambda files: calls.append(1) or decode(files))
    return calls


def _foreign_caches(good):
    "Cache files that are valid torch files but not a good cache of these data, each with what is wrong with it."
    d = good['data']
    x, y = d['train']
    yield 'older version', {**good, 'version': md._CACHE_VERSION - 1}
    yield 'unversioned (the old format)', d
    yield 'another key', {**good, 'key': 'not-these-files'}
    yield 'float images', {**good, 'data': {**d, 'train': (x.float(), y)}}
    yield 'int32 labels', {**good, 'data': {**d, 'train': (x, y.int())}}
    yield 'one image short', {**good, 'data': {**d, 'train': (x[:-1], y[:-1])}}
    yield 'images of another size', {**good, 'data': {**d, 'train': (x[:, :14, :14].contiguous(), y)}}
    yield 'a split missing', {**good, 'data': {'train': d['train']}}
    yield 'not a dict', [1, 2, 3]


@pytest.mark.parametrize('what', [w for w, _ in _foreign_caches({'version': 0, 'data': {'train': (torch.zeros(1, 1, 1), torch.zeros(1))}})])
def test_tensor_cache_stale_or_foreign_file_is_rebuilt(cache_home, monkeypatch, sample, what):
    fashion_mnist_tensors()
    fn = _cache_file(cache_home)
    good = torch.load(fn, weights_only=True)
    bad = dict(_foreign_caches(good))[what]
    torch.save(bad, fn)
    calls = _count_decodes(monkeypatch)
    data = fashion_mnist_tensors()
    assert calls == [1], f'a cache with {what} must be decoded again, not trusted'
    for split in ('train', 'test'):
        assert torch.equal(data[split][0], sample[split][0]) and torch.equal(data[split][1], sample[split][1])
    again = torch.load(fn, weights_only=True)
    assert again['version'] == md._CACHE_VERSION and torch.equal(again['data']['train'][0], sample['train'][0])
    assert fashion_mnist_tensors() and calls == [1], 'the rebuilt cache is then used'


def test_tensor_cache_file_name_carries_the_version(cache_home):
    fashion_mnist_tensors()
    assert _cache_file(cache_home).name.startswith(f'fashion_mnist-v{md._CACHE_VERSION}-')


def test_tensor_cache_write_killed_midway_keeps_old_file(cache_home, monkeypatch):
    "A save that dies part way (full disk, kill) leaves the previous cache file whole and no temporary file."
    fashion_mnist_tensors()
    fn = _cache_file(cache_home)
    before = fn.read_bytes()
    real_save = torch.save
    def dies_midway(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        Path(f).write_bytes(Path(f).read_bytes()[:100])  # half a file...
        raise OSError(28, 'No space left on device')      # ...and then the disk is full
    monkeypatch.setattr(torch, 'save', dies_midway)
    monkeypatch.setattr(md, '_warned', set())
    monkeypatch.setattr(md, '_cached_ok', lambda obj, files: False)  # force a rewrite
    with pytest.warns(md.CacheWarning, match='No space left'): fashion_mnist_tensors()
    assert fn.read_bytes() == before, 'the old cache file is untouched'
    assert list(fn.parent.iterdir()) == [fn], 'no temporary file left behind'


def test_tensor_cache_path_is_a_directory(cache_home, monkeypatch, sample):
    fashion_mnist_tensors()
    fn = _cache_file(cache_home)
    fn.unlink(); fn.mkdir()  # something else made a folder where the cache file goes
    monkeypatch.setattr(md, '_warned', set())
    with pytest.warns(md.CacheWarning) as ws: data = fashion_mnist_tensors()
    assert len(ws) == 1 and torch.equal(data['test'][1], sample['test'][1])


# ---------------------------------------------------------------- the Arrow cache

def test_arrow_cache_rebuild_never_truncates_files_in_use(cache_home, sample):
    "A rebuilt Arrow cache is a new folder renamed into place: a file a reader has open keeps all its bytes."
    load_fashion_mnist()
    (folder,) = (cache_home/'arrow').glob('fashion_mnist-*')
    arrow_files = sorted(folder.rglob('*.arrow'))
    assert arrow_files
    opened = [(open(f, 'rb'), f.stat().st_size) for f in arrow_files]  # what a reader holding the mmap sees
    try:
        dsd = md.load_fashion_mnist(cache=False)
        md._save_arrow(dsd, folder)  # what a process that found the cache damaged does
        for f, size in opened:
            assert os.fstat(f.fileno()).st_size == size, 'a file someone has open was rewritten in place'
            assert len(f.read()) == size
    finally:
        for f, _ in opened: f.close()
    assert sorted(p.name for p in (cache_home/'arrow').iterdir()) == [folder.name], 'no temporary or old folder left'
    assert load_fashion_mnist()['test']['label'][:] == sample['test'][1].tolist()


_ARROW_WRITER = '''
import sys, time
from pathlib import Path
import miniai.datasets as md
dest, stop = Path(sys.argv[1]), Path(sys.argv[2])
dsd = md.load_fashion_mnist(cache=False)
n = 0
while not stop.exists() and n < 400:
    if sys.argv[3] == 'in-place': dsd.save_to_disk(str(dest))   # the old way, for checking this test
    else: md._save_arrow(dsd, dest)
    n += 1
    (dest.parent/'writes').write_text(str(n))
print(n)
'''

_ARROW_READER = '''
import sys, time
from pathlib import Path
import numpy as np
from datasets import load_from_disk
dest, stop = Path(sys.argv[1]), Path(sys.argv[2])
writes = dest.parent/'writes'
t0, reads = time.time(), 0
while not writes.exists() and time.time() - t0 < 60: time.sleep(0.01)
first = int(writes.read_text() or 0)
while reads < 20 and time.time() - t0 < 60:
    try: dsd = load_from_disk(str(dest))
    except FileNotFoundError: continue  # between the two renames: a real load would rebuild
    for split in dsd:
        for col in dsd[split].data.table.columns:
            for chunk in col.chunks:
                for buf in chunk.buffers():
                    if buf is not None: np.frombuffer(buf, dtype=np.uint8).sum()  # touch every mapped page
        time.sleep(0.02)
    reads += 1
during = int(writes.read_text() or 0) - first
stop.touch()
print(reads, during)
'''


def run_arrow_race(tmp_path, mode):
    import subprocess, sys
    dest, stop = tmp_path/'arrow'/'fm', tmp_path/'stop'
    dest.parent.mkdir()
    md._save_arrow(md.load_fashion_mnist(cache=False), dest)
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'MINIAI_QUICK': '1'}
    writer = subprocess.Popen([sys.executable, '-c', _ARROW_WRITER, str(dest), str(stop), mode], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    reader = subprocess.Popen([sys.executable, '-c', _ARROW_READER, str(dest), str(stop)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    r_out, r_err = reader.communicate(timeout=120)
    stop.touch()
    w_out, w_err = writer.communicate(timeout=120)
    return reader.returncode, r_out, r_err, writer.returncode, w_out, w_err


def test_arrow_cache_reader_survives_a_concurrent_rebuild(tmp_path):
    "Two processes: one keeps rebuilding the Arrow cache while the other reads every byte of it, 20 times."
    r_rc, r_out, r_err, w_rc, w_out, w_err = run_arrow_race(tmp_path, 'rename')
    assert r_rc == 0, f'the reader died (status {r_rc}, -7 is SIGBUS): {r_err[-2000:]}'
    assert w_rc == 0, w_err[-2000:]
    reads, during = map(int, r_out.split())
    assert reads == 20 and during >= 2, f'the writer must rebuild while the reader reads (reads {reads}, rebuilds {during})'


def test_arrow_cache_with_wrong_row_count_is_rebuilt(cache_home, sample):
    load_fashion_mnist()
    (folder,) = (cache_home/'arrow').glob('fashion_mnist-*')
    from datasets import DatasetDict
    small = md.load_fashion_mnist(cache=False)
    DatasetDict({'train': small['train'].select(range(10)), 'test': small['test']}).save_to_disk(str(folder))
    dsd = load_fashion_mnist()
    assert dsd['train'].num_rows == N_TRAIN
    assert md.load_fashion_mnist()['train'].num_rows == N_TRAIN


def test_arrow_cache_broken_json_is_rebuilt(cache_home):
    load_fashion_mnist()
    (folder,) = (cache_home/'arrow').glob('fashion_mnist-*')
    (folder/'dataset_dict.json').write_text('{"splits": ["train", "te')
    assert load_fashion_mnist()['test'].num_rows == N_TEST
    assert md._load_arrow(folder, find_fashion_mnist()[0]) is not None, 'a good cache is back'


# ---------------------------------------------------------------- a cache folder that can't be written

def test_cache_home_is_a_file_loads_with_one_warning(tmp_path, monkeypatch, sample):
    blocker = tmp_path/'not-a-folder'
    blocker.write_text('XDG_CACHE_HOME points here by mistake')
    monkeypatch.setenv('XDG_CACHE_HOME', str(blocker))
    monkeypatch.setattr(md, '_warned', set())
    import warnings
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter('always')
        data = fashion_mnist_tensors()
        dsd = load_fashion_mnist()
        fashion_mnist_tensors(); fashion_mnist_dls(64)
    assert torch.equal(data['train'][1], sample['train'][1]) and dsd['test'].num_rows == N_TEST
    ours = [w for w in ws if issubclass(w.category, md.CacheWarning)]
    assert len(ws) == len(ours) == 1, [str(w.message) for w in ws]
    msg = str(ours[0].message)
    assert str(blocker) in msg and 'XDG_CACHE_HOME' in msg and 'cache=False' in msg
    assert blocker.read_text() == 'XDG_CACHE_HOME points here by mistake'


@pytest.mark.skipif(hasattr(os, 'geteuid') and os.geteuid() == 0,
                    reason='root writes into a folder whatever its permissions; the path-under-a-file test covers this case')
def test_cache_folder_without_write_permission_loads_with_one_warning(tmp_path, monkeypatch, sample):
    ro = tmp_path/'ro'
    ro.mkdir(); ro.chmod(0o555)
    monkeypatch.setenv('XDG_CACHE_HOME', str(ro))
    monkeypatch.setattr(md, '_warned', set())
    try:
        with pytest.warns(md.CacheWarning) as ws:
            assert torch.equal(fashion_mnist_tensors()['test'][1], sample['test'][1])
            assert load_fashion_mnist()['test'].num_rows == N_TEST
        assert len(ws) == 1
    finally: ro.chmod(0o755)


def test_cache_false_never_warns(tmp_path, monkeypatch):
    (tmp_path/'f').write_text('')
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path/'f'))
    monkeypatch.setattr(md, '_warned', set())
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        fashion_mnist_tensors(cache=False); load_fashion_mnist(cache=False)


# ---------------------------------------------------------------- batch sizes

@pytest.mark.parametrize('bs', [np.int64(256), np.int32(256), torch.tensor(256)])
def test_numpy_and_tensor_integer_batch_sizes_work(cache_home, dsd, bs):
    tl = TensorLoader(torch.zeros(600, 28, 28, dtype=torch.uint8), torch.zeros(600), bs=bs)
    assert type(tl.bs) is int and [len(b) for _, b in tl] == [256, 256, 88]
    dls = fashion_mnist_dls(bs, valid_bs=bs)
    assert (dls.train.bs, dls.valid.bs) == (256, 256) and type(dls.train.bs) is int
    assert fashion_mnist_dls(bs).valid.bs == 512
    ddls = DataLoaders.from_dd(dsd.with_transform(transformi), bs)
    assert (ddls.train.batch_size, ddls.valid.batch_size) == (256, 512)
    assert next(iter(ddls.train))[0].shape == (256, 1, 28, 28)


BAD_BS = [0, -1, 2.5, True, False, '64', None, np.float64(64.0), [64]]

@pytest.mark.parametrize('bs', BAD_BS, ids=repr)
def test_bad_batch_size_refused_by_tensor_loader(small, bs):
    with pytest.raises(ValueError, match='Batch size bs must be a positive whole number'): TensorLoader(*small, bs=bs)


@pytest.mark.parametrize('bs', BAD_BS, ids=repr)
def test_bad_batch_size_refused_by_fashion_mnist_dls(cache_home, monkeypatch, bs):
    monkeypatch.setattr(md, 'fashion_mnist_tensors', lambda *a, **k: pytest.fail('checked before any loading'))
    with pytest.raises(ValueError, match='Batch size bs must'): fashion_mnist_dls(bs)
    if bs is None: return  # valid_bs=None means "twice bs"
    with pytest.raises(ValueError, match='Batch size valid_bs must'): md.fashion_mnist_dls(64, valid_bs=bs)


@pytest.mark.parametrize('bs', BAD_BS, ids=repr)
def test_bad_batch_size_refused_by_from_dd(dsd, bs):
    with pytest.raises(ValueError, match='Batch size batch_size must'): DataLoaders.from_dd(dsd, bs)


def test_batch_size_as_text_says_pass_the_number():
    with pytest.raises(ValueError, match="it is text; pass the number, bs=64"): md.check_bs('64')
    with pytest.raises(ValueError, match="pass the integer, valid_bs=64"): md.check_bs(64.0, 'valid_bs')


def test_fashion_mnist_dls_bs_x_refused(cache_home):
    with pytest.raises(ValueError, match=r"Batch size bs must be a positive whole number, got 'x' \(str\)"): fashion_mnist_dls(bs='x')


# ---------------------------------------------------------------- a last training batch of one image

def _bn_model():
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28*28, 4), torch.nn.BatchNorm1d(4))


def test_last_training_batch_of_one_image_is_merged(small):
    x, y = small  # 103 = 2*51 + 1
    tl = TensorLoader(x, y, bs=51, shuffle=True)
    sizes = [len(yb) for _, yb in tl]
    assert sizes == [51, 52] and len(tl) == 2
    torch.manual_seed(0)
    assert sorted(torch.cat([yb for _, yb in tl]).tolist()) == list(range(103)), 'no image dropped'
    model = _bn_model().train()
    for xb, _ in tl: model(xb)  # raised "Expected more than 1 value per channel when training" before


def test_last_validation_batch_of_one_image_is_kept(small):
    x, y = small
    tl = TensorLoader(x, y, bs=51)
    assert [len(yb) for _, yb in tl] == [51, 51, 1] and len(tl) == 3
    assert torch.equal(torch.cat([yb for _, yb in tl]), y), 'every validation image, in order'
    model = _bn_model().eval()
    for xb, _ in tl: model(xb)  # evaluation mode handles a single image


def test_merge_last_can_be_chosen(small):
    x, y = small
    assert [len(b) for _, b in TensorLoader(x, y, bs=51, merge_last=True)] == [51, 52]
    assert [len(b) for _, b in TensorLoader(x, y, bs=51, shuffle=True, merge_last=False)] == [51, 51, 1]
    assert [len(b) for _, b in TensorLoader(x, y, bs=51, shuffle=True, drop_last=True)] == [51, 51]
    assert [len(b) for _, b in TensorLoader(x[:1], y[:1], bs=51, shuffle=True)] == [1], 'a single image has nothing to merge into'
    assert [len(b) for _, b in TensorLoader(x[:52], y[:52], bs=51, shuffle=True)] == [52]


def test_fashion_mnist_dls_last_training_batch_of_one_image(cache_home, sample):
    dls = fashion_mnist_dls(1333, valid_bs=999)  # 4,000 = 3*1333 + 1 training, 1,000 = 999 + 1 validation images
    assert [len(yb) for _, yb in dls.train] == [1333, 1333, 1334]
    assert [len(yb) for _, yb in dls.valid] == [999, 1]
    assert torch.equal(torch.cat([yb for _, yb in dls.valid]), sample['test'][1])
    model = _bn_model().train()
    for xb, _ in dls.train: model(xb)


# ---------------------------------------------------------------- bad data folders and files

def test_path_is_a_file_not_a_folder(tmp_path):
    folder = make_fm_dir(tmp_path/'fm')
    fn = folder/'train-images-idx3-ubyte.gz'
    with pytest.raises(FileNotFoundError, match='is a file, not a folder') as e: fashion_mnist_dls(path=fn)
    assert str(fn) in str(e.value) and str(folder) in str(e.value)


def test_path_does_not_exist(tmp_path):
    with pytest.raises(FileNotFoundError, match='does not exist') as e: fashion_mnist_dls(path=tmp_path/'typo')
    assert str(tmp_path/'typo') in str(e.value)
    with pytest.raises(FileNotFoundError, match='does not exist'): load_fashion_mnist(path=str(tmp_path/'typo'))


def test_path_empty_folder_names_all_four_files(tmp_path):
    with pytest.raises(FileNotFoundError) as e: fashion_mnist_tensors(tmp_path)
    assert all(n in str(e.value).split('lacks')[1].split(';')[0] for p in IDX_FILES.values() for n in p)


@pytest.mark.parametrize('gone', [n for p in IDX_FILES.values() for n in p])
def test_path_folder_missing_one_file_names_it(tmp_path, gone):
    folder = make_fm_dir(tmp_path/'fm')
    (folder/f'{gone}.gz').unlink()
    with pytest.raises(FileNotFoundError) as e: fashion_mnist_dls(path=folder)
    lacks = str(e.value).split('lacks ')[1].split(' (gzipped')[0]
    assert lacks == gone, str(e.value)


def test_path_with_tilde_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv('HOME', str(tmp_path))
    make_fm_dir(tmp_path/'fm', n_train=3)
    assert fashion_mnist_tensors('~/fm', cache=False)['train'][0].shape == (3, 28, 28)


@pytest.mark.parametrize('path', [5, 2.0, ['a'], b'x'[0]])
def test_path_not_a_str_or_path_refused(path):
    with pytest.raises(TypeError, match='path should name a folder'): find_fashion_mnist(path)


def test_miniai_data_does_not_exist(tmp_path, monkeypatch, no_quick):
    monkeypatch.setenv('MINIAI_DATA', str(tmp_path/'gone'))
    with pytest.raises(FileNotFoundError, match='MINIAI_DATA is .* which does not exist'): fashion_mnist_dls()


def test_images_and_labels_files_swapped(tmp_path):
    folder = tmp_path/'fm'
    make_fm_dir(folder)
    img, lbl = IDX_FILES['train']
    (folder/f'{img}.gz').rename(folder/'tmp'); (folder/f'{lbl}.gz').rename(folder/f'{img}.gz'); (folder/'tmp').rename(folder/f'{lbl}.gz')
    with pytest.raises(DataFileError, match=r'shape \(6,\), not 28x28 images .*right file') as e: fashion_mnist_tensors(folder, cache=False)
    assert f'{img}.gz' in str(e.value)


@pytest.mark.parametrize('defect', ['truncated', 'corrupt gzip', 'wrong magic', 'not gzipped', 'count mismatch', 'empty file'])
def test_bad_data_file_error_names_file_and_how_to_get_good_data(tmp_path, defect):
    folder = make_fm_dir(tmp_path/'fm', n_train=6)
    fn = folder/'train-labels-idx1-ubyte.gz'
    raw = gzip.decompress(fn.read_bytes())
    if defect == 'truncated': fn.write_bytes(gzip.compress(raw[:-2]))
    elif defect == 'corrupt gzip': gz = bytearray(fn.read_bytes()); gz[-8] ^= 0xFF; fn.write_bytes(bytes(gz))  # its CRC
    elif defect == 'wrong magic': fn.write_bytes(gzip.compress(b'\x08\x03' + raw[2:]))
    elif defect == 'not gzipped': fn.write_bytes(raw)
    elif defect == 'count mismatch': write_idx(fn, torch.zeros(5, dtype=torch.uint8))
    elif defect == 'empty file': fn.write_bytes(b'')
    with pytest.raises(DataFileError) as e: fashion_mnist_dls(path=folder)
    msg = str(e.value)
    assert 'train-labels-idx1-ubyte.gz' in msg, msg
    assert 'apt-get install --reinstall dataset-fashion-mnist' in msg and 'MINIAI_QUICK=1' in msg


@pytest.mark.skipif(hasattr(os, 'geteuid') and os.geteuid() == 0, reason='root reads files whatever their permissions')
def test_unreadable_data_file_says_permission(tmp_path):
    folder = make_fm_dir(tmp_path/'fm')
    (folder/'t10k-images-idx3-ubyte.gz').chmod(0)
    with pytest.raises(DataFileError, match='no permission'): fashion_mnist_tensors(folder, cache=False)


def test_hub_download_interrupted_leaves_no_data_behind(tmp_path, monkeypatch, no_quick, cache_home):
    "A download that dies half way must not leave files that a later load takes for the data."
    import datasets
    monkeypatch.delenv('MINIAI_DATA', raising=False)
    monkeypatch.setattr(md, 'SYSTEM_DIRS', [tmp_path/'none'])
    from datasets import DatasetDict
    tiny = {split: md._to_dataset(x[:20], y[:20]) for split, (x, y) in md._decode(idx_files(sample_dir())).items()}
    monkeypatch.setattr(datasets, 'load_dataset', lambda name: DatasetDict(tiny))
    real, n = md.write_idx, []
    def dies_on_third(fn, t):
        n.append(fn)
        if len(n) == 3: raise KeyboardInterrupt
        real(fn, t)
    monkeypatch.setattr(md, 'write_idx', dies_on_third)
    with pytest.raises(KeyboardInterrupt): find_fashion_mnist()
    assert not (cache_home/'fashion_mnist').exists() and not list(cache_home.iterdir())
    monkeypatch.setattr(md, 'write_idx', real)
    files, source = find_fashion_mnist()
    assert 'Hugging Face hub' in source and files == idx_files(cache_home/'fashion_mnist')
    assert fashion_mnist_tensors()['train'][0].shape == (20, 28, 28)


# ---------------------------------------------------------------- the lesson's loaders and the image helpers

def test_from_dd_given_a_dataset_not_a_dataset_dict(dsd):
    with pytest.raises(TypeError, match='from_dd takes a DatasetDict .* got a Dataset'): DataLoaders.from_dd(dsd['train'], 64)


def test_from_dd_without_transform_says_to_add_one(dsd):
    dls = DataLoaders.from_dd(dsd, 8)
    with pytest.raises(TypeError, match=r'PIL images.*with_transform'): next(iter(dls.train))


def test_show_image_given_a_batch(small):
    x, _ = small
    with pytest.raises(ValueError, match=r'An image should be.*\(4, 1, 28, 28\).*show_images'): md.show_image(x[:4, None])
    with pytest.raises(ValueError, match='An image should be'): md.show_image(np.zeros((28,)))


def test_show_image_accepts_each_layout(small):
    x, _ = small
    for im in (x[0], x[0][None], x[0][..., None], x[0].numpy(), torch.zeros(3, 8, 8), np.zeros((8, 8, 4))):
        md.show_image(im)


def test_show_images_given_one_image(small):
    x, _ = small
    import matplotlib.pyplot as plt
    plt.close('all')
    with pytest.raises(ValueError, match=r'got shape \(28,\)'): show_images(x[0])
    assert not plt.get_fignums(), 'every image is checked before anything is drawn'


def test_show_images_given_nothing():
    with pytest.raises(ValueError, match='no images'): show_images([])
    with pytest.raises(ValueError, match='positive number of axes'): md.get_grid(0)


def test_show_images_fewer_labels_than_images(small):
    x, _ = small
    with pytest.raises(ValueError, match='4 images but only 2 labels'): show_images(x[:4], labels=[1, 2])


def test_get_grid_too_small_for_n():
    with pytest.raises(ValueError, match="2 rows of 2 can't hold 5"): md.get_grid(5, nrows=2, ncols=2)
    fig, axs = md.get_grid(5, nrows=2)
    assert axs.shape == (2, 3)


# ---------------------------------------------------------------- tools/make_sample.py

@pytest.fixture
def make_sample(tmp_path, monkeypatch, sample):
    "tools/make_sample.py, writing into a copy of the shipped sample, and cutting it from the sample itself."
    import importlib.util
    spec = importlib.util.spec_from_file_location('make_sample', Path(__file__).parents[1]/'tools'/'make_sample.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    dest = tmp_path/'pkg'/'fashion_mnist_sample'
    shutil.copytree(sample_dir(), dest)
    monkeypatch.setattr(mod, 'sample_dir', lambda: dest)
    monkeypatch.setattr(mod, 'fashion_mnist_tensors', lambda cache: sample)
    monkeypatch.delenv('MINIAI_QUICK', raising=False)  # main() unsets it in this process: let monkeypatch put it back after
    return mod, dest


def test_make_sample_rebuilds_the_sample(make_sample, sample):
    mod, dest = make_sample
    mod.main()
    data = md._decode(idx_files(dest))
    for split in ('train', 'test'):
        assert torch.equal(data[split][0], sample[split][0]) and torch.equal(data[split][1], sample[split][1])
    assert (dest/'LICENSE').is_file() and (dest/'README.md').is_file()
    assert [p.name for p in dest.parent.iterdir()] == [dest.name], 'no temporary folder left'


def test_make_sample_interrupted_keeps_the_old_sample(make_sample, monkeypatch):
    mod, dest = make_sample
    before = {p.name: p.read_bytes() for p in dest.iterdir()}
    real, n = mod.write_idx, []
    def dies_on_third(fn, t):
        n.append(fn)
        if len(n) == 3: raise KeyboardInterrupt
        real(fn, t)
    monkeypatch.setattr(mod, 'write_idx', dies_on_third)
    with pytest.raises(KeyboardInterrupt): mod.main()
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == before
    assert [p.name for p in dest.parent.iterdir()] == [dest.name]


def test_make_sample_without_the_full_data(make_sample, monkeypatch):
    mod, dest = make_sample
    def nothing(cache): raise FileNotFoundError('Fashion-MNIST was not found. Looked in: ...')
    monkeypatch.setattr(mod, 'fashion_mnist_tensors', nothing)
    with pytest.raises(SystemExit, match='(?s)the full data is needed.*was not found'): mod.main()


def test_explicit_folder_without_read_permission(tmp_path):
    if hasattr(os, 'geteuid') and os.geteuid() == 0: pytest.skip('root reads any folder whatever its permissions')
    folder = make_fm_dir(tmp_path/'fm')
    folder.chmod(0o300)
    try:
        with pytest.raises(FileNotFoundError, match='no permission to read'): find_fashion_mnist(folder)
    finally: folder.chmod(0o755)
