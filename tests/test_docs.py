"""The documentation site (`python tools/docs.py`, issue 21): built from the notebooks without executing them, then read
in a real headless Chromium (Debian's `chromium`, driven by Playwright): every page loads without a console error or a
failed request, every internal link and anchor resolves, every image shows, the pictures stored in the notebooks show on
their pages, and the search box finds the main names. Broken docs (a link to a missing anchor or page, a public name
without a description) fail the build. The notebooks' stored outputs (`python tools/docs.py --store`) are checked
without the site: small, without this machine's paths, and a picture in each notebook of `PICTURES`.

Skipped, with the reason, where the docs extra (`pip install -e ".[docs]"`), Playwright or Chromium is missing (the
check of the stored outputs needs none of them).
The README's screenshots of the site come from this test:

    DOCS_SCREENSHOTS=docs python -m pytest tests/test_docs.py -k search
"""
import functools, http.server, importlib.util, json, os, re, shutil, subprocess, sys, tempfile, threading
from pathlib import Path
from urllib.parse import unquote, urlsplit
import pytest
from conftest import save_screenshot

DOCS_EXTRA = [m for m in ('sphinx', 'myst_nb', 'furo', 'execnb') if importlib.util.find_spec(m) is None]   # what is missing
needs_extra = pytest.mark.skipif(bool(DOCS_EXTRA), reason=f"the docs extra is not installed ({', '.join(DOCS_EXTRA)}): pip install -e '.[docs]'")

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location('docs_tool', ROOT/'tools'/'docs.py')
docs = sys.modules['docs_tool'] = importlib.util.module_from_spec(_spec); _spec.loader.exec_module(docs)

@pytest.fixture(scope='module')
def site(tmp_path_factory):
    "The site, built as the README says (no notebook executed), into a temporary folder."
    if DOCS_EXTRA: pytest.skip(f"the docs extra is not installed ({', '.join(DOCS_EXTRA)}): pip install -e '.[docs]'")
    d = tmp_path_factory.mktemp('docs')
    r = subprocess.run([sys.executable, str(ROOT/'tools'/'docs.py'), '--out', str(d/'site'), '--src', str(d/'src')],
                       capture_output=True, text=True, timeout=900, env={**os.environ, 'PYTHONWARNINGS': 'ignore'})
    assert r.returncode == 0, f"the docs build failed:\n{r.stdout[-2000:]}\n{r.stderr[-6000:]}"
    return d/'site'

@pytest.fixture(scope='module')
def url(site):
    "The site served over HTTP on the loopback address, as a user's static host would serve it."
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a): pass
    srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(Quiet, directory=str(site)))
    t = threading.Thread(target=srv.serve_forever, daemon=True); t.start()
    yield f'http://127.0.0.1:{srv.server_address[1]}'
    srv.shutdown(); srv.server_close()

def notebook_modules():
    "{notebook stem: module} of every notebook in nbs/."
    return {nb.stem: m for nb, m in docs.notebooks(ROOT)}

def test_every_notebook_and_public_name_has_its_page(site):
    from sphinx.util.inventory import InventoryFile
    with open(site/'objects.inv', 'rb') as f: inv = InventoryFile.load(f, '', lambda *a: '/'.join(a[1:]))
    objects = {k: v for d in inv.values() for k, v in d.items()}
    index = (site/'index.html').read_text(encoding='utf-8')
    api = (site/'api.html').read_text(encoding='utf-8')
    for stem, m in notebook_modules().items():
        assert (site/'nbs'/f'{stem}.html').exists() and f'href="nbs/{stem}.html"' in index, f'{stem}: no page in the navigation'
        if m is None: continue
        defs, imported = docs._defs(ROOT/'carvana_fastai'/f'{m}.py')
        tree = docs.ast.parse((ROOT/'carvana_fastai'/f'{m}.py').read_text(encoding='utf-8'))
        all_ = next((docs.ast.literal_eval(n.value) for n in tree.body if isinstance(n, docs.ast.Assign)
                     and getattr(n.targets[0], 'id', '') == '__all__'), [])
        for n in all_:
            if n not in defs: continue                    # a re-export: documented where it is defined
            target = f'carvana_fastai.{m}.{n}'
            assert target in objects, f'{target}: not documented on its notebook page'
            o = objects[target]; page = getattr(o, 'uri', None) or o[2]
            assert page.startswith(f'nbs/{stem}.html#'), (target, page)
            assert f'>{n}<' in api, f'{n}: not in the API reference'

