"""Wide residual network WRN-d-k (Zagoruyko & Komodakis 2016) with pre-activation blocks, as used for CIFAR in the
SAM paper [F21] (WRN-28-10) and its PyTorch ports (davda54/sam).

``norm="group"`` swaps every BatchNorm for a GroupNorm (theory_sim.cifar.vmap trains many such models at once); any
``in_channels`` (1 for the grey digits); ``base`` < 16 narrows every stage (a CPU-scale WRN). Depth d = 6 n + 4: three stages of n blocks with widths 16k, 32k, 64k; block = BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3
plus the identity, or a 1x1 conv on the pre-activated input when the shape changes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from theory_sim.config import check_choice, check_float, check_int


NORMS = ("batch", "group")


def norm_layer(norm: str, channels: int) -> nn.Module:
    """BatchNorm (the WRN's), or GroupNorm with min(8, C) groups: no running statistics, so many models train at
    once under torch.func.vmap (theory_sim.cifar.vmap) and a model's output never depends on its batch."""
    return nn.BatchNorm2d(channels) if norm == "batch" else nn.GroupNorm(min(8, channels), channels)


class Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, dropout: float, norm: str = "batch"):
        super().__init__()
        self.bn1 = norm_layer(norm, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn2 = norm_layer(norm, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.dropout = dropout
        # 1x1 projection only where the residual changes shape; it sees the pre-activated input (standard WRN)
        self.shortcut = (None if (c_in == c_out and stride == 1)
                         else nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(o)
        o = self.conv1(o)
        o = F.relu(self.bn2(o))
        if self.dropout > 0:
            o = F.dropout(o, p=self.dropout, training=self.training)
        return self.conv2(o) + skip


class WideResNet(nn.Module):
    """WRN-``depth``-``width`` for 32x32 images; ``WideResNet()`` is WRN-28-10 for CIFAR-10."""

    def __init__(self, depth: int = 28, width: int = 10, num_classes: int = 10, dropout: float = 0.0,
                 in_channels: int = 3, norm: str = "batch", base: int = 16):
        super().__init__()
        check_int("in_channels", in_channels, lo=1)
        check_choice("norm", norm, NORMS)
        check_int("depth", depth, lo=10)
        if (depth - 4) % 6:
            raise ValueError(f"depth must be 6n+4 (10, 16, 22, 28, 40, ...), got {depth}")
        check_int("width", width, lo=1)
        check_int("num_classes", num_classes, lo=2)
        check_float("dropout", dropout, lo=0.0, hi=1.0, hi_open=True)
        n = (depth - 4) // 6
        check_int("base", base, lo=1)
        widths = [base, base * width, 2 * base * width, 4 * base * width]   # base 16: the WRN of the paper
        self.conv = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        blocks = []
        for stage in range(3):
            for i in range(n):
                c_in = widths[stage] if i == 0 else widths[stage + 1]
                blocks.append(Block(c_in, widths[stage + 1], 2 if (stage > 0 and i == 0) else 1, dropout, norm))
        self.blocks = nn.Sequential(*blocks)
        self.bn = norm_layer(norm, widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.blocks(self.conv(x))
        o = F.relu(self.bn(o))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(o, 1), 1))
