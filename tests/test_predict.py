"End-to-end and bad-input tests of `carvana_fastai.predict`: TTA inversion, ensembles, resumable and sharded submissions, the validator."
import gzip, shutil, importlib.util
import numpy as np, pandas as pd, pytest, torch, torch.nn as nn
from pathlib import Path
from PIL import Image
from carvana_fastai.rle import rle_encode, rle_decode
from carvana_fastai.predict import (TTA, HFlip, Member, Ensemble, load_ensemble, combine_probs, probs_to_mask, predict_folder,
                                    merge_shards, validate_submission, evaluate_ensemble, best_threshold, save_overlays,
                                    list_images, to_markdown, predict_image)

pytestmark = pytest.mark.filterwarnings('ignore:The image decoding and encoding capabilities of TorchVision:DeprecationWarning')
HAVE_UNET = importlib.util.find_spec('carvana_fastai.unet') is not None
STATS = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])

def tiny_model(seed=0):
    "A stand-in segmentation model (normalised images -> logits), not flip-symmetric."
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 1, (1, 5), padding=(0, 2))).eval()

def tiny_ensemble(tta='hflip', merge='mean', n=2, **kw):
    return load_ensemble([(tiny_model(i), dict(stats=STATS, size=(32 + 8*i, 48))) for i in range(n)], tta=tta, merge=merge,
                         device='cpu', **kw)

class Interrupt(nn.Module):
    "`model`, except that call number `n` raises KeyboardInterrupt (a run stopped by hand)."
    def __init__(self, model, n): super().__init__(); self.model, self.n, self.calls = model, n, 0
    def forward(self, x):
        self.calls += 1
        if self.calls == self.n: raise KeyboardInterrupt
        return self.model(x)

@pytest.fixture
def test_dir(tiny_carvana, tmp_path):
    "A private copy of the synthetic test folder with more images (so batches and shards are not trivial)."
    d = tmp_path/'test'
    shutil.copytree(tiny_carvana/'test', d)
    for f in sorted((tiny_carvana/'train').glob('*.jpg'))[:6]: shutil.copy(f, d/f.name)
    return d

def read_rows(csv): return pd.read_csv(csv, dtype=str, keep_default_na=False)

# --- TTA and ensembles ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('tta', ['hflip', 'flips'])
def test_tta_inversion_full_pipeline_odd_size(tta):
    "A flipped photo gives the flipped prediction through the whole member pipeline (resize, TTA, upsample) at an odd size."
    ens = tiny_ensemble(tta)
    x = torch.randint(0, 256, (2, 3, 45, 67), dtype=torch.uint8)
    with torch.inference_mode():
        p = ens(x)
        assert p.shape == (2, 1, 45, 67)
        torch.testing.assert_close(ens(x.flip(-1)), p.flip(-1), atol=1e-5, rtol=0)
        assert (ens(x, tta=False).flip(-1) - ens(x.flip(-1), tta=False)).abs().max() > 1e-3   # the model alone is not symmetric

def test_identity_tta_equals_plain():
    m, x = tiny_model(), torch.randn(1, 3, 27, 41)
    with torch.inference_mode():
        assert torch.equal(TTA(m, 'none')(x), m(x).sigmoid())
        assert torch.equal(TTA(m, [1.0])(x), m(x).sigmoid())
        torch.testing.assert_close(TTA(m, [HFlip()])(x), m(x.flip(-1)).sigmoid().flip(-1))

def test_combine_mean_and_vote_by_hand():
    p = [torch.tensor([0.9, 0.2, 0.6, 0.4]), torch.tensor([0.8, 0.7, 0.1, 0.3]), torch.tensor([0.1, 0.8, 0.2, 0.9])]
    torch.testing.assert_close(combine_probs(p, [1, 1, 2]), (p[0] + p[1] + 2*p[2]) / 4)
    # votes (p > .5): [1,0,1,0], [1,1,0,0], [0,1,0,1]; weights 1,1,2 -> fractions .5 .75 .25 .5 -> majority only at pixel 1
    v = combine_probs(p, [1, 1, 2], merge='vote')
    torch.testing.assert_close(v, torch.tensor([0.5, 0.75, 0.25, 0.5]))
    assert probs_to_mask(v, 'vote').tolist() == [0, 1, 0, 0]
    assert probs_to_mask(combine_probs(p, merge='vote'), 'vote').tolist() == [1, 1, 0, 0]
    assert probs_to_mask(combine_probs(p), thresh=0.45).tolist() == [1, 1, 0, 1]

