"""Augmentation on torchvision.transforms.v2: box-aware pipelines, CutMix/MixUp, Mosaic, the stage.

Modules, one idea each:

- ``catalog``: the transforms a config may name (v2 class names), and how to build one from a spec.
- ``presets``: the named presets ``none``/``light``/``default``/``strong`` as transform specs.
- ``pipelines``: ``build_transforms`` (train/eval pipelines ending in a fixed-size float image)
  and ``describe_pipeline`` (every step and its parameters).
- ``seeding``: per-sample seeding, so an augmented sample depends only on (seed, epoch, index).
- ``mosaic``: ``make_mosaic`` (pure) and ``MosaicDataset`` (detection).
- ``mixing``: ``BatchMixer`` (CutMix / MixUp per batch, soft targets; classification).
- ``stats``: boxes kept/dropped per step and label distributions (``AugmentStats``).
- ``preview``: the before/after preview grid.
- ``materialize``: N augmented copies of a split written as a new snapshot.
- ``stage``: ``run_augment_stage``, the augment stage of the pipeline.

Import from the modules (``from cvcore.augment.pipelines import build_transforms``).
"""
