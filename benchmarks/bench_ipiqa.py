"""Training and scoring speed of IP-IQA: ipiqa's path against the same model configured as the authors' release
configures it, at 224 and 512 px, and the projected wall time of the paper's protocol. Prints figures, asserts nothing.

    python benchmarks/bench_ipiqa.py                                          # CPU: RN50, 224 and 512 px, batch 8, fp32
    python benchmarks/bench_ipiqa.py --device cuda --batch-size 40 --amp      # the paper's setting: batch 40, bf16
    python benchmarks/bench_ipiqa.py --device cuda --batch-size 40 --amp --compile
    python benchmarks/bench_ipiqa.py --device cuda --batch-size 40 --amp --compile --sizes 512 --processes 2   # + two splits sharing the GPU

Both sides are the same network (CLIP-RN50 trunk, attention pool, cross-modality pool, random init: the compute is
the same as with OpenAI's weights) on the same uint8 images and prompts; they differ in how they are configured:

- ipiqa: the images decoded once into a uint8 cache, a batch an index into it (`IQAData`); each distinct prompt of a
  batch through the frozen text tower once, truncated after the longest [eot] (`batch_prompts`), only the [QA] vector
  trainable on the text side; a linear head; the fast path as the harness sets it (`ipiqa.training.fast_path`: on CUDA
  the cache on the GPU, channels_last and fused Adam; off on CPU unless `--fast True`); `--compile` adds `torch.compile`
  of the trunk. It scores with the model as the scorer loads it (`ipiqa.model.inference_model`: batch norm folded into
  the convolutions, channels_last).
- the authors' release (Coobiw/IP-IQA, with its [QA] token on): every image's prompt through the text tower at all 77
  positions; the whole 49,408 x 512 token-embedding table trainable (their [QA] token is a row of it), so gradients run
  back through the frozen text transformer; the positional embedding and text projection trainable; an MLP head;
  float images made on the host and copied to the device every step (pinned); default Adam; contiguous layout.
"""
import argparse, copy, dataclasses, itertools, logging, os, time
os.environ.setdefault('TQDM_DISABLE', '1')

import numpy as np
import torch
import torch.multiprocessing as mp
import torch.nn as nn

from ipiqa.model import build_ipiqa, inference_model
from ipiqa.scoring import image_set, prefill
from ipiqa.training import IQAData, Trainer, TrainConfig, autocast, fast_data, fast_model, fast_path, mos_loss, predict
from ipiqa.views import ResizedView

SUBJECTS = ['a girl sitting on the bench', 'a lighthouse on a cliff at dawn', 'an astronaut riding a horse on the moon',
            'a cat', 'a bowl of ramen', 'a futuristic city skyline at night with neon lights', 'an old man reading a newspaper',
            'two dogs playing in the snow']
STYLES = ['in the style of anime', 'oil painting', 'photorealistic, 4k, trending on artstation', 'studio ghibli style',
          'watercolor', 'highly detailed digital art, octane render']
AGIQA3K = dict(images=2982, train=0.8, splits=10, epochs=100)   # the paper's protocol on AGIQA-3k


def prompts(n):
    "`n` distinct AGIQA-like prompts (6 to 20 tokens)."
    pairs = itertools.cycle(itertools.product(SUBJECTS, STYLES))
    return [f'{s}, {t}' + (f', variant {i // 48}' if i >= 48 else '') for i, (s, t) in zip(range(n), pairs)]


def timed(fn, device, repeat, warmup=2):
    "Median seconds per call of `fn` after `warmup` calls (the first optimizer steps allocate their state), each call"
    " synchronised on CUDA."
    sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)
    for _ in range(warmup): fn()
    times = []
    for _ in range(repeat):
        sync(); t = time.perf_counter(); fn(); sync(); times.append(time.perf_counter() - t)
    return float(np.median(times))


class FullLengthText(nn.Module):
    "The authors' text side: each image's own prompt through CLIP's text tower at all 77 positions, embedding table, positions and projection trainable."
    def __init__(self, enc):
        super().__init__()
        self.enc = enc
        for p in (enc.token_embedding.weight, enc.positional_embedding, enc.text_projection): p.requires_grad_(True)
    def tokenize(self, prompts): return self.enc.tokenize(prompts)
    def forward(self, tokens):
        e = self.enc
        x = e.transformer(e.token_embedding(tokens) + e.positional_embedding, attn_mask=e.attn_mask)
        return e.ln_final(x)[torch.arange(len(x), device=x.device), tokens.argmax(-1)] @ e.text_projection


