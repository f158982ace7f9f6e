"RLE and Dice against plain loop implementations written here, on random and structured masks."
import numpy as np, pytest, torch
from carvana_fastai.rle import CARVANA_SHAPE, rle_encode, rle_decode, check_rle, dice, mean_dice, dice_batch, kaggle_dice

def loop_encode(mask):
    "Straightforward reference: walk the row-major pixels, emit 1-indexed (start, length) per run of nonzero."
    m = np.asarray(mask)
    h, w = m.shape
    flat = [int(m[r, c] != 0) for r in range(h) for c in range(w)]  # row-major: along a row, then the next row
    out, start = [], None
    for i, v in enumerate(flat + [0]):
        if v and start is None: start = i
        if not v and start is not None: out += [start + 1, i - start]; start = None
    return ' '.join(str(x) for x in out)

def loop_decode(rle, shape):
    h, w = shape
    m = [[0] * w for _ in range(h)]
    nums = [int(t) for t in rle.split()]
    for s, l in zip(nums[0::2], nums[1::2]):
        for p in range(s - 1, s - 1 + l): m[p // w][p % w] = 1
    return np.array(m, dtype=np.uint8).reshape(shape)

def structured_masks():
    "Edge cases: empty, full, corners, single rows/columns, stripes, checkerboard, blobs touching borders."
    yield np.zeros((5, 7), np.uint8)
    yield np.ones((5, 7), np.uint8)
    yield np.ones((1, 1), np.uint8)
    yield np.zeros((1, 1), np.uint8)
    m = np.zeros((4, 6), np.uint8); m[0, 0] = 1; yield m
    m = np.zeros((4, 6), np.uint8); m[-1, -1] = 1; yield m
    m = np.zeros((4, 6), np.uint8); m[0, 0] = m[-1, -1] = 1; yield m
    m = np.zeros((6, 5), np.uint8); m[:, 0] = 1; yield m          # runs of length 1 on each row...
    m = np.zeros((6, 5), np.uint8); m[:, -1] = 1; m[:, 0] = 1; yield m  # ...and runs that wrap across rows
    m = np.zeros((6, 5), np.uint8); m[2] = 1; yield m
    yield (np.indices((7, 9)).sum(0) % 2).astype(np.uint8)        # checkerboard: every run has length 1
    yy, xx = np.mgrid[:20, :31]
    yield (((yy - 10) / 9) ** 2 + ((xx - 15) / 16) ** 2 < 1).astype(np.uint8)  # ellipse touching borders
    yield np.ones((1, 13), np.uint8)
    yield (np.arange(13) % 3 == 0).astype(np.uint8).reshape(13, 1)

def random_masks(n=300, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        shape = tuple(rng.integers(1, 12, size=2))
        yield (rng.random(shape) < rng.random()).astype(np.uint8)

@pytest.mark.parametrize('src', ['structured', 'random'])
def test_against_loop_reference(src):
    masks = list(structured_masks() if src == 'structured' else random_masks())
    for m in masks:
        ref = loop_encode(m)
        assert rle_encode(m) == ref, m
        np.testing.assert_array_equal(rle_decode(ref, m.shape), loop_decode(ref, m.shape))
        d = rle_decode(rle_encode(m), m.shape)
        assert d.dtype == np.uint8 and d.shape == m.shape
        np.testing.assert_array_equal(d, m)

def word_path_masks(n=40, seed=0):
    "16x1024 masks with few edges (so `rle_encode` takes its 8-pixels-at-a-time path): boxes, stripes, corners."
    rng = np.random.default_rng(seed)
    for i in range(n):
        m = np.zeros((16, 1024), np.uint8)
        r0, r1 = sorted(rng.integers(0, 16, 2)); c0, c1 = sorted(rng.integers(0, 1024, 2))
        m[r0:r1 + 1, c0:c1 + 1] = 1
        if i % 2: m[int(rng.integers(0, 16)), 96:192] = np.tile(rng.integers(0, 2, 8), 12)  # 12 equal words with edges
        if i % 3 == 0: m[0, 0] = m[-1, -1] = 1
        if i % 4 == 1: m = m[:, :int(rng.integers(1000, 1024))]                          # width not a multiple of 8
        yield m * (1 if i % 5 else 255)

def test_word_path_against_loop_reference():
    from carvana_fastai.rle import _edges, _pad_edges
    for m in word_path_masks():
        b = np.ascontiguousarray(m).reshape(-1)
        w = b[:len(b)//8*8].view(np.uint64)
        assert np.count_nonzero(w[1:] != w[:-1]) <= len(w) / 25                   # the word path, not the fallback
        assert rle_encode(m) == loop_encode(m), m
        np.testing.assert_array_equal(_edges(b), _pad_edges(b))
        np.testing.assert_array_equal(rle_decode(rle_encode(m), m.shape), (m != 0).astype(np.uint8))

def test_mask_dtypes_and_values():
    "bool, uint8 0/1, uint8 0/255, int64, float: nonzero is car, all give the same RLE."
    m = next(iter(random_masks(1, seed=3)))
    ref = rle_encode(m)
    assert ref == loop_encode(m)
    for v in [m.astype(bool), m * 255, m.astype(np.int64), m.astype(np.int32) * 7, m.astype(np.float32), torch.tensor(m)]:
        assert rle_encode(v) == ref

def test_full_size_round_trip_with_corners():
    rng = np.random.default_rng(1)
    m = (rng.random(CARVANA_SHAPE) < 0.3).astype(np.uint8)
    m[0, 0] = m[-1, -1] = 1
    s = rle_encode(m)
    assert s.split()[0] == '1'
    np.testing.assert_array_equal(rle_decode(s), m)
    np.testing.assert_array_equal(rle_decode('1 1 2455040 1').ravel()[[0, 1, -2, -1]], [1, 0, 0, 1])

def test_default_shape_is_carvana():
    assert CARVANA_SHAPE == (1280, 1918)
    assert rle_decode('').shape == (1280, 1918)
    assert rle_decode('1 1918').sum(1)[0] == 1918

@pytest.mark.parametrize('rle,msg', [
    ('1 2 5', 'odd count'),
    ('1 2 3', 'odd count'),
    ('1 2 a 2', "'a' is not an integer"),
    ('1 2 5 2.5', "'2.5' is not an integer"),
    ('1,2 5 2', "'1,2' is not an integer"),
    ('1 2 5 1_0', "'1_0' is not an integer"),
    ('1 0', 'length 0'),
    ('3 -1', 'length -1'),
    ('0 3', 'numbered from 1'),
    ('-2 3', 'numbered from 1'),
    ('1 4 3 2', 'overlapping'),
    ('1 2 2 2', 'overlapping'),
    ('6 1 1 2', 'unsorted'),
    ('19 3', 'past the end'),
    ('1 2 20 2', 'past the end'),
])
def test_bad_rle(rle, msg):
    with pytest.raises(ValueError, match=msg): rle_decode(rle, (4, 5))
    with pytest.raises(ValueError, match=msg): check_rle(rle, (4, 5))       # the same rules, without decoding

def test_bad_rle_type():
    with pytest.raises(ValueError, match='expected a string'): rle_decode(12, (4, 5))

def test_empty_variants():
    for e in ['', '   ', None, float('nan')]: assert rle_decode(e, (3, 4)).sum() == 0
    assert rle_encode(np.zeros((0, 4))) == ''

def loop_dice(p, t):
    p, t = np.asarray(p).ravel() != 0, np.asarray(t).ravel() != 0
    inter = sum(1 for a, b in zip(p, t) if a and b)
    tot = int(p.sum() + t.sum())
    return 1.0 if tot == 0 else 2 * inter / tot

def test_dice_numpy_and_torch_agree_with_loop():
    rng = np.random.default_rng(2)
    preds = (rng.random((6, 9, 11)) < [[[0.0]], [[0.3]], [[0.5]], [[0.9]], [[1.0]], [[0.0]]]).astype(np.uint8)
    targs = (rng.random((6, 9, 11)) < [[[0.0]], [[0.5]], [[0.5]], [[0.2]], [[1.0]], [[0.4]]]).astype(np.uint8)
    ref = np.array([loop_dice(p, t) for p, t in zip(preds, targs)])
    assert ref[0] == 1.0 and ref[4] == 1.0 and ref[5] == 0.0    # both empty; both full; empty pred
    np.testing.assert_allclose([dice(p, t) for p, t in zip(preds, targs)], ref)
    assert mean_dice(preds, targs) == pytest.approx(ref.mean())
    tb = dice_batch(torch.tensor(preds)[:, None], torch.tensor(targs))  # (B,1,H,W) vs (B,H,W)
    assert tb.shape == (6,)
    np.testing.assert_allclose(tb.numpy(), ref, rtol=1e-6)
    np.testing.assert_allclose(dice_batch(torch.tensor(preds).bool(), torch.tensor(targs) * 255).numpy(), ref, rtol=1e-6)

def test_kaggle_dice_as_fastai_metric():
    "Logits (B,1,H,W) vs TensorMask (B,H,W); AvgMetric over batches of unequal size gives the per-image mean."
    from fastai.torch_core import TensorMask, TensorBase
    from fastai.metrics import AvgMetric
    torch.manual_seed(0)
    logits = TensorBase(torch.randn(5, 1, 8, 10) * 3)
    targ = TensorMask((torch.rand(5, 8, 10) > 0.5).long())
    probs = torch.sigmoid(logits.as_subclass(torch.Tensor))
    ref = np.mean([loop_dice((probs[i, 0] > 0.5).numpy(), targ[i].numpy()) for i in range(5)])
    assert float(kaggle_dice(logits, targ)) == pytest.approx(ref, rel=1e-6)
    ref7 = np.mean([loop_dice((probs[i, 0] > 0.7).numpy(), targ[i].numpy()) for i in range(5)])
    assert float(kaggle_dice(logits, targ, threshold=0.7)) == pytest.approx(ref7, rel=1e-6)
    with pytest.warns(DeprecationWarning, match="'thresh' is renamed 'threshold'"):     # the old keyword, for a release
        assert float(kaggle_dice(logits, targ, thresh=0.7)) == pytest.approx(ref7, rel=1e-6)

    class FakeLearner: pass
    met = AvgMetric(kaggle_dice); met.reset()
    for sl in [slice(0, 3), slice(3, 5)]:
        l = FakeLearner(); l.to_detach = lambda x: x.detach(); l.pred, l.yb, l.y = logits[sl], (targ[sl],), targ[sl]
        met.accumulate(l)
    assert float(met.value) == pytest.approx(ref, rel=1e-6)
    assert met.name == 'kaggle_dice'

def test_dice_shape_errors():
    with pytest.raises(ValueError, match='shape'): dice(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match='shape'): dice_batch(torch.zeros(2, 3, 4), torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match='2 predictions but 1'): mean_dice([np.zeros(2)] * 2, [np.zeros(2)])
