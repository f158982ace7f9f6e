"U-Net builder and learner: every preset x fusion x body at an odd size, config round trip, splitter, freezing, bad input, training."
import json, warnings
from pathlib import Path
import pytest, torch
warnings.filterwarnings('ignore', category=FutureWarning)
from fastai.torch_core import set_seed
from fastai.vision.models.unet import DynamicUnet
from carvana_fastai.bodies import create_body, body_stats
from carvana_fastai.unet import (CarvanaUnet, DECODERS, FUSIONS, carvana_unet, carvana_splitter, carvana_learner,
                                 model_summary)

BODIES = ['efficientnet_lite0', 'resnet18', 'resnet34', 'vgg11', 'scratch']
ODD = (37, 53)

def n_params(m): return sum(p.numel() for p in m.parameters())

@pytest.mark.parametrize('body', BODIES)
@pytest.mark.parametrize('fusion', list(FUSIONS))
@pytest.mark.parametrize('decoder', list(DECODERS))
def test_odd_size_blocks_and_config(body, fusion, decoder):
    torch.manual_seed(0)
    m = carvana_unet(body, img_size=ODD, fusion=fusion, decoder=decoder).eval()
    assert m.n_blocks in (4, 5)
    with torch.no_grad(): out = m(torch.randn(2, 3, *ODD))
    assert out.shape == (2, 1, *ODD) and torch.isfinite(out).all()
    cfg = json.loads(json.dumps(m.config))                      # plain, JSON-serialisable
    assert cfg == m.config and (cfg['body'], cfg['fusion'], cfg['decoder']) == (body, fusion, decoder)
    with torch.device('meta'): m2 = carvana_unet(**cfg)
    assert n_params(m2) == n_params(m) and list(m2.state_dict()) == list(m.state_dict())

@pytest.mark.parametrize('body', ['efficientnet_lite0', 'resnet34', 'vgg11'])
def test_classic_is_dynamic_unet(body):
    with torch.device('meta'):
        assert n_params(carvana_unet(body, img_size=(320, 480), decoder='classic')) == n_params(DynamicUnet(create_body(body), 1, (320, 480)))

def test_classic_same_output_as_dynamic_unet():
    torch.manual_seed(0)
    dyn = DynamicUnet(create_body('efficientnet_lite0'), 1, ODD).eval()
    ours = carvana_unet('efficientnet_lite0', img_size=ODD, decoder='classic').eval()
    ours.load_state_dict(dyn.state_dict())                     # same layers under the same names
    x = torch.randn(1, 3, *ODD)
    with torch.no_grad(): torch.testing.assert_close(ours(x), dyn(x))

def test_larger_odd_size_quarter_carvana():
    m = carvana_unet('efficientnet_lite0', img_size=(320, 479)).eval()
    with torch.no_grad(): assert m(torch.randn(1, 3, 320, 479)).shape == (1, 1, 320, 479)

def test_add_smaller_than_concat_and_lean_smaller_than_classic():
    df = model_summary(['resnet34', 'efficientnet_lite0'], fusion=['concat', 'add'], decoder=['classic', 'lean'], size=(64, 96))
    r = df.set_index(['body', 'fusion', 'decoder'])
    for b in ['resnet34', 'efficientnet_lite0']:
        for d in DECODERS: assert r.loc[(b, 'add', d), 'decoder_params'] < r.loc[(b, 'concat', d), 'decoder_params']
        for f in FUSIONS: assert r.loc[(b, f, 'lean'), 'gflops'] < r.loc[(b, f, 'classic'), 'gflops']
    assert (df.params == df.body_params + df.decoder_params).all()
    assert all(tuple(s) == (64, 96) for s in df.out_size) and df.decoder_blocks.isin([4, 5]).all()

@pytest.mark.parametrize('kw', [dict(bottle=True, decoder='classic'), dict(self_attention=True, blur=True),
                                dict(width_mult=0.5, middle=1.), dict(decoder_widths=[64, 32, 16], final_upsample='shuffle'),
                                dict(act_cls='Mish', norm_type='Instance'), dict(y_range=(-3, 3))])
