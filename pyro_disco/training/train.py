"""Training loop for DiScoFormer on random Gaussian mixtures: resumable, logged, checkpointed.

One command per model: ``pyro-disco train --dim 2 --steps 20000 --out runs/d2``. A killed run
started again with the same ``--out`` resumes from its last checkpoint (model, optimiser, step
and the task generator's RNG state), so the data stream continues where it stopped.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from pyro_disco.nn.discoformer import DiScoFormer, DiScoFormerConfig
from pyro_disco.nn.universal import UniversalConfig, UniversalDiScoFormer
from pyro_disco.training.tasks import MixtureTask, log_uniform_int, sample_task

__all__ = [
    "TrainConfig",
    "train",
    "task_loss",
    "evaluate",
    "validation_tasks",
    "build_model",
    "UNIVERSAL_VAL_DIMS",
]

UNIVERSAL_VAL_DIMS = (2, 5, 10, 32)  # dimensions the universal model is validated on during training

CHECKPOINT = "checkpoint.pt"


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved in the checkpoint).

    ``arch="discoformer"`` trains the per-dimension model for ``dim``; ``arch="universal"``
    trains :class:`UniversalDiScoFormer` with ``d`` drawn per step from ``dim_min … dim`` with
    probability ∝ ``d ** dim_power`` (higher d is harder: it gets more of the budget)."""

    dim: int
    steps: int = 20_000
    tokens_per_step: int = 4096  # context points per step; the batch is tokens_per_step // n sets
    n_min: int = 128
    n_max: int = 2048
    num_queries: int = 128
    off_support_fraction: float = 0.25
    alpha: float = 0.5  # weight of the log-density loss; 1 - alpha for the score
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup: int = 200
    clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 200
    eval_every: int = 1000
    threads: int | None = None
    device: str = "cpu"
    model: dict = field(default_factory=dict)  # DiScoFormerConfig overrides (d_model, num_layers, ...)
    arch: str = "discoformer"
    dim_min: int = 1
    dim_power: float = 0.5
    score_metric: str = "whitened"  # universal: "whitened" or "both" (+ original coordinates)

    def __post_init__(self):
        if self.arch not in ("discoformer", "universal"):
            raise ValueError(f"arch must be 'discoformer' or 'universal', got {self.arch!r}")
        if self.score_metric not in ("whitened", "both"):
            raise ValueError(f"score_metric must be 'whitened' or 'both', got {self.score_metric!r}")
        if self.score_metric == "both" and self.arch != "universal":
            raise ValueError("score_metric='both' is implemented for arch='universal' only")
        if self.arch == "universal" and not 1 <= self.dim_min <= self.dim:
            raise ValueError(f"need 1 <= dim_min <= dim, got dim_min={self.dim_min}, dim={self.dim}")

    def model_config(self) -> DiScoFormerConfig | UniversalConfig:
        if self.arch == "universal":
            return UniversalConfig(max_dim=self.dim, **self.model)
        return DiScoFormerConfig(dim=self.dim, **self.model)

    def sample_dim(self, generator: torch.Generator) -> int:
        """The dimension of the next training batch."""
        if self.arch != "universal":
            return self.dim
        dims = torch.arange(self.dim_min, self.dim + 1, dtype=torch.float64)
        return int(dims[torch.multinomial(dims**self.dim_power, 1, generator=generator)])

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def build_model(config: DiScoFormerConfig | UniversalConfig) -> DiScoFormer | UniversalDiScoFormer:
    """The network for an architecture config."""
    if isinstance(config, UniversalConfig):
        return UniversalDiScoFormer(config)
    return DiScoFormer(config)


