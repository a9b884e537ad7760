"""Networks by name: the paper's VGG11 and ResNet18, and two small nets for the digits demo.

`create(name, in_channels, num_classes)` builds any of them; the dataset supplies the
number of input channels and classes. VGG11 and ResNet18 follow the paper (Section 3.1,
Table 1) for 32×32 inputs; the small nets (`mlp`, `cnn`) accept 8×8 and 32×32 inputs.
"""

from collections.abc import Callable

from torch import Tensor, nn

from hspec.errors import HspecError

# VGG configuration "A" (VGG11): output channels of each 3×3 convolution, "M" = 2×2 max-pool.
VGG11_CONFIG: tuple[int | str, ...] = (
    64,
    "M",
    128,
    "M",
    256,
    256,
    "M",
    512,
    512,
    "M",
    512,
    512,
    "M",
)


def vgg11(in_channels: int, num_classes: int) -> nn.Sequential:
    """VGG11 with BatchNorm as in the paper: 28,157,706 parameters for CIFAR10.

    Convolutions follow configuration "A" (each conv, with bias, is followed by BatchNorm and
    ReLU); five max-pools take a 32×32 input to 1×1×512. The classifier is
    512 → 4096 → 4096 → C with BatchNorm1d after each bias-free hidden linear layer.
    """
    layers: list[nn.Module] = []
    channels = in_channels
    for item in VGG11_CONFIG:
        if item == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [
                nn.Conv2d(channels, int(item), 3, padding=1),
                nn.BatchNorm2d(int(item)),
                nn.ReLU(inplace=True),
            ]
            channels = int(item)
    layers += [
        nn.Flatten(),
        nn.Linear(512, 4096, bias=False),
        nn.BatchNorm1d(4096),
        nn.ReLU(inplace=True),
        nn.Linear(4096, 4096, bias=False),
        nn.BatchNorm1d(4096),
        nn.ReLU(inplace=True),
        nn.Linear(4096, num_classes),
    ]
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers with an identity (or 1×1 conv-BN) shortcut, as in ResNet18."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(planes),
            nn.ReLU(inplace=True),
            nn.Conv2d(planes, planes, 3, padding=1, bias=False),
            nn.BatchNorm2d(planes),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


def resnet18(in_channels: int, num_classes: int) -> nn.Sequential:
    """ResNet18 for 32×32 inputs: a 3×3 stride-1 stem and no initial max-pool.

    Four stages of two basic blocks (64, 128, 256, 512 channels; strides 1, 2, 2, 2), global
    average pooling and a linear classifier: 11,173,962 parameters for CIFAR10.
    """
    stages: list[nn.Module] = []
    in_planes = 64
    for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        stages += [BasicBlock(in_planes, planes, stride), BasicBlock(planes, planes, 1)]
        in_planes = planes
    return nn.Sequential(
        nn.Conv2d(in_channels, 64, 3, padding=1, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(inplace=True),
        *stages,
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(512, num_classes),
    )


def mlp(in_channels: int, num_classes: int) -> nn.Sequential:
    """Demo MLP: inputs average-pooled to 8×8 (a no-op for digits), then two hidden layers of 512.

    About 300k parameters, over-parameterized relative to the ~1,400 training digits (the
    paper's C outliers need p ≫ n) yet a Hessian-vector product over the whole digits train
    split takes a fraction of a second on a CPU.
    """
    return nn.Sequential(
        nn.AdaptiveAvgPool2d(8),
        nn.Flatten(),
        nn.Linear(in_channels * 64, 512),
        nn.ReLU(inplace=True),
        nn.Linear(512, 512),
        nn.ReLU(inplace=True),
        nn.Linear(512, num_classes),
    )


def cnn(in_channels: int, num_classes: int) -> nn.Sequential:
    """Demo CNN with BatchNorm: three 3×3 conv-BN-ReLU layers, pooled to 2×2, then a 256-wide MLP head.

    About 90k parameters, most in the head, so that p ≫ n for the digits train split while
    the convolutions stay cheap; BatchNorm exercises the eval-mode BatchNorm path of the
    spectral operators. Accepts any input of at least 2×2 (8×8 digits, 32×32 images).
    """
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(inplace=True),
        nn.Conv2d(16, 32, 3, padding=1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(256, 256),
        nn.ReLU(inplace=True),
        nn.Linear(256, num_classes),
    )


def tiny(in_channels: int, num_classes: int) -> nn.Sequential:
    """Check-sized MLP: inputs average-pooled to 4×4, one hidden layer of 16 (442 parameters
    for digits), small enough for the dense matrices of ``hspec check``."""
    return nn.Sequential(
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(in_channels * 16, 16),
        nn.Tanh(),
        nn.Linear(16, num_classes),
    )


_BUILDERS: dict[str, Callable[[int, int], nn.Module]] = {
    "vgg11": vgg11,
    "resnet18": resnet18,
    "mlp": mlp,
    "cnn": cnn,
    "tiny": tiny,
}

ARCHS: tuple[str, ...] = tuple(_BUILDERS)


def validate(name: str) -> None:
    """Raise a clear error listing `ARCHS` unless `name` is one of them."""
    if name not in _BUILDERS:
        raise HspecError(f"unknown network {name!r}; valid names: {', '.join(ARCHS)}")


def create(name: str, in_channels: int, num_classes: int) -> nn.Module:
    """Build the network `name` (one of `ARCHS`) for `in_channels` inputs and `num_classes` outputs.

    A name not in `ARCHS`, or `in_channels`/`num_classes` not a positive int, is an HspecError.
    """
    validate(name)
    for label, value in (("in_channels", in_channels), ("num_classes", num_classes)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise HspecError(f"{label}: must be a positive integer, got {value!r}")
    return _BUILDERS[name](in_channels, num_classes)
