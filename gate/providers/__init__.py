"""Where canary and stable measurements come from: a seam and its implementations."""
