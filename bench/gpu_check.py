"""The GPU check of issue 16, run by bench/gpu_check.sh: `python bench/gpu_check.py OUT [--cpu-smoke]`.

Steps (each timed, its result in OUT/summary.json and OUT/summary.md): (1) train a 2-stage plan on synthetic data with
bf16 + channels_last (loss falls, no NaN/inf, the checkpoints load on the CPU); (2) the paper config's model at 1280x1918
for a few steps (peak memory); (3) predict full-resolution photos with TTA on the device and on the CPU from the same
checkpoint (Dice > 0.999); (3b) the same with the guided and the learned refiner, and the refinement's time; (4) ONNX export parity (onnxruntime on CUDA when it has it); (5) bench/predict.py
--device cuda --extrapolate 2000. `--cpu-smoke`: a tiny version of (1), (3), (4) on the CPU, to test the script here.
"""
import json, math, os, subprocess, sys, time, traceback, warnings
from pathlib import Path
warnings.filterwarnings('ignore')
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

def main(out, smoke=False):
    import numpy as np, torch
    out = Path(out); out.mkdir(parents=True, exist_ok=True)
    dev = 'cpu' if smoke else 'cuda'
    if not smoke and not torch.cuda.is_available(): sys.exit("gpu_check: no CUDA device (use --cpu-smoke on a CPU)")
    res, t_all = {}, time.time()
    size, big = ((32, 48), (48, 64)) if smoke else ((256, 384), (512, 768))

    def step(name, f):
        t0 = time.time()
        try: r = dict(ok=True, **(f() or {}))
        except Exception as e: r = dict(ok=False, error=f"{type(e).__name__}: {e}", trace=traceback.format_exc()[-3000:])
        r['seconds'] = round(time.time() - t0, 1); res[name] = r
        print(f"gpu_check {name}: {'OK' if r['ok'] else 'FAILED ' + r['error'][:300]} [{r['seconds']} s]", flush=True)
        (out/'summary.json').write_text(json.dumps(res, indent=1, default=str))

    from carvana_fastai.synth import make_synthetic_carvana
    data = make_synthetic_carvana(out/'data', n_cars=4 if smoke else 12, views=4, size=(64, 96) if smoke else (640, 960),
                                  seed=0, n_test_cars=1, progress=False, overwrite=True)
    ck = out/'model'/'model.pth'

    def train():
        from carvana_fastai.data import carvana_dls
        from carvana_fastai.unet import carvana_learner
        from carvana_fastai.train import train_progressive
        from carvana_fastai.checkpoint import load_checkpoint
        plan = [dict(size=size, epochs=2, lr=3e-3, bs=4), dict(size=big, epochs=1, lr=1e-3, bs=4)]
        dls = carvana_dls(data, size, bs=4, workers=0, device=dev)
        learn = carvana_learner(dls, body='efficientnet_lite0', decoder='lean', pretrained=False)
        h = train_progressive(learn, plan, data, out/'model', seed=0, progress=False, device=dev,
                              mixed_precision='bf16' if dev == 'cuda' else False, channels_last=True)
        losses = [float(v) for v in h['train_loss']]
        assert all(math.isfinite(v) for v in losses + [float(v) for v in h['valid_loss']]), f"NaN/inf in {losses}"
        assert losses[-1] < losses[0], f"train loss did not fall: {losses}"
        load_checkpoint(ck, device='cpu')
        return dict(train_loss=losses, valid_loss=[float(v) for v in h['valid_loss']], dice=[float(v) for v in h.get('dice', [])])
    step('train', train)

    def paper_memory():
        from carvana_fastai.unet import carvana_unet
        torch.cuda.reset_peak_memory_stats()
        m = carvana_unet(body='resnet34', img_size=(1280, 1918), pretrained=False, decoder='lean').cuda().to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(m.parameters(), 1e-4)
        x, y = torch.randn(2, 3, 1280, 1918, device='cuda').to(memory_format=torch.channels_last), torch.rand(2, 1, 1280, 1918, device='cuda').round()
        t0 = time.time()
        for _ in range(4):
            with torch.autocast('cuda', torch.bfloat16): loss = torch.nn.functional.binary_cross_entropy_with_logits(m(x).float(), y)
            opt.zero_grad(); loss.backward(); opt.step()
        torch.cuda.synchronize()
        return dict(peak_gib=round(torch.cuda.max_memory_allocated()/2**30, 2), step_s=round((time.time()-t0)/4, 3), bs=2)
    if not smoke: step('paper_1280x1918', paper_memory)

    def parity():
        from carvana_fastai.ensemble import load_ensemble
        from carvana_fastai.images import read_image
        photos = sorted((data/'test').glob('*.jpg'))[:4]
        e_dev = load_ensemble([str(ck)], tta='hflip', device=dev)
        e_cpu = load_ensemble([str(ck)], tta='hflip', device='cpu')
        dice = []
        with torch.inference_mode():
            for p in photos:
                x = read_image(p)[None]
                a, b = e_dev.masks(x.to(dev)).cpu().bool(), e_cpu.masks(x).bool()
                dice.append(float(2*(a & b).sum() / max(1, a.sum() + b.sum())) if (a.sum() + b.sum()) else 1.)
        assert min(dice) > 0.999, f"device vs CPU Dice {dice}"
        return dict(dice=dice)
    if ck.is_file(): step('predict_vs_cpu', parity)

    def refine():
        from carvana_fastai.ensemble import load_ensemble
        from carvana_fastai.images import read_image
        from carvana_fastai.refine import get_refiner, train_refiner, _read_pairs
        train_refiner(_read_pairs(data, 4), out/'refiner.pth', size=32, steps=20, bs=8, progress=False)
        photos = [read_image(p)[None] for p in sorted((data/'test').glob('*.jpg'))[:2]]
        r = {}
        for method in ('guided', 'learned'):
            e_dev = load_ensemble([str(ck)], tta='hflip', device=dev, refiner=get_refiner(method, out/'refiner.pth', dev))
            e_cpu = load_ensemble([str(ck)], tta='hflip', device='cpu', refiner=get_refiner(method, out/'refiner.pth'))
            dice, secs = [], []
            with torch.inference_mode():
                for x in photos:
                    a, b = e_dev.masks(x.to(dev)).cpu().bool(), e_cpu.masks(x).bool()
                    dice.append(float(2*(a & b).sum() / max(1, a.sum() + b.sum())) if (a.sum() + b.sum()) else 1.)
                    p = e_dev(x.to(dev), refine=False)
                    if dev == 'cuda': torch.cuda.synchronize()
                    t0 = time.time(); e_dev.refine(x.to(dev), p)
                    if dev == 'cuda': torch.cuda.synchronize()
                    secs.append(time.time() - t0)
            assert min(dice) > 0.999, f"{method}: device vs CPU Dice {dice}"
            r[method] = dict(dice=dice, refine_ms=[round(1000*t, 1) for t in secs])
        return r
    if ck.is_file(): step('refine_vs_cpu', refine)

    def onnx():
        from carvana_fastai.ensemble import load_ensemble
        from carvana_fastai.export import export_onnx, check_onnx, check_photos
        ens = load_ensemble([str(ck)], tta='hflip', device='cpu', mixed_precision=False)
        f = export_onnx(ens, out/'ensemble.onnx', photos=check_photos([(1280, 1918) if not smoke else (96, 144), (75, 113)], n=1))
        r = dict(cpu=json.loads(f.with_suffix('.json').read_text())['check'])
        import onnxruntime as ort
        if 'CUDAExecutionProvider' in ort.get_available_providers() and not smoke:
            ens_cuda = load_ensemble([str(ck)], tta='hflip', device='cuda', mixed_precision=False)
            r['cuda'] = check_onnx(f, ens_cuda, check_photos([(1280, 1918)], n=2),
                                   providers=['CUDAExecutionProvider', 'CPUExecutionProvider'])
        return r
    if ck.is_file(): step('onnx', onnx)

    def bench():
        cmd = [sys.executable, str(ROOT/'bench'/'predict.py'), '--device', 'cuda', '--extrapolate', '2000']
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=420, cwd=ROOT)
        (out/'bench_predict.txt').write_text(r.stdout + r.stderr)
        assert r.returncode == 0, r.stderr[-1500:]
        return dict(tail=r.stdout[-1500:])
    if not smoke: step('bench_predict', bench)

    res['total_s'] = round(time.time() - t_all, 1)
    md = ['# GPU check' + (' (CPU smoke)' if smoke else ''), '', '| step | ok | seconds | result |', '| --- | --- | --- | --- |']
    for k, r in res.items():
        if isinstance(r, dict):
            show = {a: b for a, b in r.items() if a not in ('ok', 'seconds', 'trace', 'tail')}
            md.append(f"| {k} | {'yes' if r['ok'] else 'NO'} | {r['seconds']} | {json.dumps(show, default=str)[:300]} |")
    (out/'summary.md').write_text('\n'.join(md) + f"\n\ntotal {res['total_s']} s\n")
    (out/'summary.json').write_text(json.dumps(res, indent=1, default=str))
    print((out/'summary.md').read_text())
    return 0 if all(r['ok'] for r in res.values() if isinstance(r, dict)) else 1

if __name__ == '__main__':
    args = [a for a in sys.argv[1:] if not a.startswith('--')]
    sys.exit(main(args[0] if args else 'gpu_check_out', smoke='--cpu-smoke' in sys.argv))
