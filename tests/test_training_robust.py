"""Training runs you cannot lose (issue 12, items 3, 4 and the argument checks of item 8).

Each test reproduces a reported failure on a tiny config (a few seconds) and asserts the fix:
exact resume after a signal inside ``optimizer.step()``, no half-applied step on disk, no
non-finite checkpoint, a torn log line, a locked run folder, argument ranges.
"""

import os
import signal
import sys

import pytest
import torch

from pyro_disco.training import train
from pyro_disco.training.train import CHECKPOINT, PREVIOUS, RunLockedError, _lock

from helpers import read_log, tiny_train_config

STEPS = 12  # checkpoints every 5 steps: at 5, 10 and the end


# dropout draws from the global RNG: exact resume must restore it too
DROPOUT_MODEL = dict(d_model=32, num_layers=2, num_heads=4, d_ff=64, dropout=0.1)


def _tiny(steps=STEPS, **kw):
    return tiny_train_config(steps, **{"model": DROPOUT_MODEL, **kw})


def _deterministic(records):
    """The per-step training fields (not wall time, nor the evaluations at the last step)."""
    keys = ("step", "n", "d", "loss", "logdensity", "score", "grad_norm", "lr")
    return [{k: r[k] for k in keys} for r in records]


def _ckpt(path, name=CHECKPOINT):
    return torch.load(path / name, weights_only=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run: final weights and log."""
    out = tmp_path_factory.mktemp("full")
    model = train(_tiny(), out, progress=False)
    return model.state_dict(), _deterministic(read_log(out))


def _assert_same_run(model, out, reference):
    ref_state, ref_log = reference
    for k, v in model.state_dict().items():
        assert torch.equal(v, ref_state[k]), k  # bit for bit
    assert _deterministic(read_log(out)) == ref_log


def _stopped_then_resumed(tmp_path, monkeypatch, reference, *, stopped_at):
    """Train with the patches in place (the run stops early), check the step of the newest
    checkpoint, then train again without them: the uninterrupted run, bit for bit."""
    train(_tiny(), tmp_path, progress=False)
    assert _ckpt(tmp_path)["step"] == stopped_at
    monkeypatch.undo()
    model = train(_tiny(), tmp_path, progress=False)
    _assert_same_run(model, tmp_path, reference)


def _patch_step(monkeypatch, action, at_call):
    """Run ``action(opt, real_step)`` instead of the ``at_call``-th ``AdamW.step`` (1-based)."""
    real = torch.optim.AdamW.step
    calls = {"n": 0}

    def step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == at_call:
            return action(self, lambda: real(self, *args, **kwargs))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)


def _sweep_points(count: int = 3, seed: int = 20261203):
    """Random (phase, call, signal) triples, from a fixed seed: where in a step a signal lands."""
    g = torch.Generator().manual_seed(seed)
    phases = ("forward", "backward", "step")
    return [
        (
            phases[int(torch.randint(3, (), generator=g))],
            int(torch.randint(1, STEPS, (), generator=g)),
            (signal.SIGINT, signal.SIGTERM)[int(torch.randint(2, (), generator=g))],
        )
        for _ in range(count)
    ]


@pytest.mark.parametrize(("phase", "at_call", "signum"), _sweep_points())
def test_signal_at_random_points_resumes_bit_for_bit(
    phase, at_call, signum, tmp_path, monkeypatch, reference
):
    """The random sweep: a signal lands during the forward pass (``task_loss``), the backward
    pass (``Tensor.backward``) or ``AdamW.step`` of a random step; the run stops at that step's
    boundary, and the resumed run is the uninterrupted one bit for bit."""
    train_module = sys.modules["pyro_disco.training.train"]  # the package's `train` is the function
    targets = {
        "forward": (train_module, "task_loss"),
        "backward": (torch.Tensor, "backward"),
        "step": (torch.optim.AdamW, "step"),
    }
    owner, name = targets[phase]
    real = getattr(owner, name)
    calls = {"n": 0}

    def wrapped(*args, **kwargs):
        calls["n"] += 1
        out = real(*args, **kwargs)
        if calls["n"] == at_call:
            os.kill(os.getpid(), signum)  # lands after the real work, before it returns
        return out

    monkeypatch.setattr(owner, name, wrapped)
    # stopped at the boundary of the signalled step
    _stopped_then_resumed(tmp_path, monkeypatch, reference, stopped_at=at_call)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_inside_optimizer_step_resumes_bit_for_bit(signum, tmp_path, monkeypatch, reference):
    """Was: the handler raised inside ``optimizer.step()``, so the checkpoint held step 6 with
    step 7's weights, and the resumed run redid step 7. Now the signal sets a flag and the loop
    stops at the step boundary."""

    def signal_mid_step(opt, real_step):
        real_step()  # the update is applied ...
        os.kill(os.getpid(), signum)  # ... and the signal lands before step() returns

    _patch_step(monkeypatch, signal_mid_step, at_call=7)
    _stopped_then_resumed(tmp_path, monkeypatch, reference, stopped_at=7)


def test_hard_interrupt_inside_optimizer_step_keeps_the_last_checkpoint(tmp_path, monkeypatch, reference):
    """A KeyboardInterrupt that escapes mid-step (a second Ctrl-C) must not save a half-applied
    step: the step-5 checkpoint stays, and the resumed run is the uninterrupted one."""

    def half_step(opt, real_step):
        with torch.no_grad():  # half of the parameters updated, then the interrupt
            params = [p for g in opt.param_groups for p in g["params"]]
            for p in params[: len(params) // 2]:
                p.add_(1.0)
        raise KeyboardInterrupt

    _patch_step(monkeypatch, half_step, at_call=7)
    _stopped_then_resumed(tmp_path, monkeypatch, reference, stopped_at=5)


def test_non_finite_weights_never_overwrite_a_good_checkpoint(tmp_path, monkeypatch, reference):
    """Was: after 20 non-finite losses the ``finally:`` block saved NaN weights over the good
    checkpoint, and every later run failed for ever. Now nothing non-finite is written, the run
    fails with a message naming the kept checkpoints, and a sane rerun resumes exactly."""

    def poison(opt, real_step):
        real_step()
        with torch.no_grad():
            for g in opt.param_groups:
                for p in g["params"]:
                    p.fill_(float("nan"))

    _patch_step(monkeypatch, poison, at_call=10)  # step 10 would be checkpointed
    with pytest.raises(FloatingPointError, match="last good checkpoints are kept"):
        train(_tiny(), tmp_path, progress=False)
    state = _ckpt(tmp_path)
    assert state["step"] == 5
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    monkeypatch.undo()
    model = train(_tiny(), tmp_path, progress=False)
    _assert_same_run(model, tmp_path, reference)


def test_previous_checkpoint_is_kept_beside_the_newest(tmp_path):
    train(_tiny(), tmp_path, progress=False)
    assert _ckpt(tmp_path)["step"] == 12 and _ckpt(tmp_path, PREVIOUS)["step"] == 10


def test_resume_skips_a_non_finite_checkpoint(tmp_path, reference):
    """A NaN checkpoint.pt (as older versions wrote) falls back to the previous one with a
    warning, or fails clearly if there is none."""
    # checkpoint.pt: 10, prev: 5 (steps 1-5 are warm-up, the same in a 10- and a 12-step run)
    train(_tiny(steps=10), tmp_path, progress=False)
    state = _ckpt(tmp_path)
    for v in state["model"].values():
        v.fill_(float("nan"))
    torch.save(state, tmp_path / CHECKPOINT)
    with pytest.warns(UserWarning, match="non-finite"):
        model = train(_tiny(), tmp_path, progress=False)
    _assert_same_run(model, tmp_path, reference)
    assert (tmp_path / f"{CHECKPOINT}.unusable").exists()  # set aside, not deleted

    bad = tmp_path / "only-bad"
    bad.mkdir()
    torch.save(state, bad / CHECKPOINT)
    with pytest.raises(RuntimeError, match="no usable checkpoint"):
        train(_tiny(), bad, progress=False)


def test_truncated_last_log_line_does_not_stop_the_resume(tmp_path, reference):
    """Was: a torn last line of log.jsonl made resume crash with JSONDecodeError."""
    train(_tiny(steps=5), tmp_path, progress=False)  # steps 1-5 are warm-up: a prefix of the full run
    with open(tmp_path / "log.jsonl", "a") as f:
        f.write('{"step": 6, "n": 9')  # killed mid-write
    with pytest.warns(UserWarning, match="unreadable line"):
        model = train(_tiny(), tmp_path, progress=False)
    _assert_same_run(model, tmp_path, reference)


def test_second_train_on_the_same_folder_fails(tmp_path):
    """Was: two processes on one --out both ran and wrote every step twice."""
    held = _lock(tmp_path)  # what a running `train` holds
    try:
        with pytest.raises(RunLockedError, match="in use by another training process"):
            train(_tiny(), tmp_path, progress=False)
        assert not (tmp_path / CHECKPOINT).exists()
    finally:
        held.close()
    train(_tiny(steps=2), tmp_path, progress=False)  # released: runs


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(alpha=5.0), "alpha"),
        (dict(alpha=-0.1), "alpha"),
        (dict(n_min=100, n_max=10), "n_min <= n_max"),
        (dict(eval_every=0), "eval_every"),
        (dict(checkpoint_every=0), "checkpoint_every"),
        (dict(steps=-5), "steps"),
        (dict(steps=0), "steps"),
        (dict(lr=0.0), "lr"),
        (dict(lr=float("nan")), "lr"),
        (dict(tokens_per_step=0), "tokens_per_step"),
        (dict(off_support_fraction=1.5), "off_support_fraction"),
        (dict(num_queries=0), "num_queries"),
        (dict(n_min=1), "n_min"),
        (dict(clip=0.0), "clip"),
        (dict(warmup=-1), "warmup"),
        (dict(weight_decay=-1.0), "weight_decay"),
        (dict(threads=0), "threads"),
        (dict(dim=0), "dim"),
    ],
)
def test_training_arguments_are_range_checked(bad, message):
    with pytest.raises(ValueError, match=message):
        _tiny(**bad)


def test_training_arguments_must_be_ints():
    with pytest.raises(TypeError, match="steps must be an int"):
        _tiny(steps=10.5)


def test_cli_rejects_bad_training_arguments(tmp_path):
    """The command line gets the same checks, before any file is written."""
    from pyro_disco.cli import main

    out = tmp_path / "run"
    with pytest.raises((ValueError, SystemExit)):
        main(["train", "--dim", "2", "--out", str(out), "--alpha", "5", "--no-progress"])
    assert not out.exists()
