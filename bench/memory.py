"""Peak memory of training per scale (one `learn.fit` over a few batches of our default U-Net) and of prediction at
full resolution per batch size (`predict_folder` on full-size 1918x1280 JPEGs), each configuration in a fresh process.

CPU: peak resident set size (VmHWM, as `ru_maxrss` but not inherited from the parent) of the child, and its increase over the resident size just before the work
(the model, the batches and the imports are in the baseline). GPU (`--device cuda`): `torch.cuda.max_memory_allocated`.

    python bench/memory.py                                  # both, CPU defaults
    python bench/memory.py --what train --train-sizes 320x480,640x960,1280x1918
    python bench/memory.py --device cuda --amp both --predict-bs 1,4,8,16
"""
import sys, json, shutil, tempfile
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (base_parser, setup, amp_modes, machine_info, run_child, child_report, fmt_bytes, md_table,
                     append_results)

def _sizes(s): return [tuple(int(v) for v in t.lower().split('x')) for t in s.split(',') if t]
def _ints(s): return [int(v) for v in s.split(',') if v]

def current_rss():
    "Resident set size now, in bytes."
    import psutil
    return psutil.Process().memory_info().rss

# ------------------------------------------------------------------------------------------------ children
def child_train(a):
    "Fit our default learner over `a.batches` fixed batches at `a.size` and report the memory it took."
    import torch
    from train_step import make_batches, build_learner, fit_fn
    dev = torch.device(a.device)
    batches = make_batches(a.batches, a.bs, tuple(a.size), dev)
    cfg = json.loads(a.config)
    batches = [(x.contiguous(memory_format=torch.channels_last), y) for x, y in batches]     # as training does
    learn, _ = build_learner(cfg, batches, dev, a.amp == 'on', channels_last=True)
    base = current_rss()
    if dev.type == 'cuda': torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); gbase = torch.cuda.memory_allocated()
    fit_fn(learn)()
    r = dict(base_rss=base)
    if dev.type == 'cuda': torch.cuda.synchronize(); r.update(gpu_peak=torch.cuda.max_memory_allocated(), gpu_base=gbase)
    child_report(**r)

def child_predict(a):
    "Predict a folder of full-size JPEGs with batch size `a.bs` and report the memory it took."
    import torch
    from predict import parse_models, build_ensemble
    from carvana_fastai.submission import predict_folder
    dev = torch.device(a.device)
    specs = parse_models(a.models)
    ens = build_ensemble(specs, dev, a.amp == 'on')
    base = current_rss()
    if dev.type == 'cuda': torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    s = predict_folder(ens, a.data, Path(a.data).parent/f'mem_{a.bs}.csv', bs=a.bs, workers=a.workers, progress=False)
    r = dict(base_rss=base, images_per_s=s['images_per_s'], sizes=[list(m['size']) for m in specs])
    if dev.type == 'cuda': torch.cuda.synchronize(); r.update(gpu_peak=torch.cuda.max_memory_allocated())
    child_report(**r)

