"""Tests of the IP-IQA foundation that a notebook cell should not carry: bad inputs, resume, determinism, learning."""
import json, os

import numpy as np
import pandas as pd
import pytest
import torch
from open_clip.transformer import QuickGELU
from scipy import stats

os.environ.setdefault('TQDM_DISABLE', '1')

from ipiqa.data import (DatasetError, dataset_images, group_splits, load_dataset, read_agiqa1k, read_agiqa3k,
                        split_indices)
from ipiqa.toyworld import captioned_corpus, make_toy_agiqa
from ipiqa.baselines import within_generator_srcc
from ipiqa.metrics import iqa_metrics
from ipiqa.model import batch_prompts, build_ipiqa, load_clip
from ipiqa.toyclip import TOY_CLIP_ARCHS, clip_similarity, retrieval_accuracy
from ipiqa.training import Trainer, TrainConfig, cross_validate, mos_loss, IQAData, similarity_srcc, start_from_targets


@pytest.fixture(scope='module')
def toy_dir(tmp_path_factory):
    return make_toy_agiqa(tmp_path_factory.mktemp('toy'), n_prompts=12)


@pytest.fixture(scope='module')
def toy(toy_dir):
    return read_agiqa3k(toy_dir)


def small_cfg(**kw):
    return TrainConfig(**{**dict(image_size=64, epochs=2, n_splits=2, batch_size=8, num_workers=1), **kw})


# ---------------------------------------------------------------- model

@pytest.mark.parametrize('n_out', [1, 2])
@pytest.mark.parametrize('use_prompt', [True, False])
def test_output_shapes(n_out, use_prompt):
    m = build_ipiqa('RN50-tiny', n_outputs=n_out, image_size=96, use_prompt=use_prompt)
    tokens, index = batch_prompts(m.tokenize(['a red circle', 'a blue square, sketch']), torch.tensor([1, 0, 1]))
    assert m(torch.randint(0, 256, (3, 3, 96, 96), dtype=torch.uint8), tokens, index).shape == (3, n_out)


def test_text_side_trains_exactly_the_qa_vector():
    torch.manual_seed(0)
    m = build_ipiqa('RN50-tiny', n_outputs=2, image_size=64)
    width = m.text.transformer.width
    text_trainable = {n: p.numel() for n, p in m.named_parameters() if p.requires_grad and n.startswith('text.')}
    assert text_trainable == {'text.qa': width}
    frozen = {n: p.detach().clone() for n, p in m.text.named_parameters() if n != 'qa'}
    qa0, head0 = m.text.qa.detach().clone(), m.head.weight.detach().clone()
    tokens, index = batch_prompts(m.tokenize(['a red circle', 'a blue square']), torch.tensor([0, 1, 1, 0]))
    batch = dict(images=torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8), tokens=tokens, prompt_index=index,
                 targets=torch.rand(4, 2) * 5)
    Trainer(m, mos_loss, lr=1e-2).step(batch)
    for n, p in m.text.named_parameters():
        if n != 'qa': assert torch.equal(p, frozen[n]), f'frozen text weight {n} changed'
    assert not torch.equal(m.text.qa, qa0) and not torch.equal(m.head.weight, head0)


def test_truncated_text_matches_77_tokens():
    clip, tok = load_clip('RN50-tiny')
    m = build_ipiqa('RN50-tiny', image_size=64, qa_token=False)
    m.text.load_state_dict({k: v for k, v in clip.state_dict().items()
                            if k in m.text.state_dict()}, strict=False)
    prompts = ['a girl', 'a very detailed oil painting of a lighthouse at dawn, trending', 'cat']
    table = tok(prompts)
    tokens, index = batch_prompts(table, torch.arange(3))
    assert tokens.shape[1] < 77
    torch.testing.assert_close(m.text.encode(tokens)[index], clip.encode_text(table), rtol=1e-4, atol=1e-5)



