"Cut-outs: sizes, soft vs hard alpha, EXIF, aspect ratio, backgrounds, masks, folders with resume and every kind of bad input."
import errno, importlib, os, struct, zlib, warnings
from pathlib import Path
import numpy as np, pytest, torch, torch.nn as nn, torch.nn.functional as F
from PIL import Image, ImageDraw
warnings.filterwarnings('ignore', category=FutureWarning)
cutout_mod = importlib.import_module('carvana_fastai.cutout')   # `import carvana_fastai.cutout as m` is the function: the package's name wins
from carvana_fastai.core import UsageError
from carvana_fastai.ensemble import load_ensemble
from carvana_fastai.cutout import (cutout, predict_mask, cutout_folder, load_photo, aspect_size, ensemble_probs, alpha_maps,
                                   composite, estimate_foreground, PhotoError, MAX_PIXELS)

STATS = ([0.5]*3, [0.5]*3)

def dark_model(k=40.):
    "Normalised images -> logits, high on dark pixels; a symmetric 3x3 kernel, so equivariant to flips and quarter turns."
    m = nn.Conv2d(3, 1, 3, padding=1)
    with torch.no_grad():
        m.weight.copy_(-k/3 * torch.tensor([[1., 2, 1], [2, 4, 2], [1, 2, 1]]).div(16).expand(1, 3, 3, 3)); m.bias.fill_(0.)
    return m.eval()

def dark_ensemble(size=(32, 48), n=1, **kw):
    return load_ensemble([(dark_model(), dict(stats=STATS, size=size)) for _ in range(n)], device='cpu', **kw)

def photo(h=96, w=144, car=(60, 70, 80), wall=(230, 230, 225)):
    "A uint8 HxWx3 photo: a dark car-like shape on a light wall."
    im = Image.new('RGB', (w, h), wall); d = ImageDraw.Draw(im)
    d.rounded_rectangle([w*.12, h*.45, w*.88, h*.78], radius=h*.08, fill=car)
    d.polygon([(w*.3, h*.46), (w*.4, h*.25), (w*.65, h*.25), (w*.75, h*.46)], fill=car)
    return np.asarray(im).copy()

def png_header(w, h):
    "A PNG that declares `w`x`h` pixels and holds none (a decompression bomb's header)."
    ihdr = b'IHDR' + struct.pack('>IIBBBBB', w, h, 8, 2, 0, 0, 0)
    return b'\x89PNG\r\n\x1a\n' + struct.pack('>I', 13) + ihdr + struct.pack('>I', zlib.crc32(ihdr)) + b'\0\0\0\0IEND\xaeB`\x82'

def near_edge(mask, r):
    "Pixels within `r` of the edge of a {0,1} float mask (B,1,H,W)."
    k = 2*r + 1
    return (F.max_pool2d(mask, k, 1, r) + F.max_pool2d(-mask, k, 1, r)) > 0

def dice(a, b): return float(2*(a & b).sum() / (a.sum() + b.sum()))

@pytest.fixture(scope='module')
def ens(): return dark_ensemble()

# --- one photo ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('shape', [(96, 144), (97, 131), (150, 60), (64, 64)])
def test_rgba_size_equals_photo(ens, shape):
    c = cutout(ens, photo(*shape))
    assert (c.mode, c.size) == ('RGBA', shape[::-1])

@pytest.mark.parametrize('band', [0.5, 0.2, 0.05])
def test_soft_alpha_near_edge_and_agrees_with_hard(ens, band):
    x = torch.from_numpy(photo()).permute(2, 0, 1)[None]
    soft, hard = alpha_maps(ens, x, band=band), alpha_maps(ens, x, alpha='hard')
    assert set(hard.unique().tolist()) == {0, 255}
    frac = (soft > 0) & (soft < 255)
    assert frac.sum() > 10 and not (frac & ~near_edge(hard.float()/255, 6)).any()
    assert torch.equal(soft[~frac], hard[~frac])

def test_hard_alpha_is_the_submission_mask(ens):
    "At the member's aspect ratio a photo is predicted exactly as `Ensemble.masks` predicts it."
    x = torch.from_numpy(photo(64, 96)).permute(2, 0, 1)[None]
    m = np.asarray(predict_mask(ens, photo(64, 96), alpha='hard'))
    with torch.inference_mode(): assert np.array_equal(m, ens.masks(x)[0].numpy()*255)

