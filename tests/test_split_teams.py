"""Teams of ranks on one split under torchrun on CPU (2 gloo processes, `ranks_per_split`): one process's gradient,
every batch shared, the leader alone writing, and a killed team rank resuming its split."""
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import textwrap

from ipiqa.data import read_agiqa3k, split_indices
from ipiqa.training import TrainConfig, Trainer, make_splits
from torchrun_helpers import toy_dir, CFG, DRIVER, assert_same_results, cli_args, launch, steps_per_epoch


# Two ranks, one model: each steps on its half of every batch, DDP averages the gradients (`Trainer(ddp_group=...)`)
TEAM_STEP = textwrap.dedent('''
    import os, sys, torch, torch.nn as nn, torch.nn.functional as F, torch.distributed as dist
    from ipiqa.training import Trainer, ShardedBatches
    dist.init_process_group('gloo'); rank = dist.get_rank()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2))
    x, y = torch.randn(22, 4), torch.randn(22, 2)
    t = Trainer(model, lambda m, b: F.mse_loss(m(b['x']), b['y']), 1e-2, amp=False, ddp_group=dist.group.WORLD)
    for epoch in range(2):
        for b in ShardedBatches(torch.utils.data.BatchSampler(range(22), 8, False), rank, 2): t.step(dict(x=x[b], y=y[b]))
    torch.save(model.state_dict(), os.path.join(sys.argv[1], f'rank{rank}.pt'))
    dist.destroy_process_group()
''')


def test_team_step_is_one_process_step(tmp_path):
    (tmp_path/'team.py').write_text(TEAM_STEP)
    launch([str(tmp_path)], nproc=2, script=str(tmp_path/'team.py'))
    torch.manual_seed(0)   # the same model and data in this process, whole batches of 8, 8 and 6
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2))
    x, y = torch.randn(22, 4), torch.randn(22, 2)
    t, w0 = Trainer(model, lambda m, b: F.mse_loss(m(b['x']), b['y']), 1e-2, amp=False), model[0].weight.detach().clone()
    for epoch in range(2):
        for b in torch.utils.data.BatchSampler(range(22), 8, False): t.step(dict(x=x[b], y=y[b]))
    ranks = [torch.load(tmp_path/f'rank{r}.pt') for r in (0, 1)]
    for k, v in model.state_dict().items():
        assert torch.equal(ranks[0][k], ranks[1][k])                 # the team's two copies stay one model
        torch.testing.assert_close(ranks[0][k], v, rtol=0, atol=1e-6)  # and it is the one-process model (float sums aside)
    assert (model[0].weight - w0).abs().max() > 1e-2                  # it did train


@pytest.fixture(scope='module')
def team_run(toy_dir, tmp_path_factory):
    "An uninterrupted `--ranks_per_split 2` run on 2 processes: its folder, stdout and each rank's steps and rows."
    d = tmp_path_factory.mktemp('team'); (d/'steps').mkdir(); (d/'driver.py').write_text(DRIVER)
    r = launch(cli_args(toy_dir, d/'run') + ['--ranks_per_split', '2'], nproc=2, script=str(d/'driver.py'), STEPS_DIR=str(d/'steps'))
    return d/'run', r.stdout, {p.name: int(p.read_text()) for p in (d/'steps').iterdir()}


def test_team_trains_each_split(toy_dir, team_run):
    "`--ranks_per_split 2` on 2 processes: one team trains both splits, each rank on half of every batch; the leader alone writes."
    out, stdout, got = team_run
    ds = read_agiqa3k(toy_dir); sp = make_splits(TrainConfig(**CFG).resolved(), ds)
    n_rows = [len(split_indices(sp, ds.table, s, 'train')) for s in (0, 1)]
    steps = CFG['epochs'] * sum(steps_per_epoch(toy_dir, s) for s in (0, 1))
    assert got['rank0'] == got['rank1'] == steps                              # both ranks step on every batch of both splits
    assert got['rows0'] + got['rows1'] == CFG['epochs'] * sum(n_rows) and abs(got['rows0'] - got['rows1']) <= steps
    m = pd.read_csv(out/'metrics.csv')
    assert sorted(m.split.unique()) == [0, 1] and np.isfinite(m.srcc).all()
    assert stdout.count('plcc_logistic') == 1
    assert sorted(p.name for p in (out/'split1').iterdir()) == ['environment.json', 'history.csv', 'metrics.csv', 'model.pt', 'predictions.csv']  # the leader alone writes
    h = pd.read_csv(out/'split0'/'history.csv')
    assert len(h) == CFG['epochs'] and np.isfinite(h.train_loss).all()


def test_killed_team_rank_resumes_its_split(toy_dir, team_run, tmp_path):
    "A team's second rank dies in split 1's second epoch; the relaunch trains only that epoch, on both ranks, and ends where the uninterrupted run did."
    out, steps = tmp_path/'run', {s: steps_per_epoch(toy_dir, s) for s in (0, 1)}
    (tmp_path/'steps').mkdir(); (tmp_path/'driver.py').write_text(DRIVER)
    args, env = cli_args(toy_dir, out) + ['--ranks_per_split', '2'], dict(STEPS_DIR=str(tmp_path/'steps'))
    r = launch(args, nproc=2, script=str(tmp_path/'driver.py'), check=False, KILL_RANK='1', KILL_STEP=str(CFG['epochs'] * steps[0] + steps[1] + 2), **env)
    assert r.returncode != 0 and (out/'split0'/'metrics.csv').is_file() and not (out/'split1'/'metrics.csv').exists()
    assert torch.load(out/'split1'/'state.pt', weights_only=False)['epoch'] == 1   # the leader saved split 1 after its first epoch
    mtime = (out/'split0'/'model.pt').stat().st_mtime_ns

    launch(args, nproc=2, script=str(tmp_path/'driver.py'), **env)
    assert {p.name: int(p.read_text()) for p in (tmp_path/'steps').glob('rank*')} == {'rank0': steps[1], 'rank1': steps[1]}
    assert (out/'split0'/'model.pt').stat().st_mtime_ns == mtime and not (out/'split1'/'state.pt').exists()
    assert_same_results(out, team_run[0])
