"""Launched by tests/test_torchrun_predict.py as `torchrun --nproc_per_node 2 tests/torchrun_predict.py IMAGES OUT_CSV MODE [RESUME] [DIE]`,
or as `torchrun --nproc_per_node 2 tests/torchrun_predict.py cli ARGS...`: the command line `python -m carvana_fastai.run ARGS`
on every rank, each printing its exit code (`rank R exit N`) before it exits with it.

Every rank predicts with the same tiny ensemble through `submission.predict_folder` (no shard: under torchrun each rank
takes its own and rank 0 merges). MODE `gloo` starts a process group (rank 0 waits at a barrier), `files` does not
(rank 0 polls the ranks' `.done` stamps). DIE=1: rank 1 fails after its first batch (a rank that dies mid-way).
"""
import json, os, sys, warnings
from pathlib import Path
warnings.filterwarnings('ignore')
sys.path.insert(0, str(Path(__file__).resolve().parent)); sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch, torch.distributed as dist
from carvana_fastai.submission import predict_folder
from tiny_models import tiny_ensemble

class DiesAfter:
    "An ensemble that raises after `k` batches."
    def __init__(self, ens, k): self.ens, self.k = ens, k
    def __getattr__(self, n): return getattr(self.ens, n)
    def masks(self, x, threshold=None):
        if self.k == 0: raise RuntimeError(f"rank {os.environ['RANK']} dies")
        self.k -= 1
        return self.ens.masks(x, threshold)

def main(images, out, mode, resume='0', die='0'):
    torch.set_num_threads(1)
    if mode == 'gloo': dist.init_process_group('gloo')
    ens = tiny_ensemble('hflip', threshold=0.45)
    if die == '1' and os.environ['RANK'] == '1': ens = DiesAfter(ens, 1)
    s = predict_folder(ens, images, out, bs=2, workers=0, resume=resume == '1', progress=False)
    line = f"rank {os.environ['RANK']} summary " + json.dumps(dict(out=str(s['out']), predicted=s['predicted'], kept=s['kept']))
    os.write(1, (line + '\n').encode())          # one write: the ranks share stdout, and print's text and newline are two
    if mode == 'gloo': dist.destroy_process_group()

def cli(*args):
    from carvana_fastai.cli import main as cli_main
    torch.set_num_threads(1)
    code = cli_main(list(args))
    os.write(1, f"rank {os.environ['RANK']} exit {code}\n".encode())
    sys.exit(code)

if __name__ == '__main__':
    if sys.argv[1] == 'cli': cli(*sys.argv[2:])
    else: main(*sys.argv[1:])
