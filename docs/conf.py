# Sphinx configuration for miniai's documentation site. Don't run Sphinx on its own: `python tools/build_docs.py`
# runs nbdev's notebook processing, writes the pages into _proc/docs/src/ and builds _docs/ from there with this
# configuration (sphinx -c docs). Everything the site needs ships with it: no fonts, scripts or styles
# from other sites (the build checks every page for that, and fails on it).
import os, re, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

project = 'miniai'
author = 'miniai developers'
copyright = '2026 onwards, miniai developers'
html_title = 'miniai'
root_doc = 'index'

extensions = ['myst_nb', 'sphinx.ext.autodoc', 'sphinx.ext.linkcode']
exclude_patterns = []

# The notebooks are rendered from their stored outputs, never executed here.
nb_execution_mode = 'off'
nb_render_markdown_format = 'myst'   # show_doc's output is markdown: render it, headings and all
nb_ipywidgets_js = {}                 # the widget manager would come from a CDN; the lessons have no widgets
nb_merge_streams = True
myst_enable_extensions = ['attrs_block', 'attrs_inline', 'colon_fence']
# Links are written as the site's own file names (learner.html#learner.fit) by tools/build_docs.py, which checks
# every one of them after the build; Sphinx passes them through as they are.
myst_all_links_external = True
suppress_warnings = ['myst.header',              # lessons may go from ## to #### (show_doc's method entries)
                     'misc.highlighting_failure']  # show_doc signatures hold reprs such as <class ...>

autodoc_member_order = 'bysource'
autodoc_default_options = {'members': True, 'show-inheritance': True}

def markdown_docstring(app, what, name, obj, options, lines):
    "nbdev's docstrings are Markdown, not reST: keep their `code` as code and the rest as plain text."
    for i, line in enumerate(lines):
        parts = re.split(r'(`[^`]+`)', line)
        lines[i] = ''.join(f'\\ ``{p[1:-1].strip()}``\\ ' if len(p) > 2 and p[0] == p[-1] == '`'
                           else re.sub(r'([\\*|_`])', r'\\\1', p) for p in parts)

def setup(app): app.connect('autodoc-process-docstring', markdown_docstring)

def linkcode_resolve(domain, info):
    "The API page's [source] links: the site's own copy of the module, at the object's first line."
    if domain != 'py' or not info.get('module'): return None
    import importlib, inspect
    try:
        obj = importlib.import_module(info['module'])
        for part in info['fullname'].split('.'): obj = getattr(obj, part)
        obj = inspect.unwrap(obj)
        fn = inspect.getsourcefile(obj)
        line = inspect.getsourcelines(obj)[1]
    except (AttributeError, TypeError, OSError, ImportError): return None
    try: rel = Path(fn).resolve().relative_to(ROOT)
    except ValueError: return None
    return f'_source/{rel.as_posix()}.html#L-{line}'

html_theme = 'sphinx_book_theme'
html_static_path = ['_static']
html_css_files = ['miniai.css']
html_extra_path = [str(ROOT/'_proc'/'docs'/'extra')]   # the source pages tools/build_docs.py writes
html_copy_source = False
html_show_sourcelink = False
html_theme_options = {
    'home_page_in_toc': True,
    'show_toc_level': 2,
    'use_download_button': False,
    'use_fullscreen_button': False,
    'use_repository_button': False,
    'use_source_button': False,
    'use_issues_button': False,
    'use_edit_page_button': False,
    'navigation_with_keys': False,
    'search_bar_text': 'Search the docs…',
}
