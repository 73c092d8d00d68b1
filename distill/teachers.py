"""ANN teachers: a small CNN for ``digits``, CIFAR-style VGG-11/16 and ResNet-18/19, and users' own models.

Every teacher exposes ``forward_features(x) -> (logits, stage_ends)``, the post-ReLU activations at the
end of each spatial-resolution stage, which the attention loss pairs with the student's stage ends, and
``stage_names`` naming them (for ``--pairs``). lasnn's own teachers use ReLU and average pooling only, so
that ``lasnn.distill.conversion`` can turn them into spiking networks without replacing layers; a user's
model may contain anything (the converter replaces max pooling).

A teacher is rebuilt from its ``config`` dict (``build_teacher``), which checkpoints carry.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch
from torch import nn

from lasnn.distill.qcfs import QCFS
from lasnn.errors import LasnnError

# VGG layer plans (Simonyan & Zisserman 2015, configurations A and D); "M" is a 2x2 pooling.
VGG_PLANS = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}
ARCHS = ("small_cnn", "vgg11", "vgg16", "resnet18", "resnet19", "airbench")
ACTIVATIONS = ("relu", "gelu", "qcfs")
POOLS = ("max", "avg")


def _conv_bn_relu(
    c_in: int, c_out: int, stride: int = 1, act: str = "relu", levels: int = 4
) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        activation(act, levels),
    ]


def _act_config(act: str, levels: int) -> dict:
    """Config keys of a non-default activation (ReLU teachers keep their old config, so runs resume)."""
    return {} if act == "relu" else dict(activation=act, levels=levels)


class StagedTeacher(nn.Module):
    """``stages`` (each ending in a ReLU at one spatial resolution) followed by a ``head``.

    The resolution changes at the start of each stage after the first (pooling or a stride-2 conv), so
    the output of every stage is a stage end.
    """

    def __init__(self, stages: list[nn.Module], head: nn.Module, config: dict) -> None:
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.head = head
        self.config = dict(config)
        self.stage_names = [f"stages.{i}" for i in range(len(stages))]

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        ends = []
        for stage in self.stages:
            x = stage(x)
            ends.append(x)
        return self.head(x), ends

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        return self.head(x)


def _width(base: int, scale: float) -> int:
    return max(4, int(round(base * scale)))


def small_cnn(
    in_shape: tuple[int, int, int], num_classes: int, width: float = 1.0, act: str = "relu", levels: int = 4
) -> StagedTeacher:
    """Two stages of two 3x3 conv+BN+ReLU (32 then 64 channels), 2x2 average pooling between and after.
    ``act`` replaces the ReLUs (``qcfs``: the convertible QCFS teacher)."""
    c, h, w = in_shape
    a, b = _width(32, width), _width(64, width)
    block = lambda c_in, c_out: _conv_bn_relu(c_in, c_out, 1, act, levels)  # noqa: E731
    stages = [
        nn.Sequential(*block(c, a), *block(a, a)),
        nn.Sequential(nn.AvgPool2d(2), *block(a, b), *block(b, b)),
    ]
    head = nn.Sequential(nn.AvgPool2d(2), nn.Flatten(), nn.Linear(b * (h // 4) * (w // 4), num_classes))
    config = dict(arch="small_cnn", in_shape=list(in_shape), num_classes=num_classes, width=width)
    config.update(_act_config(act, levels))
    return StagedTeacher(stages, head, config)


def vgg(
    arch: str,
    in_shape: tuple[int, int, int],
    num_classes: int,
    width: float = 1.0,
    act: str = "relu",
    levels: int = 4,
) -> StagedTeacher:
    """CIFAR-style VGG (BN after every conv, one linear classifier) with average pooling; ``act``
    replaces the ReLUs.

    Poolings that would shrink the map below 1x1 (small inputs such as 8x8 digits) are skipped, so the
    same plan works for any input size.
    """
    c, h, w = in_shape
    stages: list[nn.Module] = []
    current: list[nn.Module] = []
    for item in VGG_PLANS[arch]:
        if item == "M":
            if h < 2 or w < 2:
                continue
            stages.append(nn.Sequential(*current))
            current = [nn.AvgPool2d(2)]
            h, w = h // 2, w // 2
        else:
            out = _width(int(item), width)
            current += _conv_bn_relu(c, out, 1, act, levels)
            c = out
    if any(isinstance(m, nn.Conv2d) for m in current):
        stages.append(nn.Sequential(*current))
        current = []
    head = nn.Sequential(*current, nn.Flatten(), nn.Linear(c * h * w, num_classes))
    config = dict(arch=arch, in_shape=list(in_shape), num_classes=num_classes, width=width)
    config.update(_act_config(act, levels))
    return StagedTeacher(stages, head, config)


# airbench94's widths (Keller Jordan, arXiv 2404.00498, github KellerJordan/cifar10-airbench): a frozen 2x2
# patch-whitening conv (3 -> 24 channels), then three blocks of 64 / 256 / 256 channels.
AIRBENCH_WIDTHS = (64, 256, 256)
WHITEN_KERNEL = 2
AIRBENCH_BN_EPS = 1e-12
AIRBENCH_BN_MOMENTUM = 0.4


def activation(kind: str, levels: int = 4) -> nn.Module:
    """The teacher's nonlinearity: ``relu``, ``gelu`` (airbench's) or ``qcfs`` (convertible, Bu et al.)."""
    if kind == "relu":
        return nn.ReLU(inplace=True)
    if kind == "gelu":
        return nn.GELU()
    if kind == "qcfs":
        return QCFS(levels)
    raise LasnnError(f"--activation {kind!r} is unknown; expected one of {', '.join(ACTIVATIONS)}.")


class Scale(nn.Module):
    """Multiply by a constant (airbench scales its logits by 1/9, which sharpens the loss landscape)."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = float(factor)

    def extra_repr(self) -> str:
        return f"factor={self.factor}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


