"""irisgate predictor: a custom KServe model server for verified scikit-learn artifacts."""
