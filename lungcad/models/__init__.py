"""The classifier zoo: LeNet-5, AlexNet, VGG, GoogLeNet, ResNet, WideResNet and U-Net in Keras 3.

Every model is built by name with one signature::

    from lungcad.models import build_model, list_models, model_info
    model = build_model("resnet50", input_shape=(224, 224, 3), classes=1000)
    backbone = build_model("wrn3d", include_top=False, pooling="avg",
                           input_shape=(32, 32, 32, 1), depth=10, width=2)

The models use only ``keras.layers`` and ``keras.ops`` (channels_last), so they
run on the TensorFlow, JAX and PyTorch backends, and save to ``.keras`` files
that load with ``safe_mode=True`` (importing this package registers the custom
layers).
"""
from lungcad.models.layers import LocalResponseNormalization
from lungcad.models.registry import REGISTRY, ModelSpec, build_model, list_models, model_info

__all__ = ["build_model", "list_models", "model_info", "LocalResponseNormalization", "ModelSpec", "REGISTRY"]
