"""Build miniai's documentation site from the notebooks, offline: `python tools/build_docs.py` writes _docs/.

    python tools/build_docs.py             # build _docs/ (notebooks whose inputs did not change are reused)
    python tools/build_docs.py --force     # process every notebook again
    python -m http.server -d _docs         # then open http://localhost:8000

1. nbdev's own notebook processing, for every notebook in nbs/ (new ones are picked up; pages come in file-name
   order, `index.ipynb` first): the title and summary from the first cell, hidden and exported cells removed,
   `show_doc` entries for every exported function and class (and for the documented public methods of exported
   classes, so `Learner.fit` has one), backtick names linked to their entries. The processed notebooks keep their
   stored outputs: nothing is re-executed for its output (nbdev executes imports and exported cells to document
   them; if that changes a cell's stored outputs, the stored ones are kept and the build says which cell).
2. Those notebooks become MyST notebooks in _proc/docs/, with a page of the library's source for every module (the
   `source` links), an API reference page (sphinx.ext.autodoc), and the sidebar (a toctree on the home page).
3. Sphinx with myst-nb (stored outputs, `nb_execution_mode = "off"`) and sphinx-book-theme renders _docs/, with
   Sphinx's warnings as errors.
4. Checks of the built site, each failing the build: every local link, image, script and stylesheet exists (with
   the `#anchor` it names), nothing is loaded from another site, and every exported name has a `show_doc` entry.
Exits 0 when the site is built and passes, 1 listing every problem.
"""
import argparse, ast, hashlib, html, importlib, inspect, json, os, pkgutil, re, shutil, subprocess, sys, time, warnings
from concurrent.futures import ProcessPoolExecutor
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit, unquote

root = Path(__file__).resolve().parent.parent
STAGE = root/'_proc'/'docs'        # the Sphinx source folder this script writes (git ignores _proc/)
DOCTREES = root/'_proc'/'doctrees'
SITE = root/'_docs'

# ---------------------------------------------------------------------------------------------------------------
# Notebooks and their pages
def page_name(nb):
    "The page nbdev gives notebook `nb`: the name without its number prefix (09_learner.ipynb -> learner)."
    return re.sub(r'^\d+[a-zA-Z0-9]*_', '', Path(nb).name.lower()).rsplit('.', 1)[0]

def notebooks(nbs=None):
    "Every notebook nbdev documents, index first and then in lesson (file-name) order."
    from nbdev.doclinks import nbglob
    nbs = Path(nbs or root/'nbs')
    old = os.getcwd(); os.chdir(root)
    try: found = [Path(p) for p in nbglob(nbs)]
    finally: os.chdir(old)
    return sorted(found, key=lambda p: (p.stem != 'index', p.relative_to(nbs).as_posix()))

_line_ok = re.compile(r'^\s*$|^#\s+\S|^>\s+\S|^-\s+\S.*:')
def title_cell_problem(nb_json, name):
    "nbdev takes the title and summary from the first markdown cell with a `# heading` and drops the rest of it."
    for i, c in enumerate(nb_json['cells']):
        if c['cell_type'] != 'markdown': continue
        src = ''.join(c['source'])
        if not re.search(r'^#\s+\S', src, re.M): continue
        extra = [l for l in src.splitlines() if not _line_ok.match(l)]
        if extra:
            return (f'{name} cell {i}: the title cell holds more than the title (`# ...`) and the summary (`> ...`); '
                    f'nbdev drops the rest from the page (starting "{extra[0][:60]}"). Move it into a cell of its own.')
        return None
    return f'{name}: no title cell (a first markdown cell starting with `# Title`, then `> summary`)'

# ---------------------------------------------------------------------------------------------------------------
# 1. nbdev's processing (runs in worker processes: it executes the notebooks' imports and exported cells)
def _def_names(tree):
    "The names nbdev's show_doc documents in an exported cell, in source order, with each class's documented methods."
    from nbdev.showdoc import showdoc_nm
    names = []
    for node in tree.body if tree else []:
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)): continue
        if node.name.startswith('_') and not node.name.startswith('__'): continue
        names.append((showdoc_nm(node), 3))
        if isinstance(node, ast.ClassDef):
            for m in node.body:
                plain = isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef)) and not any(
                    isinstance(d, ast.Name) and d.id == 'property' or isinstance(d, ast.Attribute) for d in m.decorator_list)
                if plain and not m.name.startswith('_') and ast.get_docstring(m):
                    names.append((f'{node.name}.{m.name}', 4))
    return names