class Batches:
    "Endless batches for one side: ipiqa's from the harness's loader, the authors' as float host tensors copied every time."
    def __init__(self, data, rows, batch_size, device, authors, train):
        self.data, self.rows, self.bs, self.device, self.authors, self.train = data, rows, batch_size, device, authors, train
        if authors:
            host = data.images.float() / 255
            self.host = host.pin_memory() if device.type == 'cuda' else host
        self.it = self._gen()
    def _gen(self):
        for epoch in itertools.count():
            if self.authors:
                order = torch.randperm(len(self.rows), generator=torch.Generator().manual_seed(epoch)) if self.train else torch.arange(len(self.rows))
                for i in range(0, len(order) - self.bs + 1, self.bs):
                    r = torch.as_tensor(self.rows)[order[i:i + self.bs]]
                    yield dict(images=self.host[r].to(self.device, non_blocking=True), tokens=self.data.token_table[self.data.prompt_ids[r]].to(self.device),
                               prompt_index=torch.arange(len(r), device=self.device), targets=self.data.targets[r].to(self.device),
                               rows=r, owner=torch.arange(len(r)))
            else:
                for b in self.data.loader(self.rows, self.bs, shuffle=self.train, seed=epoch, train=self.train):
                    if len(b['rows']) == self.bs: yield b
    def __next__(self): return next(self.it)


def build(arch, size, device, authors):
    model = build_ipiqa(arch, None, n_outputs=2, image_size=size, qa_token=not authors, head='mlp' if authors else 'linear')
    if authors: model.text = FullLengthText(model.text)
    return model.to(device)


def setup(args, size, device, authors, base_pixels, texts):
    "(model, trainer, data, rows, cfg) of one side at `size` px."
    torch.manual_seed(0)
    model = build(args.arch, size, device, authors)
    cfg = TrainConfig(device=str(device), torch_compile=args.compile, **dict.fromkeys(('device_cache', 'channels_last', 'fused_adam'), args.fast))
    if authors: cfg = dataclasses.replace(cfg, device_cache=False, channels_last=False, fused_adam=False, torch_compile=False)
    fast_model(model, cfg, device)
    ds = prefill(image_set(texts, ['mos_quality', 'mos_align']), ResizedView(size), base_pixels)
    data = IQAData(ds, size, model.tokenize, args.workers)
    data.targets = torch.rand(len(texts), 2) * 5
    data, rows = fast_data(data, cfg), np.arange(len(texts))
    trainer = Trainer(model, mos_loss, 1e-5, device, args.amp, fused=fast_path(cfg, device)['fused_adam'])
    return model, trainer, data, rows, cfg


def side(args, size, device, authors, base_pixels, texts):
    "(train s/step, score s/image, trainable parameters, peak GiB) for one side at `size` px."
    model, trainer, data, rows, cfg = setup(args, size, device, authors, base_pixels, texts)
    if device.type == 'cuda': torch.cuda.reset_peak_memory_stats(device)
    train = Batches(data, rows, args.batch_size, device, authors, True)
    step = timed(lambda: trainer.step(next(train)), device, args.repeat)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == 'cuda' else float('nan')
    test, k = Batches(data, rows, args.batch_size, device, authors, False), 4
    scorer = model if authors else inference_model(copy.deepcopy(model))  # ipiqa scores as `Scorer.load` loads: batch norm folded, channels_last
    def score():  # k test batches through ipiqa's `predict`, or the authors' forward
        batches = [next(test) for _ in range(k)]
        with torch.inference_mode():
            if not authors: return predict(scorer, batches, device, args.amp)
            model.eval()
            with autocast(device, args.amp): return [model(b['images'], b['tokens'], b['prompt_index']).float().cpu() for b in batches]
    per_image = timed(score, device, max(1, args.repeat // k), warmup=1) / (k * args.batch_size)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return step, per_image, n_train, peak, [k for k, on in fast_path(cfg, device).items() if on]


def _sharing(args, size, texts, n, barrier, queue):
    "One of `n` ipiqa training loops on one device: its images/s over a `--seconds` window that all start together."
    logging.getLogger().setLevel(logging.ERROR)
    device = torch.device(args.device)
    if device.type == 'cpu': torch.set_num_threads(max(1, (args.threads or torch.get_num_threads()) // n))
    sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)
    model, trainer, data, rows, cfg = setup(args, size, device, False, pixels(len(texts), size), texts)
    train = Batches(data, rows, args.batch_size, device, False, True)
    for _ in range(3): trainer.update(next(train))  # compiled, optimizer state allocated
    sync(); barrier.wait()
    t, steps = time.perf_counter(), 0
    while time.perf_counter() - t < args.seconds:
        for _ in range(5): trainer.update(next(train))
        sync(); steps += 5
    queue.put(steps * args.batch_size / (time.perf_counter() - t))


def sharing(args, size, texts, n):
    "Training images/s of each of `n` ipiqa loops running at once on one device (several splits at a time, as"
    " `torchrun --nproc_per_node` with more processes than GPUs runs them), each in its own process."
    ctx = mp.get_context('spawn')
    barrier, queue = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_sharing, args=(args, size, texts, n, barrier, queue)) for _ in range(n)]
    for p in procs: p.start()
    rates = [queue.get() for _ in procs]
    for p in procs: p.join()
    return rates


def pixels(n, size):
    "`n` random uint8 images of `size` px, the same on every call."
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(size))


