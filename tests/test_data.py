"Reading the Carvana layout: items, masks, bad input, car splits, DataLoaders."
import warnings
import numpy as np, pandas as pd, pytest, torch
from pathlib import Path
from PIL import Image
from carvana_fastai.rle import rle_encode, rle_decode
from carvana_fastai.data import (parse_name, carvana_items, load_mask, load_image, car_splitter, car_folds,
                                 car_fold_splitter, carvana_dls)

CAR_RGB, WALL = (220, 30, 30), 170

def save_gif(m, fn, optimize=True):
    im = Image.fromarray(np.asarray(m, np.uint8), 'P'); im.putpalette([0, 0, 0, 255, 255, 255])
    im.save(fn, optimize=optimize)

def ellipse(h, w, v):
    yy, xx = np.mgrid[:h, :w]
    return ((yy - h * .5) / (h * .3)) ** 2 + ((xx - w * (.35 + .05 * v)) / (w * .25)) ** 2 < 1

def write_layout(path, n_cars=5, views=4, size=(32, 48), csv=True, gifs=True, n_test=1):
    "A hand-made Carvana layout: red ellipse 'cars' on a grey wall, palette GIF masks and train_masks.csv."
    path = Path(path); h, w = size
    for d in ['train', 'train_masks', 'test']: (path / d).mkdir(parents=True, exist_ok=True)
    rows = []
    for c in range(n_cars + n_test):
        for v in range(1, views + 1):
            name = f'{c:04d}abcdef{c:02d}_{v:02d}'
            m = ellipse(h, w, v)
            img = np.full((h, w, 3), WALL, np.uint8); img[m] = CAR_RGB
            split = 'train' if c < n_cars else 'test'
            Image.fromarray(img).save(path / split / f'{name}.jpg', quality=95)
            if split == 'train':
                if gifs: save_gif(m, path / 'train_masks' / f'{name}_mask.gif')
                rows.append((f'{name}.jpg', rle_encode(m)))
    if csv: pd.DataFrame(rows, columns=['img', 'rle_mask']).to_csv(path / 'train_masks.csv', index=False)
    return path

@pytest.fixture
def layout(tmp_path): return write_layout(tmp_path / 'carvana')

def first_img(path): return sorted((path / 'train').glob('*.jpg'))[0]

# --- names and listing ---------------------------------------------------------------------------------------

def test_parse_name():
    assert parse_name('00087a6bd4dc_01.jpg') == ('00087a6bd4dc', 1)
    assert parse_name(Path('a/b/fff9b3a5373f_16_mask.gif')) == ('fff9b3a5373f', 16)
    for bad in ['00087a6bd4dc_1.jpg', '00087a6bd4dc_01.jpeg', 'x_y_01.jpg', 'IMG_0001.JPG', '00087a6bd4dc_01_mask.png']:
        with pytest.raises(ValueError, match=f"{bad}: name does not match"): parse_name(bad)

def test_items_columns_and_order(layout):
    df = carvana_items(layout)
    assert list(df.columns) == ['img', 'car_id', 'view', 'mask', 'rle']
    assert len(df) == 20 and df.car_id.nunique() == 5
    assert all(isinstance(p, Path) and p.parent.name == 'train' for p in df.img)
    assert df['view'].dtype.kind == 'i' and sorted(set(df['view'])) == [1, 2, 3, 4]
    assert list(zip(df.car_id, df['view'])) == sorted(zip(df.car_id, df['view']))
    assert all(m.name == f'{i.stem}_mask.gif' for i, m in zip(df.img, df['mask']))
    assert df['rle'].isna().all()                          # GIFs are there: the CSV is not needed
    t = carvana_items(layout, 'test')
    assert len(t) == 4 and t['mask'].isna().all() and t['rle'].isna().all()

