"""Build the documentation site from `nbs/*.ipynb` and the top-level Markdown files into `_docs/` (no Quarto needed).

    pip install -e ".[docs]"
    python tools/docs.py                      # -> _docs/index.html; no notebook is executed (stored outputs are shown)
    python tools/docs.py --execute 18_cutout  # run these notebooks first (as nbdev_test does) and show their outputs
    python tools/docs.py --execute all        # every notebook

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
its line), a notebook missing from the navigation, a link to a missing page or anchor (Sphinx runs with `-W`).
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

def run_notebook(path):
    "The notebook at `path` executed in its folder with execnb, as nbdev_test runs it (cells flagged notest or slow are skipped)."
    import os
    from execnb.nbio import nb2dict, read_nb
    from execnb.shell import CaptureShell
    nbx, sh, cwd = read_nb(path), CaptureShell(), os.getcwd()
    os.chdir(path.parent)
    try:
        for c in nbx.cells:
            if c.cell_type != 'code' or {'notest', 'slow'} & set(directives(c.source)[0]): continue
            sh.cell(c)   # stores the cell's outputs in it
            if sh.exc: raise RuntimeError(f'{path.name}: a cell failed while executing: {sh.exc!r}')
    finally: os.chdir(cwd)
    return nb2dict(nbx)

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
    ap.add_argument('-v', '--verbose', action='store_true', help="show Sphinx's progress")
    a = ap.parse_args(argv)
    execute = {p.stem for p, _ in notebooks()} if 'all' in a.execute else set(a.execute)
    problems = build(Path(a.out).resolve(), execute, quiet=not a.verbose, src=Path(a.src).resolve())
    for p in problems: print(f'docs: error: {p}', file=sys.stderr)
    return 1 if problems else 0

if __name__ == '__main__': sys.exit(main())
