"""Build the documentation site from `nbs/*.ipynb` and the top-level Markdown files into `_docs/` (no Quarto needed).

    pip install -e ".[docs]"
    python tools/docs.py                      # -> _docs/index.html; no notebook is executed (stored outputs are shown)
    python tools/docs.py --execute 18_cutout  # run these notebooks first (as nbdev_test does) and show their outputs
    python tools/docs.py --execute all        # every notebook
    python tools/docs.py --store              # run every notebook and store its outputs in nbs/*.ipynb (no site built)
    python tools/docs.py --store 18_cutout    # only these

The notebooks are committed with their outputs (settings.ini: clear_all = False, so nbdev_clean keeps them): `--store`
runs each notebook in a fresh process as nbdev_test does (slow, notest and `eval: false` cells are skipped and left
without outputs; one thread, so training prints and draws the same on any machine), keeps its outputs small and free
of this machine's paths (PNGs at most `STORE_WIDTH` pixels wide in 256 colours, the repository, temporary and home
folders dropped from text, no outputs for `#| output: false` cells, at most `STORE_LIMIT` bytes per notebook), writes
them into the notebook and runs nbdev_clean on it. The notebooks of `PICTURES` must hold a picture: the build fails
without one.

Sphinx renders the pages (myst-nb for the notebooks, the furo theme). What nbdev's Quarto pipeline does, this script
does before Sphinx runs, on copies in `_proc/docs_src/`:
- `README.md` is the home page; every other top-level `*.md` (ARCHITECTURE, BENCHMARKS) is a page.
- every notebook is a page, in the module order of ARCHITECTURE.md's table (notebooks missing there come last);
  `#| hide` and `default_exp` cells are dropped, `#| export` cells are replaced by the documentation of the public
  names they define (signature, docstring, a table of parameters with their docments, a link to the source), as
  nbdev's `show_doc` does; directive lines are not shown;
- `api.md` lists every public name (the union of the modules' `__all__`) with its signature, one-line docstring,
  parameters and a link to the notebook that defines it.

Broken or stale docs fail the build (exit code 1): a public name without a docstring (a constant without a comment on
its line), a notebook missing from the navigation, a link to a missing page or anchor (Sphinx runs with `-W`), a
notebook of `PICTURES` without a stored picture.
"""
from __future__ import annotations
import argparse, ast, copy, importlib, inspect, io, json, re, shutil, sys, time, tokenize, warnings
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIB = 'carvana_fastai'

@dataclass
class Name:
    "One public name of a module: what the site says about it."
    module: str                      # the module whose `__all__` lists it
    name: str
    kind: str                        # 'function', 'class' or 'data'
    home: str                        # the module that defines it (differs for a re-export)
    doc: str = ''                    # docstring, or a constant's comment
    sig: str = ''                    # '(a, b=1) -> int' for functions and classes
    params: list = field(default_factory=list)   # (name, annotation, default, docment)
    value: str = ''                  # a short repr of a constant
    cell: str | None = None          # the notebook cell id that defines it
    methods: list = field(default_factory=list)  # (name, signature, first line of docstring) of a class's own public methods

    @property
    def target(self): return f'{LIB}.{self.home}.{self.name}'
    @property
    def summary(self): return self.doc.strip().split('\n\n')[0].replace('\n', ' ')

# ---------------------------------------------------------------- notebooks and modules

def directives(src):
    "nbdev's `#| ...` directives at the top of a cell: ({name: args}, the source without them)."
    d, lines = {}, src.splitlines()
    while lines and (lines[0].startswith('#|') or (d and not lines[0].strip())):
        l = lines.pop(0)
        if l.startswith('#|'):
            k, _, v = l[2:].strip().replace(':', ' ', 1).partition(' ')
            d[k.strip()] = v.strip()
    return d, '\n'.join(lines)

_noted = []

