"Edge refinement (carvana_fastai.refine): band-only changes, perfect maps, flips, odd sizes, checkpoints, a brief training."
import pytest, torch
import torch.nn.functional as F
from torch import nn
from carvana_fastai.refine import (band, guided_refine, guided_filter, EdgeRefiner, refine, degrade, mask_dice,
                                   boundary_dice, train_refiner, save_refiner, load_refiner, apply_tiles)

def _coarse(h, w, seed=0, scale=1/3):
    "A soft coarse map (h, w) from a random blob mask, and the mask."
    g = torch.Generator().manual_seed(seed)
    m = (F.interpolate(torch.rand(1, 1, 4, 5, generator=g), size=(h, w), mode='bicubic', align_corners=False)[0, 0] > .5).float()
    return degrade(m, scale, g), m

def _random_refiner(seed=0, channels=6):
    torch.manual_seed(seed)
    m = EdgeRefiner(channels=channels)
    for l in m.modules():
        if isinstance(l, nn.Conv2d): nn.init.normal_(l.weight, std=.3)
    return m

@pytest.mark.parametrize('h,w', [(31, 47), (64, 96), (17, 129), (5, 7)])
def test_band_only_and_odd_sizes(h, w):
    p, _ = _coarse(h, w)
    img = torch.randint(0, 256, (3, h, w), dtype=torch.uint8)
    b = band(p)
    assert b.shape == p.shape
    for r in (guided_refine(img, p, radius=3, tile=8), refine(img, p, _random_refiner(), tile=8)):
        assert r.shape == p.shape and r.dtype == torch.float32
        assert torch.equal(r[~b], p[~b])                      # far from the edge: the coarse map stands
        assert 0 <= r.min() and r.max() <= 1

def test_tiles_do_not_matter():
    "The result at a pixel does not depend on the tile size (the halo covers the receptive field)."
    p, _ = _coarse(45, 70, seed=1)
    img = torch.randint(0, 256, (3, 45, 70), dtype=torch.uint8)
    m = _random_refiner(1)
    torch.testing.assert_close(refine(img, p, m, tile=8, bs=3), refine(img, p, m, tile=32), atol=1e-5, rtol=0)
    torch.testing.assert_close(guided_refine(img, p, 4, tile=8), guided_refine(img, p, 4, tile=32), atol=1e-5, rtol=0)

def test_guided_tiles_equal_whole_image():
    p, _ = _coarse(40, 52, seed=2)
    img = torch.rand(1, 3, 40, 52)
    r, pad = 3, 6
    full = guided_filter(F.pad(img, (pad,)*4, mode='replicate'), F.pad(p[None, None], (pad,)*4, mode='replicate'), r)
    full = full[..., pad:-pad, pad:-pad].clamp(0, 1)[0, 0]
    b = band(p)
    torch.testing.assert_close(guided_refine(img, p[None, None], r, tile=16)[0, 0][b], full[b], atol=1e-4, rtol=0)

def test_perfect_stays_perfect():
    _, m = _coarse(50, 75, seed=3)
    img = torch.randint(0, 256, (3, 50, 75), dtype=torch.uint8)
    assert not band(m).any()
    assert torch.equal(refine(img, m, _random_refiner()), m)
    assert torch.equal(guided_refine(img, m), m)

