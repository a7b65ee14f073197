"""Build the documentation site and check it in a real browser (headless Chromium).

    python tools/docs_check.py            # nbdev_docs into _docs/, then check it
    python tools/docs_check.py --no-build # check the _docs/ that is there

Steps:
 1. unless --no-build: `nbdev_docs` (needs `quarto` on PATH: without it nbdev would try to download and install
    Quarto, so this refuses instead). README.md is kept as tools/make_readme.py wrote it.
 2. static scan of every built page and stylesheet: no <script src>, <link rel=stylesheet>, <img>, <iframe>,
    <source>, CSS url()/@import that points outside the site (http://, https://, //host), and every local one exists.
 3. serve the site with http.server on 127.0.0.1 (a free port), open the home page, the Learner page and the
    augmentation page in headless Chromium (fresh profile, no network services), save screenshots, and check the
    rendered DOM: page title, the sidebar navigation (with links to the lessons), a plot image on the lesson
    pages, and the API entry for `Learner.fit` on the Learner page.
Exits 0 when all pass, 1 listing every failure, 2 when it cannot run (no quarto / chromium / site).
"""
import argparse, functools, http.server, os, re, shutil, subprocess, sys, tempfile, threading, time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit, unquote

root = Path(__file__).resolve().parent.parent

def cannot(msg):
    "Exit 2: the check could not run."
    print(f'docs_check: {msg}', file=sys.stderr); sys.exit(2)
CHROMIUM_FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--no-first-run',
                  '--disable-component-update', '--disable-sync', '--disable-default-apps', '--hide-scrollbars',
                  '--virtual-time-budget=8000']

def is_external(url):
    "True if `url` would be fetched from outside the site."
    u = url.strip().lower()
    return u.startswith(('http://', 'https://', '//', 'ftp://'))

class _Refs(HTMLParser):
    "Collects the resources a page loads (not plain links), its <title>, inline <style> text, ids, <img> srcs and text."
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.res, self.styles, self.ids, self.imgs, self.links, self.text = [], [], set(), [], [], []
        self.title, self._in = '', None
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get('id'): self.ids.add(a['id'])
        if tag in ('script', 'img', 'iframe', 'source', 'video', 'audio', 'embed', 'track') and a.get('src'):
            self.res.append((tag, a['src']))
        if tag == 'img': self.imgs.append(a.get('src') or '')
        if tag == 'object' and a.get('data'): self.res.append((tag, a['data']))
        if tag == 'link' and a.get('href'):
            rel = (a.get('rel') or '').lower().split()
            if {'stylesheet', 'preload', 'modulepreload', 'icon'} & set(rel): self.res.append(('link', a['href']))
        if tag == 'a' and a.get('href'): self.links.append(a['href'])
        if tag in ('title', 'style', 'script'): self._in = tag
    def handle_endtag(self, tag):
        if tag == self._in: self._in = None
    def handle_data(self, data):
        if self._in == 'title': self.title += data
        elif self._in == 'style': self.styles.append(data)
        elif self._in is None: self.text.append(data)

def parse(html):
    p = _Refs(); p.feed(html); p.close()
    p.text = ' '.join(' '.join(p.text).split())
    return p

_css_url = re.compile(r'''url\(\s*['"]?([^'")\s]+)''', re.I)
_css_import = re.compile(r'''@import\s+['"]([^'"]+)['"]''', re.I)
def css_refs(css): return _css_url.findall(css) + _css_import.findall(css)

def _local(page, url, site):
    "The file in `site` that `url` (relative to `page`) names, or None for data:/fragment-only URLs."
    if url.startswith(('data:', '#', 'about:', 'blob:', 'javascript:')): return None
    path = unquote(urlsplit(url).path)
    if not path: return None
    return (site/path.lstrip('/')) if path.startswith('/') else (page.parent/path)

def scan_site(site):
    "Problems with resources in every built page and stylesheet: external ones, and local ones that are missing."
    site, problems = Path(site), []
    for f in sorted(site.rglob('*.html')) + sorted(site.rglob('*.css')):
        txt = f.read_text(encoding='utf-8', errors='replace')
        if f.suffix == '.html':
            p = parse(txt)
            refs = p.res + [('style', u) for s in p.styles for u in css_refs(s)]
        else: refs = [('css', u) for u in css_refs(txt)]
        for tag, url in refs:
            rel = f.relative_to(site)
            if is_external(url): problems.append(f'{rel}: <{tag}> loads {url} from outside the site')
            elif f.suffix == '.html' or tag == 'css':
                loc = _local(f, url, site)
                if loc is not None and not loc.exists() and tag != 'css':
                    problems.append(f'{rel}: <{tag}> {url} is not in the site')
    return problems

def find_page(site, word):
    "The built page for the notebook whose name contains `word` (nbdev may strip the number prefix)."
    hits = sorted(p for p in Path(site).rglob('*.html') if word in p.stem.lower() and 'site_libs' not in p.parts)
    return hits[0] if hits else None

