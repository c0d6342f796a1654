"""PyTorch checkpoints -> Flax. The parity tests compare against PyTorch
implementations this project did not write (timm's VisionTransformer, which
loads DINO's keys; torchvision's resnet50, which loads MoCo's) on random
weights; they need torch, torchvision and timm (`.ci/run` installs them and
runs `pytest -m parity`)."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from smtc_jax import convert

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
  from smtc_jax import checkpoint, sharding, train
  model, variables = convert.smtc_torch_to_flax(_fake_smtc_state())
  config = _tiny_reference_config()
  config.init.checkpoint, config.init.scope = str(out), "all"
  state, _ = train.create_state(config, model, train.make_optimizer(config), sharding.make_mesh())
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
  from smtc_jax import sharding, train
  from smtc_jax.models import smtc
  config = tiny.get_config()
  config.model.encoder = "resnet"
  config.data.resolution = (64, 64)
  config.init.checkpoint = str(out)
  model = smtc.build_model(config)
  state, _ = train.create_state(config, model, train.make_optimizer(config), sharding.make_mesh())
  np.testing.assert_allclose(state.params["encoder"]["backbone"]["conv1"]["kernel"],
                             reference.conv1.weight.detach().numpy().transpose(2, 3, 1, 0))
  np.testing.assert_allclose(state.batch_stats["encoder"]["backbone"]["bn1"]["var"],
                             reference.bn1.running_var.numpy())
