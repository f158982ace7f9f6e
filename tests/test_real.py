"""Tests on the real Carvana cars of `../shared/carvana-real` (20 cars, 320 photos at 1918x1280 with Kaggle's masks).

The folder is the project's dev set, not part of the package: a user's clone does not have it, so every test here skips
with the reason when it is absent."""
import numpy as np, pandas as pd, pytest
from pathlib import Path

REAL = Path(__file__).resolve().parents[1].parent/'shared'/'carvana-real'
pytestmark = pytest.mark.skipif(not (REAL/'train').is_dir(), reason=f"no real Carvana data at {REAL} (the project's dev set; not in a user's clone)")

@pytest.fixture(scope='module')
def items():
    from carvana_fastai.data import carvana_items
    return carvana_items(REAL, 'train')

def test_reader_reads_all_320_photos(items):
    from carvana_fastai.core import CARVANA_SHAPE
    from carvana_fastai.data import load_mask
    assert len(items) == 320 and items['car_id'].nunique() == 20
    assert (items.groupby('car_id').size() == 16).all()
    assert sorted(items['view'].unique().tolist()) == list(range(1, 17))
    m = load_mask(items.iloc[0])
    assert m.shape == CARVANA_SHAPE and set(np.unique(m).tolist()) == {0, 1}

def test_train_masks_csv_equals_the_gifs(items):
    "Kaggle's `train_masks.csv` decodes, through our RLE, to exactly the GIF masks; and our encoder gives Kaggle's strings."
    from PIL import Image
    from carvana_fastai.rle import rle_decode, rle_encode
    csv = pd.read_csv(REAL/'train_masks.csv').set_index('img')['rle_mask']
    assert len(csv) == 320
    for _, r in items.iterrows():
        name = Path(r['img']).name
        gif = np.asarray(Image.open(REAL/'train_masks'/f"{Path(name).stem}_mask.gif"))
        assert np.array_equal(rle_decode(csv[name]), gif), name
        assert rle_encode(gif) == csv[name], name

def test_split_by_car_on_real_photos(items):
    from carvana_fastai.data import car_folds
    folds = car_folds(4, seed=42)(items)
    valid_cars = [set(items.iloc[v]['car_id']) for _, v in folds]
    assert all(len(c) == 5 for c in valid_cars) and set().union(*valid_cars) == set(items['car_id'])
    for t, v in folds: assert not set(items.iloc[t]['car_id']) & set(items.iloc[v]['car_id'])

def test_one_short_training_step_on_real_photos(items, tmp_path):
    "Two cars' photos, a tiny stage, one epoch: the loss is finite, the checkpoint loads and predicts a real photo."
    from carvana_fastai.bodies import body_stats
    from carvana_fastai.data import carvana_dls
    from carvana_fastai.unet import carvana_learner
    from carvana_fastai.train import train_progressive
    from carvana_fastai.ensemble import load_ensemble, predict_image
    sub = items[items['car_id'].isin(sorted(items['car_id'].unique())[:2])].iloc[::4]    # 2 cars x 4 views
    dls = carvana_dls(REAL, (64, 96), bs=4, valid_pct=0.5, items=sub, stats=body_stats('efficientnet_lite0'), workers=0)
    learn = carvana_learner(dls, body='efficientnet_lite0', pretrained=True)
    hist = train_progressive(learn, [dict(size=(64, 96), epochs=1, lr=1e-3, bs=4)], REAL, tmp_path/'m', valid_pct=0.5,
                             dls_kwargs=dict(items=sub, workers=0), progress=False)
    assert np.isfinite(hist['train_loss']).all() and np.isfinite(hist['valid_loss']).all()
    m = predict_image(load_ensemble([tmp_path/'m'/'model.pth'], tta='none'), sub['img'].iloc[0])
    assert m.shape == (1280, 1918) and m.dtype == np.uint8

def test_shipped_car_model_cuts_out_a_real_photo(items, tmp_path):
    "`load_ensemble('cars')` with the TTA, threshold and refiner it ships with: an RGBA cut-out of a real photo whose alpha agrees with Kaggle's mask (a car it was trained on: this checks it loads and works, not its accuracy)."
    from PIL import Image
    from carvana_fastai.checkpoint import shipped_model
    from carvana_fastai.cutout import cutout
    from carvana_fastai.data import load_mask
    from carvana_fastai.ensemble import load_ensemble
    from carvana_fastai.rle import dice
    spec = shipped_model('cars')
    ens = load_ensemble('cars', device='cpu')
    assert ens.threshold == spec['threshold'] and len(ens.members) == len(spec['members'])
    assert (ens.refiner is None) == (spec['refine']['method'] == 'none')
    row = items.iloc[5]
    out = cutout(ens, row['img'])
    assert out.mode == 'RGBA' and out.size == (1918, 1280)
    alpha = np.asarray(out)[..., 3] > 127
    assert dice(alpha, load_mask(row).astype(bool)) > 0.98
