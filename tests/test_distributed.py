"""torch.distributed on 2 CPU processes (gloo): data-parallel training equals one process with
the same global batch, checkpoints come from rank 0 and every rank resumes from them; sharded
queries equal the one-process answer.

Each test spawns 2 fresh interpreters (``torch.multiprocessing.spawn``) with a tiny model, one
thread each; a collective that never matches fails on the 60 s process-group timeout instead of
hanging.
"""

from __future__ import annotations

import datetime
import json
import socket
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.testing import assert_close

from pyro_disco.estimators.kde import GaussianKDE
from pyro_disco.estimators.sharded import sharded_logdensity_and_score
from pyro_disco.training import TrainConfig, train
from pyro_disco.training import distributed as ddp
from pyro_disco.training.train import _draw_step

WORLD = 2
# global batch 128 // 32 = 4 sets: 2 per rank
CFG = TrainConfig(
    dim=2,
    steps=1,
    tokens_per_step=128,
    n_min=32,
    n_max=32,
    num_queries=16,
    warmup=0,
    checkpoint_every=1,
    eval_every=10**6,
    threads=1,
    model=dict(d_model=16, num_layers=1, num_heads=2, d_ff=32),
    data_seeding="per-set",
)
# float32 network: the two runs sum the same per-set terms in a different order
GRAD_TOL = dict(rtol=1e-4, atol=1e-7)
# AdamW's first step is lr · g/|g| per weight, flat in g except where |g| ~ eps = 1e-8
WEIGHT_TOL = dict(rtol=1e-5, atol=1e-6)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join(rank: int, port: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=60),
    )


def _worker(rank: int, port: int, root: str) -> None:
    """Both tests' work in one spawn (starting 2 interpreters is most of the cost)."""
    _join(rank, port)
    try:
        for steps in (1, 2):  # the second call resumes from rank 0's step-1 checkpoint
            model = train(replace(CFG, steps=steps), Path(root) / "run", progress=False)
            torch.save(model.state_dict(), Path(root) / f"rank{rank}_step{steps}.pt")
        samples, queries = _query_problem()
        logp, score = sharded_logdensity_and_score(GaussianKDE(samples), queries)
        torch.save({"logp": logp, "score": score}, Path(root) / f"rank{rank}_queries.pt")
    finally:
        dist.destroy_process_group()


def _query_problem() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    samples = torch.randn(300, 2, generator=g, dtype=torch.float64)
    queries = torch.randn(5, 41, 2, generator=g, dtype=torch.float64)  # 205 rows: 103 + 102
    return samples, queries


@pytest.fixture(scope="module")
def spawned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(_free_port(), str(root)), nprocs=WORLD, join=True)
    return root


def _state(out: Path, name: str) -> dict:
    return torch.load(out / name, weights_only=True)


def test_ddp_two_ranks_equal_one_process_and_resume(spawned: Path, tmp_path: Path) -> None:
    """2 ranks × 2 sets = 1 process × 4 sets: gradients (AdamW's first moment, 0.1 × the clipped
    gradient at step 1) and weights after step 1; then every rank resumes from rank 0's
    checkpoint and step 2 matches the one-process resume."""
    ddp_out, one_out = spawned / "run", tmp_path / "one"
    for steps in (1, 2):
        train(replace(CFG, steps=steps), one_out, progress=False)
    for name, step in (("checkpoint.prev.pt", 1), ("checkpoint.pt", 2)):  # prev: the step before
        one, ddp = _state(one_out, name), _state(ddp_out, name)
        assert int(one["step"]) == int(ddp["step"]) == step
        assert sum(float(st["exp_avg"].abs().sum()) for st in one["optimizer"]["state"].values()) > 0
        for i, st in one["optimizer"]["state"].items():
            assert_close(ddp["optimizer"]["state"][i]["exp_avg"], st["exp_avg"], **GRAD_TOL)
        for key, w in one["model"].items():
            assert_close(ddp["model"][key], w, **WEIGHT_TOL)
            for r in range(WORLD):  # every rank trained (and resumed) the same weights
                mine = torch.load(ddp_out.parent / f"rank{r}_step{step}.pt", weights_only=True)
                assert_close(mine[key], w, **WEIGHT_TOL)
    # rank 0 alone logs: one line per step, the loss averaged over the ranks
    ddp_log = [json.loads(line) for line in (ddp_out / "log.jsonl").read_text().splitlines()]
    one_log = [json.loads(line) for line in (one_out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in ddp_log] == [1, 2]
    assert_close(
        torch.tensor([r["loss"] for r in ddp_log]), torch.tensor([r["loss"] for r in one_log]), **GRAD_TOL
    )


def test_sharded_queries_equal_one_process(spawned: Path) -> None:
    """Queries split across 2 ranks and gathered: every rank holds the one-process answer."""
    samples, queries = _query_problem()
    logp, score = GaussianKDE(samples).logdensity_and_score(queries)
    for r in range(WORLD):
        got = torch.load(spawned / f"rank{r}_queries.pt", weights_only=True)
        # float64; the ranks' row blocks differ from the one-process blocks
        assert_close(got["logp"], logp, rtol=1e-12, atol=1e-12)
        assert_close(got["score"], score, rtol=1e-12, atol=1e-12)


def test_ranks_draw_disjoint_shares_of_one_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without processes: rank r of 2 draws sets 2r, 2r + 1 of the 4-set global batch, and the
    ranks' shares concatenated are exactly the batch one process draws (same step, same seed)."""

    def draw(rank: int, world_size: int) -> tuple:
        monkeypatch.setattr(ddp, "world", lambda: (rank, world_size))
        return _draw_step(CFG, torch.Generator().manual_seed(7), torch.device("cpu"))[2]

    whole = draw(0, 1)
    shares = [draw(r, WORLD) for r in range(WORLD)]
    assert whole.context.shape[0] == 4 and all(s.context.shape[0] == 2 for s in shares)
    for field, full in zip(whole._fields, whole):
        assert torch.equal(torch.cat([getattr(s, field) for s in shares]), full), field
    assert list(ddp.rank_sets(5, 1, 2)) == [3, 4, 5]  # 5 sets on 2 ranks: rounded up to 3 each