def test_masks_from_csv_where_gifs_missing(layout):
    gone = sorted((layout / 'train_masks').iterdir())[:3]
    for g in gone: g.unlink()
    df = carvana_items(layout)
    from_csv = df[df['mask'].isna()]
    assert len(from_csv) == 3 and from_csv.rle.map(lambda s: isinstance(s, str) and len(s) > 0).all()
    csv = pd.read_csv(layout / 'train_masks.csv').set_index('img')['rle_mask']
    for _, r in df.iterrows():
        m = load_mask(r)
        assert m.dtype == np.uint8 and m.shape == (32, 48)
        np.testing.assert_array_equal(m, rle_decode(csv[r.img.name], (32, 48)))

def test_masks_only_in_csv(tmp_path):
    p = write_layout(tmp_path / 'c', gifs=False)
    df = carvana_items(p)
    assert df['mask'].isna().all() and len(df) == 20
    np.testing.assert_array_equal(load_mask(df.iloc[0]), ellipse(32, 48, df.iloc[0]['view']).astype(np.uint8))

def test_load_mask_values(tmp_path):
    "{0,1} from palette GIFs (also when PIL renumbers the palette of a one-colour mask) and from 0/255 greyscale."
    full, empty = np.ones((6, 9), np.uint8), np.zeros((6, 9), np.uint8)
    save_gif(full, tmp_path / 'full.gif'); save_gif(empty, tmp_path / 'empty.gif')
    assert np.asarray(Image.open(tmp_path / 'full.gif')).max() == 0   # the trap: index 0 is now white
    np.testing.assert_array_equal(load_mask(tmp_path / 'full.gif'), full)
    np.testing.assert_array_equal(load_mask(tmp_path / 'empty.gif'), empty)
    m = ellipse(6, 9, 1).astype(np.uint8)
    Image.fromarray(m * 255).save(tmp_path / 'm255.png'); Image.fromarray(m).save(tmp_path / 'm01.png')
    save_gif(m, tmp_path / 'm.gif', optimize=False)
    for f in ['m255.png', 'm01.png', 'm.gif']:
        r = load_mask(tmp_path / f)
        assert r.dtype == np.uint8; np.testing.assert_array_equal(r, m)
    assert load_mask({'img': None, 'mask': tmp_path / 'm.gif', 'rle': None}).sum() == m.sum()   # dict items

# --- bad input: each one, with on_error='raise' and 'warn' ----------------------------------------------------

def break_layout(p, what):
    "Apply one kind of damage; return (file the error must name, text it must contain)."
    img = first_img(p); gif = p / 'train_masks' / f'{img.stem}_mask.gif'
    if what == 'no_mask':
        gif.unlink(); (p / 'train_masks.csv').unlink(); return img.name, 'image without a mask'
    if what == 'no_mask_row':
        gif.unlink()
        df = pd.read_csv(p / 'train_masks.csv'); df[df.img != img.name].to_csv(p / 'train_masks.csv', index=False)
        return img.name, 'no row in train_masks.csv'
    if what == 'mask_size':
        save_gif(np.zeros((30, 48)), gif); return gif.name, f'mask size 48x30 differs from the size 48x32 (w x h) of its image'
    if what == 'unreadable_image':
        img.write_bytes(b'this is not a jpeg'); return img.name, 'not a readable image'
    if what == 'unreadable_mask':
        gif.write_bytes(b'GIF89a broken'); return gif.name, 'not a readable mask image'
    if what == 'bad_name':
        (p / 'train' / 'photo 1.jpg').write_bytes(img.read_bytes()); return 'photo 1.jpg', 'name does not match'
    if what == 'folder_in_train':
        (p / 'train' / 'extra').mkdir(); return 'extra', 'a folder where an image'

KINDS = ['no_mask', 'no_mask_row', 'mask_size', 'unreadable_image', 'unreadable_mask', 'bad_name', 'folder_in_train']

@pytest.mark.parametrize('what', KINDS)
def test_bad_input_raises_naming_file(layout, what):
    name, text = break_layout(layout, what)
    with pytest.raises(ValueError) as e: carvana_items(layout)
    msg = str(e.value)
    assert name in msg and text in msg, msg
    assert e.value.__cause__ is None and e.value.__suppress_context__ or e.value.__context__ is None  # no PIL trace

