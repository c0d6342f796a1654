"""PyTorch checkpoints to Flax: DINO and DINOv2 ViTs, MoCo / torchvision ResNet-50,
and the authors' SMTC model (for `configs/reference.py`).

  python -m smtc_jax.convert --kind dino_vit|dinov2_vit|moco_resnet50|smtc --input X.pth --output DIR
  python -m smtc_jax.convert --kind dinov2_vit --input dinov2_vits14_pretrain.pth \
      --output /data/dinov2_vits14 --config configs/dinov2.py

With `--config` (a config file, `:variant` after it as for smtc_jax.main), a
checkpoint whose encoder is not the config's is refused with one line.

writes an Orbax params checkpoint that `--config.init.checkpoint=DIR` loads
(scope 'encoder' for the backbones, 'all' for SMTC) and that evaluation reads.
Every function takes a mapping of names to arrays (numpy arrays or torch
tensors, the original key names) and reports unknown or missing keys by name.
"""

import argparse
import math
import os
import re
import sys
from typing import Any, Mapping

import flax
import numpy as np

from configs import reference
from smtc_jax.models import resnet, smtc, vit

MOCO_PREFIXES = ("module.encoder_q.", "module.", "encoder_q.", "backbone.")
DINO_PREFIXES = ("module.", "backbone.", "teacher.", "student.")


def _numpy(value) -> np.ndarray:
  if hasattr(value, "detach"):  # torch tensor
    value = value.detach().cpu().float().numpy()
  return np.asarray(value, np.float32)


def _strip(state_dict: Mapping[str, Any], prefixes) -> dict[str, np.ndarray]:
  """Drop the first matching prefix from every key (all keys share it)."""
  keys = list(state_dict)
  for prefix in prefixes:
    if keys and all(k.startswith(prefix) for k in keys):
      return {k[len(prefix):]: _numpy(v) for k, v in state_dict.items()}
  return {k: _numpy(v) for k, v in state_dict.items()}


class _Consumer:
  """Hands out tensors by name and reports what was never asked for."""

  def __init__(self, tensors: dict[str, np.ndarray], origin: str):
    self.tensors, self.origin, self.used = tensors, origin, set()

  def __call__(self, name: str) -> np.ndarray:
    if name not in self.tensors:
      raise KeyError(f"{self.origin}: missing key {name!r}")
    self.used.add(name)
    return self.tensors[name]

  def check_all_used(self, ignore=()) -> None:
    unknown = sorted(k for k in self.tensors if k not in self.used
                     and not any(re.fullmatch(p, k) for p in ignore))
    if unknown:
      raise ValueError(f"{self.origin}: unknown keys {unknown[:20]}"
                       f"{' ...' if len(unknown) > 20 else ''}")


def _dense(get, name):
  return {"kernel": get(f"{name}.weight").T, "bias": get(f"{name}.bias")}


def _norm(get, name):
  return {"scale": get(f"{name}.weight"), "bias": get(f"{name}.bias")}


def _vit_params(get, depth: int, qkv_bias: bool, layer_scale: bool = False) -> dict:
  params = {
      "patch_embed": {"kernel": get("patch_embed.proj.weight").transpose(2, 3, 1, 0),
                      "bias": get("patch_embed.proj.bias")},
      "cls_token": get("cls_token"), "pos_embed": get("pos_embed"), "norm": _norm(get, "norm"),
  }
  for i in range(depth):
    b = f"blocks.{i}"
    qkv = {"kernel": get(f"{b}.attn.qkv.weight").T}
    if qkv_bias:
      qkv["bias"] = get(f"{b}.attn.qkv.bias")
    params[f"blocks_{i}"] = {
        "norm1": _norm(get, f"{b}.norm1"), "norm2": _norm(get, f"{b}.norm2"),
        "attn": {"qkv": qkv, "proj": _dense(get, f"{b}.attn.proj")},
        "mlp": {"fc1": _dense(get, f"{b}.mlp.fc1"), "fc2": _dense(get, f"{b}.mlp.fc2")},
    }
    if layer_scale:  # DINOv2
      params[f"blocks_{i}"]["ls1"] = {"gamma": get(f"{b}.ls1.gamma")}
      params[f"blocks_{i}"]["ls2"] = {"gamma": get(f"{b}.ls2.gamma")}
  return params