def _save_openai_archive(clip, path):
    "Script `clip` as OpenAI did (the causal mask an attribute, `input_resolution` a buffer) and save it."
    clip.attn_mask = clip._buffers.pop('attn_mask')
    clip.register_buffer('input_resolution', torch.tensor(clip.visual.image_size))
    torch.jit.save(torch.jit.script(clip), path)


def test_openai_weights_get_quick_gelu_random_init_keeps_gelu(tmp_path):
    act = lambda clip: type(clip.transformer.resblocks[0].mlp.gelu)
    src, _ = load_clip('RN50-tiny')
    assert act(src) is torch.nn.GELU
    torch.save(src.state_dict(), tmp_path/'ours.pt')
    assert act(load_clip('RN50-tiny', tmp_path/'ours.pt')[0]) is torch.nn.GELU
    _save_openai_archive(src, tmp_path/'openai.pt')
    assert act(load_clip('RN50-tiny', tmp_path/'openai.pt')[0]) is QuickGELU
    assert act(build_ipiqa('RN50-tiny', tmp_path/'openai.pt', image_size=64).text) is QuickGELU  # what IP-IQA trains with

# ---------------------------------------------------------------- the toy CLIPs and the fusions

@pytest.mark.parametrize('arch,tag,least', [(a, 'toy', 0.8) for a in TOY_CLIP_ARCHS] + [('RN50-tiny', 'toy-web', 0.8), ('RN50-tiny', 'toy-photo', 0.5),
                                                                                     ('ViT-B-32-tiny', 'toy-photo', 0.4)])
def test_toy_clips_know_the_toy_words(arch, tag, least):
    """Zero-shot retrieval on 256 scenes the corpus never held. Measured top-1 image→text among 512 (among 64):
    RN50-tiny 0.88 (0.95), ViT-B-32-tiny 0.80 (0.95), RN50-tiny toy-web 0.73 among 512 (0.92 among 64; its web-like
    captions name part of each scene, these name all of it); RN50-tiny toy-photo, which saw only photos of these
    scenes' four styles, 0.625 image→text and 0.672 text→image among 64. Chance is 1/64. Asserted among 64: > 0.8
    (50× chance) for the first three, > 0.5 (32× chance; margin 0.125) for toy-photo. ViT-B-32-tiny toy-photo (web-like
    captions of photos, each drawing twice, 2,000 steps): 0.516 / 0.547 among 64, asserted > 0.4 (25× chance; margin 0.116)."""
    clip, tok = load_clip(arch, tag)
    images, captions, _ = captioned_corpus(256, 64, seed=4242)
    acc = retrieval_accuracy(clip_similarity(clip, tok, images, captions), ks=(64,)).iloc[0]
    assert acc.image_to_text > least and acc.text_to_image > least, acc


@pytest.fixture(scope='module')
def toy3k():
    return load_dataset('toy')


def test_clipscore_on_the_toy_clip_is_a_real_baseline(toy3k):
    """CLIPScore's alignment SRCC on the default toy set (3,000 images, 300 prompts) with the toy preset's CLIP
    (`toy-photo`): 0.729 / 0.721 on the two test sides of seed 0's splits, 0.718 on the whole set (measured on toy world
    version 2, 2026-12-06; `toy-web`, which saw every style on its web: 0.825 / 0.806, 0.811; the exact-caption `toy`
    CLIP: 0.854 / 0.845, 0.846). A random-init CLIP gives ~0. Asserted: > 0.65 on the whole set, and below `toy-web`'s
    by more than 0.05 (measured 0.093): the gap the preset's CLIP is chosen for (nbs/01h_toyclip.ipynb)."""
    cfg = TrainConfig().resolved()
    assert cfg.pretrained == 'toy-photo'
    models = {tag: build_ipiqa(cfg.arch, tag, 2, 64, qa_token=False).eval() for tag in (cfg.pretrained, 'toy-web')}
    data = IQAData(toy3k, 64, models['toy-web'].tokenize, 2)   # decoded once: both toy CLIPs share CLIP's tokenizer
    srcc = {tag: similarity_srcc(m, data, np.arange(len(toy3k))) for tag, m in models.items()}
    assert srcc['toy-photo'] > 0.65 and srcc['toy-photo'] < srcc['toy-web'] - 0.05, srcc