def test_vote_ensemble(ens):
    vote = dark_ensemble(n=3, merge='vote')
    a = np.asarray(predict_mask(vote, photo()))
    assert a.shape == (96, 144) and np.array_equal(a > 127, np.asarray(predict_mask(ens, photo())) > 127)

def test_exif_rotated_photo_same_cutout(ens, tmp_path):
    up = photo()
    want = np.asarray(cutout(ens, up))
    for tag, stored in [(3, Image.Transpose.ROTATE_180), (6, Image.Transpose.ROTATE_90), (8, Image.Transpose.ROTATE_270)]:
        exif = Image.Exif(); exif[0x0112] = tag
        Image.fromarray(up).transpose(stored).save(tmp_path/f'o{tag}.png', exif=exif.tobytes())
        assert np.array_equal(np.asarray(cutout(ens, tmp_path/f'o{tag}.png')), want), tag
        assert np.array_equal(np.asarray(cutout(ens, Image.open(tmp_path/f'o{tag}.png'))), want), tag

def test_portrait_vs_rotated_landscape(ens):
    "A portrait photo (the landscape one turned a quarter) is fed tall, not squashed; turned back, the maps agree."
    seen = []
    hook = ens.members[0].model.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape[-2:])))
    try:
        land = np.asarray(predict_mask(ens, photo(64, 144), alpha='hard')) > 0
        port = np.asarray(predict_mask(ens, np.rot90(photo(64, 144)).copy(), alpha='hard')) > 0
    finally: hook.remove()
    assert seen == [(32, 64)]*2 + [(64, 32)]*2
    assert port.shape == (144, 64) and dice(np.rot90(port, -1), land) > 0.99

def test_unet_takes_aspect_sizes():
    "A real U-Net member (trained landscape, 32x48) runs at the portrait and square sizes `aspect_size` picks."
    from carvana_fastai.unet import carvana_unet
    model = carvana_unet(body='scratch', img_size=(32, 48), pretrained=False).eval()
    e = load_ensemble([(model, dict(stats=STATS, size=(32, 48)))], tta='none', device='cpu')
    for shape in [(150, 100), (120, 120), (64, 96)]:
        assert cutout(e, photo(*shape)).size == shape[::-1]

def test_aspect_size():
    assert aspect_size((448, 672), (1280, 1918)) == (448, 672) and aspect_size((448, 672), (1918, 1280)) == (672, 448)
    h, w = aspect_size((448, 672), (4032, 3024))
    assert (h % 32, w % 32) == (0, 0) and abs(h*w/(448*672) - 1) < 0.05 and abs(h/w - 4/3) < 0.05

@pytest.mark.parametrize('bg,corner', [(None, None), ('white', (255, 255, 255)), ('#203040', (32, 48, 64)), ((1, 2, 3), (1, 2, 3)),
                                       ('image', (0, 200, 0)), ('pil', (0, 0, 200)), ('blur', (230, 230, 225))])
def test_backgrounds(ens, tmp_path, bg, corner):
    if bg == 'image': Image.new('RGB', (300, 20), (0, 200, 0)).save(tmp_path/'bg.jpg', quality=100); bg = tmp_path/'bg.jpg'
    if bg == 'pil': bg = Image.new('RGB', (10, 10), (0, 0, 200))
    up = photo()
    c = cutout(ens, up, background=bg)
    a = np.asarray(predict_mask(ens, up))
    assert c.size == (144, 96) and c.mode == ('RGBA' if bg is None else 'RGB')
    px = np.asarray(c).astype(int)
    assert np.array_equal(px[..., :3][a == 255], up[a == 255])                  # the car keeps its colours
    if bg is None: assert np.array_equal(px[..., 3], a)
    else:
        assert np.abs(px[0, 0] - corner).max() <= 2
        d = np.abs(px[a == 0] - px[0, 0])                                         # where the car is not: the background
        assert (d.mean() < 5 and d.max() < 100) if str(bg) == 'blur' else d.max() <= 2

def test_background_image_covers(ens):
    "A background image of another aspect ratio is resized to cover the photo and center-cropped (not stretched)."
    stripes = np.zeros((100, 100, 3), np.uint8); stripes[:, :50] = 255                # white left half, black right
    c = np.asarray(cutout(ens, photo(), background=Image.fromarray(stripes)))
    assert (c[0, 0] == 255).all() and (c[0, -1] == 0).all() and (c[0, 66] == 255).all() and (c[0, 78] == 0).all()

