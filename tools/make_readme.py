"""Write README.md from nbs/index.ipynb (its Markdown cells, and code cells as Python blocks).

nbdev's own `nbdev_readme` needs Quarto; this does the part we need without it.
`python tools/make_readme.py --check` exits 1 if README.md is out of date.
"""
import json, sys
from pathlib import Path

root = Path(__file__).resolve().parent.parent

def render(nb_path):
    cells = json.loads(Path(nb_path).read_text(encoding='utf-8'))['cells']
    parts = []
    for c in cells:
        src = ''.join(c['source']).strip()
        if not src or src.startswith('#| hide'): continue
        parts.append(src if c['cell_type'] == 'markdown' else f'```python\n{src}\n```')
    return '<!-- Generated from nbs/index.ipynb by tools/make_readme.py: edit the notebook, not this file. -->\n\n' + '\n\n'.join(parts) + '\n'

if __name__ == '__main__':
    text, readme = render(root/'nbs'/'index.ipynb'), root/'README.md'
    if '--check' in sys.argv:
        if readme.read_text(encoding='utf-8') != text:
            sys.exit('README.md is out of date with nbs/index.ipynb: run python tools/make_readme.py')
    else: readme.write_text(text, encoding='utf-8')
