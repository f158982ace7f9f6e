"The package's namespace: `from carvana_fastai import *` and named imports give every public name as its module exports it, whatever was imported before."
import subprocess, sys
import pytest

def run(code):
    "stdout of `code` in a fresh interpreter (each case needs its own import history)."
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout.split()

CHECK = ("import types, carvana_fastai as c\n"
         "mods = [n for n in c.__all__ if isinstance(globals().get(n), types.ModuleType) or isinstance(getattr(c, n), types.ModuleType)]\n"
         "print(len(c.__all__), 'modules:', *mods)\n")

@pytest.mark.parametrize('before', [
    '',                                                            # a fresh interpreter
    'import carvana_fastai.cutout, carvana_fastai.refine',         # the submodules first
    'from carvana_fastai.cutout import cutout_folder; from carvana_fastai.refine import get_refiner',   # as the CLI does, lazily
    'import carvana_fastai.cli, carvana_fastai.workflow; from carvana_fastai import core'])
def test_star_import_binds_no_module(before):
    out = run(f"{before}\nfrom carvana_fastai import *\n{CHECK}")
    assert int(out[0]) > 100 and out[1:] == ['modules:'], out

def test_named_import_is_the_function():
    "`from carvana_fastai import cutout` is the function, before and after its module was imported; the module is still importable."
    out = run("from carvana_fastai import cutout, refine\n"
              "import carvana_fastai.cutout\n"
              "from carvana_fastai import cutout as again\n"
              "from carvana_fastai.cutout import cutout_folder\n"
              "import importlib; m = importlib.import_module('carvana_fastai.cutout')\n"
              "print(type(cutout).__name__, type(refine).__name__, again is cutout, type(m).__name__, m.cutout is cutout)")
    assert out == ['function', 'function', 'True', 'module', 'True']

def test_lazy_names_stay_light():
    "Reading one name imports only what it needs; `python -m carvana_fastai.run --help` imports neither fastai nor timm."
    out = run("import sys\nfrom carvana_fastai.run import main\nimport carvana_fastai\n"
              "try: main(['--help'])\nexcept SystemExit: pass\n"
              "from carvana_fastai import parse_size\n"
              "print(*(m in sys.modules for m in ('fastai', 'timm', 'torch')))")
    assert out[-3:] == ['False', 'False', 'False'], out