@pytest.mark.parametrize('what', KINDS)
def test_bad_input_warns_and_skips(layout, what):
    name, text = break_layout(layout, what)
    n_files = len(list((layout / 'train').iterdir()))
    with pytest.warns(UserWarning, match=f'1 of {n_files} files') as w: df = carvana_items(layout, on_error='warn')
    assert name in str(w[0].message) and text in str(w[0].message)
    assert len(df) == n_files - 1 and len(df.attrs['skipped']) == 1
    assert name not in {p.name for p in df.img}

def test_many_bad_files_one_error(layout):
    imgs = sorted((layout / 'train').glob('*.jpg'))
    for f in imgs[:3]: f.write_bytes(b'junk')
    with pytest.raises(ValueError, match=r"3 of 20 files in .*train are not usable") as e: carvana_items(layout)
    assert all(f.name in str(e.value) for f in imgs[:3]) and "on_error='warn'" in str(e.value)

def test_missing_and_empty_folders(tmp_path, layout):
    with pytest.raises(FileNotFoundError, match='nowhere.train: no such folder'): carvana_items(tmp_path / 'nowhere')
    (tmp_path / 'e' / 'train').mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match='the folder is empty'): carvana_items(tmp_path / 'e')
    with pytest.raises(FileNotFoundError, match='valid: no such folder'): carvana_items(layout, 'valid')
    for f in (layout / 'train').iterdir(): f.write_bytes(b'junk')
    with pytest.warns(UserWarning), pytest.raises(ValueError, match='no usable images'): carvana_items(layout, on_error='warn')
    with pytest.raises(ValueError, match='on_error'): carvana_items(layout, on_error='ignore')

def test_bad_csv(layout):
    for g in (layout / 'train_masks').iterdir(): g.unlink()
    pd.DataFrame({'image': ['a'], 'rle': ['1 1']}).to_csv(layout / 'train_masks.csv', index=False)
    with pytest.raises(ValueError, match=r"train_masks.csv: expected columns 'img,rle_mask', found image,rle"):
        carvana_items(layout)

def test_bad_rle_in_csv_named_at_load(tmp_path):
    p = write_layout(tmp_path / 'c', gifs=False)
    df = pd.read_csv(p / 'train_masks.csv'); df.loc[0, 'rle_mask'] = '1 2 5'; df.to_csv(p / 'train_masks.csv', index=False)
    items = carvana_items(p)
    with pytest.raises(ValueError, match=f"{df.img[0]}: bad RLE mask in train_masks.csv: RLE: odd count"):
        load_mask(items.iloc[0])

def test_size_checked_when_loading(layout):
    "The per-file check also runs while reading items (e.g. when the listing was made with check=False)."
    df = carvana_items(layout, check=False)
    save_gif(np.zeros((30, 48)), df['mask'][0])
    with pytest.raises(ValueError, match='differs from the size') as e: load_mask(df.iloc[0])
    assert df['mask'][0].name in str(e.value) and df.img[0].name in str(e.value)

def test_truncated_jpeg_named_in_batch(layout):
    "A JPEG whose header is fine but whose data is cut: found when loading, by name, even inside the DataLoader."
    df = carvana_items(layout)
    bad = df.img[0]; data = bad.read_bytes(); bad.write_bytes(data[:data.index(b'\xff\xda') + 30])  # cut after scan start
    carvana_items(layout)                                   # the header still reads
    with pytest.raises(ValueError, match=f'{bad.name}: not a readable image'): load_image(bad)
    for seed in range(3):                                   # the bad image in the training or the validation set
        with pytest.raises(ValueError, match=f'{bad.name}: not a readable image'):
            dls = carvana_dls(layout, (32, 48), bs=4, valid_pct=0.2, seed=seed, aug=False)
            for dl in (dls.train.new(shuffle=False, drop_last=False), dls.valid): [b for b in dl]