def test_clip_residual_starts_at_the_fitted_clipscore_line(toy):
    """fusion='clip-residual' starts as CLIPScore's similarity mapped to MOS by least squares on the training rows
    (head weights zero); the paper's fusion starts at the training mean."""
    torch.manual_seed(0)
    m = build_ipiqa('RN50-tiny', 'toy', 2, 64, fusion='clip-residual')
    data = IQAData(toy, 64, m.tokenize, 1)
    rows = np.arange(len(toy))
    start_from_targets(m, data, rows)
    b = next(iter(data.loader(rows, len(rows))))
    with torch.no_grad(): pred, s = m(b['images'], b['tokens'], b['prompt_index']), m.similarity(b['images'], b['tokens'], b['prompt_index'])
    for j in range(2):
        slope, intercept = np.polyfit(s.double().numpy(), data.targets[:, j].double().numpy(), 1)
        np.testing.assert_allclose(pred[:, j].numpy(), slope * s.numpy() + intercept, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match='fusion must be one of'): build_ipiqa('RN50-tiny', fusion='concat')


# ---------------------------------------------------------------- splits and metrics

def test_group_splits_disjoint_80_20(toy):
    sp = group_splits(toy.table, n_splits=5, train_frac=0.8, seed=3)
    n_groups = toy.table.group.nunique()
    tests = []
    for i in range(5):
        g = {p: set(toy.table.group.iloc[split_indices(sp, toy.table, i, p)]) for p in ('train', 'test')}
        assert not g['train'] & g['test']
        assert len(g['train']) + len(g['test']) == n_groups
        assert len(g['test']) == n_groups - round(0.8 * n_groups)
        tests.append(frozenset(g['test']))
    assert len(set(tests)) > 1, 'splits must differ'


def test_metrics_match_scipy():
    rng = np.random.default_rng(1)
    mos = rng.uniform(0, 5, 300)
    pred = np.tanh(mos - 2.5) + rng.normal(0, 0.3, 300)
    m = iqa_metrics(pred, mos)
    assert m['srcc'] == pytest.approx(stats.spearmanr(pred, mos).statistic)
    assert m['plcc'] == pytest.approx(stats.pearsonr(pred, mos).statistic)
    assert m['krcc'] == pytest.approx(stats.kendalltau(pred, mos).statistic)
    assert m['rmse'] == pytest.approx(np.sqrt(np.mean((pred - mos) ** 2)))
    assert m['plcc_logistic'] > m['plcc']  # a sigmoid-shaped relation: the logistic fit must straighten it


# ---------------------------------------------------------------- bad input

def _copy_toy(toy_dir, dst, n=8):
    dst.mkdir()
    (dst/'images').mkdir()
    raw = pd.read_csv(toy_dir/'data.csv').head(n)
    for name in raw.name: (dst/'images'/name).write_bytes((toy_dir/'images'/name).read_bytes())
    return raw


@pytest.mark.parametrize('case, expected', [
    ('missing_image', 'image file(s) not found'),
    ('missing_column', "missing column(s) ['mos_align']"),
    ('non_numeric', "column 'mos_quality' must be a number in every row (2 in all; first: row 3='good', row 5='n/a')"),
    ('missing_mos', "column 'mos_align' must be a number in every row (1 in all; first: row 4=<empty>)"),
    ('empty', 'the dataset has no rows'),
])
def test_agiqa3k_bad_input(toy_dir, tmp_path, case, expected):
    raw = _copy_toy(toy_dir, tmp_path/'d')
    if case == 'missing_image': [(tmp_path/'d'/'images'/n).unlink() for n in raw.name[:3]]
    if case == 'missing_column': raw = raw.drop(columns='mos_align')
    if case == 'non_numeric': raw['mos_quality'] = raw['mos_quality'].astype(object); raw.loc[[1, 3], 'mos_quality'] = ['good', 'n/a']
    if case == 'missing_mos': raw.loc[2, 'mos_align'] = np.nan
    if case == 'empty': raw = raw.head(0)
    raw.to_csv(tmp_path/'d'/'data.csv', index=False)
    with pytest.raises(DatasetError) as e: load_dataset('agiqa3k', tmp_path/'d')
    assert expected in str(e.value) and 'data.csv' in str(e.value)
    if case == 'missing_image': assert '3 in all' in str(e.value) and raw.name[0] in str(e.value)


