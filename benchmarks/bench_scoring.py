"""Scoring speed: images/s of `ipiqa.scoring.Scorer` against the per-image path of the IP-IQA authors' release, in one run.

Ours: the model as `Scorer.load` loads it (batch norm folded into the convolutions, channels_last), each distinct
prompt's text feature computed once per call (truncated to its own tokens), images sorted by prompt,
`torch.inference_mode`. Per-image: the text tower re-run for every image over all 77 token positions, and the
attention pools projecting every token (`bench_ipiqa.tokenwise`), as the authors' release does. Both decode the
same PNG files in a thread pool and run the same trunk; the script checks that they give the same scores.
Random-init weights: the compute is the same as with OpenAI's. Prints the figures, asserts nothing.

    python benchmarks/bench_scoring.py                          # CPU, RN50 IP-IQA, 224 and 512 px, 2 prompts x 10 images
    python benchmarks/bench_scoring.py --n-prompts 8 --threads 8
    python benchmarks/bench_scoring.py --device cuda --n-prompts 20 --batch-size 40
"""
import argparse, copy, os, tempfile, time
os.environ.setdefault('TQDM_DISABLE', '1')

import numpy as np
import torch
import torch.nn as nn

from ipiqa.data import load_images, make_toy_agiqa, read_agiqa3k
from ipiqa.model import build_ipiqa, inference_model
from ipiqa.scoring import Scorer
from ipiqa.training import TrainConfig, Trained, autocast, get_method
from bench_ipiqa import tokenwise


class Full77(nn.Module):
    "The release's prompt path: the text tower over all 77 token positions, once per image (no truncation, no reuse)."
    def __init__(self, text): super().__init__(); self.text = text
    def tokenize(self, prompts): return self.text.tokenize(prompts)
    def forward(self, tokens):
        t, eot = self.text, tokens.argmax(-1)
        x = t.token_embedding(tokens)
        if t.qa is not None:
            is_eot = torch.arange(tokens.shape[1], device=tokens.device)[None] == eot[:, None]
            x = torch.where(is_eot[..., None], t.qa.to(x.dtype), x)
        x = t.transformer(x + t.positional_embedding.to(x.dtype), attn_mask=t.attn_mask)
        return t.ln_final(x)[torch.arange(len(x), device=x.device), eot] @ t.text_projection


@torch.no_grad()
def per_image(model, paths, prompts, size, batch_size, workers, device, amp):
    "Scores by the per-image path: decode, then each batch's images with one 77-token prompt row per image, token-wise pools."
    images, tokens = load_images(paths, size, workers), model.tokenize(prompts)
    text, model.text = model.text, Full77(model.text)
    pools = [tokenwise(p) for p in (model.image.attnpool, model.cross_pool)]
    try:
        out = []
        for i in range(0, len(paths), batch_size):
            t = tokens[i:i + batch_size].to(device)
            with autocast(device, amp): out.append(model(images[i:i + batch_size].to(device), t, torch.arange(len(t), device=device)).float().cpu())
        return torch.cat(out).numpy()
    finally:
        model.text = text
        for p in pools: del p.forward   # the class's own order again


def timed(fn, device):
    if device.type == 'cuda': torch.cuda.synchronize()
    t = time.perf_counter(); out = fn()
    if device.type == 'cuda': torch.cuda.synchronize()
    return time.perf_counter() - t, out


def main(a):
    if a.threads: torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    with tempfile.TemporaryDirectory() as d:
        ds = read_agiqa3k(make_toy_agiqa(d, n_prompts=a.n_prompts, size=512))
        paths, prompts = [str(p) for p in ds.paths()], ds.table['prompt'].tolist()
        print(f"# {a.arch} IP-IQA (random init, [QA] token) on {device}, {torch.get_num_threads()} threads; {len(paths)} toy PNGs (512 px), "
              f"{len(set(prompts))} distinct prompts, batch {a.batch_size}{', bf16 autocast' if a.amp else ''}")
        for size in a.sizes:
            torch.manual_seed(0)
            model = build_ipiqa(a.arch, None, n_outputs=2, image_size=size, device=device).eval()
            cfg = TrainConfig(method='ipiqa', arch=a.arch, image_size=size, amp=a.amp)
            folded = inference_model(copy.deepcopy(model))   # as `Scorer.load` loads a checkpoint: batch norm folded, channels_last
            scorer = Scorer([Trained(folded, cfg, ['mos_quality', 'mos_align'], get_method('ipiqa'))], source='random init',
                            batch_size=a.batch_size, num_workers=a.workers)
            w = len(paths) if device.type == 'cuda' else 2      # warm-up (on CUDA: every batch shape, cuDNN's choices)
            scorer(paths[:w], prompts[:w]); per_image(model, paths[:w], prompts[:w], size, a.batch_size, a.workers, device, a.amp)
            t_ours, ours = timed(lambda: scorer(paths, prompts).to_numpy(), device)
            t_per, per = timed(lambda: per_image(model, paths, prompts, size, a.batch_size, a.workers, device, a.amp), device)
            n = len(paths)
            print(f"{size} px: ours {n / t_ours:6.2f} images/s ({t_ours:.1f} s) | per-image 77-token text {n / t_per:6.2f} images/s "
                  f"({t_per:.1f} s) | ratio {t_per / t_ours:.2f}x | max |Δ score| {np.abs(ours - per).max():.1e} (scores' spread {per.std():.1e})")


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--arch', default='RN50', help='CLIP ResNet (random init)')
    p.add_argument('--sizes', type=int, nargs='+', default=[224, 512], help='input sides in px')
    p.add_argument('--n-prompts', type=int, default=2, help='toy prompts, 10 images each (default 2: 20 images)')
    p.add_argument('--batch-size', type=int, default=10)
    p.add_argument('--workers', type=int, default=2, help='decoding threads')
    p.add_argument('--threads', type=int, default=0, help='torch threads (0: torch default)')
    p.add_argument('--device', default='cpu')
    p.add_argument('--amp', action='store_true', help='bf16 autocast (CUDA)')
    main(p.parse_args())