def task_loss(
    model: DiScoFormer,
    task: MixtureTask,
    alpha: float,
    *,
    normalize: bool = False,
    score_metric: str = "whitened",
) -> tuple[Tensor, dict]:
    """α·MSE(log-density) + (1−α)·MSE(score per coordinate) over the context points, fresh
    on-support queries and off-support queries.

    ``normalize=True`` (the universal model, trained over many d) divides the log-density
    errors by d and each set's score errors by its mean squared target score on support, so
    that every dimension and every mixture counts alike (the score term is then a relative MSE).
    ``score_metric="both"`` (with ``normalize``) averages that relative score MSE in whitened
    coordinates with the same in the original coordinates (errors mapped back through each set's
    whitening matrix: what users and the accuracy benchmark see).

    Off-support targets can be huge (far from every component of a narrow mixture); their
    errors are divided by ``1 + |target|²`` (per coordinate for the score, on the residual
    over the whitened Gaussian for the log-density), so they count as relative errors and do
    not drown the on-support signal. On-support points carry weight one.
    """
    dtype = next(model.parameters()).dtype
    x, y = task.context.to(dtype), task.queries.to(dtype)
    enc = model.encode(x)
    lx, sx = model.at_context(x, enc)
    ly, sy = model.query(enc, y)
    d = x.shape[-1]
    gauss = -0.5 * task.queries.square().sum(-1) - 0.5 * d * math.log(2 * math.pi)
    off = task.off_support
    w_l = torch.where(off, 1.0 / (1.0 + (task.query_logdensity - gauss).square() / 4.0), 1.0).to(dtype)
    w_s = torch.where(off, 1.0 / (1.0 + task.query_score.square().mean(-1)), 1.0).to(dtype)
    err_l = torch.cat(
        [
            (lx - task.context_logdensity.to(dtype)).square(),
            (ly - task.query_logdensity.to(dtype)).square() * w_l,
        ],
        dim=1,
    )
    err_s = torch.cat(
        [
            (sx - task.context_score.to(dtype)).square().mean(-1),
            (sy - task.query_score.to(dtype)).square().mean(-1) * w_s,
        ],
        dim=1,
    )
    if normalize:
        err_l = err_l / d
        on = (~off).sum(1).min()
        scale = torch.cat([task.context_score, task.query_score[:, :on]], dim=1)
        err_s = err_s / scale.square().mean(dim=(1, 2)).to(dtype).unsqueeze(1)
        if score_metric == "both":
            a_t = task.whitening.transpose(-1, -2).to(dtype)  # B d d: original = whitened @ A^T
            err_o = torch.cat(
                [
                    ((sx - task.context_score.to(dtype)) @ a_t).square().mean(-1),
                    ((sy - task.query_score.to(dtype)) @ a_t).square().mean(-1) * w_s,
                ],
                dim=1,
            )
            scale_o = (scale.to(dtype) @ a_t).square().mean(dim=(1, 2)).unsqueeze(1)
            err_s = 0.5 * err_s + 0.5 * err_o / scale_o
    loss_l, loss_s = err_l.mean(), err_s.mean()
    loss = alpha * loss_l + (1 - alpha) * loss_s
    return loss, {"logdensity": float(loss_l.detach()), "score": float(loss_s.detach())}


def validation_tasks(
    dim: int, sizes=(256, 1024), *, num_sets: int = 16, num_queries: int = 256, seed: int = 2**31 - 7
) -> dict[int, MixtureTask]:
    """A fixed validation set (its own seed, disjoint from training seeds), on-support queries only."""
    g = torch.Generator().manual_seed(seed + dim)
    return {
        n: sample_task(num_sets, dim, n, num_queries, off_support_fraction=0.0, generator=g) for n in sizes
    }


def _validation_for(cfg: TrainConfig) -> dict[str, MixtureTask]:
    if cfg.arch != "universal":
        return {f"n{n}": t for n, t in validation_tasks(cfg.dim).items()}
    out = {}
    for d in UNIVERSAL_VAL_DIMS:
        if cfg.dim_min <= d <= cfg.dim:
            out.update({f"d{d}_n{n}": t for n, t in validation_tasks(d, num_sets=8).items()})
    return out


@torch.no_grad()
def evaluate(model: DiScoFormer, tasks: dict) -> dict[str, float]:
    """Relative score MSE (whitened space) and log-density MSE at fresh points and at the samples,
    one entry per task key (``n`` or a tag like ``"d10_n1024"``)."""
    was_training = model.training
    model.eval()
    dtype = next(model.parameters()).dtype
    out = {}
    for key, t in tasks.items():
        n = key if isinstance(key, str) and not key.isdigit() else f"n{key}"
        enc = model.encode(t.context.to(dtype))
        lx, sx = model.at_context(t.context.to(dtype), enc)
        ly, sy = model.query(enc, t.queries.to(dtype))
        out[f"rel_score_{n}"] = float(
            (sy.double() - t.query_score).square().sum() / t.query_score.square().sum()
        )
        out[f"logdens_{n}"] = float((ly.double() - t.query_logdensity).square().mean())
        s_orig = t.query_score @ t.whitening.transpose(-1, -2)
        out[f"orig_rel_score_{n}"] = float(
            ((sy.double() - t.query_score) @ t.whitening.transpose(-1, -2)).square().sum()
            / s_orig.square().sum()
        )
        out[f"rel_score_at_samples_{n}"] = float(
            (sx.double() - t.context_score).square().sum() / t.context_score.square().sum()
        )
    model.train(was_training)
    return out


