"""Engines side by side on the CPU: onnxruntime (`export.OnnxEnsemble` of the exported graph) vs PyTorch eager
(`ensemble.Ensemble`), in one process, alternating, for (a) one efficientnet_lite0 lean member at 448x672 and (b) the
demo ensemble (the 3 members of `configs/default.yaml` at their last-stage sizes), both with hflip TTA and random
weights (speed does not depend on the weights). For each, two measurements:

- forward alone: probabilities at full size (1280x1918) of in-memory uint8 batches of synthetic photos;
- end to end: `submission.predict_folder` on a folder of full-size synthetic JPEGs (decode -> ensemble -> RLE -> CSV).

We report photos/s of each engine and the ratio onnx/torch (photos/s; median and IQR of the per-round ratios); a
difference is "beyond the noise" when the IQR of the ratios does not contain 1.0. The faster engine, when the end-to-end
difference is beyond the noise for both models in the same direction, is the one to make the CPU default (issue 16).

    python bench/engines.py                       # CPU: 6 photos, 3 rounds, (a) and (b)
    python bench/engines.py --threads 2 --no-append
    python bench/engines.py --only member --n 12 --repeats 5
"""
import sys, shutil, tempfile, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (base_parser, setup, machine_info, bench_alternating, quantiles, fmt_time, md_table, append_results)
from predict import build_ensemble, make_test_folder, load_batches, describe, parse_models

# ------------------------------------------------------------------------------------------------- contenders
def torch_forward_fn(ens, batches):
    "PyTorch eager: the ensemble's probabilities at full size of each in-memory uint8 batch."
    import torch
    def f():
        with torch.inference_mode():
            for x in batches: ens(x)
    return f

def onnx_forward_fn(oens, arrays):
    "onnxruntime: the exported graph's probabilities at full size of each in-memory uint8 batch (numpy, contiguous)."
    def f():
        for a in arrays: oens.probs(a)
    return f

def e2e_fn(ens, folder, out, bs):
    "One `predict_folder` run over the folder (its default workers: 0 on the CPU), the CSV written afresh each time."
    from carvana_fastai.submission import predict_folder
    return lambda: predict_folder(ens, folder, out, bs=bs, progress=False, resume=False)

def parity(ens, oens, batch):
    "Max |probability difference| and fraction of differing mask pixels, onnxruntime vs PyTorch, on one batch."
    import numpy as np, torch
    with torch.inference_mode(): a = ens(batch).float().cpu().numpy()
    b = oens.probs(np.ascontiguousarray(batch.cpu().numpy()))
    t = ens.threshold
    return float(np.abs(a - b).max()), float(((a > t) != (b > t)).mean())

# ------------------------------------------------------------------------------------------------ comparison
def ratio_stats(torch_t, onnx_t):
    "onnx/torch photos/s per round (= torch time / onnx time): (q1, median, q3)."
    return quantiles([t/o for t, o in zip(torch_t.times, onnx_t.times)])

def noise_verdict(q1, q3, rounds=3):
    "'onnx faster' / 'torch faster' when the IQR of the onnx/torch ratios is all above / below 1.0, else 'within noise'."
    if rounds < 3: return 'n/a (fewer than 3 rounds)'
    if q1 > 1: return 'yes: onnx faster'
    if q3 < 1: return 'yes: torch faster'
    return 'no (IQR spans 1.0)'

def run_model(label, specs, args, folder, tmp, threads):
    "Export, check parity, time the four contenders alternating; the table rows and the end-to-end verdict of one model."
    from carvana_fastai.export import export_onnx, OnnxEnsemble
    import numpy as np, torch
    dev = torch.device('cpu')
    ens = build_ensemble(specs, dev, False, args.tta)
    t0 = time.time()
    path = export_onnx(ens, tmp/f'{label}.onnx')
    export_s = time.time() - t0
    oens = OnnxEnsemble(path, threads=threads)
    batches = load_batches(folder, args.bs, dev)                      # as bench/predict.py: channels_last torch batches
    arrays = [np.ascontiguousarray(x.numpy()) for x in batches]       # the same photos as contiguous numpy for onnxruntime
    diff, mdiff = parity(ens, oens, batches[0])
    print(f"[{label}] exported in {export_s:.1f} s; parity on a batch at full size: max |prob diff| {diff:.1e}, "
          f"masks differ in {mdiff:.1e} of pixels", flush=True)
    fns = {'fwd torch': torch_forward_fn(ens, batches), 'fwd onnx': onnx_forward_fn(oens, arrays),
           'e2e torch': e2e_fn(ens, folder, tmp/f'{label}_torch.csv', args.bs),
           'e2e onnx': e2e_fn(oens, folder, tmp/f'{label}_onnx.csv', args.bs)}
    res = bench_alternating(fns, repeats=args.repeats, warmup=args.warmup)
    n, rows, verdicts = args.n, [], {}
    for kind, what in (('fwd', 'forward alone (in-memory uint8 -> probabilities at 1280x1918)'),
                       ('e2e', 'end to end (`predict_folder`: decode -> ensemble -> RLE -> CSV)')):
        tt, ot = res[f'{kind} torch'], res[f'{kind} onnx']
        q1, m, q3 = ratio_stats(tt, ot)
        v = noise_verdict(q1, q3, len(tt.times)); verdicts[kind] = (q1, m, q3)
        rows.append({'model': label, 'measure': what, 'torch photos/s': f"{n/tt.median:.2f}",
                     'onnx photos/s': f"{n/ot.median:.2f}", 'onnx/torch (median, IQR)': f"{m:.2f} ({q1:.2f}-{q3:.2f})",
                     'beyond noise?': v})
    extra = dict(model=label, desc=describe(specs, args.tta), export_s=export_s, diff=diff, mdiff=mdiff)
    return rows, verdicts, extra

