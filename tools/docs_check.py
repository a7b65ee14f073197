"""Build the documentation site and check it in a real browser: headless Chromium, driven over the DevTools protocol.

    python tools/docs_check.py              # python tools/build_docs.py, then the browser check
    python tools/docs_check.py --no-build   # check the _docs/ that is there
    python tools/docs_check.py --out DIR    # where the screenshots go (default: _docs/_screenshots/)

1. unless --no-build, the build (tools/build_docs.py: it fails on broken links, external resources and missing
   show_doc entries); with --no-build, its static checks of the site.
2. the site is served on 127.0.0.1 (a free port), and Debian's `chromium` (headless, a fresh profile, no network
   services) opens the home page, the Learner page (09_learner) and the augmentation page (14_augment), then the
   API reference and the search page for `lr_find`. Every request each page makes is recorded. Checked: the page title, the sidebar (with
   links to the lessons), at least one rendered plot on the lesson pages (an image that loaded), the `Learner.fit`
   entry on the Learner page and in the API reference, that search lists the Learner page for `lr_find`, and that no request left the site.
3. screenshots of each page (and of the first plot and the `Learner.fit` entry) are saved; the paths are printed.
Exits 0 when all pass, 1 listing every failure, 2 when it cannot run (no chromium, no site).
"""
import argparse, base64, functools, http.server, json, os, shutil, signal, subprocess, sys, tempfile, threading, time
import urllib.request
from pathlib import Path

root = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(root/'tools'))
import build_docs as bd

CHROMIUM_FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
                  '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-default-apps',
                  '--disable-extensions', '--hide-scrollbars', '--mute-audio', '--remote-debugging-port=0']
LESSONS = [('home', 'index'), ('learner', 'learner'), ('augment', 'augment')]   # (name, page)

def cannot(msg):
    "Exit 2: the check could not run."
    print(f'docs_check: {msg}', file=sys.stderr); sys.exit(2)

def chromium_bin():
    for n in ('chromium', 'chromium-browser', 'google-chrome'):
        if shutil.which(n): return shutil.which(n)

class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args): pass