def test_bad_background(ens):
    with pytest.raises(ValueError, match='is not a colour'): cutout(ens, photo(), background='no-such-colour')
    with pytest.raises(ValueError, match='3 ints'): cutout(ens, photo(), background=(1, 2, 300))

def test_mask_only(ens):
    m = cutout(ens, photo(), mask_only=True)
    assert (m.mode, m.size) == ('L', (144, 96))
    assert np.array_equal(np.asarray(m), np.asarray(cutout(ens, photo()))[..., 3])
    assert set(np.unique(np.asarray(cutout(ens, photo(), mask_only=True, alpha='hard')))) == {0, 255}

def test_decontaminate_removes_halo():
    "A silver car (0.6) on a white wall (1.0): edge pixels come out the car's grey, not lighter."
    H, W = 40, 200
    ramp = torch.zeros(1, H, W); ramp[..., 100:] = 1; ramp[..., 97:103] = torch.linspace(0, 1, 8)[1:-1]
    a8 = (ramp*255).round().to(torch.uint8)
    I8 = ((a8/255*0.6 + (1 - a8/255))*255).round().to(torch.uint8).expand(3, H, W)
    edge = ((a8 > 0) & (a8 < 255)).expand(3, H, W)
    assert (estimate_foreground(I8, a8)[edge] - 0.6).abs().max() < 0.03
    plain, clean = (np.asarray(composite(I8, a8, 'black', decontaminate=d)).astype(int) for d in (False, True))
    assert (plain[edge.permute(1, 2, 0).numpy()] > clean[edge.permute(1, 2, 0).numpy()]).all()  # no light rim on black

@pytest.mark.parametrize('mode', ['L', 'I;16', 'CMYK', 'P', 'RGBA', 'LA', '1'])
def test_photo_modes(ens, mode, tmp_path):
    im = Image.fromarray(photo())
    im = Image.fromarray(np.asarray(im.convert('L')).astype(np.uint16)*257) if mode == 'I;16' else im.convert(mode)
    fn = tmp_path/('x.tif' if mode == 'CMYK' else 'x.png')
    im.save(fn)
    for src in (im, fn):
        r = load_photo(src)
        assert (r.mode, r.size) == ('RGB', (144, 96))
        assert cutout(ens, src).size == (144, 96)
    if mode in ('L', 'I;16'): assert np.abs(np.asarray(load_photo(fn)).astype(int)[..., 0] - np.asarray(Image.fromarray(photo()).convert('L'))).max() <= 1

def test_photo_limit(tmp_path, ens):
    (tmp_path/'bomb.png').write_bytes(png_header(20000, 20000))
    (tmp_path/'big.png').write_bytes(png_header(10000, 6000))
    with pytest.raises(PhotoError, match=r'bomb.png: 400.0 MP, over the limit of 50 MP'): load_photo(tmp_path/'bomb.png')
    with pytest.raises(PhotoError, match=r'big.png: 10000x6000 is 60.0 MP, over the limit of 50 MP'): cutout(ens, tmp_path/'big.png')
    with pytest.raises(PhotoError, match='over the limit of 0.01 MP'): cutout(ens, photo(), max_pixels=10_000)
    assert cutout(ens, photo(), max_pixels=20_000).size == (144, 96) and MAX_PIXELS == 50_000_000

# --- folders -----------------------------------------------------------------------------------------------------------

@pytest.fixture
def photos(tmp_path):
    "Five good photos of two sizes, and four bad files."
    d = tmp_path/'photos'; d.mkdir()
    for k in range(3): Image.fromarray(photo(96, 144, car=(60 + 20*k, 70, 80))).save(d/f'car{k}.png')
    Image.fromarray(photo(64, 96)).save(d/'small.jpg', quality=95)
    Image.fromarray(photo(150, 100)).save(d/'tall.jpg', quality=95)
    (d/'empty.jpg').write_bytes(b'')
    (d/'notes.jpg').write_text('not a photo')
    (d/'cut.jpg').write_bytes((d/'small.jpg').read_bytes()[:500])
    (d/'bomb.png').write_bytes(png_header(20000, 20000))
    (d/'readme.txt').write_text('not listed')
    return d

