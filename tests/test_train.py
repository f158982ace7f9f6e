"Progressive training end to end on tiny synthetic data: stages, checkpoints, resume, reproducibility, bad input."
import errno, io, os, re, shutil, warnings
from collections import namedtuple
from contextlib import redirect_stdout
from pathlib import Path
import pytest, torch
warnings.filterwarnings('ignore', category=FutureWarning)
from fastai.callback.core import Callback
from fastai.torch_core import set_seed
import carvana_fastai.train as train
import carvana_fastai.checkpoint as checkpoint
from carvana_fastai.train import train_progressive, read_history
from carvana_fastai.config import validate_plan
from carvana_fastai.checkpoint import save_checkpoint, load_checkpoint, read_checkpoint, CKPT_FORMAT
from carvana_fastai.data import carvana_dls

PLAN = [dict(size=(32, 48), epochs=1, lr=3e-3, bs=4), dict(size=(64, 96), epochs=2, lr=2e-3, bs=4)]

def make_learner(data, body='efficientnet_lite0', fusion='concat'):
    "A small U-Net learner, the same for the same seed."
    from carvana_fastai.unet import carvana_learner
    set_seed(1)
    dls = carvana_dls(data, (32, 48), bs=4, workers=0, device='cpu')
    return carvana_learner(dls, body=body, fusion=fusion, decoder='lean', pretrained=False)

def fit(data, out, plan=PLAN, progress=False, **kwargs):
    learn = make_learner(data)
    return learn, train_progressive(learn, plan, data, out, seed=0, progress=progress, **kwargs)

def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)

def no_time(h): return h.drop(columns='time').reset_index(drop=True)

class Sizes(Callback):
    "Record the image size of the first training batch of every fit."
    def __init__(self): self.sizes = []
    def before_fit(self): self.first = True
    def before_batch(self):
        if self.training and self.first: self.sizes.append(tuple(self.xb[0].shape[-2:])); self.first = False

class Interrupt(Callback):
    "Raise KeyboardInterrupt (as Ctrl-C would) at the end of `epoch` of the stage at `size`."
    order = 100
    def __init__(self, size, epoch): self.size, self.at = size, epoch
    def after_epoch(self):
        if tuple(self.dls.size) == self.size and self.epoch == self.at: raise KeyboardInterrupt

Run = namedtuple('Run', 'learn history out log')

@pytest.fixture(scope='module')
def straight(tiny_carvana, tmp_path_factory):
    "The uninterrupted two-stage run the other tests compare with; stdout is not a terminal, so it prints log lines."
    out = tmp_path_factory.mktemp('straight')
    sizes = Sizes()
    with redirect_stdout(io.StringIO()) as log: learn, hist = fit(tiny_carvana, out, cbs=[sizes], progress=None, name='tiny')
    learn.sizes = sizes.sizes
    return Run(learn, hist, out, log.getvalue())

def test_two_stages(straight):
    learn, hist, out, _ = straight
    assert learn.sizes == [(32, 48), (64, 96)]                   # each stage's DataLoaders at the stage's size
    assert list(hist['stage']) == [0, 1, 1] and list(hist['size']) == ['32x48', '64x96', '64x96']
    assert list(hist['epoch']) == [0, 0, 1]
    for c in ('train_loss', 'valid_loss', 'dice', 'lr', 'time'): assert c in hist
    assert hist['train_loss'].iloc[-1] < hist['train_loss'].iloc[0]  # the loss falls
    assert hist.drop(columns='time').notna().all().all()
    for f in ('stage0-32x48.pth', 'stage1-64x96.pth', 'last.pth', 'model.pth', 'history.csv', 'history.png'):
        assert (out/f).stat().st_size > 0, f
    assert not list(out.glob('.*tmp'))                                 # no temporary files left
    csv = read_history(out)
    assert no_time(csv).drop(columns='lr').equals(no_time(hist).drop(columns='lr'))

