"""Launched by tests/test_ddp.py as `torchrun --nproc_per_node 2 tests/ddp_train.py DATA OUT`: one tiny progressive run under DDP.

Each rank trains with its own output folder, OUT/rank{r} (so the test can tell which rank wrote what; a real run
gives every rank the same folder), then leaves OUT/rank{r}.pt with its final weights and the history it saw.
"""
import os, sys, warnings
from pathlib import Path
warnings.filterwarnings('ignore')
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch, torch.distributed as dist
from fastai.torch_core import set_seed, rank_distrib, num_distrib, get_model
from carvana_fastai.train import train_progressive, distributed

def make_learner(data):
    from carvana_fastai.data import carvana_dls
    from carvana_fastai.unet import carvana_learner
    dls = carvana_dls(data, (32, 48), bs=4, workers=0, device='cpu')
    return carvana_learner(dls, body='efficientnet_lite0', decoder='lean', pretrained=False)

def main(data, out):
    rank = rank_distrib()
    assert distributed() and num_distrib() == 2, f"expected 2 processes from torchrun, WORLD_SIZE={num_distrib()}"
    set_seed(0)
    learn = make_learner(data)
    plan = [dict(size=(32, 48), epochs=1, lr=3e-3, bs=4), dict(size=(48, 64), epochs=1, lr=1e-3, bs=4)]
    hist = train_progressive(learn, plan, data, Path(out)/f'rank{rank}', seed=0, progress=False)
    assert dist.is_initialized() and dist.get_backend() == 'gloo' and dist.get_world_size() == 2
    sd = {k: v.detach().cpu() for k,v in get_model(learn.model).state_dict().items()}
    torch.save(dict(model=sd, history=hist.drop(columns='time').to_dict('records')), Path(out)/f'rank{rank}.pt')
    dist.barrier(); dist.destroy_process_group()
    print(f'rank {rank} done', flush=True)

if __name__ == '__main__': main(*sys.argv[1:3])
