"Edge refinement from the command line: `refine-train`, `--refine`/`--refiner` on the commands that predict, and `refine:` in `all`."
import csv, subprocess, sys
from pathlib import Path
import pytest, yaml

sys.path.insert(0, str(Path(__file__).parent))
from test_cli import cli, ok, one_line_error, read_rows, tiny_config, write_yaml

REFINE = dict(method='learned', train=True, steps=20, size=32)

@pytest.fixture(scope='module')
def refined_run(tmp_path_factory):
    "A tiny `all` run whose config trains a learned refiner: (run folder, its stdout)."
    tmp = tmp_path_factory.mktemp('refine')
    cfg = write_yaml(tmp/'tiny.yaml', tiny_config(refine=REFINE))
    r = ok(cli('all', '--config', cfg, '--out', tmp/'runs', '--name', 'r', '--device', 'cpu'))
    return tmp/'runs'/'r', r.stdout

def test_all_trains_and_uses_the_refiner(refined_run):
    "`all` with refine.train: refiner.pth in the run, refined rows in the evaluation, a valid submission and the report."
    run, out = refined_run
    for f in ['refiner.pth', 'report.md', 'evaluation.csv', 'submission.csv']: assert (run/f).is_file(), f
    line = next(l for l in out.splitlines() if l.startswith('refine: trained'))
    assert f"-> {run/'refiner.pth'}" in line and " and the ensemble's maps of them (2 members) in " in line, line
    assert 'refined (learned)' in next(l for l in out.splitlines() if l.startswith('evaluate:') and 'validation photos' in l)
    rows = list(csv.DictReader(open(run/'evaluation.csv')))
    assert [r['refine'] for r in rows if r['model'].startswith('ensemble')] == ['none', 'none', 'learned', 'learned']
    assert (run/'submission_check.txt').read_text().startswith(f"submission {run/'submission.csv'}: OK")
    assert yaml.safe_load((run/'config.yaml').read_text())['refine']['method'] == 'learned'
    from carvana_fastai.refine import load_refiner
    assert sum(p.numel() for p in load_refiner(run/'refiner.pth').parameters()) > 0
    t = (run/'refiner.pth').stat().st_mtime_ns
    r = ok(cli('all', '--out', run.parent, '--name', 'r', '--resume', '--device', 'cpu'))
    assert f"refine: reusing {run/'refiner.pth'}" in r.stdout and (run/'refiner.pth').stat().st_mtime_ns == t

def test_onnx_engine_keeps_the_refiner(tmp_path):
    "With predict.engine onnx, the exported graph's map is refined by the run's refiner, as the PyTorch ensemble's is."
    pytest.importorskip('onnxruntime', reason='the [onnx] extra is not installed'); pytest.importorskip('onnxscript')
    from tiny_models import tiny_ensemble
    from carvana_fastai.refine import get_refiner
    from carvana_fastai.workflow import engine_step
    import torch
    ens = tiny_ensemble('none', refiner=get_refiner('guided'))
    ox = engine_step(ens, 'onnx', tmp_path)
    assert ox.refiner is ens.refiner
    x = torch.randint(0, 255, (1, 3, 64, 96), dtype=torch.uint8)
    with torch.inference_mode(): assert (ox.masks(x) != ens.masks(x)).float().mean() < 0.01

def test_refine_train(tmp_path, refined_run):
    "`refine-train` trains a refiner on a dataset's training cars and says where it is and how to use it."
    run, _ = refined_run
    r = ok(cli('refine-train', '--data', run/'data', '--out', tmp_path/'tiny.pth', '--steps', 20, '--size', 32, '--photos', 4))
    assert 'refine-train: trained the learned refiner on 4 photos' in r.stdout and f"-> {tmp_path/'tiny.pth'}" in r.stdout
    assert f"--refine learned --refiner {tmp_path/'tiny.pth'}" in r.stdout.splitlines()[-1]
    from carvana_fastai.refine import load_refiner
    load_refiner(tmp_path/'tiny.pth')
    one_line_error(cli('refine-train', '--data', tmp_path, '--out', tmp_path/'x.pth'), 'has no train/ folder')
    models = [run/'models'/'a'/'model.pth', run/'models'/'b'/'model.pth']
    r = ok(cli('refine-train', '--data', run/'data', '--out', tmp_path/'own.pth', '--steps', 10, '--size', 32, '--photos', 2,
               '--models', *models, '--device', 'cpu'))
    assert "on 2 photos and the ensemble's maps of them (2 members)" in r.stdout
    load_refiner(tmp_path/'own.pth')
    one_line_error(cli('refine-train', '--data', run/'data', '--out', tmp_path/'x.pth', '--models', tmp_path/'nope.pth'), 'nope.pth does not exist')

