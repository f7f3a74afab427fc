"""The ready Flower app (``flwr run .`` at the repo root): every registered algorithm
(GADMM / Q-GADMM on linear regression, SGADMM / Q-SGADMM on image tasks, D-PSGD on
both) and Flower's FedAvg baseline, on any topology the run config names."""