def test_unreadable_image_fails_before_training(toy_dir, tmp_path):
    raw = _copy_toy(toy_dir, tmp_path/'d', n=40)  # 4 prompts: splittable
    raw.to_csv(tmp_path/'d'/'data.csv', index=False)
    (tmp_path/'d'/'images'/raw.name[2]).write_bytes(b'\x89PNG truncated')
    ds = load_dataset('agiqa3k', tmp_path/'d')
    with pytest.raises(DatasetError, match=r'unreadable image file\(s\) \(1 in all; first: .*' + raw.name[2]):
        cross_validate(small_cfg(), ds, tmp_path/'run')
    assert not list((tmp_path/'run').glob('split[0-9]*')), 'nothing may have trained'


def test_unknown_dataset():
    with pytest.raises(DatasetError, match="unknown dataset 'agiqa4k'; expected one of"): load_dataset('agiqa4k', '.')


def test_agiqa1k_reader_and_errors(toy_dir, tmp_path):
    raw = _copy_toy(toy_dir, tmp_path/'d', n=6)
    prompts = ['bird, driving aircraft, city, anime style', 'bird, driving aircraft, forest, oil painting',
               'cat, playing guitar, beach, photo', 'cat, playing guitar, city, sketch', 'dog, reading book, room, photo',
               'Bird , Driving aircraft, desert, photo']
    xl = pd.DataFrame(dict(Image=raw.name, Prompt=prompts, MOS=np.linspace(1, 5, 6)))
    xl.to_excel(tmp_path/'d'/'AIGC_MOS_Zscore.xlsx', index=False)
    ds = load_dataset('agiqa1k', tmp_path/'d')
    assert ds.targets == ['mos'] and ds.table.group.nunique() == 3
    xl.drop(columns='MOS').to_excel(tmp_path/'d'/'AIGC_MOS_Zscore.xlsx', index=False)
    with pytest.raises(DatasetError, match=r"AIGC_MOS_Zscore.xlsx: missing column\(s\) \['MOS'\]"): read_agiqa1k(tmp_path/'d')


# ---------------------------------------------------------------- resume and determinism

def test_resume_skips_finished_splits_and_epochs(toy, tmp_path):
    cfg = small_cfg(n_splits=2, epochs=3, save_share=1.0).resolved()   # the resume state after every epoch, however short
    calls = {'n': 0}

    def counting_loss(model, batch):
        calls['n'] += 1
        if calls.get('fail_at') == calls['n']: raise KeyboardInterrupt
        return mos_loss(model, batch)

    data = IQAData(toy, cfg.image_size, build_ipiqa('RN50-tiny', image_size=64).tokenize, num_workers=1)
    steps_per_epoch = len(data.loader(split_indices(group_splits(toy.table, 2, 0.8, 0), toy.table, 0, 'train'), cfg.batch_size))
    calls['fail_at'] = steps_per_epoch * 2 + 1            # interrupt split 0 in its third epoch
    with pytest.raises(KeyboardInterrupt): cross_validate(cfg, toy, tmp_path, data=data, loss_fn=counting_loss)
    assert (tmp_path/'split0'/'state.pt').is_file() and not (tmp_path/'split0'/'metrics.csv').exists()
    env = json.loads((tmp_path/'split0'/'environment.json').read_text()); env['packages']['torch'] = '0.0.1'
    (tmp_path/'split0'/'environment.json').write_text(json.dumps(env))   # as if split 0 was begun before an upgrade
    calls.update(n=0, fail_at=None)
    with pytest.warns(UserWarning, match=r"trained with different software .*'split0 \(begun with\)': '0\.0\.1'"):
        res = cross_validate(cfg, toy, tmp_path, data=data, loss_fn=counting_loss)
    assert json.loads((tmp_path/'split0'/'environment.json').read_text())['begun_with'][0]['packages']['torch'] == '0.0.1'
    assert 'begun_with' not in json.loads((tmp_path/'split1'/'environment.json').read_text())   # begun and finished here
    assert calls['n'] == steps_per_epoch * 1 + steps_per_epoch * 3  # split 0: only its last epoch; split 1: all three
    assert len(pd.read_csv(tmp_path/'split0'/'history.csv')) == 3 and not (tmp_path/'split0'/'state.pt').exists()
    calls['n'] = 0
    again = cross_validate(cfg, toy, tmp_path, data=data, loss_fn=counting_loss)
    assert calls['n'] == 0
    pd.testing.assert_frame_equal(again.metrics, res.metrics)


