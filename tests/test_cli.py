"The command line, run as a user runs it: `python -m carvana_fastai.run ...` in a subprocess, on tiny synthetic data."
from carvana_fastai.core import image_shape
import csv, gzip, importlib.util, json, os, shutil, subprocess, sys, time
from pathlib import Path
import pytest, yaml

ENV = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', MPLBACKEND='Agg', PYTHONWARNINGS='ignore', COLUMNS='200')
ENV.pop('CARVANA_DEBUG', None)
COMMANDS = ['all', 'synth', 'train', 'evaluate', 'predict', 'merge-shards', 'validate-submission', 'cutout', 'serve', 'export',
            'refine-train']

def cli(*args, timeout=600):
    "Run the CLI with `args`; return the CompletedProcess (text stdout/stderr)."
    return subprocess.run([sys.executable, '-m', 'carvana_fastai.run', *map(str, args)], capture_output=True, text=True,
                          env=ENV, timeout=timeout)

def ok(r):
    assert r.returncode == 0, f"exit {r.returncode}\nSTDOUT:\n{r.stdout[-3000:]}\nSTDERR:\n{r.stderr[-3000:]}"
    return r

def tiny_config(**over):
    "A config small enough for CPU tests: two members (efficientnet_lite0 concat/add, pretrained/scratch), 1-2 tiny stages."
    cfg = dict(name='tiny', data=dict(valid_pct=0.34, seed=1),
               synth=dict(cars=6, views=2, size=[64, 96], test_cars=1, seed=0),
               models=[dict(name='a', body='efficientnet_lite0', fusion='concat', pretrained=True,
                            plan=[dict(size=[32, 48], epochs=1, lr=0.003, bs=4), dict(size=[64, 96], epochs=1, lr=0.001, bs=4)]),
                       dict(name='b', body='efficientnet_lite0', fusion='add', pretrained=False,
                            plan=[dict(size=[48, 64], epochs=1, lr=0.003, bs=4)])],
               ensemble=dict(tta='hflip'), refine=dict(steps=10, size=32), predict=dict(bs=4, overlays=2))
    for k, v in over.items(): cfg[k] = {**cfg[k], **v} if isinstance(v, dict) and isinstance(cfg.get(k), dict) else v
    return cfg

def write_yaml(path, d):
    Path(path).write_text(yaml.safe_dump(d, sort_keys=False))
    return Path(path)

@pytest.fixture(scope='module')
def cli_data(tmp_path_factory):
    "A tiny synthetic dataset written by the `synth` sub-command."
    out = tmp_path_factory.mktemp('cli')/'data'
    r = ok(cli('synth', '--out', out, '--cars', 6, '--views', 2, '--size', '64x96', '--test-cars', 1, '--seed', 0))
    assert 'synth:' in r.stdout and str(out) in r.stdout
    return out

def read_rows(p):
    with (gzip.open(p, 'rt') if str(p).endswith('.gz') else open(p)) as f: return list(csv.reader(f))

# --- help and imports ---------------------------------------------------------------------------------------------

def test_help_is_fast_and_light():
    "`--help` of every sub-command shows the defaults, without importing fastai, timm or torch."
    code = ("import sys, time; t = time.time(); from carvana_fastai.run import main\n"
            "for c in %r:\n"
            "    try: main([c, '--help'])\n"
            "    except SystemExit as e: assert e.code == 0\n"
            "print('SECONDS', time.time() - t)\n"
            "print('HEAVY', sorted({m.split('.')[0] for m in sys.modules} & {'fastai', 'timm', 'torch', 'torchvision'}))" % COMMANDS)
    r = ok(subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=ENV))
    assert 'HEAVY []' in r.stdout, r.stdout[-500:]
    secs = float(r.stdout.split('SECONDS')[1].split()[0])
    print(f"--help of {len(COMMANDS)} sub-commands: {secs:.2f} s of imports and parsing")   # measured, not asserted
    for c in COMMANDS:
        h = ok(cli(c, '--help')).stdout
        assert '(default:' in h, f"{c} --help shows no defaults:\n{h}"
    h = cli('predict', '--help').stdout
    assert '(default: hflip, or a shipped' in h and '(default: submission.csv)' in h and '--shard' in h
    assert '(default: 320x480)' in cli('synth', '--help').stdout
    assert 'COMMAND' in ok(cli('--help')).stdout