def notebooks(root=ROOT):
    "[(notebook path, module name or None)] in ARCHITECTURE.md's order, then the rest by name."
    nbs = {}
    for p in sorted((root/'nbs').glob('*.ipynb')):
        m = None
        for c in json.loads(p.read_text(encoding='utf-8'))['cells']:
            if c['cell_type'] == 'code' and 'default_exp' in (d := directives(''.join(c['source']))[0]): m = d['default_exp']
        nbs[p.stem] = (p, m)
    arch = root/'ARCHITECTURE.md'
    order = re.findall(r'^\|\s*`(\d+[a-z]?_\w+)`\s*\|', arch.read_text(encoding='utf-8'), re.M) if arch.exists() else []
    missing = [s for s in nbs if s not in order]
    if missing and not _noted: print(f"docs: note: {', '.join(missing)} not in ARCHITECTURE.md's module table: listed last", file=sys.stderr)
    _noted.extend(missing)
    return [nbs[s] for s in [o for o in order if o in nbs] + missing]

def _cells_of(src):
    "{line number (1-based): cell id} where nbdev's `# %% ../nbs/X.ipynb #id` markers start a cell's code."
    return {i: m.group(1) for i, l in enumerate(src.splitlines(), 1) if (m := re.match(r'# %% \S+\.ipynb #(\w+)', l))}

def _comment(lines, comments, node):
    "A constant's description: the comment on its first line, comment lines right above it (or a string right after it)."
    if node.lineno in comments: return comments[node.lineno]
    above, i = [], node.lineno - 2
    while i >= 0 and lines[i].lstrip().startswith('#') and not lines[i].startswith('# %%'):
        above.insert(0, lines[i].strip().lstrip('#').strip()); i -= 1
    return ' '.join(above)

def _defs(path):
    "The top-level names a module's source defines: {name: (ast node, cell id, description)}, {name: module imported from}."
    src = path.read_text(encoding='utf-8'); lines = src.splitlines(); tree = ast.parse(src)
    comments = {t.start[0]: t.string.lstrip('#').strip() for t in tokenize.generate_tokens(io.StringIO(src).readline)
                if t.type == tokenize.COMMENT and t.line.strip() != t.string.strip()}   # comments after code on a line
    cells = sorted(_cells_of(src).items())
    def cell_at(line): return next((c for l, c in reversed(cells) if l <= line), None)
    defs, imported = {}, {}
    def visit(body):
        for i, n in enumerate(body):
            if isinstance(n, (ast.If, ast.Try)): visit(n.body); visit(getattr(n, 'orelse', [])); continue
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                defs.setdefault(n.name, (n, cell_at(n.lineno), ast.get_docstring(n) or ''))
            elif isinstance(n, (ast.Assign, ast.AnnAssign)):
                doc = _comment(lines, comments, n)
                nxt = body[i+1] if i+1 < len(body) else None
                if not doc and isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, 'value', None), ast.Constant) and isinstance(nxt.value.value, str):
                    doc = inspect.cleandoc(nxt.value.value)
                targets = n.targets if isinstance(n, ast.Assign) else [n.target]
                for t in targets:
                    for e in (t.elts if isinstance(t, ast.Tuple) else [t]):
                        if isinstance(e, ast.Name): defs.setdefault(e.id, (n, cell_at(n.lineno), doc))
            elif isinstance(n, ast.ImportFrom) and n.level == 1 and n.module:
                for a in n.names: imported[a.asname or a.name] = n.module
    visit(tree.body)
    return defs, imported

# ---------------------------------------------------------------- what the site says about a name

def _anno(a):
    if a is inspect.Parameter.empty: return ''
    return a if isinstance(a, str) else inspect.formatannotation(a)

def _short(v, n=60):
    "A default or a constant as code: a function or class by name, long values cut."
    if inspect.isfunction(v) or inspect.isclass(v): return v.__name__
    r = repr(v)
    if r.startswith('<'): r = f'{type(v).__name__}(...)'
    return r if len(r) <= n else r[:n-3] + '...'

