"""ClientApp: one worker per SuperNode (GADMM family via the relay, or a FedAvg client)."""

from flower_qgadmm.flower.client import make_client_app
from flower_qgadmm.flower.torch_app import add_fedavg_handlers

from .task import solver_fn

app = make_client_app(solver_fn)
add_fedavg_handlers(app, solver_fn)
