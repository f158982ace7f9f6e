"""The `serve` page in a real headless Chromium (Debian's `chromium`, driven by Playwright; no browser is downloaded):
open the page, upload photos, wait for the cut-outs, read their pixels back, see a bad file's message, save a screenshot.

Skipped, with the reason, only where Playwright or Chromium is missing (`.ci/run` installs Chromium with apt).
`docs/serve.png` is this test's screenshot with a trained model and real photos:

    SERVE_MODELS=runs/demo-*/models/lite0-concat/model.pth SERVE_PHOTOS='runs/demo-*/data/test/*_01.jpg' \\
    SERVE_SCREENSHOT=docs/serve.png python -m pytest tests/test_browser.py
"""
import glob, os, signal
from pathlib import Path
import numpy as np, pytest
from PIL import Image
pytest.importorskip('fastapi', reason="the serve extra is not installed: pip install -e '.[serve]'")
from test_serve import Server, tiny_checkpoint, photo
from conftest import save_screenshot   # the `browser` fixture is conftest's too

def _globbed(var):
    return sorted(Path(f) for p in os.environ.get(var, '').split(os.pathsep) if p for f in glob.glob(os.path.expanduser(p)))

@pytest.fixture(scope='module')
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp('browser')
    models = _globbed('SERVE_MODELS') or [tiny_checkpoint(d/'tiny.pth')]
    s = Server(models, d, '--tta', 'hflip')
    yield s.wait()
    s.stop(signal.SIGKILL)

JS_PIXELS = """img => {
  const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
  const g = c.getContext('2d'); g.drawImage(img, 0, 0);
  const d = g.getImageData(0, 0, c.width, c.height).data;
  let clear = 0, part = 0, opaque = 0;
  for (let i = 3; i < d.length; i += 4) { if (d[i] === 0) clear++; else if (d[i] === 255) opaque++; else part++; }
  return {w: c.width, h: c.height, clear, part, opaque};
}"""

def test_page_cuts_out_photos(browser, server, tmp_path):
    photos = _globbed('SERVE_PHOTOS')
    if not photos:
        photos = [tmp_path/'car_a.jpg', tmp_path/'car_b.png']
        photo(120, 180).save(photos[0], quality=92); photo(90, 160, seed=1).save(photos[1])
    page = browser.new_page(viewport={'width': 1000, 'height': 760})
    errors = []
    page.on('pageerror', lambda e: errors.append(str(e)))
    page.goto(server.url + '/')
    page.wait_for_function("document.querySelector('#models').textContent.startsWith('models:')", timeout=20_000)
    assert 'cpu' in page.inner_text('#models')

    page.set_input_files('#files', [str(p) for p in photos])
    page.wait_for_function(f"document.querySelectorAll('.card[data-state=done]').length === {len(photos)}", timeout=120_000)
    cards = page.query_selector_all('.card')                          # the newest first
    for card, p in zip(cards, reversed(photos)):
        px = card.query_selector('img.cutout').evaluate(JS_PIXELS)
        w, h = Image.open(p).size
        assert (px['w'], px['h']) == (w, h), (p, px)
        assert px['clear'] + px['part'] > 0, f"no transparency in the cut-out of {p.name}: {px}"
        assert card.query_selector('a.download').get_attribute('download') == p.stem + '.png'
        assert card.query_selector('.time').inner_text().endswith(' s)')
    page.screenshot(path=str(tmp_path/'serve.png'))
    assert (tmp_path/'serve.png').stat().st_size > 1000
    if os.environ.get('SERVE_SCREENSHOT'): save_screenshot(page, os.environ['SERVE_SCREENSHOT'])

    page.check('input[name=alpha][value=hard]')                       # a new option re-runs every photo
    page.wait_for_function(f"document.querySelectorAll('.card[data-state=done]').length === {len(photos)}", timeout=120_000)
    px = page.query_selector('.card img.cutout').evaluate(JS_PIXELS)
    assert px['part'] == 0 and px['clear'] > 0, px

    (tmp_path/'notes.txt').write_text('not a photo')
    page.set_input_files('#files', str(tmp_path/'notes.txt'))
    page.wait_for_selector('.card[data-state=error]', timeout=30_000)
    assert 'not an image' in page.inner_text('.card[data-state=error] .error')
    assert not errors, errors

def test_ctrl_c_is_a_clean_shutdown(server):
    "The last test: Ctrl-C (SIGINT) stops the server with exit code 0."
    assert server.stop(signal.SIGINT) == 0 and 'serve: stopped' in server.output()
