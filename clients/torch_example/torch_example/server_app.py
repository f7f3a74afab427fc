"""ServerApp: the relay strategy, configured from the run config, used as Flower's FedAvg
would be (initial model, a centralized evaluate_fn, a Result); with ``algorithm =
"fedavg"``, Flower's own FedAvg on the same ClientApp, for comparison."""

from logging import INFO

import torch
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.common import log
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from flower_qgadmm import RunConfig
from flower_qgadmm.flower import RelayStrategy
from flower_qgadmm.torch_solver import seeded_model

from .task import Net, test_loader

app = ServerApp()


def central_evaluate(context: Context):
    """A FedAvg-style evaluate_fn: the mean model, in Net's layout, on the test set."""
    loader = test_loader(context)

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model = Net()
        model.load_state_dict(arrays.to_torch_state_dict())
        model.eval()
        correct = total = 0
        with torch.no_grad():
            for x, y in loader:
                correct += int((model(x).argmax(1) == y).sum())
                total += len(y)
        return MetricRecord({"mean-model-accuracy": correct / total})

    return evaluate_fn


@app.main()
def main(grid: Grid, context: Context) -> None:
    # Our keys (algorithm, rho, bits, evaluate-every, results-dir, ...) are validated; the
    # project's own (num-server-rounds) are left alone.
    cfg = RunConfig.from_run_config(context.run_config, strict=False)
    # built under the run's seed: the same initial model on every run of this seed
    initial_arrays = ArrayRecord(seeded_model(Net, cfg.seed).state_dict())
    num_rounds = int(context.run_config["num-server-rounds"])
    if cfg.algorithm == "fedavg":
        # Flower's own FedAvg, as a project has it: the ClientApp trains the state_dict
        # with the run config's optimizer, lr, local-steps and seed
        result = FedAvg(fraction_evaluate=0.0).start(
            grid,
            initial_arrays=initial_arrays,
            num_rounds=num_rounds,
            timeout=cfg.phase_timeout,
            evaluate_fn=central_evaluate(context),
        )
        final = result.evaluate_metrics_serverapp[num_rounds]
        log(INFO, "FedAvg: final mean-model accuracy %.4f", final["mean-model-accuracy"])
        return
    strategy = RelayStrategy.from_config(cfg)  # results go to results-dir
    result = strategy.start(
        grid,
        initial_arrays=initial_arrays,
        num_rounds=num_rounds,
        timeout=cfg.phase_timeout,
        evaluate_fn=central_evaluate(context),
    )
    last = strategy.history[-1]
    log(INFO, "final worker accuracy %.4f after %d payload bits", last["accuracy"], last["bits"])
    final = result.evaluate_metrics_serverapp[max(result.evaluate_metrics_serverapp)]
    log(INFO, "final mean-model accuracy %.4f", final["mean-model-accuracy"])
