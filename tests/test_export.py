"ONNX export of whole ensembles (tiny models and a real U-Net, CPU): parity with PyTorch, dynamic sizes, the JSON, errors, and `OnnxEnsemble` in `predict_folder`."
import json, subprocess, sys, warnings
from pathlib import Path
import numpy as np, pytest, torch, torch.nn as nn
pytest.importorskip('onnxruntime'); pytest.importorskip('onnxscript')
from carvana_fastai.export import export_onnx, OnnxEnsemble, ensemble_graph, check_photos, ONNX_FORMAT
from carvana_fastai.ensemble import load_ensemble
from tiny_models import tiny_model, tiny_ensemble, STATS, test_dir

warnings.filterwarnings('ignore')

@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    "A 2-member tiny ensemble (hflip TTA, threshold 0.45) exported once for the tests below."
    ens = tiny_ensemble('hflip', threshold=0.45)
    return ens, export_onnx(ens, tmp_path_factory.mktemp('onnx')/'tiny.onnx')

def torch_probs(ens, x):
    with torch.inference_mode(): return ensemble_graph(ens)(torch.from_numpy(x)).numpy()

@pytest.mark.parametrize('shape', [(1, 3, 64, 96), (3, 3, 61, 93), (1, 3, 17, 211), (3, 3, 128, 33), (1, 3, 32, 48)])
def test_parity_at_dynamic_sizes(exported, shape):
    ens, f = exported
    ox = OnnxEnsemble(f)
    x = check_photos([shape[2:]], n=shape[0], seed=shape[2])[0]
    a, b = ox(x), torch_probs(ens, x)
    assert a.shape == b.shape == (shape[0], 1, *shape[2:])
    assert np.abs(a - b).max() <= 1e-4
    assert (ox.masks(x) != (b[:, 0] > 0.45)).mean() <= 1e-5

def test_close_to_the_eager_ensemble(exported):
    "Against `Ensemble` itself on uint8 photos (what `predict` runs on the CPU): the same arithmetic, so float rounding apart."
    ens, f = exported
    ox = OnnxEnsemble(f)
    x = check_photos([(75, 113)], n=2)[0]
    with torch.inference_mode():
        assert np.abs(ox(x) - ens(torch.from_numpy(x)).numpy()).max() <= 1e-5
        assert np.abs(ox(x) - ens(torch.from_numpy(x).float()).numpy()).max() <= 1e-5
        assert (ox.masks(x) != ens.masks(torch.from_numpy(x)).numpy()).mean() <= 1e-5

class Unsure(nn.Module):
    "A model unsure everywhere: a tenth of `tiny_model`'s logits, so nearly every pixel sits near probability 0.5."
    def __init__(self, seed): super().__init__(); self.m = tiny_model(seed)
    def forward(self, x): return self.m(x)*0.1

def test_engines_agree_at_full_size(tmp_path):
    "The submissions of `predict` with the PyTorch ensemble and with its ONNX export agree on 1280x1918 photos, even for an unsure model."
    from carvana_fastai.submission import predict_folder
    from carvana_fastai.rle import rle_decode, dice
    from PIL import Image
    import pandas as pd
    ens = load_ensemble([(Unsure(0).eval(), dict(stats=STATS, size=(64, 96))), (Unsure(1).eval(), dict(stats=STATS, size=(48, 72)))],
                        tta='hflip', device='cpu')
    f = export_onnx(ens, tmp_path/'ens.onnx')
    (tmp_path/'test').mkdir()
    photos = check_photos([(1280, 1918)], n=3, seed=1)[0]
    for i, p in enumerate(photos): Image.fromarray(p.transpose(1, 2, 0)).save(tmp_path/'test'/f'car{i}.jpg', quality=95)
    with torch.inference_mode(): pt = ens(torch.from_numpy(photos))
    assert ((pt - 0.5).abs() < 0.01).float().mean() > 0.9 and 0.2 < (pt > 0.5).float().mean() < 0.8   # unsure, yet masks with a car
    assert np.abs(OnnxEnsemble(f)(photos) - pt.numpy()).max() <= 1e-5
    subs = [pd.read_csv(predict_folder(e, tmp_path/'test', tmp_path/f'{n}.csv', bs=2, workers=0, progress=False)['out'], keep_default_na=False)
            for n, e in (('torch', ens), ('onnx', OnnxEnsemble(f)))]
    assert list(subs[0].img) == list(subs[1].img) == [f'car{i}.jpg' for i in range(3)]
    dices = [dice(rle_decode(a, (1280, 1918)), rle_decode(b, (1280, 1918))) for a, b in zip(subs[0].rle_mask, subs[1].rle_mask)]
    assert min(dices) > 0.9999, dices
    meta = json.loads(f.with_suffix('.json').read_text())['check']      # export's own check: the eager ensemble at full size
    assert [1280, 1918] in meta['sizes'] and 'eager' in meta['against'] and meta['max_diff'] <= 1e-4