def serve(site):
    "The site on 127.0.0.1, a free port, in a thread."
    srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(_Handler, directory=str(site)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv

class Browser:
    "Headless Chromium with one page, driven over the DevTools protocol (websocket-client)."
    def __init__(self, exe, timeout=60):
        import websocket
        self.prof = tempfile.mkdtemp(prefix='miniai-chromium-')
        self.proc = subprocess.Popen([exe, *CHROMIUM_FLAGS, f'--user-data-dir={self.prof}', 'about:blank'],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        port_file, t = Path(self.prof)/'DevToolsActivePort', time.time()
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None:
                raise RuntimeError(f'chromium exited ({self.proc.returncode}): {self.proc.stderr.read().decode()[-800:]}')
            if time.time() - t > timeout: raise RuntimeError('chromium did not open its DevTools port')
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        targets = json.load(urllib.request.urlopen(f'http://127.0.0.1:{port}/json/list', timeout=10))
        page = next(t for t in targets if t.get('type') == 'page')
        self.ws = websocket.create_connection(page['webSocketDebuggerUrl'], timeout=timeout, suppress_origin=True)
        self.id, self.events, self.requests = 0, [], []
        for m in ('Page.enable', 'Network.enable', 'Runtime.enable'): self.call(m)
        self.call('Emulation.setDeviceMetricsOverride', width=1280, height=1000, deviceScaleFactor=1, mobile=False)

    def _recv(self):
        msg = json.loads(self.ws.recv())
        if msg.get('method') == 'Network.requestWillBeSent': self.requests.append(msg['params']['request']['url'])
        elif 'method' in msg: self.events.append(msg)
        return msg

    def call(self, method, **params):
        self.id += 1
        self.ws.send(json.dumps(dict(id=self.id, method=method, params=params)))
        while True:
            msg = self._recv()
            if msg.get('id') == self.id:
                if 'error' in msg: raise RuntimeError(f'{method}: {msg["error"]}')
                return msg.get('result', {})

    def wait_for(self, method, timeout=30):
        t = time.time()
        while time.time() - t < timeout:
            for i, e in enumerate(self.events):
                if e['method'] == method: return self.events.pop(i)
            self.ws.settimeout(max(0.1, timeout - (time.time() - t)))
            try: self._recv()
            except Exception: break
        raise TimeoutError(f'no {method} within {timeout} s')

    def open(self, url, timeout=30):
        "Load `url`; returns the URLs of every request the page made (until the network is quiet)."
        self.events.clear(); self.requests = []
        self.call('Page.navigate', url=url)
        self.wait_for('Page.loadEventFired', timeout)
        self.settle()
        return list(self.requests)

    def settle(self, quiet=1.0, timeout=10):
        "Let late requests (scripts that fetch, lazy images) happen: wait until none starts for `quiet` seconds."
        t, n, last = time.time(), len(self.requests), time.time()
        self.ws.settimeout(0.2)
        while time.time() - t < timeout and time.time() - last < quiet:
            try: self._recv()
            except Exception: pass
            if len(self.requests) != n: n, last = len(self.requests), time.time()

    def js(self, expr, timeout=30):
        r = self.call('Runtime.evaluate', expression=expr, returnByValue=True, awaitPromise=True, timeout=timeout*1000)
        if 'exceptionDetails' in r: raise RuntimeError(f'{expr[:60]}...: {r["exceptionDetails"].get("text")}')
        return r['result'].get('value')

    def screenshot(self, path, full=False):
        r = self.call('Page.captureScreenshot', format='png', captureBeyondViewport=full)
        Path(path).write_bytes(base64.b64decode(r['data']))

    def close(self):
        try: self.ws.close()
        except Exception: pass
        try: os.killpg(self.proc.pid, signal.SIGTERM); self.proc.wait(10)
        except Exception:
            try: os.killpg(self.proc.pid, signal.SIGKILL)
            except Exception: pass
        shutil.rmtree(self.prof, ignore_errors=True)

def left_site(requests, base):
    "The requests that went anywhere but the site itself."
    return [u for u in requests if not u.startswith(base) and not u.startswith(('data:', 'blob:', 'about:'))]

SIDEBAR_JS = """(() => {
  const nav = document.querySelector('#pst-primary-sidebar nav, .bd-sidebar-primary nav, nav.bd-links');
  if (!nav || !nav.offsetParent) return null;
  return Array.from(nav.querySelectorAll('a')).map(a => a.getAttribute('href'));
})()"""
PLOTS_JS = """Array.from(document.querySelectorAll('.cell_output img')).filter(i => i.complete && i.naturalWidth > 50)
  .map(i => i.getAttribute('src'))"""
ENTRY_JS = """(() => { const e = document.getElementById('learner-fit');
  return e ? e.textContent.trim() : null; })()"""
SEARCH_JS = """new Promise(done => { const t0 = Date.now(); (function poll() {
  const hits = Array.from(document.querySelectorAll('#search-results ul.search li a, ul.search li a'));
  if (hits.length || Date.now() - t0 > 20000) done(hits.map(a => a.getAttribute('href')));
  else setTimeout(poll, 200); })(); })"""

def scroll_to(b, selector):
    return b.js(f"""(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return false;
        e.scrollIntoView({{block: 'center'}}); return true; }})()""")

def check_pages(b, base, out, log=print):
    "Open the pages and check them; returns the failures."
    errs, lessons = [], [p for _, p in LESSONS if p != 'index']
    for name, page in LESSONS:
        url = base + f'{page}.html'
        try: reqs = b.open(url)
        except Exception as e: errs.append(f'{name}: {url} did not load: {e}'); continue
        b.screenshot(out/f'{name}.png')
        log(f'{name}: {url}: {len(reqs)} requests, screenshot {out/f"{name}.png"}')
        bad = left_site(reqs, base)
        if bad: errs.append(f'{name}: requests left the site: {bad}')
        if not any(u.startswith(url) for u in reqs): errs.append(f'{name}: the page itself was not requested ({reqs[:3]})')
        title = b.js('document.title') or ''
        h1 = b.js("(document.querySelector('main h1, article h1') || {}).textContent || ''").strip().rstrip('#').strip()
        if 'miniai' not in title: errs.append(f'{name}: title {title!r} does not name the site (miniai)')
        if page != 'index' and (not h1 or h1 not in title): errs.append(f'{name}: title {title!r} is not the page\'s heading {h1!r}')
        links = b.js(SIDEBAR_JS)
        if links is None: errs.append(f'{name}: no visible sidebar navigation')
        else:
            here = lambda h, l: l == page and (h or '').startswith('#')   # the current page links to itself as '#'
            missing = [l for l in lessons if not any((h or '').split('#')[0].endswith(f'{l}.html') or here(h, l) for h in links)]
            if missing: errs.append(f'{name}: the sidebar has no link to {missing}')
        if page != 'index':
            plots = b.js(PLOTS_JS)
            if not plots: errs.append(f'{name}: no rendered plot (a loaded image in a cell output)')
            elif scroll_to(b, '.cell_output img'):
                time.sleep(0.3); b.screenshot(out/f'{name}-plot.png')
        if page == 'learner':
            entry = b.js(ENTRY_JS)
            if entry != 'Learner.fit': errs.append(f'{name}: no Learner.fit entry (an element with id learner-fit): {entry!r}')
            elif scroll_to(b, '#learner-fit'): time.sleep(0.3); b.screenshot(out/'learner-fit.png')
    url = base + 'api.html'
    try:
        reqs = b.open(url)
        b.screenshot(out/'api.png')
        bad = left_site(reqs, base)
        if bad: errs.append(f'api: requests left the site: {bad}')
        if not b.js("!!document.getElementById('miniai.learner.Learner.fit')"):
            errs.append('api: the API reference has no entry for miniai.learner.Learner.fit')
        elif scroll_to(b, '[id="miniai.learner.Learner.fit"]'): time.sleep(0.3); b.screenshot(out/'api-fit.png')
        log(f'api: {url}: {len(reqs)} requests, screenshot {out/"api.png"}')
    except Exception as e: errs.append(f'api: {url}: {e}')
    url = base + 'search.html?q=lr_find'
    try:
        reqs = b.open(url)
        hits = b.js(SEARCH_JS) or []
        b.screenshot(out/'search.png')
        log(f'search: {url}: {len(hits)} results, screenshot {out/"search.png"}')
        bad = left_site(reqs + b.requests, base)
        if bad: errs.append(f'search: requests left the site: {bad}')
        if not any((h or '').split('?')[0].split('#')[0].endswith('learner.html') for h in hits):
            errs.append(f'search: searching for lr_find does not list the Learner page: {hits[:10]}')
    except Exception as e: errs.append(f'search: {url}: {e}')
    return errs

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--no-build', action='store_true', help='check the site that is there; do not build it')
    ap.add_argument('--site', default=str(bd.SITE), help='the built site (default: _docs/)')
    ap.add_argument('--out', default=None, help='folder for the screenshots (default: SITE/_screenshots)')
    a = ap.parse_args(argv)
    t0, site = time.time(), Path(a.site).resolve()
    exe = chromium_bin()
    if not exe: cannot('cannot run: no chromium on PATH (Debian: apt-get install chromium)')
    try: import websocket  # noqa: F401
    except ImportError: cannot('cannot run: no websocket-client (pip install -e ".[dev]")')
    if a.no_build:
        if not (site/'index.html').exists(): cannot(f'no site at {site} (no index.html): build it first')
        errs = bd.scan_site(site)
    else:
        errs, notes = bd.build(site)
        if notes: print('notes on the notebooks:', *notes, sep='\n  ', file=sys.stderr)
        if errs:
            print('FAIL: the documentation build found problems:', *errs, sep='\n  ', file=sys.stderr)
            return 1
    out = Path(a.out) if a.out else site/'_screenshots'
    out.mkdir(parents=True, exist_ok=True)
    srv = serve(site)
    base = f'http://127.0.0.1:{srv.server_address[1]}/'
    b = None
    try:
        b = Browser(exe)
        errs += check_pages(b, base, out)
    except Exception as e: errs.append(f'the browser check could not run: {type(e).__name__}: {e}')
    finally:
        if b: b.close()
        srv.shutdown()
    print(f'screenshots in {out}; docs check took {time.time()-t0:.0f} s')
    if errs:
        print('FAIL: the documentation site check found problems:', *errs, sep='\n  ', file=sys.stderr)
        return 1
    print('docs check passed')
    return 0

if __name__ == '__main__': sys.exit(main())