def _vit_from_shapes(tensors: dict[str, np.ndarray]) -> vit.VisionTransformer:
  """DINO's ViT sizes from the weights; heads are 64 wide in every DINO ViT."""
  dim, _, patch, _ = tensors["patch_embed.proj.weight"].shape
  depth = 1 + max(int(k.split(".")[1]) for k in tensors if k.startswith("blocks."))
  tokens = tensors["pos_embed"].shape[1] - 1
  grid = int(round(math.sqrt(tokens)))
  if grid * grid != tokens:
    raise ValueError(f"pos_embed has {tokens} patch positions, not a square grid")
  hidden = tensors["blocks.0.mlp.fc1.weight"].shape[0]
  registers = tensors.get("register_tokens")
  return vit.VisionTransformer(patch_size=patch, dim=dim, depth=depth, num_heads=dim // 64,
                               mlp_ratio=hidden / dim, qkv_bias="blocks.0.attn.qkv.bias" in tensors,
                               pretrain_grid=grid, layer_scale="blocks.0.ls1.gamma" in tensors,
                               num_registers=0 if registers is None else registers.shape[1])


def dino_vit_to_flax(state_dict: Mapping[str, Any]):
  """DINO ViT weights -> (VisionTransformer, {'params': ...})."""
  tensors = _strip(state_dict, DINO_PREFIXES)
  model = _vit_from_shapes(tensors)
  get = _Consumer(tensors, "DINO ViT checkpoint")
  params = _vit_params(get, model.depth, model.qkv_bias)
  get.check_all_used(ignore=(r"head\..*",))  # a classification head is not used
  return model, {"params": params}


def dinov2_vit_to_flax(state_dict: Mapping[str, Any]):
  """DINOv2 ViT weights in the official layout (torch.hub's dinov2_vits14,
  dinov2_vitb14 and their _reg4 versions: cls_token, pos_embed, register_tokens,
  mask_token, blocks.N.{norm1,attn,ls1,norm2,mlp,ls2}, norm) -> (VisionTransformer,
  {'params': ...}). Size and registers follow from the shapes; the giant ViT's
  SwiGLU MLP (mlp.w12, mlp.w3) is not supported."""
  tensors = _strip(state_dict, DINO_PREFIXES)
  if "blocks.0.mlp.w12.weight" in tensors:
    raise ValueError("DINOv2 checkpoint: a SwiGLU MLP (the giant ViT's mlp.w12) is not supported")
  if "blocks.0.ls1.gamma" not in tensors:
    raise ValueError("DINOv2 checkpoint: no blocks.0.ls1.gamma (LayerScale); a DINO ViT "
                     "converts with --kind dino_vit")
  model = _vit_from_shapes(tensors)
  get = _Consumer(tensors, "DINOv2 ViT checkpoint")
  params = _vit_params(get, model.depth, model.qkv_bias, layer_scale=True)
  if model.num_registers:
    params["register_tokens"] = get("register_tokens")
  # mask_token replaces masked patches in DINOv2's iBOT loss; a head is not a feature.
  get.check_all_used(ignore=(r"mask_token", r"head\..*"))
  return model, {"params": params}


def vit_fields(model: vit.VisionTransformer) -> dict:
  """The model.vit fields a converted ViT has (those its shapes determine)."""
  return {"patch_size": model.patch_size, "dim": model.dim, "depth": model.depth,
          "num_heads": model.num_heads, "mlp_ratio": model.mlp_ratio, "qkv_bias": model.qkv_bias,
          "pretrain_grid": model.pretrain_grid, "layer_scale": model.layer_scale,
          "num_registers": model.num_registers}