# --- splits -----------------------------------------------------------------------------------------------------

def test_car_splitter(layout):
    df = carvana_items(layout)
    for pct, seed in [(0.2, 0), (0.4, 1), (0.01, 2), (0.99, 3)]:
        trn, val = car_splitter(pct, seed)(df)
        assert sorted(trn + val) == list(range(len(df)))
        assert not set(df.car_id[trn]) & set(df.car_id[val])
        n_val = df.car_id[val].nunique()
        assert n_val == min(max(round(pct * 5), 1), 4)        # at least one car on each side
        assert car_splitter(pct, seed)(df) == (trn, val)        # deterministic
        assert car_splitter(pct, seed)(list(df.img)) == (trn, val)
        assert car_splitter(pct, seed)([r for _, r in df.iterrows()]) == (trn, val)
    vals = {tuple(car_splitter(0.2, s)(df)[1]) for s in range(10)}
    assert len(vals) > 1                                        # the seed matters
    with pytest.raises(ValueError, match='at least 2 cars'): car_splitter()(df[df.car_id == df.car_id[0]])
    with pytest.raises(ValueError, match='valid_pct'): car_splitter(1.0)

def test_car_folds(layout):
    df = carvana_items(layout)
    folds = car_folds(k=3, seed=7)(df)
    assert len(folds) == 3
    assert sorted(i for _, v in folds for i in v) == list(range(len(df)))
    assert sorted(df.car_id[v].nunique() for _, v in folds) == [1, 2, 2]
    for i, (t, v) in enumerate(folds):
        assert sorted(t + v) == list(range(len(df))) and not set(df.car_id[t]) & set(df.car_id[v])
        assert car_fold_splitter(i, 3, 7)(df) == (t, v)
    assert car_folds(3, 7)(df) == folds
    with pytest.raises(ValueError, match='at least 6 cars'): car_folds(6)(df)
    with pytest.raises(ValueError, match='fold must be in 0..2'): car_fold_splitter(3, 3)

# --- DataLoaders ---------------------------------------------------------------------------------------------------

def denorm(x, stats):
    m, s = (torch.tensor(v).view(1, 3, 1, 1) for v in stats)
    return x.as_subclass(torch.Tensor).cpu() * s + m

def test_dls_batch(layout):
    stats = ([0.5, 0.4, 0.3], [0.2, 0.25, 0.3])
    dls = carvana_dls(layout, size=(37, 53), bs=4, valid_pct=0.2, seed=0, stats=stats, aug=False)
    xb, yb = dls.one_batch()
    assert xb.shape == (4, 3, 37, 53) and xb.dtype == torch.float32
    assert type(yb).__name__ == 'TensorMask' and yb.shape == (4, 37, 53) and yb.dtype == torch.int64
    assert set(yb.unique().tolist()) == {0, 1}
    x = denorm(xb, stats)
    wall = x[:, :, 0, 0]                                        # top-left pixel is wall: (170,170,170)/255
    torch.testing.assert_close(wall, torch.full_like(wall, WALL / 255), atol=0.03, rtol=0)
    assert dls.train.fake_l.num_workers == 0                   # CPU: no worker processes
    assert isinstance(dls.items_df, pd.DataFrame) and len(dls.items_df) == 20 and dls.size == (37, 53)
    assert dls.valid.items.car_id.nunique() == 1 and not set(dls.valid.items.car_id) & set(dls.train.items.car_id)
    vx, vy = dls.valid.one_batch()                             # no augmentation: nearest-neighbour resized file mask
    for i in range(len(vy)):
        ref = np.asarray(Image.fromarray(load_mask(dls.valid.items.iloc[i])).resize((53, 37), Image.NEAREST))
        np.testing.assert_array_equal(vy[i].cpu().numpy(), ref)

