"""The `serve` HTTP server under a bounded load: `python -m carvana_fastai.run serve` started on a free 127.0.0.1 port
with one random-weight member, then a few local clients post photos to `POST /cutout` until a fixed number of requests
is done (one in ten is a truncated JPEG, answered 400), while another client polls `GET /health`. Reports requests/s,
p50/p95 latency of the cut-outs and of /health, and the server's resident memory after warm-up, half-way and at the
end (no growth expected: one copy of the weights, the model behind a lock, nothing kept per request).

    python bench/serve.py                              # CPU: 200 requests, 4 clients, lite0 @ 448x672, hflip TTA
    python bench/serve.py --requests 400 --clients 8 --photo 1280x1918
"""
import http.client, io, os, signal, subprocess, sys, tempfile, threading, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, base_parser, setup, machine_info, quantiles, fmt_time, fmt_bytes, md_table, append_results

def write_checkpoint(path, body, size, fusion='concat', decoder='lean', seed=0):
    "A checkpoint of a random-weight U-Net, as training writes it."
    import torch
    from carvana_fastai import __version__
    from carvana_fastai.unet import carvana_unet
    from carvana_fastai.bodies import body_stats
    from carvana_fastai.checkpoint import atomic_save, CKPT_FORMAT, CKPT_VERSION
    torch.manual_seed(seed)
    m = carvana_unet(body=body, img_size=size, pretrained=False, fusion=fusion, decoder=decoder).eval()
    atomic_save(dict(format=CKPT_FORMAT, version=CKPT_VERSION, model=m.state_dict(), config=m.config,
                     stats=[list(map(float, v)) for v in body_stats(body)], size=tuple(size), plan=None, stage=0, epoch=0,
                     opt=None, history=[], carvana_fastai=__version__), path)
    return path

