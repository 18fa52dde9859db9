"Baselines (CLIPScore, CLIP-IQA, the fine-tuned ResNet), the long results schema, and the attention maps of Fig. 3."
import numpy as np
import pandas as pd
import pytest
import torch

from ipiqa.attention import attention_maps, load_checkpoint, word_influence
from ipiqa.baselines import (RESULT_COLUMNS, append_results, check_results, clipiqa, clipscore,
                             compare_with_paper, load_paper_results, read_results, resnet_method,
                             results_from_cv, split_results, zero_shot_scores)
from ipiqa.data import dataset_images, group_splits, make_toy_agiqa, read_agiqa3k, split_indices
from ipiqa.metrics import METRICS, iqa_metrics
from ipiqa.model import load_clip
from ipiqa.training import TrainConfig, cross_validate

CLIP_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073])[:, None, None]
CLIP_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711])[:, None, None]


@pytest.fixture(scope='module')
def toy(tmp_path_factory):
    d = tmp_path_factory.mktemp('toy')
    return read_agiqa3k(make_toy_agiqa(d/'toy', n_prompts=10, size=64))


@pytest.fixture(scope='module')
def clip():
    torch.manual_seed(0)
    return load_clip('RN50-tiny')


def _cos(a, b): return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def test_clipscore_matches_hand_computation(toy, clip):
    model, tokenizer = clip
    zs = zero_shot_scores(toy, model, tokenizer, num_workers=1)
    x = (dataset_images(toy, 64)[:5].float() / 255 - CLIP_MEAN) / CLIP_STD
    with torch.no_grad():
        img = model.encode_image(x).numpy()
        txt = model.encode_text(tokenizer(toy.table['prompt'][:5].tolist())).numpy()
    cos = _cos(img, txt)
    np.testing.assert_allclose(zs['CLIPScore'][:5], 100 * np.maximum(cos, 0), atol=1e-3)
    np.testing.assert_allclose(zs['CLIPScore (w=2.5)'][:5], 2.5 * np.maximum(cos, 0), atol=1e-4)
    # the formula itself, on vectors whose cosines are known
    a = torch.tensor([[1., 0.], [1., 1.], [-1., 0.]]); b = torch.tensor([[1., 0.], [1., 0.], [1., 0.]])
    np.testing.assert_allclose(clipscore(a, b).numpy(), [100, 100 / np.sqrt(2), 0], rtol=1e-6)


def test_clipiqa_matches_hand_computation(toy, clip):
    model, tokenizer = clip
    zs = zero_shot_scores(toy, model, tokenizer, num_workers=1)
    x = (dataset_images(toy, 64)[:5].float() / 255 - CLIP_MEAN) / CLIP_STD
    with torch.no_grad():
        pool = model.visual.attnpool
        saved = pool.positional_embedding.detach().clone()
        pool.positional_embedding.zero_()  # CLIP-IQA drops the positional embedding
        try: img = model.encode_image(x).numpy()
        finally: pool.positional_embedding.copy_(saved)
        gb = model.encode_text(tokenizer(['Good photo.', 'Bad photo.'])).numpy()
    scale = model.logit_scale.exp().item()
    logits = scale * np.stack([_cos(img, gb[0]), _cos(img, gb[1])], 1)
    np.testing.assert_allclose(zs['CLIP-IQA'][:5], np.exp(logits[:, 0]) / np.exp(logits).sum(1), atol=1e-4)
    assert ((zs['CLIP-IQA'] > 0) & (zs['CLIP-IQA'] < 1)).all()
    # with the image equal to the positive prompt and scale 100, the positive prompt wins outright
    np.testing.assert_allclose(clipiqa(torch.tensor([[1., 0.]]), torch.tensor([[1., 0.], [0., 1.]]), 100.).numpy(), [1.0], atol=1e-6)


