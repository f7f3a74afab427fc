"""ServerApp: the relay strategy, configured from the run config."""

from logging import INFO

from flwr.app import Context
from flwr.common import log
from flwr.serverapp import Grid, ServerApp

from flower_qgadmm import GadmmConfig
from flower_qgadmm.flower import GadmmRelay

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = GadmmConfig.from_run_config(context.run_config)
    strategy = GadmmRelay(cfg, num_workers=int(context.run_config["num-workers"]))
    strategy.start(grid, num_rounds=int(context.run_config["num-server-rounds"]), timeout=300)
    last = strategy.history[-1]
    log(INFO, "final worker accuracy %.4f after %d bits", last["accuracy"], last["bits"])
