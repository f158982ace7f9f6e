"""Training step (forward + backward + optimizer) of our U-Net learner through fastai's loop (`learn.fit`) against a
bare PyTorch loop over the same model, the same in-memory batches and the same optimizer (torch Adam: fastai gets it
through `OptimWrapper`) -- fastai's overhead, target <= 5% (issue 7). In the same alternating rounds, the bare step of
each of our U-Nets against segmentation_models_pytorch's `Unet('resnet34', encoder_weights=None)`: step time and
parameters side by side (smp is installed for the benchmark only: `pip install segmentation-models-pytorch`).

    python bench/train_step.py                              # 320x480, batch 4, CPU
    python bench/train_step.py --device cuda --amp both     # on a GPU, mixed precision off and on
"""
import sys, time
from functools import partial
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (base_parser, setup, amp_modes, sync, machine_info, bench_alternating, paired_ratio, Timing,
                     fmt_time, md_table, verdict, append_results)
from carvana_fastai.core import amp_dtype

# The U-Nets of ours to time: name -> carvana_learner kwargs ('default' = the builder's defaults).
CONFIGS = {'default': {}, 'resnet34': dict(body='resnet34', fusion='concat')}

def parse_configs(s):
    "'default,resnet34' or 'body:fusion:decoder,...' -> {name: carvana_learner kwargs}."
    out = {}
    for c in s.split(','):
        c = c.strip()
        if not c: continue
        if c in CONFIGS: out[c] = CONFIGS[c]; continue
        body, fusion, decoder = (c.split(':') + [None, None])[:3]
        out[c] = {k: v for k, v in dict(body=body, fusion=fusion, decoder=decoder).items() if v}
    return out

# ------------------------------------------------------------------------------------------------- inputs
def make_batches(n, bs, size, device, seed=0):
    "`n` batches of (normalised-looking image, {0,1} mask) as fastai `TensorImage`/`TensorMask` on `device`."
    import torch
    from fastai.torch_core import TensorImage, TensorMask
    g = torch.Generator().manual_seed(seed)
    h, w = size
    out = []
    for _ in range(n):
        x = torch.randn(bs, 3, h, w, generator=g)
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing='ij')
        r = 0.5 + 0.3*torch.rand(bs, 1, 1, generator=g)
        y = ((yy/r*1.6)**2 + (xx/r)**2 < 1).long()                 # an ellipse per image: a car-sized blob
        out.append((TensorImage(x.to(device)), TensorMask(y.to(device))))
    return out

def fixed_dls(batches, device):
    "fastai `DataLoaders` that yield exactly `batches` (already collated, already on `device`), in order, no workers."
    from fastai.data.core import TfmdDL, DataLoaders
    def dl(bs): return TfmdDL(bs, bs=None, shuffle=False, num_workers=0)    # workers would fork for in-memory batches
    return DataLoaders(dl(batches), dl(batches[:1]), device=device)

def smp_unet(body='resnet34'):
    "segmentation_models_pytorch's `Unet` with random weights and one output channel (or None if smp is missing)."
    try:
        from unet_vs_smp import smp_unet as f                       # the U-Net helper's builder, if it has one
        return f(body)
    except (ImportError, AttributeError): pass
    try: import segmentation_models_pytorch as smp
    except ImportError: return None
    return smp.Unet(body, encoder_weights=None, classes=1)

def n_params(m): return sum(p.numel() for p in m.parameters())

# ------------------------------------------------------------------------------------------------ contenders
def step_timer(device):
    "A fastai callback that times the training phase of each `fit` (before_train -> after_train) and skips validation."
    from fastai.callback.core import Callback, CancelValidException
    wait = sync(device)
    class StepTimer(Callback):
        order = -100                                            # first in, so it brackets the other callbacks' work
        def __init__(self): self.times = []
        def before_train(self): wait(); self.t0 = time.perf_counter()
        def after_train(self): wait(); self.times.append(time.perf_counter() - self.t0)
        def before_validate(self): raise CancelValidException()
    return StepTimer()