def test_json(exported):
    ens, f = exported
    meta = json.loads(f.with_suffix('.json').read_text())
    assert meta['format'] == ONNX_FORMAT and meta['carvana_fastai'] and meta['opset'] >= 18
    assert meta['merge'] == 'mean' and meta['threshold'] == 0.45 and meta['tta'] is True
    assert meta['weights'] == pytest.approx([0.5, 0.5])
    assert [m['size'] for m in meta['members']] == [[32, 48], [40, 48]]
    assert all(m['tta'] == ['identity', 'hflip'] and m['tta_merge'] == 'mean' for m in meta['members'])
    assert meta['members'][0]['stats'] == [pytest.approx(s) for s in STATS]
    assert meta['check']['max_diff'] <= 1e-4 and meta['check']['mask_diff'] <= 1e-5 and meta['check']['sizes'] == [[75, 113], [1280, 1918]]
    assert meta['input']['dtype'] == 'uint8' and meta['input']['shape'] == ['batch', 3, 'height', 'width']

def test_vote_weights_scales_and_no_tta(tmp_path):
    ens = tiny_ensemble(['identity', 'hflip+scale0.75', 'vflip'], merge='vote', n=3, weights=[1, 2, 1])
    f = export_onnx(ens, tmp_path/'vote.onnx')
    x = check_photos([(50, 70)], n=2)[0]
    ox = OnnxEnsemble(f)
    assert np.abs(ox(x) - torch_probs(ens, x)).max() <= 1e-4
    with pytest.raises(ValueError, match='threshold is in the graph'): ox.masks(x, threshold=0.3)
    f2 = export_onnx(tiny_ensemble('hflip'), tmp_path/'notta.onnx', tta=False)
    ens_plain = tiny_ensemble('none')
    assert np.abs(OnnxEnsemble(f2)(x, tta=False) - torch_probs(ens_plain, x)).max() <= 1e-4
    assert json.loads(f2.with_suffix('.json').read_text())['members'][0]['tta'] == ['identity']

class Branchy(nn.Module):
    "A model that branches on its input's values: torch.export cannot trace it."
    def __init__(self): super().__init__(); self.c = nn.Conv2d(3, 1, 1)
    def forward(self, x): return self.c(x) if x.mean() > 0 else -self.c(x)

def test_error_names_the_member(tmp_path):
    ens = load_ensemble([(tiny_model(0), dict(stats=STATS, size=(32, 48), name='fine')),
                         (Branchy().eval(), dict(stats=STATS, size=(40, 48), name='branchy'))], device='cpu')
    with pytest.raises(ValueError, match=r'member branchy cannot be exported to ONNX: \w+'):
        export_onnx(ens, tmp_path/'bad.onnx')
    assert not list(tmp_path.iterdir())                       # nothing half-written
    with pytest.raises(ValueError, match='opset'): export_onnx(tiny_ensemble(), tmp_path/'x.onnx', opset=17)

def test_real_unet_checkpoints(tmp_path):
    "A real (random-weight) lean U-Net member, exported from a checkpoint file path."
    from carvana_fastai.unet import carvana_unet
    from carvana_fastai.bodies import body_stats
    torch.manual_seed(0)
    model = carvana_unet(body='efficientnet_lite0', img_size=(64, 96), pretrained=False).eval()
    stats = [list(map(float, v)) for v in body_stats('efficientnet_lite0')]
    ens = load_ensemble([(model, dict(stats=stats, size=(64, 96), name='lite0'))], device='cpu', tta='hflip')
    f = export_onnx(ens, tmp_path/'unet.onnx', photos=check_photos([(96, 144), (61, 93)], n=1))
    x = check_photos([(81, 127)], n=2, seed=3)[0]
    assert np.abs(OnnxEnsemble(f)(x) - torch_probs(ens, x)).max() <= 1e-4

def test_predict_folder_with_onnx(exported, test_dir, tmp_path):
    "`predict_folder` takes an OnnxEnsemble; its rows equal the PyTorch graph's masks."
    from carvana_fastai.submission import predict_folder
    from carvana_fastai.rle import rle_decode
    from carvana_fastai.images import read_image
    import pandas as pd
    ens, f = exported
    s = predict_folder(OnnxEnsemble(f), test_dir, tmp_path/'sub.csv', bs=3, workers=0, progress=False)
    df = pd.read_csv(s['out'], keep_default_na=False)
    assert len(df) == len(list(test_dir.glob('*.jpg')))
    for name, rle in df.values[:3]:
        x = read_image(test_dir/name)[None].contiguous().numpy()
        want = (torch_probs(ens, x)[0, 0] > 0.45).astype(np.uint8)
        assert (rle_decode(rle, want.shape) != want).mean() <= 1e-5

def test_runtime_needs_no_torch(exported):
    "The ONNX runtime path imports neither torch nor fastai."
    _, f = exported
    code = (f"import sys, numpy as np; from carvana_fastai.export import OnnxEnsemble; ox = OnnxEnsemble({str(f)!r}); "
            "m = ox.masks(np.zeros((1, 3, 40, 60), np.uint8)); assert m.shape == (1, 40, 60) and m.dtype == np.uint8; "
            "print('torch' in sys.modules, 'fastai' in sys.modules)")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ['False', 'False']
