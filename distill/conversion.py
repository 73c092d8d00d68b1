"""ANN -> SNN conversion: the baseline a LaSNN student is compared against.

``convert`` turns a trained ReLU teacher into a ``SpikingStudent`` made only of the layer types of
``lasnn.distill.spiking_layers`` (so ``lasnn.export`` lowers it like any distilled student):

1. the teacher is traced with ``torch.fx`` and parsed into a chain of synapses (conv/linear with batch norm
   folded in), ReLUs, poolings, flattens and residual blocks (fork -> branch + shortcut -> add -> ReLU);
   max pooling (and adaptive pooling) becomes average pooling, anything else is refused naming the layer;
2. data-based threshold balancing (Rueckauer et al. 2017, "robust normalisation"): a forward pass of the
   converted ANN over a calibration batch sets each ReLU layer's scale ``lambda`` to the chosen percentile
   of its activations (all elements of the layer over the batch), with upstream layers already clipped at
   their ``lambda`` (a spiking neuron cannot fire more than once per step);
3. every ReLU becomes a layer of integrate-and-fire neurons with threshold ``v_th = lambda`` (reset to zero,
   Loihi's only reset, or by subtraction, norse only); the synapses that read its spikes get their weights
   multiplied by ``lambda`` (one spike stands for an activation ``lambda``), biases are unchanged, so the
   average input current equals the ANN's pre-activation and the firing rate approximates
   ``clip(relu(z) / lambda, 0, 1)``; an identity shortcut fed by spikes becomes a 1x1 synapse of weight
   ``lambda`` (the one way to scale it with these layer types);
4. the classifier becomes the student's linear head: logits = mean over T of its currents. The input is
   ``direct`` (the analog image every step).

Option ``shift`` (with reset by subtraction; norse only, since Loihi resets to zero): every membrane
starts at half its threshold, the "shift" term of QCFS conversion (Bu et al., ICLR 2022); it turns the
rate's floor into rounding and helps most at low T.

QCFS teachers (``lasnn.distill.qcfs.QCFS`` activations, ``lasnn teach --activation qcfs``): a QCFS layer
becomes IF neurons whose threshold is its learnt ``lambda`` (no percentile calibration); with reset by
subtraction and ``shift`` this is Bu et al.'s conversion: a layer fed by a constant current ``z`` (the
first layer, direct input) fires ``floor(T z / lambda + 1/2)`` times in T steps (clipped to [0, T]), i.e.
its rate times ``lambda`` is exactly QCFS with T levels, the teacher's own activation at T = L. Reset to
zero (no shift) is the Loihi-compatible variant. Parsed beyond plain chains: batch norm after an average
(or replaced max) pooling is folded into the conv before it (a per-channel affine map commutes with
average pooling: the window's weights sum to one); a constant scale (``teachers.Scale``, ``x * c``)
after a conv/linear layer is folded into it; square global pooling becomes one pooling window.

Written by hand: norse and NIR have no ANN->SNN converter for arbitrary torch models (snntoolbox targets
Keras). ``evaluate_curve`` measures accuracy at several T in one run at the largest T: with IF neurons and
direct input nothing depends on later steps, so the running mean of the head's currents after t steps is
exactly the output of a network run for t steps.
"""

from __future__ import annotations

import copy
import math
import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn import functional as F

from lasnn.distill.qcfs import QCFS
from lasnn.distill.spiking_layers import (
    NeuronConfig,
    ResidualBlock,
    SeqFlatten,
    SeqPool,
    SeqSynapse,
    SpikingNeurons,
)
from lasnn.distill.students import SpikingStudent
from lasnn.distill.teachers import Scale
from lasnn.errors import LasnnError

RESETS = ("zero", "subtract")
QUANTILE_LIMIT = 2**24  # torch.quantile refuses larger inputs
POOLINGS = ("avg", "sum")
# Layer types that are no-ops in evaluation mode.
_IDENTITY_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout, nn.Identity)
_NONLINEAR_MODULES = (
    nn.Sigmoid,
    nn.Tanh,
    nn.GELU,
    nn.SiLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.LeakyReLU,
    nn.PReLU,
    nn.RReLU,
    nn.ReLU6,
    nn.Hardtanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Mish,
    nn.Softplus,
    nn.Softmax,
    nn.LogSoftmax,
    nn.Softsign,
    nn.Tanhshrink,
    nn.Threshold,
    nn.GLU,
)
_RELU_FUNCS = (F.relu, torch.relu, torch.relu_, F.relu_)
_ADD_FUNCS = (operator.add, operator.iadd, torch.add)
_IDENTITY_FUNCS = (F.dropout, F.dropout2d, F.dropout1d, F.alpha_dropout)
_MUL_FUNCS = (operator.mul, torch.mul, operator.truediv, torch.div)


# ----------------------------------------------------------------------------------------------------
# Percentile (threshold balancing)


def percentile(values: torch.Tensor, p: float) -> float:
    """The ``p``-th percentile of all elements, linear interpolation (numpy's and torch.quantile's default).

    Uses ``torch.quantile`` where it can (at most 2**24 elements) and two ``kthvalue`` order statistics
    with the same interpolation beyond that limit, so large conv layers need no subsampling.
    """
    if not 0.0 < p <= 100.0:
        raise LasnnError(f"percentile={p!r} is outside (0, 100]; pass e.g. 99.9 or 100.")
    flat = values.detach().reshape(-1).double()
    n = flat.numel()
    if n == 0:
        raise ValueError("percentile of an empty tensor")
    if n <= QUANTILE_LIMIT:
        return float(torch.quantile(flat, p / 100.0))
    pos = p / 100.0 * (n - 1)
    lo = math.floor(pos)
    v_lo = torch.kthvalue(flat, lo + 1).values
    v_hi = torch.kthvalue(flat, min(lo + 2, n)).values
    return float(torch.lerp(v_lo, v_hi, pos - lo))


