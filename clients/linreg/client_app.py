"""ClientApp: one GADMM / Q-GADMM linear-regression worker per SuperNode."""

from flower_qgadmm.flower.client import least_squares, make_client_app

from .task import load_partition

app = make_client_app(least_squares(load_partition))
