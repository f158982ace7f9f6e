"Tests of `carvana_fastai.submission`: resumable, sharded and ordered submissions from `predict_folder`, merging, the validator."
import gzip, io, contextlib, warnings
import numpy as np, pandas as pd, pytest, torch
from PIL import Image
from carvana_fastai.rle import rle_encode, rle_decode
from carvana_fastai.images import list_images
from carvana_fastai.ensemble import predict_image
from carvana_fastai.submission import predict_folder, merge_shards, validate_submission, parse_shard
from tiny_models import tiny_model, tiny_ensemble, test_dir

class Interrupt(torch.nn.Module):
    "`model`, except that call number `n` raises KeyboardInterrupt (a run stopped by hand)."
    def __init__(self, model, n): super().__init__(); self.model, self.n, self.calls = model, n, 0
    def forward(self, x):
        self.calls += 1
        if self.calls == self.n: raise KeyboardInterrupt
        return self.model(x)

def read_rows(csv): return pd.read_csv(csv, dtype=str, keep_default_na=False)

# --- predict_folder ---------------------------------------------------------------------------------------------------

def test_predict_folder_rows_match_direct_prediction(test_dir, tmp_path):
    ens = tiny_ensemble()
    s = predict_folder(ens, test_dir, tmp_path/'sub.csv', bs=3, workers=0, progress=False)
    df = read_rows(s['out'])
    assert list(df.img) == list_images(test_dir) and s['predicted'] == len(df) == 10
    for name, rle in zip(df.img, df.rle_mask):
        assert rle == rle_encode(predict_image(ens, test_dir/name))
    assert df.rle_mask.str.len().gt(0).all()
    assert validate_submission(s['out'], data=test_dir, shape=None)['ok']

def test_predict_folder_workers_and_gzip_same_rows(test_dir, tmp_path):
    ens = tiny_ensemble()
    a = predict_folder(ens, test_dir, tmp_path/'a.csv', bs=4, workers=0, progress=False)['out']
    b = predict_folder(ens, test_dir, tmp_path/'b.csv', bs=3, workers=2, gzip=True, progress=False)['out']
    assert b.name == 'b.csv.gz'
    assert gzip.open(b).read() == a.read_bytes()

def test_sample_submission_order(tiny_carvana, test_dir, tmp_path):
    names = list_images(test_dir)[::-1]
    (tmp_path/'sample.csv').write_text('img,rle_mask\n' + ''.join(f'{n},1 1\n' for n in names))
    out = predict_folder(tiny_ensemble(), test_dir, tmp_path/'sub.csv', tmp_path/'sample.csv', workers=0, progress=False)['out']
    assert list(read_rows(out).img) == names
    validate_submission(out, sample_submission=tmp_path/'sample.csv', shape=(64, 96))

def test_missing_image_of_sample_submission_fails_before_predicting(test_dir, tmp_path):
    (tmp_path/'sample.csv').write_text('img,rle_mask\nnot_there_01.jpg,1 1\n')
    with pytest.raises(FileNotFoundError, match='not_there_01.jpg'):
        predict_folder(tiny_ensemble(), test_dir, tmp_path/'sub.csv', tmp_path/'sample.csv', workers=0, progress=False)
    assert not list(tmp_path.glob('sub.csv*'))

def test_resume_equals_uninterrupted(test_dir, tmp_path):
    one = predict_folder(tiny_ensemble('none'), test_dir, tmp_path/'one.csv', bs=2, workers=0, progress=False)['out']
    ens = tiny_ensemble('none')
    ens.members[0].tta.model = Interrupt(ens.members[0].model, 4)       # stops during the 4th batch
    with pytest.raises(KeyboardInterrupt):
        predict_folder(ens, test_dir, tmp_path/'res.csv', bs=2, workers=0, progress=False)
    part = tmp_path/'res.csv.part'
    lines = part.read_text().splitlines()
    assert len(lines) == 1 + 6 and not (tmp_path/'res.csv').exists()   # 3 batches kept, flushed
    with open(part, 'a') as f: f.write(lines[1][:10])                  # a half-written line, as a crash would leave it
    s = predict_folder(tiny_ensemble('none'), test_dir, tmp_path/'res.csv', bs=3, workers=0, resume=True, progress=False)
    assert (s['kept'], s['predicted']) == (6, 4)
    assert s['out'].read_bytes() == one.read_bytes() and not part.exists()

