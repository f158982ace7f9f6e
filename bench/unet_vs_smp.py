"""Our U-Net (`carvana_unet`: the `lean` preset, optionally `classic`) against segmentation_models_pytorch's `Unet` on
the same body: the train step (forward + backward + Adam step) at 320x480, batch 4, and the prediction forward at
1280x1918, batch 1 -- timed side by side in one process, alternating, median of several rounds (issue 8: lean <= 1.1x
smp on both). smp is installed for the benchmark only: `pip install segmentation-models-pytorch`.

    OMP_NUM_THREADS=2 python bench/unet_vs_smp.py --threads 2                     # CPU, resnet34 and efficientnet_lite0
    python bench/unet_vs_smp.py --decoders lean,classic --no-predict              # classic too (slow: skip 1280x1918)
    python bench/unet_vs_smp.py --device cuda --amp both                          # GPU, fp32 and mixed precision
"""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (base_parser, setup, amp_modes, sync, machine_info, bench_alternating, paired_ratio, fmt_time,
                     md_table, verdict, append_results)

# our body name -> smp encoder with the same architecture ('tu-' = timm's model through smp's TimmUniversalEncoder)
SMP_NAMES = {'efficientnet_lite0': 'tu-efficientnet_lite0', 'efficientnet_lite1': 'tu-efficientnet_lite1',
             'efficientnet_lite2': 'tu-efficientnet_lite2', 'timm/resnet34': 'tu-resnet34'}
TARGET = 1.1

def smp_name(body):
    "The smp encoder name for our body `body`: smp's own where it has one (resnet34, vgg11...), else timm's via 'tu-'."
    import segmentation_models_pytorch as smp
    if body in SMP_NAMES: return SMP_NAMES[body]
    return body if body in smp.encoders.get_encoder_names() else f'tu-{body}'

def smp_unet(body='resnet34'):
    "segmentation_models_pytorch's `Unet` on the encoder matching our `body`, random weights, one output channel."
    import segmentation_models_pytorch as smp
    return smp.Unet(smp_name(body), encoder_weights=None, classes=1)

def ours(body, decoder='lean', fusion='concat', size=(320, 480)):
    "Our U-Net on `body` with preset `decoder` (random weights)."
    from carvana_fastai.unet import carvana_unet
    return carvana_unet(body, img_size=size, fusion=fusion, decoder=decoder, pretrained=False)

def n_params(m): return sum(p.numel() for p in m.parameters())

