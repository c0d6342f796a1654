"""The paper's configuration of SMTC (ICCV 2023), every constant a named field.

Other config files start from `get_config()` here and change only what differs.
Section / equation numbers refer to `smtc_paper.txt`; `REFERENCE_NOTES.md` lists
where the authors' released code differs (see `configs/reference.py`).
"""

import ml_collections


def get_model_config() -> ml_collections.ConfigDict:
  """Encoder, fusion and semantic-aware masked slot attention (Sec. 3.1-3.3)."""
  m = ml_collections.ConfigDict()
  m.encoder = "vit"  # vit | resnet (the ResNet arrives with the weights issue).
  # ViT-S/16 in DINO's layout (Sec. 4.2).
  m.vit = ml_collections.ConfigDict()
  m.vit.patch_size = 16
  m.vit.dim = 384
  m.vit.depth = 12
  m.vit.num_heads = 6
  m.vit.mlp_ratio = 4.0
  m.vit.qkv_bias = True  # DINO's released ViT-S/16 weights carry qkv biases.
  m.vit.pretrain_grid = 14  # 224 / 16: the grid the position embedding is stored at.
  m.vit.layer_norm_eps = 1e-6
  # What feeds slot attention: the last block's output tokens (paper, F_t of eq. 1)
  # or the last block's attention keys, heads concatenated (authors' code).
  m.features = "tokens"  # tokens | last_keys
  # Correlation C_tj (eq. 2): partner frame j drawn at random with j != t (paper)
  # or the previous frame in the clip, frame 0 paired with the last (code).
  m.corr_partner = "random"  # random | previous
  # The partner's features are resized to the training token grid
  # (data.resolution // patch), so h_c always sees the same width HW' at any
  # input size (code: bilinear resize to resolution / 16).
  # Fusion (eq. 3): R = h_f(F) + h_c(C) with two linear heads (paper), or
  # R = F + h_c(C) with h_f the identity (code).
  m.fusion = "paper"  # paper | reference
  # Slot-attention input (Table 6): fused R, RGB features only, correlation only.
  m.slot_input = "fused"  # fused | rgb | correlation
  # Semantic-aware masked slot attention (Sec. 3.3).
  m.num_semantics = 16  # N Gaussians (Sec. 4.2).
  m.num_instances = 4  # P samples per semantic (Sec. 4.2).
  m.num_iterations = 3  # iterations in each stage (Sec. 3.3).
  m.slot_update = "gru"  # gru (eq. 6) | residual (code: s + upd, then + MLP).
  m.mlp_min_hidden = 128  # slot MLP hidden = max(D, this) (code and [59]).
  m.attn_eps = 1e-8  # epsilon of eq. 5 and 7.
  # Binarisation of the semantic mask for stage 2 (eq. 7): probability > tau
  # (paper, tau = 0.5) or stage-1 logit > tau (code, tau = 0.3).
  m.mask_threshold_on = "prob"  # prob | logit
  m.tau = 0.5
  # Which stages run (Table 5): both (Ours-A), semantic only (Ours-B),
  # instance only (Ours-C: Gaussian samples attend without semantic masks).
  m.stages = "both"  # both | semantic | instance
  # Instance slots: mu + sigma * eps, reparameterised so mu and sigma learn (paper),
  # or drawn without gradient to mu / sigma as torch.normal does (code).
  m.sample_grad = "reparam"  # reparam | none
  # Code's trick: at iteration iters-2 the slots are detached except for a straight
  # path to their initialisation.
  m.detach_trick = False
  # Projection head (D -> 2D -> D) applied to instance slots before L_obj; its
  # output is L2-normalised (code; the paper is silent, we keep it for both).
  m.object_head_ratio = 2
  m.dtype = "float32"  # compute dtype: float32 | bfloat16. Params stay float32.
  return m


def get_loss_config() -> ml_collections.ConfigDict:
  """The three objectives of Sec. 3.4 (eq. 8-13)."""
  l = ml_collections.ConfigDict()
  # Weights of eq. 13; 0 switches an objective off (Table 7).
  l.sem_weight = 1.0
  l.reg_weight = 1.0
  l.obj_weight = 1.0
  # Dense semantic alignment (eq. 8-9).
  l.sinkhorn_epsilon = 0.05
  # Fixed number of Sinkhorn iterations. The paper solves eq. 8 (we run enough
  # iterations for the marginals to hold to 1e-3); the code runs 3.
  l.sinkhorn_iters = 100
  l.sinkhorn_marginals = "uniform"  # uniform (eq. 8) | feature_norm (code)
  # Valid instances (eq. 11). The semantic mask is binarised at probability
  # valid_mask_tau (paper: the same tau = 0.5 as eq. 7; code: 0.3).
  l.valid_mask_tau = 0.5
  l.tau1 = 0.2  # minimum share of the frame covered by the binarised semantic mask.
  l.tau2 = 0.5  # minimum cos(semantic slot, instance slot).
  # Instance consistency (eq. 12): L2 margin (paper) or the code's cosine form.
  l.instance_form = "l2_margin"  # l2_margin | cosine
  # lambda of eq. 12. The paper gives no value; on unit vectors ||a-b|| = 1 is
  # cos = 0.5, the code's cosine margin, so we use 1.0.
  l.margin = 1.0
  l.cosine_margin = 0.5  # the code's relu(cos - 0.5) on negatives.
  # Frame pairs of L_obj: t != j (paper) or all pairs including t == j (code).
  l.obj_same_frame_pairs = False
  l.eps = 1e-8
  return l


def get_data_config() -> ml_collections.ConfigDict:
  """Clip sampling and input size (Sec. 4.2, Table 8)."""
  d = ml_collections.ConfigDict()
  d.num_frames = 4  # T
  d.fps = 4  # sampling rate; with 24-30 fps sources this is a frame stride `gap`.
  d.gap = 4  # frame stride between sampled frames (code's `gap`).
  d.resolution = (256, 256)
  d.mean = (0.485, 0.456, 0.406)  # ImageNet statistics (training and evaluation).
  d.std = (0.229, 0.224, 0.225)
  return d


def get_eval_config() -> ml_collections.ConfigDict:
  e = ml_collections.ConfigDict()
  e.first_stage_only = False  # SMTC-dagger (Table 2): semantic masks only.
  e.instance_score = 0.5  # eq. 11 at inference.
  e.unsupervised_matching = "video"  # video (official) | frame (authors' repo).
  return e


def get_config() -> ml_collections.ConfigDict:
  """The paper's SMTC run (ViT-S/16, 256x256, T=4 at 4 fps, N=16, P=4)."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model = get_model_config()
  config.loss = get_loss_config()
  config.data = get_data_config()
  config.eval = get_eval_config()
  return config
