"Scoring your own images: `Scorer` against the runs' own predictions, `ipiqa score` and each bad input, the final model."
import dataclasses, html.parser, io, json, os, shutil, socket, subprocess, sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import ipiqa.scoring as scoring
from ipiqa.data import make_toy_agiqa, read_agiqa3k
from ipiqa.model import PromptEncoder
from ipiqa.scoring import ModelError, Scorer, cli_parser, main, model_files, train_final
from ipiqa.toyclip import toy_clip_file
from ipiqa.training import TrainConfig, Trainer, cross_validate

TARGETS = ['mos_quality', 'mos_align']


pytestmark = pytest.mark.usefixtures('one_thread')   # tests/conftest.py


@pytest.fixture(scope='module')
def toy(tmp_path_factory): return read_agiqa3k(make_toy_agiqa(tmp_path_factory.mktemp('toy')/'toy', n_prompts=5))


@pytest.fixture(scope='module')
def run(tmp_path_factory, toy):
    "IP-IQA, 2 splits, 1 epoch."
    return cross_validate(TrainConfig(n_splits=2, epochs=1, image_size=64, num_workers=1), toy, tmp_path_factory.mktemp('ipiqa'))


@pytest.fixture(scope='module')
def agiqa_run(tmp_path_factory, toy):
    "CLIP-AGIQA (its toy preset: crops of images squashed to 96 px), 1 split, 1 epoch."
    return cross_validate(TrainConfig(method='clip-agiqa', n_splits=1, epochs=1, num_workers=1), toy, tmp_path_factory.mktemp('clip-agiqa'))


def _paths(toy): return [toy.image_dir/n for n in toy.table['name']]


def _test_predictions(run, split):
    "The run's own scores of split `split`'s test images: a table name × target."
    return pd.read_csv(run.out_dir/f'split{split}'/'predictions.csv').pivot(index='name', columns='target', values='pred')


def _cli(*args, module=False):
    "`ipiqa ...` in a fresh process: the installed console script, or `python -m ipiqa.scoring`."
    exe = shutil.which('ipiqa', path=str(Path(sys.executable).parent))
    cmd = [sys.executable, '-m', 'ipiqa.scoring'] if module or exe is None else [exe]
    return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS='1', HF_HUB_OFFLINE='1'))