GOOD = ['car0', 'car1', 'car2', 'small', 'tall']
BAD = {'empty.jpg': 'empty file', 'notes.jpg': 'not an image', 'cut.jpg': 'cannot decode', 'bomb.png': 'over the limit'}

def no_tmp(out): return not [f for f in Path(out).iterdir() if f.name.startswith('.')]

def test_folder_writes_and_reports_bad_files(ens, photos, tmp_path, capsys):
    r = cutout_folder(ens, photos, tmp_path/'out', bs=3)
    assert (r['images'], r['written'], r['skipped']) == (9, 5, 0) and r['images_per_s'] > 0 and r['seconds'] > 0
    assert {Path(k).name: v for k, v in r['failed'].items()}.keys() == BAD.keys()
    for k, v in r['failed'].items(): assert BAD[Path(k).name] in v
    assert sorted(f.stem for f in (tmp_path/'out').iterdir()) == GOOD and no_tmp(tmp_path/'out')
    for s in GOOD:
        src = next(photos.glob(s + '.*'))
        assert np.array_equal(np.asarray(Image.open(tmp_path/'out'/f'{s}.png')), np.asarray(cutout(ens, src)))
    cap = capsys.readouterr()
    for name in BAD: assert any(line.startswith(str(photos/name)) for line in cap.err.splitlines()), name
    assert '5 written, 0 skipped (done before), 4 failed, of 9 photos' in cap.out and 'photos/s' in cap.out

def test_folder_resume_skips(ens, photos, tmp_path):
    out = tmp_path/'out'
    cutout_folder(ens, [photos/'car0.png', photos/'small.jpg'], out, progress=False)
    before = {f.name: f.stat().st_mtime_ns for f in out.iterdir()}
    r = cutout_folder(ens, photos, out, resume=True, progress=False)
    assert (r['written'], r['skipped'], len(r['failed'])) == (3, 2, 4)
    assert all(out.joinpath(n).stat().st_mtime_ns == t for n, t in before.items())
    r = cutout_folder(ens, photos, out, resume=True, progress=False)
    assert (r['written'], r['skipped']) == (0, 5)

def test_folder_inputs_glob_list_and_duplicate_stems(ens, photos, tmp_path):
    r = cutout_folder(ens, str(photos/'car*.png'), tmp_path/'a', progress=False)
    assert r['written'] == 3 and not r['failed']
    Image.fromarray(photo()).save(photos/'car0.jpg')
    r = cutout_folder(ens, [photos/'car0.png', photos/'car0.jpg', photos/'tall.jpg'], tmp_path/'b', progress=False)
    assert r['written'] == 2 and list(r['failed'].values()) == [f'same output car0.png as {photos/"car0.png"}']
    with pytest.raises(UsageError, match='no photos'): cutout_folder(ens, tmp_path/'a'/'*.jpg', tmp_path/'c')

def test_folder_formats_backgrounds_masks(ens, photos, tmp_path):
    for kw, ext, mode in [(dict(format='jpg', background='white'), '.jpg', 'RGB'), (dict(format='webp'), '.webp', 'RGBA'),
                          (dict(format='webp', background='blur'), '.webp', 'RGB'), (dict(mask_only=True), '.png', 'L')]:
        out = tmp_path/f"o{len(list(tmp_path.iterdir()))}"
        r = cutout_folder(ens, photos/'car*.png', out, progress=False, **kw)
        assert r['written'] == 3, kw
        for f in out.iterdir():
            assert f.suffix == ext and Image.open(f).mode == mode and Image.open(f).size == (144, 96), (kw, f)
    with pytest.raises(UsageError, match='JPEG cannot hold transparency'): cutout_folder(ens, photos, tmp_path/'j', format='jpg')
    with pytest.raises(UsageError, match="unknown format 'gif'"): cutout_folder(ens, photos, tmp_path/'j', format='gif')
    with pytest.raises(UsageError, match='is not a colour'): cutout_folder(ens, photos, tmp_path/'j', background='nope')

# --- the edge clean-up on tiles against the whole-box version it replaced -----------------------------------------------

