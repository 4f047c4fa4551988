"""The gate's pure core: what a rollout is asked to do (spec), where it is (state), how a
window is judged (analysis) and what happens next (decide). No I/O, no clocks, no
processes: everything here is tested table-driven, in microseconds."""
