"""The traffic layer's seams: a Router (the split) and a Deployer (the predictors).

Implementations: :mod:`gate.local` (predictor processes and the local router) and
:mod:`gate.traffic.kserve` (InferenceService ``canaryTrafficPercent``).
"""