def test_failed_run_does_not_lock_its_folder(toy, tmp_path):
    with pytest.raises(FileNotFoundError, match='neither a file nor an open_clip tag'):
        cross_validate(small_cfg(n_splits=1, epochs=1, pretrained=str(tmp_path/'no-such-weights.pt')), toy, tmp_path/'run')
    assert (tmp_path/'run'/'config.json').is_file() and not list((tmp_path/'run').glob('split*/*'))
    res = cross_validate(small_cfg(n_splits=1, epochs=1), toy, tmp_path/'run')       # corrected re-run, same out_dir
    assert len(res.metrics) == len(toy.targets) and (tmp_path/'run'/'split0'/'metrics.csv').is_file()
    assert json.loads((tmp_path/'run'/'config.json').read_text())['pretrained'] == small_cfg().resolved().pretrained  # the new config is recorded
    with pytest.raises(ValueError, match='holds work of a run with another configuration .*epochs: 1 there, 2 now'):
        cross_validate(small_cfg(n_splits=1, epochs=2), toy, tmp_path/'run')        # finished work stays protected

def test_same_seed_same_metrics(toy, tmp_path):
    a = cross_validate(small_cfg(n_splits=1), toy, tmp_path/'a').metrics
    b = cross_validate(small_cfg(n_splits=1), toy, tmp_path/'b').metrics
    c = cross_validate(small_cfg(n_splits=1, seed=1), toy, tmp_path/'c').metrics
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a.srcc, c.srcc)


def test_selection_is_labelled(toy, tmp_path):
    for select in ('val', 'best_on_test'):
        res = cross_validate(small_cfg(n_splits=1, select=select), toy, tmp_path/select)
        assert set(res.metrics.selection) == {select} and set(res.summary.selection) == {select}
        assert res.metrics.epoch.between(1, 2).all()
        assert 'best_on_test' not in open(tmp_path/'val'/'summary.csv').read() if select == 'val' else True


# ---------------------------------------------------------------- learning

