"""PyTorch checkpoints -> Flax. The parity tests compare against PyTorch
implementations this project did not write (timm's VisionTransformer, which
loads DINO's keys, and its DINOv2 models, fed DINOv2's own layout read back;
torchvision's resnet50, which loads MoCo's) on random weights; they need torch, torchvision and timm (`.ci/run` installs them and
runs `pytest -m parity`)."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from smtc_jax import convert
from smtc_jax.models import vit

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rel_err(ours, reference) -> float:
  ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
  return float(np.abs(ours - reference).max() / np.abs(reference).max())


def _randomize(module, torch, seed=0):
  """Every parameter and BN statistic random, so no layout mistake hides."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, tensor in module.state_dict().items():
      if tensor.dtype.is_floating_point:
        if name.endswith("running_var"):
          tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
        else:
          tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.1)


def _dino_pos_embed(torch, pos_embed, h, w):
  """DINO's interpolate_pos_encoding, with torch's own bicubic."""
  f = torch.nn.functional
  n = int(round((pos_embed.shape[1] - 1) ** 0.5))
  patch = pos_embed[:, 1:].reshape(1, n, n, -1).permute(0, 3, 1, 2)
  patch = f.interpolate(patch, scale_factor=((h + 0.1) / n, (w + 0.1) / n), mode="bicubic")
  assert patch.shape[-2:] == (h, w)
  return torch.cat([pos_embed[:, :1], patch.permute(0, 2, 3, 1).reshape(1, h * w, -1)], dim=1)


