"""Cut-outs end to end (decode -> members with TTA at the photo's aspect ratio -> soft alpha at full resolution -> edge
colour clean-up -> RGBA PNG written atomically) with `carvana_fastai.cutout.cutout_folder` on a folder of full-size
(1918x1280) synthetic JPEGs, against the model-forward floor: the same ensemble on the same photos already in memory at
the member's input size, TTA included. Target (issue 13): end-to-end photos/s >= 85% of the floor for a single
efficientnet_lite0 member at 448x672. Also the cost per megapixel of the soft alpha, of the edge clean-up
(`estimate_foreground`), of composing and of PNG encoding (cutout's own `_png`, and PIL's for comparison).

    python bench/cutout.py                        # CPU: 8 photos, lite0 @ 448x672, hflip TTA
    python bench/cutout.py --device cuda --n 64 --bs 8
"""
import sys, shutil, tempfile, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (base_parser, setup, sync, machine_info, bench_alternating, paired_ratio, fmt_time, md_table, verdict,
                     append_results)
from predict import build_ensemble, make_test_folder, load_batches, describe

def floor_fn(ens, batches, wait):
    "The model-forward floor: each member's model with TTA on inputs already resized to its size and normalised."
    import torch
    from contextlib import nullcontext
    with torch.inference_mode(): inputs = [[m.inputs(x) for m in ens.members] for x in batches]
    def f():
        with torch.inference_mode():
            for xs in inputs:
                for m, x in zip(ens.members, xs):
                    with (torch.autocast(x.device.type, dtype=m.amp) if m.amp else nullcontext()): m.tta(x)
        wait()
    return f

def e2e_fn(ens, folder, out, bs, **kw):
    from carvana_fastai.cutout import cutout_folder
    return lambda: cutout_folder(ens, folder, out, bs=bs, progress=False, **kw)

def stage_fns(ens, batch):
    "Per-photo stages on one in-memory photo: the ensemble's map, alpha, clean-up, compose, PNG encode."
    import io, torch
    import numpy as np
    from carvana_fastai.cutout import ensemble_probs, alpha_from_probs, estimate_foreground, composite, _png
    x = batch[:1]
    with torch.inference_mode(): out = ensemble_probs(ens, x)
    a = alpha_from_probs(out).cpu()[0]
    img = x[0].cpu()
    rgba = composite(img, a)
    arr = np.asarray(rgba)
    def pil_png():
        buf = io.BytesIO(); rgba.save(buf, format='PNG', compress_level=1)
    def probs():
        with torch.inference_mode(): ensemble_probs(ens, x)
    return {'members + combine at full resolution (a batch of 1)': probs, 'soft alpha (map -> uint8)': lambda: alpha_from_probs(out),
            'hard alpha (threshold)': lambda: alpha_from_probs(out, alpha='hard'),
            'edge clean-up (estimate_foreground)': lambda: estimate_foreground(img, a),
            'compose RGBA without clean-up': lambda: composite(img, a, decontaminate=False),
            'compose RGBA with clean-up': lambda: composite(img, a),
            "PNG encode (RGBA, cutout's `_png`: Up filter, deflate level 1)": lambda: _png(arr),
            'PNG encode (RGBA, PIL compress_level=1, for comparison)': pil_png}

def main(argv=None):
    p = base_parser(__doc__.split('\n\n')[0], repeats=3, warmup=1, device=True)
    p.add_argument('--n', type=int, default=8, help='full-size synthetic photos')
    p.add_argument('--bs', type=int, default=4)
    p.add_argument('--size', default='448x672', help='the member size HxW')
    p.add_argument('--body', default='efficientnet_lite0')
    p.add_argument('--tta', default='hflip')
    p.add_argument('--workers', type=int, default=None, help="DataLoader workers (default: cutout_folder's own)")
    args = p.parse_args(argv)
    dev = setup(args)
    wait = sync(dev)
    h, w = (int(v) for v in args.size.lower().split('x'))
    specs = [dict(name=args.body, body=args.body, fusion='concat', decoder='lean', size=(h, w))]
    info = machine_info(dev)
    tmp = Path(tempfile.mkdtemp(prefix='bench_cutout_'))
    try:
        folder = make_test_folder(tmp/'data', args.n, pool=args.n)
        ens = build_ensemble(specs, dev, False, args.tta)
        batches = load_batches(folder, args.bs, dev)
        fns = {'e2e': e2e_fn(ens, folder, tmp/'out', args.bs, workers=args.workers),
               'mask': e2e_fn(ens, folder, tmp/'mask', args.bs, workers=args.workers, mask_only=True),
               'floor': floor_fn(ens, batches, wait)}
        res = bench_alternating(fns, repeats=args.repeats, warmup=args.warmup, sync=wait)
        n = args.n
        def row(k, label, target):
            r, ri = paired_ratio(res['floor'], res[k])
            return {'pipeline': label, 'photos/s': f"{n/res[k].median:.2f}", 'per photo': fmt_time(res[k].median/n),
                    '% of floor': f"{100*r:.0f}% (IQR {100*ri:.0f})", 'target': '≥ 85% of floor' if target else '',
                    'met': verdict(r >= 0.85) if target else ''}
        rows = [row('e2e', f'cutout_folder: RGBA PNG, soft alpha + edge clean-up (bs {args.bs})', True),
                row('mask', f'cutout_folder: mask_only PNG (bs {args.bs})', False),
                {'pipeline': 'floor: member with TTA on in-memory inputs', 'photos/s': f"{n/res['floor'].median:.2f}",
                 'per photo': fmt_time(res['floor'].median/n), '% of floor': '100%', 'target': '', 'met': ''}]
        st = bench_alternating(stage_fns(ens, batches[0]), repeats=args.repeats, warmup=1, sync=wait)
        mp = 1280*1918/1e6
        srows = [{'stage (one 1918x1280 photo)': k, 'per photo': fmt_time(t.median), 'per megapixel': fmt_time(t.median/mp)}
                 for k, t in st.items()]
        body = (f"{dev}; {n} photos 1918x1280; ensemble: {describe(specs, args.tta)}; random weights; median of "
                f"{args.repeats} alternating rounds. End to end = `cutout_folder` (decode in a prefetch thread or workers, "
                f"members at the photo's aspect ratio, alpha at full resolution, clean-up + compose + PNG in a writer "
                f"thread, atomic writes). Floor = the member's model with TTA on the photos already decoded, resized and "
                f"normalised in memory.\n\n" + md_table(rows) + "\n\nCost per stage:\n\n" + md_table(srows))
        append_results('Cut-outs end to end vs model floor (bench/cutout.py)', info, body, args)
    finally: shutil.rmtree(tmp, ignore_errors=True)

if __name__ == '__main__': main()
