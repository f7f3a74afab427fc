"""Bits to accuracy: every algorithm on its reference set-up, with its defaults.

Two set-ups, every run in the reference runner (the Flower path gives the same numbers,
see the tests), bits as measured (8 x the serialized payload bytes, headers included):

- **linear regression**, the GADMM paper's set-up: 24 workers, 50 samples x 50 features
  each (synthetic, seeded), 1,000 iterations: GADMM, Q-GADMM (3-bit default and
  adaptive), CQ-GGADMM (censored Q-GADMM on a random bipartite graph, ``bipartite``),
  D-PSGD, CHOCO-SGD and Malcom-PSGD on a chain. Iterations and bits until the relative
  objective gap stays <= 1e-4.
- **digits** (scikit-learn's 8x8 digits, the MLP, 10 workers, IID): SGADMM and Q-SGADMM
  (on a chain), D-PSGD, CHOCO-SGD (dithered s = 16 and s = 1, and top-1%) and
  Malcom-PSGD (ring), and Flower's FedAvg driven in
  process (its bits: the model down and up per worker per round, float32). Rounds and
  bits until the mean model's test accuracy first reaches 0.90.

Rows are informative (bits and ratios; no timing); the two ratios the papers claim are
given with their target: Q-GADMM <= 1/4 of GADMM's bits (issue 12) and Malcom-PSGD about
0.25 of CHOCO-SGD's (Campbell et al., "~75% fewer bits"), CHOCO with the same quantizer
(s = 1). ``--quick``: a few iterations
of each (a smoke test: no target is reached, nothing to quote).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TITLE = "Bits to accuracy, every algorithm on its reference set-up"
GAP = 1e-4
ACCURACY = 0.90
LINREG = {"num-workers": 24, "samples-per-worker": 50, "dim": 50}
LINREG_VARIANTS = {
    "GADMM": {"algorithm": "gadmm"},
    "Q-GADMM (3-bit)": {"algorithm": "q-gadmm"},
    "Q-GADMM adaptive": {"algorithm": "q-gadmm", "adaptive-bits": True},
    "CQ-GGADMM (bipartite)": {
        "algorithm": "q-gadmm",
        "censoring": True,
        "topology": "bipartite",
    },
    "D-PSGD": {"algorithm": "d-psgd"},
    "CHOCO-SGD": {"algorithm": "choco-sgd"},
    "Malcom-PSGD": {"algorithm": "malcom-psgd"},
}
NOTES = (
    "On linear regression the gossip methods (D-PSGD, CHOCO-SGD, Malcom-PSGD) use a "
    "constant step: decentralized gradient descent then converges to a neighbourhood of "
    "the optimum, not to it (its known bias, Yuan, Ling and Yin, SIAM J. Optim. 26(3), "
    "2016), so they stall at a relative gap of 0.28 (D-PSGD) and 0.61 (CHOCO, Malcom) on "
    "this 24-chain and never reach 1e-4; the GADMM family converges exactly. On digits "
    "CHOCO-SGD runs four times: with its default dithered s = 16 and with Malcom's s = 1 "
    "(both fixed-width codec), with s = 1 and the source coder, and with top-1% (below). "
    "The paper's "
    "~0.25 is checked against the s = 1 run, the same "
    "quantizer as Malcom-PSGD's: the ratio then measures Malcom's prox and source coder, "
    "not a coarser quantization (against s = 16 it is far lower, informative only). "
    "A third CHOCO-SGD run takes Malcom's quantizer and its source coder (`codec = "
    '"source"`): Malcom without its l1 prox. Its ratio is near 1: on digits the prox '
    "zeroes well under 1% of the model, and the saving against the fixed-width runs is "
    "the coder's. "
    "A fourth CHOCO-SGD run takes its cheapest compressor, top-k with 1% of the entries "
    '(`compressor = "top-k"`, `fraction = 0.01`: positions and float32 values), the '
    "other baseline the Malcom comparison must report (an independent measurement on "
    "softmax regression put Malcom / CHOCO top-1% near 0.5 on a ring of 8 and above 1 on "
    "a ring of 16): its ratio is informative, with no target. Here top-1% reaches 0.90 "
    "in the same round as the other CHOCO runs (117), with about 4.5 times Malcom's bits "
    "(Malcom / CHOCO top-1% = 0.22, measured 2026-12-03)."
)
IMAGE = {"task": "digits", "num-workers": 10, "evaluate-every": 1}
IMAGE_VARIANTS = {
    "SGADMM": ({"algorithm": "sgadmm"}, 80),
    "Q-SGADMM (3-bit)": ({"algorithm": "q-sgadmm"}, 80),
    "D-PSGD": ({"algorithm": "d-psgd", "topology": "ring"}, 300),
    "CHOCO-SGD": ({"algorithm": "choco-sgd", "topology": "ring"}, 300),
    "CHOCO-SGD (s = 1)": ({"algorithm": "choco-sgd", "topology": "ring", "levels": 1}, 300),
    "CHOCO-SGD (s = 1, source coder)": (
        {"algorithm": "choco-sgd", "topology": "ring", "levels": 1, "codec": "source"},
        300,
    ),
    "CHOCO-SGD (top-1%)": (
        {"algorithm": "choco-sgd", "topology": "ring", "compressor": "top-k", "fraction": 0.01},
        300,
    ),
    "Malcom-PSGD": ({"algorithm": "malcom-psgd", "topology": "ring"}, 300),
    "FedAvg": ({"algorithm": "fedavg"}, 80),
}
"""label -> (settings, rounds)."""


def _first(rows: list[dict], ok) -> dict | None:
    """The first row from which ``ok`` holds (for the gap: holds to the end)."""
    return next((r for r in rows if ok(r)), None)


def _stays_below(rows: list[dict], key: str, bound: float) -> dict | None:
    start = None
    for r in rows:
        if r.get(key, float("inf")) <= bound:
            start = start or r
        else:
            start = None
    return start


def linreg_rows(quick: bool) -> list[dict]:
    from flower_qgadmm.config import RunConfig
    from flower_qgadmm.data import experiment_datasets
    from flower_qgadmm.reference import least_squares_solvers, run_from_config

    iterations = 5 if quick else 1000
    out, bits = [], {}
    for label, change in LINREG_VARIANTS.items():
        cfg = RunConfig.from_run_config({**LINREG, **change, "num-iterations": iterations})
        rows = run_from_config(cfg, least_squares_solvers(experiment_datasets(cfg))).history
        hit = _stays_below(rows, "objective_gap", GAP)
        bits[label] = None if hit is None else hit["bits"]
        note = (
            f"iteration {hit['iteration']}"
            if hit
            else f"not reached in {iterations} (final gap {rows[-1]['objective_gap']:.2e})"
        )
        out.append(_bits_row(f"linreg 24x50x50, {label}: bits to gap {GAP:g}", bits[label], note))
    out += _ratio("linreg: Q-GADMM (3-bit) / GADMM bits", bits, "Q-GADMM (3-bit)", "GADMM", 0.25)
    # no target here: neither gossip method reaches the gap on linear regression (notes)
    out += _ratio("linreg: Malcom-PSGD / CHOCO-SGD bits", bits, "Malcom-PSGD", "CHOCO-SGD", None)
    return out


def image_rows(quick: bool) -> list[dict]:
    import torch

    from flower_qgadmm.config import RunConfig
    from flower_qgadmm.image_task import image_solver, load_task_data, mean_model_evaluator
    from flower_qgadmm.reference import run_from_config

    sys.path.insert(0, str(ROOT / "simulations"))
    from image_experiment import fedavg_in_process

    torch.set_num_threads(1)  # tiny models: threads only add contention
    out, bits = [], {}
    for label, (change, rounds) in IMAGE_VARIANTS.items():
        rounds = 1 if quick else rounds
        cfg = RunConfig.from_run_config({**IMAGE, **change, "num-iterations": rounds})
        data = load_task_data(cfg)
        evaluate = mean_model_evaluator(cfg, data)
        if cfg.algorithm == "fedavg":
            rows = fedavg_in_process(cfg, data, evaluate)
        else:
            solvers = [image_solver(cfg, w, data) for w in range(cfg.num_workers)]
            rows = run_from_config(cfg, solvers, evaluate=evaluate).history
        hit = _first(rows, lambda r: r.get("mean_model_accuracy", 0.0) >= ACCURACY)
        bits[label] = None if hit is None else hit["bits"]
        final = rows[-1].get("mean_model_accuracy", float("nan"))
        note = (
            f"round {hit['iteration']}; final {final:.4f}"
            if hit
            else f"not reached in {rounds} (final {final:.4f})"
        )
        name = f"digits, {label}: bits to mean-model accuracy {ACCURACY:g}"
        out.append(_bits_row(name, bits[label], note))
    out += _ratio("digits: Q-SGADMM / SGADMM bits", bits, "Q-SGADMM (3-bit)", "SGADMM", None)
    out += _ratio("digits: Q-SGADMM / FedAvg bits", bits, "Q-SGADMM (3-bit)", "FedAvg", None)
    out += _ratio(
        "digits: Malcom-PSGD / CHOCO-SGD (s = 16) bits", bits, "Malcom-PSGD", "CHOCO-SGD", None
    )
    out += _ratio(
        "digits: Malcom-PSGD / CHOCO-SGD (s = 1, the same quantizer) bits",
        bits,
        "Malcom-PSGD",
        "CHOCO-SGD (s = 1)",
        0.25,
    )
    out += _ratio(
        "digits: Malcom-PSGD / CHOCO-SGD (s = 1, source coder) bits",
        bits,
        "Malcom-PSGD",
        "CHOCO-SGD (s = 1, source coder)",
        None,
    )
    out += _ratio(
        "digits: Malcom-PSGD / CHOCO-SGD (top-1%) bits",
        bits,
        "Malcom-PSGD",
        "CHOCO-SGD (top-1%)",
        None,
    )
    return out


def _bits_row(name: str, bits: int | None, note: str) -> dict:
    """An informative row: measured bits (None: the target was not reached)."""
    row = {"name": name, "measured": bits, "target": None, "ok": None, "unit": "bits"}
    return {**row, "note": note}


def _ratio(name: str, bits: dict, top: str, bottom: str, target: float | None) -> list[dict]:
    a, b = bits.get(top), bits.get(bottom)
    if a is None or b is None:
        missed = " and ".join(label for label, n in ((top, a), (bottom, b)) if n is None)
        return [
            {
                "name": name,
                "measured": None,
                "target": target,
                "ok": None,
                "note": f"{missed} did not reach the target",
            }
        ]
    ratio = a / b
    ok = None if target is None else ratio <= target
    return [{"name": name, "measured": round(ratio, 3), "target": target, "ok": ok}]


def run(quick: bool = False) -> list[dict]:
    return linreg_rows(quick) + image_rows(quick)


if __name__ == "__main__":
    import json

    print(json.dumps(run("--quick" in sys.argv), indent=1))