@pytest.mark.parity
@pytest.mark.parametrize("height,width", [(224, 224), (160, 240)])
def test_dino_vit_matches_timm(height, width):
  torch = pytest.importorskip("torch")
  timm_vit = pytest.importorskip("timm.models.vision_transformer")
  reference = timm_vit.VisionTransformer(img_size=224, patch_size=16, embed_dim=384, depth=12,
                                         num_heads=6, qkv_bias=True, num_classes=0)
  _randomize(reference, torch)
  state = {k: v.clone() for k, v in reference.state_dict().items()}
  model, variables = convert.dino_vit_to_flax(state)
  h, w = height // 16, width // 16
  if (h, w) != (14, 14):  # the reference at the new grid, DINO's interpolation in torch
    reference = timm_vit.VisionTransformer(img_size=(height, width), patch_size=16, embed_dim=384,
                                           depth=12, num_heads=6, qkv_bias=True, num_classes=0)
    state["pos_embed"] = _dino_pos_embed(torch, state["pos_embed"], h, w)
    reference.load_state_dict(state)
  reference.eval()
  captured = {}
  reference.blocks[-1].attn.qkv.register_forward_hook(
      lambda module, inputs, output: captured.update(qkv=output))
  reference.blocks[-1].register_forward_hook(  # the last block's output, before the norm
      lambda module, inputs, output: captured.update(prenorm=output))
  images = np.random.default_rng(0).normal(size=(2, height, width, 3)).astype(np.float32)
  with torch.no_grad():
    tokens = reference.forward_features(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
  keys = captured["qkv"].numpy()[:, 1:, 384:768]
  out = jax.jit(model.apply)(variables, jnp.asarray(images))
  errors = {"tokens": _rel_err(out["tokens"], tokens[:, 1:].reshape(2, h, w, 384)),
            "cls": _rel_err(out["cls"], tokens[:, 0]),
            "keys": _rel_err(out["keys"], keys.reshape(2, h, w, 384)),
            "prenorm_tokens": _rel_err(out["prenorm_tokens"],
                                       captured["prenorm"].numpy()[:, 1:].reshape(2, h, w, 384))}
  print(f"ViT-S/16 {height}x{width} relative errors vs timm: {errors}")
  assert max(errors.values()) < 1e-4


def _official_dinov2_state(torch, timm_state, seed=1):
  """A timm DINOv2 state dict in DINOv2's own layout (what torch.hub's
  dinov2_vits14 etc. load): timm's checkpoint filter read backwards. DINOv2 adds
  the position embedding of CLS to CLS before the registers join, so with
  registers timm stores that sum as its cls_token and drops CLS's entry from
  pos_embed; here CLS's entry is random and cls_token the difference. Plus the
  mask_token that DINOv2's checkpoints carry and the converter skips."""
  state = {k: v.clone() for k, v in timm_state.items()}
  gen = torch.Generator().manual_seed(seed)
  dim = state["cls_token"].shape[-1]
  state["mask_token"] = torch.randn((1, dim), generator=gen)
  if "reg_token" in state:
    state["register_tokens"] = state.pop("reg_token")
    cls_pos = torch.randn((1, 1, dim), generator=gen) * 0.1
    state["cls_token"] = state["cls_token"] - cls_pos
    state["pos_embed"] = torch.cat([cls_pos, state["pos_embed"]], dim=1)
  return state


def _timm_dinov2_at(timm, name, official, h, w):
  """timm's `name` for a (14h, 14w) input, its position embedding resized from
  the official one by DINOv2's interpolate_pos_encoding (released settings:
  offset 0.1, no antialiasing), not by timm's own resampling."""
  torch = pytest.importorskip("torch")
  model = timm.create_model(name, pretrained=False, num_classes=0, img_size=(14 * h, 14 * w))
  pos = _dino_pos_embed(torch, official["pos_embed"], h, w)
  state = {k: v for k, v in official.items() if k not in ("mask_token", "register_tokens")}
  if "register_tokens" in official:  # back to timm's layout (CLS's position inside cls_token)
    state["reg_token"] = official["register_tokens"]
    state["cls_token"] = official["cls_token"] + pos[:, :1]
    pos = pos[:, 1:]
  state["pos_embed"] = pos
  model.load_state_dict(state)
  return model.eval()


@pytest.mark.parity
@pytest.mark.parametrize("name", ["vit_small_patch14_dinov2", "vit_small_patch14_reg4_dinov2",
                                  "vit_base_patch14_reg4_dinov2"])
def test_dinov2_vit_matches_timm(name):
  torch = pytest.importorskip("torch")
  timm = pytest.importorskip("timm")
  released = timm.create_model(name, pretrained=False, num_classes=0)  # at 518 px: 37 x 37
  _randomize(released, torch)
  official = _official_dinov2_state(torch, released.state_dict())
  model, variables = convert.dinov2_vit_to_flax(official)
  registers = 4 if "reg4" in name else 0
  dim = official["cls_token"].shape[-1]
  assert (model.patch_size, model.pretrain_grid, model.num_registers, model.dim) == (
      14, 37, registers, dim)
  assert model.layer_scale and model.mlp_ratio == 4.0
  h, w = 16, 22  # 224 x 308: the position embedding is resized, and not to a square
  # Our resize of the position embedding against DINOv2's torch.nn.functional.interpolate.
  ours = vit.interpolate_pos_embed(jnp.asarray(official["pos_embed"].numpy()[0, 1:]), 37, h, w)
  theirs = _dino_pos_embed(torch, official["pos_embed"], h, w)[0, 1:].numpy()
  assert np.abs(np.asarray(ours) - theirs).max() < 1e-5
  reference = _timm_dinov2_at(timm, name, official, h, w)
  captured = {}
  reference.blocks[-1].attn.qkv.register_forward_hook(
      lambda module, inputs, output: captured.update(qkv=output))
  reference.blocks[-1].register_forward_hook(
      lambda module, inputs, output: captured.update(prenorm=output))
  images = np.random.default_rng(0).normal(size=(2, 14 * h, 14 * w, 3)).astype(np.float32)
  with torch.no_grad():
    tokens = reference.forward_features(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
  first = 1 + registers  # CLS, the registers, then the patches
  grid = lambda x: x[:, first:].reshape(2, h, w, dim)
  out = jax.jit(model.apply)(variables, jnp.asarray(images))
  errors = {"tokens": _rel_err(out["tokens"], grid(tokens)), "cls": _rel_err(out["cls"], tokens[:, 0]),
            "keys": _rel_err(out["keys"], grid(captured["qkv"].numpy()[..., dim:2 * dim])),
            "prenorm_tokens": _rel_err(out["prenorm_tokens"], grid(captured["prenorm"].numpy()))}
  print(f"{name} 224x308 relative errors vs timm: {errors}")
  assert max(errors.values()) < 1e-4


@pytest.mark.parity
@pytest.mark.parametrize("height,width,crw", [(224, 224, False), (160, 224, False), (128, 160, True)])
def test_resnet50_matches_torchvision(height, width, crw):
  torch = pytest.importorskip("torch")
  torchvision = pytest.importorskip("torchvision")
  reference = torchvision.models.resnet50(weights=None)
  _randomize(reference, torch)
  state = {f"module.encoder_q.{k}": v for k, v in reference.state_dict().items()}  # MoCo keys
  strides = (1, 2, 2, 2)
  if crw:  # CRW's label-propagation setting: layer3 at stride 1 -> res4 at stride 8
    reference.layer3[0].conv2.stride = (1, 1)
    reference.layer3[0].downsample[0].stride = (1, 1)
    strides = (1, 2, 1, 2)
  reference.eval()
  model, variables = convert.resnet50_to_flax(state, stage_strides=strides)
  captured = {}
  for i in range(1, 5):
    getattr(reference, f"layer{i}").register_forward_hook(
        lambda module, inputs, output, i=i: captured.update({f"res{i + 1}": output}))
  images = np.random.default_rng(1).normal(size=(2, height, width, 3)).astype(np.float32)
  with torch.no_grad():
    reference(torch.from_numpy(images).permute(0, 3, 1, 2))
  out = jax.jit(model.apply)(variables, jnp.asarray(images))
  errors = {}
  for name, expected in captured.items():
    expected = expected.permute(0, 2, 3, 1).numpy()
    assert out[name].shape == expected.shape, name
    errors[name] = _rel_err(out[name], expected)
  print(f"ResNet-50 {height}x{width} strides {strides} relative errors vs torchvision: {errors}")
  assert max(errors.values()) < 1e-4
  assert out["res4"].shape[1] == height // (8 if crw else 16)


def _fake_vit_state(dim=32, depth=2, grid=4, patch=8):
  rng = np.random.default_rng(0)
  r = lambda *shape: rng.normal(size=shape).astype(np.float32)
  state = {"cls_token": r(1, 1, dim), "pos_embed": r(1, grid * grid + 1, dim),
           "patch_embed.proj.weight": r(dim, 3, patch, patch), "patch_embed.proj.bias": r(dim),
           "norm.weight": r(dim), "norm.bias": r(dim)}
  for i in range(depth):
    b = f"blocks.{i}"
    for name, shape in [("norm1", None), ("norm2", None)]:
      state[f"{b}.{name}.weight"], state[f"{b}.{name}.bias"] = r(dim), r(dim)
    state[f"{b}.attn.qkv.weight"], state[f"{b}.attn.qkv.bias"] = r(3 * dim, dim), r(3 * dim)
    state[f"{b}.attn.proj.weight"], state[f"{b}.attn.proj.bias"] = r(dim, dim), r(dim)
    state[f"{b}.mlp.fc1.weight"], state[f"{b}.mlp.fc1.bias"] = r(4 * dim, dim), r(4 * dim)
    state[f"{b}.mlp.fc2.weight"], state[f"{b}.mlp.fc2.bias"] = r(dim, 4 * dim), r(dim)
  return state


def _fake_dinov2_state(dim=64, depth=2, grid=4, patch=7, registers=4):
  """DINOv2's layout at toy sizes: DINO's keys plus LayerScale, registers and mask_token."""
  rng = np.random.default_rng(2)
  state = _fake_vit_state(dim=dim, depth=depth, grid=grid, patch=patch)
  state["mask_token"] = rng.normal(size=(1, dim)).astype(np.float32)
  if registers:
    state["register_tokens"] = rng.normal(size=(1, registers, dim)).astype(np.float32)
  for i in range(depth):
    for name in ("ls1", "ls2"):
      state[f"blocks.{i}.{name}.gamma"] = rng.normal(size=(dim,)).astype(np.float32)
  return state


def test_dinov2_checkpoint_gives_its_size_registers_and_layer_scale():
  for registers in (0, 4):
    model, variables = convert.dinov2_vit_to_flax(_fake_dinov2_state(registers=registers))
    assert (model.patch_size, model.pretrain_grid, model.num_registers) == (7, 4, registers)
    assert model.layer_scale and model.num_heads == 1  # 64-wide heads, as in DINOv2
    params = variables["params"]
    assert ("register_tokens" in params) == bool(registers)
    np.testing.assert_array_equal(params["blocks_1"]["ls2"]["gamma"],
                                  _fake_dinov2_state(registers=registers)["blocks.1.ls2.gamma"])
    out = model.apply(variables, jnp.zeros((1, 21, 28, 3)))
    assert out["tokens"].shape == (1, 3, 4, 64)


def test_dinov2_conversion_refuses_other_checkpoints_in_one_line():
  with pytest.raises(ValueError, match="no blocks.0.ls1.gamma.*--kind dino_vit"):
    convert.dinov2_vit_to_flax(_fake_vit_state())  # DINO's, without LayerScale
  swiglu = _fake_dinov2_state()
  swiglu["blocks.0.mlp.w12.weight"] = swiglu.pop("blocks.0.mlp.fc1.weight")
  with pytest.raises(ValueError, match="SwiGLU"):
    convert.dinov2_vit_to_flax(swiglu)
  from configs import dinov2
  model, _ = convert.dinov2_vit_to_flax(_fake_dinov2_state(dim=384, grid=37, patch=14))
  config = dinov2.get_config("vits14")
  line = convert.encoder_mismatch(model, config, "x.pth")
  assert "\n" not in line and "model.vit.num_registers=0 (checkpoint: 4)" in line
  assert "model.vit.depth=12 (checkpoint: 2)" in line
  config.model.vit.depth, config.model.vit.num_registers = 2, 4
  assert convert.encoder_mismatch(model, config, "x.pth") is None


def _fake_smtc_state(n=4, dim=64):
  rng = np.random.default_rng(1)
  r = lambda *shape: rng.normal(size=shape).astype(np.float32)
  state = {f"encoder.{k}": v for k, v in _fake_vit_state(dim=dim, grid=4).items()}
  sa = "slot_attention"
  state.update({f"{sa}.slots_mu": r(1, n, 1, dim), f"{sa}.slots_sigma": r(1, n, 1, dim) * 0.1,
                "transport_proj.weight": r(dim, 16, 1), "transport_proj.bias": r(dim)})
  for name in ("norm_input", "norm_slots", "norm_pre_ff"):
    state[f"{sa}.{name}.weight"], state[f"{sa}.{name}.bias"] = r(dim), r(dim)
  for name in ("project_q", "project_k", "project_v"):
    state[f"{sa}.{name}.weight"], state[f"{sa}.{name}.bias"] = r(dim, dim), r(dim)
  state[f"{sa}.mlp.0.weight"], state[f"{sa}.mlp.0.bias"] = r(dim, dim), r(dim)
  state[f"{sa}.mlp.2.weight"], state[f"{sa}.mlp.2.bias"] = r(dim, dim), r(dim)
  state["mlp_slot.0.weight"], state["mlp_slot.0.bias"] = r(2 * dim, dim), r(2 * dim)
  state["mlp_slot.2.weight"], state["mlp_slot.2.bias"] = r(dim, 2 * dim), r(dim)
  return {"model_state_dict": state}


def test_unknown_and_missing_keys_are_reported_by_name():
  state = _fake_vit_state()
  state["blocks.0.extra.weight"] = np.zeros(3, np.float32)
  with pytest.raises(ValueError, match="blocks.0.extra.weight"):
    convert.dino_vit_to_flax(state)
  del state["blocks.0.extra.weight"]
  del state["blocks.1.mlp.fc2.bias"]
  with pytest.raises(KeyError, match="blocks.1.mlp.fc2.bias"):
    convert.dino_vit_to_flax(state)


def test_smtc_checkpoint_converts_to_the_reference_model():
  model, variables = convert.smtc_torch_to_flax(_fake_smtc_state())
  assert model.corr_grid == (4, 4) and model.features == "last_keys"
  assert model.slot_attention.num_semantics == 4
  clip = jax.random.normal(jax.random.PRNGKey(0), (1, 2, 32, 32, 3))
  noise = jax.random.normal(jax.random.PRNGKey(1), (1, 2, 4, 3, 64))  # P = 3 from the draw
  out = model.apply(variables, clip, instance_noise=noise)
  assert out["features"].shape == (1, 2, 16, 64)
  assert out["semantic_logits"].shape == (1, 2, 4, 16)
  assert out["instance_slots"].shape == (1, 2, 4, 3, 64)
  assert out["objects"].shape == (1, 2, 4, 3, 64)


@pytest.mark.parity
def test_conversion_cli_round_trips_into_training_and_evaluation(tmp_path):
  torch = pytest.importorskip("torch")
  pth = tmp_path / "smtc.pth"
  torch.save({"model_state_dict": {k: torch.from_numpy(v) for k, v in
                                   _fake_smtc_state()["model_state_dict"].items()}}, pth)
  out = tmp_path / "converted"
  proc = subprocess.run([sys.executable, "-m", "smtc_jax.convert", "--kind", "smtc", "--input",
                         str(pth), "--output", str(out)], cwd=REPO, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-2000:]
  from smtc_jax import checkpoint, sharding
  from smtc_jax.training import state as state_lib
  model, variables = convert.smtc_torch_to_flax(_fake_smtc_state())
  config = _tiny_reference_config()
  config.init.checkpoint, config.init.scope = str(out), "all"
  state, _ = state_lib.create_state(config, model, state_lib.make_optimizer(config),
                                    sharding.make_mesh())
  np.testing.assert_array_equal(state.params["slot_attention"]["mu"],
                                variables["params"]["slot_attention"]["mu"])
  loaded = checkpoint.load_params(str(out))  # what evaluation reads
  np.testing.assert_array_equal(loaded["ema_params"]["h_c"]["kernel"],
                                variables["params"]["h_c"]["kernel"])


def _tiny_reference_config():
  """configs/reference.py at the sizes of _fake_smtc_state."""
  from configs import reference
  config = reference.get_config()
  v = config.model.vit
  v.patch_size, v.dim, v.depth, v.num_heads, v.pretrain_grid = 8, 64, 2, 1, 4
  config.model.num_semantics, config.model.num_instances = 4, 3
  config.model.mlp_min_hidden = 64
  config.data.resolution = (32, 32)
  return config


@pytest.mark.parity
def test_dinov2_conversion_cli_checks_the_config_and_fits_its_model(tmp_path):
  torch = pytest.importorskip("torch")
  from configs import dinov2
  from smtc_jax import checkpoint
  from smtc_jax.models import smtc
  pth = tmp_path / "dinov2_vits14_reg4_pretrain.pth"
  state = _fake_dinov2_state(dim=384, depth=12, grid=37, patch=14, registers=4)
  torch.save({k: torch.from_numpy(v) for k, v in state.items()}, pth)
  run = lambda config, out: subprocess.run(
      [sys.executable, "-m", "smtc_jax.convert", "--kind", "dinov2_vit", "--input", str(pth),
       "--output", str(out), "--config", config], cwd=REPO, capture_output=True, text=True)
  refused = run("configs/dinov2.py", tmp_path / "refused")  # vits14: no registers
  assert refused.returncode != 0 and not (tmp_path / "refused").exists()
  assert refused.stderr.strip().count("\n") == 0
  assert "model.vit.num_registers=0 (checkpoint: 4)" in refused.stderr
  done = run("configs/dinov2.py:vits14_reg4", tmp_path / "ok")
  assert done.returncode == 0, done.stderr[-2000:]
  config = dinov2.get_config("vits14_reg4")
  abstract = smtc.abstract_variables(config, smtc.build_model(config))
  loaded = checkpoint.load_params(str(tmp_path / "ok"))
  checkpoint._check_same_shapes("encoder", abstract["params"]["encoder"],  # pylint: disable=protected-access
                                loaded["params"]["encoder"], str(tmp_path / "ok"))


@pytest.mark.parity
def test_moco_checkpoint_initialises_the_resnet_encoder(tmp_path):
  torch = pytest.importorskip("torch")
  torchvision = pytest.importorskip("torchvision")
  reference = torchvision.models.resnet50(weights=None)
  _randomize(reference, torch)
  pth = tmp_path / "moco.pth.tar"
  torch.save({"state_dict": {f"module.encoder_q.{k}": v for k, v in
                             reference.state_dict().items()}}, pth)
  out = tmp_path / "moco_flax"
  proc = subprocess.run([sys.executable, "-m", "smtc_jax.convert", "--kind", "moco_resnet50",
                         "--input", str(pth), "--output", str(out)], cwd=REPO,
                        capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-2000:]
  from configs import tiny
  from smtc_jax import sharding
  from smtc_jax.models import smtc
  from smtc_jax.training import state as state_lib
  config = tiny.get_config()
  config.model.encoder = "resnet"
  config.data.resolution = (64, 64)
  config.init.checkpoint = str(out)
  model = smtc.build_model(config)
  state, _ = state_lib.create_state(config, model, state_lib.make_optimizer(config),
                                    sharding.make_mesh())
  np.testing.assert_allclose(state.params["encoder"]["backbone"]["conv1"]["kernel"],
                             reference.conv1.weight.detach().numpy().transpose(2, 3, 1, 0))
  np.testing.assert_allclose(state.batch_stats["encoder"]["backbone"]["bn1"]["var"],
                             reference.bn1.running_var.numpy())
