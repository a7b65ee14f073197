"""The API reference is generated from docstrings: every exported function and class needs one.
Also unit tests for tools/docs_check.py's page checks (the browser part runs in tools/test.sh's docs step)."""
import importlib, inspect, pkgutil, sys
from pathlib import Path

import pytest
import miniai

root = Path(__file__).resolve().parent.parent
MODULES = sorted(m.name for m in pkgutil.iter_modules(miniai.__path__)
                 if not m.name.startswith('_') and m.name != 'imports')  # imports re-exports other libraries' names

def _exported(modname):
    mod = importlib.import_module(f'miniai.{modname}')
    for n in getattr(mod, '__all__', []):
        o = getattr(mod, n)
        if (inspect.isclass(o) or inspect.isfunction(o)) and getattr(o, '__module__', '').startswith('miniai'):
            yield n, o  # constants (e.g. tuples of names, default paths) and re-exported names are not ours to document

@pytest.mark.parametrize('modname', MODULES)
def test_exported_names_have_docstrings(modname):
    names = list(_exported(modname))
    assert names, f'miniai.{modname} exports no functions or classes'
    missing = [n for n, o in names if not ((o.__dict__.get('__doc__') if inspect.isclass(o) else o.__doc__) or '').strip()]
    assert not missing, f'miniai.{modname}: exported without a docstring: {missing}'

def test_learner_fit_documented():
    from miniai.learner import Learner
    assert (Learner.fit.__doc__ or '').strip()

sys.path.insert(0, str(root/'tools'))
import docs_check as dc

def test_external_detection():
    assert dc.is_external('https://cdn.jsdelivr.net/x.js') and dc.is_external('//fonts.googleapis.com/css')
    assert not dc.is_external('site_libs/quarto.js') and not dc.is_external('data:image/png;base64,xx')

def test_scan_site(tmp_path):
    (tmp_path/'site_libs').mkdir()
    (tmp_path/'site_libs'/'a.css').write_text('@import url("https://fonts.googleapis.com/css2?f=X"); .x{background:url(i.png)}')
    (tmp_path/'index.html').write_text('<html><head><title>miniai</title><link rel="stylesheet" href="site_libs/a.css">'
        '<script src="https://cdn.example.com/mathjax.js"></script></head><body><a href="https://github.com/x">ok</a>'
        '<img src="gone.png"></body></html>')
    problems = dc.scan_site(tmp_path)
    assert len(problems) == 3, problems
    assert any('mathjax' in p for p in problems) and any('googleapis' in p for p in problems) and any('gone.png' in p for p in problems)

def test_check_dom():
    good = ('<html><head><title>Learner – miniai</title></head><body><nav id="quarto-sidebar"><a href="augment.html">a</a>'
            '</nav><h3 id="learner.fit">Learner.fit</h3><img src="learner_files/figure-html/cell-9-output-1.png"></body></html>')
    assert dc.check_dom('learner', good, '', plot=True, api='Learner.fit', nav_to=['augment.html']) == []
    errs = dc.check_dom('learner', '<html><head><title></title></head><body></body></html>', '', plot=True,
                        api='Learner.fit', nav_to=['augment.html'])
    assert len(errs) == 5, errs
