"""Write MaxMind DB (.mmdb) files at test time with mmdb-writer, in the record shapes MaxMind uses."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mmdb_writer import MMDBWriter
from netaddr import IPSet

# A fixed build time, so evidence can be checked exactly: 2025-03-04T05:06:07Z.
BUILD_EPOCH = 1741064767
BUILD = "2025-03-04T05:06:07Z"

_NAMES = {
    "GB": "United Kingdom",
    "JP": "Japan",
    "SE": "Sweden",
    "CN": "China",
    "US": "United States",
}


class _Writer(MMDBWriter):
    """mmdb-writer stamps the current time as build_epoch; tests need a known one."""

    def __init__(self, build_epoch: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.build_epoch = build_epoch

    def _build_meta(self) -> dict[str, Any]:
        meta = super()._build_meta()
        meta["build_epoch"] = self.build_epoch
        return meta


def write_mmdb(
    path: Path,
    records: Mapping[str, dict[str, Any]],
    *,
    database_type: str,
    build_epoch: int = BUILD_EPOCH,
    ip_version: int = 6,
) -> Path:
    """Write *records* (CIDR -> record) to *path* via a temporary file and an atomic rename."""
    writer = _Writer(
        build_epoch,
        ip_version=ip_version,
        database_type=database_type,
        languages=["en"],
        description={"en": f"aidr_gate test {database_type}"},
        ipv4_compatible=ip_version == 6,
    )
    for cidr, record in records.items():
        writer.insert_network(IPSet([cidr]), record)
    temporary = path.with_name(f".{path.name}.tmp")
    writer.to_db_file(str(temporary))
    os.replace(temporary, path)  # what geoipupdate does: readers never see a half-written file
    return path


def country_record(code: str | None, registered: str | None = None) -> dict[str, Any]:
    """A GeoIP2-Country record: continent, country (may be absent) and registered_country."""
    record: dict[str, Any] = {"continent": {"code": "EU", "geoname_id": 6255148}}
    if code is not None:
        record["country"] = {
            "geoname_id": 1000 + len(code),
            "iso_code": code,
            "names": {"en": _NAMES.get(code, code)},
        }
    record["registered_country"] = {"iso_code": registered or code or "US"}
    return record


def write_country_db(
    path: Path,
    countries: Mapping[str, str],
    *,
    database_type: str = "GeoIP2-Country",
    build_epoch: int = BUILD_EPOCH,
    ip_version: int = 6,
    extra: Mapping[str, dict[str, Any]] | None = None,
) -> Path:
    """A Country database mapping each CIDR to an ISO code; *extra* adds raw records."""
    records = {cidr: country_record(code) for cidr, code in countries.items()}
    records.update(extra or {})
    return write_mmdb(
        path,
        records,
        database_type=database_type,
        build_epoch=build_epoch,
        ip_version=ip_version,
    )


def anonymous_record(flags: Iterable[str]) -> dict[str, Any]:
    """A GeoIP2-Anonymous-IP record: ``is_anonymous`` plus the named ``is_*`` booleans."""
    record: dict[str, Any] = dict.fromkeys(flags, True)
    if record:
        record["is_anonymous"] = True
    return record


def write_anonymous_db(
    path: Path,
    networks: Mapping[str, Iterable[str]],
    *,
    build_epoch: int = BUILD_EPOCH,
    database_type: str = "GeoIP2-Anonymous-IP",
) -> Path:
    """An Anonymous IP database mapping each CIDR to the attributes that are true there."""
    records = {cidr: anonymous_record(flags) for cidr, flags in networks.items()}
    return write_mmdb(path, records, database_type=database_type, build_epoch=build_epoch)


# The networks most tests use: IPv4 and IPv6, several countries.
COUNTRIES: dict[str, str] = {
    "81.2.69.0/24": "GB",
    "89.160.20.0/24": "SE",
    "175.16.199.0/24": "CN",
    "216.160.83.0/24": "US",
    "2001:218::/32": "JP",
    "2a02:cf40::/29": "SE",
    "2001:480::/32": "US",
}
ANONYMOUS: dict[str, tuple[str, ...]] = {
    "81.2.69.128/25": ("is_anonymous_vpn",),
    "89.160.20.128/25": ("is_tor_exit_node", "is_hosting_provider"),
    "216.160.83.128/25": ("is_public_proxy",),
    "175.16.199.128/25": ("is_residential_proxy",),
    "2001:218:1::/48": ("is_anonymous_vpn", "is_hosting_provider"),
}


def city_record(country: str, subdivision: str | None, city: str | None = None) -> dict[str, Any]:
    """A GeoIP2-City record: country, and a first subdivision (ISO 3166-2 suffix) when given."""
    record = country_record(country)
    if subdivision is not None:
        record["subdivisions"] = [{"geoname_id": 700_000, "iso_code": subdivision}]
    if city is not None:
        record["city"] = {"geoname_id": 700_001, "names": {"en": city}}
    return record


def write_city_db(
    path: Path,
    networks: Mapping[str, tuple[str, str | None]],
    *,
    build_epoch: int = BUILD_EPOCH,
) -> Path:
    """A GeoIP2-City database mapping each CIDR to (country, first subdivision or None)."""
    records = {cidr: city_record(c, s) for cidr, (c, s) in networks.items()}
    return write_mmdb(path, records, database_type="GeoIP2-City", build_epoch=build_epoch)