def _make_filter():
    "nbdev's FilterDefaults, with add_show_docs extended to the documented public methods of exported classes."
    from fastcore.basics import nested_attr
    from execnb.nbio import mk_cell
    from nbdev.process import Processor
    import nbdev.processors as P

    class add_show_docs_and_methods(Processor):
        "Like nbdev's add_show_docs (a `show_doc` cell after each exported definition), plus methods with docstrings."
        def begin(self):
            nb = self.nb
            exports = [c for c in nb.cells if P._want_doc(c)]
            trees = [t for c in nb.cells for t in (c.parsed_() or [])]
            shown = {P._get_nm(t) for t in P._show_docs(trees)}
            for cell in reversed(exports):
                if P.cell_lang(cell) != 'python': raise ValueError(f"{cell.metadata.language} can't export:\n{cell.source}")
                tree = ast.Module(body=list(cell.parsed_() or []), type_ignores=[])
                new = []
                for nm, level in _def_names(tree):
                    if nm in shown: continue
                    c = mk_cell(f'show_doc({nm})' if level == 3 else f'show_doc({nm}, title_level={level})')
                    c.has_sd = True
                    new.append(c)
                nb.cells[cell.idx_+1:cell.idx_+1] = new
            nb.has_docs_ = shown or exports

    class DocsFilter(P.FilterDefaults):
        def base_procs(self):
            return [add_show_docs_and_methods if p is P.add_show_docs else p for p in super().base_procs()]
    return DocsFilter

_directive = re.compile(r'^\s*#\|\s*([\w-]+)\s*:?\s*(.*?)\s*$')
_ansi = re.compile(r'\x1B(?:[@-Z\\-_]|\[[0-?]*[ -/]*[@-~])')

def _split_directives(src):
    "Quarto-style `#| key: value` lines at the top of a code cell, and the code without them."
    lines, d = src.splitlines(), {}
    while lines and _directive.match(lines[0]):
        k, v = _directive.match(lines.pop(0)).groups()
        d[k] = v.strip('"\'').lower()
    return d, '\n'.join(lines).strip('\n')

def _sd_markdown(md):
    "show_doc's markdown (Quarto flavour) as MyST: the source link as a plain link, an explicit id on the heading."
    m = re.match(r'\s*---\s*\n(?:\s*\[source\]\((?P<url>[^)\s]+)\)(?:\{[^}]*\})?\s*\n)?\s*(?P<h>#{1,6}) (?P<name>[^\n]+)\n', md)
    if not m: return md, None, None
    from docutils.nodes import make_id
    name = m['name'].strip()
    sid = make_id(name)                # the id docutils would give it (learner.fit -> learner-fit)
    src = f'<a class="sd-source" href="{html.escape(m["url"])}">source</a>' if m['url'] else ''
    head = f'{{.sd-head}}\n{src or "&nbsp;"}\n\n{{#{sid}}}\n{m["h"]} {name}\n'
    body = re.sub(r'```(\w*)\n\s*\n(.*?)\n\s*```', lambda c: f'```{c[1]}\n{c[2].strip()}\n```', md[m.end():], flags=re.S)
    return head + body, name, sid

def _norm(outputs):
    "Outputs compared by content: nbdev's processors turn some texts from strings into lists of lines."
    j = lambda v: ''.join(v) if isinstance(v, list) else v
    return [{k: (j(v) if k == 'text' else {m: j(d) for m, d in v.items()} if k == 'data' else v)
             for k, v in o.items() if k not in ('execution_count', 'metadata')} for o in outputs]

