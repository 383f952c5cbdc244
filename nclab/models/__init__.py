"""Networks for the real-data experiments, in plain torch: backbone + deep linear head.

* :class:`MLP`, :class:`ResNet18` (CIFAR stem), :class:`VGG16` (batch norm) -- feature extractors.
* :class:`DeepLinearHead` -- W_1..W_M, with the layer inputs and partial products the NC metrics read.
* :class:`NCNet`, :func:`build_model` -- the two together.
"""

from nclab.models.head import DeepLinearHead
from nclab.models.mlp import MLP
from nclab.models.net import ARCHS, NCNet, build_model
from nclab.models.resnet import ResNet18
from nclab.models.vgg import VGG16

__all__ = ["ARCHS", "MLP", "VGG16", "DeepLinearHead", "NCNet", "ResNet18", "build_model"]
