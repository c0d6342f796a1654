"""PyTorch checkpoints to Flax: DINO ViTs, MoCo / torchvision ResNet-50, and the
authors' SMTC model (for `configs/reference.py`).

  python -m smtc_jax.convert --kind dino_vit|moco_resnet50|smtc --input X.pth --output DIR

writes an Orbax params checkpoint that `--config.init.checkpoint=DIR` loads
(scope 'encoder' for the backbones, 'all' for SMTC) and that evaluation reads.
Every function takes a mapping of names to arrays (numpy arrays or torch
tensors, the original key names) and reports unknown or missing keys by name.
"""

import argparse
import math
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


def _vit_params(get, depth: int, qkv_bias: bool) -> dict:
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
  return vit.VisionTransformer(patch_size=patch, dim=dim, depth=depth, num_heads=dim // 64,
                               mlp_ratio=hidden / dim, qkv_bias="blocks.0.attn.qkv.bias" in tensors,
                               pretrain_grid=grid)


def dino_vit_to_flax(state_dict: Mapping[str, Any]):
  """DINO ViT weights -> (VisionTransformer, {'params': ...})."""
  tensors = _strip(state_dict, DINO_PREFIXES)
  model = _vit_from_shapes(tensors)
  get = _Consumer(tensors, "DINO ViT checkpoint")
  params = _vit_params(get, model.depth, model.qkv_bias)
  get.check_all_used(ignore=(r"head\..*",))  # a classification head is not used
  return model, {"params": params}


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
  parser.add_argument("--kind", required=True, choices=["dino_vit", "moco_resnet50", "smtc"])
  parser.add_argument("--input", required=True, help="a PyTorch .pth file")
  parser.add_argument("--output", required=True, help="the Orbax checkpoint folder to write")
  args = parser.parse_args(argv)
  import torch  # pylint: disable=g-import-not-at-top
  try:
    loaded = torch.load(args.input, map_location="cpu", weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    sys.exit(f"cannot read {args.input}: {e}")
  if isinstance(loaded, dict) and "state_dict" in loaded and args.kind == "moco_resnet50":
    loaded = loaded["state_dict"]
  if args.kind == "dino_vit":
    _, variables = dino_vit_to_flax(loaded)
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
