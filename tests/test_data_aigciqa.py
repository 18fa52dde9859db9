"""AIGCIQA2023 as CLIP-AGIQA reads it, the CLIP-AGIQA authors' splits, and images at native size: every error case."""
import os, random, shutil

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from scipy.io import loadmat, savemat

os.environ.setdefault('TQDM_DISABLE', '1')

import ipiqa.data as data
from ipiqa.data import (AIGCIQA2023_GENERATORS, DATASETS, AGIQASet, DatasetError, NativeImages, aigciqa2023_layout,
                        authors_splits, group_splits, image_sizes, load_dataset, native_images, read_agiqa3k,
                        read_aigciqa2023, split_indices, write_toy_aigciqa2023)
from ipiqa.toyworld import make_toy_agiqa

MATS = ('mosz1.mat', 'mosz2.mat', 'mosz3.mat')


@pytest.fixture(scope='module')
def toy_dir(tmp_path_factory):
    return write_toy_aigciqa2023(tmp_path_factory.mktemp('aigc'))


@pytest.fixture(scope='module')
def toy(toy_dir):
    return read_aigciqa2023(toy_dir)


@pytest.fixture
def mats(toy_dir, tmp_path):
    "A folder with copies of the toy's score files (to break), reading its images from the shared toy."
    for f in MATS: shutil.copy(toy_dir/f, tmp_path/f)
    return tmp_path


def read_mats(d, toy_dir, **kw): return read_aigciqa2023(d, image_dir=toy_dir/'allimg', **kw)


# ---------------------------------------------------------------- the toy writer

def test_toy_is_deterministic_and_in_the_release_format(toy_dir, tmp_path):
    write_toy_aigciqa2023(tmp_path/'a'); write_toy_aigciqa2023(tmp_path/'b', seed=1)
    assert sorted(p.name for p in toy_dir.iterdir()) == ['allimg', *MATS]
    assert len(list((toy_dir/'allimg').iterdir())) == 2400
    for f in MATS:
        m = loadmat(toy_dir/f)['MOSz']
        assert m.shape == (2400, 1) and m.dtype == np.float64 and 0 <= m.min() and m.max() <= 100
        assert np.array_equal(m, loadmat(tmp_path/'a'/f)['MOSz'])
        assert not np.array_equal(m, loadmat(tmp_path/'b'/f)['MOSz'])
    for n in ('0.png', '1234.png', '2399.png'):
        assert (toy_dir/'allimg'/n).read_bytes() == (tmp_path/'a'/'allimg'/n).read_bytes()
        assert Image.open(toy_dir/'allimg'/n).size == (16, 16)
    write_toy_aigciqa2023(tmp_path/'c', size=8)
    assert Image.open(tmp_path/'c'/'allimg'/'5.png').size == (8, 8)


# ---------------------------------------------------------------- reading

def test_layout_is_400g_plus_4p_plus_k(toy):
    t = toy.table
    assert len(toy) == 2400 and toy.targets == ['mos_quality', 'mos_align'] and toy.score_range == (0.0, 100.0)
    assert list(t.columns) == ['name', 'prompt', 'group', 'generator', 'mos_quality', 'mos_align', 'mos_authenticity']
    for g, gen in enumerate(AIGCIQA2023_GENERATORS):
        for p in (0, 17, 99):
            for k in range(4):
                row = t.iloc[400*g + 4*p + k]
                assert (row['name'], row['group'], row['generator']) == (f'{400*g + 4*p + k}.png', f'p{p:03d}', gen)
    assert (t.groupby('group').size() == 24).all() and (t.groupby(['group', 'generator']).size() == 4).all()
    assert sorted(t.group.unique()) == [f'p{i:03d}' for i in range(100)]
    assert (t.prompt == '').all()
    assert toy.paths()[1234] == toy.image_dir/'1234.png' and toy.image_dir.name == 'allimg'


