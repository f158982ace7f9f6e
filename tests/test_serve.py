"""`serve` as a user runs it: `python -m carvana_fastai.run serve` in a subprocess on a free 127.0.0.1 port with a tiny
checkpoint, called over real HTTP: cut-outs, masks, health, every kind of bad input, concurrent clients, shutdown."""
import io, os, signal, socket, subprocess, sys, threading, time
from pathlib import Path
import numpy as np, pytest
from PIL import Image, ImageDraw
pytest.importorskip('fastapi', reason="the serve extra is not installed: pip install -e '.[serve]'")
httpx = pytest.importorskip('httpx')
from carvana_fastai import __version__
from carvana_fastai.serve import free_port

ENV = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONWARNINGS='ignore')
ENV.pop('CARVANA_DEBUG', None)
MAX_PIXELS, MAX_BYTES = 1_000_000, 3_000_000

def tiny_checkpoint(path, size=(32, 48), seed=0):
    "A checkpoint of an untrained scratch U-Net, as training writes it."
    import torch
    from carvana_fastai.unet import carvana_unet
    from carvana_fastai.checkpoint import atomic_save, CKPT_FORMAT, CKPT_VERSION
    torch.manual_seed(seed)
    model = carvana_unet(body='scratch', img_size=size, pretrained=False).eval()
    ck = dict(format=CKPT_FORMAT, version=CKPT_VERSION, model=model.state_dict(), config=model.config,
              stats=([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]), size=size, plan=None, stage=0, epoch=0, opt=None,
              history=[], carvana_fastai=__version__)
    atomic_save(ck, path)
    return Path(path)

class Server:
    "`python -m carvana_fastai.run serve ...` on a free port of 127.0.0.1, its output in `log`."
    def __init__(self, models, folder, *args, env=None):
        self.port, self.log = free_port(), Path(folder)/'server.log'
        self.url = f'http://127.0.0.1:{self.port}'
        cmd = [sys.executable, '-m', 'carvana_fastai.run', 'serve', '--models', *map(str, models), '--port', str(self.port),
               '--device', 'cpu', *map(str, args)]
        with open(self.log, 'w') as f:
            self.proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env={**ENV, **(env or {})})

    def output(self): return self.log.read_text()

    def wait(self, timeout=120):
        "Wait until `/health` answers; fail with the server's output if it exits or takes too long."
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None: pytest.fail(f"the server exited with {self.proc.returncode}:\n{self.output()[-3000:]}")
            try:
                if httpx.get(self.url + '/health', timeout=2).status_code == 200: return self
            except httpx.HTTPError: pass
            time.sleep(0.2)
        self.stop(); pytest.fail(f"the server did not answer within {timeout} s:\n{self.output()[-3000:]}")

    def stop(self, sig=signal.SIGTERM, timeout=30):
        "Send `sig` and return the exit code (killed after `timeout` s)."
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try: self.proc.wait(timeout)
            except subprocess.TimeoutExpired: self.proc.kill(); self.proc.wait()
        return self.proc.returncode

def photo(h=97, w=131, seed=0):
    "An RGB photo: a dark car-like shape on a light, slightly noisy wall."
    rng = np.random.default_rng(seed)
    im = Image.fromarray((225 + rng.integers(0, 20, (h, w, 3))).astype(np.uint8)); d = ImageDraw.Draw(im)
    d.rounded_rectangle([w*.12, h*.45, w*.88, h*.78], radius=h*.08, fill=(60, 70, 80))
    d.polygon([(w*.3, h*.46), (w*.4, h*.25), (w*.65, h*.25), (w*.75, h*.46)], fill=(60, 70, 80))
    return im

def encoded(im, format='JPEG', **kw):
    b = io.BytesIO(); im.save(b, format=format, **kw); return b.getvalue()

def png_header(w, h):
    "A PNG that declares `w`x`h` pixels and holds none (a decompression bomb's header)."
    import struct, zlib
    ihdr = b'IHDR' + struct.pack('>IIBBBBB', w, h, 8, 2, 0, 0, 0)
    return b'\x89PNG\r\n\x1a\n' + struct.pack('>I', 13) + ihdr + struct.pack('>I', zlib.crc32(ihdr)) + b'\0\0\0\0IEND\xaeB`\x82'

def image(r): return Image.open(io.BytesIO(r.content))

@pytest.fixture(scope='module')
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp('serve')
    (d/'tmp').mkdir()
    s = Server([tiny_checkpoint(d/'tiny.pth')], d, '--tta', 'hflip', '--max-pixels', MAX_PIXELS, '--max-bytes', MAX_BYTES,
               '--workers', 2, env=dict(TMPDIR=str(d/'tmp')))
    s.tmp = d/'tmp'
    yield s.wait()
    s.stop(signal.SIGKILL)

