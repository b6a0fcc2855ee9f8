"""Which fleet a manifest describes: embedded without addresses; distributed with them, the one address-less
node being this machine; several address-less nodes beside remote ones are ambiguous and served by none; nodes
that joined over the bus make it distributed too, and are observed through their heartbeats, not polled."""

from __future__ import annotations

from fleetd.controlling.distributed import Layout, layout_of
from fleetd.controlling.opening import fleet_kind
from fleetd.core.desired import DesiredState, NodeSpec


def state(*nodes: NodeSpec) -> DesiredState:
    return DesiredState(nodes=nodes, nodes_declared=bool(nodes))


def test_no_address_means_embedded() -> None:
    assert layout_of(None) == Layout()
    assert layout_of(state(NodeSpec("a"), NodeSpec("b"))) == Layout()
    assert fleet_kind(layout_of(state(NodeSpec("a")))) == (False, None)


def test_addresses_make_it_distributed_and_the_address_less_node_is_this_machine() -> None:
    desired = state(
        NodeSpec("gpu-b", address="10.0.0.6:7443"), NodeSpec("here"), NodeSpec("gpu-a", address="10.0.0.5:7443")
    )
    layout = layout_of(desired)
    assert layout.remote == (("gpu-a", "10.0.0.5:7443"), ("gpu-b", "10.0.0.6:7443"))
    assert (layout.local, layout.unreachable, layout.distributed) == ("here", (), True)
    assert fleet_kind(layout) == (True, "here")


def test_several_address_less_nodes_beside_remote_ones_are_served_by_none() -> None:
    layout = layout_of(state(NodeSpec("gpu-a", address="10.0.0.5:7443"), NodeSpec("x"), NodeSpec("y")))
    assert (layout.local, layout.unreachable) == (None, ("x", "y"))


def test_joined_nodes_or_a_bus_make_it_distributed() -> None:
    joined = (("gpu-j", "10.0.0.9:7443"),)
    layout = layout_of(None, joined=joined)
    assert (layout.distributed, layout.local, layout.beating) == (True, None, frozenset())  # polled: no ingest
    assert layout_of(None, joined=joined, bus=True).beating == frozenset({"gpu-j"})
    assert layout.addresses == {"gpu-j": "10.0.0.9:7443"}
    assert layout_of(None, bus=True).distributed
    assert fleet_kind(layout_of(state(NodeSpec("here")), bus=True)) == (True, "here")


def test_the_manifest_s_address_wins_over_the_registered_one() -> None:
    desired = state(NodeSpec("gpu-j", address="10.0.0.5:7443"))
    layout = layout_of(desired, joined=(("gpu-j", "192.168.1.9:7443"),), bus=True)
    assert layout.addresses == {"gpu-j": "10.0.0.5:7443"}
    assert layout.beating == frozenset({"gpu-j"})
