"""The ready Flower app (``flwr run .`` at the repo root): linear regression with
GADMM / Q-GADMM, image classification with SGADMM / Q-SGADMM and the FedAvg baseline."""
