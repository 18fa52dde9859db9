"""Speed of CLIP-AGIQA as the harness trains and scores it, and how scoring's pace depends on the crops per forward.
Prints figures, asserts nothing.

    python benchmarks/bench_clip_agiqa.py --arch ViT-B-32-tiny --size 64 --image 96 --stride 16   # CPU, the toy ViT
    python benchmarks/bench_clip_agiqa.py --device cuda                                           # the paper's size, fp32 (its preset)
    python benchmarks/bench_clip_agiqa.py --device cuda --amp                                     # bf16 autocast

The model is the harness's (`get_method('clip-agiqa').build`, the AGIQA-3k preset: ViT-B/32, random init -- the compute
is the same as with OpenAI's weights -- frozen, both prompt learners, guidance), on random uint8 images of `--image`
px held on the device as the harness's fast path holds its image cache:
- a training step: a batch of random `--size` crops (`CropView.train_images`) through the harness's step
  (`Trainer.update` with `method.loss`, on the model laid out as `fast_model` lays it out, Adam fused as `fast_path` says);
- scoring: every crop at `--stride` of each image (`CropView.test_images`), through the model without gradients and
  inside `method.predicting` as `predict` runs it (since 2026-11-28: the class phrases' text features once per call),
  `--crops` crops per forward (`predict` reads a test batch 256 views at a time; until 2026-11-28 a test batch held
  `batch_size` crops, 64 -> 2 images of 25 crops at 512 px, now `batch_size` images up to 1,024 crops); images/s for each;
- the text side alone: both learners' class-phrase features, which a training step computes once whatever its batch
  (and a scoring forward did too before `method.predicting` kept them for the call).
Figures are medians over `--repeat` rounds after `--warmup` rounds (`bench_ipiqa.timed`). bf16 warms up slowly on a GPU (an H200's
first bf16 epoch of the loop took 8.2 s against fp32's 4.6 s): give it `--warmup 40` for its steady pace.
"""
import argparse, os
os.environ.setdefault('TQDM_DISABLE', '1')

import numpy as np
import torch

from bench_ipiqa import timed
from ipiqa.training import TrainConfig, Trainer, autocast, fast_model, fast_path, get_method
from ipiqa.views import crop_positions


def main(a):
    device = torch.device(a.device)
    cfg = TrainConfig(dataset='agiqa3k', method='clip-agiqa', arch=a.arch, pretrained='none', image_size=a.size,
                      test_stride=a.stride, batch_size=a.batch_size).resolved()
    method = get_method('clip-agiqa'); view = method.view(cfg)
    torch.manual_seed(0)
    model = fast_model(method.build(cfg, 2).to(device), cfg, device, method)
    trainer = Trainer(model, method.loss, cfg.lr, device, a.amp, fused=fast_path(cfg, device)['fused_adam'])
    n_crops = len(crop_positions(a.image, a.image, a.size, a.stride))
    per_forward = [max(1, c // n_crops) for c in a.crops]
    images = torch.randint(0, 256, (max(a.batch_size, *per_forward), 3, a.image, a.image), dtype=torch.uint8, device=device)
    g = torch.Generator().manual_seed(0)
    rows = torch.arange(a.batch_size)
    targets = torch.rand(a.batch_size, 2, device=device) * 5

    def train_step():
        trainer.update(dict(images=view.train_images(images, rows, g), tokens=model.tokenize(['']).to(device).expand(a.batch_size, -1),
                            prompt_index=torch.arange(a.batch_size, device=device), targets=targets))

    def scorer(k):
        def score():
            model.eval()
            with torch.no_grad(), autocast(device, a.amp):
                crops, owner = view.test_images(images, torch.arange(k))
                model(crops, model.tokenize(['']).to(device), torch.zeros(len(crops), dtype=torch.long, device=device))
        return score

    print(f"# CLIP-AGIQA, {cfg.arch} (random init) on {device}{' bf16' if a.amp else ' fp32'}: {a.size} px crops of {a.image} px images, "
          f"{n_crops} test crops per image at stride {a.stride}; {sum(p.numel() for p in trainer.params):,} trainable parameters")
    t = timed([train_step], device, a.repeat, a.warmup)[:, 0]
    print(f"training step, batch {a.batch_size}: {np.median(t) * 1e3:.1f} ms ({a.batch_size / np.median(t):.0f} images/s)")
    def text_side():
        with torch.no_grad(), autocast(device, a.amp): model.quality.class_features(model.clip), model.align.class_features(model.clip)

    k0 = per_forward[0]
    fns = [scorer(k) for k in per_forward] + [lambda: (text_side(), scorer(k0)())]   # the last: the class phrases again with every forward, as before
    with method.predicting(model):   # one scoring call as `predict` makes it, over every round: the class phrases once
        t = timed(fns, device, a.repeat, a.warmup)
    for k, c, s in zip(per_forward, a.crops, np.median(t[:, :-1], 0)):
        print(f"scoring, {k} images ({k * n_crops} crops) per forward (asked {c}): {s * 1e3:.1f} ms per forward, {k / s:.1f} images/s, {k * n_crops / s:.0f} crops/s")
    s = np.median(t[:, -1])
    print(f"  the same {k0} images with the class phrases through the text tower every forward (before 2026-11-28): {s * 1e3:.1f} ms per forward; "
          f"once per call is {np.median(t[:, -1] / t[:, 0]):.2f}x as fast (median of the rounds' ratios)")
    t = timed([text_side], device, a.repeat, a.warmup)[:, 0]
    print(f"text side (both learners' class phrases: with every training step, once per scoring call): {np.median(t) * 1e3:.1f} ms")
    if device.type == 'cuda': print(f"peak memory: {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--device', default='cpu'); p.add_argument('--arch', default='ViT-B-32')
    p.add_argument('--size', type=int, default=224, help='crop size (the model input)'); p.add_argument('--image', type=int, default=512)
    p.add_argument('--stride', type=int, default=64); p.add_argument('--batch-size', type=int, default=64)
    p.add_argument('--crops', type=int, nargs='+', default=[64, 256, 512], help='crops per scoring forward (whole images)')
    p.add_argument('--amp', action='store_true', help='bf16 autocast (CUDA only)'); p.add_argument('--repeat', type=int, default=5)
    p.add_argument('--warmup', type=int, default=2, help='untimed rounds first')
    main(p.parse_args())
