"""Turn a training run into shipped weights: weight file, sha256 in the registry, model card."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import time
from pathlib import Path

import torch

from pyro_disco.pretrained import WEIGHTS_DIR, load_weights, model_from_state, registry_path, save_weights
from pyro_disco.training.train import CHECKPOINT, TrainConfig

__all__ = ["export_run", "load_checkpoint", "train_command", "check_model_name"]


def train_command(cfg: TrainConfig, out: str) -> str:
    """The ``pyro-disco train`` command line that reproduces ``cfg``."""
    default = TrainConfig(dim=cfg.dim)
    flags = [f"--dim {cfg.dim}", f"--out {out}"]
    if cfg.arch != default.arch:
        flags += [f"--arch {cfg.arch}", f"--dim-min {cfg.dim_min}", f"--dim-power {cfg.dim_power}"]
        flags += [f"--score-metric {cfg.score_metric}"]
    for name in (
        "steps",
        "tokens_per_step",
        "n_min",
        "n_max",
        "alpha",
        "lr",
        "seed",
        "threads",
        "eval_every",
        "warmup",
        "heavy_tail_fraction",
    ):
        value = getattr(cfg, name)
        if value != getattr(default, name) or name == "steps":
            flags.append(f"--{name.replace('_', '-')} {value}")
    for key, value in cfg.model.items():
        if isinstance(value, bool):  # store_true flags
            if value:
                flags.append(f"--{key.replace('_', '-')}")
            continue
        value = " ".join(str(v) for v in value) if isinstance(value, (list, tuple)) else value
        flags.append(f"--{key.replace('_', '-')} {value}")
    if cfg.init_from is not None:
        flags += [f"--init-from {cfg.init_from}", f"--init-blend {cfg.init_blend}"]
    return "pyro-disco train " + " ".join(flags)


def load_checkpoint(path: str | Path) -> torch.nn.Module:
    """The network of a training ``checkpoint.pt`` (frozen, eval mode), without unpickling; a
    weight file is passed on to :func:`pyro_disco.pretrained.load_weights`."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if "model" in state and "model_config" in state:
        return model_from_state(state["model_config"], state["model"])
    return load_weights(path)


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def check_model_name(name: str) -> str:
    """A model name is a plain file stem: letters, digits, ``.``, ``_``, ``-``; no path separator,
    no ``..`` (``--name ../../escaped`` wrote outside the weights folder)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise ValueError(
            f"invalid model name {name!r}: use letters, digits, '.', '_' and '-' only "
            "(starting with a letter or digit, no '..', at most 100 characters)"
        )
    return name


def _read_registry(path: Path) -> dict:
    """The registry being extended: absent means empty (a fresh weights folder); unreadable is an
    error, never silently replaced."""
    if not path.exists():
        return {}
    try:
        entries = json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(f"the registry {path} is corrupt ({exc}); repair it before exporting") from exc
    if not isinstance(entries, dict):
        raise ValueError(f"the registry {path} must map names to entries")
    return entries


def _read_log_records(path: Path) -> list[dict]:
    records = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # a torn line of a killed run
    return records


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _curve_keys(record: dict) -> list[str]:
    keys = [k for k in record if k.startswith(("rel_score_", "orig_rel_score_")) and "at_samples" not in k]
    return sorted(keys, key=lambda k: (k.startswith("orig_"), k))


def export_run(
    run_dir: str | Path,
    name: str,
    *,
    weights_dir: str | Path | None = None,
    registry: str | Path | None = None,
    notes: str = "",
    auto: bool | list[int] = True,
    force: bool = False,
) -> dict:
    """Export ``run_dir/checkpoint.pt`` as ``<weights_dir>/<name>.pt`` (float32 weights + config),
    record its sha256 in the registry and write a model card ``<name>.md`` beside it.

    ``auto``: whether ``estimator="auto"`` picks this model (per-dimension models), or the list
    of dimensions where it does (the universal model; ``True`` means all it covers); a run
    with no step or no validation record cannot be ``auto``. ``name`` is a plain file stem (no
    path separators, no ``..``); an existing model of that name is replaced only with
    ``force=True``, after a copy of its files and registry entry goes to
    ``<weights_dir>/backup/<time>/``. Every file is written atomically."""
    check_model_name(name)
    run_dir = Path(run_dir)
    weights_dir = Path(weights_dir) if weights_dir else WEIGHTS_DIR
    registry = Path(registry) if registry else registry_path()
    entries = _read_registry(registry)
    existing = [p for p in (weights_dir / f"{name}.pt", weights_dir / f"{name}.md") if p.exists()]
    if (existing or name in entries) and not force:
        raise FileExistsError(
            f"a model named {name!r} already exists ({', '.join(map(str, existing)) or registry}); "
            "choose another name, or pass force=True (--force) to replace it (a backup is kept)"
        )
    state = torch.load(run_dir / CHECKPOINT, map_location="cpu", weights_only=True)
    cfg = TrainConfig.from_dict(state["train_config"])
    model = load_checkpoint(run_dir / CHECKPOINT)
    log = _read_log_records(run_dir / "log.jsonl")
    evals = [r for r in log if any(k.startswith("rel_score") for k in r)]
    if auto and (int(state["step"]) < 1 or not evals):
        raise ValueError(
            f"{run_dir} has {'no training steps' if int(state['step']) < 1 else 'no validation record'}: "
            "an untrained or unvalidated model cannot be the default; export it with auto=False "
            "(--not-default)"
        )
    weights_dir.mkdir(parents=True, exist_ok=True)
    if existing or name in entries:
        backup = weights_dir / "backup" / time.strftime("%Y%m%d-%H%M%S")
        backup.mkdir(parents=True, exist_ok=True)
        for path in existing:
            shutil.copy2(path, backup / path.name)
        if name in entries:
            (backup / f"{name}.registry.json").write_text(json.dumps(entries[name], indent=2) + "\n")
    meta = {
        "name": name,
        "steps": int(state["step"]),
        "wall_time_s": float(state["elapsed"]),
        "command": train_command(cfg, str(run_dir)),
        "seed": cfg.seed,
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, torch {torch.__version__}, "
        f"{cfg.threads or torch.get_num_threads()} thread(s)",
        "validation": {
            k: v for k, v in (evals[-1] if evals else {}).items() if k.startswith(("rel_score", "logdens"))
        },
    }
    file = f"{name}.pt"
    sha = save_weights(model, weights_dir / file, meta)
    if cfg.arch == "universal":
        dims = list(range(cfg.dim_min, cfg.dim + 1))
        auto_dims = dims if auto is True else [] if auto is False else sorted(int(d) for d in auto)
        entries[name] = {"file": file, "sha256": sha, "dims": [cfg.dim_min, cfg.dim], "auto": auto_dims}
        what = (
            f"Universal, exactly O(d)-equivariant DiScoFormer for every d = {cfg.dim_min} … {cfg.dim} "
            f"(one set of weights; d drawn per step with P(d) ∝ d^{cfg.dim_power})"
        )
    else:
        entries[name] = {"file": file, "sha256": sha, "dim": cfg.dim, "auto": bool(auto)}
        what = f"DiScoFormer for d = {cfg.dim} (arXiv:2511.05924)"
    _write_atomic(registry, json.dumps(entries, indent=2, sort_keys=True) + "\n")
    columns = _curve_keys(evals[-1]) if evals else []
    curve = "\n".join(
        f"| {r['step']} | {r['elapsed_s']:.0f} | "
        + " | ".join(f"{100 * r[k]:.1f}" if k in r else "–" for k in columns)
        + " |"
        for r in evals
    )
    n_cols = " | ".join(k.removeprefix("rel_score_").replace("orig_rel_score_", "orig. ") for k in columns)
    sets = "8 held-out mixtures per d" if cfg.arch == "universal" else "16 held-out mixtures"
    family = "random Gaussian mixtures"
    if cfg.heavy_tail_fraction > 0:
        family += (
            f" and, on a fraction {cfg.heavy_tail_fraction:g} of the steps (of the last phase), "
            "Student-t and Laplace product mixtures"
        )
    card = f"""# {name}

{what}, trained on {family} on CPU.

- Architecture: {model.config.to_dict()} ({sum(p.numel() for p in model.parameters()):,} parameters)
- Command: `{meta["command"]}`
- Seed: {cfg.seed}; steps: {meta["steps"]}; wall time: {meta["wall_time_s"] / 60:.1f} min
- Machine: {meta["machine"]}
- Training recipe: {json.dumps({k: v for k, v in state["train_config"].items() if k != "model"})}
- sha256: `{sha}`

## Learning curve (validation: {sets}, relative score MSE %, whitened; "orig.": original coordinates)

| step | seconds | {n_cols} |
|---|---|{"---|" * len(n_cols.split(" | ")) if n_cols else ""}
{curve}

{notes}
"""
    _write_atomic(weights_dir / f"{name}.md", card)
    return {"file": str(weights_dir / file), "sha256": sha, **meta}
