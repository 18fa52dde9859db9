"""Every experiment notebook's parameters are what papermill sees.

papermill reads a notebook's `parameters` cell with its own line parser, not Python's: a line it cannot parse is
skipped with only a log message ("Unable to parse line ..."), so the parameter vanishes from `--help-notebook`
(any `=` in a line's comment does it: `select='val'` in 03's and `crop side = ...` in 07's hid two parameters). Python's parser is the reference here.
"""
import ast, json
from pathlib import Path

import papermill as pm
import pytest

NBS = Path(__file__).resolve().parents[1] / 'nbs'


def parameters_cell(path):
    cells = [c for c in json.loads(path.read_text())['cells'] if 'parameters' in c.get('metadata', {}).get('tags', [])]
    return ''.join(cells[0]['source']) if cells else None


EXPERIMENTS = [p for p in sorted(NBS.glob('*.ipynb')) if parameters_cell(p) is not None]


def test_the_experiment_notebooks_have_parameters():
    assert {p.stem for p in EXPERIMENTS} >= {'02_pretrain', '03_train', '04_ablation', '05_baselines', '06_attention', '07_clip_agiqa'}


@pytest.mark.parametrize('path', EXPERIMENTS, ids=lambda p: p.stem)
def test_papermill_sees_every_parameter(path):
    tree = ast.parse(parameters_cell(path))
    declared = {n.target.id: ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.AnnAssign)}
    seen = pm.inspect_notebook(str(path))
    assert list(seen) == list(declared), f'{path.name}: papermill misses {sorted(set(declared) - set(seen))}'
    for name, value in declared.items():   # and reads the default papermill would pass back as Python's value
        assert ast.literal_eval(seen[name]['default']) == value, (path.name, name, seen[name]['default'], value)
