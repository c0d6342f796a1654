"""ResNet-50 in torchvision's layout (bottleneck v1.5: the stride sits on the
3x3 convolution), returning the feature maps of layer1..layer4 as res2..res5.

BatchNorm always runs in inference mode with the checkpoint's statistics
(`batch_stats`), also while SMTC trains: per-device batches of a few clips are
too small for reliable batch statistics, and the MoCo features the paper starts
from were learned with these. The output stride is configurable by the strides
of layer3 and layer4 (CRW's label-propagation setting: layer3 stride 1 gives
res4 at stride 8), as CRW does it, without dilation.
"""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

STAGE_BLOCKS = (3, 4, 6, 3)
FEATURE_STAGES = ("res2", "res3", "res4", "res5")  # model.resnet.feature_stage
STAGE_WIDTHS = (64, 128, 256, 512)
EXPANSION = 4


def _conv(features, kernel, stride, name, dtype):
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), use_bias=False, dtype=dtype, name=name)


class Bottleneck(nn.Module):
  width: int
  stride: int = 1
  downsample: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    bn = functools.partial(nn.BatchNorm, use_running_average=True, epsilon=1e-5, dtype=self.dtype)
    y = nn.relu(bn(name="bn1")(_conv(self.width, 1, 1, "conv1", self.dtype)(x)))
    y = nn.relu(bn(name="bn2")(_conv(self.width, 3, self.stride, "conv2", self.dtype)(y)))
    y = bn(name="bn3")(_conv(self.width * EXPANSION, 1, 1, "conv3", self.dtype)(y))
    if self.downsample:
      x = bn(name="downsample_1")(
          _conv(self.width * EXPANSION, 1, self.stride, "downsample_0", self.dtype)(x))
    return nn.relu(x + y)


class ResNet(nn.Module):
  """Input (B, H, W, 3) normalised images; output {'res2'..'res5': NHWC}."""
  stage_blocks: Sequence[int] = STAGE_BLOCKS
  stage_strides: Sequence[int] = (1, 2, 2, 2)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images):
    x = _conv(64, 7, 2, "conv1", self.dtype)(images.astype(self.dtype))
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-5, dtype=self.dtype, name="bn1")(x)
    x = nn.max_pool(nn.relu(x), (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    out = {}
    in_features = 64
    for stage, (blocks, width, stride) in enumerate(
        zip(self.stage_blocks, STAGE_WIDTHS, self.stage_strides)):
      for block in range(blocks):
        first = block == 0
        x = Bottleneck(width, stride if first else 1,
                       downsample=first and (stride != 1 or in_features != width * EXPANSION),
                       dtype=self.dtype, name=f"layer{stage + 1}_{block}")(x)
        in_features = width * EXPANSION
      out[f"res{stage + 2}"] = x
    return out


ResNet50 = functools.partial(ResNet, stage_blocks=STAGE_BLOCKS)


def feature_stride(stage: str, stage_strides: Sequence[int]) -> int:
  """Pixels per cell of stage 'res2'..'res5': the stem's 4 times the stage strides."""
  index = int(stage[3:]) - 1  # res2 -> layer1
  return 4 * int(np.prod(stage_strides[:index]))


def feature_channels(stage: str) -> int:
  """Channels of stage 'res2'..'res5': the stage's bottleneck width times the expansion."""
  return STAGE_WIDTHS[int(stage[3:]) - 2] * EXPANSION


class ResNetEncoder(nn.Module):
  """ResNet as the SMTC encoder: 'tokens' are the feature map of `feature_stage`."""
  stage_blocks: Sequence[int] = STAGE_BLOCKS
  stage_strides: Sequence[int] = (1, 2, 2, 2)
  feature_stage: str = "res4"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, train: bool = False):
    del train  # the same in both modes: BatchNorm statistics stay frozen
    out = ResNet(self.stage_blocks, self.stage_strides, self.dtype, name="backbone")(images)
    return {"tokens": out[self.feature_stage], **out}