def test_scores_map_to_columns_in_image_order(toy, toy_dir):
    mos = {f: loadmat(toy_dir/f)['MOSz'][:, 0] for f in MATS}
    assert np.array_equal(toy.table.mos_quality, mos['mosz1.mat'])
    assert np.array_equal(toy.table.mos_authenticity, mos['mosz2.mat'])
    assert np.array_equal(toy.table.mos_align, mos['mosz3.mat'])  # correspondence = text-image alignment
    assert all(toy.table[c].dtype == np.float64 for c in ('mos_quality', 'mos_align', 'mos_authenticity'))


def test_load_dataset_and_image_dir(toy, toy_dir, tmp_path):
    assert 'aigciqa2023' in DATASETS
    ds = load_dataset('aigciqa2023', toy_dir)
    pd.testing.assert_frame_equal(ds.table, toy.table)
    assert ds.name == 'aigciqa2023' and ds.score_range == (0.0, 100.0)
    shutil.copytree(toy_dir/'allimg', tmp_path/'elsewhere')
    assert read_aigciqa2023(toy_dir, image_dir=tmp_path/'elsewhere').image_dir == tmp_path/'elsewhere'
    with pytest.raises(DatasetError, match='needs data_dir'): load_dataset('aigciqa2023')
    with pytest.raises(DatasetError, match='prompts= is for aigciqa2023 only'): load_dataset('agiqa1k', toy_dir, prompts='p.txt')


def test_other_readers_keep_the_0_5_scale(tmp_path):
    assert read_agiqa3k(make_toy_agiqa(tmp_path, n_prompts=2)).score_range == (0.0, 5.0)


# ---------------------------------------------------------------- prompts

def test_prompts_file_gives_prompt_i_to_group_i(mats, toy_dir):
    f = mats/'prompts.txt'
    f.write_text(''.join(f'  prompt {i}, with a comma\r\n' for i in range(100)))  # CRLF and padding are fine
    t = read_mats(mats, toy_dir, prompts=f).table
    assert (t.prompt == [f'prompt {int(g[1:])}, with a comma' for g in t.group]).all()
    assert t.prompt[1234] == 'prompt 8, with a comma'
    assert load_dataset('aigciqa2023', mats, toy_dir/'allimg', prompts=f).table.prompt[0] == 'prompt 0, with a comma'


@pytest.mark.parametrize('n', [0, 99, 101])
def test_prompts_file_needs_exactly_100_lines(mats, toy_dir, n):
    f = mats/'prompts.txt'; f.write_text(''.join(f'p{i}\n' for i in range(n)))
    with pytest.raises(DatasetError, match=rf'prompts.txt: expected exactly 100 lines \(line i = prompt i\), found {n}$'):
        read_mats(mats, toy_dir, prompts=f)


def test_prompts_file_missing_or_with_empty_lines(mats, toy_dir):
    with pytest.raises(DatasetError, match='nope.txt: prompt file not found'): read_mats(mats, toy_dir, prompts=mats/'nope.txt')
    lines = [f'p{i}' for i in range(100)]; lines[3] = lines[50] = '  '
    (mats/'prompts.txt').write_text('\n'.join(lines))
    with pytest.raises(DatasetError, match=r'empty prompt line\(s\) \(2 in all; first: line 4, line 51\)'):
        read_mats(mats, toy_dir, prompts=mats/'prompts.txt')


# ---------------------------------------------------------------- score-file errors

@pytest.mark.parametrize('f', MATS)
def test_missing_score_file(mats, toy_dir, f):
    (mats/f).unlink()
    with pytest.raises(DatasetError, match=rf'{f}: AIGCIQA2023 score file not found'): read_mats(mats, toy_dir)


def test_unreadable_score_file(mats, toy_dir):
    (mats/'mosz3.mat').write_bytes(b'this is not MATLAB')
    with pytest.raises(DatasetError, match='mosz3.mat: not a readable MATLAB file'): read_mats(mats, toy_dir)


def test_no_mosz_key(mats, toy_dir):
    savemat(mats/'mosz2.mat', {'SD': np.ones((2400, 1)), 'MOS': np.ones((2400, 1))})
    with pytest.raises(DatasetError, match=r"mosz2.mat: no 'MOSz' array; the file holds \['SD', 'MOS'\]"): read_mats(mats, toy_dir)


