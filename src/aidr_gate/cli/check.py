"""``aidr-gate check``: decide one request by hand and print the decision as JSON."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from msgspec.structs import replace

from aidr_gate.cli.exit import EXIT_DENY, EXIT_LOG, EXIT_OK
from aidr_gate.countries import normalize_country
from aidr_gate.decision import Decision, Effect
from aidr_gate.document import Checker, Document, parse_instant
from aidr_gate.errors import ConfigError, IdentityError, Problem
from aidr_gate.facts import (
    AnonymizerFlag,
    CountrySource,
    Identity,
    Origin,
    RegionSource,
    declared_origin,
)
from aidr_gate.gate import EntitySource, Gate, GateState, Resolved, load_file_registry, load_state
from aidr_gate.policy.engine import PolicyEngine
from aidr_gate.policy.pack import load_pack
from aidr_gate.policy.reach import region_code
from aidr_gate.request.identity import Authenticator
from aidr_gate.request.origin import origin_resolver_for
from aidr_gate.settings.loader import load_config, parse_identity_config
from aidr_gate.stores import RegistryView, open_store, registry_view
from aidr_gate.stores.base import store_kind
from aidr_gate.stores.settings import open_registry


def add_parser(sub: Any) -> None:
    """Register the subcommand."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "check",
        help="decide one request and print the decision as JSON",
        description=(
            "Decide one request from facts given on the command line. Exit code: 0 allow, "
            "1 deny, 2 usage or configuration error, 3 log (allowed but flagged)."
        ),
    )
    parser.add_argument(
        "--config",
        help="configuration file (default: $AIDR_GATE_CONFIG, then the embedded example)",
    )
    parser.add_argument("--entity", help="entity id, as the token's entity claim would give it")
    parser.add_argument(
        "--claimed-headquarters", metavar="CC", help="headquarters country the --entity claims"
    )
    parser.add_argument(
        "--claimed-parent", metavar="CC", help="ultimate parent's country the --entity claims"
    )
    parser.add_argument(
        "--token",
        help="a bearer token to verify with the configured identity keys ('-' reads it from stdin)",
    )
    parser.add_argument(
        "--country", metavar="CC", help="network country of the client (ISO 3166-1 alpha-2)"
    )
    parser.add_argument(
        "--region",
        metavar="CC-SUB",
        help="the client's ISO 3166-2 region (UA-43), as a City database would give it",
    )
    parser.add_argument("--ip", help="the client IP, resolved through the configured GeoIP data")
    parser.add_argument(
        "--peer", help="the TCP peer address (a proxy, when forwarded headers are given)"
    )
    parser.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="a forwarding header as the peer sent it (X-Forwarded-For, Forwarded); repeatable",
    )
    parser.add_argument(
        "--anonymizer",
        action="append",
        default=[],
        choices=[f.value for f in AnonymizerFlag],
        help="an anonymizer flag of the --country address (repeatable)",
    )
    parser.add_argument(
        "--registry",
        metavar="STORE",
        help="look the entity up in this registry (a file, sqlite:PATH, a postgresql:// URL or "
        "env:NAME) instead of the configured one",
    )
    parser.add_argument("--model", help="model id as the request names it")
    parser.add_argument("--at", help="evaluation time, a date or ISO 8601 date-time (default: now)")
    parser.add_argument(
        "--pack", help="decide under this pack (id or file) instead of the configured one"
    )
    parser.add_argument("--compact", action="store_true", help="print the JSON on one line")
    parser.set_defaults(run=run)


def _country(value: str | None, flag: str) -> str | None:
    if value is None:
        return None
    code = normalize_country(value)
    if code is None:
        raise ConfigError(
            Problem("<command line>", flag, f"{value!r} is not an ISO 3166-1 alpha-2 code")
        )
    return code


def _with_region(origin: Origin, region: str) -> Origin:
    """*origin* in *region*: its country is the region's (``--country`` must agree)."""
    check = Checker(Document("<command line>", {}, {}))
    code = region_code(check, region, "--region")
    check.raise_if_errors()
    if code is None:  # pragma: no cover - raise_if_errors raised for every invalid code
        raise ConfigError(Problem("<command line>", "--region", f"{region!r} is not a region"))
    if origin.country is not None and origin.country != code[:2]:
        raise ConfigError(
            Problem("<command line>", "--region", f"{code} is not in {origin.country}")
        )
    country = origin.country or _country(code[:2], "--region")
    return replace(
        origin,
        country=country,
        country_source=CountrySource.DECLARED,
        region=code,
        region_source=RegionSource.DECLARED,
    )


