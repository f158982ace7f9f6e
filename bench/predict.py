"""Prediction end to end (JPEG decode -> resize -> models with TTA -> upsample to 1280x1918 -> threshold -> RLE -> CSV)
with `carvana_fastai.submission.predict_folder` on a folder of full-size synthetic JPEGs, against the model-forward floor:
the same ensemble on the same images already in memory at each member's input size, TTA included. Target (issue 7):
end-to-end images/s >= 85% of the floor, with DataLoader workers. Also a per-stage breakdown, and `--extrapolate N`:
time N images end to end and extrapolate to the 100,064 images of the Kaggle test set (target <= 30 min on one H100).

Models are random-weight U-Nets built like the configs' members (speed does not depend on the weights):
`--models default` is the ensemble of `carvana_fastai/configs/default.yaml` (the CPU demo, each member at the size of
its last training stage); `paper:2` the first two members of `paper.yaml` (ResNet-34 U-Nets at 1280x1918); or a list
`body:fusion:decoder@HxW,...`.

    python bench/predict.py                                   # CPU: 16 images, the default ensemble, hflip TTA
    python bench/predict.py --device cuda --amp both --n 256 --bs 8
    python bench/predict.py --device cuda --extrapolate 2000  # paper:2 ensemble + hflip, extrapolated to 100,064
"""
import os, sys, math, shutil, tempfile, time
import numpy as np
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (ROOT, base_parser, setup, amp_modes, sync, machine_info, bench_alternating, paired_ratio, Timing,
                     fmt_time, md_table, verdict, append_results)

N_TEST = 100_064                                   # images in the Kaggle Carvana test set

# ------------------------------------------------------------------------------------------------- the models
def config_models(name='default', k=None):
    "Members of `configs/{name}.yaml` (with the config's model defaults): name, body, fusion, decoder, size (last stage's)."
    import yaml
    fn = ROOT/'carvana_fastai'/'configs'/f'{name}.yaml'
    if not fn.is_file(): raise FileNotFoundError(f"{fn}: no such config")
    cfg = yaml.safe_load(fn.read_text())
    out = []
    for m in cfg['models'][:k]:
        size = m['plan'][-1]['size'] if m.get('plan') else (1280, 1918)
        out.append(dict(name=m.get('name', m.get('body')), body=m.get('body', 'efficientnet_lite0'),
                        fusion=m.get('fusion', 'concat'), decoder=m.get('decoder', 'lean'), size=tuple(size)))
    return out

def parse_models(s):
    "'default', 'paper:2' (a config's first members) or 'body:fusion:decoder@HxW,...' -> list of member specs."
    head = s.split(':')[0]
    if (ROOT/'carvana_fastai'/'configs'/f'{head}.yaml').is_file() and '@' not in s:
        k = s.split(':')[1] if ':' in s else None
        return config_models(head, int(k) if k else None)
    out = []
    for item in s.split(','):
        arch, _, size = item.partition('@')
        body, fusion, decoder = (arch.split(':') + [None, None])[:3]
        hw = tuple(int(v) for v in size.lower().split('x')) if size else (320, 480)
        out.append(dict(name=item, body=body, fusion=fusion or 'concat', decoder=decoder or None, size=hw))
    return out

def checkpoint_specs(paths):
    "Specs (name, body, fusion, decoder, size, checkpoint) of trained members' checkpoints (`--checkpoints`)."
    from carvana_fastai.checkpoint import read_checkpoint
    out = []
    for f in paths:
        ck = read_checkpoint(f)
        c = ck['config']
        out.append(dict(name=Path(f).parent.name, body=c['body'], fusion=c.get('fusion'), decoder=c.get('decoder'),
                        size=tuple(ck['size']), checkpoint=str(f)))
    return out