def signature(obj):
    "'(a, b=1) -> int' for a function or a class (its constructor, without self), or '' where there is none."
    try: sig = inspect.signature(obj)
    except (TypeError, ValueError): return ''
    ps, star = [], False
    for p in sig.parameters.values():
        if p.kind == p.KEYWORD_ONLY and not star: ps.append('*'); star = True
        s = {p.VAR_POSITIONAL: '*', p.VAR_KEYWORD: '**'}.get(p.kind, '') + p.name
        if p.kind == p.VAR_POSITIONAL: star = True
        if (a := _anno(p.annotation)): s += f': {a}'
        if p.default is not p.empty: s += (' = ' if a else '=') + _short(p.default, 40)
        ps.append(s)
    if any(q.kind == q.POSITIONAL_ONLY for q in sig.parameters.values()):
        last = max(i for i, q in enumerate(sig.parameters.values()) if q.kind == q.POSITIONAL_ONLY)
        ps.insert(last + 1 + ps[:last+1].count('*'), '/')
    ret = _anno(sig.return_annotation) if not inspect.isclass(obj) else ''
    return f"({', '.join(ps)})" + (f' -> {ret}' if ret else '')

def parameters(obj):
    "[(name, annotation, default, docment)] of a function or a class's constructor (fastcore's docments)."
    from fastcore.docments import docments
    try: sig = inspect.signature(obj)
    except (TypeError, ValueError): return []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            dm = docments(obj, full=True)
    except Exception: dm = {}
    out = []
    for p in sig.parameters.values():
        d = (dm.get(p.name) or {}).get('docment') or ''
        star = {p.VAR_POSITIONAL: '*', p.VAR_KEYWORD: '**'}.get(p.kind, '')
        out.append((star + p.name, _anno(p.annotation), '' if p.default is p.empty else _short(p.default, 40), d))
    return out

def public_names(root=ROOT, broken=None):
    "{module: [Name]} for every notebook's module, in the site's order; a module that cannot be imported goes to `broken`."
    if str(root) not in sys.path: sys.path.insert(0, str(root))
    out, broken = {}, ({} if broken is None else broken)
    for nb, m in notebooks(root):
        if m is None: continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                mod = importlib.import_module(f'{LIB}.{m}')
        except Exception as e:
            broken[m] = f'{type(e).__name__}: {e}'; continue
        defs, imported = _defs(root/LIB/f'{m}.py')
        names = []
        for n in getattr(mod, '__all__', []):
            obj = getattr(mod, n)
            home = m if n in defs else imported.get(n, getattr(obj, '__module__', m).rpartition('.')[2])
            kind = 'class' if inspect.isclass(obj) else 'function' if callable(obj) and n in defs and not isinstance(defs[n][0], (ast.Assign, ast.AnnAssign)) else 'data'
            x = Name(m, n, kind, home)
            if n in defs:
                node, x.cell, x.doc = defs[n]
                if kind == 'function' or kind == 'class':
                    x.doc = (obj.__dict__.get('__doc__') if kind == 'class' else obj.__doc__) or ''
                    x.doc = inspect.cleandoc(x.doc) if x.doc else ''
                    x.sig, x.params = signature(obj), parameters(obj)
                else: x.value = _short(obj)
                if kind == 'class':
                    for k, v in obj.__dict__.items():
                        f = v.__func__ if isinstance(v, (classmethod, staticmethod)) else v
                        if k.startswith('_') or not inspect.isfunction(f): continue
                        x.methods.append((k, signature(f).replace('(self, ', '(').replace('(self)', '()'),
                                          (inspect.getdoc(f) or '').split('\n\n')[0].replace('\n', ' ')))
            names.append(x)
        out[m] = names
    return out

def undocumented(names):
    "The public names defined without a description: {module: [name]}."
    return {m: bad for m, xs in names.items() if (bad := [x.name for x in xs if x.home == m and not x.doc.strip()])}

# ---------------------------------------------------------------- Markdown for the pages

