"""RLE encode and decode of full-size 1280x1918 Carvana masks: `carvana_fastai.rle` against the standard Kaggle kernels
and against the memory-bound floor (one `np.count_nonzero` pass over the mask).

Targets (issue 7): faster than the Kaggle kernel, within 4x of the floor.
Before timing, `rle_encode` (which reads the mask 8 pixels at a time) is checked equal to `plain_encode` below (the
padded one-pixel-at-a-time encoder) on the benchmark masks and on random masks of many kinds.

    python bench/rle.py                    # 4 synthetic full-size masks
    python bench/rle.py --data PATH --n 16 # masks of a Carvana folder (train_masks/*.gif)
"""
import sys, shutil, tempfile
from pathlib import Path
import numpy as np
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (base_parser, setup, machine_info, bench_alternating, calibrate, paired_ratio, fmt_time, md_table,
                     verdict, append_results)
from carvana_fastai.rle import CARVANA_SHAPE, rle_encode, rle_decode

# ------------------------------------------------------------------------------------------- the Kaggle kernels
def kaggle_encode(mask):
    "The standard Kaggle kernel (as posted, it assumes the first and last pixels are background)."
    pixels = mask.flatten()
    pixels[0] = 0; pixels[-1] = 0
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 2
    runs[1::2] -= runs[::2]
    return ' '.join(str(x) for x in runs)

def kaggle_decode(mask_rle, shape=CARVANA_SHAPE):
    "The standard Kaggle decoding kernel (a Python loop over the runs)."
    s = mask_rle.split()
    starts, lengths = [np.asarray(x, dtype=int) for x in (s[0:][::2], s[1:][::2])]
    starts -= 1
    ends = starts + lengths
    img = np.zeros(shape[0]*shape[1], dtype=np.uint8)
    for lo, hi in zip(starts, ends): img[lo:hi] = 1
    return img.reshape(shape)

def floor(mask):
    "The memory-bound floor: one pass over the mask."
    return np.count_nonzero(mask)

# ------------------------------------------------------------------------------------ reference for exactness
def plain_encode(mask) -> str:
    "Kaggle RLE the plain way: pad the flat mask with background, find every change between neighbours."
    pad = np.zeros(np.size(mask) + 2, bool)
    pad[1:-1] = np.asarray(mask).ravel() != 0
    runs = np.flatnonzero(pad[1:] != pad[:-1]) + 1
    runs[1::2] -= runs[::2]
    return ' '.join(map(str, runs.tolist()))