def test_resume_refuses_rows_of_another_run(test_dir, tmp_path):
    (tmp_path/'res.csv.part').write_text('img,rle_mask\nsomething_else_01.jpg,1 1\n')
    with pytest.raises(ValueError, match='not in this run'):
        predict_folder(tiny_ensemble(), test_dir, tmp_path/'res.csv', workers=0, resume=True, progress=False)

def test_shards_merge_equals_one_shot(test_dir, tmp_path):
    ens = tiny_ensemble()
    one = predict_folder(ens, test_dir, tmp_path/'one.csv', workers=0, progress=False)['out']
    parts = [predict_folder(ens, test_dir, tmp_path/f's{i}.csv', shard=f'{i}/3', workers=0, progress=False)['out'] for i in range(3)]
    sizes = [len(read_rows(p)) for p in parts]
    assert sum(sizes) == 10 and max(sizes) - min(sizes) <= 1
    assert merge_shards(parts, tmp_path/'merged.csv', data=test_dir).read_bytes() == one.read_bytes()
    with pytest.raises(ValueError, match='missing'): merge_shards(parts[1:], tmp_path/'m.csv', data=test_dir)
    with pytest.raises(ValueError, match='s0.csv and in'): merge_shards(parts + parts[:1], tmp_path/'m.csv', data=test_dir)

def test_corrupt_and_odd_images_never_crash(test_dir, tmp_path, caplog):
    names = list_images(test_dir)
    (test_dir/'bad000000000_01.jpg').write_bytes((test_dir/names[0]).read_bytes()[:500])      # truncated JPEG
    (test_dir/'bad000000000_02.jpg').write_bytes(b'not a jpeg at all' * 10)                   # garbage
    (test_dir/'bad000000000_03.jpg').write_bytes(b'')                                          # empty
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 80, 3), dtype=np.uint8)).save(test_dir/'odd000000000_01.jpg')
    with caplog.at_level('WARNING'):
        s = predict_folder(tiny_ensemble(), test_dir, tmp_path/'sub.csv', bs=4, workers=0, progress=False)
    bad = [f'bad000000000_0{i}.jpg' for i in (1, 2, 3)]
    assert sorted(s['corrupt']) == bad and s['odd_sizes'] == {'odd000000000_01.jpg': (48, 80)}
    assert all(b in caplog.text for b in bad)
    rows = dict(zip(*read_rows(s['out']).values.T))
    assert len(rows) == len(names) + 4 and all(rows[b] == '' for b in bad)
    odd = rle_decode(rows['odd000000000_01.jpg'], (48, 80))                                  # its own size
    assert odd.sum() > 0 and odd.tolist() == predict_image(tiny_ensemble(), test_dir/'odd000000000_01.jpg').tolist()
    assert validate_submission(s['out'], data=test_dir, shape=None)['ok']

# --- the validator ----------------------------------------------------------------------------------------------------

@pytest.fixture
def good_csv(test_dir, tmp_path):
    return predict_folder(tiny_ensemble(), test_dir, tmp_path/'good.csv', workers=0, progress=False)['out']