def test_print_config(tmp_path):
    "`--print-config` prints the effective config: the defaults with the user's file merged over them."
    r = ok(cli('--print-config'))
    d = yaml.safe_load(r.stdout)
    assert d['name'] == 'demo' and len(d['models']) >= 2 and d['ensemble']['tta'] == 'hflip'
    user = write_yaml(tmp_path/'u.yaml', dict(data=dict(valid_pct=0.5), ensemble=dict(tta='none')))
    d2 = yaml.safe_load(ok(cli('all', '--config', user, '--print-config')).stdout)
    assert d2['data']['valid_pct'] == 0.5 and d2['ensemble']['tta'] is None and d2['models'] == d['models']
    assert d2['data']['seed'] == d['data']['seed']                          # deep merge keeps the other keys
    p = yaml.safe_load(ok(cli('train', '--config', 'paper', '--print-config')).stdout)
    assert {m['body'] for m in p['models']} == {'resnet34', 'vgg16_bn'} and {m['fusion'] for m in p['models']} == {'add', 'concat'}
    assert p['models'][0]['plan'][-1]['size'] == [1280, 1918]

# --- bad input: one line, exit code 2, before any work ---------------------------------------------------------------

def one_line_error(r, *words):
    assert r.returncode == 2, f"exit {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, f"expected one line on stderr:\n{r.stderr}"
    assert 'Traceback' not in r.stderr and 'error:' in lines[0]
    for w in words: assert w in lines[0], f"{w!r} not in {lines[0]!r}"
    return lines[0]

def test_config_errors(tmp_path, cli_data):
    out = tmp_path/'runs'
    bad = write_yaml(tmp_path/'typo.yaml', dict(data=dict(vaild_pct=0.3)))
    one_line_error(cli('all', '--config', bad, '--out', out), 'typo.yaml', "unknown key 'data.vaild_pct'", "did you mean 'valid_pct'")
    bad = write_yaml(tmp_path/'type.yaml', dict(predict=dict(bs='four')))
    one_line_error(cli('all', '--config', bad, '--out', out), 'predict.bs must be a positive integer', "'four'")
    bad = write_yaml(tmp_path/'top.yaml', dict(modles=[]))
    one_line_error(cli('train', '--config', bad, '--data', cli_data), "unknown key 'modles'", "did you mean 'models'")
    bad = write_yaml(tmp_path/'body.yaml', tiny_config(models=[dict(name='x', body='resnet343', plan=[dict(size=[32, 48])])]))
    one_line_error(cli('all', '--config', bad, '--data', cli_data, '--out', out), 'models[0] (x)', "Unknown body 'resnet343'", 'resnet34')
    bad = write_yaml(tmp_path/'plan.yaml', tiny_config(models=[dict(name='x', plan=[dict(size=[32, 48], epoch=1)])]))
    one_line_error(cli('all', '--config', bad, '--data', cli_data, '--out', out), 'plan stage 0', "unknown key 'epoch'")
    one_line_error(cli('all', '--data', tmp_path/'nowhere', '--out', out), 'data folder', 'nowhere', 'does not exist')
    one_line_error(cli('train', '--data', tmp_path, '--out', out), 'has no train/ folder')
    (tmp_path/'file').write_text('x')
    one_line_error(cli('all', '--data', cli_data, '--out', tmp_path/'file'/'runs'), 'not writable')
    one_line_error(cli('all', '--config', tmp_path/'missing.yaml'), 'missing.yaml does not exist')
    one_line_error(cli('predict', '--data', cli_data, '--models', tmp_path/'no.pth'), 'checkpoint', 'no.pth', 'does not exist')
    (tmp_path/'bad.pth').write_bytes(b'not a checkpoint')
    one_line_error(cli('evaluate', '--data', cli_data, '--models', tmp_path/'bad.pth'), 'bad.pth is not a carvana_fastai checkpoint')
    one_line_error(cli('synth', '--size', 'big'), 'size must be HxW')
    one_line_error(cli('all', '--device', 'gpu'), 'device must be')
    assert not out.exists() or not any(out.iterdir())                           # nothing was started

# --- the steps one by one, as a user runs them on a Carvana folder ----------------------------------------------------

