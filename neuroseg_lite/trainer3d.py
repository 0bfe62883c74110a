"""One optimisation step of the 3D U-Net, and the weight average that :func:`neuroseg_lite.train.train_3d` returns.

Introduced in chapter 5 (``05_train_3d``). A step sets the learning rate, samples and augments a batch of patches
(:class:`neuroseg_lite.patches.PatchSampler`), minimises the weighted loss of Eq. 1
(:func:`neuroseg_lite.losses.weighted_bce`) with Adam (float16 autocast and gradient scaling on CUDA), and adds
the weights of the last ``average_fraction`` of the steps to a uniform average (stochastic weight averaging,
Izmailov et al. 2018), whose batch-norm statistics :meth:`Trainer3D.finish` re-estimates.
"""
from __future__ import annotations

import torch

from neuroseg_lite.losses import lambda_schedule, weighted_bce
from neuroseg_lite.patches import PatchSampler
from neuroseg_lite.trainconfig import TrainConfig
from neuroseg_lite.unet3d import UNet3D
from neuroseg_lite.utils import memory_format_for

__all__ = ["Trainer3D", "WeightAverage"]


class WeightAverage:
    """Running uniform average of a model's floating-point state (parameters and buffers)."""

    def __init__(self):
        self.average: dict[str, torch.Tensor] | None = None
        self.count = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.count += 1
        if self.average is None:
            self.average = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}
            return
        for key, value in model.state_dict().items():
            if key in self.average:
                self.average[key].lerp_(value, 1.0 / self.count)

    def copy_to(self, model: torch.nn.Module) -> None:
        model.load_state_dict(self.average, strict=False)

    def state_dict(self) -> dict:
        """The average so far (tensors) and the number of weights in it; see :mod:`neuroseg_lite.resume`."""
        return {"count": self.count, "average": self.average}

    def load_state_dict(self, state: dict, *, device=None) -> None:
        self.count = int(state["count"])
        average = state["average"]
        self.average = None if average is None else {k: v.to(device) for k, v in average.items()}


class Trainer3D:
    """One 3D training run's state; ``step`` is exactly what ``train_3d`` does per iteration."""

    def __init__(self, sampler: PatchSampler, model: UNet3D, config: TrainConfig, device: torch.device):
        self.sampler, self.config, self.device = sampler, config, device
        # channels-last 3D on CUDA (tensor cores under autocast) and the CPU; TrainConfig.channels_last=False
        # turns it off (see utils.memory_format_for)
        self.memory_format = memory_format_for(device, channels_last=config.channels_last)
        self.model = model.to(device=device, memory_format=self.memory_format).train()
        self.optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.use_amp = config.amp and device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.average = WeightAverage() if config.average == "swa" else None
        self.average_start = config.steps - max(1, round(config.average_fraction * config.steps))

    def lam_at(self, step: int) -> float:
        if self.config.rampup is None:
            return self.config.lam
        t1, t2 = self.config.rampup
        return lambda_schedule(step, lam=self.config.lam, t1=t1, t2=t2)

    def next_batch(self) -> dict[str, torch.Tensor]:
        arrays = self.sampler.batch(self.config.batch_size)
        batch = {key: torch.from_numpy(value).to(self.device, non_blocking=True) for key, value in arrays.items()}
        batch["image"] = batch["image"].contiguous(memory_format=self.memory_format)
        return batch

    def optimize(self, batch: dict[str, torch.Tensor], lam: float) -> torch.Tensor:
        """Forward, weighted loss, backward and one Adam step on a ready batch; returns the detached loss."""
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.use_amp):
            logits = self.model(batch["image"])
        loss = weighted_bce(logits, batch["target"], batch["annotated"], lam=lam, pseudo_mask=batch["pseudo"],
                            loss_normalization=self.config.loss_normalization)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach()

    def step(self, step: int, lr: float) -> tuple[torch.Tensor, dict]:
        """Set the learning rate, sample and augment a batch, optimise, update the weight average."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        lam = self.lam_at(step)
        loss = self.optimize(self.next_batch(), lam)
        if self.average is not None and step >= self.average_start:
            self.average.update(self.model)
        return loss, {"lam": lam}

    def state_dict(self) -> dict:
        """Network, optimiser, gradient scaler, weight average and sampler: what the next step depends on."""
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "sampler": self.sampler.state_dict(),
                 "average": None if self.average is None else self.average.state_dict()}
        if self.use_amp:  # a disabled scaler has no state (and refuses to load one)
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict` of a run of the same configuration."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.sampler.load_state_dict(state["sampler"])
        if self.average is not None:
            self.average.load_state_dict(state["average"], device=self.device)
        if self.use_amp:
            self.scaler.load_state_dict(state["scaler"])

    @torch.no_grad()
    def finish(self) -> None:
        """Load the averaged weights and re-estimate batch-norm statistics for them."""
        if self.average is None or self.average.average is None:
            return
        self.average.copy_to(self.model)
        norms = [m for m in self.model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        if not norms or self.config.bn_refresh_batches < 1:
            return
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the refresh batches
        self.model.train()
        for _ in range(self.config.bn_refresh_batches):
            with torch.autocast("cuda", dtype=torch.float16, enabled=self.use_amp):
                self.model(self.next_batch()["image"])
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