BAD = {
    'header':        (lambda l: ['image,rle_mask'] + l[1:], "header is 'image,rle_mask'"),
    'no header':     (lambda l: l[1:], 'header is'),
    'missing image': (lambda l: l[:-1], '1 expected images have no row'),
    'duplicate':     (lambda l: l + [l[1]], 'appears 2 times'),
    'unknown image': (lambda l: l + ['ffff00000000_01.jpg,'], 'ffff00000000_01.jpg: not an expected image'),
    'extra field':   (lambda l: l[:1] + [l[1] + ',x'] + l[2:], '3 fields, expected 2'),
    'one field':     (lambda l: l[:1] + [l[1].split(',')[0]] + l[2:], '1 fields, expected 2'),
    'not a number':  (lambda l: l[:1] + [l[1].split(',')[0] + ',1 2 3.5 1'] + l[2:], "token '3.5' is not an integer"),
    'odd count':     (lambda l: l[:1] + [l[1].split(',')[0] + ',1 2 7'] + l[2:], 'odd count'),
    'zero start':    (lambda l: l[:1] + [l[1].split(',')[0] + ',0 3'] + l[2:], 'numbered from 1'),
    'negative len':  (lambda l: l[:1] + [l[1].split(',')[0] + ',4 -3'] + l[2:], 'lengths must be >= 1'),
    'unsorted':      (lambda l: l[:1] + [l[1].split(',')[0] + ',50 2 10 2'] + l[2:], 'unsorted runs'),
    'overlapping':   (lambda l: l[:1] + [l[1].split(',')[0] + ',10 5 12 2'] + l[2:], 'overlapping runs'),
    'outside shape': (lambda l: l[:1] + [l[1].split(',')[0] + f',{64*96} 2'] + l[2:], 'past the end of the image (6144 pixels)'),
}

@pytest.mark.parametrize('kind', list(BAD))
def test_validator_catches(kind, good_csv, test_dir, tmp_path):
    edit, msg = BAD[kind]
    bad = tmp_path/'bad.csv'
    bad.write_text('\n'.join(edit(good_csv.read_text().splitlines())) + '\n')
    with pytest.raises(ValueError, match=msg.replace('(', r'\(').replace(')', r'\)')):
        validate_submission(bad, data=test_dir, shape=(64, 96))
    assert not validate_submission(bad, data=test_dir, shape=(64, 96), raise_error=False)['ok']

def test_validator_accepts_good_and_gz(good_csv, test_dir, tmp_path):
    r = validate_submission(good_csv, data=test_dir, shape=(64, 96))
    assert r['ok'] and r['rows'] == r['images'] == r['expected'] == 10
    gz = tmp_path/'good.csv.gz'
    gz.write_bytes(gzip.compress(good_csv.read_bytes()))
    assert validate_submission(gz, data=test_dir, shape=(64, 96))['ok']
    with pytest.raises(ValueError, match='past the end'):                # 64x96 runs do not fit a 10x10 image
        validate_submission(good_csv, shape=(10, 10))

def test_progress_lines_in_a_log_and_old_keywords(test_dir, tmp_path):
    "Off a terminal, progress is a line per tenth of the images with rate and ETA; `folder`/`num_workers`/`thresh` still work."
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        s = predict_folder(tiny_ensemble(), folder=test_dir, out_csv=tmp_path/'sub.csv', bs=5, num_workers=0, thresh=0.5)
    lines = buf.getvalue().splitlines()
    assert [l.split(' (')[0] for l in lines[:2]] == ['predict: 5/10', 'predict: 10/10'] and 'ETA' in lines[0], lines
    assert lines[-1].startswith(str(s['out'])) and '10 rows' in lines[-1]
    assert sorted(str(o.message).split("'")[1] for o in w if issubclass(o.category, DeprecationWarning)) == ['folder', 'num_workers', 'thresh']

def test_shard_checked_in_one_place(test_dir, tmp_path):
    assert parse_shard('2/3') == (2, 3)
    for bad in ('3/3', '-1/2', 'x', (1,)):
        with pytest.raises(ValueError, match='shard must be'): parse_shard(bad)
        with pytest.raises(ValueError, match='shard must be'): predict_folder(tiny_ensemble(), test_dir, tmp_path/'s.csv', shard=bad, progress=False)
    assert not list(tmp_path.glob('s.csv*'))
