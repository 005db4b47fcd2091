"""The example model of docs/design.md; `python docs/design_example.py` prints every stage."""

import torch
import torch.nn.functional as F
from torch import nn

import fxquant


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        y = F.relu(self.bn(self.conv(x)))
        y = F.relu(self.conv2(y)) + y
        y = F.max_pool2d(y, 2)
        return self.fc(y.mean((2, 3)))


def main() -> None:
    torch.manual_seed(0)
    model = Net().eval()
    x = torch.randn(4, 3, 16, 16)
    print("== 1. captured float graph ==")
    print(torch.fx.symbolic_trace(model).code.strip())
    qmodel = fxquant.prepare(model, x, fxquant.default_calibration_qconfig_setter)
    print("\n== 2. prepared graph ==")
    print(qmodel.code.strip())
    fxquant.calibrate(qmodel, [x, torch.randn(4, 3, 16, 16)], progress=False)
    print("\n== 3. after calibration ==")
    print(fxquant.summary(qmodel))


if __name__ == "__main__":
    main()