def _to_myst(nb, stored, name):
    "Turn nbdev's processed notebook (made for Quarto) into one myst-nb renders: returns (json, show_doc ids, notes)."
    fm = getattr(nb, 'frontmatter_', {}) or {}
    cells, entries, notes = [], {}, []
    title = fm.get('title')
    if title:
        head = f'# {title}\n'
        if fm.get('description'): head += f'\n{{.lesson-summary}}\n{fm["description"]}\n'
        cells.append(dict(cell_type='markdown', metadata={}, source=head))
    for c in nb.cells:
        cid = c.get('id')
        src = c.get('source')
        if src is None: continue
        if c.cell_type == 'raw':
            if src.lstrip().startswith('---'): continue       # the front matter nbdev wrote for Quarto
            cells.append(dict(cell_type='raw', metadata={}, source=src)); continue
        if c.cell_type == 'markdown':
            if src.strip() == '<!-- WARNING: THIS FILE WAS AUTOGENERATED! DO NOT EDIT! -->': continue
            cells.append(dict(cell_type='markdown', metadata={}, source=src)); continue
        d, code = _split_directives(src)
        tags = []
        if d.get('include') == 'false': continue
        if d.get('echo') == 'false': tags.append('remove-input')
        if d.get('output') == 'false': tags.append('remove-output')
        if d.get('code-fold') in ('true', 'show'): tags.append('hide-input')
        outputs = [json.loads(json.dumps(o)) for o in c.get('outputs', [])]
        is_sd = bool(re.match(r'show_doc\(', code))
        if not is_sd and cid in stored and _norm(stored[cid]) != _norm(outputs):
            notes.append(f'{name}: cell id {cid} ran again during nbdev\'s doc processing (it mixes an import with other '
                         f'code, or is exported) and its outputs changed; the page shows the stored ones. '
                         f'Put its imports in a cell of their own.')
            outputs = stored[cid]
        for o in outputs:
            if o.get('output_type') == 'stream':
                o['text'] = _ansi.sub('', ''.join(o['text']) if isinstance(o['text'], list) else o['text'])
            data = o.get('data', {})
            if is_sd and 'text/markdown' in data:
                md = ''.join(data['text/markdown']) if isinstance(data['text/markdown'], list) else data['text/markdown']
                data['text/markdown'], nm, sid = _sd_markdown(md)
                data.pop('text/plain', None)
                if sid: entries[nm] = sid
        if not code.strip() and not outputs: continue
        cell = dict(cell_type='code', metadata={'tags': tags} if tags else {}, source=code, outputs=outputs,
                    execution_count=None)
        cells.append(cell)
    for i, c in enumerate(cells): c['id'] = f'c{i}'   # nbformat wants ids; nbdev's new cells have none
    meta = {k: v for k, v in nb.metadata.items() if k in ('kernelspec', 'language_info')}
    meta.setdefault('kernelspec', {'display_name': 'Python 3', 'language': 'python', 'name': 'python3'})
    return dict(cells=cells, metadata=meta, nbformat=4, nbformat_minor=5), entries, notes

def process_notebook(src, dst):
    "Run nbdev's processors on notebook `src` and write the MyST notebook `dst`; returns what the build needs to know."
    src, dst, t0 = Path(src), Path(dst), time.time()
    os.chdir(root)
    if str(root) not in sys.path: sys.path.insert(0, str(root))   # document this checkout's library
    os.environ['IN_TEST'] = '1'           # what nbdev's own doc processing sets (quick checks skip work under it)
    os.environ.setdefault('MPLBACKEND', 'Agg')
    import contextlib, io
    from execnb.nbio import read_nb
    name = src.relative_to(root).as_posix() if src.is_relative_to(root) else str(src)
    raw = json.loads(src.read_text(encoding='utf-8'))
    notes = [p for p in [title_cell_problem(raw, name)] if p]
    nb = read_nb(src)
    stored = {c.get('id'): json.loads(json.dumps(c.get('outputs', []))) for c in nb.cells if c.cell_type == 'code'}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        try:
            with contextlib.redirect_stdout(io.StringIO()): _make_filter()()(nb)   # it prints failing cells' tracebacks
        except Exception as e:
            cause = e.__cause__ or e.__context__
            lines = str(e).strip().splitlines()
            first = lines[1].strip() if len(lines) > 1 else None   # nbdev numbers the processed cells: find ours
            idx = [i for i, c in enumerate(raw['cells']) if first and c['cell_type'] == 'code'
                   and first in [l.strip() for l in ''.join(c['source']).splitlines()]]
            if idx: lines[0] += f' (in {src.name}: cell {idx[0]}, id {raw["cells"][idx[0]].get("id")})'
            msg = '\n    '.join(lines[:4] + (['...'] if len(lines) > 4 else []))
            return dict(src=name, error=f'{name}: nbdev\'s doc processing failed: {msg}'
                        + (f'\n    {type(cause).__name__}: {cause}' if cause else ''))
    for w in caught:
        msg = str(w.message).strip()
        if 'imports and other code' in msg:
            cell = msg.split('---')[1].strip() if '---' in msg else ''
            first = cell.splitlines()[0].strip() if cell else None
            idx = [i for i, c in enumerate(raw['cells']) if first and c['cell_type'] == 'code'
                   and first in [l.strip() for l in ''.join(c['source']).splitlines()]]
            at = f'cell {idx[0]} (id {raw["cells"][idx[0]].get("id")})' if idx else 'a cell'
            notes.append(f'{name} {at}: mixes imports with other code, and nbdev runs it to build the docs; put the '
                         f'imports in a cell of their own. It starts: {cell.splitlines()[0][:80] if cell else "?"}')
        elif 'DeprecationWarning' not in w.category.__name__:
            notes.append(f'{name}: {w.category.__name__} while processing: {msg.splitlines()[0][:200] if msg else ""}')
    out, entries, more = _to_myst(nb, stored, name)
    dst.write_text(json.dumps(out, indent=1, ensure_ascii=False), encoding='utf-8')
    title = (getattr(nb, 'frontmatter_', {}) or {}).get('title')
    return dict(src=name, page=dst.stem, entries=entries, notes=notes + more, title=title, secs=round(time.time()-t0, 1))

