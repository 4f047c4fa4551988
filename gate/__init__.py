"""irisgate gate: accuracy gate and progressive canary analysis (see DESIGN.md)."""