def _reference_foreground(img, alpha, radii=None):
    "The previous `estimate_foreground`: large-radius means over the whole photo, the small-radius pass over the band's box."
    from carvana_fastai.cutout import smooth, _radii
    def fuse(I, a, mf, mb, fg, bg, r):
        if mf is None:
            ba = smooth(a, r)
            mf, mb = smooth(fg*a, r) / (ba + 1e-5), smooth(bg*(1 - a), r) / (1 - ba + 1e-5)
        return (mf + a*(I - a*mf - (1 - a)*mb)).clamp_(0, 1), mb
    I, a = img.float()/255, alpha.float()/255
    frac = (alpha[0] > 0) & (alpha[0] < 255)
    if not frac.any(): return I
    r1, r2 = radii or _radii(I.shape[-2:])
    Ia, ba = I*a, smooth(a, r1)
    mf, mb = smooth(Ia, r1) / (ba + 1e-5), smooth(I - Ia, r1) / (1 - ba + 1e-5)
    rows, cols = frac.any(1).nonzero()[:, 0], frac.any(0).nonzero()[:, 0]
    H, W = frac.shape
    box = (slice(None), slice(max(0, int(rows[0]) - r2), min(H, int(rows[-1]) + r2 + 1)),
           slice(max(0, int(cols[0]) - r2), min(W, int(cols[-1]) + r2 + 1)))
    Ic, ac = I[box], a[box]
    fg, bg = fuse(Ic, ac, mf[box], mb[box], None, None, r1)
    out = I.clone()
    out[box] = fuse(Ic, ac, None, None, fg, bg, r2)[0]
    return torch.where(frac, out, I)

def _blob(H, W, seed=0):
    "A soft random blob (uint8 alpha (1,H,W)) and a random uint8 photo (3,H,W)."
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(H).float(), torch.arange(W).float(), indexing='ij')
    noise = F.interpolate(torch.rand(1, 1, 7, 9, generator=g), (H, W), mode='bilinear')[0, 0]
    blob = (yy - H*.5)**2/(H*.3)**2 + (xx - W*.45)**2/(W*.35)**2
    a8 = ((1.1 - blob - .3*noise)*4).clamp(0, 1).mul(255).round().to(torch.uint8)[None]
    return torch.randint(0, 256, (3, H, W), generator=g, dtype=torch.uint8), a8

@pytest.mark.parametrize('shape', [(97, 131), (150, 61), (333, 517), (41, 1283)])
@pytest.mark.parametrize('radii', [None, (20, 3), (24, 5), (9, 2)])
def test_tiled_clean_up_matches_reference_on_blob(shape, radii):
    img, a8 = _blob(*shape)
    assert ((a8 > 0) & (a8 < 255)).sum() > 100
    assert (estimate_foreground(img, a8, radii) - _reference_foreground(img, a8, radii)).abs().max() < 1e-3

@pytest.mark.parametrize('shape', [(41, 203), (40, 200), (257, 129)])
def test_tiled_clean_up_matches_reference_on_edge(shape):
    "The synthetic silver-car edge (a vertical soft ramp that touches the top and bottom borders), odd sizes."
    H, W = shape; c = W//2
    ramp = torch.zeros(1, H, W); ramp[..., c:] = 1; ramp[..., c - 3:c + 3] = torch.linspace(0, 1, 8)[1:-1]
    a8 = (ramp*255).round().to(torch.uint8)
    I8 = ((a8/255*0.6 + (1 - a8/255))*255).round().to(torch.uint8).expand(3, H, W).contiguous()
    assert (estimate_foreground(I8, a8) - _reference_foreground(I8, a8)).abs().max() < 1e-3

def test_composite_matches_reference():
    "RGBA and RGB composites equal those of the reference clean-up (at most 1 level off where rounding flips)."
    img, a8 = _blob(97, 131, seed=1)
    fg = _reference_foreground(img, a8)
    want = torch.cat([fg.mul(255).round().clamp(0, 255).to(torch.uint8), a8]).permute(1, 2, 0).numpy()
    got = np.asarray(composite(img, a8))
    assert np.abs(got.astype(int) - want).max() <= 1 and np.array_equal(got[..., 3], a8[0].numpy())
    a = a8.float()/255
    want = (fg*a + torch.tensor([.2, .4, .6]).view(3, 1, 1)*(1 - a)).mul(255).round().clamp(0, 255).permute(1, 2, 0).numpy()
    assert np.abs(np.asarray(composite(img, a8, (51, 102, 153))).astype(int) - want).max() <= 1
    no_band = torch.full_like(a8, 255)
    assert np.array_equal(np.asarray(composite(img, no_band))[..., :3], img.permute(1, 2, 0).numpy())

