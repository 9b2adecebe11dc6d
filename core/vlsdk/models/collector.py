"""One place where an encoder publishes its routing: every forward's :class:`RouterStats`, once.

Each :class:`~vlsdk.models.encoder.HybridEncoder` owns a :class:`RoutingCollector`
(``encoder.routing``). At the end of every forward (``encoder(...)`` or ``forward_features``) the
encoder publishes the statistics of the MoE layers that ran, each naming its layer, token grid
and stride. The trainer's auxiliary losses, the routing log, the specialisation losses and
``vlsdk inspect`` subscribe here instead of hooking modules and re-reading outputs.

Example:
    >>> import torch
    >>> from vlsdk.models.config import get_config
    >>> from vlsdk.models.encoder import HybridEncoder
    >>> enc = HybridEncoder(get_config("tiny"))
    >>> seen = []
    >>> handle = enc.routing.subscribe(lambda encoder, stats: seen.extend((s.layer, s.grid, s.stride) for s in stats))
    >>> _ = enc(torch.zeros(1, 3, 64, 64))
    >>> handle.remove()
    >>> seen
    [(0, (4, 4), 16), (1, (2, 2), 32)]
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from torch import nn
from torch.utils.hooks import RemovableHandle

if TYPE_CHECKING:
    from vlsdk.models.features import RouterStats

__all__ = ["RoutingCollector", "Subscriber", "routing_collectors"]

#: ``fn(encoder, stats)``: the encoder module and its forward's statistics in depth order
Subscriber = Callable[[nn.Module, "list[RouterStats]"], None]


class RoutingCollector:
    """Subscribers to one encoder's routing statistics, called once per forward.

    A copy of the encoder (``copy.deepcopy``, pickling) starts with no subscribers: a teacher
    copied from a student does not feed the student's trainer.
    """

    def __init__(self) -> None:
        self._subscribers: OrderedDict[int, Subscriber] = OrderedDict()  # weak-referenceable (the handles)

    def subscribe(self, fn: Subscriber) -> RemovableHandle:
        """Call ``fn(encoder, stats)`` after every forward until ``handle.remove()``.

        Args:
            fn: receives the encoder and its list of :class:`RouterStats` (depth order).

        Returns:
            A handle whose ``remove()`` unsubscribes (idempotent).
        """
        handle = RemovableHandle(self._subscribers)
        self._subscribers[handle.id] = fn
        return handle

    def publish(self, encoder: nn.Module, stats: list[RouterStats]) -> None:
        """Hand ``stats`` to every subscriber (the encoder calls this once per forward)."""
        for fn in list(self._subscribers.values()):
            fn(encoder, stats)

    @contextmanager
    def muted(self) -> Iterator[None]:
        """Publish to nobody inside the block (a replayed forward that no subscriber should count)."""
        subscribers, self._subscribers = self._subscribers, OrderedDict()
        try:
            yield
        finally:
            self._subscribers = subscribers

    def __len__(self) -> int:
        return len(self._subscribers)

    def __deepcopy__(self, memo: dict) -> RoutingCollector:
        return RoutingCollector()

    def __getstate__(self) -> dict[str, Any]:
        return {"_subscribers": OrderedDict()}


def routing_collectors(model: nn.Module) -> Iterator[tuple[nn.Module, RoutingCollector]]:
    """``(encoder, collector)`` for every module of ``model`` that publishes routing, in module order."""
    for module in model.modules():
        collector = getattr(module, "routing", None)
        if isinstance(collector, RoutingCollector):
            yield module, collector