# ---------------------------------------------------------------------------------------------------------------
# 2. links, the source pages, the API page, the sidebar
def _settings():
    from nbdev.config import get_config
    old = os.getcwd(); os.chdir(root)
    try: cfg = get_config()
    finally: os.chdir(old)
    return cfg

def fix_links(texts, pages, cfg):
    "Point nbdev's links (made for the published site) and links to notebooks at this site's pages: (texts, problems)."
    doc_url = (cfg.doc_host.rstrip('/') + '/' + cfg.doc_baseurl.strip('/')).rstrip('/') + '/'
    code_url = cfg.git_url.rstrip('/') + f'/blob/{cfg.branch}/'
    by_nb = {Path(p['src']).name: p['page'] for p in pages}
    entries = {p['page']: p['entries'] for p in pages}
    problems = []
    link = re.compile(r'\[(?P<text>[^\]]*)\]\((?P<url>[^)\s]+)\)|href="(?P<href>[^"]+)"')

    def resolve(url, where):
        if url.startswith(doc_url):
            pg, _, frag = url[len(doc_url):].partition('#')
            page = pg.rsplit('.', 1)[0]
            if page not in entries: problems.append(f'{where}: link to {url}: no page {pg} in the site'); return url
            if frag:   # nbdev's anchor: the lower-cased name; its index names patched methods by their bare name
                names = sorted(entries[page])
                hit = ([n for n in names if n.lower() == frag] or [n for n in names if n.lower().split('.')[-1] == frag]
                       or [n for n in names if n.lower() == frag.split('.')[0]])
                if not hit and re.match(r'_(?!_)', frag.split('.')[-1]): return None   # private: never documented
                if not hit: problems.append(f'{where}: link to {url}: {pg} has no show_doc entry for {frag}'); return url
                frag = entries[page][hit[0]]
            return f'{page}.html' + (f'#{frag}' if frag else '')
        if url.startswith(code_url):
            path, _, frag = url[len(code_url):].partition('#')
            m = re.match(r'L(\d+)$', frag)
            return f'_source/{path}.html' + (f'#L-{m[1]}' if m else '')
        u = urlsplit(url)
        if not u.scheme and not u.netloc and u.path.endswith('.ipynb'):
            page = by_nb.get(Path(u.path).name)
            if page is None: problems.append(f'{where}: link to {url}: no such notebook'); return url
            return f'{page}.html' + (f'#{u.fragment}' if u.fragment else '')
        if not u.scheme and not u.netloc and u.path and not u.path.startswith('/') and \
                u.path.rsplit('.', 1)[0] not in entries:   # a file of the repository, not a page of the site
            nb_dir = root/cfg.nbs_path
            for base in ([root, nb_dir] if where.startswith(f'{cfg.nbs_path}/index.') else [nb_dir, root]):
                f = (base/unquote(u.path)).resolve()   # index.ipynb is also the README, at the top of the repository
                if f.exists() and f.is_relative_to(root):
                    return code_url + f.relative_to(root).as_posix() + (f'#{u.fragment}' if u.fragment else '')
        return url

    def fix(text, where):
        def sub(m):
            if m['url'] is not None:
                url = resolve(m['url'], where)
                return m['text'] if url is None else f'[{m["text"]}]({url})'   # None: keep the name, drop the link
            url = resolve(html.unescape(m['href']), where)
            return f'href="{url}"' if url is not None else 'href="#"'
        return link.sub(sub, text)

    res = {}
    for p in pages:
        nb = json.loads(texts[f'{p["page"]}.ipynb'])
        for i, c in enumerate(nb['cells']):
            where = f'{p["src"]} (page {p["page"]}, cell {i})'
            if c['cell_type'] == 'markdown': c['source'] = fix(c['source'], where)
            for o in c.get('outputs', []):
                if 'text/markdown' in o.get('data', {}):
                    md = o['data']['text/markdown']
                    o['data']['text/markdown'] = fix(''.join(md) if isinstance(md, list) else md, where)
        res[f'{p["page"]}.ipynb'] = json.dumps(nb, indent=1, ensure_ascii=False)
    return res, problems