@pytest.fixture(scope='module')
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c: yield c

# --- the answers ------------------------------------------------------------------------------------------------------

def test_health(client, server):
    h = client.get('/health').json()
    assert h['status'] == 'ok' and h['version'] == __version__ and h['device'] == 'cpu'
    assert h['models'][0].endswith('tiny.pth') and h['members'][0]['size'] == [32, 48] and h['max_pixels'] == MAX_PIXELS
    assert 'http://127.0.0.1:' in server.output()

def test_cutout_multipart_is_rgba_at_photo_size(client):
    r = client.post('/cutout', files={'file': ('car.jpg', encoded(photo()), 'image/jpeg')})
    assert r.status_code == 200 and r.headers['content-type'] == 'image/png' and float(r.headers['x-seconds']) > 0
    im = image(r)
    assert (im.format, im.mode, im.size) == ('PNG', 'RGBA', (131, 97))
    a = np.asarray(im)[..., 3]
    assert ((a > 0) & (a < 255)).any()                       # soft: an untrained model is unsure everywhere

def test_cutout_raw_body_hard_alpha(client):
    r = client.post('/cutout?alpha=hard', content=encoded(photo(64, 200), 'PNG'), headers={'content-type': 'image/png'})
    im = image(r)
    assert (im.mode, im.size) == ('RGBA', (200, 64)) and set(np.unique(np.asarray(im)[..., 3])) <= {0, 255}

def test_composites_and_formats(client):
    r = client.post('/cutout', files={'file': ('car.png', encoded(photo(), 'PNG'), 'image/png')}, data={'background': 'white', 'format': 'jpg'})
    assert r.headers['content-type'] == 'image/jpeg' and (image(r).format, image(r).mode, image(r).size) == ('JPEG', 'RGB', (131, 97))
    r = client.post('/cutout', params={'background': 'blur', 'format': 'webp', 'tta': 'false'}, content=encoded(photo()))
    assert r.headers['content-type'] == 'image/webp' and (image(r).mode, image(r).size) == ('RGB', (131, 97))
    r = client.post('/cutout', params={'mask_only': 'true'}, content=encoded(photo()))
    assert (image(r).mode, image(r).size) == ('L', (131, 97))

def test_mask_is_the_cutouts_alpha(client):
    jpg = encoded(photo())
    m = client.post('/mask', content=jpg)
    assert m.headers['content-type'] == 'image/png' and (image(m).mode, image(m).size) == ('L', (131, 97))
    c = client.post('/cutout', files={'file': ('car.jpg', jpg, 'image/jpeg')})
    assert np.array_equal(np.asarray(image(m)), np.asarray(image(c))[..., 3])
    hard = np.asarray(image(client.post('/mask', params={'alpha': 'hard'}, files={'file': ('car.jpg', jpg)})))
    assert set(np.unique(hard)) <= {0, 255}

def test_page_and_docs(client):
    page = client.get('/')
    assert page.status_code == 200 and 'text/html' in page.headers['content-type'] and 'type="file"' in page.text
    spec = client.get('/openapi.json').json()
    assert {'/cutout', '/mask', '/health'} <= set(spec['paths'])
    assert 'background' in {p['name'] for p in spec['paths']['/cutout']['post']['parameters']}
    assert client.get('/docs').status_code == 200

def test_large_upload_leaves_no_file(client, server):
    "A multipart photo over 1 MB is spooled to an anonymous temporary file, gone when the request ends."
    big = encoded(Image.fromarray(np.random.default_rng(0).integers(0, 256, (600, 700, 3), dtype=np.uint8)), 'PNG', compress_level=0)
    assert len(big) > 1_100_000
    r = client.post('/mask', files={'file': ('noise.png', big, 'image/png')})
    assert r.status_code == 200 and image(r).size == (700, 600)
    assert list(server.tmp.iterdir()) == []

# --- bad input: 4xx with one line, and the server goes on ---------------------------------------------------------------

def _chunks(n, size=65536):
    for _ in range(0, n, size): yield b'\0'*size

