"""ClientApp: one worker per SuperNode (any registered algorithm via the relay, or a
FedAvg client)."""

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable

from flower_qgadmm.flower import add_fedavg_handlers, make_client_app, partition_of

from .task import experiment_config, solver_fn


def inject_failure(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Fault injection for tests: ``inject-failure = "w@k"`` makes worker w fail every
    train message from iteration k on (a device that dropped out)."""
    if context.run_config.get("inject-failure") and msg.metadata.message_type.startswith("train."):
        failure = experiment_config(context).failure()
        if failure is not None and "round" in msg.content:
            worker, at = failure
            iteration = int(msg.content["round"]["iteration"])
            if partition_of(context)[0] == worker and iteration >= at:
                raise RuntimeError(
                    f"injected failure: worker {worker} is gone since iteration {at}"
                )
    return call_next(msg, context)


app = make_client_app(solver_fn, ClientApp(mods=[inject_failure]))
add_fedavg_handlers(app, solver_fn)