@pytest.mark.parametrize('shape', [(2399, 1), (2401, 1), (2400, 2), (1200, 2), (0, 0)])
def test_wrong_length(mats, toy_dir, shape):
    savemat(mats/'mosz1.mat', {'MOSz': np.ones(shape)})
    with pytest.raises(DatasetError, match=rf"mosz1.mat: 'MOSz' must hold 2400 values, one per image; found an array of shape \({shape[0]}, {shape[1]}\)"):
        read_mats(mats, toy_dir)


def test_row_vector_is_fine(mats, toy_dir):
    v = np.linspace(0, 100, 2400)
    savemat(mats/'mosz1.mat', {'MOSz': v[None]})
    assert np.array_equal(read_mats(mats, toy_dir).table.mos_quality, v)


def test_nan_and_inf_are_named_by_image(mats, toy_dir):
    v = np.full((2400, 1), 50.0); v[[3, 1500, 2399], 0] = [np.nan, np.inf, np.nan]
    savemat(mats/'mosz3.mat', {'MOSz': v})
    with pytest.raises(DatasetError, match=r"mosz3.mat: 'MOSz' must be a finite number for every image "
                                            r"\(3 in all; first: 3.png=nan, 1500.png=inf, 2399.png=nan\)"):
        read_mats(mats, toy_dir)


def test_non_numeric_cells_are_named_by_image(mats, toy_dir):
    cell = np.empty((2400, 1), dtype=object); cell[:, 0] = 50.0
    cell[7, 0], cell[8, 0], cell[9, 0] = 'n/a', '61.5', np.zeros((0, 0))
    savemat(mats/'mosz2.mat', {'MOSz': cell})
    with pytest.raises(DatasetError, match=r"mosz2.mat: 'MOSz' must be a finite number for every image "
                                            r"\(2 in all; first: 7.png='n/a', 9.png=\[\]\)"):  # '61.5' is a number
        read_mats(mats, toy_dir)


def test_many_bad_values_are_counted_and_the_first_five_shown(mats, toy_dir):
    v = np.full((2400, 1), 50.0); v[100:140] = np.nan
    savemat(mats/'mosz1.mat', {'MOSz': v})
    with pytest.raises(DatasetError, match=r'\(40 in all; first: 100.png=nan, 101.png=nan, 102.png=nan, 103.png=nan, 104.png=nan, \.\.\.\)'):
        read_mats(mats, toy_dir)


def test_missing_images_are_all_named(mats, toy_dir):
    shutil.copytree(toy_dir/'allimg', mats/'allimg')
    for n in (5, 17, 2399): (mats/'allimg'/f'{n}.png').unlink()
    with pytest.raises(DatasetError) as e: read_aigciqa2023(mats)
    msg = str(e.value)
    assert msg.startswith(f'{mats}: image file(s) not found under {mats}/allimg (3 in all; first: ')
    assert all(f'{mats}/allimg/{n}.png' in msg for n in (5, 17, 2399))
    with pytest.raises(DatasetError, match=r'not found under .* \(2400 in all'): read_aigciqa2023(mats, image_dir=mats/'none')


# ---------------------------------------------------------------- the authors' splits

def their_splits(n, n_splits=10, seed=10, frac=0.8):
    "The authors' procedure spelled out: global RNG seeded once, one index list reshuffled in place per round."
    random.seed(seed)
    index, out = list(range(n)), []
    for _ in range(n_splits):
        random.shuffle(index)
        out.append((sorted(index[:round(frac*n)]), sorted(index[round(frac*n):])))
    return out