def stale_index(cfg):
    "Problems with nbdev's symbol index (lib/_modidx.py), which show_doc's source links and the backtick links use."
    f = root/cfg.lib_path/'_modidx.py'
    if not f.exists(): return [f'no {f.relative_to(root)}: run nbdev_export']
    import ast as _ast
    d = _ast.literal_eval(f.read_text(encoding='utf-8').split('=', 1)[1].strip())
    files = sorted({v[1] for mod in d['syms'].values() for v in mod.values()})
    return [f'{f.relative_to(root)} names {p}, which does not exist: run nbdev_export' for p in files if not (root/p).exists()]

def lib_modules(cfg):
    "The library's modules, for the API page (miniai.imports only re-exports other modules' names)."
    lib = importlib.import_module(cfg.lib_name)
    mods = [m.name for m in pkgutil.walk_packages(lib.__path__, cfg.lib_name + '.')]
    return [m for m in mods if not any(part.startswith('_') for part in m.split('.')) and m != f'{cfg.lib_name}.imports']

def write_source_pages(extra, cfg):
    "A page per library file with numbered lines (anchors L-<n>): where the `source` links go, offline."
    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import PythonLexer
    lib = root/cfg.lib_path
    fmt = HtmlFormatter(linenos='inline', lineanchors='L', anchorlinenos=True, wrapcode=True)
    for f in sorted(lib.rglob('*.py')):
        if '__pycache__' in f.parts: continue
        rel = f.relative_to(root).as_posix()
        dst = extra/'_source'/f'{rel}.html'
        dst.parent.mkdir(parents=True, exist_ok=True)
        up = '../' * (len(Path(rel).parts))
        body = highlight(f.read_text(encoding='utf-8'), PythonLexer(), fmt)
        dst.write_text(f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{rel} – miniai</title>\n'
                       f'<style>body{{font-family:system-ui,sans-serif;margin:1rem 2rem}} pre{{line-height:1.35}}'
                       f' .linenos{{opacity:.55}} :target{{background:#ffec8b}}\n{fmt.get_style_defs(".highlight")}</style>'
                       f'</head><body><p><a href="{up}index.html">miniai</a> · <a href="{up}api.html">API reference</a>'
                       f' · source of <code>{rel}</code> (generated from the notebooks by nbdev_export)</p>\n{body}'
                       f'</body></html>\n', encoding='utf-8')

def api_page(mods):
    "The API reference page (MyST): sphinx.ext.autodoc on every module."
    parts = ['# API reference\n', 'Every module of the library, from its docstrings. Each lesson page documents its '
             'module the same way, next to the explanation and the experiments.\n']
    for m in mods:   # autodoc writes reStructuredText: it must be parsed as that, not as MyST
        parts.append(f'## `{m}`\n\n```{{eval-rst}}\n.. automodule:: {m}\n   :members:\n```\n')
    return '\n'.join(parts)