def build_ensemble(specs, device, amp=False, tta='hflip', seed=0):
    "An `ensemble.Ensemble` of random-weight U-Nets built from `specs` (or their trained `checkpoint`s), prepared on `device` (autocast if `amp`)."
    import torch
    from carvana_fastai.unet import carvana_unet
    from carvana_fastai.bodies import body_stats
    from carvana_fastai.ensemble import load_ensemble
    mp = amp if device.type == 'cuda' else False
    if all(s.get('checkpoint') for s in specs):
        return load_ensemble([s['checkpoint'] for s in specs], tta=tta, device=device, mixed_precision=mp)
    members = []
    for i, s in enumerate(specs):
        torch.manual_seed(seed + i)
        kw = {k: s[k] for k in ('fusion', 'decoder') if s.get(k)}
        model = carvana_unet(body=s['body'], img_size=s['size'], pretrained=False, **kw)
        stats = [list(map(float, v)) for v in body_stats(s['body'])]
        members.append((model, dict(stats=stats, size=s['size'], name=s['name'])))
    return load_ensemble(members, tta=tta, device=device, mixed_precision=mp)

def describe(specs, tta):
    return ', '.join(f"{s['body']} {s['fusion']} {s.get('decoder') or 'default'} @ {s['size'][0]}x{s['size'][1]}"
                     for s in specs) + f"; TTA {tta}"

# ------------------------------------------------------------------------------------------------- the images
def make_test_folder(path, n, pool=16, seed=0):
    "A folder of `n` full-size synthetic Carvana JPEGs: `pool` distinct ones generated, the rest hard links to them."
    from carvana_fastai.synth import make_synthetic_carvana
    path = Path(path); dst = path/'test'
    if dst.is_dir() and len(list(dst.glob('*.jpg'))) == n: return dst
    k = min(n, pool); views = min(16, k)
    syn = make_synthetic_carvana(path/'synth', n_cars=1, views=views, n_test_cars=math.ceil(k/views), seed=seed,
                                 progress=False, overwrite=True)
    src = sorted((syn/'test').glob('*.jpg'))[:k]
    if dst.exists(): shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for i in range(n):
        f = dst/f'{i//16:012x}_{i%16+1:02d}.jpg'
        try: os.link(src[i % k], f)
        except OSError: shutil.copyfile(src[i % k], f)
    return dst

def load_batches(folder, bs, device, limit=None):
    "The folder's images decoded to uint8 (B,3,H,W) batches on `device` (for the in-memory contenders)."
    import torch
    from carvana_fastai.images import ImageFiles, list_images
    files = [Path(folder)/n for n in list_images(folder)][:limit]
    ds = ImageFiles(files)
    imgs = [ds[i][1] for i in range(len(ds))]
    return [torch.stack(imgs[i:i+bs]).contiguous(memory_format=torch.channels_last).to(device) for i in range(0, len(imgs), bs)]

# ------------------------------------------------------------------------------------------------ contenders
def e2e_fn(ens, folder, out, bs, workers, band=True):
    "One `predict_folder` run over the folder (CSV written afresh each time); returns its summary. `band=False`: masks by the full upsample."
    from carvana_fastai.submission import predict_folder
    def f():
        ens.band = band
        try: return predict_folder(ens, folder, out, bs=bs, workers=workers, progress=False, resume=False)
        finally: ens.band = True
    return f

def _amp_ctx(m):
    import torch
    from contextlib import nullcontext
    return torch.autocast(m.mean.device.type, dtype=m.amp) if m.amp else nullcontext()

def floor_fn(ens, batches, wait):
    "The model-forward floor: each member's model with TTA on inputs already at its size and normalised."
    import torch
    with torch.inference_mode(): inputs = [[m.inputs(x) for m in ens.members] for x in batches]
    def f():
        with torch.inference_mode():
            for xs in inputs:
                for m, x in zip(ens.members, xs):
                    with _amp_ctx(m): m.tta(x)
        wait()
    return f

def stage_fns(ens, batches, wait):
    "In-memory stages of prediction, for the breakdown: decode is timed separately."
    import torch
    from carvana_fastai.rle import rle_encode
    with torch.inference_mode(): masks = [ens.masks(x).cpu().numpy() for x in batches]
    def inputs():
        with torch.inference_mode():
            for x in batches:
                for m in ens.members: m.inputs(x)
        wait()
    def full():
        with torch.inference_mode():
            for x in batches: ens.masks(x)
        wait()
    def rle():
        for mb in masks:
            for m in mb: rle_encode(m)
    return dict(inputs=inputs, full=full, rle=rle)

