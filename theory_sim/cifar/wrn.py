"""Wide residual network WRN-d-k (Zagoruyko & Komodakis 2016) with pre-activation blocks, as used for CIFAR in the
SAM paper [F21] (WRN-28-10) and its PyTorch ports (davda54/sam).

Depth d = 6 n + 4: three stages of n blocks with widths 16k, 32k, 64k; block = BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3
plus the identity, or a 1x1 conv on the pre-activated input when the shape changes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from theory_sim.config import check_float, check_int


class Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
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

    def __init__(self, depth: int = 28, width: int = 10, num_classes: int = 10, dropout: float = 0.0):
        super().__init__()
        check_int("depth", depth, lo=10)
        if (depth - 4) % 6:
            raise ValueError(f"depth must be 6n+4 (10, 16, 22, 28, 40, ...), got {depth}")
        check_int("width", width, lo=1)
        check_int("num_classes", num_classes, lo=2)
        check_float("dropout", dropout, lo=0.0, hi=1.0, hi_open=True)
        n = (depth - 4) // 6
        widths = [16, 16 * width, 32 * width, 64 * width]
        self.conv = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        blocks = []
        for stage in range(3):
            for i in range(n):
                c_in = widths[stage] if i == 0 else widths[stage + 1]
                blocks.append(Block(c_in, widths[stage + 1], 2 if (stage > 0 and i == 0) else 1, dropout))
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.blocks(self.conv(x))
        o = F.relu(self.bn(o))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(o, 1), 1))
