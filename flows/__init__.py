"""Orchestration layer: the CLI, Prefect flows and MLflow tracking (never imported by anyto3d/)."""