def carlike_fns(ens, synth, n, bs, wait):
    """Masks at 1280x1918 of car-like maps (the true masks of `synth`'s train photos, antialiased down to each member's size,
    as a well-trained member predicts them): the full upsample + threshold vs the band; checks they are equal."""
    import torch
    from PIL import Image
    from carvana_fastai.ensemble import _resize, probs_to_mask
    files = sorted((Path(synth)/'train_masks').glob('*_mask.gif'))[:n]
    ys = torch.stack([torch.from_numpy((np.asarray(Image.open(f)) > 0).astype(np.float32)) for f in files])[:, None]
    size = tuple(ys.shape[-2:])
    qss = [[_resize(ys[i:i+bs], m.size) for m in ens.members] for i in range(0, len(ys), bs)]
    with torch.inference_mode():
        for qs in qss: assert torch.equal(next(ens.combine_masks(qs, size)), probs_to_mask(ens.combine(qs, size), threshold=ens.threshold)[:, 0])
    def full():
        with torch.inference_mode():
            for qs in qss: probs_to_mask(ens.combine(qs, size), threshold=ens.threshold)
        wait()
    def band():
        with torch.inference_mode():
            for qs in qss: next(ens.combine_masks(qs, size))
        wait()
    return dict(carlike_full=full, carlike_band=band), len(ys)

def decode_fn(folder, limit):
    from carvana_fastai.images import ImageFiles, list_images
    ds = ImageFiles([Path(folder)/n for n in list_images(folder)][:limit])
    return lambda: [ds[i] for i in range(len(ds))]

def check_output(out, ens, batches, folder, tol=1e-5):
    "The CSV has a row per image, and its first row decodes to the ensemble's in-memory mask of the first image."
    import csv, torch
    from carvana_fastai.images import list_images
    from carvana_fastai.rle import rle_decode
    csv.field_size_limit(1 << 30)                               # a random model's mask is noisy: RLE rows of MBs
    rows = list(csv.reader(open(out)))
    names = list_images(folder)
    if len(rows) != len(names) + 1: raise AssertionError(f"{out}: {len(rows)-1} rows for {len(names)} images")
    with torch.inference_mode(): m = ens.masks(batches[0]).cpu().numpy()[0]       # the same batch predict_folder saw
    diff = (rle_decode(rows[1][1], m.shape) != m).mean()
    # random-weight models put many pixels within float rounding of the threshold, where another batch shape may flip them
    if diff > tol: raise AssertionError(f"{out}: first row differs from the in-memory prediction at {diff:.2e} of the pixels")

