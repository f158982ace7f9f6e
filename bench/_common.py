"""Shared harness for the benchmarks in `bench/`: side-by-side timing, peak memory, machine info, markdown tables,
and appending results to `BENCHMARKS.md`.

Every comparison is a ratio of contenders timed in the same process, alternating (the order rotates each round),
so that load from other processes hits all of them alike; we report medians, IQRs and the median of the per-round
ratios. Benchmarks are scripts, not tests: nothing here asserts on time.
"""
import argparse, datetime, gc, json, os, platform, resource, shlex, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH_MD = ROOT/'BENCHMARKS.md'
if str(ROOT) not in sys.path: sys.path.insert(0, str(ROOT))   # run from a checkout without `pip install -e .`
os.environ.setdefault('MPLBACKEND', 'Agg')

# ---------------------------------------------------------------------------------------------------------- args
def base_parser(description, repeats=7, warmup=1, device=False, timing=True) -> argparse.ArgumentParser:
    "An argparse parser with the options every benchmark shares."
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    if timing:
        p.add_argument('--repeats', type=int, default=repeats, help='timed rounds per contender (alternating)')
        p.add_argument('--warmup', type=int, default=warmup, help='untimed calls per contender before timing')
    p.add_argument('--threads', type=int, default=None, help="torch intra-op threads (default: torch's own)")
    p.add_argument('--no-append', action='store_true', help="print the table only; don't append to BENCHMARKS.md")
    p.add_argument('--out', default=str(BENCH_MD), help='markdown file the results are appended to')
    if device:
        p.add_argument('--device', default='cpu', help="'cpu', 'cuda' or 'cuda:N'")
        p.add_argument('--amp', choices=['off', 'on', 'both'], default='off',
                       help='mixed precision (bf16/fp16 autocast; CUDA only): off, on, or both side by side')
    return p

def setup(args):
    "Apply `--threads` and return the `torch.device` of `--device` (cpu when the script has no `--device`)."
    import torch
    if args.threads: torch.set_num_threads(args.threads)
    dev = torch.device(getattr(args, 'device', 'cpu'))
    if dev.type == 'cuda' and not torch.cuda.is_available(): sys.exit(f"--device {dev}: CUDA is not available on this machine")
    if dev.type == 'cpu' and getattr(args, 'amp', 'off') != 'off':
        print("note: --amp is for CUDA; on CPU the runs are fp32 only", file=sys.stderr); args.amp = 'off'
    return dev

def amp_modes(args):
    "The mixed-precision settings to run: [False], [True] or [False, True]."
    return {'off': [False], 'on': [True], 'both': [False, True]}[getattr(args, 'amp', 'off')]

def sync(device):
    "A function that waits for `device` (a no-op on CPU)."
    import torch
    if getattr(device, 'type', device) == 'cuda': return torch.cuda.synchronize
    return lambda: None

# -------------------------------------------------------------------------------------------------------- timing
def quantiles(xs):
    "(q1, median, q3) of a list of numbers (linear interpolation, like numpy's default)."
    s = sorted(xs); n = len(s)
    def q(p):
        i = p*(n-1); lo = int(i); hi = min(lo+1, n-1)
        return s[lo] + (s[hi]-s[lo])*(i-lo)
    return q(.25), q(.5), q(.75)

class Timing:
    "Times (seconds per call) of one contender, with median and IQR."
    def __init__(self, name, times=None): self.name, self.times = name, list(times or [])
    @property
    def median(self): return quantiles(self.times)[1]
    @property
    def iqr(self): q1, _, q3 = quantiles(self.times); return q3-q1
    def __repr__(self): return f"{self.name}: {fmt_time(self.median)} ± {fmt_time(self.iqr)} IQR (n={len(self.times)})"