def test_log_lines(straight):
    "Without a terminal, one line per epoch: name, stage, size, epoch, losses, metrics, seconds."
    lines = [l for l in straight.log.splitlines() if ' epoch ' in l]
    assert len(lines) == 3, straight.log
    pat = r"train tiny: stage (\d)/2 (\S+) epoch (\d)/(\d): train_loss [\d.]+ valid_loss [\d.]+ dice [\d.]+ iou [\d.]+ \([\d.]+ s\)"
    got = [re.fullmatch(pat, l) for l in lines]
    assert all(got), lines
    assert [m.groups() for m in got] == [('1', '32x48', '1', '1'), ('2', '64x96', '1', '2'), ('2', '64x96', '2', '2')]
    assert f"{straight.history['train_loss'].iloc[-1]:.4f}" in lines[-1]

def test_checkpoint_contents(straight):
    learn, hist, out, _ = straight
    ck = read_checkpoint(out/'last.pth')
    assert ck['format'] == CKPT_FORMAT and ck['version'] == 1
    assert (ck['stage'], ck['epoch'], ck['size'], ck['done']) == (1, 1, (64, 96), True)
    assert ck['plan'] == validate_plan(PLAN) and ck['config'] == learn.model.config
    assert ck['opt'] is not None and len(ck['history']) == 3 and ck['stats'][0] == [0.5, 0.5, 0.5]
    stage0 = read_checkpoint(out/'stage0-32x48.pth')
    assert (stage0['stage'], stage0['size'], stage0['opt'], len(stage0['history'])) == (0, (32, 48), None, 1)
    model, meta = load_checkpoint(out/'model.pth', device='cpu')
    assert same_weights(model, learn.model) and not model.training and 'model' not in meta
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad(): assert torch.allclose(model(x), learn.model.eval()(x), atol=1e-5)

def test_reproducible(straight, tiny_carvana, tmp_path):
    learn, hist = fit(tiny_carvana, tmp_path)
    assert no_time(hist).equals(no_time(straight.history))
    assert same_weights(learn.model, straight.learn.model)

@pytest.mark.parametrize('every_epoch,at', [(False, 0), (True, 0)], ids=['stage_boundary', 'mid_stage'])
def test_resume_equals_straight(straight, tiny_carvana, tmp_path, every_epoch, at):
    "Interrupt during stage 2 (after its first epoch); resume; end exactly where the uninterrupted run ended."
    with pytest.raises(KeyboardInterrupt): fit(tiny_carvana, tmp_path, every_epoch=every_epoch, cbs=[Interrupt((64, 96), at)])
    ck = read_checkpoint(tmp_path/'last.pth')
    assert (ck['stage'], ck['epoch']) == ((1, 0) if every_epoch else (0, 0))
    learn, hist = fit(tiny_carvana, tmp_path, resume=True, every_epoch=every_epoch)
    assert no_time(hist).equals(no_time(straight.history))
    assert same_weights(learn.model, straight.learn.model)
    assert no_time(read_history(tmp_path)).drop(columns='lr').equals(no_time(hist).drop(columns='lr'))

def test_resume_after_the_end_is_a_no_op(straight, tiny_carvana, tmp_path):
    shutil.copytree(straight.out, tmp_path, dirs_exist_ok=True)
    learn, hist = fit(tiny_carvana, tmp_path, resume=True)
    assert no_time(hist).equals(no_time(straight.history)) and same_weights(learn.model, straight.learn.model)

def test_resume_refuses_other_fusion_and_plan(straight, tiny_carvana, tmp_path):
    shutil.copy(straight.out/'stage0-32x48.pth', tmp_path)
    learn = make_learner(tiny_carvana, fusion='add')
    with pytest.raises(ValueError, match=r"fusion='concat'.*fusion='add'"):
        train_progressive(learn, PLAN, tiny_carvana, tmp_path, resume=True, progress=False)
    plan = [dict(PLAN[0], size=(48, 64)), PLAN[1]]
    with pytest.raises(ValueError, match=r"plan stage 0 has size=\(48, 64\).*size=\(32, 48\)"):
        train_progressive(make_learner(tiny_carvana), plan, tiny_carvana, tmp_path, resume=True, progress=False)

