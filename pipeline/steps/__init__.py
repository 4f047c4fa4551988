"""The pipeline's steps, one sub-package per step, each with the step's code, its
``requirements.txt`` and the ``Dockerfile`` of its image.

KFP runs each step in its own image, and an image holds only what its step imports: the
step's package, the small shared modules beside this file (:mod:`pipeline.steps.common`,
:mod:`pipeline.steps.splits`, :mod:`pipeline.steps.run_notes`) and, for train, evaluate
and deploy, the artifact contract (``predictor/artifact.py``). So this file imports
nothing: importing ``pipeline.steps.notify`` must not pull scikit-learn into the notify
image, nor ``pipeline.steps.reject`` pandas into reject's.
"""
