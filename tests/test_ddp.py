"DDP on CPU: `torchrun` starts 2 processes (gloo backend) that train one tiny plan through fastai's `distrib_ctx`."
import os, socket, subprocess, sys
from pathlib import Path
import pytest, torch
from carvana_fastai.train import read_history
from carvana_fastai.checkpoint import read_checkpoint

def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def test_ddp_two_processes_on_cpu(tiny_carvana, tmp_path):
    script = Path(__file__).parent/'ddp_train.py'
    env = dict(os.environ, OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='', PYTHONWARNINGS='ignore')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_addr', '127.0.0.1',
           '--master_port', str(free_port()), str(script), str(tiny_carvana), str(tmp_path)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert 'rank 0 done' in r.stdout and 'rank 1 done' in r.stdout            # both ranks finished
    rank0, rank1 = tmp_path/'rank0', tmp_path/'rank1'
    for f in ('stage0-32x48.pth', 'stage1-48x64.pth', 'last.pth', 'model.pth', 'history.csv', 'history.png'):
        assert (rank0/f).exists(), f                                           # rank 0 wrote everything...
    assert rank1.is_dir() and not list(rank1.iterdir())                        # ...rank 1 nothing
    r0, r1 = (torch.load(tmp_path/f'rank{i}.pt', weights_only=True) for i in (0, 1))
    for k,v in r0['model'].items(): assert torch.equal(v, r1['model'][k]), k  # DDP kept the replicas identical
    ck = read_checkpoint(rank0/'model.pth')
    for k,v in ck['model'].items(): assert torch.equal(v, r0['model'][k]), k
    hist = read_history(rank0)
    assert list(hist['size']) == ['32x48', '48x64'] and len(r1['history']) == 2
    for a,b in zip(r0['history'], r1['history']):                              # losses are gathered over both ranks
        assert a['train_loss'] == pytest.approx(b['train_loss']) and a['valid_loss'] == pytest.approx(b['valid_loss'])
        assert a['dice'] == pytest.approx(b['dice']) and a['iou'] == pytest.approx(b['iou'])  # metrics too
