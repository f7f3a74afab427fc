"""ClientApp: one worker per SuperNode (GADMM family via the relay, or a FedAvg client)."""

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable

from flower_qgadmm.config import ExperimentConfig
from flower_qgadmm.flower.client import make_client_app, partition_of
from flower_qgadmm.flower.fedavg_client import add_fedavg_handlers

from .task import solver_fn


def inject_failure(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Fault injection for tests: ``inject-failure = "w@k"`` makes worker w fail every
    train message from iteration k on (a device that dropped out)."""
    spec = context.run_config.get("inject-failure", "")
    if spec and msg.metadata.message_type.startswith("train.") and "round" in msg.content:
        worker, at = ExperimentConfig(inject_failure=str(spec)).failure()
        iteration = int(msg.content["round"]["iteration"])
        if partition_of(context)[0] == worker and iteration >= at:
            raise RuntimeError(f"injected failure: worker {worker} is gone since iteration {at}")
    return call_next(msg, context)


app = make_client_app(solver_fn, ClientApp(mods=[inject_failure]))
add_fedavg_handlers(app, solver_fn)