def test_ensemble_vote_module():
    ens = tiny_ensemble(merge='vote', n=3)
    x = torch.randint(0, 256, (1, 3, 40, 60), dtype=torch.uint8)
    with torch.inference_mode():
        votes = sum((m(x) > 0.5).int() for m in ens.members)
        assert torch.equal(ens.masks(x), (votes >= 2)[:, 0].to(torch.uint8))

# --- predict_folder ---------------------------------------------------------------------------------------------------

def test_predict_folder_rows_match_direct_prediction(test_dir, tmp_path):
    ens = tiny_ensemble()
    s = predict_folder(ens, test_dir, tmp_path/'sub.csv', bs=3, num_workers=0, progress=False)
    df = read_rows(s['out'])
    assert list(df.img) == list_images(test_dir) and s['predicted'] == len(df) == 10
    for name, rle in zip(df.img, df.rle_mask):
        assert rle == rle_encode(predict_image(ens, test_dir/name))
    assert df.rle_mask.str.len().gt(0).all()
    assert validate_submission(s['out'], data=test_dir, shape=None)['ok']

def test_predict_folder_workers_and_gzip_same_rows(test_dir, tmp_path):
    ens = tiny_ensemble()
    a = predict_folder(ens, test_dir, tmp_path/'a.csv', bs=4, num_workers=0, progress=False)['out']
    b = predict_folder(ens, test_dir, tmp_path/'b.csv', bs=3, num_workers=2, gzip=True, progress=False)['out']
    assert b.name == 'b.csv.gz'
    assert gzip.open(b).read() == a.read_bytes()

def test_sample_submission_order(tiny_carvana, test_dir, tmp_path):
    names = list_images(test_dir)[::-1]
    (tmp_path/'sample.csv').write_text('img,rle_mask\n' + ''.join(f'{n},1 1\n' for n in names))
    out = predict_folder(tiny_ensemble(), test_dir, tmp_path/'sub.csv', tmp_path/'sample.csv', num_workers=0, progress=False)['out']
    assert list(read_rows(out).img) == names
    validate_submission(out, sample_submission=tmp_path/'sample.csv', shape=(64, 96))

def test_missing_image_of_sample_submission_fails_before_predicting(test_dir, tmp_path):
    (tmp_path/'sample.csv').write_text('img,rle_mask\nnot_there_01.jpg,1 1\n')
    with pytest.raises(FileNotFoundError, match='not_there_01.jpg'):
        predict_folder(tiny_ensemble(), test_dir, tmp_path/'sub.csv', tmp_path/'sample.csv', num_workers=0, progress=False)
    assert not list(tmp_path.glob('sub.csv*'))

def test_resume_equals_uninterrupted(test_dir, tmp_path):
    one = predict_folder(tiny_ensemble('none'), test_dir, tmp_path/'one.csv', bs=2, num_workers=0, progress=False)['out']
    ens = tiny_ensemble('none')
    ens.members[0].tta.model = Interrupt(ens.members[0].model, 4)       # stops during the 4th batch
    with pytest.raises(KeyboardInterrupt):
        predict_folder(ens, test_dir, tmp_path/'res.csv', bs=2, num_workers=0, progress=False)
    part = tmp_path/'res.csv.part'
    lines = part.read_text().splitlines()
    assert len(lines) == 1 + 6 and not (tmp_path/'res.csv').exists()   # 3 batches kept, flushed
    with open(part, 'a') as f: f.write(lines[1][:10])                  # a half-written line, as a crash would leave it
    s = predict_folder(tiny_ensemble('none'), test_dir, tmp_path/'res.csv', bs=3, num_workers=0, resume=True, progress=False)
    assert (s['kept'], s['predicted']) == (6, 4)
    assert s['out'].read_bytes() == one.read_bytes() and not part.exists()

def test_resume_refuses_rows_of_another_run(test_dir, tmp_path):
    (tmp_path/'res.csv.part').write_text('img,rle_mask\nsomething_else_01.jpg,1 1\n')
    with pytest.raises(ValueError, match='not in this run'):
        predict_folder(tiny_ensemble(), test_dir, tmp_path/'res.csv', num_workers=0, resume=True, progress=False)

