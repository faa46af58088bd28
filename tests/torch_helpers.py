"""Helpers shared by the PyTorch parity tests (imports torch)."""

from __future__ import annotations

import numpy as np
import torch


def randomize_bn(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
  """Non-trivial BN affine and running stats so that a mis-mapped BN shows."""
  g = torch.Generator().manual_seed(seed)
  for m in model.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
      n = m.num_features
      with torch.no_grad():
        m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
        m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
        m.weight.copy_(torch.rand(n, generator=g) + 0.5)
        m.bias.copy_(torch.randn(n, generator=g) * 0.2)
  return model


def max_rel_err(a, b) -> float:
  """max|a - b| / max|b| in float64; the shapes must be equal."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  assert a.shape == b.shape, (a.shape, b.shape)
  return float(np.abs(a - b).max() / np.abs(b).max())


def rel_errors(ours, ref) -> list[float]:
  """`max_rel_err` of each of the 4 stage features."""
  assert len(ours) == len(ref) == 4
  return [max_rel_err(a, b) for a, b in zip(ours, ref)]


def nhwc(t: torch.Tensor) -> np.ndarray:
  return t.detach().numpy().transpose(0, 2, 3, 1)


def nchw(a) -> torch.Tensor:
  return torch.from_numpy(np.asarray(a).transpose(0, 3, 1, 2).copy())
