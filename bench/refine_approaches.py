"""Edge refinement (issue 15), three approaches side by side on a REALLY trained coarse member (not on degraded true
masks): a synthetic Carvana set at full resolution; an efficientnet_lite0 lean concat U-Net trained with progressive
resizing up to 448x672 (the coarse member, its probabilities upsampled bilinearly to the photo); then on held-out cars
(split by car id, the member's own validation cars):

1. the guided filter in the uncertain band (`refine.guided_refine`);
2. the learned refiner (`refine.train_refiner` on the training photos, its default degraded coarse inputs, + `refine.refine`);
3. the member's last decoder block(s) and head fine-tuned on random full-resolution crops (encoder and the other blocks
   frozen, BN in eval mode), then the whole photo predicted at full resolution in one forward; plus the untuned member
   simply run at full resolution (what the change of resolution alone does).

Dice, boundary Dice (within 3 px of the true edge) and boundary F-score (`evaluate.boundary_f`, 1 and 3 px) at full
resolution; the cost per photo of each approach timed side by side (alternating) against the member's forward at its
own size; the training time of each approach.

    python bench/refine_approaches.py                                   # 8 cars x 3 views, 2 held-out cars, 1280x1918
    python bench/refine_approaches.py --size 320x480 --member-size 112x168 --plan-sizes 56x84,112x168   # a quick test
    python bench/refine_approaches.py --member /tmp/ra/models/coarse/model.pth --data /tmp/ra/data      # reuse both
"""
import sys, copy, json, shutil, tempfile, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (base_parser, setup, machine_info, bench_alternating, paired_ratio, fmt_time, fmt_bytes, md_table,
                     append_results, peak_rss, extra_memory)

def _hw(s): return tuple(int(v) for v in s.lower().split('x'))

def train_coarse(data, items, out, args):
    "Train the coarse member with the library's workflow (`train_member`, progressive plan); its checkpoint path and seconds."
    from carvana_fastai.config import MODEL_DEFAULTS, progressive_plan
    from carvana_fastai.workflow import train_member
    sizes = [_hw(s) for s in args.plan_sizes.split(',')]
    epochs = [int(e) for e in args.epochs.split(',')] if ',' in args.epochs else int(args.epochs)
    plan = progressive_plan(sizes, epochs=epochs, lr=args.lr, bs=args.bs)
    m = {**MODEL_DEFAULTS, 'name': 'coarse', 'body': args.body, 'plan': plan, 'seed': 0}
    t0 = time.time()
    train_member(m, data, out, valid_pct=args.valid_cars/args.cars, split_seed=42, device='cpu', items=items)
    return Path(out)/'coarse'/'model.pth', time.time() - t0, plan

def edge_crops(samples, bs, S, gen, edge_frac=0.5):
    "`bs` random `S`x`S` crops of full-resolution (photo uint8 (3,H,W), mask (H,W), edge points): half centred near an edge."
    import torch
    xs, ts = [], []
    r = lambda n: torch.randint(n, (), generator=gen).item()
    for k in range(bs):
        img, mask, pts = samples[r(len(samples))]
        H, W = mask.shape
        if k < bs*edge_frac and len(pts):
            y, x = pts[r(len(pts))].tolist()
            y0, x0 = y - S//2 + r(S//2) - S//4, x - S//2 + r(S//2) - S//4
        else: y0, x0 = r(max(1, H - S + 1)), r(max(1, W - S + 1))
        y0, x0 = min(max(0, y0), max(0, H - S)), min(max(0, x0), max(0, W - S))
        xc, tc = img[:, y0:y0 + S, x0:x0 + S], mask[None, y0:y0 + S, x0:x0 + S]
        if r(2): xc, tc = xc.flip(-1), tc.flip(-1)
        xs.append(xc); ts.append(tc)
    return torch.stack(xs), torch.stack(ts).float()

