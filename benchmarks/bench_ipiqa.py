"""Speed and size figures for IP-IQA: prints them, asserts nothing.

    python benchmarks/bench_ipiqa.py                                  # CPU, RN50 at 224 px, batch 4
    python benchmarks/bench_ipiqa.py --device cuda --image-size 512 --batch-size 40 --amp   # the paper's setting

Random-init weights: the compute is the same as with OpenAI's.
"""
import argparse, os, tempfile, time
os.environ.setdefault('TQDM_DISABLE', '1')

import numpy as np
import torch

from ipiqa.data import load_images, make_toy_agiqa, read_agiqa3k
from ipiqa.model import batch_prompts, build_ipiqa
from ipiqa.training import Trainer, autocast, mos_loss

PROMPTS = ['a girl sitting on the bench, in the style of anime', 'a lighthouse on a cliff at dawn, oil painting',
           'an astronaut riding a horse on the moon, photorealistic, 4k, trending on artstation',
           'a cat', 'a bowl of ramen, studio ghibli style', 'a futuristic city skyline at night with neon lights']


def timed(fn, device, repeat, warmup=2):
    "Median seconds per call of `fn` after `warmup` calls (the first optimizer steps allocate state; one slow early step"
    " inflated a mean of 3 by ~10 % on CPU)."
    sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)
    for _ in range(warmup): fn()
    times = []
    for _ in range(repeat):
        sync(); t = time.perf_counter(); fn(); sync(); times.append(time.perf_counter() - t)
    return float(np.median(times))


def text_at_full_length(enc, tokens):
    "The text tower over all 77 positions, as the authors' release runs it (the [QA] swap left out: same compute)."
    x = enc.transformer(enc.token_embedding(tokens) + enc.positional_embedding, attn_mask=enc.attn_mask)
    return enc.ln_final(x)[torch.arange(len(x), device=x.device), tokens.argmax(-1)] @ enc.text_projection


def main(a):
    device = torch.device(a.device)
    torch.manual_seed(0)
    model = build_ipiqa(a.arch, None, n_outputs=2, image_size=a.image_size, device=device)
    n = lambda pred: sum(p.numel() for name, p in model.named_parameters() if pred(name, p))
    print(f"# {a.arch} IP-IQA at {a.image_size} px on {device}{' (bf16 autocast)' if a.amp else ''}")
    print(f"trainable parameters: {n(lambda k, p: p.requires_grad):,} "
          f"(text side {n(lambda k, p: p.requires_grad and k.startswith('text.')):,}; "
          f"frozen text tower {n(lambda k, p: not p.requires_grad):,})")

    table = model.tokenize(PROMPTS * (a.batch_size // len(PROMPTS) + 1))[: a.batch_size]
    ids = torch.arange(len(table))
    tokens, index = batch_prompts(table.to(device), ids.to(device))
    with torch.no_grad(), autocast(device, a.amp):
        full = timed(lambda: text_at_full_length(model.text, table.to(device)), device, a.repeat)  # encode() would truncate too
        trunc = timed(lambda: model.text.encode(tokens), device, a.repeat)
    print(f"text tower, {len(table)} prompts: 77 tokens {full * 1e3:.1f} ms, truncated to {tokens.shape[1]} tokens "
          f"{trunc * 1e3:.1f} ms ({full / trunc:.1f}x)")

    with tempfile.TemporaryDirectory() as d:
        ds = read_agiqa3k(make_toy_agiqa(d, n_prompts=10, size=512))
        t = time.perf_counter(); load_images(ds.paths(), a.image_size, num_workers=a.workers)
        dt = time.perf_counter() - t
    print(f"decode + resize once: {dt / len(ds) * 1e3:.2f} ms/image ({a.workers} threads); "
          f"AGIQA-3k (2,982 images) ≈ {dt / len(ds) * 2982:.0f} s per run instead of per epoch")

    batch = dict(images=torch.randint(0, 256, (a.batch_size, 3, a.image_size, a.image_size), dtype=torch.uint8),
                 tokens=tokens.cpu(), prompt_index=index.cpu(), targets=torch.rand(a.batch_size, 2) * 5)
    trainer = Trainer(model, mos_loss, lr=1e-5, device=device, amp=a.amp)
    if device.type == 'cuda': torch.cuda.reset_peak_memory_stats()
    step = timed(lambda: trainer.step(batch), device, a.repeat)
    mem = f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if device.type == 'cuda' else ''
    print(f"train step, batch {a.batch_size}: {step * 1e3:.0f} ms ({a.batch_size / step:.1f} images/s){mem}")
    steps = int(np.ceil(2982 * 0.8 / a.batch_size))
    print(f"AGIQA-3k epoch ({steps} steps) ≈ {steps * step:.0f} s; 100 epochs × 10 splits ≈ {steps * step * 1000 / 3600:.1f} h")


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--arch', default='RN50'); p.add_argument('--device', default='cpu')
    p.add_argument('--image-size', type=int, default=224); p.add_argument('--batch-size', type=int, default=4)
    p.add_argument('--amp', action='store_true'); p.add_argument('--repeat', type=int, default=3)
    p.add_argument('--workers', type=int, default=2)
    main(p.parse_args())
