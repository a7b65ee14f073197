"""The documentation: every exported function and class has a docstring (the API reference is made from them), and
unit tests for the site's build (tools/build_docs.py) and browser check (tools/docs_check.py). The full build and
the check in headless Chromium run in tools/test.sh's docs step."""
import importlib, inspect, json, multiprocessing, pkgutil, sys
from concurrent.futures import ProcessPoolExecutor
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
import build_docs as bd
import docs_check as dc

def test_page_names():
    "Pages are named as nbdev names them, so its links (learner.html#learner.fit) have somewhere to go."
    assert [bd.page_name(n) for n in ('09_learner.ipynb', '09a_guards.ipynb', '16a_train.ipynb', 'index.ipynb')] == \
           ['learner', 'guards', 'train', 'index']

def test_every_notebook_is_a_page_in_lesson_order():
    nbs = bd.notebooks()
    on_disk = sorted(p.name for p in (root/'nbs').glob('*.ipynb') if not p.name.startswith(('_', '.')))
    assert sorted(p.name for p in nbs) == on_disk               # new notebooks are picked up without configuration
    assert nbs[0].name == 'index.ipynb'
    assert [p.name for p in nbs[1:]] == sorted(p.name for p in nbs[1:])

def test_one_docs_configuration():
    "The site has one configuration, the one the build uses and checks; it renders stored outputs and fetches nothing."
    assert not [p.name for p in (root/'nbs').iterdir() if p.name in ('_quarto.yml', 'offline.scss', 'styles.css')]
    conf = {'__file__': str(root/'docs'/'conf.py')}
    exec(compile((root/'docs'/'conf.py').read_text(), 'conf.py', 'exec'), conf)
    assert conf['nb_execution_mode'] == 'off' and conf['nb_ipywidgets_js'] == {}
    assert conf['html_theme'] == 'sphinx_book_theme' and 'sphinx.ext.autodoc' in conf['extensions']
    lines = ['Put `x` in |x| with *care*, like_this_']
    conf['markdown_docstring'](None, 'function', 'f', None, {}, lines)
    assert lines == ['Put \\ ``x``\\  in \\|x\\| with \\*care\\*, like\\_this\\_']   # plain text, not reST markup

def test_title_cell_problem():
    ok = {'cells': [{'cell_type': 'markdown', 'source': ['# The Learner\n', '\n', '> A training loop']}]}
    assert bd.title_cell_problem(ok, 'nb') is None
    crowded = {'cells': [{'cell_type': 'markdown', 'source': ['# Beyond\n', '> Summary\n', '\n', 'The lesson got 94.6%.']}]}
    assert 'The lesson got 94.6%' in bd.title_cell_problem(crowded, 'nb')
    assert 'no title cell' in bd.title_cell_problem({'cells': [{'cell_type': 'markdown', 'source': ['text']}]}, 'nb')

def test_split_directives():
    d, code = bd._split_directives('#| echo: false\n#|output: asis\n#| hide\nshow_doc(f)\n#| not a directive now')
    assert d == {'echo': 'false', 'output': 'asis', 'hide': ''} and code == 'show_doc(f)\n#| not a directive now'

SD = ('---\n\n[source](https://github.com/miniai/miniai/blob/main/miniai/learner.py#L205){target="_blank" '
      'style="float:right; font-size:smaller"}\n\n### Learner.fit\n\n```python\n\ndef fit(\n    n_epochs:int=1\n):\n\n\n```\n\n'
      '*Train for `n_epochs`.*')

def test_show_doc_markdown():
    md, name, sid = bd._sd_markdown(SD)
    assert (name, sid) == ('Learner.fit', 'learner-fit')
    assert '{#learner-fit}\n### Learner.fit\n' in md and not md.lstrip().startswith('---')
    assert '<a class="sd-source" href="https://github.com/miniai/miniai/blob/main/miniai/learner.py#L205">source</a>' in md
    assert '```python\ndef fit(\n    n_epochs:int=1\n):\n```' in md and md.endswith('*Train for `n_epochs`.*')

def test_fix_links():
    cfg = bd._settings()
    doc = cfg.doc_host.rstrip('/') + '/' + cfg.doc_baseurl.strip('/') + '/'
    md = (f'[`lr_find`]({doc}learner.html#lr_find), [`Learner`]({doc}learner.html#learner), [nb 13](13_resnet.ipynb), '
          f'[gone]({doc}learner.html#nothing), [src]({cfg.git_url}/blob/{cfg.branch}/miniai/learner.py#L7), '
          f'[out](https://example.org/x.html), [settings](../settings.ini), [`_private`]({doc}learner.html#_private)')
    nb = {'cells': [{'cell_type': 'markdown', 'source': md}]}
    pages = [dict(src='nbs/09_learner.ipynb', page='learner', entries={'Learner': 'learner', 'Learner.lr_find': 'learner-lr-find'}),
             dict(src='nbs/13_resnet.ipynb', page='resnet', entries={})]
    texts, problems = bd.fix_links({'learner.ipynb': json.dumps(nb), 'resnet.ipynb': json.dumps(nb)}, pages, cfg)
    out = json.loads(texts['learner.ipynb'])['cells'][0]['source']
    assert '(learner.html#learner-lr-find)' in out and '(learner.html#learner)' in out and '(resnet.html)' in out
    assert '(_source/miniai/learner.py.html#L-7)' in out and '(https://example.org/x.html)' in out
    assert f'[settings]({cfg.git_url}/blob/{cfg.branch}/settings.ini)' in out   # a repository file: its page there
    assert out.endswith(', `_private`')                            # private names have no entries: no link
    assert len(problems) == 2 and all('learner.html#nothing' in p and 'no show_doc entry for nothing' in p for p in problems)