def test_prompt_model_learns_alignment_beyond_image_only(tmp_path):
    """On a toy set of 100 prompts (1,000 images; 1 split, the toy preset's 6 epochs on its `toy-photo` CLIP) alignment
    depends on what the image shows of its prompt, and partly on who made it (as in AGIQA-3k). Measured alignment SRCC
    (quality in brackets), training seeds 0-4 (toy world version 2, 2026-12-06):

    | model | seed 0 | seed 1 | seed 2 | seed 3 | seed 4 |
    |---|---|---|---|---|---|
    | image-only (Table 3 row 1) | 0.571 (0.678) | 0.600 (0.661) | 0.609 (0.710) | 0.600 (0.732) | 0.678 (0.732) |
    | IP-IQA, fusion='paper' | 0.597 (0.774) | 0.657 (0.712) | 0.702 (0.759) | 0.570 (0.712) | 0.638 (0.734) |
    | IP-IQA, fusion='clip-residual' | 0.797 (0.755) | 0.802 (0.685) | 0.807 (0.722) | 0.819 (0.697) | 0.780 (0.721) |
    | IP-IQA, fusion='clip-residual-align' | 0.806 (0.774) | 0.804 (0.723) | 0.813 (0.739) | 0.778 (0.737) | 0.778 (0.740) |
    | zero-shot CLIPScore (toy-photo CLIP) | 0.724 | 0.726 | 0.729 | 0.771 | 0.718 |
    | within a generator: image-only | 0.302 | 0.317 | 0.416 | 0.435 | 0.500 |
    | within a generator: clip-residual | 0.475 | 0.482 | 0.605 | 0.580 | 0.485 |
    | within a generator: clip-residual-align | 0.516 | 0.519 | 0.631 | 0.513 | 0.518 |

    Asserted, with the smallest measured margin in brackets: clip-residual > image-only + 0.08 (0.102, seed 4; seed 0:
    0.226), > paper fusion + 0.05 (0.105), > CLIPScore (+0.048); quality SRCC > 0.55 for image-only (0.661), > 0.6 for
    clip-residual (0.685); clip-residual-align > image-only + 0.08 (0.100), > CLIPScore (+0.007, seed 3; seed 0: +0.082),
    quality > 0.65 (0.723) -- with these 800 training images it ranks quality above clip-residual in all five seeds
    over all images and inside a generator in four of five (0.433 / 0.380 / 0.367 / 0.439 / 0.477 against 0.389 / 0.297
    / 0.375 / 0.204 / 0.423), too close inside a generator to assert; inside one generator's test images
    (`within_generator_srcc`), clip-residual-align > image-only (+0.018, seed 4; seed 0: +0.214): its gain is not only
    knowing who made the image. (clip-residual's within-generator margin is +0.145 to +0.189 in seeds 0-3 but -0.015 in
    seed 4, so it is not asserted.) The test runs seed 0. On 200 test images of 20 prompts the seeds spread widely.
    The paper's fusion is not asserted above image-only: with 800 training images its margin is -0.04 to +0.09. (On
    version 1 of the toy world, whose generators also damaged images with JPEG, the same seeds gave clip-residual
    0.752-0.816 against image-only 0.503-0.595; on the presets' earlier CLIP, `toy-web`, which saw every style the toy
    generators draw, clip-residual ended 0.004 below to 0.019 above CLIPScore over the same five seeds on version 1: a
    CLIP without a domain gap leaves a trained model little room above it.)"""
    ds = read_agiqa3k(make_toy_agiqa(tmp_path/'toy', n_prompts=100))
    srcc, within = {}, {}
    for name, kw in [('image_only', dict(use_prompt=False)), ('paper', {}), ('clip_residual', dict(fusion='clip-residual')),
                     ('clip_residual_align', dict(fusion='clip-residual-align'))]:
        r = cross_validate(TrainConfig(n_splits=1, num_workers=1, **kw), ds, tmp_path/name)
        srcc[name] = r.metrics.set_index('target').srcc
        within[name] = within_generator_srcc(r.predictions.assign(method=name)).set_index('target').loc['mos_align', 'srcc_within_generator']
    te = split_indices(r.splits, ds.table, 0, 'test')
    cfg = TrainConfig().resolved()
    assert cfg.pretrained == 'toy-photo'
    m = build_ipiqa(cfg.arch, cfg.pretrained, 2, 64, qa_token=False).eval()
    data = IQAData(ds, 64, m.tokenize, 1)
    clipscore = similarity_srcc(m, data, te)
    a = {k: v['mos_align'] for k, v in srcc.items()}
    assert a['clip_residual'] > a['image_only'] + 0.08 and a['clip_residual'] > a['paper'] + 0.05, (srcc, clipscore)
    assert a['clip_residual'] > clipscore, (srcc, clipscore)
    assert srcc['image_only']['mos_quality'] > 0.55 and srcc['clip_residual']['mos_quality'] > 0.6, srcc
    assert a['clip_residual_align'] > a['image_only'] + 0.08 and a['clip_residual_align'] > clipscore, (srcc, clipscore)
    assert srcc['clip_residual_align']['mos_quality'] > 0.65, srcc
    assert within['clip_residual_align'] > within['image_only'], within
