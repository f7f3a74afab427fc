"""ClientApp: one worker per SuperNode (any registered algorithm via the relay, or a
FedAvg client)."""

from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable

from flower_qgadmm.flower import (
    NamedClientApp,
    add_fedavg_handlers,
    make_client_app,
    partition_of,
)
from flower_qgadmm.flower.records import payload_record, record_payload

from .task import experiment_config, solver_fn


def inject_failure(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Fault injection for tests: ``inject-failure = "w@k"`` makes worker w fail every
    train message from iteration k on (a device that dropped out); ``"w@k:garbage"``
    makes it send a truncated payload instead (a faulty device or a corrupted link)."""
    if not (context.run_config.get("inject-failure") and msg.metadata.message_type == "train.step"):
        return call_next(msg, context)
    cfg = experiment_config(context)
    worker, at = cfg.failure()
    if partition_of(context)[0] != worker or int(msg.content["round"]["iteration"]) < at:
        return call_next(msg, context)
    if cfg.failure_mode == "error":
        raise RuntimeError(f"injected failure: worker {worker} is gone since iteration {at}")
    reply = call_next(msg, context)
    if "payload" in reply.content:
        payload = record_payload(reply.content["payload"], "own reply")
        reply.content["payload"] = payload_record(payload[:-3])
    return reply


app = make_client_app(solver_fn, NamedClientApp(mods=[inject_failure]))
add_fedavg_handlers(app, solver_fn)
