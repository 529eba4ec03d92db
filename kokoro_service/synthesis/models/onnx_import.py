"""Convert the embedded int8 ONNX graph of Kokoro-82M into a float32 ``kokoro.KModel`` state.

Responsibilities: index the graph; dequantize its weights; map each tensor to a torch
parameter name through the node scopes; unfold weight norm, transpose MatMul weights and
reorder ONNX LSTM gates; derive ``config.json`` from the graph's shapes and check it
against the published Kokoro-82M config; strictly load the result into a ``KModel`` and
synthesize a probe.  :mod:`.embedded` drives it and owns the files and the cache.

Kept in one module, a little over 400 lines, because every step reads the same graph
index and the mapping rules only make sense side by side.

Over 400 lines: the graph-to-KModel mapping is one ordered set of rules, checked end to
end; split, the order would be harder to follow.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from kokoro_service.errors import ModelImportError
from kokoro_service.synthesis.models.architecture import KOKORO_82M_CONFIG, new_kmodel

if TYPE_CHECKING:
    import onnx
    import torch

_ALBERT_DEFAULT_EMBEDDING_SIZE = 128

_SUBMODULES = ("bert", "bert_encoder", "predictor", "text_encoder", "decoder")
# Parameters the graph cannot carry, with why their fixed value is still the faithful one.
_UNOBSERVABLE = {
    # CustomAlbert returns last_hidden_state, so the pooler never reaches the exported graph;
    # it has no influence on synthesis.
    re.compile(r"^bert\.pooler\.(weight|bias)$"): "ALBERT pooler, unused by KModel.forward",
    # AdaIN1d's InstanceNorm1d is affine only to work around an old exporter bug; the graph
    # normalizes without any affine step, which is the identity weight=1, bias=0.
    re.compile(r"\.norm\.(weight|bias)$"): "InstanceNorm affine, identity in the graph",
}
# Initializers of the exported iSTFT helper (window-sum based ConvTranspose); KModel computes
# the iSTFT with torch.istft and owns no parameters for it.
_EXPORT_ONLY_SCOPES = ("decoder.generator.istft", "decoder.generator.stft")
# ONNX LSTM gate blocks are (i, o, f, c); torch wants (i, f, g=c, o).
_ONNX_TO_TORCH_GATES = (0, 2, 3, 1)

FloatArray = NDArray[np.float32]

# --------------------------------------------------------------------------------------------
# Graph access
# --------------------------------------------------------------------------------------------


class Graph:
    """Index over an ONNX graph: initializers by name, producers and consumers of each value."""

    def __init__(self, model: onnx.ModelProto) -> None:
        from onnx import numpy_helper

        self._to_array = numpy_helper.to_array
        self.graph = model.graph
        self.initializers = {t.name: t for t in model.graph.initializer}
        self.nodes = list(model.graph.node)
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in self.nodes:
            for out in node.output:
                self.producer[out] = node
            for inp in node.input:
                if inp:
                    self.consumers[inp].append(node)
        self._cache: dict[str, NDArray[Any]] = {}

    def array(self, name: str) -> NDArray[Any]:
        """Return an initializer as numpy, raising ModelImportError when it is not constant."""
        if name not in self._cache:
            tensor = self.initializers.get(name)
            if tensor is None:
                raise ModelImportError(f"graph value {name!r} is expected to be a constant")
            self._cache[name] = np.asarray(self._to_array(tensor))
        return self._cache[name]

    def is_const(self, name: str) -> bool:
        return name in self.initializers

    @staticmethod
    def attr(node: onnx.NodeProto, name: str) -> Any:
        from onnx import helper

        for attribute in node.attribute:
            if attribute.name == name:
                return helper.get_attribute_value(attribute)
        return None

    def weight_scale_after(self, node: onnx.NodeProto) -> NDArray[Any]:
        """Find the weight scale of a MatMulInteger/ConvInteger from the rescaling after it.

        The quantizer rescales the int32 result by ``Mul(x_scale, w_scale)``; the initializer
        among that product's inputs is the weight scale. Initializer names are deduplicated
        across layers, so the graph path is the only reliable link.
        """
        frontier = [node.output[0]]
        for _ in range(4):
            next_frontier: list[str] = []
            for value in frontier:
                for consumer in self.consumers.get(value, []):
                    if consumer.op_type == "Mul":
                        other = [i for i in consumer.input if i != value]
                        for candidate in other:
                            prod = self.producer.get(candidate)
                            if prod is not None and prod.op_type == "Mul":
                                consts = [i for i in prod.input if self.is_const(i)]
                                if len(consts) == 1:
                                    return self.array(consts[0])
                    if consumer.op_type in ("Cast", "Add"):
                        next_frontier.extend(consumer.output)
            frontier = next_frontier
        raise ModelImportError(f"cannot find the weight scale that rescales node {node.name!r}")


def _dequantize(q: NDArray[Any], zero: NDArray[Any], scale: NDArray[Any], axis: int) -> FloatArray:
    """(q - zero) * scale with per-tensor or per-channel parameters along ``axis``."""
    shape = [1] * q.ndim
    if zero.size > 1 or scale.size > 1:
        size = max(zero.size, scale.size)
        if q.shape[axis] != size:
            raise ModelImportError(
                f"per-channel quantization of size {size} does not fit weight shape {q.shape}"
            )
        shape[axis] = size
    zero_b = zero.astype(np.float64).reshape(shape if zero.size > 1 else [1] * q.ndim)
    scale_b = scale.astype(np.float64).reshape(shape if scale.size > 1 else [1] * q.ndim)
    return ((q.astype(np.float64) - zero_b) * scale_b).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Scope -> torch module resolution
# --------------------------------------------------------------------------------------------


class _ModuleResolver:
    """Map ONNX node scopes such as ``/encoder/F0.0/conv1/Conv_quant`` to KModel module paths."""

    def __init__(self, module_paths: set[str]) -> None:
        self.modules = module_paths

    @staticmethod
    def _components(node_name: str, strip_call_index: bool) -> str:
        parts = node_name.strip("/").split("/")[:-1]
        # The first scope is the export wrapper (encoder/decoder) that held KModel's parts.
        if parts and parts[0] in ("encoder", "decoder"):
            parts = parts[1:]
        comps: list[str] = []
        for raw in parts:
            # ALBERT runs its single shared layer 12 times; the exporter numbers the calls.
            part = re.sub(r"_\d+$", "", raw) if strip_call_index else raw
            # Sequential children repeat their parent's name ("cnn.0/cnn.0.0").
            if comps and part.startswith(comps[-1] + "."):
                comps[-1] = part
            else:
                comps.append(part)
        return ".".join(comps)

    def resolve(self, node_name: str) -> str | None:
        for strip in (False, True):
            cand = self._components(node_name, strip)
            if not cand:
                continue
            if cand in self.modules:
                return cand
            hits = [m for m in self.modules if m.endswith("." + cand)]
            if len(hits) == 1:
                return hits[0]
            if len(hits) > 1:
                raise ModelImportError(
                    f"node {node_name!r} matches several KModel modules: {sorted(hits)}"
                )
        return None


# --------------------------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------------------------


class _StateBuilder:
    """Collect torch tensors per KModel key, refusing conflicting double assignments."""

    def __init__(self, targets: dict[str, tuple[int, ...]]) -> None:
        self.targets = targets
        self.values: dict[str, FloatArray] = {}
        self.sources: dict[str, str] = {}

    def put(self, key: str, value: FloatArray, source: str) -> None:
        if key not in self.targets:
            raise ModelImportError(
                f"graph tensor {source!r} maps to {key!r}, which KModel does not have"
            )
        if key in self.values:
            if self.sources[key] == source:
                return
            if self.values[key].shape == value.shape and np.allclose(
                self.values[key], value, rtol=1e-6, atol=1e-7
            ):
                return
            raise ModelImportError(
                f"parameter {key!r} is given twice with different values "
                f"(from {self.sources[key]!r} and {source!r})"
            )
        self.values[key] = np.ascontiguousarray(value, dtype=np.float32)
        self.sources[key] = source

    def put_weight(self, module: str, weight: FloatArray, source: str) -> None:
        """Store a (possibly weight-normed) weight; weight norm is unfolded losslessly."""
        if f"{module}.weight_v" in self.targets:
            # torch.nn.utils.weight_norm(dim=0): g is the L2 norm over every axis but 0.
            axes = tuple(range(1, weight.ndim))
            norm = np.sqrt(np.sum(weight.astype(np.float64) ** 2, axis=axes, keepdims=True))
            direction = weight.astype(np.float64)
            zero_rows = (norm == 0).reshape(-1)
            if zero_rows.any():
                # weight_norm divides by ||v||; an all-zero row must keep g=0 with a non-zero v.
                direction[zero_rows] = 1.0
            self.put(f"{module}.weight_g", norm.astype(np.float32), source)
            self.put(f"{module}.weight_v", direction.astype(np.float32), source)
        else:
            self.put(f"{module}.weight", weight, source)


def _convert_lstm(graph: Graph, node: onnx.NodeProto, module: str, builder: _StateBuilder) -> None:
    """Dequantize a DynamicQuantizeLSTM and split it into torch's per-direction tensors."""
    if graph.attr(node, "input_forget") not in (None, 0) or graph.attr(node, "activations"):
        raise ModelImportError(f"LSTM {node.name!r} uses options torch.nn.LSTM cannot express")
    inputs = list(node.input) + [""] * (12 - len(node.input))
    w_q, r_q, bias = graph.array(inputs[1]), graph.array(inputs[2]), graph.array(inputs[3])
    w = _dequantize(w_q, graph.array(inputs[9]), graph.array(inputs[8]), axis=0)
    r = _dequantize(r_q, graph.array(inputs[11]), graph.array(inputs[10]), axis=0)
    hidden = int(graph.attr(node, "hidden_size"))
    directions = w.shape[0]
    if w.shape[2] != 4 * hidden or r.shape[1:] != (hidden, 4 * hidden):
        raise ModelImportError(f"LSTM {node.name!r} has unexpected shapes W{w.shape} R{r.shape}")
    if bias.shape != (directions, 8 * hidden):
        raise ModelImportError(f"LSTM {node.name!r} has unexpected bias shape {bias.shape}")

    def reorder(mat: FloatArray) -> FloatArray:
        blocks = np.split(mat, 4, axis=0)
        return np.concatenate([blocks[i] for i in _ONNX_TO_TORCH_GATES], axis=0)

    for d in range(directions):
        suffix = "_l0" + ("_reverse" if d == 1 else "")
        # DynamicQuantizeLSTM keeps W as [in, 4h]; torch wants [4h, in].
        builder.put(f"{module}.weight_ih{suffix}", reorder(w[d].T), node.name)
        builder.put(f"{module}.weight_hh{suffix}", reorder(r[d].T), node.name)
        builder.put(f"{module}.bias_ih{suffix}", reorder(bias[d, : 4 * hidden]), node.name)
        builder.put(f"{module}.bias_hh{suffix}", reorder(bias[d, 4 * hidden :]), node.name)


