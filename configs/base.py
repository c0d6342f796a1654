"""The paper's configuration of SMTC (ICCV 2023), every constant a named field.

Other config files start from `get_config()` here and change only what differs.
Section and equation numbers are the paper's; where the authors' released code
differs, the field says so and configs/reference.py selects the code's side
(docs/paper_vs_code.md). Training it needs the data and DINO's encoder:

  python -m smtc_jax.main --config configs/base.py --workdir /runs/smtc \\
      --config.data.path=/data/youtube_vos --config.init.checkpoint=/data/dino_vits16

and its train step alone runs anywhere:

  python -m smtc_jax.bench step --config configs/base.py --config.data.batch_size=2
"""

import ml_collections


def get_model_config() -> ml_collections.ConfigDict:
  """Encoder, fusion and semantic-aware masked slot attention (Sec. 3.1-3.3)."""
  m = ml_collections.ConfigDict()
  m.encoder = "vit"  # vit | resnet
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
  # DINOv2's additions (configs/dinov2.py), off for DINO's ViT: LayerScale on every
  # residual branch, and register tokens after the CLS token (dropped from the
  # token grid that the rest of the model reads).
  m.vit.layer_scale = False
  m.vit.num_registers = 0
  # The attention's implementation, the same function and parameters in each: the
  # ViT's own einsums, or jax.nn.dot_product_attention by XLA or by cuDNN's fused
  # attention (GPUs, model.dtype=bfloat16), the tokens padded to a multiple of
  # attention_pad and masked (cuDNN refuses ViT-S/16's 257 in training).
  m.vit.attention = "einsum"  # einsum | xla | cudnn
  m.vit.attention_pad = 64
  # The einsum attention over this many query rows at a time when the tokens are
  # more (inference sizes; the same rows, a cache-sized working set); 0: all at once.
  m.vit.attention_block = 1024
  # Stochastic depth of the student's encoder in training (rate of the last block,
  # linear from 0 at the first). The paper gives none; DINO's ViT defaults to 0,
  # the authors' copy of it (src/model/vision_transformer.py) to 0.1.
  m.vit.drop_path_rate = 0.0
  # ResNet-50 in torchvision's layout (MoCo weights; BatchNorm statistics frozen).
  m.resnet = ml_collections.ConfigDict()
  m.resnet.stage_blocks = (3, 4, 6, 3)
  m.resnet.stage_strides = (1, 2, 2, 2)
  m.resnet.feature_stage = "res4"  # res2 | res3 | res4 | res5: res4 is stride 16, 1024 channels
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
  # What h_c reads (eq. 2-3): each token's correlation with every partner cell
  # (global: the paper's C_tj, where the match lies in the frame), or the softmax
  # of its cosine to the (2 corr_radius + 1)^2 partner cells around its own place,
  # at corr_temperature (local, ours: how it moved, whatever it looks like).
  m.correlation = "global"  # global | local
  m.corr_radius = 3  # in cells of the training token grid
  m.corr_temperature = 0.1
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
  m.remat = False  # rematerialise encoder blocks in the backward pass (saves memory)
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
  # Ours, not SMTC's (off here): DINO's guard against one semantic taking every
  # token. In the first teacher_centre_steps steps (0: never), L_sem's targets
  # come from the teacher's logits less each semantic's mean logit over the batch
  # (DINO centres always, with a running mean) once the gate has opened: on the
  # first step where one semantic's mean teacher mask over the batch exceeds
  # teacher_centre_share, and from then on through those steps ('latch'), or on
  # each such step alone ('step'). The targets are always the softmax of the
  # logits over teacher_temperature (below 1 sharpens).
  l.teacher_centre_steps = 0
  l.teacher_centre_share = 0.0
  l.teacher_centre_gate = "latch"  # latch | step
  l.teacher_temperature = 1.0
  # Valid instances (eq. 11). The semantic mask is binarised at probability
  # valid_mask_tau (paper: the same tau = 0.5 as eq. 7; code: 0.3).
  l.valid_mask_tau = 0.5
  l.tau1 = 0.2  # minimum share of the frame covered by the binarised semantic mask.
  l.tau2 = 0.5  # minimum cos(semantic slot, instance slot).
  # In training, both criteria with >= (eq. 11; paper) or > (code: train.py
  # filter_valid_instance). Discovery keeps >= (the code's eval_multi.py too).
  l.valid_strict = False
  # Instance consistency (eq. 12): L2 margin (paper) or the code's cosine form.
  l.instance_form = "l2_margin"  # l2_margin | cosine
  # lambda of eq. 12. The paper gives no value; on unit vectors ||a-b|| = 1 is
  # cos = 0.5, the code's cosine margin, so we use 1.0.
  l.margin = 1.0
  l.cosine_margin = 0.5  # the code's relu(cos - 0.5) on negatives.
  # Frame pairs of L_obj: t != j (paper) or all pairs including t == j (code).
  l.obj_same_frame_pairs = False
  l.eps = 1e-8
  # Ours, not SMTC's: a contrastive random walk on the student's encoder features
  # (Jabri et al. 2020), for an encoder that starts without DINO's correspondence.
  l.cycle_weight = 0.0
  l.cycle_temperature = 0.07
  return l


