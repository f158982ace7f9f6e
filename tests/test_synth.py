"The synthetic Carvana generator: the exact layout, masks equal to their RLE, determinism, what the mask holds, bad input."
import filecmp, re
import numpy as np, pandas as pd, pytest
from PIL import Image
from carvana_fastai.rle import rle_decode
from carvana_fastai.synth import make_synthetic_carvana, _car, _view

def mask_of(path, img): return np.array(Image.open(path/'train_masks'/img.replace('.jpg', '_mask.gif')))

def test_layout(tiny_carvana):
    p = tiny_carvana
    assert sorted(f.name for f in p.iterdir()) == ['metadata.csv', 'sample_submission.csv', 'test', 'train', 'train_masks', 'train_masks.csv']
    trn, tst = sorted(f.name for f in (p/'train').iterdir()), sorted(f.name for f in (p/'test').iterdir())
    assert len(trn) == 6*4 and len(tst) == 1*4
    assert all(re.fullmatch(r'[0-9a-f]{12}_(01|05|09|13)\.jpg', f) for f in trn + tst)
    assert len({f[:12] for f in trn}) == 6 and not {f[:12] for f in trn} & {f[:12] for f in tst}
    assert sorted(f.name for f in (p/'train_masks').iterdir()) == [f.replace('.jpg', '_mask.gif') for f in trn]
    df = pd.read_csv(p/'train_masks.csv')
    assert list(df.columns) == ['img', 'rle_mask'] and list(df.img) == trn
    sub = pd.read_csv(p/'sample_submission.csv')
    assert list(sub.columns) == ['img', 'rle_mask'] and list(sub.img) == tst and (sub.rle_mask == '1 1').all()
    meta = pd.read_csv(p/'metadata.csv', keep_default_na=False, dtype={'id': str})
    assert list(meta.columns) == ['id', 'year', 'make', 'model', 'trim1', 'trim2']
    assert sorted(meta.id) == sorted({f[:12] for f in trn + tst})
    assert meta.year.between(2000, 2025).all() and (meta.make != '').all()

def test_images_and_masks(tiny_carvana):
    p = tiny_carvana
    for r in pd.read_csv(p/'train_masks.csv').itertuples():
        im, gif = Image.open(p/'train'/r.img), Image.open(p/'train_masks'/r.img.replace('.jpg', '_mask.gif'))
        assert (im.format, im.mode, im.size) == ('JPEG', 'RGB', (96, 64))
        assert (gif.format, gif.mode, gif.size, getattr(gif, 'n_frames', 1)) == ('GIF', 'P', (96, 64), 1)
        m = np.array(gif)
        assert set(np.unique(m)) == {0, 1} and gif.getpalette()[:6] == [0, 0, 0, 255, 255, 255]
        np.testing.assert_array_equal(rle_decode(r.rle_mask, (64, 96)), m)
    for f in (p/'test').iterdir(): assert Image.open(f).size == (96, 64)

def test_car_fraction(tiny_carvana):
    "The car covers a sensible part of each photo, more from the side (05, 13) than from the front and back (01, 09)."
    df = pd.read_csv(tiny_carvana/'train_masks.csv')
    frac = {r.img: mask_of(tiny_carvana, r.img).mean() for r in df.itertuples()}
    assert all(0.04 < v < 0.5 for v in frac.values()), frac
    for cid in {f[:12] for f in frac}:
        assert min(frac[f'{cid}_05.jpg'], frac[f'{cid}_13.jpg']) > max(frac[f'{cid}_01.jpg'], frac[f'{cid}_09.jpg'])
    assert np.std(list(frac.values())) > 0.02

def test_readable_by_data(tiny_carvana):
    "`data.carvana_items` reads the generated folder without a complaint, with masks equal to the GIFs."
    data = pytest.importorskip('carvana_fastai.data')
    items = data.carvana_items(tiny_carvana)
    assert len(items) == 24 and sorted(items.view.unique()) == [1, 5, 9, 13] and items.car_id.nunique() == 6
    np.testing.assert_array_equal(data.load_mask(items.iloc[0]), mask_of(tiny_carvana, items.img[0].name))
    assert len(data.carvana_items(tiny_carvana, 'test')) == 4

