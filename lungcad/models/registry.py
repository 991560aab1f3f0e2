"""The registry of the zoo: one name per model, one builder signature for all.

>>> from lungcad.models import build_model, list_models, model_info
>>> backbone = build_model("wrn3d", include_top=False, pooling="avg",
...                        input_shape=(32, 32, 32, 1), depth=10, width=2)
"""
from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import keras

from lungcad.models.alexnet import alexnet
from lungcad.models.common import load_weights
from lungcad.models.dcgan import dcgan_discriminator, dcgan_generator
from lungcad.models.googlenet import googlenet
from lungcad.models.lenet import lenet5
from lungcad.models.resnet import RESNET_LAYOUTS, resnet
from lungcad.models.unet import unet
from lungcad.models.vgg import VGG_BLOCKS, vgg
from lungcad.models.wideresnet import wide_resnet

#: Keywords that every builder takes; the others are family keywords.
STANDARD_KEYWORDS = ("input_shape", "classes", "include_top", "pooling", "classifier_activation", "name")


@dataclass(frozen=True)
class ModelSpec:
    """One registered model.

    Attributes
    ----------
    name : str
        Registry name (lower case).
    family : str
        Family (module) name, e.g. ``"resnet"``.
    dims : int
        2 (images) or 3 (volumes).
    builder : callable
        The family builder.
    input_shape : tuple
        Default input shape (channels_last, no batch axis).
    classes : int
        Default number of classes (output channels for a U-Net).
    description : str
        One line for ``lungcad zoo list``.
    fixed : Mapping
        Builder keywords that this name fixes (its architecture).
    defaults : Mapping
        Default values of free family keywords that differ from the builder's.
    """

    name: str
    family: str
    dims: int
    builder: Callable[..., keras.Model]
    input_shape: tuple
    classes: int
    description: str
    fixed: Mapping[str, Any] = field(default_factory=dict)
    defaults: Mapping[str, Any] = field(default_factory=dict)

    def family_keywords(self) -> dict[str, Any]:
        """Free family keywords with their defaults for this name."""
        params = inspect.signature(self.builder).parameters
        free = {k: p.default for k, p in params.items()
                if k not in STANDARD_KEYWORDS and k not in self.fixed}
        free.update(self.defaults)
        return free


def _specs() -> list[ModelSpec]:
    specs = [
        ModelSpec("lenet5", "lenet", 2, lenet5, (32, 32, 1), 10,
                  "LeNet-5 (LeCun 1998): C1-S2-C3-S4-C5-F6, 61,706 parameters at 32x32x1, 10 classes"),
        ModelSpec("alexnet", "alexnet", 2, alexnet, (227, 227, 3), 1000,
                  "AlexNet (Krizhevsky 2012): 5 conv + 3 dense, LRN, two towers as grouped convolutions"),
    ]
    for depth, blocks in VGG_BLOCKS.items():
        specs.append(ModelSpec(f"vgg{depth}", "vgg", 2, vgg, (224, 224, 3), 1000,
                               f"VGG{depth} (Simonyan 2015): {sum(blocks)} 3x3 convolutions in 5 blocks + 3 dense",
                               fixed={"convs_per_block": blocks}))
    specs.append(ModelSpec("googlenet", "googlenet", 2, googlenet, (224, 224, 3), 1000,
                           "GoogLeNet / Inception v1 (Szegedy 2015), optional auxiliary classifiers"))
    for version, preact in (("", False), ("v2", True)):
        for depth, (block, blocks) in RESNET_LAYOUTS.items():
            if preact and block == "basic":
                continue
            kind = "pre-activation v2" if preact else "v1"
            specs.append(ModelSpec(f"resnet{depth}{version}", "resnet", 2, resnet, (224, 224, 3), 1000,
                                   f"ResNet-{depth} {kind} ({block} blocks {'-'.join(map(str, blocks))})",
                                   fixed={"blocks": blocks, "block": block, "preact": preact, "dims": 2}))
    specs += [
        ModelSpec("resnet18-3d", "resnet", 3, resnet, (64, 64, 64, 1), 2,
                  "ResNet-18 v1 on volumes (3D convolutions)",
                  fixed={"blocks": RESNET_LAYOUTS[18][1], "block": "basic", "preact": False, "dims": 3}),
        ModelSpec("wrn2d", "wideresnet", 2, wide_resnet, (32, 32, 3), 10,
                  "WideResNet WRN-d-k (Zagoruyko 2016), CIFAR layout; depth, width, dropout", fixed={"dims": 2}),
        ModelSpec("wrn3d", "wideresnet", 3, wide_resnet, (32, 32, 32, 1), 2,
                  "WideResNet WRN-d-k on volumes (3D convolutions); depth, width, dropout", fixed={"dims": 3}),
        ModelSpec("wrn-28-10", "wideresnet", 2, wide_resnet, (32, 32, 3), 10,
                  "WRN-28-10, the CIFAR model of the paper (36.5 M parameters)",
                  fixed={"dims": 2, "depth": 28, "width": 10}),
        ModelSpec("unet2d", "unet", 2, unet, (None, None, 1), 1,
                  "U-Net on images; depth, base_filters, batch_norm, dropout", fixed={"dims": 2}),
        ModelSpec("unet2d-classic", "unet", 2, unet, (None, None, 1), 1,
                  "U-Net, classic 32->512 layout (depth 4, 32 base filters, no batch norm)",
                  fixed={"dims": 2, "depth": 4, "base_filters": 32}, defaults={"batch_norm": False}),
        ModelSpec("unet3d", "unet", 3, unet, (None, None, None, 1), 1,
                  "U-Net on volumes (3D convolutions); depth, base_filters, batch_norm, dropout",
                  fixed={"dims": 3}, defaults={"depth": 3, "base_filters": 16}),
    ]
    for prefix, conditional in (("dcgan", 0), ("cdcgan", 4)):
        kind = "conditional (diameter and type, Han 2019) " if conditional else ""
        for suffix, dims, image in (("", 2, (64, 64, 3)), ("-3d", 3, (32, 32, 32, 1))):
            fixed = {"dims": dims}
            defaults = {"condition_dim": conditional} if conditional else {}
            specs += [
                ModelSpec(f"{prefix}-generator{suffix}", "dcgan", dims, dcgan_generator, (100,), None,
                          f"DCGAN {kind}generator (Radford 2016): noise 100 to {'x'.join(map(str, image))}; "
                          "output_shape, base_filters", fixed=fixed, defaults={**defaults, "output_shape": image}),
                ModelSpec(f"{prefix}-discriminator{suffix}", "dcgan", dims, dcgan_discriminator, image, 1,
                          f"DCGAN {kind}discriminator (Radford 2016): strided 4x4 convolutions to one logit; "
                          "base_filters", fixed=fixed, defaults=defaults),
            ]
    return specs


