"Losses and metrics: properties of every loss, bad input, and the losses and metrics inside a real fastai segmentation Learner."
import numpy as np, pytest, torch, torch.nn as nn
from PIL import Image
from carvana_fastai.losses import (LOSSES, get_loss, KaggleDice, SoftDice, IoU, default_metrics, BoundaryBCEIoULoss,
                                   mask_edges, edge_kernel)
from carvana_fastai.rle import dice

H, W = 24, 32

def masks(h=H, w=W, seed=0):
    "Empty, full, random and a box mask: (4,h,w) int64."
    g = torch.Generator().manual_seed(seed)
    box = torch.zeros(h, w, dtype=torch.long); box[h//4:3*h//4, w//3:2*w//3] = 1
    return torch.stack([torch.zeros_like(box), torch.ones_like(box), (torch.rand(h, w, generator=g) > 0.5).long(), box])

@pytest.mark.parametrize('name', list(LOSSES))
def test_loss_properties(name):
    "Finite on empty/full/random masks, perfect < random, right gradient sign, per-image values with reduction='none'."
    t = masks()
    loss = get_loss(name, reduction='none')
    rnd = torch.randn(4, 1, H, W, generator=torch.Generator().manual_seed(1))
    perfect = (2*t[:, None].float() - 1) * 8
    l_rnd, l_perf = loss(rnd, t), loss(perfect, t)
    assert l_rnd.shape == (4,) and torch.isfinite(l_rnd).all() and torch.isfinite(l_perf).all()
    assert (l_perf < l_rnd).all(), (l_perf, l_rnd)
    assert torch.allclose(get_loss(name, reduction='mean')(rnd, t), l_rnd.mean())
    assert torch.allclose(get_loss(name, reduction='sum')(rnd, t), l_rnd.sum())
    x = torch.zeros(1, 1, H, W, requires_grad=True)
    loss(x, t[3:]).sum().backward()
    g = x.grad[0, 0]
    assert g[t[3] == 1].max() <= 0 and g[t[3] == 1].sum() < 0   # more car logit on a car pixel: lower loss
    assert g[t[3] == 0].min() >= 0 and g[t[3] == 0].sum() > 0   # more car logit on a background pixel: higher loss

@pytest.mark.parametrize('name', list(LOSSES))
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_precision(name, dtype):
    "Half-precision logits (and autocast) give a float32 loss, finite, close to the float32 value, with finite gradients."
    t = masks(seed=2)
    x = torch.randn(4, 1, H, W, generator=torch.Generator().manual_seed(3)) * 5
    x[0], x[1] = -30., 30.
    loss = get_loss(name)
    ref = loss(x, t)
    xh = x.to(dtype).requires_grad_()
    lh = loss(xh, t)
    lh.backward()
    assert lh.dtype == torch.float32 and torch.isfinite(lh) and torch.isfinite(xh.grad).all()
    assert abs(lh.item() - ref.item()) <= 0.02 * max(1., abs(ref.item()))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        la = loss(x, t)
    assert la.dtype == torch.float32 and torch.allclose(la, ref)

def test_float_and_channel_targets():
    "Targets (B,H,W) int, (B,1,H,W) and float give the same loss."
    t = masks()
    x = torch.randn(4, 1, H, W)
    for name in LOSSES:
        loss = get_loss(name)
        a = loss(x, t)
        assert torch.allclose(a, loss(x, t[:, None])) and torch.allclose(a, loss(x, t.float()))

def test_bad_input():
    with pytest.raises(ValueError, match="did you mean 'lovasz'"): get_loss('lovaz')
    with pytest.raises(ValueError, match='known: bce, dice'): get_loss('focal_tversky_xyz')
    loss = get_loss('bce_dice')
    with pytest.raises(ValueError, match=r'one-channel logits .* got \(2, 3, 8, 8\)'): loss(torch.zeros(2, 3, 8, 8), torch.zeros(2, 8, 8))
    with pytest.raises(ValueError, match='does not match'): loss(torch.zeros(2, 1, 8, 8), torch.zeros(2, 8, 9))
    with pytest.raises(ValueError, match="reduction must be"): get_loss('dice', reduction='avg')(torch.zeros(1, 1, 4, 4), torch.zeros(1, 4, 4))
    with pytest.raises(TypeError): get_loss('dice', no_such_option=1)

def test_boundary_weights_at_carvana_scale():
    "At a quarter of the Carvana size the edge band is about kernel//2 pixels each side of the outline."
    h, w = 320, 480
    t = torch.zeros(1, h, w); t[0, 100:220, 120:360] = 1
    k = edge_kernel((h, w)); assert k == 13
    e = mask_edges(t, k)
    assert e[0, 160, 60:300].nonzero().flatten().tolist() == list(range(120 - k//2 - 60, 120 + k//2 - 60))
    assert e[0, 160, 240] == 0 and e[0, 10, 10] == 0
    l = BoundaryBCEIoULoss()(torch.randn(1, 1, h, w), t)
    assert torch.isfinite(l)

def test_metrics_accumulate_like_numpy():
    "Batches of different sizes accumulate to the mean over images of numpy per-image Dice / IoU."
    from types import SimpleNamespace
    from fastai.torch_core import to_detach
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(9, 1, H, W, generator=g) * 2
    targs = (torch.rand(9, H, W, generator=g) > 0.4).long()
    logits[0], targs[0] = -4., 0   # both empty
    logits[1] = 4.                 # full prediction
    p, t = (logits[:, 0] > 0).numpy(), targs.numpy().astype(bool)
    ref_dice = np.mean([dice(a, b) for a, b in zip(p, t)])
    ref_iou = np.mean([1. if (a | b).sum() == 0 else (a & b).sum() / (a | b).sum() for a, b in zip(p, t)])
    for m, ref in ((KaggleDice(), ref_dice), (IoU(), ref_iou)):
        m.reset()
        for sl in (slice(0, 2), slice(2, 7), slice(7, 9)):
            m.accumulate(SimpleNamespace(pred=logits[sl], y=targs[sl], to_detach=to_detach))
        assert m.value == pytest.approx(ref, abs=1e-6)
    # the global (fastai Dice-like) ratio is a different number here: make sure we are not computing it
    glob = 2 * (p & t).sum() / (p.sum() + t.sum())
    assert abs(glob - ref_dice) > 1e-3

def test_metrics_gather_through_to_detach():
    "Under DDP `learn.to_detach` gathers every rank's share (fastai's DistributedDL): both ranks then report the same value."
    from types import SimpleNamespace
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(6, 1, H, W, generator=g) * 2
    targs = (torch.rand(6, H, W, generator=g) > 0.4).long()
    shares = [slice(0, 3), slice(3, 6)]                       # rank 0 and rank 1 of one validation batch
    def rank_learner(r):
        "Rank `r`'s view: its own share in pred/y; to_detach returns the concatenation over ranks, as a gather."
        mine = {'pred': logits[shares[r]], 'y': targs[shares[r]]}
        full = {id(mine['pred']): logits, id(mine['y']): targs}
        calls = []
        def to_detach(b, cpu=True, gather=True): calls.append(gather); return full[id(b)]
        return SimpleNamespace(**mine, to_detach=to_detach, calls=calls)
    for cls in (KaggleDice, IoU, SoftDice):
        vals = []
        for r in (0, 1):
            m, l = cls(), rank_learner(r)
            m.reset(); m.accumulate(l)
            assert m.count == 6 and len(l.calls) == 2 and all(l.calls)   # pred and y both read through to_detach
            vals.append(m.value)
        ref = cls(); ref.reset(); ref.accumulate(SimpleNamespace(pred=logits, y=targs, to_detach=lambda b, **k: b))
        assert vals[0] == pytest.approx(vals[1]) == pytest.approx(ref.value)

@pytest.fixture(scope='module')
def seg_dls(tmp_path_factory):
    "A fastai SegmentationDataLoaders on 10 tiny PNG image/mask pairs (mask values 0/1), the image's red channel encodes the car."
    from fastai.vision.all import SegmentationDataLoaders
    path = tmp_path_factory.mktemp('seg')
    (path/'img').mkdir(); (path/'lbl').mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):
        m = np.zeros((32, 48), np.uint8)
        y0, x0 = rng.integers(2, 14), rng.integers(2, 24)
        m[y0:y0+14, x0:x0+20] = 1
        img = rng.integers(0, 80, (32, 48, 3), dtype=np.uint8); img[..., 0] += 150 * m
        Image.fromarray(img).save(path/'img'/f'{i}.png'); Image.fromarray(m).save(path/'lbl'/f'{i}.png')
    return SegmentationDataLoaders.from_label_func(path, sorted((path/'img').iterdir()), lambda o: path/'lbl'/o.name,
                                                   codes=['bg', 'car'], valid_pct=0.4, seed=0, bs=3, num_workers=0)

@pytest.mark.parametrize('name', list(LOSSES))
def test_learner_with_each_loss(seg_dls, name):
    "A one-conv model trains two epochs with each loss; metrics are finite; predict/get_preds/show_results work."
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from fastai.vision.all import Learner
    learn = Learner(seg_dls, nn.Conv2d(3, 1, 3, padding=1), loss_func=get_loss(name), metrics=default_metrics() + [SoftDice()])
    with learn.no_logging(): learn.fit(2, 0.05)
    assert learn.recorder.metric_names[1:-1] == ['train_loss', 'valid_loss', 'dice', 'iou', 'soft_dice']
    vals = learn.recorder.values
    assert len(vals) == 2 and all(np.isfinite(v).all() for v in vals)
    # the reported dice is the mean over validation images of the numpy Kaggle Dice
    probs, targs, dec = learn.get_preds(with_decoded=True)
    assert probs.shape == (4, 1, 32, 48) and dec.shape == targs.shape == (4, 32, 48)
    assert set(dec.unique().tolist()) <= {0, 1}
    assert torch.equal(dec, (probs[:, 0] > 0.5).long())
    ref = np.mean([dice(a, b) for a, b in zip(dec.numpy(), targs.numpy())])
    assert learn.validate()[1] == pytest.approx(ref, abs=1e-6)
    # per-image losses for Interpretation / top losses
    _, _, losses = learn.get_preds(with_loss=True)
    assert losses.shape == (4,) and torch.isfinite(losses).all()
    full, dec1, prob1 = learn.predict(seg_dls.valid_ds.items[0])
    assert dec1.shape == (32, 48) and set(dec1.unique().tolist()) <= {0, 1}
    learn.show_results(max_n=2); plt.close('all')

def test_thresh_renamed_threshold():
    "`threshold` is the name; the old `thresh` still works with a DeprecationWarning."
    from carvana_fastai.losses import KaggleDice, IoU, binarize, BCEDiceLoss
    with pytest.warns(DeprecationWarning, match="'thresh' is renamed 'threshold'"): assert KaggleDice(thresh=0.3).threshold == 0.3
    with pytest.warns(DeprecationWarning): assert IoU(thresh=0.7).threshold == 0.7
    with pytest.warns(DeprecationWarning): assert BCEDiceLoss(thresh=0.2).threshold == 0.2
    x = torch.tensor([-1., 0.1, 2.])
    with pytest.warns(DeprecationWarning): assert binarize(x, thresh=0.6).tolist() == binarize(x, threshold=0.6).tolist()