def conclusion(verdicts, rounds):
    "Which engine should be the CPU default, from the end-to-end verdicts of every model."
    e2e = {k: v['e2e'] for k, v in verdicts.items()}
    if rounds < 3: return 'undecided', "fewer than 3 rounds: no verdict (run with --repeats 3 or more)."
    if all(q1 > 1 for q1, _, _ in e2e.values()):
        return 'onnx', "onnxruntime is faster end to end for every model, beyond the noise: it would be the faster CPU default."
    if all(q3 < 1 for _, _, q3 in e2e.values()):
        return 'torch', "PyTorch eager is faster end to end for every model, beyond the noise: it stays the faster CPU default."
    return 'undecided', ("the end-to-end difference is within the noise or goes different ways for the models: no engine is "
                         "faster beyond the noise; keep the current default (torch) unless a longer run (more photos, "
                         "more rounds) settles it.")

def main(argv=None):
    p = base_parser(__doc__.split('\n\n')[0], repeats=3, warmup=1)
    p.add_argument('--n', type=int, default=6, help='full-size synthetic photos (each timed call processes all of them)')
    p.add_argument('--bs', type=int, default=3, help='photos per batch, in memory and for predict_folder')
    p.add_argument('--tta', default='hflip', help='TTA preset of carvana_fastai.ensemble')
    p.add_argument('--body', default='efficientnet_lite0', help='body of the single member (a)')
    p.add_argument('--size', default='448x672', help='input size HxW of the single member (a)')
    p.add_argument('--models', default='default', help="the ensemble (b): 'default' (the demo config's members), "
                   "'paper:2' or 'body:fusion:decoder@HxW,...' as in bench/predict.py")
    p.add_argument('--only', choices=['member', 'ensemble'], default=None, help='run only (a) or only (b)')
    args = p.parse_args(argv)
    setup(args)                                                   # --threads -> torch.set_num_threads
    import torch
    threads = args.threads or torch.get_num_threads()             # onnxruntime gets as many intra-op threads as torch
    info = machine_info('cpu', extra_versions=('onnxruntime', 'onnx'))
    h, w = (int(v) for v in args.size.lower().split('x'))
    models = []
    if args.only != 'ensemble':
        models.append(('member', [dict(name=args.body, body=args.body, fusion='concat', decoder='lean', size=(h, w))]))
    if args.only != 'member': models.append(('ensemble', parse_models(args.models)))
    tmp = Path(tempfile.mkdtemp(prefix='bench_engines_'))
    try:
        t0 = time.time()
        folder = make_test_folder(tmp/'data', args.n, pool=args.n)
        print(f"{args.n} test photos in {folder} ({time.time()-t0:.0f} s); torch and onnxruntime threads {threads}", flush=True)
        rows, verdicts, extras = [], {}, []
        for label, specs in models:
            r, v, e = run_model(label, specs, args, folder, tmp, threads)
            rows += r; verdicts[label] = v; extras.append(e)
        engine, text = conclusion(verdicts, args.repeats)
        models_md = '\n'.join(f"- {e['model']}: {e['desc']}; export {e['export_s']:.0f} s; parity at full size: max |prob diff| "
                              f"{e['diff']:.1e}, masks differ in {e['mdiff']:.1e} of pixels" for e in extras)
        body = (f"cpu; {args.n} photos 1918x1280, batches of {args.bs}; {threads} threads for each engine; random weights; "
                f"median of {args.repeats} alternating rounds (the four contenders of a model rotate order each round). "
                f"torch = `Ensemble` (PyTorch eager, fp32); onnx = `OnnxEnsemble` of `export_onnx`'s graph (onnxruntime "
                f"CPU provider). onnx/torch = onnx photos/s over torch photos/s per round, median (q1-q3); beyond the "
                f"noise when q1-q3 does not contain 1.0.\n\n{models_md}\n\n" + md_table(rows) +
                f"\n\n**CPU default engine:** {text}")
        append_results('Engines on the CPU: onnxruntime vs PyTorch eager (bench/engines.py)', info, body, args)
        return engine
    finally: shutil.rmtree(tmp, ignore_errors=True)

if __name__ == '__main__': main()
