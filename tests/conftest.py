import io, os, shutil
from pathlib import Path
import pytest
os.environ.setdefault('MPLBACKEND', 'Agg')

def pytest_addoption(parser):
    parser.addoption('--runslow', action='store_true', default=False, help='run tests marked slow')

def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: slow test, run only with --runslow')

def pytest_collection_modifyitems(config, items):
    if config.getoption('--runslow'): return
    skip = pytest.mark.skip(reason='slow: pass --runslow to run')
    for item in items:
        if 'slow' in item.keywords: item.add_marker(skip)

@pytest.fixture(scope='session')
def tiny_carvana(tmp_path_factory):
    "A synthetic dataset in the Carvana layout: 6 train cars x 4 views, 1 test car, 64x96 pixels."
    from carvana_fastai.synth import make_synthetic_carvana
    return make_synthetic_carvana(tmp_path_factory.mktemp('carvana'), n_cars=6, views=4, size=(64, 96), seed=0, n_test_cars=1, progress=False)

# The browser tests (test_browser.py: the serve page; test_docs.py: the documentation site) drive Debian's `chromium`
# with Playwright, never a downloaded browser; without either they are skipped with the reason.
CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--disable-background-networking',
                 '--disable-component-update', '--disable-sync', '--no-first-run']

def chromium():
    "The system Chromium's path, or None."
    for c in (os.environ.get('CHROMIUM'), shutil.which('chromium'), shutil.which('chromium-browser'), '/usr/bin/chromium'):
        if c and Path(c).is_file() and os.access(c, os.X_OK): return c

@pytest.fixture(scope='module')
def browser():
    "A headless Chromium for the module's tests (skips where Playwright or Chromium is missing)."
    try: from playwright.sync_api import sync_playwright
    except ImportError: pytest.skip("Playwright is not installed (pip install playwright); it drives the system Chromium")
    exe = chromium()
    if exe is None: pytest.skip("no Chromium browser installed (apt-get install -y chromium): pages are tested in a real browser")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()

def save_screenshot(page, path, width=900, full_page=False):
    "A small PNG of the page for the README (palette colours, `width` pixels wide)."
    from PIL import Image
    im = Image.open(io.BytesIO(page.screenshot(full_page=full_page))).convert('RGB')
    im = im.resize((width, round(im.height*width/im.width)), Image.Resampling.LANCZOS)
    im.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)
