"""Test-session settings for miniai.

Every test runs on the small real Fashion-MNIST sample that ships inside the package (`MINIAI_QUICK=1`), so the suite
passes on a machine with neither the Debian package nor a network. Caches go to temporary folders, never to the
developer's `~/.cache/miniai`, and matplotlib draws off-screen. The test files don't repeat any of this.

Shared helpers live here too: `from conftest import DLs`.
"""
import os

# Set before anything imports matplotlib or miniai (pytest imports this file first).
os.environ['MINIAI_QUICK'] = '1'
os.environ['MPLBACKEND'] = 'Agg'

import matplotlib
matplotlib.use('Agg')

import pytest


class DLs:
    "Stand-in for `DataLoaders`: any iterables of batches as `train` and `valid` (`valid` defaults to `train`)."
    def __init__(self, train, valid=None): self.train, self.valid = train, (train if valid is None else valid)


def pytest_report_header(config):
    from miniai.datasets import find_fashion_mnist
    try: _, source = find_fashion_mnist()
    except Exception as e: source = f'NOT FOUND ({type(e).__name__}: {e})'
    return [f'miniai Fashion-MNIST source for tests (MINIAI_QUICK={os.environ["MINIAI_QUICK"]}): {source}']


@pytest.fixture(scope='session', autouse=True)
def _quick_session(tmp_path_factory):
    "Quick mode for the whole session, and a session-wide cache folder outside the developer's home."
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('MINIAI_QUICK', '1')
        mp.setenv('MPLBACKEND', 'Agg')
        mp.setenv('XDG_CACHE_HOME', str(tmp_path_factory.mktemp('session_cache')))
        yield


@pytest.fixture
def cache_home(tmp_path, monkeypatch):
    "An empty cache folder of this test's own: returns miniai's cache dir inside it (`$XDG_CACHE_HOME/miniai`)."
    home = tmp_path/'xdg_cache'
    home.mkdir()
    monkeypatch.setenv('XDG_CACHE_HOME', str(home))
    return home/'miniai'


@pytest.fixture(autouse=True)
def _close_figures():
    "Close the figures a test drew, so they don't pile up across the session."
    yield
    import matplotlib.pyplot as plt
    plt.close('all')


@pytest.fixture(autouse=True)
def _quick_stays_on():
    "Fail a test that leaves MINIAI_QUICK changed (every later test would then load the full data)."
    yield
    assert os.environ.get('MINIAI_QUICK') == '1', 'this test changed MINIAI_QUICK: change it with monkeypatch, which puts it back'
