"""Every example of README.md run as a user copies it, in order, in one temporary folder: each Python block (in this
process, as in a notebook), each shell command (`bash -c`, in a subprocess), each YAML file a command reads, and the
error transcript (its output compared line for line).

Blocks run on small synthetic data, so the fixture makes these substitutions (each must match the README, or the test
fails, so none is silently dropped):

- `/path/to/carvana` (the real Kaggle data) is a synthetic set in Kaggle's layout: 4 cars x 2 views at 64x96, 1 test car;
  `my_photos/` is made from its training photos and masks in the folders layout; `car.jpg` and `photos/` are its test photos;
- `python -m carvana_fastai.run` and its `all` without `--config` get `--config tiny.yaml`: the default config with one
  member (lite0-concat) trained for one epoch at 32x48 on the synthetic set above (`--resume` of an existing run keeps
  the run's own config);
- the sizes, counts, epochs and steps of the examples shrink (`SHRINK` below: e.g. 12 cars x 8 views at 320x480 become
  4 x 2 at 64x96, and each plan is one epoch per stage at 32x48);
- `runs/paper-*` (the paper's GPU run) is the demo's `runs/demo-*`; `torchrun` runs 2 processes on the CPU on a free
  port; the shard command runs for i = 0..3; the server listens on a free port and is stopped after the `curl` block.

A command marked in the README with `not run by the tests: REASON` (in its comment, or a block's first comment line for
the whole block) is skipped and named with its reason in the summary (`bash tests/run.sh` prints the counts)."""
import json, os, re, shlex, shutil, signal, socket, subprocess, sys, time, urllib.request
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT/'README.md'
MARK = re.compile(r'not run by the tests:\s*([^)\n]+)')
ENV = dict(os.environ, MPLBACKEND='Agg', PYTHONWARNINGS='ignore', COLUMNS='200', CUDA_VISIBLE_DEVICES='')
ENV.pop('CARVANA_DEBUG', None)

SHRINK = [  # (README text, what runs instead): sizes, counts, epochs and steps
    ("n_cars=12, views=8, size=(320, 480))", "n_cars=4, views=2, size=(64, 96), n_test_cars=1)"),
    ("size=(160, 240), bs=8,", "size=(32, 48), bs=4,"),
    ("plan = [dict(size=(96, 144), epochs=2, lr=3e-3, freeze=True), dict(size=(96, 144), epochs=3, lr=2e-3),\n"
     "        dict(size=(160, 240), epochs=3, lr=1e-3)]",
     "plan = [dict(size=(32, 48), epochs=1, lr=3e-3, bs=4, freeze=True), dict(size=(48, 72), epochs=1, lr=1e-3, bs=4)]"),
    ("steps=2000,", "steps=20,"),
    ("synth: {cars: 12, views: 8, size: [192, 288]}", "synth: {cars: 4, views: 2, size: [64, 96], test_cars: 1}"),
    ("plan: [{size: [96, 144], epochs: 2, lr: 3e-3, freeze: true}, {size: [96, 144], epochs: 4, lr: 2e-3}]",
     "plan: [{size: [32, 48], epochs: 1, lr: 3e-3, bs: 4, freeze: true}, {size: [32, 48], epochs: 1, lr: 2e-3, bs: 4}]"),
    ("--cars 20 --size 640x960", "--cars 4 --views 2 --size 64x96 --test-cars 1"),
    ("--out refiner.pth", "--out refiner.pth --steps 20"),
    ("runs/paper-*/", "runs/demo-*/"),
    ("--nproc_per_node 4 -m carvana_fastai.run predict", "--nproc_per_node 2 --master_port {port} -m carvana_fastai.run predict"),
]
TINY = """name: demo
synth: {cars: 4, views: 2, size: [64, 96], test_cars: 1}
models:
  - {name: lite0-concat, plan: [{size: [32, 48], epochs: 1, lr: 3e-3, bs: 4}]}
predict: {overlays: 1}
"""

# ------------------------------------------------------------------------------------------------ the README's parts
def blocks(text):
    "The fenced blocks of `text`: dicts of lang, line (of the opening fence), the body and the section's heading."
    out, lines, heading, i = [], text.split('\n'), '', 0
    while i < len(lines):
        l = lines[i]
        if l.startswith('#'): heading = l.lstrip('#').strip()
        if l.lstrip().startswith('```'):                 # a fence, maybe indented in a list item: its body dedented as much
            k = len(l) - len(l.lstrip())
            j = i + 1
            while not lines[j].lstrip().startswith('```'): j += 1
            out.append(dict(lang=l.strip()[3:].strip(), line=i + 1, body='\n'.join(b[k:] for b in lines[i+1:j]), heading=heading))
            i = j
        i += 1
    return out

def trailing_comment(line):
    "The comment of a shell line (after an unquoted ` #`), or ''."
    q = None
    for k, ch in enumerate(line):
        if q: q = None if ch == q else q
        elif ch in '\'"': q = ch
        elif ch == '#' and (k == 0 or line[k-1].isspace()): return line[k:]
    return ''

