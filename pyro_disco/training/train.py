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
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from types import FrameType
from typing import NamedTuple, TextIO

import torch
from torch import Tensor
from tqdm.auto import tqdm

from pyro_disco.metrics import logdensity_mse, relative_score_error
from pyro_disco.nn.discoformer import DiScoFormer, DiScoFormerConfig
from pyro_disco.nn.universal import UniversalConfig, UniversalDiScoFormer
from pyro_disco.pretrained import available_models, load_model, load_weights
from pyro_disco.training import distributed as ddp
from pyro_disco.training.tasks import MixtureTask, log_uniform_int, sample_task
from pyro_disco.training.warm_start import reblend_mixture, warm_start_mixture

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no run-folder lock
    fcntl = None

__all__ = [
    "TrainConfig",
    "train",
    "task_loss",
    "evaluate",
    "validation_tasks",
    "build_model",
    "UNIVERSAL_VAL_DIMS",
    "RunLockedError",
]

UNIVERSAL_VAL_DIMS = (2, 5, 10, 32)  # dimensions the universal model is validated on during training
HEAVY_TAIL_VAL_DIMS = (2, 5, 10)  # ... and on heavy-tailed sets, in a run that trains on them

CHECKPOINT = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"  # the checkpoint before the newest, kept when a new one is written
LOCK = ".lock"


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
    # universal with mixture_components: start a *new* run from this mixture-free universal
    # network (a shipped model name or a weight file; see training.warm_start), its gates
    # blended with the mixture's by init_blend (1 = the BIC mixture, 0 = the old network)
    init_from: str | None = None
    init_blend: float = 0.5
    # "stream": the step's sets are drawn together from the run's generator (the historical
    # stream); "per-set": each set from its own seed drawn from that stream, so that any number
    # of torchrun ranks draws the same global batch (required with more than one process; see
    # training.distributed)
    data_seeding: str = "stream"
    # the fraction of steps whose sets are heavy-tailed mixtures (half Student-t, half Laplace
    # products; training.tasks.random_product_mixtures) instead of Gaussian mixtures; with 0 the
    # data stream is the historical one
    heavy_tail_fraction: float = 0.0

    def __post_init__(self) -> None:
        self._check_ranges()
        if self.data_seeding not in ("stream", "per-set"):
            raise ValueError(f"data_seeding must be 'stream' or 'per-set', got {self.data_seeding!r}")
        if self.arch not in ("discoformer", "universal"):
            raise ValueError(f"arch must be 'discoformer' or 'universal', got {self.arch!r}")
        if self.score_metric not in ("whitened", "both"):
            raise ValueError(f"score_metric must be 'whitened' or 'both', got {self.score_metric!r}")
        if self.score_metric == "both" and self.arch != "universal":
            raise ValueError("score_metric='both' is implemented for arch='universal' only")
        if self.init_from is not None and (
            self.arch != "universal" or not self.model.get("mixture_components")
        ):
            raise ValueError("init_from warm-starts a universal network with mixture_components > 0 only")
        if self.arch == "universal" and not 1 <= self.dim_min <= self.dim:
            raise ValueError(f"need 1 <= dim_min <= dim, got dim_min={self.dim_min}, dim={self.dim}")

    def _check_ranges(self) -> None:
        """Every argument's range, checked before anything runs (was: ``alpha=5`` trained with a
        negative loss weight, ``n_min > n_max`` drew sizes outside both, ``eval_every=0``
        crashed after step 1)."""

        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(message)

        for name in (
            "dim",
            "steps",
            "tokens_per_step",
            "n_min",
            "n_max",
            "num_queries",
            "warmup",
            "seed",
            "checkpoint_every",
            "eval_every",
            "dim_min",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {value!r}")
        for name in (
            "off_support_fraction",
            "alpha",
            "lr",
            "weight_decay",
            "clip",
            "dim_power",
            "init_blend",
            "heavy_tail_fraction",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        need(self.dim >= 1, f"dim must be >= 1, got {self.dim}")
        need(self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        need(self.tokens_per_step >= 1, f"tokens_per_step must be >= 1, got {self.tokens_per_step}")
        need(self.n_min >= 2, f"n_min must be >= 2 (a sample set needs a spread), got {self.n_min}")
        need(self.n_min <= self.n_max, f"need n_min <= n_max, got n_min={self.n_min}, n_max={self.n_max}")
        need(self.num_queries >= 1, f"num_queries must be >= 1, got {self.num_queries}")
        need(
            0.0 <= self.off_support_fraction <= 1.0,
            f"off_support_fraction must be in [0, 1], got {self.off_support_fraction}",
        )
        need(
            0.0 <= self.heavy_tail_fraction <= 1.0,
            f"heavy_tail_fraction must be in [0, 1], got {self.heavy_tail_fraction}",
        )
        need(0.0 <= self.init_blend <= 1.0, f"init_blend must be in [0, 1], got {self.init_blend}")
        need(0.0 <= self.alpha <= 1.0, f"alpha (log-density loss weight) must be in [0, 1], got {self.alpha}")
        need(self.lr > 0, f"lr must be > 0, got {self.lr}")
        need(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        need(self.warmup >= 0, f"warmup must be >= 0, got {self.warmup}")
        need(self.clip > 0, f"clip must be > 0, got {self.clip}")
        need(self.seed >= 0, f"seed must be >= 0, got {self.seed}")
        need(self.checkpoint_every >= 1, f"checkpoint_every must be >= 1, got {self.checkpoint_every}")
        need(self.eval_every >= 1, f"eval_every must be >= 1, got {self.eval_every}")
        need(
            self.threads is None or (isinstance(self.threads, int) and self.threads >= 1),
            f"threads must be None or >= 1, got {self.threads!r}",
        )
        need(isinstance(self.model, dict), f"model must be a dict of config overrides, got {self.model!r}")

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
    robust_logdensity: bool = False,
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

    ``robust_logdensity=True`` (runs with heavy-tailed sets) replaces each point's log-density
    error e by log(1 + e): quadratic for small errors, and a few points far out in a Student-t
    tail (where a log-density error can reach hundreds) no longer dominate the step.
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
    if robust_logdensity:
        err_l = torch.log1p(err_l)
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
    dim: int,
    sizes: Sequence[int] = (256, 1024),
    *,
    num_sets: int = 16,
    num_queries: int = 256,
    seed: int = 2**31 - 7,
    marginal: str = "gaussian",
) -> dict[int, MixtureTask]:
    """A fixed validation set (its own seed, disjoint from training seeds), on-support queries
    only; ``marginal`` as in :func:`~pyro_disco.training.tasks.sample_task`."""
    g = torch.Generator().manual_seed(seed + dim)
    return {
        n: sample_task(
            num_sets, dim, n, num_queries, off_support_fraction=0.0, marginal=marginal, generator=g
        )
        for n in sizes
    }


def _validation_for(cfg: TrainConfig) -> dict[str, MixtureTask]:
    if cfg.arch != "universal":
        return {f"n{n}": t for n, t in validation_tasks(cfg.dim).items()}
    out = {}
    for d in UNIVERSAL_VAL_DIMS:
        if cfg.dim_min <= d <= cfg.dim:
            out.update({f"d{d}_n{n}": t for n, t in validation_tasks(d, num_sets=8).items()})
    if cfg.heavy_tail_fraction > 0:  # and the heavy-tailed sets the run trains on
        for marginal, tag in (("student-t", "t"), ("laplace", "lap")):
            for d in HEAVY_TAIL_VAL_DIMS:
                if cfg.dim_min <= d <= cfg.dim:
                    tasks = validation_tasks(d, num_sets=8, marginal=marginal)
                    out.update({f"{tag}_d{d}_n{n}": t for n, t in tasks.items()})
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
        out[f"rel_score_{n}"] = float(relative_score_error(sy.double(), t.query_score))
        out[f"logdens_{n}"] = float(logdensity_mse(ly.double(), t.query_logdensity))
        s_orig = t.query_score @ t.whitening.transpose(-1, -2)
        out[f"orig_rel_score_{n}"] = float(
            ((sy.double() - t.query_score) @ t.whitening.transpose(-1, -2)).square().sum()
            / s_orig.square().sum()
        )
        out[f"rel_score_at_samples_{n}"] = float(relative_score_error(sx.double(), t.context_score))
    model.train(was_training)
    return out


def _warm_start(cfg: TrainConfig) -> UniversalDiScoFormer:
    """The starting network of a fresh run with ``init_from`` (a shipped name or a weight file)."""

    old = load_model(cfg.init_from) if cfg.init_from in available_models() else load_weights(cfg.init_from)
    if old.config.max_dim != cfg.dim:
        raise ValueError(
            f"init_from {cfg.init_from!r} covers d <= {old.config.max_dim}, the run d <= {cfg.dim}"
        )
    if old.config.mixture_components:  # already mixture-aware: new EM options, same weights
        options = {k: v for k, v in cfg.model_config().to_dict().items() if k.startswith("mixture_")}
        model = reblend_mixture(old, blend=cfg.init_blend, **options)
    else:
        options = {
            k: v for k, v in cfg.model.items() if k.startswith("mixture_") and k != "mixture_components"
        }
        model = warm_start_mixture(old, cfg.model["mixture_components"], blend=cfg.init_blend, **options)
    if model.config != cfg.model_config():
        raise ValueError(
            f"init_from {cfg.init_from!r} has a different architecture from the run: "
            f"{model.config} vs {cfg.model_config()}"
        )
    return model


def _lr(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _save(path: Path, state: dict) -> None:
    """Write ``state`` atomically and durably: a temporary file in the same folder, fsync, rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _all_finite(*state_dicts: dict) -> bool:
    """True if every floating tensor in (nested) state dicts is finite."""

    def walk(obj: object) -> bool:
        if isinstance(obj, Tensor):
            return not obj.is_floating_point() or bool(torch.isfinite(obj).all())
        if isinstance(obj, dict):
            return all(walk(v) for v in obj.values())
        if isinstance(obj, (list, tuple)):
            return all(walk(v) for v in obj)
        return True

    return all(walk(sd) for sd in state_dicts)


class RunLockedError(RuntimeError):
    """Another process is training in the same run folder."""


def _lock(out: Path) -> TextIO:
    """An exclusive ``flock`` on ``out/.lock`` for the life of the returned file (POSIX only)."""
    f = open(out / LOCK, "a+")
    if fcntl is not None:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            raise RunLockedError(
                f"{out} is in use by another training process (it holds {out / LOCK}); "
                "wait for it to finish or stop it, or train into another --out"
            ) from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def _load_checkpoint(out: Path, device: torch.device) -> dict | None:
    """The newest usable checkpoint: ``checkpoint.pt``, else the one before it. A checkpoint with
    non-finite weights (written by versions before this check) is skipped with a warning."""
    problems = []
    for name in (CHECKPOINT, PREVIOUS):
        path = out / name
        if not path.exists():
            continue
        try:
            state = torch.load(path, map_location=device, weights_only=True)
        except Exception as exc:  # a torn or foreign file: fall back to the previous checkpoint
            problems.append(f"{path}: unreadable ({type(exc).__name__}: {exc})")
            continue
        if not _all_finite(state["model"], state["optimizer"]):
            problems.append(f"{path}: non-finite weights or optimiser state")
            continue
        for problem in problems:
            warnings.warn(f"skipping {problem}; resuming from {path}", stacklevel=3)
        if name == PREVIOUS and ddp.world()[0] == 0 and (out / CHECKPOINT).exists():
            os.replace(out / CHECKPOINT, out / f"{CHECKPOINT}.unusable")  # set the unusable newest aside
        return state
    if problems:
        raise RuntimeError(
            "no usable checkpoint to resume from: " + "; ".join(problems) + ". Move the run folder "
            "away to start afresh."
        )
    return None


def _read_log(path: Path, step: int) -> list[str]:
    """Log lines of steps ``<= step`` (later ones are redone). A line that does not parse (the
    torn last line of a killed run) is dropped with a warning instead of stopping the resume."""
    kept, torn = [], 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            record_step = int(record["step"])
        except (ValueError, KeyError, TypeError):
            torn += 1
            continue
        if record_step <= step:
            kept.append(line)
    if torn:
        warnings.warn(f"{path}: dropped {torn} unreadable line(s) (a run killed mid-write)", stacklevel=3)
    return kept


def train(cfg: TrainConfig, out_dir: str | Path, *, progress: bool = True) -> DiScoFormer:
    """Train (or resume) a DiScoFormer; writes ``checkpoint.pt`` and ``log.jsonl`` in ``out_dir``.

    A run you cannot lose:

    - Ctrl-C or SIGTERM only set a flag; the loop stops at the next step boundary, checkpoints
      and returns. Resuming is then exact: model, optimiser, step and the RNG states are saved
      together in one atomic write, so a resumed run is bit-for-bit the uninterrupted one.
    - An exception inside a step (a second Ctrl-C, say) leaves the last checkpoint alone rather
      than saving a half-applied optimiser step.
    - A checkpoint with non-finite weights or optimiser state is never written; the one it would
      replace is kept as ``checkpoint.prev.pt``, so a diverging run leaves two good ones.
    - ``out_dir`` is locked (``flock``): a second ``train`` on it fails at once.
    - A torn last line of ``log.jsonl`` is dropped on resume.

    Under ``torchrun`` (a ``torch.distributed`` process group initialised, e.g. by the CLI) the
    step is data-parallel with DistributedDataParallel: every rank draws its share of the global
    batch (``data_seeding="per-set"``, required; see :mod:`pyro_disco.training.distributed`), so
    N ranks train exactly as one process with the same config, to round-off. Rank 0 alone
    locks, logs, evaluates and checkpoints; every rank resumes from the checkpoint; a signal
    or a non-finite loss on any rank stops or skips the step on all of them.
    """
    rank, world_size = ddp.world()
    if world_size > 1 and cfg.data_seeding != "per-set":
        raise ValueError(
            "training with more than one process needs data_seeding='per-set' (each set from its own "
            "seed, so that the ranks draw one global batch); the CLI sets it under torchrun"
        )
    out = Path(out_dir)
    lock, error = None, None
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        try:
            lock = _lock(out)
        except RunLockedError as exc:
            error = exc
    if ddp.any_rank(error is not None):  # every rank stops if rank 0 could not lock
        raise error or RunLockedError(
            f"{out} is in use by another training process (rank 0 could not lock it)"
        )
    try:
        # fork_rng: the global RNG (dropout) is part of the run's state, not the caller's
        with torch.random.fork_rng(devices=[]):
            return _train_locked(cfg, out, progress)
    finally:
        if lock is not None:
            lock.close()


def _catch_signals() -> tuple[dict, dict]:
    """Ctrl-C and SIGTERM set ``stop["signal"]`` (a second Ctrl-C raises); returns ``stop`` and
    the previous handlers, to restore."""
    stop = {"signal": None}

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stop["signal"] is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now (the last checkpoint is kept)
        stop["signal"] = signum

    handlers = {}
    if threading.current_thread() is threading.main_thread():
        handlers = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    return stop, handlers


def _draw_step(cfg: TrainConfig, gen: torch.Generator, device: torch.device) -> tuple[int, int, MixtureTask]:
    """The step's dimension, ``n`` and this rank's sets of the global batch."""
    dim = cfg.sample_dim(gen)
    n = max(log_uniform_int(cfg.n_min, cfg.n_max, generator=gen), 2 * dim + 2)
    batch = max(1, cfg.tokens_per_step // n)
    kwargs = dict(off_support_fraction=cfg.off_support_fraction)
    if cfg.heavy_tail_fraction > 0:  # drawn only then: a run without keeps the historical stream
        u = float(torch.rand((), generator=gen, dtype=torch.float64))
        if u < cfg.heavy_tail_fraction:
            kwargs["marginal"] = "student-t" if u < cfg.heavy_tail_fraction / 2 else "laplace"
    if cfg.data_seeding == "per-set":
        sets = ddp.rank_sets(batch, *ddp.world())
        task = ddp.sample_sets(ddp.draw_base_seed(gen), sets, dim, n, cfg.num_queries, **kwargs)
    else:
        task = sample_task(batch, dim, n, cfg.num_queries, generator=gen, **kwargs)
    return dim, n, MixtureTask(*(t.to(device) for t in task))


@dataclass
class _RunState:
    """Where a run stands, the same on every rank. ``(step, gen_state, torch_rng)`` always
    describe one step boundary, the start of step ``step + 1`` (what a checkpoint saves);
    ``at_boundary`` is false only while the optimiser update is applied (the model and the
    optimiser are then neither the state before nor after it); ``bad`` counts the non-finite
    losses in a row."""

    step: int
    gen_state: Tensor
    torch_rng: Tensor
    at_boundary: bool = True
    bad: int = 0

    @classmethod
    def at(cls, step: int, gen: torch.Generator) -> _RunState:
        """The boundary after ``step`` steps, with the run's and the global RNG states now."""
        return cls(step, gen.get_state(), torch.get_rng_state())


class _StepInfo(NamedTuple):
    """An applied step: its dimension, set size and learning rate, the loss and its parts
    (means over the ranks) and the gradient norm before clipping."""

    dim: int
    n: int
    lr: float
    loss: float
    parts: dict
    grad_norm: float


def _train_step(
    cfg: TrainConfig,
    run: _RunState,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    step_loss: torch.nn.Module,
    gen: torch.Generator,
    device: torch.device,
) -> _StepInfo | None:
    """One training step, the same on every rank (rank 0 and the others call it alike, so they
    run the same collectives): draw this rank's sets, set the learning rate, compute the loss;
    where the loss is non-finite on any rank, skip the step on all of them (``None``; more than
    20 in a row raise :class:`FloatingPointError`), else backward, clip, apply the update and
    move ``run`` to the next boundary."""
    dim, n, task = _draw_step(cfg, gen, device)
    lr = _lr(cfg, run.step)
    for group in opt.param_groups:
        group["lr"] = lr
    loss, parts = step_loss(task)
    opt.zero_grad(set_to_none=True)
    if ddp.any_rank(not torch.isfinite(loss)):
        run.bad += 1
        if run.bad > 20:
            raise FloatingPointError(
                f"20 non-finite losses in a row after step {run.step}; lower the learning rate"
            )
        return None
    run.bad = 0
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
    run.at_boundary = False
    opt.step()
    run.step += 1
    run.gen_state, run.torch_rng = gen.get_state(), torch.get_rng_state()
    run.at_boundary = True
    loss_value, parts["logdensity"], parts["score"] = ddp.mean_over_ranks(
        [float(loss.detach()), parts["logdensity"], parts["score"]]
    )
    return _StepInfo(dim, n, lr, loss_value, parts, float(grad_norm))


def _train_worker(
    cfg: TrainConfig,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    gen: torch.Generator,
    step: int,
    step_loss: torch.nn.Module,
    device: torch.device,
) -> DiScoFormer:
    """Ranks other than 0: the same steps and collectives as rank 0, without its log,
    evaluation and checkpoints."""
    stop, handlers = _catch_signals()
    run = _RunState.at(step, gen)
    model.train()
    try:
        while run.step < cfg.steps and not ddp.any_rank(stop["signal"] is not None):
            _train_step(cfg, run, model, opt, step_loss, gen, device)
        torch.distributed.barrier()  # rank 0 has written the last checkpoint
    finally:
        for sig, old in handlers.items():
            signal.signal(sig, old)
    return model


def _train_locked(cfg: TrainConfig, out: Path, progress: bool) -> DiScoFormer:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rank, world_size = ddp.world()
    device = ddp.local_device(cfg.device) if world_size > 1 else torch.device(cfg.device)
    torch.manual_seed(cfg.seed)  # reproducible init
    model = build_model(cfg.model_config()).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    step, elapsed = 0, 0.0
    ckpt_path = out / CHECKPOINT
    state = _load_checkpoint(out, device)
    if state is not None:
        saved = TrainConfig.from_dict(state["train_config"])
        if saved.model_config() != cfg.model_config():
            raise ValueError(f"{ckpt_path} was trained with a different architecture: {saved.model_config()}")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        if "torch_rng" in state:
            torch.set_rng_state(state["torch_rng"])
        step, elapsed = int(state["step"]), float(state["elapsed"])
    elif cfg.init_from is not None:
        model = _warm_start(cfg).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_kwargs = dict(
        alpha=cfg.alpha,
        normalize=cfg.arch == "universal",
        score_metric=cfg.score_metric,
        robust_logdensity=cfg.heavy_tail_fraction > 0,
    )
    step_loss = ddp.TaskLoss(model, task_loss, **loss_kwargs)
    if world_size > 1:
        ids = [device.index] if device.type == "cuda" else None
        step_loss = torch.nn.parallel.DistributedDataParallel(step_loss, device_ids=ids)
    if rank != 0:  # rank 0 alone logs, evaluates and checkpoints
        return _train_worker(cfg, model, opt, gen, step, step_loss, device)
    val = _validation_for(cfg)
    run = _RunState.at(step, gen)
    log_path = out / "log.jsonl"
    if log_path.exists():  # drop records of steps after the checkpoint: they are redone
        kept = _read_log(log_path, run.step)
        tmp = log_path.with_name(f".{log_path.name}.tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, log_path)
    log = open(log_path, "a", buffering=1)

    saved_step = run.step if ckpt_path.exists() else -1  # the step checkpoint.pt holds

    def checkpoint() -> bool:
        nonlocal saved_step
        if run.step == saved_step:
            return True  # already on disk: rotating it would drop the previous one
        if not _all_finite(model.state_dict(), opt.state_dict()):
            bar.write(f"not checkpointing step {run.step}: non-finite weights; {ckpt_path} is kept")
            return False
        log.flush()
        os.fsync(log.fileno())
        state = {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "generator": run.gen_state,
            "torch_rng": run.torch_rng,
            "step": run.step,
            "elapsed": elapsed,
            "train_config": asdict(cfg),
            "model_config": cfg.model_config().to_dict(),
        }
        if ckpt_path.exists():
            os.replace(ckpt_path, out / PREVIOUS)
        _save(ckpt_path, state)
        saved_step = run.step
        return True

    stop, handlers = _catch_signals()
    desc = f"train d={cfg.dim}" if cfg.arch != "universal" else f"train universal d={cfg.dim_min}…{cfg.dim}"
    bar = tqdm(total=cfg.steps, initial=run.step, disable=not progress, desc=desc)
    model.train()
    try:
        while run.step < cfg.steps and not ddp.any_rank(stop["signal"] is not None):
            t0 = time.perf_counter()
            try:
                info = _train_step(cfg, run, model, opt, step_loss, gen, device)
            except FloatingPointError as exc:
                raise FloatingPointError(
                    f"{exc}. The last good checkpoints are kept: {ckpt_path} and {out / PREVIOUS}"
                ) from None
            if info is None:  # skipped on every rank: a non-finite loss
                continue
            elapsed += time.perf_counter() - t0
            record = {
                "step": run.step,
                "n": info.n,
                "d": info.dim,
                "loss": info.loss,
                **info.parts,
                "grad_norm": info.grad_norm,
                "lr": info.lr,
                "elapsed_s": round(elapsed, 2),
            }
            if run.step % cfg.eval_every == 0 or run.step == cfg.steps:
                record.update(evaluate(model, val))
            log.write(json.dumps(record) + "\n")
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.4f}", n=info.n)
            if run.step % cfg.checkpoint_every == 0:
                checkpoint()
        if stop["signal"] is not None:
            bar.write(
                f"stopped by signal {stop['signal']} at step {run.step}; checkpoint saved to {ckpt_path}, "
                "run again to resume"
            )
        checkpoint()
        if world_size > 1:
            torch.distributed.barrier()  # the other ranks return once the checkpoint is on disk
    except KeyboardInterrupt:
        if run.at_boundary and checkpoint():
            bar.write(f"interrupted at step {run.step}; checkpoint saved, run again to resume")
        else:
            bar.write(f"interrupted inside step {run.step + 1}; the last checkpoint {ckpt_path} is kept")
    finally:
        log.close()
        bar.close()
        for sig, old in handlers.items():
            signal.signal(sig, old)
    return model