def add_sidebar(text, pages):
    "The home page's (hidden) toctree is the sidebar: the lessons in file-name order, then the API page."
    nb = json.loads(text)
    lessons = '\n'.join(p['page'] for p in pages if p['page'] != 'index')
    nb['cells'].append(dict(cell_type='markdown', metadata={}, source=
        f'```{{toctree}}\n:hidden:\n:caption: Lessons\n:maxdepth: 1\n\n{lessons}\n```\n\n'
        f'```{{toctree}}\n:hidden:\n:caption: Reference\n:maxdepth: 1\n\napi\n```\n'))
    return json.dumps(nb, indent=1, ensure_ascii=False)

def missing_show_docs(pages, mods):
    "Exported functions and classes that no page has a show_doc entry for."
    have = {n.lower() for p in pages for n in p['entries']}
    missing = []
    for m in mods:
        mod = importlib.import_module(m)
        for n in getattr(mod, '__all__', []):
            o = getattr(mod, n, None)
            if not (inspect.isclass(o) or inspect.isfunction(o)) or getattr(o, '__module__', None) != m: continue
            if n.lower() not in have: missing.append(f'{m}.{n}')
    return missing

# ---------------------------------------------------------------------------------------------------------------
# 4. checks of the built site
def is_external(url):
    "True if `url` would be fetched from outside the site."
    return url.strip().lower().startswith(('http://', 'https://', '//', 'ftp://', 'ws://', 'wss://'))

class PageRefs(HTMLParser):
    "What a page loads (scripts, styles, images...), its links, ids, <title>, inline <style> text and visible text."
    LOADS = ('script', 'img', 'iframe', 'source', 'video', 'audio', 'embed', 'track', 'input')
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.res, self.links, self.styles, self.ids, self.imgs, self.text = [], [], [], set(), [], []
        self.title, self._in = '', None
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for k in ('id', 'name'):
            if a.get(k) and (k == 'id' or tag == 'a'): self.ids.add(a[k])
        if tag in self.LOADS and a.get('src'): self.res.append((tag, a['src']))
        if tag == 'img': self.imgs.append(a.get('src') or '')
        if tag == 'object' and a.get('data'): self.res.append((tag, a['data']))
        if tag == 'link' and a.get('href'):
            rel = set((a.get('rel') or '').lower().split())
            if rel & {'stylesheet', 'preload', 'modulepreload', 'icon', 'prefetch', 'manifest'}: self.res.append(('link', a['href']))
            elif rel & {'dns-prefetch', 'preconnect'}: self.res.append(('link', a['href']))
            else: self.links.append(a['href'])
        if tag == 'a' and a.get('href'): self.links.append(a['href'])
        if a.get('style'): self.styles.append(a['style'])
        if tag in ('title', 'style', 'script'): self._in = tag
    def handle_endtag(self, tag):
        if tag == self._in: self._in = None
    def handle_data(self, data):
        if self._in == 'title': self.title += data
        elif self._in == 'style': self.styles.append(data)
        elif self._in is None: self.text.append(data)

def parse(text):
    p = PageRefs(); p.feed(text); p.close()
    p.text = ' '.join(' '.join(p.text).split())
    return p

_css_url = re.compile(r'''url\(\s*['"]?([^'")\s]+)''', re.I)
_css_import = re.compile(r'''@import\s+(?:url\()?\s*['"]?([^'")\s;]+)''', re.I)
def css_refs(css): return list(dict.fromkeys(_css_url.findall(css) + _css_import.findall(css)))

def _target(page, url, site):
    "(file, fragment) that local `url` on `page` names, or None for data:, javascript: and bare-fragment URLs."
    if url.startswith(('data:', 'about:', 'blob:', 'javascript:', 'mailto:')): return None
    u = urlsplit(url)
    path = unquote(u.path)
    if not path: return (page, u.fragment) if u.fragment else None
    f = (site/path.lstrip('/')) if path.startswith('/') else (page.parent/path)
    if path.endswith('/') or f.is_dir(): f = f/'index.html'
    return f, u.fragment

