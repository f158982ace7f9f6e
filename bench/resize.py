"""The photo's resize to each member's size on the CPU: uint8 (channels_last, rounded to uint8; what `Member` did before
issue 20) vs float32 (what it does now, the exported ONNX graph's and CUDA's arithmetic), in one process, alternating:

- resize alone: one 1280x1918 uint8 photo to each size (the demo's member sizes and 448x672), as `float32` 0-255;
- end to end: `submission.predict_folder` with the demo ensemble (the 3 members of `configs/default.yaml`, random
  weights, hflip TTA) on a folder of full-size synthetic JPEGs, with each resize patched in.

    python bench/resize.py                      # 8 photos, 5 rounds
    python bench/resize.py --n 4 --repeats 3 --no-append
"""
import sys, shutil, tempfile
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import base_parser, setup, machine_info, bench_alternating, paired_ratio, fmt_time, md_table, append_results
from predict import build_ensemble, make_test_folder, parse_models, describe

def resize_uint8(x, size):
    "The resize `Member` used on the CPU before issue 20: uint8 in channels_last, rounded, then float32."
    from carvana_fastai.ensemble import _resize
    import torch
    if tuple(x.shape[-2:]) == tuple(size): return x.float()
    if x.dtype == torch.uint8 and x.device.type == 'cpu':
        return _resize(x.contiguous(memory_format=torch.channels_last), size, antialias=True).float()
    return _resize(x.float(), size)

def resize_float(x, size):
    "The resize `Member` uses now (`ensemble._resize_images`): float32 on every device."
    from carvana_fastai.ensemble import _resize_images
    return _resize_images(x, size)

def resize_rows(args):
    import torch
    x = torch.randint(0, 256, (1, 3, 1280, 1918), dtype=torch.uint8)
    rows = []
    for size in [(160, 240), (128, 192), (96, 144), (448, 672)]:
        t = bench_alternating({'uint8': lambda: resize_uint8(x, size), 'float32': lambda: resize_float(x, size)},
                              repeats=args.repeats, warmup=args.warmup, number=5)
        r, iqr = paired_ratio(t['float32'], t['uint8'])
        rows.append({'what': f'resize 1280x1918 -> {size[0]}x{size[1]}', 'uint8': fmt_time(t['uint8'].median),
                     'float32': fmt_time(t['float32'].median), 'float32 / uint8 time': f"{r:.2f} (IQR {iqr:.2f})"})
    return rows

def e2e_row(args, tmp):
    import torch, carvana_fastai.ensemble as E
    from carvana_fastai.submission import predict_folder
    specs = parse_models('default')
    ens = build_ensemble(specs, torch.device('cpu'), tta='hflip')
    folder = make_test_folder(tmp/'data', args.n, pool=args.n)
    def run(resize):
        def f():
            E._resize_images = resize
            try: predict_folder(ens, folder, tmp/'sub.csv', bs=args.bs, progress=False, resume=False)
            finally: E._resize_images = orig
        return f
    orig = E._resize_images
    t = bench_alternating({'uint8': run(resize_uint8), 'float32': run(orig)}, repeats=args.repeats, warmup=args.warmup)
    r, iqr = paired_ratio(t['float32'], t['uint8'])
    per = lambda k: fmt_time(t[k].median/args.n)
    return {'what': f'predict_folder, {args.n} photos (per photo): {describe(specs, "hflip")}', 'uint8': per('uint8'),
            'float32': per('float32'), 'float32 / uint8 time': f"{r:.2f} (IQR {iqr:.2f})"}

def main(argv=None):
    p = base_parser(__doc__.split('\n\n')[0], repeats=5, warmup=1)
    p.add_argument('--n', type=int, default=8, help='full-size synthetic photos for the end-to-end run')
    p.add_argument('--bs', type=int, default=4, help='photos per batch of predict_folder')
    args = p.parse_args(argv)
    setup(args)
    info = machine_info('cpu')
    tmp = Path(tempfile.mkdtemp(prefix='bench_resize_'))
    try: rows = resize_rows(args) + [e2e_row(args, tmp)]
    finally: shutil.rmtree(tmp, ignore_errors=True)
    body = (f"cpu; median of {args.repeats} alternating rounds; float32 / uint8 = the per-round ratio of the times, median "
            f"(IQR). uint8 = the CPU resize before issue 20 (channels_last, rounded to uint8); float32 = now, the arithmetic of "
            f"the ONNX graph, so both engines agree to float rounding.\n\n" + md_table(rows))
    append_results('Photo resize on the CPU: uint8 vs float32 (bench/resize.py)', info, body, args)

if __name__ == '__main__': main()
