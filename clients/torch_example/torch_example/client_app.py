"""ClientApp: one Q-SGADMM worker per SuperNode, from the model and loaders."""

from torch import nn

from flower_qgadmm.flower import torch_client_app

from .task import Net, test_loader, train_loader

app = torch_client_app(Net, train_loader, test_loader, nn.CrossEntropyLoss())