def test_commands_with_refine(tmp_path, refined_run):
    "evaluate, predict and cutout take --refine and --refiner; a wrong refiner file is one line before any model is loaded."
    run, _ = refined_run
    data, models = run/'data', [run/'models'/'a'/'model.pth', run/'models'/'b'/'model.pth']
    r = ok(cli('evaluate', '--data', data, '--models', *models, '--refine', 'guided', '--out', tmp_path/'eval'))
    assert 'refined (guided)' in r.stdout
    assert [e['refine'] for e in csv.DictReader(open(tmp_path/'eval'/'evaluation.csv'))][-2:] == ['guided', 'guided']
    r = ok(cli('predict', '--data', data, '--models', *models, '--refine', 'learned', '--refiner', run/'refiner.pth', '--out', tmp_path/'s.csv'))
    assert 'OK' in r.stdout and len(read_rows(tmp_path/'s.csv')) == len(read_rows(run/'submission.csv'))
    photos = sorted((data/'test').glob('*.jpg'))[:2]
    r = ok(cli('cutout', '--models', *models, '--refine', 'guided', '--out', tmp_path/'cut', *photos))
    assert '2 written' in r.stdout.splitlines()[-1] and len(list((tmp_path/'cut').glob('*.png'))) == 2
    (tmp_path/'junk.pth').write_bytes(b'not a refiner')
    for bad, msg in [(models[0], 'not a refiner checkpoint'), (tmp_path/'junk.pth', 'not a refiner checkpoint'),
                     (tmp_path/'none.pth', 'no such refiner checkpoint')]:
        one_line_error(cli('predict', '--data', data, '--models', *models, '--refiner', bad, '--out', tmp_path/'x.csv'), '--refiner', str(bad), msg)
    assert not (tmp_path/'x.csv').exists()
    one_line_error(cli('cutout', '--models', *models, '--refine', 'learned', '--out', tmp_path/'c2', *photos), '--refine learned needs --refiner')

def test_refine_config_errors(tmp_path):
    "A refine section that cannot work is one line naming the key, before any work."
    out = tmp_path/'runs'
    for refine, *words in [(dict(method='learned'), 'bad.yaml', 'refine.method learned needs refine.checkpoint'),
                           (dict(method='gudied'), 'bad.yaml', 'refine.method must be one of none, guided, learned'),
                           (dict(method='guided', train=True), 'bad.yaml', 'refine.train trains the learned refiner'),
                           (dict(stpes=10), 'bad.yaml', "unknown key 'refine.stpes'; did you mean 'steps'?"),
                           (dict(method='learned', checkpoint=str(tmp_path/'no.pth')), f"refine.checkpoint: {tmp_path/'no.pth'}: no such refiner checkpoint")]:
        bad = write_yaml(tmp_path/'bad.yaml', tiny_config(refine=refine))
        one_line_error(cli('all', '--config', bad, '--out', out, '--device', 'cpu'), *words)
    assert not out.exists() or not any(out.iterdir())
    r = yaml.safe_load(ok(cli('all', '--config', 'paper', '--print-config')).stdout)['refine']
    assert (r['method'], r['train'], r['steps']) == ('learned', True, 2000)

def test_refine_methods_agree():
    "The config's copy of the refine methods (the config imports no torch) is the refine module's."
    from carvana_fastai.config import REFINE_METHODS
    from carvana_fastai.refine import REFINE_METHODS as methods
    assert REFINE_METHODS == methods
