"""Evaluation: media folders or a model's samples -> features -> distribution and alignment metrics
(`mmflow eval`, and quality tracked during training)."""