def test_results_schema(tmp_path, toy):
    splits = group_splits(toy.table, n_splits=2, seed=0)
    scores = pd.DataFrame(dict(name=toy.table['name'], mos=toy.table['mos_quality'], noise=np.random.default_rng(0).normal(size=len(toy))))
    res = split_results(scores, toy, splits)
    assert list(res.columns) == RESULT_COLUMNS == ['method', 'dataset', 'target', 'split', 'metric', 'value']
    assert set(res['metric']) == set(METRICS) and len(res) == 2 * 2 * 2 * len(METRICS)
    rows = split_indices(splits, toy.table, 1, 'test')  # zero-shot numbers are on the test side of each split
    want = iqa_metrics(scores['noise'].to_numpy()[rows], toy.table['mos_align'].to_numpy()[rows])['srcc']
    got = res.query("method == 'noise' and target == 'mos_align' and split == '1' and metric == 'srcc'")['value'].item()
    assert got == pytest.approx(want)
    f = tmp_path/'results.csv'
    append_results(res, f); append_results(res, f)  # a re-run replaces, never duplicates
    back = read_results(f)
    assert len(back) == len(res) and list(back.columns) == RESULT_COLUMNS
    pd.testing.assert_frame_equal(back, res)
    for bad in (res.drop(columns='split'), res.assign(metric='SRCC'), pd.concat([res, res.iloc[:1]]), res.assign(extra=1)):
        with pytest.raises(ValueError): check_results(bad)


def test_paper_results_are_data():
    paper = load_paper_results()
    assert list(paper.columns) == RESULT_COLUMNS and set(paper['split']) == {'paper'}
    v = paper.set_index(['method', 'dataset', 'target', 'metric'])['value']
    assert v['IP-IQA', 'agiqa3k', 'mos_quality', 'srcc'] == 0.8634 and v['CLIPIQA', 'agiqa1k', 'mos', 'plcc'] == 0.8411
    assert v['ablation: ✓/-/-', 'agiqa1k', 'mos', 'krcc'] == 0.6501 and v['StairReward', 'agiqa3k', 'mos_align', 'srcc'] == 0.7472
    ours = pd.DataFrame([['CLIPScore', 'agiqa3k', 'mos_align', '0', 'srcc', 0.6]], columns=RESULT_COLUMNS)
    assert compare_with_paper(ours).loc[('agiqa3k', 'mos_align', 'CLIPScore'), ('srcc', 'paper')] == '0.5972'


def test_resnet50_baseline_trains_through_cross_validate(tmp_path, toy):
    cfg = TrainConfig(method='resnet', arch='resnet50', pretrained='random', use_prompt=False, epochs=2, n_splits=1, image_size=64,
                      batch_size=8, num_workers=1)
    cv = cross_validate(cfg, toy, tmp_path/'resnet')
    res = results_from_cv(cv.metrics, resnet_method(cfg.arch, cfg.pretrained), 'toy')
    assert set(res['method']) == {'ResNet50 (random init)'}
    assert len(res) == 2 * len(METRICS) and np.isfinite(res['value']).all()
    ck = torch.load(tmp_path/'resnet'/'split0'/'model.pt', weights_only=False)
    assert ck['state_dict']['head.weight'].shape == (2, 2048) and ck['config']['arch'] == 'resnet50'


def test_attention_maps_are_distributions(tmp_path, toy):
    cross_validate(TrainConfig(epochs=1, n_splits=1, image_size=128, batch_size=8, num_workers=1), toy, tmp_path/'ipiqa')
    model, cfg = load_checkpoint(tmp_path/'ipiqa'/'split0'/'model.pt')
    imgs, prompts = dataset_images(toy, 128)[:5], toy.table['prompt'][:5].tolist()
    att = attention_maps(model, imgs, prompts)
    heads, g = model.cross_pool.heads, 128 // 32
    assert att.maps.shape == (5, heads, g, g) and att.scores.shape == (5, 2)
    assert (att.maps >= 0).all()
    torch.testing.assert_close(att.maps.sum((-2, -1)), torch.ones(5, heads))
    wi = word_influence(model, imgs[0], prompts[0])
    assert wi.delta.shape == (len(wi.words), heads, g, g)
    torch.testing.assert_close(wi.delta.sum((-2, -1)), torch.zeros(len(wi.words), heads), atol=1e-5, rtol=0)
    assert ((wi.shift() >= 0) & (wi.shift() <= 1)).all()
