"""Edge refinement (issue 15) on synthetic photos at full resolution: coarse maps made from the true masks degraded
as by a member at a third of the resolution (`refine.degrade`: averaged down to 1/3, blurred, shifted, edge noise,
bilinear upsampling), then the guided filter (`refine.guided_refine`) and a briefly trained learned refiner
(`refine.train_refiner` + `refine.refine`). Dice and boundary Dice (within 3 px of the true edge) on held-out cars;
the cost per photo of each refinement against the forward of a 448x672 efficientnet_lite0 lean U-Net (random weights,
one photo), timed side by side; the extra memory each takes. Targets (issue 15): refinement closes >= 1/3 of the
coarse gap to Dice 1; it costs <= 1/3 of the member's forward; its memory stays below the full-resolution maps.

    python bench/refine.py                          # 3 cars x 2 views to train, 2 cars x 2 views to evaluate, 1280x1918
    python bench/refine.py --size 640x960 --steps 200
"""
import sys, shutil, tempfile, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (base_parser, setup, machine_info, bench_alternating, paired_ratio, fmt_time, fmt_bytes, md_table,
                     verdict, append_results, extra_memory)

def main(argv=None):
    p = base_parser(__doc__.split('\n\n')[0], repeats=5, warmup=1)
    p.add_argument('--data', default=None, help='a Carvana-layout folder to use (default: synthetic, made in a temp folder)')
    p.add_argument('--size', default='1280x1918', help='photo size HxW of the synthetic set')
    p.add_argument('--train-cars', type=int, default=3)
    p.add_argument('--valid-cars', type=int, default=2)
    p.add_argument('--views', type=int, default=2)
    p.add_argument('--steps', type=int, default=300, help='refiner training steps')
    p.add_argument('--bs', type=int, default=16, help='refiner training batch (crops)')
    p.add_argument('--crop', type=int, default=64, help='refiner training crop size')
    p.add_argument('--channels', type=int, default=16, help='EdgeRefiner width')
    p.add_argument('--refiner', default=None, help='a refiner checkpoint: loaded if it exists, else trained and saved there')
    p.add_argument('--member', default='448x672', help='the coarse member size HxW (timing, and the coarse scale)')
    p.add_argument('--body', default='efficientnet_lite0')
    p.add_argument('--radius', type=int, default=8, help='guided filter radius')
    p.add_argument('--eps', type=float, default=1e-2, help='guided filter eps')
    args = p.parse_args(argv)
    dev = setup(args)
    import numpy as np, torch
    from carvana_fastai.synth import make_synthetic_carvana
    from carvana_fastai.data import data_items
    from carvana_fastai.refine import (_read_pairs, train_refiner, load_refiner, compare_refiners, degrade, guided_refine, refine, band)
    from carvana_fastai.unet import carvana_unet
    H, W = (int(v) for v in args.size.lower().split('x'))
    mh, mw = (int(v) for v in args.member.lower().split('x'))
    scale = mh / H
    info = machine_info(dev)
    tmp = Path(tempfile.mkdtemp(prefix='bench_refine_'))
    try:
        data = Path(args.data) if args.data else make_synthetic_carvana(
            tmp/'data', n_cars=args.train_cars + args.valid_cars, views=args.views, size=(H, W), n_test_cars=0, progress=False)
        items = data_items(data)
        cars = sorted(items.car_id.unique())
        pairs = _read_pairs(data)
        ids = list(items.car_id)
        train = [pr for pr, c in zip(pairs, ids) if c in cars[:args.train_cars]]
        valid = [pr for pr, c in zip(pairs, ids) if c in cars[args.train_cars:args.train_cars + args.valid_cars]]
        t0 = time.perf_counter()
        ck = Path(args.refiner) if args.refiner else tmp/'refiner.pth'
        if ck.exists(): ref = load_refiner(ck)
        else: ref = train_refiner(train, ck, size=args.crop, steps=args.steps, bs=args.bs, scale=scale, channels=args.channels, progress=False)
        import torch as _t; t_train = _t.load(ck, weights_only=True)['train']['secs']
        rows = compare_refiners(valid, ref, scale=scale, radius=args.radius, eps=args.eps)
        d0 = rows[0]['dice']
        for r in rows:
            r['gap closed'] = f"{(r['dice'] - d0)/(1 - d0):+.0%}" if r is not rows[0] else '-'
            r['dice'] = f"{r['dice']:.5f}"; r['boundary_dice'] = f"{r['boundary_dice']:.4f}"

        # cost per photo, side by side with the member's forward
        img, mask = valid[0]
        coarse = degrade(mask, scale, torch.Generator().manual_seed(5))
        b = band(coarse)
        model = carvana_unet(args.body, img_size=(mh, mw)).eval()
        x = torch.randn(1, 3, mh, mw)
        def fwd():
            with torch.inference_mode(): model(x)
        fns = {'unet': fwd, 'guided': lambda: guided_refine(img, coarse, args.radius, args.eps),
               'refiner': lambda: refine(img, coarse, ref), 'refiner_noflip': lambda: refine(img, coarse, ref, flip=False)}
        res = bench_alternating(fns, repeats=args.repeats, warmup=args.warmup)
        def in_place(fn):                              # memory of refining a map the predictor owns: in place, no copy
            c = coarse.clone(); return lambda: fn(c)
        mem = {'unet': extra_memory(fwd),
               'guided': extra_memory(in_place(lambda c: guided_refine(img, c, args.radius, args.eps, inplace=True))),
               'refiner': extra_memory(in_place(lambda c: refine(img, c, ref, inplace=True))),
               'refiner_noflip': extra_memory(in_place(lambda c: refine(img, c, ref, flip=False, inplace=True)))}
        names = {'unet': f'{args.body} lean U-Net forward at {mh}x{mw} (1 photo)', 'guided': f'guided filter r={args.radius} in the band',
                 'refiner': 'learned refiner in the band (flip-averaged, exact equivariance)', 'refiner_noflip': 'learned refiner in the band (no flip average)'}
        trows = []
        for k, t in res.items():
            ratio = paired_ratio(t, res['unet'])[0] if k != 'unet' else None
            trows.append({'step': names[k], 'time / photo': f"{fmt_time(t.median)} ± {fmt_time(t.iqr)}",
                          'x U-Net forward': f"{ratio:.2f}" if ratio is not None else '1',
                          '<= 1/3?': verdict(ratio <= 1/3) if ratio is not None else '-', 'extra peak memory': fmt_bytes(mem[k])})
        full_map = H*W*4
        ok_gap = float(rows[-1]['gap closed'].rstrip('%'))/100 >= 1/3
        body = '\n'.join([
            f"Synthetic photos at {H}x{W}: refiner trained on {len(train)} photos ({args.train_cars} cars x {args.views} views), "
            f"{args.steps} steps of {args.bs} crops of {args.crop} px (EdgeRefiner channels={args.channels}), in {t_train:.0f} s (as recorded in the refiner checkpoint); evaluated on {len(valid)} photos of "
            f"{args.valid_cars} other cars. Coarse maps: true masks degraded as by a member at {mh}x{mw} "
            f"(`refine.degrade`), so the refiner is trained and evaluated on the same kind of degradation (optimistic "
            f"compared with a real member's errors). Boundary Dice: Dice within 3 px of the true edge.", '',
            md_table(rows, ['method', 'dice', 'boundary_dice', 'gap closed']), '',
            f"Target: the learned refiner closes >= 1/3 of the coarse gap: {verdict(ok_gap)}.", '',
            f"Cost per photo on one photo ({b.float().mean():.1%} of its pixels in the band), times alternating "
            f"(median ± IQR of {args.repeats}); memory: peak bytes torch allocates during one call (profiler; refinement in place, `inplace=True`) (the full-resolution float map it "
            f"refines is {fmt_bytes(full_map)}).", '',
            md_table(trows)])
        append_results('Edge refinement: guided filter and learned refiner vs the coarse map', info, body, args)
    finally: shutil.rmtree(tmp, ignore_errors=True)

if __name__ == '__main__': main()
