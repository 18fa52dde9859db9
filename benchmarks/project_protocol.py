"""The AGIQA-3k protocol's wall time (10 splits x 100 epochs) projected from a short run of the real training loop.

    python benchmarks/project_protocol.py RUN_DIR [--processes 2]
    python benchmarks/project_protocol.py RUN_DIR --processes 1 --epochs 50     # CLIP-AGIQA's protocol: 50 epochs per split

RUN_DIR is a `python -m ipiqa.training` run folder, made as benchmarks/gpu_paper_size.sh makes it: under torchrun with
`--processes` ranks, rank r training splits r, r+N, ...; each split's `history.csv` holds an epoch's `seconds`, and
`finished.txt` the time each split's `metrics.csv` was written and the launch time (`start`). A rank's first split
is its cold one (the process starts, decodes the images, compiles the trunk); each later split costs what the measured
later ones cost (building the model, compiling again from the process's cache, training, scoring its test part).
The missing epochs are added at the steady pace (the median epoch after each split's first), scaled from the run's
training images per split to AGIQA-3k's 2,385. Prints figures, asserts nothing.
"""
import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from bench_ipiqa import AGIQA3K   # the protocol's sizes, as bench_ipiqa projects them


def project(run, processes, protocol_epochs=AGIQA3K['epochs']):
    run = Path(run)
    marks = dict((line.split() + [None])[:2] for line in (run / 'finished.txt').read_text().splitlines() if line.strip())
    unfinished = sorted(k for k, t in marks.items() if t is None)
    if unfinished: raise ValueError(f"{run}: {', '.join(unfinished)} wrote no metrics.csv (finished.txt has no time for it): the run did not finish them")
    start = float(marks.pop('start'))
    splits = sorted(int(k.removeprefix('split')) for k in marks)
    finished = {k: float(marks[f'split{k}']) for k in splits}
    hist = {k: pd.read_csv(run / f'split{k}' / 'history.csv') for k in splits}
    epochs = {len(h) for h in hist.values()}
    if len(epochs) != 1: raise ValueError(f"splits of {run} trained different numbers of epochs: { {k: len(h) for k, h in hist.items()} }")
    epochs = epochs.pop()
    parts = pd.read_csv(run / 'splits.csv')
    n_train = int(((parts.split == splits[0]) & (parts.part == 'train')).sum())
    scale = int(AGIQA3K['images'] * AGIQA3K['train']) / n_train
    steady = float(np.median(np.concatenate([h['seconds'].to_numpy()[1:] for h in hist.values()]))) * scale
    lines, per_rank = [], []
    for r in range(processes):
        mine = [k for k in splits if k % processes == r]
        spans = np.diff([start] + [finished[k] for k in mine])   # each split's wall time, launch to its metrics
        cold, warm = spans[0], (np.median(spans[1:]) if len(spans) > 1 else spans[0])
        n_splits = len(range(r, AGIQA3K['splits'], processes))
        more = protocol_epochs - epochs
        total = cold + more * steady + (n_splits - 1) * (warm + more * steady)
        per_rank.append(total)
        lines.append(f"rank {r}: splits {mine}: {', '.join(f'{s:.1f}' for s in spans)} s each (launch to metrics); "
                     f"first epochs {', '.join(f'{hist[k].seconds.iloc[0]:.1f}' for k in mine)} s; "
                     f"AGIQA-3k: {n_splits} splits -> {total / 3600:.2f} h")
    print(f"# {run}: {len(splits)} splits x {epochs} epochs, {processes} at once, {n_train} training images per split; "
          f"steady epoch {steady:.2f} s per split at AGIQA-3k's size (median over splits of epochs 2+)")
    print('\n'.join(lines))
    print(f"AGIQA-3k protocol ({AGIQA3K['splits']} splits x {protocol_epochs} epochs), projected: {max(per_rank) / 3600:.2f} h "
          f"(the slowest rank; gathering the results after it is not counted)")
    return max(per_rank)


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('run'); p.add_argument('--processes', type=int, default=2)
    p.add_argument('--epochs', type=int, default=AGIQA3K['epochs'], help="epochs per split of the protocol (IP-IQA's paper: 100; CLIP-AGIQA's: 50)")
    a = p.parse_args()
    project(a.run, a.processes, a.epochs)
