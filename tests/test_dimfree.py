"""Dimension-free data and init (docs/science.md §2.6): the Bartlett frame against the explicit d-dimensional draws,
moment by moment and through trained runs; the stored frame against a d-dimensional embedding (Hessian spectrum);
runs at d = 10^12 that allocate nothing of size d; the refusals where the sampler is not exact."""
import numpy as np
import pandas as pd
import pytest
import torch

from theory_sim.cli import main
from theory_sim.cnn.dimfree import frame_coordinates
from theory_sim.cnn.ensemble import make_ensemble
from theory_sim.cnn.model import Params, TwoLayerCNN
from theory_sim.cnn.run_sharpness import run_objective
from theory_sim.cnn.simulate_verb import load_run
from theory_sim.cnn.train import train_ensemble
from theory_sim.config import ConfigError, SimConfig
from theory_sim.sharpness import top_eigenvalues


def gram_samples(d: int, seeds: int, dimension_free: bool, project_noise: bool = True, n: int = 6, m: int = 3):
    """Per entry kind, the pooled samples of the inner products the model reads (standard units: sigma_0 = 1)."""
    cfgs = [SimConfig(d=d, n=n, m=m, batch_size=n, sigma_0=1.0, sigma_p=1.5, seed=s, n_test=0,
                      project_noise=project_noise, dimension_free=dimension_free) for s in range(seeds)]
    ens = make_ensemble(cfgs, "coefficients")
    G, P0 = ens.gram, ens.P0.reshape(seeds, 2 * m, -1)
    W0 = ens.init.W.reshape(seeds, 2 * m, -1)
    WW = W0 @ W0.mT
    off = ~torch.eye(n, dtype=torch.bool)
    offw = ~torch.eye(2 * m, dtype=torch.bool)
    return {"xi_sq": G[:, 1:, 1:].diagonal(dim1=1, dim2=2), "xi_xi": G[:, 1:, 1:][:, off],
            "xi_e1": G[:, 0, 1:], "w_e1": P0[..., 0], "w_xi": P0[..., 1:], "w_sq": WW.diagonal(dim1=1, dim2=2),
            "w_w": WW[:, offw]}


