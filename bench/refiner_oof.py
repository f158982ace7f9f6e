"""Refiners on real cars, out of fold (issue 22): no refiner, the guided filter, and the learned refiner trained on
out-of-fold maps, side by side on the same maps, with Dice, BF1, BF3 and milliseconds per photo.

Nested by car, so no number comes from a photo that any model involved saw: each fold checkpoint (trained with
`folds: k`) maps the cars it held out (with `--tta`, at the photos' full resolution), which gives every photo of `--data`
one out-of-fold map. For fold i, an `EdgeRefiner` is trained on the maps of the other folds' cars (`train_refiner` with
`(photo, mask, map)` triples: half its crops from those maps, half from degraded true masks), then fold i's maps are
refined by each contender and scored. The table pools the folds.

    python bench/refiner_oof.py --oof runs/cars/models/cars/fold*/model.pth
"""
import sys, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, base_parser, setup, machine_info, md_table, append_results
from vs_rembg import scores

def oof_maps(ck, rows, tta, device):
    "[(photo uint8 (3,H,W), mask float (H,W), map float16 (H,W))] of the photos `rows` by the fold checkpoint `ck`."
    import torch
    from carvana_fastai.ensemble import load_ensemble
    from carvana_fastai.data import load_mask
    from carvana_fastai.images import read_image
    ens, out = load_ensemble([ck], tta=tta, refiner='none', device=device), []
    for _, r in rows.iterrows():
        img = read_image(r['img'])
        with torch.inference_mode(): p = ens(img[None].to(device), refine=False)[0, 0].cpu().half()
        out.append((img, torch.from_numpy(load_mask(r)).float(), p))
    return out

def train_triples(folds, but=None) -> list:
    "(photo, mask, map as uint8) of every photo of `folds` (lists of `oof_maps`) but those of fold `but`: what `train_refiner` takes."
    import torch
    return [(img, m, (p.float()*255).round().to(torch.uint8)) for j, f in enumerate(folds) if j != but for img, m, p in f]

def score_refiner(refiner, triples, threshold=0.5) -> tuple:
    "(rows of Dice/BF1/BF3 per photo, seconds spent refining) of `refiner` (None: none) on `triples`."
    import torch
    rows, secs = [], 0.
    if refiner is not None and triples:                            # one untimed call first (allocations, kernels' first run)
        with torch.inference_mode(): refiner(triples[0][0][None], triples[0][2].float()[None, None].clone(), threshold)
    for img, mask, p in triples:
        q = p.float()[None, None].clone()
        t0 = time.perf_counter()
        with torch.inference_mode():
            if refiner is not None: q = refiner(img[None], q, threshold)
        secs += time.perf_counter() - t0
        rows.append(scores((q[0, 0] > threshold).numpy(), mask.bool().numpy()))
    return rows, secs

def main(argv=None):
    p = base_parser(__doc__.split('\n\n')[0], timing=False)
    p.add_argument('--data', default=str(ROOT.parent/'shared'/'carvana-real'), help='real Carvana photos with masks')
    p.add_argument('--oof', nargs='+', required=True, help='the fold checkpoints of one model (models/<name>/fold*/model.pth)')
    p.add_argument('--tta', default='hflip', help="the members' TTA")
    p.add_argument('--steps', type=int, default=300, help="the learned refiner's training steps")
    p.add_argument('--size', type=int, default=64, help="its training crops' size")
    p.add_argument('--save', default=None, help="then train one refiner on every photo's out-of-fold map and save it here (the shipped model's refiner is made so)")
    p.add_argument('--limit', type=int, default=None, help='at most this many photos per fold (a quick check; the table needs all)')
    args = p.parse_args(argv)
    args.threads = args.threads or 2
    dev = setup(args)
    import pandas as pd
    from carvana_fastai.data import carvana_items
    from carvana_fastai.evaluate import held_out
    from carvana_fastai.refine import GuidedRefiner, LearnedRefiner, train_refiner
    info = machine_info(dev)
    items = carvana_items(args.data, 'train')
    t0 = time.time()
    folds = [oof_maps(ck, held_out(ck, items).iloc[:args.limit], args.tta, dev) for ck in args.oof]
    print(f"out-of-fold maps of {sum(map(len, folds))} photos: {time.time()-t0:.0f} s", flush=True)
    res, secs, train_s = {}, {}, []
    for i, test in enumerate(folds):
        t1 = time.time()
        learned = LearnedRefiner(train_refiner(train_triples(folds, but=i), size=args.size, steps=args.steps, progress=False))
        train_s.append(time.time() - t1)
        for name, r in {'none': None, 'guided filter': GuidedRefiner(), 'learned, trained out of fold': learned}.items():
            rows, s = score_refiner(r, test)
            res.setdefault(name, []).extend(rows); secs[name] = secs.get(name, 0.) + s
        print(f"fold {i}: {len(test)} photos, refiner trained in {train_s[-1]:.0f} s", flush=True)
    n = sum(map(len, folds))
    table = [{'refiner': k, 'Dice': f"{d.dice:.5f}", 'BF1': f"{d.bf1:.4f}", 'BF3': f"{d.bf3:.4f}",
              'ms / photo': f"{1e3*secs[k]/n:.0f}"} for k, d in ((k, pd.DataFrame(v).mean()) for k, v in res.items())]
    print(md_table(table))
    note = (f"{n} photos of {items.car_id.nunique()} real cars at 1918x1280, each mapped by the fold model that never saw its "
            f"car ({len(folds)} folds, TTA {args.tta}, threshold 0.5). The learned refiner of fold i was trained on the "
            f"out-of-fold maps of the other folds' cars ({args.steps} steps of {args.size}-px crops, "
            f"{sum(train_s)/len(train_s):.0f} s each); ms / photo: the refiner alone, at full resolution, {args.threads} threads.")
    if args.save:                                  # the same training on every fold's maps: the refiner for a model trained on every car
        train_refiner(train_triples(folds), args.save, size=args.size, steps=args.steps, progress=False)
        note += f" Then one refiner was trained on the maps of all {n} photos and saved to `{args.save}`."
    append_results('Refiners on real cars, out of fold (bench/refiner_oof.py)', info, md_table(table) + '\n\n' + note, args)

if __name__ == '__main__': main()