REGISTRY: dict[str, ModelSpec] = {spec.name: spec for spec in _specs()}


def _spec(name: str) -> ModelSpec:
    key = name.lower() if isinstance(name, str) else name
    if key not in REGISTRY:
        raise ValueError(f"unknown model; expected one of {list(REGISTRY)}, received {name!r}")
    return REGISTRY[key]


def list_models(family: str | None = None) -> list[str]:
    """Names of the registered models, optionally of one family (e.g. ``"resnet"``)."""
    if family is not None and family not in {s.family for s in REGISTRY.values()}:
        raise ValueError(f"unknown family; expected one of {sorted({s.family for s in REGISTRY.values()})}, "
                         f"received {family!r}")
    return [n for n, s in REGISTRY.items() if family is None or s.family == family]


def model_info(name: str) -> dict[str, Any]:
    """Describe a registered model.

    Returns
    -------
    dict
        ``name, family, dims, input_shape, classes, description``, ``fixed``
        (the architecture keywords the name sets) and ``family_kwargs`` (the
        keywords a caller may pass, with their defaults).
    """
    spec = _spec(name)
    return {"name": spec.name, "family": spec.family, "dims": spec.dims, "input_shape": spec.input_shape,
            "classes": spec.classes, "description": spec.description, "fixed": dict(spec.fixed),
            "family_kwargs": spec.family_keywords()}


def build_model(model_name: str, /, *, input_shape=None, classes: int | None = None, include_top: bool = True,
                pooling: str | None = None, weights: str | os.PathLike | None = None,
                classifier_activation: str | None = "auto", name: str | None = None,
                **family_kwargs) -> keras.Model:
    """Build a model of the zoo by name.

    Parameters
    ----------
    model_name : str
        A name from :func:`list_models` (case-insensitive), e.g. ``"resnet50"``.
    input_shape : tuple, optional
        Channels_last shape without the batch axis; default: the registry's
        (:func:`model_info`).  Spatial sizes may be None where the architecture
        does not flatten (ResNet, WideResNet, GoogLeNet, U-Net).
    classes : int, optional
        Output units (output channels for a U-Net); default: the registry's
        (1000 for the ImageNet models, 10 for LeNet-5 and the 2D WideResNets,
        2 for the 3D classifiers, 1 for the U-Nets).
    include_top : bool, optional
        True: the full classifier (for a U-Net, the final 1x1 convolution).
        False: the backbone, whose output a task head can use.
    pooling : {None, "avg", "max"}, optional
        With ``include_top=False``, global pooling of the backbone output.
    weights : str or os.PathLike, optional
        None (random initialization) or a ``.keras`` / ``.weights.h5`` file of
        the same architecture.
    classifier_activation : str or None, optional
        ``"auto"`` (default): softmax, or sigmoid when ``classes == 1``.  None or
        ``"linear"``: logits.  Any Keras activation name.
    name : str, optional
        Model name; default: the registry name.
    **family_kwargs
        Family keywords, e.g. ``depth``, ``width``, ``dropout`` for the
        WideResNets (see ``model_info(name)["family_kwargs"]``).

    Returns
    -------
    keras.Model

    Raises
    ------
    ValueError
        Unknown name or keyword, input shape the architecture cannot take, or
        weights that do not match; the message gives expected and received.
    """
    spec = _spec(model_name)
    allowed = spec.family_keywords()
    for key, value in family_kwargs.items():
        if key in spec.fixed:
            if value != spec.fixed[key]:
                raise ValueError(f"{spec.name} fixes {key}={spec.fixed[key]!r}; received {key}={value!r} "
                                 f"(use the family's generic name for other values)")
        elif key not in allowed:
            raise ValueError(f"{spec.name}: unknown keyword; expected one of {sorted(allowed)}, received {key!r}")
    kwargs = {**allowed, **family_kwargs, **spec.fixed}
    model = spec.builder(input_shape=spec.input_shape if input_shape is None else input_shape,
                         classes=spec.classes if classes is None else classes, include_top=include_top,
                         pooling=pooling, classifier_activation=classifier_activation,
                         name=name or spec.name, **kwargs)
    if weights is not None:
        load_weights(model, weights)
    return model
