"""Cross-validation under torchrun on CPU (2 gloo processes): the splits spread over the ranks give one process's metrics,
and a rank killed mid-split resumes on the next launch without recomputing a finished split."""
import pandas as pd
import pytest
import torch

from torchrun_helpers import toy_dir, DRIVER, assert_same_results, cli_args, launch, steps_per_epoch


@pytest.fixture(scope='module')
def two_ranks(toy_dir, tmp_path_factory):
    "An uninterrupted 2-process run: its folder and stdout."
    out = tmp_path_factory.mktemp('two')
    return out, launch(cli_args(toy_dir, out), nproc=2).stdout


def test_two_ranks_equal_one_process(toy_dir, two_ranks, tmp_path):
    out, stdout = two_ranks
    launch(cli_args(toy_dir, tmp_path/'one'))
    assert_same_results(tmp_path/'one', out, ('metrics.csv', 'summary.csv', 'predictions.csv', 'splits.csv'))  # CPU, one thread, same seeds
    assert stdout.count('plcc_logistic') == 1 and 'toy | method=ipiqa' in stdout  # rank 0 alone prints the summary
    assert sorted(p.name for p in out.iterdir()) == ['config.json', 'metrics.csv', 'predictions.csv', 'scatter.png', 'split0', 'split1',
                                                     'splits.csv', 'summary.csv']


def test_killed_rank_resumes_its_split(toy_dir, two_ranks, tmp_path):
    out, steps = tmp_path/'run', {1: steps_per_epoch(toy_dir, 1), 0: steps_per_epoch(toy_dir, 0)}
    (tmp_path/'steps').mkdir(); (tmp_path/'driver.py').write_text(DRIVER)
    env = dict(STEPS_DIR=str(tmp_path/'steps'))
    r = launch(cli_args(toy_dir, out), nproc=2, script=str(tmp_path/'driver.py'), check=False, KILL_RANK='1', KILL_STEP=str(steps[1] + 2), **env)
    assert r.returncode != 0 and not (out/'metrics.csv').exists()
    assert (out/'split0'/'metrics.csv').is_file() and not (out/'split1'/'metrics.csv').exists()
    assert torch.load(out/'split1'/'state.pt', weights_only=False)['epoch'] == 1  # killed in its second epoch
    mtime = (out/'split0'/'model.pt').stat().st_mtime_ns

    launch(cli_args(toy_dir, out), nproc=2, script=str(tmp_path/'driver.py'), **env)
    assert {p.name: int(p.read_text()) for p in (tmp_path/'steps').glob('rank*')} == {'rank0': 0, 'rank1': steps[1]}  # split 1: its last epoch only
    assert (out/'split0'/'model.pt').stat().st_mtime_ns == mtime and not (out/'split1'/'state.pt').exists()
    assert_same_results(out, two_ranks[0])


def test_same_results_tolerates_only_the_fit(tmp_path):
    "`assert_same_results` lets the fitted-logistic PLCC differ below 1e-9 and nothing else differ at all."
    m = pd.DataFrame(dict(split=[0, 0], target=['q', 'a'], srcc=[0.8303030303030302, 0.64], plcc_logistic=[0.9584895609468195, 0.75]))
    def folder(name, **change):
        (tmp_path/name).mkdir(); m.assign(**change).to_csv(tmp_path/name/'metrics.csv', index=False); return tmp_path/name
    a = folder('a')
    assert_same_results(a, folder('fit_ulps', plcc_logistic=m.plcc_logistic * (1 + 1e-12)), ['metrics.csv'])
    for name, change in (('fit', dict(plcc_logistic=m.plcc_logistic * (1 + 1e-7))), ('srcc', dict(srcc=m.srcc * (1 + 1e-15)))):
        with pytest.raises(AssertionError): assert_same_results(a, folder(name, **change), ['metrics.csv'])