def convert_graph(
    graph: Graph, targets: dict[str, tuple[int, ...]]
) -> tuple[dict[str, FloatArray], dict[str, str]]:
    """Build the full KModel state dict from the graph; return it and a note per default."""
    modules = {key.rsplit(".", 1)[0] for key in targets}
    resolver = _ModuleResolver(modules)
    builder = _StateBuilder(targets)
    consumed: set[str] = set()

    def module_of(node: onnx.NodeProto) -> str:
        module = resolver.resolve(node.name)
        if module is None:
            raise ModelImportError(f"cannot map graph node {node.name!r} to a KModel module")
        return module

    for node in graph.nodes:
        op = node.op_type
        weight_name = node.input[1] if len(node.input) > 1 else ""
        if op in ("MatMulInteger", "ConvInteger") and graph.is_const(weight_name):
            module = module_of(node)
            zero = graph.array(node.input[3]) if len(node.input) > 3 and node.input[3] else None
            q = graph.array(weight_name)
            zero_arr = zero if zero is not None else np.zeros((), dtype=q.dtype)
            scale = graph.weight_scale_after(node)
            if op == "MatMulInteger":
                # MatMul computes x @ W with W [in, out]; per-channel params run along out.
                w = _dequantize(q, zero_arr, scale, axis=1)
                builder.put_weight(module, np.ascontiguousarray(w.T), weight_name)
            else:
                w = _dequantize(q, zero_arr, scale, axis=0)
                builder.put_weight(module, w, weight_name)
            consumed.add(weight_name)
        elif op in ("Conv", "ConvTranspose", "MatMul") and graph.is_const(weight_name):
            resolved = resolver.resolve(node.name)
            if resolved is None:
                scope = _ModuleResolver._components(node.name, False)
                if scope.startswith(_EXPORT_ONLY_SCOPES):
                    consumed.update(i for i in node.input if graph.is_const(i))
                    continue
                raise ModelImportError(f"cannot map graph node {node.name!r} to a KModel module")
            w = graph.array(weight_name).astype(np.float32)
            if op == "MatMul":
                w = np.ascontiguousarray(w.T)
            builder.put_weight(resolved, w, weight_name)
            consumed.add(weight_name)
        elif op == "DynamicQuantizeLSTM":
            _convert_lstm(graph, node, module_of(node), builder)
            consumed.update(i for i in node.input if graph.is_const(i))
        elif op == "Gather" and graph.is_const(node.input[0]):
            table = graph.array(node.input[0])
            if table.dtype == np.float32:
                continue
            dq = [c for c in graph.consumers[node.output[0]] if c.op_type == "DequantizeLinear"]
            if len(dq) != 1:
                raise ModelImportError(f"quantized lookup {node.name!r} is not dequantized once")
            scale = graph.array(dq[0].input[1])
            zero = graph.array(dq[0].input[2])
            builder.put(f"{module_of(node)}.weight", _dequantize(table, zero, scale, 1), node.name)
            consumed.add(node.input[0])

    # Every int8/uint8 weight must have landed somewhere, or the graph holds more than KModel.
    stray = sorted(n for n in graph.initializers if n.endswith("_quantized") and n not in consumed)
    if stray:
        raise ModelImportError(
            f"{len(stray)} quantized graph weight(s) map to no KModel parameter: "
            + ", ".join(stray[:10])
        )

    # Float tensors that kept their torch name (biases, norms, Snake alphas) map one-to-one.
    for name in graph.initializers:
        if re.search(r"_(quantized|scale|zero_point)$", name) or "." not in name:
            continue
        prefix, _, rest = name.partition(".")
        if prefix not in ("encoder", "decoder"):
            continue
        if prefix == "decoder":
            rest = rest if rest.startswith("decoder.") else f"decoder.{rest}"
        if rest.startswith(_EXPORT_ONLY_SCOPES):
            continue
        array = graph.array(name)
        if array.dtype != np.float32:
            continue
        if rest not in targets:
            raise ModelImportError(f"graph tensor {name!r} has no KModel parameter {rest!r}")
        builder.put(rest, array, name)

    defaults: dict[str, str] = {}
    missing = sorted(set(targets) - set(builder.values))
    unexplained = []
    for key in missing:
        why = next((w for pattern, w in _UNOBSERVABLE.items() if pattern.search(key)), None)
        if why is None:
            unexplained.append(key)
            continue
        shape = targets[key]
        fill = np.ones(shape, np.float32) if key.endswith("norm.weight") else np.zeros(shape)
        builder.put(key, fill.astype(np.float32), f"default: {why}")
        defaults[key] = why
    if unexplained:
        raise ModelImportError(
            f"{len(unexplained)} KModel parameter(s) have no source in the graph: "
            + ", ".join(unexplained[:10])
            + (" ..." if len(unexplained) > 10 else "")
        )
    for key, value in builder.values.items():
        if tuple(value.shape) != targets[key]:
            raise ModelImportError(
                f"parameter {key!r}: graph gives shape {tuple(value.shape)}, "
                f"KModel expects {targets[key]}"
            )
        if not np.isfinite(value).all():
            raise ModelImportError(f"parameter {key!r} contains non-finite values")
    return builder.values, defaults


