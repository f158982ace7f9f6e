"Tests of the refined ensemble in `evaluate_ensemble`, `best_threshold` and the report."
import numpy as np, pytest
from carvana_fastai.evaluate import evaluate_ensemble, best_threshold
from carvana_fastai.refine import get_refiner
from carvana_fastai.report import results_table, write_report
from carvana_fastai.config import load_config
from tiny_models import tiny_ensemble

KW = dict(valid_pct=0.34, seed=0, bs=3, progress=False)
SCORES = ['dice', 'bf1', 'bf3']

@pytest.fixture(scope='module')
def plain(tiny_carvana): return evaluate_ensemble(tiny_ensemble(), tiny_carvana, **KW)

def _ensemble(df, refined):
    "The ensemble's rows (without, with TTA), found by the `refine` column."
    return df[df.model.str.startswith('ensemble') & (df.refine.ne('none') if refined else df.refine.eq('none'))]

def test_refined_rows_only_with_a_refiner(plain):
    assert len(plain) == 6 and (plain.refine == 'none').all() and _ensemble(plain, True).empty
    assert 'refine_ms' not in plain.attrs and 'refiner' not in plain.attrs

def test_a_refiner_that_changes_nothing(tiny_carvana, plain):
    tab = evaluate_ensemble(tiny_ensemble(refiner=lambda x, p, t: p), tiny_carvana, **KW)
    assert len(tab) == 8 and list(tab.refine) == ['none']*6 + ['custom']*2 and list(tab.tta[-2:]) == ['none', 'hflip']
    assert np.array_equal(tab[SCORES].iloc[:6].to_numpy(), plain[SCORES].to_numpy())                  # the old rows stay put
    assert np.array_equal(_ensemble(tab, True)[SCORES].to_numpy(), _ensemble(tab, False)[SCORES].to_numpy())
    assert tab.attrs['refiner'] == dict(method='custom') and tab.attrs['refine_ms'] >= 0

def test_guided_refiner_rows_and_cost(tiny_carvana, plain, tmp_path):
    ens = tiny_ensemble(refiner=get_refiner('guided', radius=2))
    tab = evaluate_ensemble(ens, tiny_carvana, **KW)
    r = _ensemble(tab, True)
    assert list(r.model) == ['ensemble (mean of 2) + guided refiner']*2 and (r.refine == 'guided').all()
    assert np.isfinite(r[SCORES].to_numpy()).all() and r[SCORES].stack().between(0, 1).all()
    a = tab.attrs
    assert a['refiner'] == ens.refiner.info() and a['refine_ms'] > 0 and a['forward_ms'] > 0 and a['forward_tta_ms'] > 0
    _, curve = best_threshold(ens, tiny_carvana, thresholds=[0.5], **KW)                              # the refined map's Dice
    assert abs(curve.dice[0] - r.dice.iloc[-1]) < 1e-6
    members = [dict(name=f'm{i}', body='tiny', pretrained=False, fusion='concat', decoder='lean', scales='32x48', params=1000,
                    train_s=1.0, epochs=1, checkpoint=str(tmp_path/f'm{i}'/'model.pth'), plot=None) for i in range(2)]
    assert list(results_table(members, tab).model[2:]) == ['**ensemble (mean of 2)**', '**ensemble (mean of 2) + guided refiner**']
    md = write_report(tmp_path, load_config(), members, tab, tmp_path/'data').read_text()
    assert '**ensemble (mean of 2) + guided refiner**' in md and 'Refinement: ' in md and "of the members' forward with TTA" in md
    md = write_report(tmp_path, load_config(), members, plain, tmp_path/'data').read_text()
    assert 'Refinement' not in md and ' refiner' not in md and '**ensemble (mean of 2)**' in md

def test_report_of_an_old_evaluation_csv(plain, tmp_path):
    "An evaluation.csv written before the `refine` column (no attrs either) still makes a report."
    import pandas as pd
    plain.drop(columns='refine').to_csv(tmp_path/'evaluation.csv', index=False)
    old = pd.read_csv(tmp_path/'evaluation.csv')
    members = [dict(name=f'm{i}', body='tiny', pretrained=True, fusion='add', decoder='lean', scales='32x48', params=10**6,
                    checkpoint=str(tmp_path/f'm{i}.pth'), epochs=2) for i in range(2)]
    tab = results_table(members, old)
    assert list(tab.model) == ['m0', 'm1', '**ensemble (mean of 2)**'] and tab['Dice + TTA (hflip)'].iloc[-1] == pytest.approx(plain.dice.iloc[-1])
    assert 'Refinement' not in write_report(tmp_path, load_config(), members, old, tmp_path/'data').read_text()
