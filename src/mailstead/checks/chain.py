"""Loading the checks and running them in order (the interface is in checks/__init__.py).

Where checks come from:
- the built-in ones (checks/builtin.py: SPF/DKIM/DMARC trust, allow/block lists, spam score),
  always: their own config sections switch them;
- Python entry points of the group ``mailstead.checks`` (installed plug-in packages);
- ``[checks] modules = ["pkg.mod:factory"]`` (or ``"name=pkg.mod:factory"``);
- ``dnsbl``, the plug-in shipped with mailstead (checks/dnsbl.py), when
  ``[checks.dnsbl] zones`` names a zone.

``[checks] enabled`` lists the plug-ins to run, in order; empty runs all of the above (entry
points by name, then modules, then dnsbl). The order of a transaction: trust and lists first,
then the plug-ins, then the spam score, which adds the plug-ins' points.

Every call of a plug-in's hook is bounded by ``[checks] timeout``; an exception or a timeout is
logged and counts as accept, or as a tempfail with ``on_error = "tempfail"``.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from mailstead.checks import (
    PHASES,
    Check,
    CheckContext,
    CheckSetup,
    DeliveryFilter,
    Filing,
    FilterContext,
    Phase,
    Verdict,
    tempfail,
)
from mailstead.config import ChecksConfig
from mailstead.core.errors import ConfigError
from mailstead.dns import Resolver
from mailstead.obs import log_event

ENTRY_POINT_GROUP = "mailstead.checks"
FILTER_GROUP = "mailstead.filters"
SHIPPED = {"dnsbl": "mailstead.checks.dnsbl:factory"}


@dataclass(slots=True)
class Outcome:
    """The merged verdicts of one phase: the first refusal, every header and every point."""

    action: str = "accept"
    code: int = 0
    status: str = ""
    text: str = ""
    by: str = ""  # the check that refused
    headers: list[tuple[str, str]] = field(default_factory=list)
    points: float = 0.0
    tests: list[str] = field(default_factory=list)

    @property
    def refused(self) -> bool:
        return self.action != "accept"

    def add(self, name: str, verdict: Verdict) -> None:
        self.headers.extend(verdict.headers)
        self.points += verdict.points
        self.tests.extend(verdict.tests)
        if verdict.action != "accept" and not self.refused:
            self.action, self.code, self.status, self.text, self.by = (
                verdict.action, verdict.code, verdict.status, verdict.text, name)


@dataclass(slots=True)
class Loaded:
    name: str
    check: Any
    builtin: bool
    hooks: dict[str, Callable[..., Any]]


def _hooks(check: Any) -> dict[str, Callable[..., Any]]:
    """The hooks a check really has: the base class's do-nothing ones are skipped."""
    found: dict[str, Callable[..., Any]] = {}
    for phase in PHASES:
        hook = getattr(check, phase, None)
        if hook is None or not callable(hook):
            continue
        if getattr(type(check), phase, None) is getattr(Check, phase):
            continue
        found[phase] = hook
    return found


def _verdicts(result: object) -> list[Verdict]:
    if result is None:
        return []
    if isinstance(result, Verdict):
        return [result]
    if isinstance(result, list | tuple) and all(isinstance(v, Verdict) for v in result):
        return list(result)
    raise TypeError(f"a hook returned {type(result).__name__}, not a Verdict, a list of them "
                    "or None")