def test_steps_end_to_end(tmp_path, cli_data):
    "synth (fixture) -> train -> evaluate -> predict (whole and in shards) -> merge-shards -> validate-submission."
    cfg = write_yaml(tmp_path/'tiny.yaml', tiny_config())
    models = tmp_path/'models'
    r = ok(cli('train', '--data', cli_data, '--out', models, '--config', cfg, '--device', 'cpu'))
    ckpts = [models/'a'/'model.pth', models/'b'/'model.pth']
    for c in ckpts: assert c.is_file() and (c.parent/'history.csv').is_file() and (c.parent/'history.png').is_file()
    info = json.loads((models/'a'/'train.json').read_text())
    assert info['scales'] == '32x48 -> 64x96' and info['params'] > 0 and info['train_s'] > 0
    assert 'train:' in r.stdout.splitlines()[-1]
    # training again into the same folder without --resume would overwrite: refused
    one_line_error(cli('train', '--data', cli_data, '--out', models, '--config', cfg), 'already holds a trained model', '--resume')

    r = ok(cli('evaluate', '--data', cli_data, '--models', *ckpts, '--out', tmp_path/'eval'))
    ev = list(csv.DictReader(open(tmp_path/'eval'/'evaluation.csv')))
    assert [e['tta'] for e in ev] == ['none', 'hflip']*3
    assert all(0 <= float(e['dice']) <= 1 for e in ev)
    assert 'ensemble' in ev[-1]['model'] and 'evaluate:' in r.stdout

    sub = tmp_path/'sub.csv'
    r = ok(cli('predict', '--data', cli_data, '--models', *ckpts, '--out', sub, '--tta', 'hflip'))
    rows = read_rows(sub)
    sample = read_rows(cli_data/'sample_submission.csv')
    assert rows[0] == ['img', 'rle_mask'] and [r[0] for r in rows] == [r[0] for r in sample]
    assert 'OK' in r.stdout
    assert 'OK' in ok(cli('validate-submission', sub, '--data', cli_data)).stdout

    parts = [tmp_path/f'part{i}.csv' for i in range(2)]
    for i, p in enumerate(parts): ok(cli('predict', '--data', cli_data, '--models', *ckpts, '--out', p, '--shard', f'{i}/2'))
    assert sum(len(read_rows(p)) - 1 for p in parts) == len(rows) - 1
    ok(cli('merge-shards', *parts, '--out', tmp_path/'merged.csv', '--data', cli_data))
    assert (tmp_path/'merged.csv').read_text() == sub.read_text()

    # the same ensemble exported to ONNX (TTA inside the graph) predicts the same submission with onnxruntime
    pytest.importorskip('onnxruntime', reason='the [onnx] extra is not installed')
    r = ok(cli('export', '--models', *ckpts, '--tta', 'hflip', '--out', tmp_path/'ens.onnx'))
    assert (tmp_path/'ens.onnx').is_file() and (tmp_path/'ens.json').is_file() and 'export:' in r.stdout
    one_line_error(cli('predict', '--engine', 'onnx', '--data', cli_data, '--models', *ckpts, '--out', tmp_path/'x.csv'), 'takes one .onnx file')
    one_line_error(cli('evaluate', '--engine', 'onnx', '--data', cli_data, '--models', tmp_path/'ens.onnx'), 'evaluate runs on --engine torch only')
    r = ok(cli('predict', '--engine', 'onnx', '--data', cli_data, '--models', tmp_path/'ens.onnx', '--out', tmp_path/'onnx.csv'))
    assert 'OK' in r.stdout
    torch_rows, onnx_rows = read_rows(sub)[1:], read_rows(tmp_path/'onnx.csv')[1:]
    assert [r[0] for r in onnx_rows] == [r[0] for r in torch_rows]
    from carvana_fastai.rle import rle_decode, dice
    shape = image_shape(cli_data/'test'/torch_rows[0][0])
    dices = [dice(rle_decode(a[1], shape), rle_decode(b[1], shape)) for a, b in zip(torch_rows, onnx_rows)]
    assert min(dices) > 0.9999, dices          # the same arithmetic in both engines: float rounding apart

    broken = tmp_path/'broken.csv'
    broken.write_text('\n'.join(l for l in sub.read_text().splitlines()[:-1]) + '\n')      # one image missing
    r = cli('validate-submission', broken, '--data', cli_data)
    assert r.returncode == 1 and 'expected images have no row' in r.stdout

    # cut-outs of the test photos with the same checkpoints: photos after --models, a folder and a glob; a bad file fails alone
    photos = tmp_path/'photos'; shutil.copytree(cli_data/'test', photos)
    (photos/'broken.jpg').write_bytes(b'not a jpeg')
    n = len(list((cli_data/'test').glob('*.jpg')))
    r = cli('cutout', '--models', *ckpts, photos, '--out', tmp_path/'cut', '--device', 'cpu')
    assert r.returncode == 1 and 'broken.jpg' in r.stderr and f"{n} written, 0 skipped (done before), 1 failed" in r.stdout, (r.stdout[-2000:], r.stderr[-2000:])
    assert len(list((tmp_path/'cut').glob('*.png'))) == n and not (tmp_path/'cut'/'broken.png').exists()
    (photos/'broken.jpg').unlink()
    r = ok(cli('cutout', '--models', *ckpts, '--tta', 'none', '--out', tmp_path/'cut', '--resume', str(photos/'*.jpg')))
    assert f"0 written, {n} skipped (done before)" in r.stdout.splitlines()[-1], r.stdout
    one = sorted(photos.glob('*.jpg'))[0]
    r = subprocess.run([sys.executable, '-m', 'carvana_fastai.run', 'cutout', '--models', *map(str, ckpts), '-', '--out',
                        str(tmp_path/'masks'), '--mask-only'], input=f"{one}\n", capture_output=True, text=True, env=ENV)
    ok(r)
    assert [p.stem for p in (tmp_path/'masks').glob('*.png')] == [one.stem]