def check_exact(n=3000, seed=0):
    "Compare `rle_encode` with `plain_encode` on `n` random small masks of many kinds; return the number checked."
    rng = np.random.default_rng(seed)
    pat = np.array([0, 1, 1, 0, 1, 0, 0, 1], np.uint8)
    for i in range(n):
        k = int(rng.integers(0, 200))
        kind = i % 8
        if kind == 0: m = rng.random(k) < rng.random()
        elif kind == 1: m = np.repeat(rng.random(k//9 + 1) < .5, 9)[:k]                      # runs of 9
        elif kind == 2: m = np.tile(pat, k//8 + 1)[:k] * int(rng.integers(1, 256))          # equal mixed words
        elif kind == 3: m = np.tile(pat, k//8 + 1)[:k]; m[k//2:] = 0
        elif kind == 4: m = rng.integers(0, 4, size=(k//7 + 1, 7)).astype(np.float32)       # 2-D, not uint8
        elif kind == 5: m = np.ones(k, bool)
        elif kind == 6: m = (rng.integers(0, 256, size=k) * (rng.random(k) < .6)).astype(np.uint8)[::-1]
        else:                                                                              # long, few edges: the word path
            m = np.zeros(40*k + 96 + int(rng.integers(0, 8)), np.uint8); a, b = sorted(rng.integers(0, len(m), 2))
            m[a:b] = 1; m[a//2:a//2 + 48] = np.tile(pat, 6)                                 # runs and repeated mixed words
        if rle_encode(m) != plain_encode(m): raise AssertionError(f"rle_encode differs from plain_encode on {m!r}")
    return n

# ------------------------------------------------------------------------------------------------- the masks
def load_masks(data=None, n=4, seed=0):
    "`n` full-size masks: from the GIFs of a Carvana folder `data`, or from the synthetic generator."
    from PIL import Image
    tmp = None
    if data is None:
        from carvana_fastai.synth import make_synthetic_carvana
        tmp = tempfile.mkdtemp(prefix='bench_rle_')
        data = make_synthetic_carvana(tmp, n_cars=-(-n // 16), views=min(n, 16), size=CARVANA_SHAPE, seed=seed,
                                      n_test_cars=0, progress=False)
    fns = sorted(Path(data, 'train_masks').glob('*_mask.gif'))[:n]
    if not fns: raise FileNotFoundError(f"{data}/train_masks: no *_mask.gif files")
    masks = [(np.asarray(Image.open(f)) > 0).astype(np.uint8) for f in fns]
    if tmp is not None: shutil.rmtree(tmp, ignore_errors=True)
    for f, m in zip(fns, masks):
        if m.shape != CARVANA_SHAPE: raise ValueError(f"{f}: mask is {m.shape}, expected {CARVANA_SHAPE}")
    return masks, str(data)

# ----------------------------------------------------------------------------------------------------- main
def main(argv=None):
    p = base_parser(__doc__.split('\n\n')[0], repeats=21, warmup=2)
    p.add_argument('--n', type=int, default=4, help='number of masks')
    p.add_argument('--data', default=None, help='a Carvana folder to read train_masks/*.gif from (default: synthetic)')
    p.add_argument('--min-time', type=float, default=0.02, help='seconds per measurement (calls are repeated to reach it)')
    args = p.parse_args(argv)
    setup(args)
    info = machine_info()
    masks, src = load_masks(args.data, args.n)
    rles = [rle_encode(m) for m in masks]
    nruns = np.mean([len(r.split())//2 for r in rles])

    # correctness first: every contender gives the same answer on these masks
    assert all(kaggle_encode(m) == r for m, r in zip(masks, rles)), "Kaggle kernel disagrees (mask touches a corner?)"
    assert all(plain_encode(m) == r for m, r in zip(masks, rles)), "rle_encode disagrees with plain_encode"
    assert all((rle_decode(r) == m).all() and (kaggle_decode(r) == m).all() for m, r in zip(masks, rles)), "decode mismatch"
    nchecked = check_exact()

    def over(f, xs): return lambda: [f(x) for x in xs]
    enc = dict(ours=over(rle_encode, masks), kaggle=over(kaggle_encode, masks), floor=over(floor, masks))
    dec = dict(ours=over(rle_decode, rles), kaggle=over(kaggle_decode, rles), floor=over(floor, masks))
    rows = []
    for op, fns in (('encode', enc), ('decode', dec)):
        num = {k: calibrate(f, args.min_time) for k, f in fns.items()}
        res = bench_alternating(fns, repeats=args.repeats, warmup=args.warmup, number=num)
        for k, t in res.items():
            rk, rki = paired_ratio(t, res['kaggle'])
            rf, rfi = paired_ratio(t, res['floor'])
            row = {'op': op, 'implementation': {'ours': 'carvana_fastai.rle', 'kaggle': 'Kaggle kernel',
                   'floor': 'floor: np.count_nonzero'}[k],
                   'per mask (median)': fmt_time(t.median/len(masks)), 'IQR': fmt_time(t.iqr/len(masks)),
                   'masks/s': f"{len(masks)/t.median:,.0f}",
                   '× Kaggle': f"{rk:.2f} (IQR {rki:.2f})", '× floor': f"{rf:.2f} (IQR {rfi:.2f})",
                   'target': '', 'met': ''}
            if k == 'ours':
                row['target'] = '× Kaggle < 1; × floor ≤ 4'
                row['met'] = f"{verdict(rk < 1)} / {verdict(rf <= 4)}"
            rows.append(row)
    body = (f"{len(masks)} masks of 1280x1918 ({'synthetic' if args.data is None else src}), {nruns:.0f} runs per mask "
            f"on average; median of {args.repeats} alternating rounds, ratios = median of per-round ratios. "
            f"All contenders checked equal on these masks; `rle_encode` equal to the plain padded encoder also on {nchecked} random masks.\n\n"
            + md_table(rows))
    append_results('RLE encode/decode (bench/rle.py)', info, body, args)

if __name__ == '__main__': main()
