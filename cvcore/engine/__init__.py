"""The training engine: one ``fit`` for every registered model, streaming ``predict``, checkpoints.

Modules, one idea each:

- ``device``: pick the device and the mixed-precision dtype.
- ``schedule``: optimizer and warm-up + cosine/step learning-rate schedule.
- ``ema``: an exponential moving average of the weights.
- ``data``: DataLoaders over a snapshot with the augmentation pipelines, seeded.
- ``checkpoint``: atomic ``last.pt``/``best.pt``, ``load_checkpoint``, ``load_model``.
- ``infer``: ``predict`` (Arrow record batches in the predictions schema) and Parquet writers.
- ``validate``: validation metrics of one epoch (accuracy/F1, mAP).
- ``callbacks``: the callback protocol and the progress bar.
- ``train``: ``fit`` and ``FitResult``.
- ``run``: ``train_run(config, out_dir)``, a whole training run from a RunConfig.

Import from the modules (``from cvcore.engine.train import fit``); this package imports nothing
heavy on its own.
"""