def commands(body):
    "The commands of a shell block: (command, skip reason or None); a first comment line with the mark skips them all."
    first = body.strip().split('\n')[0]
    block_skip = MARK.search(first).group(1).strip() if first.startswith('#') and MARK.search(first) else None
    out, cur = [], ''
    for line in body.split('\n'):
        if not line.strip() or (line.lstrip().startswith('#') and not cur): continue
        cur += line[:-1] + ' ' if line.rstrip().endswith('\\') else line
        if line.rstrip().endswith('\\'): continue
        c = trailing_comment(cur)
        m = MARK.search(c)
        out.append((cur[:len(cur) - len(c)].strip() if c else cur.strip(), block_skip or (m.group(1).strip() if m else None)))
        cur = ''
    return out

def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

# ----------------------------------------------------------------------------------------------------- the runner
class Runner:
    "Runs the README's blocks in order in `work`, counting what ran and what was skipped (and why)."
    def __init__(self, work, carvana):
        self.work, self.carvana, self.used = Path(work), Path(carvana), set()
        self.ran, self.skipped, self.server = [], [], None

    def shrink(self, text):
        for old, new in SHRINK:
            if old in text: text = text.replace(old, new.replace('{port}', str(free_port()))); self.used.add(old)
        return text.replace('/path/to/carvana', str(self.carvana))

    def cli_config(self, cmd):
        "`python -m carvana_fastai.run` (`all`) without --config gets the tiny config (`--resume` alone keeps the run's)."
        m = re.match(r'(.*python -m carvana_fastai\.run)((?:\s+all)?)(\s.*)?$', cmd)
        if not m or ' --config' in cmd or m.group(3) and m.group(3).split()[0] not in ('--data', '--out', '--name', '--resume', '--device') \
           or (cmd.endswith('--resume') and '--name' not in cmd): return cmd
        return f"{m.group(1)}{m.group(2)} --config tiny.yaml{m.group(3) or ''}"

    def sh(self, cmd, where, timeout=900):
        cmd = self.cli_config(cmd)
        if cmd.startswith('CUDA_VISIBLE_DEVICES=$i '): cmd = f'for i in 0 1 2 3; do {cmd} || exit 1; done'
        if re.search(r'carvana_fastai\.run serve ', cmd): return self.start_server(cmd, where)
        if self.server: cmd = cmd.replace('127.0.0.1:7860', f'127.0.0.1:{self.server[1]}')
        t0 = time.time()
        r = subprocess.run(['bash', '-c', cmd], cwd=self.work, env=ENV, capture_output=True, text=True, timeout=timeout)
        print(f"{where}: {cmd} [{time.time() - t0:.0f} s]", flush=True)
        assert r.returncode == 0, f"{where}: `{cmd}` exited {r.returncode}\nSTDOUT:\n{r.stdout[-3000:]}\nSTDERR:\n{r.stderr[-3000:]}"
        return r

    def start_server(self, cmd, where):
        port = free_port()
        cmd = f"{cmd} --port {port}"
        self.server = (subprocess.Popen(['bash', '-c', f'exec {cmd}'], cwd=self.work, env=ENV, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True), port)
        t0 = time.time()
        while True:
            try:
                with urllib.request.urlopen(f'http://127.0.0.1:{port}/health', timeout=2) as r:
                    if r.status == 200: return
            except OSError: pass
            if self.server[0].poll() is not None or time.time() - t0 > 300:
                raise AssertionError(f"{where}: `{cmd}` did not serve /health:\n{self.server[0].stdout.read()[-3000:]}")
            time.sleep(0.5)

    def stop_server(self):
        if self.server is None: return
        p, _ = self.server
        p.send_signal(signal.SIGTERM)
        out = p.communicate(timeout=60)[0]
        self.server = None
        assert p.returncode == 0, f"the server did not stop cleanly on SIGTERM (exit {p.returncode}):\n{out[-3000:]}"

    def run_block(self, b):
        where = f"README.md:{b['line']} ({b['heading']})"
        if b['lang'] == 'python':
            skip = MARK.search(b['body'].split('\n')[0])
            if skip: return self.skipped.append((where, 'python block', skip.group(1).strip()))
            exec(compile(self.shrink(b['body']), where, 'exec'), {'__name__': '__main__'})
            return self.ran.append((where, 'python block'))
        if b['lang'] == 'bash':
            for cmd, skip in commands(b['body']):
                if skip: self.skipped.append((where, cmd, skip)); continue
                self.sh(self.shrink(cmd), where)
                self.ran.append((where, cmd))
            if 'curl ' in b['body']: self.stop_server()
            return
        if b['lang'] == 'yaml': return self.yaml(b, where)
        if b['body'].startswith('$ '): return self.transcript(b, where)

    def yaml(self, b, where):
        "A YAML block: `# my.yaml` is written where the commands read it; any other is checked by `load_config`."
        from carvana_fastai.config import load_config
        body = self.shrink(b['body'])
        name = re.match(r'#\s*(\S+\.yaml)', body)
        f = self.work/(name.group(1) if name else f"readme-{b['line']}.yaml")
        f.write_text(body + '\n')
        load_config(str(f))
        self.ran.append((where, f"YAML {f.name} ({'written for the commands' if name else 'checked by load_config'})"))

    def transcript(self, b, where):
        "A `$ command` and its output: run in `typo/` with the README's my.yaml misspelt as the output says; the same lines."
        cmd, *want = b['body'].split('\n')
        typo = self.work/'typo'; typo.mkdir(exist_ok=True)
        bad = re.search(r"unknown key '(\w+)\.(\w+)'; did you mean '(\w+)'", want[0])
        text = (self.work/'my.yaml').read_text()
        (typo/'my.yaml').write_text(text + f"{bad.group(1)}: {{{bad.group(2)}: 0.2}}\n")   # the misspelt key
        r = subprocess.run(['bash', '-c', cmd[2:]], cwd=typo, env=ENV, capture_output=True, text=True, timeout=300)
        assert r.returncode == 2 and (r.stdout + r.stderr).strip().split('\n') == want, f"{where}: {r.returncode}\n{r.stdout}\n{r.stderr}"
        self.ran.append((where, cmd))