def test_cutout_usage_errors(tmp_path):
    "`cutout`'s bad arguments are one line, exit code 2, before any model is loaded."
    (tmp_path/'m.pth').write_bytes(b'x')
    one_line_error(cli('cutout', '--models', tmp_path/'m.pth', '--out', tmp_path/'o'), 'cutout needs photos')
    one_line_error(cli('cutout', '--models', tmp_path/'no.pth', tmp_path, '--out', tmp_path/'o'), 'checkpoint', 'no.pth', 'does not exist')
    one_line_error(cli('cutout', '--models', tmp_path/'m.pth', tmp_path/'nope.jpg', '--out', tmp_path/'o'), 'nope.jpg', 'no such file')
    one_line_error(cli('cutout', '--models', tmp_path/'m.pth', '--out', tmp_path/'o', '--background', 'whiet', 'x.jpg'), 'background must be')
    one_line_error(cli('cutout', '--models', tmp_path/'m.pth', '--out', tmp_path/'o', '--alpha', 'medium', 'x.jpg'), "invalid choice: 'medium'")

def test_onnx_engine_cutout_and_config(tmp_path, tiny_carvana):
    "`cutout --engine onnx` takes an exported graph; an .onnx file on the torch engine and a bad config engine are one-line errors."
    pytest.importorskip('onnxruntime', reason='the [onnx] extra is not installed'); pytest.importorskip('onnxscript')
    import sys as _sys; _sys.path.insert(0, str(Path(__file__).parent))
    from tiny_models import tiny_ensemble
    from carvana_fastai.export import export_onnx
    f = export_onnx(tiny_ensemble('hflip'), tmp_path/'ens.onnx')
    photos = sorted((tiny_carvana/'test').glob('*.jpg'))[:2]
    r = ok(cli('cutout', '--engine', 'onnx', '--models', f, *photos, '--out', tmp_path/'cut'))
    assert '2 written' in r.stdout.splitlines()[-1]
    from PIL import Image
    for p in photos:
        im = Image.open(tmp_path/'cut'/f'{p.stem}.png')
        assert im.mode == 'RGBA' and im.size == Image.open(p).size
    one_line_error(cli('cutout', '--models', f, *photos, '--out', tmp_path/'cut2'), 'is an ONNX graph: run it with --engine onnx')
    one_line_error(cli('all', '--config', write_yaml(tmp_path/'bad.yaml', dict(predict=dict(engine='tensorrt')))),
                   'predict.engine must be one of torch, onnx')