def moment_z(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest |z| of the two-sample differences in mean and in second moment (seed-level means: the entries of
    one seed are not independent, the seeds are)."""
    zs = []
    for f in (lambda x: x, lambda x: x ** 2):
        x, y = f(a.double()).flatten(1).mean(1), f(b.double()).flatten(1).mean(1)
        se = np.sqrt(x.var().item() / len(x) + y.var().item() / len(y))
        zs.append(abs((x.mean() - y.mean()).item()) / se if se > 0 else abs((x.mean() - y.mean()).item()) * np.inf)
    return max(zs)


@pytest.mark.parametrize("d", [400, 3200])
@pytest.mark.parametrize("project_noise", [True, False])
def test_frame_moments_match_the_explicit_draws(d, project_noise):
    explicit = gram_samples(d, 300, False, project_noise)
    free = gram_samples(d, 300, True, project_noise)
    for kind in explicit:
        if kind == "xi_e1" and project_noise:   # exactly 0 in both
            assert float(explicit[kind].abs().max()) == 0 == float(free[kind].abs().max())
            continue
        assert moment_z(free[kind], explicit[kind]) < 4.5, kind
        # the frame keeps exact norms: ||xi||^2 has mean sigma_p^2 (d - 1) (projected) or sigma_p^2 d
    expect = 2.25 * (d - 1 if project_noise else d)
    assert abs(float(free["xi_sq"].mean()) / expect - 1) < 5 * np.sqrt(2 / (d * free["xi_sq"].numel()))


def test_a_wrong_frame_fails_the_moment_check():
    """Bartlett with d/2 degrees of freedom (a wrong dimension) and without the off-diagonal normals must fail."""
    explicit = gram_samples(400, 300, False)
    from theory_sim.cnn import data as data_module
    orig = data_module.frame_coordinates
    try:
        data_module.frame_coordinates = lambda rng, d, q: orig(rng, d // 2, q)
        half = gram_samples(400, 300, True)

        def diagonal_only(rng, d, q):
            out = orig(rng, d, q)
            k1 = out.shape[1] - 1
            keep = np.zeros_like(out, dtype=bool)
            keep[:, 0] = True
            keep[np.arange(k1), 1 + np.arange(k1)] = True
            return np.where(keep, out, 0.0)
        data_module.frame_coordinates = diagonal_only
        diag = gram_samples(400, 300, True)
    finally:
        data_module.frame_coordinates = orig
    assert moment_z(half["xi_sq"], explicit["xi_sq"]) > 10
    assert moment_z(diag["w_xi"], explicit["w_xi"]) > 10


@pytest.mark.parametrize("d, q", [(5, 8), (9, 8), (2, 3), (1, 4)])
def test_frame_coordinates_small_d_has_the_gram_of_explicit_vectors(d, q):
    """Both branches (q <= d - 1: Bartlett; q > d - 1: a full orthonormal frame of R^d): the mean Gram of the
    frame coordinates is d I (that of q iid N(0, I_d) vectors) and the frame has dimension min(d, q + 1); the
    frame of d + 1 dimensions fails."""
    def mean_gram(dim):
        rng = np.random.default_rng(3)
        coords = np.stack([frame_coordinates(rng, dim, q) for _ in range(4000)])
        assert coords.shape[-1] == min(dim, q + 1)
        return np.einsum("sik,sjk->ij", coords, coords) / len(coords)
    tol = 5 * np.sqrt(2 * d / 4000)
    assert np.abs(mean_gram(d) - d * np.eye(q)).max() < tol
    assert np.abs(mean_gram(d + 1) - d * np.eye(q)).max() > tol


def boundary_table(dimension_free: bool, d: int, seeds: int = 16) -> pd.DataFrame:
    mus = np.geomspace(0.5, 8, 6)
    cfgs = [SimConfig(optimizer=o, d=d, mu_norm=float(mu), n=20, batch_size=5, epochs=20, n_test=0, n_mc=1000,
                      sam_steps=20 if o == "sam" else None, seed=s, dimension_free=dimension_free)
            for s in range(seeds) for mu in mus for o in ("sgd", "sam")]
    return train_ensemble(cfgs, progress=False, log=False).summary


@pytest.mark.slow
@pytest.mark.parametrize("d", [400, 3200])
def test_seed_mean_test_errors_and_boundaries_agree_between_the_modes(d):
    """Seed-mean test errors per (optimizer, ||mu||) within 4.5 standard errors of the seed spread; the located
    benign boundaries within their seed-bootstrap intervals' combined width."""
    from theory_sim.sweeps.verify import crossing
    a, b = boundary_table(False, d), boundary_table(True, d)
    ga, gb = (t.groupby(["optimizer", "mu_norm"]).test_error for t in (a, b))
    se = np.sqrt(ga.var() / ga.count() + gb.var() / gb.count())
    z = (ga.mean() - gb.mean()).abs() / se.clip(lower=1e-3)
    assert float(z.max()) < 4.5, z
    threshold = 0.1 + 0.1 * 0.4
    rng = np.random.default_rng(0)
    for opt in ("sgd", "sam"):
        stars = []
        for t in (a, b):
            piv = t[t.optimizer == opt].pivot(index="seed", columns="mu_norm", values="test_error")
            mus, errs = piv.columns.to_numpy(), piv.to_numpy()
            boot = [crossing(mus, errs[rng.integers(0, len(errs), len(errs))].mean(0), threshold)[0]
                    for _ in range(200)]
            stars.append((crossing(mus, errs.mean(0), threshold)[0], np.nanpercentile(boot, [2.5, 97.5])))
        (s1, i1), (s2, i2) = stars
        assert np.isfinite(s1) and np.isfinite(s2), (opt, stars)   # the grid brackets both boundaries
        assert abs(np.log(s1) - np.log(s2)) <= np.log(i1[1] / i1[0]) + np.log(i2[1] / i2[0]), (opt, stars)


def test_heldout_error_in_the_frame_matches_the_gaussian_estimator():
    """Held-out points drawn in the run's frame (docs/science.md §2.6) estimate what the Gaussian estimator does."""
    cfgs = [SimConfig(optimizer="sgd", d=5000, mu_norm=1.5, epochs=10, n_test=2000, n_mc=4000, seed=s,
                      dimension_free=True) for s in range(6)]
    s = train_ensemble(cfgs, progress=False, log=False).summary
    diff = s.test_error_heldout - s.test_error
    se = np.sqrt(s.test_error * (1 - s.test_error) / 2000 + s.test_error_se ** 2)
    assert float((diff.abs() / se).max()) < 4.5
    assert float(diff.abs().mean()) < 0.05


@pytest.mark.slow
def test_outputs_have_the_same_columns_in_both_modes(tmp_path):
    dirs = {}
    for flag in ("--no-dimension-free", "--dimension-free"):
        out = tmp_path / flag
        assert main(["simulate", "--optimizer", "randsam", "--d", "300", "--epochs", "3", "--seeds", "2",
                     "--n-mc", "200", "--n-test", "50", "--out", str(out), "--no-progress", flag]) == 0
        dirs[flag] = out
    for table in ("summary.parquet", "trajectory.parquet"):
        cols = [list(pd.read_parquet(d / table).columns) for d in dirs.values()]
        assert cols[0] == cols[1]
    assert (pd.read_parquet(dirs["--dimension-free"] / "summary.parquet").dimension_free).all()
    state = load_run(dirs["--dimension-free"])
    k = 1 + 20 + 20   # 1 + n K + 2m
    assert state["params"].W.shape[-1] == k == state["data"].basis.shape[-1] == state["init"].W.shape[-1]


def orthonormal_embedding(d: int, k: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    """Q (k, d): row 0 is e_1, rows 1.. orthonormal and orthogonal to e_1 (``scale`` != 1: not an isometry)."""
    g = torch.Generator().manual_seed(seed)
    Q = torch.zeros(k, d, dtype=torch.float64)
    Q[0, 0] = 1.0
    rest, _ = torch.linalg.qr(torch.randn(d - 1, k - 1, generator=g, dtype=torch.float64))
    Q[1:, 1:] = rest.T * scale
    return Q


@pytest.mark.slow
def test_the_stored_frame_gives_the_full_networks_hessian_spectrum(tmp_path):
    """The sharpness of a dimension-free run's final_state.pt (its frame, dimension k) is that of the network in
    R^d: the run embedded into d = 24 dimensions by a random isometry has the same top Hessian eigenvalues (dense
    Hessian, the rest of its spectrum zero); a non-isometric embedding does not."""
    out = tmp_path / "run"
    assert main(["simulate", "--optimizer", "sam", "--d", "24", "--m", "2", "--n", "4", "--batch-size", "2",
                 "--epochs", "30", "--mu-norm", "3", "--seeds", "1", "--n-mc", "200", "--n-test", "0",
                 "--dimension-free", "--out", str(out), "--no-progress"]) == 0
    state = load_run(out)
    net = TwoLayerCNN.for_config(state["configs"][0])
    params, data = state["params"], state["data"]
    k = params.W.shape[-1]
    assert k == 1 + 4 + 4
    reduced = top_eigenvalues(run_objective(net, params, data, 0), k=4, seed=0).values
    for scale, same in ((1.0, True), (1.1, False)):
        Q = orthonormal_embedding(24, k, seed=1, scale=scale)
        full_params = Params(params.W @ Q)
        full_data = type(data)(data.basis @ Q, data.mu_norm, data.yhat, data.y, data.pos, data.K, data.P,
                               data.shared)
        obj = run_objective(net, full_params, full_data, 0)
        flat = obj.params[0].flatten().clone()
        H = torch.autograd.functional.hessian(lambda v: obj([v.reshape(obj.params[0].shape)]), flat)
        ev = torch.linalg.eigvalsh(H).flip(0)
        close = torch.allclose(ev[:4], torch.as_tensor(reduced, dtype=ev.dtype), rtol=1e-8, atol=1e-12)
        assert close == same, (scale, ev[:4], reduced)
        if same:   # beyond the span of the frame the full Hessian is zero
            assert float(ev[2 * 2 * k:].abs().max()) < 1e-10 * float(ev.abs().max())


def test_huge_d_runs_without_allocating_anything_of_size_d():
    """d = 10^12: any array of size d would need terabytes; the frame has dimension 1 + n K + 2m."""
    cfgs = [SimConfig(optimizer=o, d=10 ** 12, mu_norm=1e3, epochs=3, n_test=100, n_mc=500, seed=s,
                      init_scale=0.1, noise_step=0.5, dimension_free=True)
            for o in ("sgd", "sam", "randsam") for s in range(2)]
    res = train_ensemble(cfgs, progress=False)
    assert res.params.W.shape[-1] == 41
    s = res.summary
    assert not s.diverged.any() and s.test_error.between(0, 1).all() and s.test_error_heldout.notna().all()
    assert float(s.reconstruction_error.max()) < 1e-9


@pytest.mark.parametrize("kw, word", [(dict(model="kou2023"), "kou2023"), (dict(optimizer="asam"), "asam"),
                                      (dict(optimizer="sam", norm="inf"), "sam_inf")])
def test_refused_where_not_exact(kw, word):
    with pytest.raises(ConfigError, match=f"dimension_free must be false.*{word}"):
        SimConfig(dimension_free=True, **kw)
    SimConfig(**kw)   # the explicit generator takes them


def test_randsam_in_weight_space_is_refused_inside_a_smaller_frame():
    cfgs = [SimConfig(optimizer="randsam", d=1000, n_test=0, dimension_free=True)]
    with pytest.raises(ConfigError, match="state must be 'coefficients'"):
        make_ensemble(cfgs, "weights")
    make_ensemble(cfgs, "coefficients")
    make_ensemble([SimConfig(optimizer="randsam", d=1000, n_test=0)], "weights")   # explicit data: allowed


def test_regime_fields_set_sigma_0_and_eta():
    c = SimConfig(d=1600, P=3, sigma_p=2.0, batch_size=5, m=10, init_scale=0.2, noise_step=0.5)
    assert c.sigma_0 == pytest.approx(0.2 / (3 * 2.0 * 40))
    assert c.sigma_0 * c.P * c.sigma_p * np.sqrt(c.d) == pytest.approx(0.2)
    assert c.eta * (c.P - 1) * c.sigma_p ** 2 * c.d / (2 * c.batch_size * c.m) == pytest.approx(0.5)
    assert c.replace(d=6400).sigma_0 == pytest.approx(c.sigma_0 / 2)   # re-derived for the new d
    assert SimConfig(d=1600).sigma_0 == 0.01
    for bad in ({"init_scale": 0.0}, {"noise_step": -1.0}):
        with pytest.raises(ConfigError, match=list(bad)[0]):
            SimConfig(**bad)


def test_a_sweep_holds_the_regime_fixed_across_d_in_the_dimension_free_mode(tmp_path):
    """[base] dimension_free, init_scale and noise_step: sigma_0 and eta follow d (docs/science.md §5.7) in the
    results table, the init scale and per-step memorisation they give stay fixed, and d = 10^8 runs."""
    from theory_sim.sweeps.runner import run_sweep
    from theory_sim.sweeps.spec import SweepSpec
    spec = SweepSpec.from_dict({
        "name": "regime", "seeds": 2, "trajectories": False,
        "base": {"n": 8, "batch_size": 4, "epochs": 3, "n_test": 0, "n_mc": 200, "dimension_free": True,
                 "init_scale": 0.1, "noise_step": 0.2},
        "grid": {"d": {"values": [100, 10 ** 8]}, "mu_norm": {"values": [1.0, 30.0]}},
        "optimizers": [{"label": "sgd", "optimizer": "sgd"}, {"label": "sam", "optimizer": "sam"}]})
    df = run_sweep(spec, tmp_path / "sweep", executor="inline", progress=False)
    assert len(df) == 16 and df.dimension_free.all() and df.test_error.notna().all()
    s0 = df.sigma_0 * df.P * df.sigma_p * np.sqrt(df.d)
    nu = df.eta * (df.P - 1) * df.sigma_p ** 2 * df.d / (2 * df.batch_size * df.m)
    assert np.allclose(s0, 0.1) and np.allclose(nu, 0.2)
    assert df.groupby("d").eta.first().iloc[0] == pytest.approx(df.groupby("d").eta.first().iloc[1] * 10 ** 6)
    with pytest.raises(ConfigError, match="dimension_free must be false with the rule asam"):
        SweepSpec.from_dict({"name": "x", "base": {"dimension_free": True}, "grid": {"mu_norm": [1.0], "d": [100]},
                             "optimizers": [{"label": "asam", "optimizer": "asam"}]})