def build_learner(cfg, batches, device, amp, channels_last=False):
    "Our learner on fixed batches, optimizer torch Adam through fastai's `OptimWrapper`, no progress bar or logging."
    import torch
    from fastai.optimizer import OptimWrapper
    from fastai.callback.fp16 import MixedPrecision
    from carvana_fastai.unet import carvana_learner
    learn = carvana_learner(fixed_dls(batches, device), pretrained=False, metrics=[],
                            opt_func=partial(OptimWrapper, opt=torch.optim.Adam), **cfg)
    learn.unfreeze()
    learn.create_opt()                                          # now, so that the bare loop can step the same Adam
    timer = step_timer(device)
    learn.add_cb(timer)
    if amp: learn.add_cb(MixedPrecision('bf16' if amp_dtype(device, True) == torch.bfloat16 else 'fp16'))
    learn.model.to(device)
    if channels_last: learn.model.to(memory_format=torch.channels_last)
    return learn, timer

def fit_fn(learn, lr=1e-3):
    "One `learn.fit(1)` over the fixed batches, quietly (as a user's script would run it)."
    def f():
        with learn.no_bar(), learn.no_logging(): learn.fit(1, lr=lr, wd=0.)
    return f

def bare_fn(model, loss_func, batches, device, amp, opt=None, lr=1e-3):
    """A plain PyTorch loop over `batches`: forward, loss, backward, Adam step, zero_grad (autocast + GradScaler if amp).
    `opt`: the torch optimizer to step (default: a new torch Adam)."""
    import torch
    opt = opt or torch.optim.Adam(model.parameters(), lr=lr)
    dtype = amp_dtype(device, bool(amp))                        # bf16 where supported, as training picks
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    plain = [(x.as_subclass(torch.Tensor), y.as_subclass(torch.Tensor)) for x, y in batches]
    def f():
        model.train()
        for x, y in plain:
            with torch.autocast(device.type, dtype=dtype, enabled=amp):
                pred = model(x)
            loss = loss_func(pred.float(), y)                       # as fastai's MixedPrecision: loss in fp32
            scaler.scale(loss).backward()
            scaler.step(opt); scaler.update()
            opt.zero_grad(set_to_none=True)
    return f