def get_data_config() -> ml_collections.ConfigDict:
  """Clip sampling and input size (Sec. 4.2, Table 8)."""
  d = ml_collections.ConfigDict()
  d.num_frames = 4  # T
  # The sampling rate (Table 8's FPS) as a frame stride between sampled frames
  # (the code's `gap`): 4 in the paper's recipe.
  d.gap = 4
  # Which clips training sees (the paper does not say): each video once per epoch,
  # reshuffled, a clip starting anywhere (ours), or a video drawn with replacement
  # and frames ind-8 ... ind+4 at gap 4, never the last four (code: src/data.py).
  d.clip_sampling = "epoch"  # epoch | reference
  d.resolution = (256, 256)
  d.mean = (0.485, 0.456, 0.406)  # ImageNet statistics (training and evaluation).
  d.std = (0.229, 0.224, 0.225)
  # Where the training videos come from (Sec. 4.1: YouTube-VOS frame folders).
  d.source = "frames"  # frames | tfds | synthetic
  d.path = ""  # frames: the dataset root; synthetic: where to generate ("" = workdir)
  d.layout = "youtube_vos"  # davis | youtube_vos
  d.split = "train"
  d.tfds_name = "davis"
  d.tfds_data_dir = ""
  d.tfds_frames_key = "video/frames"
  d.batch_size = 128  # the GLOBAL batch, split over all processes (Sec. 4.2)
  d.num_workers = 8  # grain worker processes per host (0 = decode in the main process)
  d.prefetch = 2
  # Augmentation (Sec. 4.2 and the code): crop and flip shared by the student and
  # teacher views, colour jitter / grayscale / blur drawn per view.
  a = d.augment = ml_collections.ConfigDict()
  # Random resized crop (Sec. 4.2), or the whole frame resized to `resolution`
  # (code: its crop is commented out in utils.Augment_GPU_pre).
  a.random_crop = True
  # Ours: the paper gives no crop scale (the code's commented-out crop: 0.8-1.0).
  a.crop_scale = (0.35, 1.0)
  a.crop_ratio = (3 / 4, 4 / 3)
  a.hflip_prob = 0.5  # Sec. 4.2 (code: 0, its flip is commented out too)
  a.jitter_prob = 0.8  # code's values: the paper names colour jitter only
  a.jitter = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
  # Hue shift as a rotation of the YIQ chroma plane (ours) or in HSV (code:
  # kornia's ColorJitter, as torchvision's).
  a.hue_space = "yiq"  # yiq | hsv
  a.gray_prob = 0.2
  # Grayscale after colour jitter (ours, torchvision/DINO order) or before it (code).
  a.gray_before_jitter = False
  a.blur_prob = 0.5
  a.blur_sigma = (0.1, 2.0)
  a.blur_kernel_frac = 0.1  # kernel size ~ 10% of the side
  # The procedural set (smtc_jax/data/synthetic.py), used when source='synthetic'.
  s = d.synthetic = ml_collections.ConfigDict()
  s.num_train = 48
  s.num_val = 8
  s.num_frames = 24
  s.size = 128
  s.max_objects = 4
  s.seed = 0
  s.lighting = 0.0  # drift of the light (synthetic.SyntheticSpec)
  s.noise = 0.0  # sensor noise, grey levels
  # shapes (synthetic.py) | photo_blobs | photo_silhouettes (photo_videos.py: objects and
  # backgrounds cut from real photographs; needs pip install -e '.[photo]')
  s.kind = "shapes"
  return d


