"""Routing helpers: sink ports and the bounded registration table."""

from __future__ import annotations

import time

from kokoro_service.calls.routing import Registry, sink_port


def test_sink_port_for_decimal_ids() -> None:
    assert sink_port("0", 9002) == 9002
    assert sink_port("42", 9002) == 9044
    assert sink_port("56533", 9002) == 65535
    assert sink_port("56534", 9002) is None  # beyond 65535
    assert sink_port("abc", 9002) is None
    assert sink_port("٤٢", 9002) is None  # Arabic-Indic digits are not a port
    assert sink_port("-1", 9002) is None


def test_registry_is_idempotent_and_bounded() -> None:
    r = Registry(capacity=3)
    assert r.register("1") == (True, None)
    assert r.register("1") == (False, None)
    r.register("2")
    r.register("3")
    assert r.register("4") == (True, "1")  # oldest evicted
    assert "1" not in r and "4" in r
    assert len(r) == 3
    assert r.unregister("4")
    assert not r.unregister("4")


def test_registrations_of_calls_held_elsewhere_expire() -> None:
    registry = Registry(capacity=100, ttl=0.5)
    registry.register("1")
    registry.register("2")
    time.sleep(0.6)
    assert registry.expire(lambda call_id: call_id == "2") == ["1"]
    assert "2" in registry  # its call is live here: kept, and its clock restarted
    assert registry.expire(lambda _: False) == []  # not yet: the restart counts
    registry.touch("2")  # its call ended: the time to live starts again
    time.sleep(0.6)
    assert registry.expire(lambda _: False) == ["2"]
    assert len(registry) == 0
    forever = Registry(capacity=100)
    forever.register("3")
    time.sleep(0.01)
    assert forever.expire(lambda _: False) == [] and "3" in forever