def protocol_hours(step, score_per_image, batch_size):
    "Wall time of AGIQA-3k's protocol (10 splits x 100 epochs, the last epoch's model scored on the test part) from a step and a scoring time."
    n_train = int(AGIQA3K['images'] * AGIQA3K['train'])
    per_split = AGIQA3K['epochs'] * np.ceil(n_train / batch_size) * step + (AGIQA3K['images'] - n_train) * score_per_image
    return AGIQA3K['splits'] * per_split / 3600


def main(a):
    logging.getLogger().setLevel(logging.ERROR)   # not open_clip's 'initialized randomly' for every model: random init is the point
    device = torch.device(a.device)
    if device.type == 'cpu': torch.set_num_threads(a.threads or torch.get_num_threads())
    texts = prompts(a.images or 4 * a.batch_size)
    print(f"# {a.arch} IP-IQA on {device}{' (bf16 autocast)' if a.amp else ' (fp32)'}, batch {a.batch_size}, "
          f"{len(texts)} images of distinct prompts, random init; torch {torch.__version__}"
          + (f", {torch.get_num_threads()} threads" if device.type == 'cpu' else f", {torch.cuda.get_device_name(device)}"))
    rows = []
    for size in a.sizes:
        for authors in (True, False):
            step, score, n_train, peak, parts = side(a, size, device, authors, pixels(len(texts), size), texts)
            rows.append(dict(size=size, side="authors' release" if authors else 'ipiqa', step=step, score=score, n_train=n_train, peak=peak,
                             hours=protocol_hours(step, score, a.batch_size)))
            r = rows[-1]
            print(f"{size} px | {r['side']:<16} | train step {step * 1e3:8.1f} ms = {a.batch_size / step:7.1f} images/s | "
                  f"scoring {1 / score:7.1f} images/s | trainable {n_train:,}" + (f" | peak {peak:.2f} GiB" if device.type == 'cuda' else '')
                  + ('' if authors else f" | fast path: {', '.join(parts) or 'off'}"), flush=True)
        them, us = rows[-2], rows[-1]
        print(f"{size} px | ipiqa / authors': training {them['step'] / us['step']:.2f}x, scoring {them['score'] / us['score']:.2f}x | "
              f"AGIQA-3k protocol (10 splits x 100 epochs) projected: authors' {them['hours']:.2f} h, ipiqa {us['hours']:.2f} h", flush=True)
        if a.processes > 1:  # the same loop timed alike (a wait for the device every 5 steps) with 1 process and with N
            for n in (1, a.processes):
                rates = sharing(a, size, texts, n)
                print(f"{size} px | ipiqa, {n} split{'s' if n > 1 else ''} at once on one device | training {sum(rates):7.1f} images/s in all"
                      + (f" ({', '.join(f'{r:.1f}' for r in rates)})" if n > 1 else '') + " | AGIQA-3k protocol projected: "
                      f"{protocol_hours(a.batch_size / sum(rates), us['score'], a.batch_size):.2f} h", flush=True)


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--arch', default='RN50'); p.add_argument('--device', default='cpu')
    p.add_argument('--sizes', type=int, nargs='+', default=[224, 512]); p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--images', type=int, default=None, help='images (and distinct prompts) in the set; default 4 batches')
    p.add_argument('--amp', action='store_true', help='bf16 autocast (CUDA only; ~20x slower on CPU)')
    p.add_argument('--compile', action='store_true', help="torch.compile ipiqa's trunk (about a minute first)")
    p.add_argument('--fast', default=None, type=lambda s: s.lower() == 'true', metavar='True|False',
                   help="force ipiqa's fast path (cache on the device, channels_last, fused Adam) on or off; default: as the harness does, on for CUDA")
    p.add_argument('--repeat', type=int, default=3); p.add_argument('--workers', type=int, default=2)
    p.add_argument('--threads', type=int, default=None, help='CPU threads (default: torch\'s)')
    p.add_argument('--processes', type=int, default=1, help="also run this many ipiqa training loops at once on the device, as several splits "
                   "sharing one GPU under torchrun, and print their images/s in all")
    p.add_argument('--seconds', type=float, default=15, help='the window in which --processes loops are timed together')
    main(p.parse_args())