def scan_site(site):
    "Problems in the built site: resources loaded from outside it, and local resources or link targets that are missing."
    site, problems, ids, pages = Path(site), [], {}, {}
    for f in sorted(site.rglob('*.html')):
        if f.relative_to(site).parts[0] == '_static': continue   # the theme's templates, not pages
        pages[f] = parse(f.read_text(encoding='utf-8', errors='replace'))
        ids[f.resolve()] = pages[f].ids
    for f, p in pages.items():
        rel = f.relative_to(site)
        refs = p.res + [('style', u) for s in p.styles for u in css_refs(s)]
        for tag, url in refs:
            if is_external(url): problems.append(f'{rel}: <{tag}> loads {url} from outside the site'); continue
            t = _target(f, url, site)
            if t and not t[0].exists(): problems.append(f'{rel}: <{tag}> {url} is not in the site')
        for url in p.links:
            if is_external(url) or url.startswith(('mailto:', 'javascript:')): continue
            t = _target(f, url, site)
            if t is None: continue
            tf, frag = t
            if not tf.exists(): problems.append(f'{rel}: broken link {url} (no {tf.relative_to(site) if tf.is_relative_to(site) else tf})')
            elif frag and tf.suffix == '.html' and unquote(frag) not in ids.get(tf.resolve(), set()):
                problems.append(f'{rel}: broken link {url} (no #{unquote(frag)} on that page)')
    for f in sorted(site.rglob('*.css')):
        for url in css_refs(f.read_text(encoding='utf-8', errors='replace')):
            if is_external(url): problems.append(f'{f.relative_to(site)}: CSS loads {url} from outside the site')
    return problems

# ---------------------------------------------------------------------------------------------------------------
def _digest(*paths):
    h = hashlib.sha1()
    for p in paths: h.update(Path(p).read_bytes())
    return h.hexdigest()