def bench_alternating(fns, repeats=7, warmup=1, number=1, sync=None, setup=None) -> dict:
    """Time each callable in the dict `fns` (name -> f()) `repeats` times, alternating the contenders and rotating
    who goes first each round, after `warmup` untimed calls each. `number` calls per measurement (an int, or a dict
    name -> int); `sync()` is called
    around each (pass `torch.cuda.synchronize` on GPU); `setup(name)` runs untimed before each measurement.
    Returns name -> `Timing` (seconds per call)."""
    sync = sync or (lambda: None)
    names = list(fns)
    res = {n: Timing(n) for n in names}
    num = number if isinstance(number, dict) else {n: number for n in names}
    for _ in range(warmup):
        for n in names:
            if setup: setup(n)
            fns[n]()
    sync()
    for r in range(repeats):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            if setup: setup(n)
            gc.collect(); gcold = gc.isenabled(); gc.disable()
            try:
                sync(); t0 = time.perf_counter()
                for _ in range(num[n]): fns[n]()
                sync(); res[n].times.append((time.perf_counter()-t0)/num[n])
            finally:
                if gcold: gc.enable()
    return res

def calibrate(f, min_time=0.02, sync=None):
    "Calls per measurement so that one measurement of `f` takes at least `min_time` seconds (f is called once here)."
    sync = sync or (lambda: None)
    sync(); t0 = time.perf_counter(); f(); sync()
    return max(1, int(min_time / max(time.perf_counter()-t0, 1e-9)) + 1)

def paired_ratio(a: Timing, b: Timing):
    "Median and IQR of the per-round ratios a/b (rounds are adjacent in time, so this cancels slow load drift)."
    rs = [x/y for x, y in zip(a.times, b.times)]
    q1, m, q3 = quantiles(rs)
    return m, q3-q1

def fmt_time(s):
    "Seconds as a short human string."
    if s is None: return '-'
    if s >= 1: return f"{s:.2f} s"
    if s >= 1e-3: return f"{s*1e3:.2f} ms"
    return f"{s*1e6:.1f} µs"

def fmt_bytes(b):
    "Bytes as MiB/GiB."
    if b is None: return '-'
    return f"{b/2**30:.2f} GiB" if b >= 2**30 else f"{b/2**20:.0f} MiB"

def verdict(ok):
    "'yes' / 'NO' / '-' for a target check."
    return '-' if ok is None else ('yes' if ok else '**NO**')

# -------------------------------------------------------------------------------------------------------- memory
def peak_rss():
    """Peak resident set size of this process so far, in bytes: Linux's VmHWM (the peak of this process image; unlike
    `ru_maxrss` it does not inherit the parent's peak across fork + exec), else `ru_maxrss`."""
    try:
        for line in open('/proc/self/status'):
            if line.startswith('VmHWM:'): return int(line.split()[1]) * 1024
    except OSError: pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == 'darwin' else r*1024

def child_report(**kw):
    "In a child process: print one JSON line (with the peak RSS added) for `run_child` to read."
    kw.setdefault('peak_rss', peak_rss())
    print('@@RESULT@@' + json.dumps(kw), flush=True)

def run_child(script, argv, timeout=900, env=None) -> dict:
    "Run `python script *argv` in a fresh process and return the dict its `child_report` printed (or {'error': ...})."
    cmd = [sys.executable, str(script), *map(str, argv)]
    e = {**os.environ, **(env or {})}
    try: p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=e)
    except subprocess.TimeoutExpired: return dict(error=f'timed out after {timeout} s')
    for line in reversed(p.stdout.splitlines()):
        if line.startswith('@@RESULT@@'): return json.loads(line[len('@@RESULT@@'):])
    tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or ['no output']
    return dict(error=f'exit {p.returncode}: {tail[0][:200]}')

# --------------------------------------------------------------------------------------------------- machine info
def _cpu_model():
    try:
        for line in open('/proc/cpuinfo'):
            if line.startswith('model name'): return line.split(':', 1)[1].strip()
    except OSError: pass
    return platform.processor() or platform.machine()

def _version(mod):
    try:
        m = __import__(mod)
        return getattr(m, '__version__', '?')
    except Exception: return None

def _git():
    try:
        h = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        return (h + ('+dirty' if dirty else '')) or None
    except Exception: return None

