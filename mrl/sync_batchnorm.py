"""BatchNorm statistics over the global batch on CPUs: ``trainer.sync_batchnorm=true`` with DDP over gloo.

``torch.nn.SyncBatchNorm`` computes the statistics of all ranks' batches with CUDA kernels, and DDP refuses it on
CPU modules; on GPUs Lightning's own conversion to it is used unchanged. On CPUs, :class:`AllReduceBatchNorm`
computes the same statistics with differentiable all-reduces (the mean, then the centred sum of squares): the
backward sums every rank's gradient through them, as torch's CUDA path does, so a DDP run equals one process on
the global batch. :class:`CPUSyncBatchNorm` is the Lightning layer-sync plugin converting to it; the training
app passes it when ``trainer.sync_batchnorm`` is on and the run is on CPUs.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from lightning.pytorch.plugins.layer_sync import TorchSyncBatchNorm
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class AllReduceBatchNorm(_BatchNorm):
    """BatchNorm over the batches of all ranks in training (one process, or evaluation: plain BatchNorm)."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input [N, C, ...], got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        self._check_input_dim(x)
        from torch.distributed.nn.functional import all_reduce

        channels = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = [1, channels] + [1] * (x.dim() - 2)
        total = all_reduce(torch.cat([x.sum(dims), x.new_full((1,), x.numel() / channels)]))  # sums, count
        count = total[-1]
        mean = total[:channels] / count
        centred = x - mean.view(shape)
        var = all_reduce((centred * centred).sum(dims)) / count  # biased, as BatchNorm normalises with
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(var.detach() * count / (count - 1), momentum)  # unbiased, as BatchNorm's
        y = centred * torch.rsqrt(var.view(shape) + self.eps)
        return y * self.weight.view(shape) + self.bias.view(shape) if self.affine else y


def _convert(module: nn.Module, to: type) -> nn.Module:
    """``module`` with every BatchNorm (any ``_BatchNorm``) replaced by a ``to`` holding the same state."""
    if isinstance(module, _BatchNorm) and type(module) is not to:
        new = to(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new
    for name, child in module.named_children():
        module.add_module(name, _convert(child, to))
    return module


class _PlainBatchNorm(AllReduceBatchNorm):
    """The reverted layer: plain BatchNorm of any dimension."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _BatchNorm.forward(self, x)


class CPUSyncBatchNorm(TorchSyncBatchNorm):
    """Lightning's layer-sync plugin for CPUs: every BatchNorm becomes an :class:`AllReduceBatchNorm`."""

    def apply(self, model: nn.Module) -> nn.Module:
        return _convert(model, AllReduceBatchNorm)

    def revert(self, model: nn.Module) -> nn.Module:
        return _convert(model, _PlainBatchNorm)