def check_dom(name, html, site_url, plot=False, api=None, nav_to=()):
    "Failures for one rendered page."
    p, errs = parse(html), []
    if not p.title.strip(): errs.append(f'{name}: page has no <title>')
    elif 'miniai' not in p.title.lower(): errs.append(f'{name}: title {p.title.strip()!r} does not name the site (miniai)')
    if 'quarto-sidebar' not in p.ids and not any('sidebar' in i for i in p.ids):
        errs.append(f'{name}: no sidebar navigation (no element with id quarto-sidebar)')
    for target in nav_to:
        if not any(target in l for l in p.links): errs.append(f'{name}: navigation has no link to {target}')
    if plot:
        imgs = [s for s in p.imgs if re.search(r'\.(png|svg|jpe?g)(\?|$)', s, re.I) or s.startswith('data:image/')]
        if not imgs: errs.append(f'{name}: no rendered plot image (<img> of a png/svg) on the page')
    if api and api not in p.text: errs.append(f'{name}: no API entry for {api} (its show_doc heading is missing)')
    ext = [u for _, u in p.res if is_external(u)]
    if ext: errs.append(f'{name}: after rendering, the page loads from outside the site: {ext}')
    return errs

def chromium_bin():
    for n in ('chromium', 'chromium-browser', 'google-chrome'):
        if shutil.which(n): return shutil.which(n)

def run_chromium(exe, url, extra, timeout=90):
    with tempfile.TemporaryDirectory(prefix='miniai-chromium-') as prof:
        cmd = [exe, *CHROMIUM_FLAGS, f'--user-data-dir={prof}', *extra, url]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    return r

class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args): pass

def serve(site):
    handler = functools.partial(_QuietHandler, directory=str(site))
    srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv

def build():
    if not shutil.which('quarto'):
        cannot('cannot build: `quarto` is not on PATH (nbdev_docs would try to download it). '
                 'Install it, or check an existing site with --no-build.')
    readme = root/'README.md'
    keep = readme.read_text(encoding='utf-8') if readme.exists() else None
    t = time.time()
    try: subprocess.run(['nbdev_docs'], cwd=root, check=True)
    except subprocess.CalledProcessError as e: print(f'docs_check: FAIL: nbdev_docs failed (exit {e.returncode})', file=sys.stderr); sys.exit(1)
    finally:  # nbdev_docs also rewrites README.md with Quarto; tools/make_readme.py owns it
        if keep is not None and readme.read_text(encoding='utf-8') != keep: readme.write_text(keep, encoding='utf-8')
    print(f'nbdev_docs built the site in {time.time()-t:.0f} s')

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--no-build', action='store_true', help='check the site that is there; do not run nbdev_docs')
    ap.add_argument('--site', default=str(root/'_docs'), help='the built site (default: _docs/)')
    ap.add_argument('--out', default=None, help='folder for the screenshots (default: a new temporary folder)')
    a = ap.parse_args(argv)
    t0, site = time.time(), Path(a.site)
    exe = chromium_bin()
    if not exe: cannot('cannot run: no chromium on PATH (Debian: apt-get install chromium)')
    if not a.no_build: build()
    if not (site/'index.html').exists(): cannot(f'no site at {site} (no index.html): build it first')
    out = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix='miniai-docs-shots-'))
    out.mkdir(parents=True, exist_ok=True)

    errs = scan_site(site)
    learner, augment = find_page(site, 'learner'), find_page(site, 'augment')
    if learner is None: errs.append('no page for the Learner notebook (09_learner) in the site')
    if augment is None: errs.append('no page for the augmentation notebook (14_augment) in the site')
    pages = [('home', site/'index.html', {}),
             ('learner', learner, dict(plot=True, api='Learner.fit')),
             ('augment', augment, dict(plot=True))]
    nav_to = [p.name for _, p, _ in pages if p is not None]
    srv = serve(site)
    try:
        base = f'http://127.0.0.1:{srv.server_address[1]}/'
        for name, page, kw in pages:
            if page is None: continue
            url = base + page.relative_to(site).as_posix()
            shot = out/f'{name}.png'
            r = run_chromium(exe, url, ['--window-size=1280,1600', f'--screenshot={shot}'])
            if not shot.exists() or shot.stat().st_size < 5000:
                errs.append(f'{name}: no screenshot from chromium (exit {r.returncode}): {r.stderr[-500:]}')
            dom = run_chromium(exe, url, ['--dump-dom'])
            if dom.returncode != 0 or '<html' not in dom.stdout.lower():
                errs.append(f'{name}: chromium could not render {url} (exit {dom.returncode}): {dom.stderr[-500:]}'); continue
            errs += check_dom(name, dom.stdout, base, nav_to=nav_to, **kw)
            print(f'{name}: {url} -> {shot}')
    finally: srv.shutdown()
    print(f'screenshots in {out}; docs check took {time.time()-t0:.0f} s')
    if errs:
        print('FAIL: the documentation site check found problems:', *errs, sep='\n  ', file=sys.stderr)
        return 1
    print('docs check passed')
    return 0

if __name__ == '__main__': sys.exit(main())
