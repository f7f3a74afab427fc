"""ServerApp: the relay strategy, configured from the run config."""

from logging import INFO

from flwr.app import Context
from flwr.common import log
from flwr.serverapp import Grid, ServerApp

from flower_qgadmm import RunConfig
from flower_qgadmm.flower import RelayStrategy

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    # Our keys (algorithm, rho, bits, ...) are validated; the project's own are left alone.
    cfg = RunConfig.from_run_config(context.run_config, strict=False)
    strategy = RelayStrategy.from_config(cfg)
    rounds = int(context.run_config["num-server-rounds"])  # the project's own key
    strategy.start(grid, num_rounds=rounds, timeout=cfg.phase_timeout)
    last = strategy.history[-1]
    log(INFO, "final worker accuracy %.4f after %d bits", last["accuracy"], last["bits"])
