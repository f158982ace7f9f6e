"Tests of `carvana_fastai.evaluate`: the paper's table, the threshold sweep, overlays."
import numpy as np, pytest
from PIL import Image
from carvana_fastai.evaluate import evaluate_ensemble, best_threshold, save_overlays
from carvana_fastai.report import to_markdown
from tiny_models import tiny_ensemble, test_dir

# --- evaluation and overlays ------------------------------------------------------------------------------------------

def test_evaluate_and_threshold(tiny_carvana):
    ens = tiny_ensemble()
    tab = evaluate_ensemble(ens, tiny_carvana, valid_pct=0.34, seed=0, bs=3, progress=False)
    assert list(tab.columns) == ['model', 'size', 'tta', 'weight', 'dice'] and len(tab) == 6
    assert tab.attrs['cars'] == 2 and tab.attrs['images'] == 8 and tab.dice.between(0, 1).all()
    assert to_markdown(tab).count('\n') == 7
    t, curve = best_threshold(ens, tiny_carvana, valid_pct=0.34, seed=0, thresholds=[0.4, 0.5, 0.6], progress=False)
    assert t in (0.4, 0.5, 0.6) and curve.dice.max() == curve.dice[curve.threshold == t].iloc[0]
    assert abs(curve.dice[1] - tab.dice.iloc[-1]) < 1e-6

def test_overlays(test_dir, tmp_path):
    paths = save_overlays(tiny_ensemble(), test_dir, tmp_path/'ov', n=3)
    assert len(paths) == 3 and all(p.exists() for p in paths)
    a = np.asarray(Image.open(paths[0]))
    assert a.shape == (64, 96, 3) and (a == (255, 0, 80)).all(-1).any()
