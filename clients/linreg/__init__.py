"""Ready Flower app: GADMM / Q-GADMM linear regression (``flwr run .`` at the repo root)."""