def machine_info(device=None, extra_versions=()) -> dict:
    "Date, machine (CPU, cores, GPU), versions and load average, for the record."
    import torch
    try: cores_avail = len(os.sched_getaffinity(0))
    except AttributeError: cores_avail = os.cpu_count()
    try:
        import psutil; ram = psutil.virtual_memory().total
    except Exception: ram = None
    gpu = None
    if torch.cuda.is_available():
        i = torch.device(device).index or 0 if device is not None and torch.device(device).type == 'cuda' else 0
        p = torch.cuda.get_device_properties(i)
        gpu = f"{p.name} ({p.total_memory/2**30:.0f} GiB)"
    vers = {m: _version(m) for m in ('torch', 'fastai', 'timm', 'carvana_fastai', 'numpy', *extra_versions)}
    return dict(date=datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
                cpu=_cpu_model(), cores=os.cpu_count(), cores_available=cores_avail, torch_threads=torch.get_num_threads(),
                ram=ram, gpu=gpu, device=str(device) if device is not None else 'cpu',
                python=platform.python_version(), versions={k: v for k, v in vers.items() if v},
                git=_git(), loadavg_start=os.getloadavg())

def info_lines(info) -> str:
    "The machine/versions header of a results section, as markdown."
    la0 = ' '.join(f'{x:.2f}' for x in info['loadavg_start'])
    la1 = ' '.join(f'{x:.2f}' for x in info.get('loadavg_end', info['loadavg_start']))
    ram = f", {info['ram']/2**30:.0f} GiB RAM" if info.get('ram') else ''
    vers = ', '.join(f'{k} {v}' for k, v in info['versions'].items())
    return '\n'.join([
        f"- machine: {info['cpu']}, {info['cores']} cores ({info['cores_available']} available, torch threads {info['torch_threads']}){ram}; "
        f"GPU: {info['gpu'] or 'none'}; device used: {info['device']}",
        f"- load average (1/5/15 min): {la0} at start, {la1} at end",
        f"- versions: python {info['python']}, {vers}" + (f"; git {info['git']}" if info.get('git') else ''),
    ])

# ----------------------------------------------------------------------------------------------------- reporting
def md_table(rows, cols=None) -> str:
    "A markdown table from a list of dicts (columns in the order of `cols`, or of the first row)."
    cols = cols or list(rows[0])
    out = ['| ' + ' | '.join(cols) + ' |', '|' + '|'.join(' --- ' for _ in cols) + '|']
    out += ['| ' + ' | '.join(str(r.get(c, '')) for c in cols) + ' |' for r in rows]
    return '\n'.join(out)

_HEADER = """# Benchmarks

Results of the scripts in `bench/` (run `python bench/<name>.py`, `--help` for options). Each script appends a
section below with the date, machine, versions and load average. Ratios compare contenders timed side by side in one
process, alternating, so they hold up on a shared machine better than the absolute times do.

"""

def append_results(title, info, body, args=None, path=BENCH_MD, cmd=None):
    "Print a results section and append it to `path` (unless `--no-append`)."
    info = {**info, 'loadavg_end': os.getloadavg()}
    cmd = cmd or ('python ' + ' '.join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], ROOT) if os.path.isabs(sys.argv[0]) else sys.argv[0], *sys.argv[1:]]))
    sec = f"\n## {title} — {info['date']}\n\n`{cmd}`\n\n{info_lines(info)}\n\n{body.strip()}\n"
    print(sec)
    if args is not None and getattr(args, 'no_append', False): return sec
    path = Path(getattr(args, 'out', None) or path)
    new = not path.exists()
    with open(path, 'a') as f:
        if new: f.write(_HEADER)
        f.write(sec)
    print(f"(appended to {path})")
    return sec

def extra_memory(f):
    "Peak bytes torch allocates on the CPU during `f()` (the profiler's allocations and frees, in order)."
    from torch.profiler import profile
    with profile(profile_memory=True) as prof: f()
    ev = sorted([e for e in prof.profiler.function_events if e.self_cpu_memory_usage], key=lambda e: e.time_range.start)
    cur = peak = 0
    for e in ev: cur += e.self_cpu_memory_usage; peak = max(peak, cur)
    return peak