def train_fn(model, x, y, amp_dtype=None):
    "One training step: forward, BCE-with-logits, backward, Adam step, zero_grad (autocast if `amp_dtype`)."
    import torch, torch.nn.functional as F
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(x.device.type, enabled=amp_dtype == torch.float16)
    def f():
        model.train()
        with torch.autocast(x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = model(x).as_subclass(torch.Tensor)
        loss = F.binary_cross_entropy_with_logits(out.float(), y)
        scaler.scale(loss).backward(); scaler.step(opt); scaler.update()
        opt.zero_grad(set_to_none=True)
    return f

def predict_fn(model, x, amp_dtype=None):
    "One prediction forward (eval mode, inference mode, autocast if `amp_dtype`)."
    import torch
    def f():
        model.eval()
        with torch.inference_mode(), torch.autocast(x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            model(x)
    return f

def _dtype(amp):
    import torch
    if not amp: return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

def compare(fns, args, dev):
    "Time `fns` (name -> f) alternating; return name -> Timing."
    return bench_alternating(fns, repeats=args.repeats, warmup=args.warmup, sync=sync(dev))

def main(argv=None):
    p = base_parser(__doc__.split('\n\n')[0], repeats=5, warmup=1, device=True)
    p.add_argument('--bodies', default='resnet34,efficientnet_lite0', help='our body names, comma-separated')
    p.add_argument('--decoders', default='lean', help="our presets to time (comma-separated): lean, classic")
    p.add_argument('--fusion', default='concat', choices=['concat', 'add'])
    p.add_argument('--size', type=int, nargs=2, default=(320, 480), metavar=('H', 'W'), help='train step input size')
    p.add_argument('--bs', type=int, default=4, help='train step batch size')
    p.add_argument('--pred-size', type=int, nargs=2, default=(1280, 1918), metavar=('H', 'W'))
    p.add_argument('--pred-bs', type=int, default=1)
    p.add_argument('--no-predict', action='store_true', help='skip the prediction forward')
    p.add_argument('--channels-last', choices=['auto', 'on', 'off'], default='auto', help='auto: on, as training does')
    args = p.parse_args(argv)
    dev = setup(args)
    import torch, gc
    info = machine_info(dev, extra_versions=('segmentation_models_pytorch',))
    cl = args.channels_last != 'off'                           # auto: on, as train_settings picks
    fmt = torch.channels_last if cl else torch.contiguous_format
    decoders = [d for d in args.decoders.split(',') if d]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.bs, 3, *args.size, generator=g).to(dev, memory_format=fmt)
    y = (torch.rand(args.bs, 1, *args.size, generator=g) > 0.5).float().to(dev)
    xp = torch.randn(args.pred_bs, 3, *args.pred_size, generator=g).to(dev, memory_format=fmt)
    sections = []
    for amp in amp_modes(args):
        dt, rows = _dtype(amp), []
        for body in args.bodies.split(','):
            models = {f'smp Unet({smp_name(body)})': smp_unet(body)}
            for d in decoders: models[f'ours {d} ({args.fusion})'] = ours(body, d, args.fusion, tuple(args.size))
            for m in models.values(): m.to(dev, memory_format=fmt)
            ref = next(iter(models))
            tr = compare({k: train_fn(m, x, y, dt) for k, m in models.items()}, args, dev)
            pr = None if args.no_predict else compare({k: predict_fn(m, xp, dt) for k, m in models.items()}, args, dev)
            for k, m in models.items():
                rt, rti = paired_ratio(tr[k], tr[ref])
                row = {'body': body, 'U-Net': k, 'params': f"{n_params(m)/1e6:.2f} M",
                       '× smp params': f"{n_params(m)/n_params(models[ref]):.2f}",
                       'train step': f"{fmt_time(tr[k].median)} ± {fmt_time(tr[k].iqr)}",
                       '× smp train': f"{rt:.2f} (IQR {rti:.2f})"}
                ok = rt <= TARGET
                if pr is not None:
                    rp, rpi = paired_ratio(pr[k], pr[ref])
                    row.update({'predict fwd': f"{fmt_time(pr[k].median)} ± {fmt_time(pr[k].iqr)}",
                                '× smp predict': f"{rp:.2f} (IQR {rpi:.2f})"})
                    ok = ok and rp <= TARGET
                lean = k.startswith('ours lean')
                row.update({'target': f'≤ {TARGET}x smp' if lean else '', 'met': verdict(ok) if lean else ''})
                rows.append(row)
            del models, tr, pr; gc.collect()
        mp = f"on ({str(dt).replace('torch.', '')})" if amp else 'off'
        pred = '' if args.no_predict else f"; predict forward {args.pred_size[0]}x{args.pred_size[1]}, batch {args.pred_bs}"
        sections.append(f"**mixed precision {mp}**, channels_last {'on' if cl else 'off'} ({dev}; train step "
                        f"{args.size[0]}x{args.size[1]}, batch {args.bs}{pred}; median ± IQR of {args.repeats} alternating rounds)\n\n"
                        + md_table(rows))
    body = ("Train step = forward + BCE-with-logits + backward + Adam step + zero_grad, plain PyTorch, same input for "
            "every model. Ratios are medians of the per-round ratios to smp's `Unet` on the same encoder "
            "(`encoder_weights=None`, default decoder (256, 128, 64, 32, 16)); the target is issue 8's.\n\n"
            + '\n\n'.join(sections))
    append_results('Our U-Net vs segmentation_models_pytorch (bench/unet_vs_smp.py)', info, body, args)

if __name__ == '__main__': main()