def test_dls_augmentation_moves_image_and_mask_together(layout):
    stats = ([0.5] * 3, [0.25] * 3)
    aug = carvana_dls(layout, size=(32, 48), bs=16, valid_pct=0.2, seed=0, stats=stats)
    plain = carvana_dls(layout, size=(32, 48), bs=16, valid_pct=0.2, seed=0, stats=stats, aug=False)
    torch.manual_seed(0)
    xa, ya = aug.train.new(shuffle=False).one_batch()
    xp, yp = plain.train.new(shuffle=False).one_batch()
    assert (ya != yp).flatten(1).any(1).sum() >= 4             # the augmentation changed several masks...
    red = denorm(xa, stats); red = (red[:, 0] - red[:, 1]) > 0.3   # ...and moved the red car with them
    agree = (red == (ya.as_subclass(torch.Tensor) == 1)).float().flatten(1).mean(1)
    assert agree.min() > 0.95, agree
    assert set(ya.unique().tolist()) == {0, 1}
    names = ' '.join(type(t).__name__ for t in aug.after_batch.fs)
    assert 'Flip' in names and 'Normalize' in names and 'Normalize' in ' '.join(type(t).__name__ for t in plain.after_batch.fs)
    xv, yv = aug.valid.one_batch(); xv2, yv2 = plain.valid.one_batch()   # no augmentation on validation
    torch.testing.assert_close(xv, xv2); assert (yv == yv2).all()

def test_dls_folds_items_and_warnings(layout):
    df = carvana_items(layout)
    dls = carvana_dls(layout, size=32, bs=4, fold=1, k=3, seed=5, aug=False, items=df)
    t, v = car_fold_splitter(1, 3, 5)(df)
    assert set(dls.valid.items.img) == set(df.img[v]) and set(dls.train.items.img) == set(df.img[t])
    assert dls.one_batch()[0].shape[-2:] == (32, 32)
    sub = df[df.car_id.isin(df.car_id.unique()[:3])]
    with pytest.warns(UserWarning, match='fewer than bs=16'):
        carvana_dls(layout, size=(16, 24), bs=16, items=sub, aug=False)
    for bad in [(0, 24), (16,), 'big', (16.5, 24)]:
        with pytest.raises(ValueError, match='size must be'): carvana_dls(layout, size=bad)

# --- on the synthetic data set (carvana_fastai.synth) ------------------------------------------------------------

@pytest.fixture
def synth(request):
    pytest.importorskip('carvana_fastai.synth')
    return request.getfixturevalue('tiny_carvana')

def test_synthetic_layout(synth):
    df = carvana_items(synth)
    assert len(df) == 24 and df.car_id.nunique() == 6 and (df.groupby('car_id')['view'].nunique() == 4).all()
    assert df['mask'].notna().all()
    csv = pd.read_csv(synth / 'train_masks.csv', keep_default_na=False).set_index('img')['rle_mask']
    for _, r in df.iterrows():                                  # GIF and CSV agree; masks are {0,1} and not empty
        m = load_mask(r)
        assert m.shape == (64, 96) and m.dtype == np.uint8 and 0 < m.sum() < m.size
        np.testing.assert_array_equal(m, rle_decode(csv[r.img.name], m.shape))
    assert len(carvana_items(synth, 'test')) == 4
    dls = carvana_dls(synth, size=(48, 72), bs=4, aug=True)
    xb, yb = dls.one_batch()
    assert xb.shape == (4, 3, 48, 72) and yb.shape == (4, 48, 72) and set(yb.unique().tolist()) <= {0, 1}

# --- any layout: folder_items / data_items -------------------------------------------------------------------------

from carvana_fastai.data import folder_items, data_items, PHOTO_EXTS, MASK_EXTS

