"""Starting each service in-process, in dependency order, with the short
intervals tests want (sweeps and settlement polls of a tenth of a second, so
that waiting for an effect is quick; never so short that a busy machine
breaks a lease). Each service is imported only when a test starts it, so a
service in the middle of a change breaks only the tests that run it."""

from __future__ import annotations

import importlib

# The registry before metering: metering follows its WatchNodes (suspended nodes' earnings).
ORDER = ("ledger", "registry", "metering", "relay", "scheduler", "gateway")
BACKEND = ORDER[:-1]  # what the scheduler tests run: everything behind the gateway
LEDGER_SWEEP_INTERVAL_S = 0.2
METERING_POLL_S = 0.1


def relay_settings():
    """The relay's defaults, with a link that stops answering noticed within
    a second or two."""
    from idlegrid.relay.settings import RelaySettings

    return RelaySettings(ping_interval_ms=500, pong_timeout_ms=2_000)


def metering_settings(**kw):
    """Metering's settings for tests: earnings posted at settlement (no
    release window) unless a test asks for one (``earnings_hold_s``), and an
    earnings worker that looks every tenth of a second."""
    from idlegrid.metering.settings import MeteringSettings

    return MeteringSettings(**{"earnings_hold_s": 0, "earnings_poll_ms": 100, **kw})


def options(part: str, addrs: dict[str, str], db_url: str, registry_settings=None, gateway_settings=None,
            metering_settings_=None) -> dict:
    """The keyword arguments of ``idlegrid.<part>.service.start`` besides
    the config and the port."""
    if part == "ledger":
        return {"database_url": db_url, "sweep_interval_s": LEDGER_SWEEP_INTERVAL_S}
    if part == "metering":
        # Without a registry in the stack, metering takes no node as suspended.
        return {"database_url": db_url, "ledger_addr": addrs["ledger"], "poll_s": METERING_POLL_S,
                "registry_addr": addrs.get("registry"), "watch_registry": "registry" in addrs,
                "settings": metering_settings_ or metering_settings()}
    if part == "registry":
        if registry_settings is None:
            from idlegrid.registry.settings import RegistrySettings

            # Nodes heartbeat every half second: a node that stops is noticed quickly.
            registry_settings = RegistrySettings(heartbeat_interval_ms=500, sweep_interval_ms=50,
                                                 load_report_interval_ms=100)
        return {"database_url": db_url, "settings": registry_settings}
    if part == "relay":
        return {"registry_addr": addrs["registry"], "settings": relay_settings()}
    backends = {f"{p}_addr": addrs[p] for p in ("ledger", "metering", "registry")}
    if part == "scheduler":
        return backends
    if gateway_settings is None:
        from idlegrid.gateway.settings import GatewaySettings

        gateway_settings = GatewaySettings()  # the defaults, never the developer's environment
    return {**backends, "database_url": db_url, "scheduler_addr": addrs["scheduler"],
            "settings": gateway_settings}


async def start(stack, parts: tuple[str, ...], *, ports: dict[str, int], registry_settings=None,
                gateway_settings=None, metering_settings_=None) -> None:
    """Starts ``parts`` into ``stack.servers`` and ``stack.addrs``; a part
    whose address the caller already put in ``stack.addrs`` (one running in a
    child process) is not started."""
    unknown = set(parts) - set(ORDER)
    assert not unknown, f"unknown parts {sorted(unknown)}; known: {ORDER}"
    host = dial_host(stack.config)
    for part in ORDER:
        if part not in parts or part in stack.addrs:
            continue
        service = importlib.import_module(f"idlegrid.{part}.service")
        kw = options(part, stack.addrs, stack.db_url, registry_settings, gateway_settings, metering_settings_)
        srv = await service.start(stack.config, port=ports.get(part, 0), **kw)
        stack.servers[part] = srv
        stack.addrs[part] = srv.url if part == "gateway" else f"{host}:{srv.port}"


def dial_host(config) -> str:
    """Where the services of ``config`` are reached: their bind host (a test
    may bind them to one interface), loopback when they listen on all."""
    return "127.0.0.1" if config.bind_host in ("0.0.0.0", "::", "") else config.bind_host
