"""Offline builders of model folders and scenes; run each as ``python -m scripts.NAME`` from the repo root."""