# ---------------------------------------------------------------------------------------------------- main
def main(argv=None):
    p = base_parser(__doc__.split('\n\n')[0], device=True, timing=False)
    p.add_argument('--what', default='train,predict', help="'train', 'predict' or both")
    p.add_argument('--train-sizes', default='160x240,320x480,640x960', help='training scales HxW, comma-separated')
    p.add_argument('--train-bs', type=int, default=4)
    p.add_argument('--batches', type=int, default=2, help='batches per training fit')
    p.add_argument('--config', default='{}', help='carvana_learner kwargs as JSON (default: the default U-Net)')
    p.add_argument('--predict-bs', default='1,2,4', help='prediction batch sizes, comma-separated')
    p.add_argument('--n-images', type=int, default=8, help='full-size synthetic test images to predict')
    p.add_argument('--models', default='default', help="prediction ensemble, as in bench/predict.py --models")
    p.add_argument('--workers', type=int, default=None, help='DataLoader workers for prediction (default: predict_folder\'s)')
    p.add_argument('--child', choices=['train', 'predict'], help=argparse_hidden())
    p.add_argument('--size', type=int, nargs=2, help=argparse_hidden())
    p.add_argument('--bs', type=int, help=argparse_hidden())
    p.add_argument('--data', help=argparse_hidden())
    a = p.parse_args(argv)
    if a.child:
        setup(a)
        return (child_train if a.child == 'train' else child_predict)(a)
    dev = setup(a)
    info = machine_info(dev)
    me = Path(__file__).resolve()
    common = ['--device', str(dev)] + (['--threads', a.threads] if a.threads else [])
    gpu = dev.type == 'cuda'
    sections = []
    whats = [w.strip() for w in a.what.split(',')]
    if 'train' in whats:
        rows = []
        for amp in amp_modes(a):
            for size in _sizes(a.train_sizes):
                print(f"train {size[0]}x{size[1]} amp={amp} ...", flush=True)
                r = run_child(me, ['--child', 'train', '--size', *size, '--bs', a.train_bs, '--batches', a.batches,
                                   '--config', a.config, '--amp', 'on' if amp else 'off', *common])
                row = {'scale': f"{size[0]}x{size[1]}", 'batch': a.train_bs, 'mixed precision': 'on' if amp else 'off'}
                if 'error' in r: row['peak'] = f"failed: {r['error']}"
                elif gpu: row.update({'peak GPU (max_memory_allocated)': fmt_bytes(r['gpu_peak']),
                                      'GPU above baseline': fmt_bytes(r['gpu_peak'] - r['gpu_base']),
                                      'peak RSS': fmt_bytes(r['peak_rss'])})
                else: row.update({'peak RSS': fmt_bytes(r['peak_rss']),
                                  'above baseline': fmt_bytes(max(0, r['peak_rss'] - r['base_rss']))})
                rows.append(row)
        what = 'our default U-Net' if json.loads(a.config) == {} else f'our U-Net {a.config}'
        sections.append(f"**Training** (`learn.fit` over {a.batches} batches of {what}, torch Adam)\n\n"
                        + md_table(rows, list(max(rows, key=len))))
    if 'predict' in whats:
        from predict import make_test_folder, parse_models, describe
        tmp = Path(tempfile.mkdtemp(prefix='bench_mem_'))
        data = make_test_folder(tmp/'data', a.n_images)
        rows = []
        for amp in amp_modes(a):
            for bs in _ints(a.predict_bs):
                print(f"predict bs={bs} amp={amp} ...", flush=True)
                r = run_child(me, ['--child', 'predict', '--bs', bs, '--data', data, '--models', a.models,
                                   '--amp', 'on' if amp else 'off', *common,
                                   *(['--workers', a.workers] if a.workers is not None else [])])
                row = {'batch': bs, 'mixed precision': 'on' if amp else 'off'}
                if 'error' in r: row['peak'] = f"failed: {r['error']}"
                else:
                    if gpu: row.update({'peak GPU (max_memory_allocated)': fmt_bytes(r['gpu_peak']),
                                        'peak RSS': fmt_bytes(r['peak_rss'])})
                    else: row.update({'peak RSS': fmt_bytes(r['peak_rss']),
                                      'above baseline': fmt_bytes(max(0, r['peak_rss'] - r['base_rss']))})
                    row['images/s'] = f"{r['images_per_s']:.2f}"
                rows.append(row)
        shutil.rmtree(tmp, ignore_errors=True)
        sections.append(f"**Prediction at full resolution** (`predict_folder` on {a.n_images} synthetic 1918x1280 JPEGs; "
                        f"ensemble: {describe(parse_models(a.models), 'hflip')}; masks at 1280x1918)\n\n"
                        + md_table(rows, list(max(rows, key=len))))
    body = ("Each row is a fresh process. CPU: peak RSS (VmHWM of the process; DataLoader workers not included) and its rise over the RSS just before the work "
            "(imports, model and inputs are in the baseline); GPU: `torch.cuda.max_memory_allocated`.\n\n"
            + '\n\n'.join(sections))
    append_results('Peak memory (bench/memory.py)', info, body, a)

def argparse_hidden():
    import argparse
    return argparse.SUPPRESS

if __name__ == '__main__': main()