@pytest.mark.parametrize('mode,shape', [('L', (37, 23)), ('RGB', (5, 7, 3)), ('RGBA', (19, 11, 4)), ('RGBA', (1, 1, 4))])
def test_png_writer_round_trips(tmp_path, mode, shape):
    arr = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    cutout_mod._save(Image.fromarray(arr, mode), tmp_path/'x.png', 'png')
    with Image.open(tmp_path/'x.png') as im: assert im.mode == mode and np.array_equal(np.asarray(im), arr)

def test_unwritable_out_folder(ens, photos, tmp_path):
    (tmp_path/'file').write_text('x')
    with pytest.raises(UsageError, match='not writable'): cutout_folder(ens, photos, tmp_path/'file'/'out')

def test_disk_full_mid_run(ens, photos, tmp_path, monkeypatch, capsys):
    "The disk fills up while car1 is written: car1 fails with one line, nothing half-written is left, the rest are written."
    save = cutout_mod._save
    def disk_full(im, path, format):
        if 'car1' in path.name: Path(path).write_bytes(b'half a file'); raise OSError(errno.ENOSPC, 'No space left on device')
        return save(im, path, format)
    monkeypatch.setattr(cutout_mod, '_save', disk_full)
    r = cutout_folder(ens, photos/'car*.png', tmp_path/'out', background='#fff', format='jpg')
    assert r['written'] == 2 and r['failed'] == {str(photos/'car1.png'): 'OSError: [Errno 28] No space left on device'}
    assert sorted(f.name for f in (tmp_path/'out').iterdir()) == ['car0.jpg', 'car2.jpg']
    assert f"{photos/'car1.png'}: OSError: [Errno 28] No space left on device" in capsys.readouterr().err

def test_folder_with_workers(ens, photos, tmp_path):
    "Decoding in DataLoader worker processes gives the same files as decoding in a thread."
    a = cutout_folder(ens, photos, tmp_path/'a', workers=0, bs=2, progress=False)
    b = cutout_folder(ens, photos, tmp_path/'b', workers=1, bs=2, progress=False)
    assert a['written'] == b['written'] == 5 and a['failed'].keys() == b['failed'].keys()
    for f in (tmp_path/'a').iterdir(): assert f.read_bytes() == (tmp_path/'b'/f.name).read_bytes()

@pytest.fixture(scope='module')
def onnx_ens(tmp_path_factory):
    "The 2-member dark ensemble (hflip TTA) exported to ONNX and run by onnxruntime, with its torch original."
    pytest.importorskip('onnxruntime'); pytest.importorskip('onnxscript')
    from carvana_fastai.export import export_onnx, OnnxEnsemble
    ens = load_ensemble([(dark_model(k), dict(stats=STATS, size=s)) for k, s in ((40., (32, 48)), (30., (40, 60)))],
                        tta='hflip', device='cpu')
    return ens, OnnxEnsemble(export_onnx(ens, tmp_path_factory.mktemp('onnx')/'dark.onnx'))

def test_onnx_engine_cutout_matches_torch(onnx_ens, photos, tmp_path):
    "On a landscape photo at the members' aspect ratio the ONNX cut-out is the torch one but for rounding; folders work too."
    from carvana_fastai.cutout import per_member
    ens, ox = onnx_ens
    assert per_member(ens) and not per_member(ox)
    up = photo(96, 144)
    a, b = (np.asarray(cutout(e, up)).astype(float) for e in (ens, ox))
    assert a.shape == b.shape == (96, 144, 4)
    assert np.abs(a[..., 3] - b[..., 3]).mean() < 0.1 and np.abs(a - b).max() <= 8
    h = np.asarray(predict_mask(ox, up, alpha='hard'))
    assert (h != np.asarray(predict_mask(ens, up, alpha='hard'))).mean() < 0.005
    r = cutout_folder(ox, photos, tmp_path/'out', progress=False)
    assert r['written'] == len(GOOD) and sorted(r['failed']) == sorted(str(photos/f) for f in BAD)
    with pytest.raises(ValueError, match='exported with TTA'): cutout(ox, up, tta=False)