def _score(capsys, *args):
    "`ipiqa score ARGS` in this process: (exit status, stdout, stderr)."
    code = main(['score', *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def _skipped(err): return [l for l in err.splitlines() if 'skipped ' in l and ': ' in l and not l.startswith('ipiqa score: scored')]


# 1. the command's CSV = the API's scores = the run's own test predictions
def test_cli_csv_equals_api_and_the_runs_predictions(run, toy, tmp_path):
    model = run.out_dir/'split0'/'model.pt'
    r = _cli('score', '--model', model, toy.image_dir, '--prompts', toy.image_dir.parent/'data.csv', '--errors', tmp_path/'errors.csv')
    assert r.returncode == 0, r.stderr
    assert 'one model, IP-IQA on RN50-tiny' in r.stderr and 'scored 50 images, skipped 0' in r.stderr
    assert pd.read_csv(tmp_path/'errors.csv').empty
    cli = pd.read_csv(io.StringIO(r.stdout)).set_index('path')
    assert list(cli.columns) == ['prompt', *TARGETS] and len(cli) == len(toy)
    api = Scorer.load(model, device='cpu', num_workers=1)(_paths(toy), toy.table['prompt']).set_axis([str(p) for p in _paths(toy)])
    np.testing.assert_allclose(cli.loc[api.index, TARGETS].to_numpy(), api.to_numpy(), rtol=0, atol=1e-7)
    pred, by_name = _test_predictions(run, 0), cli.set_axis([Path(p).name for p in cli.index])
    assert len(pred) == 10
    np.testing.assert_allclose(by_name.loc[pred.index, TARGETS].to_numpy(), pred[TARGETS].to_numpy(), rtol=0, atol=1e-4)
    assert (by_name.loc[toy.table['name'], 'prompt'].to_numpy() == toy.table['prompt'].to_numpy()).all()


def test_cli_with_a_clip_agiqa_model_an_image_table_and_json_lines(agiqa_run, toy, tmp_path):
    "CLIP-AGIQA (every crop averaged) through `python -m ipiqa.scoring`; IMAGES a `path,prompt` table with paths relative to it."
    table = pd.DataFrame(dict(path=[f'images/{n}' for n in toy.table['name']], prompt=toy.table['prompt']))
    table.to_csv(toy.image_dir.parent/'list.csv', index=False)
    r = _cli('score', '-m', agiqa_run.out_dir, toy.image_dir.parent/'list.csv', '-o', tmp_path/'scores.jsonl', '--sort', 'mos_quality', module=True)
    assert r.returncode == 0, r.stderr
    assert 'one model' not in r.stderr and 'ensemble of 1 split models (their mean), CLIP-AGIQA on ViT-B-32-tiny' in r.stderr
    got = pd.read_json(tmp_path/'scores.jsonl', lines=True)
    assert list(got.columns) == ['path', 'prompt', *TARGETS] and len(got) == len(toy)
    assert got['mos_quality'].is_monotonic_decreasing
    pred = _test_predictions(agiqa_run, 0)
    got = got.set_index(got['path'].map(lambda p: Path(p).name))
    np.testing.assert_allclose(got.loc[pred.index, TARGETS].to_numpy(), pred[TARGETS].to_numpy(), rtol=0, atol=1e-4)


def test_a_batch_holds_batch_size_images_whatever_their_views(agiqa_run, toy):
    "`batch_size` counts images, also for CLIP-AGIQA's every-crop view (9 crops of a toy image), up to the view's `max_views` a batch; batching changes no score."
    paths, prompts = _paths(toy)[:10], toy.table['prompt'][:10]
    scorer = Scorer.load(agiqa_run.out_dir, device='cpu', batch_size=4, num_workers=1)
    seen = []
    hook = scorer.members[0].model.register_forward_pre_hook(lambda module, args: seen.append(len(args[0])))
    four = scorer(paths, prompts)
    assert seen == [36, 36, 18]                      # 4 + 4 + 2 images of 9 crops (before: one image a batch, 9 crops)
    seen.clear(); scorer.view.max_views = 20         # a cap below 4 images' crops: 2 images a batch
    capped = scorer(paths, prompts)
    assert seen == [18] * 5
    hook.remove()
    one = Scorer.load(agiqa_run.out_dir, device='cpu', batch_size=1, num_workers=1)(paths, prompts)
    np.testing.assert_allclose(four.to_numpy(), one.to_numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(capped.to_numpy(), one.to_numpy(), rtol=0, atol=1e-5)


# 2. the API
def test_ensemble_is_the_mean_of_the_split_models(run, toy):
    paths, prompts = _paths(toy), toy.table['prompt']
    s = Scorer.load(run.out_dir, device='cpu', num_workers=1)
    assert (s.kind, s.targets, s.score_range, s.lower_better) == ('ensemble', TARGETS, (0.0, 5.0), False)
    assert s.describe().startswith('ensemble of 2 split models (their mean), IP-IQA on RN50-tiny')
    each = [Scorer.load(f, device='cpu', num_workers=1)(paths, prompts).to_numpy() for f in model_files(run.out_dir)[1]]
    np.testing.assert_allclose(s(paths, prompts).to_numpy(), np.mean(each, 0), rtol=0, atol=1e-6)
    assert np.abs(each[0] - each[1]).max() > 1e-3          # two different models: the mean is not either one


@pytest.mark.parametrize('which', ['run', 'agiqa_run'])
def test_path_pil_and_tensor_inputs_score_the_same(which, toy, request):
    s = Scorer.load(request.getfixturevalue(which).out_dir, device='cpu', num_workers=1)
    paths, prompts = _paths(toy)[:6], toy.table['prompt'][:6].tolist()
    by_path = s(paths, prompts)
    pil = [Image.open(p) for p in paths]
    tensors = [torch.from_numpy(np.asarray(Image.open(p).convert('RGB')).copy()).permute(2, 0, 1) for p in paths]
    pd.testing.assert_frame_equal(s(pil, prompts), by_path)
    pd.testing.assert_frame_equal(s(tensors, prompts), by_path)
    pd.testing.assert_frame_equal(s([str(p) for p in paths], prompts), by_path)
    assert list(by_path.columns) == TARGETS and by_path.notna().all().all()


def test_each_distinct_prompt_is_encoded_once_per_call(run, toy, monkeypatch):
    "5 prompts × 10 images in batches of 4: the [QA] text tower runs once, on the 5 prompts, before the batches; not once per batch or image."
    rows, encode = [], PromptEncoder.encode
    monkeypatch.setattr(PromptEncoder, 'encode', lambda self, tokens: rows.append(len(tokens)) or encode(self, tokens))
    s = Scorer.load(run.out_dir/'split0'/'model.pt', device='cpu', num_workers=1, batch_size=4)
    shuffled = toy.table.sample(frac=1, random_state=0)
    s([toy.image_dir/n for n in shuffled['name']], shuffled['prompt'])
    assert rows == [5]                                        # one pass over the call's distinct prompts (`OncePerCall.prefill`)
    assert type(s.members[0].model.text) is PromptEncoder     # the call's memo is gone with the call


def test_a_checkpoint_loads_and_scores_offline(run, toy, tmp_path, monkeypatch):
    "A model trained from downloaded weights (its config says pretrained='openai') rebuilds from its own state dict, no network."
    ck = torch.load(run.out_dir/'split0'/'model.pt', weights_only=False)
    ck['config'] = dict(ck['config'], pretrained='openai')
    torch.save(ck, tmp_path/'model.pt')
    want = Scorer.load(run.out_dir/'split0'/'model.pt', device='cpu', num_workers=1)(_paths(toy)[:5], toy.table['prompt'][:5])
    def no_network(*a, **k): raise OSError('network access in a test')
    monkeypatch.setattr(socket.socket, 'connect', no_network)
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    s = Scorer.load(tmp_path/'model.pt', device='cpu', num_workers=1)
    pd.testing.assert_frame_equal(s(_paths(toy)[:5], toy.table['prompt'][:5]), want)
    clipiqa = Scorer.load('clipiqa', pretrained='toy-photo', device='cpu', num_workers=1)    # the toy CLIP ships with the package
    assert clipiqa.targets == ['CLIP-IQA'] and not clipiqa.reads_prompt and len(clipiqa(_paths(toy)[:3])) == 3
    with pytest.raises(ModelError, match="encodes 'Good photo.' and 'Bad photo.' alike"):   # scores would all be 0.5
        Scorer.load('clipiqa', pretrained='toy', device='cpu', num_workers=1)


def test_from_ipiqa_import_scorer():
    from ipiqa import Scorer as S
    assert S is Scorer


# 3. bad input never loses the rest
def test_missing_image_is_skipped_and_named(run, toy, tmp_path, capsys):
    code, out, err = _score(capsys, '-m', run.out_dir, *_paths(toy)[:3], tmp_path/'gone.png', '--prompt', 'a red circle',
                            '--errors', tmp_path/'errors.csv')
    assert code == 1 and len(pd.read_csv(io.StringIO(out))) == 3
    assert _skipped(err) == [f"ipiqa score: skipped {tmp_path/'gone.png'}: file not found"]
    assert pd.read_csv(tmp_path/'errors.csv').values.tolist() == [[str(tmp_path/'gone.png'), 'file not found']]


def test_unreadable_image_is_skipped_and_named(run, toy, tmp_path, capsys):
    d = tmp_path/'images'; d.mkdir()
    for n in toy.table['name'][:3]: shutil.copy(toy.image_dir/n, d/n)
    (d/'garbage.png').write_bytes(b'not a png at all')
    whole = (toy.image_dir/toy.table['name'][0]).read_bytes()
    (d/'truncated.png').write_bytes(whole[:len(whole) // 2])
    code, out, err = _score(capsys, '-m', run.out_dir, d, '--prompt', 'a red circle', '--errors', tmp_path/'errors.csv')
    assert code == 1 and len(pd.read_csv(io.StringIO(out))) == 3
    errors = pd.read_csv(tmp_path/'errors.csv')
    reason = {Path(p).name: r for p, r in zip(errors['path'], errors['reason'])}
    assert sorted(reason) == ['garbage.png', 'truncated.png'] and len(_skipped(err)) == 2
    assert reason['garbage.png'].startswith('UnidentifiedImageError: cannot identify image file')
    assert reason['truncated.png'].startswith('OSError: image file is truncated')


def test_image_without_prompt_is_skipped_and_named(run, toy, tmp_path, capsys):
    names = toy.table['name'][:4].tolist()
    (tmp_path/'prompts.json').write_text(json.dumps({n: p for n, p in zip(names[:3], toy.table['prompt'])}))
    code, out, err = _score(capsys, '-m', run.out_dir, *[toy.image_dir/n for n in names], '--prompts', tmp_path/'prompts.json',
                            '--errors', tmp_path/'errors.csv')
    assert code == 1 and len(pd.read_csv(io.StringIO(out))) == 3
    assert pd.read_csv(tmp_path/'errors.csv').values.tolist() == [[str(toy.image_dir/names[3]), 'no prompt (this model reads the prompt an image was made from)']]
    assert len(_skipped(err)) == 1


def test_blind_model_needs_no_prompt(agiqa_run, toy, capsys):
    code, out, err = _score(capsys, '-m', agiqa_run.out_dir, *_paths(toy)[:3])
    assert code == 0 and list(pd.read_csv(io.StringIO(out)).columns) == ['path', *TARGETS]


def test_non_image_file_in_a_folder_is_skipped_and_named(run, toy, tmp_path, capsys):
    d = tmp_path/'images'; (d/'sub').mkdir(parents=True)
    for n in toy.table['name'][:3]: shutil.copy(toy.image_dir/n, d/'sub'/n)
    (d/'notes.txt').write_text('prompts I tried')
    (d/'.DS_Store').write_bytes(b'\0')                          # hidden: not reported
    code, out, err = _score(capsys, '-m', run.out_dir, d, '--prompt', 'a red circle', '--errors', tmp_path/'errors.csv')
    assert code == 1 and len(pd.read_csv(io.StringIO(out))) == 3
    errors = pd.read_csv(tmp_path/'errors.csv')
    assert errors['path'].tolist() == [str(d/'notes.txt')] and errors['reason'][0].startswith("not an image file (extension '.txt'")
    assert len(_skipped(err)) == 1


def test_bad_model_path_is_one_error_before_any_image_is_read(toy, tmp_path):
    r = _cli('score', '--model', tmp_path/'no-such-run', toy.image_dir, tmp_path/'gone.png', '--prompt', 'x', '--errors', tmp_path/'errors.csv')
    assert r.returncode == 2 and r.stdout == ''
    assert r.stderr.strip().splitlines() == [f"ipiqa score: error: {tmp_path/'no-such-run'}: no such file or folder, and not a baseline (clipscore, clipiqa)"]
    assert not (tmp_path/'errors.csv').exists()


def _other_kinds(run, tmp_path):
    ck = torch.load(run.out_dir/'split0'/'model.pt', weights_only=False)
    torch.save(dict(arch='RN50-tiny', image_size=64, state_dict=ck['state_dict']), tmp_path/'tower.pt')          # no config
    torch.save(dict(ck, config=dict(ck['config'], image_size=128)), tmp_path/'other_size.pt')                     # weights do not fit
    torch.save(dict(ck, method='no-such-method'), tmp_path/'other_method.pt')
    (tmp_path/'empty').mkdir()
    return dict(clip=(toy_clip_file('RN50-tiny'), "not a cross_validate checkpoint"),
                tower=(tmp_path/'tower.pt', "not a cross_validate checkpoint"),
                size=(tmp_path/'other_size.pt', "cannot be loaded as an ipiqa model (RuntimeError"),
                method=(tmp_path/'other_method.pt', "unknown method 'no-such-method'"),
                csv=(run.out_dir/'splits.csv', "not a cross_validate checkpoint (torch.load"),
                folder=(tmp_path/'empty', "holds no final/model.pt and no split*/model.pt"))


@pytest.mark.parametrize('kind', ['clip', 'tower', 'size', 'method', 'csv', 'folder'])
def test_checkpoint_of_another_kind_is_one_error_before_any_image_is_read(kind, run, toy, tmp_path, capsys, monkeypatch):
    path, message = _other_kinds(run, tmp_path)[kind]
    read = []
    monkeypatch.setattr(scoring, 'view_pixels', lambda *a: read.append(a))
    monkeypatch.setattr(scoring, 'collect_images', lambda *a, **k: read.append(a))
    code, out, err = _score(capsys, '-m', path, toy.image_dir, '--prompt', 'x')
    assert (code, out, read) == (2, '', [])
    assert len(err.strip().splitlines()) == 1 and err.startswith('ipiqa score: error: ') and message in err, err


def test_bad_sort_column_or_prompts_file_is_one_error(run, toy, tmp_path, capsys):
    code, out, err = _score(capsys, '-m', run.out_dir, toy.image_dir, '--sort', 'quality')
    assert code == 2 and "--sort quality: not a column of this model's scores (mos_quality, mos_align)" in err
    (tmp_path/'p.csv').write_text('file,text\na.png,a cat\n')
    code, out, err = _score(capsys, '-m', run.out_dir, toy.image_dir, '--prompts', tmp_path/'p.csv')
    assert code == 2 and 'a prompts table needs columns name,prompt' in err


# 4. the report, the help
class _Rows(html.parser.HTMLParser):
    "Rows and cells of each <table id=...>, and the images."
    def __init__(self):
        super().__init__(); self.tables, self.images, self.table, self.cell = {}, [], None, None
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == 'table': self.table = self.tables.setdefault(a.get('id'), [])
        elif tag == 'tr' and self.table is not None: self.table.append([])
        elif tag in ('td', 'th'): self.cell = ''
        elif tag == 'img': self.images.append(a['src'])
    def handle_endtag(self, tag):
        if tag in ('td', 'th'): self.table[-1].append(self.cell); self.cell = None
        elif tag == 'table': self.table = None
    def handle_data(self, data):
        if self.cell is not None: self.cell += data


def test_html_report_has_one_sorted_row_per_scored_image(run, toy, tmp_path, capsys):
    code, out, err = _score(capsys, '-m', run.out_dir, *_paths(toy)[:8], tmp_path/'gone.png', '--prompts', toy.image_dir.parent/'data.csv',
                            '--report', tmp_path/'report.html', '--sort', 'mos_align', '-q')
    assert code == 1 and len(_skipped(err)) == 1        # gone.png: data.csv has no prompt for it
    p = _Rows(); p.feed((tmp_path/'report.html').read_text(encoding='utf-8')); p.close()
    header, *rows = p.tables['scores']
    assert header == ['#', 'image', 'path', 'prompt', *TARGETS] and len(rows) == 8
    assert len(p.images) == 8 and all(s.startswith('data:image/jpeg;base64,') and len(s) > 500 for s in p.images)
    align = [float(r[-1]) for r in rows]
    assert align == sorted(align, reverse=True)
    assert [r[3] for r in rows] == [toy.table.set_index('name').loc[Path(r[2]).name, 'prompt'] for r in rows]
    assert p.tables['skipped'][1][0] == str(tmp_path/'gone.png')
    got = pd.read_csv(io.StringIO(out)).set_index('path')
    np.testing.assert_allclose([float(r[-1]) for r in rows], got.loc[[r[2] for r in rows], 'mos_align'], atol=5e-4)   # shown to 3 decimals


def test_help_is_complete(capsys):
    with pytest.raises(SystemExit) as e: main(['score', '--help'])
    out = capsys.readouterr().out
    assert e.value.code == 0
    for action in cli_parser().commands['score']._actions:
        assert all(o in out for o in action.option_strings) and (action.help is None or action.help.split()[0] in out)
    for words in ('IMAGES', 'clipscore | clipiqa', 'name,prompt', 'JSON lines', 'exit status: 0', '1 some skipped', '2 nothing scored', 'examples:'):
        assert words in out


# 5. the final model
def test_train_final_writes_a_loadable_model_and_resumes(toy, tmp_path, monkeypatch):
    cfg = TrainConfig(epochs=2, image_size=64, num_workers=1)
    whole = train_final(cfg, toy, tmp_path/'whole')
    ck = torch.load(whole, weights_only=False)
    assert sorted(ck) == ['config', 'epoch', 'method', 'score_range', 'state_dict', 'targets']
    assert (ck['method'], ck['epoch'], ck['targets'], ck['config']['select']) == ('ipiqa', 2, TARGETS, 'last')

    calls, train_epoch = [], Trainer.train_epoch
    def interrupted(self, *a, **k):
        calls.append(1)
        if len(calls) == 2: raise KeyboardInterrupt
        return train_epoch(self, *a, **k)
    monkeypatch.setattr(Trainer, 'train_epoch', interrupted)
    with pytest.raises(KeyboardInterrupt): train_final(cfg, toy, tmp_path/'resumed')
    assert (tmp_path/'resumed'/'final'/'state.pt').is_file() and not (tmp_path/'resumed'/'final'/'model.pt').exists()
    monkeypatch.setattr(Trainer, 'train_epoch', train_epoch)
    seen = []
    monkeypatch.setattr(Trainer, 'train_epoch', lambda self, *a, **k: seen.append(1) or train_epoch(self, *a, **k))
    resumed = train_final(cfg, toy, tmp_path/'resumed')
    assert len(seen) == 1                                   # only the second epoch was trained again
    got = torch.load(resumed, weights_only=False)
    for k, v in ck['state_dict'].items(): torch.testing.assert_close(got['state_dict'][k], v, rtol=0, atol=1e-6)
    hist = lambda run: pd.read_csv(run.parent/'history.csv').drop(columns='seconds')   # wall times differ
    pd.testing.assert_frame_equal(hist(resumed), hist(whole))
    assert not (resumed.parent/'state.pt').exists()

    s = Scorer.load(tmp_path/'resumed', device='cpu', num_workers=1)
    assert s.kind == 'final' and s.describe().startswith('final model (trained on all images), IP-IQA on RN50-tiny')
    scores = s(_paths(toy)[:4], toy.table['prompt'][:4])
    assert scores.shape == (4, 2) and scores.notna().all().all()
