"""Malcom-PSGD (Campbell, Liu, Woldemariam, Scaglione, arXiv 2311.05760): decentralized
proximal SGD with sparse models, dithered quantization and vector source coding.

The round of CHOCO-SGD (:mod:`.choco`, steps 1-5) with the choices that make Malcom:

- the proximal l1 step x^{t+1/2} <- soft_threshold(x^{t+1/2}, eta mu) (``l1`` = mu,
  default 2e-4: on the digits MLP, 2e-3 (the value measured for softmax regression in
  ALGORITHMS_MALCOM.md) costs 5-19 points of worker accuracy against CHOCO-SGD with the
  same quantizer, 2e-4 about 1 point; ``prox-order`` "before" the consensus step
  (default) or "after");
- the dithered quantizer with s = 1 level (``levels``) on the l2 norm, whose levels of a
  small residual of a sparse model are mostly zero; with CHOCO's ``variance-scaling``
  (default) the decoded change is divided by tau = 1 + min(d / s^2, sqrt(d) / s), the
  contraction CHOCO's analysis assumes, so the compressed update is biased by design
  (``variance-scaling = false``: the unbiased quantizer);
- the vector source coder (``codec = "source"``): Golomb-Rice coded zero runs, one sign
  bit and an Elias code per non-zero level. The history's ``nominal_bits`` is the
  coder's closed-form estimate of that length, next to the measured ``bits``. Any
  algorithm can take this coder (``codec``): CHOCO-SGD with s = 1 and the source coder
  sends about as many bits as Malcom on digits (``benchmarks/bench_bits.py``).

Objective: min (1/n) sum_i f_i(x) + mu ||x||_1 (the reported ``objective`` is the sum of
the f_i, without the l1 term).
"""

from __future__ import annotations

from .choco import Choco


class Malcom(Choco):
    """One Malcom-PSGD worker."""

    default_levels = 1
    default_codec = "source"
    default_l1 = 0.0002