def test_external_detection():
    assert bd.is_external('https://cdn.jsdelivr.net/x.js') and bd.is_external('//fonts.googleapis.com/css')
    assert not bd.is_external('_static/scripts/bootstrap.js') and not bd.is_external('data:image/png;base64,xx')
    base = 'http://127.0.0.1:8000/'
    assert dc.left_site([base + 'index.html', 'data:image/png;base64,x', 'https://unpkg.com/w.js'], base) == ['https://unpkg.com/w.js']

def test_scan_site(tmp_path):
    (tmp_path/'_static').mkdir()
    (tmp_path/'_static'/'a.css').write_text('@import url("https://fonts.googleapis.com/css2?f=X"); .x{background:url(i.png)}')
    (tmp_path/'_static'/'template.html').write_text('<script src="{{ pathto(x) }}"></script>')   # a theme template
    (tmp_path/'other.html').write_text('<html><body><h2 id="there">x</h2></body></html>')
    (tmp_path/'index.html').write_text(
        '<html><head><title>miniai</title><link rel="stylesheet" href="_static/a.css">'
        '<script src="https://cdn.example.com/mathjax.js"></script></head><body id="top"><a href="https://github.com/x">ok</a>'
        '<a href="other.html#there">ok</a><a href="#top">ok</a><a href="other.html#gone">bad</a><a href="nowhere.html">bad</a>'
        '<img src="gone.png"><div style="background:url(//x.org/a.png)"></div></body></html>')
    problems = bd.scan_site(tmp_path)
    assert len(problems) == 6, problems
    for bit in ('mathjax', 'googleapis', 'gone.png', '#gone', 'nowhere.html', '//x.org'):
        assert sum(bit in p for p in problems) == 1, (bit, problems)

def _nb(cells):
    return {'cells': [dict(cell_type=t, metadata={}, source=s, id=f'id{i}', **({'outputs': o, 'execution_count': None} if t == 'code' else {}))
                      for i, (t, s, o) in enumerate(cells)],
            'metadata': {'kernelspec': {'display_name': 'Python 3', 'language': 'python', 'name': 'python3'}},
            'nbformat': 4, 'nbformat_minor': 5}

def test_process_notebook(tmp_path):
    "nbdev's processing of a small notebook, as the build runs it (in a fresh process), into a MyST notebook."
    stream = lambda t: [{'output_type': 'stream', 'name': 'stdout', 'text': [t]}]
    nb = _nb([('markdown', '# A small lesson\n\n> What it is about', None),
              ('code', '#| default_exp small', []),
              ('code', '#| hide\nsecret = 1', stream('hidden output')),
              ('markdown', 'Text with a link to `Thing`.', None),
              ('code', '#| export\ndef double(x):\n    "Twice `x`."\n    return 2*x\n\nclass Thing:\n    "A thing."\n'
                       '    def go(self, n:int=1):\n        "Go `n` times."\n    def quiet(self): pass', []),
              ('code', '#| echo: false\nprint(double(2))', stream('4\n'))])
    src, dst = tmp_path/'01_small.ipynb', tmp_path/'small.ipynb'
    src.write_text(json.dumps(nb))
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context('spawn')) as ex:
        r = ex.submit(bd.process_notebook, str(src), str(dst)).result()
    assert 'error' not in r, r
    assert r['title'] == 'A small lesson' and r['notes'] == []
    assert r['entries'] == {'double': 'double', 'Thing': 'thing', 'Thing.go': 'thing-go'}   # quiet: no docstring
    cells = json.loads(dst.read_text())['cells']
    assert cells[0]['source'].startswith('# A small lesson\n') and 'What it is about' in cells[0]['source']
    text = json.dumps(cells)
    assert 'secret' not in text and 'hidden output' not in text and 'return 2*x' not in text   # hidden and exported cells
    assert '### Thing' in text and '#### Thing.go' in text and 'Go `n` times.' in text
    last = cells[-1]
    assert last['source'] == 'print(double(2))' and last['metadata']['tags'] == ['remove-input']
    assert last['outputs'][0]['text'] == '4\n'                                                # the stored output
