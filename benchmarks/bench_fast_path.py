"""What each part of ipiqa's fast path buys on this machine: a training step of IP-IQA with channels_last and
fused Adam each on and off (`TrainConfig(channels_last=..., fused_adam=...)`, as the harness sets them), and with
both on but the attention pools computed token-wise (`bench_ipiqa.tokenwise`, the order CLIP's pool and the
authors' release use) instead of in ipiqa's cheaper order; the variants timed in turns. Prints figures, asserts
nothing.

    python benchmarks/bench_fast_path.py                                    # CLIP-RN50, 224 px, batch 8, CPU fp32
    python benchmarks/bench_fast_path.py --arch RN50-tiny --size 64 --batch-size 32 --repeat 10   # the toy preset
    python benchmarks/bench_fast_path.py --device cuda --amp --batch-size 40 --size 512

This is how `fast_path` decides its defaults (`None`): a part is on for a device where it is faster there. Each
round runs one step of every variant in alternating order, so the machine's drift slows them alike; a speed-up is
the median of the rounds' own ratios against the variant with both parts off, printed with their range.
"""
import argparse, logging, os
os.environ.setdefault('TQDM_DISABLE', '1')

import numpy as np
import torch

from bench_ipiqa import Batches, pixels, prompts, setup, timed

VARIANTS = {'neither': (False, False, False), 'channels_last': (True, False, False), 'fused Adam': (False, True, False),
            'both': (True, True, False), 'both, token-wise pools': (True, True, True)}   # (channels_last, fused Adam, token-wise pools)


def training_step(a, device, channels_last, fused_adam, tokenwise_pools, texts, base):
    "One training step of IP-IQA (random init) with these parts of the fast path, ready to call: `bench_ipiqa`'s ipiqa side."
    args = argparse.Namespace(arch=a.arch, compile=False, fast=None, amp=a.amp, workers=2, tokenwise_pools=tokenwise_pools)
    parts = dict(device_cache=False, channels_last=channels_last, fused_adam=fused_adam)
    model, trainer, data, rows, cfg = setup(args, a.size, device, False, base, texts, parts)
    batches = Batches(data, rows, a.batch_size, device, False, True)
    return lambda: trainer.step(next(batches))


def main(a):
    logging.getLogger().setLevel(logging.ERROR)   # open_clip's 'initialized randomly': random init is the point
    device = torch.device(a.device)
    if device.type == 'cpu' and a.threads: torch.set_num_threads(a.threads)
    texts = prompts(4 * a.batch_size)
    base = pixels(len(texts), a.size)
    steps = [training_step(a, device, *parts, texts, base) for parts in VARIANTS.values()]
    t = timed(steps, device, a.repeat)
    print(f"# {a.arch} IP-IQA training step on {device}{' (bf16 autocast)' if a.amp else ' (fp32)'}, {a.size} px, batch {a.batch_size}, "
          f"{a.repeat} rounds; torch {torch.__version__}" + (f", {torch.get_num_threads()} threads" if device.type == 'cpu' else ''))
    for j, name in enumerate(VARIANTS):
        x = t[:, 0] / t[:, j]
        print(f"{name:<22} | {np.median(t[:, j]) * 1e3:8.1f} ms | x{np.median(x):.2f} (rounds {x.min():.2f}-{x.max():.2f}) against neither", flush=True)
    x = t[:, -1] / t[:, -2]
    print(f"the pools' order: ipiqa's x{np.median(x):.2f} (rounds {x.min():.2f}-{x.max():.2f}) against token-wise, both parts on", flush=True)


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--arch', default='RN50'); p.add_argument('--device', default='cpu')
    p.add_argument('--size', type=int, default=224); p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--amp', action='store_true', help='bf16 autocast (CUDA only; ~20x slower on CPU)')
    p.add_argument('--repeat', type=int, default=5, help='timed rounds (one step of each variant per round)')
    p.add_argument('--threads', type=int, default=None, help="CPU threads (default: torch's)")
    main(p.parse_args())
