"""scripts/switch_profile.py: one gene's loss over its switch time, on a fitted clock held fixed."""

import numpy as np
import pytest
from helpers import load_script

import velode
from velode._train import loss_value


@pytest.fixture(scope="module")
def fitted():
    a = velode.pp.preprocess(velode.datasets.simulation(n_cells=150, n_genes=8, seed=2), method="none")
    r = velode.tl.fit(a, trainer={"progress": False, "max_steps": 60}, model={"probe_steps": 5, "assign_rounds": 1})
    return a, r


def test_one_gene_losses_add_up_to_the_fit_and_its_velocity_is_the_layer(fitted):
    sp = load_script("scripts/switch_profile.py")
    a, r = fitted
    t_fit = np.asarray(r.model.kinetics.switch_time())
    w = np.asarray(r.data.gene_weight, float)
    per_gene = []
    for g in range(a.n_vars):
        [(t, as_fitted, refitted, sub)] = sp.profile(r, g, [t_fit[g]], steps=0)
        assert as_fitted == pytest.approx(refitted)  # no re-fit: the same parameters
        per_gene.append(as_fitted)
        np.testing.assert_allclose(sp.gene_velocity(r, sub), np.asarray(a.layers["velocity"])[:, g], rtol=1e-4,
                                   atol=1e-5 * float(np.abs(a.layers["velocity"][:, g]).max()))
    # each gene's loss is normalised by its own weight; the fit's by the sum of the weights
    assert float(np.dot(per_gene, w) / w.sum()) == pytest.approx(loss_value(r.model, r.data, r.integrator, r.loss_cfg),
                                                                   rel=1e-4)


def test_refit_never_ends_above_the_fitted_parameters_and_the_switch_time_matters(fitted):
    sp = load_script("scripts/switch_profile.py")
    a, r = fitted
    g = 0
    t_fit = float(np.asarray(r.model.kinetics.switch_time())[g])
    times = [t_fit, 0.5 * t_fit, min(1.4, 2 * t_fit + 0.1)]
    rows = sp.profile(r, g, times, steps=50)
    for t, as_fitted, refitted, _ in rows:
        assert refitted <= as_fitted + 1e-7
    as_fitted = [row[1] for row in rows]
    assert max(as_fitted) > as_fitted[0] * (1 + 1e-3)  # moving the switch with the rest held changes the loss