def test_authors_splits_match_their_procedure_on_aigciqa2023():
    t = aigciqa2023_layout()
    sp = authors_splits(t)
    assert list(sp.columns) == ['split', 'name', 'part'] and sorted(sp.split.unique()) == list(range(10))
    for i, (train, test) in enumerate(their_splits(100)):
        s = sp[sp.split == i]
        assert (s.name.to_numpy() == t.name.to_numpy()).all()
        got = {p: sorted(int(g[1:]) for g in t.group[s.part.to_numpy() == p].unique()) for p in ('train', 'test')}
        assert got == dict(train=train, test=test) and len(test) == 20
        assert s.part.value_counts().to_dict() == {'train': 1920, 'test': 480}
        assert (t.assign(part=s.part.to_numpy()).groupby('group').part.nunique() == 1).all()  # no prompt is cut
    assert their_splits(100)[0][1] == [1, 4, 5, 9, 20, 26, 31, 35, 41, 46, 54, 59, 61, 62, 66, 73, 83, 91, 98, 99]


def test_rounds_reshuffle_one_stream_not_reseed():
    t = aigciqa2023_layout()
    sp = authors_splits(t, n_splits=3)
    tests = [set(t.group[split_indices(sp, t, i, 'test')]) for i in range(3)]
    assert tests[0] != tests[1] != tests[2]
    fresh = random.Random(10); order = list(range(100)); fresh.shuffle(order)
    assert tests[0] == {f'p{i:03d}' for i in order[80:]}
    again = list(range(100)); random.Random(10).shuffle(again)  # a reset list with a reseeded RNG would repeat split 0
    assert {f'p{i:03d}' for i in again[80:]} == tests[0]
    assert not authors_splits(t, 1, seed=11).equals(authors_splits(t, 1, seed=10))


def test_authors_splits_index_sorted_prompt_strings_like_agiqa3k():
    prompts = ['b cat', 'a dog', 'B cat', 'a dog, anime style', '10 apples', '9 apples'] * 2
    t = pd.DataFrame(dict(name=[f'{i}.jpg' for i in range(12)], prompt=prompts, group=prompts))
    keys = sorted(set(prompts))  # their keys.sort(): code-point order
    assert keys == ['10 apples', '9 apples', 'B cat', 'a dog', 'a dog, anime style', 'b cat']
    sp = authors_splits(t, n_splits=4)
    for i, (train, test) in enumerate(their_splits(6, 4)):
        assert set(t.group[split_indices(sp, t, i, 'test')]) == {keys[j] for j in test}
        assert set(t.group[split_indices(sp, t, i, 'train')]) == {keys[j] for j in train}


def test_authors_splits_guard_and_format_like_group_splits():
    t = aigciqa2023_layout()
    with pytest.raises(ValueError, match='leaves no train or no test group of 100'): authors_splits(t, train_frac=1.0)
    with pytest.raises(ValueError, match='leaves no train'): authors_splits(t, train_frac=0.001)
    a, g = authors_splits(t, 2), group_splits(t, 2)
    assert list(a.columns) == list(g.columns) and a.dtypes.equals(g.dtypes) and len(a) == len(g)
    assert authors_splits(t, 1, train_frac=0.7).part.value_counts()['test'] == 30 * 24


# ---------------------------------------------------------------- native-size images

@pytest.fixture
def mixed(tmp_path):
    "Five images of different sizes and modes (RGB, grey, RGBA, palette; PNG and JPEG)."
    rng = np.random.default_rng(0)
    specs = [('a.png', (20, 30), 'RGB'), ('b.png', (32, 16), 'L'), ('c.png', (8, 8), 'RGBA'),
             ('d.jpg', (24, 40), 'RGB'), ('e.png', (5, 7), 'P')]
    for n, (h, w), mode in specs:
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode).save(tmp_path/n)
    tbl = pd.DataFrame(dict(name=[s[0] for s in specs], prompt='', group=list('abcde'), mos=1.0))
    return tbl, tmp_path, [s[1] for s in specs]


def test_image_sizes_from_headers(mixed):
    tbl, d, sizes = mixed
    assert image_sizes([d/n for n in tbl.name]) == sizes
    assert image_sizes([]) == []