def square(h=24, w=32, y=4, x=6):
    m = np.zeros((h, w), bool); m[y:y + h // 2, x:x + w // 2] = True; return m

def write_folders(path, stems=('a-1', 'a-2', 'b-1', 'b-2', 'c-1'), suffix='_mask', size=(24, 32), ext='.png'):
    "photos/{stem}.jpg with a red square, masks/{stem}{suffix}{ext} (0/255 greyscale)."
    path = Path(path); (path / 'photos').mkdir(parents=True); (path / 'masks').mkdir()
    for i, s in enumerate(stems):
        m = square(*size, y=2 + i, x=3 + i)
        img = np.full((*size, 3), WALL, np.uint8); img[m] = CAR_RGB
        Image.fromarray(img).save(path / 'photos' / f'{s}.jpg', quality=95)
        Image.fromarray(m.view(np.uint8) * 255).save(path / 'masks' / f'{s}{suffix}{ext}')
    return path

def items(p, **kw): return folder_items(p, 'photos', 'masks', **{'mask_suffix': '_mask', **kw})

def test_folder_items_columns_groups_and_views(tmp_path):
    p = write_folders(tmp_path / 'f')
    df = items(p, group=r'^([a-z])-')
    assert list(df.columns) == ['img', 'car_id', 'view', 'mask', 'rle'] and len(df) == 5
    assert list(df.car_id) == ['a', 'a', 'b', 'b', 'c'] and list(df['view']) == [1, 2, 1, 2, 1]
    assert df['rle'].isna().all() and all(m.name == f'{i.stem}_mask.png' for i, m in zip(df.img, df['mask']))
    assert df.attrs['layout'] == 'folders' and df.attrs['skipped'] == []
    assert items(p).car_id.nunique() == 5                              # default: each photo its own group
    assert list(items(p, group=r'-(\d)$').car_id) == ['1', '1', '1', '2', '2']
    assert items(p, group='[a-z]').car_id.nunique() == 3               # no group in the pattern: the whole match
    assert list(items(p, group=lambda s: s.split('-')[1]).car_id.unique()) == ['1', '2']
    trn, val = car_splitter(0.34, 0)(items(p, group=r'^([a-z])-'))
    d = items(p, group=r'^([a-z])-')
    assert not set(d.car_id[trn]) & set(d.car_id[val])

def test_folder_items_no_suffix_and_other_extensions(tmp_path):
    p = write_folders(tmp_path / 'f', suffix='', ext='.bmp')
    assert len(folder_items(p, 'photos', 'masks')) == 5
    assert set(MASK_EXTS) >= {'.png', '.gif', '.bmp', '.tif', '.tiff'} and '.jpg' not in MASK_EXTS and '.jpg' in PHOTO_EXTS

@pytest.mark.parametrize('form', ['01', '0255', 'palette', 'palette_renumbered', 'rgba', 'la', 'rgb', 'bit', 'u16', 'gif', 'tiff'])
def test_mask_forms(tmp_path, form):
    "Every mask form reads as the same {0,1} mask: >0 is car, or alpha >= 128 where there is an alpha."
    m = square()
    u8 = m.view(np.uint8)
    fn = tmp_path / ('m.gif' if form == 'gif' else 'm.tif' if form == 'tiff' else 'm.png')
    if form == '01': Image.fromarray(u8).save(fn)
    elif form == '0255': Image.fromarray(u8 * 255).save(fn)
    elif form == 'palette':
        im = Image.fromarray(u8 * 3, 'P'); im.putpalette([0, 0, 0] * 3 + [10, 200, 30]); im.save(fn)
    elif form == 'palette_renumbered':                        # index 0 is the car's colour, 1 the black background
        im = Image.fromarray(1 - u8, 'P'); im.putpalette([255, 255, 255, 0, 0, 0]); im.save(fn)
    elif form == 'rgba':                                      # a cut-out: colours everywhere, alpha the mask
        rgba = np.dstack([np.full((*m.shape, 3), 90, np.uint8), np.where(m, 200, 40).astype(np.uint8)]); Image.fromarray(rgba).save(fn)
    elif form == 'la': Image.fromarray(np.dstack([np.full(m.shape, 255, np.uint8), u8 * 255])).convert('LA').save(fn)
    elif form == 'rgb': Image.fromarray(np.dstack([u8 * 0, u8 * 0, u8 * 1])).save(fn)   # even (0,0,1) is not black
    elif form == 'bit': Image.fromarray(m).convert('1').save(fn)
    elif form == 'u16': Image.fromarray(m.astype(np.uint16) * 65535).save(fn)
    elif form == 'gif': save_gif(m, fn)
    elif form == 'tiff': Image.fromarray(u8 * 255).save(fn)
    r = load_mask(fn)
    assert r.dtype == np.uint8 and r.shape == m.shape
    np.testing.assert_array_equal(r, u8)

def test_opaque_rgba_reads_colours(tmp_path):
    "An alpha that is the same everywhere carries no mask: the colours are read."
    m = square(); rgba = np.dstack([np.repeat(m.view(np.uint8)[..., None] * 255, 3, -1), np.full(m.shape, 255, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / 'm.png')
    np.testing.assert_array_equal(load_mask(tmp_path / 'm.png'), m.view(np.uint8))

def break_folders(p, what):
    "One kind of damage to a folders layout; return (file the error must name, text it must contain)."
    if what == 'photo_without_mask': (p / 'masks' / 'b-1_mask.png').unlink(); return 'b-1.jpg', 'photo without a mask'
    if what == 'mask_without_photo': (p / 'photos' / 'b-1.jpg').unlink(); return 'b-1_mask.png', 'mask without a photo'
    if what == 'size':
        Image.fromarray(np.zeros((20, 32), np.uint8)).save(p / 'masks' / 'b-1_mask.png')
        return 'b-1_mask.png', 'mask size 32x20 differs from the size 32x24 (w x h) of its image'
    if what == 'unreadable_photo': (p / 'photos' / 'b-1.jpg').write_bytes(b'junk'); return 'b-1.jpg', 'not a readable photo'
    if what == 'unreadable_mask': (p / 'masks' / 'b-1_mask.png').write_bytes(b'junk'); return 'b-1_mask.png', 'not a readable mask image'
    if what == 'not_a_photo': (p / 'photos' / 'notes.txt').write_text('x'); return 'notes.txt', 'not a photo file'
    if what == 'jpeg_mask':
        (p / 'masks' / 'b-1_mask.png').rename(p / 'masks' / 'b-1_mask.jpg'); return 'b-1_mask.jpg', 'not a mask file'
    if what == 'two_photos':
        (p / 'photos' / 'b-1.png').write_bytes((p / 'photos' / 'b-1.jpg').read_bytes()); return 'b-1.png', "a second photo for 'b-1'"
    if what == 'no_suffix': (p / 'masks' / 'b-1.png').write_bytes(b''); (p / 'masks' / 'b-1_mask.png').unlink(); return 'b-1.png', "mask name does not end with '_mask'"
    if what == 'group': (p / 'photos' / 'b-1.jpg').rename(p / 'photos' / 'B1.jpg'); (p / 'masks' / 'b-1_mask.png').rename(p / 'masks' / 'B1_mask.png'); return 'B1.jpg', 'does not match the group pattern'
    if what == 'folder': (p / 'photos' / 'sub').mkdir(); return 'sub', 'not a photo file'

FOLDER_KINDS = ['photo_without_mask', 'mask_without_photo', 'size', 'unreadable_photo', 'unreadable_mask', 'not_a_photo',
                'jpeg_mask', 'two_photos', 'no_suffix', 'group', 'folder']

@pytest.mark.parametrize('what', FOLDER_KINDS)
def test_folder_bad_input_named(tmp_path, what):
    p = write_folders(tmp_path / 'f')
    name, text = break_folders(p, what)
    with pytest.raises(ValueError) as e: items(p, group=r'^([a-z])-')
    assert name in str(e.value) and text in str(e.value), str(e.value)
    with pytest.warns(UserWarning, match=r'[12] of \d+ files') as w: df = items(p, group=r'^([a-z])-', on_error='warn')
    assert name in str(w[0].message) and 1 <= len(df.attrs['skipped']) <= 2     # (a JPEG mask: its photo has no mask)
    assert len(df) >= 3
    assert name not in {f.name for f in df.img} | {f.name for f in df['mask']}

def test_folder_suffix_hint_and_missing_folders(tmp_path):
    p = write_folders(tmp_path / 'f')
    with pytest.raises(ValueError, match=r"pass mask_suffix='_mask'\?"): folder_items(p, 'photos', 'masks')
    with pytest.raises(FileNotFoundError, match='images: no such folder'): folder_items(p)
    with pytest.raises(FileNotFoundError, match='labels: no such folder'): folder_items(p, 'photos', 'labels')
    (p / 'empty').mkdir()
    with pytest.raises(FileNotFoundError, match='has no photos'): folder_items(p, 'empty', 'masks')
    with pytest.raises(ValueError, match='group must be a regular expression'): items(p, group='([a-z')
    with pytest.raises(ValueError, match='on_error'): items(p, on_error='skip')
    with pytest.raises(ValueError, match='no usable photos'):
        with pytest.warns(UserWarning): folder_items(p, 'photos', 'masks', mask_suffix='_x', on_error='warn')

def test_exif_rotated_photo_fits_upright_mask(tmp_path):
    "A phone photo stored sideways with an EXIF orientation: its mask is drawn on the upright photo; both load upright."
    p = write_folders(tmp_path / 'f', stems=('a',))
    up = Image.open(p / 'photos' / 'a.jpg'); exif = Image.Exif(); exif[0x0112] = 6          # 6: rotate 90 CW to display
    up.transpose(Image.Transpose.ROTATE_90).save(p / 'photos' / 'a.jpg', exif=exif, quality=95)
    assert Image.open(p / 'photos' / 'a.jpg').size == (24, 32)                                # stored sideways
    df = items(p)
    assert load_image(df.img[0]).size == (32, 24) and load_mask(df.iloc[0]).shape == (24, 32)

def test_data_items_dispatch(tmp_path, layout):
    p = write_folders(tmp_path / 'f')
    assert len(data_items(layout)) == 20 and len(data_items(layout, split='test')) == 4
    assert data_items(p, 'folders', images='photos', mask_suffix='_mask', group=r'^(\w)').car_id.nunique() == 3
    with pytest.raises(ValueError, match="unknown layout 'folder'; did you mean 'folders'"): data_items(p, 'folder')
    with pytest.raises(ValueError, match="mask_suffix: only for layout='folders'"): data_items(layout, mask_suffix='_m')

def test_train_on_folders(tmp_path):
    "carvana_dls over folder_items: batches of the right shape with {0,1} masks, split by group; a learner trains on it."
    from carvana_fastai.unet import carvana_learner
    p = write_folders(tmp_path / 'f', stems=[f'{g}-{i}' for g in 'abcde' for i in range(2)])
    df = items(p, group=r'^([a-z])-')
    dls = carvana_dls(p, (16, 24), bs=4, items=df, aug=False, valid_pct=0.2, seed=0, workers=0)
    xb, yb = dls.one_batch()
    assert xb.shape == (4, 3, 16, 24) and set(yb.unique().tolist()) == {0, 1}
    assert dls.valid.items.car_id.nunique() == 1 and not set(dls.valid.items.car_id) & set(dls.train.items.car_id)
    learn = carvana_learner(dls, body='resnet18', pretrained=False)
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
    assert np.isfinite(learn.recorder.values[-1]).all()

def test_workers_renamed(layout):
    with pytest.warns(DeprecationWarning, match="'num_workers' is renamed 'workers'"):
        dls = carvana_dls(layout, (16, 24), bs=4, num_workers=0)
    assert dls.train.fake_l.num_workers == 0
    with pytest.raises(TypeError, match='both'): carvana_dls(layout, (16, 24), num_workers=0, workers=0)