def airbench(
    in_shape: tuple[int, int, int],
    num_classes: int,
    width: float = 1.0,
    act: str = "gelu",
    pool: str = "max",
    levels: int = 4,
) -> StagedTeacher:
    """airbench94's network in lasnn's staged form, written from the paper's description.

    Stage 0: the 2x2 whitening conv (frozen weights set by ``whiten_first_conv``, trainable bias) and the
    activation; stages 1-3: conv, 2x2 pooling, BN, activation, conv, BN, activation. Head: global pooling
    over the last map, a bias-free linear layer and the 1/9 logit scale. BN scales are frozen at 1, as
    airbench's. ``act="qcfs"`` with ``pool="avg"`` is the convertible variant (QCFS activations, average
    pooling only).
    """
    if pool not in POOLS:
        raise LasnnError(f"--pool {pool!r} is unknown; expected one of {', '.join(POOLS)}.")
    c, h, w = in_shape
    whiten_width = 2 * c * WHITEN_KERNEL**2
    pooling = nn.MaxPool2d if pool == "max" else nn.AvgPool2d
    stages: list[nn.Module] = [
        nn.Sequential(nn.Conv2d(c, whiten_width, WHITEN_KERNEL, bias=True), activation(act, levels))
    ]
    h, w = h - WHITEN_KERNEL + 1, w - WHITEN_KERNEL + 1
    c = whiten_width

    def norm(channels: int) -> nn.BatchNorm2d:
        # airbench94's BatchNorm: no learnable scale (a shift only), eps 1e-12, running statistics with
        # momentum 0.4 (its "0.6" is the old estimate's weight). For QCFS the frozen scale matters twice:
        # lambda is then the layer's only scale (measured: with both learnable and decayed, the half-width
        # QCFS net collapsed to chance in epoch 4).
        bn = nn.BatchNorm2d(channels, eps=AIRBENCH_BN_EPS, momentum=AIRBENCH_BN_MOMENTUM)
        bn.weight.requires_grad_(False)
        return bn

    for base in AIRBENCH_WIDTHS:
        out = _width(base, width)
        stages.append(
            nn.Sequential(
                nn.Conv2d(c, out, 3, padding=1, bias=False),
                pooling(2),
                norm(out),
                activation(act, levels),
                nn.Conv2d(out, out, 3, padding=1, bias=False),
                norm(out),
                activation(act, levels),
            )
        )
        c, h, w = out, h // 2, w // 2
    head = nn.Sequential(pooling((h, w)), nn.Flatten(), nn.Linear(c, num_classes, bias=False), Scale(1 / 9))
    for stage in stages[1:]:
        for module in stage:
            if isinstance(module, nn.Conv2d):  # airbench's identity-like init of the first channels
                nn.init.dirac_(module.weight.data[: module.in_channels])
    config = dict(
        arch="airbench",
        in_shape=list(in_shape),
        num_classes=num_classes,
        width=width,
        activation=act,
        pool=pool,
        levels=levels,
    )
    return StagedTeacher(stages, head, config)