def test_cached_and_streaming_are_identical(mixed):
    tbl, d, sizes = mixed
    ds = AGIQASet('mixed', tbl, ['mos'], d)
    kept = native_images(ds, num_workers=2)
    assert isinstance(kept, NativeImages) and kept.cached and ds._images['native'] is kept and native_images(ds) is kept
    lazy = native_images(AGIQASet('mixed', tbl, ['mos'], d), max_bytes=1)
    assert not lazy.cached and len(lazy) == len(kept) == 5 and lazy.sizes == kept.sizes == sizes
    for i, (h, w) in enumerate(sizes):
        assert kept[i].shape == (3, h, w) and kept[i].dtype == torch.uint8 and kept[i].is_contiguous()
        assert torch.equal(kept[i], lazy[i])
        assert np.array_equal(kept[i].permute(1, 2, 0).numpy(), np.asarray(Image.open(d/tbl.name[i]).convert('RGB')))
    assert torch.equal(lazy[-1], kept[4]) and [x.shape for x in lazy] == [x.shape for x in kept]
    with pytest.raises(IndexError): lazy[5]
    assert 'in memory' in repr(kept) and 'decoded on access' in repr(lazy)


def test_fallback_when_too_big_says_so(mixed, capsys, monkeypatch):
    tbl, d, sizes = mixed
    need = sum(3*h*w for h, w in sizes)
    assert native_images(AGIQASet('mixed', tbl, ['mos'], d), max_bytes=need).cached  # exactly fits
    capsys.readouterr()
    ds = AGIQASet('mixed', tbl, ['mos'], d)
    lazy = native_images(ds, max_bytes=need - 1)
    out = capsys.readouterr().out
    assert not lazy.cached and 'native' not in ds._images
    assert out.count('\n') == 1 and 'the 5 images of mixed need 0.00 GB decoded' in out
    assert 'falling back to decoding each image on every access' in out and f'max_bytes of at least {need}' in out
    monkeypatch.setattr(data, '_free_memory', lambda: 2 * need - 2)  # default: half the free memory
    assert not native_images(AGIQASet('mixed', tbl, ['mos'], d)).cached
    monkeypatch.setattr(data, '_free_memory', lambda: 2 * need)
    assert native_images(AGIQASet('mixed', tbl, ['mos'], d)).cached


def test_free_memory_from_sysconf():
    assert data._free_memory() == os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') > 0


def test_unreadable_files_are_all_named(mixed):
    tbl, d, _ = mixed
    (d/'b.png').write_bytes(b'not a png'); (d/'e.png').write_bytes(b'')
    for call in (lambda: image_sizes([d/n for n in tbl.name]), lambda: native_images(AGIQASet('m', tbl, ['mos'], d))):
        with pytest.raises(DatasetError) as e: call()
        assert str(e.value).startswith(f'images: unreadable image file(s) (2 in all; first: {d}/b.png (')
        assert f'{d}/e.png (' in str(e.value)


def test_truncated_file_is_named_when_decoded(mixed):
    tbl, d, _ = mixed
    (d/'a.png').write_bytes((d/'a.png').read_bytes()[:100])  # the header still gives the size; the pixels are cut off
    assert image_sizes([d/'a.png']) == [(20, 30)]
    with pytest.raises(DatasetError, match=rf'unreadable image file\(s\) \(1 in all; first: {d}/a.png \(OSError'):
        native_images(AGIQASet('m', tbl, ['mos'], d))
    lazy = native_images(AGIQASet('m', tbl, ['mos'], d), max_bytes=1)
    assert lazy[3].shape == (3, 24, 40)
    with pytest.raises(DatasetError, match=rf'unreadable image file \(1 in all; first: {d}/a.png \(OSError'): lazy[0]


def test_native_images_on_the_toy_aigciqa2023(toy_dir):
    ds = read_aigciqa2023(toy_dir)
    imgs = native_images(ds, num_workers=2)
    assert imgs.cached and len(imgs) == 2400 and imgs.sizes == [(16, 16)] * 2400
    assert torch.equal(imgs[1234], torch.from_numpy(np.array(Image.open(toy_dir/'allimg'/'1234.png'))).permute(2, 0, 1))