def get_optim_config() -> ml_collections.ConfigDict:
  """AdamW (Sec. 4.2) with the code's schedule and parameter groups."""
  o = ml_collections.ConfigDict()
  o.learning_rate = 2e-4  # for the global batch of 128 (Sec. 4.2)
  o.final_lr_ratio = 0.1  # cosine from lr to 0.1 lr (code)
  o.warmup_steps = 0
  o.weight_decay = 0.1  # code's value; none on biases and 1-D parameters
  o.b1 = 0.9
  o.b2 = 0.999
  o.eps = 1e-8
  o.encoder_lr_mult = 1.0  # code: 0.01
  # Steps with the encoder frozen (code's faster recipe: 3000). Frozen for real:
  # no encoder backward, and its AdamW state waits untouched for the first
  # trained step (the code runs the backward at lr 0, so its moments are warm).
  o.grad_iter = 0
  o.grad_clip_norm = 0.0  # 0 = no clipping
  return o


def get_train_config() -> ml_collections.ConfigDict:
  t = ml_collections.ConfigDict()
  # Ours: the paper gives no step count (the code's recipe: 10000, configs/reference.py).
  t.num_steps = 30000
  t.ema_momentum = 0.999  # m of eq. 14
  t.ema_scope = "all"  # all (paper) | non_encoder (code: teacher encoder stays at init)
  # Gradient accumulation: clips per device in one micro-batch. Each step scans
  # every device's share of data.batch_size in micro-batches of this size, sums
  # their gradients and updates once, with the whole batch's loss and gradient,
  # so the recipe (global batch, lr) is the same on any number of devices; only
  # memory and speed change. 0, or at least the share: the whole share at once.
  # A size that does not divide the share is an error.
  t.microbatch = 0
  t.log_every = 50
  t.checkpoint_every = 1000
  t.keep_checkpoints = 3
  t.async_checkpoints = True
  # Quick discovery evaluation during training (TensorBoard scalars and an
  # overlay image, smtc_jax/evaluation/monitor.py): every eval_every steps
  # (0 = never) on the first eval_videos videos of the eval benchmark, with the
  # model run at eval_resolution (() = eval.discovery_resolution, as --mode=eval).
  t.eval_every = 0
  t.eval_videos = 4
  t.eval_resolution = ()
  # Local folder for logs; "" = the workdir, or for a gs:// workdir a folder under
  # the temp dir whose logs are copied into the workdir (smtc_jax/run_logs.py).
  t.logdir = ""
  return t