# ----------------------------------------------------------------------------------------------------
# Intermediate form of the teacher: a chain of items


@dataclass
class _Syn:
    name: str
    layer: nn.Conv2d | nn.Linear  # a private copy; batch norm is folded into it
    folded: bool = False


@dataclass
class _Relu:
    name: str
    threshold: float | None = None  # lambda, set by calibration (or taken from a QCFS layer)
    levels: int | None = None  # QCFS quantisation levels L; None for a ReLU


@dataclass
class _Pool:
    name: str
    kernel: int
    stride: int


@dataclass
class _Flatten:
    name: str


@dataclass
class _Res:
    name: str
    branch: list
    shortcut: list
    relu: _Relu
    channels: int = 0


@dataclass
class _Parsed:
    items: list
    replaced: list[str] = field(default_factory=list)


def _fresh_synapse(layer: nn.Conv2d | nn.Linear) -> nn.Conv2d | nn.Linear:
    """An independent copy with a bias (folding and scaling need one)."""
    if isinstance(layer, nn.Conv2d):
        new = nn.Conv2d(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            groups=layer.groups,
            bias=True,
        )
    else:
        new = nn.Linear(layer.in_features, layer.out_features, bias=True)
    with torch.no_grad():
        new.weight.copy_(layer.weight.detach())
        new.bias.copy_(layer.bias.detach() if layer.bias is not None else torch.zeros_like(new.bias))
    return new


def _fold_norm(syn: _Syn, bn: nn.BatchNorm1d | nn.BatchNorm2d, name: str) -> None:
    """y = gamma * (Wx + b - mean) / sqrt(var + eps) + beta, folded into W and b."""
    if bn.running_mean is None or bn.running_var is None:
        raise LasnnError(
            f"Batch norm layer '{name}' keeps no running statistics (track_running_stats=False); "
            "conversion needs fixed statistics to fold it into the preceding layer."
        )
    scale = torch.rsqrt(bn.running_var.detach().double() + bn.eps)
    shift = -bn.running_mean.detach().double() * scale
    if bn.affine:
        scale = scale * bn.weight.detach().double()
        shift = shift * bn.weight.detach().double() + bn.bias.detach().double()
    layer = syn.layer
    shape = (-1,) + (1,) * (layer.weight.dim() - 1)
    with torch.no_grad():
        layer.weight.copy_((layer.weight.double() * scale.view(shape)).to(layer.weight.dtype))
        layer.bias.copy_((layer.bias.double() * scale + shift).to(layer.bias.dtype))
    syn.folded = True


def _square(value: int | Sequence[int], what: str, name: str) -> int:
    if isinstance(value, int):
        return value
    values = list(value)
    if len(set(values)) != 1:
        raise LasnnError(
            f"Pooling layer '{name}' has a non-square {what} {tuple(values)}; conversion "
            "supports square pooling windows only."
        )
    return int(values[0])


