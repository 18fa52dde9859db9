"""Cross-validation under torchrun on CPU (2 gloo processes): the splits spread over the ranks give one process's metrics,
and a rank killed mid-split resumes on the next launch without recomputing a finished split."""
import os, subprocess, sys, textwrap

import numpy as np
import pandas as pd
import pytest
import torch

from ipiqa.data import read_agiqa3k, split_indices
from ipiqa.toyworld import make_toy_agiqa
from ipiqa.training import TrainConfig, make_splits

CFG = dict(n_splits=2, epochs=2, image_size=64, batch_size=8, num_workers=1, save_share=1.0)  # default method ipiqa on the toy CLIP; state after every epoch
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'TQDM_DISABLE': '1'}

# torchrun runs this instead of `-m ipiqa.training` where the test needs to count training steps or kill a rank
DRIVER = textwrap.dedent('''
    import atexit, os, signal, sys, time
    from pathlib import Path
    import ipiqa.training as T
    rank, out, n, step = int(os.environ['RANK']), Path(sys.argv[sys.argv.index('--out_dir') + 1]), [0], T.Trainer.update
    def counted(self, batch):
        n[0] += 1
        if rank == int(os.environ.get('KILL_RANK', -1)) and n[0] == int(os.environ['KILL_STEP']):
            while not (out/'split0'/'metrics.csv').is_file() or (out/'split0'/'state.pt').exists(): time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGKILL)  # split 0 (rank 0's) is finished; this rank dies mid-split, as a killed job does
        return step(self, batch)
    T.Trainer.update = counted  # every training step of an epoch goes through Trainer.update
    atexit.register(lambda: Path(os.environ['STEPS_DIR'], f'rank{rank}').write_text(str(n[0])))
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
    assert {p.name: int(p.read_text()) for p in (tmp_path/'steps').iterdir()} == {'rank0': 0, 'rank1': steps[1]}  # split 1: its last epoch only
    assert (out/'split0'/'model.pt').stat().st_mtime_ns == mtime and not (out/'split1'/'state.pt').exists()
    pd.testing.assert_frame_equal(pd.read_csv(out/'metrics.csv'), pd.read_csv(two_ranks[0]/'metrics.csv'), check_exact=True)
    pd.testing.assert_frame_equal(pd.read_csv(out/'predictions.csv'), pd.read_csv(two_ranks[0]/'predictions.csv'), check_exact=True)