class CheckChain:
    def __init__(self, checks: Sequence[Loaded], cfg: ChecksConfig) -> None:
        self.checks = list(checks)
        self.cfg = cfg
        self.by_phase = {p: [c for c in self.checks if p in c.hooks] for p in PHASES}

    @property
    def plugins(self) -> list[str]:
        return [c.name for c in self.checks if not c.builtin]

    def has(self, phase: Phase) -> bool:
        return bool(self.by_phase[phase])

    async def run(self, phase: Phase, ctx: CheckContext, *args: Any) -> Outcome:
        """Runs ``phase``'s hooks in order until one refuses; merges what they said into
        ``ctx`` (headers, points) and returns this phase's outcome."""
        outcome = Outcome()
        for loaded in self.by_phase[phase]:
            if not loaded.builtin and ctx.submission and not self.cfg.submission:
                continue  # plug-ins judge MX traffic unless told to judge submissions too
            hook_args = (ctx.message,) if phase == "data" else args
            for verdict in await self._call(loaded, phase, ctx, hook_args):
                outcome.add(loaded.name, verdict)
                # At once, so the checks after this one (the spam score) see it.
                ctx.headers.extend(verdict.headers)
                ctx.points += verdict.points
                ctx.tests.extend(verdict.tests)
            if outcome.refused:
                log_event("checks.refused", check=loaded.name, phase=phase,
                          session=ctx.session_id, client=ctx.client_ip,
                          reply=f"{outcome.code} {outcome.status}")
                break
        return outcome

    async def _call(self, loaded: Loaded, phase: str, ctx: CheckContext,
                    args: tuple[Any, ...]) -> list[Verdict]:
        hook = loaded.hooks[phase]
        if loaded.builtin:  # ours: their own bounds (trust.verify_timeout), errors are bugs
            return _verdicts(await hook(ctx, *args))
        try:
            async with asyncio.timeout(self.cfg.timeout):
                return _verdicts(await hook(ctx, *args))
        except Exception as exc:  # TimeoutError included
            error = "timed out" if isinstance(exc, TimeoutError) else \
                f"{type(exc).__name__}: {exc}"
            log_event("checks.error", logging.WARNING, check=loaded.name, phase=phase,
                      session=ctx.session_id, error=error, then=self.cfg.on_error)
            if self.cfg.on_error == "tempfail":
                return [tempfail(451, "4.3.0", f"check {loaded.name} failed, try again later")]
            return []

    async def close(self) -> None:
        for loaded in self.checks:
            close = getattr(loaded.check, "close", None)
            if close is not None:
                try:
                    await close()
                except Exception as exc:
                    log_event("checks.close_failed", logging.WARNING, check=loaded.name,
                              error=str(exc))


# -- loading -------------------------------------------------------------------------------------


def _from_spec(spec: str, what: str) -> tuple[str, Callable[..., Any]]:
    """``"pkg.mod:factory"`` or ``"name=pkg.mod:factory"`` -> (name, factory)."""
    name, sep, target = spec.partition("=")
    if not sep:
        name, target = "", spec
    module_name, colon, attr = target.strip().partition(":")
    if not colon or not module_name or not attr:
        raise ConfigError(f"{what}: {spec!r} is not 'package.module:factory'")
    try:
        module = importlib.import_module(module_name)
        factory = getattr(module, attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{what}: cannot load {spec!r}: {exc}") from None
    return name.strip() or attr.split(".")[-1], factory


def _entry_points(group: str) -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=group)}


def _available(cfg: ChecksConfig, group: str, modules: list[str]
               ) -> dict[str, Callable[[], Callable[..., Any]]]:
    """Name -> a loader of its factory (loaded only when the name is used)."""
    found: dict[str, Callable[[], Callable[..., Any]]] = {}
    if cfg.entry_points:
        for name, ep in sorted(_entry_points(group).items()):
            found[name] = ep.load
    what = "checks.modules" if group == ENTRY_POINT_GROUP else "checks.filters"
    for spec in modules:
        name, factory = _from_spec(spec, what)
        found[name] = functools.partial(_same, factory)
    return found


def _same(factory: Callable[..., Any]) -> Callable[..., Any]:
    return factory


def _shipped(name: str) -> Callable[..., Any]:
    return _from_spec(SHIPPED[name], name)[1]


def _setup(name: str, cfg: ChecksConfig, hostname: str, resolver: Resolver) -> CheckSetup:
    options = getattr(cfg, name, None) if name in type(cfg).model_fields else None
    if options is not None and hasattr(options, "model_dump"):
        table = options.model_dump()
    else:
        table = dict((cfg.model_extra or {}).get(name) or {})

    def log(event: str, **fields: Any) -> None:
        log_event(f"checks.{name}.{event}", **fields)

    return CheckSetup(name, table, hostname, resolver, log)


def _make(kind: str, name: str, loader: Callable[[], Callable[..., Any]], cfg: ChecksConfig,
          hostname: str, resolver: Resolver) -> Any:
    """Loads the factory of the check or filter ``name`` and makes it; a ConfigError naming
    it when either fails."""
    try:
        factory = loader()
    except Exception as exc:
        raise ConfigError(f"{kind} {name}: cannot load it: {type(exc).__name__}: {exc}"
                          ) from None
    try:
        return factory(_setup(name, cfg, hostname, resolver))
    except Exception as exc:
        raise ConfigError(f"{kind} {name}: its factory failed: {type(exc).__name__}: {exc}"
                          ) from None