def test_all_steps_with_onnx_engine(tmp_path, tiny_carvana):
    "`all` with predict.engine onnx: the evaluated ensemble is exported into the run folder and predicts the submission."
    pytest.importorskip('onnxruntime', reason='the [onnx] extra is not installed'); pytest.importorskip('onnxscript')
    import sys as _sys; _sys.path.insert(0, str(Path(__file__).parent))
    from tiny_models import tiny_ensemble
    from carvana_fastai.config import load_config
    from carvana_fastai.workflow import engine_step, _predict_all
    from carvana_fastai.rle import rle_decode, dice
    ens = tiny_ensemble('hflip', threshold=0.45)
    cfg = load_config(**{'predict.engine': 'onnx', 'predict.bs': 4})
    (tmp_path/'t').mkdir(); (tmp_path/'o').mkdir()
    sub_t, check_t = _predict_all(cfg, ens, tiny_carvana, tmp_path/'t', False)
    ox = engine_step(ens, cfg['predict']['engine'], tmp_path/'o')
    assert type(ox).__name__ == 'OnnxEnsemble' and ox.threshold == 0.45 and (tmp_path/'o'/'ensemble.onnx').is_file()
    sub_o, check_o = _predict_all(cfg, ox, tiny_carvana, tmp_path/'o', False)
    assert check_t['ok'] and check_o['ok']
    rows_t, rows_o = read_rows(sub_t)[1:], read_rows(sub_o)[1:]
    assert [r[0] for r in rows_t] == [r[0] for r in rows_o]
    shape = image_shape(tiny_carvana/'test'/rows_t[0][0])
    assert min(dice(rle_decode(a[1], shape), rle_decode(b[1], shape)) for a, b in zip(rows_t, rows_o)) > 0.9999

# --- your own photos: the folders layout -----------------------------------------------------------------------------

def test_folders_layout(tmp_path, cli_data):
    "Photos in images/, masks in masks/ named <stem>_mask.gif, grouped by car: train and evaluate through the CLI."
    d = tmp_path/'mine'
    shutil.copytree(cli_data/'train', d/'images')
    shutil.copytree(cli_data/'train_masks', d/'masks')
    cfg = tiny_config(models=[dict(name='a', body='efficientnet_lite0', pretrained=False, plan=[dict(size=[32, 48], epochs=1, bs=4)])],
                      data=dict(layout='folders', mask_suffix='_mask', group=r'^([^_]+)_'))
    cfg = write_yaml(tmp_path/'mine.yaml', cfg)
    one_line_error(cli('train', '--config', cfg, '--data', tmp_path, '--out', tmp_path/'m'), 'has no images/ folder')
    ok(cli('train', '--config', cfg, '--data', d, '--out', tmp_path/'m', '--device', 'cpu'))
    info = json.loads((tmp_path/'m'/'a'/'train.json').read_text())
    assert info['valid_dice'] is not None
    r = ok(cli('evaluate', '--data', d, '--layout', 'folders', '--mask-suffix', '_mask', '--group', r'^([^_]+)_',
               '--models', tmp_path/'m'/'a'/'model.pth', '--tta', 'none'))
    assert 'evaluate:' in r.stdout

# --- `all`, and --resume after an interruption ----------------------------------------------------------------------

