"""ResNet-50 cut after layer3 (1024 channels, stride 16), the backbone of the ResNet-50 BoQ."""
import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torchvision.models.resnet import Bottleneck, ResNet

from boq_ros.model.inference import InferenceOnly


class ResNetBackbone(InferenceOnly):
    """Keeps torchvision's modules as `net.{0..6}` so the released keys load unchanged."""

    channels = 1024
    stride = 16

    def __init__(self) -> None:
        super().__init__()
        # torchvision's ResNet-50 (v1.5 bottlenecks) built without weights; layer4/avgpool/fc
        # are dropped. Indices 2 (ReLU) and 3 (max-pool) hold no parameters.
        full = ResNet(Bottleneck, [3, 4, 6, 3])
        self.net = nn.Sequential(
            full.conv1, full.bn1, full.relu, full.maxpool, full.layer1, full.layer2, full.layer3)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def fold_batchnorm(backbone: ResNetBackbone) -> ResNetBackbone:
    """Return a copy with every BatchNorm folded into its convolution (eval-mode arithmetic)."""
    folded = copy.deepcopy(backbone)
    net = folded.net
    net[0] = fuse_conv_bn_eval(net[0], net[1])
    net[1] = nn.Identity()
    for layer in (net[4], net[5], net[6]):
        for block in layer:
            for conv_name, bn_name in (('conv1', 'bn1'), ('conv2', 'bn2'), ('conv3', 'bn3')):
                setattr(block, conv_name,
                        fuse_conv_bn_eval(getattr(block, conv_name), getattr(block, bn_name)))
                setattr(block, bn_name, nn.Identity())
            if block.downsample is not None:
                block.downsample = nn.Sequential(
                    fuse_conv_bn_eval(block.downsample[0], block.downsample[1]))
    return folded