def test_pages_load_links_and_images_resolve(browser, site, url):
    pages = sorted(p.relative_to(site).as_posix() for p in site.rglob('*.html'))
    assert len(pages) >= len(notebook_modules()) + 3
    page = browser.new_page(viewport={'width': 1400, 'height': 900})
    errors, failed, links = [], [], {}
    page.on('console', lambda m: errors.append(f'{page.url}: {m.text}') if m.type == 'error' else None)
    page.on('pageerror', lambda e: errors.append(f'{page.url}: {e}'))
    page.on('requestfailed', lambda r: failed.append(f'{r.url}: {r.failure}'))
    page.on('response', lambda r: failed.append(f'{r.url}: HTTP {r.status}') if r.status >= 400 else None)
    for rel in pages:
        page.goto(f'{url}/{rel}', wait_until='load')
        bad = page.evaluate("Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src)")
        assert not bad, f'{rel}: images that do not show: {bad}'
        for h in page.eval_on_selector_all('a[href]', 'as => as.map(a => a.href)'):
            if h.startswith(url + '/'): links.setdefault(h, rel)
    assert not failed, failed[:20]
    assert not errors, errors[:20]
    ids = {}
    def ids_of(f):
        if f not in ids: ids[f] = set(map(unquote, re.findall(r'\bid="([^"]+)"', f.read_text(encoding='utf-8'))))
        return ids[f]
    broken = []
    for h, src in links.items():
        u = urlsplit(h); f = site/unquote(u.path).lstrip('/')
        if f.is_dir(): f = f/'index.html'
        if not f.is_file(): broken.append(f'{src} -> {h}: no such page'); continue
        if u.fragment and f.suffix == '.html' and unquote(u.fragment) not in ids_of(f): broken.append(f'{src} -> {h}: no such anchor')
    assert len(links) > 500 and not broken, broken[:20]

@pytest.mark.parametrize('stem', ['18_cutout', '04_synth'])
def test_stored_pictures_show(browser, site, url, stem):
    "A page that shows results shows the pictures stored in its notebook (myst-nb: an <img> in a cell's output), and they load."
    page = browser.new_page(viewport={'width': 1400, 'height': 900})
    page.goto(f'{url}/nbs/{stem}.html', wait_until='load')
    imgs = page.evaluate("Array.from(document.querySelectorAll('div.cell_output img'))"
                         ".map(i => ({src: i.getAttribute('src'), ok: i.complete, w: i.naturalWidth}))")
    assert imgs and all(i['ok'] and i['w'] > 0 for i in imgs), imgs
    stored = {w for _, (w, h) in docs.images(json.loads((ROOT/'nbs'/f'{stem}.ipynb').read_text(encoding='utf-8')))}
    assert stored and {i['w'] for i in imgs} <= stored, (imgs, stored)     # the pictures are the stored ones, at their size

@pytest.mark.parametrize('word,where', [('cutout', 'nbs/18_cutout.html'), ('train_progressive', 'nbs/09_train.html'),
                                        ('load_ensemble', 'nbs/11_ensemble.html'), ('refine', 'nbs/21_refine.html')])