def test_options(kw):
    m = carvana_unet('resnet18', img_size=ODD, **kw).eval()
    with torch.no_grad(): out = m(torch.randn(1, 3, *ODD))
    assert out.shape == (1, 1, *ODD)
    if 'y_range' in kw: assert out.min() >= -3 and out.max() <= 3
    assert n_params(carvana_unet(**m.config)) == n_params(m)

def test_n_in_and_wrong_channels():
    m = carvana_unet('resnet18', img_size=ODD, n_in=1).eval()
    with torch.no_grad(): assert m(torch.randn(1, 1, *ODD)).shape == (1, 1, *ODD)
    with pytest.raises(ValueError, match=r'1 channels \(n_in\), got shape \(1, 3'): m(torch.randn(1, 3, *ODD))
    m3 = carvana_unet('efficientnet_lite0', img_size=ODD)
    with pytest.raises(ValueError, match='3 channels'): m3(torch.randn(2, 4, *ODD))
    with pytest.raises(ValueError, match='3 channels'): m3(torch.randn(3, *ODD))

def test_bad_options():
    with pytest.raises(ValueError, match="unknown decoder preset 'slim'"): carvana_unet(img_size=ODD, decoder='slim')
    with pytest.raises(ValueError, match="did you mean 'last_cross'"): carvana_unet(img_size=ODD, last_crosss=True)
    with pytest.raises(ValueError, match="fusion 'sum'"): carvana_unet(img_size=ODD, fusion='sum')
    with pytest.raises(ValueError, match='last_cross'): carvana_unet(img_size=ODD, last_cross=True)   # lean is bilinear
    with pytest.raises(ValueError, match='norm_type'): carvana_unet(img_size=ODD, norm_type='Group')
    with pytest.raises(ValueError, match='Unknown body'): carvana_unet('resnet43', img_size=ODD)

def test_named_parts_and_splitter_order():
    "encoder, decoder and head hold every parameter; the splitter's groups keep the order of `parameters()` (optimizer state)."
    m = carvana_unet('resnet18', img_size=ODD, decoder='classic')
    parts = [m.encoder, m.decoder, m.head]
    assert sum(n_params(p) for p in parts) == n_params(m)
    assert [id(p) for g in carvana_splitter(m) for p in g] == [id(p) for p in m.parameters()]
    assert list(m.decoder._modules)[:4] == ['bn', 'relu', 'middle', 'block0'] and 'conv' in m.head._modules
    assert not hasattr(m, 'layers')

def test_blocks_are_plain_modules():
    from fastai.vision.models.unet import UnetBlock
    from carvana_fastai.unet import ConcatBlock, AddBlock
    class Stored: stored = torch.randn(2, 16, 9, 13)
    for B in (ConcatBlock, AddBlock):
        b = B(32, 16, Stored(), nf=8)
        assert isinstance(b, torch.nn.Module) and not isinstance(b, UnetBlock)
        assert b(torch.randn(2, 32, 5, 7)).shape == (2, 8, 9, 13)
    ub, cb = UnetBlock(32, 16, Stored()).eval(), ConcatBlock(32, 16, Stored()).eval()
    cb.load_state_dict(ub.state_dict())                         # UnetBlock's names and output
    x = torch.randn(2, 32, 5, 7)
    with torch.no_grad(): torch.testing.assert_close(cb(x), ub(x))

def tiny_encoder():
    "Stride 2 at once (as ResNet), then two pooled double convs: a decoder of 2 blocks ending at stride 2."
    from carvana_fastai.bodies import double_conv
    nn = torch.nn
    return nn.Sequential(nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1, bias=False), nn.BatchNorm2d(4), nn.ReLU()),
                         nn.Sequential(nn.MaxPool2d(2), double_conv(4, 8)), nn.Sequential(nn.MaxPool2d(2), double_conv(8, 8)))

