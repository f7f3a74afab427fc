"""Example Flower project: a user's PyTorch model trained with Q-SGADMM."""
