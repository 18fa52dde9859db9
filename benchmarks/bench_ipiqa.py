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
  trainable on the text side; a linear head; the fast path as the harness sets it (`ipiqa.training.fast_path`:
  channels_last and fused Adam, on CUDA also the cache on the GPU; `--fast False` turns it off); `--compile` adds `torch.compile`
  of the trunk, in training and in scoring (`ipiqa score --compile`). It scores as the scorer does (`ipiqa.scoring.Scorer`): the model as the scorer loads it
  (`ipiqa.model.inference_model`: batch norm folded into the convolutions, channels_last), and the prompts of a
  scoring call through the text tower before its batches, 64 per pass in order of length (`OncePerCall.prefill`).
- the authors' release (Coobiw/IP-IQA, with its [QA] token on): every image's prompt through the text tower at all 77
  positions; both attention pools projecting every token to a key and a value, as CLIP's `AttentionPool2d` does
  (ipiqa's `AttentionPool` computes the same function with the projections moved to the one query's side); the
  whole 49,408 x 512 token-embedding table trainable (their [QA] token is a row of it), so gradients run back through
  the frozen text transformer; the positional embedding and text projection trainable; an MLP head; float images
  made on the host and copied to the device every step (pinned); default Adam; contiguous layout.

By default every image has a prompt of its own, so the scorer's prefill saves the least it can; `--images-per-prompt
10` scores a set that shares its prompts as AGIQA-3k does (2,982 images of 300 prompts), while training batches keep
a prompt per image (a batch of 40 from AGIQA-3k's ~2,400 training images rarely repeats one).

The two sides are built side by side and timed in turns: each round runs one training step (one scoring call) of
each, in alternating order, and the figures are medians over the rounds. A ratio is the median of the rounds'
ratios, printed with their range. So the machine's drift (2 shared CPU cores have run a third slower from one hour
to the next) slows both sides alike instead of whichever happened to be timed second.
"""
import argparse, copy, dataclasses, itertools, logging, math, os, time, types
os.environ.setdefault('TQDM_DISABLE', '1')

import numpy as np
import torch
import torch.multiprocessing as mp
import torch.nn as nn

from ipiqa.model import build_ipiqa, inference_model
from ipiqa.scoring import image_set, once_per_call, predict_prefilled, prefill
from ipiqa.training import IQAData, Trainer, TrainConfig, autocast, fast_data, fast_model, fast_path, get_method, mos_loss
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


def timed(fns, device, repeat, warmup=2):
    "Seconds per call of each of `fns`, `repeat` rounds of one call each (their order alternating from round to"
    " round) after `warmup` rounds (the first optimizer steps allocate their state); each call synchronised on CUDA."
    " Taking turns, the calls share whatever the machine's speed does meanwhile, so their ratio round by round holds"
    " on a machine whose speed drifts (2 shared CPU cores: a third from one run to the next). Returns rounds x fns."
    sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)
    for _ in range(warmup):
        for fn in fns: fn()
    times = np.zeros((repeat, len(fns)))
    for r in range(repeat):
        for i in (range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))):
            sync(); t = time.perf_counter(); fns[i](); sync(); times[r, i] = time.perf_counter() - t
    return times


def tokenwise_forward(pool, x, query=None, need_weights=False):
    "`AttentionPool.forward` as CLIP's `AttentionPool2d`, and so the authors' release, computes it: every token projected"
    " to a key and a value, then read by the one query. The same function as ipiqa's order."
    t = pool.tokens(x)
    q = pool.q_proj(t[:, 0] if query is None else query)
    split = lambda z: z.unflatten(-1, (pool.heads, -1)).transpose(-3, -2)  # (N, h, T, d)
    attn = (split(q[:, None]) @ split(pool.k_proj(t)).transpose(-1, -2) / math.sqrt(q.shape[-1] // pool.heads)).softmax(-1)
    out = pool.c_proj((attn @ split(pool.v_proj(t))).transpose(-3, -2).flatten(-2)[:, 0])
    return (out, attn[:, :, 0]) if need_weights else out


def tokenwise(pool):
    "`pool` computing token-wise (`tokenwise_forward`), in place; a bound method, so a deep copy of it computes with its own weights."
    pool.forward = types.MethodType(tokenwise_forward, pool)
    return pool


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


def build(arch, size, device, authors, tokenwise_pools=False):
    model = build_ipiqa(arch, None, n_outputs=2, image_size=size, qa_token=not authors, head='mlp' if authors else 'linear')
    if authors: model.text = FullLengthText(model.text)
    if authors or tokenwise_pools:
        for pool in (model.image.attnpool, model.cross_pool): tokenwise(pool)
    return model.to(device)


def setup(args, size, device, authors, base_pixels, texts, parts=None):
    "(model, trainer, data, rows, cfg) of one side at `size` px; `parts`: fast-path fields of `TrainConfig` set one by one, over `args.fast`."
    torch.manual_seed(0)
    model = build(args.arch, size, device, authors, args.tokenwise_pools)
    cfg = TrainConfig(device=str(device), torch_compile=args.compile, **dict.fromkeys(('device_cache', 'channels_last', 'fused_adam'), args.fast))
    if parts: cfg = dataclasses.replace(cfg, **parts)
    if authors: cfg = dataclasses.replace(cfg, device_cache=False, channels_last=False, fused_adam=False, torch_compile=False)
    fast_model(model, cfg, device)
    data, rows = fast_data(iqa_data(model, size, texts, base_pixels, args.workers), cfg), np.arange(len(texts))
    trainer = Trainer(model, mos_loss, 1e-5, device, args.amp, fused=fast_path(cfg, device)['fused_adam'])
    return model, trainer, data, rows, cfg


def iqa_data(model, size, texts, base_pixels, workers):
    "The harness's data for `texts` (one image each, in order) on `base_pixels`, with random MOS."
    data = IQAData(prefill(image_set(texts, ['mos_quality', 'mos_align']), ResizedView(size), base_pixels), size, model.tokenize, workers)
    data.targets = torch.rand(len(texts), 2) * 5
    return data


def shared(texts, k):
    "`texts` with each prompt given to `k` images in a row (the first `len(texts) // k` prompts), as a dataset shares its prompts."
    return [texts[i // k] for i in range(len(texts))]


def side(args, size, device, authors, base_pixels, texts):
    "One side at `size` px, ready to time: its training step and scoring calls, trainable parameters, fast-path parts,"
    " and on CUDA its own peak memory (what it allocated on top of what was there before, in two steps alone)."
    before = torch.cuda.memory_allocated(device) if device.type == 'cuda' else 0
    if device.type == 'cuda': torch.cuda.reset_peak_memory_stats(device)
    model, trainer, data, rows, cfg = setup(args, size, device, authors, base_pixels, texts)
    scored = data if args.images_per_prompt == 1 else fast_data(iqa_data(model, size, shared(texts, args.images_per_prompt), base_pixels, args.workers), cfg)
    train, test = Batches(data, rows, args.batch_size, device, authors, True), Batches(scored, rows, args.batch_size, device, authors, False)
    step = lambda: trainer.step(next(train))
    for _ in range(2): step()
    peak = (torch.cuda.max_memory_allocated(device) - before) / 2**30 if device.type == 'cuda' else float('nan')
    scorer = model if authors else inference_model(copy.deepcopy(model))  # ipiqa scores as `Scorer.load` loads: batch norm folded, channels_last
    if scorer is not model and args.compile: get_method('ipiqa').compile(scorer)   # as `ipiqa score --compile` (a deep copy drops the compile)
    def score():  # one scoring call: `score_batches(args)` test batches through ipiqa's `predict` as the scorer runs a call, or the authors' forward
        batches = [next(test) for _ in range(score_batches(args))]
        with torch.inference_mode():
            if not authors:
                with once_per_call([scorer]):   # the call's memo and prefill, as `Scorer` runs a call
                    return predict_prefilled(scorer, scored.token_table[torch.cat([b['prompt_ids'] for b in batches]).cpu()], batches, device, args.amp)
            model.eval()
            with autocast(device, args.amp): return [model(b['images'], b['tokens'], b['prompt_index']).float().cpu() for b in batches]
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return dict(step=step, score=score, n_train=n_train, peak=peak, parts=[k for k, on in fast_path(cfg, device).items() if on])


def score_batches(args): return max(1, args.score_images // args.batch_size)   # test batches per timed scoring call


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
    texts = prompts(a.images or max(4 * a.batch_size, a.score_images))
    print(f"# {a.arch} IP-IQA on {device}{' (bf16 autocast)' if a.amp else ' (fp32)'}, batch {a.batch_size}, "
          f"{len(texts)} images of distinct prompts" + (f" (scored {a.images_per_prompt} images per prompt)" if a.images_per_prompt > 1 else '')
          + f", random init; torch {torch.__version__}"
          + (f", {torch.get_num_threads()} threads" if device.type == 'cpu' else f", {torch.cuda.get_device_name(device)}"))
    for size in a.sizes:
        base = pixels(len(texts), size)
        them, us = (side(a, size, device, authors, base, texts) for authors in (True, False))
        steps = timed([them['step'], us['step']], device, a.repeat)
        scores = timed([them['score'], us['score']], device, max(3, a.repeat // score_batches(a)), warmup=1) / (score_batches(a) * a.batch_size)
        for r, name, j in ((them, "authors' release", 0), (us, 'ipiqa', 1)):
            r.update(name=name, s_step=float(np.median(steps[:, j])), s_score=float(np.median(scores[:, j])))
            r['hours'] = protocol_hours(r['s_step'], r['s_score'], a.batch_size)
            print(f"{size} px | {name:<16} | train step {r['s_step'] * 1e3:8.1f} ms = {a.batch_size / r['s_step']:7.1f} images/s | "
                  f"scoring {1 / r['s_score']:7.1f} images/s | trainable {r['n_train']:,}" + (f" | peak {r['peak']:.2f} GiB" if device.type == 'cuda' else '')
                  + ('' if j == 0 else f" | fast path: {', '.join(r['parts']) or 'off'}"), flush=True)
        train_x, score_x = steps[:, 0] / steps[:, 1], scores[:, 0] / scores[:, 1]   # round by round: both timed within seconds of each other
        print(f"{size} px | ipiqa / authors': training {np.median(train_x):.2f}x (rounds {train_x.min():.2f}-{train_x.max():.2f}), "
              f"scoring {np.median(score_x):.2f}x (rounds {score_x.min():.2f}-{score_x.max():.2f}) | "
              f"AGIQA-3k protocol (10 splits x 100 epochs) projected: authors' {them['hours']:.2f} h, ipiqa {us['hours']:.2f} h", flush=True)
        scoring_s = us['s_score']
        del them, us   # the --processes loops below get the device to themselves
        if device.type == 'cuda': torch.cuda.empty_cache()
        if a.processes > 1:  # the same loop timed alike (a wait for the device every 5 steps) with 1 process and with N
            for n in (1, a.processes):
                rates = sharing(a, size, texts, n)
                print(f"{size} px | ipiqa, {n} split{'s' if n > 1 else ''} at once on one device | training {sum(rates):7.1f} images/s in all"
                      + (f" ({', '.join(f'{r:.1f}' for r in rates)})" if n > 1 else '') + " | AGIQA-3k protocol projected: "
                      f"{protocol_hours(a.batch_size / sum(rates), scoring_s, a.batch_size):.2f} h", flush=True)


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--arch', default='RN50'); p.add_argument('--device', default='cpu')
    p.add_argument('--sizes', type=int, nargs='+', default=[224, 512]); p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--images', type=int, default=None, help='images (and distinct prompts) in the set; default 4 batches or --score-images')
    p.add_argument('--score-images', type=int, default=32, help='images per timed scoring call, in batches of --batch-size; the scorer runs its '
                   'calls in chunks of 512 images, each chunk\'s prompts through the text tower 64 at a time before its batches')
    p.add_argument('--images-per-prompt', type=int, default=1, help='images sharing each prompt in the scored set (training batches keep a '
                   'prompt per image); 1: every image its own prompt, the least the prefill can save. AGIQA-3k has 2,982 images of 300 '
                   'prompts, about 10 each, so a scoring call over its test side (about 600 images) meets each of its 60 prompts about 10 times')
    p.add_argument('--amp', action='store_true', help='bf16 autocast (CUDA only; ~20x slower on CPU)')
    p.add_argument('--compile', action='store_true', help="torch.compile ipiqa's trunk, in training and in scoring (as `ipiqa score --compile`); about a minute first")
    p.add_argument('--fast', default=None, type=lambda s: s.lower() == 'true', metavar='True|False',
                   help="force ipiqa's fast path (cache on the device, channels_last, fused Adam) on or off; default: as the harness does (channels_last and fused Adam on CUDA and CPU, the cache on CUDA)")
    p.add_argument('--tokenwise-pools', action='store_true', help="ipiqa's attention pools computed token-wise too, as the authors' "
                   "are (what ipiqa's cheaper order buys: compare with a run without it)")
    p.add_argument('--repeat', type=int, default=5, help='timed rounds (one call of each side per round)'); p.add_argument('--workers', type=int, default=2)
    p.add_argument('--threads', type=int, default=None, help='CPU threads (default: torch\'s)')
    p.add_argument('--processes', type=int, default=1, help="also run this many ipiqa training loops at once on the device, as several splits "
                   "sharing one GPU under torchrun, and print their images/s in all")
    p.add_argument('--seconds', type=float, default=15, help='the window in which --processes loops are timed together')
    main(p.parse_args())
