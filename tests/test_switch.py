"""The search over switch times on the fitted clock (velode._switch)."""

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest

import velode
from velode import _switch
from velode._errors import ConfigError
from velode._train import loss_value

QUIET = {"progress": False}


@pytest.fixture(scope="module")
def fitted():
    a = velode.pp.preprocess(velode.datasets.simulation(n_cells=200, n_genes=12, seed=3), method="none")
    r = velode.tl.fit(a, trainer={**QUIET, "max_steps": 80}, model={"probe_steps": 5, "assign_rounds": 1,
                                                                    "switch_search": 0})
    return a, r


def _with_switch(model, g, t):
    kin = model.kinetics
    p = min(max(t / kin.switch_max, 1e-4), 1 - 1e-4)
    raw = np.array(kin.raw_switch)
    raw[g] = np.log(p) - np.log1p(-p)
    return eqx.tree_at(lambda m: m.kinetics.raw_switch, model, jnp.asarray(raw))


def _search_losses(model, r, seed=0):
    """Each gene's loss on the cells of the search, with their weights."""
    d = r.data
    t = np.asarray(model.encoder(d.features[: d.n_cells]))
    cells, w = _switch.search_cells(t, seed)
    return np.asarray(_switch._per_gene(model, d.features[jnp.asarray(cells)], jnp.asarray(np.asarray(d.obs_u)[cells]),
                                        jnp.asarray(np.asarray(d.obs_s)[cells]), jnp.asarray(w, jnp.float32),
                                        d.inv_sd_u, d.inv_sd_s, r.integrator))


def test_a_gene_trapped_at_an_early_switch_is_moved_and_fits_better(fitted):
    a, r = fitted
    t = np.asarray(r.model.encoder(r.data.features[: r.data.n_cells]))
    switch = np.asarray(r.model.kinetics.switch_time())
    g = int(np.argmax(switch))  # the latest switch: far from the trap
    assert switch[g] > np.quantile(t, 0.3)
    trapped = _with_switch(r.model, g, float(np.quantile(t, 0.005)))
    searched, moved = _switch.search_switches(trapped, r.data, r.integrator, r.loss_cfg, quantile=0.1, steps=25,
                                              lr=0.2)
    assert moved >= 1
    new = np.asarray(searched.kinetics.switch_time())
    assert new[g] > np.quantile(t, 0.01)  # one of the later candidates
    assert loss_value(searched, r.data, r.integrator, r.loss_cfg) < loss_value(trapped, r.data, r.integrator,
                                                                               r.loss_cfg)
    # genes that were not searched keep their parameters exactly
    others = switch >= np.quantile(t, 0.1)
    others[g] = False
    for name in ("raw_alpha", "raw_beta", "raw_gamma", "log_scale", "raw_switch"):
        np.testing.assert_array_equal(np.asarray(getattr(searched.kinetics, name))[others],
                                      np.asarray(getattr(trapped.kinetics, name))[others])


def test_no_gene_fits_worse_after_the_search(fitted):
    a, r = fitted
    before = _search_losses(r.model, r)
    searched, moved = _switch.search_switches(r.model, r.data, r.integrator, r.loss_cfg, quantile=0.9, steps=25,
                                              lr=0.2)
    after = _search_losses(searched, r)
    assert np.all(after <= before * (1 + 1e-5) + 1e-6)
    if moved:
        assert np.any(after < before * (1 - 1e-4))


def test_search_off_and_bad_settings(fitted):
    a, r = fitted
    same, moved = _switch.search_switches(r.model, r.data, r.integrator, r.loss_cfg, quantile=0.0, steps=25, lr=0.2)
    assert same is r.model and moved == 0
    b = velode.pp.preprocess(velode.datasets.simulation(n_cells=60, n_genes=5, seed=0), method="none")
    with pytest.raises(ConfigError, match="switch_search"):
        velode.tl.fit(b, trainer={**QUIET, "max_steps": 5}, model={"switch_search": 1.5})


def test_search_cells_keep_the_early_cells_and_a_fixed_number():
    rng = np.random.default_rng(0)
    t = rng.random(1000)
    cells, w = _switch.search_cells(t, seed=1)
    cells2, _ = _switch.search_cells(rng.random(1000), seed=2)
    assert len(cells) == len(cells2) < 1000  # one shape for every fit of 1,000 cells
    early = np.argsort(t)[: int(np.ceil(_switch.LATE_QUANTILE * 1000))]
    assert set(early) <= set(cells)
    assert w.sum() == pytest.approx(1000)
    assert np.all(np.diff(cells) > 0)
