import os, pytest
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