def test_deterministic(tmp_path):
    kw = dict(n_cars=2, views=3, size=(32, 48), seed=7, n_test_cars=1, progress=False)
    a, b = make_synthetic_carvana(tmp_path/'a', **kw), make_synthetic_carvana(tmp_path/'b', **kw)
    for d in ('train', 'train_masks', 'test', '.'):
        fs = sorted(f.name for f in (a/d).iterdir() if f.is_file())
        assert fs and filecmp.cmpfiles(a/d, b/d, fs, shallow=False)[0] == fs
    c = make_synthetic_carvana(tmp_path/'c', **{**kw, 'seed': 8})
    assert not {f.name for f in (a/'train').iterdir()} & {f.name for f in (c/'train').iterdir()}

def test_windows_thin_parts_shadow():
    "Windows, wheels, mirrors and the antenna are in the mask; the shadow darkens the floor outside it and leaves it unchanged."
    seen = set()
    for i in range(8):
        car = _car(3, 0, i, 64, 96)
        img, mask, parts = _view(car, 3, 3, 0, i, parts=True)
        seen |= set(parts)
        for part, m in parts.items(): assert (mask[m == 1] == 1).all(), part
        assert parts['glass'].sum() > 0.03*mask.sum()
        img0, mask0 = _view(car, 3, 3, 0, i, shadow=False)
        np.testing.assert_array_equal(mask0, mask)
        darker = img0.astype(int).sum(-1) - img.astype(int).sum(-1) > 30
        assert darker[mask == 0].sum() > 0.05*mask.sum()
    assert {'body', 'glass', 'wheel', 'mirror', 'antenna'} <= seen

def test_overwrite(tmp_path):
    p = make_synthetic_carvana(tmp_path, n_cars=2, views=2, size=(16, 24), seed=0, n_test_cars=0, progress=False)
    make_synthetic_carvana(tmp_path, n_cars=2, views=2, size=(16, 24), seed=0, n_test_cars=0, progress=False)  # same files: fine
    with pytest.raises(FileExistsError, match='overwrite=True'):
        make_synthetic_carvana(tmp_path, n_cars=1, views=2, size=(16, 24), seed=1, progress=False)
    make_synthetic_carvana(tmp_path, n_cars=1, views=2, size=(16, 24), seed=1, n_test_cars=0, progress=False, overwrite=True)
    assert len(list((p/'train').iterdir())) == len(list((p/'train_masks').iterdir())) == len(pd.read_csv(p/'train_masks.csv')) == 2

@pytest.mark.parametrize('kw,name', [(dict(n_cars=0), 'n_cars'), (dict(n_cars=1.5), 'n_cars'), (dict(views=0), 'views'),
                                     (dict(views=17), 'views'), (dict(size=(0, 24)), 'size'), (dict(size=(16, -2)), 'size'),
                                     (dict(size=16), 'size'), (dict(size=(16, 24, 3)), 'size'), (dict(n_test_cars=-1), 'n_test_cars'),
                                     (dict(quality=101), 'quality')])
def test_bad_input(tmp_path, kw, name):
    with pytest.raises(ValueError, match=name): make_synthetic_carvana(tmp_path/'x', **{'size': (16, 24), 'progress': False, **kw})
    assert not (tmp_path/'x').exists()

@pytest.mark.slow
def test_full_size(tmp_path):
    p = make_synthetic_carvana(tmp_path, n_cars=1, views=2, seed=0, n_test_cars=0, progress=False)
    for r in pd.read_csv(p/'train_masks.csv').itertuples():
        assert Image.open(p/'train'/r.img).size == (1918, 1280)
        m = mask_of(p, r.img)
        assert m.shape == (1280, 1918) and 0.04 < m.mean() < 0.5
        np.testing.assert_array_equal(rle_decode(r.rle_mask), m)