def test_all_and_resume(tmp_path):
    "`all` on a tiny config: report and valid submission; then an interrupted run continues with --resume."
    cfg = write_yaml(tmp_path/'tiny.yaml', tiny_config())
    out = tmp_path/'runs'
    r = ok(cli('all', '--config', cfg, '--out', out, '--device', 'cpu'))
    runs = list(out.iterdir())
    assert len(runs) == 1 and runs[0].name.startswith('tiny-')
    run = runs[0]
    for f in ['config.yaml', 'report.md', 'submission.csv', 'submission_check.txt', 'evaluation.csv', 'evaluation.md',
              'models/a/model.pth', 'models/b/model.pth', 'models/a/history.png', 'data/train_masks.csv']:
        assert (run/f).is_file(), f
    assert len(list((run/'overlays').glob('*.png'))) == 2
    assert (run/'submission_check.txt').read_text().startswith(f"submission {run/'submission.csv'}: OK")
    assert 'OK' in ok(cli('validate-submission', run/'submission.csv', '--data', run/'data')).stdout
    report = (run/'report.md').read_text()
    for s in ['| model', 'Dice + TTA (hflip)', '| a ', '| b ', '**ensemble', 'models/a/history.png', 'overlays/', 'submission.csv']:
        assert s in report, s
    assert f"Report: {run/'report.md'}" in r.stdout.splitlines()[-1]
    saved = yaml.safe_load((run/'config.yaml').read_text())
    assert saved['models'][1]['fusion'] == 'add' and saved['synth']['size'] == [64, 96]

    # an interruption during model a's second stage: its stage-0 checkpoint is there, not its later ones; b is done;
    # the submission and report were never written
    b_time = (run/'models/b/model.pth').stat().st_mtime_ns
    for f in ['models/a/model.pth', 'models/a/last.pth', 'models/a/stage1-64x96.pth', 'models/a/train.json', 'submission.csv',
              'report.md']: (run/f).unlink()
    assert (run/'models/a/stage0-32x48.pth').is_file()
    r = ok(cli('all', '--out', out, '--resume', '--device', 'cpu'))     # the run's own config.yaml is reused
    assert 'train b: reusing' in r.stdout
    assert f"train a: resuming from {run/'models/a/stage0-32x48.pth'}" in r.stdout
    assert (run/'models/b/model.pth').stat().st_mtime_ns == b_time
    hist = list(csv.DictReader(open(run/'models/a/history.csv')))
    assert [h['size'] for h in hist] == ['32x48', '64x96']                 # stage 0 kept, stage 1 trained once
    assert (run/'models/a/model.pth').is_file() and (run/'report.md').is_file()
    assert (run/'submission_check.txt').read_text().startswith(f"submission {run/'submission.csv'}: OK")
    assert len(list(out.iterdir())) == 1                                    # the same run folder

def test_ctrl_c_then_resume(tmp_path):
    "A real Ctrl-C (SIGINT) in model a's second stage: exit code 130 and a hint; `--resume` finishes the run, each epoch once."
    import signal
    cfg = tiny_config()
    cfg['models'][0]['plan'][1]['epochs'] = 30                              # long enough to be interrupted
    cfg = write_yaml(tmp_path/'long.yaml', cfg)
    out = tmp_path/'runs'
    p = subprocess.Popen([sys.executable, '-m', 'carvana_fastai.run', 'all', '--config', str(cfg), '--out', str(out), '--device', 'cpu'],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    t0 = time.time()
    while not any('64x96' in h.read_text() for h in out.glob('*/models/a/history.csv')):     # stage 1 has begun
        assert p.poll() is None and time.time() - t0 < 300, 'the run ended before it could be interrupted'
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    rest, err = p.communicate(timeout=300)
    assert p.returncode == 130 and 'interrupted' in err and '--resume' in err, (p.returncode, rest[-2000:], err[-2000:])
    run = next(out.iterdir())
    assert not (run/'models/a/model.pth').exists() and not (run/'report.md').exists()
    r = ok(cli('all', '--config', cfg, '--out', out, '--resume', '--device', 'cpu'))
    assert 'train a:' in r.stdout and (run/'report.md').is_file()
    hist = list(csv.DictReader(open(run/'models/a/history.csv')))
    assert [h['size'] for h in hist] == ['32x48'] + ['64x96']*30                # every epoch of the plan, once
    assert (run/'submission_check.txt').read_text().startswith(f"submission {run/'submission.csv'}: OK")

# --- several processes ------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_all_under_torchrun(tmp_path):
    "Under `torchrun` (2 processes, gloo on CPU) `all` trains with DDP; rank 0 alone prints, evaluates, predicts and reports."
    import socket
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
    cfg = write_yaml(tmp_path/'tiny.yaml', tiny_config())
    out = tmp_path/'runs'
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_addr', '127.0.0.1', '--master_port',
           str(port), '-m', 'carvana_fastai.run', 'all', '--config', cfg, '--out', out, '--device', 'cpu']
    env = dict(ENV, CUDA_VISIBLE_DEVICES='')
    r = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode != 0 and 'needs --name' in r.stderr                  # every process must agree on the folder
    r = ok(subprocess.run(list(map(str, cmd + ['--name', 'ddp'])), capture_output=True, text=True, env=env, timeout=600))
    assert r.stdout.count('all: done') == 1 and r.stdout.count('train a: done') == 1
    run = out/'ddp'
    for f in ['report.md', 'submission.csv', 'models/a/model.pth', 'models/b/history.csv']: assert (run/f).is_file(), f
    assert (run/'submission_check.txt').read_text().startswith(f"submission {run/'submission.csv'}: OK")