def test_search_box_finds(browser, site, url, word, where):
    page = browser.new_page(viewport={'width': 1400, 'height': 900})
    errors = []
    page.on('pageerror', lambda e: errors.append(str(e)))
    page.goto(f'{url}/index.html')
    if word == 'cutout' and os.environ.get('DOCS_SCREENSHOTS'):
        save_screenshot(page, Path(os.environ['DOCS_SCREENSHOTS'])/'site-home.png', width=1000)
    box = page.locator('input[name=q]').first
    box.fill(word); box.press('Enter')
    page.wait_for_function("document.querySelectorAll('#search-results li').length > 0", timeout=30_000)
    hrefs = page.eval_on_selector_all('#search-results li a', 'as => as.map(a => a.href)')
    assert any(f'/{where}' in h for h in hrefs), (word, hrefs[:10])
    assert not errors, errors
    if word == 'cutout' and os.environ.get('DOCS_SCREENSHOTS'):
        page = browser.new_page(viewport={'width': 1400, 'height': 900})
        page.goto(f'{url}/{where}')
        page.evaluate("document.getElementById('carvana_fastai.cutout.cutout').scrollIntoView({behavior: 'instant'}); window.scrollBy({top: -260, behavior: 'instant'})")
        page.wait_for_timeout(500)
        save_screenshot(page, Path(os.environ['DOCS_SCREENSHOTS'])/'site-module.png', width=1000)

# The checks that make broken docs fail the build, on a small project with the site's own Sphinx settings.

def sphinx_build(src, tmp_path):
    docs.write_conf(src, 't', '0')
    return subprocess.run([sys.executable, '-m', 'sphinx', '-b', 'html', '-W', '--keep-going', '-q', str(src), str(tmp_path/'out')],
                          capture_output=True, text=True, timeout=300)

def notebook(cells):
    return {'cells': cells, 'metadata': {}, 'nbformat': 4, 'nbformat_minor': 5}

SHOW_DOC = ('---\n\n[source](https://example.invalid/f.py#L1){target="_blank" style="float:right; font-size:smaller"}\n\n'
            '### f\n\n> f (a:int=1)\n\n*Add one.*\n\n|    | **Type** | **Default** | **Details** |\n| -- | -------- | ----------- | ----------- |\n'
            '| a | int | 1 | the number |\n')
PNG = ('iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAFklEQVR4nGP8z8DAwMDAxMDAwMDAAAANHQEDasKb6QAAAABJRU5ErkJggg==')

@needs_extra
def test_stored_outputs_show_and_hidden_cells_go(tmp_path):
    "A notebook stored with outputs: show_doc's Markdown renders as a table, a plot as an image; nbdev's directives apply."
    nb = notebook([
        {'cell_type': 'code', 'id': 'a', 'metadata': {}, 'execution_count': None, 'outputs': [], 'source': '#| default_exp x'},
        {'cell_type': 'markdown', 'id': 'b', 'metadata': {}, 'source': '# X\n\n> what x does'},
        {'cell_type': 'code', 'id': 'c', 'metadata': {}, 'execution_count': 1, 'source': 'show_doc(f)',
         'outputs': [{'output_type': 'execute_result', 'execution_count': 1, 'metadata': {}, 'data': {'text/markdown': SHOW_DOC, 'text/plain': 'f'}}]},
        {'cell_type': 'code', 'id': 'd', 'metadata': {}, 'execution_count': 2, 'source': 'plot()',
         'outputs': [{'output_type': 'display_data', 'metadata': {}, 'data': {'image/png': PNG, 'text/plain': '<Figure>'}}]},
        {'cell_type': 'code', 'id': 'e', 'metadata': {}, 'execution_count': None, 'outputs': [], 'source': '#| hide\nsecret_setup()'},
    ])
    p = tmp_path/'nbs'/'01_x.ipynb'; p.parent.mkdir(); p.write_text(json.dumps(nb))
    out = docs.process_notebook(p, [])
    src = ''.join(c['source'] if isinstance(c['source'], str) else ''.join(c['source']) for c in out['cells'])
    assert 'secret_setup' not in src and 'default_exp' not in src and 'show_doc(f)' in src
    site = tmp_path/'src'; (site/'nbs').mkdir(parents=True)
    (site/'nbs'/'01_x.ipynb').write_text(json.dumps(out))
    (site/'index.md').write_text('# T\n\n```{toctree}\nnbs/01_x\n```\n')
    r = sphinx_build(site, tmp_path)
    assert r.returncode == 0, r.stderr
    html = (tmp_path/'out'/'nbs'/'01_x.html').read_text(encoding='utf-8')
    assert re.search(r'<table[^>]*>.*<td[^>]*>(<p>)?the number', html, re.S), 'show_doc table not rendered as a table'
    assert '{target=' not in html and re.search(r'<img[^>]+src="[^"]+\.png"', html)

