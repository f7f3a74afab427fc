"""ClientApp: one GADMM / Q-GADMM linear-regression worker per SuperNode."""

from flower_qgadmm.flower import make_client_app

from .task import load_partition

app = make_client_app(load_partition)