def _cell(s): return str(s).replace('|', '\\|').replace('\n', ' ')

def block(x, index=True, full=True):
    "A name's documentation as a MyST directive (Sphinx's Python domain): what nbdev's show_doc shows."
    d = {'function': 'py:function', 'class': 'py:class', 'data': 'py:data'}[x.kind]
    lines = [f'````{{{d}}} {x.name}{x.sig}', f':module: {LIB}.{x.home}']
    if not index: lines.append(':no-index:')
    lines.append('')
    doc = x.doc if full else x.summary
    if doc: lines += [doc, '']
    if x.kind == 'data' and x.value and '`' not in x.value: lines += [f'Value: `{x.value}`', '']
    ps = [p for p in x.params if p[0] not in ('self',)]
    if ps:   # nbdev's table: parameter, type, default, details (the docments comment); columns empty for all are left out
        rows = [(f'`{_cell(n)}`', _cell(a), f'`{_cell(dv)}`' if dv else '', _cell(dm)) for n, a, dv, dm in ps]
        keep = [i for i in range(4) if i in (0, 2) or any(r[i] for r in rows)]
        head = ('parameter', 'type', 'default', 'details')
        lines += ['| ' + ' | '.join(head[i] for i in keep) + ' |', '|' + ' --- |' * len(keep)]
        lines += ['| ' + ' | '.join(r[i] for i in keep) + ' |' for r in rows]
        lines.append('')
    if x.methods:
        lines += ['| method | details |', '| --- | --- |']
        lines += [f'| `{_cell(k + s)}` | {_cell(doc)} |' for k, s, doc in x.methods]
        lines.append('')
    if not index: lines += [f'Defined in {{py:obj}}`{nb_of[x.home]} <{x.target}>`.', '']
    return '\n'.join(lines + ['````', ''])

nb_of = {}   # module -> notebook stem, filled by build()

def api_page(names, title='API reference'):
    "api.md: every public name, module by module."
    out = [f'# {title}', '',
           'Every public name of the library (the `__all__` of each module; `from carvana_fastai import *` gives them '
           'all, except `serve`\'s) with its signature, first docstring line and parameters. Each links to the notebook '
           'that defines it, where its documentation sits beside the code that tests it.', '']
    for m, xs in names.items():
        if not xs: continue
        out += [f'## {m}', '', f'`from {LIB}.{m} import ...`, from the notebook [{nb_of[m]}](nbs/{nb_of[m]}.ipynb).', '']
        for x in xs:
            if x.home != m:
                out += [f'`{x.name}`: re-exported from {{py:obj}}`{x.home} <{x.target}>`.', '']
            else: out.append(block(x, index=False, full=False))
    return '\n'.join(out)

