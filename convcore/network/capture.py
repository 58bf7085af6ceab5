"""Capture a model as the ATen graph that eager PyTorch runs (``torch.export``) and sort its ops into kinds.

``torch.export.export(model, (example,), strict=False)`` runs the model's Python code with fake tensors, so a
branch on ``torch.jit.isinstance`` or on a shape is decided as eager decides it, and a branch on a tensor's value
cannot be captured at all (refused with a TypeError) instead of being decided once at trace time, as
``torch.fx.symbolic_trace`` would. The graph is specialized to the example's shape; callers capture once per input
shape.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.fx as fx
from torch.export.graph_signature import InputKind, OutputKind

__all__ = ["Capture", "capture", "layer_name"]

aten = torch.ops.aten

CONV = {aten.conv2d.default, aten.conv2d.padding, aten.convolution.default}
CONV_T = {aten.conv_transpose2d.input}
MAX_POOL = {aten.max_pool2d.default}
AVG_POOL = {aten.avg_pool2d.default}
UPSAMPLE = {
    aten.upsample_nearest2d.vec: "nearest",
    aten.upsample_nearest2d.default: "nearest",
    aten.upsample_bilinear2d.vec: "bilinear",
    aten.upsample_bilinear2d.default: "bilinear",
}
PAD = {aten.pad.default, aten.constant_pad_nd.default}
# Ops that act on each position alone (besides those tagged pointwise): run on crops as they are.
POINTWISE = {
    aten.hardswish.default,
    aten.dropout.default,
    aten.feature_dropout.default,
    aten.alias.default,
    aten.to.dtype,
    aten._to_copy.default,
    aten.detach.default,
    aten.prelu.default,
    aten.clone.default,
    aten.batch_norm.default,
    aten.lift_fresh_copy.default,
}
CHANNEL = {aten.cat.default, aten.slice.Tensor, aten.mean.dim, aten.sum.dim_IntList, aten.amax.default}
# Ops whose output at a position depends on the whole map (or that turn a map into something else).
GLOBAL = {
    aten.adaptive_avg_pool2d.default,
    aten.adaptive_max_pool2d.default,
    aten.mean.dim,
    aten.mean.default,
    aten.sum.dim_IntList,
    aten.sum.default,
    aten.amax.default,
    aten.amin.default,
    aten.max.dim,
    aten.var.correction,
    aten.std.correction,
    aten.instance_norm.default,
    aten.group_norm.default,
    aten.layer_norm.default,
    aten.batch_norm.default,
    aten.softmax.int,
    aten.log_softmax.int,
    aten.scaled_dot_product_attention.default,
    aten.matmul.default,
    aten.bmm.default,
    aten.linear.default,
    aten.flatten.using_ints,
    aten.view.default,
    aten.reshape.default,
    aten.permute.default,
    aten.transpose.int,
    aten.unflatten.int,
    aten.squeeze.dim,
    aten.unsqueeze.default,
    aten.einsum.default,
}
NOOP = {aten._assert_tensor_metadata.default}
VIEWS = {aten.slice.Tensor, aten.view.default, aten.reshape.default, aten.permute.default, aten.transpose.int}


@dataclass
class Capture:
    """A captured graph and what the runner needs to know about each node.

    Attributes:
        nodes: the graph's nodes in execution order.
        input_node: the placeholder of the user input.
        sources: placeholder → (kind, target) where kind is "parameter", "buffer" or "constant".
        outputs: the user outputs (nodes, or constants) in the order of ``out_spec``.
        kinds: call node → "conv", "conv_t", "max_pool", "avg_pool", "upsample", "pad", "crop" (run on crops as is),
            "global", "noop", "plain" (no map involved), or "unsupported".
        maps: nodes whose value is a 4-D floating-point map derived from the input.
        derived: nodes whose value depends on the input.
        folds: conv node → the eval BatchNorm folded into it (that BN node then passes the conv's value on).
        shapes: node → its value's shape (for tensors).
    """

    nodes: list[fx.Node]
    input_node: fx.Node
    sources: dict[fx.Node, tuple[str, str]]
    constants: dict[str, object]
    outputs: list
    out_spec: object
    kinds: dict[fx.Node, str] = field(default_factory=dict)
    maps: set[fx.Node] = field(default_factory=set)
    derived: set[fx.Node] = field(default_factory=set)
    folds: dict[fx.Node, fx.Node] = field(default_factory=dict)
    shapes: dict[fx.Node, tuple[int, ...]] = field(default_factory=dict)


def capture(model: torch.nn.Module, example: torch.Tensor) -> Capture:
    """Export ``model`` on ``example`` (Tensor[N, C, H, W]) and classify its nodes. Raises TypeError when it cannot."""
    try:
        ep = torch.export.export(model, (example,), strict=False)
    except Exception as exc:  # export's errors have no common base; keep the message, say what it means here
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "data-dependent" in str(exc) or "data dependent" in str(exc):
            raise TypeError(
                f"cannot capture {type(model).__name__}: its forward branches on a tensor's value ({text}); "
                "a ROI network runs one fixed graph, so the branch cannot follow the data"
            ) from exc
        hint = ""
        if "Guard failed" in text:
            hint = " (a program exported for one input shape; export it with dynamic_shapes for other sizes)"
        raise TypeError(f"cannot capture {type(model).__name__} with torch.export: {text}{hint}") from exc
    graph = ep.graph_module.graph
    by_name = {n.name: n for n in graph.nodes}
    sources: dict[fx.Node, tuple[str, str]] = {}
    input_node = None
    for spec in ep.graph_signature.input_specs:
        node = by_name[spec.arg.name]
        if spec.kind == InputKind.USER_INPUT:
            if input_node is not None:
                raise TypeError(f"{type(model).__name__}.forward must take one input tensor")
            input_node = node
        elif spec.kind == InputKind.PARAMETER:
            sources[node] = ("parameter", spec.target)
        elif spec.kind == InputKind.BUFFER:
            sources[node] = ("buffer", spec.target)
        elif spec.kind == InputKind.CONSTANT_TENSOR:
            sources[node] = ("constant", spec.target)
        else:
            raise TypeError(f"{type(model).__name__}: unsupported graph input {spec.kind.name} ({spec.arg.name})")
    out_node = next(n for n in graph.nodes if n.op == "output")
    flat = list(out_node.args[0])
    outputs = [v for v, s in zip(flat, ep.graph_signature.output_specs) if s.kind == OutputKind.USER_OUTPUT]
    _functionalize(graph)
    nodes = [n for n in graph.nodes if n.op in ("placeholder", "call_function")]
    cap = Capture(nodes, input_node, sources, dict(ep.constants), outputs, ep.call_spec.out_spec)
    _classify(cap)
    _find_folds(cap)
    return cap


def layer_name(node: fx.Node) -> str:
    """A readable name: the ATen op and the module it came from, e.g. "aten.conv2d in layer1.0.conv1 (Conv2d)"."""
    op = str(node.target).replace("aten::", "aten.").split(".default")[0]
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        path, cls = list(stack.values())[-1]
        cls = getattr(cls, "__name__", str(cls).rsplit(".", 1)[-1].strip("'>"))
        path = path.replace("L['self'].", "").replace("L__self___", "") or "the model"
        return f"{op} in {path} ({cls})"
    return f"{op} ({node.name})"


def _functionalize(graph: fx.Graph) -> None:
    """Rewrite in-place ops (``relu_``, ``add_``) to their out-of-place form; later readers read the result."""
    order = {n: i for i, n in enumerate(graph.nodes)}
    for node in list(graph.nodes):
        if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
            continue
        name = node.target.overloadpacket.__name__
        if not name.endswith("_") or name.startswith("_"):
            continue
        packet = getattr(aten, name[:-1], None)
        functional = getattr(packet, node.target._overloadname, None) if packet is not None else None
        if functional is None:
            raise TypeError(f"unsupported in-place op {layer_name(node)}")
        target = node.args[0]
        if isinstance(target, fx.Node) and target.op == "call_function" and target.target in VIEWS:
            raise TypeError(f"unsupported in-place op on a view: {layer_name(node)}")
        node.target = functional
        if isinstance(target, fx.Node):
            for user in list(target.users):
                if user is not node and order[user] > order[node]:
                    user.replace_input_with(target, node)


def _val(node) -> object:
    return node.meta.get("val") if isinstance(node, fx.Node) else None


def _is_map_val(v) -> bool:
    return isinstance(v, torch.Tensor) and v.dim() == 4 and v.is_floating_point()


def _node_args(node: fx.Node) -> list[fx.Node]:
    return [a for a in node.all_input_nodes]


def _classify(cap: Capture) -> None:
    cap.derived.add(cap.input_node)
    cap.maps.add(cap.input_node)
    for node in cap.nodes:
        v = _val(node)
        if isinstance(v, torch.Tensor):
            cap.shapes[node] = tuple(int(s) for s in v.shape)
        if node.op != "call_function":
            continue
        ins = _node_args(node)
        if not any(a in cap.derived for a in ins):
            cap.kinds[node] = "plain"
            continue
        cap.derived.add(node)
        if _is_map_val(v):
            cap.maps.add(node)
        cap.kinds[node] = _kind(node, [a for a in ins if a in cap.maps], cap)


def _kind(node: fx.Node, map_args: list[fx.Node], cap: Capture) -> str:
    t = node.target
    if t is operator.getitem:
        return "getitem"
    if t in NOOP:
        return "noop"
    if not map_args:
        return "global"  # derived from the input through something that is not a map any more
    if t in CONV:
        if t == aten.convolution.default and node.args[6]:
            return "conv_t"
        return "conv" if node.args[0] in cap.maps and not any(a in cap.derived for a in node.args[1:3]) else "global"
    if t in CONV_T:
        return "conv_t" if not any(a in cap.derived for a in node.args[1:3]) else "global"
    if t in MAX_POOL:
        return "max_pool"
    if t in AVG_POOL:
        return "avg_pool"
    if t in UPSAMPLE:
        return "upsample"
    if t in PAD:
        return "pad"
    if t == aten.batch_norm.default:
        training = node.args[5] if len(node.args) > 5 else node.kwargs.get("training")
        return "global" if training else "crop"
    if t in CHANNEL and _channel_only(node):
        return "crop"
    if t in (aten.dropout.default, aten.feature_dropout.default):
        train = node.args[2] if len(node.args) > 2 else node.kwargs.get("train")
        return "global" if train else "crop"
    if isinstance(t, torch._ops.OpOverload) and (torch.Tag.pointwise in t.tags or t in POINTWISE):
        return "crop" if node in cap.maps else "global"
    if t in GLOBAL:
        return "global"
    return "unsupported"


def _channel_only(node: fx.Node) -> bool:
    """cat / slice / channel reductions that act along the channel dimension of 4-D maps only."""
    t = node.target
    out = _val(node)
    if not _is_map_val(out):
        return False
    if t == aten.cat.default:
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        return dim in (1, -3)
    if t == aten.slice.Tensor:
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        return dim in (1, -3)
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    keep = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    return bool(keep) and list(dims or []) in ([1], [-3])


def _find_folds(cap: Capture) -> None:
    """Fold an eval BatchNorm into the conv before it when the BN is that conv's only reader."""
    for node in cap.nodes:
        if cap.kinds.get(node) != "conv" or len(node.users) != 1:
            continue
        (bn,) = node.users
        if bn.target != aten.batch_norm.default or cap.kinds.get(bn) != "crop" or bn.args[0] is not node:
            continue
        if any(a in cap.derived for a in bn.args[1:5] if isinstance(a, fx.Node)):
            continue
        cap.folds[node] = bn