@needs_extra
def test_broken_links_fail_the_build(tmp_path):
    site = tmp_path/'src'; site.mkdir()
    (site/'index.md').write_text('# T\n\n## A section\n\n[fine](#a-section)\n\n```{toctree}\npage\n```\n')
    for link in ('[gone](#no-such-section)', '[gone](missing.md)', '[gone](index.md#no-such-section)'):
        (site/'page.md').write_text(f'# Page\n\n{link}\n')
        r = sphinx_build(site, tmp_path)
        assert r.returncode != 0 and 'WARNING' in r.stderr, (link, r.stderr)
    (site/'page.md').write_text('# Page\n\n[fine](index.md#a-section)\n')
    assert sphinx_build(site, tmp_path).returncode == 0
    (site/'orphan.md').write_text('# Not in the navigation\n')
    r = sphinx_build(site, tmp_path)
    assert r.returncode != 0 and 'toctree' in r.stderr, r.stderr

def test_undocumented_names_are_found(tmp_path):
    "A function without a docstring and a constant without a comment are found; the documented ones are not."
    f = tmp_path/'m.py'
    f.write_text('# %% ../nbs/01_m.ipynb #c1\nfrom .core import CARVANA_SHAPE\nA = 1   # the number one\n'
                 '# what B is\nB = 2\nC = 3\nD = 4\n"D\'s docstring"\n\n# %% ../nbs/01_m.ipynb #c2\n'
                 'def f(x): return x\ndef g(x):\n    "Documented."\n    return x\n')
    defs, imported = docs._defs(f)
    assert imported == {'CARVANA_SHAPE': 'core'}
    assert {k: v[2] for k, v in defs.items()} == {'A': 'the number one', 'B': 'what B is', 'C': '', 'D': "D's docstring", 'f': '', 'g': 'Documented.'}
    assert defs['A'][1] == 'c1' and defs['g'][1] == 'c2'
    names = {'m': [docs.Name('m', n, 'data', 'm', doc=v[2]) for n, v in defs.items()]}
    assert docs.undocumented(names) == {'m': ['C', 'f']}

@needs_extra
def test_execute_fills_outputs(tmp_path):
    "`--execute` runs a notebook as nbdev_test does (slow and notest cells skipped) and the page gets the outputs."
    nb = notebook([
        {'cell_type': 'code', 'id': 'a', 'metadata': {}, 'execution_count': None, 'outputs': [], 'source': '#| export\ndef f(x): return x + 1'},
        {'cell_type': 'code', 'id': 'b', 'metadata': {}, 'execution_count': None, 'outputs': [], 'source': 'print(f(41))'},
        {'cell_type': 'code', 'id': 'c', 'metadata': {}, 'execution_count': None, 'outputs': [], 'source': '#| slow\nraise SystemExit("not run")'},
    ])
    p = tmp_path/'01_x.ipynb'; p.write_text(json.dumps(nb))
    cells = {c['id']: c for c in docs.process_notebook(p, [], docs.run_notebook(p))['cells']}
    assert 'a' not in cells and ''.join(cells['b']['outputs'][0]['text']) == '42\n' and not cells['c']['outputs']

# Stored outputs: what `python tools/docs.py --store` writes into the notebooks, and what the notebooks hold.