def process_notebook(path, names, nb=None):
    "A notebook (`path`, or its executed copy `nb`) as nbdev shows it: hidden cells dropped, exported code replaced by its names' documentation."
    nb = copy.deepcopy(nb) if nb is not None else json.loads(path.read_text(encoding='utf-8'))
    nb['metadata'] = {'kernelspec': {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'},
                      'language_info': {'name': 'python'}}
    by_cell = {}
    for x in names:
        if x.cell and x.home == x.module: by_cell.setdefault(x.cell, []).append(x)
    cells, placed = [], set()
    for c in nb['cells']:
        if c['cell_type'] != 'code': cells.append(c); continue
        d, src = directives(''.join(c['source']))
        if 'hide' in d or d.get('include') == 'false' or 'default_exp' in d: continue
        docs = by_cell.get(c.get('id'), [])
        placed.update(x.name for x in docs)
        if 'export' in d or 'exporti' in d: c = None
        else:
            c = copy.deepcopy(c); c['source'] = src
            for o in c.get('outputs', []):   # nbdev's show_doc output: no leading rule, no Quarto link attributes ({target=...})
                md = o.get('data', {}).get('text/markdown')
                if md: o['data']['text/markdown'] = re.sub(r'\)\{target="_blank"[^}]*\}', ')', re.sub(r'^\s*---\s*\n', '', ''.join(md)))
            tags = (['remove-input'] if d.get('echo') == 'false' else []) + (['remove-output'] if d.get('output') == 'false' else [])
            c['metadata'] = {'tags': tags} if tags else {}
        if c is not None: cells.append(c)
        if docs: cells.append({'cell_type': 'markdown', 'id': f'doc-{len(cells)}', 'metadata': {},
                               'source': '\n'.join(block(x) for x in docs)})
    rest = [x for x in names if x.home == x.module and x.name not in placed]
    if rest:
        cells.append({'cell_type': 'markdown', 'id': 'doc-rest', 'metadata': {}, 'source': '## Other names\n\n' + '\n'.join(block(x) for x in rest)})
    nb['cells'] = cells
    return nb

CONF = '''\
project = {project!r}
release = version = {version!r}
extensions = ['myst_nb', 'sphinx.ext.viewcode']
nb_execution_mode = 'off'          # outputs stored in the notebooks are shown; tools/docs.py --execute fills them first
nb_merge_streams = True
nb_render_markdown_format = 'myst'   # Markdown outputs (nbdev's show_doc) with tables, as the pages' own Markdown
myst_heading_anchors = 4
myst_enable_extensions = ['colon_fence']
html_theme = 'furo'
add_module_names = False           # `cutout(...)`, not `carvana_fastai.cutout.cutout(...)`
html_title = {project!r}
html_favicon = 'favicon.svg'
html_show_sourcelink = False
html_copy_source = False
exclude_patterns = ['_build', 'docs']
suppress_warnings = ['myst.header']   # notebooks' own headings may skip a level (a `###` after a `#`)
'''

FAVICON = ('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32"><rect width="32" height="32" rx="6" fill="#2b5797"/>'
           '<path d="M4 21l3-6 5-3h8l5 4 3 1v4z" fill="#fff"/><circle cx="10" cy="22" r="3" fill="#2b5797" stroke="#fff"/>'
           '<circle cx="23" cy="22" r="3" fill="#2b5797" stroke="#fff"/></svg>')

def stage(src, names, execute=()):
    "Write the Sphinx source tree into `src`."
    if src.exists(): shutil.rmtree(src)
    (src/'nbs').mkdir(parents=True)
    mds = sorted(p for p in ROOT.glob('*.md') if p.name != 'README.md')
    pages = []
    for nb, m in notebooks():
        x = process_notebook(nb, names.get(m, []), run_notebook(nb) if nb.stem in execute else None)
        (src/'nbs'/nb.name).write_text(json.dumps(x, indent=1), encoding='utf-8')
        pages.append(f'nbs/{nb.stem}')
    def fix(text):   # links between the top-level Markdown files: README.md is index.md here
        return re.sub(r'\]\(README\.md', '](index.md', text)
    home = fix((ROOT/'README.md').read_text(encoding='utf-8'))
    home += ('\n\n```{toctree}\n:hidden:\n:caption: Notebooks\n\n' + '\n'.join(pages) + '\n```\n'
             '\n```{toctree}\n:hidden:\n:caption: Reference\n\napi\n' + '\n'.join(p.stem for p in mds) + '\n```\n')
    (src/'index.md').write_text(home, encoding='utf-8')
    for p in mds: (src/p.name).write_text(fix(p.read_text(encoding='utf-8')), encoding='utf-8')
    (src/'api.md').write_text(api_page(names), encoding='utf-8')
    if (ROOT/'docs').is_dir(): shutil.copytree(ROOT/'docs', src/'docs', ignore=shutil.ignore_patterns('*.md', '*.rst'))
    from carvana_fastai import __version__
    write_conf(src, LIB, __version__)
    return pages

def write_conf(src, project, version):
    "Sphinx's conf.py and the favicon (without one, browsers ask for /favicon.ico and log a 404)."
    (src/'favicon.svg').write_text(FAVICON, encoding='utf-8')
    (src/'conf.py').write_text(CONF.format(project=project, version=version), encoding='utf-8')

def run_notebook(path, mpl_format='retina', clear_skipped=False):
    "The notebook at `path` executed in its folder with execnb, as nbdev_test runs it (cells flagged notest, slow or `eval: false` are skipped; their stored outputs are kept, or emptied with `clear_skipped`)."
    import os
    from execnb.nbio import nb2dict, read_nb
    from execnb.shell import CaptureShell
    nbx, sh, cwd = read_nb(path), CaptureShell(mpl_format=mpl_format), os.getcwd()
    os.chdir(path.parent)
    try:
        for c in nbx.cells:
            if c.cell_type != 'code': continue
            d = directives(c.source)[0]
            if {'notest', 'slow'} & set(d) or d.get('eval', '').lower() == 'false' or 'nbdev_export' + '(' in c.source:   # nbdev_test's skips
                if clear_skipped: c['outputs'] = []
                continue
            c['outputs'] = []   # execnb leaves a cell's old outputs when it prints nothing now
            sh.cell(c)          # stores the cell's outputs in it
            if sh.exc: raise RuntimeError(f"{path.name}: cell {c.get('id')} failed while executing: {sh.exc!r}")
    finally: os.chdir(cwd)
    return nb2dict(nbx)

# ---------------------------------------------------------------- stored outputs (`--store`)

STORE_WIDTH = 600          # pixels: a stored picture wider than this is scaled down to it
STORE_LIMIT = 200_000      # bytes: the most a notebook's stored outputs may take (pictures base64-encoded, as in the file)
PICTURES = ('04_synth', '09_train', '13_evaluate', '18_cutout', '21_refine')   # notebooks whose pages must show a stored picture

def _png_small(b64, width=STORE_WIDTH):
    "A base64 PNG at most `width` pixels wide (Lanczos) and, where opaque, in 256 colours (no dithering), re-encoded by PIL: no timestamps or software tags."
    import base64
    from PIL import Image
    im = Image.open(io.BytesIO(base64.b64decode(''.join(b64))))
    im.load()
    if im.mode == 'P': im = im.convert('RGBA' if 'transparency' in im.info else 'RGB')
    if im.mode not in ('RGB', 'RGBA', 'L'): im = im.convert('RGBA')
    if im.mode == 'RGBA' and im.getextrema()[3][0] == 255: im = im.convert('RGB')
    if im.width > width: im = im.resize((width, max(1, round(im.height*width/im.width))), Image.LANCZOS)
    if im.mode == 'RGB': im = im.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    buf = io.BytesIO(); im.save(buf, 'PNG', optimize=True)
    return base64.b64encode(buf.getvalue()).decode(), im.size

def _tidy_text(text):
    "Text output without this machine's paths: the repository's folder, the temporary folders notebooks make, the home folder."
    import tempfile
    tmp = re.escape(str(Path(tempfile.gettempdir())))
    text = text.replace(str(ROOT) + '/', '').replace(str(ROOT), '.')
    text = re.sub(tmp + r'/tmp[\w-]+', 'tmp', text)
    return text.replace(str(Path.home()) + '/', '~/')

def _lines(text):
    "Text as a notebook stores it: a list of lines."
    return text.splitlines(True)

def tidy_outputs(nb, width=STORE_WIDTH):
    "The outputs of notebook dict `nb` made small and machine-independent (in place): PNGs at most `width` wide, no local paths in text, none for `#| output: false` cells."
    for c in nb['cells']:
        if c['cell_type'] == 'code' and directives(''.join(c['source']))[0].get('output') == 'false': c['outputs'] = []
        for o in c.get('outputs', []):
            if 'text' in o: o['text'] = _lines(_tidy_text(''.join(o['text'])))
            data = o.get('data', {})
            for k in list(data):
                if k == 'image/png':
                    data[k], _ = _png_small(data[k], width)
                    o['metadata'] = {}                       # no retina width/height: the picture is shown at its size
                elif k.startswith('text/'): data[k] = _lines(_tidy_text(''.join(data[k])))
    return nb

def output_bytes(nb) -> int:
    "Bytes of the outputs of notebook dict `nb` as the .ipynb file stores them (JSON)."
    return sum(len(json.dumps(o)) for c in nb['cells'] for o in c.get('outputs', []))

def images(nb) -> list:
    "[(cell id, (w, h))] of the PNG outputs of notebook dict `nb`."
    import base64
    from PIL import Image
    return [(c.get('id'), Image.open(io.BytesIO(base64.b64decode(''.join(o['data']['image/png'])))).size)
            for c in nb['cells'] for o in c.get('outputs', []) if 'image/png' in o.get('data', {})]

def missing_pictures(root=ROOT) -> list:
    "Problems: the notebooks of `PICTURES` that hold no stored picture (a clean or a store that dropped their outputs)."
    return [f"nbs/{stem}.ipynb: no stored picture (its page must show one): run python tools/docs.py --store {stem}"
            for stem in PICTURES if not images(json.loads((root/'nbs'/f'{stem}.ipynb').read_text(encoding='utf-8')))]

def run_isolated(path, width=STORE_WIDTH) -> dict:
    "`run_notebook(path)` in a fresh Python process (what it prints and draws depends on nothing run before), its outputs tidied, as a notebook dict."
    import os, subprocess, tempfile
    code = ("import json, sys, runpy\nfrom pathlib import Path\n"
            "src, dest, width = sys.argv[1:]; sys.argv[1:] = []\n"          # a cell that parses sys.argv sees no arguments
            f"m = runpy.run_path({str(Path(__file__).resolve())!r})\n"
            "nb = m['run_notebook'](Path(src), mpl_format='png', clear_skipped=True)\n"
            "Path(dest).write_text(json.dumps(m['tidy_outputs'](nb, int(width))), encoding='utf-8')\n")
    # as nbdev_test runs notebooks; one thread, so that what training prints and draws is the same on any machine
    env = {**os.environ, 'MPLBACKEND': 'Agg', 'IN_TEST': '1', 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1',
           'PYTHONWARNINGS': 'ignore::FutureWarning'}                # as tests/run.sh runs them
    with tempfile.TemporaryDirectory() as d:
        r = subprocess.run([sys.executable, '-c', code, str(path), f'{d}/nb.json', str(width)], cwd=ROOT, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if r.returncode: raise RuntimeError(r.stdout.strip()[-3000:])
        return json.loads(Path(d, 'nb.json').read_text(encoding='utf-8'))

def store(paths, limit=STORE_LIMIT, width=STORE_WIDTH) -> list:
    "Execute each notebook (as nbdev_test does: slow and notest cells skipped, left without outputs), store its outputs in it, `nbdev_clean` it; a list of problems."
    from execnb.nbio import write_nb
    from fastcore.xtras import working_directory
    from nbdev.clean import nbdev_clean
    problems = []
    for p in paths:
        t0 = time.time()
        try: nb = run_isolated(p, width)
        except Exception as e: problems.append(f'{p.name}: not stored, it failed:\n{e}'); continue
        n = output_bytes(nb)
        if n > limit:
            big = sorted(((len(json.dumps(o)), c.get('id')) for c in nb['cells'] for o in c.get('outputs', [])), reverse=True)[:3]
            problems.append(f"{p.name}: {n:,} bytes of outputs, over the limit of {limit:,} (largest: "
                            f"{', '.join(f'cell {i} {k:,} B' for k, i in big)}): not stored; make those outputs smaller")
            continue
        write_nb(nb, p)
        with working_directory(ROOT): nbdev_clean(fname=str(p))     # settings.ini's clean: metadata and execution counts go
        if n and not output_bytes(json.loads(p.read_text(encoding='utf-8'))):
            problems.append(f"{p.name}: nbdev_clean removed the outputs: set clear_all = False in settings.ini"); continue
        print(f"docs: stored {p.relative_to(ROOT) if p.is_relative_to(ROOT) else p}: {n:,} bytes of outputs, "
              f"{len(images(nb))} pictures [{time.time()-t0:.1f} s]", file=sys.stderr)
    return problems

def check_site(out, pages):
    "Our own checks on the built site: every notebook is a page listed in the navigation."
    if not (out/'index.html').exists(): return ['no site was written']
    index = (out/'index.html').read_text(encoding='utf-8')
    return [f'{p}.ipynb: not in the navigation' for p in pages
            if not (out/f'{p}.html').exists() or f'href="{p}.html"' not in index]

def build(out=ROOT/'_docs', execute=(), quiet=True, src=ROOT/'_proc'/'docs_src'):
    "Build the site; returns a list of problems (empty: the site is good)."
    from sphinx.cmd.build import build_main
    t0 = time.time()
    broken = {}
    names = public_names(broken=broken)
    nb_of.update({m: nb.stem for nb, m in notebooks() if m})
    problems = [f'{LIB}.{m} cannot be imported, so its names cannot be documented: {e}' for m, e in broken.items()]
    problems += missing_pictures()
    for m, bad in undocumented(names).items():
        problems += [f'{LIB}.{m}.{n} (nbs/{nb_of[m]}.ipynb): no docstring (a constant: no comment on its line)' for n in bad]
    pages = stage(src, names, execute)
    html = src/'_build'/'html'   # myst-nb writes its jupyter_execute/ beside the output folder: keep it in the staging tree
    args = ['-b', 'html', '-W', '--keep-going', '-E', '-j', 'auto', '-d', str(src/'_build'/'doctrees')] + (['-q'] if quiet else []) + [str(src), str(html)]
    if build_main(args) != 0: problems.append('Sphinx reported warnings (above): broken links or anchors, pages not in the navigation, bad markup')
    if out.exists(): shutil.rmtree(out)
    if html.exists(): shutil.move(str(html), str(out))
    if not problems: problems += check_site(out, pages)
    print(f"docs: {len(pages)} notebooks, {sum(map(len, names.values()))} public names -> {out/'index.html'} "
          f"[{time.time()-t0:.1f} s]", file=sys.stderr)
    return problems

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--out', default=str(ROOT/'_docs'), help='the site folder (default: _docs/)')
    ap.add_argument('--src', default=str(ROOT/'_proc'/'docs_src'), help="where the Sphinx sources are written (default: _proc/docs_src/)")
    ap.add_argument('--execute', nargs='*', default=(), metavar='NOTEBOOK',
                    help="run these notebooks (stems like 18_cutout, or 'all') before rendering, to show their outputs")
    ap.add_argument('--store', nargs='*', default=None, metavar='NOTEBOOK',
                    help="instead of building the site, run these notebooks (stems like 18_cutout, paths, or none: all of nbs/) "
                         "as nbdev_test does and store their outputs in them (PNGs at most 600 px wide, no local paths), then nbdev_clean them")
    ap.add_argument('-v', '--verbose', action='store_true', help="show Sphinx's progress")
    a = ap.parse_args(argv)
    if a.store is not None:
        nbs = {p.stem: p for p, _ in notebooks()}
        paths = [nbs[n] if n in nbs else Path(n).resolve() for n in a.store or nbs]
        if missing := [str(p) for p in paths if not p.is_file()]: ap.error(f"no such notebook: {', '.join(missing)}")
        problems = store(paths)
    else:
        execute = {p.stem for p, _ in notebooks()} if 'all' in a.execute else set(a.execute)
        problems = build(Path(a.out).resolve(), execute, quiet=not a.verbose, src=Path(a.src).resolve())
    for p in problems: print(f'docs: error: {p}', file=sys.stderr)
    return 1 if problems else 0

if __name__ == '__main__': sys.exit(main())