def test_shards_merge_equals_one_shot(test_dir, tmp_path):
    ens = tiny_ensemble()
    one = predict_folder(ens, test_dir, tmp_path/'one.csv', num_workers=0, progress=False)['out']
    parts = [predict_folder(ens, test_dir, tmp_path/f's{i}.csv', shard=f'{i}/3', num_workers=0, progress=False)['out'] for i in range(3)]
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
        s = predict_folder(tiny_ensemble(), test_dir, tmp_path/'sub.csv', bs=4, num_workers=0, progress=False)
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
    return predict_folder(tiny_ensemble(), test_dir, tmp_path/'good.csv', num_workers=0, progress=False)['out']

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

# --- checkpoints ------------------------------------------------------------------------------------------------------

def test_checkpoint_errors_before_prediction(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope.pth'): load_ensemble([tmp_path/'nope.pth'])
    torch.save(dict(format='carvana_fastai.checkpoint', version=7, carvana_fastai='3.0'), tmp_path/'future.pth')
    with pytest.raises(ValueError, match='format version 7'): load_ensemble([tmp_path/'future.pth'])
    torch.save({'conv.weight': torch.zeros(1)}, tmp_path/'bare.pth')
    with pytest.raises(ValueError, match='not a carvana_fastai checkpoint'): load_ensemble([tmp_path/'bare.pth'])
    (tmp_path/'junk.pth').write_bytes(b'junk')
    with pytest.raises(ValueError, match='not a carvana_fastai checkpoint'): load_ensemble([tmp_path/'junk.pth'])
    with pytest.raises(ValueError, match='weights'): tiny_ensemble(weights=[1, 2, 3])
    with pytest.raises(ValueError, match='TTA preset'): tiny_ensemble(tta='hflips')

@pytest.mark.skipif(not HAVE_UNET, reason='carvana_fastai.unet not written yet')
def test_checkpoint_round_trip(tmp_path):
    "A checkpoint written as `train` writes it loads into a member that predicts exactly what the model does."
    from carvana_fastai.unet import carvana_unet
    from carvana_fastai.train import atomic_save, CKPT_FORMAT, CKPT_VERSION
    from carvana_fastai import __version__
    model = carvana_unet(body='scratch', img_size=(32, 48), pretrained=False).eval()
    ck = dict(format=CKPT_FORMAT, version=CKPT_VERSION, model=model.state_dict(), config=model.config, stats=STATS,
              size=(32, 48), plan=None, stage=0, epoch=0, opt=None, history=[], carvana_fastai=__version__)
    atomic_save(ck, tmp_path/'m.pth')
    ens = load_ensemble([tmp_path/'m.pth'], tta='none', device='cpu')
    x = torch.randint(0, 256, (1, 3, 32, 48), dtype=torch.uint8)
    with torch.inference_mode():
        ref = model(((x.float() / 255 - torch.tensor(STATS[0]).view(1, 3, 1, 1)) / torch.tensor(STATS[1]).view(1, 3, 1, 1))).sigmoid()
        torch.testing.assert_close(ens(x), ref, atol=1e-5, rtol=1e-4)

# --- evaluation and overlays ------------------------------------------------------------------------------------------

def test_evaluate_and_threshold(tiny_carvana):
    ens = tiny_ensemble()
    tab = evaluate_ensemble(ens, tiny_carvana, valid_pct=0.34, seed=0, bs=3, progress=False)
    assert list(tab.columns) == ['model', 'size', 'tta', 'weight', 'dice'] and len(tab) == 6
    assert tab.attrs['cars'] == 2 and tab.attrs['images'] == 8 and tab.dice.between(0, 1).all()
    assert to_markdown(tab).count('\n') == 7
    t, curve = best_threshold(ens, tiny_carvana, valid_pct=0.34, seed=0, threshs=[0.4, 0.5, 0.6], progress=False)
    assert t in (0.4, 0.5, 0.6) and curve.dice.max() == curve.dice[curve.thresh == t].iloc[0]
    assert abs(curve.dice[1] - tab.dice.iloc[-1]) < 1e-6

def test_overlays(test_dir, tmp_path):
    paths = save_overlays(tiny_ensemble(), test_dir, tmp_path/'ov', n=3)
    assert len(paths) == 3 and all(p.exists() for p in paths)
    a = np.asarray(Image.open(paths[0]))
    assert a.shape == (64, 96, 3) and (a == (255, 0, 80)).all(-1).any()
