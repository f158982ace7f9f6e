__version__ = "0.1.0"
"""`from carvana_fastai import *` gives the public API; modules are imported on first use, so the CLI's `--help` stays fast.

The package's namespace is authoritative: a module that exports a function of its own name (`cutout`, `refine`) is
never bound as the package's attribute, so `carvana_fastai.cutout` is the function whatever was imported before.
The module itself: `from carvana_fastai.cutout import ...` or `importlib.import_module('carvana_fastai.cutout')`."""
import importlib, sys, types

_modules = ['core', 'rle', 'config', 'data', 'synth', 'bodies', 'unet', 'losses', 'checkpoint', 'train', 'images', 'ensemble',
            'submission', 'evaluate', 'report', 'preflight', 'workflow', 'cutout', 'export', 'refine']

def _exports(m):
    return getattr(importlib.import_module(f'{__name__}.{m}'), '__all__', [])

def __getattr__(name):
    "Import the public names of every module lazily (PEP 562)."
    if name == '__all__':
        globals()['__all__'] = names = [n for m in _modules for n in _exports(m)]
        return names
    if name.startswith('__'): raise AttributeError(name)
    for m in _modules:
        if name in _exports(m): return getattr(importlib.import_module(f'{__name__}.{m}'), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

class _Package(types.ModuleType):
    "The package module: importing a submodule that exports its own name binds that name, not the submodule."
    def __setattr__(self, name, value):
        if isinstance(value, types.ModuleType) and name in getattr(value, '__all__', ()): value = getattr(value, name)
        super().__setattr__(name, value)

sys.modules[__name__].__class__ = _Package