def build(out=SITE, force=False, jobs=None, quiet=False):
    "Build the site into `out`; returns (problems, notes)."
    t0 = time.time()
    log = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    cfg = _settings()
    nbs = notebooks(root/cfg.nbs_path)
    if not any(p.stem == 'index' for p in nbs): return [f'no {cfg.nbs_path}/index.ipynb: it is the home page'], []
    names = {}
    for nb in nbs: names.setdefault(page_name(nb), []).append(nb.name)
    clash = {k: v for k, v in names.items() if len(v) > 1}
    if clash: return [f'notebooks {v} would all be the page {k}.html: rename one' for k, v in clash.items()], []

    cache, src, extra = STAGE/'cache', STAGE/'src', STAGE/'extra'
    cache.mkdir(parents=True, exist_ok=True); src.mkdir(exist_ok=True)
    lib_files = sorted(p for p in (root/cfg.lib_path).rglob('*.py') if '__pycache__' not in p.parts)
    common = _digest(Path(__file__), root/'settings.ini', *lib_files)
    todo, pages = [], {}
    for nb in nbs:
        key = common + _digest(nb)
        dst, meta = cache/f'{page_name(nb)}.ipynb', cache/f'{page_name(nb)}.json'
        if not force and dst.exists() and meta.exists():
            m = json.loads(meta.read_text())
            if m.get('key') == key: pages[nb] = m; continue
        todo.append((nb, dst, meta, key))

    problems, notes = [], []
    stale = stale_index(cfg)
    if stale: return stale, notes
    os.environ['PYTHONPATH'] = os.pathsep.join([str(root)] + [p for p in [os.environ.get('PYTHONPATH')] if p])
    if todo:
        t = time.time()
        n = jobs or min(len(todo), max(1, min(2, os.cpu_count() or 1)))
        log(f'nbdev processing {len(todo)} of {len(nbs)} notebooks ({n} at a time)...')
        os.environ.setdefault('OMP_NUM_THREADS', '1')
        import multiprocessing as mp
        if str(root/'tools') not in sys.path: sys.path.insert(0, str(root/'tools'))
        import build_docs as me     # the workers find process_notebook by this module's name, not as __main__'s
        with ProcessPoolExecutor(n, mp_context=mp.get_context('spawn')) as ex:
            futs = [(nb, dst, meta, key, ex.submit(me.process_notebook, str(nb), str(dst))) for nb, dst, meta, key in todo]
            for nb, dst, meta, key, fut in futs:
                try: r = fut.result()
                except Exception as e:   # e.g. a notebook being written while we read it
                    r = dict(error=f'{nb.relative_to(root).as_posix()}: could not be processed: {type(e).__name__}: {e}')
                if 'error' in r:
                    problems.append(r['error']); dst.unlink(missing_ok=True); meta.unlink(missing_ok=True); continue
                r['key'] = key
                meta.write_text(json.dumps(r))
                pages[nb] = r
        slow = sorted((r.get('secs', 0), r['src']) for r in pages.values() if 'secs' in r)[::-1][:3]
        log(f'  nbdev processing took {time.time()-t:.1f} s (slowest: ' + ', '.join(f'{n} {t} s' for t, n in slow) + ')')
    # a notebook that failed is left out, and the rest is still built and checked, so one run reports everything
    pages = [pages[nb] for nb in nbs if nb in pages]
    if not any(p['page'] == 'index' for p in pages): return problems, notes
    for p in pages: notes += p['notes']

    # Sphinx's source folder: the processed notebooks with their links fixed, the API page. A file is only rewritten
    # when it changes, so Sphinx re-reads only what changed.
    texts = {f'{p["page"]}.ipynb': (cache/f'{p["page"]}.ipynb').read_text(encoding='utf-8') for p in pages}
    texts, link_problems = fix_links(texts, pages, cfg)
    problems += link_problems
    texts['index.ipynb'] = add_sidebar(texts['index.ipynb'], pages)
    sys.path.insert(0, str(root))
    mods = lib_modules(cfg)
    texts['api.md'] = api_page(mods)
    for f in src.iterdir():
        if f.name not in texts:
            if f.is_dir(): shutil.rmtree(f)
            else: f.unlink()
    for name, text in texts.items():
        f = src/name
        if not f.exists() or f.read_text(encoding='utf-8') != text: f.write_text(text, encoding='utf-8')
    if extra.exists(): shutil.rmtree(extra)
    write_source_pages(extra, cfg)
    if len(pages) == len(nbs):   # (with a notebook left out, its names would all be listed)
        problems += [f'{n}: exported, but no page has a show_doc entry for it (is its cell hidden?)'
                     for n in missing_show_docs(pages, mods)]

    t = time.time()
    if out.exists(): shutil.rmtree(out)
    env = {**os.environ, 'OMP_NUM_THREADS': os.environ.get('OMP_NUM_THREADS', '1')}
    cmd = [sys.executable, '-m', 'sphinx', '-b', 'html', '-q', '-W', '--keep-going', '-j', 'auto',
           '-c', str(root/'docs'), '-d', str(DOCTREES), str(src), str(out)]
    r = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    log(f'  sphinx took {time.time()-t:.1f} s')
    if r.returncode != 0:
        msg = (r.stderr or r.stdout).strip().splitlines()
        problems += [f'sphinx: {l}' for l in msg if l.strip()] or [f'sphinx failed (exit {r.returncode})']
        return problems, notes
    problems += scan_site(out)
    lib_now = sorted(p for p in (root/cfg.lib_path).rglob('*.py') if '__pycache__' not in p.parts)
    if _digest(Path(__file__), root/'settings.ini', *lib_now) != common:
        problems.insert(0, f'{Path(cfg.lib_path).name}/ or settings.ini changed while the site was being built (nbdev_export?), so '
                           'its line numbers and links may not match: build again')
    size = sum(f.stat().st_size for f in out.rglob('*') if f.is_file())
    log(f'built {out.relative_to(root) if out.is_relative_to(root) else out}: {len(pages)} notebook pages, '
        f'{size/2**20:.1f} MiB, in {time.time()-t0:.1f} s')
    return problems, notes

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--force', action='store_true', help='process every notebook again (ignore the cache in _proc/docs)')
    ap.add_argument('--out', default=str(SITE), help='where the site goes (default: _docs/)')
    ap.add_argument('--jobs', type=int, default=None, help='notebooks processed at a time (default: 2, or fewer CPUs)')
    a = ap.parse_args(argv)
    problems, notes = build(Path(a.out).resolve(), force=a.force, jobs=a.jobs)
    if notes: print('notes on the notebooks (fix these in the notebooks):', *notes, sep='\n  ', file=sys.stderr)
    if problems:
        print('FAIL: the documentation build found problems:', *problems, sep='\n  ', file=sys.stderr)
        return 1
    print('docs built: open _docs/index.html, or serve it with `python -m http.server -d _docs`')
    return 0

if __name__ == '__main__': sys.exit(main())
