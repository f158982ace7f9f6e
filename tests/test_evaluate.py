"Tests of `carvana_fastai.evaluate`: the paper's table, the threshold sweep, overlays."
import numpy as np, pytest
from PIL import Image
import torch
from carvana_fastai.evaluate import evaluate_ensemble, best_threshold, save_overlays, boundary_f
from carvana_fastai.report import to_markdown
from tiny_models import tiny_ensemble, test_dir

# --- evaluation and overlays ------------------------------------------------------------------------------------------

def test_evaluate_and_threshold(tiny_carvana):
    ens = tiny_ensemble()
    tab = evaluate_ensemble(ens, tiny_carvana, valid_pct=0.34, seed=0, bs=3, progress=False)
    assert list(tab.columns) == ['model', 'size', 'tta', 'refine', 'weight', 'dice', 'bf1', 'bf3'] and len(tab) == 6
    assert set(tab.refine) == {'none'} and 'refine_ms' not in tab.attrs and tab.attrs['forward_ms'] > 0
    assert tab.bf1.between(0, 1).all() and (tab.bf1 <= tab.bf3 + 1e-9).all()
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

# --- the boundary F-score ---------------------------------------------------------------------------------------------

def _car(h=64, w=96):
    m = torch.zeros(1, h, w, dtype=torch.uint8)
    m[:, 20:50, 10:80] = 1; m[:, 12:20, 30:60] = 1                     # a body and a cabin
    return m

def test_boundary_f_perfect_shifted_empty():
    true = _car()
    assert torch.equal(boundary_f(true, true, (1, 3)), torch.ones(1, 2))
    two = boundary_f(true.roll(2, -1), true, (1, 3))[0]
    assert two[0] < two[1] == 1                                          # 2 px off: wrong at 1 px, right at 3 px
    one = boundary_f(true.roll(1, -2), true, (0, 1, 3))[0]
    assert one[0] < one[1] == one[2] == 1                                # 1 px off: only an exact match misses it
    empty = torch.zeros_like(true)
    assert torch.equal(boundary_f(empty, empty), torch.ones(1, 2))
    assert torch.equal(boundary_f(empty, true), torch.zeros(1, 2)) and torch.equal(boundary_f(true, empty), torch.zeros(1, 2))
    assert torch.equal(boundary_f(torch.ones_like(true), torch.ones_like(true)), torch.ones(1, 2))   # the frame is not an edge

def test_boundary_f_sees_what_dice_hides():
    "A mask 2 px too big all round loses little Dice but much BF1."
    from carvana_fastai.rle import dice_batch
    true = torch.zeros(1, 256, 384, dtype=torch.uint8); true[:, 40:220, 40:340] = 1
    fat = torch.nn.functional.max_pool2d(true[None].float(), 5, 1, 2)[0].to(torch.uint8)
    d, bf1 = dice_batch(fat > 0, true).item(), boundary_f(fat, true, (1,))[0, 0].item()
    assert d > 0.97 and bf1 < 0.1
