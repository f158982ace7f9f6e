"Tests of `carvana_fastai.ensemble`: TTA inversion, combining members, loading checkpoints, renamed keywords."
import importlib.util, warnings
import pytest, torch
from carvana_fastai.ensemble import TTA, HFlip, Ensemble, load_ensemble, combine_probs, probs_to_mask, check_weights, predict_image
from tiny_models import STATS, tiny_model, tiny_ensemble

HAVE_UNET = importlib.util.find_spec('carvana_fastai.unet') is not None

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
    assert probs_to_mask(combine_probs(p), threshold=0.45).tolist() == [1, 1, 0, 1]

def test_ensemble_vote_module():
    ens = tiny_ensemble(merge='vote', n=3)
    x = torch.randint(0, 256, (1, 3, 40, 60), dtype=torch.uint8)
    with torch.inference_mode():
        votes = sum((m(x) > 0.5).int() for m in ens.members)
        assert torch.equal(ens.masks(x), (votes >= 2)[:, 0].to(torch.uint8))

def test_weights_checked_in_one_place():
    assert check_weights([1, 3], 2) == [0.25, 0.75]
    for bad, msg in (([1, 2, 3], '3 weights for 2'), ([0, 0], 'positive sum'), ([1, -1], 'positive sum'), (['x', 1], 'numbers')):
        with pytest.raises(ValueError, match=msg): check_weights(bad, 2)
        with pytest.raises(ValueError, match=msg): tiny_ensemble(weights=bad)
        with pytest.raises(ValueError, match=msg): Ensemble(list(tiny_ensemble().members), weights=bad)

def test_old_keywords_still_work():
    "`thresh` (now `threshold`) and TTA's `merge` (now `tta_merge`) work for a release, with a DeprecationWarning."
    x = torch.randint(0, 256, (1, 3, 40, 60), dtype=torch.uint8)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        ens = tiny_ensemble(thresh=0.3)
        assert ens.threshold == 0.3 and ens.thresh == 0.3
        with torch.inference_mode():
            assert torch.equal(ens.masks(x, thresh=0.6), ens.masks(x, threshold=0.6))
            assert TTA(tiny_model(), 'hflip', merge='max').tta_merge == 'max'
        assert predict_image(ens, x[0].permute(1, 2, 0).numpy(), thresh=0.6).tolist() == ens.masks(x, 0.6)[0].tolist()
    assert len(w) == 5 and all(issubclass(o.category, DeprecationWarning) for o in w)
    with pytest.raises(TypeError, match='both'): tiny_ensemble(thresh=0.3, threshold=0.4)

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
    "A checkpoint written as training writes it loads into a member that predicts exactly what the model does."
    from carvana_fastai.unet import carvana_unet
    from carvana_fastai.checkpoint import atomic_save, CKPT_FORMAT, CKPT_VERSION
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

# --- masks: full-resolution work only in the band ---------------------------------------------------------------------

def _smooth(b, h, w, g):
    "Smooth random maps in [0, 1] (B,1,h,w) with a few sharp regions: like a prediction (a big object, a narrow edge)."
    from carvana_fastai.ensemble import _resize
    m = _resize(torch.rand(b, 1, max(2, h//8), max(2, w//8), generator=g), (h, w))
    return ((m - 0.5)*4 + 0.5).clamp(0, 1)

@pytest.mark.parametrize('size', [(1280, 1918), (97, 143), (131, 257)])
def test_band_masks_equal_full_upsample(size):
    "The band-only masks equal the thresholded full bilinear upsample exactly: several member sizes, weights, odd sizes, ties."
    from carvana_fastai.ensemble import band_masks, band_ok, _resize
    assert band_ok('cpu')
    g = torch.Generator().manual_seed(sum(size))
    shapes = [(160, 240), (128, 192), (96, 144), (97, 143)] if size[0] > 1000 else [(32, 48), (24, 40), (97, 71), (13, 143)]
    for levels in (None, 8):
        sums = [_smooth(2, h, w, g)*wt for (h, w), wt in zip(shapes, (0.4, 0.3, 0.2, 0.1))]
        if levels: sums = [(s*levels).round()/levels for s in sums]          # many pixels exactly on a threshold
        full = None
        for s in sums: full = _resize(s, size) if full is None else full.add_(_resize(s, size))
        ts = [0.3, 0.5, 0.55, float(full[0, 0, size[0]//2, size[1]//2]), float(full[1, 0, size[0]//3, size[1]//4])]
        for max_band in (1.0, 0.15):
            for m, t in zip(band_masks(sums, size, ts, max_band=max_band), ts):
                assert torch.equal(m, probs_to_mask(full, threshold=t)[:, 0]), (levels, max_band, t)

def test_ensemble_masks_use_the_band():
    "`Ensemble.masks` (the band where exact) equals the masks of the full combined map, mean merge, weights, three sizes."
    members = [(tiny_model(i), dict(stats=STATS, size=s)) for i, s in enumerate([(32, 48), (40, 48), (24, 40)])]
    ens = load_ensemble(members, weights=[3, 2, 1], device='cpu')
    x = torch.randint(0, 256, (2, 3, 97, 143), dtype=torch.uint8)
    assert ens.uses_band((97, 143)) and not load_ensemble(members, merge='vote', device='cpu').uses_band((97, 143))
    with torch.inference_mode():
        p = ens(x)
        for t in (0.3, 0.5, float(p[0, 0, 50, 70])):
            assert torch.equal(ens.masks(x, threshold=t), probs_to_mask(p, threshold=t)[:, 0])
        qs = [m.prob(x) for m in ens.members]
        for m, t in zip(ens.combine_masks(qs, (97, 143), [0.4, 0.6]), (0.4, 0.6)):
            assert torch.equal(m, probs_to_mask(ens.combine(qs, (97, 143)), threshold=t)[:, 0])