# ----------------------------------------------------------------------------------------------------- main
def run_compare(args, dev, amp, specs, folder, tmp):
    "End to end vs floor (alternating) and the stage breakdown for one precision setting: a markdown section."
    import torch
    wait = sync(dev)
    ens = build_ensemble(specs, dev, amp, args.tta)
    n = args.n
    batches = load_batches(folder, args.bs, dev)
    out = tmp/f'sub_{int(amp)}.csv'
    workers = args.workers
    from carvana_fastai.core import default_workers
    nw = default_workers(dev) if workers is None else workers
    fns = {'e2e': e2e_fn(ens, folder, out, args.bs, nw)}
    alt = 0 if nw else 1                                         # the other choice of workers, for comparison
    if not args.no_serial: fns['alt'] = e2e_fn(ens, folder, tmp/f'sub_alt_{int(amp)}.csv', args.bs, alt)
    fns['noband'] = e2e_fn(ens, folder, tmp/f'sub_noband_{int(amp)}.csv', args.bs, nw, band=False)
    fl = fns['floor'] = floor_fn(ens, batches, wait)
    res = bench_alternating(fns, repeats=args.repeats, warmup=args.warmup, sync=wait)
    check_output(out, ens, batches, folder)
    if open(out).read() != open(tmp/f'sub_noband_{int(amp)}.csv').read():
        raise AssertionError("the band's masks differ from the full upsample's")   # the same CSV, byte for byte
    def row(k, label, target):
        r, ri = paired_ratio(res['floor'], res[k])             # (floor time)/(e2e time) = e2e images/s / floor images/s
        return {'pipeline': label, 'images/s': f"{n/res[k].median:.2f}", 'per image': fmt_time(res[k].median/n),
                '% of floor': f"{100*r:.0f}% (IQR {100*ri:.0f})", 'target': '≥ 85% of floor' if target else '',
                'met': verdict(r >= 0.85) if target else ''}
    wk = lambda k: f"{k} worker{'s' if k != 1 else ''}"
    rows = [row('e2e', f"predict_folder end to end ({wk(nw)}{' (its default)' if workers is None else ''}, bs {args.bs})", True)]
    if 'alt' in fns: rows.append(row('alt', f"predict_folder end to end ({wk(alt)}, bs {args.bs})", False))
    rows.append(row('noband', f"predict_folder end to end ({wk(nw)}, bs {args.bs}), masks by the full upsample (`ens.band = False`)", False))
    rows.append({'pipeline': 'floor: members with TTA on in-memory inputs', 'images/s': f"{n/res['floor'].median:.2f}",
                 'per image': fmt_time(res['floor'].median/n), '% of floor': '100%', 'target': '', 'met': ''})
    # breakdown, per image, alternating the stages
    st = stage_fns(ens, batches, wait)
    st['decode'] = decode_fn(folder, n); st['floor'] = fl
    cl, n_cl = carlike_fns(ens, Path(folder).parent/'synth', n, args.bs, wait)
    st.update(cl)
    br = bench_alternating(st, repeats=max(3, args.repeats // 2), warmup=1, sync=wait)
    upsample = br['full'].median - br['inputs'].median - br['floor'].median
    e2e_t = res['e2e'].median
    brk = [('JPEG decode (1 thread)', br['decode'].median), ('resize + normalise to each member size', br['inputs'].median),
           ('models with TTA (the floor)', br['floor'].median),
           ('combine per member size, masks at 1280x1918 (band where exact and narrow, else full upsample)', upsample), ('RLE encode', br['rle'].median)]
    brows = [{'stage (in memory, sequential)': k, 'per image': fmt_time(v/n), 'share of e2e time': f"{100*v/e2e_t:.0f}%"}
             for k, v in brk]
    brows.append({'stage (in memory, sequential)': 'sum of stages / end to end', 'per image': fmt_time(sum(v for _, v in brk)/n),
                  'share of e2e time': f"{100*sum(v for _, v in brk)/e2e_t:.0f}%"})
    cf, cb = br['carlike_full'].median/n_cl, br['carlike_band'].median/n_cl
    brows.append({'stage (in memory, sequential)': f"aside: masks of car-like maps (true masks at the members' sizes, {n_cl} photos): "
                  f"full upsample {fmt_time(cf)} vs band {fmt_time(cb)} ({cf/cb:.1f}x)", 'per image': fmt_time(cb),
                  'share of e2e time': f"{100*cb*n/e2e_t:.0f}%"})
    mp = 'off' if not amp else f"on ({str(ens.members[0].amp).replace('torch.', '')})"
    return (f"**mixed precision {mp}** ({dev}; {n} images 1918x1280; ensemble: {describe(specs, args.tta)}; "
            f"median of {args.repeats} alternating rounds)\n\n" + md_table(rows) + "\n\nWhere the time goes:\n\n" + md_table(brows))

def run_extrapolate(args, dev, amp, specs, folder, tmp):
    "Time `predict_folder` over N images once (after a warm-up) and extrapolate to the 100,064 test images."
    ens = build_ensemble(specs, dev, amp, args.tta)
    warm = make_test_folder(tmp/'warm', max(args.bs*2, 4))
    from carvana_fastai.submission import predict_folder
    predict_folder(ens, warm, tmp/'warm.csv', bs=args.bs, workers=args.workers, progress=False)
    s = predict_folder(ens, folder, tmp/'extra.csv', bs=args.bs, workers=args.workers, progress=False)
    ips = s['predicted'] / s['seconds']
    total = N_TEST / ips
    mp = 'off' if not amp else f"on ({str(ens.members[0].amp).replace('torch.', '')})"
    gpu = dev.type == 'cuda'
    row = {'images timed': s['predicted'], 'bs': args.bs, 'mixed precision': mp, 'images/s': f"{ips:.2f}",
           'extrapolated to 100,064': f"{total/60:.1f} min", 'target': '≤ 30 min on one H100',
           'met': verdict(total <= 1800) if gpu else 'n/a (CPU)'}
    return f"**Extrapolation** ({dev}; ensemble: {describe(specs, args.tta)})\n\n" + md_table([row])

def main(argv=None):
    p = base_parser(__doc__.split('\n\n')[0], repeats=5, warmup=1, device=True)
    p.add_argument('--n', type=int, default=16, help='full-size synthetic test images')
    p.add_argument('--bs', type=int, default=4)
    p.add_argument('--workers', type=int, default=None, help="DataLoader workers (default: predict_folder's own)")
    p.add_argument('--models', default=None, help="'default', 'paper:2' or 'body:fusion:decoder@HxW,...' "
                   "(default: 'default', or 'paper:2' with --extrapolate)")
    p.add_argument('--checkpoints', nargs='+', default=None, metavar='CKPT',
                   help='trained members (model.pth files) instead of random-weight ones: maps like a real ensemble\'s, so the band is narrow')
    p.add_argument('--tta', default='hflip', help='TTA preset of carvana_fastai.ensemble (none, hflip, flips, ...)')
    p.add_argument('--extrapolate', type=int, default=0, metavar='N',
                   help='time N images end to end and extrapolate to 100,064 (instead of the comparison)')
    p.add_argument('--no-serial', action='store_true', help='skip the extra end-to-end run with the other choice of workers (0 or 1)')
    p.add_argument('--pool', type=int, default=32, help='distinct synthetic images generated (the rest are links)')
    p.add_argument('--keep', default=None, help='folder to keep the images in (reused when it has the right count)')
    args = p.parse_args(argv)
    dev = setup(args)
    specs = checkpoint_specs(args.checkpoints) if args.checkpoints else parse_models(args.models or ('paper:2' if args.extrapolate else 'default'))
    info = machine_info(dev)
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix='bench_predict_'))
    n = args.extrapolate or args.n
    t0 = time.time()
    folder = make_test_folder(tmp/'data', n, pool=args.pool)
    print(f"{n} test images in {folder} ({time.time()-t0:.0f} s)", flush=True)
    sections = []
    for amp in amp_modes(args):
        if args.extrapolate: sections.append(run_extrapolate(args, dev, amp, specs, folder, tmp))
        else: sections.append(run_compare(args, dev, amp, specs, folder, tmp))
    body = ((f"Trained members ({', '.join(s['checkpoint'] for s in specs)}). " if args.checkpoints else
             "Random-weight U-Nets (speed does not depend on the weights, the band of uncertain pixels does). ") + "End to end = `predict_folder` (JPEG decode "
            "and resize in DataLoader workers or in the main process, members with TTA, weighted mean (members of one size summed at that size, "
            "each size upsampled once to 1280x1918, only in the band near the edge where that is exact and the band is narrow: `ensemble.band_masks`), threshold, RLE in a thread, CSV). Floor = the same members with TTA on the same images already decoded, "
            "resized and normalised in memory. '% of floor' = e2e images/s over floor images/s (median of per-round "
            "ratios).\n\n" + '\n\n'.join(sections))
    title = 'Prediction: extrapolation to the test set' if args.extrapolate else 'Prediction end to end vs model floor'
    append_results(f'{title} (bench/predict.py)', info, body, args)
    if not args.keep: shutil.rmtree(tmp, ignore_errors=True)

if __name__ == '__main__': main()