class _Tracer(fx.Tracer):
    """torch.fx's tracer with QCFS and Scale kept as leaf modules (fx would trace into their forward)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, QCFS | Scale) or super().is_leaf_module(m, module_qualified_name)


def _qcfs_activation(relu: _Relu, x: torch.Tensor) -> torch.Tensor:
    """The QCFS function of a parsed QCFS layer (``lambda * clamp(floor(x L / lambda + 1/2) / L, 0, 1)``)."""
    lam, levels = float(relu.threshold), int(relu.levels)
    return lam * torch.clamp(torch.floor(x * (levels / lam) + 0.5) / levels, 0.0, 1.0)


class _TeacherParser:
    """Walks the fx graph of a teacher from its input to its output (see the module docstring)."""

    def __init__(self, teacher: nn.Module, example: torch.Tensor) -> None:
        try:
            tracer = _Tracer()
            graph = tracer.trace(teacher)
            self.graph = fx.GraphModule(tracer.root, graph, type(teacher).__name__)
        except Exception as error:  # fx raises many types on data-dependent control flow
            raise LasnnError(
                f"The teacher {type(teacher).__name__} cannot be traced by torch.fx "
                f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); "
                "conversion needs a model without data-dependent control flow."
            ) from error
        with torch.no_grad():
            ShapeProp(self.graph).propagate(example)
        self.modules = dict(self.graph.named_modules())
        self.replaced: list[str] = []

    def parse(self) -> _Parsed:
        inputs = [n for n in self.graph.graph.nodes if n.op == "placeholder"]
        if len(inputs) != 1:
            raise LasnnError(
                f"The teacher takes {len(inputs)} inputs; conversion needs a model of one image input."
            )
        items, join = self._chain(inputs[0])
        if join is not None:
            raise LasnnError(
                f"The addition '{join[1].name}' in the teacher does not join two paths from one "
                "fork; conversion supports residual blocks of the form relu(branch(x) + "
                "shortcut(x))."
            )
        return _Parsed(items, self.replaced)

    @staticmethod
    def _shape(node: fx.Node) -> tuple[int, ...]:
        meta = node.meta.get("tensor_meta")
        return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else ()

    def _users(self, node: fx.Node) -> list[fx.Node]:
        """Consumers of a node's tensor value (``x.size(0)`` and the like carry no signal)."""
        return [u for u in node.users if u.op == "output" or "tensor_meta" in u.meta]

    def _is_add(self, node: fx.Node) -> bool:
        return (node.op == "call_function" and node.target in _ADD_FUNCS) or (
            node.op == "call_method" and node.target in ("add", "add_")
        )

    def _label(self, node: fx.Node) -> str:
        return str(node.target) if node.op == "call_module" else node.name

    def _chain(self, node: fx.Node, items: list | None = None) -> tuple[list, tuple[fx.Node, fx.Node] | None]:
        """Items from ``node``'s output on (appended to ``items``), until the graph output (join None) or
        an addition, returned as ``(last node, add node)`` and not consumed."""
        items = [] if items is None else items
        while True:
            users = self._users(node)
            if len(users) == 1:
                user = users[0]
                if user.op == "output":
                    return items, None
                if self._is_add(user):
                    return items, (node, user)
                self._convert(user, items)
                node = user
            elif len(users) == 2:
                node = self._residual(node, users, items)
            else:
                raise LasnnError(
                    f"The teacher's value '{self._label(node)}' feeds {len(users)} layers; "
                    "conversion supports chains and two-path residual blocks only."
                )

    def _residual(self, fork: fx.Node, users: list[fx.Node], items: list) -> fx.Node:
        paths = []
        for user in users:
            if self._is_add(user):
                paths.append(([], (fork, user)))
                continue
            path: list = []
            self._convert(user, path)
            path, join = self._chain(user, path)
            paths.append((path, join))
        joins = {None if j is None else j[1] for _, j in paths}
        add = next(iter(joins))
        if len(joins) != 1 or add is None:
            raise LasnnError(
                f"The two paths leaving '{self._label(fork)}' do not meet in one addition; "
                "conversion supports residual blocks relu(branch(x) + shortcut(x)) only."
            )
        add_inputs = [a for a in add.args if isinstance(a, fx.Node)]
        if len(add_inputs) != 2 or add.kwargs.get("alpha", 1) != 1:
            raise LasnnError(
                f"The addition '{add.name}' is not a plain sum of two tensors; conversion "
                "supports residual blocks relu(branch(x) + shortcut(x)) only."
            )
        paths.sort(key=lambda p: len(p[0]), reverse=True)
        branch, shortcut = paths[0][0], paths[1][0]
        if not branch or not isinstance(branch[-1], _Syn):
            raise LasnnError(
                f"The residual branch ending in the addition '{add.name}' does not end in a "
                "convolution or linear layer; conversion needs both paths to deliver currents."
            )
        if shortcut and (len(shortcut) != 1 or not isinstance(shortcut[0], _Syn)):
            raise LasnnError(
                f"The shortcut into the addition '{add.name}' is neither the identity nor one "
                "convolution (with batch norm); conversion supports only those shortcuts."
            )
        after = self._users(add)
        relu = after[0] if len(after) == 1 else None
        if relu is None or not self._is_relu(relu):
            what = self._label(after[0]) if len(after) == 1 else f"{len(after)} layers"
            raise LasnnError(
                f"The residual addition '{add.name}' is followed by {what}, not a ReLU or QCFS; "
                "conversion needs relu(branch(x) + shortcut(x))."
            )
        channels = self._shape(add)[1] if len(self._shape(add)) > 1 else 0
        items.append(_Res(add.name, branch, shortcut, self._activation(relu), channels))
        return relu

    def _activation(self, node: fx.Node) -> _Relu:
        """The item of a ReLU, or of a QCFS layer with its learnt lambda as the threshold."""
        label = self._label(node)
        module = self.modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(module, QCFS):
            return _Relu(label)
        lam = float(module.threshold.detach())
        if not (math.isfinite(lam) and lam > 0):
            raise LasnnError(
                f"The QCFS layer '{label}' has threshold lambda = {lam!r}; conversion needs a positive "
                "finite lambda (the IF neurons' threshold), retrain the teacher."
            )
        return _Relu(label, threshold=lam, levels=module.levels)

    def _is_relu(self, node: fx.Node) -> bool:
        """ReLU or QCFS (both become IF neurons)."""
        if node.op == "call_module":
            return type(self.modules[node.target]) is nn.ReLU or isinstance(self.modules[node.target], QCFS)
        if node.op == "call_function":
            return node.target in _RELU_FUNCS
        return node.op == "call_method" and node.target in ("relu", "relu_")

    def _refuse(self, node: fx.Node, what: str) -> LasnnError:
        return LasnnError(
            f"The teacher's layer '{self._label(node)}' ({what}) cannot be converted to "
            "integrate-and-fire neurons; conversion supports conv, linear, batch norm, ReLU, "
            "average/max pooling, flatten, dropout and residual additions."
        )

    def _convert(self, node: fx.Node, items: list) -> None:
        """Append the item for one single-input node (or fold it into the previous item)."""
        label = self._label(node)
        if self._is_relu(node):
            items.append(self._activation(node))
            return
        in_shape = self._shape(node.args[0]) if node.args and isinstance(node.args[0], fx.Node) else ()
        out_shape = self._shape(node)
        if node.op == "call_module":
            module = self.modules[node.target]
            if isinstance(module, _NONLINEAR_MODULES):
                raise LasnnError(
                    f"The teacher's layer '{label}' is a {type(module).__name__} nonlinearity; "
                    "conversion to integrate-and-fire neurons needs ReLU or QCFS activations only."
                )
            if isinstance(module, nn.Conv2d):
                if module.padding_mode != "zeros" or isinstance(module.padding, str):
                    raise self._refuse(node, f"Conv2d with padding {module.padding!r}/{module.padding_mode}")
                items.append(_Syn(label, _fresh_synapse(module)))
            elif isinstance(module, nn.Linear):
                items.append(_Syn(label, _fresh_synapse(module)))
            elif isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
                syn = self._synapse_before(items)
                if syn is None or syn.folded:
                    raise LasnnError(
                        f"Batch norm layer '{label}' does not follow a convolution or linear layer "
                        "(directly or through pooling); "
                        "conversion can only fold batch norm into such a layer."
                    )
                _fold_norm(syn, module, label)
            elif isinstance(module, Scale):
                self._fold_scale(node, module.factor, items)
            elif isinstance(module, nn.AvgPool2d | nn.MaxPool2d):
                is_max = isinstance(module, nn.MaxPool2d)
                dilation = _square(module.dilation, "dilation", label) if is_max else 1
                if _square(module.padding, "padding", label) != 0 or module.ceil_mode or dilation != 1:
                    raise self._refuse(node, f"{type(module).__name__} with padding, dilation or ceil_mode")
                if not is_max and module.divisor_override is not None:
                    raise self._refuse(node, "AvgPool2d with divisor_override")
                kernel = _square(module.kernel_size, "kernel size", label)
                stride = _square(module.stride if module.stride is not None else kernel, "stride", label)
                self._pool(node, kernel, stride, is_max, items)
            elif isinstance(module, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d):
                self._adaptive(node, in_shape, out_shape, isinstance(module, nn.AdaptiveMaxPool2d), items)
            elif isinstance(module, nn.Flatten):
                self._flatten(node, in_shape, out_shape, items)
            elif isinstance(module, _IDENTITY_MODULES):
                return
            else:
                raise self._refuse(node, type(module).__name__)
        elif node.op == "call_function":
            target = node.target
            name = getattr(target, "__name__", str(target))
            if target in _IDENTITY_FUNCS:
                return
            if target in _MUL_FUNCS and self._constant_factor(node) is not None:
                self._fold_scale(node, self._constant_factor(node), items)
            elif target is torch.flatten:
                self._flatten(node, in_shape, out_shape, items)
            elif target in (F.adaptive_avg_pool2d, F.adaptive_max_pool2d):
                self._adaptive(node, in_shape, out_shape, target is F.adaptive_max_pool2d, items)
            elif target in (F.avg_pool2d, F.max_pool2d) and in_shape and out_shape:
                self._pool_from_shapes(node, in_shape, out_shape, target is F.max_pool2d, items)
            elif name in (
                "sigmoid",
                "tanh",
                "gelu",
                "silu",
                "elu",
                "selu",
                "leaky_relu",
                "softmax",
                "log_softmax",
                "softplus",
                "hardtanh",
                "relu6",
                "mish",
                "hardswish",
            ):
                raise LasnnError(
                    f"The teacher's layer '{label}' is a {name} nonlinearity; conversion to "
                    "integrate-and-fire neurons needs ReLU or QCFS activations only."
                )
            else:
                raise self._refuse(node, f"function {name}")
        elif node.op == "call_method":
            if node.target in ("flatten", "view", "reshape"):
                self._flatten(node, in_shape, out_shape, items)
            elif node.target in ("contiguous", "clone", "detach"):
                return
            elif node.target in ("sigmoid", "tanh", "softmax", "log_softmax"):
                raise LasnnError(
                    f"The teacher's layer '{label}' is a {node.target} nonlinearity; conversion "
                    "to integrate-and-fire neurons needs ReLU or QCFS activations only."
                )
            else:
                raise self._refuse(node, f"method .{node.target}()")
        else:
            raise self._refuse(node, node.op)

    @staticmethod
    def _synapse_before(items: list) -> _Syn | None:
        """The conv/linear item that a per-channel affine map after ``items`` can be folded into: the last
        item, or the one before a run of poolings (every pooling of the converted network averages, and
        an average of ``a x + b`` is ``a avg(x) + b`` per channel)."""
        for item in reversed(items):
            if isinstance(item, _Syn):
                return item
            if not isinstance(item, _Pool):
                return None
        return None

    @staticmethod
    def _constant_factor(node: fx.Node) -> float | None:
        """``c`` of ``x * c``, ``c * x`` or ``x / c`` with a Python number ``c``; None otherwise."""
        args = list(node.args)
        if len(args) != 2 or node.kwargs:
            return None
        tensors = [a for a in args if isinstance(a, fx.Node)]
        numbers = [a for a in args if isinstance(a, int | float) and not isinstance(a, bool)]
        if len(tensors) != 1 or len(numbers) != 1:
            return None
        if node.target in (operator.truediv, torch.div):
            return 1.0 / float(numbers[0]) if args[0] is tensors[0] and numbers[0] != 0 else None
        return float(numbers[0])

    def _fold_scale(self, node: fx.Node, factor: float, items: list) -> None:
        """Fold a constant scale (airbench's logit scale 1/9) into the conv/linear layer before it."""
        syn = self._synapse_before(items)
        if syn is None:
            raise self._refuse(node, "a constant scale that does not follow a convolution or linear layer")
        with torch.no_grad():
            syn.layer.weight.mul_(factor)
            syn.layer.bias.mul_(factor)

    def _pool(self, node: fx.Node, kernel: int, stride: int, is_max: bool, items: list) -> None:
        if is_max:
            self.replaced.append(f"{self._label(node)}: max pooling -> average pooling")
        items.append(_Pool(self._label(node), kernel, stride))

    def _pool_from_shapes(
        self, node: fx.Node, in_shape: tuple, out_shape: tuple, is_max: bool, items: list
    ) -> None:
        """A functional pooling: its window is read from its arguments (kernel, stride)."""
        args = list(node.args[1:])
        kernel = node.kwargs.get("kernel_size", args[0] if args else None)
        stride = node.kwargs.get("stride", args[1] if len(args) > 1 else None)
        padding = node.kwargs.get("padding", args[2] if len(args) > 2 else 0)
        label = self._label(node)
        if kernel is None or _square(padding, "padding", label) != 0:
            raise self._refuse(node, "pooling with padding or without a kernel size")
        kernel = _square(kernel, "kernel size", label)
        stride = _square(stride if stride not in (None, [], ()) else kernel, "stride", label)
        if (in_shape[-1] - kernel) // stride + 1 != out_shape[-1]:
            raise self._refuse(node, "pooling with ceil_mode or dilation")
        self._pool(node, kernel, stride, is_max, items)

    def _adaptive(self, node: fx.Node, in_shape: tuple, out_shape: tuple, is_max: bool, items: list) -> None:
        h, w = in_shape[-2:]
        oh, ow = out_shape[-2:]
        if h % oh or w % ow or h // oh != w // ow:
            raise self._refuse(node, f"adaptive pooling from {h}x{w} to {oh}x{ow}, not a whole square window")
        if (h, w) != (oh, ow):
            self._pool(node, h // oh, h // oh, is_max, items)

    def _flatten(self, node: fx.Node, in_shape: tuple, out_shape: tuple, items: list) -> None:
        if len(out_shape) == len(in_shape) and out_shape == in_shape:
            return
        if len(out_shape) != 2 or out_shape[0] != in_shape[0] or out_shape[1] != math.prod(in_shape[1:]):
            raise self._refuse(node, f"reshape from {tuple(in_shape)} to {tuple(out_shape)}, not a flatten")
        items.append(_Flatten(self._label(node)))


# ----------------------------------------------------------------------------------------------------
# Calibration: the converted ANN in analog form, clipped at each layer's lambda


def _analog(items: list, x: torch.Tensor, percentile_p: float | None, pooling: str) -> torch.Tensor:
    """Run the parsed ANN (folded, max->avg pooling) on ``x``; ReLU outputs are clipped at ``lambda``,
    QCFS layers compute QCFS.

    With ``percentile_p`` set, a ReLU without a threshold gets ``lambda`` = that percentile of its
    activations first (calibration); a layer of all-zero activations gets 1.
    """
    for item in items:
        if isinstance(item, _Syn):
            x = item.layer(x)
        elif isinstance(item, _Pool):
            x = F.avg_pool2d(x, item.kernel, item.stride)
        elif isinstance(item, _Flatten):
            x = x.flatten(1)
        elif isinstance(item, _Relu | _Res):
            if isinstance(item, _Res):
                x = _analog(item.branch, x, percentile_p, pooling) + _analog(
                    item.shortcut, x, percentile_p, pooling
                )
                relu = item.relu
            else:
                relu = item
            if relu.levels is not None:  # QCFS: its own lambda, and the teacher's quantised activation
                x = _qcfs_activation(relu, x)
                continue
            x = torch.relu(x)
            if relu.threshold is None:
                if percentile_p is None:
                    raise ValueError(f"layer {relu.name} has no threshold; calibrate first")
                value = percentile(x, percentile_p)
                relu.threshold = value if value > 0 else 1.0
            x = x.clamp(max=relu.threshold)
    return x


# ----------------------------------------------------------------------------------------------------
# Building the spiking network, and rebuilding it from its config


def _neuron_config(reset: str, v_th: float, shift: bool = False) -> NeuronConfig:
    """IF neurons; ``shift`` starts the membrane at ``v_th / 2`` (``v_reset`` is the initial potential,
    and reset by subtraction never returns to it), which turns the rate's floor into rounding."""
    return NeuronConfig(kind="if", v_th=float(v_th), v_reset=float(v_th) / 2 if shift else 0.0, reset=reset)


def _scaled(layer: nn.Conv2d | nn.Linear, scale: float) -> SeqSynapse:
    new = _fresh_synapse(layer)
    with torch.no_grad():
        new.weight.mul_(scale)
    return SeqSynapse(new)


def _build(
    items: list, scale: float, neurons: Callable[[float | None], SpikingNeurons], pooling: str
) -> tuple[list[nn.Module], float]:
    """Spiking modules for ``items``; ``scale`` is the ANN value one unit of the incoming signal stands for
    (1 for analog input and currents, ``lambda`` for spikes, ``lambda/k^2`` after sum pooling)."""
    modules: list[nn.Module] = []
    for item in items:
        if isinstance(item, _Syn):
            modules.append(_scaled(item.layer, scale))
            scale = 1.0
        elif isinstance(item, _Pool):
            modules.append(SeqPool(pooling, item.kernel, item.stride))
            if pooling == "sum":
                scale = scale / (item.kernel * item.kernel)
        elif isinstance(item, _Flatten):
            modules.append(SeqFlatten())
        elif isinstance(item, _Relu):
            # in units of the incoming signal (sum pooling between a synapse and the neurons scales it)
            modules.append(neurons(item.threshold / scale))
            scale = item.threshold
        elif isinstance(item, _Res):
            branch, _ = _build(item.branch, scale, neurons, pooling)
            if item.shortcut:
                shortcut: SeqSynapse | None = _scaled(item.shortcut[0].layer, scale)
            elif scale == 1.0:
                shortcut = None
            else:  # identity on spikes: a synapse of weight lambda so that the sum is in ANN units
                last = item.branch[-1].layer
                shortcut = SeqSynapse(_identity_like(last, scale))
            modules.append(ResidualBlock(nn.Sequential(*branch), shortcut, neurons(item.relu.threshold)))
            scale = item.relu.threshold
    return modules, scale


def _neuron_factory(reset: str, shift: bool) -> Callable[[float | None], SpikingNeurons]:
    def make(threshold: float | None) -> SpikingNeurons:
        if threshold is None:
            raise ValueError("uncalibrated layer")
        return SpikingNeurons(_neuron_config(reset, threshold, shift))

    return make


def _identity_like(last: nn.Conv2d | nn.Linear, scale: float) -> nn.Conv2d | nn.Linear:
    """A 1x1 conv (or square linear) computing ``scale * x``: the identity shortcut on spikes."""
    if isinstance(last, nn.Conv2d):
        c = last.out_channels
        layer: nn.Conv2d | nn.Linear = nn.Conv2d(c, c, 1, bias=True)
        weight = torch.eye(c).view(c, c, 1, 1) * scale
    else:
        c = last.out_features
        layer = nn.Linear(c, c, bias=True)
        weight = torch.eye(c) * scale
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.zero_()
    return layer


def _spec(module: nn.Module) -> dict:
    """A data-free description of one spiking module (stored in ``student.config``)."""
    if isinstance(module, SeqSynapse):
        layer = module.layer
        if isinstance(layer, nn.Conv2d):
            return dict(
                type="conv",
                in_channels=layer.in_channels,
                out_channels=layer.out_channels,
                kernel_size=list(layer.kernel_size),
                stride=list(layer.stride),
                padding=list(layer.padding),
                dilation=list(layer.dilation),
                groups=layer.groups,
            )
        return dict(type="linear", in_features=layer.in_features, out_features=layer.out_features)
    if isinstance(module, SpikingNeurons):
        return dict(type="neurons", neuron=module.config.to_dict())
    if isinstance(module, SeqPool):
        return dict(type="pool", kind=module.kind, kernel_size=module.kernel_size, stride=module.stride)
    if isinstance(module, SeqFlatten):
        return dict(type="flatten")
    if isinstance(module, ResidualBlock):
        return dict(
            type="residual",
            branch=[_spec(m) for m in module.branch],
            shortcut=None if module.shortcut is None else _spec(module.shortcut),
            neurons=_spec(module.neurons),
        )
    raise TypeError(f"no spec for {type(module).__name__}")


def _from_spec(spec: dict) -> nn.Module:
    kind = spec["type"]
    if kind == "conv":
        return SeqSynapse(
            nn.Conv2d(
                spec["in_channels"],
                spec["out_channels"],
                tuple(spec["kernel_size"]),
                stride=tuple(spec["stride"]),
                padding=tuple(spec["padding"]),
                dilation=tuple(spec["dilation"]),
                groups=spec["groups"],
                bias=True,
            )
        )
    if kind == "linear":
        return SeqSynapse(nn.Linear(spec["in_features"], spec["out_features"], bias=True))
    if kind == "neurons":
        return SpikingNeurons(NeuronConfig(**spec["neuron"]))
    if kind == "pool":
        return SeqPool(spec["kind"], spec["kernel_size"], spec["stride"])
    if kind == "flatten":
        return SeqFlatten()
    if kind == "residual":
        shortcut = None if spec["shortcut"] is None else _from_spec(spec["shortcut"])
        return ResidualBlock(
            nn.Sequential(*[_from_spec(s) for s in spec["branch"]]), shortcut, _from_spec(spec["neurons"])
        )
    raise ValueError(f"unknown converted layer type {kind!r}")


def _stage_ends(features: nn.Sequential, in_shape: tuple[int, ...]) -> list[str]:
    """Spiking layers just before a change of spatial resolution (or the end of the image layers)."""
    ends: list[str] = []
    last: str | None = None
    x = torch.zeros(1, 1, *in_shape)
    with torch.no_grad():
        for name, module in features.named_children():
            y = module(x)
            changed = x.dim() == 5 and (y.dim() != 5 or y.shape[-2:] != x.shape[-2:])
            if changed and last is not None and last not in ends:
                ends.append(last)
            if isinstance(module, SpikingNeurons | ResidualBlock) and y.dim() == 5:
                last = name
            x = y
    if last is not None and last not in ends and x.dim() == 5:
        ends.append(last)
    return ends


def build_converted(config: dict, timesteps: int, encoding: str) -> SpikingStudent:
    """Rebuild a converted SNN's structure from ``student.config`` (weights and thresholds come from the
    state dict); used by ``lasnn.distill.checkpoints.load_student`` for kind "converted"."""
    if config.get("arch") != "converted":
        raise ValueError(f"not a converted network config (arch={config.get('arch')!r})")
    features = nn.Sequential(*[_from_spec(s) for s in config["layers"]])
    head = _from_spec(config["head"])
    if not isinstance(head, SeqSynapse) or not isinstance(head.layer, nn.Linear):
        raise ValueError("the head of a converted network must be a linear layer")
    return SpikingStudent(features, head, timesteps, encoding, list(config["stage_ends"]), config)


def _retarget_specs(specs: list[dict], kind: str) -> None:
    """Switch every neuron spec in ``specs`` (also in residual blocks) to ``kind``, keeping its threshold."""
    for spec in specs:
        if spec["type"] == "neurons":
            old = spec["neuron"]
            spec["neuron"] = NeuronConfig(kind=kind, dt=old["dt"], v_th=old["v_th"]).to_dict()
        elif spec["type"] == "residual":
            _retarget_specs([*spec["branch"], spec["neurons"]], kind)


def trainable_from_converted(
    converted: SpikingStudent, timesteps: int, encoding: str = "direct", neuron: str | None = None
) -> SpikingStudent:
    """A student to train (``lasnn distill --init-from``) with a converted network's architecture and
    weights (BN folded, weights scaled by the thresholds, the thresholds as buffers).

    ``neuron`` None or "if" keeps the converted IF neurons (threshold, reset, start potential): the
    student's first forward is then exactly the converted network's at the same T and encoding, and
    training starts from the conversion (surrogate gradients through the IF neurons). "lifbox" or
    "cubalif" switch every layer to that leaky neuron (reset to zero, same threshold): a warm start
    only, since a leak changes what the scaled weights mean. Not a copy of ``converted``'s modules: the
    student is rebuilt from the (retargeted) config and loaded with its state dict.
    """
    config = copy.deepcopy(converted.config)
    if neuron not in (None, "if"):
        _retarget_specs(config["layers"], neuron)
    config["neuron_model"] = neuron or "if"
    student = build_converted(config, timesteps, encoding)
    student.load_state_dict(converted.state_dict())
    return student


def convert(
    teacher: nn.Module,
    calibration_images: torch.Tensor,
    timesteps: int,
    percentile: float = 99.9,
    reset: str = "zero",
    pooling: str = "avg",
    shift: bool = False,
) -> SpikingStudent:
    """Convert a ReLU teacher into an integrate-and-fire ``SpikingStudent`` (direct encoding); see the
    module docstring. ``calibration_images`` ``[N, C, H, W]`` (normalised like training data) set the
    thresholds; ``reset`` "zero" is what Loihi runs, "subtract" is more accurate but norse-only.
    ``shift`` (reset by subtraction only, norse only) starts every membrane at half its threshold: the
    "shift" of QCFS conversion (Bu et al., ICLR 2022), which halves the expected error at low T."""
    if reset not in RESETS:
        raise LasnnError(f"reset={reset!r} is not supported; expected one of {', '.join(RESETS)}.")
    if shift and reset != "subtract":
        raise LasnnError(
            "shift=True (membranes starting at half threshold) needs reset='subtract'; a reset to "
            "zero would discard the shift at the first spike."
        )
    if pooling not in POOLINGS:
        raise LasnnError(f"pooling={pooling!r} is not supported; expected one of {', '.join(POOLINGS)}.")
    if not isinstance(timesteps, int) or timesteps < 1:
        raise LasnnError(f"timesteps={timesteps!r} is not a positive integer.")
    if not 0.0 < float(percentile) <= 100.0:
        raise LasnnError(f"percentile={percentile!r} is outside (0, 100]; pass e.g. 99.9 or 100.")
    if calibration_images.dim() < 2 or calibration_images.shape[0] < 1:
        raise LasnnError(
            f"Calibration images of shape {tuple(calibration_images.shape)} are empty; pass at "
            "least one image [N, C, H, W]."
        )
    was_training = teacher.training
    teacher.eval()
    try:
        images = calibration_images.detach().float().cpu()
        parsed = _TeacherParser(teacher, images[:2]).parse()
        items = parsed.items
        if not items or not isinstance(items[-1], _Syn) or not isinstance(items[-1].layer, nn.Linear):
            raise LasnnError(
                "The teacher does not end in a linear classifier layer; conversion needs one to "
                "become the spiking network's readout."
            )
        with torch.no_grad():
            _analog(items[:-1], images, float(percentile), pooling)
        body, scale = _build(items[:-1], 1.0, _neuron_factory(reset, shift), pooling)
        head = _scaled(items[-1].layer, scale)
    finally:
        teacher.train(was_training)
    features = nn.Sequential(*body)
    in_shape = tuple(int(s) for s in images.shape[1:])
    teacher_config = getattr(teacher, "config", None)
    config = dict(
        arch="converted",
        in_shape=list(in_shape),
        num_classes=head.layer.out_features,
        layers=[_spec(m) for m in features],
        head=_spec(head),
        stage_ends=_stage_ends(features, in_shape),
        percentile=float(percentile),
        reset=reset,
        shift=bool(shift),
        pooling=pooling,
        calibration_samples=int(images.shape[0]),
        thresholds=[_relu_threshold(i) for i in _relus(items[:-1])],
        replaced=list(parsed.replaced),
        teacher_config=dict(teacher_config) if isinstance(teacher_config, dict) else None,
    )
    return SpikingStudent(features, head, timesteps, "direct", config["stage_ends"], copy.deepcopy(config))


def _relus(items: Iterable) -> list[_Relu]:
    found: list[_Relu] = []
    for item in items:
        if isinstance(item, _Relu):
            found.append(item)
        elif isinstance(item, _Res):
            found += _relus(item.branch) + [item.relu]
    return found


def _relu_threshold(relu: _Relu) -> dict:
    source = "percentile" if relu.levels is None else f"qcfs (L = {relu.levels})"
    return {"layer": relu.name, "lambda": relu.threshold, "source": source}


# ----------------------------------------------------------------------------------------------------
# Evaluation at many T in one run


def normalised_rates(student: SpikingStudent, images: torch.Tensor) -> list[torch.Tensor]:
    """The converted ANN's activations divided by each layer's ``lambda`` and clipped to [0, 1]: the firing
    rates the spiking layers approach as T grows (one per ``SpikingNeurons``, in ``neuron_layers`` order).

    Computed from the spiking network's own (scaled) weights with each neuron layer replaced by
    ``clamp(relu(z) / v_th, 0, 1)`` and spikes of amplitude 1.
    """
    rates: list[torch.Tensor] = []

    def run(modules: Iterable[nn.Module], x: torch.Tensor) -> torch.Tensor:
        for module in modules:
            if isinstance(module, SpikingNeurons):
                x = (torch.relu(x) / module.v_th).clamp(max=1.0)
                rates.append(x[0])
            elif isinstance(module, ResidualBlock):
                skip = x if module.shortcut is None else module.shortcut(x)
                x = run(module.branch, x) + skip
                x = run([module.neurons], x)
            else:
                x = module(x)
        return x

    with torch.no_grad():
        run(student.features, images.unsqueeze(0))
    return rates


def eval_batch_size(student: SpikingStudent, timesteps: int, budget_elements: int = 2**25) -> int:
    """A batch size that keeps the largest ``[T, B, ...]`` activation under ``budget_elements`` floats."""
    largest = 1
    x = torch.zeros(1, 1, *student.config.get("in_shape", [1]))
    with torch.no_grad():
        for module in student.features:
            x = module(x)
            largest = max(largest, x[0, 0].numel())
    return max(1, min(256, budget_elements // (timesteps * largest)))


CURVE_CHUNK = 8  # time steps per chunk of evaluate_curve


def _if_chunk(neurons: SpikingNeurons, currents: torch.Tensor, state: dict, key: str) -> torch.Tensor:
    """IF neurons over one time chunk, the membrane carried in ``state[key]`` between chunks.

    The same arithmetic as ``SpikingNeurons``' ``if`` branch (``v += I``; spike if ``v > v_th``, which is
    ``v - v_th > 0`` exactly in IEEE arithmetic; ``v - z v_th`` or ``v_reset``), written in place: a few
    large in-place operations per step instead of new tensors (measured: the step loop, not the convs,
    dominated the full-T evaluation of an airbench-sized network on the 2-core CPU)."""
    c = neurons.config
    v = state.get(key)
    if v is None:
        v = torch.full_like(currents[0], c.v_reset, memory_format=torch.contiguous_format)
    spikes = torch.empty_like(currents, memory_format=torch.contiguous_format)
    v_th = neurons.v_th.to(currents.dtype)
    for t in range(currents.shape[0]):
        v.add_(currents[t])
        if c.reset == "subtract":
            torch.gt(v, v_th, out=spikes[t])
            v.addcmul_(spikes[t], v_th, value=-1)  # v - z v_th: z v_th and its negation are exact
        else:
            fired = v > v_th
            spikes[t].copy_(fired)
            v.masked_fill_(fired, c.v_reset)
    state[key] = v
    return spikes


def _run_chunk(modules: nn.Module, x: torch.Tensor, state: dict, prefix: str = "") -> torch.Tensor:
    for name, module in modules.named_children():
        key = prefix + name
        if isinstance(module, SpikingNeurons):
            x = _if_chunk(module, x, state, key)
        elif isinstance(module, ResidualBlock):
            skip = x if module.shortcut is None else module.shortcut(x)
            x = _run_chunk(module.branch, x, state, key + ".branch.") + skip
            x = _if_chunk(module.neurons, x, state, key + ".neurons")
        else:
            x = module(x)
    return x


def _chunked_currents(student: SpikingStudent, images: torch.Tensor, t_max: int, chunk: int):
    """Readout currents ``[chunk, B, classes]`` of one run at ``t_max``, chunk by chunk (IF, direct input)."""
    state: dict = {}
    for start in range(0, t_max, chunk):
        steps = min(chunk, t_max - start)
        stream = images.unsqueeze(0).expand(steps, *images.shape)
        yield student.head(student.flatten(_run_chunk(student.features, stream, state)))


def evaluate_curve(
    student: SpikingStudent,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    timesteps_list: Sequence[int],
    progress: object | None = None,
    device: str | torch.device = "cpu",
    chunk: int = CURVE_CHUNK,
) -> dict[int, float]:
    """Top-1 accuracy at every T of ``timesteps_list`` from one run at the largest T (see module doc).

    ``batches`` yields ``(images, labels)`` (moved to ``device``, where the student must already be);
    ``progress`` (a tqdm bar) is advanced by images seen. A converted network (IF neurons, direct input)
    runs ``chunk`` steps at a time with its membranes carried over, so memory does not grow with T and
    batches can be large (``eval_batch_size(student, chunk)``); the running sum of the readout after t
    steps is the output of a network run for t steps. Other students run all T at once.
    """
    t_max = max(timesteps_list)
    saved_t = student.timesteps
    student.timesteps = t_max
    correct = dict.fromkeys(timesteps_list, 0)
    seen = 0
    chunked = student.encoding == "direct" and all(m.config.kind == "if" for _, m in student.neuron_layers())
    student.eval()
    try:
        with torch.no_grad():
            for images, labels in batches:
                images, labels = images.to(device), labels.to(device)
                if chunked:
                    parts = _chunked_currents(student, images, t_max, max(1, int(chunk)))
                else:
                    parts = iter([student.run(student.encode(images))[0]])
                done, carry = 0, None
                for currents in parts:
                    running = currents.cumsum(0) if carry is None else currents.cumsum(0) + carry
                    for t in timesteps_list:
                        if done < t <= done + len(running):
                            correct[t] += int((running[t - done - 1].argmax(-1) == labels).sum())
                    carry, done = running[-1], done + len(running)
                seen += len(labels)
                if progress is not None:
                    progress.update(len(labels))
    finally:
        student.timesteps = saved_t
    if seen == 0:
        raise LasnnError("The evaluation set is empty; conversion accuracy needs at least one test image.")
    return {t: correct[t] / seen for t in timesteps_list}


def register(subparsers: object) -> None:
    """Adds the ``convert`` verb: the hook ``lasnn.distill.commands.register`` calls; the verb itself lives
    in ``conversion_commands`` (imported here lazily, so the CLI's imports stay out of this module)."""
    from lasnn.distill.conversion_commands import register as register_convert

    register_convert(subparsers)