# -------------------------------------------------------------------------------------------------------- fixture
@pytest.fixture(scope='module')
def work(tmp_path_factory):
    "The user's folder: the synthetic stand-ins for the real data, their photos and photo folders, and tiny.yaml."
    import numpy as np
    from PIL import Image
    from carvana_fastai.synth import make_synthetic_carvana
    w = tmp_path_factory.mktemp('readme')
    carvana = make_synthetic_carvana(w/'carvana', n_cars=4, views=2, size=(64, 96), seed=3, n_test_cars=1, progress=False)
    tests = sorted((carvana/'test').glob('*.jpg'))
    shutil.copy(tests[0], w/'car.jpg')
    (w/'photos').mkdir()
    for t in tests[:2]: shutil.copy(t, w/'photos'/t.name)
    for sub in ('images', 'masks'): (w/'my_photos'/sub).mkdir(parents=True)
    for p in sorted((carvana/'train').glob('*.jpg')):
        shutil.copy(p, w/'my_photos'/'images'/p.name)
        m = np.array(Image.open(carvana/'train_masks'/f'{p.stem}_mask.gif'))
        Image.fromarray((m > 0).astype(np.uint8)*255).save(w/'my_photos'/'masks'/f'{p.stem}.png')
    (w/'tiny.yaml').write_text(TINY)
    return w, carvana

@pytest.fixture(scope='module')
def summary(request):
    "Counts of what ran and what was skipped, printed at the end of the session (in `bash tests/run.sh`'s output)."
    res = {}
    class Summary:
        def pytest_terminal_summary(self, terminalreporter):
            if not res: return
            tr = terminalreporter
            tr.section('README.md examples (tests/test_readme.py)')
            tr.write_line(f"{len(res['ran'])} run, {len(res['skipped'])} skipped (marked in the README with the reason), "
                          f"{res['listings']} output listings and file trees not run")
            for where, what, why in res['skipped']: tr.write_line(f"  skipped {where}: {what[:90]} -- {why}")
    request.config.pluginmanager.register(Summary(), 'readme-summary')
    return res

# ---------------------------------------------------------------------------------------------------------- tests
def test_marks_name_a_reason():
    "Every skip mark gives a reason, every block has a language or is an output listing, and every substitution applies."
    text = README.read_text()
    bs = blocks(text)
    assert {b['lang'] for b in bs} <= {'bash', 'python', 'yaml', ''}, {b['lang'] for b in bs}
    for b in bs:
        for m in MARK.finditer(b['body']): assert len(m.group(1).strip()) > 5, (b['line'], m.group(0))
    missing = [old for old, _ in SHRINK if old not in text]
    assert not missing, f"substitutions that no longer match the README: {missing}"
    assert commands('a \\\n  b   # c (not run by the tests: why)\n# note\nd') == [('a    b', 'why'), ('d', None)]
    assert commands("# not run by the tests: GPUs\nx --g '^(.+)_#$'   # y") == [("x --g '^(.+)_#$'", 'GPUs')]
    nested = blocks("- a list item:\n\n  ```bash\n  run this\n    indented\n  ```\n")   # a fence inside a list item is a block too
    assert [(b['lang'], b['body'], b['line']) for b in nested] == [('bash', 'run this\n  indented', 3)]

def test_readme_examples(work, summary, monkeypatch):
    "Each block of README.md in order, as a user runs them one after the other in one folder."
    folder, carvana = work
    monkeypatch.chdir(folder)
    r = Runner(folder, carvana)
    bs = blocks(README.read_text())
    try:
        for b in bs: r.run_block(b)
    finally:
        r.stop_server()
        summary.update(ran=r.ran, skipped=r.skipped, listings=sum(1 for b in bs if b['lang'] == '' and not b['body'].startswith('$ ')))
    assert r.used == {old for old, _ in SHRINK}, f"substitutions not applied: {set(o for o, _ in SHRINK) - r.used}"