# --- cross-validation by car ------------------------------------------------------------------------------------------

def test_all_folds_out_of_fold_and_resume(tmp_path, cli_data):
    "`all --folds 2` on a labelled folder without test/: 2 fold models per model (and a final one), the out-of-fold table, no submission; --resume reuses the folds done."
    data = tmp_path/'labelled'
    shutil.copytree(cli_data, data, ignore=shutil.ignore_patterns('test', 'sample_submission.csv'))
    cfg = tiny_config(models=[dict(name='a', body='efficientnet_lite0', pretrained=True, final=True, plan=[dict(size=[32, 48], epochs=1, bs=4)]),
                              dict(name='b', body='efficientnet_lite0', fusion='add', pretrained=False, plan=[dict(size=[32, 48], epochs=1, bs=4)])],
                      ensemble=dict(tta='hflip', threshold='best'), refine=dict(method='none'))
    cfg, out = write_yaml(tmp_path/'cv.yaml', cfg), tmp_path/'runs'
    one_line_error(cli('all', '--config', cfg, '--data', data, '--out', out, '--folds', 1), 'models[0].folds must be a number of folds, at least 2')
    r = ok(cli('all', '--config', cfg, '--data', data, '--out', out, '--name', 'cv', '--folds', 2, '--device', 'cpu'))
    run = out/'cv'
    for f in ['models/a/fold0/model.pth', 'models/a/fold1/model.pth', 'models/a/model.pth', 'models/b/fold0/model.pth',
              'models/b/fold1/model.pth', 'evaluation.md', 'report.md']:
        assert (run/f).is_file(), f
    assert not (run/'models/b/model.pth').exists() and not (run/'submission.csv').exists()    # b: no final model; no test/
    assert 'train a on every car' in r.stdout and 'train b fold 2/2' in r.stdout
    assert 'best threshold on the out-of-fold maps' in r.stdout and 'has no test/ folder: no submission' in r.stdout
    ev = list(csv.DictReader(open(run/'evaluation.csv')))
    assert [e['model'] for e in ev] == ['member 0 (a)']*2 + ['member 1 (b)']*2 + ['2-fold ensemble (mean of 2)']*2
    assert all(0 < float(e['dice']) <= 1 for e in ev)
    assert 'out of fold: 12 photos of 6 cars' in (run/'report.md').read_text()                 # every photo, each scored once
    from carvana_fastai.checkpoint import read_checkpoint
    ck = read_checkpoint(run/'models/a/model.pth')
    assert ck['split']['valid_pct'] == 0 and 'fold' not in ck['split']                          # the final model saw every car

    for f in ['models/b/fold1/model.pth', 'models/b/fold1/train.json', 'report.md']: (run/f).unlink()   # interrupted in b's 2nd fold
    a_time = (run/'models/a/fold1/model.pth').stat().st_mtime_ns
    r = ok(cli('all', '--out', out, '--name', 'cv', '--resume', '--device', 'cpu'))
    assert 'train a fold 2/2: reusing' in r.stdout and 'train b fold 1/2: reusing' in r.stdout
    assert (run/'models/a/fold1/model.pth').stat().st_mtime_ns == a_time
    assert (run/'models/b/fold1/model.pth').is_file() and (run/'report.md').is_file()

def test_shipped_model_in_the_commands(tmp_path, cli_data):
    "`--models cars` in cutout, evaluate (a labelled folder, whole: the shipped model saw none of it) and export: no training, no checkpoint path."
    photo = sorted((cli_data/'test').iterdir())[0]
    r = ok(cli('cutout', '--models', 'cars', photo, '--out', tmp_path/'cut'))
    assert (tmp_path/'cut'/f'{photo.stem}.png').is_file()
    r = ok(cli('evaluate', '--models', 'cars', '--data', cli_data, '--tta', 'none', '--refine', 'none'))
    assert 'every labelled photo' in r.stdout and '12 labelled photos of 6 cars' in r.stdout
    one_line_error(cli('cutout', '--models', 'trucks', photo, '--out', tmp_path/'cut'), 'checkpoint trucks does not exist', 'nor a shipped model: cars')