# ----------------------------------------------------------------------------------------------------- main
def main(argv=None):
    p = base_parser(__doc__.split('\n\n')[0], repeats=9, warmup=1, device=True)
    p.add_argument('--size', type=int, nargs=2, default=(320, 480), metavar=('H', 'W'))
    p.add_argument('--bs', type=int, default=4)
    p.add_argument('--batches', type=int, default=1,
                   help='batches per timed fit / bare loop (1: the contenders alternate every step, which keeps the '
                        'ratio steady on a loaded machine; fit\'s per-epoch work is then charged to that one batch)')
    p.add_argument('--configs', default='default,resnet34',
                   help="our U-Nets: names in CONFIGS or 'body:fusion:decoder', comma-separated")
    p.add_argument('--smp', default='resnet34', help="smp Unet encoder to compare with ('' for none)")
    p.add_argument('--channels-last', choices=['auto', 'on', 'off'], default='auto',
                   help="models and batches in channels_last memory format (auto: on, as training does on CPU and CUDA)")
    args = p.parse_args(argv)
    dev = setup(args)
    import torch
    from carvana_fastai.losses import get_loss
    info = machine_info(dev, extra_versions=('segmentation_models_pytorch',))
    cl = args.channels_last != 'off'                           # auto: on, as train_settings picks
    batches = make_batches(args.batches, args.bs, tuple(args.size), dev)
    if cl: batches = [(x.contiguous(memory_format=torch.channels_last), y) for x, y in batches]
    sections = []
    for amp in amp_modes(args):
        fns, timers, params, bodies = {}, {}, {}, {}
        for name, cfg in parse_configs(args.configs).items():
            learn, timer = build_learner(cfg, batches, dev, amp, cl)
            fns[f'fastai:{name}'] = fit_fn(learn)
            # the same torch Adam instance (inside fastai's OptimWrapper): a separate one, with its state elsewhere in
            # memory, ran 8% slower here for no reason of the loop's
            fns[f'bare:{name}'] = bare_fn(learn.model, learn.loss_func, batches, dev, amp, opt=learn.opt.opt)
            timers[name], params[name] = timer, n_params(learn.model)
            bodies[name] = getattr(learn.model, 'config', {}).get('body', cfg.get('body', '?'))
        smp_model = smp_unet(args.smp) if args.smp else None
        if smp_model is not None:
            smp_model.to(dev)
            if cl: smp_model.to(memory_format=torch.channels_last)
            fns['bare:smp'] = bare_fn(smp_model, get_loss('bce_dice'), batches, dev, amp)
            params['smp'] = n_params(smp_model)
        res = bench_alternating(fns, repeats=args.repeats, warmup=args.warmup, sync=sync(dev))
        k = args.batches
        rows = []
        for name, timer in timers.items():
            inner = Timing(f'fit-inner:{name}', timer.times[args.warmup:])   # training phase of the timed fits
            whole, bare = res[f'fastai:{name}'], res[f'bare:{name}']
            r, ri = paired_ratio(inner, bare)
            rw, _ = paired_ratio(whole, bare)
            row = {'U-Net': f'ours {name} ({bodies[name]})', 'params': f"{params[name]/1e6:.1f} M",
                   'bare step': fmt_time(bare.median/k), 'fastai step (in fit)': fmt_time(inner.median/k),
                   'fastai overhead': f"{100*(r-1):+.1f}% (IQR {100*ri:.1f})",
                   'whole fit() call': f"{100*(rw-1):+.1f}%", 'target': 'overhead ≤ 5%', 'met': verdict(r <= 1.05)}
            if 'bare:smp' in res:
                rs, rsi = paired_ratio(bare, res['bare:smp'])
                row['× smp step'] = f"{rs:.2f} (IQR {rsi:.2f})"
                row['× smp params'] = f"{params[name]/params['smp']:.2f}"
            rows.append(row)
        if 'bare:smp' in res:
            rows.append({'U-Net': f"smp Unet({args.smp}, encoder_weights=None)", 'params': f"{params['smp']/1e6:.1f} M",
                         'bare step': fmt_time(res['bare:smp'].median/k), 'fastai step (in fit)': '-',
                         'fastai overhead': '-', 'whole fit() call': '-', 'target': '', 'met': '',
                         '× smp step': '1.00', '× smp params': '1.00'})
        cols = ['U-Net', 'params', 'bare step', 'fastai step (in fit)', 'fastai overhead', 'whole fit() call',
                'target', 'met'] + (['× smp step', '× smp params'] if 'bare:smp' in res else [])
        mp = f"on ({str(amp_dtype(dev, True)).replace('torch.', '')})" if amp else 'off'
        sections.append(f"**mixed precision {mp}**, channels_last {'on' if cl else 'off'} ({dev}, {args.size[0]}x{args.size[1]}, "
                        f"batch {args.bs}, {k} batches per timed loop, median of {args.repeats} alternating rounds)\n\n"
                        + md_table(rows, cols))
        del fns, res
    body = ("Step = forward + backward + Adam step + zero_grad. 'fastai step (in fit)' is the training phase of "
            "`learn.fit(1)` (before_train to after_train, validation skipped) per batch; 'whole fit() call' adds "
            "fit's per-call setup. Bare = a plain PyTorch loop over the same model and batches, stepping the same "
            "torch Adam instance that fastai's `OptimWrapper` wraps (smp: its own torch Adam). "
            "Ratios are medians of per-round ratios.\n\n" + '\n\n'.join(sections))
    append_results('Training step: fastai loop vs bare PyTorch, ours vs smp (bench/train_step.py)', info, body, args)

if __name__ == '__main__': main()