@pytest.mark.parametrize('kind', ['concat-classic', 'add-lean'])
def test_loads_state_dict_of_single_list_model(kind):
    "tests/data/unet_layers_v1.pth: state dicts (keys `layers.<i>...`) and outputs saved by the version before named parts."
    from carvana_fastai.unet import _act, _norm
    ref = torch.load(Path(__file__).parent/'data'/'unet_layers_v1.pth')
    fusion, dec = kind.split('-')
    cfg = dict(DECODERS[dec]); cfg['act_cls'], cfg['norm_type'] = _act(cfg['act_cls']), _norm(cfg['norm_type'])
    if dec == 'lean': cfg['decoder_widths'] = (16, 12, 8, 8, 8)
    m = CarvanaUnet(tiny_encoder(), 1, (21, 29), fusion=fusion, **cfg).eval()
    sd = ref[kind]['sd']
    assert all(k.startswith('layers.') for k in sd)
    m.load_state_dict(sd)                                       # strict: every key found its new name
    with torch.no_grad(): torch.testing.assert_close(m(ref['x']).as_subclass(torch.Tensor), ref[kind]['y'])
    assert all(not k.startswith('layers.') for k in m.state_dict())

def test_splitter_stand_in_body():
    "Any `nn.Sequential` of stages works, not only registered bodies (a torchvision ResNet cut by hand)."
    import torchvision
    body = torch.nn.Sequential(*list(torchvision.models.resnet18().children())[:-2])
    m = CarvanaUnet(body, 1, ODD, decoder_widths=(256, 128, 64, 32, 16), middle=0, last_cross=False, final_upsample='bilinear')
    groups = carvana_splitter(m)
    assert len(groups) == 2 and sum(p.numel() for g in groups for p in g) == n_params(m)
    assert {id(p) for p in groups[0]} == {id(p) for p in body.parameters()}
    assert not {id(p) for p in groups[0]} & {id(p) for p in groups[1]}

@pytest.fixture(scope='module')
def dls(tiny_carvana):
    from carvana_fastai.data import carvana_dls
    return carvana_dls(tiny_carvana, (64, 96), bs=4, workers=0, device='cpu', stats=body_stats('efficientnet_lite0'))

def test_learner_freeze_and_options(dls):
    learn = carvana_learner(dls, body='efficientnet_lite0', pretrained=True, wd=0.05, self_attention=True)
    assert learn.model.config['self_attention'] and learn.wd == 0.05 and learn.model.config['img_size'] == [64, 96]
    learn.create_opt()
    assert len(learn.opt.param_groups) == 2
    body = {id(p) for p in learn.model.encoder.parameters()}
    assert all(p.requires_grad for p in [*learn.model.decoder.parameters(), *learn.model.head.parameters()])   # decoder trainable
    frozen = [p for p in learn.model.parameters() if not p.requires_grad]
    assert frozen and all(id(p) in body for p in frozen)
    learn.unfreeze()
    assert all(p.requires_grad for p in learn.model.parameters())
    with pytest.raises(ValueError, match='did you mean'): carvana_learner(dls, pretrained=False, botle=True)

def test_learner_warns_on_wrong_stats(tiny_carvana):
    from carvana_fastai.data import carvana_dls
    imagenet = carvana_dls(tiny_carvana, (64, 96), bs=4, workers=0, device='cpu')   # imagenet stats, lite0 wants [-1,1]
    with pytest.warns(UserWarning, match=r"body_stats\('efficientnet_lite0'\)"):
        carvana_learner(imagenet, body='efficientnet_lite0', pretrained=True)

@pytest.mark.parametrize('fusion', list(FUSIONS))
def test_two_epochs_loss_falls(dls, fusion):
    set_seed(0)
    learn = carvana_learner(dls, body='efficientnet_lite0', fusion=fusion, pretrained=False)
    before = learn.validate()
    # 4 short epochs: after only 2, BatchNorm's running stats on ~5 tiny batches still make the eval-mode loss noisy
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(4, 3e-3)
    train_losses = [float(l) for l in learn.recorder.losses]
    after = learn.recorder.values[-1]
    assert after[1] < before[0], (before, after)     # validation loss falls
    assert after[2] > before[1], (before, after)     # validation Dice rises
    assert sum(train_losses[-3:]) < sum(train_losses[:3])