def test_bad_plan_fails_before_training(tiny_carvana, tmp_path):
    learn = make_learner(tiny_carvana)
    with pytest.raises(ValueError, match="plan stage 1: unknown key 'epoch'; did you mean 'epochs'"):
        train_progressive(learn, [PLAN[0], dict(size=(64, 96), epoch=2)], tiny_carvana, tmp_path/'out', progress=False)
    with pytest.raises(ValueError, match="plan stage 0: 'size' must be positive"):
        train_progressive(learn, [dict(size=(0, 96))], tiny_carvana, tmp_path/'out', progress=False)
    with pytest.raises(ValueError, match="plan stage 0: 'epochs' must be a positive int"):
        train_progressive(learn, [dict(size=(32, 48), epochs=0)], tiny_carvana, tmp_path/'out', progress=False)
    assert not (tmp_path/'out').exists()

def test_output_problems_fail_before_training(tiny_carvana, tmp_path, monkeypatch):
    learn = make_learner(tiny_carvana)
    (tmp_path/'a_file').write_text('')
    with pytest.raises(OSError, match='cannot create the output folder'):
        train_progressive(learn, PLAN, tiny_carvana, tmp_path/'a_file'/'out', progress=False)
    monkeypatch.setattr(train.shutil, 'disk_usage', lambda p: shutil._ntuple_diskusage(10**12, 10**12 - 1000, 1000))
    with pytest.raises(OSError, match='not enough free disk space') as e:
        train_progressive(learn, PLAN, tiny_carvana, tmp_path/'out', progress=False)
    assert e.value.errno == errno.ENOSPC and not list((tmp_path/'out').iterdir())
    if os.geteuid() != 0:                                   # root writes anywhere: the mode bits mean nothing to it
        ro = tmp_path/'ro'; ro.mkdir(); ro.chmod(0o500)
        with pytest.raises(PermissionError, match='not writable'):
            train_progressive(learn, PLAN, tiny_carvana, ro, progress=False)

def test_checkpoint_errors(tmp_path, straight):
    with pytest.raises(FileNotFoundError, match='does not exist'): load_checkpoint(tmp_path/'nope.pth')
    (tmp_path/'text.pth').write_text('hello')
    with pytest.raises(ValueError, match='not a carvana_fastai checkpoint'): load_checkpoint(tmp_path/'text.pth')
    torch.save(straight.learn.model.state_dict(), tmp_path/'bare.pth')
    with pytest.raises(ValueError, match='bare state_dict'): load_checkpoint(tmp_path/'bare.pth')
    ck = torch.load(straight.out/'model.pth', weights_only=True)
    torch.save(dict(ck, version=2), tmp_path/'v2.pth')
    with pytest.raises(ValueError, match='format version 2.*upgrade'): load_checkpoint(tmp_path/'v2.pth')
    torch.save({k: v for k,v in ck.items() if k != 'config'}, tmp_path/'partial.pth')
    with pytest.raises(ValueError, match='incomplete: missing config'): load_checkpoint(tmp_path/'partial.pth')

def test_save_is_atomic(straight, tmp_path, monkeypatch):
    "A save that dies half-way leaves the previous checkpoint whole and no temporary file."
    path = save_checkpoint(straight.learn, tmp_path/'last.pth', stage=0)
    before = path.read_bytes()
    def dying_save(obj, f):
        Path(f).write_bytes(b'half a checkpoint'); raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(checkpoint.torch, 'save', dying_save)
    with pytest.raises(OSError): save_checkpoint(straight.learn, path, stage=1)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ['last.pth']

def test_bf16_autocast_losses_finite_on_cpu(straight):
    "Under bf16 autocast the model's logits are bf16; every loss (computed in float32) stays finite."
    from carvana_fastai.losses import LOSSES, get_loss
    model = straight.learn.model.eval()
    x, y = torch.randn(2, 3, 32, 48)*3, (torch.rand(2, 32, 48) > 0.5).long()
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        out = model(x)
        losses = {n: get_loss(n)(out, y) for n in LOSSES}
    assert out.dtype == torch.bfloat16
    for n,l in losses.items(): assert torch.isfinite(l) and l.dtype == torch.float32, n

@pytest.mark.slow
def test_lr_find_stage(tiny_carvana, tmp_path):
    learn, hist = fit(tiny_carvana, tmp_path, plan=[dict(size=(32, 48), epochs=1, lr='find', bs=4)])
    lr = hist['lr'].iloc[0]
    assert isinstance(lr, float) and 1e-7 < lr < 10
    assert read_checkpoint(tmp_path/'last.pth')['lrs'] == [lr]