def whitening_conv(model: nn.Module) -> nn.Conv2d | None:
    """The network's first conv if it has the whitening conv's shape (2x2 kernel, 2 x C x 4 channels)."""
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first is None or tuple(first.kernel_size) != (WHITEN_KERNEL, WHITEN_KERNEL):
        return None
    return first if first.out_channels == 2 * first.in_channels * WHITEN_KERNEL**2 else None


def whiten_first_conv(model: nn.Module, images: torch.Tensor, eps: float = 5e-4) -> nn.Conv2d | None:
    """Set a network's first conv (if it is a 2x2 whitening conv of 2 x C x 4 channels) to patch whitening.

    The weights are the eigenvectors of the covariance of all 2x2 patches of ``images`` (normalised
    ``[N, C, H, W]``), scaled by 1/sqrt(eigenvalue + eps), and their negatives (so that a ReLU-like
    activation keeps both signs); they are then frozen. Returns the conv, or None if there is none.
    """
    first = whitening_conv(model)
    if first is None:
        return None
    c = first.in_channels
    dims = c * WHITEN_KERNEL**2
    patches = images.double().unfold(2, WHITEN_KERNEL, 1).unfold(3, WHITEN_KERNEL, 1)  # N C H' W' k k
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, dims)
    covariance = patches.T @ patches / len(patches)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
    filters = (eigenvectors.T / torch.sqrt(eigenvalues.clamp_min(0) + eps)[:, None]).flip(0)
    filters = filters.reshape(dims, c, WHITEN_KERNEL, WHITEN_KERNEL)
    with torch.no_grad():
        first.weight.copy_(torch.cat([filters, -filters]).to(first.weight.dtype))
    first.weight.requires_grad_(False)
    return first


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv+BN, identity or 1x1 conv+BN shortcut, ReLU after the sum."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(y + self.shortcut(x))


# (stem width, [(width, blocks), ...], hidden fc width or None). ResNet-18: He et al. 2016 in its CIFAR
# form (3x3 stem, no stem pooling); ResNet-19: the SNN literature's variant (Zheng et al. 2021, tdBN).
RESNET_PLANS = {
    "resnet18": (64, [(64, 2), (128, 2), (256, 2), (512, 2)], None),
    "resnet19": (128, [(128, 3), (256, 3), (512, 2)], 256),
}


def resnet(arch: str, in_shape: tuple[int, int, int], num_classes: int, width: float = 1.0) -> StagedTeacher:
    """CIFAR-style ResNet: stage s > 0 downsamples with stride 2 in its first block; global average
    pooling and a linear classifier (ResNet-19: a 256-wide hidden layer first)."""
    stem_width, plan, hidden = RESNET_PLANS[arch]
    c = in_shape[0]
    stem = _conv_bn_relu(c, _width(stem_width, width))
    c = _width(stem_width, width)
    stages: list[nn.Module] = []
    for s, (base, blocks) in enumerate(plan):
        out = _width(base, width)
        layers: list[nn.Module] = list(stem) if s == 0 else []
        for b in range(blocks):
            layers.append(BasicBlock(c, out, 2 if (s > 0 and b == 0) else 1))
            c = out
        stages.append(nn.Sequential(*layers))
    head_layers: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if hidden:
        head_layers += [nn.Linear(c, _width(hidden, width)), nn.ReLU(inplace=True)]
        c = _width(hidden, width)
    head = nn.Sequential(*head_layers, nn.Linear(c, num_classes))
    config = dict(arch=arch, in_shape=list(in_shape), num_classes=num_classes, width=width)
    return StagedTeacher(stages, head, config)