def load_checks(cfg: ChecksConfig, hostname: str, resolver: Resolver, *,
                before: Sequence[tuple[str, Any]] = (), after: Sequence[tuple[str, Any]] = ()
                ) -> CheckChain:
    """The chain: ``before`` (built-in), the configured plug-ins, ``after`` (built-in)."""
    available = _available(cfg, ENTRY_POINT_GROUP, cfg.modules)
    if cfg.dnsbl.zones and "dnsbl" not in available:
        available["dnsbl"] = functools.partial(_shipped, "dnsbl")
    names = cfg.enabled or list(available)
    plugins: list[Loaded] = []
    for name in names:
        loader = available.get(name)
        if loader is None and name in SHIPPED:
            loader = functools.partial(_shipped, name)
        if loader is None:
            raise ConfigError(f"checks.enabled: no check named {name!r} is installed "
                              f"(found: {', '.join(sorted(available)) or 'none'})")
        check = _make("check", name, loader, cfg, hostname, resolver)
        hooks = _hooks(check)
        if not hooks:
            raise ConfigError(f"check {name}: it has none of the hooks {', '.join(PHASES)}")
        plugins.append(Loaded(name, check, False, hooks))
    builtin = [Loaded(n, c, True, _hooks(c)) for n, c in before] + plugins + \
        [Loaded(n, c, True, _hooks(c)) for n, c in after]
    chain = CheckChain(builtin, cfg)
    if plugins:
        log_event("checks.loaded", plugins=",".join(chain.plugins))
    return chain


# -- delivery filters ------------------------------------------------------------------------


class FilterChain:
    """Runs the delivery filters for one copy and merges their filings: the last mailbox
    named wins, flags and headers accumulate. A failing filter is logged and skipped."""

    def __init__(self, filters: Sequence[tuple[str, Any]], timeout: float) -> None:
        self.filters = list(filters)
        self.timeout = timeout

    def __bool__(self) -> bool:
        return bool(self.filters)

    async def run(self, ctx: FilterContext, message: bytes) -> Filing:
        mailbox: str | None = None
        flags: set[str] = set()
        headers: list[tuple[str, str]] = []
        for name, delivery_filter in self.filters:
            try:
                async with asyncio.timeout(self.timeout):
                    filing = await delivery_filter.deliver(ctx, message)
                if filing is not None and not isinstance(filing, Filing):
                    raise TypeError(f"returned {type(filing).__name__}, not a Filing or None")
            except Exception as exc:  # the copy is still delivered, as if it had said nothing
                error = "timed out" if isinstance(exc, TimeoutError) else \
                    f"{type(exc).__name__}: {exc}"
                log_event("filters.error", logging.WARNING, filter=name, user=ctx.account,
                          error=error)
                continue
            if filing is None:
                continue
            mailbox = filing.mailbox or mailbox
            flags |= filing.flags
            headers.extend(filing.headers)
        return Filing(mailbox, frozenset(flags), tuple(headers))


def load_filters(cfg: ChecksConfig, hostname: str, resolver: Resolver) -> FilterChain:
    available = _available(cfg, FILTER_GROUP, cfg.filters)
    made = []
    for name, loader in available.items():
        delivery_filter = _make("filter", name, loader, cfg, hostname, resolver)
        if not callable(getattr(delivery_filter, "deliver", None)):
            raise ConfigError(f"filter {name}: it has no deliver(ctx, message) method")
        made.append((name, delivery_filter))
    if made:
        log_event("filters.loaded", filters=",".join(n for n, _ in made))
    return FilterChain(made, cfg.timeout)


def check_chain(services: object) -> CheckChain:
    """The process's CheckChain from ``services.extra`` (made by wiring.build); an empty one
    when none was made."""
    extra: dict[str, object] = getattr(services, "extra")  # noqa: B009
    found = extra.get("checks")
    if isinstance(found, CheckChain):
        return found
    return CheckChain([], ChecksConfig(entry_points=False))


__all__ = ["CheckChain", "DeliveryFilter", "FilterChain", "Outcome", "check_chain",
           "load_checks", "load_filters"]
