"Prediction under `torchrun` on CPU (2 processes): each rank predicts its shard, rank 0 merges; a rank that dies leaves resumable parts; the command line's `predict` exits 0 on every rank."
import json, os, socket, subprocess, sys
from pathlib import Path
import pytest, torch
from carvana_fastai.submission import predict_folder
from tiny_models import tiny_ensemble, test_dir

SCRIPT = Path(__file__).parent/'torchrun_predict.py'

def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def torchrun(*args, nproc=2):
    env = dict(os.environ, OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='', PYTHONWARNINGS='ignore')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', str(nproc), '--master_addr', '127.0.0.1',
           '--master_port', str(free_port()), str(SCRIPT), *map(str, args)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)

def summaries(stdout):
    return {int(l.split()[1]): json.loads(l.split(' summary ', 1)[1]) for l in stdout.splitlines() if ' summary ' in l}

@pytest.fixture
def single(test_dir, tmp_path):
    "The one-process submission of the same folder with the same ensemble."
    return Path(predict_folder(tiny_ensemble('hflip', threshold=0.45), test_dir, tmp_path/'single.csv', bs=3, workers=0,
                               progress=False)['out']).read_bytes()

@pytest.mark.parametrize('mode', ['gloo', 'files'])
def test_two_ranks_equal_one_process(test_dir, tmp_path, single, mode):
    out = tmp_path/'sub.csv'
    r = torchrun(test_dir, out, mode)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    s = summaries(r.stdout)
    assert set(s) == {0, 1} and s[0]['out'] == str(out) and s[1]['out'] == 'None'
    n = len(list(test_dir.glob('*.jpg')))
    assert s[0]['predicted'] == n and s[1]['predicted'] < n         # rank 0 reports the total, rank 1 its shard
    assert out.read_bytes() == single                                # byte for byte the one-process submission
    assert not list(tmp_path.glob('sub.rank*'))                      # the parts are merged and removed

def test_a_rank_that_dies_resumes(test_dir, tmp_path, single):
    out = tmp_path/'sub.csv'
    r = torchrun(test_dir, out, 'files', 0, 1)                       # rank 1 fails after its first batch
    assert r.returncode != 0 and 'rank 1 dies' in r.stdout + r.stderr
    assert not out.exists()
    part1 = tmp_path/'sub.rank1-of-2.csv.part'
    assert part1.is_file() and len(part1.read_text().splitlines()) == 1 + 2   # header + its first batch of 2, kept
    r = torchrun(test_dir, out, 'files', 1, 0)                       # --resume: each rank keeps its rows
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    s = summaries(r.stdout)
    assert s[0]['kept'] >= 2 and s[0]['predicted'] + s[0]['kept'] == len(list(test_dir.glob('*.jpg')))
    assert out.read_bytes() == single

def random_checkpoint(path, size=(32, 48)):
    "A checkpoint of a random-weight lean U-Net (efficientnet_lite0 body) at `size`, as training writes it."
    from carvana_fastai import __version__
    from carvana_fastai.bodies import body_stats
    from carvana_fastai.checkpoint import CKPT_FORMAT, CKPT_VERSION, atomic_save
    from carvana_fastai.unet import carvana_unet
    torch.manual_seed(0)
    m = carvana_unet('efficientnet_lite0', img_size=size, pretrained=False)
    stats = [[float(v) for v in s] for s in body_stats('efficientnet_lite0')]
    return atomic_save(dict(format=CKPT_FORMAT, version=CKPT_VERSION, model=m.state_dict(), config=m.config, stats=stats,
                            size=list(size), plan=None, stage=None, epoch=None, opt=None, history=[], carvana_fastai=__version__), path)

def test_cli_predict_every_rank_exits_0(tiny_carvana, tmp_path):
    "`torchrun ... -m carvana_fastai.run predict` as the README gives it: every rank exits 0 (rank 1 once validated a submission only rank 0 holds)."
    from carvana_fastai.ensemble import load_ensemble
    ckpt, out = random_checkpoint(tmp_path/'m.pth'), tmp_path/'sub.csv'
    r = torchrun('cli', 'predict', '--data', tiny_carvana, '--models', ckpt, '--tta', 'hflip', '--bs', 2, '--out', out)
    codes = {int(l.split()[1]): int(l.split()[3]) for l in r.stdout.splitlines() if l.startswith('rank ') and ' exit ' in l}
    assert codes == {0: 0, 1: 0} and r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert 'validate-submission: submission' in r.stdout and ': OK' in r.stdout
    one = predict_folder(load_ensemble([ckpt], tta='hflip', device='cpu'), tiny_carvana/'test', tmp_path/'one.csv', bs=2, workers=0,
                         sample_submission=tiny_carvana/'sample_submission.csv', progress=False)
    assert out.read_bytes() == Path(one['out']).read_bytes()        # the one-process submission, in sample_submission order