def finetune_full_res(ckpt, samples, mean, std, args, n_blocks):
    "A fresh copy of the member with only its last `tune_blocks` decoder blocks and head trained on full-resolution crops."
    import torch, torch.nn.functional as F
    from carvana_fastai.checkpoint import load_checkpoint
    t0 = time.time()
    torch.manual_seed(0); gen = torch.Generator().manual_seed(0)
    model, _ = load_checkpoint(ckpt, device='cpu')
    model.eval()                                          # BN keeps the member's running statistics throughout
    for p in model.parameters(): p.requires_grad_(False)
    blocks = [n for n in model.decoder._modules if n.startswith('block')][-n_blocks:] if n_blocks else []
    tuned = [getattr(model.decoder, n) for n in blocks] + [model.head]
    params = [p for m in tuned for p in m.parameters()]
    for p in params: p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=args.ft_lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.ft_lr, total_steps=args.ft_steps, pct_start=.2)
    log = []
    for s in range(args.ft_steps):
        x, t = edge_crops(samples, args.ft_bs, args.ft_crop, gen)
        lg = model((x.float() - mean)/std).float()
        pr = lg.sigmoid().flatten(1); tf = t.flatten(1)
        dice = (2*(pr*tf).sum(1) + 1)/(pr.sum(1) + tf.sum(1) + 1)
        loss = F.binary_cross_entropy_with_logits(lg, t) + (1 - dice).mean()
        opt.zero_grad(); loss.backward(); opt.step(); sched.step()
        log.append(loss.item())
        if (s + 1) % max(1, args.ft_steps//5) == 0:
            print(f"full-res fine-tune step {s+1}/{args.ft_steps}: loss {sum(log[-20:])/len(log[-20:]):.4f} [{time.time()-t0:.0f} s]", flush=True)
    for p in model.parameters(): p.requires_grad_(False)
    return model.eval(), time.time() - t0, blocks, sum(p.numel() for p in params)

def main(argv=None):
    p = base_parser(__doc__.split('\n\n')[0], repeats=5, warmup=1)
    p.add_argument('--data', default=None, help='a synthetic Carvana folder to reuse (default: made in a temp folder)')
    p.add_argument('--work', default=None, help='folder for the data and the member (kept); default: a temp folder, removed')
    p.add_argument('--size', default='1280x1918', help='photo size HxW of the synthetic set')
    p.add_argument('--cars', type=int, default=8, help='cars in the synthetic set')
    p.add_argument('--valid-cars', type=int, default=2, help='held-out cars (the member\'s validation cars, split by car id)')
    p.add_argument('--views', type=int, default=3)
    p.add_argument('--member', default=None, help='the coarse member checkpoint: loaded if it exists, else trained and copied there')
    p.add_argument('--member-size', default='448x672', help="the coarse member's size HxW (the last stage of --plan-sizes)")
    p.add_argument('--plan-sizes', default='112x168,224x336,448x672', help='progressive resizing stages of the member')
    p.add_argument('--epochs', default='3,3,3', help='epochs per stage (one number or one per stage)')
    p.add_argument('--bs', type=int, default=4, help="the member's training batch")
    p.add_argument('--lr', type=float, default=2e-3, help="the member's learning rate")
    p.add_argument('--body', default='efficientnet_lite0')
    p.add_argument('--refiner-steps', type=int, default=300, help='learned refiner training steps (16 crops of 64 px)')
    p.add_argument('--ft-steps', type=int, default=120, help='full-resolution fine-tuning steps')
    p.add_argument('--ft-bs', type=int, default=4, help='full-resolution fine-tuning batch (crops)')
    p.add_argument('--ft-crop', type=int, default=384, help='full-resolution fine-tuning crop size')
    p.add_argument('--ft-lr', type=float, default=1e-3)
    p.add_argument('--tune-blocks', default='2', help='decoder blocks (the last ones) fine-tuned, with the head; a comma list runs one fine-tune each')
    p.add_argument('--radius', type=int, default=8, help='guided filter radius')
    p.add_argument('--eps', type=float, default=1e-2, help='guided filter eps')
    args = p.parse_args(argv)
    dev = setup(args)
    import numpy as np, torch
    from carvana_fastai.synth import make_synthetic_carvana
    from carvana_fastai.data import carvana_items, car_splitter, load_mask
    from carvana_fastai.images import read_image
    from carvana_fastai.ensemble import load_ensemble
    from carvana_fastai.evaluate import boundary_f
    from carvana_fastai.refine import (train_refiner, guided_refine, refine, mask_dice, boundary_dice, band, _edge_points, _edge_zone)
    H, W = _hw(args.size); mh, mw = _hw(args.member_size)
    if _hw(args.plan_sizes.split(',')[-1]) != (mh, mw): sys.exit('--member-size must be the last of --plan-sizes')
    info = machine_info(dev)
    tmp = Path(tempfile.mkdtemp(prefix='bench_refap_')) if args.work is None else Path(args.work)
    times = {}
    try:
        t0 = time.time()
        data = Path(args.data) if args.data else make_synthetic_carvana(
            tmp/'data', n_cars=args.cars, views=args.views, size=(H, W), n_test_cars=0, progress=False)
        times['synth'] = time.time() - t0
        items = carvana_items(data, 'train')
        tr_idx, va_idx = car_splitter(args.valid_cars/args.cars, 42)(items)
        tr_items, va_items = items.iloc[tr_idx], items.iloc[va_idx]
        n_cars = items.car_id.nunique()
        print(f"data {data}: {len(items)} photos of {n_cars} cars at {H}x{W}; train {len(tr_items)} photos "
              f"({tr_items.car_id.nunique()} cars), valid {len(va_items)} ({va_items.car_id.nunique()} cars)", flush=True)

        # ---- the coarse member
        member_note = None
        if args.member and Path(args.member).is_file():
            ckpt = Path(args.member)
            tj = ckpt.parent/'train.json'
            meta = json.loads(tj.read_text()) if tj.is_file() else {}
            t_member = meta.get('train_s'); plan_desc = meta.get('scales', '?'); epochs_desc = meta.get('epochs', '?')
            member_note = f"loaded from {ckpt} (trained before; training time as recorded in its train.json: fit time only)"
        else:
            ckpt, t_member, plan = train_coarse(data, items, tmp/'models', args)
            plan_desc = ' -> '.join('x'.join(map(str, s['size'])) for s in plan); epochs_desc = sum(s['epochs'] for s in plan)
            if args.member:
                Path(args.member).parent.mkdir(parents=True, exist_ok=True)
                for f in ckpt.parent.iterdir():
                    if f.is_file(): shutil.copy(f, Path(args.member).parent/(Path(args.member).name if f.name == 'model.pth' else f.name))
        ens = load_ensemble([ckpt], tta='none', device='cpu')
        mem = ens.members[0]
        if tuple(mem.size) != (mh, mw): sys.exit(f"the member's size is {mem.size}, not --member-size {mh}x{mw}")
        mean, std = mem.mean, mem.std

        # ---- photos at full resolution
        load = lambda rows: [(read_image(r['img']), torch.from_numpy(load_mask(r)).float()) for _, r in rows.iterrows()]
        train_pairs, valid_pairs = load(tr_items), load(va_items)

        # ---- (2) the learned refiner, on the training photos (its default degraded coarse inputs)
        t0 = time.time()
        ref = train_refiner(train_pairs, steps=args.refiner_steps, scale=mh/H, progress=False)
        times['refiner'] = time.time() - t0
        t0 = time.time()                                     # (2b) the same, also on the member's own maps of the training photos
        ref_own = train_refiner(train_pairs, steps=args.refiner_steps, scale=mh/H, ensemble=ens, progress=False)
        times['refiner_own'] = time.time() - t0

        # ---- (3) the member's last stage fine-tuned at full resolution
        samples = [(img, m, _edge_points(m)) for img, m in train_pairs]
        tuned = {}
        for nb in [int(v) for v in args.tune_blocks.split(',') if v]:
            tuned[nb] = finetune_full_res(ckpt, samples, mean, std, args, nb)   # (model, seconds, block names, n params)
            times[f'finetune{nb}'] = tuned[nb][1]

        # ---- evaluation at full resolution on the held-out cars
        untuned = mem.model
        def full(model, x): return model((x.float() - mean)/std).float().sigmoid()
        names = ['coarse', 'guided', 'refiner', 'refiner_own', 'full_untuned', *[f'full_tuned{nb}' for nb in tuned]]
        scores, band_frac = {k: [] for k in names}, []
        t0 = time.time()
        with torch.inference_mode():
            for img, mask in valid_pairs:
                x = img[None]
                c = ens(x)[0, 0]
                maps = {'coarse': c, 'guided': guided_refine(img, c, args.radius, args.eps),
                        'refiner': refine(img, c, ref, flip=False), 'refiner_own': refine(img, c, ref_own, flip=False),
                        'full_untuned': full(untuned, x)[0, 0],
                        **{f'full_tuned{nb}': full(t[0], x)[0, 0] for nb, t in tuned.items()}}
                band_frac.append(band(c).float().mean().item())
                far = ~_edge_zone(mask[None, None], 3)[0, 0]         # pixels more than 3 px from the true edge
                for k, q in maps.items():
                    pr = q > .5
                    bf = boundary_f(pr[None], mask[None] > 0, tols=(1, 3))[0].tolist()
                    fp, fn = (pr & (mask == 0) & far).sum().item(), (~pr & (mask > 0) & far).sum().item()
                    scores[k].append((mask_dice(pr, mask), boundary_dice(pr, mask, 3), *bf, fp, fn))
        times['eval'] = time.time() - t0
        mean_s = {k: np.mean(v, 0) for k, v in scores.items()}

        # ---- cost per photo, side by side (one photo)
        img = valid_pairs[0][0]; x = img[None]
        with torch.inference_mode():
            fns = {'fwd': lambda: mem.prob(x, tta=False),
                   'coarse': lambda: ens(x),
                   'guided': lambda: guided_refine(img, ens(x)[0, 0], args.radius, args.eps, inplace=True),
                   'refiner': lambda: refine(img, ens(x)[0, 0], ref, flip=False, inplace=True),
                   'full': lambda: full(untuned, x)}
            t0 = time.time()
            res = bench_alternating(fns, repeats=args.repeats, warmup=args.warmup)
            times['timing'] = time.time() - t0
            memb = {'fwd': extra_memory(fns['fwd']), 'full': extra_memory(fns['full'])}
            band_timed = band(ens(x)[0, 0]).float().mean().item()

        gap0 = 1 - mean_s['coarse'][0]
        labels = {'coarse': f'coarse: member at {mh}x{mw}, probabilities upsampled bilinearly (`ens(x)`)',
                  'guided': f'(1) guided filter r={args.radius} in the band, on the coarse map',
                  'refiner': '(2) learned refiner in the band, trained on degraded true masks only, on the coarse map',
                  'refiner_own': "(2b) learned refiner in the band, trained on degraded true masks and the member's own maps (`ensemble=`), on the coarse map",
                  'full_untuned': f'member run at full resolution {H}x{W}, no fine-tune (resolution alone)',
                  **{f'full_tuned{nb}': f'(3) member, last {len(t[2])} decoder block(s) ({"+".join(t[2])}) + head fine-tuned on {args.ft_crop} px crops, full-resolution forward' for nb, t in tuned.items()}}
        tkey = {'coarse': 'coarse', 'guided': 'guided', 'refiner': 'refiner', 'refiner_own': 'refiner', 'full_untuned': 'full', **{f'full_tuned{nb}': 'full' for nb in tuned}}
        train_s = {'coarse': t_member, 'guided': 0., 'refiner': times['refiner'], 'refiner_own': times['refiner_own'], 'full_untuned': 0., **{f'full_tuned{nb}': t[1] for nb, t in tuned.items()}}
        rows = []
        for k in names:
            d, bd, bf1, bf3, fp, fn = mean_s[k]
            t = res[tkey[k]]
            ratio = paired_ratio(t, res['fwd'])[0]
            ts = train_s[k]
            rows.append({'approach': labels[k], 'Dice': f'{d:.5f}', 'boundary Dice (3 px)': f'{bd:.4f}',
                         'BF (1 px)': f'{bf1:.4f}', 'BF (3 px)': f'{bf3:.4f}',
                         'wrong px > 3 px from edge (FP / FN)': f'{fp:.0f} / {fn:.0f}',
                         'gap to Dice 1 closed': '-' if k == 'coarse' else f'{(d - mean_s["coarse"][0])/gap0:+.0%}',
                         'ms / photo': f'{t.median*1e3:.0f} ± {t.iqr*1e3:.0f}', 'x coarse forward': f'{ratio:.2f}',
                         'training s': '-' if ts is None else ('0' if ts == 0 else (f'+{ts:.0f}' if k != 'coarse' else f'{ts:.0f}'))})
        table = md_table(rows)
        synth_t = 'reused (--data)' if args.data else f"{times['synth']:.0f} s"
        print(table, flush=True)
        fr = res['fwd']
        body = '\n'.join([
            f"Synthetic set at {H}x{W} (`make_synthetic_carvana(n_cars={n_cars}, views={args.views}, size=({H}, {W}), n_test_cars=0)`), "
            f"split by car id with the member's own splitter (`car_splitter({args.valid_cars/args.cars:g}, 42)`): "
            f"{len(tr_items)} training photos ({tr_items.car_id.nunique()} cars), {len(va_items)} held-out photos "
            f"({va_items.car_id.nunique()} car{'s' if va_items.car_id.nunique() > 1 else ''}) evaluated at full resolution. Coarse member: {args.body} lean concat U-Net, "
            f"ImageNet-pretrained body, progressive resizing {plan_desc} ({epochs_desc} epochs in all, bs {args.bs}, lr {args.lr:g}, "
            f"bce_dice, `workflow.train_member`), " + (member_note + '.' if member_note else f"trained in {t_member:.0f} s.") +
            f" Learned refiner: `train_refiner` on the {len(train_pairs)} training photos, {args.refiner_steps} steps of 16 crops of "
            f"64 px, its default degraded true masks as coarse inputs (scale {mh/H:.3f}); (2b) the same with the member's own maps of the training photos added (`train_refiner(..., ensemble=)`); both run once per tile (`flip=False`, the library's default). Full-resolution fine-tune (3): "
            f"for each row (3) a fresh copy of the member, everything frozen except the named decoder blocks and the head "
            f"({', '.join(f'{t[3]/1e3:.0f} k parameters' for t in tuned.values())} trained; BN in eval mode throughout), {args.ft_steps} AdamW one-cycle steps (lr {args.ft_lr:g}) of "
            f"{args.ft_bs} random {args.ft_crop}x{args.ft_crop} crops of the full-resolution training photos (half centred "
            f"near the true edge, random hflip), BCE + soft Dice; then the whole {H}x{W} photo in one forward (no tiles: "
            f"peak extra memory of that forward {fmt_bytes(memb['full'])} vs {fmt_bytes(memb['fwd'])} at {mh}x{mw}). "
            f"The lean decoder's last block is at stride 2, so even the full-resolution forward ends with a 2x bilinear upsample.", '',
            f"Scores: means over the {len(va_items)} held-out photos, masks at threshold 0.5; boundary Dice: Dice within 3 px "
            f"of the true edge (`refine.boundary_dice`); BF: boundary F-score (`evaluate.boundary_f`) at 1 and 3 px; gap "
            f"closed: of the coarse map's gap to Dice 1; wrong px > 3 px from edge: mean per photo of the false "
            f"positives / false negatives farther than 3 px from the true edge. Cost: time per photo of the whole approach on one {H}x{W} photo "
            f"(member forward + upsampling + refinement; the full-resolution rows are the same forward, timed once with the untuned weights), "
            f"alternating, median ± IQR of {args.repeats}; ratio: median of the per-round ratios to the member's forward "
            f"at {mh}x{mw} alone (`Member.prob`, {fmt_time(fr.median)} ± {fmt_time(fr.iqr)}). The band the guided filter "
            f"and the refiner work in (`refine.band`: |p - 0.5| < 0.45, dilated 3 px) covers {np.mean(band_frac):.1%} of the "
            f"pixels of the member's coarse maps (mean over the held-out photos; {band_timed:.1%} on the timed photo), "
            f"so their cost here is that of this member's band. Training s: the coarse "
            f"member's training, and what each approach adds on top of it.", '',
            table, '',
            f"Wall time: synthetic data {synth_t}, refiner training {times['refiner']:.0f} s (with the member's maps {times['refiner_own']:.0f} s), full-resolution "
            f"fine-tune {', '.join(f'{t[1]:.0f} s ({nb} blocks)' for nb, t in tuned.items())}, evaluation {times['eval']:.0f} s, timing {times['timing']:.0f} s; "
            f"peak RSS {fmt_bytes(peak_rss())}.",
        ])
        body += '\n\n' + verdict_text(mean_s, res, len(va_items))
        append_results('Edge refinement: three approaches on a trained member', info, body, args)
    finally:
        if args.work is None: shutil.rmtree(tmp, ignore_errors=True)

def verdict_text(s, res, n):
    "One factual sentence on what the measurements show (ordering by Dice and boundary Dice; costs)."
    names = {'coarse': 'coarse', 'guided': 'guided filter', 'refiner': 'learned refiner', 'refiner_own': "learned refiner with the member's maps",
             'full_untuned': 'untuned member at full resolution',
             **{k: f'member with its last {k[10:]} decoder blocks fine-tuned, at full resolution' for k in s if k.startswith('full_tuned')}}
    by_d = sorted(s, key=lambda k: -s[k][0]); by_b = sorted(s, key=lambda k: -s[k][1])
    r = lambda k: paired_ratio(res[k], res['fwd'])[0]
    return (f"What it shows (on this synthetic set, {n} held-out photos, one trained member: a small sample): "
            f"by Dice {' > '.join(names[k] for k in by_d)}; by boundary Dice {' > '.join(names[k] for k in by_b)}. "
            f"Cost per photo relative to the member's own forward: guided filter path {r('guided'):.2f}x, refiner path "
            f"{r('refiner'):.2f}x, full-resolution forward {r('full'):.2f}x.")

if __name__ == '__main__': main()
