"""Cross-validation under torchrun on CPU (2 gloo processes): the splits spread over the ranks give one process's metrics,
a rank killed mid-split resumes on the next launch without recomputing a finished split, and a team of ranks
shares one split (`ranks_per_split`) with one process's gradient."""
import os, subprocess, sys, textwrap

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ipiqa.data import read_agiqa3k, split_indices
from ipiqa.toyworld import make_toy_agiqa
from ipiqa.training import TrainConfig, Trainer, make_splits

CFG = dict(n_splits=2, epochs=2, image_size=64, batch_size=8, num_workers=1, save_share=1.0)  # default method ipiqa on the toy CLIP; state after every epoch
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'TQDM_DISABLE': '1'}

# torchrun runs this instead of `-m ipiqa.training` where the test needs to count training steps or kill a rank
DRIVER = textwrap.dedent('''
    import atexit, os, signal, sys, time
    from pathlib import Path
    import ipiqa.training as T
    rank, out, n, rows, step = int(os.environ['RANK']), Path(sys.argv[sys.argv.index('--out_dir') + 1]), [0], [0], T.Trainer.update
    def counted(self, batch):
        n[0] += 1; rows[0] += len(batch['targets'])
        if rank == int(os.environ.get('KILL_RANK', -1)) and n[0] == int(os.environ['KILL_STEP']):
            while not (out/'split0'/'metrics.csv').is_file() or (out/'split0'/'state.pt').exists(): time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGKILL)  # split 0 (rank 0's) is finished; this rank dies mid-split, as a killed job does
        return step(self, batch)
    T.Trainer.update = counted  # every training step of an epoch goes through Trainer.update
    atexit.register(lambda: (Path(os.environ['STEPS_DIR'], f'rank{rank}').write_text(str(n[0])), Path(os.environ['STEPS_DIR'], f'rows{rank}').write_text(str(rows[0]))))
    T.main()
''')


def cli_args(toy_dir, out):
    return ['--data_dir', str(toy_dir), '--out_dir', str(out), *[a for k, v in CFG.items() for a in (f'--{k}', str(v))]]


def launch(args, nproc=None, script=None, check=True, **env):
    "`python -m ipiqa.training args`, or under torchrun with `nproc` processes (running `script` if given)."
    cmd = ([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', str(nproc), *([script] if script else ['-m', 'ipiqa.training'])]
           if nproc else [sys.executable, '-m', 'ipiqa.training'])
    r = subprocess.run(cmd + args, capture_output=True, text=True, timeout=240, env={**ENV, **env})
    if check: assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


@pytest.fixture(scope='module')
def toy_dir(tmp_path_factory):
    return make_toy_agiqa(tmp_path_factory.mktemp('toy'), n_prompts=5)


@pytest.fixture(scope='module')
def two_ranks(toy_dir, tmp_path_factory):
    "An uninterrupted 2-process run: its folder and stdout."
    out = tmp_path_factory.mktemp('two')
    return out, launch(cli_args(toy_dir, out), nproc=2).stdout


def steps_per_epoch(toy_dir, split):
    ds = read_agiqa3k(toy_dir)
    return int(np.ceil(len(split_indices(make_splits(TrainConfig(**CFG).resolved(), ds), ds.table, split, 'train')) / CFG['batch_size']))


def test_two_ranks_equal_one_process(toy_dir, two_ranks, tmp_path):
    out, stdout = two_ranks
    launch(cli_args(toy_dir, tmp_path/'one'))
    one, two = (pd.read_csv(d/'metrics.csv') for d in (tmp_path/'one', out))
    pd.testing.assert_frame_equal(one, two, check_exact=True)  # CPU, one thread, same seeds: bit for bit
    for f in ('summary.csv', 'predictions.csv', 'splits.csv'):
        pd.testing.assert_frame_equal(pd.read_csv(tmp_path/'one'/f), pd.read_csv(out/f), check_exact=True)
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
    pd.testing.assert_frame_equal(pd.read_csv(out/'metrics.csv'), pd.read_csv(two_ranks[0]/'metrics.csv'), check_exact=True)
    pd.testing.assert_frame_equal(pd.read_csv(out/'predictions.csv'), pd.read_csv(two_ranks[0]/'predictions.csv'), check_exact=True)


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
    assert sorted(p.name for p in (out/'split1').iterdir()) == ['history.csv', 'metrics.csv', 'model.pt', 'predictions.csv']
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
    pd.testing.assert_frame_equal(pd.read_csv(out/'metrics.csv'), pd.read_csv(team_run[0]/'metrics.csv'), check_exact=True)