def photo_bytes(h, w):
    "A synthetic car photo of h x w as JPEG bytes, and the same cut short (a truncated upload)."
    from PIL import Image
    from carvana_fastai.synth import make_synthetic_carvana
    with tempfile.TemporaryDirectory() as d:
        folder = make_synthetic_carvana(d, n_cars=1, views=1, size=(h, w), seed=0, n_test_cars=0, progress=False)
        im = Image.open(next((Path(folder)/'train').glob('*.jpg'))).convert('RGB')
    buf = io.BytesIO(); im.save(buf, format='JPEG', quality=90)
    data = buf.getvalue()
    return data, data[:len(data)//3]

def rss(pid, key='VmRSS'):
    "Resident memory (bytes) of process `pid` (`key` VmHWM: its peak)."
    for line in open(f'/proc/{pid}/status'):
        if line.startswith(key + ':'): return int(line.split()[1]) * 1024

def post(conn, path, body):
    "Status and seconds of one POST on the keep-alive connection `conn`."
    t0 = time.perf_counter()
    conn.request('POST', path, body=body, headers={'Content-Type': 'image/jpeg'})
    r = conn.getresponse(); r.read()
    return r.status, time.perf_counter() - t0

def start_server(ckpt, port, tta, env, log):
    cmd = [sys.executable, '-m', 'carvana_fastai.run', 'serve', '--models', str(ckpt), '--port', str(port), '--tta', tta,
           '--device', 'cpu']
    p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    t0 = time.time()
    while time.time() - t0 < 300:
        if p.poll() is not None: sys.exit(f"the server exited with {p.returncode}: see {log.name}")
        try:
            c = http.client.HTTPConnection('127.0.0.1', port, timeout=2); c.request('GET', '/health')
            if c.getresponse().status == 200: return p, time.time() - t0
        except OSError: time.sleep(0.2)
    p.kill(); sys.exit("the server did not answer /health within 300 s")

def load(port, n, clients, good, bad, every_bad=10):
    "`n` POST /cutout from `clients` threads (every `every_bad`-th upload truncated); /health polled meanwhile."
    lock, results, health, next_i, stop = threading.Lock(), [], [], [0], threading.Event()
    def client():
        conn = http.client.HTTPConnection('127.0.0.1', port, timeout=300)
        while True:
            with lock:
                i = next_i[0]; next_i[0] += 1
            if i >= n: return
            b = i % every_bad == every_bad - 1
            s, t = post(conn, '/cutout', bad if b else good)
            with lock: results.append((b, s, t))
    def poll():
        conn = http.client.HTTPConnection('127.0.0.1', port, timeout=300)
        while not stop.wait(0.25):
            t0 = time.perf_counter(); conn.request('GET', '/health'); r = conn.getresponse(); r.read()
            health.append((r.status, time.perf_counter() - t0))
    ts = [threading.Thread(target=client) for _ in range(clients)]
    hp = threading.Thread(target=poll)
    t0 = time.perf_counter()
    hp.start()
    for t in ts: t.start()
    for t in ts: t.join()
    wall = time.perf_counter() - t0
    stop.set(); hp.join()
    return results, health, wall

def main(argv=None):
    p = base_parser(__doc__.split('\n\n')[0], timing=False)
    p.add_argument('--requests', type=int, default=200, help='POST /cutout requests in the measured run (split into two halves)')
    p.add_argument('--clients', type=int, default=4, help='concurrent clients')
    p.add_argument('--warmup', type=int, default=8, help='requests before the first memory reading')
    p.add_argument('--size', default='448x672', help='the member size HxW')
    p.add_argument('--photo', default='448x672', help='the uploaded photo HxW')
    p.add_argument('--body', default='efficientnet_lite0')
    p.add_argument('--tta', default='hflip')
    args = p.parse_args(argv)
    setup(args)
    h, w = (int(v) for v in args.size.lower().split('x'))
    ph, pw = (int(v) for v in args.photo.lower().split('x'))
    info = machine_info('cpu', extra_versions=('fastapi', 'uvicorn'))
    env = dict(os.environ, PYTHONWARNINGS='ignore')
    if args.threads: env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    from carvana_fastai.serve import free_port
    with tempfile.TemporaryDirectory(prefix='bench_serve_') as d:
        ckpt = write_checkpoint(Path(d)/'m.pth', args.body, (h, w))
        good, bad = photo_bytes(ph, pw)
        port = free_port()
        with open(Path(d)/'server.log', 'w+') as log:
            srv, startup = start_server(ckpt, port, args.tta, env, log)
            try:
                mem = {'idle, after start': rss(srv.pid)}
                load(port, args.warmup, args.clients, good, bad)
                mem['after warm-up'] = rss(srv.pid)
                half = args.requests // 2
                r1, h1, w1 = load(port, half, args.clients, good, bad)
                mem[f'after {half} more requests'] = rss(srv.pid)
                r2, h2, w2 = load(port, args.requests - half, args.clients, good, bad)
                mem[f'after {args.requests} requests'] = rss(srv.pid)
                peak = rss(srv.pid, 'VmHWM')
            finally:
                srv.send_signal(signal.SIGTERM)
                try: code = srv.wait(60)
                except subprocess.TimeoutExpired: srv.kill(); code = 'killed after 60 s'
            log.seek(0); tail = log.read().strip().splitlines()[-1:]
    res, health, wall = r1 + r2, h1 + h2, w1 + w2
    ok = [t for b, s, t in res if not b and s == 200]
    wrong = [(b, s) for b, s, t in res if (s == 200) == b]
    q = lambda xs, k: quantiles(xs)[k] if xs else None
    p95 = lambda xs: sorted(xs)[min(len(xs)-1, int(0.95*len(xs)))] if xs else None
    rows = [{'measure': 'requests (cut-outs / truncated uploads)', 'value': f"{len(res)} ({len(ok)} / {sum(b for b, _, _ in res)}), {args.clients} clients"},
            {'measure': 'answers not as expected (200 / 400)', 'value': str(len(wrong))},
            {'measure': 'requests/s (all)', 'value': f"{len(res)/wall:.2f}"},
            {'measure': 'cut-out latency p50 / p95 / max', 'value': f"{fmt_time(q(ok, 1))} / {fmt_time(p95(ok))} / {fmt_time(max(ok))}"},
            {'measure': f'GET /health under load p50 / p95 ({len(health)} polls)', 'value': f"{fmt_time(q([t for _, t in health], 1))} / {fmt_time(p95([t for _, t in health]))}"},
            {'measure': 'server start (to the first /health)', 'value': fmt_time(startup)},
            *({'measure': f'server RSS {k}', 'value': fmt_bytes(v)} for k, v in mem.items()),
            {'measure': 'server RSS growth, warm-up -> end', 'value': f"{(mem[f'after {args.requests} requests'] - mem['after warm-up'])/2**20:+.1f} MiB"},
            {'measure': 'server peak RSS (VmHWM)', 'value': fmt_bytes(peak)},
            {'measure': 'exit code after SIGTERM', 'value': f"{code} ({tail[0] if tail else 'no output'})"}]
    body = (f"cpu; one {args.body} concat lean member @ {h}x{w}, random weights, TTA {args.tta}; photos {pw}x{ph} JPEG "
            f"({len(good)/1e3:.0f} kB) posted as raw bodies to `POST /cutout` (RGBA PNG, soft alpha, edge clean-up) by "
            f"{args.clients} keep-alive clients on 127.0.0.1; every 10th upload is the JPEG cut to a third (400). Memory "
            f"is the server process's VmRSS.\n\n" + md_table(rows))
    append_results('Serving cut-outs over HTTP under load (bench/serve.py)', info, body, args)

if __name__ == '__main__': main()
