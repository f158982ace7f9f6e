"Stand-in models, ensembles and a test folder shared by test_ensemble.py, test_submission.py and test_evaluate.py."
import shutil
import pytest, torch, torch.nn as nn
from carvana_fastai.ensemble import load_ensemble

STATS = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])

def tiny_model(seed=0):
    "A stand-in segmentation model (normalised images -> logits), not flip-symmetric."
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 1, (1, 5), padding=(0, 2))).eval()

def tiny_ensemble(tta='hflip', merge='mean', n=2, **kw):
    return load_ensemble([(tiny_model(i), dict(stats=STATS, size=(32 + 8*i, 48))) for i in range(n)], tta=tta, merge=merge,
                         device='cpu', **kw)

@pytest.fixture
def test_dir(tiny_carvana, tmp_path):
    "A private copy of the synthetic test folder with more images (so batches and shards are not trivial)."
    d = tmp_path/'test'
    shutil.copytree(tiny_carvana/'test', d)
    for f in sorted((tiny_carvana/'train').glob('*.jpg'))[:6]: shutil.copy(f, d/f.name)
    return d
