__version__ = "0.1.0"
"`from carvana_fastai import *` gives the public API; modules are imported on first use, so the CLI's `--help` stays fast."
import importlib

_modules = ['core', 'rle', 'config', 'data', 'synth', 'bodies', 'unet', 'losses', 'checkpoint', 'train', 'images', 'ensemble',
            'submission', 'evaluate', 'report', 'workflow', 'cutout', 'export', 'refine']

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
