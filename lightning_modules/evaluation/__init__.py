"""Evaluation metrics and rate-distortion reports."""