def get_pretrain_config() -> ml_collections.ConfigDict:
  """Encoder pretraining by dense self-distillation (smtc_jax/pretrain.py), for
  runs with no self-supervised checkpoint. The paper starts from DINO's weights,
  so it is off here (num_steps = 0); with num_steps > 0 and no init.checkpoint,
  training runs it first and starts SMTC from its encoder."""
  p = ml_collections.ConfigDict()
  p.num_steps = 0
  p.batch_size = 64  # frames (two views each), global
  p.learning_rate = 1e-3
  p.warmup_steps = 50
  p.weight_decay = 0.04  # DINO's starting value
  p.grad_clip_norm = 3.0  # DINO's
  p.ema_momentum = 0.99
  p.num_prototypes = 64
  p.head_hidden = 256
  p.head_bottleneck = 64
  p.temperature = 0.1  # student softmax temperature (DINO's)
  p.sinkhorn_epsilon = 0.05  # entropic regularisation of the teacher's balanced assignment
  p.sinkhorn_iters = 3  # as SwAV's Sinkhorn-Knopp
  # Views (DINO's global and local crops, both `resolution`): the global one a
  # random crop of crop_scale of the frame's area, the local one a crop inside it
  # whose sides are local_side of the global crop's; the local view's frame is up
  # to frame_gap frames from the global one's (0: the same frame).
  p.resolution = (224, 224)
  p.crop_scale = (0.4, 1.0)
  p.local_side = (0.4, 0.7)
  p.frame_gap = 0
  return p


def get_init_config() -> ml_collections.ConfigDict:
  i = ml_collections.ConfigDict()
  i.checkpoint = ""  # an Orbax params checkpoint (smtc_jax.convert or --mode=export)
  i.scope = "encoder"  # encoder | all: which parameters it provides
  return i


