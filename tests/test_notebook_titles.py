"""Every notebook opens with a cell of its title and one-line summary only.

nbdev reads a notebook's first markdown cell as the page's front matter when it starts with `# title`: the title,
the `> summary`, and every `- key: value` line become metadata, and the whole cell is left out of the rendered page.
Prose in that cell would vanish from the documentation, and list items with a colon in them are parsed as YAML
(`index.ipynb`'s list of `ipiqa score` options made nbdev warn on every run).
"""
import json, re
from pathlib import Path

import pytest

NBS = sorted((Path(__file__).resolve().parents[1] / 'nbs').glob('*.ipynb'))


def first_markdown(path):
    return next(''.join(c['source']) for c in json.loads(path.read_text())['cells'] if c['cell_type'] == 'markdown')


@pytest.mark.parametrize('path', NBS, ids=lambda p: p.stem)
def test_first_cell_is_title_and_summary_only(path):
    lines = [l for l in first_markdown(path).splitlines() if l.strip()]
    assert re.match(r'#\s+\S', lines[0]), f"{path.name}: the first markdown cell should start with '# title', not {lines[0]!r}"
    extra = [l for l in lines[1:] if not l.startswith('> ')]
    assert not extra, f"{path.name}: its first markdown cell holds more than '# title' and '> summary', which nbdev drops from the page: {extra[:2]}"