class UserTeacher(nn.Module):
    """A user's own model with stage ends found by forward hooks.

    A probe forward pass records every leaf module's 4-D output in call order; within each run of equal
    spatial resolution the last ReLU call (or, without one, the last call) is that stage's end. Runs at
    1x1 resolution are dropped (their attention map is constant). Hand-written: no library derives stage
    ends of an arbitrary model.
    """

    def __init__(self, model: nn.Module, config: dict) -> None:
        super().__init__()
        self.model = model
        self.config = dict(config)
        self._ends = self._find_stage_ends(tuple(config["in_shape"]))
        self.stage_names = [name if k == 0 else f"{name}#{k}" for name, k in self._ends]

    def _calls(self, x: torch.Tensor) -> tuple[torch.Tensor, list[tuple[str, int, torch.Tensor]]]:
        calls: list[tuple[str, int, torch.Tensor]] = []
        counts: dict[str, int] = {}
        handles = []

        def hook(name: str) -> Callable:
            def record(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
                k = counts.get(name, 0)
                counts[name] = k + 1
                if torch.is_tensor(output) and output.dim() == 4:
                    calls.append((name, k, output))

            return record

        for name, module in self.model.named_modules():
            if name and not list(module.children()):
                handles.append(module.register_forward_hook(hook(name)))
        try:
            logits = self.model(x)
        finally:
            for handle in handles:
                handle.remove()
        return logits, calls

    def _find_stage_ends(self, in_shape: tuple[int, int, int]) -> list[tuple[str, int]]:
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            _, calls = self._calls(torch.zeros(2, *in_shape))
        self.model.train(was_training)
        ends: list[tuple[str, int]] = []
        run: list[tuple[str, int, bool]] = []
        size = None
        modules = dict(self.model.named_modules())
        for name, k, out in [*calls, ("", 0, torch.zeros(1, 1, 0, 0))]:
            if tuple(out.shape[-2:]) != size:
                if run and size is not None and size != (1, 1):
                    relus = [(n, i) for n, i, is_relu in run if is_relu]
                    ends.append(relus[-1] if relus else run[-1][:2])
                run, size = [], tuple(out.shape[-2:])
            run.append((name, k, isinstance(modules.get(name), nn.ReLU)))
        if not ends:
            raise LasnnError(
                f"The model from {self.config.get('factory')!r} has no 4-D (image) activations "
                "larger than 1x1; the attention loss needs a convolutional teacher."
            )
        return ends

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        logits, calls = self._calls(x)
        found = {(name, k): out for name, k, out in calls}
        return logits, [found[end] for end in self._ends]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def import_factory(spec: str) -> Callable[[], nn.Module]:
    """Resolve ``module:function`` to a callable, with one-sentence errors."""
    module_name, _, func_name = spec.partition(":")
    if not module_name or not func_name:
        raise LasnnError(
            f"--arch {spec!r} is neither one of {', '.join(ARCHS)} nor of the form 'module:function'."
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise LasnnError(
            f"Cannot import module {module_name!r} named by --arch {spec!r} ({error}); put it on PYTHONPATH."
        ) from error
    func = getattr(module, func_name, None)
    if not callable(func):
        raise LasnnError(f"Module {module_name!r} has no callable {func_name!r} (from --arch {spec!r}).")
    return func


def user_teacher(spec: str, in_shape: tuple[int, int, int], num_classes: int) -> UserTeacher:
    """Build a user's model from ``module:function`` and check it maps the data set's images to logits."""
    model = import_factory(spec)()
    if not isinstance(model, nn.Module):
        raise LasnnError(f"{spec} returned a {type(model).__name__}, expected a torch.nn.Module.")
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, *in_shape))
    except Exception as error:
        raise LasnnError(
            f"The model from {spec} fails on images of shape {tuple(in_shape)} "
            f"({type(error).__name__}: {error}); it must accept the data set's images."
        ) from error
    if not torch.is_tensor(out) or tuple(out.shape) != (2, num_classes):
        shape = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
        raise LasnnError(
            f"The model from {spec} returns {shape} for a batch of 2, expected logits of shape "
            f"(2, {num_classes}) for this data set's {num_classes} classes."
        )
    model.train()
    config = dict(arch="user", factory=spec, in_shape=list(in_shape), num_classes=num_classes)
    return UserTeacher(model, config)


def build_teacher(config: dict) -> nn.Module:
    """Rebuild a teacher from its config dict (as saved in ``teacher.pt``)."""
    arch = config.get("arch")
    in_shape = tuple(config["in_shape"])
    num_classes = int(config["num_classes"])
    width = float(config.get("width", 1.0))
    act, levels = config.get("activation", "relu"), int(config.get("levels", 4))
    if arch == "small_cnn":
        return small_cnn(in_shape, num_classes, width, act, levels)
    if arch in VGG_PLANS:
        return vgg(arch, in_shape, num_classes, width, act, levels)
    if arch in RESNET_PLANS:
        return resnet(arch, in_shape, num_classes, width)
    if arch == "airbench":
        return airbench(
            in_shape,
            num_classes,
            width,
            config.get("activation", "gelu"),
            config.get("pool", "max"),
            int(config.get("levels", 4)),
        )
    if arch == "user":
        return user_teacher(config["factory"], in_shape, num_classes)
    if isinstance(arch, str) and ":" in arch:
        return user_teacher(arch, in_shape, num_classes)
    raise LasnnError(
        f"Unknown teacher architecture {arch!r}; expected one of {', '.join(ARCHS)} or 'module:function'."
    )
