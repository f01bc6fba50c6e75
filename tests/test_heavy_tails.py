"""Heavy-tailed training sets (issue 11): ProductMixture against torch.distributions, autograd
and quadrature; tasks, the robust loss and a training run that draws them."""

import math

import pytest
import torch
from scipy import stats
from torch.distributions import Laplace, StudentT

from pyro_disco.targets import GaussianMixture, ProductMixture
from pyro_disco.training import TrainConfig, sample_task, task_loss, train
from pyro_disco.training.tasks import random_product_mixtures
from pyro_disco.training.train import _draw_step

from helpers import read_log, tiny_train_config

ROUNDOFF = dict(rtol=1e-9, atol=1e-9)


def _random_components(generator, batch=2, k=3, d=3):
    w = torch.rand(batch, k, generator=generator, dtype=torch.float64)
    mu = torch.randn(batch, k, d, generator=generator, dtype=torch.float64)
    eye = torch.eye(d, dtype=torch.float64)
    fac = 0.4 * torch.randn(batch, k, d, d, generator=generator, dtype=torch.float64) + eye
    return w, mu, fac


def test_a_gaussian_marginal_is_the_gaussian_mixture(generator):
    w, mu, fac = _random_components(generator)
    x = torch.randn(2, 7, 3, generator=generator, dtype=torch.float64)
    ref = GaussianMixture(w, mu, fac @ fac.transpose(-1, -2))
    got = ProductMixture(w, mu, fac, "gaussian")
    torch.testing.assert_close(got.logdensity(x), ref.logdensity(x), **ROUNDOFF)
    torch.testing.assert_close(got.score(x), ref.score(x), **ROUNDOFF)


@pytest.mark.parametrize("marginal", ["student-t", "laplace"])
def test_heavy_tailed_mixtures_match_torch_distributions_and_autograd(generator, marginal):
    w, mu, fac = _random_components(generator)
    df = torch.tensor([3.0, 7.0], dtype=torch.float64)
    mix = ProductMixture(w, mu, fac, marginal, df=df if marginal == "student-t" else None)
    x = torch.randn(2, 9, 3, generator=generator, dtype=torch.float64)
    logp, score = mix.logdensity_and_score(x)
    for b in range(2):
        f = (
            StudentT(df[b])
            if marginal == "student-t"
            else Laplace(torch.zeros((), dtype=torch.float64), torch.ones((), dtype=torch.float64))
        )
        z = torch.linalg.solve(fac[b].unsqueeze(0), (x[b].unsqueeze(1) - mu[b]).unsqueeze(-1)).squeeze(-1)
        logc = (
            (w[b] / w[b].sum()).log()
            + f.log_prob(z.to(torch.float64)).sum(-1)
            - torch.linalg.slogdet(fac[b])[1]
        )
        torch.testing.assert_close(logp[b], torch.logsumexp(logc, -1), **ROUNDOFF)
    y = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(mix.logdensity(y).sum(), y)
    torch.testing.assert_close(score, grad, **ROUNDOFF)


@pytest.mark.parametrize("marginal", ["student-t", "laplace"])
def test_the_density_integrates_to_one(marginal):
    """A 2-component mixture in 2-D on a grid wide enough for a t_3 tail to below 1e-3."""
    w = torch.tensor([0.3, 0.7], dtype=torch.float64)
    mu = torch.tensor([[-1.0, 0.5], [1.5, 0.0]], dtype=torch.float64)
    fac = torch.tensor([[[0.5, 0.0], [0.2, 0.3]], [[0.4, -0.1], [0.0, 0.6]]], dtype=torch.float64)
    mix = ProductMixture(w, mu, fac, marginal, df=3.0)
    # t: wide and coarse (smooth, heavy tail); Laplace: narrow and fine (its cusps)
    t = torch.linspace(-120, 120, 2401, dtype=torch.float64)
    if marginal == "laplace":
        t = torch.linspace(-12, 12, 1201, dtype=torch.float64)
    grid = torch.cartesian_prod(t, t)
    mass = float(mix.logdensity(grid).exp().sum() * (t[1] - t[0]) ** 2)
    assert abs(mass - 1.0) < 2e-3, mass


@pytest.mark.parametrize(("marginal", "dist"), [("student-t", stats.t(4)), ("laplace", stats.laplace())])
def test_samples_follow_the_marginal(marginal, dist):
    mix = ProductMixture(
        torch.ones(1, dtype=torch.float64),
        torch.zeros(1, 1, dtype=torch.float64),
        torch.ones(1, 1, 1, dtype=torch.float64),
        marginal,
        df=4.0,
    )
    x = mix.sample(20_000, generator=torch.Generator().manual_seed(3))[:, 0]
    assert stats.kstest(x.numpy(), dist.cdf).pvalue > 1e-3
    # and the component choice follows the weights
    mix2 = ProductMixture(
        torch.tensor([0.2, 0.8], dtype=torch.float64),
        torch.tensor([[-50.0], [50.0]], dtype=torch.float64),
        torch.ones(2, 1, 1, dtype=torch.float64),
        marginal,
        df=4.0,
    )
    right = (mix2.sample(20_000, generator=torch.Generator().manual_seed(4)) > 0).double().mean()
    assert abs(float(right) - 0.8) < 0.02