def _lr(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _save(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def train(cfg: TrainConfig, out_dir: str | Path, *, progress: bool = True) -> DiScoFormer:
    """Train (or resume) a DiScoFormer; writes ``checkpoint.pt`` and ``log.jsonl`` in ``out_dir``.

    Stops cleanly on Ctrl-C or SIGTERM after saving a checkpoint; run again to resume.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    with torch.random.fork_rng(devices=[]):  # reproducible init without touching the caller's RNG
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model_config()).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    step, elapsed = 0, 0.0
    ckpt_path = out / CHECKPOINT
    if ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=device, weights_only=True)
        saved = TrainConfig.from_dict(state["train_config"])
        if saved.model_config() != cfg.model_config():
            raise ValueError(f"{ckpt_path} was trained with a different architecture: {saved.model_config()}")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        step, elapsed = int(state["step"]), float(state["elapsed"])
    val = _validation_for(cfg)
    gen_state = gen.get_state()  # the RNG at the start of the next step: an interrupted step is redone
    log_path = out / "log.jsonl"
    if log_path.exists():  # drop records of steps after the checkpoint: they are redone
        kept = [
            line
            for line in log_path.read_text().splitlines()
            if line.strip() and json.loads(line)["step"] <= step
        ]
        log_path.write_text("".join(line + "\n" for line in kept))
    log = open(log_path, "a", buffering=1)

    def checkpoint():
        _save(
            ckpt_path,
            {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "generator": gen_state,
                "step": step,
                "elapsed": elapsed,
                "train_config": asdict(cfg),
                "model_config": cfg.model_config().to_dict(),
            },
        )

    def on_term(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, on_term)
    desc = f"train d={cfg.dim}" if cfg.arch != "universal" else f"train universal d={cfg.dim_min}…{cfg.dim}"
    bar = tqdm(total=cfg.steps, initial=step, disable=not progress, desc=desc)
    bad = 0
    model.train()
    try:
        while step < cfg.steps:
            t0 = time.perf_counter()
            dim = cfg.sample_dim(gen)
            n = max(log_uniform_int(cfg.n_min, cfg.n_max, generator=gen), 2 * dim + 2)
            batch = max(1, cfg.tokens_per_step // n)
            task = sample_task(
                batch,
                dim,
                n,
                cfg.num_queries,
                off_support_fraction=cfg.off_support_fraction,
                generator=gen,
            )
            task = MixtureTask(*(t.to(device) for t in task))
            for group in opt.param_groups:
                group["lr"] = _lr(cfg, step)
            loss, parts = task_loss(
                model, task, cfg.alpha, normalize=cfg.arch == "universal", score_metric=cfg.score_metric
            )
            opt.zero_grad(set_to_none=True)
            if not torch.isfinite(loss):
                bad += 1
                if bad > 20:
                    raise FloatingPointError("20 non-finite losses in a row; lower the learning rate")
                continue
            bad = 0
            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            opt.step()
            step += 1
            gen_state = gen.get_state()
            elapsed += time.perf_counter() - t0
            record = {
                "step": step,
                "n": n,
                "d": dim,
                "loss": float(loss.detach()),
                **parts,
                "grad_norm": float(gnorm),
                "lr": _lr(cfg, step - 1),
                "elapsed_s": round(elapsed, 2),
            }
            if step % cfg.eval_every == 0 or step == cfg.steps:
                record.update(evaluate(model, val))
            log.write(json.dumps(record) + "\n")
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.4f}", n=n)
            if step % cfg.checkpoint_every == 0:
                log.flush()
                checkpoint()
    except KeyboardInterrupt:
        bar.write(f"interrupted at step {step}; checkpoint saved to {ckpt_path}, run again to resume")
    finally:
        checkpoint()
        log.close()
        bar.close()
        signal.signal(signal.SIGTERM, old)
    return model
