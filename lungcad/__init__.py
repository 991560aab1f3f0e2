"""lungcad: lung-nodule CAD for chest CT.

The stages of the pipeline are plain functions in their own modules
(``lungcad.io``, ``lungcad.lungmask``, ``lungcad.candidates``, ``lungcad.morphology``,
``lungcad.fpr``, ``lungcad.aggregate``); :class:`lungcad.pipeline.Pipeline` composes them.
"""
__version__ = "0.1.0"

from lungcad.errors import InputError, LungcadError, StageError  # noqa: E402
from lungcad.volume import CTVolume, voxel_to_world, world_to_voxel  # noqa: E402

__all__ = ["CTVolume", "InputError", "LungcadError", "StageError", "voxel_to_world",
           "world_to_voxel", "__version__"]