def test_bad_arguments_raise():
    w, mu, fac = torch.ones(1), torch.zeros(1, 2), torch.eye(2).unsqueeze(0)
    with pytest.raises(ValueError, match="marginal"):
        ProductMixture(w, mu, fac, "cauchy")
    with pytest.raises(ValueError, match="needs df"):
        ProductMixture(w, mu, fac, "student-t")
    with pytest.raises(ValueError, match="integers"):
        ProductMixture(w, mu, fac, "student-t", df=2.5)
    with pytest.raises(ValueError, match="heavy_tail_fraction"):
        TrainConfig(dim=2, heavy_tail_fraction=1.5)


def test_random_heavy_tailed_mixtures_follow_their_recipe(generator):
    mix = random_product_mixtures(300, 2, "student-t", generator=generator)
    k = (mix.weights > 0).sum(-1)
    assert k.min() == 1 and k.max() == 5
    assert set(mix.df.unique().tolist()) == set(float(v) for v in range(3, 11))
    sv = torch.linalg.svdvals(mix.factors)  # R diag(s): singular values are the scales
    assert sv.min() >= 0.2 - 1e-12 and sv.max() <= 1.0 + 1e-12


@pytest.mark.parametrize("marginal", ["student-t", "laplace"])
def test_heavy_tailed_tasks_are_whitened_exact_targets(generator, marginal):
    t = sample_task(3, 3, 200, 20, marginal=marginal, generator=generator)
    xc = t.context - t.context.mean(1, keepdim=True)
    torch.testing.assert_close(
        xc.transpose(1, 2) @ xc / 199, torch.eye(3, dtype=torch.float64).expand(3, 3, 3), rtol=0, atol=1e-6
    )
    assert torch.isfinite(t.context_score).all() and torch.isfinite(t.query_logdensity).all()
    # a t or Laplace set is not Gaussian: its whitened score differs from -x somewhere
    assert float((t.context_score + t.context).abs().max()) > 0.5


def test_the_robust_loss_bounds_a_far_out_log_density_error(generator):
    from pyro_disco.nn.discoformer import DiScoFormer

    cfg = tiny_train_config(1)
    model = DiScoFormer(cfg.model_config())
    task = sample_task(2, 2, 64, 16, generator=generator)
    shifted = task._replace(query_logdensity=task.query_logdensity.clone())
    shifted.query_logdensity[0, 0] -= 1000.0  # one on-support point with a huge error
    plain = task_loss(model, shifted, 0.5)[1]["logdensity"]
    robust = task_loss(model, shifted, 0.5, robust_logdensity=True)[1]["logdensity"]
    small = task_loss(model, task, 0.5, robust_logdensity=True)[1]["logdensity"]
    assert plain > 1e3 and robust < 1.0, (plain, robust)
    # small errors are nearly unchanged: log(1 + e) = e - e^2/2 + ...
    assert small == pytest.approx(task_loss(model, task, 0.5)[1]["logdensity"], rel=0.5)


def test_a_run_without_heavy_tails_keeps_the_historical_stream():
    """fraction 0 draws no extra number: the step's task is the one sample_task draws."""
    cfg = tiny_train_config(1)
    gen = torch.Generator().manual_seed(11)
    _, n, task = _draw_step(cfg, gen, torch.device("cpu"))
    ref_gen = torch.Generator().manual_seed(11)
    cfg.sample_dim(ref_gen)
    from pyro_disco.training.tasks import log_uniform_int

    n_ref = max(log_uniform_int(cfg.n_min, cfg.n_max, generator=ref_gen), 2 * cfg.dim + 2)
    ref = sample_task(
        max(1, cfg.tokens_per_step // n_ref), cfg.dim, n_ref, cfg.num_queries, generator=ref_gen
    )
    assert n == n_ref
    torch.testing.assert_close(task.context, ref.context, rtol=0, atol=0)


def test_a_heavy_tailed_run_trains_and_validates_on_both_families(tmp_path):
    cfg = tiny_train_config(
        4,
        arch="universal",
        dim=5,
        dim_min=2,
        heavy_tail_fraction=1.0,
        eval_every=4,
        model=dict(d_model=32, num_layers=1, num_heads=4, head_dim=8, d_ff=64),
    )
    train(cfg, tmp_path, progress=False)
    last = read_log(tmp_path)[-1]
    for key in ("orig_rel_score_t_d5_n256", "orig_rel_score_lap_d2_n1024", "orig_rel_score_d5_n256"):
        assert math.isfinite(last[key]), key
