"""Transmit-energy model of the papers' energy comparison (GADMM / Q-GADMM / CQ-GGADMM).

A worker broadcasts one payload of ``bits`` bits to all its neighbours within a slot of
tau = 1 ms, so its rate is r = bits / tau. The system bandwidth W = 2 MHz is shared by
the workers that transmit at the same time, i.e. the members of one phase of the
schedule (N / 2 on a chain under GADMM, all N for gossip): each gets B = W / concurrent. The
power needed to reach a neighbour at distance d is (Shannon, path-loss exponent 2)

    P = d^2 * eta * B * (2^(r / B) - 1),   eta = 1e-6,

and a broadcast must reach the farthest neighbour, so the worker's energy for one
transmission is E = tau * max_m P(d_nm). Only meaningful with device positions.
"""

from __future__ import annotations

import math

ETA = 1e-6
TAU = 1e-3
SYSTEM_BANDWIDTH = 2e6


def transmit_energy(bits: int, max_distance: float, concurrent: int) -> float:
    """Joules to broadcast ``bits`` bits to a neighbour ``max_distance`` metres away while
    ``concurrent`` workers (this one included) share the band."""
    if bits <= 0:
        return 0.0
    bandwidth = SYSTEM_BANDWIDTH / max(int(concurrent), 1)
    rate = bits / TAU
    exponent = rate / bandwidth
    if exponent > 1000:  # 2^1000 overflows a float: the payload does not fit the slot
        return math.inf
    return TAU * max_distance**2 * ETA * bandwidth * (2.0**exponent - 1.0)