def test_flip_equivariance():
    p, _ = _coarse(37, 61, seed=4)
    img = torch.randint(0, 256, (3, 37, 61), dtype=torch.uint8)
    m = _random_refiner(4)
    r = refine(img, p, m, tile=16)
    torch.testing.assert_close(refine(img.flip(-1), p.flip(-1), m, tile=16), r.flip(-1), atol=1e-5, rtol=0)
    assert not torch.allclose(refine(img.flip(-1), p.flip(-1), m, flip=False), refine(img, p, m, flip=False).flip(-1), atol=1e-3)
    g = guided_refine(img, p, 3, tile=16)                     # the guided filter is symmetric by construction
    torch.testing.assert_close(guided_refine(img.flip(-1), p.flip(-1), 3, tile=16), g.flip(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(guided_refine(img.flip(-2), p.flip(-2), 3, tile=16), g.flip(-2), atol=1e-5, rtol=0)

def test_batches():
    ps = torch.stack([_coarse(33, 44, seed=s)[0] for s in range(3)])[:, None]
    imgs = torch.randint(0, 256, (3, 3, 33, 44), dtype=torch.uint8)
    m = _random_refiner(5)
    r = refine(imgs, ps, m, tile=8, bs=5)
    for i in range(3): torch.testing.assert_close(r[i, 0], refine(imgs[i], ps[i, 0], m, tile=8), atol=1e-6, rtol=0)

def test_bad_input():
    with pytest.raises(ValueError, match='does not match'): refine(torch.zeros(3, 10, 11), torch.rand(10, 12), EdgeRefiner())
    with pytest.raises(ValueError, match='probs must be'): band(torch.rand(2, 3, 4, 5))

def test_checkpoint_round_trip_and_refusal(tmp_path):
    m = _random_refiner(6, channels=8)
    save_refiner(m, tmp_path/'r.pth', train=dict(steps=0))
    m2 = load_refiner(tmp_path/'r.pth')
    x, p = torch.rand(2, 3, 20, 20), torch.rand(2, 1, 20, 20)
    torch.testing.assert_close(m(x, p), m2(x, p))
    assert m2.config == m.config and not m2.training
    torch.save({'format': 'carvana_fastai.checkpoint', 'version': 1, 'model': {}}, tmp_path/'unet.pth')
    with pytest.raises(ValueError, match='not a refiner checkpoint.*load_ensemble'): load_refiner(tmp_path/'unet.pth')
    (tmp_path/'junk.pth').write_bytes(b'not a checkpoint')
    with pytest.raises(ValueError, match='not a refiner checkpoint'): load_refiner(tmp_path/'junk.pth')
    ck = torch.load(tmp_path/'r.pth', weights_only=True); ck['version'] = 99; torch.save(ck, tmp_path/'new.pth')
    with pytest.raises(ValueError, match='newer'): load_refiner(tmp_path/'new.pth')
    ck['version'] = 1; ck['config']['channels'] = 4; torch.save(ck, tmp_path/'bad.pth')
    with pytest.raises(ValueError, match='does not match'): load_refiner(tmp_path/'bad.pth')
    with pytest.raises(FileNotFoundError): load_refiner(tmp_path/'missing.pth')
    assert not list(tmp_path.glob('.*.tmp'))                 # the atomic write left no temp file

def test_metrics():
    _, m = _coarse(40, 60, seed=7)
    assert mask_dice(m, m) == 1 and boundary_dice(m, m) == 1
    assert mask_dice(torch.zeros(3, 3), torch.zeros(3, 3)) == 1
    moved = torch.roll(m, 2, -1)
    assert boundary_dice(moved, m) < mask_dice(moved, m) < 1

def test_brief_training_improves(tiny_carvana, tmp_path):
    "A refiner trained for a few seconds on 64x96 photos lowers the band loss over the degraded coarse maps it saw."
    ref = train_refiner(tiny_carvana, tmp_path/'ref.pth', size=32, steps=40, bs=8, lr=5e-3, n=12, progress=False)
    ck = torch.load(tmp_path/'ref.pth', weights_only=True)
    assert ck['format'] == 'carvana_fastai.refiner' and ck['train']['steps'] == 40
    from carvana_fastai.refine import _read_pairs
    pairs = _read_pairs(tiny_carvana, n=12)
    g = torch.Generator().manual_seed(11)
    before = after = 0.
    for img, mask in pairs:
        p = degrade(mask, 1/3, g)
        r = refine(img, p, ref)
        b = band(p)
        t = mask[b]
        before += F.binary_cross_entropy(p[b].clamp(1e-4, 1-1e-4), t).item()
        after += F.binary_cross_entropy(r[b].clamp(1e-4, 1-1e-4), t).item()
    assert after < before

def test_inplace_equals_copy():
    "In place, tiles read the coarse map before any is written: the same result as on a copy, and no second map."
    p, _ = _coarse(70, 90, seed=8)
    img = torch.randint(0, 256, (3, 70, 90), dtype=torch.uint8)
    m = _random_refiner(8)
    r = refine(img, p, m, tile=8)
    q = p.clone(); out = refine(img, q, m, tile=8, inplace=True)
    assert torch.equal(out, r) and torch.equal(q, r)
    q = p.clone(); assert torch.equal(guided_refine(img, q, 3, tile=8, inplace=True), guided_refine(img, p, 3, tile=8))

# --- a refiner in the ensemble: everything that predicts is refined -------------------------------------------------
from pathlib import Path
import numpy as np
from carvana_fastai.ensemble import load_ensemble
from carvana_fastai.refine import get_refiner, GuidedRefiner, LearnedRefiner
from carvana_fastai.rle import rle_decode
from tiny_models import tiny_model, tiny_ensemble, STATS, test_dir

def _members(): return [(tiny_model(i), dict(stats=STATS, size=(32 + 8*i, 48))) for i in range(2)]

def test_ensemble_refines_with_a_saved_refiner(tmp_path):
    "A refiner checkpoint loads with the ensemble; the map changes only in the band, masks follow, flips stay exact."
    save_refiner(_random_refiner(8), tmp_path/'r.pth')
    ens = load_ensemble(_members(), tta='hflip', device='cpu', refiner=get_refiner('learned', tmp_path/'r.pth', flip=True))
    assert isinstance(ens.refiner, LearnedRefiner) and ens.refiner.info()['checkpoint'] == str(tmp_path/'r.pth')
    x = torch.randint(0, 256, (2, 3, 67, 101), dtype=torch.uint8)
    with torch.inference_mode():
        raw, out = ens(x, refine=False), ens(x)
        b = band(raw, ens.threshold)
        assert torch.equal(out[~b], raw[~b]) and not torch.equal(out[b], raw[b])
        assert torch.equal(ens.masks(x), (out[:, 0] > ens.threshold).to(torch.uint8))
        torch.testing.assert_close(ens(x.flip(-1)), out.flip(-1), atol=1e-5, rtol=0)   # hflip TTA + flip-averaged refiner

def test_wrong_refiner_files_are_refused(tmp_path):
    torch.save({'format': 'carvana_fastai.checkpoint', 'version': 1, 'model': {}}, tmp_path/'unet.pth')
    with pytest.raises(ValueError, match='not a refiner checkpoint.*load_ensemble'): get_refiner('learned', tmp_path/'unet.pth')
    save_refiner(_random_refiner(9, channels=8), tmp_path/'r.pth')
    ck = torch.load(tmp_path/'r.pth', weights_only=True); ck['config']['dilations'] = [1, 2]; torch.save(ck, tmp_path/'bad.pth')
    with pytest.raises(ValueError, match='does not match EdgeRefiner'): get_refiner('learned', tmp_path/'bad.pth')
    with pytest.raises(ValueError, match='needs the refiner'): get_refiner('learned')
    with pytest.raises(ValueError, match="unknown refine method 'sharp'"): get_refiner('sharp')
    with pytest.raises(ValueError, match='mean merge'): tiny_ensemble(merge='vote', refiner=GuidedRefiner())

def test_predict_folder_uses_the_refiner(test_dir, tmp_path):
    "The submission's masks are the refined masks (a refiner that erases the map gives empty masks)."
    from carvana_fastai.submission import predict_folder
    ens = tiny_ensemble('hflip', threshold=0.45)
    plain = predict_folder(ens, test_dir, tmp_path/'plain.csv', bs=3, workers=0, progress=False)
    ens.refiner = lambda x, p, t: p.mul_(0)
    erased = predict_folder(ens, test_dir, tmp_path/'erased.csv', bs=3, workers=0, progress=False)
    rows = lambda f: [l.split(',', 1)[1] for l in Path(f).read_text().splitlines()[1:]]
    assert any(rows(plain['out'])) and not any(rows(erased['out']))
    ens.refiner = GuidedRefiner(radius=2)
    s = predict_folder(ens, test_dir, tmp_path/'guided.csv', bs=3, workers=0, progress=False)
    name, rle = Path(s['out']).read_text().splitlines()[1].split(',', 1)
    from carvana_fastai.images import read_image
    x = read_image(test_dir/name)[None]
    with torch.inference_mode(): want = ens.masks(x)[0].numpy()
    assert np.array_equal(rle_decode(rle, want.shape), want)

def test_cutout_alpha_follows_the_refined_map(tiny_carvana):
    from carvana_fastai.cutout import cutout, alpha_from_probs, ensemble_probs
    from carvana_fastai.images import read_image
    f = sorted((tiny_carvana/'test').glob('*.jpg'))[0]
    ens = tiny_ensemble('hflip', refiner=GuidedRefiner(radius=2))
    x = read_image(f)[None]
    with torch.inference_mode():
        want = alpha_from_probs(ensemble_probs(ens, x), ens.merge, ens.threshold, 'soft')[0, 0].numpy()
        plain = ens.refiner; ens.refiner = None
        unrefined = alpha_from_probs(ensemble_probs(ens, x), ens.merge, ens.threshold, 'soft')[0, 0].numpy()
        ens.refiner = plain
    got = np.asarray(cutout(ens, f, mask_only=True))
    assert np.array_equal(got, want) and not np.array_equal(want, unrefined)

@pytest.mark.parametrize('steps', [1, 2, 3, 5])
def test_few_steps_train(steps):
    "Any number of steps trains (the one-cycle schedule needs its warm-up to span at least one step)."
    g = torch.Generator().manual_seed(0)
    pairs = [(torch.randint(0, 256, (3, 40, 60), dtype=torch.uint8, generator=g), _coarse(40, 60, seed=s)[1]) for s in range(2)]
    m = train_refiner(pairs, size=16, steps=steps, bs=2, progress=False)
    assert isinstance(m, EdgeRefiner) and not m.training

def test_train_on_the_ensembles_own_maps():
    "Given an ensemble, the refiner also learns from its maps of the training photos (unrefined: refine=False)."
    from carvana_fastai.refine import _own_maps
    g = torch.Generator().manual_seed(1)
    img = torch.randint(0, 256, (3, 40, 60), dtype=torch.uint8, generator=g)
    ens = tiny_ensemble('hflip', refiner=lambda x, p, t: p.mul_(0))            # a refiner must not change the maps it learns from
    own = _own_maps(ens, img, 3)
    with torch.inference_mode(): want = (ens(img[None], refine=False)[0, 0]*255).round().to(torch.uint8)
    assert len(own) == 3 and all(torch.equal(o, want) for o in own) and own[0].any() and _own_maps(None, img, 3) == []
    m = train_refiner([(img, _coarse(40, 60, seed=1)[1])], size=16, steps=3, bs=2, ensemble=ens, progress=False)
    assert isinstance(m, EdgeRefiner)
