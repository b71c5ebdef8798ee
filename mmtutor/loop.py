"""The training loop every trainer of the book shares: steps, a progress bar, a history,
timing, a finite-loss guard, checkpoints, and an exponential moving average of weights.

It is deliberately small (minGPT's ``trainer.py`` is the model): it does *not* know what a
step computes -- each trainer (``gan``, ``vae``, ``diffusion``, ``align``, ``judge``,
``captioner``) writes its own step, where the lesson is -- it only runs the steps around it:

    loop = Loop("GAN", train, modules={"G": G, "D": D}, save=model.save)   # save(path, history)
    for step in loop:
        ...                                   # one optimisation step
        loop.check(d_loss=d_loss, g_loss=g_loss)   # NaN/inf -> restore last good weights, raise
        loop.log(step, d_loss=d_loss, g_loss=g_loss)
    history = loop.finish()

``TrainConfig`` holds the settings every trainer shares (steps, batch size, seed, precision,
time budget, logging, checkpoints); model hyperparameters stay in each model's own config.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

from . import checks


class TrainingDiverged(FloatingPointError):
    """A loss or a weight became NaN or infinite; the model keeps its last good weights."""


@dataclass
class TrainConfig:
    steps: int = 1000                  # optimisation steps (each trainer's unit: a D+G pair for the GAN)
    batch_size: int = 64
    seed: int = 0                      # seeds the batches, the noise and the initialisation
    bf16: bool = False                 # bfloat16 autocast where the hardware makes it pay (runtime.bf16_supported)
    max_seconds: float | None = None   # stop early after this much wall time (benchmarks' budgets)
    log_every: int = 25                # history entries every this many steps (and at the last step)
    checkpoint: str | None = None      # also save the model here every ``checkpoint_every`` steps and at the end
    checkpoint_every: int = 250        # ... and keep a last-good copy in memory this often
    progress: bool = True              # tqdm progress bar

    def __post_init__(self):
        self.steps = checks.count(self.steps, "steps")
        self.batch_size = checks.count(self.batch_size, "batch_size", minimum=2)
        self.seed = checks.seed(self.seed)
        if self.max_seconds is not None:
            self.max_seconds = checks.number(self.max_seconds, "max_seconds", low=0, low_open=True)
        self.log_every = checks.count(self.log_every, "log_every")
        self.checkpoint_every = checks.count(self.checkpoint_every, "checkpoint_every")


class EMA:
    """Exponential moving average of a model's weights (and buffers), for sampling.

    avg <- d * avg + (1 - d) * current after every step (Polyak averaging as used for GANs by
    Karras et al. 2018 and Yazici et al. 2019; for diffusion by Ho et al. 2020). The decay
    ``d`` warms up so that the average never reaches further back than ``rampup`` of the
    training so far (Karras et al. 2022's ramp): its half-life is min(H, rampup * n) steps,
    H = log(1/2) / log(decay) the configured one. Early on the average therefore follows the
    model closely; after n >= H / rampup steps the configured decay applies. (The older
    d = min(decay, (1 + n) / (10 + n)) stays below 0.999 until n ~ 9000: in a 2000-step run
    the configured decay would never apply.)

    Built on ``torch.optim.swa_utils.AveragedModel``; the decay is computed on the host from a
    Python step counter, so an update never waits for the GPU.
    """

    def __init__(self, model: nn.Module, decay: float, rampup: float = 0.1):
        self.decay = checks.number(decay, "ema_decay", 0.0, 1.0, high_open=True)
        self.rampup = checks.number(rampup, "ema_rampup", 0.0, 1.0, low_open=True)
        self.half_life = math.log(0.5) / math.log(self.decay) if self.decay > 0 else 0.0
        self.n = 0
        self._d = 0.0
        self.model = AveragedModel(model, multi_avg_fn=self._update, use_buffers=True)

    def decay_at(self, n: int) -> float:
        """The decay used for the update after ``n`` previous updates."""
        half_life = min(self.half_life, self.rampup * n)
        return 0.5 ** (1.0 / half_life) if half_life > 0 else 0.0

    def _update(self, averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged) -> None:
        d = self._d
        if d == 0.0 or not averaged[0].is_floating_point():   # integer buffers (batch-norm counters): copied
            torch._foreach_copy_(averaged, current)
        else:
            torch._foreach_lerp_(averaged, current, 1.0 - d)     # avg + (1 - d) (cur - avg)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self._d = self.decay_at(self.n)
        self.model.update_parameters(model)
        self.n += 1

    @property
    def module(self) -> nn.Module:
        return self.model.module

    def state_dict(self) -> dict:
        return {**self.model.state_dict(), "ema_updates": torch.tensor(self.n)}

    def load_state_dict(self, state: dict) -> None:
        state = dict(state)
        self.n = int(state.pop("ema_updates", 0))
        self.model.load_state_dict(state)


class Loop:
    """Runs ``train.steps`` steps (or until ``train.max_seconds``) and keeps the books.

    ``modules`` are the networks whose weights must stay finite; every ``checkpoint_every``
    steps a copy of their weights is kept (and, with ``train.checkpoint``, ``save`` writes the
    model). A non-finite loss or weight restores the last good copy and raises
    ``TrainingDiverged`` with ``hint`` (what to change) in its message."""

    def __init__(self, name: str, train: TrainConfig, modules: dict[str, nn.Module], hint: str = "",
                 save: Callable[[str, dict], None] | None = None, images_per_step: int | None = None,
                 main_process: bool = True):
        self.name, self.train, self.modules, self.hint, self.save = name, train, modules, hint, save
        self.images_per_step = images_per_step if images_per_step is not None else train.batch_size
        self.main = main_process
        self.history: dict = {"step": [], "seconds": []}
        self.step = -1
        self.steps_run = 0
        self._last_good = self._copy()
        self._last_good_step = 0
        self._saved_step: int | None = None
        self.t0 = time.perf_counter()

    # ---------------------------------------------------------------- iteration
    def __iter__(self):
        train = self.train
        if not self._finite():
            raise TrainingDiverged(f"{self.name} training stopped before step 0: the starting weights already hold "
                                   f"NaN/inf values. {self.hint}".strip())
        if train.checkpoint and self.save is not None and self.main:
            self.save(train.checkpoint, self.history)   # the starting point is the first "last good" checkpoint
            self._saved_step = 0
        bar = tqdm(range(train.steps), desc=self.name, disable=not (train.progress and self.main), leave=False)
        self.t0 = time.perf_counter()
        for step in bar:
            self.step = step
            yield step
            self.steps_run = step + 1
            if self.steps_run % train.checkpoint_every == 0 and self.steps_run < train.steps:
                self._keep_good()
            if "loss_postfix" in self.__dict__:
                bar.set_postfix(self.loss_postfix, refresh=False)
            if train.max_seconds is not None and time.perf_counter() - self.t0 > train.max_seconds:
                break
        bar.close()

    # ---------------------------------------------------------------- the guard
    def check(self, **losses: torch.Tensor) -> None:
        """Stop the run if any loss is NaN or infinite (one host sync for all of them)."""
        values = torch.stack([v.detach().float().reshape(()) for v in losses.values()])
        if not bool(torch.isfinite(values).all()):
            bad = {k: float(v) for k, v in zip(losses, values.tolist()) if not math.isfinite(v)}
            what = ", ".join(f"{k} became {v}" for k, v in bad.items())
            self._diverged(what)

    def _finite(self) -> bool:
        return all(bool(torch.isfinite(p).all()) for m in self.modules.values() for p in m.state_dict().values()
                   if p.is_floating_point())

    def _copy(self) -> dict:
        return {k: copy.deepcopy(m.state_dict()) for k, m in self.modules.items()}

    @property
    def last_good_step(self) -> int:
        """Steps run when the last good weights were kept (what a divergence restores)."""
        return self._last_good_step

    def _keep_good(self) -> None:
        if not self._finite():                # a NaN weight with a still-finite loss: never keep it
            self._diverged("a weight became NaN/inf")
        self._last_good, self._last_good_step = self._copy(), self.steps_run
        if self.train.checkpoint and self.save is not None and self.main:
            self.save(self.train.checkpoint, self.history)
            self._saved_step = self.steps_run

    def _diverged(self, what: str):
        for k, m in self.modules.items():
            m.load_state_dict(self._last_good[k])
        ckpt = self.train.checkpoint
        if ckpt and self._saved_step is not None:
            where = f"; the last good checkpoint (step {self._saved_step}) is kept at {ckpt}"
        elif ckpt:
            where = f"; no checkpoint was written to {ckpt} before it diverged"
        else:
            where = ""
        raise TrainingDiverged(f"{self.name} training diverged at step {self.step}: {what}. The model was restored "
                               f"to its last good weights (step {self._last_good_step}){where}. {self.hint}".strip())

    # ---------------------------------------------------------------- the books
    def due(self, step: int) -> bool:
        """Is this a logging step (every ``log_every`` and the last)?"""
        return step % self.train.log_every == 0 or step == self.train.steps - 1

    def log(self, step: int, **values) -> None:
        """Append ``values`` to the history at logging steps (floats; tensors are read here only).
        Under DistributedDataParallel each value is averaged over the processes, so the history
        describes the global batch (every process must call ``log`` at the same steps)."""
        if not self.due(step):
            return
        self.history["step"].append(step + 1)
        self.history["seconds"].append(time.perf_counter() - self.t0)
        vec = torch.tensor([float(v.detach()) if isinstance(v, torch.Tensor) else float(v) for v in values.values()],
                           dtype=torch.float64)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(vec)                      # gloo/NCCL sum, then the mean
            vec /= torch.distributed.get_world_size()
        values = dict(zip(values, vec.tolist()))
        for k, v in values.items():
            self.history.setdefault(k, []).append(v)
        self.loss_postfix = {k: f"{v:.3f}" for k, v in list(values.items())[:3]}

    def finish(self) -> dict:
        """Final checks and totals: ``steps``, ``total_seconds``, ``images_per_second``, and the
        ``torch_threads`` the seconds were measured with."""
        if not self._finite():
            self._diverged("a weight became NaN/inf")
        seconds = time.perf_counter() - self.t0
        self.history["steps"] = self.steps_run
        self.history["total_seconds"] = seconds
        self.history["images_per_second"] = self.steps_run * self.images_per_step / max(seconds, 1e-9)
        self.history["torch_threads"] = torch.get_num_threads()
        if self.train.checkpoint and self.save is not None and self.main:
            self.save(self.train.checkpoint, self.history)
        return self.history


__all__ = ["TrainConfig", "TrainingDiverged", "EMA", "Loop"]