def test_notebooks_hold_small_stored_outputs():
    "Each notebook's stored outputs are small, with PNGs at most STORE_WIDTH wide, no local paths, none for skipped cells; each notebook of PICTURES holds a picture (a clean that drops outputs fails here)."
    nbs = sorted((ROOT/'nbs').glob('*.ipynb'))
    assert set(docs.PICTURES) <= {p.stem for p in nbs}
    assert docs.missing_pictures() == []
    for p in nbs:
        nb = json.loads(p.read_text(encoding='utf-8'))
        assert docs.output_bytes(nb) <= docs.STORE_LIMIT, (p.name, docs.output_bytes(nb))
        assert all(w <= docs.STORE_WIDTH for _, (w, h) in docs.images(nb)), (p.name, docs.images(nb))
        for c in nb['cells']:
            if c['cell_type'] != 'code': continue
            d = docs.directives(''.join(c['source']))[0]
            if {'slow', 'notest'} & set(d) or 'false' in (d.get('output'), d.get('eval', '').lower()): assert not c['outputs'], (p.name, c['id'])
            for o in c['outputs']:
                text = ''.join(o.get('text', '')) + ''.join(''.join(v) for k, v in o.get('data', {}).items() if k.startswith('text/'))
                for local in (str(ROOT), tempfile.gettempdir().rstrip('/') + '/tmp', str(Path.home()) + '/'):
                    assert local not in text, (p.name, c['id'], local)

def code_cell(i, src, outputs=()):
    return {'cell_type': 'code', 'id': i, 'metadata': {}, 'execution_count': None, 'outputs': list(outputs), 'source': src}

@needs_extra
def test_store_writes_small_clean_outputs(tmp_path):
    "`--store`: the outputs of the cells nbdev_test runs, a wide figure scaled down, no local paths, none for slow or `output: false` cells; nbdev_clean leaves the file as it is, storing again gives the same file, and outputs over the limit are refused."
    stale = {'output_type': 'stream', 'name': 'stdout', 'text': ['from an old run\n']}
    nb = notebook([
        code_cell('a', "import tempfile\nfrom pathlib import Path\nd = Path(tempfile.mkdtemp())\nprint(d/'x.csv')"),
        code_cell('b', "import matplotlib.pyplot as plt\nplt.figure(figsize=(12, 2)); plt.plot([1, 3, 2]);"),
        code_cell('c', "#| slow\nprint('slow')", [stale]),
        code_cell('d', "#| output: false\nprint('a timing')"),
        code_cell('e', "from IPython.display import Markdown\nMarkdown('| a |\\n| - |\\n| 1 |')"),
    ])
    p = tmp_path/'01_x.ipynb'; p.write_text(json.dumps(nb))
    assert docs.store([p]) == []
    out = json.loads(p.read_text(encoding='utf-8')); cells = {c['id']: c for c in out['cells']}
    assert ''.join(cells['a']['outputs'][0]['text']) == 'tmp/x.csv\n'
    assert [s for _, s in docs.images(out)] == [(docs.STORE_WIDTH, docs.images(out)[0][1][1])]
    assert cells['c']['outputs'] == [] and cells['d']['outputs'] == []
    o = cells['e']['outputs'][0]
    assert 'text/markdown' in o['data'] and o['execution_count'] is None and not out['metadata']
    first = p.read_text(encoding='utf-8')
    if (clean := shutil.which('nbdev_clean')):
        subprocess.run([clean, '--fname', str(p)], cwd=ROOT, check=True)     # nbdev_clean keeps the stored outputs as they are
        assert p.read_text(encoding='utf-8') == first
    assert docs.store([p]) == [] and p.read_text(encoding='utf-8') == first   # storing again gives the same file
    problems = docs.store([p], limit=1000)
    assert len(problems) == 1 and 'over the limit of 1,000' in problems[0] and p.read_text(encoding='utf-8') == first
