"""An in-process Grid: delivers messages straight to ClientApps, like Flower's engine.

Use it to test a strategy and ClientApps without starting Flower (Flower's own strategy tests
fake the Grid the same way). Each node has its own Context; a handler exception comes
back as an error reply, as in Flower.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid

from .client import NamedKeyError


def _set_task_identity() -> None:
    """flwr >= 1.42 needs the process's run/node identity to build a Message."""
    try:
        from flwr.supercore.task_identity import TaskIdentity
    except ImportError:  # flwr 1.41
        return
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1


class FakeGrid(Grid):
    """Nodes ``1001..1000+N`` with partition ids ``N-1..0`` (reversed, so order matters)."""

    simulation = True  # stands for Flower's simulation (seed-derived encryption keys)

    def __init__(
        self,
        app: ClientApp,
        num_nodes: int,
        run_config: dict,
        fail: Callable[[int, Message], bool] | None = None,
    ) -> None:
        _set_task_identity()
        self.app = app
        self.fail = fail or (lambda pid, msg: False)
        self.contexts = {
            1000 + i: Context(
                run_id=1,
                node_id=1000 + i,
                node_config={"partition-id": num_nodes - i, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config=dict(run_config),
            )
            for i in range(1, num_nodes + 1)
        }
        self.sent: list[Message] = []

    def set_run(self, run_id: int) -> None:  # noqa: D102
        pass

    @property
    def run(self):  # noqa: D102
        return None

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):  # noqa: D102
        return Message(content, dst_node_id=dst_node_id, message_type=message_type)

    def get_node_ids(self) -> Iterable[int]:  # noqa: D102
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:  # noqa: D102
        raise NotImplementedError("FakeGrid only implements send_and_receive")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # noqa: D102
        raise NotImplementedError("FakeGrid only implements send_and_receive")

    def send_and_receive(self, messages, *, timeout=None):  # noqa: D102
        replies = []
        for msg in messages:
            # an id, as Flower's Grids give a message they push (replies refer to it)
            msg.metadata.__dict__["_message_id"] = uuid4().hex
            self.sent.append(msg)
            ctx = self.contexts[msg.metadata.dst_node_id]
            pid = int(ctx.node_config.get("partition-id", -1))
            if self.fail(pid, msg):
                continue  # silent node: no reply
            try:
                replies.append(self.app(msg, ctx))
            except Exception as exc:  # noqa: BLE001 - Flower turns these into error replies
                # a NamedKeyError's message names its type already
                named = isinstance(exc, NamedKeyError)
                reason = str(exc) if named else f"{type(exc).__name__}: {exc}"
                replies.append(Message(Error(code=1, reason=reason), reply_to=msg))
        return replies