# --------------------------------------------------------------------------------------------
# Config derivation
# --------------------------------------------------------------------------------------------


def _scoped(graph: Graph, op: str, pattern: str) -> list[onnx.NodeProto]:
    regex = re.compile(pattern)
    return [n for n in graph.nodes if n.op_type == op and regex.search(n.name)]


def _one(nodes: list[onnx.NodeProto], what: str) -> onnx.NodeProto:
    if len(nodes) != 1:
        raise ModelImportError(f"expected exactly one graph node for {what}, found {len(nodes)}")
    return nodes[0]


def derive_config(graph: Graph, vocab: dict[str, int]) -> dict[str, Any]:
    """Read every hyperparameter the inference graph exposes and compare with Kokoro-82M v1.0."""

    def w(node: onnx.NodeProto, index: int = 1) -> tuple[int, ...]:
        return tuple(int(d) for d in graph.array(node.input[index]).shape)

    word = w(_one(_scoped(graph, "Gather", r"bert/embeddings/word_embeddings/"), "bert tokens"), 0)
    text_emb = _one(_scoped(graph, "Gather", r"text_encoder/embedding/"), "text embedding")
    pos = w(_one(_scoped(graph, "Gather", r"embeddings/position_embeddings/"), "positions"), 0)
    mapping = w(_one(_scoped(graph, "MatMulInteger", r"embedding_hidden_mapping_in/"), "mapping"))
    ffn = _scoped(graph, "MatMulInteger", r"albert_layers\.0/ffn(_\d+)?/")
    queries = _scoped(graph, "MatMulInteger", r"attention/query(_\d+)?/")
    bert_enc = w(_one(_scoped(graph, "MatMulInteger", r"^/encoder/bert_encoder/"), "bert_encoder"))
    dur = w(_one(_scoped(graph, "MatMulInteger", r"duration_proj/"), "duration_proj"))
    adain = w(_one(_scoped(graph, "MatMulInteger", r"decode\.0/norm1/fc/"), "AdaIN fc"))
    dur_lstms = _scoped(graph, "DynamicQuantizeLSTM", r"predictor/text_encoder/lstms\.\d+/")
    cnn = _scoped(graph, "ConvInteger", r"text_encoder/cnn\.\d+/")
    if not ffn or not queries or not cnn:
        raise ModelImportError("graph lacks the ALBERT feed-forward, attention or text CNN nodes")

    hidden = mapping[1]
    # Head count and head size appear as the reshape constants inside the attention scope.
    ints: set[int] = set()
    for node in graph.nodes:
        if "/attention/" in node.name:
            for inp in node.input:
                if graph.is_const(inp):
                    arr = graph.array(inp)
                    if arr.dtype == np.int64 and arr.size == 1 and int(arr.ravel()[0]) > 1:
                        ints.add(int(arr.ravel()[0]))
    heads = sorted(h for h in ints if hidden % h == 0 and hidden // h in ints and h < hidden // h)
    if len(heads) != 1:
        raise ModelImportError(f"cannot read the attention head count from the graph ({heads})")

    ups = sorted(_scoped(graph, "ConvTranspose", r"generator/ups\.\d+/"), key=lambda n: n.name)
    res_convs: dict[int, dict[int, onnx.NodeProto]] = defaultdict(dict)
    for node in _scoped(graph, "ConvInteger", r"generator/resblocks\.\d+/convs1\.\d+/"):
        found = re.search(r"resblocks\.(\d+)/convs1\.(\d+)/", node.name)
        if found:
            res_convs[int(found.group(1))][int(found.group(2))] = node
    post = _one(_scoped(graph, "Conv", r"generator/conv_post/"), "conv_post")
    istft = _one(_scoped(graph, "ConvTranspose", r"generator/istft/"), "iSTFT")
    n_kernels = len(res_convs) // max(1, len(ups))

    istftnet = {
        "upsample_kernel_sizes": [int(graph.attr(n, "kernel_shape")[0]) for n in ups],
        "upsample_rates": [int(graph.attr(n, "strides")[0]) for n in ups],
        "gen_istft_hop_size": int(graph.attr(istft, "strides")[0]),
        "gen_istft_n_fft": w(post)[0] - 2,
        "resblock_dilation_sizes": [
            [int(graph.attr(res_convs[j][i], "dilations")[0]) for i in sorted(res_convs[j])]
            for j in range(n_kernels)
        ],
        "resblock_kernel_sizes": [
            int(graph.attr(res_convs[j][0], "kernel_shape")[0]) for j in range(n_kernels)
        ],
        "upsample_initial_channel": w(ups[0])[0] if ups else 0,
    }
    derived: dict[str, Any] = {
        "istftnet": istftnet,
        "dim_in": KOKORO_82M_CONFIG["dim_in"],
        "dropout": KOKORO_82M_CONFIG["dropout"],
        "hidden_dim": bert_enc[1],
        "max_conv_dim": KOKORO_82M_CONFIG["max_conv_dim"],
        "max_dur": dur[1],
        "multispeaker": KOKORO_82M_CONFIG["multispeaker"],
        "n_layer": len(dur_lstms),
        "n_mels": KOKORO_82M_CONFIG["n_mels"],
        "n_token": word[0],
        "style_dim": adain[0],
        "text_encoder_kernel_size": int(graph.attr(cnn[0], "kernel_shape")[0]),
        "plbert": {
            "hidden_size": hidden,
            "num_attention_heads": heads[0],
            "intermediate_size": w(ffn[0])[1],
            "max_position_embeddings": pos[0],
            "num_hidden_layers": len(queries),
            "dropout": KOKORO_82M_CONFIG["plbert"]["dropout"],
        },
    }
    checks = {
        "ALBERT embedding size": (word[1], _ALBERT_DEFAULT_EMBEDDING_SIZE),
        "text embedding rows": (w(text_emb, 0)[0], word[0]),
        "text CNN depth": (len(cnn), len(dur_lstms)),
        "style vector width": (
            int(graph.graph.input[1].type.tensor_type.shape.dim[1].dim_value),
            2 * adain[0],
        ),
    }
    for what, (got, want) in checks.items():
        if got != want:
            raise ModelImportError(f"graph check failed: {what} is {got}, expected {want}")
    _compare_config(derived, KOKORO_82M_CONFIG, "")
    if not vocab or max(vocab.values()) >= derived["n_token"] or min(vocab.values()) < 1:
        raise ModelImportError(
            f"vocab.json ids must lie in 1..{derived['n_token'] - 1} (n_token from the graph)"
        )
    derived["vocab"] = vocab
    return derived


def _compare_config(got: Any, want: Any, path: str) -> None:
    if isinstance(want, dict):
        for key, value in want.items():
            _compare_config(
                got.get(key) if isinstance(got, dict) else None,
                value,
                f"{path}.{key}" if path else key,
            )
    elif got != want:
        raise ModelImportError(
            f"config derived from the graph does not match Kokoro-82M v1.0: {path} is "
            f"{got!r}, expected {want!r}"
        )


# --------------------------------------------------------------------------------------------
# KModel validation
# --------------------------------------------------------------------------------------------


def build_kmodel(config: dict[str, Any], work: Path, model_file: Path | None) -> Any:
    """Instantiate kokoro.KModel from local files only (an empty .pth when none is given)."""
    import torch

    if model_file is None:
        model_file = work / "_skeleton.pth"
        torch.save({}, model_file)
    try:
        return new_kmodel(config, str(model_file))
    except Exception as exc:  # KModel raises many kinds; all mean "config does not build"
        raise ModelImportError(
            f"kokoro.KModel cannot be built from the derived config: {exc}"
        ) from exc


def kmodel_targets(kmodel: Any) -> dict[str, tuple[int, ...]]:
    targets: dict[str, tuple[int, ...]] = {}
    for sub in _SUBMODULES:
        for key, value in getattr(kmodel, sub).state_dict().items():
            targets[f"{sub}.{key}"] = tuple(int(d) for d in value.shape)
    return targets


def split_state(values: dict[str, FloatArray]) -> dict[str, dict[str, torch.Tensor]]:
    import torch

    nested: dict[str, dict[str, torch.Tensor]] = {sub: {} for sub in _SUBMODULES}
    for key in sorted(values):
        sub, _, rest = key.partition(".")
        nested[sub][rest] = torch.from_numpy(np.array(values[key], dtype=np.float32, copy=True))
    return nested


def validate_kmodel(kmodel: Any, nested: dict[str, dict[str, torch.Tensor]]) -> float:
    """Strictly load the state dict and synthesize a short probe; return its peak amplitude."""
    import torch

    for sub in _SUBMODULES:
        try:
            getattr(kmodel, sub).load_state_dict(nested[sub], strict=True)
        except RuntimeError as exc:
            raise ModelImportError(f"strict load of KModel.{sub} failed: {exc}") from exc
    kmodel.eval()
    ids = [kmodel.vocab[c] for c in "həlˈO wˈɜɹld" if c in kmodel.vocab]
    tokens = torch.tensor([[0, *ids, 0]], dtype=torch.long)
    style = torch.full((1, 256), 0.05)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        audio, _ = kmodel.forward_with_tokens(tokens, style)
    finally:
        torch.random.set_rng_state(generator_state)
    peak = float(audio.abs().max())
    if not torch.isfinite(audio).all() or peak == 0.0:
        raise ModelImportError("the imported model synthesizes silence or non-finite audio")
    return peak