def encoder_mismatch(model: vit.VisionTransformer, config, origin: str) -> str | None:
  """One line saying how the converted ViT differs from `config`'s encoder, or
  None when it is the config's."""
  found = vit_fields(model)
  wanted = {k: config.model.vit[k] for k in found}
  wrong = [f"model.vit.{k}={wanted[k]!r} (checkpoint: {v!r})" for k, v in found.items()
           if v != wanted[k]]
  if config.model.encoder != "vit":
    wrong.insert(0, f"model.encoder={config.model.encoder!r} (checkpoint: 'vit')")
  if not wrong:
    return None
  return f"{origin} is not the config's encoder: {'; '.join(wrong)}"


def load_config(spec: str):
  """A config file's get_config(), `path:arg` calling get_config(arg)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("_convert_config", path)
  if module_spec is None or not os.path.isfile(path):
    raise FileNotFoundError(f"config file {path} does not exist")
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def _bn(get, name):
  return ({"scale": get(f"{name}.weight"), "bias": get(f"{name}.bias")},
          {"mean": get(f"{name}.running_mean"), "var": get(f"{name}.running_var")})


def resnet50_to_flax(state_dict: Mapping[str, Any], stage_strides=(1, 2, 2, 2)):
  """torchvision / MoCo ResNet-50 weights -> (ResNet, {'params', 'batch_stats'})."""
  tensors = _strip(state_dict, MOCO_PREFIXES)
  get = _Consumer(tensors, "ResNet-50 checkpoint")
  conv = lambda name: get(f"{name}.weight").transpose(2, 3, 1, 0)
  params, stats = {"conv1": {"kernel": conv("conv1")}}, {}
  params["bn1"], stats["bn1"] = _bn(get, "bn1")
  for stage, blocks in enumerate(resnet.STAGE_BLOCKS):
    for block in range(blocks):
      src, dst = f"layer{stage + 1}.{block}", f"layer{stage + 1}_{block}"
      p, s = {}, {}
      for i in (1, 2, 3):
        p[f"conv{i}"] = {"kernel": conv(f"{src}.conv{i}")}
        p[f"bn{i}"], s[f"bn{i}"] = _bn(get, f"{src}.bn{i}")
      if f"{src}.downsample.0.weight" in tensors:
        p["downsample_0"] = {"kernel": conv(f"{src}.downsample.0")}
        p["downsample_1"], s["downsample_1"] = _bn(get, f"{src}.downsample.1")
      params[dst], stats[dst] = p, s
  # The classifier (torchvision fc, MoCo's projection head) is not a feature.
  get.check_all_used(ignore=(r"fc\..*", r"fc\.\d+\..*", r".*num_batches_tracked"))
  model = resnet.ResNet(stage_strides=tuple(stage_strides))
  return model, {"params": params, "batch_stats": stats}


def smtc_torch_to_flax(state_dict: Mapping[str, Any], num_instances: int = 4):
  """The authors' SMTC checkpoint (`model_state_dict` with encoder.*,
  slot_attention.*, transport_proj.*, mlp_slot.*) -> (SMTC, {'params': ...}) of
  `configs/reference.py`. N, the ViT and the training grid follow from the
  shapes; P is not stored in the weights (`num_instances`, or the noise's P)."""
  if "model_state_dict" in state_dict:
    state_dict = state_dict["model_state_dict"]
  tensors = _strip(state_dict, ("module.",))
  get = _Consumer(tensors, "SMTC checkpoint")
  encoder_tensors = {k[len("encoder."):]: v for k, v in tensors.items() if k.startswith("encoder.")}
  encoder, encoder_vars = dino_vit_to_flax(encoder_tensors)
  get.used.update(f"encoder.{k}" for k in encoder_tensors)
  mu = get("slot_attention.slots_mu")  # (1, N, 1, D)
  n, d = mu.shape[1], mu.shape[-1]
  cells = get("transport_proj.weight").shape[1]  # Conv1d (D, h*w, 1)
  side = int(round(math.sqrt(cells)))
  if side * side != cells:
    raise ValueError(f"transport_proj reads {cells} cells, not a square grid")
  sa = "slot_attention"
  params = {
      "encoder": encoder_vars["params"],
      "h_c": {"kernel": get("transport_proj.weight")[:, :, 0].T, "bias": get("transport_proj.bias")},
      "slot_attention": {
          "mu": mu.reshape(n, d), "log_sigma": get(f"{sa}.slots_sigma").reshape(n, d),
          "norm_inputs": _norm(get, f"{sa}.norm_input"), "norm_slots": _norm(get, f"{sa}.norm_slots"),
          "norm_mlp": _norm(get, f"{sa}.norm_pre_ff"),
          "project_q": _dense(get, f"{sa}.project_q"), "project_k": _dense(get, f"{sa}.project_k"),
          "project_v": _dense(get, f"{sa}.project_v"),
          "mlp": {"fc1": _dense(get, f"{sa}.mlp.0"), "fc2": _dense(get, f"{sa}.mlp.2")},
      },
      "object_head": {"mlp": {"fc1": _dense(get, "mlp_slot.0"), "fc2": _dense(get, "mlp_slot.2")}},
  }
  get.check_all_used()
  config = reference.get_config()
  v = config.model.vit
  v.patch_size, v.dim, v.depth = encoder.patch_size, encoder.dim, encoder.depth
  v.num_heads, v.mlp_ratio, v.qkv_bias = encoder.num_heads, encoder.mlp_ratio, encoder.qkv_bias
  v.pretrain_grid = encoder.pretrain_grid
  config.model.num_semantics = n
  config.model.num_instances = num_instances
  config.model.object_head_ratio = params["object_head"]["mlp"]["fc1"]["kernel"].shape[1] // d
  config.model.mlp_min_hidden = params["slot_attention"]["mlp"]["fc1"]["kernel"].shape[1]
  config.data.resolution = (side * encoder.patch_size,) * 2
  return smtc.build_model(config), {"params": params}


def _write(tree, output: str) -> None:
  from smtc_jax import checkpoint  # pylint: disable=g-import-not-at-top
  checkpoint.export_params_tree(tree, output)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--kind", required=True,
                      choices=["dino_vit", "dinov2_vit", "moco_resnet50", "smtc"])
  parser.add_argument("--input", required=True, help="a PyTorch .pth file")
  parser.add_argument("--output", required=True, help="the Orbax checkpoint folder to write")
  parser.add_argument("--config", default="",
                      help="dino_vit, dinov2_vit: the config (file[:variant]) whose encoder the "
                           "checkpoint must be; another is refused")
  args = parser.parse_args(argv)
  import torch  # pylint: disable=g-import-not-at-top
  try:
    loaded = torch.load(args.input, map_location="cpu", weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    sys.exit(f"cannot read {args.input}: {e}")
  if isinstance(loaded, dict) and "state_dict" in loaded and args.kind == "moco_resnet50":
    loaded = loaded["state_dict"]
  if args.kind in ("dino_vit", "dinov2_vit"):
    try:
      model, variables = (dino_vit_to_flax if args.kind == "dino_vit" else dinov2_vit_to_flax)(loaded)
    except (KeyError, ValueError) as e:
      sys.exit(f"{args.input}: {e.args[0]}")
    if args.config:
      mismatch = encoder_mismatch(model, load_config(args.config), args.input)
      if mismatch:
        sys.exit(f"{mismatch}; nothing written")
    tree = {"params": {"encoder": variables["params"]}}
  elif args.kind == "moco_resnet50":
    _, variables = resnet50_to_flax(loaded)
    # As smtc_jax.models.resnet.ResNetEncoder nests it.
    tree = {"params": {"encoder": {"backbone": variables["params"]}},
            "batch_stats": {"encoder": {"backbone": variables["batch_stats"]}}}
  else:
    _, variables = smtc_torch_to_flax(loaded)
    tree = {"params": variables["params"], "ema_params": variables["params"]}
  _write(flax.core.unfreeze(tree), args.output)
  print(f"wrote {args.kind} parameters from {args.input} to {args.output}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
