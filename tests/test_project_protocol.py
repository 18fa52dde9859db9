"The arithmetic behind the README's projected GPU wall time (benchmarks/project_protocol.py), on a made-up run folder."
import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / 'benchmarks'))
from project_protocol import project


def make_run(tmp_path, n_train=2385, first_epochs=(50.0, 51.0, 4.0, 4.0)):
    "4 splits x 3 epochs by 2 ranks: split k finished at (60, 61, 80, 82)[k] s after the launch at t = 1000 s."
    parts = ['train'] * n_train + ['test'] * 7
    pd.DataFrame(dict(split=[0] * len(parts), name=[f'{i}.png' for i in range(len(parts))], part=parts)).to_csv(tmp_path / 'splits.csv', index=False)
    for k, first in enumerate(first_epochs):
        (tmp_path / f'split{k}').mkdir()
        pd.DataFrame(dict(epoch=[1, 2, 3], train_loss=[1.0, 0.9, 0.8], seconds=[first, 5.0, 5.0])).to_csv(tmp_path / f'split{k}' / 'history.csv', index=False)
    (tmp_path / 'finished.txt').write_text('\n'.join(f'split{k} {1000 + t}' for k, t in enumerate((60, 61, 80, 82))) + '\nstart 1000\n')
    return tmp_path


def test_projection_adds_missing_epochs_and_splits(tmp_path, capsys):
    # rank 0: its first split 60 s, a later split 20 s; 5 splits, 97 more epochs each at 5 s: 60 + 485 + 4 * (20 + 485) = 2565 s
    # rank 1: 61 s and 21 s: 61 + 485 + 4 * (21 + 485) = 2570 s, the slower rank
    assert project(make_run(tmp_path), 2) == pytest.approx(2570.0)
    assert 'projected: 0.71 h' in capsys.readouterr().out


def test_steady_pace_scales_to_agiqa3k_training_size(tmp_path):
    # 4,770 training images per split: an epoch of AGIQA-3k's 2,385 takes half the measured 5 s
    assert project(make_run(tmp_path, n_train=4770), 2) == pytest.approx(61 + 97 * 2.5 + 4 * (21 + 97 * 2.5))


def test_protocol_epochs_are_a_parameter(tmp_path):
    # CLIP-AGIQA's 50 epochs per split: 47 more at 5 s; rank 1 (the slower) 61 + 235 + 4 * (21 + 235) = 1320 s
    assert project(make_run(tmp_path), 2, protocol_epochs=50) == pytest.approx(1320.0)


def test_splits_with_different_epochs_are_refused(tmp_path):
    run = make_run(tmp_path)
    pd.DataFrame(dict(epoch=[1, 2], train_loss=[1.0, 0.9], seconds=[4.0, 5.0])).to_csv(run / 'split3' / 'history.csv', index=False)
    with pytest.raises(ValueError, match='different numbers of epochs'): project(run, 2)


def test_unfinished_split_is_named(tmp_path):
    run = make_run(tmp_path)
    (run / 'finished.txt').write_text((run / 'finished.txt').read_text().replace('split3 1082', 'split3'))
    with pytest.raises(ValueError, match='split3 wrote no metrics.csv'): project(run, 2)