def _refuse_ignored_flags(args: argparse.Namespace) -> None:
    """Refuse flag combinations where one flag would be silently ignored."""
    resolved = args.ip or args.peer or args.header
    if args.country and resolved:
        raise ConfigError(
            Problem("<command line>", "--country", "give either --country or --ip/--peer/--header")
        )
    if args.region and resolved:
        raise ConfigError(
            Problem("<command line>", "--region", "give either --region or --ip/--peer/--header")
        )
    if args.anonymizer and resolved:
        raise ConfigError(
            Problem(
                "<command line>",
                "--anonymizer",
                "the anonymizer flags of --ip/--peer/--header come from the configured data: "
                "give --anonymizer with --country instead",
            )
        )
    if args.token and (args.entity or args.claimed_headquarters or args.claimed_parent):
        raise ConfigError(
            Problem(
                "<command line>", "--token", "the token names the entity: drop --entity/--claimed-*"
            )
        )
    for flag, value in (
        ("--claimed-headquarters", args.claimed_headquarters),
        ("--claimed-parent", args.claimed_parent),
    ):
        if value and not args.entity:
            raise ConfigError(
                Problem("<command line>", flag, "a claimed country needs the --entity it is for")
            )


def run(args: argparse.Namespace) -> int:
    """Run ``check``."""
    config = load_config(args.config)
    source: EntitySource | None = None
    view: RegistryView | None = None
    if args.registry:
        if store_kind(args.registry) == "file":
            source = load_file_registry(Path(args.registry))
        else:
            source = view = registry_view(open_store(args.registry))
    else:
        source = view = open_registry(config)
    state: GateState = load_state(config, registry=source)
    if args.pack:
        state = GateState(
            engine=PolicyEngine(load_pack(args.pack, config.policy.search)),
            registry=state.registry,
            catalog=state.catalog,
            mode=state.mode,
            shadow=state.shadow,
        )
    at = None
    if args.at:
        at = parse_instant(args.at)
        if at is None:
            raise ConfigError(
                Problem("<command line>", "--at", f"{args.at!r} is not a date or ISO 8601 time")
            )
    _refuse_ignored_flags(args)
    if args.ip or args.peer or args.header:
        origin = origin_resolver_for(config).resolve_for_check(
            ip=args.ip, peer=args.peer, header_lines=args.header
        )
    else:
        origin = declared_origin(
            _country(args.country, "--country"),
            frozenset(AnonymizerFlag(a) for a in args.anonymizer),
        )
        if args.region:
            origin = _with_region(origin, args.region)
    gate = Gate(state)
    identity = None
    if args.token:
        from_stdin = args.token == "-"  # noqa: S105 - '-' keeps tokens out of shell history
        token = sys.stdin.readline().strip() if from_stdin else args.token
        authenticator = Authenticator(parse_identity_config(config))
        try:
            identity = authenticator.authenticate_sync(f"Bearer {token}")
        except IdentityError as exc:
            decision = gate.refuse(exc, origin=origin, model_id=args.model, at=at)
            return _print(decision, compact=args.compact)
    elif args.entity:
        identity = Identity(
            entity_id=args.entity,
            claimed_headquarters=_country(args.claimed_headquarters, "--claimed-headquarters"),
            claimed_parent=_country(args.claimed_parent, "--claimed-parent"),
            method="declared",
        )
    entity: Resolved = None
    if identity is not None and identity.entity_id:
        entity = _resolve(state.registry, view, identity.entity_id)
    decision = gate.decide(
        identity=identity, origin=origin, model_id=args.model, at=at, entity=entity
    )
    return _print(decision, compact=args.compact)


def _resolve(source: EntitySource, view: RegistryView | None, entity_id: str) -> Resolved:
    """The entity from any store: a file in memory, or one read through the cache (a store that
    cannot be reached answers UNAVAILABLE: the decision is REGISTRY_UNAVAILABLE)."""
    if view is None:
        return source.lookup(entity_id)

    async def read() -> Resolved:
        await view.start()
        try:
            return await view.fetch(entity_id)
        finally:
            await view.close()

    return asyncio.run(read())


def _print(decision: Decision, *, compact: bool) -> int:
    json.dump(decision.to_dict(), sys.stdout, indent=None if compact else 2)
    sys.stdout.write("\n")
    if decision.effect is Effect.DENY:
        return EXIT_DENY
    return EXIT_LOG if decision.effect is Effect.LOG else EXIT_OK
