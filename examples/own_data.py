"""DANN on your own tensors with your own backbone: nothing on disk, dalab's code untouched."""
import torch
from torch import nn

import dalab


def images(n, shifted, seed):  # stand-in for your data: class k = a bright bar at row 3k
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    x = torch.rand(n, 3, 32, 32, generator=g) * 0.3
    for k in range(10):
        x[y == k, :, 3 * k:3 * k + 2, 4:28] = 1.0
    if shifted:  # the target domain: each image faded into a random colour-noise background
        c = torch.rand(n, 3, 1, 1, generator=g)
        x = x * c + (1 - c) * torch.rand(n, 3, 32, 32, generator=g)
    return x, y


xs, ys = images(2048, shifted=False, seed=0)   # labelled source
xt, yt = images(2048, shifted=True, seed=1)    # unlabelled target (yt only to measure)
for method in (dalab.SourceOnly(), dalab.DANN(lambda_max=1.0)):
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(3, 16, 5, stride=2), nn.ReLU(),
                             nn.Conv2d(16, 32, 5, stride=2), nn.ReLU(), nn.Flatten())  # 32*5*5
    net = dalab.DANNNet(feature_extractor=backbone, feature_dim=800, num_classes=10)
    result = dalab.fit(net, method, xs, ys, xt, target_test=(xt, yt), epochs=3, optimizer="adam",
                       device="cpu", progress=False)
    print(f"{method.name:12s} target accuracy {result['target_test_acc']:.3f}")