def get_eval_config() -> ml_collections.ConfigDict:
  e = ml_collections.ConfigDict()
  e.first_stage_only = False  # SMTC-dagger (Table 2): semantic masks only.
  # Proposals (Sec. 4.2): the instances valid by eq. 11 as in training (area of the
  # semantic mask binarised at loss.valid_mask_tau >= loss.tau1 and cos >= loss.tau2;
  # paper), or cos >= loss.tau2 alone (code: eval_multi.py's score >= 0.5).
  e.candidates = "eq11"  # eq11 | score
  e.unsupervised_matching = "video"  # video (official) | frame (authors' repo).
  # How multi-object J&F is scored: the official DAVIS-2017 tool on the proposals'
  # label maps (paper), or the authors' copy of it (davis2017/results.py load_davis):
  # each frame's candidate masks nearest-upsampled, min-max normalised and thresholded
  # at 0.3 (they may overlap), matched to objects per frame (unsupervised_matching
  # and max_proposals do not apply). Their released model's figure is theirs: 44.8.
  e.protocol = "official"  # official | authors
  e.params = "params"  # which weights are evaluated: params (student) | ema_params (teacher)
  # The size (H, W) discovery runs the model at; () = data.resolution, the training
  # size (the paper does not say; the code's eval_multi.py runs at (480, 800) after
  # training at 256 x 256: a finer token grid for the same objects).
  e.discovery_resolution = ()
  # synthetic | davis2017 | davis2016 | segtrack_v2 | fbms | jhmdb | vip (evaluation/readers.py)
  e.benchmark = "synthetic"
  e.data_path = ""  # the benchmark's folder; for synthetic, "" = the workdir's synthetic set
  e.split = "val"
  e.max_videos = 0  # 0 = all
  # Proposals kept per video (the largest) and accepted by the scorer: the official
  # unsupervised tool's limit (the authors' copy of it: 300).
  e.max_proposals = 20
  # Background rule for discovery (ours; the paper keeps every eq. 11 candidate):
  # 'border' drops proposals whose share of the frame border is at least
  # border_ratio times their share of the frame (stuff reaches the edges);
  # 'border_components' drops only those proposals' components that touch it.
  e.background = "none"  # none | border | border_components
  e.border_ratio = 0.5
  # How a proposal keeps its id through the video (the paper and the code do not
  # say): 'slots' (the instance slots' own ids, linked clip to clip by their object
  # vectors within each semantic) or 'components' (the proposals' union cut into
  # connected components of at least track_min_area of the frame, linked frame to
  # frame by mask IoU >= track_min_iou, a lost object picked up again within
  # track_max_gap frames).
  e.tracks = "slots"  # slots | components
  e.track_min_area = 0.0025
  e.track_min_iou = 0.2
  e.track_max_gap = 3
  # With components: a component holding at least track_merge_share of the last
  # masks of two or more tracks (objects that came to touch) is cut between them,
  # each pixel to the nearest of those masks (0: never cut). Only tracks seen whole
  # in at least track_merge_min_frames frames count, so fragments of one object
  # seen apart for a frame do not cut it in two.
  e.track_merge_share = 0.3
  e.track_merge_min_frames = 2
  # With components and merge cuts: track the video backwards first and link the
  # segments that pass cut forwards, so objects that touch at the start and part
  # later are cut too, not only those that part first and touch later.
  e.track_backward_pass = False
  # With components: each proposal's gaps narrower than about twice this share of
  # the frame's shorter side are closed, and holes in their union filled, before the
  # union is cut into components (0: as predicted): the stripes and dots of a
  # textured object that its masks leave out.
  e.track_gap_radius = 0.0
  # Label propagation (CRW protocol; the code's eval_prop.sh).
  # The features it compares (models/smtc.py FEATURES): the encoder's output tokens
  # F_t (eq. 1; paper), or the last block's output before the final LayerNorm
  # (code: eval_prop.py calls model.encoder, whose forward skips its norm).
  e.prop_features = "tokens"  # tokens | prenorm_tokens | last_keys
  e.prop_video_len = 20
  e.prop_radius = 7.0  # in feature cells
  e.prop_topk = 7
  e.prop_temperature = 0.2
  # 0 = frames at their own size (DAVIS 480p). Large frames (VIP is up to 1080p) need
  # a smaller size: the affinity of one frame is (cells x 21 frames x cells) floats.
  e.prop_short_side = 0
  # Pose tracking (JHMDB): joints as Gaussian heat maps on the feature grid.
  e.pose_sigma = 0.5  # in feature cells
  # A joint's location: the value-weighted mean of its top cells (5: a cell and its
  # 4 neighbours, unbiased for a Gaussian; 2-4 would break ties by cell order).
  e.pose_topk = 5
  e.pck_thresholds = (0.1, 0.2)
  e.overlays = 4  # videos drawn as PNG strips
  # Also score the trained model's discovery with the paper's inference (eq. 11
  # candidates, no background rule, the slots' ids; predictor.PAPER_INFERENCE) from
  # the same forward passes: a row 'trained**' beside ours, where ours differs.
  e.paper_inference = True
  # Keep the untrained model's per-video scores in $SMTC_JAX_CACHE/untrained (default
  # ~/.cache/smtc_jax/untrained) and reuse them in later evaluations that share everything they
  # depend on (model, inference and eval fields, seed, the video, the code, JAX):
  # one model's forward passes instead of two (evaluation/score_cache.py).
  e.reuse_untrained = True
  return e


def get_predict_config() -> ml_collections.ConfigDict:
  """--mode=predict: one's own video segmented by the trained model (smtc_jax/predict.py),
  the proposals and their ids by the eval.* rules."""
  p = ml_collections.ConfigDict()
  p.input = ""  # a video file (mp4, webm, avi, ...) or a folder of .jpg / .png frames, by name
  p.output = ""  # a new or empty folder for the masks, the overlay video and the table
  p.fps = 24.0  # the overlay video's frame rate for a folder of frames (a video keeps its own)
  # Frames segmented at a time (a multiple of data.num_frames): memory is bounded by a
  # chunk, not the video; ids are linked from chunk to chunk by mask IoU.
  p.chunk_frames = 48
  return p


def get_config() -> ml_collections.ConfigDict:
  """The paper's SMTC run (ViT-S/16, 256x256, T=4 at 4 fps, N=16, P=4)."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model = get_model_config()
  config.loss = get_loss_config()
  config.data = get_data_config()
  config.eval = get_eval_config()
  config.optim = get_optim_config()
  config.train = get_train_config()
  config.pretrain = get_pretrain_config()
  config.init = get_init_config()
  config.predict = get_predict_config()
  return config
