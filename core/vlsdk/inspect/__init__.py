"""Routing inspection: which expert each patch went to, utilisation, domain x expert shares.

Names are imported lazily so ``vlsdk routing --help`` stays fast.

Example:
    >>> import torch, vlsdk
    >>> from vlsdk import inspect as vi
    >>> model = vlsdk.VLModel("tiny")
    >>> image = torch.rand(1, 3, 64, 64)
    >>> maps = vi.routing_maps(model, image)
    >>> vi.plot_routing_map(maps, image, "routing.png")  # doctest: +SKIP
    PosixPath('routing.png')
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vlsdk._lazy import lazy_exports

_EXPORTS = {
    "LayerRouting": "vlsdk.inspect.routing",
    "RoutingMaps": "vlsdk.inspect.routing",
    "DomainExpertTable": "vlsdk.inspect.routing",
    "routing_maps": "vlsdk.inspect.routing",
    "expert_utilisation": "vlsdk.inspect.routing",
    "domain_expert_table": "vlsdk.inspect.routing",
    "top_experts": "vlsdk.inspect.routing",
    "load_image": "vlsdk.inspect.routing",
    "expert_colors": "vlsdk.inspect.plots",
    "plot_routing_map": "vlsdk.inspect.plots",
    "plot_utilisation": "vlsdk.inspect.plots",
    "plot_domain_expert_table": "vlsdk.inspect.plots",
    "plot_routing_history": "vlsdk.inspect.plots",
    "CrossDomainRouting": "vlsdk.inspect.cross_domain",
    "cross_domain_routing": "vlsdk.inspect.cross_domain",
    "routing_report": "vlsdk.inspect.cli",
    "ROUTING_COMMAND": "vlsdk.inspect.cli",
}

__all__ = [
    "LayerRouting",
    "RoutingMaps",
    "DomainExpertTable",
    "routing_maps",
    "expert_utilisation",
    "domain_expert_table",
    "top_experts",
    "load_image",
    "expert_colors",
    "plot_routing_map",
    "plot_utilisation",
    "plot_domain_expert_table",
    "plot_routing_history",
    "CrossDomainRouting",
    "cross_domain_routing",
    "routing_report",
    "ROUTING_COMMAND",
]

if TYPE_CHECKING:
    from vlsdk.inspect.cli import ROUTING_COMMAND, routing_report
    from vlsdk.inspect.cross_domain import CrossDomainRouting, cross_domain_routing
    from vlsdk.inspect.plots import (
        expert_colors,
        plot_domain_expert_table,
        plot_routing_history,
        plot_routing_map,
        plot_utilisation,
    )
    from vlsdk.inspect.routing import (
        DomainExpertTable,
        LayerRouting,
        RoutingMaps,
        domain_expert_table,
        expert_utilisation,
        load_image,
        routing_maps,
        top_experts,
    )


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