BAD = [('not an image', dict(content=b'hello, I am a text file'), 400, 'not an image'),
       ('truncated JPEG', dict(content=encoded(photo(300, 400))[:3000]), 400, 'cannot decode'),
       ('empty body', dict(content=b''), 400, 'empty body'),
       ('multipart without a file', dict(data={'alpha': 'hard'}, files={'x': (None, 'y')}), 400, 'without a file'),
       ('over the pixel limit', dict(content=encoded(Image.new('RGB', (1200, 1000)), 'PNG')), 413, 'over the limit'),
       ('decompression bomb', dict(content=png_header(40000, 40000)), 413, '1600.0 MP, over'),
       ('bomb under PIL\'s limit', dict(content=png_header(9000, 9000)), 413, '81.0 MP, over the limit of 1 MP'),
       ('over the size limit', dict(content=b'\0'*(MAX_BYTES + 1)), 413, 'over the limit of 3,000,000 bytes'),
       ('over the size limit, chunked', dict(content=_chunks(MAX_BYTES + 70000)), 413, 'over the limit'),
       ('unknown alpha', dict(params={'alpha': 'sofft'}, content=encoded(photo())), 400, "did you mean 'soft'"),
       ('unknown option', dict(params={'backgroud': 'white'}, content=encoded(photo())), 400, "unknown option 'backgroud'"),
       ('unknown background', dict(data={'background': '/etc/passwd'}, files={'file': ('a.jpg', encoded(photo()))}), 400, 'background must be'),
       ('jpg without background', dict(params={'format': 'jpg'}, content=encoded(photo())), 400, 'cannot hold transparency'),
       ('threshold out of range', dict(params={'threshold': '2'}, content=encoded(photo())), 400, 'threshold must be')]

@pytest.mark.parametrize('what,req,status,reason', BAD, ids=[b[0] for b in BAD])
def test_bad_input(client, what, req, status, reason):
    r = client.post('/cutout', **req)
    assert r.status_code == status, (what, r.status_code, r.text[:300])
    err = r.json()['error']
    assert reason in err and '\n' not in err, err
    assert client.get('/health').status_code == 200

def test_wrong_path_and_method(client):
    assert client.get('/cutout').status_code == 405 and 'error' in client.get('/cutout').json()
    assert client.post('/nowhere', content=b'x').status_code == 404

# --- concurrency and the command ----------------------------------------------------------------------------------------

def test_concurrent_clients(server):
    "Two clients at once, each several photos: every answer right (the same as alone), /health answering meanwhile."
    jpgs = [encoded(photo(97 + 8*i, 131 + 16*i, seed=i)) for i in range(3)]
    with httpx.Client(base_url=server.url, timeout=60) as c:
        want = [np.asarray(image(c.post('/mask', content=j))) for j in jpgs]
    got, errors = {}, []
    def client_run(k):
        try:
            with httpx.Client(base_url=server.url, timeout=60) as c:
                for i, j in enumerate(jpgs * 2): got[k, i] = (i % 3, c.post('/mask', content=j))
        except Exception as e: errors.append(e)
    ts = [threading.Thread(target=client_run, args=(k,)) for k in range(2)]
    for t in ts: t.start()
    with httpx.Client(base_url=server.url, timeout=60) as c: health = [c.get('/health').status_code for _ in range(3)]
    for t in ts: t.join(120)
    assert not errors and len(got) == 12 and health == [200]*3
    for i, r in got.values(): assert r.status_code == 200 and np.array_equal(np.asarray(image(r)), want[i])

def test_port_in_use(tmp_path, server):
    r = subprocess.run([sys.executable, '-m', 'carvana_fastai.run', 'serve', '--models', next(Path(server.log.parent).glob('*.pth')),
                        '--port', str(server.port)], capture_output=True, text=True, env=ENV, timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and 'cannot listen on 127.0.0.1' in r.stderr, r.stderr

def test_sigterm_is_a_clean_shutdown(server):
    "The last test: SIGTERM stops the shared server with exit code 0."
    assert server.stop(signal.SIGTERM) == 0
    assert 'serve: stopped' in server.output() and 'Traceback' not in server.output()

# --- the ONNX engine --------------------------------------------------------------------------------------------------

def test_serve_onnx_engine(tmp_path):
    "`serve --engine onnx` with an exported graph: /health names the engine and members, cut-outs at the photo's size."
    pytest.importorskip('onnxruntime'); pytest.importorskip('onnxscript')
    from carvana_fastai.export import export_onnx
    from carvana_fastai.ensemble import load_ensemble
    f = export_onnx(load_ensemble([str(tiny_checkpoint(tmp_path/'tiny.pth'))], tta='hflip', device='cpu'), tmp_path/'tiny.onnx')
    s = Server([f], tmp_path, '--engine', 'onnx').wait()
    try:
        with httpx.Client(base_url=s.url, timeout=60) as c:
            h = c.get('/health').json()
            assert (h['engine'], h['device'], h['models']) == ('onnx', 'cpu', [str(f)])
            assert h['members'] == [dict(name=h['members'][0]['name'], size=[32, 48], tta=['identity', 'hflip'])]
            r = c.post('/cutout', files={'file': ('car.jpg', encoded(photo()), 'image/jpeg')})
            assert r.status_code == 200 and (image(r).mode, image(r).size) == ('RGBA', (131, 97))
            r = c.post('/mask?tta=false', content=encoded(photo()))
            assert r.status_code == 400 and 'exported with TTA' in r.json()['error']
    finally: s.stop()
