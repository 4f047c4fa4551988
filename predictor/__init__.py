"""irisgate predictor: a custom KServe model server for verified scikit-learn artifacts."""

from predictor.processes import cheap_metric_values

# A server process started by another one (``--workers``) imports this package first, with
# the parent's metrics directory already in its environment: set the cheaper metric
# values up before KServe creates its own metrics. (The parent does it when it creates
# the directory, see ``shared_metrics_dir``.)
cheap_metric_values()
