"""What the relay says about an exception in a user's ClientApp code, as Flower reports it.

Flower's simulation wraps a ClientApp's exception as ``ClientAppException(str(exc))``,
dropping its type: a ``KeyError`` (a run-config key the user's loader reads and the
pyproject lacks) used to reach the log and ``summary.md`` as the bare key, ``error 2:
'no-such-key'``. A SuperNode reports ``<class 'KeyError'>:<''no-such-key''>``.
"""

from __future__ import annotations

import pytest
import torch
from flwr.app import Error, Message
from flwr.clientapp.client_app import ClientAppException
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from flower_qgadmm.algorithms import GadmmSettings
from flower_qgadmm.flower import RelayStrategy, WorkerFailure
from flower_qgadmm.flower.client import NamedKeyError
from flower_qgadmm.flower.torch_app import torch_client_app
from flower_qgadmm.flower.transport import short_reason
from flower_qgadmm.testing import FakeGrid


def _loader(context) -> DataLoader:
    """A user's loader reading a key its pyproject does not declare."""
    batch = int(context.run_config["no-such-key"])
    x = torch.randn(8, 3)
    return DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=batch)


def _as_flower_simulation(app):
    """The ClientApp as Flower's Ray backend runs it: an exception becomes an error reply
    with the reason ``vce_api`` builds from ``ClientAppException(str(exc))``."""

    def call(msg: Message, context) -> Message:
        try:
            return app(msg, context)
        except Exception as exc:  # noqa: BLE001 - as ray_actor.ClientAppActor.run
            wrapped = ClientAppException(str(exc))
            reason = str(type(wrapped)) + ":<'" + str(wrapped) + "'>"
            return Message(Error(code=2, reason=reason), reply_to=msg)

    return call


def test_a_missing_key_in_user_code_is_named_as_a_key_error_under_flower_simulation() -> None:
    # Prepare
    app = torch_client_app(lambda: nn.Linear(3, 2), _loader)
    strategy = RelayStrategy("q-sgadmm", 3, GadmmSettings(rho=1.0), on_failure="stop")
    # Execute
    with pytest.raises(WorkerFailure) as err:
        strategy.start(FakeGrid(_as_flower_simulation(app), 3, {}), num_rounds=1, timeout=10.0)
    # Assert: the type is named, once; it is still a KeyError in the ClientApp
    assert "error 2: KeyError: 'no-such-key'" in str(err.value)
    # in the ClientApp it is still a KeyError, for code that catches one
    assert issubclass(NamedKeyError, KeyError) and str(NamedKeyError("k")) == "KeyError: 'k'"
    assert "KeyError: KeyError" not in str(err.value)


def test_fake_grid_and_a_supernode_reason_name_the_type_once() -> None:
    # FakeGrid (in-process) gives the same text as the simulation
    app = torch_client_app(lambda: nn.Linear(3, 2), _loader)
    strategy = RelayStrategy("q-sgadmm", 3, GadmmSettings(rho=1.0), on_failure="stop")
    with pytest.raises(WorkerFailure, match=r"error 1: KeyError: 'no-such-key'") as err:
        strategy.start(FakeGrid(app, 3, {}), num_rounds=1, timeout=10.0)
    assert "NamedKeyError" not in str(err.value)
    # a SuperNode's reason: "<class 'T'>:<'message'>"
    assert short_reason("<class 'KeyError'>:<''no-such-key''>") == "KeyError: 'no-such-key'"
    assert short_reason("<class 'ValueError'>:<'worker 0: x'>") == "ValueError: worker 0: x"
    named = "<class 'flower_qgadmm.flower.client.NamedKeyError'>:<'KeyError: 'k''>"
    assert short_reason(named) == "KeyError: 'k'"
    # the simulation's wrapping is still dropped
    simulated = "<class 'C'>:<'\nException ClientAppException occurred. Message: worker 0: y'>"
    assert short_reason(simulated) == "worker 0: y"


def test_a_clientapp_without_our_handlers_is_told_how_to_add_them() -> None:
    # A project's FedAvg ClientApp (train / evaluate only) under our relay: `flwr run`
    # stopped with "identify failed: node 1..: error 2: No query function registered with
    # name 'identify'; node 2..: (the same)" for every node, and no word on the fix
    from flwr.clientapp import ClientApp

    app = ClientApp()

    @app.train()
    def train(msg, context):  # the project's own
        return msg

    strategy = RelayStrategy("q-sgadmm", 3, GadmmSettings(rho=1.0), discovery_timeout=5)
    with pytest.raises(WorkerFailure) as err:
        strategy.start(FakeGrid(_as_flower_simulation(app), 3, {}), num_rounds=1, timeout=5)
    message = str(err.value)
    assert message.startswith("identify failed: nodes 1001, 1002, 1003: error 2: No query")
    assert message.count("No query function") == 1  # one line for every node
    assert "torch_client_app(..., app=app, fedavg=False)" in message
    assert "make_client_app(solver_fn)" in message


def test_registering_on_a_clientapp_with_its_own_handlers_names_the_fix() -> None:
    # torch_client_app(..., app=app) on a ClientApp with its own FedAvg train handler:
    # Flower's "already registered" error, after ours were half registered
    from flwr.clientapp import ClientApp

    app = ClientApp()

    @app.train()
    def train(msg, context):  # the project's own
        return msg

    with pytest.raises(ValueError, match="pass fedavg=False to keep them"):
        torch_client_app(lambda: nn.Linear(3, 2), _loader, app=app)
    torch_client_app(lambda: nn.Linear(3, 2), _loader, app=app, fedavg=False)  # then fine
    with pytest.raises(ValueError, match="once per ClientApp"):
        torch_client_app(lambda: nn.Linear(3, 2), _loader, app=app, fedavg=False)
